"""Brief training on numpy melodies: the same melody in two timbres ends up nearer than others."""

import flax.linen as nn
import jax
import numpy as np
import optax

from musiclm_jax.melody import model as model_lib

SR = 24000
NOTES = 4  # notes per 1 s window
CONFIG = model_lib.MelodyConfig(
    n_fft=512, win_length=512, hop_length=240, n_mels=48, fmax=6000.0, patch_frames=4,
    width=32, num_layers=1, num_heads=2, head_dim=16, mlp_dim=64, embed_dim=32,
    window_seconds=1.0, hop_seconds=1.0, stft='dft')


def render(pitches: np.ndarray, timbre: int, gain: float = 1.0) -> np.ndarray:
  """A 1 s line of `NOTES` equal notes (MIDI pitches) in one of two timbres."""
  n = SR // NOTES
  t = np.arange(n) / SR
  out = []
  for p in pitches:
    f0 = 440.0 * 2 ** ((p - 69) / 12)
    if timbre == 0:  # plucked: all harmonics 1/k, fast exponential decay
      wave = sum(np.sin(2 * np.pi * k * f0 * t) / k for k in range(1, 7))
      env = np.exp(-t * 8.0)
    else:  # reed-like: odd harmonics 1/k^2, sustained with short fades
      wave = sum(np.sin(2 * np.pi * k * f0 * t) / k ** 2 for k in (1, 3, 5))
      env = np.minimum(1.0, np.minimum(t, t[-1] - t) / 0.02)
    out.append(wave * env)
  wav = np.concatenate(out)
  return (0.5 * gain * wav / np.abs(wav).max()).astype(np.float32)


def batch_of(rng: np.random.Generator, melodies: int) -> tuple[np.ndarray, np.ndarray]:
  """([melodies * 2, SR] audio, labels): each random melody in both timbres."""
  audio, labels = [], []
  for m in range(melodies):
    pitches = rng.integers(55, 80, NOTES)
    for timbre in (0, 1):
      audio.append(render(pitches, timbre, gain=10 ** (rng.uniform(-10, 0) / 20)))
      labels.append(m)
  return np.stack(audio), np.asarray(labels, np.int32)


def _retrieval(net, params, audio):
  emb = np.asarray(jax.jit(net.apply)({'params': params}, audio))  # [2M, D]
  a, b = emb[0::2], emb[1::2]  # timbre 0, timbre 1 of each melody
  sim = a @ b.T  # [M, M]
  top1 = float(np.mean(np.argmax(sim, axis=1) == np.arange(len(sim))))
  same = float(np.mean(np.diag(sim)))
  other = float(np.mean(sim[~np.eye(len(sim), dtype=bool)]))
  return top1, same, other


def test_same_melody_other_timbre_is_nearer_after_training():
  model = model_lib.MelodyModel(config=CONFIG)
  rng = np.random.default_rng(0)
  audio, labels = batch_of(rng, 8)
  params = nn.unbox(jax.jit(model.init)(jax.random.PRNGKey(0), {'audio': audio})[0])['model']
  tx = optax.adam(3e-3)
  opt = tx.init(params)

  @jax.jit
  def step(p, o, audio, labels):
    def loss_fn(p):
      return model.loss('model', {'model': p}, {}, {'audio': audio, 'melody': labels}, None, 0)
    (loss, (metrics, _)), grads = jax.value_and_grad(loss_fn, has_aux=True)(p)
    updates, o = tx.update(grads, o, p)
    return optax.apply_updates(p, updates), o, metrics

  test_audio, _ = batch_of(np.random.default_rng(123), 16)  # melodies never trained on
  before = _retrieval(model.net, params, test_audio)
  first = None
  for _ in range(80):
    audio, labels = batch_of(rng, 8)
    params, opt, metrics = step(params, opt, audio, labels)
    first = first if first is not None else float(metrics['loss'])
  after = _retrieval(model.net, params, test_audio)
  top1, same, other = after
  # Chance top-1 is 1/16. Measured: untrained 0.38 (same-melody cosine 0.73, others 0.60);
  # after these 80 steps 1.0 (0.96, 0.08).
  assert top1 >= 0.6, (before, after)
  assert same > other + 0.2, (before, after)
  assert top1 > before[0], (before, after)
  assert float(metrics['loss']) < first
