"""TFDS builder `AudioFolder` (registered as `folder`): any folder of audio files as clips.

Every audio file under `source_dir` (recursively; hidden files and folders are ignored) is cut
into clips of `clip_seconds` (24 kHz mono, stored as int16 PCM like the synth corpus). The last
partial clip is kept when it is at least half a clip long, otherwise dropped. Optional captions
come from a sidecar at the top of the folder:

  captions.jsonl   {"path": "sub/a.wav", "caption": "...", "aspects": ["piano", "calm"]}
  captions.csv     header `path,caption[,aspects]`; aspects as a list literal or "a, b, c"

Bad files never stop the build; they are skipped with a reason (see `musiclm_jax.data.skips`):
  empty (0 bytes / 0 frames), unreadable (corrupt, or not audio), non-finite (NaN/Inf samples),
  too short (under half a clip), silent (every clip below -60 dBFS RMS; single silent clips of
  a longer file are skipped as `path#k`), unsupported (a format neither libsndfile nor ffmpeg
  reads). Odd sample rates, multi-channel and 8/24-bit files are fine: resampled and downmixed.

Formats libsndfile reads (wav/flac/ogg/opus/mp3/aiff/...) go through
`musiclm_jax.audio.load_audio`; m4a/aac/webm/mp4/wma are first converted to a temporary wav
with ffmpeg when it is installed.

  builder = AudioFolder(source_dir='my_music', clip_seconds=10.0, data_dir='~/tfds')
  builder.download_and_prepare()
  builder.skipped, builder.summary
"""

import ast
from collections.abc import Iterator
import contextlib
import csv
import json
import os
from pathlib import Path
import posixpath
import shutil
import subprocess
import sys
import tempfile

import numpy as np
import soundfile as sf
import tensorflow_datasets as tfds
from tqdm import tqdm

from musiclm_jax import audio
from musiclm_jax.data.skips import SkipReport

SAMPLE_RATE = audio.SAMPLE_RATE
# Read through ffmpeg (to a temporary wav) when libsndfile cannot.
FFMPEG_EXTENSIONS = ('.m4a', '.aac', '.webm', '.mp4', '.mka', '.wma', '.opus', '.mp3')
AUDIO_EXTENSIONS = tuple(sorted(set(audio.SUPPORTED_EXTENSIONS) | set(FFMPEG_EXTENSIONS)))
CAPTION_FILES = ('captions.jsonl', 'captions.csv')
BLOCK_SECONDS = 300.0  # long files are decoded this much at a time
SILENCE_DB = -60.0


class ClipError(ValueError):
  """An item that cannot become a clip; `reason` reads `"<kind>: <detail>"`."""

  def __init__(self, reason: str):
    self.reason = reason
    super().__init__(reason)


def audio_error_reason(err: audio.AudioError) -> str:
  """Maps a `load_audio` error to a skip reason `"<kind>: <detail>"`."""
  text = err.reason.lower()
  if 'empty file' in text or 'zero-length' in text or 'no audio samples' in text:
    kind = 'empty'
  elif 'nan' in text or 'inf samples' in text:
    kind = 'non-finite'
  elif 'too short' in text:
    kind = 'too short'
  elif 'too long' in text:
    kind = 'too long'
  elif 'unsupported' in text:
    kind = 'unsupported'
  else:
    kind = 'unreadable'
  return f'{kind}: {err.reason}'


def list_audio_files(root: str | os.PathLike[str]) -> list[Path]:
  """Audio files under `root` by extension, recursively, sorted; hidden entries are ignored."""
  root = Path(root)
  found = []
  for dirpath, dirnames, filenames in os.walk(root, followlinks=False):
    dirnames[:] = sorted(d for d in dirnames if not d.startswith('.'))
    for name in filenames:
      if not name.startswith('.') and os.path.splitext(name)[1].lower() in AUDIO_EXTENSIONS:
        found.append(Path(dirpath) / name)
  return sorted(found, key=lambda p: p.relative_to(root).as_posix())


@contextlib.contextmanager
def readable_path(path: Path, sample_rate: int = SAMPLE_RATE) -> Iterator[Path]:
  """Yields a path `load_audio` can read: `path` itself, or an ffmpeg-made temporary wav."""
  ext = path.suffix.lower()
  if ext in audio.SUPPORTED_EXTENSIONS:
    yield path
    return
  ffmpeg = shutil.which('ffmpeg')
  if ffmpeg is None:
    raise ClipError(f"unsupported: '{ext}' needs ffmpeg, which is not installed "
                    '(or convert the file to wav/flac)')
  with tempfile.TemporaryDirectory(prefix='musiclm_ffmpeg_') as tmp:
    out = Path(tmp) / 'audio.wav'
    cmd = [ffmpeg, '-nostdin', '-v', 'error', '-i', os.fspath(path), '-vn', '-ac', '1',
           '-ar', str(sample_rate), '-c:a', 'pcm_f32le', '-f', 'wav', os.fspath(out)]
    try:
      proc = subprocess.run(cmd, capture_output=True, text=True, timeout=1800, check=False)
    except subprocess.TimeoutExpired:
      raise ClipError('unreadable: ffmpeg timed out') from None
    if proc.returncode != 0 or not out.exists():
      lines = [l for l in proc.stderr.splitlines() if l.strip()]
      raise ClipError(f"unreadable: ffmpeg failed ({lines[-1] if lines else proc.returncode})")
    yield out


def probe_seconds(path: Path) -> float | None:
  """Duration from the file header (no decoding), or None when the header cannot be read."""
  try:
    info = sf.info(os.fspath(path))
  except Exception:  # pylint: disable=broad-except
    return None
  return info.frames / info.samplerate if info.samplerate > 0 and info.frames > 0 else None


def to_int16(wav: np.ndarray) -> np.ndarray:
  """Float [-1, 1] -> int16 PCM (as the synth corpus stores audio; clips beyond full scale)."""
  return np.round(np.clip(wav, -1.0, 1.0) * 32767).astype(np.int16)


def clip_problem(wav: np.ndarray, *, min_samples: int,
                 sample_rate: int = SAMPLE_RATE) -> str | None:
  """The skip reason for a decoded clip, or None when it is usable."""
  if wav.size == 0:
    return 'empty: no samples'
  if not np.isfinite(wav).all():
    return 'non-finite: NaN/Inf samples'
  if wav.size < min_samples:
    return f'too short: {wav.size / sample_rate:.2f} s < {min_samples / sample_rate:.2f} s'
  if audio.is_silent(wav, SILENCE_DB):
    return f'silent: RMS below {SILENCE_DB:g} dBFS'
  return None


def iter_file_clips(path: Path, *, clip_seconds: float, sample_rate: int = SAMPLE_RATE,
                    min_fraction: float = 0.5) -> Iterator[tuple[int, float, np.ndarray]]:
  """Cuts one file into clips: yields `(index, start_s, wav [<= clip samples])`.

  Raises:
    ClipError: the file cannot be read, or is shorter than `min_fraction` of a clip.
  """
  clip = int(round(clip_seconds * sample_rate))
  min_samples = int(np.ceil(clip * min_fraction))
  try:
    with readable_path(path, sample_rate) as src:
      total = probe_seconds(src)
      if total is None:  # let load_audio say what is wrong (or read it whole)
        whole = audio.load_audio(src, sample_rate=sample_rate)
        blocks = iter([whole])
        total = whole.size / sample_rate
      else:
        blocks = _blocks(src, total, clip_seconds, sample_rate)
      if total * sample_rate < min_samples:
        raise ClipError(f'too short: {total:.2f} s < {min_samples / sample_rate:.2f} s')
      index, carry = 0, np.zeros(0, np.float32)
      for block in blocks:  # about a whole number of clips; resampling may add/drop a sample
        buf = np.concatenate([carry, block]) if carry.size else block  # [samples]
        full = buf.size // clip
        for k in range(full):
          yield index, index * clip / sample_rate, buf[k * clip:(k + 1) * clip]
          index += 1
        carry = buf[full * clip:]
      if carry.size:
        yield index, index * clip / sample_rate, carry
  except audio.AudioError as e:
    raise ClipError(audio_error_reason(e)) from None


def _blocks(src: Path, total_s: float, clip_seconds: float,
            sample_rate: int) -> Iterator[np.ndarray]:
  """Decodes [0, total_s) in blocks of whole clips (about BLOCK_SECONDS each)."""
  block_s = max(1, int(BLOCK_SECONDS // clip_seconds)) * clip_seconds
  offset = 0.0
  while offset < total_s - 1e-6:
    try:
      yield audio.load_audio(src, sample_rate=sample_rate, offset_s=offset, duration_s=block_s)
    except audio.AudioError as e:
      if offset > 0 and 'past the end' in e.reason:  # header overestimated the length
        return
      raise
    offset += block_s


def _normalize_rel(path: str) -> str | None:
  path = path.strip().replace('\\', '/')
  if not path or path.startswith('/'):
    return None
  path = posixpath.normpath(path)
  return None if path == '..' or path.startswith('../') else path


def _parse_aspects(value, where: str) -> list[str]:
  if value is None or value == '':
    return []
  if isinstance(value, str):
    text = value.strip()
    if text.startswith('['):
      try:
        value = ast.literal_eval(text)
      except (ValueError, SyntaxError, MemoryError, RecursionError):
        raise ClipError(f'malformed caption: {where}: aspects is not a list literal') from None
    else:
      value = [a for a in text.split(',')]
  if not isinstance(value, (list, tuple)) or not all(isinstance(a, str) for a in value):
    raise ClipError(f'malformed caption: {where}: aspects must be a list of strings')
  return [a.strip() for a in value if a.strip()]


def read_captions(source_dir: str | os.PathLike[str], skips: SkipReport
                  ) -> dict[str, tuple[str, list[str]]]:
  """Reads `captions.jsonl` and/or `captions.csv` (first wins): {relative path: (caption, aspects)}.

  Malformed lines are skipped and recorded in `skips` as `<file>:<line>`.
  """
  source_dir = Path(source_dir)
  captions: dict[str, tuple[str, list[str]]] = {}
  for name in CAPTION_FILES:
    sidecar = source_dir / name
    if not sidecar.is_file():
      continue
    for line_no, record in _sidecar_records(sidecar, skips):
      where = f'{name}:{line_no}'
      try:
        if not isinstance(record, dict):
          raise ClipError(f'malformed caption: {where}: expected an object with path and caption')
        rel = _normalize_rel(str(record.get('path') or ''))
        caption = record.get('caption')
        if rel is None:
          raise ClipError(f'malformed caption: {where}: missing or invalid "path"')
        if not isinstance(caption, str):
          raise ClipError(f'malformed caption: {where}: "caption" must be a string')
        aspects = _parse_aspects(record.get('aspects'), where)
      except ClipError as e:
        skips.add(where, e.reason)
        continue
      captions.setdefault(rel, (' '.join(caption.split()), aspects))
  return captions


def _sidecar_records(sidecar: Path, skips: SkipReport) -> Iterator[tuple[int, object]]:
  try:
    with open(sidecar, encoding='utf-8-sig', errors='replace', newline='') as f:
      if sidecar.suffix == '.jsonl':
        for line_no, line in enumerate(f, 1):
          if line.strip():
            try:
              yield line_no, json.loads(line)
            except ValueError as e:
              skips.add(f'{sidecar.name}:{line_no}', f'malformed caption: invalid JSON ({e})')
        return
      reader = csv.DictReader(f)
      if not reader.fieldnames or not {'path', 'caption'} <= set(reader.fieldnames):
        skips.add(sidecar.name, 'malformed caption: header must name columns path and caption')
        return
      line_no = reader.line_num + 1
      while True:
        try:
          row = next(reader)
        except StopIteration:
          return
        except csv.Error as e:
          skips.add(f'{sidecar.name}:{line_no}', f'malformed caption: {e}')
        else:
          yield line_no, row
        line_no = reader.line_num + 1
  except OSError as e:
    skips.add(sidecar.name, f'unreadable: {e.strerror or e}')


class AudioFolder(tfds.core.GeneratorBasedBuilder):
  """Clips cut from a folder of audio files, with optional captions (split `train`).

  Args:
    source_dir: the folder to read (needed to prepare; not to load a prepared dataset).
    clip_seconds: clip length; the last partial clip is kept when >= half of it.
    progress: show a tqdm bar over files.
    **kwargs: passed to `tfds.core.GeneratorBasedBuilder` (`data_dir`, `config`, ...).

  Attributes:
    skipped: `[{"item", "reason"}, ...]` after `download_and_prepare`.
    summary: `{"clips", "hours", "files", "skipped"}` after `download_and_prepare`.
  """

  name = 'folder'
  VERSION = tfds.core.Version('1.0.0')
  RELEASE_NOTES = {'1.0.0': 'Initial release.'}

  def __init__(self, *, source_dir: str | os.PathLike[str] | None = None,
               clip_seconds: float = 10.0, progress: bool = False, **kwargs):
    if not clip_seconds > 0:
      raise ValueError(f'clip_seconds must be > 0, got {clip_seconds}')
    self.source_dir = Path(source_dir).expanduser().resolve() if source_dir is not None else None
    self.clip_seconds = float(clip_seconds)
    self.progress = progress
    self._skips = SkipReport()
    self._seconds = 0.0
    self._clips = 0
    self._files = 0
    super().__init__(**kwargs)

  @property
  def skipped(self) -> list[dict[str, str]]:
    return list(self._skips.records)

  @property
  def summary(self) -> dict[str, object]:
    return {'clips': self._clips, 'hours': self._seconds / 3600, 'files': self._files,
            'skipped': self._skips.counts()}

  def _info(self) -> tfds.core.DatasetInfo:
    return tfds.core.DatasetInfo(
        builder=self,
        description='Clips of a folder of audio files (24 kHz mono int16), optional captions.',
        features=tfds.features.FeaturesDict({
            'audio': tfds.features.Audio(shape=(None,), dtype=np.int16, sample_rate=SAMPLE_RATE),
            'caption': tfds.features.Text(),
            'aspects': tfds.features.Sequence(tfds.features.Text()),
            'path': tfds.features.Text(),
            'clip_index': np.int32,
            'start_s': np.float32,
            'end_s': np.float32,
        }),
        metadata=tfds.core.MetadataDict(
            source_dir=os.fspath(self.source_dir) if self.source_dir else None,
            clip_seconds=self.clip_seconds),
    )

  def download_and_prepare(self, *, download_config=None, **kwargs):
    """As TFDS, but never looks for a prepared copy on GCS (builds offline)."""
    download_config = download_config or tfds.download.DownloadConfig(try_download_gcs=False)
    return super().download_and_prepare(download_config=download_config, **kwargs)

  def _split_generators(self, dl_manager):
    del dl_manager  # nothing to download
    if self.source_dir is None:
      raise ValueError('folder: source_dir is required to prepare the dataset')
    if not self.source_dir.is_dir():
      raise ValueError(f'{self.source_dir}: not a folder')
    self._skips, self._clips, self._seconds, self._files = SkipReport(), 0, 0.0, 0
    captions = read_captions(self.source_dir, self._skips)
    files = list_audio_files(self.source_dir)
    known = {f.relative_to(self.source_dir).as_posix() for f in files}
    for rel in captions.keys() - known:
      self._skips.add(rel, 'caption without audio: no such audio file')
    if not files:
      raise ValueError(
          f'{self.source_dir}: no audio files (extensions: {" ".join(AUDIO_EXTENSIONS)})')
    return {'train': self._generate_examples(files, captions)}

  def _generate_examples(self, files: list[Path], captions: dict[str, tuple[str, list[str]]]):
    clip_len = self.clip_seconds
    for path in tqdm(files, desc='folder', unit='file', disable=not self.progress, file=sys.stderr):
      rel = path.relative_to(self.source_dir).as_posix()
      caption, aspects = captions.get(rel, ('', []))
      written, silent = 0, []
      try:
        for index, start_s, wav in iter_file_clips(path, clip_seconds=clip_len):
          problem = clip_problem(wav, min_samples=int(np.ceil(clip_len * SAMPLE_RATE / 2)))
          if problem is not None and problem.startswith('too short') and index > 0:
            continue  # the dropped short tail of a longer file
          if problem is not None and problem.startswith('silent'):
            silent.append(index)
            continue
          if problem is not None:
            raise ClipError(problem)
          seconds = wav.size / SAMPLE_RATE
          written += 1
          self._clips += 1
          self._seconds += seconds
          yield f'{rel}#{index}', {
              'audio': to_int16(wav), 'caption': caption, 'aspects': aspects, 'path': rel,
              'clip_index': index, 'start_s': start_s, 'end_s': start_s + seconds,
          }
      except ClipError as e:
        self._skips.add(rel, e.reason)
        continue
      except Exception as e:  # pylint: disable=broad-except
        self._skips.add(rel, f'unreadable: {type(e).__name__}: {e}')
        continue
      if not written:
        self._skips.add(rel, f'silent: every clip is below {SILENCE_DB:g} dBFS RMS')
        continue
      self._files += 1
      for index in silent:
        self._skips.add(f'{rel}#{index}', f'silent: clip {index} is below {SILENCE_DB:g} dBFS RMS')
