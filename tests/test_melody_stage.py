"""Melody-conditioned semantic stage: precompute with melody, aligned token windows, the run files.

Uses a random melody embedder (`random_bundle.tiny_melody`: 4 s windows every 3 s, 4 x 16 RVQ
tokens) with the fake codec/semantic/MuLan tokenizers of tests/test_precompute.py, and a
hand-written token store whose codes encode their frame and window index.
"""

import json
import os

import numpy as np
import pytest

tf = pytest.importorskip('tensorflow')
tfds = pytest.importorskip('tensorflow_datasets')
seqio = pytest.importorskip('seqio')

from musiclm_jax.data import precompute  # noqa: E402
from musiclm_jax.data import token_store  # noqa: E402
from musiclm_jax.sampling import random_bundle  # noqa: E402
from musiclm_jax.stages import layouts  # noqa: E402
from tasks import token_tasks  # noqa: E402
from test_precompute import _records, fakes, FakeCodec, FakeMuLan, FakeSemantic  # noqa: E402

SR = 24000
V = 64
CLIP_SECONDS = [7.0, 4.0, 2.0, 7.0, 5.5]  # windows: 2, 1, 1 (padded), 2, 1
OLD_KEYS = {'semantic', 'acoustic', 'mulan_audio', 'mulan_text', 'num_semantic_frames',
            'num_acoustic_frames', 'acoustic_levels', 'caption', 'work_id', 'render_id'}


def _clip(i: int) -> np.ndarray:
  t = np.arange(int(CLIP_SECONDS[i] * SR)) / SR
  return (0.2 * np.sin(2 * np.pi * (200 + 50 * i) * t * (1 + 0.05 * t))).astype(np.float32)


class MelodyTestCorpus(tfds.core.GeneratorBasedBuilder, skip_registration=True):
  """Five clips of 2-7 s in `train`."""
  VERSION = tfds.core.Version('1.0.0')

  def _info(self):
    return tfds.core.DatasetInfo(builder=self, features=tfds.features.FeaturesDict({
        'audio': tfds.features.Audio(shape=(None,), dtype=np.float32, sample_rate=SR),
        'caption': tfds.features.Text(), 'work_id': tfds.features.Text(),
        'render_id': tfds.features.Text()}))

  def _split_generators(self, dl_manager):
    del dl_manager
    return {'train': self._generate_examples()}

  def _generate_examples(self):
    for i in range(len(CLIP_SECONDS)):
      yield i, {'audio': _clip(i), 'caption': f'clip {i}', 'work_id': f'w{i}',
                'render_id': f'r{i}'}


@pytest.fixture(scope='module')
def melody():
  return random_bundle.tiny_melody('test')


@pytest.fixture(scope='module')
def corpus(tmp_path_factory):
  root = tmp_path_factory.mktemp('melody_corpus')
  builder = MelodyTestCorpus(data_dir=str(root))
  builder.download_and_prepare(
      download_config=tfds.download.DownloadConfig(try_download_gcs=False))
  return builder, root


def test_precompute_stores_melody_tokens(corpus, melody, tmp_path):
  builder, _ = corpus
  tok = fakes()
  tok.melody, tok.paths = melody, {**tok.paths, 'melody': '/m/melody'}
  out = tmp_path / 'tokens'
  precompute.run(builder=builder, tokenizers=tok, out=str(out), batch_size=3, shard_size=3,
                 progress_bar=False)  # two batches of 7 s: one compiled shape
  info = json.loads((out / 'tokenizers.json').read_text())['tokenizers']
  assert info['melody'] == {'path': '/m/melody', 'codebook_size': 16, 'num_levels': 4,
                            'frame_rate': 1 / 3.0, 'window_seconds': 4.0, 'hop_seconds': 3.0,
                            'sample_rate': SR}
  records = {r['render_id'][0]: r for r in _records(out, 'train')}
  assert len(records) == len(CLIP_SECONDS)
  padded = np.zeros((8, 7 * SR), np.float32)  # the precompute batch shape: no new compile
  for i in range(len(CLIP_SECONDS)):
    padded[i, :len(_clip(i))] = _clip(i)
  expected = melody.tokens(padded).reshape(8, 2, 4)
  for i, seconds in enumerate(CLIP_SECONDS):
    r = records[f'r{i}']
    assert set(r) == OLD_KEYS | {'melody', 'num_melody_frames', 'melody_levels'}
    windows = melody.num_windows(int(seconds * SR))
    assert r['num_melody_frames'] == [windows] and r['melody_levels'] == [4]
    np.testing.assert_array_equal(r['melody'], expected[i, :windows].ravel())
  # A clip's tokens are those of the clip alone (the batch's zero padding does not leak in).
  np.testing.assert_array_equal(records['r0']['melody'], melody.tokens(_clip(0)[None])[0])
  assert [records[f'r{i}']['num_melody_frames'][0] for i in range(5)] == [2, 1, 1, 2, 1]

  # Without a melody embedder: the records and tokenizers.json are exactly the old ones.
  plain = tmp_path / 'plain'
  precompute.run(builder=builder, tokenizers=fakes(), out=str(plain), batch_size=3,
                 shard_size=3, progress_bar=False)
  assert 'melody' not in json.loads((plain / 'tokenizers.json').read_text())['tokenizers']
  plain_records = {r['render_id'][0]: r for r in _records(plain, 'train')}
  for rid, r in plain_records.items():
    assert set(r) == OLD_KEYS
    assert r == {k: v for k, v in records[rid].items() if k in OLD_KEYS}
  # A store written without melody cannot be continued with one.
  with pytest.raises(precompute.ConfigError, match='another tokenizers'):
    precompute.run(builder=builder, tokenizers=tok, out=str(plain), shard_size=3,
                   progress_bar=False)


def test_precompute_cli_finds_the_melody_folder(corpus, melody, tmp_path, monkeypatch, capsys):
  _, root = corpus
  tok = tmp_path / 'work'
  for sub in ('codec', 'semantic_tok', 'mulan_rvq'):
    (tok / sub).mkdir(parents=True)
  seen = []

  def fake_load(paths, gin_files=None):
    del gin_files
    seen.append(dict(paths))
    return token_store.Tokenizers(FakeCodec(), FakeSemantic(), FakeMuLan(), paths=dict(paths),
                                  melody=melody if 'melody' in paths else None)

  monkeypatch.setattr(precompute, 'load_tokenizers', fake_load)
  argv = ['--corpus', 'folder', '--tfds_name', 'melody_test_corpus', '--data_dir', str(root),
          '--tokenizers', str(tok), '--splits', 'train', '--no_progress', '--max_clips', '2']
  assert precompute.main(argv + ['--out', str(tmp_path / 'a')]) == 0
  assert 'melody' not in seen[-1]  # no melody/ folder: no melody tokens
  melody.save(str(tok / 'melody'))
  assert precompute.main(argv + ['--out', str(tmp_path / 'b')]) == 0
  assert seen[-1]['melody'] == str(tok / 'melody')
  assert 'melody' in json.loads((tmp_path / 'b' / 'tokenizers.json').read_text())['tokenizers']
  assert precompute.main(argv + ['--out', str(tmp_path / 'c'), '--no_melody']) == 0
  assert 'melody' not in seen[-1]
  capsys.readouterr()
  assert precompute.main(argv + ['--out', str(tmp_path / 'd'), '--melody',
                                 str(tmp_path / 'nope')]) == 2
  assert 'missing tokenizers: melody' in capsys.readouterr().err


# -- token tasks ------------------------------------------------------------------------------

# Semantic frames per clip (25 Hz) and the melody windows a 4 s / 3 s embedder stores for it.
SEMANTIC_FRAMES = [250, 250, 175, 100, 60, 250, 220, 130]
LEVELS = 8


def _windows(frames: int) -> int:
  return max(1, 1 + (frames // 25 - 4) // 3) if frames >= 100 else 1


def _write_store(root, *, with_melody=True):
  """Semantic id of frame t: t % 64; melody code of window w, level l: (w + 10 l) % 64."""
  tok = {'codec': {'path': 'c', 'codebook_size': V, 'num_levels': 12, 'frame_rate': 50.0,
                   'sample_rate': SR},
         'semantic': {'path': 's', 'codebook_size': V, 'frame_rate': 25.0, 'sample_rate': SR},
         'mulan': {'path': 'm', 'codebook_size': V, 'num_levels': 12}}
  if with_melody:
    tok['melody'] = {'path': 'mel', 'codebook_size': V, 'num_levels': LEVELS,
                     'frame_rate': 1 / 3, 'window_seconds': 4.0, 'hop_seconds': 3.0,
                     'sample_rate': SR}
  precompute._write_json(precompute.epath.Path(root) / token_store.INFO_FILE,
                         {'tokenizers': tok, 'splits': ['train']})
  path = os.path.join(root, 'train', precompute.shard_name(0, 1))
  os.makedirs(os.path.dirname(path), exist_ok=True)
  with tf.io.TFRecordWriter(path) as w:
    for i, t_s in enumerate(SEMANTIC_FRAMES):
      tokens = {'semantic': np.arange(t_s) % V, 'acoustic': np.zeros((2 * t_s, 12), np.int64),
                'mulan_audio': (i + np.arange(12)) % V, 'mulan_text': np.full(12, -1)}
      if with_melody:
        tokens['melody'] = (np.arange(_windows(t_s))[:, None] + 10 * np.arange(LEVELS)) % V
      w.write(precompute.serialize(tokens, '', f'w{i}', f'r{i}'))
  precompute._write_json(precompute.epath.Path(root) / 'train' / token_store.INDEX_FILE,
                         {'num_examples': len(SEMANTIC_FRAMES)})
  return str(root)


@pytest.fixture(scope='module')
def store(tmp_path_factory):
  root = _write_store(tmp_path_factory.mktemp('mtokens'))
  names = token_tasks.register_token_tasks(root, corpus='mtest', cond_dropout=0.0,
                                           melody_dropout=0.0)
  assert names[-2:] == ['musiclm_semantic_melody_mtest', 'musiclm_semantic_melody']
  return root


def _examples(n=64, corpus='mtest', lengths=None, seed=0):
  ds = seqio.get_mixture_or_task(f'musiclm_semantic_melody_{corpus}').get_dataset(
      lengths or {'semantic': 100, 'melody': 1}, split='train', shuffle=True, seed=seed,
      num_epochs=None)
  return list(ds.take(n).as_numpy_iterator())


def test_melody_windows_are_aligned_with_the_semantic_crop(store):
  starts = {}
  for ex in _examples(96):
    assert {k: v.shape for k, v in ex.items()} == {
        'mulan': (12,), 'melody': (1, LEVELS), 'semantic': (100,)}
    sem, mel = ex['semantic'], ex['melody']
    k = int(mel[0, 0])  # the stored window index
    np.testing.assert_array_equal(mel[0], (k + 10 * np.arange(LEVELS)) % V)
    # The crop starts at k x 75 semantic frames (3 s): the window's own start.
    assert sem[0] == (75 * k) % V
    n = int((sem >= 0).sum())
    np.testing.assert_array_equal(sem[:n], (75 * k + np.arange(n)) % V)
    clip = int(ex['mulan'][0])
    assert 75 * k + 100 <= SEMANTIC_FRAMES[clip] or k == 0  # inside the clip (or a short one)
    assert n == min(100, SEMANTIC_FRAMES[clip])
    starts.setdefault(clip, set()).add(k)
  assert starts[0] == {0, 1, 2} and starts[2] == {0, 1} and starts[3] == {0}
  assert starts[4] == {0} and starts[6] == {0, 1}  # 220 frames: 2 whole windows fit


def test_melody_loss_mask_and_vocabulary(store):
  ex = _examples(8)
  batch = {k: np.stack([e[k] for e in ex]) for k in ex[0]}
  batch['melody'][0] = -1  # a dropped melody
  layout = layouts.semantic_layout(mulan_codebook_size=V, semantic_codebook_size=V,
                                   semantic_frames=100, melody_frames=1, melody_levels=LEVELS,
                                   melody_codebook_size=V)
  from musiclm_jax.stages.lm import LMConfig  # pylint: disable=g-import-not-at-top
  from musiclm_jax.stages.model import StageModel  # pylint: disable=g-import-not-at-top
  model = StageModel(layout=layout, config=LMConfig(num_layers=1, num_heads=2, embed_dim=16,
                                                    mlp_dim=32))
  out = model.make_batch(batch)
  mask, targets, inputs = out['loss_mask'], out['targets'], out['inputs']
  assert layout.prefix_length == 1 + 12 + LEVELS + 1
  prefix = layout.prefix_length - 1
  assert (mask[:, :prefix] == 0).all()  # MuLan, melody, SEP are never predicted
  np.testing.assert_array_equal(mask[:, prefix:], (targets[:, prefix:] != 0).astype(np.float32))
  assert mask.sum() == (batch['semantic'] >= 0).sum()
  melody_ids = inputs[:, 13:13 + LEVELS]
  assert (melody_ids[0] == layouts.PAD_ID).all()
  lo = layout.offset('melody')
  assert lo == layouts.NUM_SPECIAL_TOKENS + 12 * V  # its own slice, after MuLan's
  np.testing.assert_array_equal(melody_ids[1:], lo + np.arange(LEVELS) * V + batch['melody'][1:,
                                                                                           0])
  assert (inputs[:, 1:13] < lo).all() and (targets[:, prefix:][mask[:, prefix:] > 0] >=
                                           layout.offset('semantic')).all()


def test_melody_dropout(tmp_path):
  root = _write_store(tmp_path)
  token_tasks.register_token_tasks(root, corpus='mdrop', cond_dropout=0.3, melody_dropout=0.2)
  ex = _examples(800, corpus='mdrop')
  mulan_dropped = np.array([(e['mulan'] == -1).all() for e in ex])
  melody_dropped = np.array([(e['melody'] == -1).all() for e in ex])
  assert 0.25 < mulan_dropped.mean() < 0.35
  assert 0.38 < melody_dropped.mean() < 0.50  # 0.3 + 0.7 x 0.2 = 0.44
  assert melody_dropped[mulan_dropped].all()  # the null condition drops both


def test_stores_without_melody(tmp_path, store, monkeypatch):
  plain = _write_store(tmp_path / 'plain', with_melody=False)
  names = token_tasks.register_token_tasks(plain, corpus='mplain')
  assert not [n for n in names if 'melody' in n]
  assert 'musiclm_semantic_melody_mplain' not in seqio.TaskRegistry.names()
  mixed = [t.name for t in seqio.get_mixture_or_task('musiclm_semantic_melody').tasks]
  assert 'musiclm_semantic_melody_mtest' in mixed and 'musiclm_semantic_melody_mplain' not in mixed
  with pytest.raises(ValueError, match='has no melody tokens'):
    token_store.stage_task(name='musiclm_semantic_melody', tokens_dir=plain, corpus='mplain')
  layout = layouts.semantic_layout(mulan_codebook_size=V, semantic_codebook_size=V,
                                   semantic_frames=100, melody_frames=1, melody_levels=LEVELS,
                                   melody_codebook_size=V)
  with pytest.raises(ValueError, match='token store has none'):
    token_store.checked_layout(layout=layout, tokens_dir=plain)
  assert token_store.checked_layout(layout=layout, tokens_dir=store,
                                    feature_lengths={'semantic': 100, 'melody': 1}) is layout
  bad = layouts.semantic_layout(mulan_codebook_size=V, semantic_codebook_size=V,
                                semantic_frames=100, melody_frames=2, melody_levels=4,
                                melody_codebook_size=32)
  with pytest.raises(ValueError) as e:
    token_store.checked_layout(layout=bad, tokens_dir=store)
  for part in ('set --gin.MELODY_CODEBOOK_SIZE=64', 'set --gin.MELODY_LEVELS=8',
               '2 melody windows do not fit in 100 semantic frames (at most 1)'):
    assert part in str(e.value)
  with pytest.raises(Exception, match='do not fit in 100 semantic frames'):
    _examples(1, lengths={'semantic': 100, 'melody': 2})


@pytest.mark.parametrize('size', ['tiny', 'paper'])
def test_melody_run_files(size, monkeypatch):
  import gin  # pylint: disable=g-import-not-at-top
  from musiclm_jax import train as train_lib  # pylint: disable=g-import-not-at-top
  monkeypatch.delenv(token_store.TOKENS_DIR_ENV, raising=False)
  train_lib.parse_gin([f'gin/runs/semantic_stage_melody_{size}.gin'],
                      ['MODEL_DIR = "/tmp/unused"'])
  model = gin.query_parameter('%MODEL').scoped_configurable_fn()
  lengths = gin.query_parameter('%TASK_FEATURE_LENGTHS')
  assert lengths == {'tiny': {'semantic': 100, 'melody': 1},
                     'paper': {'semantic': 750, 'melody': 9}}[size]
  for name, frames in lengths.items():
    assert model.layout.field(name).num_frames == frames
  mf = model.layout.field('melody')
  assert (mf.num_levels, mf.codebook_size) == {'tiny': (8, 64), 'paper': (24, 512)}[size]
  # The windows fit: 9 melody windows of 4 s every 3 s lie in 30 s (0-28 s).
  assert token_store.melody_windows_fit(semantic_frames=lengths['semantic'], semantic_rate=25.0,
                                        window_seconds=4.0, hop_seconds=3.0) == lengths['melody']
  # MELODY_FRAMES = 0: the same stage without melody (the baseline of docs/MELODY.md).
  gin.clear_config()
  train_lib.parse_gin([f'gin/runs/semantic_stage_melody_{size}.gin'],
                      ['MODEL_DIR = "/tmp/unused"', 'MELODY_FRAMES = 0'])
  plain = gin.query_parameter('%MODEL').scoped_configurable_fn()
  assert [f.name for f in plain.layout.conditioning] == ['mulan']


def test_paper_melody_stage_lowers():
  """Paper sizes by eval_shape (nothing allocated), and the sharded train step lowers."""
  import jax  # pylint: disable=g-import-not-at-top
  from musiclm_jax.stages import lm  # pylint: disable=g-import-not-at-top
  import test_stage_compile as tsc  # pylint: disable=g-import-not-at-top
  model = tsc.gin_model('semantic', 'melody_paper')
  layout, cfg = model.layout, model.config
  assert layout.sequence_length == 1 + 12 + 9 * 24 + 1 + 750 == 980
  assert layout.vocab_size == 3 + 12 * 1024 + 24 * 512 + 1024
  assert cfg.vocab_size == 25728  # padded to a multiple of 128
  params, _ = jax.eval_shape(model.init, jax.random.PRNGKey(0), None)
  d, f = cfg.embed_dim, cfg.mlp_dim
  closed_form = cfg.num_layers * (4 * d * d + 3 * d * f + 2 * d) + d + 2 * cfg.vocab_size * d
  assert lm.count_params(params) == closed_form == 455_394_304
  paper = tsc.paper_model('semantic')
  assert lm.count_params(jax.eval_shape(paper.init, jax.random.PRNGKey(0), None)[0]) == (
      closed_form - 2 * (cfg.vocab_size - paper.config.vocab_size) * d)
  # Lower (not compile) the step on the fake fsdp x tensor mesh, as the paper stage tests do.
  melody_model = tsc.stage_model.StageModel(
      layout=layout, config=tsc.dataclasses.replace(cfg, remat_policy='minimal'),
      z_loss=model.z_loss)
  rules = tsc.gin_rules()
  mesh = tsc.partitioning.make_mesh(tsc.MESH_SHAPE)
  trainer = tsc.trainer_lib.Trainer(model=melody_model, mesh=mesh, rules=rules,
                                    optimizers=tsc.OptimizerConfig(), total_steps=10,
                                    compute_dtype='bfloat16')
  sharding = tsc.partitioning.batch_sharding(mesh, rules, 2)
  batch = {k: jax.ShapeDtypeStruct((8, layout.model_length), dt, sharding=sharding)
           for k, dt in (('inputs', tsc.jnp.int32), ('targets', tsc.jnp.int32),
                         ('loss_mask', tsc.jnp.float32))}
  state, shardings = trainer.state_shardings(jax.random.PRNGKey(0), batch)
  lowered = trainer.compile_step(shardings, {k: sharding for k in batch}).lower(state, batch)
  assert 'func' in lowered.as_text()[:20000]
