"""STFT by FFT vs one DFT-basis matmul vs the four-step matmul FFT, alone and in the codec step.

  python benchmarks/stft_transforms.py [--batch 8] [--seconds 1.0] [--repeats 5]

Everything runs in one process and alternates between variants, so the ratios hold on a
loaded machine. Prints a markdown table and one JSON line. The FFT rows run one FFT per
program: several FFTs in one XLA:CPU program can deadlock (jax 0.11), which is why training
losses use `audio.stft_dft` (docs/PERFORMANCE.md).
"""

import argparse
import json
import time

import flax.linen as nn
import gin
import jax
import jax.numpy as jnp
import numpy as np

from musiclm_jax import audio


def _median_ms(fn, args, repeats):
  jax.block_until_ready(fn(*args))  # compile
  times = []
  for _ in range(repeats):
    start = time.perf_counter()
    jax.block_until_ready(fn(*args))
    times.append(time.perf_counter() - start)
  return 1000.0 * float(np.median(times))


def stft_table(batch, samples, repeats):
  wav = jnp.asarray(np.random.default_rng(0).standard_normal((batch, samples)), jnp.float32)
  rows = []
  for n_fft in (256, 512, 1024, 2048):
    hop = n_fft // 4
    fft = jax.jit(lambda w, n=n_fft, h=hop: jnp.abs(audio.stft(w, n_fft=n, hop_length=h)))
    mag = lambda ri: jnp.sqrt(ri[0] ** 2 + ri[1] ** 2)
    four = jax.jit(lambda w, n=n_fft, h=hop: mag(audio.stft_dft(w, n_fft=n, hop_length=h)))
    original = audio._four_step_factors
    audio._four_step_factors = lambda n: None  # one DFT-basis matmul
    basis = jax.jit(lambda w, n=n_fft, h=hop: mag(audio.stft_dft(w, n_fft=n, hop_length=h)))
    basis_ms = _median_ms(basis, (wav,), repeats)
    audio._four_step_factors = original
    rows.append({'n_fft': n_fft, 'fft_ms': _median_ms(fft, (wav,), repeats),
                 'dft_basis_ms': basis_ms, 'four_step_ms': _median_ms(four, (wav,), repeats)})
  return rows


def codec_step(batch, samples, repeats):
  """Tiny codec generator loss + gradient with one-matmul DFT vs four-step STFTs."""
  gin.parse_config_files_and_bindings(['gin/models/codec/tiny.gin'], [])
  model = gin.query_parameter('%MODEL').scoped_configurable_fn()
  data = {'audio': (0.3 * np.random.default_rng(0).standard_normal((batch, samples))
                    ).astype(np.float32)}
  params, state = nn.unbox(model.init(jax.random.PRNGKey(0), data))

  def loss(generator, model_state, rng):
    return model.loss('generator', {**params, 'generator': generator}, model_state, data, rng,
                      jnp.asarray(0))

  original = audio._four_step_factors
  audio._four_step_factors = lambda n: None
  basis = jax.jit(jax.value_and_grad(loss, has_aux=True))
  args = (params['generator'], state, jax.random.PRNGKey(1))
  jax.block_until_ready(basis(*args))
  audio._four_step_factors = original
  four = jax.jit(jax.value_and_grad(loss, has_aux=True))
  jax.block_until_ready(four(*args))
  times = {'dft_basis_ms': [], 'four_step_ms': []}
  for _ in range(repeats):  # alternate, so load changes hit both
    for key, fn in (('dft_basis_ms', basis), ('four_step_ms', four)):
      start = time.perf_counter()
      jax.block_until_ready(fn(*args))
      times[key].append(time.perf_counter() - start)
  return {k: 1000.0 * float(np.median(v)) for k, v in times.items()}


def main():
  parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
  parser.add_argument('--batch', type=int, default=8)
  parser.add_argument('--seconds', type=float, default=1.0)
  parser.add_argument('--repeats', type=int, default=5)
  args = parser.parse_args()
  samples = int(round(args.seconds * 24000 / 480)) * 480
  rows = stft_table(args.batch, samples, args.repeats)
  print(f'STFT of [{args.batch}, {samples}] (hop n_fft/4), median ms ({jax.default_backend()}):')
  print('| n_fft | FFT | one DFT matmul | four-step matmul FFT |\n|---|---|---|---|')
  for r in rows:
    print(f"| {r['n_fft']} | {r['fft_ms']:.1f} | {r['dft_basis_ms']:.1f} | "
          f"{r['four_step_ms']:.1f} |")
  step = codec_step(args.batch, samples, args.repeats)
  print(f"tiny codec generator step: one DFT matmul {step['dft_basis_ms']:.0f} ms, four-step "
        f"{step['four_step_ms']:.0f} ms ({step['dft_basis_ms'] / step['four_step_ms']:.2f}x)")
  print(json.dumps({'stft': rows, 'codec_step': step, 'batch': args.batch, 'samples': samples,
                    'backend': jax.default_backend()}))


if __name__ == '__main__':
  main()
