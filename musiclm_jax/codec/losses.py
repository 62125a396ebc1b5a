"""SoundStream losses: hinge adversarial, feature matching, multi-scale mel and multi-resolution STFT.

Reconstruction follows SoundStream (Zeghidour et al. 2021, eq. 3) with means instead of sums
so the value does not grow with the clip length:

  mel(s)  = mean_{t,f} |M_s(x) - M_s(y)| + sqrt(s / 2) * mean_t RMS_f(log M_s(x) - log M_s(y))
  L_mel   = mean over windows s of mel(s)

where M_s is a `n_mels`-band magnitude mel spectrogram with window s and hop s / 4.
Spectra come from `stft` below (a DFT-basis convolution) rather than an FFT.
"""

import dataclasses
import functools

import jax
import jax.numpy as jnp

from musiclm_jax import audio

Output = tuple[jax.Array, list[jax.Array]]


@dataclasses.dataclass(frozen=True, kw_only=True)
class LossConfig:
  """Generator loss weights and reconstruction settings.

  Attributes:
    adversarial_weight: hinge generator loss weight (SoundStream lambda_adv = 1).
    feature_weight: feature-matching weight (SoundStream lambda_feat = 100).
    mel_weight: multi-scale mel reconstruction weight (SoundStream lambda_rec = 1).
    stft_weight: multi-resolution STFT (spectral convergence + log magnitude) weight.
    commitment_weight: RVQ commitment loss weight.
    adversarial_start_step: adversarial and feature losses (and the discriminator update)
      are off before this step, so the codec first learns to reconstruct.
    mel_windows: windows of the multi-scale mel loss.
    mel_bins: mel bands per scale (capped at window // 4 for small windows).
    stft_resolutions: (n_fft, hop, win) of the multi-resolution STFT loss.
    log_floor: floor added inside the log of spectra.
    metric_mel: (n_fft, hop, n_mels) of the log-mel distance metric.
  """
  adversarial_weight: float = 1.0
  feature_weight: float = 100.0
  mel_weight: float = 1.0
  stft_weight: float = 0.0
  commitment_weight: float = 1.0
  adversarial_start_step: int = 0
  mel_windows: tuple[int, ...] = (64, 128, 256, 512, 1024, 2048)
  mel_bins: int = 64
  stft_resolutions: tuple[tuple[int, int, int], ...] = (
      (2048, 512, 2048), (1024, 256, 1024), (512, 128, 512))
  log_floor: float = 1e-5
  metric_mel: tuple[int, int, int] = (1024, 240, 80)


def hinge_discriminator_loss(real: list[Output], fake: list[Output]) -> jax.Array:
  """mean_k [ mean relu(1 - D_k(x)) + mean relu(1 + D_k(y)) ]."""
  terms = [jnp.mean(jax.nn.relu(1.0 - r[0].astype(jnp.float32)))
           + jnp.mean(jax.nn.relu(1.0 + f[0].astype(jnp.float32))) for r, f in zip(real, fake)]
  return sum(terms) / len(terms)


def hinge_generator_loss(fake: list[Output]) -> jax.Array:
  """mean_k mean relu(1 - D_k(y)) (SoundStream's generator hinge)."""
  terms = [jnp.mean(jax.nn.relu(1.0 - f[0].astype(jnp.float32))) for f in fake]
  return sum(terms) / len(terms)


def feature_matching_loss(real: list[Output], fake: list[Output]) -> jax.Array:
  """Mean over discriminators and layers of mean |D_k^l(x) - D_k^l(y)|; real features are constants."""
  terms = []
  for (_, real_feats), (_, fake_feats) in zip(real, fake):
    for r, f in zip(real_feats, fake_feats):
      terms.append(jnp.mean(jnp.abs(jax.lax.stop_gradient(r).astype(jnp.float32)
                                    - f.astype(jnp.float32))))
  return sum(terms) / len(terms)


def stft(wav: jax.Array, *, n_fft: int, hop: int, win: int | None = None
         ) -> tuple[jax.Array, jax.Array]:
  """Centred STFT by matmuls (`audio.stft_dft`): (real, imag), each float32 [B, T, F].

  Matmuls run on TPU/GPU matrix units, partition along a sharded batch (an FFT's input is
  all-gathered) and avoid XLA:CPU's FFT thunk, which deadlocks when several FFTs run at once
  (jax 0.11 on 2 cores).
  """
  return audio.stft_dft(wav, n_fft=n_fft, hop_length=hop, win_length=win)


def _magnitude(wav: jax.Array, n_fft: int, hop: int, win: int) -> jax.Array:
  """|STFT| with a gradient that stays finite at 0. [B, N] -> [B, T, F]."""
  real, imag = stft(wav, n_fft=n_fft, hop=hop, win=win)
  return jnp.sqrt(jnp.square(real) + jnp.square(imag) + 1e-9)


@functools.lru_cache(maxsize=64)
def _mel_config(sample_rate: int, window: int, n_mels: int) -> audio.MelConfig:
  return audio.MelConfig(sample_rate=sample_rate, n_fft=window, hop_length=window // 4,
                         n_mels=min(n_mels, window // 4), power=1.0)


def multi_scale_mel_loss(x: jax.Array, y: jax.Array, *, sample_rate: int,
                         windows: tuple[int, ...], n_mels: int, log_floor: float) -> jax.Array:
  """SoundStream's multi-scale spectral loss (module docstring). x, y: [B, N]. Returns scalar."""
  x = x.astype(jnp.float32)
  y = y.astype(jnp.float32)
  total = 0.0
  for s in windows:
    cfg = _mel_config(sample_rate, s, n_mels)
    fb = jnp.asarray(audio.mel_filterbank(cfg))  # [F, n_mels]
    mx = _magnitude(x, s, s // 4, s) @ fb  # [B, T, n_mels]
    my = _magnitude(y, s, s // 4, s) @ fb
    l1 = jnp.mean(jnp.abs(mx - my))
    dlog = jnp.log(mx + log_floor) - jnp.log(my + log_floor)
    l2 = jnp.mean(jnp.sqrt(jnp.mean(jnp.square(dlog), axis=-1) + 1e-8))
    total += l1 + (s / 2) ** 0.5 * l2
  return total / len(windows)


def multi_resolution_stft_loss(x: jax.Array, y: jax.Array, *,
                               resolutions: tuple[tuple[int, int, int], ...],
                               log_floor: float) -> jax.Array:
  """Parallel WaveGAN STFT loss: mean over resolutions of spectral convergence + log-|STFT| L1."""
  x = x.astype(jnp.float32)
  y = y.astype(jnp.float32)
  total = 0.0
  for n_fft, hop, win in resolutions:
    sx = _magnitude(x, n_fft, hop, win)
    sy = _magnitude(y, n_fft, hop, win)
    sc = jnp.sqrt(jnp.sum(jnp.square(sx - sy)) + 1e-9) / jnp.sqrt(jnp.sum(jnp.square(sx)) + 1e-9)
    mag = jnp.mean(jnp.abs(jnp.log(sx + log_floor) - jnp.log(sy + log_floor)))
    total += sc + mag
  return total / len(resolutions)


def mel_distance(x: jax.Array, y: jax.Array, *, sample_rate: int, n_fft: int, hop: int,
                 n_mels: int) -> jax.Array:
  """Metric: mean |log-mel(x) - log-mel(y)| (natural log of the power mel, floor 1e-5),
  the `musiclm_jax.audio.log_mel` features for MelConfig(n_fft, hop, n_mels)."""
  cfg = audio.MelConfig(sample_rate=sample_rate, n_fft=n_fft, hop_length=hop, n_mels=n_mels)
  fb = jnp.asarray(audio.mel_filterbank(cfg))  # [F, n_mels]

  def log_mel(wav):
    real, imag = stft(jax.lax.stop_gradient(wav), n_fft=n_fft, hop=hop)
    mel = jnp.matmul(jnp.square(real) + jnp.square(imag), fb,
                     precision=jax.lax.Precision.HIGHEST)
    return jnp.log(jnp.maximum(mel, cfg.log_floor))

  return jnp.mean(jnp.abs(log_mel(x) - log_mel(y)))
