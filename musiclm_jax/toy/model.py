"""Toy component: a two-layer MLP fitting a fixed random nonlinear map.

It exists so the trainer, partitioning, checkpoints and gin plumbing are tested end to end
in seconds, with every parameter sharded over `embed` (fsdp) and `mlp` (tensor).
"""

from collections.abc import Iterator

import flax.linen as nn
import jax
import jax.numpy as jnp
import numpy as np


class MLP(nn.Module):
  """Dense -> gelu -> Dense with logical axes on every parameter."""
  features: int = 16
  hidden: int = 64

  @nn.compact
  def __call__(self, x: jax.Array) -> jax.Array:  # [batch, features]
    x = nn.with_logical_constraint(x, ('activation_batch', 'activation_embed'))
    h = nn.Dense(self.hidden, name='wi', kernel_init=nn.with_logical_partitioning(
        nn.initializers.lecun_normal(), ('embed', 'mlp')), bias_init=nn.with_logical_partitioning(
            nn.initializers.zeros, ('mlp',)))(x)  # [batch, hidden]
    h = nn.gelu(h)
    h = nn.with_logical_constraint(h, ('activation_batch', 'activation_mlp'))
    return nn.Dense(self.features, name='wo', kernel_init=nn.with_logical_partitioning(
        nn.initializers.lecun_normal(), ('mlp', 'embed')), bias_init=nn.with_logical_partitioning(
            nn.initializers.zeros, ('embed',)))(h)  # [batch, features]


class ToyModel:
  """TrainableModel wrapper: mean squared error of the MLP against the batch targets.

  Args:
    features: input/output width.
    hidden: hidden width.
    nan_at_step: make the loss NaN at this step (tests the non-finite guard); -1 never.
  """
  param_groups = ('model',)

  def __init__(self, *, features: int = 16, hidden: int = 64, nan_at_step: int = -1):
    self.net = MLP(features=features, hidden=hidden)
    self.nan_at_step = nan_at_step

  def init(self, rng, batch):
    variables = self.net.init(rng, jnp.asarray(batch['x']))
    return {'model': variables['params']}, {}

  def loss(self, group, params, model_state, batch, rng, step):
    del group, rng
    pred = self.net.apply({'params': params['model']}, batch['x'])
    loss = jnp.mean(jnp.square(pred.astype(jnp.float32) - batch['y']))
    loss = jnp.where(step == self.nan_at_step, jnp.nan, loss)
    return loss, ({'mse': loss}, model_state)


def toy_input_fn(*, batch_size: int, seed: int, start_index: int, shard_index: int,
                 num_shards: int, features: int = 16) -> Iterator[dict[str, np.ndarray]]:
  """Deterministic batches: global batch k, rows of this host's shard, from seed and k only."""
  mixing = np.random.default_rng(1234).standard_normal((features, features)) / np.sqrt(features)
  index = start_index
  while True:
    rng = np.random.default_rng([seed, index])
    x = rng.standard_normal((batch_size * num_shards, features)).astype(np.float32)
    x = x[shard_index * batch_size:(shard_index + 1) * batch_size]
    yield {'x': x, 'y': np.sin(x @ mixing).astype(np.float32)}
    index += 1
