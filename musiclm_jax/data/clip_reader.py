"""The shared part of the plain-Python readers of prepared TFDS splits for the evaluation CLIs.

`codec_eval_reader`, `token_eval_reader` and `melody_inputs` open a split with `open_split`
(checked before any data is read), decode only the features they use with `numpy_examples`,
and drop clips with empty or non-finite audio with `usable`. TensorFlow/TFDS is imported
inside the functions only, so importing a reader does not pull TensorFlow.
"""

from collections.abc import Iterator, MutableMapping, Sequence
import os
from typing import Any

import numpy as np

DATA_DIR_ENV = 'MUSICLM_DATA_DIR'


def default_data_dir(data_dir: str | None = None) -> str:
  """`data_dir`, else $MUSICLM_DATA_DIR, else $TFDS_DATA_DIR, else ~/tensorflow_datasets."""
  return os.path.expanduser(data_dir or os.environ.get(DATA_DIR_ENV)
                            or os.environ.get('TFDS_DATA_DIR') or '~/tensorflow_datasets')


def text(value: Any) -> str:
  """A TFDS text feature (bytes once decoded to numpy) as str."""
  return value.decode('utf-8', 'replace') if isinstance(value, bytes) else str(value)


def float_audio(audio: np.ndarray) -> np.ndarray:
  """int PCM or float, [N] or [N, C] -> float32 mono [N]."""
  audio = np.asarray(audio)
  if audio.dtype.kind in 'iu':
    audio = audio.astype(np.float32) / {1: 128.0, 2: 32768.0}.get(audio.dtype.itemsize, 2.0**31)
  audio = audio.astype(np.float32)
  return audio.mean(axis=-1) if audio.ndim == 2 else audio.reshape(-1)


def usable(counts: MutableMapping[str, int], *wavs: np.ndarray) -> bool:
  """True if every array is non-empty and finite; counts 'examples' or 'skipped_bad_audio'."""
  if any(w.size == 0 or not np.all(np.isfinite(w)) for w in wavs):
    counts['skipped_bad_audio'] = counts.get('skipped_bad_audio', 0) + 1
    return False
  counts['examples'] = counts.get('examples', 0) + 1
  return True


def open_split(data_dir: str | None, split: str, *, dataset: str, required: Sequence[str] = (),
               needs: str = '', build_args: str = '') -> Any:
  """The TFDS builder of a prepared split that has the `required` features.

  Args:
    data_dir: TFDS data_dir holding `dataset` (None: see `default_data_dir`).
    split: split name, e.g. 'test'.
    dataset: TFDS name, e.g. 'synth/small'.
    required: features the dataset must have.
    needs: why they are required, for the error message.
    build_args: arguments of the build command the error message suggests.

  Returns:
    The `tfds.core.DatasetBuilder` (its `info.features` lists the features).

  Raises:
    ValueError: the split is not prepared under `data_dir`, or a required feature is missing.
  """
  import tensorflow_datasets as tfds  # pylint: disable=g-import-not-at-top
  data_dir = default_data_dir(data_dir)
  try:
    builder = tfds.builder(dataset, data_dir=data_dir)
    splits = sorted(builder.info.splits)
  except tfds.core.DatasetNotFoundError:
    splits = []
  if split not in splits:
    command = ' '.join(['python -m musiclm_jax.data.build', build_args]).strip()
    raise ValueError(f'TFDS {dataset} under {data_dir}: no prepared split {split!r} (found: '
                     f'{", ".join(splits) or "nothing"}); build it with `{command}`')
  missing = [k for k in required if k not in builder.info.features]
  if missing:
    raise ValueError(f'TFDS {dataset} under {data_dir}: no feature(s) {missing}'
                     + (f' ({needs})' if needs else ''))
  return builder


def numpy_examples(builder: Any, split: str, wanted: Sequence[str]
                   ) -> Iterator[dict[str, Any]]:
  """Numpy examples of `split` in file order, with only the `wanted` features decoded."""
  import tensorflow_datasets as tfds  # pylint: disable=g-import-not-at-top
  wanted = list(wanted)
  decoders = {k: tfds.decode.SkipDecoding() for k in builder.info.features if k not in wanted}
  ds = builder.as_dataset(split=split, shuffle_files=False, decoders=decoders or None)
  ds = ds.map(lambda e: {k: e[k] for k in wanted})
  return iter(tfds.as_numpy(ds))
