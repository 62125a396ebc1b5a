"""The saved-folder format of the frozen embedders (MuLan, melody) and their jitted RVQ lookups.

  <name>.json  format, config, RVQ sizes, caller fields (written last: marks a complete save)
  params.npz   parameters, flattened with '/' keys, float32
  rvq.npz      codebooks [levels, codebook_size, dim] (absent before an RVQ is fitted)

The folder is written next to its destination and renamed into place (`files.atomic_dir`).
"""

from collections.abc import Mapping
import json
import os
import shutil
from typing import Any

from flax import traverse_util
import jax
import jax.numpy as jnp
import numpy as np

from musiclm_jax import files
from musiclm_jax.layers import rvq

PARAMS_FILE = 'params.npz'
RVQ_FILE = 'rvq.npz'


@jax.jit
def quantize(codebooks: jax.Array, emb: jax.Array) -> jax.Array:
  """RVQ codes of float embeddings [..., D] -> int32 [..., levels]."""
  return rvq.quantize(codebooks, emb.astype(jnp.float32)).codes


@jax.jit
def dequantize(codebooks: jax.Array, codes: jax.Array) -> jax.Array:
  """Sum of the codebook vectors of codes [..., levels] -> [..., D]."""
  return rvq.dequantize(codebooks, codes)


def save(directory: str, *, config_file: str, meta: Mapping[str, Any], params: Any,
         codebooks: np.ndarray | None, copies: Mapping[str, str] | None = None,
         extra: Mapping[str, Any] | None = None) -> None:
  """Writes the folder atomically as a whole.

  Args:
    directory: destination folder (replaced if it exists).
    config_file: name of the JSON written last; it holds `meta` plus the 'rvq' entry.
    meta: JSON-serialisable fields (format, config, ...).
    params: parameter tree, saved as float32.
    codebooks: [levels, codebook_size, dim] or None.
    copies: file name in the folder -> source path copied there (e.g. a sentencepiece model).
    extra: file name -> JSON-serialisable object, written into the folder too (reports).
  """
  flat = traverse_util.flatten_dict(jax.device_get(params), sep='/')
  flat = {k: np.asarray(v, np.float32) for k, v in flat.items()}
  codebooks = None if codebooks is None else np.asarray(codebooks)
  meta = {**meta, 'rvq': None if codebooks is None else {
      'file': RVQ_FILE, 'num_levels': int(codebooks.shape[0]),
      'codebook_size': int(codebooks.shape[1])}}

  def write(tmp):
    np.savez(os.path.join(tmp, PARAMS_FILE), **flat)
    if codebooks is not None:
      np.savez(os.path.join(tmp, RVQ_FILE), codebooks=codebooks)
    for name, source in (copies or {}).items():
      shutil.copyfile(source, os.path.join(tmp, name))
    for name, obj in (extra or {}).items():
      with open(os.path.join(tmp, name), 'w') as f:
        json.dump(obj, f, indent=2, sort_keys=True)
    with open(os.path.join(tmp, config_file), 'w') as f:
      json.dump(meta, f, indent=2, sort_keys=True)

  files.atomic_dir(directory, write)


def load(directory: str, *, config_file: str, format_name: str, what: str
         ) -> tuple[dict[str, Any], Any, np.ndarray | None]:
  """Reads a folder written by `save`: (meta, params, codebooks or None).

  Raises:
    FileNotFoundError: no `config_file` ("no saved <what> here").
    ValueError: the JSON is invalid or its format is not `format_name`.
  """
  path = os.path.join(directory, config_file)
  try:
    with open(path) as f:
      meta = json.load(f)
  except FileNotFoundError:
    raise FileNotFoundError(f'{path}: no saved {what} here (missing {config_file})') from None
  except json.JSONDecodeError as e:
    raise ValueError(f'{path}: not valid JSON ({e})') from None
  if meta.get('format') != format_name:
    raise ValueError(f'{path}: format {meta.get("format")!r}, expected {format_name!r}')
  with np.load(os.path.join(directory, PARAMS_FILE)) as z:
    params = traverse_util.unflatten_dict({k: z[k] for k in z.files}, sep='/')
  codebooks = None
  if meta.get('rvq'):
    with np.load(os.path.join(directory, meta['rvq']['file'])) as z:
      codebooks = z['codebooks']
  return meta, params, codebooks
