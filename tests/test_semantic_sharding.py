"""w2v-BERT pre-training step sharded == unsharded, through the real trainer on 8 CPU devices.

A micro config (width 32, one contrastive + one MLM layer) keeps compilation short. The step
draws span masks and Gumbel noise from the step's key: the sharded run must draw the same ones
(so the losses and the updated parameters match the single-device run). One mesh,
data x fsdp x tensor = 2 x 2 x 2, covers batch, parameter and tensor sharding at once.
"""

import jax
import numpy as np

from musiclm_jax import testing
from musiclm_jax.semantic import model as model_lib
from musiclm_jax.semantic import w2vbert

SR = 24000
MICRO = w2vbert.W2VBertConfig(
    n_mels=32, embed_dim=32, num_heads=2, mlp_dim=64, num_contrastive_layers=1,
    num_mlm_layers=1, subsampling_channels=4, codebook_size=16, codebook_dim=16,
    projection_dim=16, dropout_rate=0.0, mask_prob=0.2, mask_span=3, token_layer=1)


def _batch(batch: int = 8, seconds: float = 0.4) -> dict[str, np.ndarray]:
  """Per example a different two-note sequence plus a little noise: float32 [batch, N]."""
  rng = np.random.default_rng(0)
  n = int(seconds * SR)
  t = np.arange(n) / SR
  f = rng.uniform(150, 1500, (batch, 2))
  half = (t < seconds / 2)[None]
  wav = 0.3 * np.where(half, np.sin(2 * np.pi * f[:, :1] * t), np.sin(2 * np.pi * f[:, 1:] * t))
  return {'audio': (wav + 0.01 * rng.standard_normal((batch, n))).astype(np.float32)}


def test_w2vbert_step_sharded_matches_single_device():
  model = model_lib.W2VBertModel(config=MICRO)
  batch = _batch()
  ref_params, ref_hist = testing.run_steps(model, batch, {'data': 1}, devices=jax.devices()[:1],
                                           steps=2)
  assert {'contrastive_loss', 'diversity_loss', 'mlm_loss'} <= set(ref_hist[0])
  assert all(np.isfinite(float(h['loss'])) for h in ref_hist)
  assert 0.0 < float(ref_hist[0]['mask_fraction']) < 1.0  # the masked path ran
  mesh = {'data': 2, 'fsdp': 2, 'tensor': 2}  # batch, parameter and tensor sharding at once
  params, hist = testing.run_steps(model, batch, mesh, steps=2)
  for ref, got in zip(ref_hist, hist):
    for key in ref:
      # An accuracy is an argmax count: one near-tie at init may flip (1 of ~30 masked frames).
      atol = 0.05 if key.endswith('accuracy') else 2e-5
      np.testing.assert_allclose(got[key], ref[key], rtol=2e-4, atol=atol, err_msg=key)
  jax.tree.map(lambda a, b: np.testing.assert_allclose(a, b, rtol=2e-4, atol=2e-5,
                                                       err_msg='params'), params, ref_params)
