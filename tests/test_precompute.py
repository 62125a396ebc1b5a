"""Token precompute: shards, index, skipped clips, resume after a crash, the CLI, the loaders."""

import json
import os
from pathlib import Path

import jax
import jax.numpy as jnp
import numpy as np
import pytest

tf = pytest.importorskip('tensorflow')
tfds = pytest.importorskip('tensorflow_datasets')

from musiclm_jax.data import precompute  # noqa: E402
from musiclm_jax.data import token_store  # noqa: E402

SR = 24000
LENGTHS = [24000, 36000, 500, 30000, 12000, 24000, 48000, 20000, 26000, 24000]  # clip 2: short
NAN_CLIP = 5
CAPTIONS = {3: '', 7: '<b></b>'}  # no caption; a caption MuLan rejects (empty after cleaning)


def _clip(i: int) -> np.ndarray:
  t = np.arange(LENGTHS[i]) / SR
  wav = (0.05 + 0.04 * i) * np.sin(2 * np.pi * (110 + 20 * i) * t) * (1 + t)
  wav = wav.astype(np.float32)
  if i == NAN_CLIP:
    wav[100] = np.nan
  return wav


class PrecomputeTestCorpus(tfds.core.GeneratorBasedBuilder, skip_registration=True):
  """Ten clips in `train`, three in `validation`; clip 2 is too short, clip 5 has a NaN."""
  VERSION = tfds.core.Version('1.0.0')

  def _info(self):
    return tfds.core.DatasetInfo(builder=self, features=tfds.features.FeaturesDict({
        'audio': tfds.features.Audio(shape=(None,), dtype=np.float32, sample_rate=SR),
        'caption': tfds.features.Text(),
        'work_id': tfds.features.Text(),
        'render_id': tfds.features.Text(),
    }))

  def _split_generators(self, dl_manager):
    del dl_manager
    return {'train': self._generate_examples(range(10)),
            'validation': self._generate_examples(range(3))}

  def _generate_examples(self, indices):
    for i in indices:
      yield i, {'audio': _clip(i), 'caption': CAPTIONS.get(i, f'clip {i}'),
                'work_id': f'w{i // 2}', 'render_id': f'w{i // 2}#r{i % 2}'}


def _frame_energy(wav, hop):  # [B, N] -> [B, N // hop]
  b, n = wav.shape
  return jnp.abs(wav[:, :n // hop * hop].reshape(b, n // hop, hop)).mean(-1)


class FakeCodec:
  """Frame-wise codes (so a clip's codes do not depend on its batch); can fail on purpose."""
  sample_rate, frame_rate, codebook_size, num_codebooks = SR, 50.0, 64, 12

  def __init__(self, fail_on_call=None):
    self.calls, self.fail_on_call = 0, fail_on_call
    self._encode = jax.jit(lambda w: (
        (_frame_energy(w, 480) * 997).astype(jnp.int32)[..., None] + jnp.arange(12)) % 64)

  def encode(self, wav):
    self.calls += 1
    if self.calls == self.fail_on_call:
      raise RuntimeError('simulated crash')
    return self._encode(wav)


class FakeSemantic:
  sample_rate, frame_rate, cardinality = SR, 25.0, 64

  def __init__(self):
    self._tokenize = jax.jit(lambda w: (_frame_energy(w, 960) * 991).astype(jnp.int32) % 64)

  def tokenize(self, wav):
    return self._tokenize(wav)


class FakeMuLan:
  num_codebooks, cardinality = 12, 64

  def audio_tokens(self, wav):
    wav = np.asarray(wav)
    return (np.abs(wav).sum(1, keepdims=True).astype(np.int64) + np.arange(12)) % 64

  def text_tokens(self, texts):
    if any(not t.strip() or t.startswith('<') for t in texts):
      raise ValueError('empty prompt after cleaning')
    return (np.array([[len(t)] for t in texts]) * 7 + np.arange(12)) % 64


def fakes(**codec_kwargs) -> token_store.Tokenizers:
  return token_store.Tokenizers(FakeCodec(**codec_kwargs), FakeSemantic(), FakeMuLan(),
                                paths={'codec': 'c', 'semantic': 's', 'mulan': 'm'})


@pytest.fixture(scope='module')
def corpus(tmp_path_factory):
  root = tmp_path_factory.mktemp('precompute_corpus')
  builder = PrecomputeTestCorpus(data_dir=str(root))
  builder.download_and_prepare(
      download_config=tfds.download.DownloadConfig(try_download_gcs=False))
  return builder, root


def _records(out: Path, split: str) -> list[dict]:
  out_records = []
  for path in sorted((out / split).glob('shard-*.tfrecord')):
    for raw in tf.data.TFRecordDataset(str(path)).as_numpy_iterator():
      feats = tf.train.Example.FromString(raw).features.feature
      out_records.append({k: (list(v.int64_list.value) if v.int64_list.value
                              else [x.decode() for x in v.bytes_list.value])
                          for k, v in feats.items()})
  return out_records


def _run(builder, out, tokenizers=None, **kwargs):
  kwargs = {'batch_size': 3, 'shard_size': 4, 'progress_bar': False, **kwargs}
  return precompute.run(builder=builder, tokenizers=tokenizers or fakes(), out=str(out),
                        **kwargs)


@pytest.fixture(scope='module')
def clean_run(corpus, tmp_path_factory):
  out = tmp_path_factory.mktemp('clean_tokens')
  return out, _run(corpus[0], out)


def test_writes_shards_index_and_tokens(clean_run):
  tmp_path, summary = clean_run
  assert summary['splits']['train'] == {'num_examples': 8, 'num_shards': 3,
                                        'skipped': {'non_finite': 1, 'too_short': 1}}
  assert (tmp_path / 'DONE').exists()
  files = sorted(p.name for p in (tmp_path / 'train').iterdir())
  assert files == ['index.json', *[f'shard-{k:05d}-of-00003.{ext}' for k in range(3)
                                   for ext in ('json', 'tfrecord')]]
  index = json.loads((tmp_path / 'train' / 'index.json').read_text())
  assert sum(s['examples'] for s in index['shards']) == 8 and len(index['shards']) == 3
  assert {r['item'] for r in index['skipped_clips']} == {'w1#r0', 'w2#r1'}
  info = json.loads((tmp_path / 'tokenizers.json').read_text())['tokenizers']
  assert info['codec']['frame_rate'] == 50.0 and info['semantic']['codebook_size'] == 64
  assert info['mulan'] == {'path': 'm', 'codebook_size': 64, 'num_levels': 12}

  records = _records(tmp_path, 'train')  # in TFDS order, which TFDS shuffled when building
  by_id = {f'w{i // 2}#r{i % 2}': i for i in range(10)}
  kept = [by_id[r['render_id'][0]] for r in records]
  assert sorted(kept) == [i for i in range(10) if i not in (2, NAN_CLIP)]
  codec, semantic = FakeCodec(), FakeSemantic()
  for i, r in zip(kept, records):
    n = LENGTHS[i]
    assert r['num_semantic_frames'] == [n // 960] and len(r['semantic']) == n // 960
    assert r['num_acoustic_frames'] == [-(-n // 480)] and r['acoustic_levels'] == [12]
    assert len(r['acoustic']) == 12 * -(-n // 480) and len(r['mulan_audio']) == 12
    alone = np.pad(_clip(i), (0, -n % SR))[None]
    np.testing.assert_array_equal(np.array(r['acoustic']).reshape(-1, 12),
                                  np.asarray(codec.encode(alone))[0, :-(-n // 480)])
    np.testing.assert_array_equal(r['semantic'], np.asarray(semantic.tokenize(alone))[0, :n // 960])
    assert r['mulan_text'] == ([-1] * 12 if i in CAPTIONS else list(FakeMuLan().text_tokens(
        [f'clip {i}'])[0]))
    assert r['caption'] == [CAPTIONS.get(i, f'clip {i}')]


def test_crash_leaves_no_half_shard_and_rerun_resumes(corpus, clean_run, tmp_path):
  builder, _ = corpus
  clean = clean_run[0]
  out = tmp_path / 'crashed'
  # Batches round up to the 8 fake devices, so a shard is one codec call (none if all its clips
  # are bad): the second call is in the second shard that has valid clips.
  work = [s['examples'] > 0 for split in ('train', 'validation')
          for s in json.loads((clean / split / 'index.json').read_text())['shards']]
  first_two = [k for k, w in enumerate(work) if w][:2]
  with pytest.raises(RuntimeError, match='simulated crash'):
    _run(builder, out, fakes(fail_on_call=2))
  visible = sorted(p.name for p in (out / 'train').iterdir())
  done = [f'shard-{k:05d}-of-00003.{ext}' for k in range(first_two[1])
          for ext in ('json', 'tfrecord')]
  assert visible == done
  assert not (out / 'DONE').exists()
  # A hard kill would leave its temp file behind; the rerun removes it.
  (out / 'train' / '.shard-00001-of-00003.tfrecord.tmp-999').write_bytes(b'half')
  resumed = fakes()
  _run(builder, out, resumed)
  assert resumed.codec.calls == sum(work[first_two[1]:])  # only the unfinished shards
  assert (out / 'DONE').exists()
  assert not [p for p in (out / 'train').iterdir() if p.name.startswith('.')]
  for split in ('train', 'validation'):
    assert _records(out, split) == _records(clean, split)
  again = fakes()
  _run(builder, out, again)
  assert again.codec.calls == 0  # everything was done


def test_resume_with_other_settings_is_refused(corpus, tmp_path):
  builder, _ = corpus
  _run(builder, tmp_path, splits=['validation'])
  with pytest.raises(precompute.ConfigError, match='shard_size'):
    _run(builder, tmp_path, splits=['validation'], shard_size=2)
  with pytest.raises(precompute.ConfigError, match='not in the dataset'):
    _run(builder, tmp_path / 'x', splits=['nope'])


def test_cli(corpus, tmp_path, monkeypatch, capsys):
  _, root = corpus
  tok = tmp_path / 'work'
  for sub in ('codec', 'semantic_tok', 'mulan_rvq'):
    (tok / sub).mkdir(parents=True)
  seen = {}

  def fake_load(paths, gin_files=None):
    seen.update(paths)
    return fakes()

  monkeypatch.setattr(precompute, 'load_tokenizers', fake_load)
  argv = ['--corpus', 'folder', '--tfds_name', 'precompute_test_corpus', '--data_dir', str(root),
          '--tokenizers', str(tok), '--out', str(tmp_path / 'tokens'), '--splits', 'validation',
          '--shard_size', '2', '--no_progress']
  assert precompute.main(argv) == 0
  assert seen == {'codec': str(tok / 'codec'), 'semantic': str(tok / 'semantic_tok'),
                  'mulan': str(tok / 'mulan_rvq')}
  assert 'validation: wrote 2 clips in 2 shards, skipped 1 (too_short 1)' in capsys.readouterr().out
  assert precompute.main(argv) == 0  # rerun: nothing left to do
  assert precompute.main(argv + ['--mulan', str(tmp_path / 'nope')]) == 2
  assert 'missing tokenizers: mulan' in capsys.readouterr().err
  assert precompute.main(['--corpus', 'synth']) == 2


def test_tokenizer_paths():
  paths = token_store.tokenizer_paths('/w', semantic='/x/sem')
  assert paths == {'codec': '/w/codec', 'semantic': '/x/sem', 'mulan': '/w/mulan_rvq'}
  with pytest.raises(ValueError, match='no codec tokenizer'):
    token_store.tokenizer_paths(None, semantic='/a', mulan='/b')


def test_load_codec_from_a_run_folder(tmp_path):
  """A tiny SoundStream (constant params) saved like a training run loads and encodes at 50 Hz."""
  import gin  # pylint: disable=g-import-not-at-top
  from musiclm_jax import checkpoints, train as train_lib  # pylint: disable=g-import-not-at-top
  import flax.linen as nn  # pylint: disable=g-import-not-at-top
  train_lib.parse_gin(['gin/models/codec/tiny.gin'], [
      'codec_disc.DiscriminatorConfig.stft_windows = ()',
      'codec_disc.DiscriminatorConfig.wave_scales = 0'])
  model = gin.query_parameter('%MODEL').scoped_configurable_fn()
  (tmp_path / 'config.gin').write_text(gin.config_str())
  gin.clear_config()
  shapes = nn.unbox(jax.eval_shape(model.init, jax.random.PRNGKey(0), {}))  # no init compile
  params, state = jax.tree.map(lambda a: np.full(a.shape, 0.01, a.dtype), shapes)
  saver = checkpoints.Checkpointer(str(tmp_path), async_save=False)
  saver.save(1, {'params': params, 'model_state': state}, {'step': 1})
  saver.close()
  codec = token_store.load_codec(str(tmp_path))
  assert (codec.frame_rate, codec.num_codebooks, codec.codebook_size) == (50.0, 12, 64)
  codes = np.asarray(codec.encode(np.zeros((1, 4800), np.float32)))
  assert codes.shape == (1, 10, 12) and codes.min() >= 0 and codes.max() < 64
  assert os.path.exists(tmp_path / 'config.gin')
