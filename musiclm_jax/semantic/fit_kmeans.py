"""Fit the k-means of the semantic tokenizer on w2v-BERT embeddings of a dataset split.

  python -m musiclm_jax.semantic.fit_kmeans --checkpoint MODEL_DIR --data_dir D \
      --split train --num_clusters 1024 --out MODEL_DIR/semantic_tokenizer

Reads the newest checkpoint of a w2v-BERT run (`musiclm_jax.checkpoints.load_params`), embeds
crops of the split's audio with MLM layer `--layer` (default: the config's `token_layer`),
normalises every dimension (mean/std over the collected frames), runs k-means (k-means++ init,
inertia printed per iteration) and writes a self-contained `SemanticTokenizer` folder.

The model config comes from the run's gin config (`MODEL_DIR/config.gin`, its `MODEL` macro);
pass `--gin_file gin/models/semantic/tiny.gin` when it cannot be parsed here.
Tiny cost: a 64-wide model, 20k frames, K=64: well under a minute on 2 CPU cores.
"""

import argparse
from collections.abc import Callable, Iterable, Iterator
import json
import sys
import time
from typing import Any

from etils import epath
import numpy as np

from musiclm_jax.semantic import kmeans as kmeans_lib
from musiclm_jax.semantic import model as model_lib
from musiclm_jax.semantic import tokenizer as tokenizer_lib
from musiclm_jax.semantic import w2vbert


def collect_embeddings(tok_model: tokenizer_lib.SemanticTokenizer,
                       audio_batches: Iterable[np.ndarray], *, max_frames: int,
                       log: Callable[[str], None] = print) -> np.ndarray:
  """Embeds audio batches until `max_frames` frames are collected.

  Args:
    tok_model: a tokenizer whose `embed` gives the raw layer embeddings (centroids unused).
    audio_batches: float32 [B, N] arrays (N may differ between batches).
    max_frames: stop after this many frames.
    log: progress printer.

  Returns:
    float32 [M, D] embeddings, M <= max_frames.
  """
  chunks, total, start = [], 0, time.time()
  for i, wav in enumerate(audio_batches):
    emb = np.asarray(tok_model.embed(np.asarray(wav, np.float32)))  # [B, T, D]
    emb = emb.reshape(-1, emb.shape[-1])
    chunks.append(emb[:max_frames - total])
    total += len(chunks[-1])
    if i % 10 == 0 or total >= max_frames:
      log(f'embedded batch {i + 1}: {total} frames ({time.time() - start:.1f} s)')
    if total >= max_frames:
      break
  if not chunks:
    raise ValueError('fit_kmeans: no audio to embed')
  return np.concatenate(chunks, axis=0)


def fit_tokenizer(config: w2vbert.W2VBertConfig, params: Any,
                  audio_batches: Iterable[np.ndarray], *, num_clusters: int,
                  layer: int | None = None, seed: int = 0, num_iters: int = 100,
                  kmeans_batch_size: int | None = 10_000, max_frames: int = 500_000,
                  log: Callable[[str], None] = print
                  ) -> tuple[tokenizer_lib.SemanticTokenizer, kmeans_lib.KMeansResult]:
  """Embeds, normalises per dimension, fits k-means; returns the tokenizer and the fit.

  Args:
    config: w2v-BERT config.
    params: w2v-BERT params (the 'model' group).
    audio_batches: float32 [B, N] audio batches at `config.sample_rate`.
    num_clusters: K.
    layer: MLM layer (default `config.token_layer`).
    seed: k-means seed.
    num_iters: k-means iterations.
    kmeans_batch_size: points per k-means iteration (None: full-batch Lloyd).
    max_frames: frames to collect.
    log: progress printer.
  """
  layer = config.token_layer if layer is None else layer
  dim = config.embed_dim
  probe = tokenizer_lib.SemanticTokenizer(
      config=config, params=params, layer=layer, mean=np.zeros(dim), std=np.ones(dim),
      centroids=np.zeros((1, dim)))
  emb = collect_embeddings(probe, audio_batches, max_frames=max_frames, log=log)
  if len(emb) < num_clusters:
    raise ValueError(f'fit_kmeans: {len(emb)} frames are fewer than {num_clusters} clusters')
  mean = emb.mean(axis=0, dtype=np.float64)
  std = np.maximum(emb.std(axis=0, dtype=np.float64), 1e-5)
  normed = ((emb - mean) / std).astype(np.float32)
  log(f'k-means: {len(normed)} frames x {dim} dims, K={num_clusters}, layer {layer}')
  start = time.time()
  result = kmeans_lib.minibatch_kmeans(
      normed, num_clusters, seed=seed, num_iters=num_iters, batch_size=kmeans_batch_size,
      eval_size=min(len(normed), 100_000),
      callback=lambda it, inertia: log(f'k-means iteration {it}/{num_iters}: inertia '
                                       f'{inertia:.5f} ({time.time() - start:.1f} s)'))
  empty = int(np.sum(result.counts == 0))
  log(f'k-means done: inertia {result.inertia[-1]:.5f}, empty clusters {empty}')
  tok = tokenizer_lib.SemanticTokenizer(config=config, params=params, layer=layer, mean=mean,
                                        std=std, centroids=result.centroids)
  return tok, result


def _find_gin_config(meta: Any) -> str | None:
  if isinstance(meta, str):
    return meta
  if isinstance(meta, dict):
    for value in meta.values():
      found = _find_gin_config(value)
      if found and 'MODEL' in found:
        return found
  return None


def model_from_gin(config_str: str | None = None, gin_files: list[str] | None = None
                   ) -> model_lib.W2VBertModel:
  """Builds the `MODEL` macro of a gin config string or files; must be a W2VBertModel."""
  import gin  # pylint: disable=g-import-not-at-top
  gin.clear_config()
  if gin_files:
    gin.parse_config_files_and_bindings(gin_files, [])
  else:
    gin.parse_config(config_str)
  model = gin.query_parameter('%MODEL').scoped_configurable_fn()
  gin.clear_config()
  if not isinstance(model, model_lib.W2VBertModel):
    raise ValueError(f'MODEL is a {type(model).__name__}, not a W2VBertModel')
  return model


def tfds_audio_batches(*args, **kwargs) -> Iterator[np.ndarray]:
  """See `musiclm_jax.data.readers.tfds_audio_batches` (TFDS is imported there only)."""
  from musiclm_jax.data import readers  # pylint: disable=g-import-not-at-top
  return readers.tfds_audio_batches(*args, **kwargs)


def main(argv: list[str] | None = None) -> int:
  p = argparse.ArgumentParser(description=__doc__.splitlines()[0])
  p.add_argument('--checkpoint', required=True, help='w2v-BERT run folder (holds checkpoints/)')
  p.add_argument('--data_dir', required=True, help='TFDS data_dir with the prepared dataset')
  p.add_argument('--dataset', default='synth', help='TFDS dataset name')
  p.add_argument('--split', default='train')
  p.add_argument('--num_clusters', type=int, default=1024)
  p.add_argument('--out', required=True, help='tokenizer folder to write')
  p.add_argument('--layer', type=int, default=None, help='MLM layer (default token_layer)')
  p.add_argument('--gin_file', action='append', default=None,
                 help='model gin file(s), when the checkpoint config cannot be used')
  p.add_argument('--max_frames', type=int, default=500_000)
  p.add_argument('--batch_size', type=int, default=8)
  p.add_argument('--crop_seconds', type=float, default=10.0)
  p.add_argument('--num_iters', type=int, default=100)
  p.add_argument('--kmeans_batch_size', type=int, default=10_000,
                 help='points per k-means iteration; 0 for full-batch Lloyd')
  p.add_argument('--seed', type=int, default=0)
  args = p.parse_args(argv)

  from musiclm_jax import checkpoints  # pylint: disable=g-import-not-at-top
  params_by_group, _, meta = checkpoints.load_params(args.checkpoint)
  config_str = _find_gin_config(meta)
  run_gin = epath.Path(args.checkpoint) / 'config.gin'  # written by musiclm_jax.train
  if config_str is None and run_gin.exists():
    config_str = run_gin.read_text()
  if not args.gin_file and config_str is None:
    print(f'{args.checkpoint}: no gin config with MODEL (checkpoint meta or config.gin); '
          'pass --gin_file', file=sys.stderr)
    return 2
  try:
    model = model_from_gin(config_str, args.gin_file)
  except Exception as e:  # pylint: disable=broad-except
    print(f'{args.checkpoint}: cannot build MODEL from the gin config ({type(e).__name__}: '
          f'{str(e).splitlines()[0] if str(e) else ""}); pass --gin_file', file=sys.stderr)
    return 2
  config = model.config
  crop = int(round(args.crop_seconds * config.sample_rate))
  crop -= crop % config.samples_per_frame
  counts: dict[str, int] = {}
  batches = tfds_audio_batches(args.data_dir, args.split, dataset=args.dataset,
                               batch_size=args.batch_size, crop_samples=crop, counts=counts)
  tok, result = fit_tokenizer(
      config, params_by_group['model'], batches, num_clusters=args.num_clusters,
      layer=args.layer, seed=args.seed, num_iters=args.num_iters,
      kmeans_batch_size=args.kmeans_batch_size or None, max_frames=args.max_frames)
  tok.save(args.out)
  empty = int(np.sum(result.counts == 0))
  print(json.dumps({'out': args.out, 'layer': tok.layer, 'num_clusters': tok.cardinality,
                    'inertia': result.inertia[-1], 'empty_clusters': empty, **counts}))
  return 0


if __name__ == '__main__':
  sys.exit(main())
