"""The gin entry point: a real run from a run file, overrides, search paths and bad configs."""

import json
import os
import subprocess
import sys

import pytest

from musiclm_jax import cli, train

REPO = os.path.dirname(os.path.dirname(os.path.abspath(__file__)))
FAST = ['--gin.TRAIN_STEPS=6', '--gin.CHECKPOINT_EVERY=3', '--gin.LOG_EVERY=3']


def test_toy_run_writes_config_metrics_and_checkpoints(tmp_path, capsys):
  model_dir = tmp_path / 'run'
  rc = train.main(['--gin_file=gin/runs/toy.gin', f"--gin.MODEL_DIR='{model_dir}'", *FAST])
  assert rc == 0
  assert 'done at step 6' in capsys.readouterr().out
  config = (model_dir / 'config.gin').read_text()
  assert 'TRAIN_STEPS = 6' in config and 'toy_model.ToyModel' in config
  lines = [json.loads(l) for l in (model_dir / 'metrics.jsonl').read_text().splitlines()]
  assert [l['step'] for l in lines] == [1, 3, 6]
  assert {'loss', 'grad_norm', 'learning_rate', 'perf/steps_per_sec'} <= set(lines[-1])
  assert sorted(os.listdir(model_dir / 'checkpoints')) == ['3', '6']


def test_console_script_dispatches_train(tmp_path):
  rc = cli.main(['train', '--gin_file=gin/runs/toy.gin', f"--gin.MODEL_DIR='{tmp_path}'",
                 '--gin.TRAIN_STEPS=2', '--gin.LOG_EVERY=1'])
  assert rc == 0 and (tmp_path / 'checkpoints' / '2').exists()


def test_gin_search_paths(tmp_path, monkeypatch):
  runs = tmp_path / 'my_runs'
  runs.mkdir()
  (runs / 'mine.gin').write_text("include 'gin/runs/toy.gin'\nTRAIN_STEPS = 2\n")
  monkeypatch.chdir(tmp_path)
  rc = train.main(['--gin_file=mine.gin', f'--gin_search_paths={runs}',
                   f"--gin.MODEL_DIR='{tmp_path / 'run'}'"])
  assert rc == 0 and (tmp_path / 'run' / 'checkpoints' / '2').exists()


@pytest.mark.parametrize('args, message', [
    (['--gin_file=gin/runs/nope.gin'], "gin file 'gin/runs/nope.gin' not found; search paths"),
    (['--gin_file=gin/runs/toy.gin', '--gin.toy_model.ToyModel.bogus=1'], 'bogus'),
    (['--gin_file=gin/runs/toy.gin', "--gin.MESH_SHAPE={'data': 3}"],
     "needs 3 devices but 8 are available"),
    (['--gin_file=gin/runs/toy.gin', "--gin.MESH_SHAPE={'data': -1, 'tensor': 3}"],
     'does not divide the 8 available devices'),
])
def test_bad_configuration_exits_2(tmp_path, capsys, args, message):
  rc = train.main(args + [f"--gin.MODEL_DIR='{tmp_path}'"])
  err = capsys.readouterr().err
  assert rc == 2, err
  assert message in err and err.startswith('error: ')
  if 'search paths' in message:
    assert REPO in err


def test_unwritable_model_dir_fails_before_compiling(tmp_path, capsys):
  blocker = tmp_path / 'file'
  blocker.write_text('x')
  rc = train.main(['--gin_file=gin/runs/toy.gin', f"--gin.MODEL_DIR='{blocker}/run'"])
  err = capsys.readouterr().err
  assert rc == 2 and 'is not writable' in err and str(blocker) in err


def test_python_dash_m_entry_point(tmp_path):
  out = subprocess.run(
      [sys.executable, '-m', 'musiclm_jax.train', '--gin_file=gin/runs/toy.gin',
       f"--gin.MODEL_DIR='{tmp_path}'", '--gin.TRAIN_STEPS=2', '--gin.LOG_EVERY=1'],
      cwd=REPO, capture_output=True, text=True, timeout=300,
      env={**os.environ, 'XLA_FLAGS': ''})
  assert out.returncode == 0, out.stderr[-2000:]
  assert 'step 2/2 loss=' in out.stdout and 'done at step 2' in out.stdout
