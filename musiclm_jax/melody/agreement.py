"""Melody agreement between two pieces of audio: raw pitch / chroma accuracy, chroma similarity.

  f0_ref, _ = pitch_track(hum, 24000)        # float [T] Hz, NaN where unvoiced; bool [T]
  f0_est, _ = pitch_track(generated, 24000)
  agreement(f0_ref, f0_est)                  # {'raw_pitch_accuracy': ..., ...}

The dominant pitch track is librosa's pYIN (probabilistic YIN, monophonic) between C2 (65.4 Hz)
and C7 (2093 Hz), 2048-sample frames (85 ms at 24 kHz) every 20 ms (50 frames/s), centred.
On polyphonic audio it follows whichever partial dominates, usually the loudest line.

Figures (the reference is the melody that was asked for, e.g. the hum):

  * raw pitch accuracy (mir_eval's definition): the share of reference-voiced frames where the
    estimate is voiced and within 50 cents of the reference;
  * raw chroma accuracy: the same, octave-invariant (the difference is folded to +-600 cents).
    The synth hums and whistles are moved by whole octaves into a voice's register, so this is
    the figure to read when the two signals need not share an octave;
  * chroma similarity: cosine between the 12-bin pitch-class histograms of the voiced frames
    of each track (each frame adds 1 to the pitch class nearest its f0). It ignores timing:
    it says whether the output uses the melody's pitch classes, in any order.

`top_pitch_class_share` (the share of a track's voiced frames in its most frequent pitch class)
flags drones: a constant buzz scores 1 and agrees with any melody only by its one pitch class.

Tracks of different lengths are truncated to the shorter. A figure that is undefined (no voiced
reference frame; for chroma similarity, no voiced frame on either side) is None, never NaN.
Pure numpy + librosa; no JAX, no TensorFlow.
"""

from collections.abc import Mapping
from typing import Any

import numpy as np

FMIN_HZ = 65.406  # C2
FMAX_HZ = 2093.005  # C7
FRAME_SECONDS = 2048 / 24000  # pYIN frame (85 ms)
HOP_SECONDS = 0.02  # 50 frames/s: two frames per 25 Hz `melody_pitch` frame of the synth corpus
CENTS_TOLERANCE = 50.0


def frame_sizes(sr: int) -> tuple[int, int]:
  """(frame_length, hop_length) in samples at `sr`: a power-of-two frame near 85 ms, 20 ms hop."""
  frame = int(2 ** round(np.log2(FRAME_SECONDS * sr)))
  return frame, int(round(HOP_SECONDS * sr))


def pitch_track(wav: np.ndarray, sr: int) -> tuple[np.ndarray, np.ndarray]:
  """The dominant pitch of mono audio by pYIN.

  Args:
    wav: float [N] mono audio.
    sr: its sample rate.

  Returns:
    f0: float64 [T] Hz, NaN where unvoiced; T = 1 + N // hop (centred frames).
    voiced: bool [T].
  """
  import librosa  # pylint: disable=g-import-not-at-top
  wav = np.nan_to_num(np.asarray(wav, np.float32).reshape(-1))
  frame, hop = frame_sizes(sr)
  frames = 1 + len(wav) // hop
  if not np.any(wav):  # pYIN's probabilities are undefined on digital silence
    return np.full(frames, np.nan), np.zeros(frames, bool)
  if len(wav) < frame:
    wav = np.pad(wav, (0, frame - len(wav)))
  f0, voiced, _ = librosa.pyin(wav, fmin=FMIN_HZ, fmax=FMAX_HZ, sr=sr, frame_length=frame,
                               hop_length=hop)
  f0, voiced = f0[:frames], np.asarray(voiced[:frames], bool) & np.isfinite(f0[:frames])
  return np.where(voiced, f0, np.nan), voiced


def midi_to_hz(midi: np.ndarray) -> np.ndarray:
  """MIDI pitch -> Hz; 0 (the synth corpus's rest) and below -> NaN (unvoiced)."""
  midi = np.asarray(midi, np.float64)
  return np.where(midi > 0, 440.0 * 2.0 ** ((midi - 69.0) / 12.0), np.nan)


def _cents(f0: np.ndarray) -> np.ndarray:
  f0 = np.asarray(f0, np.float64)
  with np.errstate(divide='ignore', invalid='ignore'):
    return np.where(f0 > 0, 1200.0 * np.log2(f0 / 440.0), np.nan)  # NaN where unvoiced


def _aligned(ref_f0: np.ndarray, est_f0: np.ndarray) -> tuple[np.ndarray, np.ndarray]:
  n = min(len(ref_f0), len(est_f0))
  return _cents(np.asarray(ref_f0).reshape(-1)[:n]), _cents(np.asarray(est_f0).reshape(-1)[:n])


def _accuracy(ref_f0, est_f0, cents: float, octave_invariant: bool) -> float | None:
  ref, est = _aligned(ref_f0, est_f0)
  voiced = np.isfinite(ref)
  if not np.any(voiced):
    return None
  diff = est[voiced] - ref[voiced]  # NaN where the estimate is unvoiced: counted wrong
  if octave_invariant:
    diff = diff - 1200.0 * np.round(diff / 1200.0)
  with np.errstate(invalid='ignore'):
    return float(np.mean(np.abs(diff) < cents))


def raw_pitch_accuracy(ref_f0: np.ndarray, est_f0: np.ndarray,
                       cents: float = CENTS_TOLERANCE) -> float | None:
  """Share of reference-voiced frames whose estimate is voiced and within `cents`.

  Args:
    ref_f0: float [T] Hz, NaN (or <= 0) where unvoiced.
    est_f0: float [T'] Hz, likewise; both are truncated to the shorter.
    cents: tolerance.

  Returns:
    The accuracy, or None when the reference has no voiced frame.
  """
  return _accuracy(ref_f0, est_f0, cents, octave_invariant=False)


def raw_chroma_accuracy(ref_f0: np.ndarray, est_f0: np.ndarray,
                        cents: float = CENTS_TOLERANCE) -> float | None:
  """`raw_pitch_accuracy` with octave errors forgiven (difference folded to +-600 cents)."""
  return _accuracy(ref_f0, est_f0, cents, octave_invariant=True)


def chroma_histogram(f0: np.ndarray) -> np.ndarray:
  """float64 [12]: voiced frames per pitch class (nearest semitone; 0 = C)."""
  cents = _cents(f0)
  cents = cents[np.isfinite(cents)]
  pitch_class = (np.round(cents / 100.0).astype(np.int64) + 9) % 12  # A4 = 0 cents -> class 9
  return np.bincount(pitch_class, minlength=12).astype(np.float64)


def chroma_similarity(ref_f0: np.ndarray, est_f0: np.ndarray) -> float | None:
  """Cosine between the pitch-class histograms of two tracks (truncated to the shorter).

  Returns:
    In [0, 1], or None when either track has no voiced frame.
  """
  n = min(len(ref_f0), len(est_f0))
  a = chroma_histogram(np.asarray(ref_f0).reshape(-1)[:n])
  b = chroma_histogram(np.asarray(est_f0).reshape(-1)[:n])
  norm = np.linalg.norm(a) * np.linalg.norm(b)
  return float(a @ b / norm) if norm > 0 else None


def agreement(ref_f0: np.ndarray, est_f0: np.ndarray,
              cents: float = CENTS_TOLERANCE) -> dict[str, Any]:
  """Every figure of one (reference, estimate) pair, with the frame counts behind them."""
  n = min(len(ref_f0), len(est_f0))
  ref, est = np.asarray(ref_f0)[:n], np.asarray(est_f0)[:n]
  return {'raw_pitch_accuracy': raw_pitch_accuracy(ref, est, cents),
          'raw_chroma_accuracy': raw_chroma_accuracy(ref, est, cents),
          'chroma_similarity': chroma_similarity(ref, est),
          'frames': int(n),
          'ref_voiced_frames': int(np.sum(np.isfinite(_cents(ref)))),
          'est_voiced_frames': int(np.sum(np.isfinite(_cents(est))))}


def summarize(values: list[float | None]) -> Mapping[str, Any]:
  """Mean, std (ddof 1), standard error and n over the defined values; `undefined` counts Nones."""
  v = np.asarray([x for x in values if x is not None], np.float64)
  if not len(v):
    return {'mean': None, 'std': None, 'sem': None, 'n': 0, 'undefined': len(values)}
  std = float(np.std(v, ddof=1)) if len(v) > 1 else 0.0
  return {'mean': float(np.mean(v)), 'std': std, 'sem': std / float(np.sqrt(len(v))),
          'n': int(len(v)), 'undefined': len(values) - int(len(v))}


def top_pitch_class_share(f0: np.ndarray) -> float | None:
  """Share of the voiced frames in the most frequent pitch class (1.0: a drone); None if none."""
  hist = chroma_histogram(f0)
  return float(hist.max() / hist.sum()) if hist.sum() else None
