"""Evaluate a saved MuLan: retrieval, retrieval after RVQ, zero-shot instrument and tempo.

  python -m musiclm_jax.mulan.evaluate --mulan DIR --data_dir D --split test \
      [--heldout_split test_heldout_instruments] [--out docs/mulan_eval.md]

On each evaluated split (each of the comma-separated `--split`s and, when prepared, the held-out
instrument-combination split), and on all of them pooled when there are several, with one
caption per clip:

  * text->music and music->text Recall@1/5/10 and mean rank (1 = best) against chance
    (Recall@k = k / N, mean rank = (N + 1) / 2);
  * the same after RVQ quantization (embed -> quantize -> dequantize -> renormalise);
  * zero-shot instrument classification: the prompt "a piece played by a <instrument>" with the
    highest similarity, over every instrument named in the split, is counted right when the clip
    has that instrument (chance: mean share of the candidates a clip holds);
  * zero-shot tempo-word classification (slow / moderate / fast from `tempo_bpm`, with the
    synth thresholds < 76 and > 110 BPM) with the prompts in `TEMPO_PROMPTS` (chance: the
    majority class);
  * the RVQ's squared reconstruction error of the unit-norm embeddings (1.0 would be all lost).

Writes a markdown table to `--out` and the numbers as JSON next to it (`.json`).
"""

import argparse
from collections.abc import Sequence
import json
import os
import sys
import tempfile
import time
from typing import Any

import numpy as np

from musiclm_jax.mulan import fit_rvq
from musiclm_jax.mulan import inference
from musiclm_jax.mulan import text as text_lib

HELDOUT_SPLIT = 'test_heldout_instruments'
TEMPO_PROMPTS = {'slow': 'slow tempo', 'moderate': 'medium tempo', 'fast': 'fast tempo'}
RECALL_AT = (1, 5, 10)


def tempo_word(bpm: float) -> str:
  """The synth captions' tempo word (musiclm_jax.data.synth.captions.tempo_word)."""
  return 'slow' if bpm < 76 else ('moderate' if bpm <= 110 else 'fast')


def _normalize(x: np.ndarray) -> np.ndarray:
  return x / np.maximum(np.linalg.norm(x, axis=-1, keepdims=True), 1e-9)


def ranks(similarity: np.ndarray) -> np.ndarray:
  """1-based rank of the diagonal entry in each row of a [N, N] similarity (ties: pessimistic)."""
  diag = np.diag(similarity)[:, None]
  return np.sum(similarity >= diag, axis=1)


def retrieval_metrics(audio_emb: np.ndarray, text_emb: np.ndarray) -> dict[str, float]:
  """Recall@k and mean rank, text->music and music->text, with chance levels."""
  n = len(audio_emb)
  sim = _normalize(text_emb) @ _normalize(audio_emb).T  # [texts, clips]
  out = {'n': n, 'chance_mean_rank': (n + 1) / 2}
  for name, s in (('text_to_music', sim), ('music_to_text', sim.T)):
    r = ranks(s)
    for k in RECALL_AT:
      out[f'{name}_R@{k}'] = float(np.mean(r <= k))
    out[f'{name}_mean_rank'] = float(np.mean(r))
  for k in RECALL_AT:
    out[f'chance_R@{k}'] = min(k, n) / n
  return out


def instrument_metrics(audio_emb: np.ndarray, prompt_emb: np.ndarray,
                       candidates: Sequence[str], instruments: Sequence[Sequence[str]]
                       ) -> dict[str, float]:
  """Top-1 zero-shot instrument accuracy (right if the clip holds the predicted instrument)."""
  pred = np.argmax(_normalize(audio_emb) @ _normalize(prompt_emb).T, axis=1)
  hits = [candidates[p] in set(inst) for p, inst in zip(pred, instruments)]
  chance = [len(set(inst) & set(candidates)) / len(candidates) for inst in instruments]
  return {'instrument_accuracy': float(np.mean(hits)), 'instrument_chance': float(np.mean(chance)),
          'instrument_classes': len(candidates)}


def tempo_metrics(audio_emb: np.ndarray, prompt_emb: np.ndarray, words: Sequence[str],
                  labels: Sequence[str]) -> dict[str, float]:
  pred = np.argmax(_normalize(audio_emb) @ _normalize(prompt_emb).T, axis=1)
  hits = [words[p] == label for p, label in zip(pred, labels)]
  counts = {w: labels.count(w) for w in words}
  return {'tempo_accuracy': float(np.mean(hits)),
          'tempo_chance': max(counts.values()) / max(len(labels), 1),
          'tempo_counts': counts}


def evaluate_split(mulan: inference.MuLan, examples: list[dict[str, Any]]) -> dict[str, Any]:
  """Every metric of the module docstring on one split's examples."""
  audio_emb = fit_rvq.embed_audio_batches(mulan, [ex['audio'] for ex in examples])
  captions = [ex['caption'] or text_lib.sample_text(ex, np.random.default_rng(0))
              for ex in examples]
  text_emb = fit_rvq.embed_texts(mulan, captions)
  candidates = sorted({name for ex in examples for name in ex['instruments']})
  words = list(TEMPO_PROMPTS)
  labels = [tempo_word(ex['tempo_bpm']) for ex in examples]
  inst_emb = fit_rvq.embed_texts(mulan, [text_lib.instrument_prompt([c]) for c in candidates])
  tempo_emb = fit_rvq.embed_texts(mulan, [TEMPO_PROMPTS[w] for w in words])
  out = {'float': retrieval_metrics(audio_emb, text_emb)}
  if candidates:
    out['float'].update(instrument_metrics(audio_emb, inst_emb, candidates,
                                           [ex['instruments'] for ex in examples]))
  out['float'].update(tempo_metrics(audio_emb, tempo_emb, words, labels))
  if mulan.codebooks is not None:
    q = lambda e: _normalize(mulan.dequantize(mulan.quantize(e)))
    qa, qt = q(audio_emb), q(text_emb)
    out['rvq'] = retrieval_metrics(qa, qt)
    if candidates:
      out['rvq'].update(instrument_metrics(qa, q(inst_emb), candidates,
                                           [ex['instruments'] for ex in examples]))
    out['rvq'].update(tempo_metrics(qa, q(tempo_emb), words, labels))
    out['rvq']['levels'] = mulan.num_codebooks
    out['rvq']['codebook_size'] = mulan.cardinality
    for name, emb in (('audio', audio_emb), ('text', text_emb)):  # unit vectors: 1.0 = all lost
      recon = mulan.dequantize(mulan.quantize(emb))
      out['rvq'][f'{name}_squared_error'] = float(np.mean(np.sum((emb - recon) ** 2, axis=-1)))
  return out


def _fmt(x: Any) -> str:
  return f'{x:.3f}' if isinstance(x, float) else str(x)


def markdown(results: dict[str, Any], command: str) -> str:
  """One table per split: rows = metrics, columns = float / RVQ / chance."""
  lines = ['# MuLan evaluation', '', f'Command: `{command}`', '']
  for split, res in results['splits'].items():
    f, q = res['float'], res.get('rvq', {})
    lines += [f'## {split} ({f["n"]} clips)', '',
              '| metric | embeddings | after RVQ | chance |', '|---|---|---|---|']
    for direction in ('text_to_music', 'music_to_text'):
      for k in RECALL_AT:
        key = f'{direction}_R@{k}'
        lines.append(f'| {direction.replace("_", " ")} R@{k} | {_fmt(f[key])} | '
                     f'{_fmt(q.get(key, "-"))} | {_fmt(f[f"chance_R@{k}"])} |')
      key = f'{direction}_mean_rank'
      lines.append(f'| {direction.replace("_", " ")} mean rank | {_fmt(f[key])} | '
                   f'{_fmt(q.get(key, "-"))} | {_fmt(f["chance_mean_rank"])} |')
    if 'instrument_accuracy' in f:
      lines.append(f'| zero-shot instrument top-1 ({f["instrument_classes"]} classes) | '
                   f'{_fmt(f["instrument_accuracy"])} | {_fmt(q.get("instrument_accuracy", "-"))}'
                   f' | {_fmt(f["instrument_chance"])} |')
    lines.append(f'| zero-shot tempo word (3 classes) | {_fmt(f["tempo_accuracy"])} | '
                 f'{_fmt(q.get("tempo_accuracy", "-"))} | {_fmt(f["tempo_chance"])} |')
    if q:
      lines.append(f'| RVQ squared error of the unit audio / text embeddings | - | '
                   f'{q["audio_squared_error"]:.4f} / {q["text_squared_error"]:.4f} | - |')
    lines.append('')
  return '\n'.join(lines)


def _atomic_text(path: str, text: str) -> None:
  directory = os.path.dirname(os.path.abspath(path))
  os.makedirs(directory, exist_ok=True)
  fd, tmp = tempfile.mkstemp(dir=directory, prefix='.' + os.path.basename(path) + '.')
  with os.fdopen(fd, 'w') as f:
    f.write(text)
  os.replace(tmp, path)


def main(argv: list[str] | None = None) -> int:
  p = argparse.ArgumentParser(prog='python -m musiclm_jax.mulan.evaluate',
                              description=__doc__.splitlines()[0])
  p.add_argument('--mulan', required=True, help='a saved MuLan (fit_rvq --out)')
  p.add_argument('--data_dir', required=True)
  p.add_argument('--dataset', default=fit_rvq.DEFAULT_DATASET)
  p.add_argument('--split', default='test', help='comma-separated splits')
  p.add_argument('--heldout_split', default=HELDOUT_SPLIT, help="'' to skip")
  p.add_argument('--max_examples', type=int, default=None)
  p.add_argument('--out', default=None, help='markdown file (JSON goes next to it)')
  args = p.parse_args(argv)
  mulan = inference.MuLan.load(args.mulan)
  results: dict[str, Any] = {'mulan': os.path.abspath(args.mulan), 'dataset': args.dataset,
                             'splits': {}}
  start = time.time()
  requested = [s for s in args.split.split(',') if s]
  pooled: list[dict[str, Any]] = []
  for split in requested + ([args.heldout_split] if args.heldout_split else []):
    counts: dict[str, int] = {}
    try:
      examples = list(fit_rvq.read_examples(args.data_dir, split, dataset=args.dataset,
                                            limit=args.max_examples, counts=counts))
    except ValueError as e:
      if split in requested:
        print(str(e), file=sys.stderr)
        return 2
      print(f'skipping {split}: {e}')
      continue
    if len(examples) < 2:
      print(f'skipping {split}: {len(examples)} usable examples ({counts})')
      continue
    pooled.extend(examples)
    results['splits'][split] = evaluate_split(mulan, examples)
    results['splits'][split]['counts'] = counts
    print(f'{split}: {json.dumps(results["splits"][split]["float"])} '
          f'({time.time() - start:.1f} s)', flush=True)
  if len(results['splits']) > 1:
    name = '+'.join(results['splits'])
    results['splits'][name] = evaluate_split(mulan, pooled)
  if not results['splits']:
    print('no split could be evaluated', file=sys.stderr)
    return 1
  command = 'python -m musiclm_jax.mulan.evaluate ' + ' '.join(argv if argv is not None
                                                                else sys.argv[1:])
  report = markdown(results, command)
  print(report)
  if args.out:
    _atomic_text(args.out, report + '\n')
    _atomic_text(os.path.splitext(args.out)[0] + '.json', json.dumps(results, indent=2) + '\n')
  return 0


if __name__ == '__main__':
  sys.exit(main())
