"""Convolutions with logical axis names and optional weight normalisation.

`Conv1d` and `ConvTranspose1d` are causal by default (SEANet streaming layout: all padding
on the left, transposed outputs trimmed on the right), so a frame never depends on later
samples. `Conv2d` is a plain 'same'-padded convolution for spectrogram discriminators.

Every kernel is stored as a 3-D parameter [kernel, in, out] with the logical axes
('conv_kernel', 'conv_in', 'conv_out') (None instead of 'conv_out' for single-channel
outputs, which cannot be split); 2-D kernels are stored flattened over their spatial taps so
the axis vocabulary stays one name per axis.
"""

import math
from typing import Any, Sequence

import flax.linen as nn
import jax
import jax.numpy as jnp

KERNEL_AXES = ('conv_kernel', 'conv_in', 'conv_out')


def _out_axis(features: int) -> str | None:
  """A single output channel (waveform / logit layers) is never sharded."""
  return 'conv_out' if features > 1 else None


def _kernel(module: nn.Module, shape: tuple[int, ...], weight_norm: bool,
            param_dtype: Any) -> jax.Array:
  """Creates a [taps, in, out] kernel, optionally as weight_g * weight_v / |weight_v|."""
  init = nn.initializers.lecun_normal()
  axes = KERNEL_AXES[:2] + (_out_axis(shape[-1]),)
  if not weight_norm:
    return module.param('kernel', nn.with_logical_partitioning(init, axes), shape, param_dtype)
  v = module.param('weight_v', nn.with_logical_partitioning(init, axes), shape,
                   param_dtype)

  # g = 1: each output filter starts with unit norm, which for v ~ N(0, 1 / fan_in) is what
  # torch's weight_norm (g = |v|) gives on average, without a data-dependent init.
  g = module.param('weight_g', nn.with_logical_partitioning(nn.initializers.ones,
                                                            (_out_axis(shape[-1]),)),
                   (shape[-1],), param_dtype)
  vf = v.astype(jnp.float32)
  norm = jnp.sqrt(jnp.sum(jnp.square(vf), axis=(0, 1)) + 1e-12)  # [out]
  return (vf * (g.astype(jnp.float32) / norm)).astype(v.dtype)


def _bias(module: nn.Module, features: int, param_dtype: Any) -> jax.Array:
  return module.param('bias', nn.with_logical_partitioning(nn.initializers.zeros,
                                                          (_out_axis(features),)),
                      (features,), param_dtype)


class Conv1d(nn.Module):
  """1-D convolution over [batch, length, channels] with causal or centred padding.

  With `length` a multiple of `stride`, the output has `length // stride` frames.

  Attributes:
    features: output channels.
    kernel_size: taps.
    stride: temporal stride.
    dilation: temporal dilation.
    groups: feature groups (input and output channels must divide by it).
    causal: pad only on the left (True) or on both sides (False).
    weight_norm: parameterise the kernel as g * v / |v| (per output channel).
    use_bias: add a bias.
    dtype: computation dtype (None: the kernel's dtype, e.g. bf16 when params are cast).
    param_dtype: parameter dtype.
  """
  features: int
  kernel_size: int
  stride: int = 1
  dilation: int = 1
  groups: int = 1
  causal: bool = True
  weight_norm: bool = False
  use_bias: bool = True
  dtype: Any = None
  param_dtype: Any = jnp.float32

  @nn.compact
  def __call__(self, x: jax.Array) -> jax.Array:
    """Args: x: [batch, length, in]. Returns: [batch, length // stride, features]."""
    in_features = x.shape[-1]
    if in_features % self.groups or self.features % self.groups:
      raise ValueError(f'Conv1d: channels {in_features}->{self.features} not divisible by '
                       f'groups={self.groups}')
    kernel = _kernel(self, (self.kernel_size, in_features // self.groups, self.features),
                     self.weight_norm, self.param_dtype)
    dtype = kernel.dtype if self.dtype is None else self.dtype
    effective = (self.kernel_size - 1) * self.dilation + 1
    total = max(effective - self.stride, 0)
    pad = (total, 0) if self.causal else (total // 2, total - total // 2)
    y = jax.lax.conv_general_dilated(
        x.astype(dtype), kernel.astype(dtype), window_strides=(self.stride,),
        padding=(pad,), rhs_dilation=(self.dilation,), dimension_numbers=('NWC', 'WIO', 'NWC'),
        feature_group_count=self.groups)  # [batch, length // stride, features]
    if self.use_bias:
      y = y + _bias(self, self.features, self.param_dtype).astype(dtype)
    return y


class ConvTranspose1d(nn.Module):
  """Transposed 1-D convolution that upsamples [batch, frames, in] by `stride` exactly.

  The full output ((frames - 1) * stride + kernel_size samples) is trimmed to
  `frames * stride`: on the right when causal, split between both sides otherwise.

  Attributes:
    features: output channels.
    kernel_size: taps (>= stride).
    stride: upsampling factor.
    causal: trim only on the right.
    weight_norm: parameterise the kernel as g * v / |v| (per output channel).
    use_bias: add a bias.
    dtype: computation dtype (None: the kernel's dtype, e.g. bf16 when params are cast).
    param_dtype: parameter dtype.
  """
  features: int
  kernel_size: int
  stride: int
  causal: bool = True
  weight_norm: bool = False
  use_bias: bool = True
  dtype: Any = None
  param_dtype: Any = jnp.float32

  @nn.compact
  def __call__(self, x: jax.Array) -> jax.Array:
    """Args: x: [batch, frames, in]. Returns: [batch, frames * stride, features]."""
    if self.kernel_size < self.stride:
      raise ValueError(f'ConvTranspose1d: kernel_size {self.kernel_size} < stride {self.stride}')
    frames = x.shape[1]
    kernel = _kernel(self, (self.kernel_size, x.shape[-1], self.features), self.weight_norm,
                     self.param_dtype)
    dtype = kernel.dtype if self.dtype is None else self.dtype
    y = jax.lax.conv_transpose(
        x.astype(dtype), kernel.astype(dtype), strides=(self.stride,),
        padding='VALID', dimension_numbers=('NWC', 'WIO', 'NWC'))
    # y: [batch, (frames - 1) * stride + kernel_size, features]
    extra = self.kernel_size - self.stride
    left = 0 if self.causal else extra // 2
    y = y[:, left:left + frames * self.stride]  # [batch, frames * stride, features]
    if self.use_bias:
      y = y + _bias(self, self.features, self.param_dtype).astype(dtype)
    return y


class Conv2d(nn.Module):
  """2-D convolution over [batch, height, width, channels] with centred ('same') padding.

  Attributes:
    features: output channels.
    kernel_size: (taps along height, taps along width).
    strides: (height, width) strides.
    dilation: (height, width) dilation.
    weight_norm: parameterise the kernel as g * v / |v| (per output channel).
    use_bias: add a bias.
    dtype: computation dtype (None: the kernel's dtype, e.g. bf16 when params are cast).
    param_dtype: parameter dtype.
  """
  features: int
  kernel_size: Sequence[int]
  strides: Sequence[int] = (1, 1)
  dilation: Sequence[int] = (1, 1)
  weight_norm: bool = False
  use_bias: bool = True
  dtype: Any = None
  param_dtype: Any = jnp.float32

  @nn.compact
  def __call__(self, x: jax.Array) -> jax.Array:
    """Args: x: [batch, h, w, in]. Returns: [batch, ceil(h / sh), ceil(w / sw), features]."""
    kh, kw = self.kernel_size
    flat = _kernel(self, (kh * kw, x.shape[-1], self.features), self.weight_norm,
                   self.param_dtype)
    kernel = flat.reshape(kh, kw, x.shape[-1], self.features)
    dtype = kernel.dtype if self.dtype is None else self.dtype
    pads = []
    for k, d in zip(self.kernel_size, self.dilation):
      total = (k - 1) * d
      pads.append((total // 2, total - total // 2))
    y = jax.lax.conv_general_dilated(
        x.astype(dtype), kernel.astype(dtype), window_strides=tuple(self.strides),
        padding=tuple(pads), rhs_dilation=tuple(self.dilation),
        dimension_numbers=('NHWC', 'HWIO', 'NHWC'))
    if self.use_bias:
      y = y + _bias(self, self.features, self.param_dtype).astype(dtype)
    return y


def init_conv_params(abstract: Any, rng: jax.Array) -> Any:
  """Values for a parameter tree made only of this file's layers, from ONE random draw.

  Same distributions as the layers' own initialisers (kernels ~ N(0, 1 / fan_in), weight_g = 1,
  biases 0), but XLA compiles one random-number generator instead of one per layer, which
  makes initialising a SEANet ~10x cheaper to compile on CPU.

  Args:
    abstract: `jax.eval_shape` of `module.init(...)['params']` (leaves may be `nn.Partitioned`
      boxes of `jax.ShapeDtypeStruct`; boxes are kept).
    rng: PRNG key.

  Returns:
    The tree with arrays in place of the shapes.
  """
  is_box = lambda x: isinstance(x, nn.Partitioned)
  flat, treedef = jax.tree_util.tree_flatten_with_path(abstract, is_leaf=is_box)
  names = [str(path[-1].key) for path, _ in flat]
  unknown = set(names) - {'kernel', 'weight_v', 'weight_g', 'bias'}
  if unknown:
    raise ValueError(f'init_conv_params: unknown parameter names {sorted(unknown)}')
  shapes = [(leaf.value if is_box(leaf) else leaf).shape for _, leaf in flat]
  sizes = [math.prod(s) if n in ('kernel', 'weight_v') else 0 for n, s in zip(names, shapes)]
  noise = jax.random.normal(rng, (max(sum(sizes), 1),), jnp.float32)
  values, offset = {}, 0
  for i, (name, shape, size) in enumerate(zip(names, shapes, sizes)):
    if size:
      fan_in = math.prod(shape[:-1])
      values[i] = noise[offset:offset + size].reshape(shape) / math.sqrt(fan_in)
      offset += size
  out = []
  for i, ((_, leaf), name, shape) in enumerate(zip(flat, names, shapes)):
    if name == 'bias':
      value = jnp.zeros(shape, jnp.float32)
    elif name == 'weight_g':
      value = jnp.ones(shape, jnp.float32)
    else:
      value = values[i]
    dtype = (leaf.value if is_box(leaf) else leaf).dtype
    value = value.astype(dtype)
    out.append(leaf.replace_boxed(value) if is_box(leaf) else value)
  return jax.tree_util.tree_unflatten(treedef, out)
