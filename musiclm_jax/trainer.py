"""One trainer for every component: sharded state, jitted steps, checkpoints, metrics, preemption.

A component supplies a `TrainableModel` (see `model_api.py`); the trainer owns one optax
optimizer per parameter group, bf16 compute over f32 master params, gradient accumulation,
a non-finite guard, orbax checkpoints with exact resume, SIGTERM handling and metric output.
"""

from collections.abc import Callable, Iterator, Mapping
import dataclasses
import logging
import signal
import threading
from typing import Any

import flax.linen as nn
import flax.struct
import jax
import jax.numpy as jnp
from jax.sharding import Mesh
import numpy as np
import optax

from musiclm_jax import checkpoints as ckpt_lib
from musiclm_jax import metrics as metrics_lib
from musiclm_jax import partitioning
from musiclm_jax.model_api import TrainableModel
from musiclm_jax.optim import OptimizerConfig

log = logging.getLogger('musiclm_jax')

InputFn = Callable[..., Iterator[Mapping[str, np.ndarray]]]


class NonFiniteError(RuntimeError):
  """Too many consecutive steps produced a non-finite loss or gradient."""


@flax.struct.dataclass
class TrainState:
  """Everything a resumed run needs. Stored whole in each checkpoint."""
  step: jax.Array                 # int32 []
  params: dict[str, Any]          # group -> f32 parameter tree
  opt_states: dict[str, Any]      # group -> optax state
  model_state: Any                # non-trained variables (EMA codebooks, ...)
  rng: jax.Array                  # uint32 [2], split once per step
  nonfinite_streak: jax.Array     # int32 [], consecutive skipped steps
  nonfinite_worst: jax.Array      # int32 [], longest streak so far (checked by the loop)
  nonfinite_total: jax.Array      # int32 []


def _cast_floats(tree: Any, dtype: jnp.dtype) -> Any:
  return jax.tree.map(
      lambda x: x.astype(dtype) if jnp.issubdtype(x.dtype, jnp.floating) else x, tree)


def _select(ok: jax.Array, new: Any, old: Any) -> Any:
  return jax.tree.map(lambda n, o: jnp.where(ok, n, o), new, old)


@dataclasses.dataclass
class Trainer:
  """Builds sharded state and the jitted train step for a model on a mesh.

  Attributes:
    model: the component.
    mesh: device mesh with axes ('data', 'fsdp', 'tensor').
    rules: logical axis rules.
    optimizers: one OptimizerConfig for all groups, or a dict group -> OptimizerConfig.
    total_steps: schedule length.
    compute_dtype: dtype the params are cast to for the forward/backward pass
      ('bfloat16' keeps f32 master params and f32 optimizer updates).
    grad_accum_steps: micro-batches per step (the batch is split along its first axis).
  """
  model: TrainableModel
  mesh: Mesh
  rules: partitioning.LogicalRules
  optimizers: OptimizerConfig | Mapping[str, OptimizerConfig]
  total_steps: int
  compute_dtype: str = 'float32'
  grad_accum_steps: int = 1

  def __post_init__(self):
    groups = tuple(self.model.param_groups)
    configs = (self.optimizers if isinstance(self.optimizers, Mapping)
               else {g: self.optimizers for g in groups})
    missing = set(groups) - set(configs)
    if missing:
      raise ValueError(f'no optimizer configured for parameter groups {sorted(missing)}')
    self.groups = groups
    self.txs = {g: configs[g].make(self.total_steps) for g in groups}
    self.schedules = {g: configs[g].schedule(self.total_steps) for g in groups}
    self._step_fn = None

  # -- state -------------------------------------------------------------------------------

  def _init_fn(self, rng: jax.Array, batch: Mapping[str, jax.Array]) -> TrainState:
    init_rng, state_rng = jax.random.split(rng)
    params, model_state = self.model.init(init_rng, batch)
    unboxed = nn.unbox(params)
    opt_states = {g: self.txs[g].init(unboxed[g]) for g in self.groups}
    return TrainState(step=jnp.zeros((), jnp.int32), params=params, opt_states=opt_states,
                      model_state=model_state, rng=state_rng,
                      nonfinite_streak=jnp.zeros((), jnp.int32),
                      nonfinite_worst=jnp.zeros((), jnp.int32),
                      nonfinite_total=jnp.zeros((), jnp.int32))

  def _opt_state_boxes(self, abstract: TrainState) -> TrainState:
    """Gives optimizer moments the logical axes of the params they mirror."""
    param_specs = nn.get_partition_spec(abstract.params)
    opt_specs = {}
    for g in self.groups:
      opt_specs[g] = optax.tree_map_params(
          self.txs[g], lambda _, spec: spec, nn.unbox(abstract.opt_states[g]),
          param_specs[g], transform_non_params=lambda _: jax.sharding.PartitionSpec())
    return opt_specs

  def state_shardings(self, rng: jax.Array, batch: Mapping[str, Any]) -> tuple[Any, Any]:
    """Returns (abstract unboxed TrainState, matching NamedShardings)."""
    abstract = jax.eval_shape(self._init_fn, rng, batch)
    specs = nn.get_partition_spec(abstract)
    specs = specs.replace(opt_states=self._opt_state_boxes(abstract))
    shardings = partitioning.logical_to_sharding(specs, self.mesh, self.rules)
    unboxed = nn.unbox(abstract)
    abstract_sharded = jax.tree.map(
        lambda a, s: jax.ShapeDtypeStruct(a.shape, a.dtype, sharding=s), unboxed, shardings)
    return abstract_sharded, shardings

  def init_state(self, rng: jax.Array, batch: Mapping[str, Any]) -> tuple[TrainState, Any]:
    """Initialises the state directly in its sharded layout."""
    _, shardings = self.state_shardings(rng, batch)
    with self.mesh, nn.logical_axis_rules(list(self.rules)):
      state = jax.jit(lambda r, b: nn.unbox(self._init_fn(r, b)),
                      out_shardings=shardings)(rng, batch)
    return state, shardings

  # -- step --------------------------------------------------------------------------------

  def _group_grads(self, group, params, model_state, batch, rng, step):
    """Loss, metrics, new model state and grads for one group, over micro-batches."""
    dtype = jnp.dtype(self.compute_dtype)

    def loss_fn(group_params, micro, micro_rng, mstate):
      all_params = dict(params)
      all_params[group] = group_params
      loss, (metrics, new_mstate) = self.model.loss(
          group, _cast_floats(all_params, dtype), mstate, micro, micro_rng, step)
      return loss.astype(jnp.float32), (metrics, new_mstate)

    grad_fn = jax.value_and_grad(loss_fn, has_aux=True)
    accum = self.grad_accum_steps
    if accum == 1:
      (loss, (metrics, new_mstate)), grads = grad_fn(params[group], batch, rng, model_state)
      return loss, metrics, new_mstate, grads

    def split(x):  # [B, ...] -> [accum, B // accum, ...]; row i*accum + a goes to micro-batch a.
      return x.reshape((x.shape[0] // accum, accum) + x.shape[1:]).swapaxes(0, 1)
    micro_batches = jax.tree.map(split, dict(batch))

    def body(carry, xs):
      grad_sum, loss_sum, metric_sum, mstate = carry
      micro, index = xs
      (loss, (metrics, mstate)), grads = grad_fn(
          params[group], micro, jax.random.fold_in(rng, index), mstate)
      add = lambda a, b: jax.tree.map(jnp.add, a, b)
      return (add(grad_sum, grads), loss_sum + loss, add(metric_sum, metrics), mstate), None

    zeros = jax.tree.map(jnp.zeros_like, params[group])
    metric_shapes = jax.eval_shape(
        lambda: grad_fn(params[group], jax.tree.map(lambda x: x[0], micro_batches), rng,
                        model_state)[0][1][0])
    metric_zeros = jax.tree.map(lambda s: jnp.zeros(s.shape, s.dtype), metric_shapes)
    (grads, loss, metrics, new_mstate), _ = jax.lax.scan(
        body, (zeros, jnp.zeros((), jnp.float32), metric_zeros, model_state),
        (micro_batches, jnp.arange(accum)))
    scale = lambda t: jax.tree.map(lambda x: x / accum, t)
    return loss / accum, scale(metrics), new_mstate, scale(grads)

  def train_step(self, state: TrainState, batch: Mapping[str, jax.Array]
                 ) -> tuple[TrainState, dict[str, jax.Array]]:
    """One update of every parameter group, in order; skipped if anything is non-finite."""
    rng, step_rng = jax.random.split(state.rng)
    params = dict(state.params)
    opt_states = dict(state.opt_states)
    model_state = state.model_state
    all_ok = jnp.array(True)
    out_metrics = {}
    for index, group in enumerate(self.groups):
      loss, metrics, new_mstate, grads = self._group_grads(
          group, params, model_state, batch, jax.random.fold_in(step_rng, index), state.step)
      grad_norm = optax.global_norm(grads)
      updates, new_opt = self.txs[group].update(grads, opt_states[group], params[group])
      new_params = optax.apply_updates(params[group], updates)
      ok = jnp.isfinite(loss) & jnp.isfinite(grad_norm)
      params[group] = _select(ok, new_params, params[group])
      opt_states[group] = _select(ok, new_opt, opt_states[group])
      model_state = _select(ok, new_mstate, model_state)
      all_ok &= ok
      prefix = '' if len(self.groups) == 1 else f'{group}/'
      out_metrics.update({f'{prefix}loss': loss, f'{prefix}grad_norm': grad_norm,
                          f'{prefix}learning_rate': self.schedules[group](state.step)})
      out_metrics.update(metrics)
    streak = jnp.where(all_ok, 0, state.nonfinite_streak + 1)
    out_metrics['nonfinite_streak'] = streak
    new_state = state.replace(
        step=state.step + 1, params=params, opt_states=opt_states, model_state=model_state,
        rng=rng, nonfinite_streak=streak,
        nonfinite_worst=jnp.maximum(state.nonfinite_worst, streak),
        nonfinite_total=state.nonfinite_total + (~all_ok).astype(jnp.int32))
    return new_state, out_metrics

  def compile_step(self, shardings: Any, batch_shardings: Any) -> Callable:
    """The jitted step with explicit in/out shardings and donated state."""

    def step(state, batch):
      with nn.logical_axis_rules(list(self.rules)):
        return self.train_step(state, batch)
    return jax.jit(step, in_shardings=(shardings, batch_shardings),
                   out_shardings=(shardings, None), donate_argnums=(0,))


class _SigtermFlag:
  """Turns SIGTERM into a flag the loop checks between steps (main thread only)."""

  def __init__(self):
    self.raised = False
    self._previous = None

  def __enter__(self):
    if threading.current_thread() is threading.main_thread():
      self._previous = signal.signal(signal.SIGTERM, self._handle)
    return self

  def _handle(self, signum, frame):  # pylint: disable=unused-argument
    log.warning('SIGTERM received: saving a checkpoint after this step, then exiting')
    self.raised = True

  def __exit__(self, *exc):
    if self._previous is not None:
      signal.signal(signal.SIGTERM, self._previous)


def _any_host(flag: bool) -> bool:
  if jax.process_count() == 1:
    return flag
  from jax.experimental import multihost_utils  # pylint: disable=g-import-not-at-top
  return bool(np.any(multihost_utils.process_allgather(np.array([flag]))))


@dataclasses.dataclass
class FitResult:
  """What `fit` did: the final state, the last step reached and why it stopped."""
  state: TrainState
  step: int
  stopped_by: str  # 'done' | 'preempted'
  last_metrics: dict[str, float]


def fit(trainer: Trainer, *, input_fn: InputFn, model_dir: str, train_steps: int,
        batch_size: int, seed: int = 0, checkpoint_every: int = 1000, keep_checkpoints: int = 3,
        log_every: int = 50, max_nonfinite_steps: int = 10, async_checkpoints: bool = True,
        meta: Mapping[str, Any] | None = None) -> FitResult:
  """Trains until `train_steps`, resuming from the newest checkpoint in `model_dir`.

  Args:
    trainer: model, mesh, optimizers.
    input_fn: `input_fn(batch_size=, seed=, start_index=, shard_index=, num_shards=)`
      yielding host-local batches; `start_index` counts batches already consumed.
    model_dir: run folder (checkpoints, TensorBoard, metrics.jsonl).
    train_steps: total optimizer steps.
    batch_size: global batch size (split over hosts, then over the mesh's batch axes).
    seed: seeds parameters, the step RNG and the input order.
    checkpoint_every: steps between checkpoints (and a final one at the end).
    keep_checkpoints: how many to keep.
    log_every: steps between metric writes / log lines.
    max_nonfinite_steps: stop with NonFiniteError after this many skipped steps in a row.
    async_checkpoints: save in the background.
    meta: extra JSON stored with each checkpoint.
  """
  num_hosts, host = jax.process_count(), jax.process_index()
  if batch_size % num_hosts or batch_size % trainer.grad_accum_steps:
    raise ValueError(f'BATCH_SIZE {batch_size} must divide by the {num_hosts} hosts and '
                     f'by grad_accum_steps={trainer.grad_accum_steps}')
  host_batch = batch_size // num_hosts
  checkpointer = ckpt_lib.Checkpointer(model_dir, keep=keep_checkpoints,
                                       async_save=async_checkpoints)
  writer = metrics_lib.MetricWriter(model_dir, enabled=metrics_lib.is_primary())

  peek = next(input_fn(batch_size=host_batch, seed=seed, start_index=0, shard_index=host,
                       num_shards=num_hosts))
  example = partitioning.shard_batch(peek, trainer.mesh, trainer.rules)
  batch_shardings = {k: v.sharding for k, v in example.items()}
  rng = jax.random.PRNGKey(seed)
  abstract, shardings = trainer.state_shardings(rng, example)
  restored = checkpointer.restore_latest(abstract)
  if restored is None:
    state, _ = trainer.init_state(rng, example)
    start, position = 0, 0
  else:
    start, state, saved_meta = restored
    position = int(saved_meta.get('input_position', start))
    log.info('resumed from %s at step %d (input position %d)', checkpointer.directory, start,
             position)
  step_fn = trainer.compile_step(shardings, batch_shardings)
  batches = input_fn(batch_size=host_batch, seed=seed, start_index=position, shard_index=host,
                     num_shards=num_hosts)
  progress = metrics_lib.ProgressLine(total_steps=train_steps, start_step=start,
                                      global_batch=batch_size)
  log.info('training %s from step %d to %d, global batch %d, mesh %s', type(trainer.model).__name__,
           start, train_steps, batch_size, dict(trainer.mesh.shape))

  def save(step, force=False):
    if step != checkpointer.latest_step():
      checkpointer.save(step, state, {'step': step, 'input_position': step, **(meta or {})},
                        force=force)

  step, stopped_by, last = start, 'done', {}
  with _SigtermFlag() as sigterm:
    while step < train_steps:
      batch = partitioning.shard_batch(next(batches), trainer.mesh, trainer.rules)
      state, step_metrics = step_fn(state, batch)
      step += 1
      # Reading device values syncs host and device, so the guard looks only every few steps;
      # skipped steps leave the parameters untouched, so looking late loses nothing.
      if metrics_lib.itstime(step, min(log_every, max_nonfinite_steps), train_steps):
        worst = int(state.nonfinite_worst)
        if worst >= max_nonfinite_steps:
          checkpointer.close()
          raise NonFiniteError(f'{worst} consecutive steps had a non-finite loss or gradient '
                               f'(seen by step {step}); updates were skipped. Lower the '
                               'learning rate or check the input data.')
      if metrics_lib.itstime(step, log_every, train_steps, first=True):
        last = {k: float(v) for k, v in jax.device_get(step_metrics).items()}
        text, perf = progress.line(step, last)
        log.info(text)
        writer.write_scalars(step, {**last, **perf, 'nonfinite_total': int(state.nonfinite_total)})
      if metrics_lib.itstime(step, checkpoint_every, train_steps):
        save(step)
      # Hosts agree on preemption through a collective, so multi-host runs ask every 10 steps.
      if (step < train_steps and (jax.process_count() == 1 or step % 10 == 0)
          and _any_host(sigterm.raised)):
        save(step, force=True)
        stopped_by = 'preempted'
        break
  checkpointer.wait()
  checkpointer.close()
  writer.close()
  log.info('%s at step %d; checkpoints in %s', 'finished' if stopped_by == 'done' else
           'preempted', step, checkpointer.directory)
  return FitResult(state=state, step=step, stopped_by=stopped_by, last_metrics=last)
