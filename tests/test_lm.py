"""The stage LM: causality, KV-cached decoding, scan/remat, paper sizes, a tiny training run.

XLA:CPU compilation dominates the cost here, so tests share compiled functions, compile
without LLVM optimization (`_jit`: ~3x faster to build, same numerics) and draw parameters from
`eval_shape` + numpy instead of compiling `init` (except in the training test).
"""

import functools
import os

import flax.linen as nn
import gin
import jax
import jax.numpy as jnp
import numpy as np
import optax
import pytest

from musiclm_jax.layers import attention
from musiclm_jax.layers import transformer
from musiclm_jax.stages import layouts
from musiclm_jax.stages import lm
from musiclm_jax.stages import model as stage_model

REPO = os.path.dirname(os.path.dirname(os.path.abspath(__file__)))
TINY = lm.LMConfig(vocab_size=40, num_layers=2, num_heads=4, num_kv_heads=2, embed_dim=32,
                   mlp_dim=64, attention_impl='xla')
_jit = functools.partial(jax.jit, compiler_options={'xla_backend_optimization_level': 0})
MHA_LN = lm.LMConfig(vocab_size=40, num_layers=2, num_heads=2, embed_dim=32, mlp_dim=64,
                     gated_mlp=False, mlp_activation='silu', norm='layer', attention_impl='xla')


def _random_params(init_fn, *args, seed=0):
  """Parameters of init_fn's shapes with N(0, 0.3^2) values, without compiling init."""
  shapes = nn.meta.unbox(jax.eval_shape(init_fn, jax.random.PRNGKey(0), *args))
  rng = np.random.default_rng(seed)
  return jax.tree_util.tree_map(
      lambda s: jnp.asarray(0.3 * rng.standard_normal(s.shape), s.dtype), shapes)


@functools.cache
def _setup(config):
  model = lm.DecoderLM(config)
  tokens = jax.random.randint(jax.random.PRNGKey(0), (2, 12), 0, config.vocab_size)
  params = _random_params(model.init, tokens)['params']
  forward = _jit(lambda p, t: model.apply({'params': p}, t))
  return model, params, tokens, forward


def test_parameters_have_logical_axes():
  model = lm.DecoderLM(TINY)
  boxed = jax.eval_shape(model.init, jax.random.PRNGKey(0), jnp.zeros((1, 4), jnp.int32))
  is_box = lambda x: isinstance(x, nn.Partitioned)
  flat = jax.tree_util.tree_flatten_with_path(boxed['params'], is_leaf=is_box)[0]
  assert all(is_box(x) for _, x in flat)
  names = {'/'.join(k.key for k in path): x.names for path, x in flat}
  assert names['token_embed/embedding'] == ('vocab', 'embed')
  assert names['logits/kernel'] == ('embed', 'vocab')
  assert names['layers/attention/query/kernel'] == ('layers', 'embed', 'heads', 'kv')
  assert names['layers/attention/key/kernel'] == ('layers', 'embed', 'heads', 'kv')
  assert names['layers/attention/out/kernel'] == ('layers', 'heads', 'kv', 'embed')
  assert names['layers/mlp/wi_0/kernel'] == ('layers', 'embed', 'mlp')
  assert names['layers/mlp/wo/kernel'] == ('layers', 'mlp', 'embed')
  assert names['layers/pre_mlp_norm/scale'] == ('layers', 'norm')
  assert names['final_norm/scale'] == ('norm',)


def test_causality():
  _, params, tokens, forward = _setup(TINY)
  base = forward(params, tokens)
  changed = forward(params, tokens.at[:, 7].set((tokens[:, 7] + 1) % TINY.vocab_size))
  np.testing.assert_array_equal(np.asarray(base[:, :7]), np.asarray(changed[:, :7]))
  assert np.abs(np.asarray(base[:, 7:] - changed[:, 7:])).max() > 1e-4


@pytest.mark.parametrize('config', [TINY, MHA_LN], ids=['gqa_rms_geglu', 'mha_ln_silu'])
def test_kv_cache_decoding_matches_full_forward(config):
  model, params, tokens, forward = _setup(config)
  prefix = 5

  @_jit
  def cached(params, tokens):
    cache = lm.init_cache(config, tokens.shape[0], 16)
    logits, cache = model.apply({'params': params}, tokens[:, :prefix], cache,
                                method=lm.DecoderLM.prefill)

    def step(cache, pos):
      token = jax.lax.dynamic_index_in_dim(tokens, pos, axis=1, keepdims=False)
      out, cache = model.apply({'params': params}, token, cache, pos,
                               method=lm.DecoderLM.decode_step)
      return cache, out

    _, steps = jax.lax.scan(step, cache, jnp.arange(prefix, tokens.shape[1]))
    return jnp.concatenate([logits, steps.transpose(1, 0, 2)], axis=1)

  np.testing.assert_allclose(np.asarray(cached(params, tokens)),
                             np.asarray(forward(params, tokens)), atol=1e-4)


def test_scan_matches_layer_by_layer():
  _, params, tokens, forward = _setup(TINY)
  block = transformer.DecoderBlock(num_heads=4, num_kv_heads=2, head_dim=8, mlp_dim=64,
                                   attention_impl='xla')

  @_jit
  def layer_by_layer(params, tokens):
    x = params['token_embed']['embedding'][tokens]  # [batch, length, embed]
    positions = jnp.arange(tokens.shape[1])
    for i in range(TINY.num_layers):
      layer = jax.tree_util.tree_map(lambda p: p[i], params['layers'])
      x, _ = block.apply({'params': layer}, x, positions)
    x = nn.RMSNorm(epsilon=1e-6).apply({'params': params['final_norm']}, x)
    return x @ params['logits']['kernel']

  np.testing.assert_allclose(np.asarray(layer_by_layer(params, tokens)),
                             np.asarray(forward(params, tokens)), atol=1e-4)


def test_remat_policies_give_same_loss_and_grad():
  layout = layouts.fine_layout(codec_codebook_size=8, coarse_levels=2, fine_levels=2,
                               acoustic_frames=4)
  rng = np.random.default_rng(0)
  batch = layout.build({'coarse': rng.integers(0, 8, (2, 4, 2)),
                        'fine': rng.integers(0, 8, (2, 4, 2))})
  models = {
      policy: stage_model.StageModel(layout=layout, config=lm.LMConfig(
          num_layers=2, num_heads=2, embed_dim=16, mlp_dim=32, dropout_rate=0.1,
          remat_policy=policy, attention_impl='xla'))
      for policy in lm.REMAT_POLICIES
  }
  params = _random_params(models['none'].init, batch)[0]

  @_jit
  def all_grads(params):  # one compilation for every policy
    return {policy: jax.value_and_grad(
        lambda p, m=m: m.loss('model', p, {}, batch, jax.random.PRNGKey(3), 0)[0])(params)
            for policy, m in models.items()}

  results = all_grads(params)
  ref_loss, ref_grad = results.pop('none')
  for policy, (loss, grad) in results.items():
    np.testing.assert_allclose(loss, ref_loss, rtol=1e-6, err_msg=policy)
    jax.tree_util.tree_map(functools.partial(
        np.testing.assert_allclose, rtol=1e-4, atol=1e-6, err_msg=policy), grad, ref_grad)


def test_bf16_compute_keeps_f32_params_and_logits():
  _, params, tokens, forward = _setup(TINY)
  bf16 = lm.DecoderLM(lm.LMConfig(**{**TINY.__dict__, 'dtype': 'bfloat16'}))
  logits = _jit(lambda p, t: bf16.apply({'params': p}, t))(params, tokens)
  assert logits.dtype == jnp.float32
  ref = forward(params, tokens)
  err = np.abs(np.asarray(logits - ref)).max() / np.abs(np.asarray(ref)).max()
  assert err < 0.05, err


def test_length_padding_is_invisible():
  q, k, v = np.random.default_rng(0).standard_normal((3, 2, 50, 4, 8), np.float32)
  attend = _jit(attention.causal_attention,
                   static_argnames=('implementation', 'length_multiple'))
  want = attend(q, k, v, implementation='xla', length_multiple=1)
  got = attend(q, k, v, implementation='xla', length_multiple=128)
  np.testing.assert_allclose(np.asarray(got), np.asarray(want), atol=1e-6)
  assert attention.resolve_implementation('auto', jnp.float32) == 'xla'
  expect = 'cudnn' if jax.default_backend() == 'gpu' else 'xla'
  assert attention.resolve_implementation(None, jnp.bfloat16, 64) == expect
  assert attention.resolve_implementation('cudnn') == 'cudnn'
  with pytest.raises(ValueError, match='attention implementation'):
    attention.resolve_implementation('flash')


def _gin_model(stage, size):
  gin.add_config_file_search_path(REPO)
  gin.parse_config_files_and_bindings([f'gin/models/stages/{stage}/{size}.gin'], [])
  return gin.query_parameter('%MODEL').scoped_configurable_fn()


@pytest.mark.parametrize('stage', ['semantic', 'coarse', 'fine'])
def test_paper_param_count(stage):
  model = _gin_model(stage, 'paper')
  cfg = model.config
  assert (cfg.num_layers, cfg.num_heads, cfg.embed_dim, cfg.mlp_dim) == (24, 16, 1024, 4096)
  assert cfg.vocab_size % 128 == 0 and 0 <= cfg.vocab_size - model.layout.vocab_size < 128
  params, _ = jax.eval_shape(model.init, jax.random.PRNGKey(0), None)
  count = lm.count_params(params)
  assert abs(count - 430e6) <= 0.05 * 430e6, (stage, count)


@pytest.mark.parametrize('stage', ['semantic', 'coarse', 'fine'])
def test_tiny_gin_metrics(stage):
  model = _gin_model(stage, 'tiny')
  rng = np.random.default_rng(0)
  fields = {f.name: rng.integers(0, f.codebook_size, (2, f.num_frames, f.num_levels))
            for f in model.layout.fields}
  params = _random_params(model.init, fields)[0]
  loss, (metrics, _) = _jit(lambda p, b: model.loss('model', p, {}, b,
                                                        jax.random.PRNGKey(1), 0))(params, fields)
  assert np.isfinite(loss) and metrics['loss'] == loss
  assert 0 <= metrics['accuracy'] <= 1
  np.testing.assert_allclose(metrics['perplexity'], np.exp(metrics['ce']), rtol=1e-5)
  levels = [k for k in metrics if k.startswith('ce_level_')]
  expected = {'semantic': [], 'coarse': [1, 2, 3, 4], 'fine': list(range(5, 13))}[stage]
  assert sorted(int(k.rsplit('_', 1)[1]) for k in levels) == expected
  if levels:  # every level has as many tokens, so per-level CEs average to the CE
    np.testing.assert_allclose(np.mean([metrics[k] for k in levels]), metrics['ce'], rtol=1e-5)


def test_loss_decreases_on_repeated_pattern():
  layout = layouts.semantic_layout(mulan_codebook_size=8, mulan_levels=2,
                                   semantic_codebook_size=16, semantic_frames=24)
  config = lm.LMConfig(num_layers=2, num_heads=4, embed_dim=32, mlp_dim=64, dropout_rate=0.0,
                       attention_impl='xla')
  model = stage_model.StageModel(layout=layout, config=config, z_loss=0.0)
  pattern = np.tile(np.array([3, 1, 4, 1, 5, 9, 2, 6]), 3)  # [24]
  batch = layout.build({'mulan': np.tile([[1, 2]], (4, 1)),
                        'semantic': np.tile(pattern, (4, 1))})
  params, _ = _jit(model.init)(jax.random.PRNGKey(0), batch)
  params = nn.meta.unbox(params)
  opt = optax.adam(3e-3)
  opt_state = opt.init(params)

  @_jit
  def step(params, opt_state):
    grads, (metrics, _) = jax.grad(
        lambda p: model.loss('model', p, {}, batch, jax.random.PRNGKey(0), 0),
        has_aux=True)(params)
    updates, opt_state = opt.update(grads, opt_state, params)
    return optax.apply_updates(params, updates), opt_state, metrics

  losses = []
  for _ in range(30):
    params, opt_state, metrics = step(params, opt_state)
    losses.append(float(metrics['loss']))
  assert losses[-1] < 0.3 * losses[0], losses
  assert float(metrics['accuracy']) > 0.5

  # Greedy KV-cached decoding from the prompt continues the pattern.
  @_jit
  def greedy(params, prompt):
    logits, cache = model.prefill(params, prompt, model.init_cache(1))
    first = jnp.argmax(logits[:, -1], -1)

    def body(carry, pos):
      token, cache = carry
      logits, cache = model.decode_step(params, token, cache, pos)
      return (jnp.argmax(logits, -1), cache), token

    _, tokens = jax.lax.scan(body, (first, cache), prompt.shape[1] + jnp.arange(8))
    return tokens[:, 0]  # [8]

  prompt = jnp.asarray(layout.prefix({'mulan': np.array([[1, 2]])}))
  codes = np.asarray(greedy(params, prompt)) - layout.offset('semantic')
  assert (codes == pattern[:8]).mean() >= 0.75, codes
