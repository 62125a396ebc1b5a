"""k-means: k-means++ init, Lloyd / mini-batch convergence on blobs, determinism."""

import numpy as np
import pytest

from musiclm_jax.semantic import kmeans as kmeans_lib


def _blobs(seed=0, k=5, dim=8, per=200, spread=0.1):
  rng = np.random.RandomState(seed)
  centers = rng.uniform(-5, 5, size=(k, dim)).astype(np.float32)
  points = centers[:, None, :] + spread * rng.randn(k, per, dim).astype(np.float32)
  points = points.reshape(-1, dim)
  return centers, points[rng.permutation(len(points))]


def _max_center_error(true_centers, centroids):
  d = np.linalg.norm(true_centers[:, None] - centroids[None], axis=-1)  # [k_true, K]
  return float(d.min(axis=1).max())


def test_assign_matches_brute_force_in_chunks():
  rng = np.random.RandomState(1)
  x = rng.randn(103, 6).astype(np.float32)
  c = rng.randn(7, 6).astype(np.float32)
  ids, dist = kmeans_lib.assign(x, c, chunk_size=16)  # 103 is not a multiple of 16
  brute = ((x[:, None] - c[None]) ** 2).sum(-1)
  np.testing.assert_array_equal(np.asarray(ids), brute.argmin(1))
  np.testing.assert_allclose(np.asarray(dist), brute.min(1), rtol=1e-4, atol=1e-4)
  assert ids.dtype == np.int32


def test_kmeans_plus_plus_picks_distinct_points():
  _, x = _blobs()
  import jax  # pylint: disable=import-outside-toplevel
  c = np.asarray(kmeans_lib.kmeans_plus_plus(jax.random.PRNGKey(0), x, 5))
  assert len({tuple(row) for row in c}) == 5
  assert all(any(np.array_equal(row, p) for p in x) for row in c)
  # Degenerate data (all points equal) gives finite centroids.
  same = np.ones((10, 3), np.float32)
  assert np.all(np.isfinite(np.asarray(kmeans_lib.kmeans_plus_plus(jax.random.PRNGKey(0),
                                                                   same, 4))))


def test_lloyd_recovers_blobs_with_non_increasing_inertia():
  centers, x = _blobs()
  seen = []
  result = kmeans_lib.minibatch_kmeans(x, 5, seed=0, num_iters=10,
                                       callback=lambda it, v: seen.append((it, v)))
  assert _max_center_error(centers, result.centroids) < 0.05
  inertia = np.asarray(result.inertia)
  assert len(inertia) == 11 and [it for it, _ in seen] == list(range(11))
  assert np.all(np.diff(inertia) <= 1e-6 * inertia[:-1])
  # Final inertia is the within-blob variance: dim * spread^2 = 8 * 0.01.
  assert inertia[-1] == pytest.approx(0.08, rel=0.1)
  assert result.counts.sum() == len(x) and np.all(result.counts == 200)


def test_minibatch_recovers_blobs_and_is_deterministic():
  centers, x = _blobs(seed=3)
  kwargs = dict(seed=7, num_iters=30, batch_size=128, init_size=300)
  a = kmeans_lib.minibatch_kmeans(x, 5, **kwargs)
  b = kmeans_lib.minibatch_kmeans(x, 5, **kwargs)
  np.testing.assert_array_equal(a.centroids, b.centroids)
  assert a.inertia == b.inertia
  assert _max_center_error(centers, a.centroids) < 0.1
  assert a.inertia[-1] <= a.inertia[0]
  assert a.inertia[-1] == pytest.approx(0.08, rel=0.2)


def test_bad_input_is_rejected():
  x = np.zeros((4, 2), np.float32)
  with pytest.raises(ValueError, match='num_clusters'):
    kmeans_lib.minibatch_kmeans(x, 5)
  x[0, 0] = np.nan
  with pytest.raises(ValueError, match='NaN'):
    kmeans_lib.minibatch_kmeans(x, 2)
  with pytest.raises(ValueError, match=r'\[N, D\]'):
    kmeans_lib.minibatch_kmeans(np.zeros(4, np.float32), 2)
