"""Codec quality metrics on numpy audio: SI-SNR, pitch/rhythm similarity, buzz, codebook usage.

`musiclm_jax.codec.evaluate` reports them per system; each takes references and estimates
[B, N] (or codes) and returns one value per clip (or per RVQ level). `make_metric_fn` jits the
training losses' mel and multi-resolution STFT distances; `make_visqol` wraps the optional
`visqol-python` package.
"""

from collections.abc import Callable

import jax
import numpy as np

from musiclm_jax import audio as audio_lib
from musiclm_jax.codec import losses as losses_lib

VisqolFn = Callable[[np.ndarray, np.ndarray, int], float]


def si_snr(ref: np.ndarray, est: np.ndarray, eps: float = 1e-8) -> np.ndarray:
  """Scale-invariant SNR in dB over the last axis; NaN where `est` is silent (undefined).

  SI-SNR = 10 log10(|s|^2 / |e|^2), s = <est, ref> ref / |ref|^2, e = est - s, both zero-mean.
  """
  ref = np.asarray(ref, np.float64)
  est = np.asarray(est, np.float64)
  ref = ref - ref.mean(axis=-1, keepdims=True)
  est = est - est.mean(axis=-1, keepdims=True)
  alpha = np.sum(est * ref, axis=-1, keepdims=True) / (np.sum(ref * ref, axis=-1, keepdims=True)
                                                       + eps)
  target = alpha * ref
  noise = est - target
  out = 10 * np.log10((np.sum(target**2, axis=-1) + eps) / (np.sum(noise**2, axis=-1) + eps))
  silent = np.sum(est * est, axis=-1) <= eps
  return np.where(silent, np.nan, out)


def codebook_usage(codes: np.ndarray, codebook_size: int) -> list[dict[str, float]]:
  """Per level of codes [frames, L]: perplexity (exp entropy), used and dead (never used) codes."""
  out = []
  for level in range(codes.shape[-1]):
    counts = np.bincount(codes[:, level].astype(np.int64), minlength=codebook_size)
    p = counts[counts > 0] / max(counts.sum(), 1)
    used = int(np.count_nonzero(counts))
    out.append({'level': level + 1, 'perplexity': float(np.exp(-np.sum(p * np.log(p)))),
                'used_codes': used, 'dead_codes': codebook_size - used})
  return out


def make_metric_fn(sample_rate: int, loss_config: losses_lib.LossConfig):
  """Jitted (x [B, N], y [B, N]) -> (mel distance [B], multi-resolution STFT distance [B])."""
  n_fft, hop, n_mels = loss_config.metric_mel

  def one(x, y):  # [N], [N]
    mel = losses_lib.mel_distance(x[None], y[None], sample_rate=sample_rate, n_fft=n_fft,
                                  hop=hop, n_mels=n_mels)
    stft = losses_lib.multi_resolution_stft_loss(
        x[None], y[None], resolutions=loss_config.stft_resolutions,
        log_floor=loss_config.log_floor)
    return mel, stft

  return jax.jit(jax.vmap(one))


def _power_frames(x: np.ndarray, n_fft: int, hop: int) -> np.ndarray:
  """|STFT|^2 of x [B, N] (centered, periodic Hann) -> [B, T, n_fft // 2 + 1] float32."""
  x = np.pad(np.asarray(x, np.float32), ((0, 0), (n_fft // 2, n_fft // 2)))
  frames = np.lib.stride_tricks.sliding_window_view(x, n_fft, axis=-1)[:, ::hop]  # [B, T, n_fft]
  window = np.hanning(n_fft + 1)[:-1].astype(np.float32)
  return np.square(np.abs(np.fft.rfft(frames * window, axis=-1))).astype(np.float32)


def music_similarity(x: np.ndarray, y: np.ndarray, sample_rate: int
                     ) -> tuple[np.ndarray, np.ndarray]:
  """Pitch and rhythm agreement of estimates y with references x ([B, N] each).

  Returns:
    (chroma similarity [B]: mean over the reference's non-silent 20 ms frames of the cosine
     between 12-bin chroma vectors, 0 for a silent estimate; onset correlation [B]: Pearson
     correlation of the 10 ms onset-strength envelopes (positive log-mel flux), NaN when an
     envelope is constant, e.g. for silence).
  """
  import librosa  # pylint: disable=g-import-not-at-top  (numpy filters only)
  fb = librosa.filters.chroma(sr=sample_rate, n_fft=4096).T  # [F, 12]
  cx, cy = _power_frames(x, 4096, 480) @ fb, _power_frames(y, 4096, 480) @ fb  # [B, T, 12]
  nx, ny = np.linalg.norm(cx, axis=-1), np.linalg.norm(cy, axis=-1)  # [B, T]
  cos = np.sum(cx * cy, axis=-1) / (nx * ny + 1e-12)
  active = nx > 1e-3 * nx.max(axis=-1, keepdims=True)
  chroma = np.sum(cos * active, axis=-1) / np.maximum(active.sum(axis=-1), 1)
  mel = audio_lib.mel_filterbank(audio_lib.MelConfig(sample_rate=sample_rate, n_fft=1024,
                                                     n_mels=64))  # [F, 64]

  def onset(w):  # [B, N] -> [B, T - 1]
    logmel = np.log(_power_frames(w, 1024, 240) @ mel + 1e-5)
    return np.maximum(np.diff(logmel, axis=1), 0).mean(axis=-1)

  ox, oy = onset(x), onset(y)
  ox, oy = ox - ox.mean(-1, keepdims=True), oy - oy.mean(-1, keepdims=True)
  sx, sy = np.linalg.norm(ox, axis=-1), np.linalg.norm(oy, axis=-1)
  with np.errstate(invalid='ignore', divide='ignore'):
    corr = np.where((sx > 1e-9) & (sy > 1e-9), np.sum(ox * oy, axis=-1) / (sx * sy), np.nan)
  return chroma, corr


def harmonic_share(wav: np.ndarray, sample_rate: int, f0: float, *, band=(100.0, 4000.0),
                   tolerance_hz: float = 1.0) -> np.ndarray:
  """Share of the `band` power of wav [B, N] within `tolerance_hz` of a multiple of `f0`.

  With f0 = the codec frame rate this exposes a decoder that buzzes at the frame rate instead
  of reproducing pitch: music and noise give a few percent (about 2 * tolerance / f0).
  """
  power = np.square(np.abs(np.fft.rfft(np.asarray(wav, np.float32), axis=-1)))  # [B, F]
  freqs = np.fft.rfftfreq(wav.shape[-1], 1.0 / sample_rate)
  inside = (freqs >= band[0]) & (freqs <= band[1])
  near = inside & (np.abs(freqs - f0 * np.round(freqs / f0)) <= tolerance_hz)
  with np.errstate(invalid='ignore', divide='ignore'):
    return power[:, near].sum(-1) / power[:, inside].sum(-1)  # NaN for silence


def make_visqol() -> VisqolFn:
  """ViSQOL v3 audio mode from the `visqol-python` package; ImportError when it is missing."""
  from visqol import VisqolApi  # pylint: disable=g-import-not-at-top
  api = VisqolApi()
  api.create(mode='audio')

  def score(ref: np.ndarray, deg: np.ndarray, sample_rate: int) -> float:
    ref48 = audio_lib.resample(np.asarray(ref, np.float32), sample_rate, 48000)
    deg48 = audio_lib.resample(np.asarray(deg, np.float32), sample_rate, 48000)
    return float(api.measure_from_arrays(ref48.astype(np.float64), deg48.astype(np.float64),
                                         48000).moslqo)

  return score
