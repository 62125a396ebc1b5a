"""MusicCaps: the caption table (`read_musiccaps_csv`) and the TFDS builder `MusicCaps`.

The CSV (5,521 rows, CC BY-SA 4.0) ships without audio. Users download the clips themselves
(e.g. with yt-dlp) into a folder of `<ytid>.<ext>` files; each file is either the 10 s clip
itself or the whole video, which is then cut at `start_s..end_s` (decided by the file's
duration). Rows without audio, unreadable files and malformed CSV rows are skipped and
reported, never fatal.

Splits as in the MusicLM paper: `train` = not `is_audioset_eval` (2,663 rows), `eval` =
`is_audioset_eval` (2,858), `balanced` = `is_balanced_subset` (1,000, all inside `eval`).
Configs: `default` (audio + text) and `captions_only` (text only, no audio needed).

  builder = MusicCaps(audio_dir='clips/', data_dir='~/tfds')            # csv_path optional
  builder.download_and_prepare()
  MusicCaps(config='captions_only', data_dir='~/tfds').download_and_prepare()
"""

import ast
import csv
import dataclasses
import logging
import os
from pathlib import Path
import re
import sys

import numpy as np
import tensorflow_datasets as tfds
from tqdm import tqdm

from musiclm_jax import audio
from musiclm_jax.data import folder
from musiclm_jax.data.skips import SkipReport

log = logging.getLogger(__name__)

CSV_ENV = 'MUSICLM_MUSICCAPS_CSV'
COLUMNS = ('ytid', 'start_s', 'end_s', 'audioset_positive_labels', 'aspect_list', 'caption',
           'author_id', 'is_balanced_subset', 'is_audioset_eval')
SAMPLE_RATE = audio.SAMPLE_RATE
WHOLE_VIDEO_MARGIN_S = 1.0  # a file longer than the clip by more than this is a whole video
_YTID = re.compile(r'^[A-Za-z0-9_-]+$')
_BOOLS = {'true': True, '1': True, 'false': False, '0': False}


class MusicCapsError(ValueError):
  """A MusicCaps input that cannot be used at all (missing CSV, wrong header, no audio folder)."""


@dataclasses.dataclass(frozen=True)
class MusicCapsRow:
  """One row of `musiccaps-public.csv`; `line` is the physical line where the row starts."""
  ytid: str
  start_s: float
  end_s: float
  audioset_labels: tuple[str, ...]
  aspects: tuple[str, ...]
  caption: str
  author_id: int
  is_balanced_subset: bool
  is_audioset_eval: bool
  line: int = 0


def default_csv_path() -> Path:
  """`$MUSICLM_MUSICCAPS_CSV`, else `<repo>/../shared/data/musiccaps/musiccaps-public.csv`."""
  if os.environ.get(CSV_ENV):
    return Path(os.environ[CSV_ENV]).expanduser()
  repo = Path(__file__).resolve().parents[2]
  return (repo / '..' / 'shared' / 'data' / 'musiccaps' / 'musiccaps-public.csv').resolve()


def _parse_row(raw: dict[str, str], line: int) -> MusicCapsRow:
  """One CSV record -> MusicCapsRow; ValueError with a short reason when malformed."""
  if None in raw or any(raw.get(c) is None for c in COLUMNS):
    n = sum(v is not None for k, v in raw.items() if k is not None) + len(raw.get(None) or ())
    raise ValueError(f'expected {len(COLUMNS)} fields, got {n}')
  ytid = raw['ytid'].strip()
  if not _YTID.match(ytid):
    raise ValueError(f'invalid ytid {ytid!r}')
  try:
    start_s, end_s = float(raw['start_s']), float(raw['end_s'])
  except ValueError:
    raise ValueError(f'start_s/end_s not numbers: {raw["start_s"]!r}, {raw["end_s"]!r}') from None
  if not (np.isfinite(start_s) and np.isfinite(end_s) and 0 <= start_s < end_s):
    raise ValueError(f'need 0 <= start_s < end_s, got {start_s}, {end_s}')
  try:
    aspects = ast.literal_eval(raw['aspect_list'].strip())
  except (ValueError, SyntaxError, TypeError, MemoryError, RecursionError):
    raise ValueError('aspect_list is not a Python list literal') from None
  if not isinstance(aspects, list) or not all(isinstance(a, str) for a in aspects):
    raise ValueError('aspect_list is not a list of strings')
  caption = raw['caption'].strip()
  if not caption:
    raise ValueError('empty caption')
  try:
    author_id = int(raw['author_id'])
  except ValueError:
    raise ValueError(f'author_id not an integer: {raw["author_id"]!r}') from None
  flags = []
  for column in ('is_balanced_subset', 'is_audioset_eval'):
    value = _BOOLS.get(raw[column].strip().lower())
    if value is None:
      raise ValueError(f'{column} not True/False: {raw[column]!r}')
    flags.append(value)
  labels = tuple(l.strip() for l in raw['audioset_positive_labels'].split(',') if l.strip())
  return MusicCapsRow(ytid=ytid, start_s=start_s, end_s=end_s, audioset_labels=labels,
                      aspects=tuple(a.strip() for a in aspects if a.strip()), caption=caption,
                      author_id=author_id, is_balanced_subset=flags[0], is_audioset_eval=flags[1],
                      line=line)


def read_musiccaps_csv(path: str | os.PathLike[str] | None = None, *,
                       skips: SkipReport | None = None) -> list[MusicCapsRow]:
  """Reads the MusicCaps table; malformed rows are skipped (logged, and recorded in `skips`).

  Args:
    path: the CSV (default: `default_csv_path()`).
    skips: collects `{"item": "<file>:<line>", "reason": "malformed row: ..."}` per bad row.

  Returns:
    The good rows in file order (a repeated ytid keeps its first row).

  Raises:
    MusicCapsError: the file is missing/unreadable or its header lacks the MusicCaps columns.
  """
  path = Path(path) if path is not None else default_csv_path()
  skips = skips if skips is not None else SkipReport()
  rows, seen = [], set()
  try:
    f = open(path, encoding='utf-8-sig', errors='replace', newline='')
  except OSError as e:
    raise MusicCapsError(f'{path}: cannot read MusicCaps CSV ({e.strerror or e}); '
                         f'pass --csv or set ${CSV_ENV}') from None
  with f:
    reader = csv.DictReader(f)
    try:
      header = reader.fieldnames or []
    except csv.Error as e:
      raise MusicCapsError(f'{path}:1: unreadable header ({e})') from None
    missing = [c for c in COLUMNS if c not in header]
    if missing:
      raise MusicCapsError(f'{path}:1: not a MusicCaps CSV (missing columns: {", ".join(missing)})')
    line = reader.line_num + 1
    while True:
      try:
        raw = next(reader)
      except StopIteration:
        break
      except csv.Error as e:
        raw, problem = None, f'malformed row: {e}'
      else:
        problem = None
      try:
        if raw is not None:
          row = _parse_row(raw, line)
          if row.ytid in seen:
            raise ValueError(f'duplicate ytid {row.ytid}')
          seen.add(row.ytid)
          rows.append(row)
      except ValueError as e:
        problem = f'malformed row: {e}'
      if problem:
        log.warning('%s:%d: %s', path, line, problem)
        skips.add(f'{path}:{line}', problem)
      line = reader.line_num + 1
  return rows


def find_audio(audio_dir: str | os.PathLike[str]) -> dict[str, Path]:
  """{ytid: file} for `<ytid>.<ext>` audio files under `audio_dir` (recursive).

  When a ytid has several files, libsndfile formats win over ffmpeg-only ones, then the
  first path in sorted order.
  """
  found: dict[str, Path] = {}
  for path in folder.list_audio_files(audio_dir):
    best = found.get(path.stem)
    if best is None or (best.suffix.lower() not in audio.SUPPORTED_EXTENSIONS
                        and path.suffix.lower() in audio.SUPPORTED_EXTENSIONS):
      found[path.stem] = path
  return found


def load_clip(path: Path, row: MusicCapsRow, *, sample_rate: int = SAMPLE_RATE) -> np.ndarray:
  """The row's clip from `path` (the clip itself, or the whole video cut at start_s..end_s).

  Returns:
    float32 [<= (end_s - start_s) * sample_rate] mono audio, at least half the clip long.

  Raises:
    folder.ClipError: unreadable, too short, non-finite or silent.
  """
  clip_s = row.end_s - row.start_s
  try:
    with folder.readable_path(path, sample_rate) as src:
      total = folder.probe_seconds(src)
      if total is None:
        wav = audio.load_audio(src, sample_rate=sample_rate)  # raises for bad files
        total = wav.size / sample_rate
        if total > clip_s + WHOLE_VIDEO_MARGIN_S:
          wav = wav[int(round(row.start_s * sample_rate)):int(round(row.end_s * sample_rate))]
        wav = wav[:int(round(clip_s * sample_rate))]
      elif total > clip_s + WHOLE_VIDEO_MARGIN_S:  # the whole video
        if total <= row.start_s:
          raise folder.ClipError(f'too short: video is {total:.1f} s, clip starts at '
                                 f'{row.start_s:g} s')
        wav = audio.load_audio(src, sample_rate=sample_rate, offset_s=row.start_s,
                               duration_s=clip_s)
      else:  # the clip itself
        wav = audio.load_audio(src, sample_rate=sample_rate, duration_s=clip_s)
  except audio.AudioError as e:
    raise folder.ClipError(folder.audio_error_reason(e)) from None
  problem = folder.clip_problem(wav, min_samples=int(np.ceil(clip_s * sample_rate / 2)),
                                sample_rate=sample_rate)
  if problem:
    raise folder.ClipError(problem)
  return wav


@dataclasses.dataclass(eq=False)
class MusicCapsConfig(tfds.core.BuilderConfig):
  """`with_audio=False` gives the text-only dataset (no audio feature, no audio needed)."""
  with_audio: bool = True


class MusicCaps(tfds.core.GeneratorBasedBuilder):
  """MusicCaps clips (24 kHz mono int16 PCM, 10 s) with captions, aspects and AudioSet labels.

  Args:
    csv_path: the MusicCaps CSV (default: `default_csv_path()`).
    audio_dir: folder of `<ytid>.<ext>` files (required by config `default` to prepare).
    progress: show a tqdm bar over rows.
    **kwargs: passed to `tfds.core.GeneratorBasedBuilder` (`config`, `data_dir`, ...).

  Attributes:
    skipped: `[{"item", "reason"}, ...]` after `download_and_prepare` (ytid, or `<csv>:<line>`).
    summary: `{"clips", "hours", "splits", "skipped"}` after `download_and_prepare`.
  """

  name = 'musiccaps'
  VERSION = tfds.core.Version('1.0.0')
  RELEASE_NOTES = {'1.0.0': 'Initial release.'}
  BUILDER_CONFIGS = [
      MusicCapsConfig(name='default', with_audio=True,
                      description='Audio clips (from a user-provided folder) with their text.'),
      MusicCapsConfig(name='captions_only', with_audio=False,
                      description='Captions, aspects and metadata of every row; no audio.'),
  ]
  DEFAULT_CONFIG_NAME = 'default'

  def __init__(self, *, csv_path: str | os.PathLike[str] | None = None,
               audio_dir: str | os.PathLike[str] | None = None, progress: bool = False, **kwargs):
    self.csv_path = Path(csv_path).expanduser() if csv_path is not None else default_csv_path()
    self.audio_dir = Path(audio_dir).expanduser().resolve() if audio_dir is not None else None
    self.progress = progress
    self._skips = SkipReport()
    self._written: dict[str, float] = {}  # ytid -> seconds
    self._split_counts: dict[str, int] = {}
    super().__init__(**kwargs)

  @property
  def skipped(self) -> list[dict[str, str]]:
    return list(self._skips.records)

  @property
  def summary(self) -> dict[str, object]:
    return {'clips': len(self._written), 'hours': sum(self._written.values()) / 3600,
            'splits': dict(self._split_counts), 'skipped': self._skips.counts()}

  def _info(self) -> tfds.core.DatasetInfo:
    features = {
        'caption': tfds.features.Text(),
        'aspects': tfds.features.Sequence(tfds.features.Text()),
        'ytid': tfds.features.Text(),
        'start_s': np.float32,
        'end_s': np.float32,
        'audioset_labels': tfds.features.Sequence(tfds.features.Text()),
        'author_id': np.int32,
        'is_balanced_subset': np.bool_,
        'is_audioset_eval': np.bool_,
    }
    if self.builder_config.with_audio:
      features['audio'] = tfds.features.Audio(shape=(None,), dtype=np.int16,
                                              sample_rate=SAMPLE_RATE)
    return tfds.core.DatasetInfo(
        builder=self,
        description='MusicCaps: 5,521 ten-second YouTube clips captioned by musicians.',
        features=tfds.features.FeaturesDict(features),
        homepage='https://www.kaggle.com/datasets/googleai/musiccaps',
        citation='Agostinelli et al., MusicLM: Generating Music From Text, arXiv:2301.11325',
        license='CC BY-SA 4.0',
    )

  def download_and_prepare(self, *, download_config=None, **kwargs):
    """As TFDS, but never looks for a prepared copy on GCS (builds offline)."""
    download_config = download_config or tfds.download.DownloadConfig(try_download_gcs=False)
    return super().download_and_prepare(download_config=download_config, **kwargs)

  def _split_generators(self, dl_manager):
    del dl_manager  # nothing to download
    self._skips, self._written, self._split_counts = SkipReport(), {}, {}
    rows = read_musiccaps_csv(self.csv_path, skips=self._skips)
    files: dict[str, Path] = {}
    if self.builder_config.with_audio:
      if self.audio_dir is None or not self.audio_dir.is_dir():
        raise MusicCapsError(
            f'{self.audio_dir or "audio_dir"}: musiccaps needs a folder of <ytid>.<ext> audio '
            "files (or use config 'captions_only')")
      found = find_audio(self.audio_dir)
      for row in rows:
        if row.ytid in found:
          files[row.ytid] = found[row.ytid]
        else:
          self._skips.add(row.ytid, 'no audio: no <ytid>.<ext> file in the audio folder')
      rows = [r for r in rows if r.ytid in files]
      if not rows:
        raise MusicCapsError(f'{self.audio_dir}: no audio file matches a MusicCaps ytid '
                             '(expected names like -0Gj8-vB1q4.wav)')
    splits = {
        'train': [r for r in rows if not r.is_audioset_eval],
        'eval': [r for r in rows if r.is_audioset_eval],
        'balanced': [r for r in rows if r.is_balanced_subset],
    }
    # TFDS refuses empty splits: with only some clips downloaded, leave those splits out.
    return {name: self._generate_examples(name, split_rows, files)
            for name, split_rows in splits.items() if split_rows}

  def _generate_examples(self, split: str, rows: list[MusicCapsRow], files: dict[str, Path]):
    self._split_counts[split] = 0
    for row in tqdm(rows, desc=f'musiccaps {split}', unit='clip', disable=not self.progress,
                    file=sys.stderr):
      example = {
          'caption': row.caption, 'aspects': list(row.aspects), 'ytid': row.ytid,
          'start_s': row.start_s, 'end_s': row.end_s,
          'audioset_labels': list(row.audioset_labels), 'author_id': row.author_id,
          'is_balanced_subset': row.is_balanced_subset, 'is_audioset_eval': row.is_audioset_eval,
      }
      if self.builder_config.with_audio:
        if row.ytid in self._skips:
          continue  # already failed in another split
        try:
          wav = load_clip(files[row.ytid], row)
        except folder.ClipError as e:
          self._skips.add(row.ytid, e.reason)
          continue
        except Exception as e:  # pylint: disable=broad-except
          self._skips.add(row.ytid, f'unreadable: {type(e).__name__}: {e}')
          continue
        example['audio'] = folder.to_int16(wav)
        self._written[row.ytid] = wav.size / SAMPLE_RATE
      else:
        self._written[row.ytid] = 0.0
      self._split_counts[split] += 1
      yield row.ytid, example
