"""`W2VBertModel`: the w2v-BERT pre-training component for the one trainer.

Batch: {'audio': float32 [B, N]} at 24 kHz. One parameter group, 'model'; no model state.
"""

from typing import Any

import jax
import jax.numpy as jnp

from musiclm_jax.semantic import w2vbert

PyTree = Any


def gumbel_temperature(config: w2vbert.W2VBertConfig, step: jax.Array | int) -> jax.Array:
  """max(start * decay^step, end), as wav2vec 2.0."""
  step = jnp.asarray(step, jnp.float32)
  return jnp.maximum(config.gumbel_temperature_start * config.gumbel_temperature_decay ** step,
                     config.gumbel_temperature_end)


class W2VBertModel:
  """TrainableModel for w2v-BERT pre-training (contrastive + diversity + MLM).

  Args:
    config: sizes and hyper-parameters (default: the paper's 0.6B model).
  """

  param_groups = ('model',)

  def __init__(self, *, config: w2vbert.W2VBertConfig | None = None):
    self.config = config or w2vbert.W2VBertConfig()
    self.module = w2vbert.W2VBert(self.config)

  def init(self, rng: jax.Array, batch: dict[str, jax.Array]) -> tuple[dict[str, PyTree], PyTree]:
    """Returns ({'model': boxed params}, {})."""
    audio = jnp.asarray(batch['audio'], jnp.float32)
    params_rng, mask_rng, gumbel_rng = jax.random.split(rng, 3)
    init = jax.jit(lambda r, a, m, g: self.module.init(
        {'params': r}, a, mask_rng=m, gumbel_rng=g, temperature=1.0, deterministic=True))
    variables = init(params_rng, audio, mask_rng, gumbel_rng)
    return {'model': variables['params']}, {}

  def loss(self, group: str, params: dict[str, PyTree], model_state: PyTree,
           batch: dict[str, jax.Array], rng: jax.Array, step: jax.Array
           ) -> tuple[jax.Array, tuple[dict[str, jax.Array], PyTree]]:
    """Pre-training loss; see `w2vbert.W2VBert.__call__`."""
    if group != 'model':
      raise ValueError(f"W2VBertModel has one parameter group 'model', got {group!r}")
    mask_rng, gumbel_rng, dropout_rng = jax.random.split(rng, 3)
    deterministic = self.config.dropout_rate == 0.0
    loss, metrics = self.module.apply(
        {'params': params['model']}, batch['audio'], mask_rng=mask_rng, gumbel_rng=gumbel_rng,
        temperature=gumbel_temperature(self.config, step), deterministic=deterministic,
        rngs={} if deterministic else {'dropout': dropout_rng})
    return loss, (metrics, model_state)

  def embed(self, params: PyTree, audio: jax.Array, layer: int | None = None) -> jax.Array:
    """Features of MLM layer `layer` (default `config.token_layer`): [B, N // 960, embed].

    Args:
      params: the 'model' group's params (unboxed).
      audio: [B, N] at 24 kHz.
      layer: MLM layer (1-based; 0 = contrastive module output).
    """
    layer = self.config.token_layer if layer is None else layer
    return self.module.apply({'params': params}, audio, layer, method=w2vbert.W2VBert.embed)
