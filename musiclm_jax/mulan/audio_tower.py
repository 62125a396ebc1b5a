"""MuLan audio tower: a ResNet over the log-mel spectrogram, globally average-pooled.

The paper's tower is ResNet-50 (bottleneck blocks 3-4-6-3, widths 64..512, expansion 4, so
2048 output channels). The spectrogram is an image of one channel: [batch, time, mel, 1].
ResNet v1.5 layout: 7x7/2 stem, 3x3/2 max-pool, the stride of a stage's first block on its
3x3 convolution, 1x1 projection shortcuts where the shape changes.

Normalisation is GroupNorm (32 groups where the width allows), not BatchNorm: BatchNorm's
running statistics would be mutable state updated on every step, and its batch statistics
would couple examples, so a sharded step would depend on how the batch is split. GroupNorm
has the same parameters (a scale and a bias per channel) and treats every example on its own.
The last norm of each residual branch starts at zero scale, so each block starts as identity.

Every convolution kernel is stored as [taps, in, out] with the logical axes ('conv_kernel',
'conv_in', 'conv_out') (`musiclm_jax.layers.conv.Conv2d`).
"""

from collections.abc import Sequence
import math
from typing import Any

import flax.linen as nn
import jax
import jax.numpy as jnp

from musiclm_jax.layers.conv import Conv2d

IMAGE_AXES = ('activation_batch', 'activation_length', None, None)


def group_norm(channels: int, groups: int, *, zero_init: bool = False, dtype: Any,
               name: str) -> nn.GroupNorm:
  """GroupNorm with gcd(groups, channels) groups and logically partitioned scale/bias."""
  scale = nn.initializers.zeros if zero_init else nn.initializers.ones
  return nn.GroupNorm(
      num_groups=math.gcd(groups, channels), epsilon=1e-5, dtype=dtype,
      scale_init=nn.with_logical_partitioning(scale, ('norm',)),
      bias_init=nn.with_logical_partitioning(nn.initializers.zeros, ('norm',)), name=name)


class BottleneckBlock(nn.Module):
  """1x1 (width) -> 3x3 (width, stride) -> 1x1 (width * expansion), plus the shortcut.

  Attributes:
    width: inner channels.
    stride: stride of the 3x3 convolution (and of the projection shortcut).
    expansion: output channels = width * expansion.
    norm_groups: GroupNorm groups (reduced to gcd with the channels).
    dtype: compute dtype.
  """
  width: int
  stride: int = 1
  expansion: int = 4
  norm_groups: int = 32
  dtype: Any = jnp.float32

  @nn.compact
  def __call__(self, x: jax.Array) -> jax.Array:
    """Maps [batch, h, w, c] -> [batch, ceil(h / stride), ceil(w / stride), width * expansion]."""
    out = self.width * self.expansion
    s = (self.stride, self.stride)

    def conv(features, k, strides, name):
      return Conv2d(features=features, kernel_size=(k, k), strides=strides, use_bias=False,
                    dtype=self.dtype, name=name)

    def norm(channels, name, zero=False):
      return group_norm(channels, self.norm_groups, zero_init=zero, dtype=self.dtype, name=name)

    h = nn.relu(norm(self.width, 'norm1')(conv(self.width, 1, (1, 1), 'conv1')(x)))
    h = nn.relu(norm(self.width, 'norm2')(conv(self.width, 3, s, 'conv2')(h)))
    h = norm(out, 'norm3', zero=True)(conv(out, 1, (1, 1), 'conv3')(h))
    if x.shape[-1] != out or self.stride != 1:
      x = norm(out, 'shortcut_norm')(conv(out, 1, s, 'shortcut')(x))
    return nn.relu(x + h)


class BasicBlock(nn.Module):
  """3x3 (width, stride) -> 3x3 (width), plus the shortcut (ResNet-18/34 block).

  Attributes:
    width: channels.
    stride: stride of the first convolution (and of the projection shortcut).
    norm_groups: GroupNorm groups.
    dtype: compute dtype.
  """
  width: int
  stride: int = 1
  norm_groups: int = 32
  dtype: Any = jnp.float32

  @nn.compact
  def __call__(self, x: jax.Array) -> jax.Array:
    """Maps [batch, h, w, c] -> [batch, ceil(h / stride), ceil(w / stride), width]."""
    s = (self.stride, self.stride)

    def conv(features, k, strides, name):
      return Conv2d(features=features, kernel_size=(k, k), strides=strides, use_bias=False,
                    dtype=self.dtype, name=name)

    def norm(name, zero=False):
      return group_norm(self.width, self.norm_groups, zero_init=zero, dtype=self.dtype, name=name)

    h = nn.relu(norm('norm1')(conv(self.width, 3, s, 'conv1')(x)))
    h = norm('norm2', zero=True)(conv(self.width, 3, (1, 1), 'conv2')(h))
    if x.shape[-1] != self.width or self.stride != 1:
      x = norm('shortcut_norm')(conv(self.width, 1, s, 'shortcut')(x))
    return nn.relu(x + h)


class ResNet(nn.Module):
  """ResNet over a one-channel spectrogram image, pooled to one vector per example.

  Attributes:
    stem_width: channels of the 7x7 stem.
    stage_sizes: blocks per stage (ResNet-50: (3, 4, 6, 3)).
    widths: inner width of each stage (ResNet-50: (64, 128, 256, 512)).
    block: 'bottleneck' (output width * 4) or 'basic' (output width).
    norm_groups: GroupNorm groups.
    dtype: compute dtype.
  """
  stem_width: int = 64
  stage_sizes: Sequence[int] = (3, 4, 6, 3)
  widths: Sequence[int] = (64, 128, 256, 512)
  block: str = 'bottleneck'
  norm_groups: int = 32
  dtype: Any = jnp.float32

  @property
  def output_dim(self) -> int:
    return self.widths[-1] * (4 if self.block == 'bottleneck' else 1)

  @nn.compact
  def __call__(self, mel: jax.Array) -> jax.Array:
    """Maps a normalised log-mel [batch, time, mel] to features [batch, output_dim]."""
    if len(self.stage_sizes) != len(self.widths):
      raise ValueError(f'ResNet: stage_sizes {tuple(self.stage_sizes)} and widths '
                       f'{tuple(self.widths)} differ in length')
    if self.block not in ('bottleneck', 'basic'):
      raise ValueError(f"ResNet.block: expected 'bottleneck' or 'basic', got {self.block!r}")
    x = mel[..., None].astype(self.dtype)  # [batch, time, mel, 1]
    x = Conv2d(features=self.stem_width, kernel_size=(7, 7), strides=(2, 2), use_bias=False,
               dtype=self.dtype, name='stem')(x)
    x = nn.relu(group_norm(self.stem_width, self.norm_groups, dtype=self.dtype,
                           name='stem_norm')(x))
    x = nn.max_pool(x, (3, 3), strides=(2, 2), padding='SAME')
    x = nn.with_logical_constraint(x, IMAGE_AXES)
    for stage, (size, width) in enumerate(zip(self.stage_sizes, self.widths)):
      for index in range(size):
        stride = 2 if stage > 0 and index == 0 else 1
        name = f'stage{stage + 1}_block{index + 1}'
        if self.block == 'bottleneck':
          x = BottleneckBlock(width=width, stride=stride, norm_groups=self.norm_groups,
                              dtype=self.dtype, name=name)(x)
        else:
          x = BasicBlock(width=width, stride=stride, norm_groups=self.norm_groups,
                         dtype=self.dtype, name=name)(x)
      x = nn.with_logical_constraint(x, IMAGE_AXES)  # [batch, h, w, channels]
    return jnp.mean(x, axis=(1, 2))  # [batch, output_dim]


def resnet_param_count(*, stem_width: int, stage_sizes: Sequence[int], widths: Sequence[int],
                       block: str = 'bottleneck', in_channels: int = 1) -> int:
  """Closed-form parameter count of `ResNet` (convolutions without bias, 2 per norm channel)."""
  total = 7 * 7 * in_channels * stem_width + 2 * stem_width
  channels = stem_width
  for stage, (size, width) in enumerate(zip(stage_sizes, widths)):
    for index in range(size):
      stride = 2 if stage > 0 and index == 0 else 1
      if block == 'bottleneck':
        out = 4 * width
        total += channels * width + 2 * width + 9 * width * width + 2 * width
        total += width * out + 2 * out
      else:
        out = width
        total += 9 * channels * width + 2 * width + 9 * width * width + 2 * width
      if channels != out or stride != 1:
        total += channels * out + 2 * out
      channels = out
  return total
