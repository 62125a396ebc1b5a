"""Long generation by sliding windows: fixed window and cache sizes, whatever the duration.

Every stage generates its target field window by window (`plan_windows`). A window holds
`window_frames` target frames: the first `prompt_frames` are copied from the end of the previous
window (the prefix it continues), the rest are generated. The window sizes are the stage layouts'
target lengths, so tiny models use tiny windows and paper models the paper's:

  semantic: 30 s window (750 tokens at 25 Hz), keep the last 15 s, generate the next 15 s;
  coarse:   10 s window (500 frames x 4 levels at 50 Hz) conditioned on the matching 10 s of
            semantic tokens, keep 5 s of coarse tokens, generate 5 s;
  fine:     3 s windows (150 frames x 8 levels) conditioned on their coarse frames; by default
            they do not overlap (`fine_keep` 0: every fine window sees all of its coarse frames).

Story mode: each window's MuLan tokens are those of the segment active at the middle of the
span it generates (`conditioning_time`). Melody: a stage whose layout conditions on melody
tokens gets, for each window, the melody windows (4 s every 3 s) that start at the window's
first frame (`Pipeline.melody_at`), as the training crops pair them. A window that would run past the requested length
generates only up to it (the decode loop takes its length as a traced scalar), so neither the
compiled program nor the KV cache depends on the duration.
"""

import dataclasses
import math
from collections.abc import Callable, Mapping
from typing import Any

import jax
import numpy as np

from musiclm_jax.sampling import decode as decode_lib

MAX_DURATION_SECONDS = 300.0  # 5 minutes


@dataclasses.dataclass(frozen=True)
class Window:
  """One window of a stage's target stream, in target frames.

  Attributes:
    index: 0-based window number.
    start: first frame covered by the window (its prompt, then its new frames).
    prompt_frames: frames copied from the previous window (the continued prefix).
    new_frames: frames generated here.
  """
  index: int
  start: int
  prompt_frames: int
  new_frames: int

  @property
  def new_start(self) -> int:
    return self.start + self.prompt_frames

  @property
  def end(self) -> int:
    return self.new_start + self.new_frames


def keep_frames(window_frames: int, fraction: float, multiple: int = 1) -> int:
  """Frames of prefix to keep so the hop (window - keep) is a positive multiple of `multiple`."""
  if not 0.0 <= fraction < 1.0:
    raise ValueError(f'keep fraction must be in [0, 1), got {fraction}')
  hop = window_frames - int(round(window_frames * fraction))
  hop = max(multiple, (hop // multiple) * multiple)
  if hop > window_frames:
    raise ValueError(f'window of {window_frames} frames cannot hop by a multiple of {multiple}')
  return window_frames - hop


def plan_windows(total_frames: int, window_frames: int, keep: int) -> list[Window]:
  """Windows covering [0, total_frames): the first generates up to a whole window, the others
  keep `keep` frames of the previous one and generate up to window - keep more."""
  if total_frames < 1:
    raise ValueError(f'need at least one frame, got {total_frames}')
  if not 0 <= keep < window_frames:
    raise ValueError(f'keep={keep} must be in [0, window_frames={window_frames})')
  windows = [Window(0, 0, 0, min(window_frames, total_frames))]
  while windows[-1].end < total_frames:
    last = windows[-1]
    prompt = min(keep, last.end)
    new = min(window_frames - prompt, total_frames - last.end)
    windows.append(Window(last.index + 1, last.end - prompt, prompt, new))
  return windows


def conditioning_time(window: Window, frame_rate: float) -> float:
  """Seconds at the middle of the span a window generates (story segments switch on it)."""
  return (window.new_start + window.new_frames / 2.0) / frame_rate


def slice_frames(codes: np.ndarray, start: int, length: int) -> np.ndarray:
  """codes [batch, T, levels] -> [batch, length, levels] from `start`, -1 beyond T."""
  batch, total, levels = codes.shape
  out = np.full((batch, length, levels), -1, np.int32)
  stop = min(start + length, total)
  if stop > start:
    out[:, :stop - start] = codes[:, start:stop]
  return out


def stage_keys(keys: np.ndarray, stage_index: int) -> np.ndarray:
  """Per-row keys [batch, 2] of one stage from per-row base keys [batch, 2] (the decoder
  folds in the window index)."""
  fold = jax.vmap(jax.random.fold_in, in_axes=(0, None))
  return np.asarray(fold(np.asarray(keys, np.uint32), stage_index))


def run_stage(decoder: decode_lib.StageDecoder, *, total_frames: int, keep: int,
              conditioning: Callable[[Window], Mapping[str, np.ndarray]],
              keys: np.ndarray, stage_index: int,
              on_window: Callable[[Window], Any] | None = None) -> np.ndarray:
  """Generates a stage's target stream over all windows.

  Args:
    decoder: the stage's compiled decoder.
    total_frames: target frames wanted.
    keep: frames of prefix carried from one window to the next.
    conditioning: window -> {conditioning field: codes [batch, frames(, levels)]}.
    keys: uint32 [batch, 2] per-row base keys.
    stage_index: folded into the keys (stages draw independent randomness).
    on_window: called after each window (progress bars).

  Returns:
    int32 codes [batch, total_frames, target levels].
  """
  layout = decoder.layout
  target = layout.target
  batch = keys.shape[0]
  codes = np.full((batch, total_frames, target.num_levels), -1, np.int32)
  keys = stage_keys(keys, stage_index)
  for window in plan_windows(total_frames, target.num_frames, keep):
    fields = dict(conditioning(window))
    fields[target.name] = slice_frames(codes, window.start, window.prompt_frames)
    tokens = layout.sequence(fields)  # [batch, sequence_length]
    prompt_len = layout.prefix_length + window.prompt_frames * target.num_levels
    out = decoder.generate(tokens, prompt_len, window.new_frames * target.num_levels, keys,
                           salt=window.index)
    new = layout.split(out)[target.name][:, window.prompt_frames:window.prompt_frames +
                                         window.new_frames]
    codes[:, window.new_start:window.end] = new
    if on_window is not None:
      on_window(window)
  return codes


def count_windows(total_frames: int, window_frames: int, keep: int) -> int:
  """len(plan_windows(...)) without building the list."""
  if total_frames <= window_frames:
    return 1
  return 1 + math.ceil((total_frames - window_frames) / (window_frames - keep))
