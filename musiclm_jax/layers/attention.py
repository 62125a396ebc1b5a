"""Self-attention layers: causal with RoPE and a KV cache (decoders), bidirectional (encoders).

`SelfAttention` (multi-head or grouped-query, rotary positions, explicit KV cache) goes through
`jax.nn.dot_product_attention`. The implementation is chosen by `resolve_implementation`: cuDNN
flash attention on GPU for bf16/fp16 inputs (sequences padded to a multiple of 128, which cuDNN
wants), XLA everywhere else. Pass `implementation='xla'` or `'cudnn'` to override.

Three modes share the same weights (`mode` is static):
  'train':   causal self-attention over the whole input, no cache.
  'prefill': the same causal self-attention, and the keys/values are written to
             cache[:, 0:length] (the prompt always starts at position 0).
  'decode':  the input chunk (usually one token) sits at positions[0]...; its keys/values are
             written there and it attends to every cached position <= its own.

`EncoderAttention` is BERT-style: every position attends to every non-padding position, no
positional rotation, biased projections (used by the MuLan text tower and the melody embedder).
"""

from typing import Any, Literal

import flax.linen as nn
import jax
from jax.ad_checkpoint import checkpoint_name
import jax.numpy as jnp

Array = jax.Array
Mode = Literal['train', 'prefill', 'decode']

CUDNN_LENGTH_MULTIPLE = 128
# Logical axes of one layer's KV cache [batch, max_len, kv_heads, head_dim]; a scanned stack
# adds 'layers' in front.
CACHE_AXES = ('activation_batch', 'activation_length', 'activation_heads', 'activation_kv')


def resolve_implementation(implementation: str | None, dtype=jnp.bfloat16,
                           head_dim: int = 64) -> str:
  """Returns 'cudnn' or 'xla'.

  Args:
    implementation: None or 'auto' to choose from `jax.default_backend()` (cuDNN on GPU when
      the dtype and head size allow it), or 'xla'/'cudnn' to force one.
    dtype: dtype of the query/key/value arrays.
    head_dim: size of one attention head.
  """
  if implementation in ('xla', 'cudnn'):
    return implementation
  if implementation not in (None, 'auto'):
    raise ValueError(f"attention implementation: expected 'auto', 'xla' or 'cudnn', "
                     f'got {implementation!r}')
  cudnn_ok = (jnp.dtype(dtype) in (jnp.dtype(jnp.bfloat16), jnp.dtype(jnp.float16))
              and head_dim % 8 == 0 and head_dim <= 128)
  return 'cudnn' if jax.default_backend() == 'gpu' and cudnn_ok else 'xla'


def causal_attention(query: Array, key: Array, value: Array, *,
                     implementation: str | None = None,
                     length_multiple: int | None = None) -> Array:
  """Causal self-attention.

  Args:
    query: [batch, length, heads, head_dim].
    key: [batch, length, kv_heads, head_dim]; heads must be a multiple of kv_heads.
    value: [batch, length, kv_heads, head_dim].
    implementation: see `resolve_implementation`.
    length_multiple: pad the length up to a multiple of this; None = 128 for cuDNN (which
      refuses some lengths), 1 for XLA.

  Returns:
    [batch, length, heads, head_dim].
  """
  impl = resolve_implementation(implementation, query.dtype, query.shape[-1])
  if length_multiple is None:
    length_multiple = CUDNN_LENGTH_MULTIPLE if impl == 'cudnn' else 1
  length = query.shape[1]
  pad = -length % length_multiple
  if pad:
    # Padding goes at the end: the causal mask already hides it from every real query.
    widths = ((0, 0), (0, pad), (0, 0), (0, 0))
    query, key, value = (jnp.pad(t, widths) for t in (query, key, value))
  out = jax.nn.dot_product_attention(query, key, value, is_causal=True, implementation=impl)
  return out[:, :length] if pad else out


def cached_attention(query: Array, key_cache: Array, value_cache: Array,
                     start: Array) -> Array:
  """Attention of a chunk at positions start.. to every cached position up to its own.

  Args:
    query: [batch, chunk, heads, head_dim], the chunk's first token at position `start`.
    key_cache: [batch, max_len, kv_heads, head_dim], already holding the chunk's keys.
    value_cache: [batch, max_len, kv_heads, head_dim].
    start: int32 scalar.

  Returns:
    [batch, chunk, heads, head_dim].
  """
  chunk, max_len = query.shape[1], key_cache.shape[1]
  query_pos = start + jnp.arange(chunk)  # [chunk]
  mask = jnp.arange(max_len)[None, :] <= query_pos[:, None]  # [chunk, max_len]
  # An arbitrary mask is not a cuDNN flash shape; decode attention is memory-bound anyway.
  return jax.nn.dot_product_attention(query, key_cache, value_cache, mask=mask[None, None],
                                      implementation='xla')


def apply_rope(x: Array, positions: Array, max_wavelength: float = 10_000.0) -> Array:
  """Rotary position embedding (rotate-half form).

  Args:
    x: [batch, length, heads, head_dim] with an even head_dim.
    positions: [length] int32.
    max_wavelength: base of the geometric frequency ladder.

  Returns:
    x rotated, same shape and dtype.
  """
  half = x.shape[-1] // 2
  freq = max_wavelength ** (-jnp.arange(half, dtype=jnp.float32) / half)  # [half]
  angle = positions.astype(jnp.float32)[:, None] * freq[None, :]  # [length, half]
  sin = jnp.sin(angle)[None, :, None, :]  # [1, length, 1, half]
  cos = jnp.cos(angle)[None, :, None, :]
  x1, x2 = jnp.split(x.astype(jnp.float32), 2, axis=-1)
  out = jnp.concatenate([x1 * cos - x2 * sin, x2 * cos + x1 * sin], axis=-1)
  return out.astype(x.dtype)


class SelfAttention(nn.Module):
  """Causal grouped-query self-attention with RoPE.

  Attributes:
    num_heads: query heads.
    num_kv_heads: key/value heads (divides num_heads; == num_heads is plain multi-head).
    head_dim: size of each head.
    mode: 'train', 'prefill' or 'decode' (see the module docstring).
    implementation: 'auto', 'xla' or 'cudnn'.
    rope_max_wavelength: RoPE base.
    dtype: compute dtype.
    param_dtype: parameter dtype.
  """
  num_heads: int
  num_kv_heads: int
  head_dim: int
  mode: Mode = 'train'
  implementation: str | None = 'auto'
  rope_max_wavelength: float = 10_000.0
  dtype: jnp.dtype = jnp.float32
  param_dtype: jnp.dtype = jnp.float32

  @nn.compact
  def __call__(self, x: Array, positions: Array,
               cache: dict[str, Array] | None = None) -> tuple[Array, dict[str, Array] | None]:
    """Attends.

    Args:
      x: [batch, length, embed].
      positions: [length] int32 absolute positions of x's tokens.
      cache: None in 'train' mode, else {'k', 'v'}: [batch, max_len, kv_heads, head_dim].

    Returns:
      ([batch, length, embed], the updated cache or None).
    """
    if self.num_heads % self.num_kv_heads:
      raise ValueError(f'num_heads={self.num_heads} is not a multiple of '
                       f'num_kv_heads={self.num_kv_heads}')
    if (cache is None) != (self.mode == 'train'):
      raise ValueError(f"attention mode {self.mode!r}: a cache is needed exactly when mode != 'train'")
    embed = x.shape[-1]
    init = nn.initializers.variance_scaling(1.0, 'fan_in', 'normal')

    def proj(name, heads):
      return nn.DenseGeneral(
          features=(heads, self.head_dim), axis=-1, use_bias=False, dtype=self.dtype,
          param_dtype=self.param_dtype,
          kernel_init=nn.with_logical_partitioning(init, ('embed', 'heads', 'kv')), name=name)

    qkv_axes = ('activation_batch', 'activation_length', 'activation_heads', 'activation_kv')
    query = proj('query', self.num_heads)(x)  # [batch, length, heads, head_dim]
    key = proj('key', self.num_kv_heads)(x)  # [batch, length, kv_heads, head_dim]
    value = proj('value', self.num_kv_heads)(x)  # [batch, length, kv_heads, head_dim]
    query = apply_rope(query, positions, self.rope_max_wavelength)
    key = apply_rope(key, positions, self.rope_max_wavelength)
    query = nn.with_logical_constraint(query, qkv_axes)
    key = nn.with_logical_constraint(key, qkv_axes)
    value = nn.with_logical_constraint(value, qkv_axes)
    query = checkpoint_name(query, 'query_proj')
    key = checkpoint_name(key, 'key_proj')
    value = checkpoint_name(value, 'value_proj')

    new_cache = None
    if self.mode == 'decode':
      start = positions[0]
      k_cache = jax.lax.dynamic_update_slice(cache['k'], key.astype(cache['k'].dtype),
                                             (0, start, 0, 0))
      v_cache = jax.lax.dynamic_update_slice(cache['v'], value.astype(cache['v'].dtype),
                                             (0, start, 0, 0))
      new_cache = {'k': k_cache, 'v': v_cache}
      out = cached_attention(query, k_cache.astype(self.dtype), v_cache.astype(self.dtype),
                             start)
    else:
      out = causal_attention(query, key, value, implementation=self.implementation)
      if self.mode == 'prefill':
        new_cache = {
            'k': jax.lax.dynamic_update_slice(cache['k'], key.astype(cache['k'].dtype),
                                              (0, 0, 0, 0)),
            'v': jax.lax.dynamic_update_slice(cache['v'], value.astype(cache['v'].dtype),
                                              (0, 0, 0, 0)),
        }
    out = nn.with_logical_constraint(out, qkv_axes)  # [batch, length, heads, head_dim]
    out = nn.DenseGeneral(
        features=embed, axis=(-2, -1), use_bias=False, dtype=self.dtype,
        param_dtype=self.param_dtype,
        kernel_init=nn.with_logical_partitioning(init, ('heads', 'kv', 'embed')),
        name='out')(out)  # [batch, length, embed]
    out = checkpoint_name(out, 'out_proj')
    return out, new_cache


class EncoderAttention(nn.Module):
  """Multi-head self-attention over all (non-padding) positions, with BERT's biases (but the key's).

  Attributes:
    num_heads: heads.
    head_dim: size of each head.
    dtype: compute dtype.
  """
  num_heads: int
  head_dim: int
  dtype: Any = jnp.float32

  @nn.compact
  def __call__(self, x: jax.Array, mask: jax.Array) -> jax.Array:
    """Attends.

    Args:
      x: [batch, length, embed].
      mask: [batch, length] bool, True for real tokens.

    Returns:
      [batch, length, embed].
    """
    init = nn.initializers.variance_scaling(1.0, 'fan_in', 'normal')
    zeros = nn.initializers.zeros

    def proj(name, use_bias=True):
      return nn.DenseGeneral(
          features=(self.num_heads, self.head_dim), axis=-1, dtype=self.dtype,
          use_bias=use_bias,
          kernel_init=nn.with_logical_partitioning(init, ('embed', 'heads', 'kv')),
          bias_init=nn.with_logical_partitioning(zeros, ('heads', 'kv')), name=name)

    qkv_axes = ('activation_batch', 'activation_length', 'activation_heads', 'activation_kv')
    query = nn.with_logical_constraint(proj('query')(x), qkv_axes)  # [batch, length, heads, kv]
    # No key bias: it adds the same q.b to every logit of a query, so softmax ignores it and
    # its gradient is pure rounding noise (which Adam would amplify into random updates).
    key = nn.with_logical_constraint(proj('key', use_bias=False)(x), qkv_axes)
    value = nn.with_logical_constraint(proj('value')(x), qkv_axes)
    scale = 1.0 / float(self.head_dim) ** 0.5
    logits = jnp.einsum('bqhd,bkhd->bhqk', query * scale, key).astype(jnp.float32)
    logits = jnp.where(mask[:, None, None, :], logits, -1e9)  # every query sees real keys only
    weights = jax.nn.softmax(logits, axis=-1).astype(value.dtype)  # [batch, heads, q, k]
    out = jnp.einsum('bhqk,bkhd->bqhd', weights, value)
    out = nn.with_logical_constraint(out, qkv_axes)  # [batch, length, heads, kv]
    return nn.DenseGeneral(
        features=x.shape[-1], axis=(-2, -1), dtype=self.dtype,
        kernel_init=nn.with_logical_partitioning(init, ('heads', 'kv', 'embed')),
        bias_init=nn.with_logical_partitioning(zeros, ('embed',)), name='out')(out)
