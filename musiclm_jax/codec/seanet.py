"""Causal SEANet encoder and decoder (SoundStream, Zeghidour et al. 2021, Fig. 2).

Encoder: Conv(k=7, C) -> per stride s_i: 3 residual units (dilations 1, 3, 9) then
ELU + Conv(k=2 s_i, stride s_i) doubling the channels -> ELU + Conv(k=3, D).
Decoder mirrors it with transposed convolutions (halving the channels) and ends with
Conv(k=7, 1). All convolutions are causal, so the codec can stream.
"""

import dataclasses
import math
from typing import Any

import flax.linen as nn
import jax

from musiclm_jax.layers.conv import Conv1d, ConvTranspose1d

ACT_AXES = ('activation_batch', 'activation_length', 'activation_embed')


@dataclasses.dataclass(frozen=True, kw_only=True)
class SEANetConfig:
  """SEANet encoder/decoder sizes.

  Attributes:
    channels: base channels C (doubled after each encoder stride).
    strides: encoder downsampling factors; the decoder uses them reversed. Their product is
      the hop length (samples per frame).
    dimension: embedding dimension D (the quantizer's vector size).
    dilations: dilations of the residual units in each block.
    residual_kernel: kernel size of the dilated residual convolutions.
    compress: residual units use channels // compress hidden channels.
    kernel_size: kernel of the first encoder / last decoder convolution.
    last_kernel_size: kernel of the convolution to / from the embedding.
    weight_norm: weight-normalised convolutions.
    causal: causal padding (streaming).
  """
  channels: int = 32
  strides: tuple[int, ...] = (3, 4, 5, 8)
  dimension: int = 128
  dilations: tuple[int, ...] = (1, 3, 9)
  residual_kernel: int = 7
  compress: int = 2
  kernel_size: int = 7
  last_kernel_size: int = 3
  weight_norm: bool = True
  causal: bool = True

  @property
  def hop_length(self) -> int:
    return math.prod(self.strides)


class ResidualUnit(nn.Module):
  """ELU -> dilated Conv(k) -> ELU -> Conv(1), plus identity skip. [B, T, C] -> [B, T, C]."""
  config: SEANetConfig
  dilation: int
  dtype: Any = None

  @nn.compact
  def __call__(self, x: jax.Array) -> jax.Array:
    c = self.config
    channels = x.shape[-1]
    h = nn.elu(x)
    h = Conv1d(features=max(channels // c.compress, 1), kernel_size=c.residual_kernel,
               dilation=self.dilation, causal=c.causal, weight_norm=c.weight_norm,
               dtype=self.dtype, name='conv_dilated')(h)
    h = nn.elu(h)
    h = Conv1d(features=channels, kernel_size=1, causal=c.causal, weight_norm=c.weight_norm,
               dtype=self.dtype, name='conv_pointwise')(h)
    return x + h


class SEANetEncoder(nn.Module):
  """Waveform [batch, samples, 1] -> embeddings [batch, samples // hop, dimension]."""
  config: SEANetConfig
  dtype: Any = None

  @nn.compact
  def __call__(self, wav: jax.Array) -> jax.Array:
    c = self.config
    x = Conv1d(features=c.channels, kernel_size=c.kernel_size, causal=c.causal,
               weight_norm=c.weight_norm, dtype=self.dtype, name='conv_in')(wav)  # [B, N, C]
    channels = c.channels
    for i, stride in enumerate(c.strides):
      for j, dilation in enumerate(c.dilations):
        x = ResidualUnit(config=c, dilation=dilation, dtype=self.dtype, name=f'block{i}_res{j}')(x)
      channels *= 2
      x = nn.elu(x)
      x = Conv1d(features=channels, kernel_size=2 * stride, stride=stride, causal=c.causal,
                 weight_norm=c.weight_norm, dtype=self.dtype, name=f'block{i}_down')(x)
      x = nn.with_logical_constraint(x, ACT_AXES)  # [B, N / prod(strides[:i+1]), channels]
    x = nn.elu(x)
    x = Conv1d(features=c.dimension, kernel_size=c.last_kernel_size, causal=c.causal,
               weight_norm=c.weight_norm, dtype=self.dtype, name='conv_out')(x)
    return nn.with_logical_constraint(x, ACT_AXES)  # [B, T, D]


class SEANetDecoder(nn.Module):
  """Embeddings [batch, frames, dimension] -> waveform [batch, frames * hop, 1]."""
  config: SEANetConfig
  dtype: Any = None

  @nn.compact
  def __call__(self, z: jax.Array) -> jax.Array:
    c = self.config
    channels = c.channels * 2 ** len(c.strides)
    x = Conv1d(features=channels, kernel_size=c.kernel_size, causal=c.causal,
               weight_norm=c.weight_norm, dtype=self.dtype, name='conv_in')(z)  # [B, T, 16C]
    for i, stride in enumerate(reversed(c.strides)):
      channels //= 2
      x = nn.elu(x)
      x = ConvTranspose1d(features=channels, kernel_size=2 * stride, stride=stride,
                          causal=c.causal, weight_norm=c.weight_norm, dtype=self.dtype,
                          name=f'block{i}_up')(x)
      for j, dilation in enumerate(c.dilations):
        x = ResidualUnit(config=c, dilation=dilation, dtype=self.dtype, name=f'block{i}_res{j}')(x)
      x = nn.with_logical_constraint(x, ACT_AXES)
    x = nn.elu(x)
    x = Conv1d(features=1, kernel_size=c.kernel_size, causal=c.causal,
               weight_norm=c.weight_norm, dtype=self.dtype, name='conv_out')(x)
    return x  # [B, N, 1]
