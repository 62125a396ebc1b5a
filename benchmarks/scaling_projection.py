r"""Per-device memory and projected step times of the paper stages (the tables of docs/SCALING.md).

  JAX_PLATFORMS=cpu .venv/bin/python -m benchmarks.scaling_projection       # ~10 min, 2 cores
  JAX_PLATFORMS=cpu .venv/bin/python -m benchmarks.scaling_projection --no_compile   # ~20 s

Prints markdown tables (and, with --json_out, one JSON object with every number). Three kinds of
numbers come out; only the first two are measurements, of the program rather than a machine:

1. XLA's memory analysis of the real train step (`Trainer.compile_step`, bf16 compute, one remat
   policy) AOT-compiled for 8 fake CPU devices as {'data': 1, 'fsdp': 8, 'tensor': 1} at 1 and 2
   sequences per device: argument, output and temporary bytes per device. This is XLA:CPU's
   buffer assignment, which schedules loops and fusions differently from the TPU and GPU
   compilers; its temporaries grow ~10x faster per sequence than the saved activations of item 2
   (see docs/SCALING.md), so they are an upper bound, not a TPU/GPU figure.
2. The activations the backward pass keeps (`saved_residuals` of the loss under the remat
   policy), exact and independent of the backend, per sequence.
3. Projections from a simple model (no TPU or multi-GPU machine was used):
     per-chip memory   = 18 bytes * params / shards       (f32 params, 2 Adam moments, f32 grads,
                                                            bf16 copy)
                       + saved activations * micro-batch (item 2)
                       + working set: logits (10 bytes * micro * T * vocab) + one layer's
                         recomputed attention scores with XLA attention (14 bytes * micro *
                         heads * T^2; 0 with a flash kernel)
     model FLOPs/token = 6 * N_matmul + 12 * layers * T * width
     matmul time       = FLOPs / (peak * MATMUL_EFFICIENCY)
     attention HBM     = micro-batches * layers * heads * T^2 * SCORE_BYTES / HBM bandwidth
                         (XLA attention on TPU; 0 with cuDNN flash on GPU)
     FSDP time         = 6 bytes * params * (shards - 1) / shards / (ICI bidirectional / 2)
                         (bf16 all-gather forward and backward, bf16 reduce-scatter; overlapped)
     step time         = max(matmul + attention HBM, FSDP);  MFU = FLOPs / (step time * peak)
"""

import argparse
import dataclasses
import json
import math
import os
from pathlib import Path
import re
import sys
import time

if os.environ.get('JAX_PLATFORMS', 'cpu') == 'cpu':
  os.environ['JAX_PLATFORMS'] = 'cpu'
  os.environ['XLA_FLAGS'] = (os.environ.get('XLA_FLAGS', '') +
                             ' --xla_force_host_platform_device_count=8').strip()
sys.path.insert(0, str(Path(__file__).resolve().parents[1]))

import flax.linen as nn  # noqa: E402
import jax  # noqa: E402
from jax._src import ad_checkpoint  # noqa: E402  (saved_residuals is not public API)
import jax.numpy as jnp  # noqa: E402

from benchmarks import train_step  # noqa: E402
from musiclm_jax import partitioning  # noqa: E402
from musiclm_jax import trainer as trainer_lib  # noqa: E402
from musiclm_jax.optim import OptimizerConfig  # noqa: E402

REPO = Path(__file__).resolve().parents[1]
STAGES = ('semantic', 'coarse', 'fine')
RUN_FILES = {'semantic': 'semantic_stage_paper.gin', 'coarse': 'coarse_paper.gin',
             'fine': 'fine_paper.gin'}
DEFAULT_GLOBAL_BATCH = 256  # an assumption of this document, used where no run file sets one
TPU_REMAT = 'minimal'       # the paper remat policy (tests/test_stage_compile.py)
GPU_REMAT = 'none'          # with cuDNN flash attention, H200 memory allows no remat
MATMUL_EFFICIENCY = 0.6     # assumed fraction of peak reached by the dense matmuls
SCORE_BYTES = 32            # assumed HBM bytes per attention-score element per training step
HBM_USABLE = 0.9            # fraction of HBM the step may use


@dataclasses.dataclass(frozen=True)
class Chip:
  name: str
  peak_tflops: float        # dense bf16
  hbm_gb: float
  hbm_gbps: float
  ici_gbps: float           # bidirectional per chip (GB/s); 0 = single device
  flash_attention: bool     # a fused attention kernel (no [T, T] scores in HBM)


CHIPS = {
    'v5p': Chip('TPU v5p', 459, 95, 2765, 1200, False),
    'v4': Chip('TPU v4', 275, 32, 1200, 300, False),   # ICI: assumed (6 links x ~50 GB/s)
    'v5e': Chip('TPU v5e', 197, 16, 819, 400, False),
    'h200': Chip('H200', 790, 141, 4300, 0, True),     # 790: bf16 matmul measured here
}
# gin/mesh/<file>.gin -> chip kind.
MESHES = {'v5p_64': 'v5p', 'v5p_128': 'v5p', 'v4_128': 'v4', 'v5e_64': 'v5e',
          'v5e_256': 'v5e', 'gpu1': 'h200'}


def mesh_shape(name: str) -> dict[str, int]:
  text = (REPO / 'gin' / 'mesh' / f'{name}.gin').read_text()
  match = re.search(r'^MESH_SHAPE\s*=\s*(\{[^}]*\})', text, re.M)
  if not match:
    raise ValueError(f'gin/mesh/{name}.gin: no MESH_SHAPE = {{...}} line')
  return {k: int(v) for k, v in json.loads(match.group(1).replace("'", '"')).items()}


def global_batch(stage: str) -> tuple[int, str]:
  path = REPO / 'gin' / 'runs' / RUN_FILES[stage]
  if path.exists():
    match = re.search(r'^BATCH_SIZE\s*=\s*(\d+)', path.read_text(), re.M)
    if match:
      return int(match.group(1)), f'gin/runs/{RUN_FILES[stage]}'
  return DEFAULT_GLOBAL_BATCH, 'assumed'


def _abstract_batch(model, size: int, sharding=None) -> dict:
  length = model.layout.model_length
  return {k: jax.ShapeDtypeStruct((size, length), dtype, sharding=sharding)
          for k, dtype in (('inputs', jnp.int32), ('targets', jnp.int32),
                           ('loss_mask', jnp.float32))}


def compiled_memory(model, per_device_batch: int) -> dict:
  """argument/output/temp bytes per device of the train step on 8 fake devices (fsdp 8)."""
  rules = partitioning.DEFAULT_RULES
  mesh = partitioning.make_mesh({'data': 1, 'fsdp': 8, 'tensor': 1})
  trainer = trainer_lib.Trainer(model=model, mesh=mesh, rules=rules,
                                optimizers=OptimizerConfig(), total_steps=10_000,
                                compute_dtype='bfloat16')
  sharding = partitioning.batch_sharding(mesh, rules, 2)
  batch = _abstract_batch(model, 8 * per_device_batch, sharding)
  state, shardings = trainer.state_shardings(jax.random.PRNGKey(0), batch)
  start = time.perf_counter()
  compiled = trainer.compile_step(shardings, {k: sharding for k in batch}).lower(
      state, batch).compile()
  mem = compiled.memory_analysis()
  return {'argument': mem.argument_size_in_bytes, 'output': mem.output_size_in_bytes,
          'temp': mem.temp_size_in_bytes, 'compile_s': round(time.perf_counter() - start, 1)}


def saved_activations(model) -> dict:
  """Bytes the backward pass keeps per sequence (all, and without [T, T] attention scores)."""
  seq = model.layout.model_length
  params = nn.unbox(jax.eval_shape(model.init, jax.random.PRNGKey(0), None)[0])

  def loss(p, batch):
    p = jax.tree.map(lambda x: x.astype(jnp.bfloat16), p)
    return model.loss('model', p, {}, batch, jax.random.PRNGKey(0), 0)[0]

  totals = []
  for size in (1, 2):
    residuals = ad_checkpoint.saved_residuals(loss, params, _abstract_batch(model, size))
    nbytes = lambda a: math.prod(a.shape) * a.dtype.itemsize
    scores = sum(nbytes(a) for a, _ in residuals if tuple(a.shape[-2:]) == (seq, seq))
    totals.append((sum(nbytes(a) for a, _ in residuals), scores))
  (all1, scores1), (all2, scores2) = totals
  return {'per_sequence': all2 - all1, 'per_sequence_flash': (all2 - scores2) - (all1 - scores1)}


def per_chip_memory_gb(model, act_per_seq: float, micro: float, shards: int,
                       flash: bool) -> float:
  cfg = model.config
  seq = model.layout.model_length
  params = train_step.matmul_params(model)[0]
  working = 10 * micro * seq * cfg.vocab_size
  if not flash:
    working += 14 * micro * cfg.num_heads * seq**2
  return (18 * params / shards + act_per_seq * micro + working) / 1e9


def project(stage: str, mesh_name: str, activations: dict) -> dict:
  """Projected memory and step time of `stage` at its global batch on `mesh_name`."""
  chip = CHIPS[MESHES[mesh_name]]
  policy = GPU_REMAT if chip.flash_attention else TPU_REMAT
  model = train_step.stage_model_for(stage, remat_policy=policy)
  cfg = model.config
  seq = model.layout.model_length
  params = train_step.matmul_params(model)[0]
  fpt = train_step.model_flops_per_token(model, seq)
  shape = mesh_shape(mesh_name)
  chips = shape['data'] * shape['fsdp'] * shape['tensor']
  shards = shape['fsdp'] * shape['tensor']
  batch, batch_src = global_batch(stage)
  per_chip = batch / (shape['data'] * shape['fsdp'])
  act = activations[policy]['per_sequence_flash' if chip.flash_attention else 'per_sequence']
  micro, accum = per_chip, 1
  while micro > 1 and (per_chip_memory_gb(model, act, micro, shards, chip.flash_attention)
                       > HBM_USABLE * chip.hbm_gb):
    micro, accum = micro / 2, accum * 2
  memory = per_chip_memory_gb(model, act, micro, shards, chip.flash_attention)
  flops_chip = per_chip * seq * fpt
  t_matmul = flops_chip / (chip.peak_tflops * 1e12 * MATMUL_EFFICIENCY)
  t_attn = 0.0 if chip.flash_attention else (
      per_chip * cfg.num_layers * cfg.num_heads * seq**2 * SCORE_BYTES / (chip.hbm_gbps * 1e9))
  t_comm = (accum * 6 * params * (shards - 1) / shards / (chip.ici_gbps / 2 * 1e9)
            if chip.ici_gbps else 0.0)
  t_step = max(t_matmul + t_attn, t_comm)
  return {
      'stage': stage, 'mesh': mesh_name, 'chip': chip.name, 'chips': chips, 'remat': policy,
      'global_batch': batch, 'batch_source': batch_src, 'per_chip': per_chip,
      'micro_batch': micro, 'grad_accum': accum, 'memory_gb': memory, 'hbm_gb': chip.hbm_gb,
      'fits': memory <= HBM_USABLE * chip.hbm_gb,
      't_ideal_ms': flops_chip / (chip.peak_tflops * 1e12) * 1e3,
      't_matmul_ms': t_matmul * 1e3, 't_attn_hbm_ms': t_attn * 1e3, 't_fsdp_ms': t_comm * 1e3,
      'step_ms': t_step * 1e3, 'mfu': flops_chip / (t_step * chip.peak_tflops * 1e12),
      'tokens_per_s': batch * seq / t_step, 'hours_per_10k_steps': t_step * 1e4 / 3600,
  }


def main(argv=None) -> None:
  p = argparse.ArgumentParser(description=__doc__.splitlines()[0])
  p.add_argument('--stages', default=','.join(STAGES))
  p.add_argument('--compile_policies', default=f'{TPU_REMAT},full',
                 help='remat policies compiled for the XLA:CPU memory analysis')
  p.add_argument('--no_compile', action='store_true', help='skip the CPU compiles (item 1)')
  p.add_argument('--json_out', default=None)
  args = p.parse_args(argv)
  stages = args.stages.split(',')
  out = {'facts': {}, 'compiled': {}, 'activations': {}, 'projections': []}

  print('| stage | params | matmul params N | T (seq_len) | GFLOP/token: 6N + 12·L·T·d |')
  print('|---|---|---|---|---|')
  for stage in stages:
    model = train_step.stage_model_for(stage)
    cfg = model.config
    seq = model.layout.model_length
    total, mat = train_step.matmul_params(model)
    attn = 12 * cfg.num_layers * seq * cfg.embed_dim
    out['facts'][stage] = {'params': total, 'matmul_params': mat, 'seq_len': seq,
                           'vocab': cfg.vocab_size, 'flops_per_token': 6 * mat + attn}
    print(f'| {stage} | {total / 1e6:.1f}M | {mat / 1e6:.1f}M | {seq} | '
          f'{6 * mat / 1e9:.2f} + {attn / 1e9:.2f} = {(6 * mat + attn) / 1e9:.2f} |')

  print('\n| stage | remat | saved activations per sequence (MiB) | without [T, T] scores (MiB) |')
  print('|---|---|---|---|')
  for stage in stages:
    out['activations'][stage] = {}
    for policy in ('none', 'minimal', 'full'):
      acts = saved_activations(train_step.stage_model_for(stage, remat_policy=policy))
      out['activations'][stage][policy] = acts
      print(f'| {stage} | {policy} | {acts["per_sequence"] / 2**20:.0f} | '
            f'{acts["per_sequence_flash"] / 2**20:.0f} |')

  if not args.no_compile:
    print('\n| stage | remat | seq/device | argument MiB | output MiB | temp MiB | compile s |')
    print('|---|---|---|---|---|---|---|')
    for stage in stages:
      out['compiled'][stage] = {}
      for policy in args.compile_policies.split(','):
        model = train_step.stage_model_for(stage, remat_policy=policy)
        for b in (1, 2):
          m = compiled_memory(model, b)
          out['compiled'][stage][f'{policy}/{b}'] = m
          print(f'| {stage} | {policy} | {b} | {m["argument"] / 2**20:.0f} | '
                f'{m["output"] / 2**20:.0f} | {m["temp"] / 2**20:.0f} | {m["compile_s"]} |',
                flush=True)

  print('\n| stage | mesh | chips | remat | batch (per chip) | micro x accum | GB/chip (HBM) |'
        ' ideal ms | matmul ms | attn HBM ms | FSDP ms | step ms | MFU | h / 10k steps |')
  print('|---|---|---|---|---|---|---|---|---|---|---|---|---|---|')
  for stage in stages:
    for mesh_name in MESHES:
      r = project(stage, mesh_name, out['activations'][stage])
      out['projections'].append(r)
      print(f'| {stage} | {mesh_name} | {r["chips"]} | {r["remat"]} |'
            f' {r["global_batch"]} ({r["per_chip"]:g}) | {r["micro_batch"]:g} x'
            f' {r["grad_accum"]} | {r["memory_gb"]:.1f} ({r["hbm_gb"]:g})'
            f'{"" if r["fits"] else " too big"} | {r["t_ideal_ms"]:.0f} |'
            f' {r["t_matmul_ms"]:.0f} | {r["t_attn_hbm_ms"]:.0f} | {r["t_fsdp_ms"]:.1f} |'
            f' {r["step_ms"]:.0f} | {r["mfu"]:.0%} | {r["hours_per_10k_steps"]:.1f} |')
  if args.json_out:
    Path(args.json_out).write_text(json.dumps(out) + '\n')


if __name__ == '__main__':
  main()
