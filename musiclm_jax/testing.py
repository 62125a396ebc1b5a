"""Test helpers shared by every component: sharded-vs-single-device training steps."""

from collections.abc import Mapping, Sequence
from typing import Any

import jax
import numpy as np

from musiclm_jax import partitioning, trainer as trainer_lib
from musiclm_jax.optim import OptimizerConfig

DEFAULT_MESHES = (
    {'data': 8, 'fsdp': 1, 'tensor': 1},
    {'data': 2, 'fsdp': 4, 'tensor': 1},
    {'data': 2, 'fsdp': 2, 'tensor': 2},
)


def run_steps(model: Any, batch: Mapping[str, np.ndarray], mesh_shape: Mapping[str, int], *,
              devices: Sequence[jax.Device] | None = None, steps: int = 2, seed: int = 0,
              optimizer: OptimizerConfig = OptimizerConfig(learning_rate=1e-3, warmup_steps=1),
              rules: partitioning.LogicalRules = partitioning.DEFAULT_RULES):
  """Runs `steps` train steps on one fixed batch; returns (host params, per-step metrics)."""
  mesh = partitioning.make_mesh(mesh_shape, devices)
  trainer = trainer_lib.Trainer(model=model, mesh=mesh, rules=rules, optimizers=optimizer,
                                total_steps=100)
  sharded = partitioning.shard_batch(batch, mesh, rules)
  state, shardings = trainer.init_state(jax.random.PRNGKey(seed), sharded)
  step = trainer.compile_step(shardings, {k: v.sharding for k, v in sharded.items()})
  history = []
  for _ in range(steps):
    state, metrics = step(state, sharded)
    history.append(jax.device_get(metrics))
  return jax.device_get(state.params), history


def check_sharded_step(model: Any, batch: Mapping[str, np.ndarray], *,
                       mesh_shapes: Sequence[Mapping[str, int]] = DEFAULT_MESHES,
                       steps: int = 2, rtol: float = 1e-4, atol: float = 1e-5) -> None:
  """Asserts that training on each mesh gives the single-device losses and parameters."""
  ref_params, ref_hist = run_steps(model, batch, {'data': 1}, devices=jax.devices()[:1],
                                   steps=steps)
  for shape in mesh_shapes:
    params, hist = run_steps(model, batch, shape, steps=steps)
    for ref, got in zip(ref_hist, hist):
      for key in ref:
        np.testing.assert_allclose(got[key], ref[key], rtol=rtol, atol=atol,
                                   err_msg=f'metric {key} on mesh {shape}')
    jax.tree.map(lambda a, b: np.testing.assert_allclose(
        a, b, rtol=rtol, atol=atol, err_msg=f'params on mesh {shape}'), params, ref_params)
