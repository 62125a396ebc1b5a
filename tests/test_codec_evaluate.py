"""Codec evaluation: SI-SNR, the Opus round trip and the evaluation core on a tiny codec."""

import json
import shutil

import gin
import jax
import numpy as np
import pytest

from musiclm_jax.codec import evaluate as ev
from musiclm_jax.codec import metrics
from musiclm_jax.codec import opus

SR = 24000
needs_opus = pytest.mark.skipif(shutil.which('opusenc') is None or shutil.which('opusdec') is None,
                                reason='opus-tools (opusenc/opusdec) not installed')


def _notes(seconds: float, seed: int = 0) -> np.ndarray:
  """Decaying harmonic notes every 0.5 s: pitch and rhythm, like a synth clip."""
  rng = np.random.default_rng(seed)
  t = np.arange(int(seconds * SR)) / SR
  x = np.zeros_like(t)
  for start in np.arange(0, seconds, 0.5):
    f = rng.choice([196.0, 220.0, 262.0, 330.0, 440.0])
    on = (t >= start) & (t < start + 0.45)
    env = np.exp(-3 * (t[on] - start))
    x[on] += env * (0.3 * np.sin(2 * np.pi * f * t[on]) + 0.1 * np.sin(4 * np.pi * f * t[on]))
  return x.astype(np.float32)


def test_si_snr_hand_values():
  t = np.arange(2400) / SR
  x = np.sin(2 * np.pi * 100 * t)  # 10 whole periods: cos is orthogonal and zero-mean
  assert metrics.si_snr(x, x) > 80
  # Error orthogonal to x with 1/100 of its energy: exactly 20 dB, at any scale of the estimate.
  y = x + 0.1 * np.cos(2 * np.pi * 100 * t)
  np.testing.assert_allclose(metrics.si_snr(x, y), 20.0, atol=1e-6)
  np.testing.assert_allclose(metrics.si_snr(x, -3.0 * y), 20.0, atol=1e-6)
  np.testing.assert_allclose(metrics.si_snr(x, y + 0.5), 20.0, atol=1e-6)  # DC offset removed
  noise = np.random.default_rng(0).standard_normal(x.shape)
  assert metrics.si_snr(x, noise) < -15  # ~ -10 log10(N) for independent noise
  assert np.isnan(metrics.si_snr(x, np.zeros_like(x)))  # undefined for silence
  batch = metrics.si_snr(np.stack([x, x]), np.stack([y, noise]))
  assert batch.shape == (2,) and batch[0] > batch[1]


def test_music_similarity_pitch_and_rhythm():
  x = np.stack([_notes(2.0, seed=0), _notes(2.0, seed=0)])
  shifted = np.roll(x[0], SR // 4)  # same notes a quarter second late
  other = _notes(2.0, seed=5)  # other pitches, same rhythm
  y = np.stack([0.5 * x[0], np.zeros_like(x[0])])
  chroma, onset = metrics.music_similarity(x, y, SR)
  np.testing.assert_allclose(chroma, [1.0, 0.0], atol=1e-4)
  assert onset[0] == pytest.approx(1.0, abs=0.01) and np.isnan(onset[1])  # log floor: ~1
  chroma, onset = metrics.music_similarity(x, np.stack([shifted, other]), SR)
  assert chroma.max() < 0.9 and onset[0] < 0.5  # late notes: wrong pitch and rhythm per frame
  assert onset[1] > 0.9  # same onsets, other pitches


def test_harmonic_share():
  t = np.arange(SR) / SR
  buzz = sum(np.sin(2 * np.pi * 50 * k * t) for k in range(3, 40))
  noise = np.random.default_rng(0).standard_normal(SR)
  share = metrics.harmonic_share(np.stack([buzz, noise, _notes(1.0)]), SR, 50.0)
  assert share[0] > 0.99 and share[1] < 0.1 and share[2] < 0.3
  assert np.isnan(metrics.harmonic_share(np.zeros((1, SR)), SR, 50.0)[0])


def test_codebook_usage():
  codes = np.array([[0, 1], [1, 1], [2, 1], [3, 1]])
  usage = metrics.codebook_usage(codes, codebook_size=8)
  assert usage[0] == {'level': 1, 'perplexity': pytest.approx(4.0), 'used_codes': 4,
                      'dead_codes': 4}
  assert usage[1]['perplexity'] == pytest.approx(1.0) and usage[1]['dead_codes'] == 7


@needs_opus
def test_opus_round_trip_is_aligned_and_measures_bitrate():
  x = _notes(2.0)
  y, info = opus.opus_roundtrip(x, sample_rate=SR, kbps=6)
  assert y.shape == x.shape and y.dtype == np.float32
  corr = np.correlate(y, x, 'full')
  lag = int(np.argmax(corr)) - (x.size - 1)
  assert abs(lag) <= 2, lag  # opusdec removed the pre-skip
  assert metrics.si_snr(x, y) > 5
  assert 4.0 < info['payload_kbps'] < 9.0, info
  assert info['file_kbps'] > info['payload_kbps']
  # Below libopus's minimum the request is clamped: the measured rate is what Opus really used.
  _, low = opus.opus_roundtrip(x, sample_rate=SR, kbps=1.5)
  assert low['payload_kbps'] > 3.0
  with pytest.raises(ValueError, match='Ogg'):
    opus.ogg_packet_sizes(b'not ogg at all, not ogg at all')


def _tiny_codec():
  import musiclm_jax.codec.model  # noqa: F401  pylint: disable=g-import-not-at-top
  gin.clear_config()
  try:
    gin.parse_config_file('gin/models/codec/tiny.gin')
    model = gin.query_parameter('%MODEL').scoped_configurable_fn()
  finally:
    gin.clear_config()
  params, _ = jax.jit(model.init)(jax.random.PRNGKey(0), None)
  q = model.config.quantizer
  codebooks = np.random.default_rng(0).normal(size=(q.num_levels, q.codebook_size, q.dim))
  codebooks /= np.arange(1, q.num_levels + 1)[:, None, None]
  return model.codec(params, {'quantizer': {'codebooks': codebooks.astype(np.float32)}})


@needs_opus
def test_evaluate_clips_on_random_tiny_codec(tmp_path):
  codec = _tiny_codec()
  clips = [_notes(0.5, seed=1), _notes(0.5, seed=2)]
  lines = []
  result = ev.evaluate_clips(codec, clips, levels=(3, 12), opus_kbps=(6,), batch_size=2,
                             log=lines.append)
  assert lines and result['num_clips'] == 2 and result['seconds'] == pytest.approx(1.0)
  names = [r['system'] for r in result['rows']]
  assert names == ['codec 3 levels', 'codec 12 levels', 'Opus 6 kbps', 'silence',
                   'white noise at clip RMS']
  rows = {r['system']: r for r in result['rows']}
  for row in result['rows']:
    assert row['clips'] == 2
    for key in ('kbps', 'mel_distance', 'mel_distance_std', 'stft_distance', 'stft_distance_std',
                'chroma_similarity'):
      assert np.isfinite(row[key]), (row['system'], key)
    assert row['visqol'] is None
    assert row['system'] == 'silence' or 0 <= row['frame_rate_share'] <= 1
  assert rows['codec 3 levels']['kbps'] == pytest.approx(3 * 6 * 50 / 1000)
  assert rows['codec 12 levels']['kbps'] == pytest.approx(12 * 6 * 50 / 1000)
  assert rows['silence']['si_snr_db'] is None and rows['silence']['onset_correlation'] is None
  assert rows['silence']['chroma_similarity'] == 0.0 and rows['silence']['frame_rate_share'] is None
  assert np.isfinite(rows['Opus 6 kbps']['si_snr_db'])
  assert rows['Opus 6 kbps']['mel_distance'] < rows['white noise at clip RMS']['mel_distance']
  assert len(result['codebooks']) == 12
  for c in result['codebooks']:
    assert c['used_codes'] + c['dead_codes'] == 64 and 1 <= c['perplexity'] <= 64
  md = ev.format_markdown(result)
  assert 'codec 12 levels' in md and '| 12 |' in md
  json.dumps(result)  # the CLI writes it as JSON
  # Clips of another length form their own zero-padded batch; bad level counts are refused.
  batches = list(ev._batches(clips + [_notes(0.3, seed=3)], 2))  # pylint: disable=protected-access
  assert [(idx, x.shape) for idx, x in batches] == [([0, 1], (2, 12000)), ([2], (2, 7200))]
  assert not batches[1][1][1].any()
  with pytest.raises(ValueError, match='levels 13'):
    ev.evaluate_clips(codec, clips, levels=(13,), opus_kbps=())
