"""Conformer block (Gulati et al. 2020) with rotary self-attention.

One block is the macaron sandwich

  x = x + 1/2 FFN(x)
  x = x + MHSA(x)          # rotary positions (RoPE), bidirectional, pre-LayerNorm
  x = x + Conv(x)          # pointwise -> GLU -> depthwise conv -> norm -> swish -> pointwise
  x = x + 1/2 FFN(x)
  y = LayerNorm(x)

Choices (documented because papers differ): positions are rotary rather than Transformer-XL
relative, the conv module's norm is a LayerNorm rather than BatchNorm (no batch statistics, so
the block is a pure function of its input and parameters), and the depthwise conv is non-causal
by default (`causal=True` pads on the left only).

Every parameter is created with `nn.with_logical_partitioning` using the project's axis
vocabulary (`embed`, `mlp`, `heads`, `kv`, `conv_kernel`, `norm`).
"""

from typing import Any

import flax.linen as nn
import jax
import jax.numpy as jnp

Dtype = Any

_ACT_AXES = ('activation_batch', 'activation_length', 'activation_embed')


def _dense_init(names: tuple[str | None, ...]):
  return nn.with_logical_partitioning(nn.initializers.lecun_normal(), names)


def _zeros(names: tuple[str | None, ...]):
  return nn.with_logical_partitioning(nn.initializers.zeros_init(), names)


def layer_norm(*, name: str, dtype: Dtype = jnp.float32) -> nn.LayerNorm:
  """A LayerNorm whose scale and bias carry the logical axis `norm`."""
  return nn.LayerNorm(
      epsilon=1e-5, dtype=dtype, name=name,
      scale_init=nn.with_logical_partitioning(nn.initializers.ones_init(), ('norm',)),
      bias_init=_zeros(('norm',)))


def rotary_embedding(x: jax.Array, positions: jax.Array, *, base: float = 10000.0) -> jax.Array:
  """Applies rotary position embedding (RoPE, half-split layout) along the last axis.

  Args:
    x: [batch, length, heads, head_dim] with an even head_dim.
    positions: [length] integer positions.
    base: wavelength base.

  Returns:
    [batch, length, heads, head_dim], same dtype as x.
  """
  head_dim = x.shape[-1]
  if head_dim % 2:
    raise ValueError(f'rotary_embedding: head_dim must be even, got {head_dim}')
  half = head_dim // 2
  inv_freq = 1.0 / (base ** (jnp.arange(half, dtype=jnp.float32) / half))  # [half]
  angles = positions.astype(jnp.float32)[:, None] * inv_freq[None, :]  # [length, half]
  sin = jnp.sin(angles)[None, :, None, :]  # [1, length, 1, half]
  cos = jnp.cos(angles)[None, :, None, :]
  x1, x2 = jnp.split(x.astype(jnp.float32), 2, axis=-1)
  out = jnp.concatenate([x1 * cos - x2 * sin, x2 * cos + x1 * sin], axis=-1)
  return out.astype(x.dtype)


class FeedForward(nn.Module):
  """Pre-norm feed-forward module: LayerNorm -> Dense(mlp) -> swish -> Dense(embed).

  Attributes:
    mlp_dim: hidden width.
    dropout_rate: dropout after the activation and on the output.
    dtype: compute dtype.
  """
  mlp_dim: int
  dropout_rate: float = 0.0
  dtype: Dtype = jnp.float32

  @nn.compact
  def __call__(self, x: jax.Array, *, deterministic: bool) -> jax.Array:
    embed_dim = x.shape[-1]
    h = layer_norm(name='norm', dtype=self.dtype)(x)
    h = nn.Dense(self.mlp_dim, dtype=self.dtype, kernel_init=_dense_init(('embed', 'mlp')),
                 bias_init=_zeros(('mlp',)), name='wi')(h)  # [batch, length, mlp]
    h = nn.with_logical_constraint(h, ('activation_batch', 'activation_length', 'activation_mlp'))
    h = nn.swish(h)
    h = nn.Dropout(self.dropout_rate)(h, deterministic=deterministic)
    h = nn.Dense(embed_dim, dtype=self.dtype, kernel_init=_dense_init(('mlp', 'embed')),
                 bias_init=_zeros(('embed',)), name='wo')(h)  # [batch, length, embed]
    return nn.Dropout(self.dropout_rate)(h, deterministic=deterministic)


class _HeadProjection(nn.Module):
  """[batch, length, embed] -> [batch, length, heads, kv] with a [embed, heads, kv] kernel.

  (flax's DenseGeneral initialises a flattened kernel, which breaks logical-axis sharding of
  3-D kernels, so the kernel is created at its true shape here.)
  """
  num_heads: int
  head_dim: int
  dtype: Dtype = jnp.float32

  @nn.compact
  def __call__(self, x: jax.Array) -> jax.Array:
    init = nn.initializers.variance_scaling(1.0, 'fan_in', 'truncated_normal', in_axis=0,
                                            out_axis=(1, 2))
    kernel = self.param('kernel', nn.with_logical_partitioning(init, ('embed', 'heads', 'kv')),
                        (x.shape[-1], self.num_heads, self.head_dim))
    bias = self.param('bias', _zeros(('heads', 'kv')), (self.num_heads, self.head_dim))
    x, kernel, bias = nn.dtypes.promote_dtype(x, kernel, bias, dtype=self.dtype)
    return jnp.einsum('ble,ehk->blhk', x, kernel) + bias


class _OutputProjection(nn.Module):
  """[batch, length, heads, kv] -> [batch, length, embed] with a [heads, kv, embed] kernel."""
  embed_dim: int
  dtype: Dtype = jnp.float32

  @nn.compact
  def __call__(self, x: jax.Array) -> jax.Array:
    init = nn.initializers.variance_scaling(1.0, 'fan_in', 'truncated_normal', in_axis=(0, 1),
                                            out_axis=2)
    kernel = self.param('kernel', nn.with_logical_partitioning(init, ('heads', 'kv', 'embed')),
                        (x.shape[-2], x.shape[-1], self.embed_dim))
    bias = self.param('bias', _zeros(('embed',)), (self.embed_dim,))
    x, kernel, bias = nn.dtypes.promote_dtype(x, kernel, bias, dtype=self.dtype)
    return jnp.einsum('blhk,hke->ble', x, kernel) + bias


class RotarySelfAttention(nn.Module):
  """Pre-norm multi-head self-attention with rotary positions (bidirectional).

  Attributes:
    num_heads: number of heads; embed_dim must be divisible by it.
    dropout_rate: dropout on the output projection.
    dtype: compute dtype.
    attention_implementation: passed to `jax.nn.dot_product_attention` (None: XLA; 'cudnn' on GPU).
  """
  num_heads: int
  dropout_rate: float = 0.0
  dtype: Dtype = jnp.float32
  attention_implementation: str | None = None

  @nn.compact
  def __call__(self, x: jax.Array, *, deterministic: bool) -> jax.Array:
    batch, length, embed_dim = x.shape
    if embed_dim % self.num_heads:
      raise ValueError(f'RotarySelfAttention: embed_dim {embed_dim} not divisible by '
                       f'num_heads {self.num_heads}')
    head_dim = embed_dim // self.num_heads
    h = layer_norm(name='norm', dtype=self.dtype)(x)

    def proj(name):
      return _HeadProjection(num_heads=self.num_heads, head_dim=head_dim, dtype=self.dtype,
                             name=name)(h)  # [batch, length, heads, kv]

    positions = jnp.arange(length)
    q = rotary_embedding(proj('query'), positions)
    k = rotary_embedding(proj('key'), positions)
    v = proj('value')
    head_axes = ('activation_batch', 'activation_length', 'activation_heads', 'activation_kv')
    q, k, v = (nn.with_logical_constraint(t, head_axes) for t in (q, k, v))
    out = jax.nn.dot_product_attention(
        q, k, v, implementation=self.attention_implementation)  # [batch, length, heads, kv]
    out = _OutputProjection(embed_dim=embed_dim, dtype=self.dtype,
                            name='out')(out)  # [batch, length, embed]
    del batch
    return nn.Dropout(self.dropout_rate)(out, deterministic=deterministic)


class ConvModule(nn.Module):
  """Conv module: LN -> pointwise(2C) -> GLU -> depthwise conv -> LN -> swish -> pointwise.

  Attributes:
    kernel_size: depthwise kernel width (frames).
    causal: pad on the left only, so frame t sees frames <= t.
    dropout_rate: dropout on the output.
    dtype: compute dtype.
  """
  kernel_size: int = 5
  causal: bool = False
  dropout_rate: float = 0.0
  dtype: Dtype = jnp.float32

  @nn.compact
  def __call__(self, x: jax.Array, *, deterministic: bool) -> jax.Array:
    embed_dim = x.shape[-1]
    h = layer_norm(name='norm', dtype=self.dtype)(x)
    h = nn.Dense(2 * embed_dim, dtype=self.dtype, kernel_init=_dense_init(('embed', 'mlp')),
                 bias_init=_zeros(('mlp',)), name='pointwise_in')(h)  # [batch, length, 2*embed]
    h = nn.glu(h, axis=-1)  # [batch, length, embed]
    if self.causal:
      padding = [(self.kernel_size - 1, 0)]
    else:
      left = (self.kernel_size - 1) // 2
      padding = [(left, self.kernel_size - 1 - left)]
    h = nn.Conv(embed_dim, kernel_size=(self.kernel_size,), padding=padding,
                feature_group_count=embed_dim, dtype=self.dtype,
                kernel_init=_dense_init(('conv_kernel', None, 'mlp')),
                bias_init=_zeros(('mlp',)), name='depthwise')(h)  # [batch, length, embed]
    h = layer_norm(name='conv_norm', dtype=self.dtype)(h)
    h = nn.swish(h)
    h = nn.Dense(embed_dim, dtype=self.dtype, kernel_init=_dense_init(('mlp', 'embed')),
                 bias_init=_zeros(('embed',)), name='pointwise_out')(h)  # [batch, length, embed]
    return nn.Dropout(self.dropout_rate)(h, deterministic=deterministic)


class ConformerBlock(nn.Module):
  """FFN/2 -> MHSA -> Conv -> FFN/2 -> LayerNorm, each with a residual connection.

  Attributes:
    num_heads: attention heads.
    mlp_dim: feed-forward hidden width.
    conv_kernel_size: depthwise conv width.
    causal_conv: left-only padding in the depthwise conv.
    dropout_rate: dropout in every sub-module.
    dtype: compute dtype.
    attention_implementation: see `RotarySelfAttention`.
  """
  num_heads: int
  mlp_dim: int
  conv_kernel_size: int = 5
  causal_conv: bool = False
  dropout_rate: float = 0.0
  dtype: Dtype = jnp.float32
  attention_implementation: str | None = None

  @nn.compact
  def __call__(self, x: jax.Array, *, deterministic: bool = True) -> jax.Array:
    """Args: x [batch, length, embed]. Returns [batch, length, embed]."""
    x = nn.with_logical_constraint(x, _ACT_AXES)
    x = x + 0.5 * FeedForward(mlp_dim=self.mlp_dim, dropout_rate=self.dropout_rate,
                              dtype=self.dtype, name='ffn_in')(x, deterministic=deterministic)
    x = x + RotarySelfAttention(
        num_heads=self.num_heads, dropout_rate=self.dropout_rate, dtype=self.dtype,
        attention_implementation=self.attention_implementation,
        name='attention')(x, deterministic=deterministic)
    x = x + ConvModule(kernel_size=self.conv_kernel_size, causal=self.causal_conv,
                       dropout_rate=self.dropout_rate, dtype=self.dtype,
                       name='conv')(x, deterministic=deterministic)
    x = x + 0.5 * FeedForward(mlp_dim=self.mlp_dim, dropout_rate=self.dropout_rate,
                              dtype=self.dtype, name='ffn_out')(x, deterministic=deterministic)
    x = layer_norm(name='final_norm', dtype=self.dtype)(x)
    return nn.with_logical_constraint(x, _ACT_AXES)


class ConformerStack(nn.Module):
  """`num_layers` conformer blocks named `layer_0`, `layer_1`, ...

  Attributes:
    num_layers: number of blocks.
    num_heads, mlp_dim, conv_kernel_size, causal_conv, dropout_rate, dtype,
    attention_implementation: see `ConformerBlock`.
  """
  num_layers: int
  num_heads: int
  mlp_dim: int
  conv_kernel_size: int = 5
  causal_conv: bool = False
  dropout_rate: float = 0.0
  dtype: Dtype = jnp.float32
  attention_implementation: str | None = None

  @nn.compact
  def __call__(self, x: jax.Array, *, deterministic: bool = True,
               num_layers: int | None = None) -> jax.Array:
    """Runs the first `num_layers` blocks (all when None).

    Args:
      x: [batch, length, embed].
      deterministic: disables dropout.
      num_layers: run only this many blocks (e.g. to read an intermediate layer).

    Returns:
      [batch, length, embed].
    """
    n = self.num_layers if num_layers is None else num_layers
    if not 0 <= n <= self.num_layers:
      raise ValueError(f'ConformerStack: num_layers {n} outside [0, {self.num_layers}]')
    for i in range(n):
      x = ConformerBlock(
          num_heads=self.num_heads, mlp_dim=self.mlp_dim, conv_kernel_size=self.conv_kernel_size,
          causal_conv=self.causal_conv, dropout_rate=self.dropout_rate, dtype=self.dtype,
          attention_implementation=self.attention_implementation,
          name=f'layer_{i}')(x, deterministic=deterministic)
    return x
