"""Pre-norm decoder block: x + Attn(Norm(x)), then x + FFN(Norm(x)), with residual dropout.

The block's call signature, (x, positions, cache) -> (x, cache), is what `nn.scan` over layers
needs: `x` is the carry, the cache is scanned along its leading 'layers' axis and positions are
broadcast.
"""

import flax.linen as nn
import jax
from jax.ad_checkpoint import checkpoint_name
import jax.numpy as jnp

from musiclm_jax.layers import attention

Array = jax.Array

ACTIVATION_AXES = ('activation_batch', 'activation_length', 'activation_embed')
_ACTIVATIONS = {'gelu': nn.gelu, 'silu': nn.silu, 'relu': nn.relu}


def make_norm(kind: str, *, dtype, param_dtype, name: str) -> nn.Module:
  """Returns an RMSNorm ('rms') or LayerNorm ('layer') with logically partitioned params."""
  ones = nn.with_logical_partitioning(nn.initializers.ones, ('norm',))
  if kind == 'rms':
    return nn.RMSNorm(epsilon=1e-6, dtype=dtype, param_dtype=param_dtype, scale_init=ones,
                      name=name)
  if kind == 'layer':
    zeros = nn.with_logical_partitioning(nn.initializers.zeros, ('norm',))
    return nn.LayerNorm(epsilon=1e-6, dtype=dtype, param_dtype=param_dtype, scale_init=ones,
                        bias_init=zeros, name=name)
  raise ValueError(f"norm: expected 'rms' or 'layer', got {kind!r}")


class MlpBlock(nn.Module):
  """Feed-forward block: gated (GEGLU/SwiGLU: act(x W0) * (x W1) W2) or plain (act(x W) W2).

  Attributes:
    mlp_dim: hidden width.
    activation: 'gelu', 'silu' or 'relu'.
    gated: three matrices (gated) or two.
    dtype: compute dtype.
    param_dtype: parameter dtype.
  """
  mlp_dim: int
  activation: str = 'gelu'
  gated: bool = True
  dtype: jnp.dtype = jnp.float32
  param_dtype: jnp.dtype = jnp.float32

  @nn.compact
  def __call__(self, x: Array) -> Array:
    """Maps [batch, length, embed] -> [batch, length, embed]."""
    if self.activation not in _ACTIVATIONS:
      raise ValueError(f'mlp activation: expected one of {sorted(_ACTIVATIONS)}, '
                       f'got {self.activation!r}')
    act = _ACTIVATIONS[self.activation]
    init = nn.initializers.variance_scaling(1.0, 'fan_in', 'normal')

    def dense(features, axes, name):
      return nn.Dense(features, use_bias=False, dtype=self.dtype, param_dtype=self.param_dtype,
                      kernel_init=nn.with_logical_partitioning(init, axes), name=name)

    if self.gated:
      h = act(dense(self.mlp_dim, ('embed', 'mlp'), 'wi_0')(x)) * dense(
          self.mlp_dim, ('embed', 'mlp'), 'wi_1')(x)  # [batch, length, mlp]
    else:
      h = act(dense(self.mlp_dim, ('embed', 'mlp'), 'wi')(x))  # [batch, length, mlp]
    h = nn.with_logical_constraint(h, ('activation_batch', 'activation_length', 'activation_mlp'))
    h = checkpoint_name(h, 'mlp_hidden')
    return dense(x.shape[-1], ('mlp', 'embed'), 'wo')(h)  # [batch, length, embed]


class DecoderBlock(nn.Module):
  """One pre-norm causal decoder layer.

  Attributes:
    num_heads: attention query heads.
    num_kv_heads: attention key/value heads.
    head_dim: size of each head.
    mlp_dim: feed-forward hidden width.
    dropout_rate: residual dropout.
    norm: 'rms' or 'layer'.
    mlp_activation: 'gelu' or 'silu' (or 'relu').
    gated_mlp: gated (3-matrix) or plain (2-matrix) feed-forward.
    deterministic: disables dropout.
    mode: attention mode, 'train', 'prefill' or 'decode'.
    attention_impl: 'auto', 'xla' or 'cudnn'.
    rope_max_wavelength: RoPE base.
    dtype: compute dtype.
    param_dtype: parameter dtype.
  """
  num_heads: int
  num_kv_heads: int
  head_dim: int
  mlp_dim: int
  dropout_rate: float = 0.0
  norm: str = 'rms'
  mlp_activation: str = 'gelu'
  gated_mlp: bool = True
  deterministic: bool = True
  mode: attention.Mode = 'train'
  attention_impl: str | None = 'auto'
  rope_max_wavelength: float = 10_000.0
  dtype: jnp.dtype = jnp.float32
  param_dtype: jnp.dtype = jnp.float32

  @nn.compact
  def __call__(self, x: Array, positions: Array,
               cache: dict[str, Array] | None = None) -> tuple[Array, dict[str, Array] | None]:
    """Applies the layer.

    Args:
      x: [batch, length, embed].
      positions: [length] int32 absolute positions.
      cache: this layer's {'k', 'v'} [batch, max_len, kv_heads, head_dim], or None in 'train'.

    Returns:
      ([batch, length, embed], updated cache or None).
    """
    x = nn.with_logical_constraint(x, ACTIVATION_AXES)
    norm_kw = dict(dtype=self.dtype, param_dtype=self.param_dtype)
    h = make_norm(self.norm, name='pre_attention_norm', **norm_kw)(x)
    h, cache = attention.SelfAttention(
        num_heads=self.num_heads, num_kv_heads=self.num_kv_heads, head_dim=self.head_dim,
        mode=self.mode, implementation=self.attention_impl,
        rope_max_wavelength=self.rope_max_wavelength, name='attention', **norm_kw)(
            h, positions, cache)
    h = nn.Dropout(self.dropout_rate)(h, deterministic=self.deterministic)
    x = x + h
    x = nn.with_logical_constraint(x, ACTIVATION_AXES)
    h = make_norm(self.norm, name='pre_mlp_norm', **norm_kw)(x)
    h = MlpBlock(mlp_dim=self.mlp_dim, activation=self.mlp_activation, gated=self.gated_mlp,
                 name='mlp', **norm_kw)(h)
    h = nn.Dropout(self.dropout_rate)(h, deterministic=self.deterministic)
    x = x + h
    x = nn.with_logical_constraint(x, ACTIVATION_AXES)
    return x, cache
