"""MuLan text tower: a bidirectional transformer encoder over sentencepiece ids.

The paper's tower is BERT-base (12 layers, width 768, 12 heads, FFN 3072). Here it is a
pre-norm encoder (LayerNorm before attention and FFN, a final LayerNorm), which trains stably
from scratch without BERT's warmup tricks; learned absolute position embeddings; a learned CLS
vector prepended to every sequence. Pooling is the CLS output ('cls') or the mean over the
non-padding tokens ('mean'). Id 0 is padding (the project's sentencepiece layout: pad 0,
eos 1, unk 2) and is masked out of attention, so the output does not depend on how much
padding follows the text.

`musiclm_jax.layers.transformer.DecoderBlock` is causal (its attention always applies a causal
mask and RoPE), so it does not fit an encoder; the blocks here use the layer library's
bidirectional `EncoderAttention`, `MlpBlock` (plain GELU, 2 matrices) and `make_norm`.
"""

from typing import Any

import flax.linen as nn
import jax
import jax.numpy as jnp

from musiclm_jax.layers.attention import EncoderAttention
from musiclm_jax.layers.transformer import MlpBlock, make_norm

ACTIVATION_AXES = ('activation_batch', 'activation_length', 'activation_embed')
PAD_ID = 0


class EncoderBlock(nn.Module):
  """Pre-norm encoder layer: x + Attn(LN(x)), then x + FFN(LN(x)).

  Attributes:
    num_heads: attention heads.
    mlp_dim: FFN hidden width.
    dtype: compute dtype.
  """
  num_heads: int
  mlp_dim: int
  dtype: Any = jnp.float32

  @nn.compact
  def __call__(self, x: jax.Array, mask: jax.Array) -> jax.Array:
    """Maps [batch, length, embed] (and mask [batch, length]) -> [batch, length, embed]."""
    width = x.shape[-1]
    if width % self.num_heads:
      raise ValueError(f'text tower: width {width} is not a multiple of {self.num_heads} heads')
    x = nn.with_logical_constraint(x, ACTIVATION_AXES)
    h = make_norm('layer', dtype=self.dtype, param_dtype=jnp.float32, name='pre_attention_norm')(x)
    x = x + EncoderAttention(num_heads=self.num_heads, head_dim=width // self.num_heads,
                             dtype=self.dtype, name='attention')(h, mask)
    x = nn.with_logical_constraint(x, ACTIVATION_AXES)
    h = make_norm('layer', dtype=self.dtype, param_dtype=jnp.float32, name='pre_mlp_norm')(x)
    x = x + MlpBlock(mlp_dim=self.mlp_dim, activation='gelu', gated=False, dtype=self.dtype,
                     name='mlp')(h)
    return nn.with_logical_constraint(x, ACTIVATION_AXES)


class TextEncoder(nn.Module):
  """Token + position embeddings, CLS vector, `num_layers` encoder blocks, pooled output.

  Attributes:
    vocab_size: sentencepiece vocabulary size (ids must be < vocab_size).
    max_length: longest token sequence accepted (position table has max_length + 1 rows,
      the first for CLS).
    width: model width.
    num_layers: encoder layers.
    num_heads: attention heads.
    mlp_dim: FFN hidden width.
    pool: 'cls' or 'mean'.
    dtype: compute dtype.
  """
  vocab_size: int
  max_length: int = 512
  width: int = 768
  num_layers: int = 12
  num_heads: int = 12
  mlp_dim: int = 3072
  pool: str = 'cls'
  dtype: Any = jnp.float32

  @nn.compact
  def __call__(self, tokens: jax.Array) -> jax.Array:
    """Maps int ids [batch, length] (0 = padding) to pooled features [batch, width]."""
    batch, length = tokens.shape
    if length > self.max_length:
      raise ValueError(f'text tower: {length} tokens exceed max_length {self.max_length}')
    if self.pool not in ('cls', 'mean'):
      raise ValueError(f"text tower pool: expected 'cls' or 'mean', got {self.pool!r}")
    embed_init = nn.initializers.normal(0.02)
    table = self.param('token_embedding',
                       nn.with_logical_partitioning(embed_init, ('vocab', 'embed')),
                       (self.vocab_size, self.width), jnp.float32)
    positions = self.param('position_embedding',
                           nn.with_logical_partitioning(embed_init, (None, 'embed')),
                           (self.max_length + 1, self.width), jnp.float32)
    cls = self.param('cls', nn.with_logical_partitioning(embed_init, ('embed',)),
                     (self.width,), jnp.float32)
    x = jnp.take(table.astype(self.dtype), tokens, axis=0)  # [batch, length, width]
    x = jnp.concatenate([jnp.broadcast_to(cls.astype(self.dtype), (batch, 1, self.width)), x],
                        axis=1)  # [batch, 1 + length, width]
    x = x + positions[:length + 1].astype(self.dtype)[None]
    mask = jnp.concatenate([jnp.ones((batch, 1), bool), tokens != PAD_ID], axis=1)
    for layer in range(self.num_layers):
      x = EncoderBlock(num_heads=self.num_heads, mlp_dim=self.mlp_dim, dtype=self.dtype,
                       name=f'layer{layer + 1}')(x, mask)
    x = make_norm('layer', dtype=self.dtype, param_dtype=jnp.float32, name='final_norm')(x)
    if self.pool == 'cls':
      return x[:, 0]  # [batch, width]
    weights = mask[:, 1:].astype(x.dtype)[..., None]  # [batch, length, 1]
    return jnp.sum(x[:, 1:] * weights, axis=1) / jnp.maximum(jnp.sum(weights, axis=1), 1.0)


def text_encoder_param_count(*, vocab_size: int, max_length: int, width: int, num_layers: int,
                             mlp_dim: int) -> int:
  """Closed-form parameter count of `TextEncoder`."""
  per_layer = (4 * width * width + 3 * width  # q, k, v, out; biases on all but k
               + 2 * width * mlp_dim  # FFN without biases
               + 4 * width)  # two LayerNorms
  return vocab_size * width + (max_length + 1) * width + width + num_layers * per_layer + 2 * width
