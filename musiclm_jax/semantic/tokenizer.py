"""`SemanticTokenizer`: audio [B, N] at 24 kHz -> int32 k-means ids [B, N // 960] at 25 Hz.

tokens = argmin_k || (embed_layer(audio) - mean) / std - centroid_k ||^2, where embed_layer is
the unmasked w2v-BERT MLM layer `layer` and mean/std are per-dimension statistics of the
embeddings the k-means was fitted on (AudioLM normalises every dimension before k-means).

A saved tokenizer is a folder, self-contained (no trainer, no gin, no TensorFlow):
  tokenizer.json   format, model config, layer, sizes (written last: marks a complete save)
  params.npz       w2v-BERT params, flattened with '/' keys, float32
  kmeans.npz       mean [D], std [D], centroids [K, D], inertia history
"""

import functools
import json
import os
from typing import Any

from flax import traverse_util
import flax.linen as nn
import jax
import jax.numpy as jnp
import numpy as np

from musiclm_jax import files
from musiclm_jax.semantic import kmeans as kmeans_lib
from musiclm_jax.semantic import w2vbert

FORMAT = 'musiclm_jax.semantic_tokenizer/1'
CONFIG_FILE = 'tokenizer.json'
PARAMS_FILE = 'params.npz'
KMEANS_FILE = 'kmeans.npz'


@functools.lru_cache(maxsize=None)
def _compiled(config: w2vbert.W2VBertConfig, layer: int):
  """jit-compiled (embed, tokenize) shared by every tokenizer with this config and layer."""
  module = w2vbert.W2VBert(config)

  def embed(params, wav):
    return module.apply({'params': params}, wav, layer, method=w2vbert.W2VBert.embed)

  def tokenize(params, mean, std, centroids, wav):
    emb = embed(params, wav)  # [B, T, D]
    batch, length, dim = emb.shape
    x = ((emb - mean) / std).reshape(batch * length, dim)  # [B*T, D]
    ids, _ = kmeans_lib.assign(x, centroids)
    return ids.reshape(batch, length).astype(jnp.int32)

  return jax.jit(embed), jax.jit(tokenize)


class SemanticTokenizer:
  """Frozen w2v-BERT + normalisation + k-means centroids.

  Args:
    config: the w2v-BERT config.
    params: the w2v-BERT params (the trainer's 'model' group; boxes are unwrapped).
    layer: MLM layer the embeddings come from (1-based; 0 = contrastive module output).
    mean: per-dimension mean [D] of the embeddings used for k-means.
    std: per-dimension standard deviation [D] (> 0).
    centroids: [K, D] k-means centroids in normalised space.
  """

  num_codebooks = 1

  def __init__(self, *, config: w2vbert.W2VBertConfig, params: Any, layer: int,
               mean: np.ndarray, std: np.ndarray, centroids: np.ndarray):
    if not 0 <= layer <= config.num_mlm_layers:
      raise ValueError(f'SemanticTokenizer: layer {layer} outside [0, {config.num_mlm_layers}]')
    mean, std, centroids = (np.asarray(a, np.float32) for a in (mean, std, centroids))
    dim = config.embed_dim
    if mean.shape != (dim,) or std.shape != (dim,) or centroids.ndim != 2 or \
        centroids.shape[1] != dim:
      raise ValueError(f'SemanticTokenizer: expected mean/std [{dim}] and centroids [K, {dim}], '
                       f'got {mean.shape}, {std.shape}, {centroids.shape}')
    if not np.all(std > 0):
      raise ValueError('SemanticTokenizer: std must be positive')
    self.config = config
    self.layer = int(layer)
    self.params = jax.tree.map(jnp.asarray, nn.meta.unbox(params))
    self.mean, self.std, self.centroids = mean, std, centroids
    self._jit_embed, self._jit_tokenize = _compiled(config, self.layer)

  @property
  def sample_rate(self) -> int:
    return self.config.sample_rate

  @property
  def frame_rate(self) -> float:
    return self.config.frame_rate

  @property
  def cardinality(self) -> int:
    return int(self.centroids.shape[0])

  def num_frames(self, num_samples: int) -> int:
    return self.config.num_frames(num_samples)

  def _check(self, wav: Any) -> jax.Array:
    if wav.ndim != 2:
      raise ValueError(f'SemanticTokenizer: audio must be [batch, samples], got {wav.shape}')
    if self.config.num_frames(wav.shape[1]) < 1:
      raise ValueError(f'SemanticTokenizer: {wav.shape[1]} samples are fewer than one frame '
                       f'({self.config.samples_per_frame} samples)')
    if isinstance(wav, np.ndarray) and not np.all(np.isfinite(wav)):
      raise ValueError('SemanticTokenizer: audio contains NaN or Inf')
    return jnp.asarray(wav, jnp.float32)

  def embed(self, wav: Any) -> jax.Array:
    """Raw (unnormalised) layer embeddings: float32 [B, N // 960, D]."""
    return self._jit_embed(self.params, self._check(wav))

  def tokenize(self, wav: Any) -> jax.Array:
    """Audio [B, N] at `sample_rate` -> int32 [B, N // 960] ids in [0, cardinality)."""
    return self._jit_tokenize(self.params, self.mean, self.std, self.centroids, self._check(wav))

  __call__ = tokenize

  def save(self, directory: str) -> None:
    """Writes the folder described in the module docstring (each file atomically)."""
    os.makedirs(directory, exist_ok=True)
    flat = traverse_util.flatten_dict(jax.device_get(self.params), sep='/')
    flat = {k: np.asarray(v, np.float32) for k, v in flat.items()}
    files.atomic_write(os.path.join(directory, PARAMS_FILE), lambda f: np.savez(f, **flat))
    files.atomic_write(os.path.join(directory, KMEANS_FILE), lambda f: np.savez(
        f, mean=self.mean, std=self.std, centroids=self.centroids))
    meta = {'format': FORMAT, 'model_config': json.loads(self.config.to_json()),
            'layer': self.layer, 'num_clusters': self.cardinality,
            'embed_dim': self.config.embed_dim, 'sample_rate': self.sample_rate,
            'frame_rate': self.frame_rate}
    files.atomic_write(os.path.join(directory, CONFIG_FILE),
                  lambda f: f.write(json.dumps(meta, indent=2, sort_keys=True).encode()))

  @classmethod
  def load(cls, directory: str) -> 'SemanticTokenizer':
    """Reads a folder written by `save`."""
    path = os.path.join(directory, CONFIG_FILE)
    try:
      with open(path) as f:
        meta = json.load(f)
    except FileNotFoundError:
      raise FileNotFoundError(f'{path}: no tokenizer here (missing {CONFIG_FILE})') from None
    except json.JSONDecodeError as e:
      raise ValueError(f'{path}: not valid JSON ({e})') from None
    if meta.get('format') != FORMAT:
      raise ValueError(f'{path}: format {meta.get("format")!r}, expected {FORMAT!r}')
    config = w2vbert.W2VBertConfig.from_dict(meta['model_config'])
    with np.load(os.path.join(directory, PARAMS_FILE)) as z:
      params = traverse_util.unflatten_dict({k: z[k] for k in z.files}, sep='/')
    with np.load(os.path.join(directory, KMEANS_FILE)) as z:
      mean, std, centroids = z['mean'], z['std'], z['centroids']
    return cls(config=config, params=params, layer=int(meta['layer']), mean=mean, std=std,
               centroids=centroids)
