"""Tiny coarse stage: 8 fake devices train it as 1 device does; its KV cache shards.

The stage is the `gin/models/stages/coarse/tiny.gin` model. Its vocabulary is padded up to a
multiple of 128: the layout's 1,091 ids do not divide over a `tensor` axis, and jit refuses
uneven shardings of arguments (`IndivisibleError`).
"""

import dataclasses
import os

import flax.linen as nn
import gin
import jax
import jax.numpy as jnp
from jax.sharding import NamedSharding
import numpy as np

from musiclm_jax import partitioning
from musiclm_jax import testing
from musiclm_jax.stages import lm
from musiclm_jax.stages import model as stage_model

REPO = os.path.dirname(os.path.dirname(os.path.abspath(__file__)))
VOCAB_MULTIPLE = 128


def _tiny_coarse() -> stage_model.StageModel:
  gin.add_config_file_search_path(REPO)
  gin.parse_config_files_and_bindings(['gin/models/stages/coarse/tiny.gin'], [])
  model = gin.query_parameter('%MODEL').scoped_configurable_fn()
  vocab = -(-model.layout.vocab_size // VOCAB_MULTIPLE) * VOCAB_MULTIPLE
  config = dataclasses.replace(model.config, vocab_size=vocab, attention_impl='xla')
  return stage_model.StageModel(layout=model.layout, config=config, z_loss=model.z_loss)


def _codes(layout, batch: int, seed: int = 0) -> dict[str, np.ndarray]:
  rng = np.random.default_rng(seed)
  return {f.name: rng.integers(0, f.codebook_size, (batch, f.num_frames, f.num_levels))
          for f in layout.fields}


def test_tiny_coarse_sharded_steps_match_single_device():
  model = _tiny_coarse()
  assert model.config.num_layers == 2 and model.config.embed_dim == 64  # the tiny gin sizes
  batch = model.layout.build(_codes(model.layout, batch=8))
  testing.check_sharded_step(model, batch, mesh_shapes=testing.DEFAULT_MESHES, steps=2,
                             rtol=2e-4, atol=1e-4)


def test_kv_cache_shards_and_decodes_like_one_device():
  """Prefill + one decode step with the cache laid out by `CACHE_AXES` on a 2x2x2 mesh."""
  model = _tiny_coarse()
  rules = partitioning.DEFAULT_RULES
  mesh = partitioning.make_mesh({'data': 2, 'fsdp': 2, 'tensor': 2})
  batch, max_len, prompt_len = 4, 48, 40
  cache_spec = nn.logical_to_mesh_axes(lm.CACHE_AXES, list(rules))
  assert tuple(cache_spec) == (None, ('data', 'fsdp'), None, 'tensor', None)

  boxed = jax.eval_shape(model.init, jax.random.PRNGKey(0), None)[0]['model']
  rng = np.random.default_rng(0)
  params = jax.tree.map(lambda s: (0.2 * rng.standard_normal(s.shape)).astype(s.dtype),
                        nn.unbox(boxed))
  param_shardings = partitioning.logical_to_sharding(nn.get_partition_spec(boxed), mesh, rules)
  tokens = rng.integers(3, model.layout.vocab_size, (batch, prompt_len + 1)).astype(np.int32)

  def make_run(cache_sharding):
    def run(p, toks):
      cache = model.init_cache(batch, max_len)
      if cache_sharding is not None:
        cache = jax.lax.with_sharding_constraint(cache, cache_sharding)
      _, cache = model.prefill(p, toks[:, :prompt_len], cache)
      return model.decode_step(p, toks[:, prompt_len], cache, jnp.int32(prompt_len))
    return run

  want_logits, want_cache = jax.jit(make_run(None))(params, tokens)
  cache_sharding = NamedSharding(mesh, cache_spec)
  step = jax.jit(make_run(cache_sharding),
                 in_shardings=(param_shardings, partitioning.batch_sharding(mesh, rules, 2)),
                 out_shardings=(None, {'k': cache_sharding, 'v': cache_sharding}))
  got_logits, got_cache = step(jax.device_put(params, param_shardings), tokens)
  assert got_cache['k'].addressable_shards[0].data.shape == (2, 1, max_len, 2, 16)
  np.testing.assert_allclose(got_logits, want_logits, rtol=1e-4, atol=1e-4)
  np.testing.assert_allclose(got_cache['v'], want_cache['v'], rtol=1e-4, atol=1e-5)
