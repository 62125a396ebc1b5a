"""`python -m musiclm_jax.data.build`: summaries, skip reports, idempotence, argument errors."""

import csv
import json
import subprocess
import sys
import time

import numpy as np
import pytest
import tensorflow_datasets as tfds

from musiclm_jax import audio
from musiclm_jax.data import build
from musiclm_jax.data import musiccaps
from musiclm_jax.data.skips import read_jsonl

SR = 24000


def _tone(seconds, freq=330.0):
  return (0.3 * np.sin(2 * np.pi * freq * np.arange(int(seconds * SR)) / SR)).astype(np.float32)


def _err_lines(capsys):
  return [l for l in capsys.readouterr().err.splitlines() if l.strip()]


def test_folder_corpus_summary_report_and_rerun(tmp_path, capsys):
  src = tmp_path / 'music'
  audio.write_wav(src / 'a.wav', _tone(2.5))  # 3 clips of 1 s (the 0.5 s tail is kept)
  audio.write_wav(src / 'b' / 'c.flac', _tone(1.0))
  audio.write_wav(src / 'quiet.wav', np.zeros(SR, np.float32))
  (src / 'junk.wav').write_bytes(b'\x00' * 100)
  out = tmp_path / 'out'
  argv = ['--corpus', 'folder', '--source', str(src), '--data_dir', str(out), '--clip_seconds', '1']
  assert build.main(argv) == 0
  printed = capsys.readouterr().out
  assert 'folder: wrote 4 clips (0.001 h)' in printed
  assert 'splits: train 4' in printed
  assert '2 skipped (silent 1, unreadable 1)' in printed
  report = out / 'folder' / 'skipped.jsonl'
  assert str(report) in printed
  records = read_jsonl(report)
  assert [r['item'] for r in records] == ['junk.wav', 'quiet.wav']
  assert records[0]['reason'].startswith('unreadable: ')
  assert records[1]['reason'].startswith('silent: ')
  assert not list(report.parent.glob('.skipped.jsonl.*'))  # no temp file left behind

  start = time.time()
  assert build.main(argv) == 0
  again = capsys.readouterr().out
  assert 'already prepared' in again and '4 examples: train 4' in again
  assert time.time() - start < 5
  ds = tfds.builder_from_directory(str(out / 'folder' / '1.0.0')).as_dataset(split='train')
  assert len(list(ds)) == 4

  assert build.main(argv[:-1] + ['2']) == 2  # same data_dir, other clip length
  assert 'was built with --clip_seconds 1, not 2' in _err_lines(capsys)[0]
  (tmp_path / 'other').mkdir()
  assert build.main(['--corpus', 'folder', '--source', str(tmp_path / 'other'),
                     '--data_dir', str(out)]) == 2
  assert f'was built from {src}, not' in _err_lines(capsys)[0]


@pytest.mark.parametrize('argv, message', [
    (['--corpus', 'folder', '--data_dir', 'X'], '--corpus folder needs --source DIR'),
    (['--corpus', 'folder', '--source', 'nope', '--data_dir', 'X'],
     '--source nope: no such folder'),
    (['--corpus', 'musiccaps', '--data_dir', 'X'], '--corpus musiccaps needs --source DIR'),
    (['--corpus', 'musiccaps', '--config', 'captions_only', '--csv', 'none.csv', '--data_dir', 'X'],
     '--csv none.csv: no such file'),
    (['--corpus', 'musiccaps', '--config', 'big', '--data_dir', 'X'], '--config for musiccaps'),
    (['--corpus', 'synth', '--source', '.', '--data_dir', 'X'], '--source is not used'),
    (['--corpus', 'folder', '--source', '.', '--clip_seconds', '0', '--data_dir', 'X'],
     '--clip_seconds must be > 0'),
    (['--corpus', 'wav', '--data_dir', 'X'], "invalid choice: 'wav'"),
    (['--corpus', 'folder'], 'the following arguments are required: --data_dir'),
])
def test_bad_arguments_exit_2_with_one_line(argv, message, tmp_path, capsys, monkeypatch):
  monkeypatch.chdir(tmp_path)
  assert build.main(argv) == 2
  lines = _err_lines(capsys)
  assert len(lines) == 1 and message in lines[0], lines
  assert not (tmp_path / 'X').exists()


def test_module_entry_point_exit_code(tmp_path):
  proc = subprocess.run([sys.executable, '-m', 'musiclm_jax.data.build', '--corpus', 'folder',
                         '--data_dir', str(tmp_path)], capture_output=True, text=True, timeout=60)
  assert proc.returncode == 2
  expected = ('python -m musiclm_jax.data.build: error: '
              '--corpus folder needs --source DIR with audio files')
  assert proc.stderr.strip().splitlines() == [expected]


def _tiny_csv(path):
  with open(path, 'w', newline='') as f:
    w = csv.writer(f)
    w.writerow(musiccaps.COLUMNS)
    w.writerow(['aaa', '0', '10', '/m/04rlf', "['piano']", 'A piano.', '1', 'False', 'False'])
    w.writerow(['bbb', '5', '15', '/m/04rlf', "['drums'", 'Drums.', '2', 'True', 'True'])
    w.writerow(['ccc', '5', '15', '/m/04rlf', "['drums']", 'Drums.', '2', 'True', 'True'])
  return path


def test_musiccaps_without_matching_audio_fails_but_reports(tmp_path, capsys):
  csv_path = _tiny_csv(tmp_path / 'mc.csv')
  (tmp_path / 'clips').mkdir()
  audio.write_wav(tmp_path / 'clips' / 'other.wav', _tone(1.0))
  out = tmp_path / 'out'
  assert build.main(['--corpus', 'musiccaps', '--csv', str(csv_path), '--source',
                     str(tmp_path / 'clips'), '--data_dir', str(out), '--no_progress']) == 1
  err = capsys.readouterr().err
  assert 'no audio file matches a MusicCaps ytid' in err
  records = read_jsonl(out / 'musiccaps' / 'skipped.jsonl')
  assert [(r['item'], r['reason'].split(':')[0]) for r in records] == [
      (f'{csv_path}:3', 'malformed row'), ('aaa', 'no audio'), ('ccc', 'no audio')]


def test_musiccaps_captions_only(tmp_path, capsys):
  csv_path = _tiny_csv(tmp_path / 'mc.csv')
  out = tmp_path / 'out'
  assert build.main(['--corpus', 'musiccaps', '--config', 'captions_only', '--csv', str(csv_path),
                     '--data_dir', str(out)]) == 0
  printed = capsys.readouterr().out
  assert 'musiccaps/captions_only: wrote 2 clips' in printed
  assert 'splits: balanced 1, eval 1, train 1' in printed
  assert '1 skipped (malformed row 1)' in printed


class FakeSynth(tfds.core.GeneratorBasedBuilder, skip_registration=True):
  """Stands in for the synth builder: same constructor, `.skipped` and `.summary`."""
  name = 'synth'
  VERSION = tfds.core.Version('1.0.0')
  BUILDER_CONFIGS = [tfds.core.BuilderConfig(name='small'), tfds.core.BuilderConfig(name='full')]

  def _info(self):
    return tfds.core.DatasetInfo(builder=self, features=tfds.features.FeaturesDict(
        {'caption': tfds.features.Text()}))

  def _split_generators(self, dl_manager):
    self.skipped = [{'item': 'bach/bwv1.mxl', 'reason': 'render failed: ExpanderException'}]
    self.summary = {'clips': 2, 'audio_hours': 0.5}  # as the real Synth names it
    return {'train': self._generate_examples()}

  def _generate_examples(self):
    yield 'a', {'caption': 'Piano.'}
    yield 'b', {'caption': 'Organ.'}


def test_synth_corpus_dispatch(tmp_path, capsys, monkeypatch):
  monkeypatch.setattr(build, '_builder_class', lambda corpus: FakeSynth)
  argv = ['--corpus', 'synth', '--data_dir', str(tmp_path), '--no_progress']
  assert build.main(argv) == 0
  printed = capsys.readouterr().out
  assert 'synth/small: wrote 2 clips (0.500 h)' in printed
  assert '1 skipped (render failed 1)' in printed
  assert json.loads((tmp_path / 'synth' / 'skipped.jsonl').read_text())['item'] == 'bach/bwv1.mxl'
  assert build.main(argv) == 0
  assert 'synth/small: already prepared' in capsys.readouterr().out


def test_skip_report_counts_dedupes_and_writes_atomically(tmp_path):
  from musiclm_jax.data.skips import SkipReport  # pylint: disable=g-import-not-at-top
  report = SkipReport([{'item': 'a', 'reason': 'silent: clip 0'}])
  report.add('b', 'unreadable: not\naudio')
  report.add('a', 'unreadable: second reason is ignored')
  report.add('c', 'silent')
  assert len(report) == 3 and 'b' in report
  assert report.counts() == {'silent': 2, 'unreadable': 1}
  assert report.summary_line() == '3 skipped (silent 2, unreadable 1)'
  path = report.write_jsonl(tmp_path / 'sub' / 'skipped.jsonl')
  assert read_jsonl(path)[1] == {'item': 'b', 'reason': 'unreadable: not audio'}
  assert [p.name for p in path.parent.iterdir()] == ['skipped.jsonl']
