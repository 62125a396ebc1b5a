"""Residual vector quantizer (RVQ) with EMA codebooks, k-means init and dead-code replacement.

Used by the SoundStream codec, MuLan and the melody embedder. The codebooks are not trained
by the optimizer: they live in a state dict (the component's `model_state`) and are updated
by pure functions from the vectors of the current batch:

  state = {'codebooks':   [levels, codebook_size, dim]   EMA means (what quantize reads),
           'ema_count':   [levels, codebook_size]        EMA of per-batch assignment counts,
           'ema_sum':     [levels, codebook_size, dim]   EMA of per-batch assigned-vector sums,
           'initialized': []                              bool, set by k-means on the first batch}

Typical training step (see `ResidualVQ.forward`):

  state = maybe_init(...)          # k-means on the first batch only (lax.cond on 'initialized')
  out = quantize(codebooks, x)     # nearest code per level on the running residual
  x_q = x + stop_gradient(sum of active levels - x)    # straight-through estimator
  state = ema_update(...); state = replace_dead_codes(...)

Quantizer dropout: during training each example keeps a random number of levels n in
[1, levels]; levels > n are masked out of the sum, the commitment loss and the EMA update.
"""

import dataclasses
from typing import NamedTuple

import flax.linen as nn
import jax
import jax.numpy as jnp

CODEBOOK_AXES = ('layers', 'codebook', 'codebook_dim')
COUNT_AXES = ('layers', 'codebook')


@dataclasses.dataclass(frozen=True, kw_only=True)
class RVQConfig:
  """Residual vector quantizer hyper-parameters.

  Attributes:
    dim: vector dimension.
    num_levels: number of residual levels (codebooks).
    codebook_size: codes per level.
    decay: EMA decay of counts and sums.
    epsilon: Laplace smoothing of the EMA counts.
    dead_code_threshold: codes whose EMA count falls below this are replaced by random
      vectors of the current batch (0 disables).
    kmeans_iters: Lloyd iterations of the first-batch k-means init (0: random batch vectors).
    quantizer_dropout: probability that a training example uses a random number of levels
      n ~ U{1..num_levels} instead of all of them.
  """
  dim: int = 128
  num_levels: int = 12
  codebook_size: int = 1024
  decay: float = 0.99
  epsilon: float = 1e-5
  dead_code_threshold: float = 2.0
  kmeans_iters: int = 10
  quantizer_dropout: float = 1.0


class QuantizeResult(NamedTuple):
  """What `quantize` returns (n = levels used).

  Attributes:
    quantized: [..., dim] sum of the n level vectors.
    codes: [..., n] int32 code indices.
    residuals: [..., n, dim] the input each level quantized (x minus earlier levels).
    level_vectors: [..., n, dim] the chosen code vector of each level.
  """
  quantized: jax.Array
  codes: jax.Array
  residuals: jax.Array
  level_vectors: jax.Array


def nearest_code(codebook: jax.Array, x: jax.Array) -> jax.Array:
  """Index of the nearest (L2) code. codebook: [K, D]; x: [..., D]. Returns int32 [...]."""
  x = x.astype(jnp.float32)
  codebook = codebook.astype(jnp.float32)
  dist = (jnp.sum(jnp.square(x), axis=-1, keepdims=True) - 2.0 * x @ codebook.T
          + jnp.sum(jnp.square(codebook), axis=-1))  # [..., K]
  return jnp.argmin(dist, axis=-1).astype(jnp.int32)


def quantize(codebooks: jax.Array, x: jax.Array, num_levels: int | None = None) -> QuantizeResult:
  """Residual quantization of x with the first `num_levels` codebooks.

  Args:
    codebooks: [levels, K, D].
    x: [..., D].
    num_levels: levels to use (static); defaults to all.

  Returns:
    QuantizeResult. Gradients flow from `residuals` to x (codes and codebooks are constants).
  """
  n = codebooks.shape[0] if num_levels is None else num_levels
  if not 1 <= n <= codebooks.shape[0]:
    raise ValueError(f'quantize: num_levels={n} outside [1, {codebooks.shape[0]}]')

  def level(residual, codebook):
    code = nearest_code(codebook, jax.lax.stop_gradient(residual))  # [...]
    vector = jnp.take(codebook, code, axis=0).astype(residual.dtype)  # [..., D]
    return residual - vector, (code, residual, vector)

  _, (codes, residuals, vectors) = jax.lax.scan(level, x, codebooks[:n])
  # codes: [n, ...]; residuals, vectors: [n, ..., D]
  codes = jnp.moveaxis(codes, 0, -1)  # [..., n]
  residuals = jnp.moveaxis(residuals, 0, -2)  # [..., n, D]
  vectors = jnp.moveaxis(vectors, 0, -2)  # [..., n, D]
  return QuantizeResult(jnp.sum(vectors, axis=-2), codes, residuals, vectors)


def dequantize(codebooks: jax.Array, codes: jax.Array,
               num_levels: int | jax.Array | None = None) -> jax.Array:
  """Sum of code vectors of the first `num_levels` levels.

  Args:
    codebooks: [levels, K, D].
    codes: [..., n] with n <= levels.
    num_levels: levels to sum (may be traced, so one compiled decoder serves every count);
      default n.

  Returns:
    [..., D].
  """
  n = codes.shape[-1]
  if n > codebooks.shape[0]:
    raise ValueError(f'dequantize: codes have {n} levels, codebooks only {codebooks.shape[0]}')
  vectors = jax.vmap(lambda cb, c: jnp.take(cb, c, axis=0, mode='clip'), in_axes=(0, -1),
                     out_axes=-2)(codebooks[:n], codes)  # [..., n, D]
  if num_levels is not None:
    vectors = vectors * (jnp.arange(n) < num_levels)[:, None].astype(vectors.dtype)
  return jnp.sum(vectors, axis=-2)


def level_counts(codes: jax.Array, mask: jax.Array, codebook_size: int) -> jax.Array:
  """Masked per-level histograms. codes, mask: [N, L]. Returns float32 [L, K]."""
  return jax.vmap(lambda c, m: jax.ops.segment_sum(m, c, num_segments=codebook_size),
                  in_axes=(1, 1))(codes, mask.astype(jnp.float32))


def ema_update(ema_count: jax.Array, ema_sum: jax.Array, residuals: jax.Array, codes: jax.Array,
               mask: jax.Array, *, decay: float, epsilon: float
               ) -> tuple[jax.Array, jax.Array, jax.Array]:
  """One EMA step of the codebooks (VQ-VAE-2 / SoundStream style).

  A level with no unmasked vector in the batch is left unchanged.

  Args:
    ema_count: [L, K].
    ema_sum: [L, K, D].
    residuals: [N, L, D] vectors each level quantized.
    codes: [N, L] their codes.
    mask: [N, L] which (vector, level) pairs count (quantizer dropout).
    decay: EMA decay.
    epsilon: Laplace smoothing.

  Returns:
    (codebooks [L, K, D], ema_count [L, K], ema_sum [L, K, D]).
  """
  num_codes = ema_count.shape[-1]
  maskf = mask.astype(jnp.float32)
  counts = level_counts(codes, maskf, num_codes)  # [L, K]
  sums = jax.vmap(lambda r, c, m: jax.ops.segment_sum(r * m[:, None], c, num_segments=num_codes),
                  in_axes=(1, 1, 1))(residuals.astype(jnp.float32), codes, maskf)  # [L, K, D]
  active = jnp.any(mask, axis=0)  # [L]
  new_count = decay * ema_count + (1.0 - decay) * counts
  new_sum = decay * ema_sum + (1.0 - decay) * sums
  new_count = jnp.where(active[:, None], new_count, ema_count)
  new_sum = jnp.where(active[:, None, None], new_sum, ema_sum)
  total = jnp.sum(new_count, axis=-1, keepdims=True)  # [L, 1]
  smoothed = (new_count + epsilon) / (total + num_codes * epsilon) * total  # [L, K]
  codebooks = new_sum / jnp.maximum(smoothed, 1e-12)[..., None]
  return codebooks, new_count, new_sum


def _sample_rows(rng: jax.Array, x: jax.Array, mask: jax.Array, num: int) -> jax.Array:
  """`num` rows of x [N, D] among rows with mask [N] True: distinct while there are enough."""
  logits = jnp.where(mask, 0.0, -jnp.inf)
  k_perm, k_rep = jax.random.split(rng)
  idx = jax.random.categorical(k_rep, logits, shape=(num,))  # with replacement
  if x.shape[0] >= num:
    _, distinct = jax.lax.top_k(logits + jax.random.gumbel(k_perm, logits.shape), num)
    idx = jnp.where(jnp.arange(num) < jnp.sum(mask), distinct, idx)
  return jnp.take(x, idx, axis=0)


def replace_dead_codes(codebooks: jax.Array, ema_count: jax.Array, ema_sum: jax.Array,
                       residuals: jax.Array, mask: jax.Array, rng: jax.Array, *, threshold: float
                       ) -> tuple[jax.Array, jax.Array, jax.Array, jax.Array]:
  """Replaces codes whose EMA count is below `threshold` with random batch vectors of their level.

  A replaced code restarts with ema_count = threshold and ema_sum = vector * threshold, so it
  is replaced again next step unless it attracts vectors. Levels with no unmasked vector
  keep their codes.

  Args:
    codebooks: [L, K, D].
    ema_count: [L, K].
    ema_sum: [L, K, D].
    residuals: [N, L, D] vectors each level quantized.
    mask: [N, L] which vectors may be sampled.
    rng: PRNG key.
    threshold: dead-code threshold on ema_count.

  Returns:
    (codebooks, ema_count, ema_sum, dead [L, K] bool: which codes were replaced).
  """
  num_levels, num_codes, _ = codebooks.shape
  keys = jax.random.split(rng, num_levels)
  samples = jax.vmap(lambda k, r, m: _sample_rows(k, r, m, num_codes), in_axes=(0, 1, 1))(
      keys, residuals.astype(codebooks.dtype), mask)  # [L, K, D]
  dead = (ema_count < threshold) & jnp.any(mask, axis=0)[:, None]  # [L, K]
  codebooks = jnp.where(dead[..., None], samples, codebooks)
  ema_count = jnp.where(dead, jnp.asarray(threshold, ema_count.dtype), ema_count)
  ema_sum = jnp.where(dead[..., None], samples * threshold, ema_sum)
  return codebooks, ema_count, ema_sum, dead


def kmeans_plus_plus(rng: jax.Array, x: jax.Array, num_clusters: int, mask: jax.Array
                     ) -> jax.Array:
  """k-means++ seeding: each new center is a row drawn with probability ~ squared distance
  to the nearest center so far. x: [N, D]; mask: [N]. Returns [K, D]."""
  keys = jax.random.split(rng, num_clusters)
  first = x[jax.random.categorical(keys[0], jnp.where(mask, 0.0, -jnp.inf))]  # [D]
  centers = jnp.zeros((num_clusters, x.shape[-1]), x.dtype).at[0].set(first)
  d2 = jnp.sum(jnp.square(x - first), axis=-1)  # [N]

  def body(j, carry):
    centers, d2 = carry
    logits = jnp.where(mask, jnp.log(d2 + 1e-12), -jnp.inf)
    new = x[jax.random.categorical(keys[j], logits)]  # [D]
    return centers.at[j].set(new), jnp.minimum(d2, jnp.sum(jnp.square(x - new), axis=-1))

  centers, _ = jax.lax.fori_loop(1, num_clusters, body, (centers, d2))
  return centers


def kmeans(rng: jax.Array, x: jax.Array, num_clusters: int, num_iters: int,
           mask: jax.Array | None = None) -> tuple[jax.Array, jax.Array]:
  """Lloyd's k-means. x: [N, D]; mask: [N] rows to use. Returns (centers [K, D], counts [K]).

  Centers start from k-means++ seeding; an empty cluster keeps its previous center.
  """
  x = x.astype(jnp.float32)
  mask = jnp.ones(x.shape[:1], bool) if mask is None else mask
  maskf = mask.astype(jnp.float32)
  centers = kmeans_plus_plus(rng, x, num_clusters, mask)  # [K, D]

  def step(_, centers):
    assign = nearest_code(centers, x)  # [N]
    counts = jax.ops.segment_sum(maskf, assign, num_segments=num_clusters)  # [K]
    sums = jax.ops.segment_sum(x * maskf[:, None], assign, num_segments=num_clusters)
    return jnp.where(counts[:, None] > 0, sums / jnp.maximum(counts, 1.0)[:, None], centers)

  centers = jax.lax.fori_loop(0, num_iters, step, centers)
  counts = jax.ops.segment_sum(maskf, nearest_code(centers, x), num_segments=num_clusters)
  return centers, counts


def kmeans_init(rng: jax.Array, x: jax.Array, *, num_levels: int, codebook_size: int,
                num_iters: int, mask: jax.Array | None = None) -> tuple[jax.Array, jax.Array]:
  """Residual k-means: level l clusters what levels < l left over.

  Args:
    rng: PRNG key.
    x: [N, D] vectors (e.g. a flattened first batch of encoder frames).
    num_levels: levels L.
    codebook_size: codes K per level.
    num_iters: Lloyd iterations per level.
    mask: [N] rows to use (default all).

  Returns:
    (codebooks [L, K, D], counts [L, K] of the final assignment at each level).
  """
  def level(residual, key):
    centers, counts = kmeans(key, residual, codebook_size, num_iters, mask)
    vector = jnp.take(centers, nearest_code(centers, residual), axis=0)
    return residual - vector, (centers, counts)

  _, (codebooks, counts) = jax.lax.scan(level, x.astype(jnp.float32),
                                        jax.random.split(rng, num_levels))
  return codebooks, counts


def codebook_perplexity(counts: jax.Array) -> jax.Array:
  """exp(entropy) of each level's code histogram. counts: [L, K]. Returns [L]."""
  p = counts / jnp.maximum(jnp.sum(counts, axis=-1, keepdims=True), 1e-9)
  return jnp.exp(-jnp.sum(jnp.where(p > 0, p * jnp.log(jnp.maximum(p, 1e-30)), 0.0), axis=-1))


def sample_level_mask(rng: jax.Array, batch: int, num_levels: int, dropout: float) -> jax.Array:
  """Quantizer dropout: [batch, levels] bool, True for levels < n, n ~ U{1..L} with prob `dropout`."""
  k_apply, k_n = jax.random.split(rng)
  n = jax.random.randint(k_n, (batch,), 1, num_levels + 1)
  n = jnp.where(jax.random.uniform(k_apply, (batch,)) < dropout, n, num_levels)
  return jnp.arange(num_levels)[None, :] < n[:, None]


class RVQOutput(NamedTuple):
  """What `ResidualVQ.forward` returns.

  Attributes:
    quantized: [..., D] straight-through quantized vectors (active levels only).
    codes: [..., L] int32 codes of all levels.
    commit_loss: scalar, mean squared distance of each active residual to its code vector.
    state: the updated (when train=True) state.
    metrics: scalars: per-level perplexity and dead-code count.
  """
  quantized: jax.Array
  codes: jax.Array
  commit_loss: jax.Array
  state: dict
  metrics: dict


class ResidualVQ:
  """Stateless wrapper that ties the pure functions above to one `RVQConfig`."""

  def __init__(self, config: RVQConfig):
    self.config = config

  def init_state(self, boxed: bool = True) -> dict:
    """Fresh (uninitialised) state; leaves are `nn.Partitioned` boxes when `boxed`."""
    c = self.config
    state = {
        'codebooks': jnp.zeros((c.num_levels, c.codebook_size, c.dim), jnp.float32),
        'ema_count': jnp.zeros((c.num_levels, c.codebook_size), jnp.float32),
        'ema_sum': jnp.zeros((c.num_levels, c.codebook_size, c.dim), jnp.float32),
        'initialized': jnp.zeros((), bool),
    }
    if boxed:
      axes = {'codebooks': CODEBOOK_AXES, 'ema_count': COUNT_AXES, 'ema_sum': CODEBOOK_AXES,
              'initialized': ()}
      state = {k: nn.Partitioned(v, names=axes[k]) for k, v in state.items()}
    return state

  def maybe_init(self, state: dict, x: jax.Array, rng: jax.Array) -> dict:
    """Runs k-means on x [N, D] if the state is not initialised yet; otherwise returns it."""
    c = self.config

    def init(_):
      codebooks, counts = kmeans_init(rng, jax.lax.stop_gradient(x), num_levels=c.num_levels,
                                      codebook_size=c.codebook_size, num_iters=c.kmeans_iters)
      return {'codebooks': codebooks, 'ema_count': counts,
              'ema_sum': codebooks * counts[..., None], 'initialized': jnp.ones((), bool)}

    return jax.lax.cond(state['initialized'], lambda s: s, init, state)

  def forward(self, state: dict, x: jax.Array, *, rng: jax.Array | None, train: bool,
              level_mask: jax.Array | None = None) -> RVQOutput:
    """Quantizes x [batch, ..., D]; when training also updates the state.

    Args:
      state: unboxed RVQ state.
      x: [batch, ..., D].
      rng: PRNG key (needed when train=True).
      train: init on first batch, apply quantizer dropout, EMA update, dead-code replacement.
      level_mask: [batch, L] active levels; defaults to dropout samples (train) or all.

    Returns:
      RVQOutput.
    """
    c = self.config
    batch = x.shape[0]
    flat = x.reshape(-1, c.dim)  # [N, D]
    per_example = flat.shape[0] // batch
    if train:
      k_init, k_drop, k_dead = jax.random.split(rng, 3)
      state = self.maybe_init(state, flat, k_init)
      if level_mask is None:
        level_mask = sample_level_mask(k_drop, batch, c.num_levels, c.quantizer_dropout)
    elif level_mask is None:
      level_mask = jnp.ones((batch, c.num_levels), bool)
    mask = jnp.repeat(level_mask, per_example, axis=0)  # [N, L]
    out = quantize(state['codebooks'], flat)
    maskf = mask.astype(flat.dtype)
    quantized = jnp.sum(out.level_vectors * maskf[..., None], axis=-2)  # [N, D]
    quantized = flat + jax.lax.stop_gradient(quantized - flat)
    sq = jnp.mean(jnp.square(out.residuals - jax.lax.stop_gradient(out.level_vectors)), axis=-1)
    commit = jnp.sum(sq * maskf) / jnp.maximum(jnp.sum(maskf), 1.0)
    counts = level_counts(out.codes, mask, c.codebook_size)  # [L, K]
    if train:
      residuals = jax.lax.stop_gradient(out.residuals)
      codebooks, ema_count, ema_sum = ema_update(
          state['ema_count'], state['ema_sum'], residuals, out.codes, mask, decay=c.decay,
          epsilon=c.epsilon)
      dead = jnp.zeros_like(ema_count, bool)
      if c.dead_code_threshold > 0:
        codebooks, ema_count, ema_sum, dead = replace_dead_codes(
            codebooks, ema_count, ema_sum, residuals, mask, k_dead,
            threshold=c.dead_code_threshold)
      state = {'codebooks': codebooks, 'ema_count': ema_count, 'ema_sum': ema_sum,
               'initialized': state['initialized']}
      dead_count = jnp.sum(dead, axis=-1)
    else:
      dead_count = jnp.sum(state['ema_count'] < c.dead_code_threshold, axis=-1)
    perplexity = codebook_perplexity(counts)
    metrics = {}
    for level in range(c.num_levels):
      metrics[f'perplexity_l{level}'] = perplexity[level]
      metrics[f'dead_codes_l{level}'] = dead_count[level].astype(jnp.float32)
    return RVQOutput(quantized.reshape(x.shape), out.codes.reshape(*x.shape[:-1], c.num_levels),
                     commit, state, metrics)

  def encode(self, state: dict, x: jax.Array, num_levels: int | None = None) -> jax.Array:
    """Codes [..., n] of x [..., D] (no state update)."""
    return quantize(state['codebooks'], x, num_levels).codes

  def decode(self, state: dict, codes: jax.Array,
             num_levels: int | jax.Array | None = None) -> jax.Array:
    """Vectors [..., D] of codes [..., n] (n <= L), summing the first `num_levels` levels."""
    return dequantize(state['codebooks'], codes, num_levels)
