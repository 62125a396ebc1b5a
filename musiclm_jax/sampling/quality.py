r"""Measured generation quality: MuLan Cycle Consistency and instrument adherence.

  python -m musiclm_jax.sampling.quality --bundle BUNDLE --data_dir D --split test \
      [--num_prompts 24] [--duration 10] [--seed 0] --out DIR [--markdown docs/RESULTS.md]
  python -m musiclm_jax.sampling.quality --mulan MULAN_DIR --data_dir D --split test --out DIR

Takes held-out clips (caption, instruments, audio) of a prepared TFDS corpus (`--split`:
comma-separated splits; `--num_prompts` clips drawn by seeded reservoir sampling, kept in
corpus order), generates `--duration` seconds for each caption with the bundle's pipeline
(paper temperatures, fixed seed, batched) and scores with the bundle's own MuLan:

  * MCC (MuLan Cycle Consistency): cosine between the MuLan text embedding of a prompt and the
    MuLan audio embedding of a clip, averaged over the clips;
  * instrument adherence: zero-shot top-1 instrument of the clip over "a piece played by a
    <instrument>" for every instrument of the selected clips, right when the prompt names it
    (`musiclm_jax.mulan.evaluate.instrument_metrics`);
  * prompt retrieval: rank of the clip's own prompt among all selected prompts (1 = best).

Each is given for four pairings: generated audio vs its prompt; real held-out audio (cut to the
same duration) vs its caption (the upper bound this MuLan can show); generated audio vs a
shuffled prompt (a seeded derangement: chance); real audio vs the same shuffled prompts. Also
the paired gain MCC(own prompt) - MCC(shuffled prompt) of the same audio, with its standard
error. With a bundle, the real audio is also scored after an encode/decode round trip through
the bundle's codec (all levels): the best the generated audio could score with this codec. With `--mulan` instead of `--bundle` nothing is generated: only the real rows.

Writes DIR/quality.json (every figure, per-prompt values, settings, bundle sha256),
DIR/quality.md (the table; also appended to `--markdown`), DIR/audio/*.wav with `--save_audio`.
TensorFlow is imported only when the corpus is read (`musiclm_jax.data.readers`).
"""

import argparse
from collections.abc import Callable, Iterable, Mapping, Sequence
import os
import sys
import time
from typing import Any

import numpy as np

from musiclm_jax.mulan import evaluate as mulan_eval
from musiclm_jax.mulan import fit_rvq
from musiclm_jax.mulan import text as text_lib
from musiclm_jax.sampling import gallery

FORMAT = 'musiclm_jax.quality/1'
ROWS = {  # key -> (audio, prompt) label of the table
    'generated': 'generated vs its prompt',
    'real': 'real held-out audio vs its caption (upper bound)',
    'codec': 'real audio through the bundle codec vs its caption (codec ceiling)',
    'shuffled': 'generated vs a shuffled prompt (chance)',
    'real_shuffled': 'real audio vs a shuffled caption (chance)',
}


# -- metrics -----------------------------------------------------------------------------------


def _unit(x: np.ndarray) -> np.ndarray:
  x = np.asarray(x, np.float64)
  return x / np.maximum(np.linalg.norm(x, axis=-1, keepdims=True), 1e-12)


def cosine_rows(a: np.ndarray, b: np.ndarray) -> np.ndarray:
  """Row-wise cosine of [N, D] and [N, D] -> [N] (MCC of each pair)."""
  return np.sum(_unit(a) * _unit(b), axis=-1)


def derangement(n: int, seed: int) -> np.ndarray:
  """A uniformly drawn permutation of range(n) with no fixed point, the same for a seed."""
  if n < 2:
    raise ValueError(f'derangement: need at least 2 items, got {n}')
  rng = np.random.default_rng([seed, 0x5EED])
  while True:  # rejection: a random permutation is a derangement with probability ~1/e
    perm = rng.permutation(n)
    if not np.any(perm == np.arange(n)):
      return perm


def summary(values: Sequence[float]) -> dict[str, float]:
  """Mean, standard deviation and standard error of the mean."""
  v = np.asarray(values, np.float64)
  std = float(np.std(v, ddof=1)) if len(v) > 1 else 0.0
  return {'mean': float(np.mean(v)), 'std': std, 'sem': std / np.sqrt(max(len(v), 1))}


def predicted_instruments(audio_emb: np.ndarray, prompt_emb: np.ndarray,
                          candidates: Sequence[str]) -> list[str]:
  """The zero-shot top-1 instrument name per clip (the choice `instrument_metrics` scores)."""
  sim = np.asarray(audio_emb) @ np.asarray(prompt_emb).T  # unit-norm MuLan embeddings
  return [candidates[i] for i in np.argmax(sim, axis=1)]


def pairwise_cosine(emb: np.ndarray) -> float:
  """Mean cosine between different rows of [N, D]: near 1 when every clip sounds alike."""
  e, n = _unit(emb), len(emb)
  return float((np.sum(e @ e.T) - n) / max(n * (n - 1), 1))


def token_agreement(audio_codes: np.ndarray, text_codes: np.ndarray) -> dict[str, float]:
  """Agreement of MuLan RVQ codes int [N, levels] of clips and their prompts: share of clips
  whose level-1 code agrees, and mean number of leading levels that agree."""
  same = np.asarray(audio_codes) == np.asarray(text_codes)  # [N, levels]
  prefix = np.argmin(np.concatenate([same, np.zeros_like(same[:, :1])], axis=1), axis=1)
  return {'level1': float(np.mean(same[:, 0])), 'prefix_levels': float(np.mean(prefix))}


def score_pairing(audio_emb: np.ndarray, text_emb: np.ndarray, inst_emb: np.ndarray,
                  candidates: Sequence[str], instruments: Sequence[Sequence[str]]
                  ) -> dict[str, Any]:
  """Every figure of one (audio, prompt) pairing; row i of each input belongs together.

  Args:
    audio_emb: [N, D] MuLan audio embeddings.
    text_emb: [N, D] MuLan embeddings of the prompts paired with the clips.
    inst_emb: [K, D] embeddings of the instrument prompts of `candidates`.
    candidates: K instrument names.
    instruments: per clip, the instruments its paired prompt names.
  """
  mcc = cosine_rows(audio_emb, text_emb)
  retrieval = mulan_eval.retrieval_metrics(audio_emb, text_emb)
  out = {'n': len(mcc), 'mcc': summary(mcc), 'mcc_values': [round(float(x), 5) for x in mcc],
         'audio_pairwise_cosine': pairwise_cosine(audio_emb),
         'music_to_text_R@1': retrieval['music_to_text_R@1'],
         'music_to_text_mean_rank': retrieval['music_to_text_mean_rank'],
         'chance_R@1': retrieval['chance_R@1'], 'chance_mean_rank': retrieval['chance_mean_rank']}
  if candidates:
    out.update(mulan_eval.instrument_metrics(audio_emb, inst_emb, candidates, instruments))
    out['predicted_instruments'] = predicted_instruments(audio_emb, inst_emb, candidates)
  return out


# -- clips ---------------------------------------------------------------------------------------


def prompt_of(example: Mapping[str, Any]) -> str:
  """The clip's caption, or (no caption) the text `mulan.evaluate` uses in its place."""
  return example.get('caption') or text_lib.sample_text(example, np.random.default_rng(0))


def select_clips(examples: Iterable[dict[str, Any]], num: int, seed: int,
                 counts: dict[str, int] | None = None) -> list[dict[str, Any]]:
  """`num` examples by seeded reservoir sampling (memory O(num)), returned in stream order.

  Examples without any text (caption, aspects or instruments) are skipped and counted.
  """
  counts = {} if counts is None else counts
  rng = np.random.default_rng([seed, 0xC11B])
  kept: list[tuple[int, dict[str, Any]]] = []
  seen = 0
  for ex in examples:
    try:
      ex = {**ex, 'prompt': prompt_of(ex)}
    except ValueError:
      counts['skipped_no_text'] = counts.get('skipped_no_text', 0) + 1
      continue
    if len(kept) < num:
      kept.append((seen, ex))
    else:
      j = int(rng.integers(0, seen + 1))
      if j < num:
        kept[j] = (seen, ex)
    seen += 1
  counts['candidates'] = seen
  return [ex for _, ex in sorted(kept, key=lambda t: t[0])]


# -- generation ----------------------------------------------------------------------------------


def generate(bundle: Any, prompts: Sequence[str], *, duration: float, seed: int,
             batch_size: int, settings: Mapping[str, Any] | None = None,
             log: Callable[[str], None] = print) -> tuple[list[np.ndarray | None], dict]:
  """Audio for each prompt (None where its batch failed) and {'seconds', 'failed', ...}."""
  from musiclm_jax.sampling import decode  # pylint: disable=g-import-not-at-top
  from musiclm_jax.sampling import pipeline as pipeline_lib  # pylint: disable=g-import-not-at-top
  pipe = pipeline_lib.Pipeline(bundle, settings=settings or decode.PAPER_SETTINGS,
                               batch_size=batch_size)
  requests = [pipeline_lib.Request(f'q{i:03d}', pipeline_lib.plain_story(p, duration),
                                   duration, seed=seed, prompt=p)
              for i, p in enumerate(prompts)]
  audio: list[np.ndarray | None] = [None] * len(requests)
  index = {r.id: i for i, r in enumerate(requests)}
  state = {'windows': 0, 'done': 0, 'failed': []}
  usable = []
  for r in requests:
    try:
      pipe.check(r)
      usable.append(r)
    except ValueError as e:  # a prompt MuLan cannot read: skipped and reported
      state['failed'].append({'id': r.id, 'reason': str(e).splitlines()[0][:200]})
      log(f'skipped {r.id}: {state["failed"][-1]["reason"]}')
  requests = usable
  batches = pipe.batches(requests)
  per_batch = sum(pipe.num_windows(duration).values())
  total = per_batch * len(batches)
  start = time.time()

  def on_window(stage, n):
    state['windows'] += n
    log(f'  windows {state["windows"]}/{total} ({stage}, {time.time() - start:.0f} s)')

  def on_result(result):
    audio[index[result.request.id]] = result.audio
    state['done'] += 1
    log(f'generated {state["done"]}/{len(requests)} ({time.time() - start:.0f} s)')

  def on_error(batch, error):
    for r in batch:
      state['failed'].append({'id': r.id, 'reason': f'{type(error).__name__}: '
                                                    f'{str(error).splitlines()[0][:200]}'})
    log(f'batch of {len(batch)} failed: {type(error).__name__}: {error}')

  log(f'generating {len(requests)} x {duration:g} s in {len(batches)} batches of <= '
      f'{batch_size} ({total} windows)')
  pipe.generate(requests, on_window=on_window, on_result=on_result, on_error=on_error)
  info = {'seconds': round(time.time() - start, 2), 'batches': len(batches),
          'failed': state['failed'],
          'settings': {k: v.to_json() for k, v in pipe.settings.items()}}
  return audio, info


def codec_roundtrip(codec: Any, clips: Sequence[np.ndarray]) -> list[np.ndarray]:
  """Each clip encoded and decoded with all levels: what the stages' tokens can at best sound
  like, so the gap between the 'real' and 'codec' rows is the codec's share of the loss."""
  out = []
  for wav in clips:
    codes = codec.encode(np.asarray(wav, np.float32)[None])
    out.append(np.asarray(codec.decode(codes))[0, :len(wav)])
  return out


# -- the evaluation ----------------------------------------------------------------------------


def evaluate(clips: Sequence[Mapping[str, Any]], *, mulan: Any, bundle: Any = None,
             duration: float = 10.0, seed: int = 0, batch_size: int = 8,
             settings: Mapping[str, Any] | None = None, audio_dir: str | None = None,
             log: Callable[[str], None] = print) -> dict[str, Any]:
  """Scores generated (when `bundle` is given) and real audio of `clips` against their prompts.

  Args:
    clips: dicts with 'audio' float32 [N] at 24 kHz, 'instruments' list[str] and 'caption'
      (or 'prompt'; see `prompt_of`). At least 2.
    mulan: `musiclm_jax.mulan.inference.MuLan` that scores (the bundle's).
    bundle: a loaded `Bundle` to generate with; None scores the real audio only.
    duration: seconds generated per prompt; the real audio is cut to the same length.
    seed: generation seed (every request uses it; rows differ by request id) and the
      derangement's seed.
    batch_size: most rows per generation batch.
    settings: stage -> SamplingSettings (default: the paper's temperatures).
    audio_dir: if given, the generated audio is written there as q<index>.wav.
    log: progress printer.

  Returns:
    {'rows': {row key: score_pairing(...) + gain}, 'prompts': [...], 'generation': {...}, ...}
  """
  clips = list(clips)
  prompts = [c.get('prompt') or prompt_of(c) for c in clips]
  instruments = [list(c.get('instruments', [])) for c in clips]
  ids = [f'q{i:03d}' for i in range(len(clips))]  # the request ids of `generate`
  start = time.time()
  generation = None
  if bundle is not None:
    generated, generation = generate(bundle, prompts, duration=duration, seed=seed,
                                     batch_size=batch_size, settings=settings, log=log)
    ok = [i for i, a in enumerate(generated) if a is not None]
    if audio_dir:
      for i in ok:
        gallery.write_wav(os.path.join(audio_dir, f'{ids[i]}.wav'), generated[i],
                          bundle.sample_rate)
    clips, prompts, instruments, ids = ([x[i] for i in ok]
                                        for x in (clips, prompts, instruments, ids))
    generated = [generated[i] for i in ok]
  if len(clips) < 2:
    raise ValueError(f'quality: need at least 2 clips to score, got {len(clips)}')
  sr = mulan.sample_rate
  real = [np.asarray(c['audio'], np.float32)[:int(round(duration * sr))] for c in clips]
  t0 = time.time()
  text_emb = fit_rvq.embed_texts(mulan, prompts)  # [N, D]
  candidates = sorted({name for inst in instruments for name in inst})
  inst_emb = (fit_rvq.embed_texts(mulan, [text_lib.instrument_prompt([c]) for c in candidates])
              if candidates else np.zeros((0, mulan.embed_dim), np.float32))
  perm = derangement(len(clips), seed)
  audio_emb = {'real': fit_rvq.embed_audio_batches(mulan, real, batch_size=batch_size)}
  if bundle is not None:
    audio_emb['generated'] = fit_rvq.embed_audio_batches(mulan, generated,
                                                         batch_size=batch_size)
    audio_emb['codec'] = fit_rvq.embed_audio_batches(mulan, codec_roundtrip(bundle.codec, real),
                                                     batch_size=batch_size)
  log(f'embedded {len(clips)} prompts and {sum(map(len, audio_emb.values()))} clips '
      f'({time.time() - t0:.1f} s)')
  shuffled_inst = [instruments[j] for j in perm]
  rows = {}
  for name in ('generated', 'real', 'codec'):
    if name not in audio_emb:
      continue
    own = score_pairing(audio_emb[name], text_emb, inst_emb, candidates, instruments)
    other = score_pairing(audio_emb[name], text_emb[perm], inst_emb, candidates, shuffled_inst)
    gain = np.asarray(own['mcc_values']) - np.asarray(other['mcc_values'])
    own['mcc_gain_over_shuffled'] = summary(gain)
    if getattr(mulan, 'codebooks', None) is not None:
      codes = mulan.quantize(audio_emb[name])
      own['mulan_tokens'] = token_agreement(codes, mulan.quantize(text_emb))
      other['mulan_tokens'] = token_agreement(codes, mulan.quantize(text_emb[perm]))
    rows[name] = own
    if name != 'codec':  # the codec row only needs its gain over shuffled
      rows['shuffled' if name == 'generated' else 'real_shuffled'] = other
  per_prompt = []
  for i, clip in enumerate(clips):
    entry = {'id': ids[i], 'split': clip.get('split', ''), 'work_id': clip.get('work_id', ''),
             'prompt': prompts[i], 'instruments': instruments[i],
             'shuffled_with': ids[int(perm[i])]}
    for name, row in rows.items():
      entry[f'mcc_{name}'] = row['mcc_values'][i]
      if 'predicted_instruments' in row and not name.endswith('shuffled'):
        entry[f'predicted_{name}'] = row['predicted_instruments'][i]
    per_prompt.append(entry)
  return {'n': len(clips), 'duration': duration, 'seed': seed, 'candidates': candidates,
          'rows': {k: rows[k] for k in ROWS if k in rows}, 'prompts': per_prompt,
          'generation': generation, 'seconds': round(time.time() - start, 2)}


# -- report ------------------------------------------------------------------------------------


def markdown(result: Mapping[str, Any], *, title: str, command: str) -> str:
  """The table of one run: rows = pairings, columns = MCC / instrument / retrieval."""
  rows, n = result['rows'], result['n']
  k = len(result['candidates'])
  lines = [f'### {title}', '', f'`{command}`', '',
           f'| audio vs text | clips | MCC mean ± s.e. | MCC gain over shuffled | '
           f'instrument top-1 ({k} classes) | music→text R@1 | mean rank of own prompt | '
           'MuLan level-1 token agreement | clip-to-clip cosine |',
           '|---|---|---|---|---|---|---|---|---|']
  for key, label in ROWS.items():
    if key not in rows:
      if key == 'generated':
        lines.append(f'| {label} | pending | | | | | | | |')
      continue
    r = rows[key]
    gain = r.get('mcc_gain_over_shuffled')
    gain = f'{gain["mean"]:+.3f} ± {gain["sem"]:.3f}' if gain else '-'
    acc = f'{r["instrument_accuracy"]:.3f}' if 'instrument_accuracy' in r else '-'
    tokens = f'{r["mulan_tokens"]["level1"]:.3f}' if 'mulan_tokens' in r else '-'
    spread = '-' if key.endswith('shuffled') else f'{r["audio_pairwise_cosine"]:.3f}'
    lines.append(f'| {label} | {r["n"]} | {r["mcc"]["mean"]:.3f} ± {r["mcc"]["sem"]:.3f} | '
                 f'{gain} | {acc} | {r["music_to_text_R@1"]:.3f} | '
                 f'{r["music_to_text_mean_rank"]:.2f} | {tokens} | {spread} |')
  any_row = next(iter(rows.values()))
  chance_inst = any_row.get('instrument_chance')
  lines += ['', f'Analytic chance: instrument top-1 '
            f'{"-" if chance_inst is None else f"{chance_inst:.3f}"}, R@1 '
            f'{any_row["chance_R@1"]:.3f}, mean rank {any_row["chance_mean_rank"]:.2f} '
            f'({n} prompts, {result["duration"]:g} s each).']
  gen = result.get('generation')
  if gen:
    lines.append(f'Generation: {gen["seconds"]:.0f} s wall for {n} clips in {gen["batches"]} '
                 f'batches; total with scoring {result["seconds"]:.0f} s'
                 + (f'; {len(gen["failed"])} failed' if gen['failed'] else '') + '.')
  return '\n'.join(lines) + '\n'


def build_parser() -> argparse.ArgumentParser:
  p = argparse.ArgumentParser(prog='python -m musiclm_jax.sampling.quality',
                              description=__doc__.splitlines()[0])
  src = p.add_mutually_exclusive_group(required=True)
  src.add_argument('--bundle', help='bundle folder to generate with (its MuLan scores)')
  src.add_argument('--mulan', help='a saved MuLan: score the real audio only, no generation')
  p.add_argument('--data_dir', required=True, help='TFDS data_dir with the prepared corpus')
  p.add_argument('--dataset', default=fit_rvq.DEFAULT_DATASET)
  p.add_argument('--split', default='test', help='comma-separated held-out splits')
  p.add_argument('--num_prompts', type=int, default=24)
  p.add_argument('--duration', type=float, default=10.0, help='seconds per prompt')
  p.add_argument('--seed', type=int, default=0)
  p.add_argument('--batch_size', type=int, default=8)
  p.add_argument('--cfg_scale', type=float, default=1.0,
                 help='classifier-free guidance (semantic and coarse stages); 1.0: off')
  p.add_argument('--out', required=True, help='folder for quality.json / quality.md')
  p.add_argument('--markdown', default=None, help='also append the table to this file')
  p.add_argument('--save_audio', action='store_true', help='write OUT/audio/<id>.wav')
  return p


def main(argv: list[str] | None = None) -> int:
  args = build_parser().parse_args(argv)
  argv = sys.argv[1:] if argv is None else argv
  command = 'python -m musiclm_jax.sampling.quality ' + ' '.join(argv)
  if args.num_prompts < 2 or args.batch_size < 1 or not args.duration > 0:
    print('error: need --num_prompts >= 2, --batch_size >= 1, --duration > 0', file=sys.stderr)
    return 2
  start = time.time()
  from musiclm_jax.sampling import bundle as bundle_lib  # pylint: disable=g-import-not-at-top
  from musiclm_jax.sampling import decode  # pylint: disable=g-import-not-at-top
  try:
    if args.bundle:
      bundle = bundle_lib.load_bundle(args.bundle)
      mulan = bundle.mulan
    else:
      from musiclm_jax.mulan import inference  # pylint: disable=g-import-not-at-top
      bundle, mulan = None, inference.MuLan.load(args.mulan)
  except (bundle_lib.BundleError, FileNotFoundError, ValueError) as e:
    print(f'error: {str(e).splitlines()[0]}', file=sys.stderr)
    return 2
  counts: dict[str, int] = {}
  splits = [s for s in args.split.split(',') if s]

  def examples():
    for split in splits:
      for ex in fit_rvq.read_examples(args.data_dir, split, dataset=args.dataset,
                                      counts=counts):
        yield {**ex, 'split': split}

  try:
    clips = select_clips(examples(), args.num_prompts, args.seed, counts)
  except ValueError as e:
    print(f'error: {e}', file=sys.stderr)
    return 2
  print(f'{len(clips)} clips from {args.dataset} {",".join(splits)} ({counts})', flush=True)
  settings = {s: decode.SamplingSettings(temperature=decode.PAPER_SETTINGS[s].temperature,
                                         cfg_scale=args.cfg_scale if s != 'fine' else 1.0)
              for s in decode.PAPER_SETTINGS}
  try:
    result = evaluate(clips, mulan=mulan, bundle=bundle, duration=args.duration,
                      seed=args.seed, batch_size=args.batch_size, settings=settings,
                      audio_dir=os.path.join(args.out, 'audio') if args.save_audio else None,
                      log=lambda s: print(s, flush=True))
  except ValueError as e:
    print(f'error: {e}', file=sys.stderr)
    return 1
  result.update(format=FORMAT, command=command, wall_seconds=round(time.time() - start, 1),
                data={'data_dir': os.path.abspath(args.data_dir), 'dataset': args.dataset,
                      'splits': splits, 'counts': counts},
                bundle=None if bundle is None else {
                    'path': bundle.path, 'sha256': bundle.sha256,
                    'sources': bundle.manifest.get('sources')},
                mulan=None if bundle is not None else os.path.abspath(args.mulan))
  title = (f'bundle {bundle.sha256[:12]}' if bundle is not None else 'real audio only') + \
      f': {result["n"]} prompts from {",".join(splits)}, {args.duration:g} s, seed {args.seed}'
  table = markdown(result, title=title, command=command)
  print(table)
  os.makedirs(args.out, exist_ok=True)
  gallery.write_json(os.path.join(args.out, 'quality.json'), result)
  gallery.atomic_write_bytes(os.path.join(args.out, 'quality.md'), table.encode('utf-8'))
  if args.markdown:
    with open(args.markdown, 'a', encoding='utf-8') as f:
      f.write('\n' + table)
  print(f'wrote {os.path.join(args.out, "quality.json")} ({result["wall_seconds"]:.0f} s)')
  return 0


if __name__ == '__main__':
  sys.exit(main())
