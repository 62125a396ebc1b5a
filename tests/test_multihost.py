"""Two processes x 4 CPU devices train a tiny coarse stage like one process x 8 devices.

Each worker is the real CLI (`python -m musiclm_jax.train --coordinator_address=...`) with
gloo CPU collectives; the reference run happens in this process on its 8 fake devices.
"""

import json
import os
import socket
import subprocess
import sys

import jax
import numpy as np

from musiclm_jax import checkpoints, train

REPO = os.path.dirname(os.path.dirname(os.path.abspath(__file__)))
STEPS = 6
COMMON = ['--gin_file=gin/runs/coarse_tiny_synthetic.gin', f'--gin.TRAIN_STEPS={STEPS}',
          '--gin.CHECKPOINT_EVERY=3', '--gin.LOG_EVERY=1', '--gin.BATCH_SIZE=16',
          "--gin.MESH_SHAPE={'data': 2, 'fsdp': 4, 'tensor': 1}"]


def _free_port() -> int:
  with socket.socket() as s:
    s.bind(('127.0.0.1', 0))
    return s.getsockname()[1]


def _losses(model_dir):
  lines = (model_dir / 'metrics.jsonl').read_text().splitlines()
  return {r['step']: r['loss'] for r in map(json.loads, lines)}


def test_two_processes_equal_one_process(tmp_path):
  multi_dir, single_dir = tmp_path / 'multi', tmp_path / 'single'
  port = _free_port()
  env = {**os.environ, 'XLA_FLAGS': '--xla_force_host_platform_device_count=4',
         'JAX_PLATFORMS': 'cpu'}
  procs = [subprocess.Popen(
      [sys.executable, '-m', 'musiclm_jax.train', *COMMON, f"--gin.MODEL_DIR='{multi_dir}'",
       f'--coordinator_address=127.0.0.1:{port}', '--num_processes=2', f'--process_id={i}'],
      cwd=REPO, env=env, stdout=subprocess.PIPE, stderr=subprocess.STDOUT, text=True)
      for i in range(2)]
  outputs = [p.communicate(timeout=600)[0] for p in procs]
  for i, (p, out) in enumerate(zip(procs, outputs)):
    assert p.returncode == 0, f'process {i} failed:\n{out[-3000:]}'
  assert '8 global devices' in outputs[0]

  assert train.main([*COMMON, f"--gin.MODEL_DIR='{single_dir}'"]) == 0
  multi_losses, single_losses = _losses(multi_dir), _losses(single_dir)
  assert sorted(multi_losses) == list(range(1, STEPS + 1))
  np.testing.assert_allclose([multi_losses[s] for s in sorted(multi_losses)],
                             [single_losses[s] for s in sorted(single_losses)], rtol=1e-5)
  assert multi_losses[STEPS] < multi_losses[1]
  multi_params, _, meta = checkpoints.load_params(multi_dir)
  single_params, _, _ = checkpoints.load_params(single_dir)
  assert meta['step'] == STEPS
  jax.tree.map(lambda a, b: np.testing.assert_allclose(a, b, rtol=1e-5, atol=1e-6),
               multi_params, single_params)

  # The 2-process checkpoint restores in a 1-process run, which continues from it.
  more = [*COMMON[:1], f'--gin.TRAIN_STEPS={STEPS + 2}', *COMMON[2:]]
  assert train.main([*more, f"--gin.MODEL_DIR='{multi_dir}'"]) == 0
  assert train.main([*more, f"--gin.MODEL_DIR='{single_dir}'"]) == 0
  a, _, meta = checkpoints.load_params(multi_dir)
  b, _, _ = checkpoints.load_params(single_dir)
  assert meta['step'] == STEPS + 2
  jax.tree.map(lambda x, y: np.testing.assert_allclose(x, y, rtol=1e-5, atol=1e-6), a, b)
