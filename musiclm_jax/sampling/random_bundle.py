"""A randomly initialised, test-sized bundle: tests and CPU smoke benchmarks, no training.

  from musiclm_jax.sampling import random_bundle
  random_bundle.write(path)            # ~1 s; then load_bundle(path) / musiclm sample --bundle
  random_bundle.write(path, melody=True)   # + a random melody embedder; the semantic stage
                                           # conditions on melody tokens (sample --melody)
  random_bundle.in_memory('paper')     # a Bundle object without MuLan (benchmarks)

Sizes (`SIZES`): 'test' has MuLan 12 x 16 tokens (16-d); semantic 16 codes in 8-frame windows
(0.32 s at 25 Hz); coarse 4 semantic -> 8 x 4 acoustic frames; fine 8 x 4 -> 8 x 8; every stage
a 1-layer, 32-wide LM; SoundStream with 2 base channels, 12 x 16 codes at 50 Hz. 'tiny' matches
the demo's tiny gin files and 'paper' MusicLM's sizes. Weights are random, so the audio is
noise-like; shapes, rates and file formats are the real ones. With `melody=True` the semantic
stage also conditions on melody windows (test: 1 window of 4 x 16 tokens; tiny: 1 of 8 x 64;
paper: 9 of 24 x 512) and the bundle holds a random melody embedder (4 s windows every 3 s;
test: a 1-layer, 16-wide encoder).
"""

import os
import tempfile

from flax import traverse_util
import flax.linen as nn
import jax
import numpy as np

_WORDS = ('slow fast calm loud violin cello piano flute oboe trumpet harp organ guitar drums '
          'choir bass quiet bright dark happy sad melody rhythm tempo major minor key baroque '
          'folk classical piece played by a and the with in uplifting meditation theme').split()


def random_params(init_fn, seed: int = 0):
  """Random params shaped like `init_fn(key)` without running (or compiling) the init.

  `jax.eval_shape` gives the shapes; norms' scales and weight-norm gains are 1, biases 0,
  embeddings N(0, 1) and every other array N(0, 1 / fan_in) (fan_in: all but the last axis,
  less a stacked 'layers' axis).
  """
  abstract = nn.unbox(jax.eval_shape(init_fn, jax.random.PRNGKey(seed)))
  rng = np.random.default_rng(seed)
  out = {}
  for path, leaf in traverse_util.flatten_dict(abstract).items():
    name, shape = path[-1], tuple(leaf.shape)
    if name in ('scale', 'weight_g') or name.endswith('_scale'):
      value = np.ones(shape, np.float32)
    elif name == 'bias' or len(shape) == 0:
      value = np.zeros(shape, np.float32)
    elif name == 'embedding' or len(shape) == 1:
      value = rng.standard_normal(shape, dtype=np.float32)
    else:
      fan_in = int(np.prod(shape[:-1])) // (shape[0] if 'layers' in path else 1)
      value = rng.standard_normal(shape, dtype=np.float32) / np.sqrt(max(fan_in, 1))
    out[path] = value.astype(leaf.dtype)
  return traverse_util.unflatten_dict(out)


# Sizes: 'test' (tests, < 1 s windows), 'tiny' (the demo's gin/models/*/tiny.gin),
# 'paper' (MusicLM: 24 x 1024 LMs, 30 s / 10 s / 3 s windows, 12 x 1024 SoundStream).
SIZES = {
    'test': dict(layers=1, heads=2, width=32, mlp=64, codebook=16, mulan_codebook=16,
                 semantic_frames=8, coarse_frames=8, fine_frames=8, codec_channels=2,
                 codec_dim=8, dtype='float32', melody_frames=1, melody_levels=4,
                 melody_codebook=16),
    'tiny': dict(layers=2, heads=4, width=64, mlp=256, codebook=64, mulan_codebook=64,
                 semantic_frames=32, coarse_frames=32, fine_frames=16, codec_channels=8,
                 codec_dim=32, dtype='float32', melody_frames=1, melody_levels=8,
                 melody_codebook=64),
    'paper': dict(layers=24, heads=16, width=1024, mlp=4096, codebook=1024,
                  mulan_codebook=1024, semantic_frames=750, coarse_frames=500, fine_frames=150,
                  codec_channels=32, codec_dim=128, dtype='bfloat16', melody_frames=9,
                  melody_levels=24, melody_codebook=512),
}


def tiny_stages(size: str = 'test', *, melody: bool = False):
  """{'semantic', 'coarse', 'fine'} -> StageModel (coarse semantic frames = acoustic / 2);
  with `melody` the semantic stage also conditions on melody tokens."""
  from musiclm_jax.stages import layouts, lm, model  # pylint: disable=g-import-not-at-top
  z = SIZES[size]
  config = lm.LMConfig(num_layers=z['layers'], num_heads=z['heads'], embed_dim=z['width'],
                       mlp_dim=z['mlp'], dtype=z['dtype'], param_dtype=z['dtype'])
  codebook, mulan = z['codebook'], z['mulan_codebook']
  melody_fields = dict(melody_frames=z['melody_frames'], melody_levels=z['melody_levels'],
                       melody_codebook_size=z['melody_codebook']) if melody else {}
  return {
      'semantic': model.StageModel(layout=layouts.semantic_layout(
          mulan_codebook_size=mulan, semantic_codebook_size=codebook,
          semantic_frames=z['semantic_frames'], **melody_fields), config=config),
      'coarse': model.StageModel(layout=layouts.coarse_layout(
          mulan_codebook_size=mulan, semantic_codebook_size=codebook,
          semantic_frames=z['coarse_frames'] // 2, codec_codebook_size=codebook,
          acoustic_frames=z['coarse_frames']), config=config),
      'fine': model.StageModel(layout=layouts.fine_layout(
          codec_codebook_size=codebook, acoustic_frames=z['fine_frames']), config=config),
  }


def tiny_stage_params(stages, seed: int = 0):
  return {name: random_params(lambda k, s=stage: s.init(k, None)[0], seed + i)['model']
          for i, (name, stage) in enumerate(stages.items())}


def tiny_mulan(spm_path: str, *, codebook: int = 16, seed: int = 0):
  """A random MuLan with a 16-d joint space and random 12 x `codebook` RVQ codebooks."""
  from musiclm_jax.mulan import inference, model  # pylint: disable=g-import-not-at-top
  config = model.MuLanConfig(
      n_mels=16, n_fft=256, win_length=256, audio_stem_width=4, audio_stage_sizes=(1, 1),
      audio_widths=(4, 8), audio_block='basic', norm_groups=2, vocab_size=320,
      max_text_length=16, text_width=16, text_layers=1, text_heads=2, text_mlp_dim=32,
      embed_dim=16, window_seconds=1.0)
  batch = {'audio': np.zeros((1, 24000), np.float32), 'text_tokens': np.ones((1, 16), np.int32)}
  params = random_params(lambda k: model.MuLanModel(config=config).init(k, batch)[0], seed)
  codebooks = np.random.default_rng(seed).standard_normal((12, codebook, 16)).astype(np.float32)
  codebooks /= np.sqrt(16.0) * np.arange(1, 13, dtype=np.float32)[:, None, None]
  return inference.MuLan(config=config, params=params['model'], spm_path=spm_path,
                         codebooks=codebooks, text_length=16)


def tiny_melody(size: str = 'test', *, seed: int = 0):
  """A random `MelodyEmbedder` (4 s windows every 3 s) with random RVQ codebooks of `size`."""
  from musiclm_jax.melody import inference, model  # pylint: disable=g-import-not-at-top
  z = SIZES[size]
  if size == 'paper':
    config = model.MelodyConfig()
  else:
    config = model.MelodyConfig(
        n_mels=16, patch_frames=8, width=16, num_layers=1, num_heads=2, head_dim=8, mlp_dim=32,
        embed_dim=16, rvq_levels=z['melody_levels'], rvq_codebook_size=z['melody_codebook'])
  net = model.MelodyEncoder(config)
  dummy = np.zeros((1, config.window_samples), np.float32)
  params = random_params(lambda k: net.init(k, dummy)['params'], seed)
  levels, size_ = z['melody_levels'], z['melody_codebook']
  codebooks = np.random.default_rng(seed + 2).standard_normal(
      (levels, size_, config.embed_dim)).astype(np.float32)
  codebooks /= np.sqrt(config.embed_dim) * np.arange(1, levels + 1, dtype=np.float32)[:, None,
                                                                                         None]
  return inference.MelodyEmbedder(config=config, params=params, codebooks=codebooks)


def tiny_codec(size: str = 'test', *, seed: int = 0):
  """(SoundStreamConfig, generator params, codebooks) of a random codec of `size`."""
  from musiclm_jax.codec import discriminators, model, seanet  # pylint: disable=g-import-not-at-top
  from musiclm_jax.layers import rvq  # pylint: disable=g-import-not-at-top
  z = SIZES[size]
  dim, codebook = z['codec_dim'], z['codebook']
  sm = model.SoundStreamModel(
      seanet=seanet.SEANetConfig(channels=z['codec_channels'], dimension=dim),
      discriminator=discriminators.DiscriminatorConfig(stft_windows=(), wave_scales=0),
      quantizer=rvq.RVQConfig(dim=dim, num_levels=12, codebook_size=codebook))
  params = random_params(lambda k: sm.init(k, {})[0], seed)
  codebooks = np.random.default_rng(seed + 1).standard_normal((12, codebook, dim))
  return sm.config, params['generator'], codebooks.astype(np.float32)


def train_tiny_spm(out_dir: str) -> str:
  """A 300-piece sentencepiece model of a small word list; returns its path."""
  from musiclm_jax.data import train_spm  # pylint: disable=g-import-not-at-top
  sentences = [' '.join(_WORDS[(i * 7 + j * 3) % len(_WORDS)] for j in range(8))
               for i in range(200)]
  train_spm.train(sentences, out_dir, vocab_size=300)
  return os.path.join(out_dir, 'spm.model')


def write(out: str, *, size: str = 'test', seed: int = 0, dtype: str | None = None,
          melody: bool = False) -> dict:
  """Writes a random bundle of `size` to `out` (with a melody embedder and a melody-conditioned
  semantic stage when `melody`); returns its manifest."""
  from musiclm_jax import export  # pylint: disable=g-import-not-at-top
  stages = tiny_stages(size, melody=melody)
  stage_params = tiny_stage_params(stages, seed)
  codec_config, codec_params, codebooks = tiny_codec(size, seed=seed)
  with tempfile.TemporaryDirectory() as tmp:
    mulan = tiny_mulan(train_tiny_spm(tmp), codebook=SIZES[size]['mulan_codebook'], seed=seed)
    return export.write_bundle(
        out, codec_config=codec_config, codec_params=codec_params, codec_codebooks=codebooks,
        mulan=mulan, stages={n: (stages[n], stage_params[n]) for n in stages},
        dtype=dtype or SIZES[size]['dtype'],
        sources={'random': f'musiclm_jax.sampling.random_bundle {size} seed {seed}'},
        melody=tiny_melody(size, seed=seed) if melody else None)


def in_memory(size: str = 'test', *, seed: int = 0):
  """A `Bundle` of random components built in memory, without MuLan (benchmarks: feed MuLan
  tokens directly) and without sentencepiece, gin or files."""
  from musiclm_jax.codec import model  # pylint: disable=g-import-not-at-top
  from musiclm_jax.sampling import bundle  # pylint: disable=g-import-not-at-top
  stages = tiny_stages(size)
  codec_config, codec_params, codebooks = tiny_codec(size, seed=seed)
  codec = model.SoundStreamCodec(codec_config, codec_params, {'codebooks': codebooks})
  return bundle.Bundle(path=f'<random {size}>', manifest={}, sha256=f'random-{size}-{seed}',
                       codec=codec, mulan=None, stages=stages,
                       stage_params=tiny_stage_params(stages, seed),
                       semantic_frame_rate=bundle.DEFAULT_SEMANTIC_FRAME_RATE)
