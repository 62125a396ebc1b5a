"""Plain-Python reader of labelled synth clips for `musiclm_jax.semantic.evaluate_tokens`.

TensorFlow/TFDS is imported inside `clip_reader` only, so the evaluation module stays TF-free
and imports this module when it reads data.
"""

from collections.abc import Iterator
from typing import Any

import numpy as np

from musiclm_jax.data import clip_reader

DEFAULT_DATASET = 'synth/small'
LABEL_KEYS = ('pitch_classes', 'melody_pitch', 'programs', 'instruments')
_WANTED = ('audio', *LABEL_KEYS, 'work_id', 'melody_group', 'render_id')


def read_labeled_clips(data_dir: str, split: str, *, dataset: str = DEFAULT_DATASET,
                       limit: int | None = None, with_labels: bool = True,
                       counts: dict[str, int] | None = None) -> Iterator[dict[str, Any]]:
  """Clips of a prepared synth split with their per-frame score labels, as numpy.

  Args:
    data_dir: TFDS data_dir holding `dataset`.
    split: split name, e.g. 'test'.
    dataset: TFDS name (a synth config; other corpora lack the label features).
    limit: stop after this many clips (None: all).
    with_labels: False reads audio and ids only (e.g. for fitting a baseline on train).
    counts: updated with 'examples' and 'skipped_bad_audio'.

  Yields:
    {'audio': float32 [N], 'work_id', 'melody_group', 'render_id': str, and with labels
     'pitch_classes': uint8 [F, 12], 'melody_pitch': uint8 [F] (25 Hz, 0 = rest),
     'programs': int32 [P] (128 = drum kit), 'instruments': list[str]}.
    Clips with empty or non-finite audio are skipped and counted.
  """
  counts = {} if counts is None else counts
  builder = clip_reader.open_split(
      data_dir, split, dataset=dataset, required=LABEL_KEYS if with_labels else (),
      needs='token evaluation needs the synth corpus', build_args='--corpus synth')
  features = builder.info.features
  wanted = [k for k in _WANTED if k in features and (with_labels or k not in LABEL_KEYS)]
  for n, ex in enumerate(clip_reader.numpy_examples(builder, split, wanted)):
    if limit is not None and n >= limit:
      break
    wav = clip_reader.float_audio(ex['audio'])
    if not clip_reader.usable(counts, wav):
      continue
    clip = {'audio': wav, **{k: clip_reader.text(ex.get(k, f'{split}:{n}'))
                             for k in ('work_id', 'melody_group', 'render_id')}}
    if with_labels:
      clip.update(pitch_classes=np.asarray(ex['pitch_classes'], np.uint8),
                  melody_pitch=np.asarray(ex['melody_pitch'], np.uint8),
                  programs=np.asarray(ex['programs'], np.int32),
                  instruments=[clip_reader.text(i) for i in ex['instruments']])
    yield clip
