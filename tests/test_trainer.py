"""Trainer: sharded == single device, exact resume, checkpoint fallback, non-finite guard."""

import logging
import os
import shutil
import signal

import jax
import numpy as np
import pytest

from musiclm_jax import checkpoints, partitioning, trainer as trainer_lib
from musiclm_jax.optim import OptimizerConfig
from musiclm_jax.toy.model import ToyModel, toy_input_fn

OPT = OptimizerConfig(learning_rate=1e-2, warmup_steps=2)


def _make_trainer(mesh_shape, devices=None, model=None, **kw):
  mesh = partitioning.make_mesh(mesh_shape, devices)
  return trainer_lib.Trainer(model=model or ToyModel(features=16, hidden=64), mesh=mesh,
                             rules=partitioning.DEFAULT_RULES, optimizers=OPT, total_steps=10,
                             **kw)


def _run_steps(trainer, num_steps, batch_size=16, seed=0):
  batches = toy_input_fn(batch_size=batch_size, seed=seed, start_index=0, shard_index=0,
                         num_shards=1)
  first = partitioning.shard_batch(next(batches), trainer.mesh, trainer.rules)
  state, shardings = trainer.init_state(jax.random.PRNGKey(seed), first)
  step = trainer.compile_step(shardings, {k: v.sharding for k, v in first.items()})
  batch = first
  losses = []
  for _ in range(num_steps):
    state, metrics = step(state, batch)
    losses.append(float(metrics['loss']))
    batch = partitioning.shard_batch(next(batches), trainer.mesh, trainer.rules)
  return jax.device_get(state.params), losses, state


def test_eight_fake_devices():
  assert jax.device_count() == 8


@pytest.mark.parametrize('mesh_shape', [
    {'data': 8, 'fsdp': 1, 'tensor': 1},
    {'data': 2, 'fsdp': 4, 'tensor': 1},
    {'data': 2, 'fsdp': 2, 'tensor': 2},
])
def test_sharded_step_matches_single_device(mesh_shape):
  single_params, single_losses, _ = _run_steps(
      _make_trainer({'data': 1}, devices=jax.devices()[:1]), 3)
  trainer = _make_trainer(mesh_shape)
  params, losses, state = _run_steps(trainer, 3)
  np.testing.assert_allclose(losses, single_losses, rtol=1e-5)
  jax.tree.map(lambda a, b: np.testing.assert_allclose(a, b, rtol=1e-5, atol=1e-6),
               params, single_params)
  # The parameters really are sharded as the rules say.
  wi = state.params['model']['wi']['kernel']
  expected = jax.sharding.PartitionSpec(
      'fsdp' if mesh_shape['fsdp'] > 1 else 'fsdp', 'tensor')
  assert wi.sharding.spec == expected
  assert len(wi.addressable_shards) == 8


def test_grad_accumulation_matches_full_batch():
  full, _, _ = _run_steps(_make_trainer({'data': -1}), 2)
  accum, _, _ = _run_steps(_make_trainer({'data': -1}, grad_accum_steps=2), 2)
  jax.tree.map(lambda a, b: np.testing.assert_allclose(a, b, rtol=1e-4, atol=1e-6), accum, full)


def test_bf16_compute_keeps_f32_params():
  params, losses, _ = _run_steps(_make_trainer({'data': -1}, compute_dtype='bfloat16'), 3)
  _, f32_losses, _ = _run_steps(_make_trainer({'data': -1}), 3)
  assert all(p.dtype == np.float32 for p in jax.tree.leaves(params))
  np.testing.assert_allclose(losses, f32_losses, rtol=0.05)


def test_nonfinite_step_is_skipped_and_counted():
  _, _, state = _run_steps(_make_trainer({'data': -1}, model=ToyModel(nan_at_step=1)), 3)
  assert int(state.nonfinite_total) == 1
  assert int(state.nonfinite_streak) == 0
  assert all(np.isfinite(p).all() for p in jax.tree.leaves(jax.device_get(state.params)))


class AlwaysNaN(ToyModel):

  def loss(self, *args):
    loss, aux = super().loss(*args)
    return loss * np.nan, aux


def test_nonfinite_streak_stops_with_clear_error(tmp_path):
  trainer = _make_trainer({'data': -1}, model=AlwaysNaN())
  with pytest.raises(trainer_lib.NonFiniteError, match='consecutive steps had a non-finite'):
    trainer_lib.fit(trainer, input_fn=toy_input_fn, model_dir=str(tmp_path), train_steps=10,
                    batch_size=16, max_nonfinite_steps=3, log_every=100)


def _fit(model_dir, steps, input_fn=toy_input_fn, **kw):
  trainer = _make_trainer({'data': 2, 'fsdp': 4, 'tensor': 1})
  trainer.total_steps = steps
  return trainer_lib.fit(trainer, input_fn=input_fn, model_dir=str(model_dir),
                         train_steps=steps, batch_size=16, seed=3, checkpoint_every=2,
                         log_every=2, **kw)


def _sigterm_at(index):
  """An input_fn that delivers SIGTERM to this process when batch `index` is produced."""
  def input_fn(**kw):
    for i, batch in enumerate(toy_input_fn(**kw), start=kw['start_index']):
      if i == index:
        os.kill(os.getpid(), signal.SIGTERM)
      yield batch
  return input_fn


def test_interrupted_and_resumed_equals_uninterrupted(tmp_path):
  full = _fit(tmp_path / 'full', 7)
  first = _fit(tmp_path / 'resumed', 7, input_fn=_sigterm_at(3))
  assert first.stopped_by == 'preempted' and first.step < 7
  assert checkpoints.Checkpointer(tmp_path / 'resumed').latest_step() == first.step
  second = _fit(tmp_path / 'resumed', 7, input_fn=_sigterm_at(-1))
  assert second.stopped_by == 'done' and second.step == 7
  jax.tree.map(np.testing.assert_array_equal, jax.device_get(second.state.params),
               jax.device_get(full.state.params))
  np.testing.assert_array_equal(jax.device_get(second.state.rng),
                                jax.device_get(full.state.rng))
  metrics = (tmp_path / 'full' / 'metrics.jsonl').read_text().splitlines()
  assert len(metrics) >= 3 and '"loss"' in metrics[-1]
  assert any(f.startswith('events.out.tfevents') for f in os.listdir(tmp_path / 'full' / 'tb'))


def test_corrupt_latest_checkpoint_falls_back(tmp_path, caplog):
  _fit(tmp_path, 6)
  ckpt = checkpoints.Checkpointer(tmp_path)
  assert ckpt.all_steps() == [2, 4, 6]
  state_dir = tmp_path / 'checkpoints' / '6' / 'state'
  for root, _, files in os.walk(state_dir):
    for name in files:
      with open(os.path.join(root, name), 'wb') as f:
        f.write(b'garbage')
  trainer = _make_trainer({'data': 2, 'fsdp': 4, 'tensor': 1})
  batch = partitioning.shard_batch(
      next(toy_input_fn(batch_size=16, seed=0, start_index=0, shard_index=0, num_shards=1)),
      trainer.mesh, trainer.rules)
  abstract, _ = trainer.state_shardings(jax.random.PRNGKey(0), batch)
  with caplog.at_level(logging.WARNING):
    step, state, meta = ckpt.restore_latest(abstract)
  assert step == 4 and meta['input_position'] == 4 and int(state.step) == 4
  assert 'unreadable' in caplog.text
  params, _, meta = checkpoints.load_params(tmp_path)
  assert meta['step'] == 4 and 'wi' in params['model']
  cwd = os.getcwd()
  try:  # a relative run folder (orbax itself refuses relative paths)
    os.chdir(tmp_path.parent)
    _, _, meta = checkpoints.load_params(tmp_path.name)
    assert meta['step'] == 4
  finally:
    os.chdir(cwd)
  shutil.rmtree(tmp_path / 'checkpoints' / '4')
  shutil.rmtree(tmp_path / 'checkpoints' / '2')
  with pytest.raises(checkpoints.CheckpointError, match='none of the checkpoints'):
    checkpoints.Checkpointer(tmp_path).restore_latest(abstract)
