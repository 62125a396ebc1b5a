"""Metric output for training runs: TensorBoard event files, a JSONL file and a log line.

TensorBoard files are written with tensorboardX because clu's SummaryWriter imports
TensorFlow, which the library must not need (the GPU image has none). Only the primary host
writes files; every host logs.
"""

import json
import logging
import math
import os
import time
from typing import Any, Mapping

from etils import epath
import jax
import numpy as np

log = logging.getLogger('musiclm_jax')


def itstime(step: int, every: int, total: int | None = None, *, first: bool = False) -> bool:
  """True when `step` (1-based count of finished steps) hits an interval or the last step."""
  return ((every > 0 and step % every == 0) or (total is not None and step == total)
          or (first and step == 1))


def format_seconds(seconds: float) -> str:
  if not math.isfinite(seconds):
    return '?'
  seconds = int(seconds)
  h, rem = divmod(seconds, 3600)
  m, s = divmod(rem, 60)
  return f'{h}:{m:02d}:{s:02d}' if h else f'{m}:{s:02d}'


class MetricWriter:
  """Writes scalars to `model_dir/tb` (TensorBoard) and `model_dir/metrics.jsonl`.

  Args:
    model_dir: the run folder.
    enabled: write files (only the primary host should).
  """

  def __init__(self, model_dir: str, *, enabled: bool = True):
    self.enabled = enabled
    self._tb = None
    self._jsonl = None
    if enabled:
      from tensorboardX import SummaryWriter  # pylint: disable=g-import-not-at-top
      self._tb = SummaryWriter(str(epath.Path(model_dir) / 'tb'), flush_secs=10)
      self._jsonl_path = epath.Path(model_dir) / 'metrics.jsonl'
      self._local = '://' not in str(model_dir)
      self._lines: list[str] = []

  def write_scalars(self, step: int, scalars: Mapping[str, Any]) -> None:
    if not self.enabled:
      return
    clean = {k: float(np.asarray(v)) for k, v in scalars.items()}
    for key, value in clean.items():
      self._tb.add_scalar(key, value, step)
    record = {'step': int(step), 'time': time.time(), **clean}
    line = json.dumps(record, allow_nan=True) + '\n'
    if self._local:
      with open(os.fspath(self._jsonl_path), 'a') as f:
        f.write(line)
    else:  # Object stores cannot append: keep the lines and rewrite the file on flush.
      self._lines.append(line)

  def flush(self) -> None:
    if self._tb is not None:
      self._tb.flush()
    if self.enabled and not self._local and self._lines:
      self._jsonl_path.write_text(''.join(self._lines))

  def close(self) -> None:
    self.flush()
    if self._tb is not None:
      self._tb.close()
      self._tb = None


class ProgressLine:
  """One readable log line per interval: step, loss, steps/s, examples/s, ETA."""

  def __init__(self, *, total_steps: int, start_step: int, global_batch: int):
    self.total_steps = total_steps
    self.global_batch = global_batch
    self._last_step = start_step
    self._last_time = time.perf_counter()

  def line(self, step: int, scalars: Mapping[str, float]) -> tuple[str, dict[str, float]]:
    now = time.perf_counter()
    steps = max(step - self._last_step, 1)
    rate = steps / max(now - self._last_time, 1e-9)
    self._last_step, self._last_time = step, now
    eta = (self.total_steps - step) / rate if rate > 0 else float('inf')
    shown = ' '.join(f'{k}={v:.4g}' for k, v in sorted(scalars.items())
                     if k.endswith('loss') or k == 'loss')
    text = (f'step {step}/{self.total_steps} {shown} | {rate:.2f} steps/s '
            f'{rate * self.global_batch:.1f} examples/s | ETA {format_seconds(eta)}')
    return text, {'perf/steps_per_sec': rate, 'perf/examples_per_sec': rate * self.global_batch}


def is_primary() -> bool:
  return jax.process_index() == 0
