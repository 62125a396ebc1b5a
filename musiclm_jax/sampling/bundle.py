"""A sampling bundle on disk: `load_bundle` and the JSON <-> config helpers `export` writes with.

`load_bundle(path)` checks the sha256 of every file listed in manifest.json (a missing or altered
file is a one-line `BundleError` naming it), rebuilds every component from its JSON config (no
gin, no trainer, no TensorFlow, no training data) and returns a `Bundle`:

  bundle.codec                 SoundStreamCodec (24 kHz, 50 Hz frames)
  bundle.mulan                 MuLan (text -> 12 tokens)
  bundle.stages[name]          StageModel for 'semantic', 'coarse', 'fine'
  bundle.stage_params[name]    its parameters (numpy; bfloat16 when exported so)
  bundle.semantic_frame_rate   Hz of semantic tokens (25)
  bundle.sha256                sha256 of manifest.json: identifies the bundle in sample manifests
  bundle.melody                MelodyEmbedder with RVQ (melody/ of a bundle exported with
                               --melody), else None; `bundle.has_melody` also needs a semantic
                               stage that conditions on melody tokens

See `musiclm_jax.export` for the folder layout.
"""

import dataclasses
import hashlib
import json
import os
from collections.abc import Mapping
from typing import Any

from flax import traverse_util
import jax
import numpy as np

FORMAT = 'musiclm_jax.bundle/1'
MANIFEST = 'manifest.json'
STAGE_NAMES = ('semantic', 'coarse', 'fine')
DEFAULT_SEMANTIC_FRAME_RATE = 25.0
MELODY_DIR = 'melody'  # a `MelodyEmbedder.save` folder (optional)


class BundleError(ValueError):
  """A bundle or export input that cannot be used (the message is one line)."""


def sha256_file(path: str) -> str:
  h = hashlib.sha256()
  with open(path, 'rb') as f:
    for block in iter(lambda: f.read(1 << 20), b''):
      h.update(block)
  return h.hexdigest()


def _tuplify(value: Any) -> Any:
  if isinstance(value, list):
    return tuple(_tuplify(v) for v in value)
  if isinstance(value, dict):
    return {k: _tuplify(v) for k, v in value.items()}
  return value


def _dataclass_from(cls, d: Mapping[str, Any], where: str):
  names = {f.name for f in dataclasses.fields(cls)}
  unknown = sorted(set(d) - names)
  if unknown:
    raise BundleError(f'{where}: unknown {cls.__name__} fields {unknown}')
  return cls(**{k: _tuplify(v) for k, v in d.items()})


def read_json(path: str) -> Any:
  try:
    with open(path) as f:
      return json.load(f)
  except FileNotFoundError:
    raise BundleError(f'{path}: missing') from None
  except json.JSONDecodeError as e:
    raise BundleError(f'{path}: not valid JSON ({e})') from None


def load_params_npz(path: str, arrays: Mapping[str, Mapping[str, Any]]) -> Any:
  """Reads a params npz written by `_save_params` (dtypes from the manifest)."""
  with np.load(path) as z:
    flat = {}
    for key in z.files:
      value = z[key]
      if arrays.get(key, {}).get('dtype') == 'bfloat16':
        value = value.view(jax.numpy.bfloat16)
      flat[key] = value
  return traverse_util.unflatten_dict(flat, sep='/')


# -- configs <-> JSON ------------------------------------------------------------------------


def stage_to_json(stage) -> dict[str, Any]:
  layout = stage.layout
  return {'name': layout.name, 'z_loss': stage.z_loss,
          'layout': {'name': layout.name,
                     'conditioning': [dataclasses.asdict(f) for f in layout.conditioning],
                     'target': dataclasses.asdict(layout.target)},
          'lm': dataclasses.asdict(stage.config)}


def stage_from_json(d: Mapping[str, Any], where: str):
  from musiclm_jax.stages import layouts, lm, model  # pylint: disable=g-import-not-at-top
  try:
    lay = d['layout']
    layout = layouts.StageLayout(
        tuple(_dataclass_from(layouts.TokenField, f, where) for f in lay['conditioning']),
        _dataclass_from(layouts.TokenField, lay['target'], where), name=lay['name'])
    config = _dataclass_from(lm.LMConfig, d['lm'], where)
    return model.StageModel(layout=layout, config=config, z_loss=d.get('z_loss', 1e-4))
  except (KeyError, TypeError) as e:
    raise BundleError(f'{where}: malformed stage config ({type(e).__name__}: {e})') from None


def codec_to_json(config) -> dict[str, Any]:
  return {'sample_rate': config.sample_rate, 'seanet': dataclasses.asdict(config.seanet),
          'quantizer': dataclasses.asdict(config.quantizer)}


def codec_from_json(d: Mapping[str, Any], where: str):
  from musiclm_jax.codec import model, seanet  # pylint: disable=g-import-not-at-top
  from musiclm_jax.layers import rvq  # pylint: disable=g-import-not-at-top
  try:
    return model.SoundStreamConfig(
        sample_rate=int(d['sample_rate']),
        seanet=_dataclass_from(seanet.SEANetConfig, d['seanet'], where),
        quantizer=_dataclass_from(rvq.RVQConfig, d['quantizer'], where))
  except (KeyError, TypeError, ValueError) as e:
    raise BundleError(f'{where}: malformed codec config ({type(e).__name__}: {e})') from None


# -- compatibility -----------------------------------------------------------------------------


def check_compatible(stages: Mapping[str, Any], *, codec_levels: int, codec_codebook_size: int,
                     codec_frame_rate: float, semantic_frame_rate: float,
                     mulan_levels: int | None = None, mulan_codebook_size: int | None = None,
                     semantic_clusters: int | None = None, melody_levels: int | None = None,
                     melody_codebook_size: int | None = None) -> None:
  """Raises BundleError (one line) when the components do not fit together.

  `melody_levels`/`melody_codebook_size` describe the bundled melody embedder's RVQ (None:
  no melody embedder); a stage that conditions on melody tokens must fit it.
  """
  missing = [n for n in STAGE_NAMES if n not in stages]
  if missing:
    raise BundleError(f'stages: missing {missing} (need {list(STAGE_NAMES)})')
  for name in STAGE_NAMES:
    got = stages[name].layout.target.name
    if got != name:
      raise BundleError(f'stage {name}: its layout generates {got!r}, expected {name!r}')
  sem, coarse, fine = (stages[n].layout for n in STAGE_NAMES)

  def need(cond, message):
    if not cond:
      raise BundleError(message)

  ratio = codec_frame_rate / semantic_frame_rate
  need(abs(ratio - round(ratio)) < 1e-6 and round(ratio) >= 1,
       f'codec frame rate {codec_frame_rate} is not a whole multiple of the semantic frame rate '
       f'{semantic_frame_rate}')
  ratio = int(round(ratio))
  cs, ct = coarse.field('semantic'), coarse.target
  need(cs.codebook_size == sem.target.codebook_size,
       f'coarse stage: semantic codebook {cs.codebook_size} != semantic stage '
       f'{sem.target.codebook_size}')
  need(cs.num_frames * ratio == ct.num_frames,
       f'coarse stage: {cs.num_frames} semantic frames x {ratio} != {ct.num_frames} acoustic '
       'frames (windows must span the same time)')
  fc = fine.field('coarse')
  need(fc.num_levels == ct.num_levels and fc.codebook_size == ct.codebook_size,
       f'fine stage: conditions on {fc.num_levels} x {fc.codebook_size} coarse codes, the coarse '
       f'stage makes {ct.num_levels} x {ct.codebook_size}')
  need(ct.codebook_size == codec_codebook_size and fine.target.codebook_size == codec_codebook_size,
       f'stages use {ct.codebook_size}/{fine.target.codebook_size} codes per level, the codec '
       f'{codec_codebook_size}')
  need(ct.num_levels + fine.target.num_levels <= codec_levels,
       f'coarse {ct.num_levels} + fine {fine.target.num_levels} levels exceed the codec '
       f'{codec_levels}')
  for layout in (sem, coarse):
    mf = layout.field('mulan')
    need(mf.codebook_size == sem.field('mulan').codebook_size,
         f'{layout.name} stage: MuLan codebook {mf.codebook_size} differs from the semantic stage')
    if mulan_levels is not None:
      need(mf.num_levels <= mulan_levels,
           f'{layout.name} stage: needs {mf.num_levels} MuLan levels, the MuLan RVQ has '
           f'{mulan_levels}')
    if mulan_codebook_size is not None:
      need(mulan_codebook_size <= mf.codebook_size,
           f'{layout.name} stage: MuLan codebook {mf.codebook_size} < the MuLan RVQ codebook '
           f'{mulan_codebook_size}')
  if semantic_clusters is not None:
    need(semantic_clusters <= sem.target.codebook_size,
         f'semantic tokenizer: {semantic_clusters} clusters > the semantic stage codebook '
         f'{sem.target.codebook_size}')
  for layout in (sem, coarse):
    if melody_levels is None or 'melody' not in [f.name for f in layout.conditioning]:
      continue
    mf = layout.field('melody')
    need(mf.num_levels <= melody_levels,
         f'{layout.name} stage: needs {mf.num_levels} melody levels, the melody RVQ has '
         f'{melody_levels}')
    need(melody_codebook_size <= mf.codebook_size,
         f'{layout.name} stage: melody codebook {mf.codebook_size} < the melody RVQ codebook '
         f'{melody_codebook_size}')




# -- loading -----------------------------------------------------------------------------------


@dataclasses.dataclass
class Bundle:
  """Everything sampling needs, rebuilt from a bundle folder (see the module docstring)."""
  path: str
  manifest: dict[str, Any]
  sha256: str
  codec: Any
  mulan: Any
  stages: dict[str, Any]
  stage_params: dict[str, Any]
  semantic_frame_rate: float
  melody: Any = None

  @property
  def sample_rate(self) -> int:
    return int(self.codec.sample_rate)

  @property
  def has_melody(self) -> bool:
    """A melody embedder and a semantic stage that conditions on its tokens."""
    layout = self.stages['semantic'].layout
    return self.melody is not None and 'melody' in [f.name for f in layout.conditioning]

  @property
  def acoustic_frame_rate(self) -> float:
    return float(self.codec.frame_rate)

  @property
  def semantic_tokenizer_dir(self) -> str | None:
    folder = os.path.join(self.path, 'semantic_tokenizer')
    return folder if os.path.isdir(folder) else None

  def semantic_tokenizer(self):
    """The bundled `SemanticTokenizer` (melody/continuation use), loaded on demand."""
    from musiclm_jax.semantic import tokenizer  # pylint: disable=g-import-not-at-top
    if self.semantic_tokenizer_dir is None:
      raise BundleError(f'{self.path}: no semantic_tokenizer in this bundle')
    return tokenizer.SemanticTokenizer.load(self.semantic_tokenizer_dir)


def verify_files(path: str, manifest: Mapping[str, Any]) -> None:
  """Raises BundleError naming the first listed file that is missing or altered."""
  files = manifest.get('files')
  if not isinstance(files, Mapping) or not files:
    raise BundleError(f'{os.path.join(path, MANIFEST)}: lists no files')
  for rel, info in files.items():
    full = os.path.join(path, rel)
    if not os.path.isfile(full):
      raise BundleError(f'{full}: missing (listed in {MANIFEST})')
    if os.path.getsize(full) != info.get('bytes', os.path.getsize(full)) or \
        sha256_file(full) != info.get('sha256'):
      raise BundleError(f'{full}: sha256 mismatch (altered or corrupt; re-export the bundle)')


_LOADED: dict[tuple[str, str, bool], Bundle] = {}


def load_bundle(path: str, *, verify: bool = True, reuse: bool = False,
                with_mulan: bool = True) -> Bundle:
  """Reads a bundle folder written by `musiclm_jax.export` (checking every file's sha256).

  Args:
    path: the bundle folder.
    verify: check the size and sha256 of every file listed in the manifest.
    reuse: return the object this process already built for the same folder and manifest
      (after the checks), so its compiled programs are reused.
    with_mulan: also build MuLan (needs sentencepiece); False leaves `mulan` None, for
      callers that supply MuLan tokens themselves (benchmarks).
  """
  from musiclm_jax.codec import model as codec_model  # pylint: disable=g-import-not-at-top
  from musiclm_jax.mulan import inference  # pylint: disable=g-import-not-at-top
  path = os.path.abspath(os.fspath(path))
  if not os.path.isdir(path):
    raise BundleError(f'{path}: no such bundle folder')
  manifest_path = os.path.join(path, MANIFEST)
  if not os.path.isfile(manifest_path):
    raise BundleError(f'{path}: not a bundle (no {MANIFEST})')
  with open(manifest_path, 'rb') as f:
    raw = f.read()
  try:
    manifest = json.loads(raw)
  except json.JSONDecodeError as e:
    raise BundleError(f'{manifest_path}: not valid JSON ({e})') from None
  if not isinstance(manifest, dict) or manifest.get('format') != FORMAT:
    got = manifest.get('format') if isinstance(manifest, dict) else None
    raise BundleError(f'{manifest_path}: format {got!r}, expected {FORMAT!r}')
  if verify:
    verify_files(path, manifest)
  sha = hashlib.sha256(raw).hexdigest()
  if reuse and (path, sha, with_mulan) in _LOADED:
    return _LOADED[(path, sha, with_mulan)]
  arrays = manifest.get('arrays', {})

  where = os.path.join(path, 'codec', 'config.json')
  codec_config = codec_from_json(read_json(where), where)
  codec_params = load_params_npz(os.path.join(path, 'codec', 'params.npz'),
                                 arrays.get('codec/params.npz', {}))
  with np.load(os.path.join(path, 'codec', 'quantizer.npz')) as z:
    codebooks = z['codebooks']
  codec = codec_model.SoundStreamCodec(codec_config, codec_params, {'codebooks': codebooks})

  stages, stage_params = {}, {}
  for name in STAGE_NAMES:
    where = os.path.join(path, 'stages', name, 'config.json')
    stages[name] = stage_from_json(read_json(where), where)
    rel = f'stages/{name}/params.npz'
    stage_params[name] = load_params_npz(os.path.join(path, rel), arrays.get(rel, {}))

  mulan = None
  if with_mulan:
    try:
      mulan = inference.MuLan.load(os.path.join(path, 'mulan'))
    except (FileNotFoundError, ValueError, KeyError) as e:
      raise BundleError(f'{os.path.join(path, "mulan")}: {str(e).splitlines()[0]}') from None
  melody = None
  if 'melody' in manifest.get('components', {}):
    from musiclm_jax.melody import inference as melody_lib  # pylint: disable=g-import-not-at-top
    folder = os.path.join(path, MELODY_DIR)
    try:
      melody = melody_lib.MelodyEmbedder.load(folder)
    except (FileNotFoundError, ValueError, KeyError, OSError) as e:
      raise BundleError(f'{folder}: {str(e).splitlines()[0]}') from None
    if melody.codebooks is None:
      raise BundleError(f'{folder}: the melody embedder has no RVQ codebooks')
    if melody.sample_rate != codec.sample_rate:
      raise BundleError(f'{folder}: the melody embedder expects {melody.sample_rate} Hz audio, '
                        f'the codec {codec.sample_rate} Hz')
  rate = float(manifest.get('pipeline', {}).get('semantic_frame_rate',
                                                DEFAULT_SEMANTIC_FRAME_RATE))
  check_compatible(stages, codec_levels=codec.num_codebooks,
                   codec_codebook_size=codec.codebook_size, codec_frame_rate=codec.frame_rate,
                   semantic_frame_rate=rate,
                   mulan_levels=mulan.num_codebooks if mulan else None,
                   mulan_codebook_size=mulan.cardinality if mulan else None,
                   melody_levels=melody.num_codebooks if melody else None,
                   melody_codebook_size=melody.cardinality if melody else None)
  bundle = Bundle(path=path, manifest=manifest, sha256=sha, codec=codec, mulan=mulan,
                  stages=stages, stage_params=stage_params, semantic_frame_rate=rate,
                  melody=melody)
  if reuse:
    _LOADED[(path, sha, with_mulan)] = bundle
  return bundle
