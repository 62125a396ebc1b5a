"""Unit tests of the residual vector quantizer (musiclm_jax/layers/rvq.py)."""

import functools

import flax.linen as nn
import jax
import jax.numpy as jnp
import numpy as np
import pytest

from musiclm_jax.layers import rvq


def _bruteforce(codebooks, x):
  """Reference residual quantization in numpy."""
  residual = np.array(x, np.float64)
  codes, total = [], np.zeros_like(residual)
  for cb in np.asarray(codebooks, np.float64):
    d = ((residual[:, None, :] - cb[None]) ** 2).sum(-1)  # [N, K]
    c = d.argmin(-1)
    codes.append(c)
    total += cb[c]
    residual = residual - cb[c]
  return np.stack(codes, -1), total


def test_quantize_matches_bruteforce_and_dequantize():
  rng = np.random.default_rng(0)
  codebooks = rng.normal(size=(3, 8, 4)).astype(np.float32)
  x = rng.normal(size=(6, 4)).astype(np.float32)
  out = rvq.quantize(jnp.asarray(codebooks), jnp.asarray(x))
  ref_codes, ref_q = _bruteforce(codebooks, x)
  assert out.codes.shape == (6, 3) and out.codes.dtype == jnp.int32
  np.testing.assert_array_equal(out.codes, ref_codes)
  np.testing.assert_allclose(out.quantized, ref_q, atol=1e-5)
  np.testing.assert_allclose(out.residuals[:, 0], x, atol=1e-6)
  np.testing.assert_allclose(rvq.dequantize(jnp.asarray(codebooks), out.codes), ref_q, atol=1e-5)
  # Fewer levels: prefix of the codes; traced level counts mask the later levels.
  two = rvq.quantize(jnp.asarray(codebooks), jnp.asarray(x), num_levels=2)
  np.testing.assert_array_equal(two.codes, ref_codes[:, :2])
  masked = jax.jit(rvq.dequantize)(jnp.asarray(codebooks), out.codes, jnp.int32(2))
  np.testing.assert_allclose(masked, two.quantized, atol=1e-5)


def test_error_shrinks_with_levels():
  """Every level count 1..L decodes, and more levels never reconstruct worse (k-means books)."""
  key = jax.random.PRNGKey(0)
  x = jax.random.normal(key, (512, 8))
  codebooks, _ = jax.jit(functools.partial(rvq.kmeans_init, num_levels=6, codebook_size=16,
                                           num_iters=5))(jax.random.PRNGKey(1), x)

  @jax.jit
  def error(n):
    codes = rvq.quantize(codebooks, x).codes
    return jnp.mean(jnp.square(x - rvq.dequantize(codebooks, codes, n)))

  errors = [float(error(n)) for n in range(1, 7)]
  assert all(b <= a + 1e-6 for a, b in zip(errors, errors[1:])), errors
  assert errors[-1] < 0.5 * errors[0]


def test_ema_update_hand_computed():
  ema_count = jnp.array([[1.0, 1.0], [3.0, 3.0]])  # [L=2, K=2]
  ema_sum = jnp.array([[[0.0], [2.0]], [[3.0], [6.0]]])  # [2, 2, 1]
  residuals = jnp.array([[[0.5], [9.0]], [[1.5], [9.0]], [[2.5], [9.0]]])  # [N=3, L=2, 1]
  codes = jnp.array([[0, 1], [1, 1], [1, 1]])
  mask = jnp.array([[True, False], [True, False], [True, False]])  # level 1 inactive
  update = jax.jit(functools.partial(rvq.ema_update, decay=0.5), static_argnames='epsilon')
  books, count, total = update(ema_count, ema_sum, residuals, codes, mask, epsilon=0.0)
  # Level 0: counts [1, 2], sums [0.5, 4.0] -> count 0.5*1+0.5*1 = 1, 0.5*1+0.5*2 = 1.5;
  # sum 0.5*0+0.5*0.5 = 0.25, 0.5*2+0.5*4 = 3 -> codebook [0.25, 2.0].
  np.testing.assert_allclose(count[0], [1.0, 1.5])
  np.testing.assert_allclose(total[0, :, 0], [0.25, 3.0])
  np.testing.assert_allclose(books[0, :, 0], [0.25, 2.0], rtol=1e-6)
  # Level 1 had no unmasked vector: statistics unchanged, codebook = sum / count.
  np.testing.assert_allclose(count[1], [3.0, 3.0])
  np.testing.assert_allclose(books[1, :, 0], [1.0, 2.0], rtol=1e-6)
  # Laplace smoothing: (n + eps) / (total + K eps) * total.
  eps = 0.1
  books, _, _ = update(ema_count, ema_sum, residuals, codes, mask, epsilon=eps)
  smoothed = (np.array([1.0, 1.5]) + eps) / (2.5 + 2 * eps) * 2.5
  np.testing.assert_allclose(books[0, :, 0], np.array([0.25, 3.0]) / smoothed, rtol=1e-6)


def test_replace_dead_codes():
  codebooks = jnp.zeros((2, 4, 3)) + jnp.arange(4.0)[None, :, None]  # [L=2, K=4, D=3]
  ema_count = jnp.array([[5.0, 0.1, 5.0, 0.0], [0.0, 0.0, 0.0, 0.0]])
  ema_sum = codebooks * ema_count[..., None]
  residuals = 100.0 + jnp.arange(5 * 2 * 3, dtype=jnp.float32).reshape(5, 2, 3)  # [N=5, L, D]
  mask = jnp.array([[True, False], [False, False], [True, False], [True, False], [False, False]])
  replace = jax.jit(functools.partial(rvq.replace_dead_codes, threshold=1.0))
  books, count, total, dead = replace(codebooks, ema_count, ema_sum, residuals, mask,
                                      jax.random.PRNGKey(0))
  np.testing.assert_array_equal(dead, [[False, True, False, True], [False] * 4])
  allowed = {tuple(np.asarray(residuals[i, 0])) for i in (0, 2, 3)}  # unmasked level-0 rows
  for k in (1, 3):
    assert tuple(np.asarray(books[0, k])) in allowed
    np.testing.assert_allclose(count[0, k], 1.0)
    np.testing.assert_allclose(total[0, k], books[0, k] * 1.0)
  assert tuple(np.asarray(books[0, 1])) != tuple(np.asarray(books[0, 3]))  # distinct rows
  for k in (0, 2):
    np.testing.assert_array_equal(books[0, k], codebooks[0, k])
  np.testing.assert_array_equal(books[1], codebooks[1])  # level without samples is untouched
  np.testing.assert_array_equal(count[1], ema_count[1])


def test_kmeans_finds_clusters():
  centers = np.array([[-5.0, 0.0], [5.0, 0.0], [0.0, 5.0]], np.float32)
  rng = np.random.default_rng(0)
  x = np.concatenate([c + 0.1 * rng.normal(size=(50, 2)) for c in centers]).astype(np.float32)
  # Seeded restarts: Lloyd can merge two clusters from an unlucky start; most seeds must not.
  kmeans = jax.jit(lambda key, x: rvq.kmeans(key, x, 3, 10))
  found = 0
  for seed in range(4):
    got, counts = kmeans(jax.random.PRNGKey(seed), jnp.asarray(x))
    got = np.asarray(got)[np.argsort(np.asarray(got)[:, 0] * 10 + np.asarray(got)[:, 1])]
    ref = centers[np.argsort(centers[:, 0] * 10 + centers[:, 1])]
    if np.allclose(got, ref, atol=0.1):
      found += 1
      np.testing.assert_allclose(np.sort(counts), [50, 50, 50])
  assert found >= 3
  # Residual k-means: level 1 clusters what level 0 left, so its codes are small.
  books, counts = jax.jit(functools.partial(rvq.kmeans_init, num_levels=2, codebook_size=3,
                                            num_iters=10))(jax.random.PRNGKey(0), jnp.asarray(x))
  assert books.shape == (2, 3, 2) and counts.shape == (2, 3)
  np.testing.assert_allclose(counts.sum(-1), [150, 150])
  norms = jnp.mean(jnp.linalg.norm(books, axis=-1), axis=-1)  # [2]
  assert float(norms[1]) < float(norms[0])


def _config(**kw):
  base = dict(dim=4, num_levels=3, codebook_size=8, decay=0.9, kmeans_iters=5,
              dead_code_threshold=0.5, quantizer_dropout=1.0)
  base.update(kw)
  return rvq.RVQConfig(**base)


Q = rvq.ResidualVQ(_config())
_init = jax.jit(Q.maybe_init)
_forward = jax.jit(lambda s, x, m: Q.forward(s, x, rng=None, train=False, level_mask=m))


def _initialised_state(x):
  return _init(nn.unbox(Q.init_state()), x.reshape(-1, 4), jax.random.PRNGKey(1))


def test_state_axes_and_first_batch_init():
  boxed = Q.init_state()
  assert boxed['codebooks'].names == ('layers', 'codebook', 'codebook_dim')
  assert boxed['ema_count'].names == ('layers', 'codebook')
  x = jax.random.normal(jax.random.PRNGKey(0), (64, 4))
  new = _initialised_state(x)
  assert bool(new['initialized'])
  assert float(jnp.min(jnp.linalg.norm(new['codebooks'][0], axis=-1))) > 0
  np.testing.assert_allclose(new['ema_count'].sum(-1), [64, 64, 64])
  again = _init(new, x + 10.0, jax.random.PRNGKey(2))  # already initialised: unchanged
  for k in new:
    np.testing.assert_array_equal(again[k], new[k])


def test_straight_through_gradient():
  x = jax.random.normal(jax.random.PRNGKey(0), (2, 5, 4))
  state = _initialised_state(x)
  w = jax.random.normal(jax.random.PRNGKey(2), x.shape)
  every = jnp.ones((2, 3), bool)

  @jax.jit
  @jax.grad
  def grad(x, commit_weight):
    out = Q.forward(state, x, rng=None, train=False, level_mask=every)
    return jnp.sum(w * out.quantized) + commit_weight * out.commit_loss

  np.testing.assert_allclose(grad(x, 0.0), w, atol=1e-6)  # identity through the quantizer
  commit_grad = grad(x, 1.0) - w  # the commitment loss pulls x towards its code vectors
  assert float(jnp.sum(jnp.abs(commit_grad))) > 0
  out = _forward(state, x, every)
  assert out.quantized.shape == x.shape and out.codes.shape == (2, 5, 3)


def test_level_mask_and_dropout_forward():
  sample = jax.jit(rvq.sample_level_mask, static_argnums=(1, 2))
  mask = sample(jax.random.PRNGKey(0), 400, 5, dropout=1.0)
  assert bool(jnp.all(sample(jax.random.PRNGKey(0), 400, 5, dropout=0.0)))
  n = np.asarray(mask).sum(-1)
  assert set(n.tolist()) == {1, 2, 3, 4, 5}
  np.testing.assert_array_equal(mask, np.arange(5)[None] < n[:, None])  # prefixes
  # With one level kept, the quantized output is the first level's vector only.
  x = jax.random.normal(jax.random.PRNGKey(0), (2, 5, 4))
  state = _initialised_state(x)
  one = jnp.array([[True, False, False], [True, True, True]])
  out = _forward(state, x, one)
  first = state['codebooks'][0][out.codes[0, :, 0]]
  np.testing.assert_allclose(out.quantized[0], first, atol=1e-5)
  np.testing.assert_allclose(out.quantized[1], Q.decode(state, out.codes[1]), atol=1e-5)


def test_training_updates_reduce_commitment():
  """EMA + dead-code steps on clustered data: commitment falls, metrics are reported."""
  q = rvq.ResidualVQ(_config(quantizer_dropout=0.0))
  state = nn.unbox(q.init_state())
  centers = jax.random.normal(jax.random.PRNGKey(9), (8, 4)) * 3

  def batch(key):
    k1, k2 = jax.random.split(key)
    idx = jax.random.randint(k1, (4, 16), 0, 8)
    return centers[idx] + 0.05 * jax.random.normal(k2, (4, 16, 4))

  step = jax.jit(lambda s, x, r: q.forward(s, x, rng=r, train=True))
  losses = []
  for i in range(30):
    out = step(state, batch(jax.random.PRNGKey(100 + i)), jax.random.PRNGKey(i))
    state = out.state
    losses.append(float(out.commit_loss))
  assert bool(state['initialized'])
  assert np.mean(losses[-5:]) < 0.05
  assert set(out.metrics) == {f'{m}_l{i}' for m in ('perplexity', 'dead_codes') for i in range(3)}
  assert 1.0 <= float(out.metrics['perplexity_l0']) <= 8.0
  assert np.isfinite([float(v) for v in out.metrics.values()]).all()


def test_quantize_rejects_bad_levels():
  with pytest.raises(ValueError, match='num_levels'):
    rvq.quantize(jnp.zeros((2, 4, 3)), jnp.zeros((5, 3)), num_levels=3)
