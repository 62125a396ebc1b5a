"""Plain-Python reader of labelled synth clips for `musiclm_jax.semantic.evaluate_tokens`.

TensorFlow/TFDS is imported inside the function only, so the evaluation module stays TF-free
and imports this module when it reads data.
"""

from collections.abc import Iterator
from typing import Any

import numpy as np

DEFAULT_DATASET = 'synth/small'
LABEL_KEYS = ('pitch_classes', 'melody_pitch', 'programs', 'instruments')
_WANTED = ('audio', *LABEL_KEYS, 'work_id', 'melody_group', 'render_id')


def _text(value: Any) -> str:
  return value.decode('utf-8', 'replace') if isinstance(value, bytes) else str(value)


def _float_audio(audio: np.ndarray) -> np.ndarray:
  audio = np.asarray(audio)
  if audio.dtype.kind in 'iu':
    audio = audio.astype(np.float32) / {1: 128.0, 2: 32768.0}.get(audio.dtype.itemsize, 2.0**31)
  audio = audio.astype(np.float32)
  return audio.mean(axis=-1) if audio.ndim == 2 else audio.reshape(-1)


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
  import tensorflow_datasets as tfds  # pylint: disable=g-import-not-at-top
  counts = {} if counts is None else counts
  builder = tfds.builder(dataset, data_dir=data_dir)
  if split not in builder.info.splits:
    raise ValueError(f'{dataset} under {data_dir}: no split {split!r} '
                     f'(has {sorted(builder.info.splits)})')
  features = builder.info.features
  wanted = [k for k in _WANTED if k in features and (with_labels or k not in LABEL_KEYS)]
  if with_labels:
    missing = [k for k in LABEL_KEYS if k not in features]
    if missing:
      raise ValueError(f'{dataset} under {data_dir}: no label feature(s) {missing} '
                       '(token evaluation needs the synth corpus)')
  decoders = {k: tfds.decode.SkipDecoding() for k in features if k not in wanted}
  ds = builder.as_dataset(split=split, shuffle_files=False, decoders=decoders or None)
  ds = ds.map(lambda e: {k: e[k] for k in wanted})
  for n, ex in enumerate(tfds.as_numpy(ds)):
    if limit is not None and n >= limit:
      break
    wav = _float_audio(ex['audio'])
    if wav.size == 0 or not np.all(np.isfinite(wav)):
      counts['skipped_bad_audio'] = counts.get('skipped_bad_audio', 0) + 1
      continue
    counts['examples'] = counts.get('examples', 0) + 1
    clip = {'audio': wav, **{k: _text(ex.get(k, f'{split}:{n}'))
                             for k in ('work_id', 'melody_group', 'render_id')}}
    if with_labels:
      clip.update(pitch_classes=np.asarray(ex['pitch_classes'], np.uint8),
                  melody_pitch=np.asarray(ex['melody_pitch'], np.uint8),
                  programs=np.asarray(ex['programs'], np.int32),
                  instruments=[_text(i) for i in ex['instruments']])
    yield clip
