"""w2v-BERT (Chung et al. 2021) over log-mel frames of 24 kHz audio, producing 25 Hz features.

  audio [B, N] --log-mel (hop 240, 100 Hz)--> [B, 4T, n_mels]
    --FeatureEncoder (two 3x3 stride-2 conv2d, x4 in time)--> features [B, T, embed]   (25 Hz)
  features --GumbelQuantizer--> target ids [B, T] and quantized targets          (unmasked input)
  features with masked spans replaced by a learned embedding
    --contrastive module (conformer)--> context [B, T, embed]
    --MLM module (conformer)--> [B, T, embed] --head--> logits over target ids

  L = contrastive_weight * (L_contrastive + diversity_weight * L_diversity) + mlm_weight * L_mlm

T = N // 960 (the log-mel's extra centred frame and any remainder are dropped), so a
24 kHz input whose length is a multiple of 960 gives exactly N / 960 frames.

Choices where the paper leaves room:
  * Front end: `log_mel` here equals `musiclm_jax.audio.log_mel` but computes the DFT as a
    matmul (it shards along the batch; see its docstring), then every frame is standardised
    over its mel bins (loudness-invariant; `input_norm='frame'`, no statistics over time).
    `input_norm='frame_utterance'` then also removes the utterance's mean frame (its steady
    spectral envelope, i.e. mostly timbre) and rescales to unit variance, as utterance CMVN.
  * The quantizer is wav2vec 2.0's Gumbel-softmax quantizer with one codebook of
    `codebook_size` entries (hard straight-through one-hot in training, argmax at inference);
    the diversity loss is 1 - perplexity(mean softmax) / codebook_size. Its logit projection is
    initialised N(0, 1) as in wav2vec 2.0 (fairseq), so the logits of the layer-normed features
    start with std ~sqrt(embed_dim) and the hard Gumbel sample is mostly the argmax. (With a
    1/sqrt(fan_in) init the logits start at std ~1: the hard sample -- drawn from softmax(logits)
    whatever the temperature -- was a random code for ~96% of frames, and the diversity loss is
    then minimised by flattening every frame's softmax, so the contrastive targets stayed noise
    and the contrastive accuracy at chance.) The MLM targets are the noise-free argmax codes.
  * Contrastive negatives are all other masked frames of the same utterance (a full softmax over
    masked positions instead of K sampled distractors): deterministic and shape-static.
    Negatives with the positive's code are kept, so collapsing the codebook never pays
    (excluding them, as fairseq does, let the tiny model collapse to one code per utterance,
    contrastive loss 0). Identical quantized vectors cannot be told apart, so
    `contrastive_accuracy` counts a masked frame as right when the best-scoring candidate has
    the positive's code; `contrastive_chance` is that accuracy for a random pick (the mean share
    of masked frames with the positive's code).
  * Spans: each of T + span - 1 candidate starts (including starts before frame 0) is drawn with
    probability `mask_prob`, so every frame is masked with probability 1 - (1 - p)^span
    (`expected_mask_fraction`), 0.49 for the paper's p = 0.065, span = 10.
"""

import dataclasses
from typing import Any

import flax.linen as nn
import jax
import jax.numpy as jnp

from musiclm_jax import audio as audio_lib
from musiclm_jax import json_config
from musiclm_jax.layers import conformer

SUBSAMPLING = 4  # two stride-2 convolutions in time
INPUT_NORMS = ('frame', 'frame_utterance')


@dataclasses.dataclass(frozen=True)
class W2VBertConfig(json_config.JsonConfig):
  """Sizes and training hyper-parameters; defaults are the paper's 0.6B (XL) model.

  w2v-BERT XL: conformer width 1024, 8 heads, FFN 4096, 12 contrastive + 12 MLM layers; the
  conv kernel (not stated for XL) is 5 here. Tokens come from `token_layer` (1-based) of the MLM
  module, the 7th as in AudioLM/MusicLM; 0 means the contrastive module's output.
  """
  sample_rate: int = 24000
  n_mels: int = 128
  n_fft: int = 1024
  hop_length: int = 240
  subsampling_channels: int = 128
  embed_dim: int = 1024
  num_heads: int = 8
  mlp_dim: int = 4096
  conv_kernel_size: int = 5
  num_contrastive_layers: int = 12
  num_mlm_layers: int = 12
  codebook_size: int = 1024
  codebook_dim: int = 1024
  projection_dim: int = 1024
  dropout_rate: float = 0.1
  mask_prob: float = 0.065
  mask_span: int = 10
  contrastive_temperature: float = 0.1
  gumbel_temperature_start: float = 2.0
  gumbel_temperature_end: float = 0.5
  gumbel_temperature_decay: float = 0.999995
  contrastive_weight: float = 1.0
  diversity_weight: float = 0.1
  mlm_weight: float = 1.0
  token_layer: int = 7
  input_norm: str = 'frame'
  dtype: str = 'float32'
  attention_implementation: str | None = None

  def __post_init__(self):
    if not 0.0 <= self.mask_prob <= 1.0 or self.mask_span < 1:
      raise ValueError(f'W2VBertConfig: need 0 <= mask_prob <= 1 and mask_span >= 1, got '
                       f'{self.mask_prob}, {self.mask_span}')
    if not 0 <= self.token_layer <= self.num_mlm_layers:
      raise ValueError(f'W2VBertConfig.token_layer {self.token_layer} outside '
                       f'[0, num_mlm_layers={self.num_mlm_layers}]')
    if self.input_norm not in INPUT_NORMS:
      raise ValueError(f'W2VBertConfig.input_norm {self.input_norm!r} not in {INPUT_NORMS}')
    if self.n_mels % SUBSAMPLING:
      raise ValueError(f'W2VBertConfig.n_mels {self.n_mels} must be divisible by {SUBSAMPLING}')

  @property
  def samples_per_frame(self) -> int:
    return self.hop_length * SUBSAMPLING

  @property
  def frame_rate(self) -> float:
    return self.sample_rate / self.samples_per_frame

  @property
  def mel_config(self) -> audio_lib.MelConfig:
    return audio_lib.MelConfig(sample_rate=self.sample_rate, n_fft=self.n_fft,
                               hop_length=self.hop_length, n_mels=self.n_mels)

  def num_frames(self, num_samples: int) -> int:
    """Output frames for `num_samples` samples: num_samples // (hop_length * 4)."""
    return num_samples // self.samples_per_frame


def log_mel(wav: jax.Array, config: audio_lib.MelConfig) -> jax.Array:
  """`audio.log_mel` with the DFT written as a matmul: float32 [B, T, n_mels] from [B, N].

  Under a batch-sharded `jax.jit`, XLA's SPMD partitioner all-gathers the input of `jnp.fft`
  (every device would transform the global batch), and on multi-device CPU that all-gather
  next to the mask RNG deadlocked; a matmul partitions along the batch.
  """
  return audio_lib.log_mel(wav, dataclasses.replace(config, transform='dft'))


def expected_mask_fraction(mask_prob: float, mask_span: int) -> float:
  """Probability that a frame is masked under `span_mask`."""
  return 1.0 - (1.0 - mask_prob) ** mask_span


def span_mask(rng: jax.Array, shape: tuple[int, int], *, mask_prob: float,
              mask_span: int) -> jax.Array:
  """Random span mask.

  Each of length + span - 1 candidate starts (frames -span+1 .. length-1) starts a span of
  `mask_span` frames with probability `mask_prob`; spans may overlap and are clipped to the
  sequence, so every frame is masked with probability `expected_mask_fraction`.

  Args:
    rng: PRNG key.
    shape: (batch, length).
    mask_prob: start probability.
    mask_span: span length in frames.

  Returns:
    bool [batch, length].
  """
  batch, length = shape
  starts = jax.random.bernoulli(rng, mask_prob, (batch, length + mask_span - 1))
  # Frame t is covered by starts at candidate indices t .. t + span - 1 (candidate i starts at
  # frame i - span + 1); a windowed sum via cumulative sums.
  csum = jnp.cumsum(starts.astype(jnp.int32), axis=1)  # [batch, length + span - 1]
  csum = jnp.pad(csum, ((0, 0), (1, 0)))
  covered = csum[:, mask_span:] - csum[:, :length]  # [batch, length]
  return covered > 0


def normalize_log_mel(mel: jax.Array, input_norm: str = 'frame') -> jax.Array:
  """The feature encoder's input normalisation of a log-mel [B, F, n_mels].

  'frame': every frame standardised over its mel bins (loudness-invariant, no statistics over
  time; a fixed affine left the quantizer's codes collapsed at init on music-like input).
  'frame_utterance': then minus the utterance's mean frame (its steady spectral envelope) and
  divided by the utterance's standard deviation.
  """
  mean = jnp.mean(mel, axis=-1, keepdims=True)
  std = jnp.std(mel, axis=-1, keepdims=True)
  x = (mel - mean) / (std + 1e-3)  # [B, F, n_mels]
  if input_norm == 'frame_utterance':
    x = x - jnp.mean(x, axis=1, keepdims=True)
    x = x / (jnp.std(x, axis=(1, 2), keepdims=True) + 1e-3)
  elif input_norm != 'frame':
    raise ValueError(f'normalize_log_mel: input_norm {input_norm!r} not in {INPUT_NORMS}')
  return x


def _dense(features: int, names: tuple[str | None, str | None], *, name: str,
           dtype: Any = jnp.float32, use_bias: bool = True) -> nn.Dense:
  return nn.Dense(features, dtype=dtype, use_bias=use_bias, name=name,
                  kernel_init=nn.with_logical_partitioning(nn.initializers.lecun_normal(), names),
                  bias_init=nn.with_logical_partitioning(nn.initializers.zeros_init(),
                                                         (names[1],)))


class FeatureEncoder(nn.Module):
  """Log-mel [B, 4T, n_mels] -> `normalize_log_mel` -> two 3x3 stride-2 conv2d (swish)
  -> Dense -> LayerNorm: [B, T, embed].

  Attributes:
    config: model config.
  """
  config: W2VBertConfig

  @nn.compact
  def __call__(self, mel: jax.Array, *, deterministic: bool) -> jax.Array:
    cfg = self.config
    dtype = jnp.dtype(cfg.dtype)
    x = normalize_log_mel(mel, cfg.input_norm)[..., None]  # [B, 4T, n_mels, 1]
    for i in range(2):
      x = nn.Conv(cfg.subsampling_channels, kernel_size=(3, 3), strides=(2, 2), padding='SAME',
                  dtype=dtype, name=f'conv_{i}',
                  kernel_init=nn.with_logical_partitioning(
                      nn.initializers.lecun_normal(), ('conv_kernel', None, 'conv_in', 'conv_out')),
                  bias_init=nn.with_logical_partitioning(nn.initializers.zeros_init(),
                                                         ('conv_out',)))(x)
      x = nn.swish(x)  # [B, 4T / 2^(i+1), n_mels / 2^(i+1), C]
    batch, frames = x.shape[:2]
    x = x.reshape(batch, frames, -1)  # [B, T, n_mels / 4 * C]
    x = _dense(cfg.embed_dim, ('mlp', 'embed'), name='projection', dtype=dtype)(x)
    x = conformer.layer_norm(name='norm', dtype=dtype)(x)  # [B, T, embed]
    return nn.Dropout(cfg.dropout_rate)(x, deterministic=deterministic)


class GumbelQuantizer(nn.Module):
  """One Gumbel-softmax codebook (wav2vec 2.0), hard straight-through in training.

  Attributes:
    config: model config.
  """
  config: W2VBertConfig

  @nn.compact
  def __call__(self, x: jax.Array, *, temperature: jax.Array | float,
               rng: jax.Array | None) -> tuple[jax.Array, jax.Array, jax.Array]:
    """Quantizes features.

    Args:
      x: [B, T, embed] features.
      temperature: Gumbel-softmax temperature.
      rng: key for Gumbel noise; None for the deterministic argmax.

    Returns:
      (quantized [B, T, codebook_dim], ids int32 [B, T], sampled int32 [B, T], diversity loss
      scalar). `ids` is the noise-free argmax code (the MLM target); `quantized` is the code
      `sampled` (the Gumbel sample in training, else `ids`).
    """
    cfg = self.config
    # N(0, 1) kernel as wav2vec 2.0 (see the module docstring).
    logits = nn.Dense(
        cfg.codebook_size, dtype=jnp.dtype(cfg.dtype), name='logits',
        kernel_init=nn.with_logical_partitioning(nn.initializers.normal(1.0),
                                                 ('embed', 'codebook')),
        bias_init=nn.with_logical_partitioning(nn.initializers.zeros_init(), ('codebook',)))(
            x).astype(jnp.float32)  # [B, T, V]
    codebook = self.param('codebook', nn.with_logical_partitioning(
        nn.initializers.uniform(scale=1.0), ('codebook', 'codebook_dim')),
                          (cfg.codebook_size, cfg.codebook_dim))  # [V, D]
    ids = jnp.argmax(logits, axis=-1)  # [B, T]
    if rng is None:
      sampled = ids
      onehot = jax.nn.one_hot(ids, cfg.codebook_size, dtype=jnp.float32)
    else:
      gumbel = jax.random.gumbel(rng, logits.shape, jnp.float32)
      soft = jax.nn.softmax((logits + gumbel) / temperature, axis=-1)
      sampled = jnp.argmax(soft, axis=-1)  # [B, T]
      hard = jax.nn.one_hot(sampled, cfg.codebook_size, dtype=jnp.float32)
      onehot = hard + soft - jax.lax.stop_gradient(soft)  # straight-through
    quantized = jnp.einsum('btv,vd->btd', onehot, codebook.astype(jnp.float32))
    mean_probs = jnp.mean(jax.nn.softmax(logits, axis=-1), axis=(0, 1))  # [V]
    perplexity = jnp.exp(-jnp.sum(mean_probs * jnp.log(mean_probs + 1e-7)))
    diversity = (cfg.codebook_size - perplexity) / cfg.codebook_size
    return quantized, ids.astype(jnp.int32), sampled.astype(jnp.int32), diversity


class W2VBert(nn.Module):
  """Feature encoder + quantizer + contrastive conformer + MLM conformer.

  Attributes:
    config: model config.
  """
  config: W2VBertConfig

  def setup(self):
    cfg = self.config
    dtype = jnp.dtype(cfg.dtype)
    stack = dict(num_heads=cfg.num_heads, mlp_dim=cfg.mlp_dim,
                 conv_kernel_size=cfg.conv_kernel_size, dropout_rate=cfg.dropout_rate,
                 dtype=dtype, attention_implementation=cfg.attention_implementation)
    self.feature_encoder = FeatureEncoder(cfg)
    self.quantizer = GumbelQuantizer(cfg)
    self.mask_embedding = self.param(
        'mask_embedding', nn.with_logical_partitioning(nn.initializers.uniform(1.0), ('embed',)),
        (cfg.embed_dim,))
    self.contrastive = conformer.ConformerStack(num_layers=cfg.num_contrastive_layers, **stack)
    self.mlm = conformer.ConformerStack(num_layers=cfg.num_mlm_layers, **stack)
    self.context_projection = _dense(cfg.projection_dim, ('embed', 'mlp'), dtype=dtype,
                                     name='context_projection')
    self.target_projection = _dense(cfg.projection_dim, ('codebook_dim', 'mlp'), dtype=dtype,
                                    name='target_projection')
    self.mlm_head = _dense(cfg.codebook_size, ('embed', 'vocab'), dtype=dtype, name='mlm_head')

  def features(self, wav: jax.Array, *, deterministic: bool = True) -> jax.Array:
    """Audio [B, N] at `sample_rate` -> features [B, N // 960, embed] (25 Hz)."""
    cfg = self.config
    frames = cfg.num_frames(wav.shape[-1])
    if frames < 1:
      raise ValueError(f'W2VBert: {wav.shape[-1]} samples are fewer than one '
                       f'{cfg.samples_per_frame}-sample frame')
    mel = log_mel(wav, cfg.mel_config)  # [B, N // hop + 1, n_mels]
    mel = mel[:, :frames * SUBSAMPLING]  # [B, 4T, n_mels]
    return self.feature_encoder(mel, deterministic=deterministic)

  def embed(self, wav: jax.Array, layer: int) -> jax.Array:
    """Unmasked, deterministic output of MLM layer `layer` (1-based; 0: contrastive output).

    Args:
      wav: [B, N] audio.
      layer: MLM layer index.

    Returns:
      [B, N // 960, embed] float32.
    """
    x = self.features(wav)
    x = self.contrastive(x, deterministic=True)
    x = self.mlm(x, deterministic=True, num_layers=layer)
    return x.astype(jnp.float32)

  def __call__(self, wav: jax.Array, *, mask_rng: jax.Array, gumbel_rng: jax.Array | None,
               temperature: jax.Array | float, deterministic: bool = True
               ) -> tuple[jax.Array, dict[str, jax.Array]]:
    """Pre-training forward pass.

    Args:
      wav: [B, N] audio.
      mask_rng: key for the span mask.
      gumbel_rng: key for Gumbel noise (None: argmax targets).
      temperature: Gumbel temperature.
      deterministic: disables dropout (dropout needs a 'dropout' rng when False).

    Returns:
      (total loss, metrics).
    """
    cfg = self.config
    features = self.features(wav, deterministic=deterministic)  # [B, T, E]
    batch, length, _ = features.shape
    quantized, ids, sampled, diversity = self.quantizer(
        features, temperature=temperature, rng=gumbel_rng)  # [B, T, D], [B, T], [B, T]
    mask = span_mask(mask_rng, (batch, length), mask_prob=cfg.mask_prob,
                     mask_span=cfg.mask_span)  # [B, T]
    x = jnp.where(mask[..., None], self.mask_embedding.astype(features.dtype), features)
    context = self.contrastive(x, deterministic=deterministic)  # [B, T, E]
    mlm_out = self.mlm(context, deterministic=deterministic)  # [B, T, E]

    maskf = mask.astype(jnp.float32)
    num_masked = jnp.maximum(jnp.sum(maskf), 1.0)
    # Contrastive: each masked frame against every masked frame of its utterance.
    c = self.context_projection(context).astype(jnp.float32)  # [B, T, P]
    q = self.target_projection(quantized).astype(jnp.float32)  # [B, T, P]
    c = c / (jnp.linalg.norm(c, axis=-1, keepdims=True) + 1e-6)
    q = q / (jnp.linalg.norm(q, axis=-1, keepdims=True) + 1e-6)
    sim = jnp.einsum('btp,bsp->bts', c, q) / cfg.contrastive_temperature  # [B, T, T]
    sim = jnp.where(mask[:, None, :], sim, -1e9)
    log_probs = jax.nn.log_softmax(sim, axis=-1)
    positive = jnp.diagonal(log_probs, axis1=1, axis2=2)  # [B, T]
    contrastive = -jnp.sum(positive * maskf) / num_masked
    # Right when the best candidate carries the positive's code (identical vectors tie).
    best = jnp.argmax(sim, axis=-1)  # [B, T]
    contrastive_acc = jnp.sum(
        (jnp.take_along_axis(sampled, best, axis=1) == sampled) * maskf) / num_masked
    same_code = (sampled[:, :, None] == sampled[:, None, :]) & mask[:, None, :]  # [B, T, T]
    share = jnp.sum(same_code, axis=-1) / jnp.maximum(jnp.sum(maskf, axis=-1, keepdims=True), 1.0)
    contrastive_chance = jnp.sum(share * maskf) / num_masked
    # MLM: predict the (stop-gradient) target ids at masked frames.
    logits = self.mlm_head(mlm_out).astype(jnp.float32)  # [B, T, V]
    targets = jax.lax.stop_gradient(ids)
    ce = -jnp.take_along_axis(jax.nn.log_softmax(logits), targets[..., None], axis=-1)[..., 0]
    mlm = jnp.sum(ce * maskf) / num_masked
    mlm_acc = jnp.sum((jnp.argmax(logits, axis=-1) == targets) * maskf) / num_masked

    loss = (cfg.contrastive_weight * (contrastive + cfg.diversity_weight * diversity)
            + cfg.mlm_weight * mlm)
    used = jnp.zeros((batch, cfg.codebook_size), jnp.float32).at[
        jnp.arange(batch)[:, None], ids].max(1.0)  # [B, V]
    metrics = {
        'loss': loss, 'contrastive_loss': contrastive, 'diversity_loss': diversity,
        'mlm_loss': mlm, 'mlm_accuracy': mlm_acc, 'contrastive_accuracy': contrastive_acc,
        'contrastive_chance': contrastive_chance, 'mask_fraction': jnp.mean(maskf),
        'codes_used': jnp.sum(jnp.max(used, axis=0)),
        'codes_per_utterance': jnp.mean(jnp.sum(used, axis=1)),
        'gumbel_temperature': jnp.asarray(temperature, jnp.float32),
    }
    return loss, metrics
