"""Audio I/O and the JAX log-mel front-end.

Everything audio enters the project through `load_audio`, which reads wav/flac/ogg/mp3 (and the
other formats libsndfile knows) with soundfile, reads only the frames it needs, downmixes,
resamples with soxr and normalizes. Bad input raises `AudioError`, whose message is one line
`"<path>: <reason>"`. `write_wav` is atomic.

The front-end (`stft`, `melspectrogram`, `log_mel`) is pure JAX, jit/vmap friendly, and matches
`librosa.stft` / `librosa.feature.melspectrogram` (periodic Hann window, zero "constant" center
padding, slaney mel scale and norm) to float32 precision. librosa is not imported here.
"""

from __future__ import annotations

import dataclasses
import functools
import math
import os
import tempfile
from collections.abc import Iterable, Iterator
from typing import Literal

import jax
import jax.numpy as jnp
import numpy as np
import soundfile as sf
import soxr

SAMPLE_RATE = 24000

# Extension -> libsndfile major format name; only formats this libsndfile can read are used.
_EXTENSION_FORMATS = {
    '.wav': 'WAV', '.wave': 'WAV', '.flac': 'FLAC', '.ogg': 'OGG', '.oga': 'OGG',
    '.opus': 'OGG', '.mp3': 'MP3', '.aif': 'AIFF', '.aiff': 'AIFF', '.aifc': 'AIFF',
    '.au': 'AU', '.caf': 'CAF', '.w64': 'W64', '.rf64': 'RF64',
}
_AVAILABLE = set(sf.available_formats())
SUPPORTED_EXTENSIONS = tuple(sorted(e for e, f in _EXTENSION_FORMATS.items() if f in _AVAILABLE))
_MP3_PREROLL_FRAMES = 8 * 1152  # ~3 MPEG frames decode wrong right after a seek


class AudioError(ValueError):
  """Bad audio input; the message is one line `"<path>: <reason>"`."""

  def __init__(self, path: str | os.PathLike, reason: str):
    self.path = os.fspath(path)
    self.reason = ' '.join(str(reason).split())  # one line
    super().__init__(f'{self.path}: {self.reason}')

  def __reduce__(self):  # picklable across worker processes
    return type(self), (self.path, self.reason)


# ----------------------------------------------------------------------------- numpy helpers


def to_mono(wav: np.ndarray) -> np.ndarray:
  """Averages channels: [C, N] -> [N]; [N] is returned as float32."""
  wav = np.asarray(wav, dtype=np.float32)
  return wav.mean(axis=0, dtype=np.float32) if wav.ndim == 2 else wav


def resample(wav: np.ndarray, orig_sr: float, target_sr: float) -> np.ndarray:
  """Resamples [N] or [C, N] audio with soxr (high quality); returns float32."""
  if orig_sr <= 0 or target_sr <= 0:
    raise ValueError(f'sample rates must be positive, got {orig_sr} -> {target_sr}')
  wav = np.asarray(wav, dtype=np.float32)
  if orig_sr == target_sr:
    return wav.copy()
  if wav.ndim == 1:
    return soxr.resample(wav, orig_sr, target_sr, quality='HQ').astype(np.float32, copy=False)
  if wav.ndim != 2:
    raise ValueError(f'expected [N] or [C, N] audio, got shape {wav.shape}')
  out = soxr.resample(np.ascontiguousarray(wav.T), orig_sr, target_sr, quality='HQ')  # [N', C]
  return np.ascontiguousarray(out.T, dtype=np.float32)


def normalize_peak(wav: np.ndarray, peak: float = 0.95) -> np.ndarray:
  """Scales so that max |sample| == peak; all-zero audio is returned unchanged."""
  wav = np.asarray(wav, dtype=np.float32)
  current = float(np.max(np.abs(wav))) if wav.size else 0.0
  return wav * np.float32(peak / current) if current > 0 else wav.copy()


def normalize_rms(wav: np.ndarray, target_db: float = -20.0) -> np.ndarray:
  """Scales so that the RMS level is `target_db` dBFS (may exceed [-1, 1]); silence unchanged."""
  wav = np.asarray(wav, dtype=np.float32)
  rms = float(np.sqrt(np.mean(np.square(wav, dtype=np.float64)))) if wav.size else 0.0
  return wav * np.float32(10.0 ** (target_db / 20.0) / rms) if rms > 0 else wav.copy()


def is_silent(wav: np.ndarray, threshold_db: float = -60.0) -> bool:
  """True when the RMS level (dBFS) of `wav` is below `threshold_db` (or it is empty)."""
  wav = np.asarray(wav)
  if not wav.size:
    return True
  rms = float(np.sqrt(np.mean(np.square(wav, dtype=np.float64))))
  return rms <= 0 or 20.0 * math.log10(rms) < threshold_db


def crop_or_pad(wav: np.ndarray, num_samples: int, *, start: int | None = None,
                rng: np.random.Generator | int | None = None) -> np.ndarray:
  """Crops or zero-pads the last axis of [N] or [C, N] audio to `num_samples`.

  Args:
    wav: audio, [N] or [C, N].
    num_samples: output length.
    start: crop start; wins over `rng`.
    rng: a numpy Generator or an int seed; gives a uniformly random crop start. Without `start`
      and `rng` the crop is left-aligned. Short input is zero-padded at the end.

  Returns:
    float32 array [..., num_samples].
  """
  wav = np.asarray(wav, dtype=np.float32)
  length = wav.shape[-1]
  if num_samples < 0:
    raise ValueError(f'num_samples must be >= 0, got {num_samples}')
  if length < num_samples:
    pad = [(0, 0)] * (wav.ndim - 1) + [(0, num_samples - length)]
    return np.pad(wav, pad)
  max_start = length - num_samples
  if start is None:
    start = int(np.random.default_rng(rng).integers(0, max_start + 1)) if rng is not None else 0
  if not 0 <= start <= max_start:
    raise ValueError(f'start {start} outside [0, {max_start}]')
  return wav[..., start:start + num_samples].copy()


# ----------------------------------------------------------------------------- file I/O


def _open_reason(path: str, err: Exception) -> str:
  if isinstance(err, sf.LibsndfileError):
    detail = err.error_string.strip().rstrip('.')
  else:
    detail = str(err).strip() or type(err).__name__
  try:
    with open(path, 'rb') as f:
      head = f.read(512)
    looks_text = head and all(b in b'\t\n\r' or 32 <= b < 127 for b in head)
  except OSError:
    looks_text = False
  if looks_text:
    return f'not audio (looks like a text file; {detail})'
  return f'corrupt or not audio ({detail})'


def load_audio(
    path: str | os.PathLike,
    *,
    sample_rate: int = SAMPLE_RATE,
    mono: bool = True,
    normalize: Literal['peak', 'rms'] | None = None,
    offset_s: float = 0.0,
    duration_s: float | None = None,
    min_duration_s: float = 0.0,
    max_duration_s: float | None = None,
) -> np.ndarray:
  """Reads an audio file as float32, resampled to `sample_rate`.

  Only the frames of [offset_s, offset_s + duration_s) are decoded (plus a few ms of context so
  the resampler has no edge effects), so cutting 10 s from an hour-long file is cheap.

  Args:
    path: audio file (wav/flac/ogg/mp3/aiff/...; see `SUPPORTED_EXTENSIONS`).
    sample_rate: output rate.
    mono: average channels to [N]; otherwise return [C, N].
    normalize: None, 'peak' (`normalize_peak`) or 'rms' (`normalize_rms`); silence is left as is.
    offset_s: start of the segment, seconds.
    duration_s: segment length, seconds (None: to the end). A segment that runs past the end of
      the file is returned shorter.
    min_duration_s: the returned segment must be at least this long, else AudioError.
    max_duration_s: the whole file (as stored) must be at most this long, else AudioError; checked
      from the header before decoding, so huge files cost nothing.

  Returns:
    float32 [N] if mono else [C, N].

  Raises:
    AudioError: missing, empty, corrupt, non-audio, unsupported, NaN/Inf, too short or too long.
    ValueError: invalid arguments.
  """
  path = os.fspath(path)
  if normalize not in (None, 'peak', 'rms'):
    raise ValueError(f"normalize must be None, 'peak' or 'rms', got {normalize!r}")
  if offset_s < 0 or (duration_s is not None and duration_s <= 0) or sample_rate <= 0:
    raise ValueError(f'need offset_s >= 0, duration_s > 0, sample_rate > 0; got {offset_s}, '
                     f'{duration_s}, {sample_rate}')
  ext = os.path.splitext(path)[1].lower()
  if ext not in SUPPORTED_EXTENSIONS:
    raise AudioError(path, f"unsupported format '{ext or '(no extension)'}' "
                     f"(supported: {' '.join(SUPPORTED_EXTENSIONS)})")
  if not os.path.isfile(path):
    raise AudioError(path, 'file not found' if not os.path.exists(path) else 'not a file')
  if os.path.getsize(path) == 0:
    raise AudioError(path, 'empty file (0 bytes)')
  try:
    with sf.SoundFile(path) as f:
      file_sr, channels, frames = f.samplerate, f.channels, f.frames
      if file_sr <= 0 or channels <= 0:
        raise AudioError(path, f'invalid header ({file_sr} Hz, {channels} channels)')
      if frames <= 0:
        raise AudioError(path, 'zero-length audio (0 frames)')
      total_s = frames / file_sr
      if max_duration_s is not None and total_s > max_duration_s:
        raise AudioError(path, f'too long ({total_s:.3f} s > max {max_duration_s} s)')
      start = int(round(offset_s * file_sr))
      if start >= frames:
        raise AudioError(path, f'offset {offset_s} s is past the end ({total_s:.3f} s)')
      stop = frames if duration_s is None else min(frames, start + int(round(duration_s * file_sr)))
      # Resampler context: `pre` input frames map to an integer number of output samples.
      pre = post = 0
      if file_sr != sample_rate:
        step = file_sr // math.gcd(file_sr, int(sample_rate))
        if step <= file_sr // 5 and float(sample_rate).is_integer():
          pre = min(start, max(step, file_sr // 20)) // step * step
        post = min(frames - stop, file_sr // 20)
      # After a seek, MP3 decoders need a few frames to rebuild their state: decode and drop them.
      preroll = min(start - pre, _MP3_PREROLL_FRAMES) if f.format == 'MP3' else 0
      first = start - pre - preroll
      if first > 0:
        f.seek(first)
      data = f.read(frames=stop + post - first, dtype='float32', always_2d=True)  # [n, C]
      data = data[preroll:]  # starts at frame start - pre
  except AudioError:
    raise
  except (sf.SoundFileError, RuntimeError, OSError, ValueError, EOFError, MemoryError) as e:
    raise AudioError(path, _open_reason(path, e)) from e
  if data.shape[0] == 0:
    raise AudioError(path, 'no audio samples could be decoded')
  bad = int(np.size(data) - np.count_nonzero(np.isfinite(data)))
  if bad:
    raise AudioError(path, f'contains {bad} NaN/Inf sample(s)')
  wav = np.ascontiguousarray(data.T)  # [C, n]
  if mono:
    wav = to_mono(wav)  # [n]
  if file_sr != sample_rate:
    wav = resample(wav, file_sr, sample_rate)
    seg_frames = min(stop, start - pre + data.shape[0]) - start  # frames actually decoded
    first = pre * int(sample_rate) // file_sr
    wav = wav[..., first:first + int(round(seg_frames * sample_rate / file_sr))]
  else:
    wav = wav[..., :max(0, stop - start)]
  if not wav.shape[-1]:
    raise AudioError(path, 'no audio samples could be decoded')
  got_s = wav.shape[-1] / sample_rate
  if got_s < min_duration_s:
    raise AudioError(path, f'too short ({got_s:.3f} s < min {min_duration_s} s)')
  if normalize == 'peak':
    wav = normalize_peak(wav)
  elif normalize == 'rms':
    wav = normalize_rms(wav)
  return np.ascontiguousarray(wav, dtype=np.float32)


def write_wav(path: str | os.PathLike, wav: np.ndarray, *, sample_rate: int = SAMPLE_RATE,
              subtype: str = 'PCM_16') -> None:
  """Writes [N] or [C, N] audio atomically (temp file in the same folder, then `os.replace`).

  Samples are clipped to [-1, 1]. The container follows the extension: `.flac` writes FLAC, any
  other name WAV. Parent folders are created.

  Raises:
    ValueError: wrong shape or NaN/Inf samples (nothing is written).
  """
  path = os.fspath(path)
  wav = np.asarray(wav, dtype=np.float32)
  if wav.ndim not in (1, 2):
    raise ValueError(f'{path}: expected [N] or [C, N] audio, got shape {wav.shape}')
  if not np.isfinite(wav).all():
    raise ValueError(f'{path}: refusing to write NaN/Inf samples')
  data = np.clip(wav if wav.ndim == 1 else wav.T, -1.0, 1.0)  # [N] or [N, C]
  fmt = 'FLAC' if path.lower().endswith('.flac') else 'WAV'
  folder = os.path.dirname(os.path.abspath(path))
  os.makedirs(folder, exist_ok=True)
  fd, tmp = tempfile.mkstemp(dir=folder, prefix=f'.{os.path.basename(path)}.', suffix='.tmp')
  try:
    with os.fdopen(fd, 'wb') as fh:
      sf.write(fh, data, int(sample_rate), subtype=subtype, format=fmt)
      fh.flush()
      os.fsync(fh.fileno())
    os.chmod(tmp, 0o644)
    os.replace(tmp, path)
  except BaseException:
    if os.path.exists(tmp):
      os.unlink(tmp)
    raise


# ----------------------------------------------------------------------------- JAX front-end


@dataclasses.dataclass(frozen=True)
class MelConfig:
  """Log-mel settings; hashable so it can be a static jit argument. Defaults: 100 Hz frames."""
  sample_rate: int = 24000
  n_fft: int = 1024
  win_length: int | None = None
  hop_length: int = 240
  n_mels: int = 128
  fmin: float = 0.0
  fmax: float | None = None
  power: float = 2.0
  center: bool = True
  log_floor: float = 1e-5
  htk: bool = False
  norm: str | float | None = 'slaney'
  # 'fft': jnp.fft (cheapest on one device). 'dft': the same transform as one matmul with a
  # DFT basis, which partitions along a sharded batch (XLA all-gathers an FFT's input) and
  # avoids XLA:CPU's FFT thunk, which can deadlock when several FFTs run at once (jax 0.11).
  transform: str = 'fft'

  def __post_init__(self):
    fmax = self.sample_rate / 2 if self.fmax is None else self.fmax
    win = self.n_fft if self.win_length is None else self.win_length
    if min(self.sample_rate, self.n_fft, self.hop_length, self.n_mels, win) <= 0:
      raise ValueError(f'MelConfig sizes must be positive: {self}')
    if win > self.n_fft:
      raise ValueError(f'win_length {win} > n_fft {self.n_fft}')
    if not 0 <= self.fmin < fmax:
      raise ValueError(f'need 0 <= fmin < fmax, got {self.fmin}, {fmax}')
    if self.power <= 0 or self.log_floor <= 0:
      raise ValueError(f'power and log_floor must be positive: {self}')
    if isinstance(self.norm, str) and self.norm != 'slaney':
      raise ValueError(f"norm must be 'slaney', None or a number, got {self.norm!r}")
    if self.transform not in ('fft', 'dft'):
      raise ValueError(f"transform must be 'fft' or 'dft', got {self.transform!r}")


def _hz_to_mel(hz: np.ndarray, htk: bool) -> np.ndarray:
  hz = np.asarray(hz, dtype=np.float64)
  if htk:
    return 2595.0 * np.log10(1.0 + hz / 700.0)
  f_sp, min_log_hz = 200.0 / 3, 1000.0
  logstep = np.log(6.4) / 27.0
  lin = hz / f_sp
  log = min_log_hz / f_sp + np.log(np.maximum(hz, 1e-10) / min_log_hz) / logstep
  return np.where(hz >= min_log_hz, log, lin)


def _mel_to_hz(mel: np.ndarray, htk: bool) -> np.ndarray:
  mel = np.asarray(mel, dtype=np.float64)
  if htk:
    return 700.0 * (10.0 ** (mel / 2595.0) - 1.0)
  f_sp, min_log_hz = 200.0 / 3, 1000.0
  min_log_mel, logstep = min_log_hz / f_sp, np.log(6.4) / 27.0
  return np.where(mel >= min_log_mel, min_log_hz * np.exp(logstep * (mel - min_log_mel)),
                  f_sp * mel)


@functools.lru_cache(maxsize=32)
def _mel_filterbank(sr, n_fft, n_mels, fmin, fmax, htk, norm) -> np.ndarray:
  fftfreqs = np.fft.rfftfreq(n_fft, d=1.0 / sr)  # [F]
  mel_f = _mel_to_hz(np.linspace(_hz_to_mel(fmin, htk), _hz_to_mel(fmax, htk), n_mels + 2), htk)
  fdiff = np.diff(mel_f)  # [n_mels + 1]
  ramps = mel_f[:, None] - fftfreqs[None, :]  # [n_mels + 2, F]
  lower = -ramps[:-2] / fdiff[:-1, None]
  upper = ramps[2:] / fdiff[1:, None]
  weights = np.maximum(0.0, np.minimum(lower, upper)).astype(np.float32)  # [n_mels, F]
  if norm == 'slaney':
    weights *= (2.0 / (mel_f[2:] - mel_f[:-2]))[:, None]
  elif norm is not None:  # unit l_p norm per filter, as librosa.util.normalize
    mag = np.abs(weights)
    length = mag.max(axis=1) if np.isinf(norm) else np.sum(mag ** norm, axis=1) ** (1.0 / norm)
    length = np.where(length < np.finfo(np.float32).tiny, 1.0, length)
    weights = weights / length[:, None]
  out = np.ascontiguousarray(weights.T, dtype=np.float32)  # [F, n_mels]
  out.flags.writeable = False
  return out


def mel_filterbank(config: MelConfig) -> np.ndarray:
  """Mel filterbank [n_fft // 2 + 1, n_mels] (float32), the transpose of `librosa.filters.mel`."""
  fmax = config.sample_rate / 2 if config.fmax is None else config.fmax
  return _mel_filterbank(config.sample_rate, config.n_fft, config.n_mels, float(config.fmin),
                         float(fmax), config.htk, config.norm).copy()


def _frame_count(num_samples: int, n_fft: int, hop_length: int, center: bool) -> int:
  padded = num_samples + 2 * (n_fft // 2) if center else num_samples
  frames = 1 + (padded - n_fft) // hop_length
  if padded < n_fft or frames < 1:
    raise ValueError(f'{num_samples} samples are too short for n_fft={n_fft} (center={center})')
  return frames


def num_frames(num_samples: int, config: MelConfig) -> int:
  """Number of spectrogram frames `melspectrogram` gives for `num_samples` samples."""
  return _frame_count(num_samples, config.n_fft, config.hop_length, config.center)


def _hann(win_length: int, n_fft: int) -> np.ndarray:
  """Periodic Hann window zero-padded (centered) to n_fft, as librosa's `get_window` + pad."""
  n = np.arange(win_length, dtype=np.float64)
  window = 0.5 - 0.5 * np.cos(2.0 * np.pi * n / win_length)
  lpad = (n_fft - win_length) // 2
  return np.pad(window, (lpad, n_fft - win_length - lpad)).astype(np.float32)


@functools.partial(jax.jit, static_argnames=('n_fft', 'hop_length', 'win_length', 'center'))
def stft(wav: jax.Array, *, n_fft: int, hop_length: int, win_length: int | None = None,
         center: bool = True) -> jax.Array:
  """Short-time Fourier transform matching `librosa.stft` (transposed to time-major).

  Args:
    wav: float audio [..., N] (e.g. [B, N] or [N]).
    n_fft: FFT size.
    hop_length: frame step.
    win_length: Hann window length (<= n_fft; default n_fft), centered in the frame.
    center: zero-pad n_fft // 2 on both sides so frame t is centered on sample t * hop_length.

  Returns:
    complex64 [..., T, n_fft // 2 + 1].
  """
  wav = jnp.asarray(wav, jnp.float32)
  lead, length = wav.shape[:-1], wav.shape[-1]
  num = _frame_count(length, n_fft, hop_length, center)
  if center:
    wav = jnp.pad(wav, [(0, 0)] * len(lead) + [(n_fft // 2, n_fft // 2)])
  # Framing as one slice-gather: T windows of n_fft contiguous samples, hop_length apart.
  starts = jnp.arange(num, dtype=jnp.int32) * hop_length  # [T]
  frames = jax.vmap(lambda s: jax.lax.dynamic_slice_in_dim(wav, s, n_fft, axis=-1),
                    out_axes=len(lead))(starts)  # [..., T, n_fft]
  window = jnp.asarray(_hann(win_length or n_fft, n_fft))  # [n_fft]
  return jnp.fft.rfft(frames * window, n=n_fft, axis=-1).astype(jnp.complex64)  # [..., T, F]


@functools.lru_cache(maxsize=64)
def _dft_basis(n_fft: int, win_length: int) -> np.ndarray:
  """Windowed real-DFT basis float32 [n_fft, 2 * (n_fft // 2 + 1)]: (cos | -sin) * window."""
  k = np.arange(n_fft // 2 + 1, dtype=np.float64)
  phase = 2.0 * np.pi * np.outer(np.arange(n_fft, dtype=np.float64), k) / n_fft  # [n_fft, F]
  window = _hann(win_length, n_fft).astype(np.float64)[:, None]
  return (np.concatenate([np.cos(phase), -np.sin(phase)], axis=1) * window).astype(np.float32)


def _strided_frames(wav: jax.Array, n_fft: int, hop: int, num: int) -> jax.Array:
  """[B, N] -> [B, num, n_fft] frames hop apart (reshaped slices when hop divides n_fft)."""
  batch = wav.shape[0]
  if n_fft % hop == 0:
    r = n_fft // hop
    need = (num + r - 1) * hop
    wav = jnp.pad(wav, ((0, 0), (0, max(0, need - wav.shape[1]))))
    blocks = wav[:, :need].reshape(batch, num + r - 1, hop)
    return jnp.concatenate([blocks[:, i:i + num] for i in range(r)], axis=-1)
  index = np.arange(num)[:, None] * hop + np.arange(n_fft)[None, :]  # [T, n_fft]
  return wav[:, index]


def _four_step_factors(n_fft: int) -> tuple[int, int] | None:
  """n_fft = n1 * n2 with n1 the largest divisor <= sqrt(n_fft), if both are >= 8."""
  n1 = max(d for d in range(1, math.isqrt(n_fft) + 1) if n_fft % d == 0)
  return (n1, n_fft // n1) if n1 >= 8 else None


@functools.lru_cache(maxsize=64)
def _four_step_bases(n1: int, n2: int) -> tuple[np.ndarray, ...]:
  """cos/-sin DFT matrices of sizes n1 and n2 (k2 <= n2 / 2 only) and the twiddles [n1, n2]."""
  def dft(n, kmax):
    phase = 2.0 * np.pi * np.outer(np.arange(n), np.arange(kmax)) / n
    return np.cos(phase).astype(np.float32), (-np.sin(phase)).astype(np.float32)
  c1, s1 = dft(n1, n1)
  c2, s2 = dft(n2, n2 // 2 + 1)
  twiddle = -2.0 * np.pi * np.outer(np.arange(n1), np.arange(n2)) / (n1 * n2)  # [k1, n2]
  return c1, s1, c2, s2, np.cos(twiddle).astype(np.float32), np.sin(twiddle).astype(np.float32)


def _rfft_four_step(frames: jax.Array, n1: int, n2: int, precision) -> tuple[jax.Array, ...]:
  """Real DFT of [..., n1 * n2] frames as two small matmul DFTs and a twiddle (Bailey's
  four-step FFT): O(n (n1 + n2)) instead of O(n^2). Returns (real, imag) [..., n // 2 + 1]."""
  c1, s1, c2, s2, tr, ti = (jnp.asarray(a) for a in _four_step_bases(n1, n2))
  x = frames.reshape(*frames.shape[:-1], n1, n2)  # x[n1, n2] = frame[n2_count * n1 + n2]
  dot = functools.partial(jnp.einsum, precision=precision)
  ar, ai = dot('...ij,ik->...kj', x, c1), dot('...ij,ik->...kj', x, s1)  # [..., k1, n2]
  br, bi = ar * tr - ai * ti, ar * ti + ai * tr  # twiddled
  xr = dot('...kj,jl->...lk', br, c2) - dot('...kj,jl->...lk', bi, s2)  # [..., k2, k1]
  xi = dot('...kj,jl->...lk', br, s2) + dot('...kj,jl->...lk', bi, c2)
  freqs = n1 * n2 // 2 + 1  # bin k = k1 + n1 * k2: flatten (k2, k1)
  return (xr.reshape(*xr.shape[:-2], -1)[..., :freqs],
          xi.reshape(*xi.shape[:-2], -1)[..., :freqs])


def stft_dft(wav: jax.Array, *, n_fft: int, hop_length: int, win_length: int | None = None,
             center: bool = True, precision=None) -> tuple[jax.Array, jax.Array]:
  """`stft` computed with matmuls only (no FFT op).

  Same frames and values as `stft` (to float32 rounding). Used where an FFT is a poor fit:
  batch-sharded programs (a matmul partitions along the batch, an FFT's input is all-gathered),
  TPU matrix units, and XLA:CPU, whose FFT deadlocks when several run at once (jax 0.11; see
  `MelConfig.transform`). Frames of n_fft >= 1024 with a factorisation n1 * n2 (n1, n2 >= 8)
  use the four-step FFT, O(n (n1 + n2)) per frame (measured 1.2x / 1.6x faster than one
  matmul at 1024 / 2048 on CPU, slower below: benchmarks/stft_transforms.py); others one
  DFT-basis matmul, O(n^2).

  Args:
    wav: float audio [B, N].
    n_fft, hop_length, win_length, center: as `stft`.
    precision: matmul precision (None: backend default; HIGHEST for librosa-exact features).

  Returns:
    (real, imag), each float32 [B, T, n_fft // 2 + 1].
  """
  wav = jnp.asarray(wav, jnp.float32)
  num = _frame_count(wav.shape[-1], n_fft, hop_length, center)
  if center:
    wav = jnp.pad(wav, ((0, 0), (n_fft // 2, n_fft // 2)))
  frames = _strided_frames(wav, n_fft, hop_length, num)  # [B, T, n_fft]
  factors = _four_step_factors(n_fft) if n_fft >= 1024 else None
  if factors:
    window = jnp.asarray(_hann(win_length or n_fft, n_fft))
    return _rfft_four_step(frames * window, *factors, precision)
  out = jnp.matmul(frames, jnp.asarray(_dft_basis(n_fft, win_length or n_fft)),
                   precision=precision)  # [B, T, 2F]
  freqs = n_fft // 2 + 1
  return out[..., :freqs], out[..., freqs:]


@functools.partial(jax.jit, static_argnames=('config',))
def melspectrogram(wav: jax.Array, config: MelConfig) -> jax.Array:
  """Mel spectrogram |STFT|^power @ mel, matching `librosa.feature.melspectrogram` (transposed).

  Args:
    wav: float audio [B, N] or [N] at `config.sample_rate`.
    config: MelConfig (static).

  Returns:
    float32 [B, T, n_mels] (or [T, n_mels]).
  """
  if config.transform == 'dft':
    lead = wav.shape[:-1]
    real, imag = stft_dft(wav.reshape(-1, wav.shape[-1]), n_fft=config.n_fft,
                          hop_length=config.hop_length, win_length=config.win_length,
                          center=config.center, precision=jax.lax.Precision.HIGHEST)
    real, imag = (x.reshape(*lead, *x.shape[1:]) for x in (real, imag))
  else:
    spec = stft(wav, n_fft=config.n_fft, hop_length=config.hop_length,
                win_length=config.win_length, center=config.center)  # [..., T, F]
    real, imag = spec.real, spec.imag
  power = jnp.square(real) + jnp.square(imag)  # |X|^2
  if config.power != 2.0:
    power = power ** (config.power / 2.0)
  fb = jnp.asarray(mel_filterbank(config))  # [F, n_mels]
  return jnp.matmul(power, fb, precision=jax.lax.Precision.HIGHEST)  # [..., T, n_mels]


@functools.partial(jax.jit, static_argnames=('config',))
def log_mel(wav: jax.Array, config: MelConfig) -> jax.Array:
  """log(max(melspectrogram, log_floor)): float32 [B, T, n_mels] (or [T, n_mels])."""
  return jnp.log(jnp.maximum(melspectrogram(wav, config), config.log_floor))


def equal_length_batches(clips: Iterable[np.ndarray], batch_size: int) -> Iterator[np.ndarray]:
  """Stacks streamed clips into batches of at most `batch_size` equal-shape clips, in order (a
  batch ends where the shape changes), so an embedder compiles once per clip length."""
  pending: list[np.ndarray] = []
  for clip in clips:
    if pending and (len(pending) == batch_size or pending[0].shape != clip.shape):
      yield np.stack(pending)
      pending = []
    pending.append(clip)
  if pending:
    yield np.stack(pending)
