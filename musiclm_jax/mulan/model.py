"""MuLan: audio and text towers trained with a symmetric contrastive loss (a TrainableModel).

  batch = {'audio': float32 [B, N] (24 kHz), 'text_tokens': int32 [B, L] (0-padded ids)}

Each tower's pooled features go through a linear projection into the joint space
(`embed_dim`, 128 in the paper) and are L2-normalised. The loss is the symmetric softmax
cross-entropy of the [B, B] cosine-similarity matrix divided by a learnable temperature
(stored as its log, clipped to [min_temperature, max_temperature]); the matching pair of each
row/column is on the diagonal.

Negatives are the whole global batch: the trainer calls `loss` inside `jax.jit` on global
arrays sharded along the batch over the mesh, so `audio_emb @ text_emb.T` is the similarity of
every example with every other one on any device (XLA gathers the [B, D] embeddings; nothing
here looks at a local shard). The embeddings carry the logical constraint
('activation_batch', 'activation_embed').
"""

import dataclasses
import math
from typing import Any

import flax.linen as nn
import jax
import jax.numpy as jnp
import numpy as np

from musiclm_jax import audio as audio_lib
from musiclm_jax import json_config
from musiclm_jax.mulan import audio_tower, text_tower

PyTree = Any
EMBED_AXES = ('activation_batch', 'activation_embed')


@dataclasses.dataclass(frozen=True)
class MuLanConfig(json_config.JsonConfig):
  """Sizes of both towers, the front-end, the loss and inference windows. Defaults: paper.

  Paper: ResNet-50 audio tower (bottleneck 3-4-6-3, widths 64..512, 2048 features), BERT-base
  sized text tower (12 x 768, 12 heads, FFN 3072), 128-d joint space, 10 s audio windows at a
  1 s stride averaged at inference, 12 x 1024 RVQ. The front-end is a 64-band log-mel with a
  25 ms window (600 samples) and a 10 ms hop at 24 kHz.

  `stft='fft'` uses the shared front-end `musiclm_jax.audio.log_mel`; `'dft'` computes the same
  features with a DFT matrix product instead of an FFT op. XLA:CPU runs its FFT on the intra-op
  thread pool it is itself running on, which can deadlock when the pool's other workers wait in
  a collective (sharded steps on fake CPU devices); 'dft' avoids that at O(n_fft^2) cost.
  """
  sample_rate: int = 24000
  n_mels: int = 64
  n_fft: int = 1024
  win_length: int = 600
  hop_length: int = 240
  log_mel_mean: float = -4.0  # fixed affine on the natural-log mel (floor 1e-5)
  log_mel_std: float = 4.0
  audio_stem_width: int = 64
  audio_stage_sizes: tuple[int, ...] = (3, 4, 6, 3)
  audio_widths: tuple[int, ...] = (64, 128, 256, 512)
  audio_block: str = 'bottleneck'
  norm_groups: int = 32
  vocab_size: int = 2000
  max_text_length: int = 512
  text_width: int = 768
  text_layers: int = 12
  text_heads: int = 12
  text_mlp_dim: int = 3072
  text_pool: str = 'cls'
  embed_dim: int = 128
  init_temperature: float = 0.07
  min_temperature: float = 0.01
  max_temperature: float = 1.0
  window_seconds: float = 10.0
  hop_seconds: float = 1.0
  rvq_levels: int = 12
  rvq_codebook_size: int = 1024
  stft: str = 'fft'
  dtype: str = 'float32'

  def __post_init__(self):
    object.__setattr__(self, 'audio_stage_sizes', tuple(int(s) for s in self.audio_stage_sizes))
    object.__setattr__(self, 'audio_widths', tuple(int(w) for w in self.audio_widths))
    if not 0 < self.min_temperature <= self.init_temperature <= self.max_temperature:
      raise ValueError('MuLanConfig: need 0 < min_temperature <= init_temperature <= '
                       f'max_temperature, got {self.min_temperature}, {self.init_temperature}, '
                       f'{self.max_temperature}')
    if self.window_seconds <= 0 or self.hop_seconds <= 0:
      raise ValueError(f'MuLanConfig: window_seconds and hop_seconds must be positive, got '
                       f'{self.window_seconds}, {self.hop_seconds}')
    if self.stft not in ('fft', 'dft'):
      raise ValueError(f"MuLanConfig.stft: expected 'fft' or 'dft', got {self.stft!r}")
    if self.text_width % self.text_heads:
      raise ValueError(f'MuLanConfig: text_width {self.text_width} not a multiple of '
                       f'text_heads {self.text_heads}')

  @property
  def mel_config(self) -> audio_lib.MelConfig:
    return audio_lib.MelConfig(sample_rate=self.sample_rate, n_fft=self.n_fft,
                               win_length=self.win_length, hop_length=self.hop_length,
                               n_mels=self.n_mels)

  @property
  def window_samples(self) -> int:
    return int(round(self.window_seconds * self.sample_rate))

  @property
  def hop_samples(self) -> int:
    return int(round(self.hop_seconds * self.sample_rate))


def log_mel(wav: jax.Array, config: MuLanConfig) -> jax.Array:
  """float32 [B, T, n_mels] log-mel of [B, N] audio, by FFT or DFT matrix (`config.stft`)."""
  return audio_lib.log_mel(wav, dataclasses.replace(config.mel_config, transform=config.stft))


def _projection(features: int, name: str) -> nn.Dense:
  return nn.Dense(features, name=name,
                  kernel_init=nn.with_logical_partitioning(nn.initializers.lecun_normal(),
                                                           ('mlp', 'embed')),
                  bias_init=nn.with_logical_partitioning(nn.initializers.zeros, ('embed',)))


def l2_normalize(x: jax.Array, eps: float = 1e-6) -> jax.Array:
  x = x.astype(jnp.float32)
  return x / jnp.sqrt(jnp.maximum(jnp.sum(jnp.square(x), axis=-1, keepdims=True), eps * eps))


class MuLan(nn.Module):
  """Both towers, projections and the temperature.

  Attributes:
    config: MuLanConfig.
  """
  config: MuLanConfig

  def setup(self):
    c = self.config
    dtype = jnp.dtype(c.dtype)
    self.audio_tower = audio_tower.ResNet(
        stem_width=c.audio_stem_width, stage_sizes=c.audio_stage_sizes, widths=c.audio_widths,
        block=c.audio_block, norm_groups=c.norm_groups, dtype=dtype)
    self.text_tower = text_tower.TextEncoder(
        vocab_size=c.vocab_size, max_length=c.max_text_length, width=c.text_width,
        num_layers=c.text_layers, num_heads=c.text_heads, mlp_dim=c.text_mlp_dim,
        pool=c.text_pool, dtype=dtype)
    self.audio_projection = _projection(c.embed_dim, 'audio_projection')
    self.text_projection = _projection(c.embed_dim, 'text_projection')
    self.log_temperature = self.param(
        'log_temperature', nn.with_logical_partitioning(
            nn.initializers.constant(math.log(c.init_temperature)), ()), (), jnp.float32)

  def embed_audio(self, wav: jax.Array) -> jax.Array:
    """One embedding per clip (the clip is one window): [B, N] -> float32 [B, D], unit norm."""
    c = self.config
    mel = log_mel(wav.astype(jnp.float32), c)  # [B, T, n_mels]
    mel = (mel - c.log_mel_mean) / c.log_mel_std
    mel = nn.with_logical_constraint(mel, ('activation_batch', 'activation_length', None))
    features = self.audio_tower(mel)  # [B, audio features]
    emb = l2_normalize(self.audio_projection(features))  # [B, D]
    return nn.with_logical_constraint(emb, EMBED_AXES)

  def embed_text(self, tokens: jax.Array) -> jax.Array:
    """[B, L] int ids (0-padded) -> float32 [B, D], unit norm."""
    features = self.text_tower(tokens)  # [B, text_width]
    emb = l2_normalize(self.text_projection(features))  # [B, D]
    return nn.with_logical_constraint(emb, EMBED_AXES)

  def temperature(self) -> jax.Array:
    c = self.config
    log_t = jnp.clip(self.log_temperature.astype(jnp.float32), math.log(c.min_temperature),
                     math.log(c.max_temperature))
    return jnp.exp(log_t)

  def __call__(self, wav: jax.Array, tokens: jax.Array
               ) -> tuple[jax.Array, jax.Array, jax.Array]:
    """Returns (audio_emb [B, D], text_emb [B, D], temperature [])."""
    return self.embed_audio(wav), self.embed_text(tokens), self.temperature()


def contrastive_loss(audio_emb: jax.Array, text_emb: jax.Array, temperature: jax.Array
                     ) -> tuple[jax.Array, dict[str, jax.Array]]:
  """Symmetric InfoNCE over the whole (global) batch.

  loss = (CE(rows of S / t, diag) + CE(columns of S / t, diag)) / 2 with S = A T^T.

  Args:
    audio_emb: [B, D] unit-norm audio embeddings.
    text_emb: [B, D] unit-norm text embeddings; row i pairs with audio row i.
    temperature: scalar > 0.

  Returns:
    (loss, metrics: loss, temperature, audio_to_text_accuracy, text_to_audio_accuracy).
  """
  audio_emb = audio_emb.astype(jnp.float32)
  text_emb = text_emb.astype(jnp.float32)
  logits = jnp.matmul(audio_emb, text_emb.T, precision=jax.lax.Precision.HIGHEST) / temperature
  labels = jnp.arange(logits.shape[0])
  a2t = -jnp.mean(jnp.take_along_axis(jax.nn.log_softmax(logits, axis=1), labels[:, None], 1))
  t2a = -jnp.mean(jnp.take_along_axis(jax.nn.log_softmax(logits, axis=0), labels[None, :], 0))
  loss = 0.5 * (a2t + t2a)
  metrics = {
      'loss': loss,
      'temperature': temperature.astype(jnp.float32),
      'audio_to_text_accuracy': jnp.mean((jnp.argmax(logits, axis=1) == labels).astype(
          jnp.float32)),
      'text_to_audio_accuracy': jnp.mean((jnp.argmax(logits, axis=0) == labels).astype(
          jnp.float32)),
  }
  return loss, metrics


class MuLanModel:
  """TrainableModel wrapper for the trainer: one parameter group, no model state.

  Args:
    config: MuLanConfig (default: the paper's sizes).
  """
  param_groups = ('model',)

  def __init__(self, *, config: MuLanConfig | None = None):
    self.config = config or MuLanConfig()
    self.net = MuLan(self.config)

  def init(self, rng: jax.Array, batch: dict[str, jax.Array]) -> tuple[dict[str, PyTree], PyTree]:
    variables = self.net.init(rng, jnp.asarray(batch['audio']), jnp.asarray(batch['text_tokens']))
    return {'model': variables['params']}, {}

  def loss(self, group: str, params: dict[str, PyTree], model_state: PyTree,
           batch: dict[str, jax.Array], rng: jax.Array, step: jax.Array
           ) -> tuple[jax.Array, tuple[dict[str, jax.Array], PyTree]]:
    del group, rng, step
    audio_emb, text_emb, temperature = self.net.apply(
        {'params': params['model']}, batch['audio'], batch['text_tokens'])
    loss, metrics = contrastive_loss(audio_emb, text_emb, temperature)
    return loss, (metrics, model_state)


def param_count(config: MuLanConfig) -> dict[str, int]:
  """Closed-form parameter counts: audio tower, text tower, projections, total."""
  audio = audio_tower.resnet_param_count(
      stem_width=config.audio_stem_width, stage_sizes=config.audio_stage_sizes,
      widths=config.audio_widths, block=config.audio_block)
  text = text_tower.text_encoder_param_count(
      vocab_size=config.vocab_size, max_length=config.max_text_length, width=config.text_width,
      num_layers=config.text_layers, mlp_dim=config.text_mlp_dim)
  audio_out = config.audio_widths[-1] * (4 if config.audio_block == 'bottleneck' else 1)
  projections = (audio_out + 1) * config.embed_dim + (config.text_width + 1) * config.embed_dim
  return {'audio_tower': audio, 'text_tower': text, 'projections': projections,
          'total': audio + text + projections + 1}


def count_params(tree: PyTree) -> int:
  """Number of scalars in a (possibly boxed or abstract) parameter tree."""
  leaves = jax.tree.leaves(nn.unbox(tree))
  return int(sum(np.prod(x.shape) for x in leaves))
