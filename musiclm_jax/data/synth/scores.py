"""Selecting and reading works from music21's bundled corpus.

A work is one score: one corpus file, or one tune of a multi-tune file (abc books), whose id is
the file's corpus-relative path plus `#<index>` (`essenFolksong/altdeu10.abc#12`). Each file is
parsed once; `read_file` returns the notes of every part as plain arrays (`ScoreData`), which is
all the rest of the pipeline needs. music21's own MIDI export is never used (it expands repeats
and raises on some files, e.g. Mozart K.458 mvt 1), so the part programs it reports (wrong for
some Haydn parts) never matter either.
"""

import dataclasses
import fnmatch
import hashlib
from pathlib import Path

import numpy as np

# Which file wins when a corpus work exists in several formats (bwv277.krn and bwv277.mxl).
_FORMAT_PREFERENCE = ('.mxl', '.musicxml', '.xml', '.krn', '.abc')


def stable_hash(*parts) -> int:
  """A 64-bit hash of the parts' string forms, identical across processes and runs."""
  text = '|'.join(str(p) for p in parts)
  return int.from_bytes(hashlib.sha256(text.encode('utf-8')).digest()[:8], 'little')


@dataclasses.dataclass
class PartNotes:
  """The notes of one part, ties merged; times in quarter notes from the start of the score."""
  name: str
  onsets: np.ndarray     # [notes] float64
  durations: np.ndarray  # [notes] float64
  pitches: np.ndarray    # [notes] int16 MIDI pitch


@dataclasses.dataclass
class ScoreData:
  """One parsed work, reduced to what rendering and captioning need."""
  work_id: str
  title: str
  composer: str
  collection: str           # first folder of the corpus path ('bach', 'ryansMammoth', ...)
  parts: list[PartNotes]
  measure_offsets: np.ndarray   # [measures] float64, start of each measure (first part)
  measure_lengths: np.ndarray   # [measures] float64, actual length (a pickup is shorter)
  time_signatures: list[tuple[float, int, int]]  # (offset, numerator, denominator)
  key_signatures: list[tuple[float, int, str | None]]  # (offset, sharps, 'major'/'minor'/None)
  tempo_quarter_bpm: float | None  # first metronome mark, if any
  length: float                    # quarter notes


def corpus_root() -> Path:
  """The folder of music21's bundled corpus."""
  from music21 import corpus  # pylint: disable=g-import-not-at-top
  return _corpus_root(corpus)


def _corpus_root(corpus) -> Path:
  path = Path(corpus.getPaths()[0])
  while path.name != 'corpus':
    path = path.parent
  return path


def list_corpus_files() -> list[str]:
  """Corpus-relative paths of every score file, one format per work, sorted."""
  from music21 import corpus  # pylint: disable=g-import-not-at-top
  root = str(_corpus_root(corpus)) + '/'
  best: dict[str, str] = {}
  for path in map(str, corpus.getPaths()):
    if not path.startswith(root):
      continue
    rel = path[len(root):].replace('\\', '/')
    dot = rel.rfind('.')
    suffix = rel[dot:].lower() if dot > rel.rfind('/') else ''
    if suffix not in _FORMAT_PREFERENCE:
      continue  # .rntxt (Roman-numeral analyses) and the like are not scores to play
    stem = rel[:dot]
    old = best.get(stem)
    if old is None or (_FORMAT_PREFERENCE.index(suffix)
                       < _FORMAT_PREFERENCE.index(old[old.rfind('.'):].lower())):
      best[stem] = rel
  return sorted(best.values())


def select_files(selectors, *, seed: int = 0) -> list[str]:
  """Corpus files matching `selectors`, each `(glob, limit)`; limit None keeps all matches.

  Within one selector the files are ranked by a seeded hash, so a limit picks a stable,
  spread-out subset. A file matched by several selectors is listed once.
  """
  files = list_corpus_files()
  chosen: list[str] = []
  for pattern, limit in selectors:
    matches = [f for f in files if fnmatch.fnmatchcase(f, pattern)]
    matches.sort(key=lambda f: stable_hash('select', seed, f))
    if limit is not None:
      matches = matches[:limit]
    chosen.extend(m for m in sorted(matches) if m not in chosen)
  return chosen


def _part_notes(part, name: str) -> PartNotes:
  """Notes of a music21 part: ties merged, grace notes and unpitched notes dropped."""
  onsets, durations, pitches = [], [], []
  open_notes: dict[int, int] = {}  # MIDI pitch -> index of the note a tie may extend
  for element in part.flatten().notes:
    length = float(element.duration.quarterLength)
    if length <= 0 or element.duration.isGrace:
      continue
    offset = float(element.offset)
    members = element.notes if element.isChord else [element]
    for member in members:
      if not hasattr(member, 'pitch'):
        continue  # unpitched percussion
      midi = int(round(member.pitch.ps))
      tie = member.tie or (element.tie if element.isChord else None)
      i = open_notes.get(midi)
      if (tie is not None and tie.type in ('stop', 'continue') and i is not None
          and abs(onsets[i] + durations[i] - offset) < 1e-3):
        durations[i] = offset + length - onsets[i]
        continue
      open_notes[midi] = len(onsets)
      onsets.append(offset)
      durations.append(length)
      pitches.append(midi)
  order = np.argsort(np.asarray(onsets, dtype=np.float64), kind='stable')
  return PartNotes(
      name=name,
      onsets=np.asarray(onsets, dtype=np.float64)[order],
      durations=np.asarray(durations, dtype=np.float64)[order],
      pitches=np.clip(np.asarray(pitches, dtype=np.int16)[order], 0, 127))


def _score_data(score, work_id: str, collection: str) -> ScoreData:
  from music21 import key as m21key, meter, tempo  # pylint: disable=g-import-not-at-top
  parts = [_part_notes(p, str(p.partName or '')) for p in score.parts]
  parts = [p for p in parts if len(p.pitches)]
  if not parts:
    raise ValueError('no pitched notes')
  first = score.parts[0]
  measures = list(first.getElementsByClass('Measure'))
  offsets, lengths = [], []
  for m in measures:
    offsets.append(float(m.offset))
    lengths.append(float(m.duration.quarterLength))
  flat = first.flatten()
  time_signatures = [(float(ts.offset), int(ts.numerator), int(ts.denominator))
                     for ts in flat.getElementsByClass(meter.TimeSignature)]
  key_signatures = []
  for ks in flat.getElementsByClass(m21key.KeySignature):
    mode = ks.mode if isinstance(ks, m21key.Key) and ks.mode in ('major', 'minor') else None
    key_signatures.append((float(ks.offset), int(ks.sharps), mode))
  marks = list(flat.getElementsByClass(tempo.MetronomeMark))
  bpm = None
  for mark in marks:
    try:
      value = mark.getQuarterBPM()
    except Exception:  # pylint: disable=broad-except
      value = None
    if value:
      bpm = float(value)
      break
  length = max(float(np.max(p.onsets + p.durations)) for p in parts)
  if not offsets:  # no measures (rare): pretend 4/4 bars
    offsets = list(np.arange(0.0, length, 4.0))
    lengths = [4.0] * len(offsets)
  md = score.metadata
  return ScoreData(
      work_id=work_id,
      title=str((md.title if md is not None else None) or ''),
      composer=str((md.composer if md is not None else None) or ''),
      collection=collection,
      parts=parts,
      measure_offsets=np.asarray(offsets, dtype=np.float64),
      measure_lengths=np.asarray(lengths, dtype=np.float64),
      time_signatures=time_signatures or [(0.0, 4, 4)],
      key_signatures=key_signatures,
      tempo_quarter_bpm=bpm,
      length=length)


def read_file(rel_path: str) -> tuple[list[ScoreData], list[dict[str, str]]]:
  """Parses one corpus file into its works.

  Args:
    rel_path: corpus-relative path, e.g. 'bach/bwv1.6.mxl'.

  Returns:
    (works, skipped): a multi-tune file gives one `ScoreData` per tune (work id
    `<rel_path>#<index>`); tunes that fail are listed in `skipped` as
    `{"item": work_id, "reason": ...}`. A file that fails to parse raises.
  """
  from music21 import corpus, stream  # pylint: disable=g-import-not-at-top
  parsed = corpus.parse(str(_corpus_root(corpus) / rel_path))
  collection = rel_path.split('/', 1)[0]
  if isinstance(parsed, stream.Opus):
    scores = [(f'{rel_path}#{i}', s) for i, s in enumerate(parsed.scores)]
  else:
    scores = [(rel_path, parsed)]
  works, skipped = [], []
  for work_id, score in scores:
    try:
      works.append(_score_data(score, work_id, collection))
    except Exception as e:  # pylint: disable=broad-except
      skipped.append({'item': work_id, 'reason': f'unreadable score: {type(e).__name__}: {e}'})
  return works, skipped
