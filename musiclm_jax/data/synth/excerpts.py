"""Cutting clips out of a score: tempo, transposition, key, texture, top line, frame features.

An excerpt starts on a bar line and lasts `clip_seconds` at its tempo. Tempo and transposition
belong to the excerpt (its melody group), so every rendering of a melody group plays exactly the
same notes at the same times; only instruments, dynamics, drums and room differ. Times below are
in seconds from the start of the clip once an excerpt is cut.
"""

import dataclasses

import numpy as np

from musiclm_jax.data.synth.scores import ScoreData, stable_hash

FRAME_RATE = 25  # Hz: the semantic-token rate, for `pitch_classes` and `melody_pitch`

PITCH_NAMES_MAJOR = ('C', 'Db', 'D', 'Eb', 'E', 'F', 'F#', 'G', 'Ab', 'A', 'Bb', 'B')
PITCH_NAMES_MINOR = ('C', 'C#', 'D', 'Eb', 'E', 'F', 'F#', 'G', 'G#', 'A', 'Bb', 'B')
# Krumhansl-Kessler key profiles (C major, C minor).
_MAJOR_PROFILE = np.array([6.35, 2.23, 3.48, 2.33, 4.38, 4.09, 2.52, 5.19, 2.39, 3.66, 2.29, 2.88])
_MINOR_PROFILE = np.array([6.33, 2.68, 3.52, 5.38, 2.60, 3.53, 2.54, 4.75, 3.98, 2.69, 3.34, 3.17])
_NOTATED_KEY_BONUS = 0.1  # correlation bonus for the key the score notates at the excerpt


@dataclasses.dataclass
class ExcerptPart:
  """One sounding part of an excerpt: transposed notes, times in seconds within the clip."""
  name: str
  starts: np.ndarray   # [notes] float64
  ends: np.ndarray     # [notes] float64
  pitches: np.ndarray  # [notes] int16, transposed


@dataclasses.dataclass
class Excerpt:
  """A clip-long excerpt of a work, with everything that is shared by its renderings."""
  work_id: str
  melody_group: str
  index: int                  # candidate index within the work (stable across configs)
  start_quarters: float
  end_quarters: float
  tempo_bpm: float            # beats per minute of the meter's beat
  quarter_bpm: float          # quarter notes per minute
  transposition: int          # semitones
  key: str                    # e.g. 'D minor', after transposition
  time_signature: tuple[int, int]
  parts: list[ExcerptPart]    # sounding parts, ordered top (highest median pitch) to bottom
  bars: list[tuple[float, float, float]]  # (start s, length s, full bar length s)
  collection: str
  composer: str
  title: str
  texture: str
  clip_seconds: float

  @property
  def top(self) -> ExcerptPart:
    return self.parts[0]


def beat_quarters(numerator: int, denominator: int) -> float:
  """Quarter notes per perceived beat: 6/8 -> dotted quarter (1.5), 4/2 -> half note (2)."""
  unit = 4.0 / denominator
  if numerator % 3 == 0 and numerator > 3 and denominator >= 8:
    return 3 * unit
  return unit


def _active(items, offset: float):
  """The last (offset, ...) entry at or before `offset` (or the first one)."""
  current = items[0]
  for item in items:
    if item[0] <= offset + 1e-6:
      current = item
  return current


def estimate_key(pitches, durations, notated: tuple[int, str | None] | None) -> tuple[int, str]:
  """Krumhansl-Schmuckler key of duration-weighted pitch classes, biased to the notated key.

  Args:
    pitches: MIDI pitches; durations: their lengths (any unit).
    notated: (sharps, mode or None) of the key signature in force, or None.

  Returns:
    (tonic pitch class, 'major' or 'minor').
  """
  histogram = np.bincount(np.asarray(pitches) % 12, weights=np.asarray(durations), minlength=12)
  best, best_score = (0, 'major'), -np.inf
  notated_keys = set()
  if notated is not None:
    major_tonic = (7 * notated[0]) % 12
    if notated[1] in (None, 'major'):
      notated_keys.add((major_tonic, 'major'))
    if notated[1] in (None, 'minor'):
      notated_keys.add(((major_tonic + 9) % 12, 'minor'))
  for mode, profile in (('major', _MAJOR_PROFILE), ('minor', _MINOR_PROFILE)):
    for tonic in range(12):
      score = np.corrcoef(histogram, np.roll(profile, tonic))[0, 1] if histogram.std() else 0.0
      score = float(np.nan_to_num(score)) + (_NOTATED_KEY_BONUS if (tonic, mode) in notated_keys
                                             else 0.0)
      if score > best_score:
        best, best_score = (tonic, mode), score
  return best


def key_name(tonic: int, mode: str) -> str:
  names = PITCH_NAMES_MAJOR if mode == 'major' else PITCH_NAMES_MINOR
  return f'{names[tonic % 12]} {mode}'


def texture_of(score: ScoreData, num_parts: int, polyphonic_solo: bool) -> str:
  """'chorale', 'solo melody', 'solo', 'duet', 'trio', 'quartet', 'quintet' or 'ensemble'."""
  if score.collection == 'bach' and num_parts >= 4:
    return 'chorale'
  if num_parts == 1:
    return 'solo' if polyphonic_solo else 'solo melody'
  return {2: 'duet', 3: 'trio', 4: 'quartet', 5: 'quintet'}.get(num_parts, 'ensemble')


def _tile(score: ScoreData, needed: float):
  """Repeats a score shorter than one clip (a short folk tune) until it lasts `needed` quarters.

  Returns:
    (parts as (name, onsets, durations, pitches), bar offsets, bar lengths, total length,
    period): period is the length of one copy.
  """
  reps = 1
  length = max(score.length, float(score.measure_offsets[-1] + score.measure_lengths[-1]))
  while reps * length < needed and reps < 4:
    reps += 1
  parts = []
  for p in score.parts:
    shifts = np.repeat(np.arange(reps) * length, len(p.onsets))
    parts.append((p.name, np.tile(p.onsets, reps) + shifts, np.tile(p.durations, reps),
                  np.tile(p.pitches, reps)))
  offsets = np.concatenate([score.measure_offsets + r * length for r in range(reps)])
  lengths = np.tile(score.measure_lengths, reps)
  return parts, offsets, lengths, reps * length, length


_TEMPO_RANGES = (  # beat BPM ranges by collection, when the score has no usable mark
    (('bach',), (56, 96)),
    (('palestrina', 'josquin', 'lusitano', 'monteverdi', 'trecento', 'ciconia', 'luca'),
     (48, 84)),
    (('ryansMammoth', 'oneills1850', 'essenFolksong', 'airdsAirs', 'miscFolk',
      'nottingham-dataset'), (72, 150)),
)


def _draw_tempo(rng: np.random.Generator, score: ScoreData, beat_q: float) -> float:
  """Beat BPM: the score's mark (if plausible) +-15 %, else a range by collection."""
  if score.tempo_quarter_bpm and 40 <= score.tempo_quarter_bpm / beat_q <= 200:
    bpm = score.tempo_quarter_bpm / beat_q * rng.uniform(0.85, 1.15)
  else:
    low, high = next((r for names, r in _TEMPO_RANGES if score.collection in names), (50, 140))
    bpm = rng.uniform(low, high)
  return float(np.clip(round(bpm), 40, 200))


def _draw_transposition(rng: np.random.Generator, low: int, high: int) -> int:
  shift = 0 if rng.random() < 0.3 else int(rng.integers(-5, 7))
  while low + shift < 24:
    shift += 12
  while high + shift > 103 and low + shift - 12 >= 24:
    shift -= 12
  return shift


def cut_excerpts(score: ScoreData, *, clip_seconds: float, max_excerpts: int | None,
                 seed: int) -> tuple[list[Excerpt], list[dict[str, str]]]:
  """Cuts up to `max_excerpts` non-overlapping clip-long excerpts out of a work.

  Candidates run back to back from the first bar line, each with its own drawn tempo; a seeded
  choice keeps `max_excerpts` of them. Excerpts whose top line plays less than 3 notes are
  skipped (and reported).

  Returns:
    (excerpts, skipped records).
  """
  rng = np.random.default_rng(stable_hash(seed, score.work_id, 'excerpts'))
  ts0 = score.time_signatures[0]
  min_quarters = clip_seconds * 200 * beat_quarters(ts0[1], ts0[2]) / 60  # longest possible clip
  parts, offsets, lengths, total, period = _tile(score, min_quarters)
  candidates = []
  start_i = 0
  while start_i < len(offsets) and offsets[start_i] < period - 1e-6:  # start in the first copy
    start = float(offsets[start_i])
    _, num, den = _active(score.time_signatures, start)
    beat_q = beat_quarters(num, den)
    tempo = _draw_tempo(rng, score, beat_q)
    quarter_bpm = tempo * beat_q
    end = start + clip_seconds * quarter_bpm / 60
    if end > total + 1e-6:
      break
    candidates.append((start, end, tempo, quarter_bpm, (num, den)))
    start_i = int(np.searchsorted(offsets, end - 1e-6))
  if not candidates:
    return [], [{'item': score.work_id, 'reason': 'too short: no clip-long excerpt'}]
  chosen = range(len(candidates))
  if max_excerpts is not None and len(candidates) > max_excerpts:
    chosen = sorted(rng.choice(len(candidates), size=max_excerpts, replace=False).tolist())
  excerpts, skipped = [], []
  for index in chosen:
    ex_rng = np.random.default_rng(stable_hash(seed, score.work_id, 'excerpt', index))
    excerpt = _make_excerpt(score, parts, offsets, lengths, period, index, candidates[index],
                            ex_rng, clip_seconds)
    if isinstance(excerpt, str):
      skipped.append({'item': f'{score.work_id}#x{index}', 'reason': excerpt})
    else:
      excerpts.append(excerpt)
  return excerpts, skipped


def _make_excerpt(score, parts, offsets, lengths, period, index, candidate, rng, clip_seconds):
  start, end, tempo, quarter_bpm, meter = candidate
  sec = 60.0 / quarter_bpm
  cut = []
  for name, onsets, durations, pitches in parts:
    ends = onsets + durations
    keep = (ends > start + 1e-6) & (onsets < end - 1e-6)
    if not keep.any():
      continue
    s = (np.maximum(onsets[keep], start) - start) * sec
    e = (np.minimum(ends[keep], end) - start) * sec
    cut.append((name, s, e, pitches[keep].astype(np.int16), durations[keep]))
  if not cut:
    return 'no notes: excerpt is silent'
  cut.sort(key=lambda c: -float(np.median(c[3])))  # top (highest median pitch) first
  if len(cut[0][3]) < 3:
    return 'thin top line: fewer than 3 notes'
  all_pitches = np.concatenate([c[3] for c in cut])
  transposition = _draw_transposition(rng, int(all_pitches.min()), int(all_pitches.max()))
  notated = None
  if score.key_signatures:
    _, sharps, mode = _active(score.key_signatures, start % period)
    notated = (sharps, mode)
  tonic, mode = estimate_key(all_pitches, np.concatenate([c[2] - c[1] for c in cut]), notated)
  ex_parts = [ExcerptPart(name=n, starts=s, ends=e, pitches=(p + transposition).astype(np.int16))
              for n, s, e, p, _ in cut]
  polyphonic_solo = len(cut) == 1 and _max_polyphony(ex_parts[0]) > 1
  bars = []
  for offset, length in zip(offsets, lengths):
    if offset + length > start + 1e-6 and offset < end - 1e-6:
      _, num, den = _active(score.time_signatures, offset % period)
      bars.append(((offset - start) * sec, length * sec, num * 4.0 / den * sec))
  return Excerpt(
      work_id=score.work_id, melody_group=f'{score.work_id}#x{index}', index=index,
      start_quarters=start, end_quarters=end, tempo_bpm=tempo, quarter_bpm=quarter_bpm,
      transposition=transposition, key=key_name(tonic + transposition, mode),
      time_signature=meter, parts=ex_parts, bars=bars, collection=score.collection,
      composer=score.composer, title=score.title,
      texture=texture_of(score, len(ex_parts), polyphonic_solo), clip_seconds=clip_seconds)


def _max_polyphony(part: ExcerptPart) -> int:
  events = sorted([(s, 1) for s in part.starts] + [(e, -1) for e in part.ends])
  level = peak = 0
  for _, delta in events:
    level += delta
    peak = max(peak, level)
  return peak


def top_line(part: ExcerptPart) -> list[tuple[float, float, int]]:
  """Monophonic skyline of a part: (start s, end s, MIDI pitch), highest note wins."""
  order = np.lexsort((-part.pitches, part.starts))
  line: list[list] = []
  for i in order:
    s, e, p = float(part.starts[i]), float(part.ends[i]), int(part.pitches[i])
    if line and s < line[-1][1] - 1e-6:
      if s <= line[-1][0] + 1e-6:
        continue  # same onset, lower note of a chord
      if p < line[-1][2]:
        continue  # an inner note under a held melody note
      line[-1][1] = s  # a higher note cuts the held one
    line.append([s, e, p])
  return [(s, e, p) for s, e, p in line if e - s > 1e-3]


def frame_features(excerpt: Excerpt) -> tuple[np.ndarray, np.ndarray]:
  """Per-frame score information at `FRAME_RATE`.

  Returns:
    pitch_classes: [frames, 12] uint8, 1 where a (transposed) pitch class sounds at any time in
      the frame [i / 25, (i + 1) / 25).
    melody_pitch: [frames] uint8, the top line's MIDI pitch at the frame centre, 0 for a rest.
  """
  frames = int(round(excerpt.clip_seconds * FRAME_RATE))
  pitch_classes = np.zeros((frames, 12), dtype=np.uint8)
  for part in excerpt.parts:
    first = np.floor(part.starts * FRAME_RATE).astype(int)
    last = np.ceil(part.ends * FRAME_RATE).astype(int)  # exclusive
    for f0, f1, p in zip(first, last, part.pitches):
      pitch_classes[max(f0, 0):min(f1, frames), int(p) % 12] = 1
  melody = np.zeros(frames, dtype=np.uint8)
  centres = (np.arange(frames) + 0.5) / FRAME_RATE
  for s, e, p in top_line(excerpt.top):
    melody[(centres >= s) & (centres < e)] = p
  return pitch_classes, melody
