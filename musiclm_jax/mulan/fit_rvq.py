"""Fit MuLan's residual vector quantizer (12 x 1024) over audio AND text embeddings.

  python -m musiclm_jax.mulan.fit_rvq --checkpoint MODEL_DIR --data_dir D --spm SPM_MODEL \
      --out DIR [--levels 12 --codebook_size 1024] [--split train] [--texts_per_example 4]

Reads the newest checkpoint of a MuLan run (`musiclm_jax.checkpoints.load_params`) and its
model config (the run's `config.gin`, or `--gin_file gin/models/mulan/tiny.gin`), embeds every
clip of the split (10 s windows at a 1 s stride, averaged) and, per clip, its caption plus
`--texts_per_example` sampled texts (aspect subsets, instrument templates: `text.sample_text`),
then fits the RVQ level by level: k-means (`musiclm_jax.semantic.kmeans`, k-means++ init) on
what the previous levels left over. Progress is printed; DIR is written as a whole
(`inference.MuLan.save`: config, params, codebooks, spm model, and `fit_rvq.json` with the
per-level residuals), renamed into place at the end.

TensorFlow/TFDS are imported only by `musiclm_jax.data.readers`, when data is read. Tiny cost (1.0M-param model, a few
hundred clips): about a minute on 2 CPU cores, mostly embedding.
"""

import argparse
from collections.abc import Callable, Iterable, Iterator, Sequence
import json
import os
import sys
import time
from typing import Any

import numpy as np

from musiclm_jax import audio as audio_lib
from musiclm_jax.mulan import inference
from musiclm_jax.mulan import model as model_lib
from musiclm_jax.mulan import text as text_lib
from musiclm_jax.semantic import kmeans as kmeans_lib

DEFAULT_DATASET = 'synth/small'


def read_examples(*args, **kwargs) -> Iterator[dict[str, Any]]:
  """See `musiclm_jax.data.readers.read_examples` (TFDS is imported there only)."""
  from musiclm_jax.data import readers  # pylint: disable=g-import-not-at-top
  return readers.read_examples(*args, **kwargs)


def embed_audio_batches(mulan: inference.MuLan, clips: Iterable[np.ndarray], *,
                        batch_size: int = 8) -> np.ndarray:
  """Embeds clips (streamed) in batches of equal length (cut where the length changes)."""
  out = [mulan.embed_audio(batch) for batch in audio_lib.equal_length_batches(clips, batch_size)]
  return np.concatenate(out, axis=0) if out else np.zeros((0, mulan.embed_dim), np.float32)


def embed_texts(mulan: inference.MuLan, texts: Sequence[str], *, batch_size: int = 64
                ) -> np.ndarray:
  """Embeds prompts in fixed-size batches (the last one padded) to limit recompilation."""
  out = []
  for i in range(0, len(texts), batch_size):
    chunk = list(texts[i:i + batch_size])
    real = len(chunk)
    chunk += [chunk[-1]] * (batch_size - real)
    tokens = mulan.text_tokenizer.encode(chunk, length=mulan.text_length)
    out.append(mulan.embed_text_tokens(tokens)[:real])
  return np.concatenate(out, axis=0) if out else np.zeros((0, mulan.embed_dim), np.float32)


def fit_residual_kmeans(points: np.ndarray, *, num_levels: int, codebook_size: int,
                        seed: int = 0, num_iters: int = 50, batch_size: int | None = None,
                        log: Callable[[str], None] = print
                        ) -> tuple[np.ndarray, list[float]]:
  """Level-by-level k-means on residuals.

  Args:
    points: [N, D] vectors (N >= codebook_size).
    num_levels: RVQ levels.
    codebook_size: codes per level.
    seed: level l uses seed + l.
    num_iters: k-means iterations per level.
    batch_size: mini-batch size (None: full-batch Lloyd).
    log: progress printer.

  Returns:
    (codebooks float32 [levels, codebook_size, D], mean squared residual after each level).
  """
  points = np.asarray(points, np.float32)
  if points.ndim != 2:
    raise ValueError(f'fit_rvq: points must be [N, D], got {points.shape}')
  if len(points) < codebook_size:
    raise ValueError(f'fit_rvq: {len(points)} embeddings are fewer than codebook_size '
                     f'{codebook_size}; use more data (--texts_per_example, a bigger split) '
                     'or a smaller --codebook_size')
  residual = points.copy()
  codebooks, history = [], []
  log(f'RVQ: {len(points)} vectors x {points.shape[1]} dims, {num_levels} levels x '
      f'{codebook_size} codes; mean squared norm {float(np.mean(np.sum(points ** 2, -1))):.5f}')
  for level in range(num_levels):
    start = time.time()
    result = kmeans_lib.minibatch_kmeans(residual, codebook_size, seed=seed + level,
                                         num_iters=num_iters, batch_size=batch_size)
    ids, _ = kmeans_lib.assign(residual, result.centroids)
    residual = residual - result.centroids[np.asarray(ids)]
    history.append(float(np.mean(np.sum(residual ** 2, axis=-1))))
    codebooks.append(result.centroids)
    used = int(np.sum(np.bincount(np.asarray(ids), minlength=codebook_size) > 0))
    log(f'level {level + 1}/{num_levels}: mean squared residual {history[-1]:.5f}, '
        f'{used}/{codebook_size} codes used ({time.time() - start:.1f} s)')
  return np.stack(codebooks).astype(np.float32), history


def build_parser() -> argparse.ArgumentParser:
  p = argparse.ArgumentParser(prog='python -m musiclm_jax.mulan.fit_rvq',
                              description=__doc__.splitlines()[0])
  p.add_argument('--checkpoint', required=True, help='MuLan run folder (holds checkpoints/)')
  p.add_argument('--data_dir', required=True, help='TFDS data_dir with the prepared dataset')
  p.add_argument('--spm', required=True, help='sentencepiece model of the run')
  p.add_argument('--out', required=True, help='folder to write (a saved MuLan)')
  p.add_argument('--dataset', default=DEFAULT_DATASET)
  p.add_argument('--split', default='train')
  p.add_argument('--levels', type=int, default=12)
  p.add_argument('--codebook_size', type=int, default=1024)
  p.add_argument('--texts_per_example', type=int, default=4,
                 help='sampled texts per clip, besides its caption')
  p.add_argument('--max_examples', type=int, default=None)
  p.add_argument('--text_length', type=int, default=64, help='ids per prompt incl. EOS')
  p.add_argument('--gin_file', action='append', default=None,
                 help='model gin file(s), when the run config.gin cannot be used')
  p.add_argument('--num_iters', type=int, default=50)
  p.add_argument('--kmeans_batch_size', type=int, default=0,
                 help='points per k-means iteration; 0 for full-batch Lloyd')
  p.add_argument('--batch_size', type=int, default=8, help='clips per audio batch')
  p.add_argument('--seed', type=int, default=0)
  return p


def main(argv: list[str] | None = None) -> int:
  args = build_parser().parse_args(argv)
  # pylint: disable=g-import-not-at-top
  from musiclm_jax import checkpoints
  from musiclm_jax import train as train_lib
  # pylint: enable=g-import-not-at-top
  try:
    config = train_lib.model_from_run(args.checkpoint, args.gin_file, model_lib.MuLanModel).config
  except Exception as e:  # pylint: disable=broad-except
    print(f'{args.checkpoint}: cannot build the MuLan config ({type(e).__name__}: '
          f'{str(e).splitlines()[0] if str(e) else ""}); pass --gin_file', file=sys.stderr)
    return 2
  if not os.path.isfile(args.spm):
    print(f'{args.spm}: sentencepiece model not found', file=sys.stderr)
    return 2
  try:
    params, _, meta = checkpoints.load_params(args.checkpoint)
  except checkpoints.CheckpointError as e:
    print(str(e), file=sys.stderr)
    return 2
  mulan = inference.MuLan(config=config, params=params['model'], spm_path=args.spm,
                          text_length=args.text_length)
  print(f'loaded {args.checkpoint} (step {meta.get("step")}); reading {args.dataset} '
        f'{args.split} from {args.data_dir}', flush=True)
  counts: dict[str, int] = {}
  texts: list[str] = []
  start = time.time()

  def clips():  # streams audio to the embedder; only embeddings and texts are kept
    for index, ex in enumerate(read_examples(args.data_dir, args.split, dataset=args.dataset,
                                             limit=args.max_examples, counts=counts)):
      if ex['caption'].strip():
        texts.append(ex['caption'])
      for j in range(args.texts_per_example):
        try:
          texts.append(text_lib.sample_text(ex, np.random.default_rng([args.seed, index, j])))
        except ValueError:
          counts['examples_without_text'] = counts.get('examples_without_text', 0) + 1
          break
      if index % 100 == 0:
        print(f'clip {index + 1} ({time.time() - start:.1f} s)', flush=True)
      yield ex['audio']

  audio_emb = embed_audio_batches(mulan, clips(), batch_size=args.batch_size)
  if not len(audio_emb):
    print(f'{args.dataset} {args.split}: no usable examples ({counts})', file=sys.stderr)
    return 1
  print(f'embedded audio: {audio_emb.shape}; {len(texts)} texts ({time.time() - start:.1f} s)',
        flush=True)
  text_emb = embed_texts(mulan, texts)
  print(f'embedded text: {text_emb.shape} ({time.time() - start:.1f} s)', flush=True)
  points = np.concatenate([audio_emb, text_emb], axis=0)
  try:
    codebooks, history = fit_residual_kmeans(
        points, num_levels=args.levels, codebook_size=args.codebook_size, seed=args.seed,
        num_iters=args.num_iters, batch_size=args.kmeans_batch_size or None,
        log=lambda s: print(s, flush=True))
  except ValueError as e:
    print(str(e), file=sys.stderr)
    return 2
  fitted = mulan.with_codebooks(codebooks)
  report = {'checkpoint': os.path.abspath(args.checkpoint), 'step': meta.get('step'),
            'dataset': args.dataset, 'split': args.split, 'clips': len(audio_emb),
            'texts': len(texts), 'levels': args.levels, 'codebook_size': args.codebook_size,
            'mean_squared_residual': history, 'seconds': round(time.time() - start, 1), **counts}
  for name, emb in (('audio', audio_emb), ('text', text_emb)):
    recon = fitted.dequantize(fitted.quantize(emb))
    report[f'{name}_mean_squared_error'] = float(np.mean(np.sum((emb - recon) ** 2, -1)))
  fitted.save(args.out, extra={'fit_rvq.json': report})
  print(json.dumps({'out': args.out, **{k: v for k, v in report.items()
                                        if k != 'mean_squared_residual'}}))
  return 0


if __name__ == '__main__':
  sys.exit(main())
