"""Melody embedder: triplet loss, parameter counts, windows, tokens, saved folders."""

import flax.linen as nn
import gin
import jax
import jax.numpy as jnp
import numpy as np
import pytest

from musiclm_jax.melody import inference, losses, model as model_lib

SR = 24000
# A test-sized config: 24 mel bands, 0.25 s windows every 0.2 s, one 16-wide layer.
TEST_CONFIG = model_lib.MelodyConfig(
    n_fft=256, win_length=256, hop_length=120, n_mels=24, patch_frames=2, width=16,
    num_layers=1, num_heads=2, head_dim=8, mlp_dim=32, embed_dim=16, window_seconds=0.25,
    hop_seconds=0.2, stft='dft')
PARAM_AXES = {'embed', 'mlp', 'heads', 'kv', 'vocab', 'layers', 'conv_kernel', 'conv_in',
              'conv_out', 'codebook', 'codebook_dim', 'norm', None}


# -- loss ------------------------------------------------------------------------------------


def test_triplet_loss_hand_case():
  # 1-D embeddings; squared distances by hand, margin 0.5:
  #   x = [0, 1, 1.1, 3, 0.5], labels [0, 0, 1, 1, 2] (example 4 has no positive).
  #   (0,1): d_ap 1,    negatives of 0 {1.21, 9, 0.25}: semi-hard 1.21 -> 1 - 1.21 + .5 = 0.29
  #   (1,0): d_ap 1,    negatives of 1 {0.01, 4, 0.25}: semi-hard 4    -> 0
  #   (2,3): d_ap 3.61, negatives of 2 {1.21, 0.01, 0.36}: none farther -> hardest 0.01
  #          -> 3.61 - 0.01 + .5 = 4.1  (TF-Addons' farthest fallback would give 2.9)
  #   (3,2): d_ap 3.61, negatives of 3 {9, 4, 6.25}: semi-hard 4     -> 0.11
  emb = jnp.array([[0.0], [1.0], [1.1], [3.0], [0.5]])
  labels = jnp.array([0, 0, 1, 1, 2])
  loss, metrics = losses.triplet_semihard_loss(emb, labels, margin=0.5)
  np.testing.assert_allclose(float(loss), (0.29 + 0 + 4.1 + 0.11) / 4, rtol=1e-5)
  np.testing.assert_allclose(float(metrics['semihard_fraction']), 0.75)
  np.testing.assert_allclose(float(metrics['active_fraction']), 0.75)
  np.testing.assert_allclose(float(metrics['valid_pairs']), 4)
  np.testing.assert_allclose(float(metrics['positive_distance']), (1 + 1 + 3.61 + 3.61) / 4,
                             rtol=1e-5)
  np.testing.assert_allclose(float(metrics['negative_distance']), (1.21 + 4 + 0.01 + 4) / 4,
                             rtol=1e-5)
  # Nearest other example: 0 -> 4, 1 -> 2, 2 -> 1 (all wrong), 3 -> 2 (right).
  np.testing.assert_allclose(float(metrics['nearest_neighbour_accuracy']), 0.25)


def _brute_force(emb, labels, margin):
  d = np.sum((emb[:, None] - emb[None]) ** 2, -1)
  total, count = 0.0, 0
  for a in range(len(emb)):
    negs = [d[a, n] for n in range(len(emb)) if labels[n] != labels[a]]
    for p in range(len(emb)):
      if p == a or labels[p] != labels[a] or not negs:
        continue
      farther = [x for x in negs if x > d[a, p]]
      neg = min(farther) if farther else min(negs)
      total += max(d[a, p] - neg + margin, 0.0)
      count += 1
  return total / max(count, 1)


def test_triplet_loss_matches_brute_force_and_has_finite_grads():
  rng = np.random.default_rng(0)
  emb = rng.standard_normal((24, 5)).astype(np.float32)
  emb /= np.linalg.norm(emb, axis=1, keepdims=True)
  labels = rng.integers(0, 6, 24)
  loss, _ = losses.triplet_semihard_loss(jnp.asarray(emb), jnp.asarray(labels), margin=0.3)
  np.testing.assert_allclose(float(loss), _brute_force(emb, labels, 0.3), rtol=1e-5)
  # Degenerate batches: one label (no negatives), all distinct (no positives).
  for lab in (np.zeros(24, int), np.arange(24)):
    loss, metrics = losses.triplet_semihard_loss(jnp.asarray(emb), jnp.asarray(lab))
    assert float(loss) == 0.0 and float(metrics['valid_pairs']) == 0.0
  grad = jax.grad(lambda e: losses.triplet_semihard_loss(e, jnp.asarray(labels))[0])(
      jnp.asarray(emb))
  assert np.all(np.isfinite(np.asarray(grad))) and np.any(np.asarray(grad) != 0)


# -- sizes -----------------------------------------------------------------------------------


def _abstract_params(config):
  model = model_lib.MelodyModel(config=config)
  batch = {'audio': jax.ShapeDtypeStruct((2, config.window_samples), jnp.float32),
           'melody': jax.ShapeDtypeStruct((2,), jnp.int32)}
  params, _ = jax.eval_shape(model.init, jax.random.PRNGKey(0), batch)
  return params['model']


def _gin_config(path):
  from musiclm_jax import train as train_lib
  train_lib.parse_gin([path], [])
  return gin.query_parameter('%MODEL').scoped_configurable_fn().config


def test_paper_parameter_count_without_allocation():
  config = _gin_config('gin/models/melody/paper.gin')
  assert config == model_lib.MelodyConfig()  # the dataclass defaults are the paper's
  assert (config.num_layers, config.num_heads, config.width, config.mlp_dim,
          config.embed_dim) == (12, 6, 512, 1024, 192)
  abstract = _abstract_params(config)
  assert model_lib.count_params(abstract) == model_lib.param_count(config)['total'] == 22_309_568
  # Every parameter carries logical axis names from the project's vocabulary.
  leaves = jax.tree.leaves(abstract, is_leaf=lambda x: isinstance(x, nn.Partitioned))
  assert leaves and all(isinstance(x, nn.Partitioned) for x in leaves)
  assert all(set(x.names) <= PARAM_AXES for x in leaves)


def test_tiny_gin_and_parameter_count():
  config = _gin_config('gin/runs/melody_tiny.gin')
  assert config.width == 128 and config.num_layers == 3 and config.embed_dim == 192
  assert config.stft == 'dft' and config.num_tokens == 50
  total = model_lib.count_params(_abstract_params(config))
  assert total == model_lib.param_count(config)['total'] == 476_608
  gin.clear_config()
  paper = _gin_config('gin/runs/melody_paper.gin')  # the run file parses; bf16 activations
  assert paper.dtype == 'bfloat16' and paper.width == 512


# -- windows, embeddings, tokens -------------------------------------------------------------


def test_windows_every_3_seconds():
  config = model_lib.MelodyConfig()
  assert (config.window_samples, config.hop_samples) == (96000, 72000)
  for seconds, count in ((10, 3), (30, 9), (4, 1), (3, 1), (7, 2), (6.9, 1)):
    assert config.num_windows(int(seconds * SR)) == count, seconds
  assert model_lib.window_starts(10 * SR, 96000, 72000) == [0, 72000, 144000]


@pytest.fixture(scope='module')
def params():
  model = model_lib.MelodyModel(config=TEST_CONFIG)
  p, _ = jax.jit(model.init)(jax.random.PRNGKey(0),
                            {'audio': np.zeros((2, TEST_CONFIG.window_samples), np.float32)})
  return nn.unbox(p)['model']


def test_embed_windows_shapes_and_alignment(params, tmp_path):
  c = TEST_CONFIG
  rng = np.random.default_rng(1)
  wav = 0.1 * rng.standard_normal((2, 15600)).astype(np.float32)  # 0.65 s: 3 windows
  embedder = inference.MelodyEmbedder(config=c, params=params)
  emb = embedder.embed(wav)
  assert emb.shape == (2, 3, c.embed_dim) == (2, embedder.num_windows(15600), c.embed_dim)
  np.testing.assert_allclose(np.linalg.norm(emb, axis=-1), 1.0, rtol=1e-5)
  net = model_lib.MelodyEncoder(c)
  for w, start in enumerate(model_lib.window_starts(15600, c.window_samples, c.hop_samples)):
    direct = net.apply({'params': params}, wav[:, start:start + c.window_samples])
    np.testing.assert_allclose(emb[:, w], direct, rtol=1e-4, atol=1e-5)
  assert embedder.embed(wav[0, :1000]).shape == (1, 1, c.embed_dim)  # short: padded
  with pytest.raises(ValueError, match='NaN'):
    embedder.embed(np.full((1, 6000), np.nan, np.float32))
  with pytest.raises(ValueError, match='codebooks'):
    embedder.tokens(wav)
  # Tokens: window-major RVQ codes; the saved folder round-trips.
  codebooks = rng.standard_normal((3, 5, c.embed_dim)).astype(np.float32) * 0.3
  fitted = embedder.with_codebooks(codebooks)
  tokens = fitted.tokens(wav)
  assert tokens.shape == (2, 3 * 3) and tokens.dtype == np.int32
  assert tokens.min() >= 0 and tokens.max() < 5
  np.testing.assert_array_equal(tokens.reshape(2, 3, 3), fitted.quantize(emb))
  fitted.save(str(tmp_path / 'saved'), extra={'report.json': {'ok': 1}})
  loaded = inference.MelodyEmbedder.load(str(tmp_path / 'saved'))
  assert loaded.config == c and (loaded.num_codebooks, loaded.cardinality) == (3, 5)
  np.testing.assert_array_equal(loaded.tokens(wav), tokens)
  assert inference.MelodyEmbedder.from_path(str(tmp_path / 'saved')).config == c
  with pytest.raises(FileNotFoundError):
    inference.MelodyEmbedder.from_path(str(tmp_path))
