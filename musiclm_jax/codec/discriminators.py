"""SoundStream/EnCodec discriminators: multi-scale STFT + multi-scale waveform (MelGAN).

Each discriminator maps a waveform [batch, samples] to (logits, features): logits are the
last layer's map (any shape, reduced by the losses) and features the activations of every
hidden layer, used by the feature-matching loss.
"""

import dataclasses
from typing import Any

import flax.linen as nn
import jax
import jax.numpy as jnp

from musiclm_jax.codec.losses import stft
from musiclm_jax.layers.conv import Conv1d, Conv2d

Output = tuple[jax.Array, list[jax.Array]]


@dataclasses.dataclass(frozen=True, kw_only=True)
class DiscriminatorConfig:
  """Discriminator sizes.

  Attributes:
    stft_windows: one complex-STFT discriminator per window (hop = window // 4); empty: none.
    stft_channels: channels of every STFT-discriminator layer.
    stft_dilations: time dilations of the strided (over frequency) layers.
    wave_scales: waveform discriminators on the signal average-pooled 1x, 2x, 4x, ...; 0: none.
    wave_channels: channels of the first waveform-discriminator layer.
    wave_max_channels: channel cap of the waveform discriminators.
    wave_downsamples: strides of the grouped waveform layers (kernel 10 * stride + 1).
    negative_slope: leaky ReLU slope.
    weight_norm: weight-normalised convolutions.
  """
  stft_windows: tuple[int, ...] = (2048, 1024, 512, 256, 128)
  stft_channels: int = 32
  stft_dilations: tuple[int, ...] = (1, 2, 4)
  wave_scales: int = 3
  wave_channels: int = 16
  wave_max_channels: int = 1024
  wave_downsamples: tuple[int, ...] = (4, 4, 4, 4)
  negative_slope: float = 0.2
  weight_norm: bool = True


class STFTDiscriminator(nn.Module):
  """2-D convolutions over the (real, imag) STFT: [batch, frames, freq, 2] (EnCodec MS-STFTD)."""
  config: DiscriminatorConfig
  window: int
  dtype: Any = None

  @nn.compact
  def __call__(self, wav: jax.Array) -> Output:
    c = self.config
    real, imag = stft(wav, n_fft=self.window, hop=self.window // 4)  # [B, T, F] each
    x = jnp.stack([real, imag], axis=-1) / jnp.sqrt(0.375 * self.window)  # [B, T, F, 2]
    act = lambda h: nn.leaky_relu(h, c.negative_slope)
    kw = dict(weight_norm=c.weight_norm, dtype=self.dtype)
    features = []
    x = act(Conv2d(features=c.stft_channels, kernel_size=(3, 9), name='conv_in', **kw)(x))
    features.append(x)
    for i, d in enumerate(c.stft_dilations):
      x = act(Conv2d(features=c.stft_channels, kernel_size=(3, 9), strides=(1, 2),
                     dilation=(d, 1), name=f'conv{i}', **kw)(x))  # frequency halved
      features.append(x)
    x = act(Conv2d(features=c.stft_channels, kernel_size=(3, 3), name='conv_post', **kw)(x))
    features.append(x)
    logits = Conv2d(features=1, kernel_size=(3, 3), name='conv_out', **kw)(x)  # [B, T, F', 1]
    return logits, features


class WaveDiscriminator(nn.Module):
  """MelGAN waveform discriminator: strided grouped 1-D convolutions over [batch, samples, 1]."""
  config: DiscriminatorConfig
  dtype: Any = None

  @nn.compact
  def __call__(self, wav: jax.Array) -> Output:
    c = self.config
    act = lambda h: nn.leaky_relu(h, c.negative_slope)
    kw = dict(causal=False, weight_norm=c.weight_norm, dtype=self.dtype)
    features = []
    x = act(Conv1d(features=c.wave_channels, kernel_size=15, name='conv_in', **kw)(wav[..., None]))
    features.append(x)
    channels = c.wave_channels
    for i, stride in enumerate(c.wave_downsamples):
      out = min(channels * stride, c.wave_max_channels)
      groups = max(channels // 4, 1)
      if out % groups:
        groups = 1
      x = act(Conv1d(features=out, kernel_size=10 * stride + 1, stride=stride, groups=groups,
                     name=f'conv{i}', **kw)(x))  # [B, N / prod(strides[:i+1]), out]
      features.append(x)
      channels = out
    x = act(Conv1d(features=channels, kernel_size=5, name='conv_post', **kw)(x))
    features.append(x)
    logits = Conv1d(features=1, kernel_size=3, name='conv_out', **kw)(x)  # [B, T', 1]
    return logits, features


class MultiDiscriminator(nn.Module):
  """All STFT discriminators, then all waveform scales. [batch, samples] -> list of outputs."""
  config: DiscriminatorConfig
  dtype: Any = None

  @nn.compact
  def __call__(self, wav: jax.Array) -> list[Output]:
    c = self.config
    outputs = []
    for w in c.stft_windows:
      outputs.append(STFTDiscriminator(config=c, window=w, dtype=self.dtype, name=f'stft_{w}')(wav))
    x = wav  # [B, N]
    for scale in range(c.wave_scales):
      if scale:
        x = x[:, :x.shape[1] // 2 * 2]
        x = 0.5 * (x[:, 0::2] + x[:, 1::2])  # [B, N / 2^scale]
      outputs.append(WaveDiscriminator(config=c, dtype=self.dtype, name=f'wave_{scale}')(x))
    return outputs
