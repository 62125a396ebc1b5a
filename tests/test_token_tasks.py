"""Stage token tasks: shapes, aligned crops, conditioning dropout, loss masks, determinism, runs."""

import json
import os

import numpy as np
import pytest

tf = pytest.importorskip('tensorflow')
seqio = pytest.importorskip('seqio')

from musiclm_jax.data import precompute  # noqa: E402
from musiclm_jax.data import token_store  # noqa: E402
from musiclm_jax.stages import layouts  # noqa: E402
from tasks import token_tasks  # noqa: E402

V = 64  # every vocabulary of the fake store (the tiny layouts' codebook size)
SEMANTIC_FRAMES = [10, 40, 70, 100, 120, 25, 60, 90, 33, 110, 80, 50]  # < 128: codes decode t
TINY = {'semantic': {'semantic': 32}, 'coarse': {'semantic': 16, 'coarse': 32},
        'fine': {'coarse': 16, 'fine': 16}}


def _acoustic(frames: int) -> np.ndarray:
  """[T_a, 12]: level 0 = t % 64, level 1 = t // 64 (so t is recoverable), others (t + l) % 64."""
  t = np.arange(frames)[:, None]
  codes = (t + np.arange(12)) % V
  codes[:, 1] = t[:, 0] // V
  return codes


def _write_store(root, splits=(('train', range(12)), ('validation', range(4)))):
  info = {'tokenizers': {
      'codec': {'path': 'c', 'codebook_size': V, 'num_levels': 12, 'frame_rate': 50.0,
                'sample_rate': 24000},
      'semantic': {'path': 's', 'codebook_size': V, 'frame_rate': 25.0, 'sample_rate': 24000},
      'mulan': {'path': 'm', 'codebook_size': V, 'num_levels': 12}},
      'splits': [s for s, _ in splits]}
  precompute._write_json(precompute.epath.Path(root) / token_store.INFO_FILE, info)
  for split, clips in splits:
    clips = list(clips)
    shards = [clips[:len(clips) // 2], clips[len(clips) // 2:]]
    for k, shard in enumerate(shards):
      path = os.path.join(root, split, precompute.shard_name(k, len(shards)))
      os.makedirs(os.path.dirname(path), exist_ok=True)
      with tf.io.TFRecordWriter(path) as w:
        for i in shard:
          t_s = SEMANTIC_FRAMES[i]
          tokens = {'semantic': np.arange(t_s) % V, 'acoustic': _acoustic(2 * t_s),
                    'mulan_audio': (i + np.arange(12)) % V,
                    'mulan_text': (np.full(12, -1) if i == 0 else (i + 30 + np.arange(12)) % V)}
          w.write(precompute.serialize(tokens, '' if i == 0 else f'clip {i}', f'w{i}', f'r{i}'))
    precompute._write_json(precompute.epath.Path(root) / split / token_store.INDEX_FILE,
                           {'num_examples': len(clips)})
  return str(root)


@pytest.fixture(scope='module')
def store(tmp_path_factory):
  root = _write_store(tmp_path_factory.mktemp('tokens'))
  token_tasks.register_token_tasks(root, corpus='ttest', cond_dropout=0.0)
  return root


def _examples(stage, n=48, corpus='ttest', seed=0, split='train', lengths=None):
  ds = seqio.get_mixture_or_task(token_tasks.task_name(stage, corpus)).get_dataset(
      lengths or TINY[stage], split=split, shuffle=True, seed=seed, num_epochs=None)
  return list(ds.take(n).as_numpy_iterator())


def test_registration_names_and_idempotence(store):
  names = token_tasks.register_token_tasks(store, corpus='ttest', cond_dropout=0.0)
  assert names == ['musiclm_semantic_ttest', 'musiclm_coarse_ttest', 'musiclm_fine_ttest',
                   'musiclm_semantic', 'musiclm_coarse', 'musiclm_fine']
  mixture = seqio.get_mixture_or_task('musiclm_coarse')
  assert 'musiclm_coarse_ttest' in [t.name for t in mixture.tasks]


@pytest.mark.parametrize('stage,shapes', [
    ('semantic', {'mulan': (12,), 'semantic': (32,)}),
    ('coarse', {'mulan': (12,), 'semantic': (16,), 'coarse': (32, 4)}),
    ('fine', {'coarse': (16, 4), 'fine': (16, 8)})])
def test_shapes_dtypes_ranges(store, stage, shapes):
  for ex in _examples(stage, n=24):
    assert {k: v.shape for k, v in ex.items()} == shapes
    for v in ex.values():
      assert v.dtype == np.int32 and v.min() >= -1 and v.max() < V


def test_semantic_windows_are_contiguous_and_padded(store):
  for ex in _examples('semantic'):
    sem = ex['semantic']
    valid = sem >= 0
    n = int(valid.sum())
    assert valid[:n].all() and not valid[n:].any()  # padding only at the end
    assert n == 32 or n in SEMANTIC_FRAMES  # short clips keep all their frames
    np.testing.assert_array_equal(sem[:n], (sem[0] + np.arange(n)) % V)


def test_coarse_windows_are_aligned(store):
  for ex in _examples('coarse'):
    sem, coarse = ex['semantic'], ex['coarse']
    t_a = coarse[0, 0] + V * coarse[0, 1]  # acoustic frame index of the window start
    assert t_a % 2 == 0 and (t_a // 2) % V == sem[0]  # same start time (50 Hz = 2 x 25 Hz)
    n = int((sem >= 0).sum())
    assert (coarse[:2 * n] >= 0).all() and (coarse[2 * n:] == -1).all()
    t = t_a + np.arange(2 * n)
    np.testing.assert_array_equal(coarse[:2 * n, 0], t % V)
    np.testing.assert_array_equal(coarse[:2 * n, 2:], (t[:, None] + np.arange(2, 4)) % V)


def test_fine_windows_split_levels(store):
  for ex in _examples('fine'):
    coarse, fine = ex['coarse'], ex['fine']
    t = coarse[:, 0] + V * coarse[:, 1]
    np.testing.assert_array_equal(fine, (t[:, None] + np.arange(4, 12)) % V)


def test_conditioning_dropout_and_text_tokens(tmp_path):
  root = _write_store(tmp_path)
  token_tasks.register_token_tasks(root, corpus='tdrop', cond_dropout=0.3)
  mulan = np.stack([ex['mulan'] for ex in _examples('semantic', n=600, corpus='tdrop')])
  dropped = (mulan == -1).all(1)
  assert 0.24 < dropped.mean() < 0.36
  kept = mulan[~dropped]
  assert (kept >= 0).all()
  np.testing.assert_array_equal(kept, (kept[:, :1] + np.arange(12)) % V)  # audio tokens
  first = set(kept[:, 0] % V)
  assert first <= set(range(12))  # audio tokens of clip i start at i

  token_tasks.register_token_tasks(root, corpus='tdrop', cond_dropout=0.0, mulan_text_prob=1.0)
  starts = {int(ex['mulan'][0]) for ex in _examples('coarse', n=100, corpus='tdrop')}
  assert starts <= {0} | set(range(31, 42))  # text tokens, except clip 0 (no caption): audio
  assert 0 in starts and len(starts) > 5


def test_loss_mask_covers_only_predicted_tokens(store):
  ex = _examples('coarse', n=8)
  batch = {k: np.stack([e[k] for e in ex]) for k in ex[0]}
  batch['mulan'][0] = -1  # a dropped condition
  layout = layouts.coarse_layout(mulan_codebook_size=V, semantic_codebook_size=V,
                                 codec_codebook_size=V, semantic_frames=16, acoustic_frames=32)
  from musiclm_jax.stages.model import StageModel  # pylint: disable=g-import-not-at-top
  from musiclm_jax.stages.lm import LMConfig  # pylint: disable=g-import-not-at-top
  model = StageModel(layout=layout, config=LMConfig(num_layers=1, num_heads=2, embed_dim=16,
                                                    mlp_dim=32))
  out = model.make_batch(batch)
  mask, targets, inputs = out['loss_mask'], out['targets'], out['inputs']
  prefix = layout.prefix_length - 1  # targets before the first predicted token
  assert (mask[:, :prefix] == 0).all()  # MuLan, semantic, SEP: never predicted
  np.testing.assert_array_equal(mask[:, prefix:], (targets[:, prefix:] != 0).astype(np.float32))
  assert mask.sum() == (batch['coarse'] >= 0).sum()
  assert (inputs[0, 1:13] == layouts.PAD_ID).all()  # dropped MuLan tokens -> PAD
  lo, hi = layout.level_range('coarse', 0)
  assert lo <= targets[1, prefix] < hi


def test_same_seed_same_windows(store):
  a, b = _examples('coarse', n=16, seed=3), _examples('coarse', n=16, seed=3)
  c = _examples('coarse', n=16, seed=4)
  for x, y in zip(a, b):
    for k in x:
      np.testing.assert_array_equal(x[k], y[k])
  assert any(not np.array_equal(x['semantic'], z['semantic']) for x, z in zip(a, c))


def test_bad_feature_lengths(store):
  with pytest.raises(Exception, match="must be 2 x"):
    _examples('coarse', n=1, lengths={'semantic': 16, 'coarse': 30})
  with pytest.raises(Exception, match="needs 'fine'"):
    _examples('fine', n=1, lengths={'coarse': 16})


def test_checked_layout(store):
  layout = layouts.semantic_layout(mulan_codebook_size=V, semantic_codebook_size=32,
                                   semantic_frames=32)
  with pytest.raises(ValueError, match='set --gin.SEMANTIC_CODEBOOK_SIZE=64'):
    token_store.checked_layout(layout=layout, tokens_dir=store)
  layout = layouts.semantic_layout(mulan_codebook_size=V, semantic_codebook_size=V,
                                   semantic_frames=32)
  assert token_store.checked_layout(layout=layout, tokens_dir=store,
                                    feature_lengths={'semantic': 32}) is layout
  with pytest.raises(ValueError, match=r"TASK_FEATURE_LENGTHS\['semantic'\] = 30"):
    token_store.checked_layout(layout=layout, tokens_dir=store, feature_lengths={'semantic': 30})
  fine = layouts.fine_layout(codec_codebook_size=V, fine_levels=9, acoustic_frames=16)
  with pytest.raises(ValueError, match='levels up to 13'):
    token_store.checked_layout(layout=fine, tokens_dir=store)


@pytest.mark.parametrize('run', ['semantic_stage', 'coarse', 'fine'])
def test_run_files_build_their_stage(run, monkeypatch):
  import gin  # pylint: disable=g-import-not-at-top
  from musiclm_jax import train as train_lib  # pylint: disable=g-import-not-at-top
  monkeypatch.delenv(token_store.TOKENS_DIR_ENV, raising=False)
  for size in ('tiny', 'paper'):
    gin.clear_config()
    train_lib.parse_gin([f'gin/runs/{run}_{size}.gin'], ['MODEL_DIR = "/tmp/unused"'])
    model = gin.query_parameter('%MODEL').scoped_configurable_fn()
    lengths = gin.query_parameter('%TASK_FEATURE_LENGTHS')
    for name, frames in lengths.items():
      assert model.layout.field(name).num_frames == frames


def test_run_file_input_fn_registers_and_batches(store, monkeypatch):
  """The gin hook registers the tasks on TOKENS_DIR when the trainer calls INPUT_FN."""
  import gin  # pylint: disable=g-import-not-at-top
  from musiclm_jax import train as train_lib  # pylint: disable=g-import-not-at-top
  monkeypatch.delenv(token_store.TOKENS_DIR_ENV, raising=False)
  token_tasks.register_token_tasks(store, corpus='thook', cond_dropout=0.0)
  seqio.TaskRegistry.remove('musiclm_coarse_thook')  # the hook must register it again
  train_lib.parse_gin(['gin/runs/coarse_tiny.gin'], [
      'MODEL_DIR = "/tmp/unused"', f'TOKENS_DIR = "{store}"', "CORPUS = 'thook'",
      "MIXTURE_OR_TASK_NAME = 'musiclm_coarse_thook'"])
  input_fn = gin.query_parameter('%INPUT_FN').scoped_configurable_fn
  batch = next(input_fn(batch_size=4, seed=0))
  assert {k: v.shape for k, v in batch.items()} == {
      'mulan': (4, 12), 'semantic': (4, 16), 'coarse': (4, 32, 4)}


@pytest.mark.slow  # ~1 min on 2 busy cores, mostly compiling; the plumbing is tested above
def test_tiny_run_trains_from_the_cli(store, tmp_path):
  from musiclm_jax import train as train_lib  # pylint: disable=g-import-not-at-top
  model_dir = tmp_path / 'run'
  rc = train_lib.main(['--gin_file=gin/runs/semantic_stage_tiny.gin',
                       f"--gin.MODEL_DIR='{model_dir}'", f"--gin.TOKENS_DIR='{store}'",
                       "--gin.CORPUS='ttest'",
                       "--gin.MIXTURE_OR_TASK_NAME='musiclm_semantic_ttest'",
                       '--gin.TRAIN_STEPS=3', '--gin.BATCH_SIZE=8', '--gin.LOG_EVERY=1',
                       '--gin.CHECKPOINT_EVERY=3', '--gin.WARMUP_STEPS=1'])
  assert rc == 0
  lines = [json.loads(l) for l in (model_dir / 'metrics.jsonl').read_text().splitlines()]
  assert lines and all(np.isfinite(l['loss']) for l in lines if 'loss' in l)
