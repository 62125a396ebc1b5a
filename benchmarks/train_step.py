r"""Benchmark: the real `Trainer` train step of a paper-size MusicLM stage (coarse by default).

Builds the stage in Python (no gin, no TensorFlow: the GPU image has neither), puts one batch
of random tokens on the device(s), compiles `Trainer.compile_step` ahead of time and runs
`--warmup` + `--steps` timed steps, then prints ONE JSON line:

  {"benchmark": "train_step", "stage", "params", "batch", "seq_len", "tokens_per_s", "step_ms",
   "model_flops_per_token", "mfu", "peak_tflops", "device", "remat", "attention_impl", "jax",
   ... plus "sweep" (every batch tried: step_ms or "oom"), "compile_s", "peak_memory_gb"}

Without --batch it sweeps `--sweep` (default 8,16,32 sequences) and reports the largest batch
that fits; a batch whose compiled memory exceeds the device, or that fails with
RESOURCE_EXHAUSTED, counts as "oom" and ends the sweep.

Model FLOPs per token (training, PaLM appendix B convention, causal mask not discounted):
  6 * N_matmul + 12 * num_layers * seq_len * embed_dim
with N_matmul = all parameters except the input embedding table (a lookup, no FLOPs).
MFU = tokens_per_s * flops_per_token / (num_devices * peak_tflops * 1e12), peak = the chip's
dense bf16 spec (H100/H200 SXM: 989.4; the H200 here measures ~790 on a bf16 matmul).

Usage:
  python -m benchmarks.train_step --tiny                # CPU smoke test, ~30 s on 2 cores
  python -m benchmarks.train_step                       # GPU: coarse, bf16, cuDNN, sweep
  python -m benchmarks.train_step --batch 16 --remat minimal
"""

import argparse
import gc
import json
import os
from pathlib import Path
import sys
import time

# Let XLA use most of the GPU (the default preallocation is 75%); harmless elsewhere.
os.environ.setdefault('XLA_PYTHON_CLIENT_MEM_FRACTION', '0.95')
sys.path.insert(0, str(Path(__file__).resolve().parents[1]))

import jax  # noqa: E402
import numpy as np  # noqa: E402

from musiclm_jax import partitioning  # noqa: E402
from musiclm_jax import trainer as trainer_lib  # noqa: E402
from musiclm_jax.layers import attention  # noqa: E402
from musiclm_jax.optim import OptimizerConfig  # noqa: E402
from musiclm_jax.stages import layouts  # noqa: E402
from musiclm_jax.stages import lm  # noqa: E402
from musiclm_jax.stages import model as stage_model  # noqa: E402

# Dense bf16 peak per device, TFLOP/s, by `device_kind` prefix (spec sheets).
PEAK_TFLOPS = {
    'NVIDIA H200': 989.4, 'NVIDIA H100': 989.4, 'NVIDIA A100': 312.0,
    'TPU v5p': 459.0, 'TPU v5 lite': 197.0, 'TPU v5e': 197.0, 'TPU v4': 275.0,
}

# The paper sizes of gin/models/stages/<stage>/paper.gin (tests/test_stage_compile.py checks
# that these stay equal to the gin files).
PAPER_LM = dict(num_layers=24, num_heads=16, embed_dim=1024, mlp_dim=4096, dropout_rate=0.1,
                dtype='bfloat16', remat_policy='minimal')
TINY_LM = dict(num_layers=2, num_heads=4, embed_dim=64, mlp_dim=256, dropout_rate=0.0,
               dtype='float32')
PAPER_LAYOUTS = {
    'semantic': dict(mulan_codebook_size=1024, mulan_levels=12, semantic_codebook_size=1024,
                     semantic_frames=750),
    'coarse': dict(mulan_codebook_size=1024, mulan_levels=12, semantic_codebook_size=1024,
                   semantic_frames=250, codec_codebook_size=1024, coarse_levels=4,
                   acoustic_frames=500),
    'fine': dict(codec_codebook_size=1024, coarse_levels=4, fine_levels=8, acoustic_frames=150),
}
TINY_LAYOUTS = {
    'semantic': dict(mulan_codebook_size=64, mulan_levels=12, semantic_codebook_size=64,
                     semantic_frames=32),
    'coarse': dict(mulan_codebook_size=64, mulan_levels=12, semantic_codebook_size=64,
                   semantic_frames=16, codec_codebook_size=64, coarse_levels=4,
                   acoustic_frames=32),
    'fine': dict(codec_codebook_size=64, coarse_levels=4, fine_levels=8, acoustic_frames=16),
}
LAYOUT_FNS = {'semantic': layouts.semantic_layout, 'coarse': layouts.coarse_layout,
              'fine': layouts.fine_layout}


def stage_model_for(stage: str, *, tiny: bool = False, **overrides) -> stage_model.StageModel:
  """The paper (or tiny) stage as gin builds it, with LMConfig fields overridden."""
  layout = LAYOUT_FNS[stage](**(TINY_LAYOUTS if tiny else PAPER_LAYOUTS)[stage])
  config = lm.LMConfig(**{**(TINY_LM if tiny else PAPER_LM), **overrides})
  return stage_model.StageModel(layout=layout, config=config, z_loss=1e-4)


def matmul_params(model: stage_model.StageModel) -> tuple[int, int]:
  """(all parameters, parameters that take part in matmuls = all but the embedding table)."""
  params = jax.eval_shape(model.init, jax.random.PRNGKey(0), None)[0]
  total = lm.count_params(params)
  cfg = model.config
  norms = (2 * cfg.num_layers + 1) * cfg.embed_dim
  return total, total - cfg.vocab_size * cfg.embed_dim - norms


def model_flops_per_token(model: stage_model.StageModel, seq_len: int) -> float:
  """6 * N_matmul + 12 * layers * seq_len * width (training, forward + backward)."""
  cfg = model.config
  return 6.0 * matmul_params(model)[1] + 12.0 * cfg.num_layers * seq_len * cfg.embed_dim


def random_batch(model: stage_model.StageModel, batch: int, seed: int = 0) -> dict:
  """LM sequences of random codes laid out by the stage: {'inputs', 'targets', 'loss_mask'}."""
  rng = np.random.default_rng(seed)
  codes = {f.name: rng.integers(0, f.codebook_size, (batch, f.num_frames, f.num_levels))
           for f in model.layout.fields}
  return model.layout.build(codes)


def _is_oom(error: Exception) -> bool:
  text = str(error)
  return 'RESOURCE_EXHAUSTED' in text or 'Out of memory' in text or 'out of memory' in text


def run_batch(model, mesh, batch_size: int, *, warmup: int, steps: int, seed: int = 0) -> dict:
  """Compiles and times the train step at one batch size; {'oom': True} if it does not fit."""
  rules = partitioning.DEFAULT_RULES
  trainer = trainer_lib.Trainer(model=model, mesh=mesh, rules=rules,
                                optimizers=OptimizerConfig(warmup_steps=10), total_steps=1000,
                                compute_dtype=model.config.dtype)
  batch = partitioning.shard_batch(random_batch(model, batch_size, seed), mesh, rules)
  state = None
  try:
    state, shardings = trainer.init_state(jax.random.PRNGKey(seed), batch)
    step = trainer.compile_step(shardings, {k: v.sharding for k, v in batch.items()})
    start = time.perf_counter()
    compiled = step.lower(state, batch).compile()  # as trainer.fit runs it: no mesh context
    compile_s = time.perf_counter() - start
    mem = compiled.memory_analysis()
    limit = (jax.devices()[0].memory_stats() or {}).get('bytes_limit')
    need = None if mem is None else mem.argument_size_in_bytes + mem.temp_size_in_bytes
    if limit and need and need > limit:
      return {'oom': True, 'need_gb': need / 1e9}
    for _ in range(warmup):
      state, metrics = compiled(state, batch)
    jax.block_until_ready(state)
    start = time.perf_counter()
    for _ in range(steps):
      state, metrics = compiled(state, batch)
    jax.block_until_ready(state)
    elapsed = time.perf_counter() - start
    stats = jax.devices()[0].memory_stats() or {}
    return {'oom': False, 'step_s': elapsed / steps, 'compile_s': compile_s,
            'loss': float(metrics['loss']),
            'peak_memory_gb': stats.get('peak_bytes_in_use', 0) / 1e9 or None}
  except Exception as e:  # pylint: disable=broad-except
    if _is_oom(e):
      return {'oom': True}
    raise
  finally:
    del state
    gc.collect()


def main(argv=None) -> None:
  p = argparse.ArgumentParser(description=__doc__.splitlines()[0])
  p.add_argument('--stage', choices=sorted(PAPER_LAYOUTS), default='coarse')
  p.add_argument('--tiny', action='store_true', help='tiny sizes (CPU smoke test)')
  p.add_argument('--batch', type=int, default=None, help='global batch; default: sweep')
  p.add_argument('--sweep', default='8,16,32', help='batch sizes tried without --batch')
  p.add_argument('--remat', choices=sorted(lm.REMAT_POLICIES), default='minimal')
  p.add_argument('--attention', choices=('auto', 'cudnn', 'xla'), default='auto')
  p.add_argument('--dtype', default='bfloat16', help='compute dtype')
  p.add_argument('--warmup', type=int, default=3)
  p.add_argument('--steps', type=int, default=10)
  p.add_argument('--peak_tflops', type=float, default=None,
                 help='per-device peak for MFU (default: spec sheet by device kind)')
  p.add_argument('--seed', type=int, default=0)
  args = p.parse_args(argv)
  if args.tiny:
    args.sweep = '2'
    args.warmup, args.steps = min(args.warmup, 1), min(args.steps, 2)

  model = stage_model_for(args.stage, tiny=args.tiny, dtype=args.dtype,
                          remat_policy=args.remat, attention_impl=args.attention)
  mesh = partitioning.make_mesh({'data': -1})
  seq_len = model.layout.model_length
  total, _ = matmul_params(model)
  flops_per_token = model_flops_per_token(model, seq_len)
  device = jax.devices()[0]
  peak = args.peak_tflops or next(
      (v for k, v in PEAK_TFLOPS.items() if device.device_kind.startswith(k)), None)
  impl = attention.resolve_implementation(args.attention, jax.numpy.dtype(args.dtype),
                                          model.config.per_head_dim)

  sizes = [args.batch] if args.batch else [int(b) for b in args.sweep.split(',')]
  sweep, best = {}, None
  for size in sizes:
    if size % mesh.size:
      raise SystemExit(f'--batch {size}: must divide by the {mesh.size} devices')
    result = run_batch(model, mesh, size, warmup=args.warmup, steps=args.steps, seed=args.seed)
    sweep[str(size)] = 'oom' if result['oom'] else round(result['step_s'] * 1e3, 2)
    print(f'batch {size}: {sweep[str(size)]}', file=sys.stderr, flush=True)
    if result['oom']:
      break
    best = (size, result)
  if best is None:
    raise SystemExit(f'no batch size fits: {sweep}')

  size, result = best
  tokens_per_s = size * seq_len / result['step_s']
  mfu = tokens_per_s * flops_per_token / (mesh.size * peak * 1e12) if peak else None
  print(json.dumps({
      'benchmark': 'train_step', 'stage': args.stage + ('_tiny' if args.tiny else ''),
      'params': total, 'batch': size, 'seq_len': seq_len,
      'tokens_per_s': round(tokens_per_s, 1), 'step_ms': round(result['step_s'] * 1e3, 2),
      'model_flops_per_token': flops_per_token, 'mfu': None if mfu is None else round(mfu, 4),
      'peak_tflops': peak, 'device': device.device_kind, 'num_devices': mesh.size,
      'remat': args.remat, 'attention_impl': impl, 'dtype': args.dtype,
      'jax': jax.__version__, 'warmup': args.warmup, 'steps': args.steps,
      'compile_s': round(result['compile_s'], 1), 'peak_memory_gb': result['peak_memory_gb'],
      'loss': result['loss'], 'sweep': sweep,
  }))


if __name__ == '__main__':
  main()
