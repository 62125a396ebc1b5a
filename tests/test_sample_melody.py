"""`sample --melody`: bundles with a melody embedder, melody tokens per window, the CLI, bad input.

Bundles are `random_bundle.write(..., melody=True)`: test sizes (semantic windows of 8 frames,
0.32 s, conditioned on one melody window of 4 x 16 tokens) and a random melody embedder.
"""

import hashlib
import json
import os
import shutil

import jax
import numpy as np
import pytest
import soundfile as sf

from musiclm_jax import export
from musiclm_jax import sample
from musiclm_jax.sampling import bundle as bundle_lib
from musiclm_jax.sampling import longform
from musiclm_jax.sampling import pipeline as pipeline_lib
from musiclm_jax.sampling import random_bundle

SR = 24000
ONE_DEVICE = jax.devices()[:1]
FAST = ['--devices', '1', '--no_progress', '--batch_size', '1', '--codec_window_seconds', '1']


def _hum(seconds: float, level: float = 0.3) -> np.ndarray:
  t = np.arange(int(round(seconds * SR))) / SR
  pitch = 220.0 * 2 ** (np.floor(t / 0.3) % 5 / 12)  # a few notes
  return (level * np.sin(2 * np.pi * np.cumsum(pitch) / SR)).astype(np.float32)


def _write(path, wav, rate=SR):
  sf.write(str(path), wav, rate, subtype='PCM_16')
  return str(path)


@pytest.fixture(scope='module')
def melody_bundle(tmp_path_factory):
  path = str(tmp_path_factory.mktemp('mb') / 'bundle')
  random_bundle.write(path, melody=True)
  return path


@pytest.fixture(scope='module')
def plain_bundle(tmp_path_factory):
  path = str(tmp_path_factory.mktemp('pb') / 'bundle')
  random_bundle.write(path)
  return path


@pytest.fixture(scope='module')
def hum(tmp_path_factory):
  return _write(tmp_path_factory.mktemp('hum') / 'hum.wav', _hum(1.2))


def test_bundle_carries_the_melody_embedder(melody_bundle, plain_bundle, tmp_path):
  b = bundle_lib.load_bundle(melody_bundle)
  assert b.has_melody and (b.melody.num_codebooks, b.melody.cardinality) == (4, 16)
  assert b.manifest['components']['melody'] == {
      'num_codebooks': 4, 'codebook_size': 16, 'embed_dim': 16, 'window_seconds': 4.0,
      'hop_seconds': 3.0}
  assert {'melody/melody.json', 'melody/params.npz', 'melody/rvq.npz'} <= set(
      b.manifest['files'])
  assert [f.name for f in b.stages['semantic'].layout.conditioning] == ['mulan', 'melody']
  plain = bundle_lib.load_bundle(plain_bundle)  # a bundle without melody still loads
  assert plain.melody is None and not plain.has_melody
  assert not any(f.startswith('melody/') for f in plain.manifest['files'])
  # melody/ files are checked like the rest.
  altered = tmp_path / 'altered'
  shutil.copytree(melody_bundle, altered)
  with np.load(altered / 'melody' / 'rvq.npz') as z:
    codebooks = z['codebooks']
  np.savez(altered / 'melody' / 'rvq.npz', codebooks=codebooks + 1)
  with pytest.raises(bundle_lib.BundleError, match=r'melody/rvq.npz: sha256 mismatch'):
    bundle_lib.load_bundle(str(altered))
  # A melody-conditioned stage needs the embedder; the embedder's RVQ must fit the stage.
  stages = random_bundle.tiny_stages(melody=True)
  params = random_bundle.tiny_stage_params(stages)
  codec_config, codec_params, codec_codebooks = random_bundle.tiny_codec()
  kwargs = dict(codec_config=codec_config, codec_params=codec_params,
                codec_codebooks=codec_codebooks, mulan=b.mulan,
                stages={n: (stages[n], params[n]) for n in stages})
  with pytest.raises(export.BundleError, match='stage semantic conditions on melody tokens: '
                     'pass --melody DIR'):
    export.write_bundle(str(tmp_path / 'x'), **kwargs)
  big = b.melody.with_codebooks(np.zeros((6, 16, 16), np.float32))
  with pytest.raises(export.BundleError, match='needs 4 melody levels'):
    export.write_bundle(str(tmp_path / 'x'), melody=b.melody.with_codebooks(
        np.zeros((3, 16, 16), np.float32)), **kwargs)
  with pytest.raises(export.BundleError, match='melody codebook 16 < the melody RVQ codebook 32'):
    export.write_bundle(str(tmp_path / 'x'), melody=b.melody.with_codebooks(
        np.zeros((4, 32, 16), np.float32)), **kwargs)
  export.write_bundle(str(tmp_path / 'ok'), melody=big, **kwargs)  # more levels: the first 4
  assert not os.path.exists(tmp_path / 'x')


class _Stop(Exception):
  pass


def test_every_window_gets_the_melody_of_its_span(melody_bundle):
  b = bundle_lib.load_bundle(melody_bundle, reuse=True)
  pipe = pipeline_lib.Pipeline(b, devices=ONE_DEVICE)
  wav = _hum(1.2)
  request = pipeline_lib.Request('m', pipeline_lib.plain_story('a tune', 1.5), 1.5, melody=wav)
  pipe.set_mulan_tokens('a tune', np.arange(12))
  layout = b.stages['semantic'].layout
  pos = 1 + layout.field('mulan').length  # melody ids in the prefix
  seen = []
  generate = pipe.decoders['semantic'].generate

  def spy(tokens, prompt_len, num_new, keys, salt=0):
    seen.append(layout.unflatten('melody', tokens[:, pos:pos + 4]))  # [rows, 1, 4]
    return generate(tokens, prompt_len, num_new, keys, salt)

  def stop(*args, **kwargs):
    raise _Stop  # the semantic stage is what is checked here

  pipe.decoders['semantic'].generate = spy
  pipe.decoders['coarse'].generate = stop
  with pytest.raises(_Stop):
    pipe.generate([request])
  windows = longform.plan_windows(pipe.frames(1.5)['semantic'], layout.target.num_frames,
                                  pipe.keep['semantic'])
  assert len(seen) == len(windows) > 3  # long-form: every sliding window
  window_samples = 4 * SR
  for window, codes in zip(windows, seen):
    start = window.start * SR // 25  # the window's first frame, in samples
    if start >= len(wav):  # after the melody's end: PAD
      assert (codes == -1).all()
      continue
    piece = np.zeros((1, window_samples), np.float32)
    piece[0, :len(wav[start:])] = wav[start:start + window_samples]
    np.testing.assert_array_equal(codes[0, 0], b.melody.tokens(piece)[0])
  assert (seen[-1] == -1).all() and not (seen[0] == -1).any()
  # A row without a melody gets PAD (the dropped melody); a bundle without one refuses.
  other = pipeline_lib.Request('n', pipeline_lib.plain_story('a tune', 1.5), 1.5)
  assert (pipe.melody_at([other], 0.0, 1, 4) == -1).all()
  plain = pipeline_lib.Pipeline(random_bundle.in_memory(), devices=ONE_DEVICE)
  plain.set_mulan_tokens('a tune', np.arange(12))
  with pytest.raises(ValueError, match='this bundle has no melody model'):
    plain.check(request)


def test_sample_cli_with_melody(melody_bundle, hum, tmp_path, capsys):
  out = tmp_path / 'out'
  argv = ['--bundle', melody_bundle, '--out', str(out), *FAST, '--melody', hum]
  assert sample.main(argv + ['--prompt', 'a guitar <b>riff</b>']) == 0
  name = '00_a_guitar_b_riff_b'
  assert sorted(os.listdir(out)) == sorted([f'{name}.wav', f'{name}.png', f'{name}_melody.wav',
                                            'index.html', 'manifest.json'])
  wav, rate = sf.read(out / f'{name}.wav')
  assert rate == SR and wav.shape == (int(1.2 * SR),)  # the melody's length
  heard, _ = sf.read(out / f'{name}_melody.wav', dtype='float32')
  np.testing.assert_allclose(heard, sf.read(hum, dtype='float32')[0], atol=1e-4)
  entry = json.load(open(out / 'manifest.json'))['samples'][0]
  assert entry['melody'] == {
      'path': hum, 'sha256': hashlib.sha256(open(hum, 'rb').read()).hexdigest(),
      'duration': 1.2, 'wav': f'{name}_melody.wav'}
  assert entry['duration'] == 1.2
  page = (out / 'index.html').read_text()
  assert f'src="{name}_melody.wav"' in page and 'input melody: hum.wav (1.2 s)' in page
  assert '<b>riff' not in page and 'a guitar &lt;b&gt;riff&lt;/b&gt;' in page
  # --duration wins; a jsonl line's own "melody" (relative to the prompts file) wins.
  other = _write(tmp_path / 'la la.wav', _hum(1.5, 0.1))
  prompts = tmp_path / 'p.jsonl'
  prompts.write_text('\n'.join([json.dumps({'id': 'own', 'prompt': 'flute <i>', 'melody':
                                            'la la.wav'}),
                                json.dumps({'id': 'shared', 'prompt': 'cello'})]) + '\n')
  out2 = tmp_path / 'out2'
  assert sample.main(['--bundle', melody_bundle, '--out', str(out2), *FAST, '--melody', hum,
                      '--prompts_file', str(prompts), '--duration', '0.6']) == 0
  by_id = {s['id']: s for s in json.load(open(out2 / 'manifest.json'))['samples']}
  assert by_id['own']['melody']['path'] == other and by_id['shared']['melody']['path'] == hum
  assert by_id['own']['duration'] == by_id['shared']['duration'] == 0.6
  assert sf.info(str(out2 / 'own_melody.wav')).duration == pytest.approx(1.5)
  page = (out2 / 'index.html').read_text()
  assert 'input melody: la la.wav (1.5 s)' in page and 'flute &lt;i&gt;' in page
  capsys.readouterr()


@pytest.mark.parametrize('case', ['not_audio', 'silent', 'short', 'too_long', 'no_model',
                                  'jsonl_line'])
def test_bad_melody_input(case, melody_bundle, plain_bundle, tmp_path, capsys):
  bundle = melody_bundle
  if case == 'not_audio':
    path = tmp_path / 'notes.wav'
    path.write_text('this is not audio\n')
    path, message = str(path), 'not audio (looks like a text file'
  elif case == 'silent':
    path, message = _write(tmp_path / 'quiet.wav', np.zeros(2 * SR)), 'silent (RMS below -60'
  elif case == 'short':
    path, message = _write(tmp_path / 'short.wav', _hum(0.5)), 'too short (0.500 s < min 1.0 s)'
  elif case == 'too_long':  # 301 s at 1 kHz: rejected from the header, never decoded
    path = _write(tmp_path / 'long.flac', np.full(301_000, 0.1, np.float32), rate=1000)
    message = 'too long (301.000 s > max 300.0 s)'
  elif case == 'no_model':
    bundle, path = plain_bundle, _write(tmp_path / 'ok.wav', _hum(1.2))
    message = 'this bundle has no melody model'
  else:
    path = tmp_path / 'bad.mp3'
    path.write_bytes(b'\x00\x01' * 100)
    path, message = str(path), 'corrupt or not audio'
  out = tmp_path / 'out'
  prompt = ['--prompt', 'a riff']
  if case == 'jsonl_line':
    prompts = tmp_path / 'p.jsonl'
    prompts.write_text(json.dumps({'prompt': 'fine'}) + '\n' +
                       json.dumps({'prompt': 'x', 'melody': 'bad.mp3'}) + '\n')
    argv = ['--bundle', bundle, '--out', str(out), *FAST, '--prompts_file', str(prompts)]
  else:
    argv = ['--bundle', bundle, '--out', str(out), *FAST, *prompt, '--melody', path]
  capsys.readouterr()
  assert sample.main(argv) == 2
  err = capsys.readouterr().err.strip()
  assert len(err.splitlines()) == 1 and err.startswith('error: ') and message in err, err
  assert path in err or (case == 'no_model' and path in err)
  assert not out.exists()  # nothing written, not even the folder


def test_no_melody_conditioning_is_unchanged(plain_bundle, melody_bundle, tmp_path,
                                             monkeypatch):
  """Without a melody the stages get exactly the fields they got before melody existed."""
  calls = []
  run_stage = longform.run_stage

  def spy(decoder, *, conditioning, **kwargs):
    def recorded(window):
      fields = conditioning(window)
      calls.append((decoder.layout.name, window, fields))
      return fields
    return run_stage(decoder, conditioning=recorded, **kwargs)

  monkeypatch.setattr(longform, 'run_stage', spy)
  out = tmp_path / 'o'
  assert sample.main(['--bundle', plain_bundle, '--out', str(out), *FAST, '--prompt',
                      'calm harp', '--duration', '0.5']) == 0
  assert sorted(os.listdir(out)) == ['00_calm_harp.png', '00_calm_harp.wav', 'index.html',
                                     'manifest.json']
  entry = json.load(open(out / 'manifest.json'))['samples'][0]
  assert sorted(entry) == ['batch_size', 'compile_seconds', 'duration', 'id', 'png', 'prompt',
                           'real_time_factor', 'sample_rate', 'seed', 'source', 'stage_seconds',
                           'stage_tokens', 'story', 'wav']
  assert 'melody' not in (out / 'index.html').read_text()
  b = bundle_lib.load_bundle(plain_bundle, reuse=True)
  mulan = np.asarray(b.mulan.text_tokens(['calm harp']))[0, :12]
  assert {name for name, _, _ in calls} == {'semantic', 'coarse', 'fine'}
  for name, _, fields in calls:
    keys = {'semantic': ['mulan'], 'coarse': ['mulan', 'semantic'], 'fine': ['coarse']}[name]
    assert sorted(fields) == keys
    if 'mulan' in fields:
      np.testing.assert_array_equal(fields['mulan'], mulan[None])
  # A melody bundle samples without a melody too: its melody tokens are PAD (-1).
  calls.clear()
  out = tmp_path / 'm'
  assert sample.main(['--bundle', melody_bundle, '--out', str(out), *FAST, '--prompt',
                      'calm harp', '--duration', '0.5']) == 0
  assert 'melody' not in json.load(open(out / 'manifest.json'))['samples'][0]
  semantic = [fields for name, _, fields in calls if name == 'semantic']
  assert semantic and all((f['melody'] == -1).all() and f['melody'].shape == (1, 1, 4)
                          for f in semantic)
