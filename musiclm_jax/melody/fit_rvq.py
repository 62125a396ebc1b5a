"""Fit the melody embedder's residual vector quantizer over window embeddings of a split.

  python -m musiclm_jax.melody.fit_rvq --checkpoint MODEL_DIR --data_dir D --out DIR \
      [--num_levels 24 --codebook_size 512] [--split train] [--sources audio,hum,whistle]

Reads the newest checkpoint of a melody run (`musiclm_jax.checkpoints.load_params`, config from
the run's `config.gin` or `--gin_file gin/models/melody/tiny.gin`; a saved embedder folder works
too), embeds every 4 s window (every 3 s) of every clip of the split and of its hum and whistle
(MusicLM computes melody tokens from the training audio itself and, at inference, from a hum or
whistle, so the codebooks cover both), then fits the RVQ level by level with the k-means code
MuLan's RVQ uses (`musiclm_jax.mulan.fit_rvq.fit_residual_kmeans`: k-means++ init on what the
previous levels left over). Sizes default to the config's (`rvq_levels`, `rvq_codebook_size`:
paper 24 x 512). Progress is printed; DIR is written as a whole (`MelodyEmbedder.save`: config,
params, codebooks, and `fit_rvq.json` with the per-level residuals), renamed into place at the end.

TensorFlow/TFDS are imported only by `musiclm_jax.data.melody_inputs`, when data is read.
"""

import argparse
from collections.abc import Iterable
import json
import os
import sys
import time
from typing import Any

import numpy as np

from musiclm_jax import audio as audio_lib
from musiclm_jax.melody import inference
from musiclm_jax.mulan.fit_rvq import fit_residual_kmeans

DEFAULT_DATASET = 'synth/small'
SOURCES = ('audio', 'hum', 'whistle')


def read_melody_examples(*args, **kwargs):
  """See `musiclm_jax.data.melody_inputs.read_melody_examples` (TFDS is imported there only)."""
  from musiclm_jax.data import melody_inputs  # pylint: disable=g-import-not-at-top
  return melody_inputs.read_melody_examples(*args, **kwargs)


def embed_clips(embedder: inference.MelodyEmbedder, clips: Iterable[np.ndarray], *,
                batch_size: int = 8) -> list[np.ndarray]:
  """Embeds clips (streamed) in batches of equal length: one float32 [W, D] per clip."""
  out: list[np.ndarray] = []
  for batch in audio_lib.equal_length_batches((np.asarray(c, np.float32) for c in clips),
                                              batch_size):
    out.extend(embedder.embed(batch))
  return out


def build_parser() -> argparse.ArgumentParser:
  p = argparse.ArgumentParser(prog='python -m musiclm_jax.melody.fit_rvq',
                              description=__doc__.splitlines()[0])
  p.add_argument('--checkpoint', required=True,
                 help='melody training run (holds checkpoints/) or a saved embedder folder')
  p.add_argument('--data_dir', required=True, help='TFDS data_dir with the prepared synth corpus')
  p.add_argument('--out', required=True, help='folder to write (a saved MelodyEmbedder)')
  p.add_argument('--dataset', default=DEFAULT_DATASET)
  p.add_argument('--split', default='train')
  p.add_argument('--sources', default=','.join(SOURCES),
                 help='comma-separated audio features to embed (audio, hum, whistle)')
  p.add_argument('--num_levels', type=int, default=None, help='default: config rvq_levels')
  p.add_argument('--codebook_size', type=int, default=None,
                 help='default: config rvq_codebook_size')
  p.add_argument('--max_examples', type=int, default=None)
  p.add_argument('--gin_file', action='append', default=None,
                 help='model gin file(s), when the run config.gin cannot be used')
  p.add_argument('--num_iters', type=int, default=50)
  p.add_argument('--kmeans_batch_size', type=int, default=0,
                 help='points per k-means iteration; 0 for full-batch Lloyd')
  p.add_argument('--batch_size', type=int, default=8, help='clips per embedding batch')
  p.add_argument('--seed', type=int, default=0)
  return p


def main(argv: list[str] | None = None) -> int:
  args = build_parser().parse_args(argv)
  sources = [s for s in args.sources.split(',') if s]
  bad = sorted(set(sources) - set(SOURCES))
  if bad or not sources:
    print(f'--sources: unknown {bad or "(empty)"}; choose from {", ".join(SOURCES)}',
          file=sys.stderr)
    return 2
  try:
    embedder = inference.MelodyEmbedder.from_path(args.checkpoint, gin_files=args.gin_file)
  except Exception as e:  # pylint: disable=broad-except
    first = str(e).splitlines()[0] if str(e) else ''
    print(f'{args.checkpoint}: cannot load the melody embedder ({type(e).__name__}: {first})',
          file=sys.stderr)
    return 2
  levels = args.num_levels or embedder.config.rvq_levels
  size = args.codebook_size or embedder.config.rvq_codebook_size
  print(f'loaded {args.checkpoint}; reading {args.dataset} {args.split} from {args.data_dir} '
        f'(sources {",".join(sources)})', flush=True)
  counts: dict[str, int] = {}
  start = time.time()
  try:
    examples = list(read_melody_examples(args.data_dir, args.split, dataset=args.dataset,
                                         limit=args.max_examples, counts=counts))
  except ValueError as e:
    print(str(e), file=sys.stderr)
    return 2
  if not examples:
    print(f'{args.dataset} {args.split}: no usable examples ({counts})', file=sys.stderr)
    return 1

  def clips(source):  # streams one source's audio to the embedder, with progress
    for index, ex in enumerate(examples):
      if index % 50 == 0:
        print(f'{source}: clip {index + 1}/{len(examples)} ({time.time() - start:.1f} s)',
              flush=True)
      yield ex[source]

  embeddings = {source: np.concatenate(embed_clips(embedder, clips(source),
                                                   batch_size=args.batch_size), axis=0)
                for source in sources}  # [clips * W, D] each
  points = np.concatenate(list(embeddings.values()), axis=0)
  print(f'embedded {len(examples)} clips x {len(sources)} sources: {points.shape} '
        f'({time.time() - start:.1f} s)', flush=True)
  try:
    codebooks, history = fit_residual_kmeans(
        points, num_levels=levels, codebook_size=size, seed=args.seed, num_iters=args.num_iters,
        batch_size=args.kmeans_batch_size or None, log=lambda s: print(s, flush=True))
  except ValueError as e:
    print(str(e), file=sys.stderr)
    return 2
  fitted = embedder.with_codebooks(codebooks)
  report: dict[str, Any] = {
      'checkpoint': os.path.abspath(args.checkpoint), 'dataset': args.dataset,
      'split': args.split, 'clips': len(examples), 'sources': sources,
      'vectors': int(len(points)), 'num_levels': levels, 'codebook_size': size,
      'mean_squared_residual': history, 'seconds': round(time.time() - start, 1), **counts}
  for source, emb in embeddings.items():  # unit vectors: 1.0 would be everything lost
    recon = fitted.dequantize(fitted.quantize(emb))
    report[f'{source}_squared_error'] = float(np.mean(np.sum((emb - recon) ** 2, -1)))
  fitted.save(args.out, extra={'fit_rvq.json': report})
  print(json.dumps({'out': args.out, **{k: v for k, v in report.items()
                                        if k != 'mean_squared_residual'}}))
  return 0


if __name__ == '__main__':
  sys.exit(main())
