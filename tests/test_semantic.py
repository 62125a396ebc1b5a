"""w2v-BERT semantic model and tokenizer: rates, masking, training, sizes, save/load."""

import math

import flax.linen as nn
import jax
import jax.numpy as jnp
import numpy as np
import optax
import pytest

from musiclm_jax.layers import conformer
from musiclm_jax.optim import OptimizerConfig
from musiclm_jax.semantic import fit_kmeans
from musiclm_jax.semantic import model as model_lib
from musiclm_jax.semantic import tokenizer as tokenizer_lib
from musiclm_jax.semantic import w2vbert

SR = 24000
VOCAB = {'embed', 'mlp', 'heads', 'kv', 'vocab', 'layers', 'conv_kernel', 'conv_in', 'conv_out',
         'codebook', 'codebook_dim', 'norm', None}
TINY = w2vbert.W2VBertConfig(
    embed_dim=64, num_heads=4, mlp_dim=256, num_contrastive_layers=1, num_mlm_layers=1,
    subsampling_channels=8, codebook_size=64, codebook_dim=64, projection_dim=64,
    dropout_rate=0.0, gumbel_temperature_decay=0.999, token_layer=1)
# Pre-training settings of gin/models/semantic/tiny.gin on a smaller net (n_fft 512 keeps the
# DFT matmul cheap; hop 240 still gives 100 Hz mel frames and 25 Hz features).
LEARN = w2vbert.W2VBertConfig(
    n_mels=64, n_fft=512, embed_dim=32, num_heads=2, mlp_dim=64, num_contrastive_layers=1,
    num_mlm_layers=1, subsampling_channels=4, codebook_size=32, codebook_dim=32,
    projection_dim=32, dropout_rate=0.0, mask_prob=0.2, mask_span=3, mlm_weight=0.5,
    diversity_weight=0.2, gumbel_temperature_decay=0.995, token_layer=1)


def _chords(batch, seconds=1.0, seed=0, note_seconds=0.2):
  """Chord sequences: every `note_seconds` a new chord of 1-3 sines, float32 [batch, N]."""
  rng = np.random.RandomState(seed)
  n, step = int(seconds * SR), int(note_seconds * SR)
  t = np.arange(step) / SR
  out = np.zeros((batch, n), np.float32)
  for b in range(batch):
    for start in range(0, n, step):
      chord = sum(0.3 * np.sin(2 * np.pi * 110 * 2 ** (rng.randint(0, 36) / 12) * t)
                  for _ in range(rng.randint(1, 4)))
      out[b, start:start + step] = chord[:n - start]
  return out


WAV = _chords(2, (SR + 959) / SR, seed=2)


@pytest.fixture(scope='module')
def tiny():
  model = model_lib.W2VBertModel(config=TINY)
  boxed, state = model.init(jax.random.PRNGKey(0), {'audio': _chords(2)})
  return model, boxed, nn.meta.unbox(boxed)['model'], state


@pytest.fixture(scope='module')
def tok(tiny):
  _, _, params, _ = tiny
  rng = np.random.RandomState(0)
  return tokenizer_lib.SemanticTokenizer(
      config=TINY, params=params, layer=1, mean=rng.randn(64) * 0.1, std=rng.uniform(0.5, 2, 64),
      centroids=rng.randn(16, 64))


def test_rotary_scores_depend_on_relative_position_only():
  rng = np.random.RandomState(0)
  q = jnp.asarray(np.tile(rng.randn(1, 1, 1, 8), (1, 6, 1, 1)), jnp.float32)
  k = jnp.asarray(np.tile(rng.randn(1, 1, 1, 8), (1, 6, 1, 1)), jnp.float32)
  pos = jnp.arange(6)
  s = jnp.einsum('bqhd,bkhd->qk', conformer.rotary_embedding(q, pos),
                 conformer.rotary_embedding(k, pos))
  np.testing.assert_allclose(s[0, 2], s[3, 5], rtol=1e-5)
  np.testing.assert_allclose(s[4, 1], s[5, 2], rtol=1e-5)


def test_causal_conv_module_ignores_the_future():
  module = conformer.ConvModule(kernel_size=5, causal=True)
  x = jnp.asarray(np.random.RandomState(0).randn(1, 12, 16), jnp.float32)
  params = jax.jit(lambda r, x: module.init(r, x, deterministic=True))(jax.random.PRNGKey(0), x)
  apply = jax.jit(lambda p, x: module.apply(p, x, deterministic=True))
  y1, y2 = apply(params, x), apply(params, x.at[:, 7:].set(0.0))
  np.testing.assert_allclose(y1[:, :7], y2[:, :7], rtol=1e-5, atol=1e-6)
  assert not np.allclose(y1[:, 7:], y2[:, 7:])


def test_every_param_has_logical_axes_from_the_vocabulary(tiny):
  _, boxed, _, state = tiny
  assert state == {}
  leaves = jax.tree.leaves(boxed, is_leaf=lambda x: isinstance(x, nn.Partitioned))
  assert leaves and all(isinstance(x, nn.Partitioned) for x in leaves)
  for leaf in leaves:
    assert len(leaf.names) == leaf.value.ndim and set(leaf.names) <= VOCAB, leaf.names


def test_paper_size_is_600m_params():
  model = model_lib.W2VBertModel()  # defaults are the paper's XL sizes
  shapes = jax.eval_shape(lambda r: model.init(r, {'audio': jnp.zeros((1, 9600))})[0],
                          jax.random.PRNGKey(0))
  count = sum(int(np.prod(x.shape)) for x in jax.tree.leaves(shapes))
  assert abs(count - 600e6) <= 0.05 * 600e6, count


def test_gin_sizes_build_the_model():
  fresh = fit_kmeans.model_from_gin(gin_files=['gin/models/semantic/tiny.gin'])
  assert fresh.config.embed_dim == 64 and fresh.config.token_layer == 1
  tiny = fresh.config  # the pre-training values the learning test below uses
  assert (tiny.mask_prob, tiny.mask_span, tiny.mlm_weight, tiny.diversity_weight) == (
      LEARN.mask_prob, LEARN.mask_span, LEARN.mlm_weight, LEARN.diversity_weight)
  assert 0.45 < w2vbert.expected_mask_fraction(tiny.mask_prob, tiny.mask_span) < 0.55
  paper = fit_kmeans.model_from_gin(gin_files=['gin/models/semantic/paper.gin'])
  assert paper.config == w2vbert.W2VBertConfig(), 'paper.gin restates the paper defaults'


def test_output_rate_is_25hz(tok):
  assert tok.frame_rate == 25.0 and TINY.samples_per_frame == 960
  tokens = tok.tokenize(WAV)  # SR + 959 samples: the remainder under one frame is dropped
  assert tokens.shape == (2, (SR + 959) // 960) == (2, 25)
  assert TINY.num_frames(10 * SR) == 250 and TINY.num_frames(10 * SR + 959) == 250
  with pytest.raises(ValueError, match='fewer than one frame'):
    tok.tokenize(np.zeros((1, 959), np.float32))


def test_log_mel_matches_the_audio_front_end():
  from musiclm_jax import audio  # pylint: disable=import-outside-toplevel
  wav = WAV.copy()
  wav[1, :5000] = 0.0  # some frames at the floor
  ref = np.asarray(audio.log_mel(wav, TINY.mel_config))
  ours = np.asarray(jax.jit(lambda x: w2vbert.log_mel(x, TINY.mel_config))(wav))
  assert ours.shape == ref.shape == (2, (SR + 959) // 240 + 1, 128)
  np.testing.assert_allclose(ours, ref, atol=1e-3)


def test_span_mask_fraction_matches_config():
  for prob, span in ((0.065, 10), (0.2, 3)):
    mask = np.asarray(w2vbert.span_mask(jax.random.PRNGKey(1), (2000, 100), mask_prob=prob,
                                        mask_span=span))
    expected = w2vbert.expected_mask_fraction(prob, span)
    assert mask.mean() == pytest.approx(expected, abs=0.01)
    # Uniform over positions, including the first and last frames.
    per_position = mask.mean(axis=0)  # [length]
    assert np.abs(per_position - expected).max() < 0.05
    # Runs of masked frames are at least one span long except where clipped at the edges.
    row = mask[0].astype(int)
    edges = np.flatnonzero(np.diff(np.concatenate([[0], row, [0]])))
    runs = edges[1::2] - edges[::2]
    starts, ends = edges[::2], edges[1::2]
    inner = (starts > 0) & (ends < len(row))
    assert np.all(runs[inner] >= span)
  assert not np.asarray(w2vbert.span_mask(jax.random.PRNGKey(0), (4, 50), mask_prob=0.0,
                                          mask_span=10)).any()


def _quantizer_logits(config, params, wav):
  module = w2vbert.W2VBert(config)
  feats = module.apply({'params': params}, wav, method=w2vbert.W2VBert.features)
  return np.asarray(feats @ params['quantizer']['logits']['kernel']
                    + params['quantizer']['logits']['bias'])  # [B, T, V]


def test_quantizer_targets_are_not_gumbel_noise_at_init(tiny):
  """The hard Gumbel sample is drawn from softmax(logits) whatever the temperature: with
  logits of std ~1 (a 1/sqrt(fan_in) init) it was a random code for most frames, so the
  contrastive targets were noise. wav2vec 2.0's N(0, 1) init gives peaked logits."""
  _, _, params, _ = tiny
  logits = _quantizer_logits(TINY, params, _chords(4, seconds=2.0, seed=3))
  probs = np.asarray(jax.nn.softmax(logits, axis=-1))
  entropy = -np.sum(probs * np.log(probs + 1e-12), axis=-1).mean()
  assert entropy < 0.5 * math.log(TINY.codebook_size), entropy
  gumbel = np.asarray(jax.random.gumbel(jax.random.PRNGKey(0), logits.shape))
  same = np.mean(np.argmax(logits + gumbel, -1) == np.argmax(logits, -1))
  assert same > 0.5, same


def test_contrastive_keeps_same_code_negatives(tiny):
  """One code everywhere: every candidate ties, so the loss is log(#masked) of the utterance
  (collapse never pays), the code-level accuracy and its chance level are both 1."""
  model, _, params, _ = tiny
  bias = np.zeros(TINY.codebook_size, np.float32)
  bias[5] = 1e4
  params = {**params, 'quantizer': {**params['quantizer'], 'logits': {
      **params['quantizer']['logits'], 'bias': jnp.asarray(bias)}}}
  wav = _chords(3, seconds=2.0, seed=4)
  mask_rng = jax.random.PRNGKey(9)
  _, m = jax.jit(lambda p, w: model.module.apply(
      {'params': p}, w, mask_rng=mask_rng, gumbel_rng=jax.random.PRNGKey(1),
      temperature=2.0))(params, wav)
  mask = np.asarray(w2vbert.span_mask(mask_rng, (3, 50), mask_prob=TINY.mask_prob,
                                      mask_span=TINY.mask_span))
  n = mask.sum(axis=1)
  assert n.min() > 1
  expected = float(np.sum(n * np.log(n)) / n.sum())
  np.testing.assert_allclose(float(m['contrastive_loss']), expected, rtol=1e-4)
  for key, value in (('contrastive_accuracy', 1.0), ('contrastive_chance', 1.0),
                     ('codes_used', 1.0), ('codes_per_utterance', 1.0)):
    assert float(m[key]) == pytest.approx(value), key
  assert float(m['mask_fraction']) == pytest.approx(mask.mean())


def test_pretraining_learns_beyond_chance():
  """180 AdamW steps, every step fresh chord sequences and fresh masks, the trainer's optimizer
  settings: the contrastive and MLM accuracies must leave chance and the codebook stay in use.

  Chance for the code-level contrastive accuracy is `contrastive_chance` (a random masked
  frame of the utterance has the positive's code). With the former 1/sqrt(fan_in) quantizer
  init this fails: the accuracy stays near chance (~0.10 vs 0.08 over the last 30 steps).
  """
  steps, batch = 180, 8
  pool = _chords(batch * 16, seconds=2.0, seed=7)  # 50 frames a clip
  model = model_lib.W2VBertModel(config=LEARN)
  boxed, state = model.init(jax.random.PRNGKey(0), {'audio': pool[:batch]})
  params = nn.meta.unbox(boxed)['model']
  opt = OptimizerConfig(learning_rate=3e-3, warmup_steps=10).make(steps)

  @jax.jit
  def train_step(p, opt_state, audio, rng, step):
    def loss_fn(p):
      return model.loss('model', {'model': p}, state, {'audio': audio}, rng, step)
    (_, (metrics, _)), grads = jax.value_and_grad(loss_fn, has_aux=True)(p)
    updates, opt_state = opt.update(grads, opt_state, p)
    return optax.apply_updates(p, updates), opt_state, metrics

  opt_state, rng, history = opt.init(params), jax.random.PRNGKey(1), []
  for step in range(steps):
    rng, step_rng = jax.random.split(rng)
    audio = pool[(np.arange(batch) + step * batch) % len(pool)]
    params, opt_state, metrics = train_step(params, opt_state, audio, step_rng, step)
    history.append(metrics)
  history = [{k: float(v) for k, v in h.items()} for h in jax.device_get(history)]
  assert all(np.isfinite(h['loss']) for h in history)
  first, last = ({k: np.mean([h[k] for h in part]) for k in history[0]}
                 for part in (history[:30], history[-30:]))
  expected = w2vbert.expected_mask_fraction(LEARN.mask_prob, LEARN.mask_span)
  assert abs(np.mean([h['mask_fraction'] for h in history]) - expected) < 0.03
  chance = last['contrastive_chance']
  assert last['contrastive_accuracy'] > max(1.8 * chance, chance + 0.08), (first, last)
  assert last['mlm_accuracy'] > chance, last
  assert last['contrastive_loss'] < first['contrastive_loss'] - 0.2, (first, last)
  assert last['codes_used'] >= LEARN.codebook_size / 2, last  # the codebook stays in use
  assert last['codes_per_utterance'] >= 5, last  # codes vary within an utterance
  # The quantizer stays peaked (its Gumbel samples are mostly the argmax codes).
  logits = _quantizer_logits(LEARN, params, pool[:4])
  gumbel = np.asarray(jax.random.gumbel(jax.random.PRNGKey(2), logits.shape))
  assert np.mean(np.argmax(logits + gumbel, -1) == np.argmax(logits, -1)) > 0.3


def test_input_normalisations():
  rng = np.random.RandomState(0)
  mel = rng.randn(2, 40, 32) * 2 - 6  # [B, F, n_mels]
  frame = np.asarray(w2vbert.normalize_log_mel(jnp.asarray(mel), 'frame'))
  np.testing.assert_allclose(frame.mean(-1), 0, atol=1e-5)
  np.testing.assert_allclose(frame.std(-1), 1, atol=1e-3)
  louder = np.asarray(w2vbert.normalize_log_mel(jnp.asarray(mel * 1.5 + 4), 'frame'))
  np.testing.assert_allclose(louder, frame, atol=1e-3)  # per-frame affine invariance
  steady = rng.randn(1, 1, 32) * 3
  # 'frame_utterance' also removes a steady spectrum: the utterance's mean frame.
  for x in (mel, np.concatenate([mel[:1], mel[:1] + 0.5 * steady])):
    out = np.asarray(w2vbert.normalize_log_mel(jnp.asarray(x), 'frame_utterance'))
    np.testing.assert_allclose(out.mean(1), 0, atol=1e-5)
    np.testing.assert_allclose(out.std(axis=(1, 2)), 1, atol=3e-3)
  with pytest.raises(ValueError, match='input_norm'):
    w2vbert.W2VBertConfig(input_norm='global')


def test_tokenizer_is_deterministic_and_in_range(tok):
  a, b = tok.tokenize(WAV), tok.tokenize(WAV.copy())
  assert a.dtype == jnp.int32 and a.shape == (2, 25)
  np.testing.assert_array_equal(a, b)
  assert 0 <= int(a.min()) and int(a.max()) < tok.cardinality == 16
  with pytest.raises(ValueError, match='NaN'):
    tok.tokenize(np.full((1, 960), np.nan, np.float32))


def test_save_load_round_trip(tok, tmp_path):
  tok.save(str(tmp_path))
  assert not [f for f in tmp_path.iterdir() if f.name.endswith('.tmp')]
  loaded = tokenizer_lib.SemanticTokenizer.load(str(tmp_path))
  assert loaded.config == tok.config and loaded.layer == tok.layer
  np.testing.assert_array_equal(loaded.centroids, tok.centroids)
  np.testing.assert_array_equal(loaded.tokenize(WAV), tok.tokenize(WAV))
  with pytest.raises(FileNotFoundError, match='tokenizer.json'):
    tokenizer_lib.SemanticTokenizer.load(str(tmp_path / 'missing'))


def test_fit_tokenizer_core(tiny):
  _, _, params, _ = tiny
  batches = [_chords(2, seed=s) for s in range(4)]  # 200 frames
  lines = []
  tok, result = fit_kmeans.fit_tokenizer(
      TINY, params, iter(batches), num_clusters=8, seed=0, num_iters=5, kmeans_batch_size=None,
      max_frames=150, log=lines.append)
  assert any('inertia' in line for line in lines)
  assert np.all(np.diff(result.inertia) <= 1e-6 * np.asarray(result.inertia[:-1]))
  assert tok.cardinality == 8 and tok.layer == TINY.token_layer
  tokens = np.asarray(tok.tokenize(WAV))
  assert tokens.shape == (2, 25) and tokens.min() >= 0 and tokens.max() < 8
