"""Plain-Python reader of held-out clips for `musiclm_jax.codec.evaluate`.

TensorFlow/TFDS is imported inside `clip_reader` only, so the evaluation module stays TF-free
and imports this module only when it reads a prepared corpus.
"""

from collections.abc import Iterator
from typing import Any

from musiclm_jax.data import clip_reader

DEFAULT_DATASET = 'synth/small'


def read_audio_clips(data_dir: str | None, split: str, *, dataset: str = DEFAULT_DATASET,
                     limit: int | None = None, counts: dict[str, int] | None = None
                     ) -> Iterator[dict[str, Any]]:
  """Audio of a prepared TFDS split, in file order.

  Args:
    data_dir: TFDS data_dir holding `dataset` (None: see `clip_reader.default_data_dir`).
    split: split name, e.g. 'test'.
    dataset: TFDS name with an 'audio' feature (synth, musiccaps, audio folders).
    limit: stop after this many usable clips (None: all).
    counts: updated with 'examples' and 'skipped_bad_audio'.

  Yields:
    {'audio': float32 [N], 'id': str (work_id / ytid / file name when present, else
    '<split>:<index>')}. Clips with empty or non-finite audio are skipped and counted.

  Raises:
    ValueError: the dataset is not prepared under `data_dir`, or has no such split.
  """
  counts = {} if counts is None else counts
  builder = clip_reader.open_split(data_dir, split, dataset=dataset, required=('audio',))
  features = builder.info.features
  id_key = next((k for k in ('work_id', 'ytid', 'file_name', 'path') if k in features), None)
  wanted = ['audio'] + ([id_key] if id_key else [])
  used = 0
  for n, ex in enumerate(clip_reader.numpy_examples(builder, split, wanted)):
    if limit is not None and used >= limit:
      break
    wav = clip_reader.float_audio(ex['audio'])
    if not clip_reader.usable(counts, wav):
      continue
    used += 1
    clip_id = clip_reader.text(ex[id_key]) if id_key else ''
    yield {'audio': wav, 'id': clip_id or f'{split}:{n}'}
