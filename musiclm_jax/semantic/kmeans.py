"""k-means in JAX: k-means++ initialisation and (mini-batch) Lloyd / Sculley updates.

Deterministic given `seed` (same data, same device type). Two regimes:

  * `batch_size=None` (or >= number of points): Lloyd's algorithm, every centroid moves to the
    mean of its points. The inertia never increases.
  * `batch_size < N`: Sculley's mini-batch k-means (web-scale k-means, 2010): each centroid
    moves towards its points in a random batch with a per-centroid rate 1 / (points seen so far).

Inertia here is the mean squared distance of a point to its nearest centroid, measured after
every iteration on all points (or on a fixed random subset of `eval_size` points).
"""

import dataclasses
from collections.abc import Callable
import functools

import jax
import jax.numpy as jnp
import numpy as np

_HIGHEST = jax.lax.Precision.HIGHEST


@dataclasses.dataclass
class KMeansResult:
  """Fitted centroids and per-iteration history.

  Attributes:
    centroids: float32 [K, D].
    inertia: mean squared distance after each iteration (index 0: after k-means++).
    counts: points per cluster in the evaluation set, int64 [K].
  """
  centroids: np.ndarray
  inertia: list[float]
  counts: np.ndarray


def squared_distances(x: jax.Array, centroids: jax.Array) -> jax.Array:
  """||x - c||^2 for every pair: x [N, D], centroids [K, D] -> [N, K] (clamped at 0)."""
  x = x.astype(jnp.float32)
  centroids = centroids.astype(jnp.float32)
  cross = jnp.matmul(x, centroids.T, precision=_HIGHEST)  # [N, K]
  d2 = (jnp.sum(x * x, axis=-1)[:, None] - 2.0 * cross
        + jnp.sum(centroids * centroids, axis=-1)[None, :])
  return jnp.maximum(d2, 0.0)


@functools.partial(jax.jit, static_argnames=('chunk_size',))
def assign(x: jax.Array, centroids: jax.Array, chunk_size: int = 4096
           ) -> tuple[jax.Array, jax.Array]:
  """Nearest centroid of every point, in chunks of `chunk_size` points (bounded memory).

  Args:
    x: [N, D] points.
    centroids: [K, D].
    chunk_size: points per chunk.

  Returns:
    (ids int32 [N], squared distance float32 [N]).
  """
  n = x.shape[0]
  chunk = min(chunk_size, max(n, 1))
  padded = -(-n // chunk) * chunk
  xs = jnp.pad(x.astype(jnp.float32), ((0, padded - n), (0, 0))).reshape(
      padded // chunk, chunk, x.shape[1])  # [chunks, chunk, D]

  def one(block):
    d2 = squared_distances(block, centroids)  # [chunk, K]
    ids = jnp.argmin(d2, axis=-1)
    return ids.astype(jnp.int32), jnp.take_along_axis(d2, ids[:, None], axis=-1)[:, 0]

  ids, dist = jax.lax.map(one, xs)
  return ids.reshape(-1)[:n], dist.reshape(-1)[:n]


@functools.partial(jax.jit, static_argnames=('num_clusters',))
def kmeans_plus_plus(rng: jax.Array, x: jax.Array, num_clusters: int) -> jax.Array:
  """k-means++ seeding (Arthur & Vassilvitskii 2007): next centre drawn with p ~ D(x)^2.

  Args:
    rng: PRNG key.
    x: [N, D] points, N >= num_clusters.
    num_clusters: K.

  Returns:
    float32 [K, D] initial centroids (rows of x).
  """
  x = x.astype(jnp.float32)
  n = x.shape[0]
  keys = jax.random.split(rng, num_clusters)
  first = jax.random.randint(keys[0], (), 0, n)
  centroids = jnp.zeros((num_clusters, x.shape[1]), jnp.float32).at[0].set(x[first])
  d2 = squared_distances(x, x[first][None])[:, 0]  # [N]

  def body(i, carry):
    centroids, d2 = carry
    total = jnp.sum(d2)
    logits = jnp.where(total > 0, jnp.log(jnp.maximum(d2, 1e-30)), 0.0)
    logits = jnp.where((total > 0) & (d2 <= 0), -jnp.inf, logits)  # never re-pick a centre
    idx = jax.random.categorical(keys[i], logits)
    centroids = centroids.at[i].set(x[idx])
    d2 = jnp.minimum(d2, squared_distances(x, x[idx][None])[:, 0])
    return centroids, d2

  centroids, _ = jax.lax.fori_loop(1, num_clusters, body, (centroids, d2))
  return centroids


@jax.jit
def _lloyd_step(x, centroids):
  ids, _ = assign(x, centroids)
  onehot_sum = jax.ops.segment_sum(x.astype(jnp.float32), ids, num_segments=centroids.shape[0])
  counts = jax.ops.segment_sum(jnp.ones_like(ids, jnp.float32), ids,
                               num_segments=centroids.shape[0])
  means = onehot_sum / jnp.maximum(counts, 1.0)[:, None]
  return jnp.where(counts[:, None] > 0, means, centroids)  # empty clusters stay put


@functools.partial(jax.jit, static_argnames=('batch_size',))
def _minibatch_step(x, centroids, seen, rng, batch_size):
  idx = jax.random.randint(rng, (batch_size,), 0, x.shape[0])
  batch = x[idx].astype(jnp.float32)  # [b, D]
  ids, _ = assign(batch, centroids)
  k = centroids.shape[0]
  sums = jax.ops.segment_sum(batch, ids, num_segments=k)  # [K, D]
  counts = jax.ops.segment_sum(jnp.ones_like(ids, jnp.float32), ids, num_segments=k)  # [K]
  seen = seen + counts
  # c <- c + n_k / seen_k * (mean_k - c): the running mean of every point a centroid has taken.
  update = (sums - counts[:, None] * centroids) / jnp.maximum(seen, 1.0)[:, None]
  return centroids + update, seen


def minibatch_kmeans(x: np.ndarray | jax.Array, num_clusters: int, *, seed: int = 0,
                     num_iters: int = 100, batch_size: int | None = None,
                     init_size: int | None = None, eval_size: int | None = None,
                     tol: float = 0.0, callback: Callable[[int, float], None] | None = None
                     ) -> KMeansResult:
  """Fits k-means with k-means++ init; Lloyd when full-batch, Sculley mini-batch otherwise.

  Args:
    x: [N, D] points (finite).
    num_clusters: K <= N.
    seed: every random choice (init subset, k-means++, batches) derives from it.
    num_iters: iterations (one batch each).
    batch_size: points per iteration; None or >= N for full-batch Lloyd.
    init_size: k-means++ runs on this many random points (default all, at most 100,000).
    eval_size: inertia is measured on this many fixed random points (default all).
    tol: stop early when the relative inertia improvement falls below tol (0: never; only
      checked in full-batch mode, where the inertia is monotone).
    callback: called as callback(iteration, inertia) after init (iteration 0) and every step.

  Returns:
    KMeansResult.
  """
  x = jnp.asarray(x, jnp.float32)
  if x.ndim != 2:
    raise ValueError(f'kmeans: points must be [N, D], got shape {x.shape}')
  n = x.shape[0]
  if not 1 <= num_clusters <= n:
    raise ValueError(f'kmeans: need 1 <= num_clusters ({num_clusters}) <= points ({n})')
  if not bool(jnp.all(jnp.isfinite(x))):
    raise ValueError('kmeans: points contain NaN or Inf')
  key = jax.random.PRNGKey(seed)
  init_key, eval_key, init_subset_key, step_key = jax.random.split(key, 4)

  init_size = min(n, 100_000) if init_size is None else min(max(init_size, num_clusters), n)
  init_x = x if init_size == n else x[jax.random.choice(init_subset_key, n, (init_size,),
                                                        replace=False)]
  centroids = kmeans_plus_plus(init_key, init_x, num_clusters)
  eval_x = x if eval_size is None or eval_size >= n else x[
      jax.random.choice(eval_key, n, (eval_size,), replace=False)]

  def measure(c):
    return float(jnp.mean(assign(eval_x, c)[1]))

  history = [measure(centroids)]
  if callback:
    callback(0, history[0])
  full_batch = batch_size is None or batch_size >= n
  seen = jnp.zeros((num_clusters,), jnp.float32)
  for it in range(1, num_iters + 1):
    if full_batch:
      centroids = _lloyd_step(x, centroids)
    else:
      centroids, seen = _minibatch_step(x, centroids, seen, jax.random.fold_in(step_key, it),
                                        batch_size)
    history.append(measure(centroids))
    if callback:
      callback(it, history[-1])
    if full_batch and tol > 0 and history[-2] - history[-1] <= tol * max(history[-2], 1e-30):
      break
  ids, _ = assign(eval_x, centroids)
  counts = np.bincount(np.asarray(ids), minlength=num_clusters)
  return KMeansResult(centroids=np.asarray(centroids), inertia=history, counts=counts)
