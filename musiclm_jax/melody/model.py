"""Melody embedder: a ViT-like transformer over log-mel patches, trained with a triplet loss.

  batch = {'audio': float32 [B, window_samples] (24 kHz), 'melody': int32 [B] melody ids}

MusicLM's melody conditioning: a small transformer (paper: 12 layers, 6 heads, width 512, FFN
1024) maps each 4 s window of audio to one 192-d, L2-normalised embedding; windows are taken
every 3 s (3 per 10 s clip) and each embedding is quantized by an RVQ (24 x 512), giving the
melody tokens that are concatenated with the MuLan tokens as the semantic stage's conditioning.
It is trained on pairs of clips that share a melody but differ in acoustics (instrumentation,
hum, whistle) with a semi-hard triplet loss mined in the global batch
(`musiclm_jax.melody.losses`); examples with the same `melody` id are positives, all others
negatives.

Network: shared log-mel front-end (`musiclm_jax.audio.log_mel`; `stft='dft'` computes it by a
DFT matmul, which is safe in sharded CPU programs), a fixed affine normalisation, patches of
`patch_frames` frames x all mel bands (a patch keeps absolute frequency, which is what pitch
is), a linear patch embedding, learned positions, `num_layers` pre-norm bidirectional encoder
blocks (the layer library's `EncoderAttention`, `MlpBlock` and `make_norm`, as in the MuLan
text tower), a final LayerNorm, mean pooling, a linear projection to `embed_dim`, L2
normalisation. `head_dim` is its own setting: the paper's width 512 does not divide by its 6
heads, so attention runs at 6 x 64 inside the 512-wide residual stream.
"""

import dataclasses
from typing import Any

import flax.linen as nn
import jax
import jax.numpy as jnp
import numpy as np

from musiclm_jax import audio as audio_lib
from musiclm_jax.layers.attention import EncoderAttention
from musiclm_jax.layers.transformer import MlpBlock, make_norm
from musiclm_jax import json_config
from musiclm_jax.melody import losses

PyTree = Any
ACTIVATION_AXES = ('activation_batch', 'activation_length', 'activation_embed')
EMBED_AXES = ('activation_batch', 'activation_embed')


@dataclasses.dataclass(frozen=True)
class MelodyConfig(json_config.JsonConfig):
  """Front-end, network, loss and windowing of the melody embedder. Defaults: paper sizes.

  The front-end is a 96-band log-mel up to 8 kHz with a 1024-point (43 ms) window and a 20 ms
  hop at 24 kHz (50 frames/s); a 4 s window gives 201 frames, cut into 100 patches of 2 frames.
  """
  sample_rate: int = 24000
  n_fft: int = 1024
  win_length: int = 1024
  hop_length: int = 480
  n_mels: int = 96
  fmin: float = 0.0
  fmax: float = 8000.0
  log_mel_mean: float = -7.0  # fixed affine on the natural-log mel (floor 1e-5)
  log_mel_std: float = 4.0
  patch_frames: int = 2
  width: int = 512
  num_layers: int = 12
  num_heads: int = 6
  head_dim: int = 64
  mlp_dim: int = 1024
  embed_dim: int = 192
  margin: float = 0.2
  window_seconds: float = 4.0
  hop_seconds: float = 3.0
  rvq_levels: int = 24
  rvq_codebook_size: int = 512
  stft: str = 'dft'
  dtype: str = 'float32'

  def __post_init__(self):
    if self.window_seconds <= 0 or self.hop_seconds <= 0:
      raise ValueError(f'MelodyConfig: window_seconds and hop_seconds must be positive, got '
                       f'{self.window_seconds}, {self.hop_seconds}')
    if self.stft not in ('fft', 'dft'):
      raise ValueError(f"MelodyConfig.stft: expected 'fft' or 'dft', got {self.stft!r}")
    if min(self.patch_frames, self.width, self.num_layers, self.num_heads, self.head_dim,
           self.mlp_dim, self.embed_dim) < 1:
      raise ValueError(f'MelodyConfig: sizes must be positive: {self}')
    if self.margin < 0:
      raise ValueError(f'MelodyConfig.margin must be >= 0, got {self.margin}')
    if self.num_tokens < 1:
      raise ValueError(f'MelodyConfig: a {self.window_seconds} s window gives '
                       f'{self.num_frames} frames, fewer than patch_frames {self.patch_frames}')

  @property
  def mel_config(self) -> audio_lib.MelConfig:
    return audio_lib.MelConfig(sample_rate=self.sample_rate, n_fft=self.n_fft,
                               win_length=self.win_length, hop_length=self.hop_length,
                               n_mels=self.n_mels, fmin=self.fmin, fmax=self.fmax,
                               transform=self.stft)

  @property
  def window_samples(self) -> int:
    return int(round(self.window_seconds * self.sample_rate))

  @property
  def hop_samples(self) -> int:
    return int(round(self.hop_seconds * self.sample_rate))

  @property
  def num_frames(self) -> int:
    return audio_lib.num_frames(self.window_samples, self.mel_config)

  @property
  def num_tokens(self) -> int:
    """Patches per window (a trailing partial patch is dropped)."""
    return self.num_frames // self.patch_frames

  def num_windows(self, num_samples: int) -> int:
    """Windows of a clip: 1 + (N - window) // hop (at least 1; the tail is not used)."""
    return num_windows(num_samples, self.window_samples, self.hop_samples)


def num_windows(num_samples: int, window: int, hop: int) -> int:
  """1 + (num_samples - window) // hop, and 1 for a clip not longer than one window."""
  if num_samples <= window:
    return 1
  return 1 + (num_samples - window) // hop


def window_starts(num_samples: int, window: int, hop: int) -> list[int]:
  """Sample offsets of the windows of a clip (0, hop, 2 hop, ...)."""
  return [w * hop for w in range(num_windows(num_samples, window, hop))]


def frame_windows(wav: jax.Array, window: int, hop: int) -> jax.Array:
  """[B, N] -> [B, W, window]: windows every `hop` samples (a short clip is zero-padded)."""
  if wav.shape[1] < window:
    wav = jnp.pad(wav, ((0, 0), (0, window - wav.shape[1])))
  starts = window_starts(wav.shape[1], window, hop)
  return jnp.stack([wav[:, s:s + window] for s in starts], axis=1)


def l2_normalize(x: jax.Array, eps: float = 1e-6) -> jax.Array:
  x = x.astype(jnp.float32)
  return x / jnp.sqrt(jnp.maximum(jnp.sum(jnp.square(x), axis=-1, keepdims=True), eps * eps))


class EncoderBlock(nn.Module):
  """Pre-norm bidirectional encoder layer: x + Attn(LN(x)), then x + FFN(LN(x)).

  Attributes:
    num_heads: attention heads.
    head_dim: size of each head (heads x head_dim need not equal the width).
    mlp_dim: FFN hidden width.
    dtype: compute dtype.
  """
  num_heads: int
  head_dim: int
  mlp_dim: int
  dtype: Any = jnp.float32

  @nn.compact
  def __call__(self, x: jax.Array, mask: jax.Array) -> jax.Array:
    """Maps [batch, length, embed] (mask [batch, length], True = real) -> same shape."""
    x = nn.with_logical_constraint(x, ACTIVATION_AXES)
    h = make_norm('layer', dtype=self.dtype, param_dtype=jnp.float32, name='pre_attention_norm')(x)
    x = x + EncoderAttention(num_heads=self.num_heads, head_dim=self.head_dim, dtype=self.dtype,
                             name='attention')(h, mask)
    x = nn.with_logical_constraint(x, ACTIVATION_AXES)
    h = make_norm('layer', dtype=self.dtype, param_dtype=jnp.float32, name='pre_mlp_norm')(x)
    x = x + MlpBlock(mlp_dim=self.mlp_dim, activation='gelu', gated=False, dtype=self.dtype,
                     name='mlp')(h)
    return nn.with_logical_constraint(x, ACTIVATION_AXES)


class MelodyEncoder(nn.Module):
  """One window of audio -> one unit-norm melody embedding.

  Attributes:
    config: MelodyConfig.
  """
  config: MelodyConfig

  @nn.compact
  def __call__(self, wav: jax.Array) -> jax.Array:
    """Maps audio [batch, samples <= window_samples] to float32 [batch, embed_dim], unit norm.

    A shorter input is zero-padded to one window; a longer one is an error (use
    `embed_windows`).
    """
    c = self.config
    dtype = jnp.dtype(c.dtype)
    batch, samples = wav.shape
    if samples > c.window_samples:
      raise ValueError(f'MelodyEncoder: {samples} samples exceed one window '
                       f'({c.window_samples}); use embed_windows')
    wav = jnp.pad(wav.astype(jnp.float32), ((0, 0), (0, c.window_samples - samples)))
    mel = audio_lib.log_mel(wav, c.mel_config)  # [batch, frames, n_mels]
    mel = (mel - c.log_mel_mean) / c.log_mel_std
    tokens = c.num_tokens
    patches = mel[:, :tokens * c.patch_frames].reshape(batch, tokens, c.patch_frames * c.n_mels)
    patches = nn.with_logical_constraint(patches, ('activation_batch', 'activation_length', None))
    x = nn.Dense(c.width, dtype=dtype, name='patch_embedding',
                 kernel_init=nn.with_logical_partitioning(nn.initializers.lecun_normal(),
                                                          ('conv_in', 'embed')),
                 bias_init=nn.with_logical_partitioning(nn.initializers.zeros, ('embed',)))(
                     patches.astype(dtype))  # [batch, tokens, width]
    positions = self.param('position_embedding',
                           nn.with_logical_partitioning(nn.initializers.normal(0.02),
                                                        (None, 'embed')),
                           (tokens, c.width), jnp.float32)
    x = x + positions.astype(dtype)[None]
    mask = jnp.ones((batch, tokens), bool)
    for layer in range(c.num_layers):
      x = EncoderBlock(num_heads=c.num_heads, head_dim=c.head_dim, mlp_dim=c.mlp_dim,
                       dtype=dtype, name=f'layer{layer + 1}')(x, mask)
    x = make_norm('layer', dtype=dtype, param_dtype=jnp.float32, name='final_norm')(x)
    pooled = jnp.mean(x, axis=1)  # [batch, width]
    emb = nn.Dense(c.embed_dim, dtype=dtype, name='projection',
                   kernel_init=nn.with_logical_partitioning(nn.initializers.lecun_normal(),
                                                            ('embed', 'mlp')),
                   bias_init=nn.with_logical_partitioning(nn.initializers.zeros, ('mlp',)))(
                       pooled)  # [batch, embed_dim]
    return nn.with_logical_constraint(l2_normalize(emb), EMBED_AXES)

  def embed_windows(self, wav: jax.Array) -> jax.Array:
    """Audio [batch, N] -> float32 [batch, W, embed_dim]: windows every hop, each embedded."""
    c = self.config
    frames = frame_windows(wav.astype(jnp.float32), c.window_samples, c.hop_samples)
    batch, count = frames.shape[:2]
    emb = self(frames.reshape(batch * count, c.window_samples))  # [batch * W, embed_dim]
    return emb.reshape(batch, count, c.embed_dim)


class MelodyModel:
  """TrainableModel wrapper: one parameter group, no model state, semi-hard triplet loss.

  Args:
    config: MelodyConfig (default: the paper's sizes).
  """
  param_groups = ('model',)

  def __init__(self, *, config: MelodyConfig | None = None):
    self.config = config or MelodyConfig()
    self.net = MelodyEncoder(self.config)

  def init(self, rng: jax.Array, batch: dict[str, jax.Array]) -> tuple[dict[str, PyTree], PyTree]:
    variables = self.net.init(rng, jnp.asarray(batch['audio'], jnp.float32))
    return {'model': variables['params']}, {}

  def loss(self, group: str, params: dict[str, PyTree], model_state: PyTree,
           batch: dict[str, jax.Array], rng: jax.Array, step: jax.Array
           ) -> tuple[jax.Array, tuple[dict[str, jax.Array], PyTree]]:
    if group != 'model':
      raise ValueError(f"MelodyModel has one parameter group 'model', got {group!r}")
    del rng, step
    emb = self.net.apply({'params': params['model']}, batch['audio'])  # [B, embed_dim]
    loss, metrics = losses.triplet_semihard_loss(emb, batch['melody'], margin=self.config.margin)
    return loss, (metrics, model_state)


def param_count(config: MelodyConfig) -> dict[str, int]:
  """Closed-form parameter counts: patch embedding, positions, encoder, projection, total."""
  w, inner = config.width, config.num_heads * config.head_dim
  patch = config.patch_frames * config.n_mels * w + w
  positions = config.num_tokens * w
  per_layer = (4 * w * inner + 2 * inner + w  # q, k, v, out; biases on q, v and out
               + 2 * w * config.mlp_dim  # FFN without biases
               + 4 * w)  # two LayerNorms
  encoder = config.num_layers * per_layer + 2 * w  # + final LayerNorm
  projection = w * config.embed_dim + config.embed_dim
  return {'patch_embedding': patch, 'positions': positions, 'encoder': encoder,
          'projection': projection, 'total': patch + positions + encoder + projection}


def count_params(tree: PyTree) -> int:
  """Number of scalars in a (possibly boxed or abstract) parameter tree."""
  return int(sum(np.prod(x.shape) for x in jax.tree.leaves(nn.unbox(tree))))
