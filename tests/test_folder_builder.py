"""The `folder` TFDS builder on good and bad audio files (generated in tmp_path)."""

import json
import os
import shutil
import subprocess

import numpy as np
import pytest
import soundfile as sf
import tensorflow_datasets as tfds

from musiclm_jax import audio
from musiclm_jax.data import folder
from musiclm_jax.data.skips import SkipReport

SR = 24000
CLIP_S = 1.0  # short clips keep the test fast


def _tone(seconds, freq=330.0, amp=0.3, sr=SR):
  t = np.arange(int(round(seconds * sr))) / sr
  return (amp * np.sin(2 * np.pi * freq * t)).astype(np.float32)


def make_folder(root):
  """Writes good and bad files; returns {relative path: expected clips} and the bad {path: kind}."""
  root.mkdir(parents=True, exist_ok=True)
  audio.write_wav(root / 'long.wav', _tone(2.7))  # 3 clips: 1 + 1 + 0.7 (>= half, kept)
  audio.write_wav(root / 'sub' / 'tail.flac', _tone(2.3, 220))  # 2 clips; the 0.3 s tail dropped
  stereo = np.stack([_tone(1.6, 440, sr=48000), _tone(1.6, 660, sr=48000)])  # [2, N]
  audio.write_wav(root / 'stereo48k.wav', stereo, sample_rate=48000)  # good: 2 clips
  sf.write(root / 'u8.wav', _tone(1.2, sr=16000), 16000, subtype='PCM_U8')  # good: 1 clip
  gap = _tone(3.0)
  gap[SR:2 * SR] = 0
  audio.write_wav(root / 'gap.wav', gap)  # clips 0 and 2; clip 1 silent
  good = {'long.wav': 3, 'sub/tail.flac': 2, 'stereo48k.wav': 2, 'u8.wav': 1, 'gap.wav': 2}
  (root / 'corrupt.flac').write_bytes(b'fLaC' + np.random.default_rng(0).bytes(3000))
  (root / 'empty.wav').write_bytes(b'')
  audio.write_wav(root / 'silent.wav', np.zeros(2 * SR, np.float32))
  audio.write_wav(root / 'short.wav', _tone(0.1))
  nan = _tone(1.5)
  nan[1000] = np.nan
  sf.write(root / 'nan.wav', nan, SR, subtype='FLOAT')
  (root / 'text.wav').write_text('this is not audio\n' * 20)
  (root / 'notes.txt').write_text('ignored: not an audio extension')
  audio.write_wav(root / '.hidden.wav', _tone(1.0))  # ignored: hidden
  bad = {'corrupt.flac': 'unreadable', 'empty.wav': 'empty', 'silent.wav': 'silent',
         'short.wav': 'too short', 'nan.wav': 'non-finite', 'text.wav': 'unreadable',
         'gap.wav#1': 'silent'}
  return good, bad


def _prepare(source, data_dir, **kwargs):
  builder = folder.AudioFolder(source_dir=source, clip_seconds=CLIP_S, data_dir=data_dir, **kwargs)
  builder.download_and_prepare()
  return builder


def test_bad_files_are_skipped_and_reported(tmp_path):
  good, bad = make_folder(tmp_path / 'src')
  (tmp_path / 'src' / 'captions.jsonl').write_text('\n'.join([
      json.dumps({'path': 'long.wav', 'caption': 'A  calm\nsine.', 'aspects': ['sine', 'calm']}),
      json.dumps({'path': './sub/tail.flac', 'caption': 'Low sine.'}),
      '{not json',
      json.dumps({'path': 'gone.wav', 'caption': 'No such file.'}),
  ]) + '\n')
  builder = _prepare(tmp_path / 'src', tmp_path / 'tfds')
  skipped = {r['item']: r['reason'] for r in builder.skipped}
  assert {item: reason.split(':')[0] for item, reason in skipped.items()} == {
      **bad, 'captions.jsonl:3': 'malformed caption', 'gone.wav': 'caption without audio'}
  assert 'NaN' in skipped['nan.wav'] and 'text' in skipped['text.wav']
  assert builder.summary['clips'] == sum(good.values()) == 10
  assert builder.summary['files'] == len(good)
  examples = list(tfds.as_numpy(builder.as_dataset(split='train', shuffle_files=False)))
  by_key = {(ex['path'].decode(), int(ex['clip_index'])): ex for ex in examples}
  assert sorted(by_key) == sorted(
      [(p, i) for p, n in good.items() for i in range(n) if p != 'gap.wav'] +
      [('gap.wav', 0), ('gap.wav', 2)])
  for ex in examples:
    assert ex['audio'].dtype == np.int16 and ex['audio'].ndim == 1
    assert SR // 2 <= ex['audio'].size <= SR
  assert by_key[('long.wav', 2)]['audio'].size == int(0.7 * SR)
  assert by_key[('long.wav', 2)]['start_s'] == 2.0
  assert by_key[('long.wav', 0)]['caption'] == b'A calm sine.'
  assert [a.decode() for a in by_key[('long.wav', 1)]['aspects']] == ['sine', 'calm']
  assert by_key[('sub/tail.flac', 0)]['caption'] == b'Low sine.'
  assert by_key[('u8.wav', 0)]['caption'] == b''
  stereo = by_key[('stereo48k.wav', 1)]['audio'] / 32767  # mean of two 0.3-amplitude tones
  assert stereo.size == int(0.6 * SR)
  assert np.sqrt(np.mean(stereo ** 2)) == pytest.approx(0.15, rel=0.05)
  assert builder.info.metadata['clip_seconds'] == CLIP_S


def test_captions_csv_sidecar(tmp_path):
  src = tmp_path / 'src'
  audio.write_wav(src / 'a.wav', _tone(1.0))
  audio.write_wav(src / 'b.wav', _tone(1.0))
  (src / 'captions.csv').write_text(
      'path,caption,aspects\n'
      'a.wav,"Two\nlines",\"[\'x\', \'y\']\"\n'
      'b.wav,Plain,"p, q"\n'
      'a.wav,Second caption loses,\n'
      'c.wav,"bad aspects","[oops"\n')
  skips = SkipReport()
  captions = folder.read_captions(src, skips)
  assert captions == {'a.wav': ('Two lines', ['x', 'y']), 'b.wav': ('Plain', ['p', 'q'])}
  assert [r['item'] for r in skips.records] == ['captions.csv:6']


def test_list_audio_files_is_sorted_and_skips_hidden(tmp_path):
  for name in ['b.WAV', 'a/c.flac', '.git/x.wav', 'a/.d.wav', 'e.txt', 'f.mp3']:
    (tmp_path / name).parent.mkdir(parents=True, exist_ok=True)
    (tmp_path / name).write_bytes(b'')
  got = [p.relative_to(tmp_path).as_posix() for p in folder.list_audio_files(tmp_path)]
  assert got == ['a/c.flac', 'b.WAV', 'f.mp3']


def test_long_files_are_decoded_in_blocks(tmp_path, monkeypatch):
  monkeypatch.setattr(folder, 'BLOCK_SECONDS', 2.0)
  wav = _tone(5.5)
  audio.write_wav(tmp_path / 'x.wav', wav)
  clips = list(folder.iter_file_clips(tmp_path / 'x.wav', clip_seconds=1.0))
  assert [(i, s) for i, s, _ in clips] == [(i, float(i)) for i in range(6)]
  assert [c.size for _, _, c in clips] == [SR] * 5 + [SR // 2]
  np.testing.assert_allclose(np.concatenate([c for _, _, c in clips]), wav, atol=1e-4)
  # Resampled blocks of fractional clips still give exact, contiguous clips.
  audio.write_wav(tmp_path / 'y.wav', _tone(5.0, sr=44100), sample_rate=44100)
  clips = list(folder.iter_file_clips(tmp_path / 'y.wav', clip_seconds=0.7))
  assert [i for i, _, _ in clips] == list(range(8))
  assert [c.size for _, _, c in clips[:-1]] == [int(0.7 * SR)] * 7
  assert sum(c.size for _, _, c in clips) == 5 * SR


@pytest.mark.skipif(shutil.which('ffmpeg') is None, reason='ffmpeg not installed')
def test_m4a_goes_through_ffmpeg(tmp_path):
  audio.write_wav(tmp_path / 'x.wav', _tone(2.0))
  subprocess.run(['ffmpeg', '-nostdin', '-v', 'error', '-i', os.fspath(tmp_path / 'x.wav'),
                  os.fspath(tmp_path / 'x.m4a')], check=True)
  clips = list(folder.iter_file_clips(tmp_path / 'x.m4a', clip_seconds=1.0))
  assert len(clips) >= 2 and all(np.isfinite(c).all() for _, _, c in clips)
  (tmp_path / 'bad.m4a').write_text('not audio')
  with pytest.raises(folder.ClipError, match='^unreadable: ffmpeg failed'):
    list(folder.iter_file_clips(tmp_path / 'bad.m4a', clip_seconds=1.0))


def test_missing_source_is_an_error(tmp_path):
  with pytest.raises(ValueError, match='not a folder'):
    _prepare(tmp_path / 'nope', tmp_path / 'tfds')
  (tmp_path / 'empty').mkdir()
  with pytest.raises(ValueError, match='no audio files'):
    _prepare(tmp_path / 'empty', tmp_path / 'tfds2')
