"""Melody agreement metrics (`musiclm_jax.melody.agreement`) on synthetic tones."""

import numpy as np
import pytest

from musiclm_jax.melody import agreement as ag

SR = 24000


def tone(midi: float, seconds: float = 1.0, sr: int = SR) -> np.ndarray:
  """A sine with a few harmonics at a MIDI pitch (float32 [seconds * sr])."""
  t = np.arange(int(seconds * sr)) / sr
  f = 440.0 * 2.0 ** ((midi - 69.0) / 12.0)
  return (0.5 * sum(np.sin(2 * np.pi * k * f * t) / k for k in (1, 2, 3))).astype(np.float32)


@pytest.fixture(scope='module')
def tracks():
  """pYIN tracks of a few 1 s tones (computed once: pYIN is the slow part)."""
  return {name: ag.pitch_track(tone(midi), SR)
          for name, midi in (('a3', 57), ('a3_up1', 58), ('a4', 69), ('c4', 60))}


def test_pitch_track_of_a_tone(tracks):
  f0, voiced = tracks['a3']
  assert f0.shape == voiced.shape == (1 + SR // 480,)  # 20 ms hop, centred frames
  assert voiced.mean() > 0.9
  assert np.nanmedian(f0) == pytest.approx(220.0, rel=0.01)
  assert np.all(np.isnan(f0[~voiced]))


def test_same_tone(tracks):
  f0, _ = tracks['a3']
  out = ag.agreement(f0, f0)
  assert out['raw_pitch_accuracy'] == out['raw_chroma_accuracy'] == 1.0
  assert out['chroma_similarity'] == pytest.approx(1.0)
  other, _ = ag.pitch_track(tone(57, seconds=1.0) * 0.3, SR)  # same pitch, other loudness
  assert ag.raw_pitch_accuracy(f0, other) > 0.9


def test_one_semitone_off(tracks):
  ref, est = tracks['a3'][0], tracks['a3_up1'][0]
  assert ag.raw_pitch_accuracy(ref, est) < 0.1
  assert ag.raw_chroma_accuracy(ref, est) < 0.1
  assert ag.chroma_similarity(ref, est) < 0.1


def test_an_octave_off(tracks):
  ref, est = tracks['a3'][0], tracks['a4'][0]
  assert ag.raw_pitch_accuracy(ref, est) < 0.1
  assert ag.raw_chroma_accuracy(ref, est) > 0.9
  assert ag.chroma_similarity(ref, est) > 0.9


def test_silence_and_unvoiced(tracks):
  f0, voiced = ag.pitch_track(np.zeros(SR, np.float32), SR)
  assert not voiced.any() and np.all(np.isnan(f0))
  ref = tracks['c4'][0]
  out = ag.agreement(ref, f0)  # melody asked for, nothing voiced came out: 0, not NaN
  assert out['raw_pitch_accuracy'] == 0.0 and out['raw_chroma_accuracy'] == 0.0
  assert out['chroma_similarity'] is None and out['est_voiced_frames'] == 0
  out = ag.agreement(f0, ref)  # nothing to follow: undefined
  assert out['raw_pitch_accuracy'] is None and out['ref_voiced_frames'] == 0
  assert ag.pitch_track(np.zeros(100, np.float32), SR)[1].shape == (1,)


def test_hand_cases_lengths_and_summary():
  ref = np.array([220.0, 220.0, np.nan, 440.0, 0.0])
  est = np.array([220.0 * 2 ** (40 / 1200), 440.0, 300.0, np.nan])  # shorter: truncated
  assert ag.raw_pitch_accuracy(ref, est) == pytest.approx(1 / 3)  # 40 cents ok, octave, unvoiced
  assert ag.raw_chroma_accuracy(ref, est) == pytest.approx(2 / 3)
  assert ag.chroma_histogram(ag.midi_to_hz(np.array([60, 61, 72, 0])))[:3].tolist() == [2, 1, 0]
  assert ag.top_pitch_class_share(ag.midi_to_hz(np.array([60, 72, 61, 0]))) == pytest.approx(2 / 3)
  assert ag.top_pitch_class_share(np.full(3, np.nan)) is None
  s = ag.summarize([0.5, None, 1.0])
  assert (s['mean'], s['n'], s['undefined']) == (0.75, 2, 1)
  assert ag.summarize([None])['mean'] is None


def test_generation_scoring_and_report(tmp_path, capsys):
  """`evaluate_generation`'s scoring and table on tones (no bundle): rows, a failed output,
  a silent signal; and a missing bundle is a one-line error with exit 2."""
  from musiclm_jax.melody import evaluate_generation as eg  # pylint: disable=g-import-not-at-top
  clip = {'render_id': 'r', 'work_id': 'w', 'caption': 'c', 'hum': tone(57, 1.0),
          'melody_pitch': np.full(25, 45, np.uint8)}  # the score an octave below the hum
  signals = {'generated_hum': [[None]], 'generated_none': [[tone(58, 1.0)]],
             'source': [[tone(69, 1.0)]], 'codec': [[np.zeros(SR, np.float32)]]}
  r = eg.score([clip], ['hum'], signals, SR, [1.0])
  rows = r['rows']['hum']
  assert rows['generated_hum']['raw_pitch_accuracy']['undefined'] == 1  # failed: no NaN
  assert rows['generated_none']['raw_chroma_accuracy']['mean'] < 0.1
  assert rows['source']['raw_chroma_accuracy']['mean'] > 0.9
  assert rows['codec']['raw_pitch_accuracy']['mean'] == 0.0  # silence: 0, chroma undefined
  assert rows['codec']['chroma_similarity']['mean'] is None
  assert r['tracker']['hum']['raw_chroma_accuracy']['mean'] > 0.9
  assert r['signal_stats']['codec']['voiced_fraction']['mean'] == 0.0
  r.update(num_clips=1, num_samples=1, seed=0, data={'split': 'test'}, duration=1.0,
           generation={'pieces': 2, 'seconds': 1.0, 'failed': [{'id': 'c00_s0'}]},
           wall_seconds=2.0)
  table = eg.markdown(r, command='cmd')
  assert 'generated with the hum | 0 | - (n 0, 1 undefined)' in table and '1 failed' in table
  capsys.readouterr()
  assert eg.main(['--bundle', str(tmp_path / 'none'), '--data_dir', str(tmp_path),
                  '--out', str(tmp_path / 'out')]) == 2
  err = capsys.readouterr().err.strip().splitlines()
  assert len(err) == 1 and err[0].startswith('error: ') and not (tmp_path / 'out').exists()
