r"""Benchmark: sampling speed per stage (tokens/s, real-time factor) of a bundle; ONE JSON line.

  python benchmarks/sample.py --bundle BUNDLE [--seconds 10] [--batch 1]
  python benchmarks/sample.py --random tiny         # random weights, the demo's tiny sizes
  python benchmarks/sample.py --random paper        # random weights, MusicLM sizes (GPU)

Runs the real sampler (`musiclm_jax.sampling.pipeline`: compiled window decoding with the KV
cache, sliding windows, chunked SoundStream decoding) once to compile, then `--repeats` timed
runs, and prints

  {"benchmark": "sample", "device", "num_devices", "bundle", "batch", "audio_seconds",
   "stages": {"semantic"|"coarse"|"fine": {"tokens", "seconds", "tokens_per_s",
              "real_time_factor", "compile_s", "window_frames"}, "codec": {...}},
   "real_time_factor", "jax", ...}

real_time_factor = wall seconds / seconds of audio made (batch x duration): below 1 is faster
than real time. MuLan is not timed: every row is conditioned on fixed random MuLan tokens, so
neither sentencepiece nor the text tower is needed.

On the GPU machine: the image has jax/flax/numpy but no TensorFlow, gin-config, librosa or
sentencepiece. Nothing here imports gin or TF (`load_bundle(..., with_mulan=False)` skips
sentencepiece), so only soundfile/soxr (imported by musiclm_jax.audio) must travel as wheels.
A paper-size bundle (3 x 430M parameters) is too big to carry; use `--random paper`, which
builds the components in memory on the machine (bf16 LMs; ~1 min of host-side setup), e.g.

  python benchmarks/sample.py --random paper --seconds 10 --batch 8
"""

import argparse
import json
import os
from pathlib import Path
import platform
import sys
import time

os.environ.setdefault('XLA_PYTHON_CLIENT_MEM_FRACTION', '0.9')
sys.path.insert(0, str(Path(__file__).resolve().parents[1]))

import jax  # noqa: E402
import numpy as np  # noqa: E402

from musiclm_jax.sampling import decode  # noqa: E402
from musiclm_jax.sampling import pipeline as pipeline_lib  # noqa: E402

STAGES = ('semantic', 'coarse', 'fine')


def parse_args(argv=None):
  p = argparse.ArgumentParser(description=__doc__,
                              formatter_class=argparse.RawDescriptionHelpFormatter)
  source = p.add_mutually_exclusive_group(required=True)
  source.add_argument('--bundle', help='bundle folder (python -m musiclm_jax.export)')
  source.add_argument('--random', choices=('test', 'tiny', 'paper'),
                      help='random weights of these sizes, built in memory')
  p.add_argument('--seconds', type=float, default=10.0, help='audio per row')
  p.add_argument('--batch', type=int, default=1, help='rows sampled together')
  p.add_argument('--repeats', type=int, default=1, help='timed runs after the compile run')
  p.add_argument('--devices', type=int, default=0, help='devices to shard over (0: all)')
  p.add_argument('--cfg_scale', type=float, default=1.0)
  p.add_argument('--seed', type=int, default=0)
  return p.parse_args(argv)


def main(argv=None) -> int:
  args = parse_args(argv)
  setup_start = time.perf_counter()
  if args.bundle:
    from musiclm_jax.sampling import bundle as bundle_lib  # pylint: disable=g-import-not-at-top
    bundle = bundle_lib.load_bundle(args.bundle, with_mulan=False)
  else:
    from musiclm_jax.sampling import random_bundle  # pylint: disable=g-import-not-at-top
    bundle = random_bundle.in_memory(args.random, seed=args.seed)
  settings = {s: decode.SamplingSettings(
      temperature=decode.PAPER_SETTINGS[s].temperature,
      cfg_scale=args.cfg_scale if s != 'fine' else 1.0) for s in STAGES}
  devices = jax.local_devices()[:args.devices] if args.devices > 0 else None
  pipe = pipeline_lib.Pipeline(bundle, settings=settings, devices=devices,
                               batch_size=args.batch)
  mulan = bundle.stages['semantic'].layout.field('mulan')
  rng = np.random.default_rng(args.seed)
  requests = []
  for i in range(args.batch):
    text = f'benchmark row {i}'
    pipe.set_mulan_tokens(text, rng.integers(0, mulan.codebook_size, mulan.num_levels))
    requests.append(pipeline_lib.Request(f'row{i}', pipeline_lib.plain_story(text, args.seconds),
                                         args.seconds, seed=args.seed))
  setup_s = time.perf_counter() - setup_start

  first = pipe.generate(requests)[0]  # compiles
  compile_s = dict(first.compile_seconds)
  runs = []
  for _ in range(max(1, args.repeats)):
    start = time.perf_counter()
    result = pipe.generate(requests)[0]
    runs.append((time.perf_counter() - start, result))
  wall, result = min(runs, key=lambda r: r[0])
  audio_seconds = args.batch * args.seconds
  stages = {}
  for s in STAGES:
    secs, toks = result.stage_seconds[s], result.stage_tokens[s]
    stages[s] = {'tokens': toks, 'seconds': round(secs, 4),
                 'tokens_per_s': round(toks / secs, 1) if secs else None,
                 'real_time_factor': round(secs / audio_seconds, 5),
                 'compile_s': round(compile_s.get(s, 0.0), 2),
                 'window_frames': bundle.stages[s].layout.target.num_frames,
                 'windows': pipe.num_windows(args.seconds)[s],
                 'params': int(sum(np.prod(x.shape) for x in
                                   jax.tree_util.tree_leaves(bundle.stage_params[s])))}
  codec_s = result.stage_seconds['codec']
  stages['codec'] = {'seconds': round(codec_s, 4),
                     'real_time_factor': round(codec_s / audio_seconds, 5),
                     'first_run_s': round(first.stage_seconds['codec'], 2)}
  device = jax.local_devices()[0]
  line = {
      'benchmark': 'sample', 'device': device.device_kind, 'platform': device.platform,
      'num_devices': len(devices or jax.local_devices()),
      'bundle': args.bundle or f'random:{args.random}', 'batch': args.batch,
      'seconds_per_row': args.seconds, 'audio_seconds': audio_seconds, 'stages': stages,
      'wall_seconds': round(wall, 3), 'real_time_factor': round(wall / audio_seconds, 5),
      'cfg_scale': args.cfg_scale, 'setup_s': round(setup_s, 1), 'jax': jax.__version__,
      'python': platform.python_version(), 'cpu_count': os.cpu_count(),
  }
  print(json.dumps(line))
  return 0


if __name__ == '__main__':
  sys.exit(main())
