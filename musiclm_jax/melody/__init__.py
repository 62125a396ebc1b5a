"""Melody embedder: 192-d embeddings of 4 s windows every 3 s, quantized to melody tokens.

  from musiclm_jax.melody import MelodyEmbedder
  melody = MelodyEmbedder.load(DIR)      # written by `python -m musiclm_jax.melody.fit_rvq`
  melody.embed(wav)                      # [B, N] at 24 kHz -> float32 [B, W, 192], unit norm
  melody.tokens(wav)                     # int32 [B, W * levels]

Modules: `model` (config, ViT-like network, the trainer's `MelodyModel`), `losses` (semi-hard
triplet loss), `inference` (`MelodyEmbedder`), and the CLIs `fit_rvq` and `evaluate`. The
training input pipeline is `musiclm_jax.data.melody_inputs`. Importing this package does not
import TensorFlow. See docs/MELODY.md.
"""

from musiclm_jax.melody.inference import MelodyEmbedder
from musiclm_jax.melody.losses import triplet_semihard_loss
from musiclm_jax.melody.model import MelodyConfig, MelodyEncoder, MelodyModel

__all__ = ['MelodyConfig', 'MelodyEmbedder', 'MelodyEncoder', 'MelodyModel',
           'triplet_semihard_loss']
