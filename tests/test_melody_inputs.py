"""Melody-group batches (synthetic groups and the synth `tiny` build), fit_rvq and evaluate CLIs."""

import fcntl
import json
import os

import numpy as np
import pytest

from musiclm_jax.data import melody_inputs as mi
from musiclm_jax.melody import evaluate, fit_rvq, inference, model as model_lib

SR = 24000
# Real 4 s windows every 3 s (the synth clips are 10 s), a very small network.
CLI_CONFIG = model_lib.MelodyConfig(
    n_fft=256, win_length=256, hop_length=480, n_mels=24, patch_frames=4, width=16,
    num_layers=1, num_heads=2, head_dim=8, mlp_dim=32, embed_dim=16, stft='dft')


def _fake_groups(count=5, renders=3, seconds=6.0):
  """Groups whose renderings are sines at a group-specific pitch (int16, like the corpus)."""
  n = int(seconds * SR)
  t = np.arange(n) / SR
  groups = []
  for g in range(count):
    pitch = 60 + 2 * g
    wav = 0.3 * np.sin(2 * np.pi * 440 * 2 ** ((pitch - 69) / 12) * t)
    pcm = np.stack([(wav * (r + 1) / renders * 32767).astype(np.int16) for r in range(renders)])
    melody = np.full(int(seconds * mi.FRAME_RATE), pitch, np.uint8)
    groups.append(mi.MelodyGroup(name=f'g{g}', audio=pcm, hum=pcm // 2, whistle=pcm // 3,
                                 melody_pitch=melody, transposition=0))
  return tuple(groups)


def test_melody_line_from_frames():
  pitch = np.array([0, 0, 60, 60, 60, 62, 0, 64], np.uint8)  # 25 Hz frames
  line = mi.melody_line(pitch, start=0.1, seconds=0.16)
  assert [(round(s, 3), round(e, 3), p) for s, e, p in line] == [(0.0, 0.1, 60), (0.1, 0.14, 62)]
  assert mi.melody_line(np.zeros(10, np.uint8), 0.0, 0.4) == []


def test_resynthesized_whistle_is_transposed():
  pitch = np.full(50, 69, np.uint8)  # A4 for 2 s

  def peak_hz(shift):
    wav = mi.resynthesize(pitch, start=0.0, seconds=1.0, shift=shift, kind='whistle', seed=3)
    assert wav.shape == (SR,) and np.all(np.isfinite(wav))
    spec = np.abs(np.fft.rfft(wav[4000:20000] * np.hanning(16000)))
    return np.argmax(spec) * SR / 16000

  ratio = peak_hz(2) / peak_hz(0)
  np.testing.assert_allclose(ratio, 2 ** (2 / 12), rtol=0.01)
  silent = mi.resynthesize(np.zeros(50, np.uint8), start=0.0, seconds=1.0, shift=0, kind='hum',
                           seed=0)
  assert silent.shape == (SR,) and not np.any(silent)


def test_make_batch_units_determinism_and_shards():
  groups = _fake_groups()
  spec = mi.BatchSpec(clips_per_melody=4, window_seconds=2.0, shifted_fraction=0.25)
  batch = mi.make_batch(groups, 3, batch_size=16, seed=0, spec=spec)
  assert batch['audio'].shape == (16, 2 * SR) and batch['audio'].dtype == np.float32
  np.testing.assert_array_equal(batch['melody'], np.repeat(np.arange(4), 4))
  assert np.all(np.isfinite(batch['audio'])) and np.abs(batch['audio']).max() <= 1.0
  again = mi.make_batch(groups, 3, batch_size=16, seed=0, spec=spec)
  np.testing.assert_array_equal(again['audio'], batch['audio'])
  for other in (mi.make_batch(groups, 4, batch_size=16, seed=0, spec=spec),
                mi.make_batch(groups, 3, batch_size=16, seed=1, spec=spec)):
    assert not np.array_equal(other['audio'], batch['audio'])
  # Host 1's melody ids follow host 0's: unique in the global batch.
  host1 = mi.make_batch(groups, 3, batch_size=16, seed=0, spec=spec, shard_index=1)
  np.testing.assert_array_equal(host1['melody'], 4 + np.repeat(np.arange(4), 4))
  with pytest.raises(ValueError, match='multiple of clips_per_melody'):
    mi.make_batch(groups, 0, batch_size=15, seed=0, spec=spec)
  with pytest.raises(ValueError, match='melody groups'):
    mi.make_batch(groups[:2], 0, batch_size=32, seed=0, spec=spec)


def test_each_group_at_most_once_per_batch():
  groups = _fake_groups(count=6)
  spec = mi.BatchSpec(clips_per_melody=2, window_seconds=1.0, shifted_fraction=0.0,
                      gain_db=(0.0, 0.0), jitter_seconds=0.0)
  for index in range(7):
    batch = mi.make_batch(groups, index, batch_size=8, seed=0, spec=spec)
    # Each unit's first clip is an instrument rendering: a sine at the group's own pitch
    # (60 + 2g), so its dominant frequency names the group.
    spec_bins = np.argmax(np.abs(np.fft.rfft(batch['audio'], axis=1)), axis=1)  # 1 Hz bins
    per_unit = spec_bins.reshape(4, 2)
    assert len(set(per_unit[:, 0].tolist())) == 4, (index, per_unit)


@pytest.fixture(scope='module')
def synth_dir(tmp_path_factory):
  """The synth `tiny` build, shared with tests/test_synth_corpus.py under pytest-xdist."""
  from musiclm_jax.data.synth.builder import Synth  # pylint: disable=g-import-not-at-top
  base = tmp_path_factory.getbasetemp()
  if os.environ.get('PYTEST_XDIST_WORKER'):
    base = base.parent
  data_dir = base / 'synth_tiny'
  data_dir.mkdir(exist_ok=True)
  with open(base / 'synth_tiny.lock', 'w') as lock:
    fcntl.flock(lock, fcntl.LOCK_EX)
    Synth(config='tiny', data_dir=str(data_dir), num_workers=2).download_and_prepare()
  return str(data_dir)


def test_input_fn_on_synth_tiny(synth_dir):
  kw = dict(batch_size=8, seed=0, data_dir=synth_dir, name='synth/tiny', clips_per_melody=4,
            shifted_fraction=0.5, prefetch=1)
  batches = mi.melody_input_fn(**kw)
  first = [next(batches) for _ in range(3)]
  for b in first:
    assert b['audio'].shape == (8, 4 * SR) and b['melody'].tolist() == [0] * 4 + [1] * 4
    assert np.all(np.isfinite(b['audio'])) and np.abs(b['audio']).max() > 1e-3
  resumed = next(mi.melody_input_fn(start_index=2, **kw))
  np.testing.assert_array_equal(resumed['audio'], first[2]['audio'])
  # Two hosts split the groups; their ids do not collide.
  shards = [next(mi.melody_input_fn(shard_index=i, num_shards=2, **kw)) for i in range(2)]
  assert set(shards[0]['melody'].tolist()).isdisjoint(shards[1]['melody'].tolist())
  assert not np.array_equal(shards[0]['audio'], shards[1]['audio'])
  with pytest.raises(ValueError, match='no prepared split'):
    mi.melody_input_fn(split='nope', **kw)
  examples = list(mi.read_melody_examples(synth_dir, 'train', dataset='synth/tiny'))
  assert examples and {'audio', 'hum', 'whistle', 'melody_group', 'melody_pitch'} <= set(
      examples[0])


def test_fit_rvq_and_evaluate_clis(synth_dir, tmp_path, capsys):
  random_dir = str(tmp_path / 'random')
  inference.MelodyEmbedder.random(CLI_CONFIG, seed=0).save(random_dir)
  out = str(tmp_path / 'fitted')
  assert fit_rvq.main(['--checkpoint', random_dir, '--data_dir', synth_dir, '--dataset',
                       'synth/tiny', '--out', out, '--num_levels', '2', '--codebook_size', '8',
                       '--num_iters', '5']) == 0
  fitted = inference.MelodyEmbedder.load(out)
  assert (fitted.num_codebooks, fitted.cardinality) == (2, 8)
  with open(os.path.join(out, 'fit_rvq.json')) as f:
    report = json.load(f)
  assert report['vectors'] == report['clips'] * 3 * 3  # 3 sources x 3 windows per 10 s clip
  tokens = fitted.tokens(np.zeros((1, 10 * SR), np.float32))
  assert tokens.shape == (1, 3 * 2)
  json_out = str(tmp_path / 'eval.json')
  assert evaluate.main(['--checkpoint', out, '--data_dir', synth_dir, '--dataset', 'synth/tiny',
                        '--split', 'validation,test,test_heldout_instruments',
                        '--out', json_out]) == 0
  with open(json_out) as f:
    results = json.load(f)
  assert set(results['models']) == {'trained', 'trained_rvq', 'untrained'}
  n = results['excerpts']
  assert n >= 2 and results['windows_per_clip'] == 3
  hum = results['models']['trained']['hum']
  assert hum['clip']['candidates'] == n and hum['window']['candidates'] == 3 * n
  assert 1 <= hum['clip']['mean_rank'] <= n and 0 <= hum['clip']['top1'] <= 1
  assert 0 <= results['models']['untrained']['transposition_accuracy'] <= 1
  assert 'trained' in capsys.readouterr().out
  assert evaluate.main(['--checkpoint', str(tmp_path / 'nothing'), '--data_dir', synth_dir]) == 2
