"""Benchmark: JAX log-mel front-end vs librosa on CPU.

Computes log-mel spectrograms (default `MelConfig`: 24 kHz, n_fft 1024, hop 240, 128 mels) of a
batch of 16 x 10 s clips with the jitted, warmed-up `musiclm_jax.audio.log_mel` and with
`librosa.feature.melspectrogram` + log, repeats each a few times, and prints one JSON line with
the medians (runs interleaved), the speedup and the maximum relative error of the mel power.

Usage (on CPU; expected cost ~30 s on 2 cores):
  JAX_PLATFORMS=cpu .venv/bin/python -m benchmarks.frontend
"""

import argparse
import json
import statistics
import time

import jax
import librosa
import numpy as np

from musiclm_jax import audio


def _interleaved_medians(fns, repeats: int) -> list[float]:
  """Median wall time of each fn; runs alternate so both see the same machine load."""
  times = [[] for _ in fns]
  for _ in range(repeats):
    for fn, out in zip(fns, times):
      start = time.perf_counter()
      fn()
      out.append(time.perf_counter() - start)
  return [statistics.median(t) for t in times]


def main() -> None:
  parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
  parser.add_argument('--batch', type=int, default=16)
  parser.add_argument('--seconds', type=float, default=10.0)
  parser.add_argument('--repeats', type=int, default=9)
  parser.add_argument('--seed', type=int, default=0)
  args = parser.parse_args()

  config = audio.MelConfig()
  num_samples = int(args.seconds * config.sample_rate)
  rng = np.random.default_rng(args.seed)
  t = np.arange(num_samples) / config.sample_rate
  freqs = rng.uniform(50.0, 4000.0, size=(args.batch, 1))
  wav = (0.5 * np.sin(2 * np.pi * freqs * t) +
         0.05 * rng.standard_normal((args.batch, num_samples))).astype(np.float32)  # [B, N]

  jax_wav = jax.device_put(wav)
  jax_fn = lambda: audio.log_mel(jax_wav, config).block_until_ready()
  jax_fn()  # compile + warm up
  jax_fn()

  def librosa_fn():
    mel = librosa.feature.melspectrogram(
        y=wav, sr=config.sample_rate, n_fft=config.n_fft, hop_length=config.hop_length,
        n_mels=config.n_mels, fmin=config.fmin, fmax=config.fmax, power=config.power,
        center=config.center, htk=config.htk, norm=config.norm)  # [B, n_mels, T]
    return np.log(np.maximum(mel, config.log_floor)), mel

  librosa_fn()  # warm up (filterbank cache, FFT plans)
  jax_s, librosa_s = _interleaved_medians([jax_fn, librosa_fn], args.repeats)

  ours = np.asarray(audio.melspectrogram(jax_wav, config))  # [B, T, n_mels]
  ref = librosa_fn()[1].transpose(0, 2, 1)
  max_rel_err = max(float(np.linalg.norm(o - r) / np.linalg.norm(r)) for o, r in zip(ours, ref))

  print(json.dumps({
      'benchmark': 'frontend', 'batch': args.batch,
      'seconds_audio': round(args.batch * args.seconds, 3),
      'jax_s': round(jax_s, 4), 'librosa_s': round(librosa_s, 4),
      'speedup': round(librosa_s / jax_s, 2), 'max_rel_err': float(f'{max_rel_err:.3g}'),
      'device': str(jax.devices()[0].device_kind), 'jax': jax.__version__,
      'librosa': librosa.__version__,
  }))


if __name__ == '__main__':
  main()
