"""Hum and whistle renderings of an excerpt's top line, synthesised in numpy.

Both follow the top part's notes and timing exactly (same tempo and transposition as the
instrumental rendering), moved by whole octaves into the register of a voice or a whistle, so
their pitch classes match the score's. Short gaps (< 80 ms) are sung legato; pitch glides into
each note (one-pole portamento), with delayed vibrato and slow drift.

- hum: a voice-like harmonic source (sawtooth-like 1/k spectrum) shaped by the formants of the
  vowel "oo" (additive synthesis: each harmonic is weighted by the formant curve at its own
  frequency), plus a little aspiration noise; a low (male) or high (female) register.
- whistle: a near-sine with a weak 2nd harmonic, breath noise in a narrow band around the
  pitch (low-pass noise ring-modulated by the tone) and broadband hiss, slight vibrato.
"""

import numpy as np
from scipy import signal

SAMPLE_RATE = 24000  # output rate
_RATE = 12000  # synthesis rate: both signals hold nothing above 6 kHz; upsampled at the end
_CONTROL_HOP = 60  # synthesis samples between formant-weight updates (5 ms)
_LEGATO_GAP = 0.08  # s
# vowel "oo" formants (Hz), bandwidths (Hz), gains; male and female.
_FORMANTS = {
    'low': ((300.0, 870.0, 2240.0), (60.0, 90.0, 120.0), (1.0, 0.45, 0.12)),
    'high': ((370.0, 950.0, 2670.0), (70.0, 100.0, 130.0), (1.0, 0.4, 0.1)),
}
_HUM_CENTRE = {'low': 50, 'high': 62}  # MIDI pitch the line's median is moved near
_WHISTLE_CENTRE = 83


def _octave_shift(pitches, centre: int) -> int:
  return int(12 * round((centre - float(np.median(pitches))) / 12))


def _legato(line, gap: float):
  notes = [list(n) for n in line]
  for a, b in zip(notes, notes[1:]):
    if 0 <= b[0] - a[1] < gap:
      a[1] = b[0]
  return notes


def _segments(notes):
  """Phrases: runs of notes without gaps, as (start, end, None)."""
  out = []
  for s, e, _ in notes:
    if out and s <= out[-1][1] + 1e-6:
      out[-1][1] = max(out[-1][1], e)
    else:
      out.append([s, e, None])
  return out


def _contour(notes, n: int, shift: int, rng: np.random.Generator, *, glide_s: float,
             vibrato_depth: float, vibrato_rate: float, attack_s: float, release_s: float):
  """Per-sample MIDI pitch (continuous) and amplitude envelope of a monophonic line."""
  t = np.arange(n) / _RATE
  target = np.full(n, np.nan)
  onset_time = np.full(n, -1.0)
  for s, e, p in notes:
    i0, i1 = int(round(s * _RATE)), min(int(round(e * _RATE)), n)
    target[i0:i1] = p + shift
    onset_time[i0:i1] = s
  voiced = ~np.isnan(target)
  idx = np.where(voiced, np.arange(n), 0)
  np.maximum.accumulate(idx, out=idx)  # forward-fill pitch through rests
  filled = target[idx]
  filled[np.isnan(filled)] = target[voiced][0] if voiced.any() else 60.0
  a = np.exp(-1.0 / (glide_s * _RATE))
  pitch = signal.lfilter([1 - a], [1, -a], filled, zi=[filled[0] * a])[0]
  since_onset = np.where(onset_time >= 0, t - onset_time, 0.0)
  vib_amount = np.clip((since_onset - 0.15) / 0.3, 0.0, 1.0)
  pitch = pitch + vibrato_depth * vib_amount * np.sin(2 * np.pi * vibrato_rate * t
                                                      + rng.uniform(0, 2 * np.pi))
  drift = signal.lfilter([0.002], [1, -0.998], rng.normal(0, 1, n))
  pitch = pitch + 0.08 * drift / (np.abs(drift).max() + 1e-9)
  env = np.zeros(n)
  level = 0.0
  for s, e, _ in _segments(notes):  # attack toward 1 inside a phrase, release after it
    i0, i1 = int(round(s * _RATE)), min(int(round(e * _RATE)), n)
    if i0 >= n:
      break
    rise = np.arange(i1 - i0) / (attack_s * _RATE)
    env[i0:i1] = 1 - (1 - level) * np.exp(-rise)
    level = env[i1 - 1] if i1 > i0 else level
    i2 = min(i1 + int(8 * release_s * _RATE), n)
    fall = np.arange(1, i2 - i1 + 1) / (release_s * _RATE)
    env[i1:i2] = np.maximum(env[i1:i2], level * np.exp(-fall))
  width = int(0.06 * _RATE)
  bump = 0.3 * np.exp(-0.5 * ((np.arange(-width, width) / _RATE - 0.01) / 0.02) ** 2)
  dips = np.zeros(n + 2 * width)  # re-articulation dips at note changes inside a phrase
  for s, _, _ in notes:
    i = int(round(s * _RATE))
    if i < n:
      dips[i:i + 2 * width] += bump
  env = env * np.clip(1 - dips[width:width + n], 0.0, 1.0)
  swell = 1 + 0.08 * signal.lfilter([0.0005], [1, -0.9995], rng.normal(0, 1, n)) / 0.02
  return pitch, env * np.clip(swell, 0.7, 1.3)


def _finish(x: np.ndarray, seconds: float, peak: float = 0.8) -> np.ndarray:
  """Upsamples to SAMPLE_RATE and peak-normalises: [synthesis samples] -> [samples] float32."""
  n = int(round(seconds * SAMPLE_RATE))
  y = signal.resample_poly(x, SAMPLE_RATE // _RATE, 1)[:n]
  y = np.pad(y, (0, n - len(y)))
  top = float(np.abs(y).max())
  return (y * (peak / top) if top > 0 else y).astype(np.float32)


def hum(line, *, seconds: float, seed: int) -> np.ndarray:
  """An "oo" hum of a monophonic line [(start s, end s, MIDI pitch)] -> [samples] float32."""
  rng = np.random.default_rng(seed)
  n = int(round(seconds * _RATE))
  if not line:
    return np.zeros(int(round(seconds * SAMPLE_RATE)), np.float32)
  register = 'low' if rng.random() < 0.5 else 'high'
  shift = _octave_shift([p for _, _, p in line], _HUM_CENTRE[register])
  notes = _legato(line, _LEGATO_GAP)
  pitch, env = _contour(notes, n, shift, rng, glide_s=rng.uniform(0.02, 0.04),
                        vibrato_depth=rng.uniform(0.2, 0.45), vibrato_rate=rng.uniform(4.8, 6.2),
                        attack_s=0.05, release_s=0.08)
  f0 = 440.0 * 2 ** ((pitch - 69) / 12)  # [samples] Hz
  phase = 2 * np.pi * np.cumsum(f0) / _RATE
  centres, widths, gains = _FORMANTS[register]
  ctrl = np.append(f0[::_CONTROL_HOP], f0[-1])  # [controls + 1]
  frac = (np.arange(_CONTROL_HOP) / _CONTROL_HOP)[None, :]  # [1, hop]
  blocks = -(-n // _CONTROL_HOP)
  z = np.exp(1j * phase).astype(np.complex64)  # [samples]
  zk = np.ones(n, dtype=np.complex64)
  out = np.zeros(n)
  max_k = int(4500 / max(float(f0.min()), 50.0))
  for k in range(1, max_k + 1):
    fk = k * ctrl
    weight = sum(g / np.sqrt(1 + ((fk - c) / (w / 2)) ** 2)
                 for c, w, g in zip(centres, widths, gains))
    weight = (weight + 0.01) / k * (fk < 4500)  # formant curve at the harmonic x 1/k source
    ramp = weight[:blocks, None] + (weight[1:blocks + 1, None] - weight[:blocks, None]) * frac
    zk *= z
    out += ramp.reshape(-1)[:n] * zk.imag
  breath = signal.lfilter(*signal.butter(2, 2000 / (_RATE / 2)), rng.normal(0, 1, n))
  out = out / (np.abs(out).max() + 1e-9) + 0.02 * breath
  return _finish(out * env, seconds)


def whistle(line, *, seconds: float, seed: int) -> np.ndarray:
  """A whistle of a monophonic line [(start s, end s, MIDI pitch)] -> [samples] float32."""
  rng = np.random.default_rng(seed)
  n = int(round(seconds * _RATE))
  if not line:
    return np.zeros(int(round(seconds * SAMPLE_RATE)), np.float32)
  shift = _octave_shift([p for _, _, p in line], _WHISTLE_CENTRE)
  notes = _legato(line, _LEGATO_GAP)
  pitch, env = _contour(notes, n, shift, rng, glide_s=rng.uniform(0.01, 0.025),
                        vibrato_depth=rng.uniform(0.08, 0.2), vibrato_rate=rng.uniform(4.5, 6.5),
                        attack_s=0.025, release_s=0.05)
  f0 = 440.0 * 2 ** ((pitch - 69) / 12)
  phase = 2 * np.pi * np.cumsum(f0) / _RATE
  tone = np.sin(phase) + 0.03 * np.sin(2 * phase + 0.5)
  narrow = signal.lfilter(*signal.butter(2, 150 / (_RATE / 2)), rng.normal(0, 1, n))
  narrow = narrow / (np.abs(narrow).max() + 1e-9) * np.cos(phase + 1.0)
  hiss = signal.lfilter(*signal.butter(2, 3000 / (_RATE / 2), 'high'), rng.normal(0, 1, n))
  breath_level = rng.uniform(0.08, 0.2)
  out = tone + breath_level * narrow + 0.1 * breath_level * hiss / (np.abs(hiss).max() + 1e-9)
  return _finish(out * env, seconds)
