"""Melody embedder: a sharded training step equals the single-device one (global-batch mining)."""

import flax.linen as nn
import jax
import numpy as np

from musiclm_jax import testing
from musiclm_jax.melody import model as model_lib

SR = 24000
CONFIG = model_lib.MelodyConfig(
    n_fft=256, win_length=256, hop_length=120, n_mels=24, patch_frames=2, width=16,
    num_layers=1, num_heads=2, head_dim=8, mlp_dim=32, embed_dim=16, window_seconds=0.25,
    hop_seconds=0.2, stft='dft')  # no FFT op in sharded CPU steps (see MelConfig.transform)


def _labelled_batch(melodies=4, per_melody=2, samples=6000, seed=0):
  """Clip i plays a two-note figure of its melody in one of `per_melody` timbres."""
  rng = np.random.default_rng(seed)
  t = np.arange(samples) / SR
  audio, labels = [], []
  for m in range(melodies):
    f = 220.0 * 2 ** (np.array([m * 3, m * 3 + 4]) / 12)
    freq = np.where(t < t[-1] / 2, f[0], f[1])
    phase = 2 * np.pi * np.cumsum(freq) / SR
    for k in range(per_melody):
      wav = sum(0.3 / h ** (1 + k) * np.sin(h * phase) for h in range(1, 5))
      audio.append(wav + 0.01 * rng.standard_normal(samples))
      labels.append(m)
  return {'audio': np.asarray(audio, np.float32), 'melody': np.asarray(labels, np.int32)}


def test_sharded_step_and_global_batch_mining():
  batch = _labelled_batch()  # 8 clips, 4 melodies
  model = model_lib.MelodyModel(config=CONFIG)
  # Training on 8 fake devices (data x fsdp x tensor = 2 x 2 x 2: the batch split over 4
  # devices, parameters over fsdp and tensor) gives the single-device losses and parameters,
  # so the negatives are mined from the global batch ...
  testing.check_sharded_step(model, batch, mesh_shapes=[{'data': 2, 'fsdp': 2, 'tensor': 2}],
                             steps=2, rtol=2e-4, atol=2e-5)

  # ... which matters: mining within halves of the batch gives another loss.
  def loss_fn(p, b):
    return model.loss('model', {'model': p}, {}, b, jax.random.PRNGKey(0), 0)[0]

  params = nn.unbox(jax.jit(model.init)(jax.random.PRNGKey(0), batch)[0])['model']
  full = float(jax.jit(loss_fn)(params, batch))
  halves = [float(jax.jit(loss_fn)(params, {k: v[i:i + 4] for k, v in batch.items()}))
            for i in (0, 4)]
  assert abs(np.mean(halves) - full) > 1e-4
