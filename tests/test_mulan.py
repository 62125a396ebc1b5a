"""MuLan: contrastive loss, global-batch negatives, RVQ, text handling, windowing, training."""

import subprocess
import sys
import warnings

import flax.linen as nn
import jax
import jax.numpy as jnp
import numpy as np
import pytest

from musiclm_jax import partitioning, testing
from musiclm_jax.mulan import fit_rvq, inference, model as model_lib, text as text_lib

SR = 24000
VOCAB = 320
# A test-sized config: 16 mel bands, 1 ResNet stage of basic blocks, a 1-layer text encoder.
TEST_CONFIG = model_lib.MuLanConfig(
    n_mels=16, n_fft=256, win_length=256, audio_stem_width=4, audio_stage_sizes=(1,),
    audio_widths=(8,), audio_block='basic', norm_groups=2, vocab_size=VOCAB,
    max_text_length=16, text_width=16, text_layers=1, text_heads=2, text_mlp_dim=32,
    embed_dim=16, stft='dft')  # no FFT op in sharded CPU steps (see MuLanConfig)
_WORDS = ('slow fast calm loud violin cello piano flute oboe trumpet harp organ guitar drums '
          'choir bass quiet bright dark happy sad melody rhythm tempo major minor key baroque '
          'folk classical piece played by a and the with in').split()


def _paired_batch(batch=8, samples=6000, length=8, seed=0):
  """Clip i is a sine at a class frequency; its text is a class-specific id sequence."""
  rng = np.random.default_rng(seed)
  classes = np.arange(batch)
  t = np.arange(samples) / SR
  audio = np.stack([0.3 * np.sin(2 * np.pi * (200 + 150 * c) * t) for c in classes])
  audio += 0.01 * rng.standard_normal(audio.shape)
  tokens = np.zeros((batch, length), np.int32)
  for i, c in enumerate(classes):
    tokens[i, :length - 2] = 3 + (c * 7 + np.arange(length - 2)) % (VOCAB - 3)
    tokens[i, length - 2] = 1  # EOS, then padding
  return {'audio': audio.astype(np.float32), 'text_tokens': tokens}


@pytest.fixture(scope='module')
def spm_path(tmp_path_factory):
  from musiclm_jax.data import train_spm
  out = tmp_path_factory.mktemp('spm')
  sentences = [' '.join(_WORDS[(i * 7 + j * 3) % len(_WORDS)] for j in range(8))
               for i in range(200)]
  train_spm.train(sentences, out, vocab_size=300)
  return str(out / 'spm.model')


@pytest.fixture(scope='module')
def params():
  batch = _paired_batch()
  p, _ = jax.jit(model_lib.MuLanModel(config=TEST_CONFIG).init)(jax.random.PRNGKey(0), batch)
  return nn.unbox(p)['model']


# -- loss ------------------------------------------------------------------------------------


def test_contrastive_loss_matches_numpy():
  rng = np.random.default_rng(0)
  a = rng.standard_normal((3, 4))
  t = rng.standard_normal((3, 4))
  a /= np.linalg.norm(a, axis=1, keepdims=True)
  t /= np.linalg.norm(t, axis=1, keepdims=True)
  temp = 0.1
  s = a @ t.T / temp
  row = -np.mean([s[i, i] - np.log(np.sum(np.exp(s[i]))) for i in range(3)])
  col = -np.mean([s[i, i] - np.log(np.sum(np.exp(s[:, i]))) for i in range(3)])
  loss, metrics = model_lib.contrastive_loss(jnp.asarray(a), jnp.asarray(t), jnp.asarray(temp))
  np.testing.assert_allclose(float(loss), 0.5 * (row + col), rtol=1e-5)
  np.testing.assert_allclose(float(metrics['audio_to_text_accuracy']),
                             np.mean(np.argmax(s, 1) == np.arange(3)))
  np.testing.assert_allclose(float(metrics['text_to_audio_accuracy']),
                             np.mean(np.argmax(s, 0) == np.arange(3)))
  # 2x2 by hand: S = [[1, 0], [0, 1]], t = 0.5 -> every CE is log(1 + e^-2).
  eye = jnp.eye(2)
  loss2, m2 = model_lib.contrastive_loss(eye, eye, jnp.asarray(0.5))
  np.testing.assert_allclose(float(loss2), np.log1p(np.exp(-2.0)), rtol=1e-6)
  assert float(m2['audio_to_text_accuracy']) == 1.0


def test_dft_front_end_matches_fft():
  import dataclasses
  wav = np.random.default_rng(0).standard_normal((2, 3000)).astype(np.float32)
  fft = model_lib.log_mel(wav, dataclasses.replace(TEST_CONFIG, stft='fft'))
  np.testing.assert_allclose(model_lib.log_mel(wav, TEST_CONFIG), fft, atol=2e-3)


def test_temperature_is_clipped():
  cfg = TEST_CONFIG
  p = {'params': {'log_temperature': jnp.asarray(np.log(1e-5), jnp.float32)}}
  temp = model_lib.MuLan(cfg).apply(p, method=model_lib.MuLan.temperature)
  np.testing.assert_allclose(float(temp), cfg.min_temperature, rtol=1e-5)


def test_global_batch_negatives_on_8_devices(params):
  batch = _paired_batch()
  model = model_lib.MuLanModel(config=TEST_CONFIG)
  # Training on 8 fake devices (data x fsdp x tensor = 2 x 2 x 2, so batch, parameter and
  # tensor sharding at once) gives the single-device losses and parameters.
  testing.check_sharded_step(model, batch, mesh_shapes=[{'data': 2, 'fsdp': 2, 'tensor': 2}],
                             steps=2, rtol=2e-4, atol=2e-5)

  # The loss itself on a batch sharded one example per device equals the unsharded loss, and
  # differs from the mean of per-shard losses (which would use local negatives only).
  def loss_fn(p, b):
    return model.loss('model', {'model': p}, {}, b, jax.random.PRNGKey(0), 0)[0]

  full = float(jax.jit(loss_fn)(params, batch))
  mesh = partitioning.make_mesh({'data': 8})
  rules = partitioning.DEFAULT_RULES
  sharded = partitioning.shard_batch(batch, mesh, rules)
  assert len(sharded['audio'].sharding.device_set) == 8
  with mesh, nn.logical_axis_rules(list(rules)):  # as the trainer does
    got = float(jax.jit(loss_fn)(params, sharded))
  np.testing.assert_allclose(got, full, rtol=1e-5)
  audio_emb, text_emb, temp = jax.jit(model.net.apply)({'params': params}, batch['audio'],
                                                       batch['text_tokens'])
  local = np.mean([float(model_lib.contrastive_loss(audio_emb[i:i + 2], text_emb[i:i + 2],
                                                    temp)[0]) for i in range(0, 8, 2)])
  assert abs(local - full) > 1e-3


def test_loss_decreases_on_paired_data(params):
  import optax
  batch = _paired_batch()
  model = model_lib.MuLanModel(config=TEST_CONFIG)
  tx = optax.adam(3e-3)

  @jax.jit
  def step(p, opt):
    (loss, (metrics, _)), grads = jax.value_and_grad(
        lambda q: model.loss('model', {'model': q}, {}, batch, None, 0), has_aux=True)(p)
    updates, opt = tx.update(grads, opt, p)
    return optax.apply_updates(p, updates), opt, metrics

  p, opt, losses = params, tx.init(params), []
  for _ in range(20):
    p, opt, metrics = step(p, opt)
    losses.append(float(metrics['loss']))
  assert losses[-1] < 0.5 * losses[0], losses
  assert sum(b < a for a, b in zip(losses, losses[1:])) >= 17, losses
  assert float(metrics['audio_to_text_accuracy']) > 2 / 8  # chance is 1 / 8


def test_paper_param_count():
  import gin
  from musiclm_jax import train as train_lib
  train_lib.parse_gin(['gin/models/mulan/paper.gin'], [])
  model = gin.query_parameter('%MODEL').scoped_configurable_fn()
  gin.clear_config()
  assert isinstance(model, model_lib.MuLanModel)
  batch = {'audio': jax.ShapeDtypeStruct((1, SR), jnp.float32),
           'text_tokens': jax.ShapeDtypeStruct((1, 16), jnp.int32)}
  abstract, _ = jax.eval_shape(model.init, jax.random.PRNGKey(0), batch)
  tree = abstract['model']
  # ResNet-50 without fc (1-channel stem): 23,501,760; BERT-base-sized encoder with a 2000-piece
  # vocabulary and 513 positions: 86,940,672; projections 360,704; temperature 1.
  documented = 110_803_137
  total = model_lib.count_params(tree)
  assert abs(total - documented) <= 0.05 * documented
  assert total == model_lib.param_count(model.config)['total']
  assert abs(model_lib.count_params(tree['audio_tower']) - 23.5e6) <= 0.05 * 23.5e6


def test_run_files_parse():
  import gin
  from musiclm_jax import train as train_lib
  for name in ('tiny', 'paper'):
    gin.clear_config()
    train_lib.parse_gin([f'gin/runs/mulan_{name}.gin'], ["MODEL_DIR = '/tmp/unused'"])
    model = gin.query_parameter('%MODEL').scoped_configurable_fn()
    assert isinstance(model, model_lib.MuLanModel)
    assert gin.query_parameter('%TASK_FEATURE_LENGTHS')['text_tokens'] <= \
        model.config.max_text_length


# -- RVQ ---------------------------------------------------------------------------------------


def test_rvq_round_trip(params):
  rng = np.random.default_rng(0)
  points = rng.standard_normal((400, TEST_CONFIG.embed_dim)).astype(np.float32)
  points /= np.linalg.norm(points, axis=1, keepdims=True)
  codebooks, history = fit_rvq.fit_residual_kmeans(points, num_levels=12, codebook_size=32,
                                                   num_iters=10, log=lambda s: None)
  assert codebooks.shape == (12, 32, TEST_CONFIG.embed_dim)
  assert all(b <= a + 1e-6 for a, b in zip(history, history[1:]))
  mulan = inference.MuLan(config=TEST_CONFIG, params=params, codebooks=codebooks)
  codes = mulan.quantize(points)
  assert codes.shape == (400, 12) and codes.dtype == np.int32
  assert codes.min() >= 0 and codes.max() < 32
  recon = mulan.dequantize(codes)
  err = np.mean(np.sum((recon - points) ** 2, -1))
  np.testing.assert_allclose(err, history[-1], rtol=1e-3)
  assert err < 0.5 * np.mean(np.sum(points ** 2, -1))
  assert np.array_equal(mulan.quantize(recon), codes) or err < 0.5  # stable codes
  wav = np.random.default_rng(1).standard_normal((1, SR)).astype(np.float32) * 0.1
  tokens = mulan.audio_tokens(wav)
  assert tokens.shape == (1, 12) and tokens.min() >= 0 and tokens.max() < 32
  with pytest.raises(ValueError, match='fewer than codebook_size'):
    fit_rvq.fit_residual_kmeans(points[:10], num_levels=2, codebook_size=32, log=lambda s: None)


# -- text ------------------------------------------------------------------------------------


def test_tokenizer_edge_cases(spm_path):
  import sentencepiece as spm
  tok = text_lib.TextTokenizer(spm_path, max_length=32)
  a = tok.encode(['A Slow Violin Piece'])
  # Plain captions get the ids the seqio tasks give in training (pieces + EOS).
  raw = spm.SentencePieceProcessor(model_file=spm_path).encode('a slow violin piece')
  assert a[0, :len(raw) + 1].tolist() == raw + [1] and not a[0, len(raw) + 1:].any()
  assert np.array_equal(a, tok.encode(['a slow violin piece']))
  assert np.array_equal(a, tok.encode(['<p>A <b>slow</b>   violin\n piece</p>']))
  assert np.array_equal(a, tok.encode(['a &lt;i&gt;slow&lt;/i&gt; violin piece']))
  assert np.array_equal(a, tok.encode(['ａ ｓｌｏｗ ｖｉｏｌｉｎ ｐｉｅｃｅ']))  # NFKC fullwidth
  assert a.dtype == np.int32 and a[0, np.argmax(a[0] == 1)] == 1  # EOS then 0-padding
  assert not np.array_equal(tok.encode(['slow violin, piece!'])[0], a[0])  # punctuation kept
  u = tok.encode(['Ünïcödé ♪ 音楽'])
  assert u.shape[0] == 1 and u.max() < tok.vocab_size
  with pytest.warns(UserWarning, match=r'prompt of \d+ tokens .*truncated to 32'):
    long = tok.encode([' '.join(['violin'] * 50)])
  assert long.shape == (1, 32) and long[0, -1] == 1
  for bad in ('', '   ', '<b></b>', '\u200b'):
    with pytest.raises(ValueError, match='empty prompt'):
      tok.encode([bad])
  with warnings.catch_warnings():
    warnings.simplefilter('error')
    tok.encode(['short'])


def test_sample_text_is_seeded():
  ex = {'caption': 'A slow chorale played by violin and cello.',
        'aspects': ['violin', 'cello', 'slow tempo', 'minor key', 'baroque'],
        'instruments': ['violin', 'cello', 'cello']}
  draws = [text_lib.sample_text(ex, np.random.default_rng([0, i])) for i in range(40)]
  assert draws == [text_lib.sample_text(ex, np.random.default_rng([0, i])) for i in range(40)]
  assert ex['caption'] in draws
  assert 'a piece played by a violin and a cello' in draws
  assert any(d not in (ex['caption'], 'a piece played by a violin and a cello') for d in draws)
  assert text_lib.instrument_prompt(['oboe', 'drums']) == 'a piece played by an oboe and drums'
  with pytest.raises(ValueError):
    text_lib.sample_text({'caption': ''}, np.random.default_rng(0))


# -- inference -------------------------------------------------------------------------------


def test_embed_audio_windows_and_save_load(params, spm_path, tmp_path):
  mulan = inference.MuLan(config=TEST_CONFIG, params=params, spm_path=spm_path, text_length=16)
  window = TEST_CONFIG.window_samples
  rng = np.random.default_rng(0)
  clip = (0.1 * rng.standard_normal(25 * SR)).astype(np.float32)
  assert mulan.num_windows(len(clip)) == 16
  short = clip[:5 * SR]  # shorter than one window: zero-padded to one window
  assert mulan.num_windows(len(short)) == 1
  windows = np.stack([clip[i * SR:i * SR + window] for i in range(16)]  # 16 windows, 1 s apart
                     + [np.pad(short, (0, window - len(short)))])
  net = model_lib.MuLan(TEST_CONFIG)
  each = np.asarray(jax.jit(lambda w: net.apply({'params': params}, w,
                                                method=model_lib.MuLan.embed_audio))(windows))
  mean = each[:16].mean(0)
  got = mulan.embed_audio(clip[None])
  np.testing.assert_allclose(got[0], mean / np.linalg.norm(mean), atol=1e-5)
  np.testing.assert_allclose(np.linalg.norm(got, axis=-1), 1.0, atol=1e-5)
  np.testing.assert_allclose(mulan.embed_audio(short[None])[0], each[16], atol=1e-5)
  with pytest.raises(ValueError, match='NaN'):
    mulan.embed_audio(np.full((1, SR), np.nan, np.float32))

  texts = ['slow violin', 'fast drums']
  emb = mulan.embed_text(texts)
  assert emb.shape == (2, TEST_CONFIG.embed_dim)
  # Padding after the text changes nothing (attention and pooling mask it).
  tokens = mulan.text_tokenizer.encode(['slow', 'drums'])
  short_emb = mulan.embed_text(['slow', 'drums'])
  used = int(np.max(np.sum(tokens != 0, axis=1)))
  assert tokens.shape == (2, 16) and used < 16
  np.testing.assert_allclose(mulan.embed_text_tokens(tokens[:, :used]), short_emb, atol=1e-5)
  with pytest.raises(ValueError, match='no RVQ codebooks'):
    mulan.text_tokens(texts)
  codebooks = rng.standard_normal((12, 8, TEST_CONFIG.embed_dim)).astype(np.float32)
  fitted = mulan.with_codebooks(codebooks)
  fitted.save(str(tmp_path / 'mulan'))
  fitted.save(str(tmp_path / 'mulan'))  # replacing an existing folder works
  loaded = inference.MuLan.load(str(tmp_path / 'mulan'))
  np.testing.assert_allclose(loaded.embed_text(texts), emb, atol=1e-6)
  assert np.array_equal(loaded.text_tokens(texts), fitted.text_tokens(texts))
  assert loaded.text_tokens(texts).shape == (2, 12)
  assert (loaded.num_codebooks, loaded.cardinality) == (12, 8)


def test_fit_rvq_cli_bad_arguments(tmp_path, capsys):
  run = tmp_path / 'run'
  run.mkdir()
  (run / 'config.gin').write_text("include 'gin/models/mulan/tiny.gin'\n")
  args = ['--checkpoint', str(run), '--data_dir', str(tmp_path), '--out', str(tmp_path / 'o')]
  assert fit_rvq.main(args + ['--spm', str(tmp_path / 'missing.model')]) == 2
  assert 'sentencepiece model not found' in capsys.readouterr().err
  spm_file = tmp_path / 'spm.model'
  spm_file.write_bytes(b'x')
  assert fit_rvq.main(args + ['--spm', str(spm_file)]) == 2
  assert 'no checkpoints folder' in capsys.readouterr().err
  assert not (tmp_path / 'o').exists()


def test_imports_without_tensorflow():
  code = ('import sys; import musiclm_jax.mulan, musiclm_jax.mulan.fit_rvq, '
          'musiclm_jax.mulan.evaluate; '
          'assert "tensorflow" not in sys.modules, "TF imported"')
  subprocess.run([sys.executable, '-c', code], check=True, timeout=120)
