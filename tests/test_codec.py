"""SoundStream codec: parameters, gin sizes, GAN losses and the inference API.

A micro generator (4 channels, one residual unit per block) keeps compilation short; the
tiny-size overfit test lives in test_codec_overfit.py.
"""

import flax.linen as nn
import gin
import jax
import jax.numpy as jnp
import numpy as np
import pytest

from musiclm_jax import audio
from musiclm_jax.codec import losses as losses_lib
from musiclm_jax.codec import (DiscriminatorConfig, LossConfig, SEANetConfig, SoundStreamCodec,
                               SoundStreamModel)
from musiclm_jax.layers.rvq import RVQConfig

LEVELS, CODES, HOP = 12, 16, 480
SAMPLES = 4 * HOP  # 80 ms: 4 frames


def _micro_model(**loss_kw):
  return SoundStreamModel(
      seanet=SEANetConfig(channels=4, dimension=8, dilations=(1,)),
      quantizer=RVQConfig(dim=8, num_levels=LEVELS, codebook_size=CODES, dead_code_threshold=0.5),
      discriminator=DiscriminatorConfig(stft_windows=(128,), stft_channels=4, stft_dilations=(1,),
                                        wave_scales=1, wave_channels=4, wave_max_channels=8,
                                        wave_downsamples=(4,)),
      losses=LossConfig(adversarial_start_step=10, mel_windows=(64, 256), **loss_kw))


def _audio(batch=2, samples=SAMPLES, seed=0):
  t = np.arange(samples) / 24000.0
  rng = np.random.default_rng(seed)
  freqs = rng.uniform(200, 2000, size=(batch, 1))
  return (0.5 * np.sin(2 * np.pi * freqs * t) + 0.01 * rng.normal(size=(batch, samples))
          ).astype(np.float32)


def _grads_fn(model, group):
  """Jitted (loss, (metrics, state)), grads of one group; the step is traced (one compile)."""
  def fn(params, state, batch, step):
    loss_fn = lambda p: model.loss(group, {**params, group: p}, state, batch,
                                   jax.random.PRNGKey(1), step)
    return jax.value_and_grad(loss_fn, has_aux=True)(params[group])
  return jax.jit(fn)


def _check_axes(params, state):
  expected = {'kernel': ('conv_kernel', 'conv_in', 'conv_out'),
              'weight_v': ('conv_kernel', 'conv_in', 'conv_out'),
              'weight_g': ('conv_out',), 'bias': ('conv_out',)}
  leaves = jax.tree_util.tree_flatten_with_path(
      params, is_leaf=lambda x: isinstance(x, nn.Partitioned))[0]
  assert len(leaves) > 20
  for path, leaf in leaves:
    assert isinstance(leaf, nn.Partitioned), path
    names = expected[path[-1].key]
    if leaf.value.shape[-1] == 1:  # single output channel: not sharded
      names = names[:-1] + (None,)
    assert leaf.names == names, path
  assert set(params) == {'generator', 'discriminator'}
  assert state['quantizer']['codebooks'].names == ('layers', 'codebook', 'codebook_dim')
  assert state['quantizer']['codebooks'].value.shape == (LEVELS, CODES, 8)


def test_gan_losses_axes_and_quantizer_state():
  """One test (one compile per group, not one per xdist worker): axes, G and D losses."""
  model = _micro_model()
  batch = {'audio': jnp.asarray(_audio())}
  boxed_params, boxed_state = jax.jit(model.init)(jax.random.PRNGKey(0), batch)
  _check_axes(boxed_params, boxed_state)
  params, old_state = nn.unbox(boxed_params), nn.unbox(boxed_state)

  # Generator, step 20: adversarial on.
  gen = _grads_fn(model, 'generator')
  (loss, (metrics, state)), grads = gen(params, old_state, batch, jnp.int32(20))
  assert np.isfinite(float(loss))
  for name in ('mel_loss', 'commit_loss', 'adversarial', 'feature_matching', 'mel_distance',
               'perplexity_l0', 'perplexity_l11', 'dead_codes_l0', 'dead_codes_l11'):
    assert np.isfinite(float(metrics[f'generator/{name}'])), name
  assert float(metrics['generator/adversarial']) > 0
  assert float(metrics['generator/feature_matching']) > 0
  assert all(k.startswith('generator/') for k in metrics)
  # k-means on the first batch, then EMA: the returned state is initialised and changed.
  assert not bool(old_state['quantizer']['initialized'])
  assert bool(state['quantizer']['initialized'])
  assert float(jnp.abs(state['quantizer']['codebooks']).sum()) > 0
  norms = [float(jnp.linalg.norm(g)) for g in jax.tree.leaves(grads)]
  assert all(np.isfinite(norms)) and sum(n > 0 for n in norms) > 0.9 * len(norms)
  # Before adversarial_start_step the adversarial terms are exactly zero.
  (loss0, (metrics0, _)), _ = gen(params, old_state, batch, jnp.int32(0))
  assert float(metrics0['generator/adversarial']) == 0.0
  assert float(metrics0['generator/feature_matching']) == 0.0
  np.testing.assert_allclose(float(loss0), float(metrics0['generator/mel_loss'])
                             + float(metrics0['generator/commit_loss']), rtol=1e-5)

  # Discriminator: hinge loss, never changes the codebooks, idle before the start step.
  disc = _grads_fn(model, 'discriminator')
  (loss, (metrics, dstate)), grads = disc(params, state, batch, jnp.int32(20))
  assert np.isfinite(float(loss)) and float(loss) > 0
  assert float(metrics['discriminator/hinge']) == float(loss)
  assert max(float(jnp.abs(g).max()) for g in jax.tree.leaves(grads)) > 0
  for a, b in zip(jax.tree.leaves(dstate), jax.tree.leaves(state)):
    np.testing.assert_array_equal(a, b)
  (loss0, _), grads0 = disc(params, state, batch, jnp.int32(0))
  assert float(loss0) == 0.0
  assert max(float(jnp.abs(g).max()) for g in jax.tree.leaves(grads0)) == 0.0


def test_codec_encode_decode():
  model = _micro_model()
  params, _ = jax.jit(model.init)(jax.random.PRNGKey(0), None)
  codebooks = np.random.default_rng(0).normal(size=(LEVELS, CODES, 8)).astype(np.float32)
  codebooks /= np.arange(1, LEVELS + 1, dtype=np.float32)[:, None, None]
  state = {'quantizer': {'codebooks': jnp.asarray(codebooks)}}
  codec = model.codec(params, state)
  assert (codec.sample_rate, codec.frame_rate, codec.hop_length) == (24000, 50.0, HOP)
  assert (codec.num_codebooks, codec.codebook_size, codec.cardinality) == (LEVELS, CODES, CODES)
  wav = _audio(batch=2, samples=SAMPLES, seed=3)
  codes = codec.encode(wav)
  assert codes.shape == (2, 4, LEVELS) and codes.dtype == jnp.int32
  assert int(codes.min()) >= 0 and int(codes.max()) < CODES
  # Quantizer dropout at inference: every level count decodes (one compilation).
  for n in range(1, LEVELS + 1):
    y = codec.decode(codes, num_levels=n)
    assert y.shape == (2, SAMPLES) and y.dtype == jnp.float32
    assert bool(jnp.all(jnp.isfinite(y)))
  np.testing.assert_allclose(codec.decode(codes[..., :3]), codec.decode(codes, num_levels=3),
                             atol=1e-6)
  # Causal encoder: changing samples from frame 2 on leaves frames 0-1 unchanged.
  later = wav.copy()
  later[:, 2 * HOP:] = 0.0
  np.testing.assert_array_equal(codec.encode(later)[:, :2], codes[:, :2])
  # Lengths that are not a multiple of the hop are padded; 1-D audio is one batch row.
  assert codec.encode(wav[0, :SAMPLES - 100]).shape == (1, 4, LEVELS)
  with pytest.raises(ValueError, match='outside'):
    codec.decode(codes + CODES)
  with pytest.raises(ValueError, match='num_levels'):
    codec.decode(codes, num_levels=0)
  with pytest.raises(ValueError, match='non-empty audio'):
    codec.encode(np.zeros((2, 0), np.float32))
  # The codec also takes unboxed generator params and the bare quantizer state.
  bare = SoundStreamCodec(model.config, nn.unbox(params)['generator'], state['quantizer'])
  np.testing.assert_array_equal(bare.encode(wav), codes)


def test_loss_rejects_bad_length_and_group():
  model = _micro_model()
  with pytest.raises(ValueError, match='multiple of the hop'):
    model.loss('generator', {}, {}, {'audio': jnp.zeros((1, 1000))}, None, 0)
  with pytest.raises(ValueError, match='unknown parameter group'):
    model.loss('critic', {}, {}, {'audio': jnp.zeros((1, 960))}, None, 0)


def test_stft_matches_audio_stft():
  x = jnp.asarray(_audio(batch=2, samples=2400))
  for n_fft, hop, win in [(64, 16, 64), (512, 128, 400), (256, 100, 256)]:
    real, imag = jax.jit(losses_lib.stft, static_argnames=('n_fft', 'hop', 'win'))(
        x, n_fft=n_fft, hop=hop, win=win)
    ref = audio.stft(x, n_fft=n_fft, hop_length=hop, win_length=win)
    np.testing.assert_allclose(real, ref.real, atol=2e-4)
    np.testing.assert_allclose(imag, ref.imag, atol=2e-4)


def _param_count(tree):
  return sum(int(np.prod(x.shape)) for x in jax.tree.leaves(nn.unbox(tree)))


@pytest.mark.parametrize('size', ['tiny', 'paper'])
def test_gin_sizes_and_param_counts(size):
  import musiclm_jax.codec.model  # noqa: F401  (registers nothing: gin binds by module)
  gin.parse_config_file(f'gin/models/codec/{size}.gin')
  model = gin.query_parameter('%MODEL').scoped_configurable_fn()
  assert isinstance(model, SoundStreamModel)
  c = model.config
  assert (c.sample_rate, c.hop_length, c.frame_rate) == (24000, 480, 50.0)
  assert c.quantizer.num_levels == 12
  kbps = c.frame_rate * c.quantizer.num_levels * np.log2(c.quantizer.codebook_size) / 1000
  abstract = jax.eval_shape(model.init, jax.random.PRNGKey(0), None)  # no allocation
  gen, disc = _param_count(abstract[0]['generator']), _param_count(abstract[0]['discriminator'])
  state = _param_count(abstract[1])
  print(f'codec {size}: generator {gen:,} discriminator {disc:,} params; '
        f'quantizer state {state:,}; {kbps:g} kbps')
  if size == 'paper':
    assert (c.seanet.channels, c.quantizer.codebook_size) == (32, 1024)
    assert kbps == 6.0
    assert 8e6 < gen < 12e6, gen  # 9.85M: encoder 4.80M + decoder 5.06M
  else:
    assert (c.seanet.channels, c.quantizer.codebook_size) == (8, 64)
    assert gen < 1e6
