"""MIDI writing and FluidSynth rendering of planned excerpts.

A batch of renderings goes into a single MIDI file, one segment per rendering separated by
`GAP_SECONDS` (program changes and controller resets in the gap, "all sound off" before the next
segment), so one `fluidsynth` process renders a whole batch. The stereo float output is
downmixed to mono and cut back into clips at known sample positions.

FluidSynth's own reverb and chorus are off: their modulation runs on the absolute clock, so a
clip would sound different at another position in a batch. Each clip instead gets a synthetic
room (`add_room`: seeded decaying-noise impulse response, RT60 0.3-2.2 s, wet 5-45 %), so a
rendering depends only on its plan.

Loudness: each clip is peak-normalised to a target that follows its dynamics level
(`PEAK_BY_DYNAMICS`, 0.3 for pp up to 0.9 for ff), so "soft" and "loud" captions stay true;
10 ms fades remove clicks at the cut points.
"""

import os
from pathlib import Path
import subprocess
import tempfile

import mido
import numpy as np
from scipy import signal
import soundfile as sf

from musiclm_jax.data.synth.excerpts import Excerpt, beat_quarters
from musiclm_jax.data.synth.plan import RenderPlan

SAMPLE_RATE = 24000
GAP_SECONDS = 1.0
LEAD_SECONDS = 0.6
# Segment starts fall on multiples of 0.2 s: a whole number of MIDI ticks, of milliseconds (the
# fluidsynth player's clock) and of 64-sample synthesis blocks, so a clip renders the same
# whatever its position in the batch (fluidsynth's clock-driven effects are off, see above).
_ALIGN_SECONDS = 0.2
TICKS_PER_BEAT = 960  # at the default 120 BPM: 1920 ticks per second
TICKS_PER_SECOND = 1920
FADE_SECONDS = 0.01
VELOCITY_BY_DYNAMICS = {'pp': 36, 'p': 50, 'mp': 64, 'mf': 78, 'f': 94, 'ff': 110}
PEAK_BY_DYNAMICS = {'pp': 0.3, 'p': 0.42, 'mp': 0.55, 'mf': 0.68, 'f': 0.8, 'ff': 0.9}
SILENCE_PEAK = 1e-4
_KICK, _SNARE, _HIHAT = 36, 38, 42
_MELODIC_CHANNELS = [c for c in range(16) if c != 9]


class RenderError(RuntimeError):
  """FluidSynth failed or wrote unusable audio (one line)."""


def default_soundfont() -> str:
  """The GM soundfont: $MUSICLM_SOUNDFONT, else Debian's FluidR3_GM.sf2."""
  for path in (os.environ.get('MUSICLM_SOUNDFONT'), '/usr/share/sounds/sf2/FluidR3_GM.sf2',
               '/usr/share/sounds/sf2/default-GM.sf2', '/usr/share/soundfonts/FluidR3_GM.sf2'):
    if path and Path(path).is_file():
      return path
  raise RenderError('no GM soundfont found: install fluid-soundfont-gm or set MUSICLM_SOUNDFONT')


def segment_start(k: int, clip_seconds: float) -> float:
  """Start time (s) of segment k in a batch MIDI file."""
  spacing = np.ceil((clip_seconds + GAP_SECONDS) / _ALIGN_SECONDS - 1e-9) * _ALIGN_SECONDS
  return round(LEAD_SECONDS + k * spacing, 6)


def _shape_gain(shape: str, t: np.ndarray, clip_seconds: float) -> np.ndarray:
  x = np.clip(t / clip_seconds, 0.0, 1.0)
  if shape == 'crescendo':
    return -18 + 36 * x
  if shape == 'diminuendo':
    return 18 - 36 * x
  return np.zeros_like(x)


def note_velocities(excerpt: Excerpt, plan: RenderPlan) -> list[np.ndarray]:
  """MIDI velocities per part: dynamics level, crescendo/diminuendo ramp, lead accent, jitter."""
  rng = np.random.default_rng(plan.seed + 1)
  base = VELOCITY_BY_DYNAMICS[plan.dynamics]
  out = []
  for i, part in enumerate(excerpt.parts):
    v = base + _shape_gain(plan.shape, part.starts, excerpt.clip_seconds)
    v = v + (6 if i == 0 and len(excerpt.parts) > 1 else 0) + rng.normal(0, 4, len(v))
    out.append(np.clip(np.round(v), 1, 127).astype(int))
  return out


def drum_hits(excerpt: Excerpt, plan: RenderPlan) -> list[tuple[float, int, int]]:
  """A simple kit pattern fitted to the meter and bar lines: (time s, GM key, velocity).

  Kick on the downbeat (and the middle of even bars of 4+ beats), snare on the other main
  beats of 2- and 4-beat bars (beats 2 and 3 of a 3-beat bar), closed hi-hat on each beat
  subdivision (halves of simple beats, thirds of compound beats). Pickup bars keep their
  position relative to the bar's end.
  """
  num, den = excerpt.time_signature
  beat_q = beat_quarters(num, den)
  beat_s = beat_q * 60.0 / excerpt.quarter_bpm
  subdivisions = 3 if beat_q > 4.0 / den + 1e-9 else 2  # compound meters split beats in 3
  base = VELOCITY_BY_DYNAMICS[plan.dynamics]
  hits = []
  for bar_start, bar_len, full_len in excerpt.bars:
    beats = max(int(round(full_len / beat_s)), 1)
    skipped = max(full_len - bar_len, 0.0)  # a pickup bar holds only the pattern's end
    for b in range(beats):
      for sub in range(subdivisions):
        pos = (b + sub / subdivisions) * beat_s  # position in the full bar's pattern
        t = bar_start + pos - skipped
        if pos < skipped - 1e-6 or t < -1e-6 or t >= excerpt.clip_seconds - 1e-3:
          continue
        hits.append((t, _HIHAT, max(base - 20 + (8 if sub == 0 else 0), 1)))
        if sub:
          continue
        if b == 0 or (beats >= 4 and beats % 2 == 0 and b == beats // 2):
          hits.append((t, _KICK, min(base + 10, 127)))
        elif beats in (2, 3) or b % 2 == 1:
          hits.append((t, _SNARE, base))
  return hits


def build_midi(segments: list[tuple[Excerpt, RenderPlan]], *, clip_seconds: float) -> mido.MidiFile:
  """One MIDI file holding every (excerpt, rendering) segment, `segment_start(k)` apart."""
  events = []  # (tick, order, message): order puts note-offs before controls before note-ons

  def add(seconds, order, msg):
    events.append((int(round(seconds * TICKS_PER_SECOND)), order, msg))

  for k, (excerpt, plan) in enumerate(segments):
    t0 = segment_start(k, clip_seconds)
    channels = []
    for i, program in enumerate(plan.part_programs):
      channel = _MELODIC_CHANNELS[i % len(_MELODIC_CHANNELS)]
      channels.append(channel)
      setup = t0 - 0.25
      for control, value in ((121, 0), (7, 100), (10, 64), (91, 0), (93, 0)):
        add(setup, 1, mido.Message('control_change', channel=channel, control=control, value=value))
      add(setup + 0.01, 1, mido.Message('program_change', channel=channel, program=program))
    for part, channel, velocities in zip(excerpt.parts, channels, note_velocities(excerpt, plan)):
      for s, e, p, v in zip(part.starts, part.ends, part.pitches, velocities):
        add(t0 + s, 2, mido.Message('note_on', channel=channel, note=int(p), velocity=int(v)))
        add(t0 + max(e, s + 0.01), 0, mido.Message('note_off', channel=channel, note=int(p)))
    if plan.drums:
      for control, value in ((121, 0), (7, 90), (91, 0)):
        add(t0 - 0.25, 1, mido.Message('control_change', channel=9, control=control, value=value))
      for t, note, velocity in drum_hits(excerpt, plan):
        add(t0 + t, 2, mido.Message('note_on', channel=9, note=note, velocity=int(velocity)))
        add(t0 + t + 0.1, 0, mido.Message('note_off', channel=9, note=note))
    silence = t0 + clip_seconds + GAP_SECONDS / 2
    for channel in range(16):
      add(silence, 1, mido.Message('control_change', channel=channel, control=123, value=0))
      add(silence, 1, mido.Message('control_change', channel=channel, control=120, value=0))
  end = segment_start(len(segments), clip_seconds)
  add(end, 1, mido.Message('control_change', channel=0, control=7, value=100))  # pads the tail
  events.sort(key=lambda e: (e[0], e[1]))
  track = mido.MidiTrack()
  track.append(mido.MetaMessage('set_tempo', tempo=500000, time=0))
  last = 0
  for tick, _, msg in events:
    track.append(msg.copy(time=tick - last))
    last = tick
  track.append(mido.MetaMessage('end_of_track', time=0))
  midi = mido.MidiFile(ticks_per_beat=TICKS_PER_BEAT)
  midi.tracks.append(track)
  return midi


def check_soundfont(path: str) -> None:
  """Raises RenderError unless `path` is a SoundFont 2 file (fluidsynth would silently fall
  back to its default font)."""
  try:
    with open(path, 'rb') as f:
      head = f.read(12)
  except OSError as e:
    raise RenderError(f'{path}: unreadable soundfont: {e.strerror}') from e
  if head[:4] != b'RIFF' or head[8:12] != b'sfbk':
    raise RenderError(f'{path}: not a SoundFont 2 file')


def run_fluidsynth(midi_path: str, wav_path: str, *, soundfont: str, timeout: float = 600) -> None:
  """Renders a MIDI file to a 24 kHz stereo float WAV; raises RenderError on failure."""
  check_soundfont(soundfont)
  cmd = ['fluidsynth', '-ni', '-q', '-R', '0', '-C', '0', '-O', 'float', '-T', 'wav',
         '-F', wav_path, '-r', str(SAMPLE_RATE), soundfont, midi_path]
  try:
    result = subprocess.run(cmd, capture_output=True, timeout=timeout, check=False)
  except (OSError, subprocess.TimeoutExpired) as e:
    raise RenderError(f'fluidsynth: {type(e).__name__}: {e}') from e
  if result.returncode != 0 or not Path(wav_path).is_file():
    tail = ' '.join(result.stderr.decode(errors='replace').split())[-200:]
    raise RenderError(f'fluidsynth exit {result.returncode}: {tail}')


def render_segments(segments: list[tuple[Excerpt, RenderPlan]], *, clip_seconds: float,
                    soundfont: str) -> list[np.ndarray]:
  """Renders segments in one fluidsynth run; returns raw mono float32 clips [clip samples]."""
  midi = build_midi(segments, clip_seconds=clip_seconds)
  n = int(round(clip_seconds * SAMPLE_RATE))
  with tempfile.TemporaryDirectory(prefix='synth_render_') as tmp:
    midi_path, wav_path = os.path.join(tmp, 'in.mid'), os.path.join(tmp, 'out.wav')
    midi.save(midi_path)
    run_fluidsynth(midi_path, wav_path, soundfont=soundfont)
    try:
      audio, sr = sf.read(wav_path, dtype='float32', always_2d=True)  # [samples, channels]
    except Exception as e:  # pylint: disable=broad-except
      raise RenderError(f'unreadable fluidsynth output: {e}') from e
  if sr != SAMPLE_RATE:
    raise RenderError(f'fluidsynth wrote {sr} Hz, expected {SAMPLE_RATE}')
  mono = audio.mean(axis=1)  # [samples]
  clips = []
  for k in range(len(segments)):
    start = int(round(segment_start(k, clip_seconds) * SAMPLE_RATE))
    clip = mono[start:start + n]
    clips.append(np.pad(clip, (0, n - len(clip))).astype(np.float32))
  return clips


def add_room(clip: np.ndarray, *, wet: float, rt60: float, seed: int) -> np.ndarray:
  """Adds a synthetic room: exponentially decaying, darkening noise after early reflections."""
  rng = np.random.default_rng(seed)
  length = int(min(rt60, 2.5) * SAMPLE_RATE)
  t = np.arange(length) / SAMPLE_RATE
  tail = rng.normal(0, 1, length) * np.exp(-6.9 * t / rt60)  # -60 dB at rt60
  tail = signal.lfilter([0.35], [1, -0.65], tail)  # air absorption: a gentle low-pass
  predelay = int(rng.uniform(0.005, 0.025) * SAMPLE_RATE)
  ir = np.zeros(predelay + length)
  ir[predelay:] = tail
  for _ in range(6):  # early reflections
    ir[predelay + int(rng.uniform(0.001, 0.05) * SAMPLE_RATE)] += rng.uniform(0.2, 0.6)
  ir /= np.sqrt(np.sum(ir ** 2))
  reverberant = signal.fftconvolve(clip, ir)[:len(clip)]
  dry = np.sqrt(np.mean(clip ** 2)) + 1e-12
  reverberant *= dry / (np.sqrt(np.mean(reverberant ** 2)) + 1e-12)
  return (clip + wet * reverberant).astype(np.float32)


def fade_and_normalize(clip: np.ndarray, peak: float) -> np.ndarray:
  """10 ms fades at both ends, then peak normalisation to `peak`; raises on silence/NaN."""
  if not np.isfinite(clip).all():
    raise RenderError('non-finite samples')
  clip = clip.astype(np.float32).copy()
  fade = int(FADE_SECONDS * SAMPLE_RATE)
  ramp = np.linspace(0.0, 1.0, fade, dtype=np.float32)
  clip[:fade] *= ramp
  clip[-fade:] *= ramp[::-1]
  top = float(np.abs(clip).max())
  if top < SILENCE_PEAK:
    raise RenderError(f'silent (peak {top:.1e})')
  return clip * (peak / top)


def to_int16(clip: np.ndarray) -> np.ndarray:
  """Float [-1, 1] -> int16 PCM."""
  return np.round(np.clip(clip, -1.0, 1.0) * 32767).astype(np.int16)
