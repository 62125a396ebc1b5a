"""Synthetic stage batches: learnable token streams without any tokenizer or corpus.

Used to exercise stage training end to end where no precomputed tokens exist (multi-host
proof, smoke runs on new hardware). Each example's target levels are a seeded function of its
conditioning, so the loss can fall; batches depend only on (seed, global batch index).
"""

from collections.abc import Iterator

import numpy as np

from musiclm_jax.stages.layouts import StageLayout


def synthetic_token_input_fn(*, layout: StageLayout, batch_size: int, seed: int,
                             start_index: int, shard_index: int, num_shards: int
                             ) -> Iterator[dict[str, np.ndarray]]:
  """Yields this host's rows of global batch k = start_index, start_index + 1, ...

  Every field of `layout` gets int32 codes [batch, frames, levels] (squeezed to
  [batch, frames] for single-level fields, as StageModel expects); each field after the first
  repeats a per-example motif drawn from the first field's codes, so it is predictable.
  """
  index = start_index
  fields = layout.fields
  while True:
    rng = np.random.default_rng([seed, index])
    rows = batch_size * num_shards
    motif_key = rng.integers(0, 1 << 30, size=rows)
    batch = {}
    for i, field in enumerate(fields):
      if i == 0:
        codes = rng.integers(0, field.codebook_size, (rows, field.num_frames, field.num_levels))
      else:
        period = 4
        base = np.stack([np.random.default_rng([k, i]).integers(
            0, field.codebook_size, (period, field.num_levels)) for k in motif_key])
        reps = -(-field.num_frames // period)
        codes = np.tile(base, (1, reps, 1))[:, :field.num_frames]
      codes = codes.astype(np.int32)[shard_index * batch_size:(shard_index + 1) * batch_size]
      batch[field.name] = codes[..., 0] if field.num_levels == 1 else codes
    yield batch
    index += 1
