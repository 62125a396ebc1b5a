"""Plain-Python readers of prepared TFDS corpora for the tokenizer-fitting CLIs.

They live here so TensorFlow stays inside `musiclm_jax/data/`; the CLIs in `semantic/` and
`mulan/` import this module only when they read data.
"""

from collections.abc import Iterator
from typing import Any

import numpy as np

DEFAULT_DATASET = 'synth/small'


def tfds_audio_batches(data_dir: str, split: str, *, dataset: str, batch_size: int,
                       crop_samples: int, counts: dict[str, int]) -> Iterator[np.ndarray]:
  """Yields [batch, crop_samples] crops of the split's 'audio' (TFDS imported here only).

  Each example is cut into consecutive crops; a shorter example or tail is used once, zero
  padded, only when it holds at least a quarter crop. Examples with non-finite or empty audio
  are skipped and counted in `counts`.
  """
  import tensorflow_datasets as tfds  # pylint: disable=g-import-not-at-top
  builder = tfds.builder(dataset, data_dir=data_dir)
  ds = builder.as_dataset(split=split, shuffle_files=False)
  pending = []
  for example in tfds.as_numpy(ds):
    wav = np.asarray(example['audio'], np.float32).reshape(-1)
    if wav.size == 0 or not np.all(np.isfinite(wav)):
      counts['skipped_bad_audio'] = counts.get('skipped_bad_audio', 0) + 1
      continue
    counts['examples'] = counts.get('examples', 0) + 1
    for start in range(0, wav.size, crop_samples):
      crop = wav[start:start + crop_samples]
      if crop.size < crop_samples // 4:
        break
      pending.append(np.pad(crop, (0, crop_samples - crop.size)))
      if len(pending) == batch_size:
        yield np.stack(pending)
        pending = []
  if pending:
    yield np.stack(pending)


def read_examples(data_dir: str, split: str, *, dataset: str = DEFAULT_DATASET,
                  limit: int | None = None, counts: dict[str, int] | None = None
                  ) -> Iterator[dict[str, Any]]:
  """Examples of a prepared TFDS split as plain Python (TFDS is imported here only).

  Yields dicts: 'audio' float32 [N], 'caption' str, 'aspects' / 'instruments' list[str],
  'tempo_bpm' float (NaN if absent), 'work_id' str. Examples with empty or non-finite audio
  are skipped and counted in `counts['skipped_bad_audio']`.
  """
  import tensorflow_datasets as tfds  # pylint: disable=g-import-not-at-top
  counts = {} if counts is None else counts
  builder = tfds.builder(dataset, data_dir=data_dir)
  if split not in builder.info.splits:
    raise ValueError(f'{dataset} under {data_dir}: no split {split!r} '
                     f'(has {sorted(builder.info.splits)})')
  wanted = ('audio', 'caption', 'aspects', 'instruments', 'tempo_bpm', 'work_id')
  features = builder.info.features
  decoders = {k: tfds.decode.SkipDecoding() for k in features if k not in wanted}
  ds = builder.as_dataset(split=split, shuffle_files=False, decoders=decoders or None)
  ds = ds.map(lambda e: {k: e[k] for k in wanted if k in e})

  def text(v):
    return v.decode('utf-8', 'replace') if isinstance(v, bytes) else str(v)

  for n, ex in enumerate(tfds.as_numpy(ds)):
    if limit is not None and n >= limit:
      break
    wav = np.asarray(ex['audio'])
    wav = (wav.astype(np.float32) / 32768.0 if np.issubdtype(wav.dtype, np.integer)
           else wav.astype(np.float32))
    wav = wav.mean(axis=-1) if wav.ndim == 2 else wav.reshape(-1)
    if wav.size == 0 or not np.all(np.isfinite(wav)):
      counts['skipped_bad_audio'] = counts.get('skipped_bad_audio', 0) + 1
      continue
    counts['examples'] = counts.get('examples', 0) + 1
    yield {'audio': wav, 'caption': text(ex.get('caption', b'')),
           'aspects': [text(a) for a in ex.get('aspects', [])],
           'instruments': [text(a) for a in ex.get('instruments', [])],
           'tempo_bpm': float(ex.get('tempo_bpm', np.nan)), 'work_id': text(ex.get('work_id', b''))}
