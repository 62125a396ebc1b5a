"""Held-out synth clips with their hum, whistle, caption and score top line, read in one pass.

For `musiclm_jax.melody.evaluate_generation` (does generated audio follow a hummed melody?).
Built on `clip_reader` like the other evaluation readers; TensorFlow/TFDS is imported only when
a split is read.
"""

from collections.abc import Iterator
from typing import Any

import numpy as np

from musiclm_jax.data import clip_reader

DEFAULT_DATASET = 'synth/small'
AUDIO = ('audio', 'hum', 'whistle')
WANTED = AUDIO + ('caption', 'render_id', 'work_id', 'melody_pitch')


def read_melody_clips(data_dir: str | None, split: str, *, dataset: str = DEFAULT_DATASET,
                      limit: int | None = None, counts: dict[str, int] | None = None
                      ) -> Iterator[dict[str, Any]]:
  """The first `limit` usable clips of a prepared synth split, in file order.

  Yields dicts: 'audio' (the instrument rendering), 'hum', 'whistle' float32 [N] (same timing
  as the rendering); 'caption', 'render_id', 'work_id' str; 'melody_pitch' uint8 [frames] (the
  top line's MIDI pitch at 25 Hz, 0 = rest). Clips with empty or non-finite audio are skipped
  and counted in `counts['skipped_bad_audio']`.

  Raises:
    ValueError: the split is not prepared, or the corpus has no hums/whistles (not synth).
  """
  counts = {} if counts is None else counts
  if limit is not None and limit < 1:
    return
  builder = clip_reader.open_split(
      data_dir, split, dataset=dataset, required=WANTED, build_args='--corpus synth',
      needs='melody following needs the synth corpus: hums, whistles, melody_pitch')
  kept = 0
  for ex in clip_reader.numpy_examples(builder, split, WANTED):
    wavs = {k: clip_reader.float_audio(ex[k]) for k in AUDIO}
    if not clip_reader.usable(counts, *wavs.values()):
      continue
    yield {**wavs, 'caption': clip_reader.text(ex['caption']),
           'render_id': clip_reader.text(ex['render_id']),
           'work_id': clip_reader.text(ex['work_id']),
           'melody_pitch': np.asarray(ex['melody_pitch'], np.uint8)}
    kept += 1
    if limit is not None and kept >= limit:
      return
