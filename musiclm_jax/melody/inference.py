"""`MelodyEmbedder`: a trained melody embedder usable without the trainer: embeddings, tokens.

  melody = MelodyEmbedder.load('runs/melody_tokenizer')          # a saved folder (fit_rvq)
  melody = MelodyEmbedder.from_checkpoint('/tmp/melody')          # a training run (no RVQ)
  melody.embed(wav)        # [B, N] at 24 kHz -> float32 [B, W, 192], unit norm
  melody.tokens(wav)       # int32 [B, W * levels] in [0, codebook_size), window-major

Windows: `window_seconds` (4 s) every `hop_seconds` (3 s): W = 1 + (N - window) // hop, so a
10 s clip gives 3 windows (0-4, 3-7, 6-10 s); a clip shorter than one window is zero-padded to
one; the tail after the last full window is not used. Tokens are the residual vector
quantization codes (`musiclm_jax.layers.rvq.quantize`, codebooks fitted by
`musiclm_jax.melody.fit_rvq`) of each window's embedding, window by window:
[w0 level 0, ..., w0 level L-1, w1 level 0, ...].

A saved embedder is a folder (no trainer, gin or TensorFlow needed to load it):
  melody.json  format, config, RVQ sizes (written last: marks a complete save)
  params.npz   parameters, flattened with '/' keys, float32
  rvq.npz      codebooks [levels, codebook_size, 192] (absent before fit_rvq)
written next to its destination and renamed into place.
"""

import functools
import os
from collections.abc import Sequence
from typing import Any

import flax.linen as nn
import jax
import jax.numpy as jnp
import numpy as np

from musiclm_jax import frozen_folder
from musiclm_jax.melody import model as model_lib

FORMAT = 'musiclm_jax.melody/1'
CONFIG_FILE = 'melody.json'


@functools.partial(jax.jit, static_argnums=(0,))
def _embed(net: model_lib.MelodyEncoder, params: Any, wav: jax.Array) -> jax.Array:
  return net.apply({'params': params}, wav, method=model_lib.MelodyEncoder.embed_windows)


class MelodyEmbedder:
  """Frozen melody embedder + optional RVQ codebooks.

  Args:
    config: the model config.
    params: the 'model' parameter group (boxes are unwrapped).
    codebooks: [levels, codebook_size, embed_dim] RVQ codebooks, or None before fitting.
  """

  def __init__(self, *, config: model_lib.MelodyConfig, params: Any,
               codebooks: np.ndarray | None = None):
    self.config = config
    self.params = jax.tree.map(lambda x: jnp.asarray(x, jnp.float32), nn.meta.unbox(params))
    self.net = model_lib.MelodyEncoder(config)
    self.codebooks = None
    if codebooks is not None:
      codebooks = np.asarray(codebooks, np.float32)
      if codebooks.ndim != 3 or codebooks.shape[2] != config.embed_dim:
        raise ValueError(f'MelodyEmbedder: codebooks must be [levels, size, {config.embed_dim}]'
                         f', got {codebooks.shape}')
      self.codebooks = jnp.asarray(codebooks)

  # -- construction ---------------------------------------------------------------------------

  @classmethod
  def random(cls, config: model_lib.MelodyConfig, seed: int = 0) -> 'MelodyEmbedder':
    """An untrained (random-init) embedder: the baseline of the evaluation."""
    net = model_lib.MelodyEncoder(config)
    dummy = jnp.zeros((1, config.window_samples), jnp.float32)
    params = jax.jit(net.init)(jax.random.PRNGKey(seed), dummy)['params']
    return cls(config=config, params=params)

  @classmethod
  def from_checkpoint(cls, model_dir: str, *, gin_files: Sequence[str] | None = None,
                      step: int | None = None) -> 'MelodyEmbedder':
    """The newest (or `step`) checkpoint of a training run, config from its config.gin."""
    # pylint: disable=g-import-not-at-top
    from musiclm_jax import checkpoints
    from musiclm_jax import train as train_lib
    # pylint: enable=g-import-not-at-top
    config = train_lib.model_from_run(model_dir, gin_files, model_lib.MelodyModel).config
    params, _, _ = checkpoints.load_params(model_dir, step=step)
    return cls(config=config, params=params['model'])

  @classmethod
  def from_path(cls, path: str, *, gin_files: Sequence[str] | None = None) -> 'MelodyEmbedder':
    """A saved folder (holding melody.json) or a training run (holding checkpoints/)."""
    if os.path.exists(os.path.join(path, CONFIG_FILE)):
      return cls.load(path)
    if os.path.isdir(os.path.join(path, 'checkpoints')):
      return cls.from_checkpoint(path, gin_files=gin_files)
    raise FileNotFoundError(f'{path}: neither a saved melody embedder ({CONFIG_FILE}) nor a '
                            'training run (checkpoints/)')

  # -- sizes (the project's tokenizer contract) -----------------------------------------------

  @property
  def sample_rate(self) -> int:
    return self.config.sample_rate

  @property
  def embed_dim(self) -> int:
    return self.config.embed_dim

  @property
  def frame_rate(self) -> float:
    """Windows per second of audio (one embedding per hop)."""
    return 1.0 / self.config.hop_seconds

  @property
  def num_codebooks(self) -> int:
    return int(self._codebooks().shape[0])

  @property
  def cardinality(self) -> int:
    return int(self._codebooks().shape[1])

  def _codebooks(self) -> jax.Array:
    if self.codebooks is None:
      raise ValueError('MelodyEmbedder: no RVQ codebooks '
                       '(run python -m musiclm_jax.melody.fit_rvq)')
    return self.codebooks

  def num_windows(self, num_samples: int) -> int:
    return self.config.num_windows(num_samples)

  def num_tokens(self, num_samples: int) -> int:
    return self.num_windows(num_samples) * self.num_codebooks

  # -- embeddings and tokens ------------------------------------------------------------------

  def embed(self, wav: Any) -> np.ndarray:
    """Audio [B, N] (or [N]) at 24 kHz -> float32 [B, W, embed_dim], each window unit norm."""
    wav = np.asarray(wav, np.float32)
    if wav.ndim == 1:
      wav = wav[None]
    if wav.ndim != 2 or wav.shape[1] == 0:
      raise ValueError(f'MelodyEmbedder: audio must be [batch, samples] with samples > 0, got '
                       f'{wav.shape}')
    if not np.all(np.isfinite(wav)):
      raise ValueError('MelodyEmbedder: audio contains NaN or Inf')
    return np.asarray(_embed(self.net, self.params, wav))

  def quantize(self, emb: Any) -> np.ndarray:
    """Embeddings [..., D] -> int32 RVQ codes [..., levels]."""
    return np.asarray(frozen_folder.quantize(self._codebooks(), jnp.asarray(emb, jnp.float32)))

  def dequantize(self, codes: Any) -> np.ndarray:
    """Codes [..., n <= levels] -> float32 [..., D] (sum of the code vectors, not renormalised)."""
    return np.asarray(frozen_folder.dequantize(self._codebooks(), jnp.asarray(codes, jnp.int32)))

  def tokens(self, wav: Any) -> np.ndarray:
    """Audio [B, N] -> int32 [B, W * levels] melody tokens, window-major."""
    codes = self.quantize(self.embed(wav))  # [B, W, levels]
    return codes.reshape(codes.shape[0], -1)

  def with_codebooks(self, codebooks: np.ndarray) -> 'MelodyEmbedder':
    """The same model with other RVQ codebooks."""
    return MelodyEmbedder(config=self.config, params=self.params, codebooks=codebooks)

  # -- persistence ----------------------------------------------------------------------------

  def save(self, directory: str, *, extra: dict[str, Any] | None = None) -> None:
    """Writes the folder described in the module docstring, atomically as a whole.

    Args:
      directory: destination folder (replaced if it exists).
      extra: file name -> JSON-serialisable object, written into the folder too (reports).
    """
    frozen_folder.save(directory, config_file=CONFIG_FILE,
                       meta={'format': FORMAT, 'config': self.config.to_dict()},
                       params=self.params, codebooks=self.codebooks, extra=extra)

  @classmethod
  def load(cls, directory: str) -> 'MelodyEmbedder':
    """Reads a folder written by `save`."""
    meta, params, codebooks = frozen_folder.load(directory, config_file=CONFIG_FILE,
                                                 format_name=FORMAT, what='melody embedder')
    config = model_lib.MelodyConfig.from_dict(meta['config'])
    return cls(config=config, params=params, codebooks=codebooks)
