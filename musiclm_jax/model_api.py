"""The contract between a trainable component (codec, w2v-BERT, MuLan, stages) and the trainer.

A component is a plain object with `param_groups`, `init`, `loss` (and optionally
`eval_metrics`). Each parameter group has its own optimizer and is updated in the order
given, once per step, so a GAN lists ('discriminator', 'generator') and everything else
lists ('model',).
"""

from typing import Any, Mapping, Protocol

import jax

PyTree = Any
Batch = Mapping[str, jax.Array]


class TrainableModel(Protocol):
  """What `musiclm_jax.trainer.Trainer` needs from a component.

  Attributes:
    param_groups: names of the parameter groups, in update order. Each gets its own optimizer.
  """

  param_groups: tuple[str, ...]

  def init(self, rng: jax.Array, batch: Batch) -> tuple[dict[str, PyTree], PyTree]:
    """Returns (params by group, model_state).

    Leaves may be `flax.linen.Partitioned` boxes (from `nn.with_logical_partitioning`):
    the trainer reads their logical axis names to shard them, then unboxes. `model_state`
    holds non-trained variables (EMA codebooks, counters); it may be an empty dict.
    """
    ...

  def loss(self, group: str, params: dict[str, PyTree], model_state: PyTree, batch: Batch,
           rng: jax.Array, step: jax.Array) -> tuple[jax.Array, tuple[dict[str, jax.Array], PyTree]]:
    """Returns (scalar loss to minimise w.r.t. params[group], (metrics, new model_state)).

    Called inside `jax.jit` and `jax.grad`; `params` holds every group (already cast to
    the compute dtype) so a generator loss can read the discriminator. Metrics are scalars
    averaged over the batch; the trainer prefixes nothing, so use distinct names per group.
    """
    ...
