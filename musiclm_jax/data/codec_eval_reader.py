"""Plain-Python reader of held-out clips for `musiclm_jax.codec.evaluate`.

TensorFlow/TFDS is imported inside the function only, so the evaluation module stays TF-free
and imports this module only when it reads a prepared corpus.
"""

from collections.abc import Iterator
import os
from typing import Any

import numpy as np

DEFAULT_DATASET = 'synth/small'
DATA_DIR_ENV = 'MUSICLM_DATA_DIR'


def default_data_dir(data_dir: str | None = None) -> str:
  """`data_dir`, else $MUSICLM_DATA_DIR, else $TFDS_DATA_DIR, else ~/tensorflow_datasets."""
  return os.path.expanduser(data_dir or os.environ.get(DATA_DIR_ENV)
                            or os.environ.get('TFDS_DATA_DIR') or '~/tensorflow_datasets')


def _text(value: Any) -> str:
  return value.decode('utf-8', 'replace') if isinstance(value, bytes) else str(value)


def _float_audio(audio: np.ndarray) -> np.ndarray:
  """int PCM or float, [N] or [N, C] -> float32 mono [N]."""
  audio = np.asarray(audio)
  if audio.dtype.kind in 'iu':
    audio = audio.astype(np.float32) / {1: 128.0, 2: 32768.0}.get(audio.dtype.itemsize, 2.0**31)
  audio = audio.astype(np.float32)
  return audio.mean(axis=-1) if audio.ndim == 2 else audio.reshape(-1)


def read_audio_clips(data_dir: str | None, split: str, *, dataset: str = DEFAULT_DATASET,
                     limit: int | None = None, counts: dict[str, int] | None = None
                     ) -> Iterator[dict[str, Any]]:
  """Audio of a prepared TFDS split, in file order.

  Args:
    data_dir: TFDS data_dir holding `dataset` (None: see `default_data_dir`).
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
  import tensorflow_datasets as tfds  # pylint: disable=g-import-not-at-top
  counts = {} if counts is None else counts
  data_dir = default_data_dir(data_dir)
  try:
    builder = tfds.builder(dataset, data_dir=data_dir)
    splits = sorted(builder.info.splits)
  except tfds.core.DatasetNotFoundError:
    splits = []
  if split not in splits:
    raise ValueError(f'TFDS {dataset} under {data_dir}: no prepared split {split!r} (found: '
                     f'{", ".join(splits) or "nothing"}); build it with '
                     '`python -m musiclm_jax.data.build`')
  features = builder.info.features
  if 'audio' not in features:
    raise ValueError(f'TFDS {dataset} under {data_dir}: no audio feature')
  id_key = next((k for k in ('work_id', 'ytid', 'file_name', 'path') if k in features), None)
  wanted = ['audio'] + ([id_key] if id_key else [])
  decoders = {k: tfds.decode.SkipDecoding() for k in features if k not in wanted}
  ds = builder.as_dataset(split=split, shuffle_files=False, decoders=decoders or None)
  ds = ds.map(lambda e: {k: e[k] for k in wanted})
  used = 0
  for n, ex in enumerate(tfds.as_numpy(ds)):
    if limit is not None and used >= limit:
      break
    wav = _float_audio(ex['audio'])
    if wav.size == 0 or not np.all(np.isfinite(wav)):
      counts['skipped_bad_audio'] = counts.get('skipped_bad_audio', 0) + 1
      continue
    counts['examples'] = counts.get('examples', 0) + 1
    used += 1
    clip_id = _text(ex[id_key]) if id_key else ''
    yield {'audio': wav, 'id': clip_id or f'{split}:{n}'}
