"""`make demo`: the whole pipeline on the embedded synthetic corpus, tiny models, 2 CPU cores.

  python -m musiclm_jax.demo --out demo_out [--work demo_work]

Steps run in order as subprocesses; each one that already finished (its output exists) is
skipped, so a rerun resumes. A step whose tool is not part of this version yet ends the run
there, with a summary of what was made: the demo always runs the longest path that exists.
"""

import argparse
import dataclasses
import importlib.util
import json
import os
from pathlib import Path
import shlex
import subprocess
import sys
import time

REPO = Path(__file__).resolve().parent.parent


@dataclasses.dataclass
class Step:
  """One pipeline step: a command and the file whose existence marks it finished."""
  name: str
  argv: list[str]
  done_marker: str
  needs_module: str
  needs_files: tuple[str, ...] = ()

  def available(self) -> tuple[bool, str]:
    if importlib.util.find_spec(self.needs_module) is None:
      return False, f'module {self.needs_module} is not in this version'
    missing = [f for f in self.needs_files if not (REPO / f).exists()]
    if missing:
      return False, f'{", ".join(missing)} not in this version'
    return True, ''


def _train(run_file: str, model_dir: Path, *overrides: str) -> list[str]:
  return ['-m', 'musiclm_jax.train', f'--gin_file={run_file}',
          f"--gin.MODEL_DIR='{model_dir}'", *overrides]


def plan(work: Path, out: Path) -> list[Step]:
  """The demo pipeline, in order."""
  data, spm = work / 'data', work / 'spm'
  tokens = work / 'tokens'
  return [
      Step('build the synthetic corpus (small)',
           ['-m', 'musiclm_jax.data.build', '--corpus', 'synth', '--config', 'small',
            '--data_dir', str(data), '--no_progress'],
           str(data / 'synth' / 'small'), 'musiclm_jax.data.build'),
      Step('train the text vocabulary (sentencepiece)',
           ['-m', 'musiclm_jax.data.train_spm', '--data_dir', str(data), '--out', str(spm)],
           str(spm / 'spm.model'), 'musiclm_jax.data.train_spm'),
      Step('train the tiny SoundStream codec',
           # 1000 steps of 8 x 1 s took 40 min on 2 loaded cores and the mel loss had
           # plateaued by step 400; 600 steps of 8 x 0.5 s cost about a third of that.
           _train('gin/runs/codec_tiny.gin', work / 'codec', '--gin.TRAIN_STEPS=600',
                  '--gin.CLIP_SAMPLES=12000'),
           str(work / 'codec' / 'DONE'), 'musiclm_jax.codec.model',
           ('gin/runs/codec_tiny.gin',)),
      Step('train the tiny w2v-BERT',
           _train('gin/runs/semantic_tiny.gin', work / 'semantic', '--gin.TRAIN_STEPS=600'),
           str(work / 'semantic' / 'DONE'), 'musiclm_jax.semantic.model',
           ('gin/runs/semantic_tiny.gin',)),
      Step('fit the semantic k-means',
           ['-m', 'musiclm_jax.semantic.fit_kmeans', '--checkpoint', str(work / 'semantic'),
            '--data_dir', str(data), '--split', 'train', '--num_clusters', '64',
            '--max_frames', '20000', '--num_iters', '20', '--out', str(work / 'semantic_tok')],
           str(work / 'semantic_tok'), 'musiclm_jax.semantic.fit_kmeans'),
      Step('train the tiny MuLan',
           _train('gin/runs/mulan_tiny.gin', work / 'mulan', '--gin.TRAIN_STEPS=250'),
           str(work / 'mulan' / 'DONE'), 'musiclm_jax.mulan.model',
           ('gin/runs/mulan_tiny.gin',)),
      Step('fit the MuLan RVQ',
           ['-m', 'musiclm_jax.mulan.fit_rvq', '--checkpoint', str(work / 'mulan'),
            '--data_dir', str(data), '--spm', str(spm / 'spm.model'),
            '--codebook_size', '64', '--out', str(work / 'mulan_rvq')],
           str(work / 'mulan_rvq'), 'musiclm_jax.mulan.fit_rvq'),
      Step('precompute tokens',
           ['-m', 'musiclm_jax.data.precompute', '--corpus', 'synth', '--data_dir', str(data),
            '--tokenizers', str(work), '--out', str(tokens)],
           str(tokens / 'DONE'), 'musiclm_jax.data.precompute'),
      *[Step(f'train the tiny {stage} stage',
             _train(f'gin/runs/{stage}_tiny.gin', work / f'stage_{stage}',
                    f"--gin.TOKENS_DIR='{tokens}'"),
             str(work / f'stage_{stage}' / 'DONE'), 'musiclm_jax.stages.model',
             (f'gin/runs/{stage}_tiny.gin',))
        for stage in ('semantic_stage', 'coarse', 'fine')],
      Step('export the bundle',
           ['-m', 'musiclm_jax.export', '--out', str(work / 'bundle'), '--from_demo', str(work)],
           str(work / 'bundle' / 'manifest.json'), 'musiclm_jax.export'),
      Step('sample four prompts',
           ['-m', 'musiclm_jax.sample', '--bundle', str(work / 'bundle'),
            '--prompts_file', str(REPO / 'gin' / 'demo_prompts.jsonl'), '--out', str(out)],
           str(out / 'index.html'), 'musiclm_jax.sample'),
  ]


def data_env(work: Path) -> dict[str, str]:
  """Where the tools find the corpus, the text vocabulary and the tokens."""
  return {'MUSICLM_DATA_DIR': str(work / 'data'),
          'MUSICLM_SPM_MODEL': str(work / 'spm' / 'spm.model'),
          'MUSICLM_TOKENS_DIR': str(work / 'tokens')}


def run(steps: list[Step], log_dir: Path) -> list[dict]:
  """Runs steps until one is unavailable or fails; returns a record per step."""
  records = []
  env = {**os.environ, 'PYTHONUNBUFFERED': '1', **data_env(log_dir.parent)}
  for index, step in enumerate(steps, start=1):
    header = f'[{index}/{len(steps)}] {step.name}'
    if Path(step.done_marker).exists():
      print(f'{header}: already done ({step.done_marker})', flush=True)
      records.append({'step': step.name, 'status': 'reused'})
      continue
    ok, why = step.available()
    if not ok:
      print(f'{header}: not available yet ({why}); the demo stops here.', flush=True)
      records.append({'step': step.name, 'status': 'unavailable', 'why': why})
      break
    command = [sys.executable, *step.argv]
    log_file = log_dir / f'{index:02d}.log'
    print(f'{header}\n  $ {shlex.join(command)}\n  log: {log_file}', flush=True)
    start = time.time()
    with open(log_file, 'w') as log:
      proc = subprocess.Popen(command, cwd=REPO, env=env, stdout=subprocess.PIPE,
                              stderr=subprocess.STDOUT, text=True)
      for line in proc.stdout:
        log.write(line)
        if any(k in line for k in ('step ', 'error', 'Error', 'clips', 'summary', 'wrote')):
          print('  ' + line.rstrip()[:160], flush=True)
      proc.wait()
    seconds = time.time() - start
    if proc.returncode != 0:
      print(f'{header}: FAILED (exit {proc.returncode}) after {seconds:.0f} s; see {log_file}')
      records.append({'step': step.name, 'status': 'failed', 'seconds': seconds})
      break
    marker = Path(step.done_marker)
    if marker.name == 'DONE':
      marker.write_text(f'finished in {seconds:.0f} s\n')
    print(f'{header}: done in {seconds:.0f} s', flush=True)
    records.append({'step': step.name, 'status': 'ran', 'seconds': round(seconds, 1)})
  return records


def main(argv=None) -> int:
  p = argparse.ArgumentParser(prog='musiclm demo', description=__doc__,
                              formatter_class=argparse.RawDescriptionHelpFormatter)
  p.add_argument('--out', default='demo_out', help='where the gallery goes')
  p.add_argument('--work', default='demo_work', help='data, checkpoints, tokens, bundle')
  args = p.parse_args(argv)
  out, work = (REPO / args.out).resolve(), (REPO / args.work).resolve()
  out.mkdir(parents=True, exist_ok=True)
  (work / 'logs').mkdir(parents=True, exist_ok=True)
  start = time.time()
  records = run(plan(work, out), work / 'logs')
  failed = any(r['status'] == 'failed' for r in records)
  summary = {'total_seconds': round(time.time() - start, 1), 'steps': records}
  (out / 'demo_summary.json').write_text(json.dumps(summary, indent=2))
  print(f'\ndemo finished in {summary["total_seconds"]:.0f} s; work folder: {work}')
  gallery = out / 'index.html'
  print(f'gallery: {gallery}' if gallery.exists() else f'summary: {out / "demo_summary.json"}')
  return 1 if failed else 0


if __name__ == '__main__':
  sys.exit(main())
