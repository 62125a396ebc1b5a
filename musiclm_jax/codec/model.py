"""SoundStream codec: the trainable GAN component and the jitted inference codec.

`SoundStreamModel` implements `musiclm_jax.model_api.TrainableModel` with parameter groups
('discriminator', 'generator'):

  params      = {'generator': {'encoder': ..., 'decoder': ...}, 'discriminator': ...}
  model_state = {'quantizer': RVQ state (EMA codebooks, counts, sums, initialized)}

The RVQ codebooks are updated (k-means on the first batch, EMA, dead-code replacement) in
the state returned by the generator loss; the discriminator loss returns the state unchanged.

`SoundStreamCodec` is the inference API (audiocraft's CompressionModel contract):

  codec = SoundStreamCodec(config, params, model_state)
  codes = codec.encode(wav)                 # float [B, N] -> int32 [B, N // hop, num_codebooks]
  wav = codec.decode(codes, num_levels=4)   # int [B, T, n >= 4] -> float32 [B, T * hop]
"""

import dataclasses
import math
from typing import Any

import flax.linen as nn
import jax
import jax.numpy as jnp
import numpy as np

from musiclm_jax.codec import losses as losses_lib
from musiclm_jax.codec.discriminators import DiscriminatorConfig, MultiDiscriminator
from musiclm_jax.codec.losses import LossConfig
from musiclm_jax.codec.seanet import SEANetConfig, SEANetDecoder, SEANetEncoder
from musiclm_jax.layers.conv import init_conv_params
from musiclm_jax.layers.rvq import ResidualVQ, RVQConfig, RVQOutput

PyTree = Any


@dataclasses.dataclass(frozen=True, kw_only=True)
class SoundStreamConfig:
  """Everything that defines a SoundStream codec.

  Attributes:
    sample_rate: audio rate in Hz.
    seanet: encoder/decoder sizes (`seanet.strides` product is the hop length).
    quantizer: RVQ sizes; `quantizer.dim` must equal `seanet.dimension`.
    discriminator: discriminator sizes.
    losses: loss weights.
  """
  sample_rate: int = 24000
  seanet: SEANetConfig = dataclasses.field(default_factory=SEANetConfig)
  quantizer: RVQConfig = dataclasses.field(default_factory=RVQConfig)
  discriminator: DiscriminatorConfig = dataclasses.field(default_factory=DiscriminatorConfig)
  losses: LossConfig = dataclasses.field(default_factory=LossConfig)

  def __post_init__(self):
    if self.quantizer.dim != self.seanet.dimension:
      raise ValueError(f'SoundStreamConfig: quantizer.dim={self.quantizer.dim} != '
                       f'seanet.dimension={self.seanet.dimension}')

  @property
  def hop_length(self) -> int:
    return self.seanet.hop_length

  @property
  def frame_rate(self) -> float:
    return self.sample_rate / self.hop_length


def _check_length(num_samples: int, hop: int, where: str):
  if num_samples % hop:
    raise ValueError(f"{where}: audio length {num_samples} is not a multiple of the hop "
                     f"length {hop}")


def _init_params(module: nn.Module, rng: jax.Array, *args) -> PyTree:
  """Boxed params of a conv-only module from one random draw (see `init_conv_params`)."""
  abstract = jax.eval_shape(lambda k: module.init(k, *args)['params'], rng)
  return init_conv_params(abstract, rng)


class SoundStreamModel:
  """The trainable SoundStream GAN (see module docstring).

  Args:
    sample_rate: audio rate in Hz.
    seanet: SEANetConfig.
    quantizer: RVQConfig.
    discriminator: DiscriminatorConfig.
    losses: LossConfig.
  """
  param_groups = ('discriminator', 'generator')

  def __init__(self, *, sample_rate: int = 24000, seanet: SEANetConfig | None = None,
               quantizer: RVQConfig | None = None,
               discriminator: DiscriminatorConfig | None = None,
               losses: LossConfig | None = None):
    self.config = SoundStreamConfig(
        sample_rate=sample_rate, seanet=seanet or SEANetConfig(),
        quantizer=quantizer or RVQConfig(), discriminator=discriminator or DiscriminatorConfig(),
        losses=losses or LossConfig())
    c = self.config
    self.encoder = SEANetEncoder(config=c.seanet)
    self.decoder = SEANetDecoder(config=c.seanet)
    self.discriminator = MultiDiscriminator(config=c.discriminator)
    self.rvq = ResidualVQ(c.quantizer)
    self.has_discriminator = bool(c.discriminator.stft_windows) or c.discriminator.wave_scales > 0

  # -- TrainableModel ----------------------------------------------------------------------

  def init(self, rng: jax.Array, batch: dict[str, jax.Array]) -> tuple[dict[str, PyTree], PyTree]:
    """Boxed params by group and the (boxed, uninitialised) quantizer state."""
    del batch  # shapes of the parameters do not depend on the batch
    c = self.config
    num = c.hop_length * max(8, math.ceil(4096 / c.hop_length))
    wav = jnp.zeros((1, num), jnp.float32)  # [1, N]
    k_enc, k_dec, k_disc = jax.random.split(rng, 3)
    frames = jnp.zeros((1, num // c.hop_length, c.seanet.dimension), jnp.float32)
    encoder = _init_params(self.encoder, k_enc, wav[..., None])
    decoder = _init_params(self.decoder, k_dec, frames)
    disc = _init_params(self.discriminator, k_disc, wav) if self.has_discriminator else {}
    params = {'generator': {'encoder': encoder, 'decoder': decoder}, 'discriminator': disc}
    return params, {'quantizer': self.rvq.init_state(boxed=True)}

  def loss(self, group: str, params: dict[str, PyTree], model_state: PyTree,
           batch: dict[str, jax.Array], rng: jax.Array, step: jax.Array
           ) -> tuple[jax.Array, tuple[dict[str, jax.Array], PyTree]]:
    """Discriminator hinge loss, or the full generator loss (see `LossConfig`)."""
    wav = jnp.asarray(batch['audio'], jnp.float32)  # [B, N]
    _check_length(wav.shape[-1], self.config.hop_length, "batch['audio']")
    if group == 'discriminator':
      return self._discriminator_loss(params, model_state, wav, rng, step)
    if group == 'generator':
      return self._generator_loss(params, model_state, wav, rng, step)
    raise ValueError(f'SoundStreamModel.loss: unknown parameter group {group!r}')

  # -- internals ---------------------------------------------------------------------------

  def _adversarial_on(self, step: jax.Array) -> jax.Array:
    return jnp.asarray(step) >= self.config.losses.adversarial_start_step

  def _uses_adversary(self) -> bool:
    w = self.config.losses
    return self.has_discriminator and (w.adversarial_weight > 0 or w.feature_weight > 0)

  def generate(self, generator: PyTree, model_state: PyTree, wav: jax.Array, *,
               rng: jax.Array | None, train: bool) -> tuple[jax.Array, RVQOutput]:
    """Encode -> quantize (straight-through) -> decode. wav: [B, N] -> ([B, N], RVQOutput)."""
    z = self.encoder.apply({'params': generator['encoder']}, wav[..., None])  # [B, T, D]
    out = self.rvq.forward(model_state['quantizer'], z.astype(jnp.float32), rng=rng, train=train)
    y = self.decoder.apply({'params': generator['decoder']}, out.quantized.astype(z.dtype))
    return y[..., 0].astype(jnp.float32), out  # [B, N]

  def _discriminate(self, disc_params, real, fake):
    """Runs the discriminators once on [real; fake]. Returns (real outputs, fake outputs)."""
    batch = real.shape[0]
    outputs = self.discriminator.apply({'params': disc_params},
                                       jnp.concatenate([real, fake], axis=0))  # [2B, N]
    split = lambda a: (a[:batch], a[batch:])
    real_out, fake_out = [], []
    for logits, feats in outputs:
      (lr, lf), pairs = split(logits), [split(f) for f in feats]
      real_out.append((lr, [p[0] for p in pairs]))
      fake_out.append((lf, [p[1] for p in pairs]))
    return real_out, fake_out

  def _discriminator_loss(self, params, model_state, wav, rng, step):
    if not self._uses_adversary():
      return jnp.zeros((), jnp.float32), ({'discriminator/hinge': jnp.zeros(())}, model_state)

    def active(_):
      fake, _ = self.generate(jax.lax.stop_gradient(params['generator']), model_state, wav,
                              rng=rng, train=True)
      real_out, fake_out = self._discriminate(params['discriminator'], wav,
                                              jax.lax.stop_gradient(fake))
      return losses_lib.hinge_discriminator_loss(real_out, fake_out)

    loss = jax.lax.cond(self._adversarial_on(step), active,
                        lambda _: jnp.zeros((), jnp.float32), None)
    return loss, ({'discriminator/hinge': loss}, model_state)

  def _generator_loss(self, params, model_state, wav, rng, step):
    c = self.config
    w = c.losses
    y, out = self.generate(params['generator'], model_state, wav, rng=rng, train=True)
    mel = losses_lib.multi_scale_mel_loss(wav, y, sample_rate=c.sample_rate,
                                          windows=w.mel_windows, n_mels=w.mel_bins,
                                          log_floor=w.log_floor)
    loss = w.mel_weight * mel + w.commitment_weight * out.commit_loss
    metrics = {'generator/mel_loss': mel, 'generator/commit_loss': out.commit_loss}
    if w.stft_weight > 0:
      stft = losses_lib.multi_resolution_stft_loss(wav, y, resolutions=w.stft_resolutions,
                                                   log_floor=w.log_floor)
      loss += w.stft_weight * stft
      metrics['generator/stft_loss'] = stft
    if self._uses_adversary():

      def active(_):
        real_out, fake_out = self._discriminate(params['discriminator'], wav, y)
        return (losses_lib.hinge_generator_loss(fake_out),
                losses_lib.feature_matching_loss(real_out, fake_out))

      zero = jnp.zeros((), jnp.float32)
      adv, feat = jax.lax.cond(self._adversarial_on(step), active, lambda _: (zero, zero), None)
      loss += w.adversarial_weight * adv + w.feature_weight * feat
      metrics.update({'generator/adversarial': adv, 'generator/feature_matching': feat})
    n_fft, hop, n_mels = w.metric_mel
    metrics['generator/mel_distance'] = losses_lib.mel_distance(
        wav, y, sample_rate=c.sample_rate, n_fft=n_fft, hop=hop, n_mels=n_mels)
    metrics.update({f'generator/{k}': v for k, v in out.metrics.items()})
    new_state = dict(model_state)
    new_state['quantizer'] = out.state
    return loss, (metrics, new_state)

  def codec(self, params: PyTree, model_state: PyTree) -> 'SoundStreamCodec':
    """The inference codec for trained params / state."""
    return SoundStreamCodec(self.config, params, model_state)


class SoundStreamCodec:
  """Jitted encode/decode of a trained SoundStream (audiocraft CompressionModel contract).

  Args:
    config: SoundStreamConfig (or a SoundStreamModel).
    params: generator params {'encoder', 'decoder'}, or all groups {'generator': ...};
      `nn.Partitioned` boxes are unboxed.
    model_state: {'quantizer': state} or the quantizer state itself.

  Attributes:
    sample_rate: Hz.
    frame_rate: frames (code vectors) per second.
    hop_length: samples per frame.
    num_codebooks: RVQ levels L.
    codebook_size: codes per level (also `cardinality`).
  """

  def __init__(self, config: SoundStreamConfig | SoundStreamModel, params: PyTree,
               model_state: PyTree):
    if isinstance(config, SoundStreamModel):
      config = config.config
    self.config = config
    params = nn.unbox(params)
    model_state = nn.unbox(model_state)
    self.params = params.get('generator', params)
    self.state = model_state.get('quantizer', model_state)
    self.sample_rate = config.sample_rate
    self.hop_length = config.hop_length
    self.frame_rate = config.frame_rate
    self.num_codebooks = config.quantizer.num_levels
    self.codebook_size = config.quantizer.codebook_size
    self.cardinality = self.codebook_size
    self._rvq = ResidualVQ(config.quantizer)
    self._encoder = SEANetEncoder(config=config.seanet)
    self._decoder = SEANetDecoder(config=config.seanet)
    self._encode = jax.jit(self._encode_impl)
    self._decode = jax.jit(self._decode_impl)

  def _encode_impl(self, params, state, wav):
    z = self._encoder.apply({'params': params['encoder']}, wav[..., None])  # [B, T, D]
    return self._rvq.encode(state, z.astype(jnp.float32))  # [B, T, L]

  def _decode_impl(self, params, state, codes, num_levels):
    z = self._rvq.decode(state, codes, num_levels)  # [B, T, D]
    return self._decoder.apply({'params': params['decoder']}, z)[..., 0].astype(jnp.float32)

  def encode(self, wav: jax.Array) -> jax.Array:
    """float [B, N] (or [N]) audio at `sample_rate` -> int32 codes [B, ceil(N / hop), L].

    Audio whose length is not a multiple of the hop is zero-padded on the right.
    """
    wav = jnp.asarray(wav, jnp.float32)
    if wav.ndim == 1:
      wav = wav[None]
    if wav.ndim != 2 or wav.shape[-1] == 0:
      raise ValueError(f'SoundStreamCodec.encode: expected non-empty audio [batch, samples], '
                       f'got shape {wav.shape}')
    pad = -wav.shape[-1] % self.hop_length
    if pad:
      wav = jnp.pad(wav, ((0, 0), (0, pad)))
    return self._encode(self.params, self.state, wav)

  def decode(self, codes: jax.Array, num_levels: int | None = None) -> jax.Array:
    """int codes [B, T, n] -> float32 audio [B, T * hop] from the first `num_levels` levels.

    Args:
      codes: codes in [0, codebook_size); n may be fewer than `num_codebooks`.
      num_levels: levels to use (default: all n given).
    """
    codes = jnp.asarray(codes)
    if codes.ndim != 3:
      raise ValueError(f'SoundStreamCodec.decode: expected codes [batch, frames, levels], '
                       f'got {codes.shape}')
    n = codes.shape[-1] if num_levels is None else num_levels
    if not 1 <= n <= min(codes.shape[-1], self.num_codebooks):
      raise ValueError(f'SoundStreamCodec.decode: num_levels={n} outside [1, '
                       f'{min(codes.shape[-1], self.num_codebooks)}]')
    codes = codes[..., :n].astype(jnp.int32)
    if not isinstance(codes, jax.core.Tracer):
      lo, hi = int(np.min(codes)), int(np.max(codes))
      if lo < 0 or hi >= self.codebook_size:
        raise ValueError(f'SoundStreamCodec.decode: codes span [{lo}, {hi}], outside '
                         f'[0, {self.codebook_size})')
    # Pad to all levels and mask by a traced count: one compilation for every level count.
    codes = jnp.pad(codes, ((0, 0), (0, 0), (0, self.num_codebooks - n)))
    return self._decode(self.params, self.state, codes, jnp.int32(n))
