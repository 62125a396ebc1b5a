"""Training runs -> one self-contained sampling bundle, and `load_bundle` to read it back.

  python -m musiclm_jax.export --out BUNDLE --codec CODEC_RUN --semantic TOKENIZER_DIR \
      --mulan MULAN_DIR --stages SEMANTIC_RUN COARSE_RUN FINE_RUN [--melody MELODY_DIR] \
      [--dtype bfloat16]
  python -m musiclm_jax.export --out BUNDLE --from_demo demo_work   (+ demo_work/melody/ if there)

Bundle layout (every file listed with its sha256 in manifest.json; `load_bundle` checks them):

  manifest.json                format, versions, components, pipeline rates, files, array shapes
  codec/config.json            SoundStream sample rate, SEANet and RVQ configs (dataclass fields)
  codec/params.npz             generator params ('/'-joined keys), float32
  codec/quantizer.npz          RVQ codebooks [levels, codebook_size, dim]
  stages/<name>/config.json    layout fields + LMConfig (name: semantic, coarse, fine)
  stages/<name>/params.npz     LM params, float32 or bfloat16 (stored as uint16, see manifest)
  mulan/                       a `MuLan.save` folder: mulan.json, params.npz, rvq.npz, spm.model
  semantic_tokenizer/          a `SemanticTokenizer.save` folder (w2v-BERT + k-means; optional)
  melody/                      a `MelodyEmbedder.save` folder with RVQ codebooks (optional:
                               --melody; needed by a semantic stage conditioned on melody)
  gin/<component>.gin          the runs' config.gin files, for reference only

Configs are stored as JSON dataclass fields and models are rebuilt from them without gin:
`load_bundle` needs neither gin, the trainer, TensorFlow nor the training data (the GPU image has
no gin). Reading a *run* does use gin: its config.gin is parsed to rebuild MODEL, keeping only
the imports of musiclm_jax modules (tasks/ and other TF-importing packages are dropped with every
binding that uses them), or, if that fails, only the model packages. The bundle is written to
BUNDLE.tmp and renamed into place; a bundle that cannot be assembled (missing run, mismatched
codebook sizes or windows between components) is a one-line error and nothing is replaced.
"""

import argparse
import datetime
import json
import os
import platform
import re
import shutil
import sys
import zipfile
from collections.abc import Mapping, Sequence
from typing import Any

from flax import traverse_util
import flax.linen as nn
import jax
import numpy as np

from musiclm_jax.sampling.bundle import BundleError  # noqa: F401  (re-exported)
from musiclm_jax.sampling.bundle import Bundle  # noqa: F401
from musiclm_jax.sampling.bundle import check_compatible
from musiclm_jax.sampling.bundle import codec_to_json
from musiclm_jax.sampling.bundle import DEFAULT_SEMANTIC_FRAME_RATE
from musiclm_jax.sampling.bundle import FORMAT
from musiclm_jax.sampling.bundle import load_bundle  # noqa: F401
from musiclm_jax.sampling.bundle import MANIFEST
from musiclm_jax.sampling.bundle import MELODY_DIR
from musiclm_jax.sampling.bundle import read_json
from musiclm_jax.sampling.bundle import sha256_file
from musiclm_jax.sampling.bundle import STAGE_NAMES
from musiclm_jax.sampling.bundle import stage_to_json

# Modules a run's config.gin may import when MODEL is rebuilt: first every musiclm_jax module
# (they import no TensorFlow at load time); if that fails (e.g. on an image without some
# dependency), only the model packages and the gin hooks that wrap model arguments.
_ALL_PROJECT = ('musiclm_jax.',)
_MODEL_PACKAGES = ('musiclm_jax.stages', 'musiclm_jax.codec', 'musiclm_jax.layers',
                   'musiclm_jax.mulan', 'musiclm_jax.semantic', 'musiclm_jax.melody',
                   'musiclm_jax.data.token_store')


def _write_json(path: str, obj: Any) -> None:
  with open(path, 'w') as f:
    json.dump(obj, f, indent=2, sort_keys=True)
    f.write('\n')


def _save_params(path: str, tree: Any, dtype: str = 'float32') -> dict[str, str]:
  """Flattens and saves params; bfloat16 arrays are stored as uint16. Returns key -> dtype."""
  flat = traverse_util.flatten_dict(jax.device_get(nn.unbox(tree)), sep='/')
  arrays, dtypes = {}, {}
  for key, value in flat.items():
    value = np.asarray(value)
    if np.issubdtype(value.dtype, np.floating) or value.dtype == jax.numpy.bfloat16:
      value = value.astype(jax.numpy.dtype(dtype))
    dtypes[key] = str(value.dtype)
    arrays[key] = value.view(np.uint16) if str(value.dtype) == 'bfloat16' else value
  np.savez(path, **arrays)
  return dtypes


def _npz_arrays(path: str) -> dict[str, dict[str, Any]]:
  """{key: {'shape', 'dtype'}} of an npz file, read from the .npy headers only."""
  out = {}
  with zipfile.ZipFile(path) as z:
    for name in z.namelist():
      with z.open(name) as f:
        version = np.lib.format.read_magic(f)
        reader = (np.lib.format.read_array_header_1_0 if version == (1, 0)
                  else np.lib.format.read_array_header_2_0)
        shape, _, dtype = reader(f)
      out[name[:-4] if name.endswith('.npy') else name] = {'shape': list(shape),
                                                           'dtype': str(dtype)}
  return out



# -- reading training runs (gin is imported here only) -----------------------------------------


def _statements(text: str) -> list[str]:
  """Splits gin text into statements (continuation lines are indented or inside brackets)."""
  out, depth, cont = [], 0, False
  for line in text.splitlines():
    stripped = line.strip()
    if not stripped or stripped.startswith('#'):
      continue
    if out and (depth > 0 or cont or line[:1].isspace()):
      out[-1] += '\n' + line
    else:
      out.append(line)
    depth += sum(stripped.count(c) for c in '([{') - sum(stripped.count(c) for c in ')]}')
    cont = stripped.endswith('\\')
  return out


def model_config_text(text: str, keep: Sequence[str] = _MODEL_PACKAGES) -> str:
  """Drops a run's config.gin imports outside `keep` and every statement that uses them."""
  kept, dropped = [], []
  for stmt in _statements(text):
    m = re.match(r'^import\s+([\w.]+)(?:\s+as\s+(\w+))?\s*$', stmt)
    if m:
      module, alias = m.group(1), m.group(2) or m.group(1)
      if module.startswith(tuple(keep)):
        kept.append(stmt)
      else:
        dropped.append(alias)
      continue
    if stmt.startswith('from __gin__') or not any(
        re.search(rf'(?<![\w.]){re.escape(a)}\.', stmt) for a in dropped):
      kept.append(stmt)
  return '\n'.join(kept) + '\n'


def read_run(run_dir: str) -> tuple[Any, dict[str, Any], Any, str]:
  """(MODEL rebuilt from run_dir/config.gin, params by group, model_state, config text)."""
  import gin  # pylint: disable=g-import-not-at-top
  from musiclm_jax import checkpoints  # pylint: disable=g-import-not-at-top
  path = os.path.join(run_dir, 'config.gin')
  if not os.path.isfile(path):
    raise BundleError(f'{path}: missing (is {run_dir} a training run folder?)')
  with open(path) as f:
    text = f.read()
  model, errors = None, []
  for keep in (_ALL_PROJECT, _MODEL_PACKAGES):
    gin.clear_config()
    try:
      gin.parse_config(model_config_text(text, keep))
      model = gin.query_parameter('%MODEL').scoped_configurable_fn()
      break
    except Exception as e:  # pylint: disable=broad-except
      errors.append(f'{type(e).__name__}: {str(e).splitlines()[0][:200] if str(e) else ""}')
    finally:
      gin.clear_config()
  if model is None:
    raise BundleError(f'{path}: cannot rebuild MODEL ({"; ".join(errors)})')
  try:
    params, state, _ = checkpoints.load_params(run_dir)
  except checkpoints.CheckpointError as e:
    raise BundleError(str(e)) from None
  return model, nn.unbox(params), nn.unbox(state), text


# -- writing -----------------------------------------------------------------------------------


def _versions() -> dict[str, str]:
  import importlib.metadata  # pylint: disable=g-import-not-at-top
  out = {'python': platform.python_version()}
  for name in ('musiclm_jax', 'jax', 'jaxlib', 'flax', 'numpy', 'orbax-checkpoint'):
    try:
      out[name] = importlib.metadata.version(name)
    except importlib.metadata.PackageNotFoundError:
      out[name] = 'unknown'
  return out


def write_bundle(out: str, *, codec_config: Any, codec_params: Any, codec_codebooks: Any,
                 mulan: Any, stages: Mapping[str, tuple[Any, Any]],
                 semantic_tokenizer_dir: str | None = None,
                 semantic_frame_rate: float | None = None, dtype: str = 'float32',
                 gin_configs: Mapping[str, str] | None = None,
                 sources: Mapping[str, str] | None = None, overwrite: bool = True,
                 melody: Any = None) -> dict:
  """Writes a bundle folder (via OUT.tmp, renamed into place) and returns its manifest.

  Args:
    out: the bundle folder.
    codec_config: `SoundStreamConfig`.
    codec_params: generator params {'encoder', 'decoder'} (or all groups).
    codec_codebooks: RVQ codebooks [levels, codebook_size, dim].
    mulan: a `MuLan` with RVQ codebooks and a sentencepiece model.
    stages: name -> (StageModel, params) for 'semantic', 'coarse', 'fine'.
    semantic_tokenizer_dir: a `SemanticTokenizer.save` folder to include (optional).
    semantic_frame_rate: Hz of semantic tokens (default: the tokenizer's, else 25).
    dtype: 'float32' or 'bfloat16': storage and compute dtype of the stage LMs.
    gin_configs: component -> config.gin text, stored for reference.
    sources: component -> where it came from (recorded in the manifest).
    overwrite: replace an existing complete bundle.
    melody: a `MelodyEmbedder` with RVQ codebooks (optional; required when a stage conditions
      on melody tokens).
  """
  if dtype not in ('float32', 'bfloat16'):
    raise BundleError(f'--dtype: expected float32 or bfloat16, got {dtype!r}')
  out = os.path.abspath(out)
  if os.path.exists(os.path.join(out, MANIFEST)) and not overwrite:
    raise BundleError(f'{out}: a bundle already exists (pass --overwrite to replace it)')
  if mulan.codebooks is None or mulan.tokenizer is None:
    raise BundleError('mulan: needs fitted RVQ codebooks and a sentencepiece model')
  tok_meta = None
  if semantic_tokenizer_dir:
    tok_meta = read_json(os.path.join(semantic_tokenizer_dir, 'tokenizer.json'))
  if semantic_frame_rate is None:
    semantic_frame_rate = float(tok_meta['frame_rate']) if tok_meta else DEFAULT_SEMANTIC_FRAME_RATE
  codec_params = nn.unbox(codec_params)
  codec_params = codec_params.get('generator', codec_params)
  codebooks = np.asarray(codec_codebooks, np.float32)
  q = codec_config.quantizer
  if codebooks.shape != (q.num_levels, q.codebook_size, q.dim):
    raise BundleError(f'codec: codebooks {codebooks.shape} != config '
                      f'{(q.num_levels, q.codebook_size, q.dim)}')
  check_compatible({n: s for n, (s, _) in stages.items()}, codec_levels=q.num_levels,
                   codec_codebook_size=q.codebook_size,
                   codec_frame_rate=codec_config.frame_rate,
                   semantic_frame_rate=semantic_frame_rate, mulan_levels=mulan.num_codebooks,
                   mulan_codebook_size=mulan.cardinality,
                   semantic_clusters=tok_meta['num_clusters'] if tok_meta else None,
                   melody_levels=melody.num_codebooks if melody is not None else None,
                   melody_codebook_size=melody.cardinality if melody is not None else None)
  if melody is not None and melody.codebooks is None:
    raise BundleError('melody: the melody embedder has no RVQ codebooks (run '
                      'python -m musiclm_jax.melody.fit_rvq)')
  conditioned = [n for n, (s, _) in stages.items()
                 if 'melody' in [f.name for f in s.layout.conditioning]]
  if conditioned and melody is None:
    raise BundleError(f'stage {conditioned[0]} conditions on melody tokens: pass --melody DIR '
                      '(a melody embedder with RVQ, python -m musiclm_jax.melody.fit_rvq)')

  tmp = out + '.tmp'
  shutil.rmtree(tmp, ignore_errors=True)
  try:
    manifest = _write_tree(tmp, codec_config=codec_config, codec_params=codec_params,
                           codebooks=codebooks, mulan=mulan, stages=stages,
                           semantic_tokenizer_dir=semantic_tokenizer_dir, tok_meta=tok_meta,
                           semantic_frame_rate=semantic_frame_rate, dtype=dtype,
                           gin_configs=gin_configs, sources=sources, melody=melody)
  except BaseException:
    shutil.rmtree(tmp, ignore_errors=True)
    raise
  old = out + '.old'
  if os.path.exists(out):
    shutil.rmtree(old, ignore_errors=True)
    os.replace(out, old)
  os.replace(tmp, out)
  shutil.rmtree(old, ignore_errors=True)
  return manifest


def _write_tree(tmp, *, codec_config, codec_params, codebooks, mulan, stages,
                semantic_tokenizer_dir, tok_meta, semantic_frame_rate, dtype, gin_configs,
                sources, melody=None) -> dict:
  """Writes every bundle file into `tmp` and returns the manifest (written last)."""
  q = codec_config.quantizer
  os.makedirs(os.path.join(tmp, 'codec'))
  dtypes = {}
  _write_json(os.path.join(tmp, 'codec', 'config.json'), codec_to_json(codec_config))
  dtypes['codec/params.npz'] = _save_params(os.path.join(tmp, 'codec', 'params.npz'),
                                            codec_params)
  np.savez(os.path.join(tmp, 'codec', 'quantizer.npz'), codebooks=codebooks)
  components = {'codec': {'sample_rate': codec_config.sample_rate,
                          'frame_rate': codec_config.frame_rate, 'num_codebooks': q.num_levels,
                          'codebook_size': q.codebook_size}, 'stages': {}}
  for name in STAGE_NAMES:
    stage, params = stages[name]
    params = nn.unbox(params)
    params = params['model'] if 'model' in params else params
    folder = os.path.join(tmp, 'stages', name)
    os.makedirs(folder)
    stage_json = stage_to_json(stage)
    stage_json['lm']['dtype'] = dtype
    stage_json['lm']['param_dtype'] = dtype
    _write_json(os.path.join(folder, 'config.json'), stage_json)
    dtypes[f'stages/{name}/params.npz'] = _save_params(os.path.join(folder, 'params.npz'),
                                                       params, dtype)
    count = sum(int(np.prod(x.shape)) for x in jax.tree_util.tree_leaves(params))
    components['stages'][name] = {'params': count, 'window_frames': stage.layout.target.num_frames,
                                  'sequence_length': stage.layout.sequence_length}
  mulan.save(os.path.join(tmp, 'mulan'))
  components['mulan'] = {'num_codebooks': mulan.num_codebooks, 'codebook_size': mulan.cardinality,
                         'embed_dim': mulan.embed_dim}
  if semantic_tokenizer_dir:
    os.makedirs(os.path.join(tmp, 'semantic_tokenizer'))
    for name in ('tokenizer.json', 'params.npz', 'kmeans.npz'):
      src = os.path.join(semantic_tokenizer_dir, name)
      if not os.path.isfile(src):
        raise BundleError(f'{src}: missing (not a saved semantic tokenizer?)')
      shutil.copyfile(src, os.path.join(tmp, 'semantic_tokenizer', name))
    components['semantic_tokenizer'] = {'num_clusters': tok_meta['num_clusters'],
                                        'layer': tok_meta.get('layer')}
  if melody is not None:
    melody.save(os.path.join(tmp, MELODY_DIR))
    components['melody'] = {'num_codebooks': melody.num_codebooks,
                            'codebook_size': melody.cardinality,
                            'embed_dim': melody.embed_dim,
                            'window_seconds': melody.config.window_seconds,
                            'hop_seconds': melody.config.hop_seconds}
  for component, text in (gin_configs or {}).items():
    os.makedirs(os.path.join(tmp, 'gin'), exist_ok=True)
    with open(os.path.join(tmp, 'gin', f'{component}.gin'), 'w') as f:
      f.write(text)

  files, arrays = {}, {}
  for root, _, names in os.walk(tmp):
    for name in sorted(names):
      full = os.path.join(root, name)
      rel = os.path.relpath(full, tmp).replace(os.sep, '/')
      files[rel] = {'sha256': sha256_file(full), 'bytes': os.path.getsize(full)}
      if name.endswith('.npz'):
        arrays[rel] = _npz_arrays(full)
        for key, dt in dtypes.get(rel, {}).items():
          arrays[rel][key]['dtype'] = dt
  manifest = {
      'format': FORMAT, 'created': datetime.datetime.now(datetime.timezone.utc).isoformat(),
      'versions': _versions(), 'dtype': dtype, 'components': components,
      'pipeline': {'sample_rate': codec_config.sample_rate,
                   'acoustic_frame_rate': codec_config.frame_rate,
                   'semantic_frame_rate': semantic_frame_rate},
      'sources': dict(sources or {}), 'files': dict(sorted(files.items())), 'arrays': arrays}
  _write_json(os.path.join(tmp, MANIFEST), manifest)
  return manifest


def export_from_runs(out: str, *, codec: str, mulan: str, stages: Sequence[str],
                     semantic: str | None = None, spm: str | None = None,
                     dtype: str = 'float32', overwrite: bool = True,
                     melody: str | None = None) -> dict:
  """Reads the training runs / saved tokenizers (and melody embedder) and writes the bundle."""
  from musiclm_jax.mulan import inference  # pylint: disable=g-import-not-at-top
  if len(stages) != 3:
    raise BundleError(f'--stages: expected 3 runs (semantic, coarse, fine), got {len(stages)}')
  codec_model, codec_params, codec_state, codec_gin = read_run(codec)
  if not hasattr(codec_model, 'config') or not hasattr(codec_model.config, 'seanet'):
    raise BundleError(f'{codec}: MODEL is a {type(codec_model).__name__}, not a SoundStream codec')
  quantizer = codec_state.get('quantizer', codec_state)
  gin_configs, sources, stage_map = {'codec': codec_gin}, {'codec': codec, 'mulan': mulan}, {}
  for name, run in zip(STAGE_NAMES, stages):
    model, params, _, text = read_run(run)
    if not hasattr(model, 'layout'):
      raise BundleError(f'{run}: MODEL is a {type(model).__name__}, not a stage')
    stage_map[name] = (model, params)
    gin_configs[f'stage_{name}'] = text
    sources[f'stage_{name}'] = run
  if not os.path.isdir(mulan):
    raise BundleError(f'{mulan}: no such MuLan folder')
  try:
    m = inference.MuLan.load(mulan)
  except (FileNotFoundError, ValueError, KeyError) as e:
    raise BundleError(f'{mulan}: {str(e).splitlines()[0]}') from None
  if spm or m.tokenizer is None:
    if not spm or not os.path.isfile(spm):
      raise BundleError(f'{mulan}: has no sentencepiece model; pass --spm (got {spm!r})')
    m = inference.MuLan(config=m.config, params=m.params, spm_path=spm, codebooks=m.codebooks,
                        text_length=m.text_length)
  if semantic:
    sources['semantic_tokenizer'] = semantic
  melody_model = None
  if melody:
    melody_model = load_melody(melody)
    sources['melody'] = melody
  return write_bundle(out, codec_config=codec_model.config, codec_params=codec_params,
                      codec_codebooks=quantizer['codebooks'], mulan=m, stages=stage_map,
                      semantic_tokenizer_dir=semantic, dtype=dtype, gin_configs=gin_configs,
                      sources=sources, overwrite=overwrite, melody=melody_model)


def load_melody(path: str):
  """A saved `MelodyEmbedder` with RVQ codebooks (fit_rvq output), or a BundleError."""
  from musiclm_jax.melody import inference as melody_lib  # pylint: disable=g-import-not-at-top
  if not os.path.isdir(path):
    raise BundleError(f'--melody {path}: no such folder')
  try:
    model = melody_lib.MelodyEmbedder.from_path(path)
  except (FileNotFoundError, ValueError, KeyError, OSError) as e:
    raise BundleError(f'--melody {path}: {str(e).splitlines()[0]}') from None
  if model.codebooks is None:
    raise BundleError(f'--melody {path}: no RVQ codebooks (run python -m '
                      'musiclm_jax.melody.fit_rvq)')
  return model


def demo_paths(work: str) -> dict[str, Any]:
  """The demo's work-folder layout (see musiclm_jax/demo.py)."""
  semantic = os.path.join(work, 'semantic_tok')
  melody = os.path.join(work, MELODY_DIR)
  return {'codec': os.path.join(work, 'codec'), 'mulan': os.path.join(work, 'mulan_rvq'),
          'semantic': semantic if os.path.isdir(semantic) else None,
          'melody': melody if os.path.isdir(melody) else None,
          'stages': [os.path.join(work, f'stage_{n}')
                     for n in ('semantic_stage', 'coarse', 'fine')],
          'spm': os.path.join(work, 'spm', 'spm.model')}


def build_parser() -> argparse.ArgumentParser:
  p = argparse.ArgumentParser(prog='musiclm export', description=__doc__,
                              formatter_class=argparse.RawDescriptionHelpFormatter)
  p.add_argument('--out', required=True, help='bundle folder to write')
  p.add_argument('--from_demo', metavar='WORK_DIR',
                 help='take every component from the demo work folder')
  p.add_argument('--codec', help='SoundStream training run folder')
  p.add_argument('--semantic', help='saved semantic tokenizer folder (fit_kmeans output)')
  p.add_argument('--mulan', help='saved MuLan folder with RVQ codebooks (fit_rvq output)')
  p.add_argument('--stages', nargs=3, metavar=('SEMANTIC_RUN', 'COARSE_RUN', 'FINE_RUN'),
                 help='the three stage training runs')
  p.add_argument('--spm', help='sentencepiece model (when the MuLan folder lacks one)')
  p.add_argument('--melody', help='saved melody embedder with RVQ (melody.fit_rvq output; '
                                  'default with --from_demo: WORK_DIR/melody if present)')
  p.add_argument('--dtype', choices=('float32', 'bfloat16'), default='float32',
                 help='storage and compute dtype of the stage LMs')
  p.add_argument('--no_overwrite', action='store_true', help='fail if OUT is already a bundle')
  return p


def main(argv: Sequence[str] | None = None) -> int:
  args = build_parser().parse_args(argv)
  try:
    if args.from_demo:
      paths = demo_paths(args.from_demo)
      paths.update({k: v for k, v in (('codec', args.codec), ('mulan', args.mulan),
                                      ('semantic', args.semantic), ('stages', args.stages),
                                      ('spm', args.spm), ('melody', args.melody)) if v})
      if not os.path.isfile(paths['spm']):
        paths['spm'] = None
    else:
      missing = [f'--{k}' for k in ('codec', 'mulan', 'stages') if not getattr(args, k)]
      if missing:
        raise BundleError(f'missing {", ".join(missing)} (or pass --from_demo WORK_DIR)')
      paths = {'codec': args.codec, 'mulan': args.mulan, 'semantic': args.semantic,
               'stages': args.stages, 'spm': args.spm, 'melody': args.melody}
    for key in ('codec', 'mulan', 'semantic', 'melody'):
      if paths[key] and not os.path.isdir(paths[key]):
        raise BundleError(f'--{key} {paths[key]}: no such folder')
    for run in paths['stages']:
      if not os.path.isdir(run):
        raise BundleError(f'--stages {run}: no such folder')
    manifest = export_from_runs(args.out, codec=paths['codec'], mulan=paths['mulan'],
                                stages=paths['stages'], semantic=paths['semantic'],
                                spm=paths['spm'], dtype=args.dtype,
                                overwrite=not args.no_overwrite, melody=paths['melody'])
  except BundleError as e:
    print(f'error: {e}', file=sys.stderr)
    return 2
  total = sum(f['bytes'] for f in manifest['files'].values())
  stages = ', '.join(f'{name} {info["params"]:,} params'
                     for name, info in manifest['components']['stages'].items())
  melody = manifest['components'].get('melody')
  extra = (f'; melody embedder {melody["num_codebooks"]} x {melody["codebook_size"]} tokens'
           if melody else '')
  print(f'wrote {args.out}: {len(manifest["files"])} files, {total / 1e6:.1f} MB; {stages}'
        + extra)
  return 0


if __name__ == '__main__':
  sys.exit(main())
