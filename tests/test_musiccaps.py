"""MusicCaps: CSV parsing (the real table and malformed rows) and the TFDS builder."""

import csv

import numpy as np
import pytest
import tensorflow_datasets as tfds

from musiclm_jax import audio
from musiclm_jax.data import musiccaps
from musiclm_jax.data.skips import SkipReport

SR = 24000
REAL_CSV = musiccaps.default_csv_path()
needs_real_csv = pytest.mark.skipif(not REAL_CSV.is_file(), reason=f'{REAL_CSV} not present')
MULTILINE_YTIDS = {'3OUNEL8XaR0', 'JC41M7RPSec', 'UfZP677y3Dc', 'ocCIB2bPq_Y', 'yl6LJDi0gi0'}


def _row(ytid, start=30, *, eval_=False, balanced=False, caption=None, aspects="['piano', 'calm']",
         labels='/m/04rlf,/m/05r5c', author='4'):
  return [ytid, str(start), str(start + 10), labels, aspects, caption or f'Caption of {ytid}.',
          author, str(balanced), str(eval_)]


def _write_csv(path, rows, header=musiccaps.COLUMNS):
  with open(path, 'w', newline='', encoding='utf-8') as f:
    writer = csv.writer(f)
    writer.writerow(header)
    writer.writerows(rows)
  return path


def _tone(seconds, freq=330.0, amp=0.3, sr=SR):
  t = np.arange(int(round(seconds * sr))) / sr
  return (amp * np.sin(2 * np.pi * freq * t)).astype(np.float32)


def _read(builder, split):
  return list(tfds.as_numpy(builder.as_dataset(split=split, shuffle_files=False)))


@needs_real_csv
def test_reads_every_row_of_the_real_table():
  skips = SkipReport()
  rows = musiccaps.read_musiccaps_csv(REAL_CSV, skips=skips)
  assert len(rows) == 5521 and len(skips) == 0
  assert len({r.ytid for r in rows}) == 5521
  assert sum(r.is_audioset_eval for r in rows) == 2858
  assert sum(r.is_balanced_subset for r in rows) == 1000
  assert all(r.end_s - r.start_s == 10 for r in rows)
  multiline = {r.ytid: r for r in rows if '\n' in r.caption}
  assert set(multiline) == MULTILINE_YTIDS
  for row in multiline.values():  # the newline did not split the row: later fields are intact
    assert row.aspects and row.audioset_labels and 0 <= row.author_id <= 9
  first = rows[0]
  assert first.ytid == '-0Gj8-vB1q4' and first.line == 2 and first.start_s == 30.0
  assert first.aspects[:2] == ('low quality', 'sustained strings melody')
  assert first.audioset_labels == ('/m/0140xf', '/m/02cjck', '/m/04rlf')
  assert any("children's song" in r.aspects for r in rows)  # double-quoted literal items


def test_malformed_rows_are_skipped_with_file_and_line(tmp_path, caplog):
  path = tmp_path / 'mc.csv'
  rows = [
      _row('good1', caption='Line one\nline two.'),  # lines 2-3
      _row('badAspects', aspects="['unclosed"),  # line 4
      _row('good2')[:7],  # line 5: 7 fields
      _row('badBool')[:-1] + ['maybe'],  # line 6
      _row('good1'),  # line 7: duplicate
      _row('bad/ytid'),  # line 8
      _row('badTime', start=-5),  # line 9
      _row('good3', eval_=True, balanced=True),  # line 10
  ]
  _write_csv(path, rows)
  skips = SkipReport()
  got = musiccaps.read_musiccaps_csv(path, skips=skips)
  assert [r.ytid for r in got] == ['good1', 'good3']
  assert got[0].caption == 'Line one\nline two.' and got[1].line == 10
  assert [r['item'] for r in skips.records] == [f'{path}:{n}' for n in (4, 5, 6, 7, 8, 9)]
  reasons = [r['reason'] for r in skips.records]
  assert 'aspect_list' in reasons[0] and 'expected 9 fields, got 7' in reasons[1]
  assert 'is_audioset_eval' in reasons[2] and 'duplicate' in reasons[3]
  assert skips.counts() == {'malformed row': 6}
  assert f'{path}:4: malformed row' in caplog.text


def test_unusable_csv_is_one_line_error(tmp_path):
  with pytest.raises(musiccaps.MusicCapsError, match='missing.csv: cannot read'):
    musiccaps.read_musiccaps_csv(tmp_path / 'missing.csv')
  bad = tmp_path / 'bad.csv'
  bad.write_text('a,b,c\n1,2,3\n')
  with pytest.raises(musiccaps.MusicCapsError, match=r'bad.csv:1: not a MusicCaps CSV') as e:
    musiccaps.read_musiccaps_csv(bad)
  assert '\n' not in str(e.value)


@pytest.fixture(scope='module')
def tiny(tmp_path_factory):
  """A 7-row CSV and an audio folder: clips, one whole video, rows without audio, a bad file."""
  root = tmp_path_factory.mktemp('musiccaps')
  csv_path = _write_csv(root / 'mc.csv', [
      _row('clipA', start=30),  # train, 10 s clip at 24 kHz
      _row('clipB', start=0),  # train, 10 s clip at 44.1 kHz flac (resampled)
      _row('video', start=12, eval_=True, balanced=True),  # eval, 30 s whole video -> cut
      _row('clipC', start=40, eval_=True),  # eval, clip in a subfolder
      _row('noAudio1'),  # train, no file
      _row('noAudio2', eval_=True),  # eval, no file
      _row('broken', eval_=True),  # eval, corrupt file
  ])
  clips = root / 'clips'
  audio.write_wav(clips / 'clipA.wav', _tone(10.0))
  audio.write_wav(clips / 'clipB.flac', _tone(10.0, sr=44100), sample_rate=44100)
  audio.write_wav(clips / 'nested' / 'clipC.wav', _tone(10.0, freq=500))
  video = _tone(30.0, amp=0.05)
  video[12 * SR:22 * SR] *= 10  # the captioned segment is 10x louder
  audio.write_wav(clips / 'video.wav', video)
  (clips / 'broken.wav').write_bytes(b'RIFF\x00\x00\x00\x00WAVEjunk' + bytes(200))
  audio.write_wav(clips / 'unrelated.wav', _tone(10.0))  # matches no row: ignored
  builder = musiccaps.MusicCaps(csv_path=csv_path, audio_dir=clips, data_dir=root / 'tfds')
  builder.download_and_prepare()
  return builder, csv_path, root


def test_builder_cuts_whole_videos_and_reports_rows_without_audio(tiny):
  builder, _, _ = tiny
  assert {r['item']: r['reason'].split(':')[0] for r in builder.skipped} == {
      'noAudio1': 'no audio', 'noAudio2': 'no audio', 'broken': 'unreadable'}
  assert builder.summary['clips'] == 4
  assert builder.summary['hours'] == pytest.approx(40 / 3600)
  train = {ex['ytid'].decode(): ex for ex in _read(builder, 'train')}
  evals = {ex['ytid'].decode(): ex for ex in _read(builder, 'eval')}
  balanced = [ex['ytid'].decode() for ex in _read(builder, 'balanced')]
  assert set(train) == {'clipA', 'clipB'} and set(evals) == {'video', 'clipC'}
  assert balanced == ['video']
  for ex in [*train.values(), *evals.values()]:
    assert ex['audio'].dtype == np.int16 and ex['audio'].shape == (10 * SR,)
  cut = evals['video']['audio'] / 32767
  assert np.sqrt(np.mean(cut ** 2)) == pytest.approx(0.5 / np.sqrt(2), rel=0.02)  # loud part only
  ex = evals['video']
  assert ex['start_s'] == 12 and ex['end_s'] == 22 and bool(ex['is_balanced_subset'])
  assert [a.decode() for a in ex['aspects']] == ['piano', 'calm']
  assert [l.decode() for l in ex['audioset_labels']] == ['/m/04rlf', '/m/05r5c']
  assert ex['caption'].decode() == 'Caption of video.' and ex['author_id'] == 4
  resampled = train['clipB']['audio'] / 32767
  assert np.sqrt(np.mean(resampled ** 2)) == pytest.approx(0.3 / np.sqrt(2), rel=0.02)


def test_captions_only_needs_no_audio(tiny):
  _, csv_path, root = tiny
  builder = musiccaps.MusicCaps(config='captions_only', csv_path=csv_path, data_dir=root / 'tfds')
  builder.download_and_prepare()
  assert 'audio' not in builder.info.features
  assert builder.skipped == []
  assert builder.info.splits['train'].num_examples == 3
  assert builder.info.splits['eval'].num_examples == 4
  ex = _read(builder, 'balanced')[0]
  assert ex['ytid'] == b'video' and 'audio' not in ex


def test_default_config_needs_an_audio_folder(tmp_path, tiny):
  _, csv_path, _ = tiny
  builder = musiccaps.MusicCaps(csv_path=csv_path, data_dir=tmp_path)
  with pytest.raises(musiccaps.MusicCapsError, match="captions_only"):
    builder.download_and_prepare()


@pytest.mark.slow
@needs_real_csv
def test_captions_only_on_the_real_table(tmp_path):
  builder = musiccaps.MusicCaps(config='captions_only', data_dir=tmp_path)
  builder.download_and_prepare()
  splits = {k: v.num_examples for k, v in builder.info.splits.items()}
  assert splits == {'train': 2663, 'eval': 2858, 'balanced': 1000}


def test_csv_path_from_environment(tmp_path, monkeypatch):
  path = _write_csv(tmp_path / 'elsewhere.csv', [_row('envRow')])
  monkeypatch.setenv(musiccaps.CSV_ENV, str(path))
  assert musiccaps.default_csv_path() == path
  assert [r.ytid for r in musiccaps.read_musiccaps_csv()] == ['envRow']
