"""`StageModel`: one MusicLM stage (semantic, coarse or fine) as a `TrainableModel`.

Batch contract (either form; leading dimension = batch):

  * Ready LM sequences, as produced by `StageLayout.build` (the seqio tasks emit these):
      'inputs':    int32 [batch, length]  ids in the stage's unified vocabulary
      'targets':   int32 [batch, length]  inputs shifted left by one
      'loss_mask': float32 [batch, length] 1 on predicted (target-field) tokens only
  * Per-stage codes, laid out on the fly by the stage's layout (see `stages.layouts`):
      semantic: 'mulan' int32 [batch, 12], 'semantic' [batch, frames]   (+ 'melody')
      coarse:   'mulan' [batch, 12], 'semantic' [batch, frames], 'coarse' [batch, frames, 4]
      fine:     'coarse' [batch, frames, 4], 'fine' [batch, frames, 8]
    with raw codes in [0, codebook_size) and -1 for missing frames.

Metrics (averaged over predicted tokens): 'loss' (what is minimised: CE + z-loss), 'ce',
'accuracy', 'perplexity', 'z_loss', and for acoustic stages 'ce_level_<k>' and
'perplexity_level_<k>' per RVQ level k (1-based, global: coarse 1-4, fine 5-12).

Sampling uses the same weights through `init_cache`, `prefill` and `decode_step`.
"""

import dataclasses
from typing import Any, Mapping

import jax
import jax.numpy as jnp

from musiclm_jax.stages import layouts as layouts_lib
from musiclm_jax.stages import lm as lm_lib

Array = jax.Array
PyTree = Any


def _network_params(params: PyTree) -> PyTree:
  """Accepts {'model': tree} (all groups, as the trainer passes) or the network tree itself."""
  return params['model'] if 'model' in params else params


class StageModel:
  """A MusicLM stage: a `DecoderLM` over a `StageLayout`'s vocabulary.

  Attributes:
    param_groups: ('model',).
    layout: the stage's token layout.
    config: the LM hyperparameters, with vocab_size filled in from the layout.
    network: the flax `DecoderLM`.
    z_loss: weight of the log-partition penalty (logsumexp^2), for bf16 stability.
  """

  param_groups = ('model',)

  def __init__(self, *, layout: layouts_lib.StageLayout, config: lm_lib.LMConfig,
               z_loss: float = 1e-4):
    """Builds the stage.

    Args:
      layout: e.g. `layouts.coarse_layout(...)`.
      config: LM hyperparameters; vocab_size 0 means the layout's vocabulary size.
      z_loss: weight of mean(mask * logsumexp(logits)^2) added to the loss.
    """
    if config.vocab_size == 0:
      # Rounded up to a multiple of 128 so the vocabulary axis divides over `tensor` meshes and
      # maps onto full MXU/tensor-core tiles; the extra ids are never targets or sampled.
      config = dataclasses.replace(config, vocab_size=-(-layout.vocab_size // 128) * 128)
    elif config.vocab_size < layout.vocab_size:
      raise ValueError(f'LMConfig.vocab_size={config.vocab_size} is smaller than the '
                       f'{layout.name} layout vocabulary ({layout.vocab_size})')
    self.layout = layout
    self.config = config
    self.network = lm_lib.DecoderLM(config)
    self.z_loss = z_loss

  def make_batch(self, batch: Mapping[str, Any]) -> dict[str, Any]:
    """Returns {'inputs', 'targets', 'loss_mask'}, laying out per-stage codes if needed."""
    if 'inputs' in batch:
      missing = {'targets', 'loss_mask'} - set(batch)
      if missing:
        raise KeyError(f'{self.layout.name} batch: has inputs but lacks {sorted(missing)}')
      return {k: batch[k] for k in ('inputs', 'targets', 'loss_mask')}
    return self.layout.build(batch)

  def init(self, rng: Array, batch: Mapping[str, Any]) -> tuple[dict[str, PyTree], PyTree]:
    """Returns ({'model': boxed params}, {}); parameters do not depend on the batch shape."""
    del batch
    tokens = jnp.zeros((1, 8), jnp.int32)
    params = self.network.init({'params': rng}, tokens)['params']
    return {'model': params}, {}

  def apply(self, params: PyTree, inputs: Array, *, rng: Array | None = None) -> Array:
    """Logits [batch, length, vocab] float32; dropout is on exactly when `rng` is given."""
    rngs = {} if rng is None else {'dropout': rng}
    return self.network.apply({'params': _network_params(params)}, inputs,
                              deterministic=rng is None, rngs=rngs)

  def loss(self, group: str, params: dict[str, PyTree], model_state: PyTree,
           batch: Mapping[str, Any], rng: Array,
           step: Array) -> tuple[Array, tuple[dict[str, Array], PyTree]]:
    """Next-token cross-entropy on predicted tokens (see the module docstring for metrics)."""
    del step
    if group != 'model':
      raise ValueError(f"StageModel has one parameter group 'model', got {group!r}")
    batch = self.make_batch(batch)
    logits = self.apply(params, batch['inputs'], rng=rng if self.config.dropout_rate else None)
    loss, metrics = self.metrics(logits, batch['targets'], batch['loss_mask'])
    return loss, (metrics, model_state)

  def eval_metrics(self, params: dict[str, PyTree], model_state: PyTree,
                   batch: Mapping[str, Any]) -> dict[str, Array]:
    """The training metrics without dropout."""
    del model_state
    batch = self.make_batch(batch)
    logits = self.apply(params, batch['inputs'])
    return self.metrics(logits, batch['targets'], batch['loss_mask'])[1]

  def metrics(self, logits: Array, targets: Array,
              loss_mask: Array) -> tuple[Array, dict[str, Array]]:
    """Returns (loss, metrics) for logits [batch, length, vocab] against targets [batch, length]."""
    logits = logits.astype(jnp.float32)
    mask = jnp.asarray(loss_mask, jnp.float32)  # [batch, length]
    targets = jnp.asarray(targets, jnp.int32)
    log_z = jax.nn.logsumexp(logits, axis=-1)  # [batch, length]
    target_logit = jnp.take_along_axis(logits, targets[..., None], axis=-1)[..., 0]
    nll = log_z - target_logit  # [batch, length]
    correct = (jnp.argmax(logits, axis=-1) == targets).astype(jnp.float32)
    denom = jnp.maximum(mask.sum(), 1.0)
    ce = (nll * mask).sum() / denom
    z_term = (jnp.square(log_z) * mask).sum() / denom
    loss = ce + self.z_loss * z_term
    metrics = {
        'loss': loss,
        'ce': ce,
        'accuracy': (correct * mask).sum() / denom,
        'perplexity': jnp.exp(ce),
        'z_loss': z_term,
    }
    target = self.layout.target
    if target.num_levels > 1:
      levels = self.layout.target_levels(targets)  # [batch, length]
      for level in range(target.num_levels):
        level_mask = mask * (levels == level)
        level_ce = (nll * level_mask).sum() / jnp.maximum(level_mask.sum(), 1.0)
        k = target.first_level + level + 1
        metrics[f'ce_level_{k}'] = level_ce
        metrics[f'perplexity_level_{k}'] = jnp.exp(level_ce)
    return loss, metrics

  # Sampling: the same weights with an explicit KV cache.

  def init_cache(self, batch_size: int, max_len: int | None = None,
                 dtype=None) -> dict[str, Array]:
    """Zero cache for `max_len` positions (default: the layout's full sequence)."""
    return lm_lib.init_cache(self.config, batch_size, max_len or self.layout.sequence_length,
                             dtype)

  def prefill(self, params: PyTree, tokens: Array,
              cache: dict[str, Array]) -> tuple[Array, dict[str, Array]]:
    """(logits [batch, length, vocab], cache) for a prompt at positions [0, length)."""
    return self.network.apply({'params': _network_params(params)}, tokens, cache,
                              method=lm_lib.DecoderLM.prefill)

  def decode_step(self, params: PyTree, token: Array, cache: dict[str, Array],
                  position: Array) -> tuple[Array, dict[str, Array]]:
    """(logits [batch, vocab] for the next token, cache) after feeding token [batch] at position."""
    return self.network.apply({'params': _network_params(params)}, token, cache, position,
                              method=lm_lib.DecoderLM.decode_step)
