"""Token evaluation: labels, NMI, agreement, the log-mel baseline and `evaluate` on fake streams."""

import numpy as np
import pytest

from musiclm_jax.semantic import evaluate_tokens as ev
from musiclm_jax.semantic import token_metrics as tm

SR = 24000
HOP = 960  # samples per 25 Hz frame


def test_nmi_hand_case():
  a, b = [0, 0, 0, 1], [0, 0, 1, 1]
  ha = -(0.75 * np.log(0.75) + 0.25 * np.log(0.25))
  hb = np.log(2)
  # joint: (0,0) 1/2, (0,1) 1/4, (1,1) 1/4
  mi = 0.5 * np.log(0.5 / (0.75 * 0.5)) + 0.25 * np.log(0.25 / (0.75 * 0.5)) \
      + 0.25 * np.log(0.25 / (0.25 * 0.5))
  assert tm.entropy(a) == pytest.approx(ha)
  assert tm.mutual_information(a, b) == pytest.approx(mi)
  assert tm.nmi(a, b) == pytest.approx(mi / (0.5 * (ha + hb)))
  assert tm.nmi([3, 3, 7, 7], [1, 1, 0, 0]) == pytest.approx(1.0)  # a relabeling
  assert tm.nmi([0, 0, 1, 1], [0, 1, 0, 1]) == pytest.approx(0.0)  # independent
  assert tm.nmi([5, 5, 5], [1, 1, 1]) == 1.0 and tm.nmi([5, 5, 5], [0, 1, 2]) == 0.0
  with pytest.raises(ValueError, match='length'):
    tm.mutual_information([0, 1], [0, 1, 2])


def test_nmi_matches_sklearn():
  metrics = pytest.importorskip('sklearn.metrics')
  rng = np.random.default_rng(0)
  for k, j in ((4, 6), (64, 300), (2, 1)):
    a = rng.integers(0, k, 3000)
    b = (a * 7 + rng.integers(0, j, 3000)) % max(j, 1)  # partly dependent
    assert tm.nmi(a, b) == pytest.approx(metrics.normalized_mutual_info_score(a, b), abs=1e-9)


def test_frame_labels():
  pcs = np.zeros((3, 12), np.uint8)
  pcs[0, [0, 4, 7]] = 1  # C major triad
  pcs[2, 11] = 1
  np.testing.assert_array_equal(tm.pitch_class_set_ids(pcs), [1 + 16 + 128, 0, 2048])
  np.testing.assert_array_equal(tm.melody_pitch_classes(np.array([60, 0, 73], np.uint8)),
                                [0, tm.REST, 1])
  assert tm.instrument_key([40, 0, 40, 128]) == '0+40+128'
  ids = {}
  a = tm.clip_labels({'pitch_classes': pcs, 'melody_pitch': [60, 0, 73], 'programs': [40]}, ids)
  b = tm.clip_labels({'pitch_classes': pcs, 'melody_pitch': [60, 0, 73], 'programs': [0]}, ids)
  c = tm.clip_labels({'pitch_classes': pcs, 'melody_pitch': [1, 2, 3], 'programs': [40, 40]}, ids)
  assert list(a['instrument']) == [0] * 3 and list(b['instrument']) == [1] * 3
  assert list(c['instrument']) == [0] * 3 and ids == {'40': 0, '0': 1}
  with pytest.raises(ValueError, match='frames'):
    tm.clip_labels({'pitch_classes': pcs, 'melody_pitch': [60], 'programs': [0]}, ids)


def test_conditional_nmi():
  g = np.array([0, 0, 0, 0, 1, 1, 1, 1])
  y = np.array([0, 1, 0, 1, 2, 3, 2, 3])  # within each g, y alternates
  assert tm.conditional_nmi(y, y, g) == pytest.approx(1.0)
  assert tm.conditional_nmi(g, y, g) == pytest.approx(0.0)  # t only knows g
  assert tm.nmi(g, y) > 0.5  # ... which the plain NMI rewards
  t = np.array([0, 1, 0, 0, 5, 6, 5, 6])  # right in g=1, half right in g=0
  h = np.log(2)
  mi0 = tm.mutual_information(t[:4], y[:4])
  assert tm.conditional_nmi(t, y, g) == pytest.approx((0.5 * mi0 + 0.5 * h) / h)
  assert np.isnan(tm.conditional_nmi(t, g, g))  # g leaves nothing to explain
  rng = np.random.default_rng(0)
  g, y = np.repeat(np.arange(4), 50), rng.integers(0, 5, 200)
  chance = tm.conditional_nmi_chance(y, y, g, seed=1)
  assert 0.0 < chance < 0.2 and chance == tm.conditional_nmi_chance(y, y, g, seed=1)


def test_agreement():
  tokens = [np.array([1, 2, 3, 4]), np.array([1, 2, 0, 0]), np.array([9, 9, 9]),
            np.array([9, 8, 9, 7])]
  agree, pairs = tm.agreement(tokens, ['g', 'g', 'h', 'h'])
  assert pairs == 2 and agree == pytest.approx((2 + 2) / (4 + 3))
  assert np.isnan(tm.agreement(tokens, ['a', 'b', 'c', 'd'])[0])
  assert tm.chance_agreement(np.array([0, 0, 1, 1])) == pytest.approx(0.5)


def _clip(notes, timbre, group):
  """A clip of 25 Hz frames, each a (harmonic) tone of a MIDI note; timbre sets the gain."""
  t = np.arange(HOP) / SR
  wav, pcs = [], np.zeros((len(notes), 12), np.uint8)
  for i, note in enumerate(notes):
    f = 440.0 * 2 ** ((note - 69) / 12)
    tone = np.sin(2 * np.pi * f * t) + timbre * 0.5 * np.sin(2 * np.pi * 2 * f * t)
    wav.append((0.1 + 0.2 * timbre) * tone)
    pcs[i, note % 12] = 1
  return {'audio': np.concatenate(wav).astype(np.float32), 'pitch_classes': pcs,
          'melody_pitch': np.asarray(notes, np.uint8), 'programs': [timbre],
          'melody_group': group}


class _PitchStream:
  """Tokens = pitch class of the loudest FFT bin of each frame (a 'semantic' tokenizer)."""
  cardinality = 12

  def tokenize(self, wav):
    b, n = wav.shape
    frames = wav[:, :n // HOP * HOP].reshape(b, n // HOP, HOP)
    spec = np.abs(np.fft.rfft(frames, n=16 * HOP, axis=-1))  # zero-padded: 1.6 Hz bins
    freq = np.maximum(np.argmax(spec, axis=-1) * SR / (16 * HOP), 1.0)
    return np.round(12 * np.log2(freq / 440.0) + 69).astype(int) % 12


class _LoudnessStream:
  """Tokens = quantised frame RMS (an 'acoustic' tokenizer that hears gain only)."""
  cardinality = 8

  def tokenize(self, wav):
    b, n = wav.shape
    rms = np.sqrt((wav[:, :n // HOP * HOP].reshape(b, n // HOP, HOP) ** 2).mean(-1))
    return np.minimum((rms * 20).astype(int), 7)


def test_evaluate_separates_pitch_from_timbre():
  rng = np.random.default_rng(1)
  clips = []
  for g in range(4):
    notes = rng.integers(55, 80, 30)
    clips += [_clip(notes, timbre, f'g{g}') for timbre in (0, 1, 2)]
  clips[0]['audio'] = clips[0]['audio'][:-HOP // 2]  # a short clip: its last frame is dropped
  lines = []
  report = ev.evaluate(clips, {'pitch': _PitchStream(), 'loudness': _LoudnessStream()},
                       batch_size=4, seed=0, log=lines.append)
  assert report['clips'] == 12 and report['frames'] == 12 * 30 - 1 and len(lines) == 2
  s = report['streams']
  assert list(s) == ['pitch', 'loudness', 'pitch_shuffled', 'loudness_shuffled']
  assert s['pitch']['nmi']['melody_pitch_class'] > 0.95
  assert s['pitch']['nmi']['pitch_class_set'] > 0.95
  assert s['pitch']['nmi']['instrument'] < 0.05
  assert s['loudness']['nmi']['instrument'] > 0.8 > s['loudness']['nmi']['pitch_class_set']
  assert s['pitch_shuffled']['nmi']['melody_pitch_class'] < 0.1
  assert s['pitch']['agreement'] > 0.95 and s['pitch']['agreement_pairs'] == 12
  assert s['loudness']['agreement'] < 0.1
  assert s['pitch_shuffled']['agreement'] < 0.3
  assert s['pitch']['tokens_used'] == 12 and s['pitch']['cardinality'] == 12
  assert 1 < s['pitch']['tokens_per_clip'] <= 12
  assert s['pitch']['agreement_kappa'] > 0.9 and abs(s['pitch_shuffled']['agreement_kappa']) < 0.1
  cond = {k: v['conditional_nmi'] for k, v in s.items()}
  assert cond['pitch']['melody_pitch_class|clip'] > 0.9 and cond['pitch']['clip|melody_group'] < 0.1
  assert cond['loudness']['clip|melody_group'] > 0.5 > cond['loudness']['pitch_class_set|clip']
  chance = {k: v['conditional_nmi_chance'] for k, v in s.items()}
  # 30 frames a clip: the plug-in estimate is biased; the within-clip permutation shows how much.
  assert chance['pitch']['melody_pitch_class|clip'] < 0.8 < cond['pitch']['melody_pitch_class|clip']
  assert abs(cond['pitch_shuffled']['melody_pitch_class|clip']
             - chance['pitch_shuffled']['melody_pitch_class|clip']) < 0.1
  assert ev.format_conditional_table(report).count('\n') == 5
  assert report['labels']['instrument']['distinct'] == 3
  assert report['label_nmi']['pitch_class_set~melody_pitch_class'] == pytest.approx(1.0)
  assert report['label_nmi']['instrument~clip'] > 0.5
  table = ev.format_table(report)
  assert table.count('\n') == 5 and '| pitch_shuffled |' in table
  if s['pitch']['ami']['instrument'] is not None:  # scikit-learn installed
    assert s['pitch']['ami']['melody_pitch_class'] > 0.9
    assert abs(s['pitch_shuffled']['ami']['melody_pitch_class']) < 0.05
    assert 'AMI pitch-class set' in ev.format_table(report, 'ami')
  again = ev.evaluate(clips, {'pitch': _PitchStream()}, batch_size=5, seed=0, log=lambda s: 0)
  assert again['streams']['pitch'] == s['pitch']  # batching does not matter


def test_logmel_kmeans_baseline():
  rng = np.random.default_rng(0)
  clips = [_clip(rng.integers(55, 80, 25), int(t), 'g') for t in rng.integers(0, 3, 6)]
  batches = [np.stack([c['audio'] for c in clips[i:i + 2]]) for i in range(0, 6, 2)]
  lines = []
  base, fit = tm.fit_logmel_kmeans(iter(batches), num_clusters=8, seed=3, num_iters=5,
                                   batch_size=None, max_frames=120, log=lines.append)
  assert base.cardinality == 8 and base.centroids.shape == (8, 128) and len(lines) == 2
  assert np.all(np.diff(fit.inertia) <= 1e-6 * np.asarray(fit.inertia[:-1]))
  tokens = base.tokenize(batches[0])
  assert tokens.shape == (2, 25) and 0 <= tokens.min() and tokens.max() < 8
  again, _ = tm.fit_logmel_kmeans(iter(batches), num_clusters=8, seed=3, num_iters=5,
                                  batch_size=None, max_frames=120, log=lambda s: 0)
  np.testing.assert_array_equal(again.centroids, base.centroids)
  with pytest.raises(ValueError, match='fewer than'):
    tm.fit_logmel_kmeans(iter(batches[:1]), num_clusters=64, max_frames=40, log=lambda s: 0)


def test_reader_yields_labels_and_skips_bad_audio(tmp_path):
  tfds = pytest.importorskip('tensorflow_datasets')
  from musiclm_jax.data import token_eval_reader  # pylint: disable=import-outside-toplevel

  class TokenEvalReaderCorpus(tfds.core.GeneratorBasedBuilder):  # registered by its name
    """Three synth-like clips; clip 1 holds a NaN."""
    VERSION = tfds.core.Version('1.0.0')

    def _info(self):
      f = tfds.features
      return tfds.core.DatasetInfo(builder=self, features=f.FeaturesDict({
          'audio': f.Audio(shape=(None,), dtype=np.float32, sample_rate=SR),
          'hum': f.Audio(shape=(None,), dtype=np.float32, sample_rate=SR),
          'pitch_classes': f.Tensor(shape=(None, 12), dtype=np.uint8),
          'melody_pitch': f.Tensor(shape=(None,), dtype=np.uint8),
          'programs': f.Tensor(shape=(None,), dtype=np.int32),
          'instruments': f.Sequence(f.Text()), 'work_id': f.Text(),
          'melody_group': f.Text(), 'render_id': f.Text()}))

    def _split_generators(self, dl_manager):
      return {'test': self._generate_examples()}

    def _generate_examples(self):
      for i in range(3):
        clip = _clip([60 + i, 62, 64], i, f'g{i}')
        if i == 1:
          clip['audio'][5] = np.nan
        yield i, {'audio': clip['audio'], 'hum': clip['audio'],
                  'pitch_classes': clip['pitch_classes'], 'melody_pitch': clip['melody_pitch'],
                  'programs': np.asarray([40 + i, 0], np.int32),
                  'instruments': ['violin', 'piano'], 'work_id': f'w{i}',
                  'melody_group': f'g{i}', 'render_id': f'w{i}#r0'}

  TokenEvalReaderCorpus(data_dir=str(tmp_path)).download_and_prepare()
  counts = {}
  clips = list(token_eval_reader.read_labeled_clips(
      str(tmp_path), 'test', dataset='token_eval_reader_corpus', counts=counts))
  assert counts == {'examples': 2, 'skipped_bad_audio': 1}
  clips.sort(key=lambda c: c['render_id'])  # TFDS orders examples by a hash of the key
  assert [c['render_id'] for c in clips] == ['w0#r0', 'w2#r0']
  c = clips[1]
  assert c['audio'].dtype == np.float32 and c['audio'].shape == (3 * HOP,)
  assert c['pitch_classes'].shape == (3, 12) and list(c['melody_pitch']) == [62, 62, 64]
  assert list(c['programs']) == [42, 0] and c['instruments'] == ['violin', 'piano']
  assert 'hum' not in c and c['melody_group'] == 'g2'
  bare = next(token_eval_reader.read_labeled_clips(
      str(tmp_path), 'test', dataset='token_eval_reader_corpus', with_labels=False))
  assert set(bare) == {'audio', 'work_id', 'melody_group', 'render_id'}
  with pytest.raises(ValueError, match="no prepared split 'train'"):
    next(token_eval_reader.read_labeled_clips(str(tmp_path), 'train',
                                              dataset='token_eval_reader_corpus'))
