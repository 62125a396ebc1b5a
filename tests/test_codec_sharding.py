"""SoundStream GAN train step (discriminator + generator, EMA codebooks) sharded == unsharded.

A micro codec (hop 16, 4 levels x 8 codes, one STFT discriminator) keeps compilation short;
both steps run through the real trainer on 8 fake CPU devices (`musiclm_jax.testing`).
"""

import jax
import numpy as np

from musiclm_jax import testing
from musiclm_jax.codec import DiscriminatorConfig, LossConfig, SEANetConfig, SoundStreamModel
from musiclm_jax.layers.rvq import RVQConfig
from musiclm_jax.optim import OptimizerConfig

# Adam's eps is raised from 1e-8: at init every hinge logit is inside the margin, so the last
# discriminator bias gets an exactly-zero gradient (-1 per real, +1 per fake logit) whose
# rounding noise (~1e-9, different per sharding) Adam would otherwise scale to a full step.
OPTIMIZER = OptimizerConfig(learning_rate=1e-3, warmup_steps=1, eps=1e-4)


def test_codec_step_sharded_matches_single_device():
  model = SoundStreamModel(
      seanet=SEANetConfig(channels=4, strides=(4, 4), dimension=8, dilations=(1,)),
      quantizer=RVQConfig(dim=8, num_levels=4, codebook_size=8, dead_code_threshold=0.5),
      discriminator=DiscriminatorConfig(stft_windows=(64,), stft_channels=4, stft_dilations=(1,),
                                        wave_scales=0),
      losses=LossConfig(mel_windows=(64,), metric_mel=(64, 16, 16)))
  rng = np.random.default_rng(0)
  t = np.arange(256) / 24000.0
  audio = 0.5 * np.sin(2 * np.pi * rng.uniform(200, 2000, (8, 1)) * t) + 0.01 * rng.normal(
      size=(8, 256))
  batch = {'audio': audio.astype(np.float32)}
  ref_params, ref_hist = testing.run_steps(model, batch, {'data': 1}, devices=jax.devices()[:1],
                                           steps=2, optimizer=OPTIMIZER)
  mesh = {'data': 2, 'fsdp': 2, 'tensor': 2}
  params, hist = testing.run_steps(model, batch, mesh, steps=2, optimizer=OPTIMIZER)
  assert float(ref_hist[1]['generator/adversarial']) > 0  # the adversarial path ran
  for ref, got in zip(ref_hist, hist):
    for key in ref:
      np.testing.assert_allclose(got[key], ref[key], rtol=1e-4, atol=1e-5, err_msg=key)
  jax.tree.map(lambda a, b: np.testing.assert_allclose(a, b, rtol=1e-4, atol=1e-5), params,
               ref_params)
