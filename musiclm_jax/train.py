r"""Gin entry point for training any component (t5x style).

  python -m musiclm_jax.train --gin_file=gin/runs/toy.gin \
      --gin.MODEL_DIR="'/tmp/run'" --gin.TRAIN_STEPS=100

Run files bind `train` below; `--gin.X=V` overrides any binding or macro; `--gin_search_paths`
adds folders that `--gin_file` and `include` are resolved against (default: the current
folder and the repository root). Exit code 2 means bad configuration.
"""

import argparse
import importlib
from collections.abc import Mapping, Sequence
import importlib.util  # noqa: F401  (gin 0.5 uses importlib.util without importing it)
import logging
import os
import sys
from typing import Any

from etils import epath
import gin
import jax

from musiclm_jax import partitioning
from musiclm_jax import trainer as trainer_lib
from musiclm_jax.optim import OptimizerConfig

log = logging.getLogger('musiclm_jax')
REPO_ROOT = epath.Path(__file__).parent.parent


class ConfigError(ValueError):
  """A configuration problem reported as one line with exit code 2."""


def check_writable(model_dir: str) -> None:
  """Fails early, before any compile, if `model_dir` cannot be created or written."""
  path = epath.Path(model_dir)
  probe = path / f'.write_probe_{os.getpid()}'
  try:
    path.mkdir(parents=True, exist_ok=True)
    probe.write_text('ok')
    probe.unlink()
  except Exception as e:  # pylint: disable=broad-except
    raise ConfigError(f'MODEL_DIR {model_dir!r} is not writable: {type(e).__name__}: {e}') from e


def train(*, model: Any, input_fn: Any, model_dir: str, train_steps: int, batch_size: int,
          seed: int = 0, mesh_shape: Mapping[str, int] | None = None,
          logical_axis_rules: partitioning.LogicalRules = partitioning.DEFAULT_RULES,
          optimizer: OptimizerConfig | Mapping[str, OptimizerConfig] = OptimizerConfig(),
          compute_dtype: str = 'float32', grad_accum_steps: int = 1,
          checkpoint_every: int = 1000, keep_checkpoints: int = 3, log_every: int = 50,
          max_nonfinite_steps: int = 10, async_checkpoints: bool = True
          ) -> trainer_lib.FitResult:
  """Trains `model` on batches from `input_fn`; see `trainer.fit` for the arguments."""
  if not model_dir:
    raise ConfigError('MODEL_DIR is empty: set --gin.MODEL_DIR="\'/path/to/run\'"')
  check_writable(model_dir)
  if jax.process_index() == 0 and gin.config_str():
    (epath.Path(model_dir) / 'config.gin').write_text(gin.config_str())
  try:
    mesh = partitioning.make_mesh(mesh_shape or {'data': -1})
  except partitioning.MeshError as e:
    raise ConfigError(str(e)) from e
  trainer = trainer_lib.Trainer(model=model, mesh=mesh, rules=logical_axis_rules,
                                optimizers=optimizer, total_steps=train_steps,
                                compute_dtype=compute_dtype, grad_accum_steps=grad_accum_steps)
  return trainer_lib.fit(trainer, input_fn=input_fn, model_dir=model_dir,
                         train_steps=train_steps, batch_size=batch_size, seed=seed,
                         checkpoint_every=checkpoint_every, keep_checkpoints=keep_checkpoints,
                         log_every=log_every, max_nonfinite_steps=max_nonfinite_steps,
                         async_checkpoints=async_checkpoints)


def _search_paths(extra: Sequence[str]) -> list[str]:
  paths = [p for p in extra if p] + [os.getcwd(), str(REPO_ROOT)]
  return list(dict.fromkeys(os.path.abspath(p) for p in paths))


def _resolve(gin_file: str, search_paths: Sequence[str]) -> str:
  if os.path.isabs(gin_file):
    if os.path.exists(gin_file):
      return gin_file
    raise ConfigError(f'gin file {gin_file} does not exist')
  for base in search_paths:
    candidate = os.path.join(base, gin_file)
    if os.path.exists(candidate):
      return candidate
  raise ConfigError(f'gin file {gin_file!r} not found; search paths tried: {list(search_paths)}')


def parse_gin(gin_files: Sequence[str], bindings: Sequence[str],
              search_paths: Sequence[str] = ()) -> None:
  """Parses run files and `--gin.X=V` overrides; errors become ConfigError with the paths."""
  paths = _search_paths(search_paths)
  for p in paths:
    gin.add_config_file_search_path(p)
  files = [_resolve(f, paths) for f in gin_files]
  gin_logger = logging.getLogger('absl')
  level = gin_logger.level
  gin_logger.setLevel(logging.CRITICAL)  # gin logs every search-path miss of an include.
  try:
    gin.parse_config_files_and_bindings(files, bindings, finalize_config=False)
  except (ValueError, KeyError, IOError, TypeError, SyntaxError, AttributeError) as e:
    raise ConfigError(f'gin error: {e} (search paths tried: {paths})') from e
  finally:
    gin_logger.setLevel(level)


def model_from_run(model_dir: str, gin_files: Sequence[str] | None, cls: type) -> Any:
  """Rebuilds a run's `MODEL` macro: from `gin_files` if given, else MODEL_DIR/config.gin.

  The gin config is cleared before and after, so the caller's bindings never leak in or out.

  Args:
    model_dir: training run folder (its config.gin is the one `train` wrote).
    gin_files: model/run gin files to parse instead, when config.gin cannot be used.
    cls: the model class MODEL must be an instance of (e.g. `MelodyModel`).

  Returns:
    The MODEL object.

  Raises:
    FileNotFoundError: no `gin_files` and the run has no config.gin.
    ValueError: MODEL is not a `cls`.
  """
  gin.clear_config()
  try:
    if gin_files:
      parse_gin(list(gin_files), [])
    else:
      path = os.path.join(model_dir, 'config.gin')
      if not os.path.exists(path):
        raise FileNotFoundError(f'{path}: the run has no config.gin; pass --gin_file')
      with open(path) as f:
        gin.parse_config(f.read())
    model = gin.query_parameter('%MODEL').scoped_configurable_fn()
  finally:
    gin.clear_config()
  if not isinstance(model, cls):
    raise ValueError(f'{model_dir}: MODEL is a {type(model).__name__}, not a {cls.__name__}')
  return model


def _split_argv(argv: Sequence[str]) -> tuple[list[str], list[str]]:
  """Separates `--gin.NAME=VALUE` overrides from the other flags."""
  bindings, rest = [], []
  for arg in argv:
    if arg.startswith('--gin.'):
      name, sep, value = arg[len('--gin.'):].partition('=')
      if not sep:
        raise ConfigError(f'{arg}: expected --gin.NAME=VALUE')
      bindings.append(f'{name} = {value}')
    else:
      rest.append(arg)
  return bindings, rest


def maybe_initialize_distributed(args: argparse.Namespace) -> None:
  """Starts jax.distributed for multi-host runs (flags, or auto-detected on TPU pods)."""
  hosts = [h for h in os.environ.get('TPU_WORKER_HOSTNAMES', '').split(',') if h]
  explicit = args.coordinator_address is not None
  if args.distributed == 'off' or (args.distributed == 'auto' and not explicit and len(hosts) < 2):
    return
  if explicit:
    # CPU multi-process runs (tests, benchmarks/multihost_cpu.sh) need cross-process
    # collectives; the setting only affects the CPU client.
    jax.config.update('jax_cpu_collectives_implementation', 'gloo')
    jax.distributed.initialize(coordinator_address=args.coordinator_address,
                               num_processes=args.num_processes, process_id=args.process_id)
  else:
    jax.distributed.initialize()
  log.info('jax.distributed: process %d of %d, %d global devices', jax.process_index(),
           jax.process_count(), jax.device_count())


def build_parser() -> argparse.ArgumentParser:
  p = argparse.ArgumentParser(prog='musiclm train', description=__doc__,
                              formatter_class=argparse.RawDescriptionHelpFormatter)
  p.add_argument('--gin_file', action='append', default=[], required=True,
                 help='run file(s), e.g. gin/runs/codec_tiny.gin (repeatable)')
  p.add_argument('--gin_search_paths', default='',
                 help='comma-separated folders for --gin_file and include')
  p.add_argument('--distributed', choices=('auto', 'on', 'off'), default='auto',
                 help='jax.distributed.initialize(): auto = on TPU pods or with --coordinator_address')
  p.add_argument('--coordinator_address', default=None)
  p.add_argument('--num_processes', type=int, default=None)
  p.add_argument('--process_id', type=int, default=None)
  return p


def main(argv: Sequence[str] | None = None) -> int:
  logging.basicConfig(level=logging.INFO, format='%(asctime)s %(levelname)s %(message)s',
                      stream=sys.stdout, force=True)
  for noisy in ('absl', 'jax._src', 'orbax'):
    logging.getLogger(noisy).setLevel(logging.WARNING)
  argv = list(sys.argv[1:] if argv is None else argv)
  try:
    bindings, rest = _split_argv(argv)
    args = build_parser().parse_args(rest)
    maybe_initialize_distributed(args)
    parse_gin(args.gin_file, bindings, args.gin_search_paths.split(','))
    # `python -m` runs this file as __main__; gin binds the importable module's `train`.
    run = gin.get_configurable(importlib.import_module('musiclm_jax.train').train)
    result = run()
  except ConfigError as e:
    print(f'error: {e}', file=sys.stderr)
    return 2
  print(f'{result.stopped_by} at step {result.step}')
  return 0


if __name__ == '__main__':
  sys.exit(main())
