"""MuLan: joint text-music embeddings (128-d), trained contrastively, quantized to 12 tokens.

  from musiclm_jax.mulan import MuLan
  mulan = MuLan.load(DIR)                       # written by `python -m musiclm_jax.mulan.fit_rvq`
  mulan.text_tokens(['calm piano'])             # int32 [B, 12]
  mulan.audio_tokens(wav)                       # int32 [B, 12], wav [B, N] at 24 kHz

Modules: `audio_tower` (ResNet over log-mel), `text_tower` (transformer encoder), `text`
(prompt cleaning, sentencepiece ids, training-text sampling), `model` (config, network,
contrastive loss, the trainer's `MuLanModel`), `inference` (`MuLan`), and the CLIs `fit_rvq`
and `evaluate`. Importing this package does not import TensorFlow.
"""

from musiclm_jax.mulan.inference import MuLan
from musiclm_jax.mulan.model import MuLanConfig, MuLanModel, contrastive_loss
from musiclm_jax.mulan.text import TextTokenizer, normalize_text, sample_text

__all__ = ['MuLan', 'MuLanConfig', 'MuLanModel', 'TextTokenizer', 'contrastive_loss',
           'normalize_text', 'sample_text']
