"""Held-out token accuracy and perplexity of trained stage runs, next to two baselines.

  python benchmarks/stage_baselines.py --tokens TOKENS_DIR \\
      --run semantic_stage=/tmp/stage_semantic --run coarse=/tmp/stage_coarse \\
      --run fine=/tmp/stage_fine [--split validation] [--windows 4] [--markdown] \
      [--drop_melody]

For each run (a `musiclm_jax.train` folder of a stage run file) the stage model, its
TASK_FEATURE_LENGTHS and its newest checkpoint are read back; the stage's token task on
TOKENS_DIR (no conditioning dropout) gives `--windows` random windows (fixed seed) of every
held-out clip. Over the predicted tokens (the layout's loss mask: target field, not PAD):

  model          argmax accuracy and perplexity exp(mean NLL) of the LM
  unigram        per-level code frequencies of the train split (add-one smoothed)
  copy_previous  predict the previous frame's code of the same level (the unigram argmax for a
                 window's first frame); perplexity of p = a_l [x = prev] + (1 - a_l) unigram_l,
                 a_l = how often a frame repeats the previous one at level l in train

Runs of the melody-conditioned semantic stage (MIXTURE_OR_TASK_NAME musiclm_semantic_melody...,
gin/runs/semantic_stage_melody_*.gin, also with MELODY_FRAMES = 0) are scored on the melody
task's windows (crops at multiples of the melody hop); `--drop_melody` replaces the melody
tokens by -1 (PAD: the stage's text-only conditioning).

Prints one JSON line per stage (or a markdown table with --markdown).
"""

import argparse
import json
import os
from pathlib import Path
import sys

sys.path.insert(0, str(Path(__file__).resolve().parents[1]))

import numpy as np  # noqa: E402

# Stage -> (target field, codec levels [lo, hi) of the stored acoustic codes, or None).
TARGETS = {'semantic': ('semantic', None), 'coarse': ('coarse', (0, 4)),
           'fine': ('fine', (4, 12))}


def _load_run(run_dir: str, step: int | None = None):
  """(StageModel, TASK_FEATURE_LENGTHS, params, meta) of a finished stage run."""
  import gin  # pylint: disable=g-import-not-at-top
  from musiclm_jax import checkpoints  # pylint: disable=g-import-not-at-top
  gin.clear_config()
  os.environ.pop('MUSICLM_TOKENS_DIR', None)  # checked_layout only checks lengths here
  gin.parse_config(Path(run_dir, 'config.gin').read_text())
  model = gin.query_parameter('%MODEL').scoped_configurable_fn()
  lengths = dict(gin.query_parameter('%TASK_FEATURE_LENGTHS'))
  try:
    task = str(gin.query_parameter('%MIXTURE_OR_TASK_NAME'))
  except ValueError:
    task = ''
  gin.clear_config()
  params, _, meta = checkpoints.load_params(run_dir, step=step)
  meta = {**meta, 'melody_task': task.startswith('musiclm_semantic_melody')}
  return model, lengths, params, meta


def _train_codes(tokens_dir: str, stage: str) -> list[np.ndarray]:
  """Every stored train clip's target codes [T, L] for the stage."""
  import tensorflow as tf  # pylint: disable=g-import-not-at-top
  from tasks import token_tasks  # pylint: disable=g-import-not-at-top
  files = sorted(tf.io.gfile.glob(os.path.join(tokens_dir, 'train', 'shard-*-of-*.tfrecord')))
  spec = token_tasks.feature_description()
  levels = TARGETS[stage][1]
  out = []
  for raw in tf.data.TFRecordDataset(files).as_numpy_iterator():
    ex = tf.io.parse_single_example(raw, spec)
    if levels is None:
      out.append(ex['semantic'].numpy()[:, None])
    else:
      codes = ex['acoustic'].numpy().reshape(-1, int(ex['acoustic_levels'][0]))
      out.append(codes[:, levels[0]:levels[1]])
  return out


class Baselines:
  """Unigram and copy-previous-frame predictors fitted on train codes."""

  def __init__(self, clips: list[np.ndarray], codebook_size: int):
    levels = clips[0].shape[1]
    counts = np.ones((levels, codebook_size))
    repeats, pairs = np.zeros(levels), 0
    for c in clips:
      for level in range(levels):
        counts[level] += np.bincount(c[:, level], minlength=codebook_size)[:codebook_size]
      repeats += (c[1:] == c[:-1]).sum(0)
      pairs += len(c) - 1
    self.probs = counts / counts.sum(1, keepdims=True)  # [L, V]
    self.repeat = np.clip(repeats / max(pairs, 1), 1e-3, 1 - 1e-3)  # [L]

  def score(self, codes: np.ndarray) -> dict[str, np.ndarray]:
    """codes [B, T, L] (-1 = missing) -> per-token {'valid', 'uni_*', 'copy_*'} arrays."""
    valid = codes >= 0
    safe = np.where(valid, codes, 0)
    level = np.arange(codes.shape[2])[None, None, :]
    p_uni = self.probs[level, safe]
    prev = np.concatenate([np.full_like(codes[:, :1], -1), codes[:, :-1]], 1)
    top = self.probs.argmax(1)[None, None, :]
    guess = np.where(prev >= 0, prev, top)
    a = np.where(prev >= 0, self.repeat[None, None, :], 0.0)
    p_copy = a * (codes == prev) + (1 - a) * p_uni
    return {'valid': valid, 'uni_nll': -np.log(p_uni), 'uni_ok': safe == top,
            'copy_nll': -np.log(p_copy), 'copy_ok': safe == guess}


def evaluate(run_dir: str, tokens_dir: str, *, split: str, windows: int, batch_size: int,
             seed: int = 0, drop_melody: bool = False, step: int | None = None) -> dict:
  import jax  # pylint: disable=g-import-not-at-top
  import jax.numpy as jnp  # pylint: disable=g-import-not-at-top
  import seqio  # pylint: disable=g-import-not-at-top
  from tasks import token_tasks  # pylint: disable=g-import-not-at-top
  model, lengths, params, meta = _load_run(run_dir, step)
  stage = model.layout.name
  field = TARGETS[stage][0]
  token_tasks.register_token_tasks(tokens_dir, corpus='heldout', cond_dropout=0.0,
                                   melody_dropout=0.0)
  task = token_tasks.task_name(
      token_tasks.MELODY_STAGE if meta['melody_task'] else stage, 'heldout')
  ds = seqio.get_mixture_or_task(task).get_dataset(
      lengths, split=split, shuffle=False, seed=seed, num_epochs=windows)
  baselines = Baselines(_train_codes(tokens_dir, stage), model.layout.target.codebook_size)
  logits_fn = jax.jit(lambda p, x: model.apply(p, x))
  sums = {k: 0.0 for k in ('tokens', 'nll', 'ok', 'uni_nll', 'uni_ok', 'copy_nll', 'copy_ok')}
  examples = 0
  for batch in ds.batch(batch_size).as_numpy_iterator():
    if drop_melody and 'melody' in batch:
      batch['melody'] = np.full_like(batch['melody'], -1)
    built = model.make_batch(batch)
    logits = np.asarray(logits_fn(params, jnp.asarray(built['inputs'])), np.float64)
    targets, mask = built['targets'], built['loss_mask']
    log_z = np.log(np.exp(logits - logits.max(-1, keepdims=True)).sum(-1)) + logits.max(-1)
    nll = log_z - np.take_along_axis(logits, targets[..., None], -1)[..., 0]
    sums['tokens'] += mask.sum()
    sums['nll'] += (nll * mask).sum()
    sums['ok'] += ((logits.argmax(-1) == targets) * mask).sum()
    codes = batch[field]
    codes = codes[..., None] if codes.ndim == 2 else codes
    scored = baselines.score(codes)
    assert scored['valid'].sum() == mask.sum(), 'baseline and model count different tokens'
    for k in ('uni_nll', 'uni_ok', 'copy_nll', 'copy_ok'):
      sums[k] += (scored[k] * scored['valid']).sum()
    examples += len(targets)
  n = max(sums['tokens'], 1.0)
  row = lambda nll, ok: {'accuracy': round(float(sums[ok] / n), 4),
                         'perplexity': round(float(np.exp(sums[nll] / n)), 2)}
  return {'stage': stage, 'run': run_dir, 'step': meta.get('step'), 'split': split,
          'task': task,
          'melody': 'melody' in [f.name for f in model.layout.conditioning] and not drop_melody,
          'windows': examples, 'tokens': int(sums['tokens']),
          'codebook_size': model.layout.target.codebook_size,
          'model': row('nll', 'ok'), 'unigram': row('uni_nll', 'uni_ok'),
          'copy_previous': row('copy_nll', 'copy_ok')}


def markdown(results: list[dict]) -> str:
  lines = ['| stage | step | held-out tokens | model acc | model ppl | unigram acc | unigram ppl '
           '| copy-prev acc | copy-prev ppl |', '|---|---|---|---|---|---|---|---|---|']
  for r in results:
    m, u, c = r['model'], r['unigram'], r['copy_previous']
    lines.append(f"| {r['stage']} | {r['step']} | {r['tokens']} | {m['accuracy']:.3f} | "
                 f"{m['perplexity']:.1f} | {u['accuracy']:.3f} | {u['perplexity']:.1f} | "
                 f"{c['accuracy']:.3f} | {c['perplexity']:.1f} |")
  return '\n'.join(lines)


def main(argv=None) -> int:
  p = argparse.ArgumentParser(description=__doc__.split('\n\n')[0])
  p.add_argument('--tokens', required=True, help='TOKENS_DIR written by data.precompute')
  p.add_argument('--run', action='append', required=True, help='NAME=RUN_DIR (repeatable)')
  p.add_argument('--split', default='validation')
  p.add_argument('--windows', type=int, default=4, help='random windows per held-out clip')
  p.add_argument('--batch_size', type=int, default=32)
  p.add_argument('--markdown', action='store_true')
  p.add_argument('--step', type=int, default=None,
                 help='checkpoint step to score (default: the newest)')
  p.add_argument('--drop_melody', action='store_true',
                 help='melody-conditioned runs: score with the melody tokens dropped (PAD)')
  args = p.parse_args(argv)
  results = []
  for item in args.run:
    _, _, run_dir = item.rpartition('=')
    result = evaluate(run_dir, args.tokens, split=args.split, windows=args.windows,
                      batch_size=args.batch_size, drop_melody=args.drop_melody, step=args.step)
    results.append(result)
    if not args.markdown:
      print(json.dumps(result), flush=True)
  if args.markdown:
    print(markdown(results))
  return 0


if __name__ == '__main__':
  sys.exit(main())
