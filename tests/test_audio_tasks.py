"""seqio audio tasks, preprocessors and the trainer input functions, on a tiny fake corpus."""

import re

import numpy as np
import pytest

tf = pytest.importorskip('tensorflow')
tfds = pytest.importorskip('tensorflow_datasets')
seqio = pytest.importorskip('seqio')
spm = pytest.importorskip('sentencepiece')

from musiclm_jax.data import inputs  # noqa: E402
from musiclm_jax.data import preprocessors as prep  # noqa: E402
from tasks import audio_tasks  # noqa: E402

NUM = 24
N = 1000           # audio feature length (samples)
L = 8              # text_tokens length
RAMP = 4096.0      # audio[t] = 0.01 + t / RAMP, so a window's slope reveals its gain
GAIN_DB = (-6.0, 0.0)
PREFIX = 'test_'
LENGTHS = {'audio': N, 'text_tokens': L}


def _length(i: int) -> int:
  return 400 + 10 * i if i % 3 == 0 else 1500 + 37 * i  # every third clip is shorter than N


class AudioTasksTestCorpus(tfds.core.GeneratorBasedBuilder, skip_registration=True):
  """Same audio/caption/aspects features as the project's builders; NUM clips in `train`."""
  VERSION = tfds.core.Version('1.0.0')
  BUILDER_CONFIGS = [tfds.core.BuilderConfig(name='small')]

  def _info(self):
    return tfds.core.DatasetInfo(builder=self, features=tfds.features.FeaturesDict({
        'audio': tfds.features.Audio(shape=(None,), dtype=np.float32, sample_rate=24000),
        'caption': tfds.features.Text(),
        'aspects': tfds.features.Sequence(tfds.features.Text()),
        'hum': tfds.features.Audio(shape=(None,), dtype=np.float32, sample_rate=24000),
        'work_id': tfds.features.Text(),
    }))

  def _split_generators(self, dl_manager):
    del dl_manager
    return {'train': self._generate_examples()}

  def _generate_examples(self):
    for i in range(NUM):
      yield i, {'audio': (0.01 + np.arange(_length(i)) / RAMP).astype(np.float32),
                'caption': f'clip {i} caption', 'aspects': [f'x{i}', f'y{i}', f'z{i}'],
                'hum': np.zeros(10, np.float32), 'work_id': f'w{i}'}


@pytest.fixture(scope='module')
def corpus(tmp_path_factory):
  root = tmp_path_factory.mktemp('audio_tasks')
  builder = AudioTasksTestCorpus(config='small', data_dir=str(root))
  builder.download_and_prepare(
      download_config=tfds.download.DownloadConfig(try_download_gcs=False))
  spm.SentencePieceTrainer.train(
      sentence_iterator=iter(['clip caption', 'x y z', 'a calm piano piece'] * 10),
      model_prefix=str(root / 'spm'), vocab_size=24, pad_id=0, eos_id=1, unk_id=2, bos_id=-1,
      hard_vocab_limit=False, minloglevel=2)
  fake = 'audio_tasks_test_corpus/small:1.*.*'
  names = audio_tasks.register_audio_tasks(
      str(root), str(root / 'spm.model'), prefix=PREFIX, gain_db=GAIN_DB, shuffle_buffer_size=16,
      sources={'synth_audio': fake, 'musiccaps_audio': fake})
  assert names == ['test_synth_audio', 'test_musiccaps_audio', 'test_all_audio']
  return root


def _epoch(name='test_synth_audio', seed=0, shard_info=None, shuffle=False):
  ds = seqio.get_mixture_or_task(name).get_dataset(
      LENGTHS, split='train', shuffle=shuffle, seed=seed, shard_info=shard_info, num_epochs=1)
  return list(ds.as_numpy_iterator())


def _clip_id(ex) -> int:
  return int(re.search(r'\d+', ex['caption'].decode()).group())


def test_default_registration_is_idempotent():
  import tasks  # noqa: F401  # pylint: disable=g-import-not-at-top,unused-import
  audio_tasks.register_audio_tasks()  # again: replaces, no duplicate error
  registered = set(seqio.TaskRegistry.names()) | set(seqio.MixtureRegistry.names())
  assert {'synth_audio', 'musiccaps_audio', 'folder_audio', 'all_audio'} <= registered


def test_output_shapes_and_dtypes(corpus):
  examples = _epoch()
  assert len(examples) == NUM
  vocab = seqio.SentencePieceVocabulary(str(corpus / 'spm.model'))
  for ex in examples:
    assert ex['audio'].shape == (N,) and ex['audio'].dtype == np.float32
    assert ex['text_tokens'].shape == (L,) and ex['text_tokens'].dtype == np.int32
    ids = [t for t in ex['text_tokens'] if t != 0]
    assert ids[-1] == 1  # EOS, then padding
    full = vocab.encode(ex['caption'].decode())
    assert ids[:-1] == list(full[:L - 1])
  assert set(examples[0]) == {'audio', 'text_tokens', 'caption'}  # no hum, work_id, aspects


def test_crop_lengths_and_gain_range(corpus):
  del corpus
  gains = []
  for ex in _epoch():
    i, wav = _clip_id(ex), ex['audio']
    nonzero = int(np.count_nonzero(wav))
    assert nonzero == min(N, _length(i))  # short clips are zero-padded at the end
    assert np.all(wav[nonzero:] == 0)
    slope = np.diff(wav[:nonzero]).astype(np.float64)
    np.testing.assert_allclose(slope, slope.mean(), rtol=1e-2, atol=1e-6)  # one window
    gain = slope.mean() * RAMP
    if _length(i) < N:  # the whole clip: its first sample is 0.01 * gain
      np.testing.assert_allclose(wav[0], 0.01 * gain, rtol=1e-3)
    gains.append(20 * np.log10(gain))
  gains = np.array(gains)
  assert np.all(gains >= GAIN_DB[0] - 0.01) and np.all(gains <= GAIN_DB[1] + 0.01)
  assert gains.std() > 0.5  # jittered, not constant


def test_caption_choice_produces_both_kinds(corpus):
  del corpus
  kinds = set()
  for ex in _epoch():
    i, text = _clip_id(ex), ex['caption'].decode()
    if text == f'clip {i} caption':
      kinds.add('caption')
    else:
      parts = text.split(', ')
      assert parts and len(set(parts)) == len(parts)
      assert set(parts) <= {f'x{i}', f'y{i}', f'z{i}'}
      kinds.add('aspects')
  assert kinds == {'caption', 'aspects'}


def test_pick_text_fallbacks():
  seed = tf.constant([3, 4], tf.int64)
  aspects = tf.constant(['a', 'b'])
  assert prep.pick_text(tf.constant('cap'), aspects, seed, caption_prob=1.0).numpy() == b'cap'
  assert prep.pick_text(tf.constant('cap'), tf.constant([], tf.string), seed,
                        caption_prob=0.0).numpy() == b'cap'  # no aspects -> caption
  got = prep.pick_text(tf.constant(' '), aspects, seed, caption_prob=1.0).numpy()
  assert got in (b'a', b'b', b'a, b', b'b, a')  # empty caption -> aspects


def test_deterministic_given_seed(corpus):
  del corpus
  def first(seed):
    it = inputs.seqio_input_fn(mixture_or_task_name='test_synth_audio', feature_lengths=LENGTHS,
                               batch_size=4, seed=seed)
    return [next(it) for _ in range(3)]
  a, b, c = first(7), first(7), first(8)
  for x, y in zip(a, b):
    assert set(x) == {'audio', 'text_tokens'}
    assert x['audio'].shape == (4, N) and x['text_tokens'].shape == (4, L)
    np.testing.assert_array_equal(x['audio'], y['audio'])
    np.testing.assert_array_equal(x['text_tokens'], y['text_tokens'])
  assert not np.array_equal(a[0]['audio'], c[0]['audio'])


def test_shards_are_disjoint(corpus):
  del corpus
  ids = [{_clip_id(ex) for ex in _epoch(shard_info=seqio.ShardInfo(k, 2), shuffle=True)}
         for k in range(2)]
  assert not ids[0] & ids[1]
  assert ids[0] | ids[1] == set(range(NUM))


@pytest.mark.parametrize('name', ['test_all_audio', 'tfds'])
def test_resume_from_start_index(corpus, name):
  def batches(start, count):
    common = dict(batch_size=5, seed=3, start_index=start, shard_index=1, num_shards=2)
    if name == 'tfds':
      it = inputs.tfds_audio_input_fn(name='audio_tasks_test_corpus/small', data_dir=str(corpus),
                                      clip_samples=N, gain_db=GAIN_DB,
                                      shuffle_buffer_size=16, **common)
    else:
      it = inputs.seqio_input_fn(mixture_or_task_name=name, feature_lengths=LENGTHS, **common)
    return [next(it) for _ in range(count)]
  k = 4  # 4 batches of 5 on a 12-clip shard: the resumed stream starts in the second epoch
  whole, resumed = batches(0, k + 2), batches(k, 2)
  for x, y in zip(whole[k:], resumed):
    assert x.keys() == y.keys()
    for key in x:
      np.testing.assert_array_equal(x[key], y[key])


def test_int16_audio_is_scaled():
  wav = prep.to_float_audio(tf.constant([-32768, 0, 16384], tf.int16)).numpy()
  np.testing.assert_array_equal(wav, np.array([-1.0, 0.0, 0.5], np.float32))


def test_unprepared_data_is_a_clear_error(tmp_path):
  audio_tasks.register_audio_tasks(str(tmp_path), str(tmp_path / 'spm.model'), prefix='empty_')
  message = r'empty_all_audio: no prepared split .*empty_synth_audio: TFDS synth/small'
  with pytest.raises(ValueError, match=message):
    inputs.seqio_input_fn(mixture_or_task_name='empty_all_audio', feature_lengths=LENGTHS,
                          batch_size=2, seed=0)
  with pytest.raises(ValueError, match='no prepared split'):
    inputs.tfds_audio_input_fn(name='synth/small', data_dir=str(tmp_path), batch_size=2, seed=0)
