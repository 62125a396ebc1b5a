r"""Peer benchmark: lucidrains' audiolm-pytorch `CoarseTransformer` training step (PyTorch, bf16).

The same size as our paper coarse stage (dim 1024, depth 24, 16 heads), trained the way its
`CoarseTransformerWrapper` trains it (semantic + coarse cross-entropy), on random tokens:
1 + semantic + 1 + coarse = --seq_len positions (default 8 x 2304). Prints ONE JSON line:

  {"benchmark": "peer_audiolm", "model": "audiolm_pytorch.CoarseTransformer", "params",
   "batch", "seq_len", "tokens_per_s", "step_ms", "model_flops_per_token", "mfu",
   "peak_tflops", "device", "sdpa", "torch", "audiolm_pytorch", ...}

audiolm-pytorch 2.4.0 imports wandb, fairseq and encodec when it loads and asks the Hugging
Face hub for a T5 config when a transformer is built; none of that is reachable (or needed)
here, so stand-in modules go into `sys.modules` first and
`audiolm_pytorch.audiolm_pytorch.get_encoded_dim` is replaced (no text conditioning is used).
The peer runs as shipped: hyper-connections (4 residual streams), value residuals, single-head
keys/values, GEGLU feed-forward; `flash_attn=True` (PyTorch SDPA; its relative position bias
is off in that mode). `--sdpa library` keeps the library's SDPA backend choice (math or
memory-efficient on non-A100 GPUs), `--sdpa all` (default) lets PyTorch pick any backend,
including flash. Optimizer: fused AdamW + global-norm clipping at 1.0, f32 master weights,
bf16 autocast, as in our trainer.

Usage (GPU; wheels for its dependencies: see benchmarks/README.md):
  python3 benchmarks/peer_audiolm.py [--batch 8] [--seq_len 2304] [--sdpa all|library]
  python3 benchmarks/peer_audiolm.py --tiny --device cpu      # smoke test where torch exists
"""

import argparse
import contextlib
import importlib.machinery
import json
import sys
import time
import types

PEAK_TFLOPS = {'NVIDIA H200': 989.4, 'NVIDIA H100': 989.4, 'NVIDIA A100': 312.0}


class _Stub:
  """Stands in for any class or function of a stubbed module."""

  def __init__(self, *args, **kwargs):
    del args, kwargs

  def __call__(self, *args, **kwargs):
    return self


def _stub_module(name: str) -> types.ModuleType:
  module = types.ModuleType(name)
  module.__spec__ = importlib.machinery.ModuleSpec(name, loader=None)

  def getattr_(attr):
    if attr.startswith('__'):
      raise AttributeError(attr)
    return _Stub
  module.__getattr__ = getattr_
  return module


def install_stubs() -> None:
  """wandb, fairseq and encodec (+ encodec.utils) as empty modules, before the import."""
  for name in ('wandb', 'fairseq', 'encodec', 'encodec.utils'):
    sys.modules.setdefault(name, _stub_module(name))
  sys.modules['encodec'].utils = sys.modules['encodec.utils']


def ensure_sdp_kernel(torch) -> None:
  """audiolm-pytorch calls torch.backends.cuda.sdp_kernel, deprecated since torch 2.3."""
  if hasattr(torch.backends.cuda, 'sdp_kernel'):
    return
  from torch.nn.attention import SDPBackend, sdpa_kernel  # pylint: disable=g-import-not-at-top

  def sdp_kernel(enable_flash=True, enable_math=True, enable_mem_efficient=True,
                 enable_cudnn=True):
    backends = [b for b, on in ((SDPBackend.FLASH_ATTENTION, enable_flash),
                                (SDPBackend.MATH, enable_math),
                                (SDPBackend.EFFICIENT_ATTENTION, enable_mem_efficient),
                                (SDPBackend.CUDNN_ATTENTION, enable_cudnn)) if on]
    return sdpa_kernel(backends)
  torch.backends.cuda.sdp_kernel = sdp_kernel


def build(args):
  """Returns (torch, the CoarseTransformer, audiolm_pytorch version)."""
  install_stubs()
  import torch  # pylint: disable=g-import-not-at-top
  ensure_sdp_kernel(torch)
  import audiolm_pytorch  # pylint: disable=g-import-not-at-top
  from audiolm_pytorch import attend as attend_lib  # pylint: disable=g-import-not-at-top
  from audiolm_pytorch import audiolm_pytorch as alm  # pylint: disable=g-import-not-at-top
  alm.get_encoded_dim = lambda name: args.dim  # no T5: text conditioning is off anyway
  model = alm.CoarseTransformer(
      codebook_size=1024, num_coarse_quantizers=4, dim=args.dim, depth=args.depth,
      num_semantic_tokens=1024, heads=args.heads, attn_dropout=args.attn_dropout,
      ff_dropout=args.ff_dropout, flash_attn=True, has_condition=False)
  if args.sdpa == 'all':
    for module in model.modules():
      if isinstance(module, attend_lib.Attend):
        module.cuda_config = attend_lib.Config(True, True, True)
  version = getattr(audiolm_pytorch, '__version__', None)
  if version is None:
    from audiolm_pytorch import version as version_lib  # pylint: disable=g-import-not-at-top
    version = version_lib.__version__
  return torch, model, version


def param_counts(torch, model) -> tuple[int, int]:
  """(all parameters, matmul parameters = all but embeddings, start tokens and norms)."""
  total = sum(p.numel() for p in model.parameters())
  skip = set()
  for module in model.modules():
    if isinstance(module, torch.nn.Embedding) or 'Norm' in type(module).__name__:
      skip.update(id(p) for p in module.parameters(recurse=False))
  skip.update(id(p) for p in (model.semantic_start_token, model.coarse_start_token))
  matmul = sum(p.numel() for p in model.parameters() if id(p) not in skip)
  return total, matmul


def main(argv=None) -> None:
  p = argparse.ArgumentParser(description=__doc__.splitlines()[0])
  p.add_argument('--batch', type=int, default=8)
  p.add_argument('--seq_len', type=int, default=2304, help='1 + semantic + 1 + coarse')
  p.add_argument('--semantic_len', type=int, default=250)
  p.add_argument('--dim', type=int, default=1024)
  p.add_argument('--depth', type=int, default=24)
  p.add_argument('--heads', type=int, default=16)
  p.add_argument('--attn_dropout', type=float, default=0.0)
  p.add_argument('--ff_dropout', type=float, default=0.1)
  p.add_argument('--sdpa', choices=('all', 'library'), default='all')
  p.add_argument('--compile', action='store_true', help='torch.compile the model')
  p.add_argument('--warmup', type=int, default=3)
  p.add_argument('--steps', type=int, default=10)
  p.add_argument('--device', default='cuda')
  p.add_argument('--tiny', action='store_true', help='dim 64, depth 2, 4 heads, 2 x 160')
  p.add_argument('--peak_tflops', type=float, default=None)
  p.add_argument('--seed', type=int, default=0)
  args = p.parse_args(argv)
  if args.tiny:
    args.dim, args.depth, args.heads = 64, 2, 4
    args.batch, args.seq_len, args.semantic_len = 2, 160, 30
    args.warmup, args.steps = 1, 2

  torch, model, version = build(args)
  torch.manual_seed(args.seed)
  device = torch.device(args.device)
  model = model.to(device).train()
  total, matmul = param_counts(torch, model)
  coarse_len = args.seq_len - 2 - args.semantic_len
  if coarse_len <= 0 or args.semantic_len <= 0:
    raise SystemExit(f'--seq_len {args.seq_len}: leaves no room for {args.semantic_len} '
                     'semantic tokens, two start tokens and coarse tokens')
  semantic = torch.randint(0, 1024, (args.batch, args.semantic_len), device=device)
  coarse = torch.randint(0, 1024, (args.batch, coarse_len), device=device)
  forward = torch.compile(model) if args.compile else model
  optimizer = torch.optim.AdamW(model.parameters(), lr=3e-4, betas=(0.9, 0.98),
                                weight_decay=0.0, fused=device.type == 'cuda')
  autocast = torch.autocast(device.type, dtype=torch.bfloat16)
  cross_entropy = torch.nn.functional.cross_entropy

  def step():
    with autocast if device.type in ('cuda', 'cpu') else contextlib.nullcontext():
      semantic_logits, coarse_logits = forward(semantic_token_ids=semantic,
                                               coarse_token_ids=coarse)
      # [batch, semantic, 1025] and [batch, coarse + 1, 1025]: the wrapper's two losses.
      loss = (cross_entropy(semantic_logits.float().transpose(1, 2), semantic) +
              cross_entropy(coarse_logits[:, :coarse_len].float().transpose(1, 2), coarse))
    optimizer.zero_grad(set_to_none=True)
    loss.backward()
    torch.nn.utils.clip_grad_norm_(model.parameters(), 1.0)
    optimizer.step()
    return loss

  sync = torch.cuda.synchronize if device.type == 'cuda' else (lambda: None)
  for _ in range(args.warmup):
    loss = step()
  sync()
  start = time.perf_counter()
  for _ in range(args.steps):
    loss = step()
  sync()
  step_s = (time.perf_counter() - start) / args.steps

  flops_per_token = 6.0 * matmul + 12.0 * args.depth * args.seq_len * args.dim
  tokens_per_s = args.batch * args.seq_len / step_s
  device_name = (torch.cuda.get_device_name(device) if device.type == 'cuda' else 'cpu')
  peak = args.peak_tflops or next(
      (v for k, v in PEAK_TFLOPS.items() if device_name.startswith(k)), None)
  print(json.dumps({
      'benchmark': 'peer_audiolm', 'model': 'audiolm_pytorch.CoarseTransformer',
      'params': total, 'batch': args.batch, 'seq_len': args.seq_len,
      'tokens_per_s': round(tokens_per_s, 1), 'step_ms': round(step_s * 1e3, 2),
      'model_flops_per_token': flops_per_token,
      'mfu': round(tokens_per_s * flops_per_token / (peak * 1e12), 4) if peak else None,
      'peak_tflops': peak, 'device': device_name, 'dim': args.dim, 'depth': args.depth,
      'heads': args.heads, 'sdpa': args.sdpa, 'torch_compile': args.compile,
      'dtype': 'bfloat16 autocast', 'torch': torch.__version__, 'audiolm_pytorch': version,
      'warmup': args.warmup, 'steps': args.steps, 'loss': float(loss),
      'peak_memory_gb': (torch.cuda.max_memory_allocated(device) / 1e9
                         if device.type == 'cuda' else None),
  }))


if __name__ == '__main__':
  main()
