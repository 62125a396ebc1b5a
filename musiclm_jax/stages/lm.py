"""The decoder-only transformer LM shared by MusicLM's three stages.

One network, three ways to run it with the same weights:

  logits = model.apply({'params': p}, tokens)                       # training, causal
  logits, cache = model.apply({'params': p}, tokens, cache, method=DecoderLM.prefill)
  logits, cache = model.apply({'params': p}, token, cache, position,
                              method=DecoderLM.decode_step)

The KV cache is a plain pytree {'k', 'v'} of [layers, batch, max_len, kv_heads, head_dim]
arrays (`init_cache`), so it is carried through `lax.scan`/`lax.while_loop` sampling loops and
sharded like any other array (`CACHE_AXES`); no flax 'cache' collection is involved.

Positions: rotary embeddings (RoPE) rather than T5 relative-position bias. RoPE rotates queries
and keys by their absolute positions, so a cached key never changes and decoding one token costs
one rotation; attention logits still depend only on relative offsets. It adds no parameters and,
above all, keeps attention bias-free: cuDNN flash attention (the fast path on GPU, ~9x XLA) takes
a causal flag but no per-head [T, T] bias, and a T5 bias would also have to be recomputed for
every decoded position. RoPE extrapolates tolerably to the slightly longer windows that sampling
uses, which a learned absolute table would not.

Layers run under `nn.scan` (parameters stacked on a leading 'layers' axis, one compiled layer)
and optionally `nn.remat` with a named policy (`REMAT_POLICIES`). Parameters are float32;
`dtype` sets the compute dtype (bfloat16 on accelerators); logits are returned in float32.
"""

import dataclasses
import math
from typing import Any

import flax.linen as nn
import jax
import jax.numpy as jnp

from musiclm_jax.layers import attention
from musiclm_jax.layers import transformer

Array = jax.Array

_cp = jax.checkpoint_policies
# Name -> jax.checkpoint policy; 'none' means no rematerialization at all.
REMAT_POLICIES = {
    'none': None,
    'full': _cp.nothing_saveable,
    'dots_saveable': _cp.dots_saveable,
    'minimal': _cp.dots_with_no_batch_dims_saveable,
    'save_qkv_proj': _cp.save_only_these_names('query_proj', 'key_proj', 'value_proj'),
    'save_attention_out': _cp.save_only_these_names('query_proj', 'key_proj', 'value_proj',
                                                    'out_proj'),
}
# Logical axes of the cache arrays [layers, batch, max_len, kv_heads, head_dim].
CACHE_AXES = ('layers',) + attention.CACHE_AXES


@dataclasses.dataclass(frozen=True)
class LMConfig:
  """Hyperparameters of `DecoderLM` (bound in gin: gin/models/stages/*/{tiny,paper}.gin).

  Attributes:
    vocab_size: unified vocabulary; 0 means "take it from the stage layout".
    num_layers: decoder layers.
    num_heads: attention query heads.
    num_kv_heads: key/value heads (grouped-query attention); None = num_heads.
    embed_dim: model width.
    head_dim: per-head size; None = embed_dim // num_heads.
    mlp_dim: feed-forward hidden width.
    gated_mlp: GEGLU/SwiGLU (3 matrices) instead of a plain 2-matrix FFN.
    mlp_activation: 'gelu' (GEGLU when gated) or 'silu' (SwiGLU when gated).
    norm: 'rms' or 'layer'.
    dropout_rate: embedding and residual dropout.
    remat_policy: a key of `REMAT_POLICIES`.
    attention_impl: 'auto' (cuDNN on GPU, XLA elsewhere), 'xla' or 'cudnn'.
    rope_max_wavelength: RoPE base.
    dtype: compute dtype name, e.g. 'float32' or 'bfloat16'.
    param_dtype: parameter dtype name.
  """
  vocab_size: int = 0
  num_layers: int = 2
  num_heads: int = 4
  num_kv_heads: int | None = None
  embed_dim: int = 64
  head_dim: int | None = None
  mlp_dim: int = 256
  gated_mlp: bool = True
  mlp_activation: str = 'gelu'
  norm: str = 'rms'
  dropout_rate: float = 0.0
  remat_policy: str = 'none'
  attention_impl: str = 'auto'
  rope_max_wavelength: float = 10_000.0
  dtype: Any = 'float32'
  param_dtype: Any = 'float32'

  @property
  def kv_heads(self) -> int:
    return self.num_kv_heads or self.num_heads

  @property
  def per_head_dim(self) -> int:
    return self.head_dim or self.embed_dim // self.num_heads


def init_cache(config: LMConfig, batch_size: int, max_len: int, dtype=None) -> dict[str, Array]:
  """Zero KV cache {'k', 'v'}: [layers, batch, max_len, kv_heads, head_dim] (compute dtype)."""
  shape = (config.num_layers, batch_size, max_len, config.kv_heads, config.per_head_dim)
  dtype = jnp.dtype(dtype or config.dtype)
  return {'k': jnp.zeros(shape, dtype), 'v': jnp.zeros(shape, dtype)}


class DecoderLM(nn.Module):
  """Causal transformer LM over one stage's unified vocabulary.

  Attributes:
    config: the hyperparameters (`vocab_size` must be set).
  """
  config: LMConfig

  @nn.compact
  def __call__(self, tokens: Array, cache: dict[str, Array] | None = None,
               positions: Array | None = None, *, mode: attention.Mode = 'train',
               deterministic: bool = True) -> Array | tuple[Array, dict[str, Array]]:
    """Runs the network.

    Args:
      tokens: [batch, length] int32 ids in [0, vocab_size).
      cache: None for 'train'; the stacked KV cache for 'prefill'/'decode'.
      positions: [length] int32 absolute positions; default arange(length).
      mode: 'train', 'prefill' or 'decode' (see `musiclm_jax.layers.attention`).
      deterministic: disables dropout.

    Returns:
      logits [batch, length, vocab] float32 in 'train' mode, else (logits, updated cache).
    """
    cfg = self.config
    if cfg.vocab_size <= 0:
      raise ValueError('LMConfig.vocab_size: must be set (> 0) before building DecoderLM')
    if cfg.remat_policy not in REMAT_POLICIES:
      raise ValueError(f'LMConfig.remat_policy: expected one of {sorted(REMAT_POLICIES)}, '
                       f'got {cfg.remat_policy!r}')
    dtype, param_dtype = jnp.dtype(cfg.dtype), jnp.dtype(cfg.param_dtype)
    if positions is None:
      positions = jnp.arange(tokens.shape[1], dtype=jnp.int32)

    x = nn.Embed(
        num_embeddings=cfg.vocab_size, features=cfg.embed_dim, dtype=dtype,
        param_dtype=param_dtype,
        embedding_init=nn.with_logical_partitioning(nn.initializers.normal(1.0),
                                                    ('vocab', 'embed')),
        name='token_embed')(tokens)  # [batch, length, embed]
    x = nn.Dropout(cfg.dropout_rate)(x, deterministic=deterministic)
    x = nn.with_logical_constraint(x, transformer.ACTIVATION_AXES)

    block = transformer.DecoderBlock
    policy = REMAT_POLICIES[cfg.remat_policy]
    if cfg.remat_policy != 'none':
      block = nn.remat(block, policy=policy, prevent_cse=False)
    stack = nn.scan(
        block, variable_axes={'params': 0}, split_rngs={'params': True, 'dropout': True},
        in_axes=(nn.broadcast, 0), length=cfg.num_layers,
        metadata_params={nn.PARTITION_NAME: 'layers'})
    x, cache = stack(
        num_heads=cfg.num_heads, num_kv_heads=cfg.kv_heads, head_dim=cfg.per_head_dim,
        mlp_dim=cfg.mlp_dim, dropout_rate=cfg.dropout_rate, norm=cfg.norm,
        mlp_activation=cfg.mlp_activation, gated_mlp=cfg.gated_mlp,
        deterministic=deterministic, mode=mode, attention_impl=cfg.attention_impl,
        rope_max_wavelength=cfg.rope_max_wavelength, dtype=dtype, param_dtype=param_dtype,
        name='layers')(x, positions, cache)  # [batch, length, embed]

    x = transformer.make_norm(cfg.norm, dtype=dtype, param_dtype=param_dtype,
                              name='final_norm')(x)
    logits = nn.DenseGeneral(
        features=cfg.vocab_size, use_bias=False, dtype=dtype, param_dtype=param_dtype,
        kernel_init=nn.with_logical_partitioning(
            nn.initializers.variance_scaling(1.0, 'fan_in', 'normal'), ('embed', 'vocab')),
        name='logits')(x)  # [batch, length, vocab]
    logits = nn.with_logical_constraint(
        logits, ('activation_batch', 'activation_length', 'activation_vocab'))
    logits = logits.astype(jnp.float32)
    return logits if mode == 'train' else (logits, cache)

  def prefill(self, tokens: Array, cache: dict[str, Array]) -> tuple[Array, dict[str, Array]]:
    """Runs a prompt that starts at position 0 and fills the cache with its keys/values.

    Args:
      tokens: [batch, length] int32, length <= the cache's max_len.
      cache: from `init_cache`.

    Returns:
      (logits [batch, length, vocab] float32, cache with positions [0, length) written).
    """
    return self(tokens, cache, mode='prefill')

  def decode_step(self, token: Array, cache: dict[str, Array],
                  position: Array) -> tuple[Array, dict[str, Array]]:
    """Feeds one token per sequence at `position`, attending to cached positions <= it.

    Args:
      token: [batch] int32.
      cache: holding positions [0, position).
      position: int32 scalar, the token's position (the prompt length for the first step).

    Returns:
      (logits [batch, vocab] float32 for the next token, cache with `position` written).
    """
    logits, cache = self.decode_chunk(token[:, None], cache, position)
    return logits[:, 0], cache

  def decode_chunk(self, tokens: Array, cache: dict[str, Array],
                   position: Array) -> tuple[Array, dict[str, Array]]:
    """Like `decode_step` for a chunk [batch, chunk] at positions position.. (logits per token)."""
    positions = jnp.asarray(position, jnp.int32) + jnp.arange(tokens.shape[1], dtype=jnp.int32)
    return self(tokens, cache, positions, mode='decode')


def count_params(params: Any) -> int:
  """Number of scalars in a (possibly boxed or abstract) parameter tree."""
  leaves = jax.tree_util.tree_leaves(nn.meta.unbox(params))
  return sum(math.prod(x.shape) for x in leaves)
