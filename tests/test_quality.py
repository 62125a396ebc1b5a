"""Generation quality: MCC, derangements, instrument adherence, an end-to-end run (no TFDS)."""

import json
import os

import numpy as np
import pytest

from musiclm_jax.sampling import bundle as bundle_lib
from musiclm_jax.sampling import quality
from musiclm_jax.sampling import random_bundle

SR = 24000
pytestmark = pytest.mark.filterwarnings('ignore:prompt of .* truncated')  # tiny spm


def _unit(x):
  x = np.asarray(x, np.float32)
  return x / np.linalg.norm(x, axis=-1, keepdims=True)


def test_mcc_of_identical_and_opposite_embeddings():
  emb = _unit(np.random.default_rng(0).standard_normal((5, 16)))
  np.testing.assert_allclose(quality.cosine_rows(emb, emb), 1.0, atol=1e-6)
  np.testing.assert_allclose(quality.cosine_rows(emb, -emb), -1.0, atol=1e-6)
  np.testing.assert_allclose(quality.cosine_rows(emb, 3.0 * emb), 1.0, atol=1e-6)  # scale-free
  s = quality.summary([1.0, 1.0, 1.0])
  assert s == {'mean': 1.0, 'std': 0.0, 'sem': 0.0}


def test_derangement_has_no_fixed_point_and_is_deterministic():
  for n in (2, 3, 7, 24):
    for seed in range(20):
      perm = quality.derangement(n, seed)
      assert sorted(perm.tolist()) == list(range(n))
      assert not np.any(perm == np.arange(n))
      np.testing.assert_array_equal(perm, quality.derangement(n, seed))
  assert len({tuple(quality.derangement(24, s)) for s in range(5)}) > 1
  np.testing.assert_array_equal(quality.derangement(2, 0), [1, 0])
  with pytest.raises(ValueError, match='at least 2'):
    quality.derangement(1, 0)


def test_instrument_adherence_on_hand_built_embeddings():
  candidates = ['cello', 'flute', 'violin']
  inst_emb = np.eye(3, 4, dtype=np.float32)  # one axis per instrument prompt
  # clip 0 sounds like a violin, clip 1 like a flute, clip 2 like a cello
  audio = _unit([[0.1, 0.0, 1.0, 0.2], [0.0, 1.0, 0.1, 0.0], [1.0, 0.2, 0.0, 0.0]])
  labels = [['violin', 'cello'], ['violin'], ['cello']]  # right, wrong, right
  row = quality.score_pairing(audio, audio, inst_emb, candidates, labels)
  assert row['instrument_accuracy'] == pytest.approx(2 / 3)
  assert row['instrument_chance'] == pytest.approx((2 / 3 + 1 / 3 + 1 / 3) / 3)
  assert row['predicted_instruments'] == ['violin', 'flute', 'cello']
  assert row['mcc']['mean'] == pytest.approx(1.0)
  assert row['music_to_text_R@1'] == 1.0 and row['music_to_text_mean_rank'] == 1.0


def test_select_clips_is_seeded_and_keeps_order():
  examples = [{'caption': f'c{i}', 'instruments': ['piano'], 'audio': np.zeros(4)}
              for i in range(30)]
  examples.insert(5, {'caption': '', 'instruments': [], 'audio': np.zeros(4)})  # no text
  counts = {}
  picked = quality.select_clips(iter(examples), 6, seed=3, counts=counts)
  again = quality.select_clips(iter(examples), 6, seed=3)
  assert [c['prompt'] for c in picked] == [c['prompt'] for c in again]
  order = [int(c['prompt'][1:]) for c in picked]
  assert order == sorted(order) and len(order) == 6
  assert counts == {'skipped_no_text': 1, 'candidates': 30}
  assert len(quality.select_clips(iter(examples[:3]), 6, seed=0)) == 3


@pytest.fixture(scope='module')
def bundle(tmp_path_factory):
  path = str(tmp_path_factory.mktemp('b') / 'bundle')
  random_bundle.write(path)
  return bundle_lib.load_bundle(path)


def _clips(n=3):
  t = np.arange(SR) / SR
  names = ['violin', 'flute', 'cello']
  return [{'caption': f'a slow piece played by a {names[i % 3]}', 'instruments': [names[i % 3]],
           'audio': (0.3 * np.sin(2 * np.pi * (220 + 110 * i) * t)).astype(np.float32),
           'work_id': f'w{i}'} for i in range(n)]


def test_end_to_end_on_a_random_bundle(bundle, tmp_path):
  logs = []
  result = quality.evaluate(_clips(), mulan=bundle.mulan, bundle=bundle, duration=0.5, seed=0,
                            batch_size=4, audio_dir=str(tmp_path / 'audio'), log=logs.append)
  assert result['n'] == 3 and result['candidates'] == ['cello', 'flute', 'violin']
  assert list(result['rows']) == ['generated', 'real', 'codec', 'shuffled', 'real_shuffled']
  for row in result['rows'].values():
    assert row['n'] == 3 and -1.0 <= row['mcc']['mean'] <= 1.0
    assert 0.0 <= row['instrument_accuracy'] <= 1.0
  gen, shuf = result['rows']['generated'], result['rows']['shuffled']
  gain = np.array(gen['mcc_values']) - np.array(shuf['mcc_values'])
  assert gen['mcc_gain_over_shuffled']['mean'] == pytest.approx(gain.mean())
  assert [p['shuffled_with'] for p in result['prompts']] != [p['id'] for p in result['prompts']]
  assert sorted(os.listdir(tmp_path / 'audio')) == ['q000.wav', 'q001.wav', 'q002.wav']
  assert any(line.startswith('generated 3/3') for line in logs)
  table = quality.markdown(result, title='t', command='cmd')
  assert 'generated vs its prompt | 3 |' in table and 'upper bound' in table
  assert 'codec ceiling' in table and 'mcc_gain_over_shuffled' in result['rows']['codec']
  # the codec row scores the round trip, not the real audio again
  assert result['rows']['codec']['mcc_values'] != result['rows']['real']['mcc_values']
  assert 0.0 <= gen['mulan_tokens']['level1'] <= 1.0 and 'audio_pairwise_cosine' in gen
  # the real rows do not depend on generation (sample determinism: tests/test_sampling.py)
  real_only = quality.evaluate(_clips(), mulan=bundle.mulan, duration=0.5, seed=0,
                               log=lambda s: None)
  assert list(real_only['rows']) == ['real', 'real_shuffled']
  assert real_only['rows']['real']['mcc_values'] == result['rows']['real']['mcc_values']


def test_cli_real_only_mode_without_tfds(bundle, tmp_path, monkeypatch, capsys):
  def fake_read(data_dir, split, *, dataset, counts):
    counts['examples'] = counts.get('examples', 0) + 3
    return iter(_clips())

  monkeypatch.setattr(quality.fit_rvq, 'read_examples', fake_read)
  md = tmp_path / 'RESULTS.md'
  md.write_text('# results\n')
  out = tmp_path / 'q'
  rc = quality.main(['--mulan', os.path.join(bundle.path, 'mulan'), '--data_dir', 'unused',
                     '--split', 'test', '--num_prompts', '3', '--duration', '1',
                     '--out', str(out), '--markdown', str(md)])
  assert rc == 0
  result = json.loads((out / 'quality.json').read_text())
  assert result['format'] == quality.FORMAT and result['bundle'] is None
  assert list(result['rows']) == ['real', 'real_shuffled'] and result['generation'] is None
  text = md.read_text()
  assert text.startswith('# results\n') and '| generated vs its prompt | pending |' in text
  assert 'real held-out audio' in capsys.readouterr().out


def test_cli_errors(tmp_path, capsys):
  assert quality.main(['--bundle', str(tmp_path / 'nope'), '--data_dir', 'x',
                       '--out', str(tmp_path / 'o')]) == 2
  assert 'no such bundle folder' in capsys.readouterr().err
  assert quality.main(['--bundle', 'b', '--data_dir', 'x', '--num_prompts', '1',
                       '--out', str(tmp_path / 'o')]) == 2


def test_pairwise_cosine_and_token_agreement():
  same = np.ones((4, 3), np.float32)
  assert quality.pairwise_cosine(same) == pytest.approx(1.0)
  assert quality.pairwise_cosine(np.eye(3)) == pytest.approx(0.0)
  audio = np.array([[1, 2, 3], [1, 2, 0], [5, 2, 3]])
  text = np.array([[1, 2, 3], [1, 0, 0], [4, 2, 3]])
  agree = quality.token_agreement(audio, text)
  assert agree['level1'] == pytest.approx(2 / 3)
  assert agree['prefix_levels'] == pytest.approx((3 + 1 + 0) / 3)
