"""Orbax behind one small interface: save, restore the newest readable step, read params.

Layout: `MODEL_DIR/checkpoints/<step>/{state,meta}`. `state` is the full train state
(params, optimizer states, model state, RNG); `meta` is JSON (input position, gin config).
Paths go through etils.epath, so `gs://bucket/run` works like a local folder.
"""

from collections.abc import Sequence
import logging
import os
from typing import Any

from etils import epath
import jax
import orbax.checkpoint as ocp

log = logging.getLogger(__name__)


class CheckpointError(RuntimeError):
  """No readable checkpoint where one was required."""


class Checkpointer:
  """Keeps the last `keep` checkpoints of a run; saves asynchronously.

  Args:
    model_dir: the run folder; checkpoints go to `model_dir/checkpoints`.
    keep: how many recent checkpoints to keep.
    async_save: write in a background thread (the train loop continues).
  """

  def __init__(self, model_dir: str | epath.PathLike, *, keep: int = 3, async_save: bool = True):
    self.directory = epath.Path(model_dir) / 'checkpoints'
    options = ocp.CheckpointManagerOptions(
        max_to_keep=keep, enable_async_checkpointing=async_save, create=True)
    self._manager = ocp.CheckpointManager(self.directory, options=options,
                                          item_names=('state', 'meta'))

  def all_steps(self) -> Sequence[int]:
    return sorted(self._manager.all_steps())

  def latest_step(self) -> int | None:
    return self._manager.latest_step()

  def save(self, step: int, state: Any, meta: dict[str, Any], *, force: bool = False) -> bool:
    """Starts saving `state` and `meta` at `step`; returns whether a save was started."""
    args = ocp.args.Composite(state=ocp.args.StandardSave(state), meta=ocp.args.JsonSave(meta))
    return self._manager.save(step, args=args, force=force)

  def wait(self) -> None:
    """Blocks until pending asynchronous saves are on disk."""
    self._manager.wait_until_finished()

  def restore_latest(self, abstract_state: Any) -> tuple[int, Any, dict[str, Any]] | None:
    """Restores the newest readable checkpoint into the layout of `abstract_state`.

    A checkpoint that fails to read (e.g. truncated by a crash) is skipped with a warning
    and the previous one is tried.

    Args:
      abstract_state: pytree of `jax.ShapeDtypeStruct` with shardings (the target layout).

    Returns:
      (step, state, meta), or None when the run has no checkpoint yet.
    """
    steps = self.all_steps()
    for step in reversed(steps):
      try:
        restored = self._manager.restore(step, args=ocp.args.Composite(
            state=ocp.args.StandardRestore(abstract_state), meta=ocp.args.JsonRestore()))
      except Exception as e:  # pylint: disable=broad-except
        log.warning('checkpoint %s/%d is unreadable (%s: %s); trying the previous one',
                    self.directory, step, type(e).__name__, str(e).splitlines()[0][:200])
        continue
      return step, restored['state'], dict(restored['meta'])
    if steps:
      raise CheckpointError(f'{self.directory}: none of the checkpoints {steps} could be read')
    return None

  def close(self) -> None:
    self._manager.wait_until_finished()
    self._manager.close()


def load_params(model_dir: str | epath.PathLike, *, step: int | None = None
                ) -> tuple[dict[str, Any], Any, dict[str, Any]]:
  """Reads params and model state of a finished run without the trainer or its model.

  Args:
    model_dir: the run folder (holding `checkpoints/`).
    step: a specific step; default the newest readable one.

  Returns:
    (params by group, model_state, meta) as host numpy arrays.
  """
  model_dir = str(model_dir)
  if '://' not in model_dir:  # orbax refuses relative local paths
    model_dir = os.path.abspath(os.path.expanduser(model_dir))
  directory = epath.Path(model_dir) / 'checkpoints'
  if not directory.exists():
    raise CheckpointError(f'{directory}: no checkpoints folder (is {model_dir} a training run?)')
  handlers = {'state': ocp.StandardCheckpointHandler(), 'meta': ocp.JsonCheckpointHandler()}
  with ocp.CheckpointManager(directory, item_handlers=handlers,
                             options=ocp.CheckpointManagerOptions(create=False)) as manager:
    steps = [step] if step is not None else sorted(manager.all_steps(), reverse=True)
    errors = []
    one_device = jax.sharding.SingleDeviceSharding(jax.local_devices()[0])
    for s in steps:
      try:
        # Restore every array whole onto one local device, whatever topology wrote it.
        target = jax.tree.map(lambda m: jax.ShapeDtypeStruct(m.shape, m.dtype, sharding=one_device),
                              manager.item_metadata(s)['state'])
        restored = manager.restore(s, args=ocp.args.Composite(
            state=ocp.args.StandardRestore(target), meta=ocp.args.JsonRestore()))
      except Exception as e:  # pylint: disable=broad-except
        errors.append(f'step {s}: {type(e).__name__}: {str(e).splitlines()[0][:200]}')
        log.warning('%s/%s unreadable, trying an older step', directory, s)
        continue
      state = jax.device_get(restored['state'])
      return state['params'], state.get('model_state', {}), dict(restored['meta'])
  raise CheckpointError(f'{directory}: no readable checkpoint ({"; ".join(errors) or "empty"})')
