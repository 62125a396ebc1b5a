"""`MuLan`: a trained MuLan usable without the trainer: embeddings and 12 RVQ tokens.

  mulan = MuLan.load('runs/mulan_tokenizer')
  mulan.embed_text(['calm piano'])       # float32 [B, 128], unit norm
  mulan.embed_audio(wav)                 # [B, N] at 24 kHz -> float32 [B, 128]
  mulan.text_tokens(['calm piano'])      # int32 [B, 12] in [0, 1024)
  mulan.audio_tokens(wav)                # int32 [B, 12]

Audio embeddings follow MuLan/MusicLM: the clip is cut into `window_seconds` (10 s) windows at a
`hop_seconds` (1 s) stride, each window is embedded, the embeddings are averaged and the mean is
renormalised. A clip shorter than one window is zero-padded to one window; the tail after the
last full window is not used. Tokens are residual vector quantization codes of the embedding
(`musiclm_jax.layers.rvq.quantize` with codebooks fitted by `musiclm_jax.mulan.fit_rvq`).

A saved MuLan is a folder (no trainer, gin or TensorFlow needed to load it):
  mulan.json   format, config, text length, RVQ sizes (written last: marks a complete save)
  params.npz   parameters, flattened with '/' keys, float32
  rvq.npz      codebooks [levels, codebook_size, 128] (absent before fit_rvq)
  spm.model    the sentencepiece model of the text tower
The folder is written next to its destination and renamed into place, so a reader never sees
half of one.
"""

import functools
import os
from typing import Any

import flax.linen as nn
import jax
import jax.numpy as jnp
import numpy as np

from musiclm_jax import frozen_folder
from musiclm_jax.mulan import model as model_lib
from musiclm_jax.mulan import text as text_lib

FORMAT = 'musiclm_jax.mulan/1'
CONFIG_FILE = 'mulan.json'
SPM_FILE = 'spm.model'


def num_windows(num_samples: int, window: int, hop: int) -> int:
  """Windows `embed_audio` averages for a clip of `num_samples` (at least one)."""
  if num_samples <= window:
    return 1
  return 1 + (num_samples - window) // hop


@functools.partial(jax.jit, static_argnums=(0, 3, 4))
def _embed_audio(net: model_lib.MuLan, params: Any, wav: jax.Array, window: int,
                 hop: int) -> jax.Array:
  """Mean of the window embeddings, renormalised. wav: [B, N >= window]. Returns [B, D]."""
  count = num_windows(wav.shape[1], window, hop)

  def one(start):
    segment = jax.lax.dynamic_slice_in_dim(wav, start, window, axis=1)  # [B, window]
    return net.apply({'params': params}, segment, method=model_lib.MuLan.embed_audio)

  embs = jax.lax.map(one, jnp.arange(count, dtype=jnp.int32) * hop)  # [W, B, D]
  return model_lib.l2_normalize(jnp.mean(embs, axis=0))


@functools.partial(jax.jit, static_argnums=(0,))
def _embed_text(net: model_lib.MuLan, params: Any, tokens: jax.Array) -> jax.Array:
  return net.apply({'params': params}, tokens, method=model_lib.MuLan.embed_text)


class MuLan:
  """Frozen MuLan towers + optional RVQ codebooks + the text tokenizer.

  Args:
    config: the model config.
    params: the 'model' parameter group (boxes are unwrapped).
    spm_path: sentencepiece model of the text tower (needed by the str-taking methods).
    codebooks: [levels, codebook_size, embed_dim] RVQ codebooks, or None before fitting.
    text_length: ids per prompt (incl. EOS) the tokenizer keeps; longer prompts are truncated.
  """

  sample_rate_hz = 24000

  def __init__(self, *, config: model_lib.MuLanConfig, params: Any,
               spm_path: str | None = None, codebooks: np.ndarray | None = None,
               text_length: int = 64):
    self.config = config
    self.params = jax.tree.map(lambda x: jnp.asarray(x, jnp.float32), nn.meta.unbox(params))
    self.net = model_lib.MuLan(config)
    self.text_length = int(min(text_length, config.max_text_length))
    self.spm_path = spm_path
    self.tokenizer = (text_lib.TextTokenizer(spm_path, max_length=self.text_length)
                      if spm_path else None)
    if self.tokenizer is not None and self.tokenizer.vocab_size > config.vocab_size:
      raise ValueError(f'{spm_path}: vocabulary of {self.tokenizer.vocab_size} pieces exceeds the '
                       f'text tower vocab_size {config.vocab_size}')
    self.codebooks = None
    if codebooks is not None:
      codebooks = np.asarray(codebooks, np.float32)
      if codebooks.ndim != 3 or codebooks.shape[2] != config.embed_dim:
        raise ValueError(f'MuLan: codebooks must be [levels, size, {config.embed_dim}], got '
                         f'{codebooks.shape}')
      self.codebooks = jnp.asarray(codebooks)

  # -- sizes (the project's tokenizer contract) ---------------------------------------------

  @property
  def sample_rate(self) -> int:
    return self.config.sample_rate

  @property
  def embed_dim(self) -> int:
    return self.config.embed_dim

  @property
  def num_codebooks(self) -> int:
    return int(self._codebooks().shape[0])

  @property
  def cardinality(self) -> int:
    return int(self._codebooks().shape[1])

  def _codebooks(self) -> jax.Array:
    if self.codebooks is None:
      raise ValueError('MuLan: no RVQ codebooks (run python -m musiclm_jax.mulan.fit_rvq)')
    return self.codebooks

  @property
  def text_tokenizer(self) -> text_lib.TextTokenizer:
    """The prompt tokenizer (raises when the MuLan was built without a sentencepiece model)."""
    if self.tokenizer is None:
      raise ValueError('MuLan: no sentencepiece model given (spm_path)')
    return self.tokenizer

  # -- embeddings ---------------------------------------------------------------------------

  def num_windows(self, num_samples: int) -> int:
    return num_windows(num_samples, self.config.window_samples, self.config.hop_samples)

  def embed_text_tokens(self, tokens: Any) -> np.ndarray:
    """int ids [B, L] (0-padded, EOS-terminated) -> float32 [B, D] unit-norm embeddings."""
    tokens = np.asarray(tokens, np.int32)
    if tokens.ndim != 2 or tokens.shape[1] > self.config.max_text_length:
      raise ValueError(f'MuLan: tokens must be [batch, <= {self.config.max_text_length}], '
                       f'got {tokens.shape}')
    return np.asarray(_embed_text(self.net, self.params, tokens))

  def embed_text(self, texts: list[str]) -> np.ndarray:
    """Prompts -> float32 [B, D] unit-norm embeddings (see `text.TextTokenizer` for cleaning)."""
    return self.embed_text_tokens(self.text_tokenizer.encode(texts))

  def embed_audio(self, wav: Any) -> np.ndarray:
    """Audio [B, N] (or [N]) at 24 kHz -> float32 [B, D]: windows averaged, renormalised."""
    wav = np.asarray(wav, np.float32)
    if wav.ndim == 1:
      wav = wav[None]
    if wav.ndim != 2 or wav.shape[1] == 0:
      raise ValueError(f'MuLan: audio must be [batch, samples] with samples > 0, got {wav.shape}')
    if not np.all(np.isfinite(wav)):
      raise ValueError('MuLan: audio contains NaN or Inf')
    window = self.config.window_samples
    if wav.shape[1] < window:
      wav = np.pad(wav, ((0, 0), (0, window - wav.shape[1])))
    return np.asarray(_embed_audio(self.net, self.params, wav, window, self.config.hop_samples))

  # -- tokens -------------------------------------------------------------------------------

  def quantize(self, emb: Any) -> np.ndarray:
    """Embeddings [..., D] -> int32 RVQ codes [..., levels]."""
    return np.asarray(frozen_folder.quantize(self._codebooks(), jnp.asarray(emb, jnp.float32)))

  def dequantize(self, codes: Any) -> np.ndarray:
    """Codes [..., n <= levels] -> float32 [..., D] (sum of the code vectors, not renormalised)."""
    return np.asarray(frozen_folder.dequantize(self._codebooks(), jnp.asarray(codes, jnp.int32)))

  def text_tokens(self, texts: list[str]) -> np.ndarray:
    """Prompts -> int32 [B, levels] MuLan tokens (what MusicLM conditions on at inference)."""
    return self.quantize(self.embed_text(texts))

  def audio_tokens(self, wav: Any) -> np.ndarray:
    """Audio [B, N] -> int32 [B, levels] MuLan tokens (the training-time conditioning)."""
    return self.quantize(self.embed_audio(wav))

  def with_codebooks(self, codebooks: np.ndarray) -> 'MuLan':
    """The same model with other RVQ codebooks."""
    return MuLan(config=self.config, params=self.params, spm_path=self.spm_path,
                 codebooks=codebooks, text_length=self.text_length)

  # -- persistence --------------------------------------------------------------------------

  def save(self, directory: str, *, extra: dict[str, Any] | None = None) -> None:
    """Writes the folder described in the module docstring, atomically as a whole.

    Args:
      directory: destination folder (replaced if it exists).
      extra: file name -> JSON-serialisable object, written into the folder too (reports).
    """
    meta = {'format': FORMAT, 'config': self.config.to_dict(), 'text_length': self.text_length,
            'spm': SPM_FILE if self.spm_path else None}
    frozen_folder.save(directory, config_file=CONFIG_FILE, meta=meta, params=self.params,
                       codebooks=self.codebooks,
                       copies={SPM_FILE: self.spm_path} if self.spm_path else None, extra=extra)

  @classmethod
  def load(cls, directory: str) -> 'MuLan':
    """Reads a folder written by `save`."""
    meta, params, codebooks = frozen_folder.load(directory, config_file=CONFIG_FILE,
                                                 format_name=FORMAT, what='MuLan')
    config = model_lib.MuLanConfig.from_dict(meta['config'])
    spm_path = os.path.join(directory, meta['spm']) if meta.get('spm') else None
    return cls(config=config, params=params, spm_path=spm_path, codebooks=codebooks,
               text_length=meta.get('text_length', 64))
