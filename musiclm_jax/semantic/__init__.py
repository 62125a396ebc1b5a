"""Semantic tokens: a w2v-BERT encoder trained from scratch and a k-means tokenizer (25 Hz).

Public API:
  W2VBertConfig, W2VBert        the network (`w2vbert.py`)
  W2VBertModel                  the TrainableModel for the trainer (`model.py`)
  minibatch_kmeans, KMeansResult  k-means++ / mini-batch k-means in JAX (`kmeans.py`)
  SemanticTokenizer             audio [B, N] -> int32 [B, N // 960] (`tokenizer.py`)
The CLI `python -m musiclm_jax.semantic.fit_kmeans` fits the tokenizer from a checkpoint.
"""

from musiclm_jax.semantic.kmeans import KMeansResult
from musiclm_jax.semantic.kmeans import minibatch_kmeans
from musiclm_jax.semantic.model import W2VBertModel
from musiclm_jax.semantic.tokenizer import SemanticTokenizer
from musiclm_jax.semantic.w2vbert import W2VBert
from musiclm_jax.semantic.w2vbert import W2VBertConfig

__all__ = ['KMeansResult', 'minibatch_kmeans', 'W2VBertModel', 'SemanticTokenizer', 'W2VBert',
           'W2VBertConfig']
