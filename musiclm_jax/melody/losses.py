"""Semi-hard triplet loss (FaceNet) mined within the whole (global) batch.

For every anchor-positive pair (a, p) with the same label, the negative is the nearest example
of another label that is *farther* from the anchor than p (semi-hard); when there is none
(every negative is already closer than p), it is the nearest negative of all (the hardest).

  loss(a, p) = max(d(a, p) - d(a, n) + margin, 0),   d = squared Euclidean distance

averaged over every valid pair (an anchor with at least one positive and one negative),
including those already satisfied (loss 0), as FaceNet and `tfa.losses.TripletSemiHardLoss` do.
(TF-Addons falls back to the *farthest* negative when no semi-hard one exists; this one follows
the melody embedder's brief: the hardest.)

Mining is O(B^2 log B), not O(B^3): each anchor's negative distances are sorted once and the
semi-hard negative of pair (a, p) is found by a binary search for d(a, p). The function reads
the whole [B, D] batch, so called inside `jax.jit` on a batch sharded over devices it mines
from the global batch (XLA gathers the embeddings).
"""

import jax
import jax.numpy as jnp


def pairwise_squared_distances(emb: jax.Array) -> jax.Array:
  """[B, D] -> float32 [B, B] squared Euclidean distances (zero diagonal, never negative)."""
  emb = emb.astype(jnp.float32)
  sq = jnp.sum(jnp.square(emb), axis=-1)  # [B]
  gram = jnp.matmul(emb, emb.T, precision=jax.lax.Precision.HIGHEST)  # [B, B]
  dist = jnp.maximum(sq[:, None] + sq[None, :] - 2.0 * gram, 0.0)
  return dist * (1.0 - jnp.eye(emb.shape[0], dtype=dist.dtype))


def mine_semihard(dist: jax.Array, labels: jax.Array
                  ) -> tuple[jax.Array, jax.Array, jax.Array, jax.Array]:
  """Chooses the negative of every anchor-positive pair.

  Args:
    dist: float32 [B, B] distances.
    labels: int [B]; equal labels are positives of each other.

  Returns:
    (negative distance [a, p], valid pair mask [a, p], semi-hard found [a, p],
     has-positive mask [a]). Entries outside the valid mask are meaningless.
  """
  batch = dist.shape[0]
  same = labels[:, None] == labels[None, :]  # [B, B]
  positive = same & ~jnp.eye(batch, dtype=bool)  # [a, p]
  negative = ~same  # [a, n]
  num_neg = jnp.sum(negative, axis=1)  # [a]
  sorted_neg = jnp.sort(jnp.where(negative, dist, jnp.inf), axis=1)  # [a, n] ascending
  # First negative strictly farther than d(a, p): index into the anchor's sorted row.
  index = jax.vmap(lambda row, q: jnp.searchsorted(row, q, side='right'))(sorted_neg, dist)
  semihard = index < num_neg[:, None]  # [a, p]
  semi_dist = jnp.take_along_axis(sorted_neg, jnp.minimum(index, batch - 1), axis=1)
  neg_dist = jnp.where(semihard, semi_dist, sorted_neg[:, :1])  # fallback: hardest negative
  valid = positive & (num_neg > 0)[:, None]
  return neg_dist, valid, semihard & valid, jnp.any(positive, axis=1)


def triplet_semihard_loss(emb: jax.Array, labels: jax.Array, *, margin: float = 0.2
                          ) -> tuple[jax.Array, dict[str, jax.Array]]:
  """Semi-hard triplet loss of one batch (see the module docstring).

  Args:
    emb: [B, D] embeddings (the melody embedder's are unit norm, so distances are in [0, 4]).
    labels: int [B] melody ids; at least two examples must share a label for a nonzero loss.
    margin: the triplet margin, in squared distance.

  Returns:
    (loss, metrics): loss; active_fraction (valid pairs with a nonzero loss);
    semihard_fraction (pairs that found a semi-hard negative); positive_distance and
    negative_distance (means over valid pairs); nearest_neighbour_accuracy (examples with a
    positive whose nearest other example shares their label); valid_pairs.
  """
  dist = pairwise_squared_distances(emb)
  labels = jnp.asarray(labels)
  neg_dist, valid, semihard, has_positive = mine_semihard(dist, labels)
  per_pair = jnp.maximum(dist - neg_dist + margin, 0.0)  # [a, p]
  weight = valid.astype(jnp.float32)
  count = jnp.maximum(jnp.sum(weight), 1.0)
  loss = jnp.sum(per_pair * weight) / count
  off_diag = jnp.where(jnp.eye(dist.shape[0], dtype=bool), jnp.inf, dist)
  nearest = jnp.argmin(off_diag, axis=1)  # [B]
  hit = (labels[nearest] == labels) & has_positive
  metrics = {
      'loss': loss,
      'active_fraction': jnp.sum((per_pair > 0) * weight) / count,
      'semihard_fraction': jnp.sum(semihard.astype(jnp.float32)) / count,
      'positive_distance': jnp.sum(dist * weight) / count,
      'negative_distance': jnp.sum(neg_dist * weight) / count,
      'nearest_neighbour_accuracy': (jnp.sum(hit.astype(jnp.float32))
                                     / jnp.maximum(jnp.sum(has_positive), 1)),
      'valid_pairs': jnp.sum(weight),
  }
  return loss, metrics
