"""Melody retrieval on held-out synth excerpts: trained embedder vs an untrained one vs chance.

  python -m musiclm_jax.melody.evaluate --checkpoint DIR --data_dir D --split test \
      [--out docs/melody_eval.json] [--gin_file gin/models/melody/tiny.gin]

DIR is a melody training run (checkpoints/) or a saved embedder (fit_rvq --out). The clips of
the split(s) (comma-separated splits are pooled; a melody group that appears in several, e.g.
`test` and `test_heldout_instruments`, is one excerpt) are grouped by excerpt. Candidates are
instrument renderings, each excerpt once: candidate set r holds rendering r of every excerpt
(r mod its number of renderings), for every r. Queries:

  * hum / whistle: every stored hum and whistle of every excerpt, against every candidate set;
  * audio: every instrument rendering against the candidate sets that hold another rendering of
    its excerpt (melody across instrumentation).

Two granularities: `clip` scores a candidate by the mean cosine similarity of the aligned
4 s windows (3 per 10 s clip) and ranks the N excerpts (chance top-1 = 1/N, mean rank (N+1)/2);
`window` ranks one query window against every window of every candidate (N x W; right = same
excerpt, same position; `excerpt_top1`: the nearest window is from the right excerpt, any
position, chance 1/N). Ranks are pessimistic on ties. `transposition_accuracy`: how often an
instrument rendering is nearer to a hum of its own melody than to the same hum transposed by
1, 2 or 3 semitones up or down (re-synthesised from `melody_pitch`, same voice and seed;
chance 0.5). Every metric is computed for the trained embedder, for a random-init embedder of
the same config (the baseline), and after RVQ (quantize, dequantize, renormalise) when the
embedder has codebooks. Progress goes to stderr; a summary and one JSON object to stdout, and
the JSON to `--out`.
"""

import argparse
import dataclasses
import json
import os
import sys
import tempfile
import time
from typing import Any

import numpy as np

from musiclm_jax.melody import fit_rvq
from musiclm_jax.melody import inference

TRANSPOSITIONS = (-3, -2, -1, 1, 2, 3)
KINDS = ('hum', 'whistle', 'audio')


@dataclasses.dataclass
class Excerpt:
  """All clips of one melody group, renderings sorted by render id."""
  name: str
  audio: list[np.ndarray]
  hum: list[np.ndarray]
  whistle: list[np.ndarray]
  melody_pitch: np.ndarray


def group_examples(examples: list[dict[str, Any]]) -> list[Excerpt]:
  """Examples -> excerpts sorted by melody group (clips of another length are left out)."""
  by_name: dict[str, list[dict[str, Any]]] = {}
  for ex in examples:
    by_name.setdefault(ex['melody_group'], []).append(ex)
  out = []
  for name in sorted(by_name):
    clips = sorted(by_name[name], key=lambda e: e['render_id'])
    clips = [c for c in clips if c['audio'].shape == clips[0]['audio'].shape]
    out.append(Excerpt(name=name, audio=[c['audio'] for c in clips],
                       hum=[c['hum'] for c in clips], whistle=[c['whistle'] for c in clips],
                       melody_pitch=clips[0]['melody_pitch']))
  return out


def _unit(x: np.ndarray) -> np.ndarray:
  return x / np.maximum(np.linalg.norm(x, axis=-1, keepdims=True), 1e-9)


def _summary(ranks: list[int], candidates: int) -> dict[str, float]:
  r = np.asarray(ranks, np.float64)
  return {'top1': float(np.mean(r <= 1)), 'top5': float(np.mean(r <= 5)),
          'mean_rank': float(np.mean(r)), 'queries': int(r.size), 'candidates': candidates,
          'chance_top1': 1.0 / candidates, 'chance_top5': min(5, candidates) / candidates,
          'chance_mean_rank': (candidates + 1) / 2}


def retrieval(queries: list[np.ndarray], candidates: list[np.ndarray], *,
              exclude_same_index: bool = False) -> dict[str, dict[str, float]]:
  """Clip- and window-level ranks of each query's own excerpt (see the module docstring).

  Args:
    queries: per excerpt, float32 [Rq, W, D] unit-norm window embeddings.
    candidates: per excerpt, float32 [Rc, W, D].
    exclude_same_index: skip query j of an excerpt against candidate set r when j is the
      candidate's own rendering (audio -> audio).

  Returns:
    {'clip': summary, 'window': summary} with top1, top5, mean_rank and their chance levels.
  """
  n = len(candidates)
  sets = max(c.shape[0] for c in candidates)
  windows = candidates[0].shape[1]
  clip_ranks, window_ranks, window_excerpt_hits = [], [], []
  for r in range(sets):
    chosen = [c[r % c.shape[0]] for c in candidates]
    cand = np.stack(chosen)  # [N, W, D]
    flat = cand.reshape(n * windows, -1)  # [N * W, D]
    for g, q in enumerate(queries):
      for j in range(q.shape[0]):
        if exclude_same_index and j == r % candidates[g].shape[0]:
          continue
        scores = np.einsum('wd,nwd->n', q[j], cand) / windows  # [N]
        clip_ranks.append(int(np.sum(scores >= scores[g])))
        sims = q[j] @ flat.T  # [W, N * W]
        for w in range(windows):
          window_ranks.append(int(np.sum(sims[w] >= sims[w, g * windows + w])))
        window_excerpt_hits.extend((np.argmax(sims, axis=1) // windows == g).tolist())
  window = _summary(window_ranks, n * windows)
  window['excerpt_top1'] = float(np.mean(window_excerpt_hits))
  window['chance_excerpt_top1'] = 1.0 / n
  return {'clip': _summary(clip_ranks, n), 'window': window}


def transposition_accuracy(audio: list[np.ndarray], hum0: list[np.ndarray],
                           shifted: list[np.ndarray]) -> float:
  """Share of (rendering, shift) where the rendering is nearer to the untransposed hum.

  Args:
    audio: per excerpt [R, W, D].
    hum0: per excerpt [W, D], the re-synthesised hum at the excerpt's own pitch.
    shifted: per excerpt [S, W, D], the same hum transposed.
  """
  hits = []
  for a, h, s in zip(audio, hum0, shifted):
    own = np.einsum('rwd,wd->r', a, h)  # [R]
    other = np.einsum('rwd,swd->rs', a, s)  # [R, S]
    hits.extend((own[:, None] > other).reshape(-1).tolist())
  return float(np.mean(hits)) if hits else float('nan')


def embed_excerpts(embedder: inference.MelodyEmbedder, excerpts: list[Excerpt],
                   extra: dict[str, list[list[np.ndarray]]], *, batch_size: int, log
                   ) -> dict[str, list[np.ndarray]]:
  """{kind: per excerpt [clips, W, D]} for audio, hum, whistle and every `extra` kind."""
  out = {}
  kinds = {k: [getattr(e, k) for e in excerpts] for k in KINDS} | extra
  for kind, per_excerpt in kinds.items():
    start = time.time()
    flat = fit_rvq.embed_clips(embedder, (c for clips in per_excerpt for c in clips),
                               batch_size=batch_size)
    out[kind], i = [], 0
    for clips in per_excerpt:
      out[kind].append(np.stack(flat[i:i + len(clips)]))
      i += len(clips)
    log(f'  embedded {len(flat)} {kind} clips ({time.time() - start:.1f} s)')
  return out


def metrics_of(emb: dict[str, list[np.ndarray]]) -> dict[str, Any]:
  out: dict[str, Any] = {}
  for kind in KINDS:
    out[kind] = retrieval(emb[kind], emb['audio'], exclude_same_index=kind == 'audio')
  out['transposition_accuracy'] = transposition_accuracy(
      emb['audio'], [h[0] for h in emb['hum0']], emb['shifted'])
  return out


def _quantized(embedder: inference.MelodyEmbedder, emb: dict[str, list[np.ndarray]]
               ) -> dict[str, list[np.ndarray]]:
  return {k: [_unit(embedder.dequantize(embedder.quantize(e))) for e in v]
          for k, v in emb.items()}


def _atomic_text(path: str, text: str) -> None:
  directory = os.path.dirname(os.path.abspath(path))
  os.makedirs(directory, exist_ok=True)
  fd, tmp = tempfile.mkstemp(dir=directory, prefix='.' + os.path.basename(path) + '.')
  with os.fdopen(fd, 'w') as f:
    f.write(text)
  os.replace(tmp, path)


def summary_lines(results: dict[str, Any]) -> list[str]:
  lines = [f'{results["excerpts"]} excerpts ({results["splits"]}); chance: clip top-1 '
           f'{results["chance"]["clip_top1"]:.3f}, window top-1 '
           f'{results["chance"]["window_top1"]:.4f}, transposition 0.5']
  for name, m in results['models'].items():
    parts = [f'{kind} clip top1/top5/rank {m[kind]["clip"]["top1"]:.3f}/'
             f'{m[kind]["clip"]["top5"]:.3f}/{m[kind]["clip"]["mean_rank"]:.2f} '
             f'window top1 {m[kind]["window"]["top1"]:.3f} (excerpt '
             f'{m[kind]["window"]["excerpt_top1"]:.3f})' for kind in KINDS]
    lines.append(f'{name:>12}: ' + '; '.join(parts) +
                 f'; transposition {m["transposition_accuracy"]:.3f}')
  return lines


def build_parser() -> argparse.ArgumentParser:
  p = argparse.ArgumentParser(prog='python -m musiclm_jax.melody.evaluate',
                              description=__doc__.splitlines()[0])
  p.add_argument('--checkpoint', required=True,
                 help='melody training run (checkpoints/) or saved embedder (fit_rvq --out)')
  p.add_argument('--data_dir', required=True)
  p.add_argument('--dataset', default=fit_rvq.DEFAULT_DATASET)
  p.add_argument('--split', default='test', help='comma-separated splits, pooled')
  p.add_argument('--max_examples', type=int, default=None, help='per split')
  p.add_argument('--gin_file', action='append', default=None,
                 help='model gin file(s), when a run config.gin cannot be used')
  p.add_argument('--baseline_seed', type=int, default=0, help='seed of the untrained embedder')
  p.add_argument('--no_baseline', action='store_true')
  p.add_argument('--batch_size', type=int, default=8)
  p.add_argument('--out', default=None, help='JSON file to write')
  return p


def main(argv: list[str] | None = None) -> int:
  args = build_parser().parse_args(argv)
  log = lambda s: print(s, file=sys.stderr, flush=True)
  start = time.time()
  try:
    trained = inference.MelodyEmbedder.from_path(args.checkpoint, gin_files=args.gin_file)
  except Exception as e:  # pylint: disable=broad-except
    first = str(e).splitlines()[0] if str(e) else ''
    print(f'{args.checkpoint}: cannot load the melody embedder ({type(e).__name__}: {first})',
          file=sys.stderr)
    return 2
  splits = [s for s in args.split.split(',') if s]
  examples, counts = [], {}
  for split in splits:
    c: dict[str, int] = {}
    try:
      examples += list(fit_rvq.read_melody_examples(args.data_dir, split, dataset=args.dataset,
                                                    limit=args.max_examples, counts=c))
    except ValueError as e:
      print(str(e), file=sys.stderr)
      return 2
    counts[split] = c
  excerpts = group_examples(examples)
  if len(excerpts) < 2:
    print(f'{args.split}: {len(excerpts)} excerpts, need at least 2 ({counts})', file=sys.stderr)
    return 1
  log(f'{len(examples)} clips in {len(excerpts)} excerpts from {",".join(splits)} '
      f'({time.time() - start:.1f} s)')
  from musiclm_jax.data import melody_inputs  # pylint: disable=g-import-not-at-top
  seconds = excerpts[0].audio[0].size / trained.sample_rate
  hum0, shifted = [], []
  for index, e in enumerate(excerpts):
    seed = 1000 + index
    make = lambda s: melody_inputs.resynthesize(e.melody_pitch, start=0.0, seconds=seconds,
                                                shift=s, kind='hum', seed=seed)
    hum0.append([make(0)])
    shifted.append([make(s) for s in TRANSPOSITIONS])
  log(f're-synthesised {len(excerpts) * (1 + len(TRANSPOSITIONS))} hums '
      f'({time.time() - start:.1f} s)')
  extra = {'hum0': hum0, 'shifted': shifted}
  models = {'trained': trained}
  if not args.no_baseline:
    models['untrained'] = inference.MelodyEmbedder.random(trained.config, args.baseline_seed)
  results: dict[str, Any] = {'checkpoint': os.path.abspath(args.checkpoint),
                             'dataset': args.dataset, 'splits': splits, 'counts': counts,
                             'excerpts': len(excerpts), 'clips': len(examples),
                             'windows_per_clip': trained.num_windows(excerpts[0].audio[0].size),
                             'transpositions': list(TRANSPOSITIONS), 'models': {}}
  for name, embedder in models.items():
    log(f'{name}:')
    emb = embed_excerpts(embedder, excerpts, extra, batch_size=args.batch_size, log=log)
    results['models'][name] = metrics_of(emb)
    if embedder.codebooks is not None:
      results['models'][f'{name}_rvq'] = metrics_of(_quantized(embedder, emb))
      results['models'][f'{name}_rvq']['rvq'] = {'num_levels': embedder.num_codebooks,
                                                 'codebook_size': embedder.cardinality}
    log(f'  done ({time.time() - start:.1f} s)')
  first = results['models']['trained']['hum']
  results['chance'] = {'clip_top1': first['clip']['chance_top1'],
                       'clip_top5': first['clip']['chance_top5'],
                       'clip_mean_rank': first['clip']['chance_mean_rank'],
                       'window_top1': first['window']['chance_top1'],
                       'window_mean_rank': first['window']['chance_mean_rank'],
                       'transposition_accuracy': 0.5}
  results['seconds'] = round(time.time() - start, 1)
  for line in summary_lines(results):
    print(line)
  text = json.dumps(results, indent=2, sort_keys=True)
  print(json.dumps(results, sort_keys=True))
  if args.out:
    _atomic_text(args.out, text + '\n')
  return 0


if __name__ == '__main__':
  sys.exit(main())
