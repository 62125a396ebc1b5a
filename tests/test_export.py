"""Export bundle: round trip, bf16 storage, sha256 checks, export from training runs."""

import json
import os
import shutil
import subprocess
import sys

import numpy as np
import pytest

from musiclm_jax import checkpoints, export
from musiclm_jax.sampling import bundle as bundle_lib
from musiclm_jax.sampling import random_bundle

REPO = os.path.dirname(os.path.dirname(os.path.abspath(__file__)))
# Fails any import of these in a subprocess: the sampling path must not need them.
_BLOCK = "import sys; sys.modules.update({m: None for m in ('gin', 'tensorflow', 'seqio')}); "


@pytest.fixture(scope='module')
def parts(tmp_path_factory):
  stages = random_bundle.tiny_stages()
  params = {n: random_bundle.random_params(lambda k, s=s: s.init(k, None)[0], i)
            for i, (n, s) in enumerate(stages.items())}
  codec = random_bundle.tiny_codec()
  spm = random_bundle.train_tiny_spm(str(tmp_path_factory.mktemp('spm')))
  return stages, params, codec, random_bundle.tiny_mulan(spm)


def _write(out, parts, **kwargs):
  stages, params, (codec_config, codec_params, codebooks), mulan = parts
  return export.write_bundle(out, codec_config=codec_config, codec_params=codec_params,
                             codec_codebooks=codebooks, mulan=mulan,
                             stages={n: (stages[n], params[n]) for n in stages}, **kwargs)


def test_round_trip(parts, tmp_path):
  out = str(tmp_path / 'bundle')
  manifest = _write(out, parts)
  assert not os.path.exists(out + '.tmp')
  b = export.load_bundle(out)
  stages, params, (codec_config, codec_params, codebooks), mulan = parts
  for name in stages:
    assert b.stages[name].layout == stages[name].layout
    assert b.stages[name].config == stages[name].config
    flat_a = np.concatenate([np.ravel(x) for x in _leaves(params[name]['model'])])
    flat_b = np.concatenate([np.ravel(x) for x in _leaves(b.stage_params[name])])
    np.testing.assert_array_equal(flat_a, flat_b)
  assert b.codec.config.seanet == codec_config.seanet
  assert b.codec.config.quantizer == codec_config.quantizer
  np.testing.assert_array_equal(b.codec.state['codebooks'], codebooks)
  np.testing.assert_array_equal(b.mulan.text_tokens(['calm piano']),
                                mulan.text_tokens(['calm piano']))
  assert b.semantic_frame_rate == 25.0 and b.sample_rate == 24000
  assert manifest['versions']['jax'] and manifest['pipeline']['acoustic_frame_rate'] == 50.0
  for rel, info in manifest['files'].items():
    assert info['sha256'] == bundle_lib.sha256_file(os.path.join(out, rel))
  coarse_arrays = manifest["arrays"]["stages/coarse/params.npz"]
  assert coarse_arrays['token_embed/embedding']['shape'] == [
      stages['coarse'].config.vocab_size, 32]
  # Rewriting replaces the bundle as a whole.
  _write(out, parts)
  assert sorted(os.listdir(tmp_path)) == ['bundle']
  assert export.load_bundle(out).stages['fine'].layout == stages['fine'].layout


def _leaves(tree):
  import jax  # pylint: disable=g-import-not-at-top
  return jax.tree_util.tree_leaves(tree)


def test_bfloat16_bundle(parts, tmp_path):
  out = str(tmp_path / 'bf16')
  manifest = _write(out, parts, dtype='bfloat16')
  b = export.load_bundle(out)
  leaves = _leaves(b.stage_params['fine'])
  assert all(str(x.dtype) == 'bfloat16' for x in leaves)
  assert b.stages['fine'].config.dtype == 'bfloat16'
  assert manifest['arrays']['stages/fine/params.npz']['logits/kernel']['dtype'] == 'bfloat16'
  assert str(b.codec.params['decoder']['conv_in']['bias'].dtype) == 'float32'


def test_missing_or_altered_files(parts, tmp_path):
  good = str(tmp_path / 'good')
  _write(good, parts)
  altered = str(tmp_path / 'altered')
  shutil.copytree(good, altered)
  path = os.path.join(altered, 'stages', 'coarse', 'params.npz')
  data = bytearray(open(path, 'rb').read())
  data[len(data) // 2] ^= 0xFF
  open(path, 'wb').write(bytes(data))
  with pytest.raises(export.BundleError) as e:
    export.load_bundle(altered)
  assert str(e.value) == f'{path}: sha256 mismatch (altered or corrupt; re-export the bundle)'

  missing = str(tmp_path / 'missing')
  shutil.copytree(good, missing)
  os.remove(os.path.join(missing, 'mulan', 'spm.model'))
  with pytest.raises(export.BundleError, match=r'mulan/spm.model: missing \(listed in'):
    export.load_bundle(missing)
  with pytest.raises(export.BundleError, match='no such bundle folder'):
    export.load_bundle(str(tmp_path / 'nowhere'))
  os.remove(os.path.join(missing, 'manifest.json'))
  with pytest.raises(export.BundleError, match=r'not a bundle \(no manifest.json\)'):
    export.load_bundle(missing)


def test_incompatible_components(parts):
  from musiclm_jax.stages import layouts, model  # pylint: disable=g-import-not-at-top
  stages = parts[0]
  sizes = dict(codec_levels=12, codec_codebook_size=16, codec_frame_rate=50,
               semantic_frame_rate=25)
  export.check_compatible(stages, **sizes)
  with pytest.raises(export.BundleError, match='16/16 codes per level, the codec 15'):
    export.check_compatible(stages, **dict(sizes, codec_codebook_size=15))
  with pytest.raises(export.BundleError, match='exceed the codec 10'):
    export.check_compatible(stages, **dict(sizes, codec_levels=10))
  with pytest.raises(export.BundleError, match='MuLan RVQ codebook 64'):
    export.check_compatible(stages, **sizes, mulan_codebook_size=64)
  coarse = model.StageModel(config=stages['coarse'].config, layout=layouts.coarse_layout(
      mulan_codebook_size=16, semantic_codebook_size=16, semantic_frames=3,
      codec_codebook_size=16, acoustic_frames=8))
  with pytest.raises(export.BundleError, match=r'coarse stage: 3 semantic frames x 2 != 8'):
    export.check_compatible(dict(stages, coarse=coarse), **sizes)
  with pytest.raises(export.BundleError, match="stage fine: its layout generates 'coarse'"):
    export.check_compatible(dict(stages, fine=coarse), **sizes)


def _save_run(run_dir, config_text, state):
  os.makedirs(run_dir)
  with open(os.path.join(run_dir, 'config.gin'), 'w') as f:
    f.write(config_text)
  ckpt = checkpoints.Checkpointer(run_dir, async_save=False)
  ckpt.save(10, state, {'step': 10})
  ckpt.close()


def _run_config(run_file, bindings):
  """The config.gin a training run of `run_file` with `bindings` would write."""
  import importlib.util  # noqa: F401 pylint: disable=g-import-not-at-top,unused-import
  import gin  # pylint: disable=g-import-not-at-top
  gin.clear_config()
  gin.add_config_file_search_path(REPO)
  try:
    gin.parse_config_files_and_bindings([os.path.join(REPO, run_file)],
                                        ["MODEL_DIR = '/tmp/run'", *bindings],
                                        finalize_config=False)
    return gin.config_str()
  finally:
    gin.clear_config()


_LM = ['lm_lib.LMConfig.num_layers = 1', 'lm_lib.LMConfig.num_heads = 2',
       'lm_lib.LMConfig.embed_dim = 32', 'lm_lib.LMConfig.mlp_dim = 64',
       "lm_lib.LMConfig.attention_impl = 'xla'"]
_RUN_CONFIGS = {  # stage -> (run file, bindings giving the test sizes of random_bundle)
    'semantic': ('gin/runs/semantic_stage_tiny.gin', _LM + [
        'MULAN_CODEBOOK_SIZE = 16', 'SEMANTIC_CODEBOOK_SIZE = 16',
        "TASK_FEATURE_LENGTHS = {'semantic': 8}", 'layouts.semantic_layout.semantic_frames = 8']),
    'coarse': ('gin/runs/coarse_tiny.gin', _LM + [
        'MULAN_CODEBOOK_SIZE = 16', 'SEMANTIC_CODEBOOK_SIZE = 16', 'CODEC_CODEBOOK_SIZE = 16',
        "TASK_FEATURE_LENGTHS = {'semantic': 4, 'coarse': 8}",
        'layouts.coarse_layout.semantic_frames = 4', 'layouts.coarse_layout.acoustic_frames = 8']),
    'fine': ('gin/runs/fine_tiny.gin', _LM + [
        'CODEC_CODEBOOK_SIZE = 16', "TASK_FEATURE_LENGTHS = {'coarse': 8, 'fine': 8}",
        'layouts.fine_layout.acoustic_frames = 8']),
    'codec': ('gin/runs/codec_tiny.gin', [
        'CODEC_DIM = 8', 'CODEC_CODEBOOK_SIZE = 16', 'seanet.SEANetConfig.channels = 2',
        'codec_disc.DiscriminatorConfig.stft_windows = ()',
        'codec_disc.DiscriminatorConfig.wave_scales = 0']),
}


def test_export_cli_from_demo_layout(parts, tmp_path):
  """Runs -> bundle with `--from_demo` in a process where gin-less TF imports would fail."""
  stages, params, (codec_config, codec_params, codebooks), mulan = parts
  work = tmp_path / 'work'
  _save_run(str(work / 'codec'), _run_config(*_RUN_CONFIGS['codec']),
            {'params': {'generator': codec_params},
             'model_state': {'quantizer': {'codebooks': codebooks}}})
  for name, folder in (('semantic', 'stage_semantic_stage'), ('coarse', 'stage_coarse'),
                       ('fine', 'stage_fine')):
    _save_run(str(work / folder), _run_config(*_RUN_CONFIGS[name]), {'params': params[name]})
  mulan.save(str(work / 'mulan_rvq'))
  out = tmp_path / 'bundle'
  code = (_BLOCK.replace("'gin', ", '') + 'from musiclm_jax import export; '
          f'sys.exit(export.main(["--from_demo", {str(work)!r}, "--out", {str(out)!r}, '
          '"--dtype", "bfloat16"]))')
  proc = subprocess.run([sys.executable, '-c', code], cwd=REPO, capture_output=True, text=True,
                        timeout=240)
  assert proc.returncode == 0, proc.stderr[-3000:]
  assert 'wrote' in proc.stdout
  manifest = json.load(open(out / 'manifest.json'))
  assert {'gin/codec.gin', 'gin/stage_coarse.gin', 'stages/fine/params.npz',
          'mulan/spm.model'} <= set(manifest['files'])
  assert manifest['dtype'] == 'bfloat16'
  assert manifest['sources']['stage_coarse'] == str(work / 'stage_coarse')
  # Loading needs neither gin nor TF.
  code = (_BLOCK + 'from musiclm_jax.export import load_bundle; '
          f'b = load_bundle({str(out)!r}); print(sorted(b.stages), b.codec.num_codebooks)')
  proc = subprocess.run([sys.executable, '-c', code], cwd=REPO, capture_output=True, text=True,
                        timeout=240)
  assert proc.returncode == 0, proc.stderr[-3000:]
  assert "['coarse', 'fine', 'semantic'] 12" in proc.stdout
  # A missing run folder is a one-line error.
  shutil.rmtree(work / 'stage_fine')
  assert export.main(['--from_demo', str(work), '--out', str(tmp_path / 'b2')]) == 2


def test_model_config_filter_drops_input_pipeline():
  text = _run_config(*_RUN_CONFIGS['coarse'])
  assert 'musiclm_jax.data.inputs' in text and 'musiclm_jax.train' in text
  kept = export.model_config_text(text)
  assert 'musiclm_jax.data.inputs' not in kept and 'seqio_input_fn' not in kept
  assert 'train_lib' not in kept and 'optim' not in kept
  assert 'MODEL = @stage_model.StageModel()' in kept
  assert 'token_store.checked_layout.layout = @layouts.coarse_layout()' in kept
  assert "LOGICAL_AXIS_RULES = \\\n    [('embed', 'fsdp'),\n     ('mlp', 'tensor')," in kept
  everything = export.model_config_text(text, ('musiclm_jax.',))
  assert 'seqio_input_fn' in everything and 'train_lib.train.model = %MODEL' in everything
