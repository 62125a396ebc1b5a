"""`python -m musiclm_jax.data.train_spm`: the caption tokenizer."""

import hashlib
import json

import numpy as np
import pytest
import sentencepiece as spm

from musiclm_jax import audio
from musiclm_jax.data import build
from musiclm_jax.data import musiccaps
from musiclm_jax.data import train_spm

REAL_CSV = musiccaps.default_csv_path()
needs_real_csv = pytest.mark.skipif(not REAL_CSV.is_file(), reason=f'{REAL_CSV} not present')


def _sha(path):
  return hashlib.sha256(path.read_bytes()).hexdigest()


@pytest.fixture(scope='module')
def trained(tmp_path_factory):
  out = tmp_path_factory.mktemp('spm')
  assert train_spm.main(['--corpora', 'musiccaps', '--csv', str(REAL_CSV), '--vocab_size', '2000',
                         '--out', str(out)]) == 0
  return out


@needs_real_csv
def test_vocab_round_trip_and_settings(trained):
  sp = spm.SentencePieceProcessor(model_file=str(trained / 'spm.model'))
  assert sp.get_piece_size() == 2000
  assert (sp.pad_id(), sp.eos_id(), sp.unk_id(), sp.bos_id()) == (0, 1, 2, -1)
  text = 'A calm Piano melody at 120 BPM, with soft female vocals.'
  ids = sp.encode(text)
  assert sp.decode(ids) == text.lower()  # nmt_nfkc_cf lowercases
  assert len(ids) < len(text) // 2  # real subwords, not characters
  assert sp.unk_id() not in sp.encode('Ünïcödé ♪ 音楽')  # byte fallback: no <unk>
  assert sp.decode(sp.encode('Ünïcödé ♪ 音楽')) == 'ünïcödé ♪ 音楽'
  vocab = (trained / 'spm.vocab').read_text(encoding='utf-8').splitlines()
  assert len(vocab) == 2000
  settings = json.loads((trained / 'spm_settings.json').read_text())
  assert settings['trainer']['model_type'] == 'unigram' and settings['trainer']['byte_fallback']
  assert settings['trainer']['normalization_rule_name'] == 'nmt_nfkc_cf'
  assert settings['sources'][0]['corpus'] == 'musiccaps'
  assert settings['sources'][0]['sentences'] == settings['num_sentences'] == 5521 * 2
  assert settings['sha256']['spm.model'] == _sha(trained / 'spm.model')


@needs_real_csv
def test_deterministic(trained, tmp_path):
  assert train_spm.main(['--corpora', 'musiccaps', '--csv', str(REAL_CSV), '--vocab_size', '2000',
                         '--out', str(tmp_path)]) == 0
  for name in ('spm.model', 'spm.vocab', 'spm_settings.json'):
    assert _sha(tmp_path / name) == _sha(trained / name), name


@needs_real_csv
def test_reads_prepared_tfds_captions(tmp_path, capsys):
  src = tmp_path / 'music'
  t = np.arange(24000) / 24000
  audio.write_wav(src / 'a.wav', (0.3 * np.sin(2 * np.pi * 330 * t)).astype(np.float32))
  (src / 'captions.jsonl').write_text(
      '{"path": "a.wav", "caption": "Zyzzyva theremin drone.", "aspects": ["theremin"]}\n')
  data = tmp_path / 'data'
  assert build.main(['--corpus', 'folder', '--source', str(src), '--data_dir', str(data),
                     '--clip_seconds', '1', '--no_progress']) == 0
  out = tmp_path / 'spm'
  assert train_spm.main(['--data_dir', str(data), '--corpora', 'synth,folder,musiccaps',
                         '--csv', str(REAL_CSV), '--musiccaps_split', 'train',
                         '--vocab_size', '1000', '--out', str(out)]) == 0
  captured = capsys.readouterr()
  assert 'synth is not prepared' in captured.err
  assert 'folder: 2 sentences' in captured.out and 'musiccaps: 5326 sentences' in captured.out
  settings = json.loads((out / 'spm_settings.json').read_text())
  assert [s['corpus'] for s in settings['sources']] == ['folder', 'musiccaps']


@pytest.mark.parametrize('argv, message', [
    (['--corpora', 'musiccaps,mp3', '--out', 'o'], '--corpora: unknown mp3'),
    (['--corpora', 'musiccaps', '--vocab_size', '100', '--out', 'o'],
     '--vocab_size must be >= 300'),
    (['--data_dir', 'missing', '--out', 'o'], '--data_dir missing: no such folder'),
    (['--corpora', 'musiccaps'], 'the following arguments are required: --out'),
])
def test_bad_arguments(argv, message, tmp_path, capsys, monkeypatch):
  monkeypatch.chdir(tmp_path)
  assert train_spm.main(argv) == 2
  err = [l for l in capsys.readouterr().err.splitlines() if l.strip()]
  assert len(err) == 1 and message in err[0], err


def test_vocab_too_large_for_the_text_fails_cleanly(tmp_path, capsys):
  csv_path = tmp_path / 'mc.csv'
  csv_path.write_text(','.join(musiccaps.COLUMNS) + '\n'
                      "abc,0,10,/m/04rlf,\"['piano']\",A piano.,1,False,False\n")
  assert train_spm.main(['--corpora', 'musiccaps', '--csv', str(csv_path), '--vocab_size', '5000',
                         '--out', str(tmp_path / 'o')]) == 1
  err = capsys.readouterr().err.strip().splitlines()
  assert len(err) == 1 and 'training failed' in err[0]
  assert not (tmp_path / 'o' / 'spm.model').exists()
