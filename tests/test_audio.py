"""Tests for musiclm_jax.audio: file I/O, bad input, and the JAX front-end against librosa."""

import dataclasses
import os

import jax
import jax.numpy as jnp
import librosa
import numpy as np
import pytest
import soundfile as sf

from musiclm_jax import audio

SR = audio.SAMPLE_RATE


def _sine(freq, seconds, sr, amp=0.5):
  t = np.arange(int(round(seconds * sr))) / sr
  return (amp * np.sin(2 * np.pi * freq * t)).astype(np.float32)


def _peak_hz(wav, sr):
  spec = np.abs(np.fft.rfft(wav * np.hanning(len(wav))))
  return np.argmax(spec) * sr / len(wav)


def _signals(num_samples=12000):
  """A batch of 3: noise, a sine, and a chirp (deterministic)."""
  rng = np.random.default_rng(0)
  t = np.arange(num_samples) / SR
  return np.stack([
      0.1 * rng.standard_normal(num_samples),
      0.5 * np.sin(2 * np.pi * 440.0 * t),
      0.3 * np.sin(2 * np.pi * (100.0 + 4000.0 * t) * t),
  ]).astype(np.float32)  # [3, N]


# ----------------------------------------------------------------------------- front-end

CONFIGS = {
    'default': audio.MelConfig(),
    'n2048_h512_m64_f30_8k': audio.MelConfig(n_fft=2048, hop_length=512, n_mels=64, fmin=30.0,
                                             fmax=8000.0),
    'htk': audio.MelConfig(htk=True),
    'win800_odd_nfft_l2_power1': audio.MelConfig(n_fft=1025, win_length=800, hop_length=300,
                                                 norm=2.0, power=1.0),
    'no_center_no_norm': audio.MelConfig(center=False, norm=None, n_mels=80),
}


def _librosa_mel(wav, cfg):
  return librosa.feature.melspectrogram(
      y=wav, sr=cfg.sample_rate, n_fft=cfg.n_fft, hop_length=cfg.hop_length,
      win_length=cfg.win_length, n_mels=cfg.n_mels, fmin=cfg.fmin, fmax=cfg.fmax,
      power=cfg.power, center=cfg.center, htk=cfg.htk, norm=cfg.norm)  # [..., n_mels, T]


@pytest.mark.parametrize('name', sorted(CONFIGS))
def test_filterbank_matches_librosa(name):
  cfg = CONFIGS[name]
  ours = audio.mel_filterbank(cfg)
  ref = librosa.filters.mel(sr=cfg.sample_rate, n_fft=cfg.n_fft, n_mels=cfg.n_mels, fmin=cfg.fmin,
                            fmax=cfg.fmax, htk=cfg.htk, norm=cfg.norm).T
  assert ours.shape == (cfg.n_fft // 2 + 1, cfg.n_mels) and ours.dtype == np.float32
  np.testing.assert_allclose(ours, ref, rtol=1e-5, atol=1e-7)


@pytest.mark.parametrize('n_fft,hop,win,center', [(1024, 240, None, True), (512, 128, 400, True),
                                                  (1025, 300, None, True), (256, 100, None, False)])
def test_stft_matches_librosa(n_fft, hop, win, center):
  wav = _signals()
  ours = np.asarray(audio.stft(wav, n_fft=n_fft, hop_length=hop, win_length=win, center=center))
  ref = librosa.stft(wav, n_fft=n_fft, hop_length=hop, win_length=win, center=center)
  ref = ref.transpose(0, 2, 1)  # [B, T, F]
  assert ours.shape == ref.shape and ours.dtype == np.complex64
  assert np.linalg.norm(ours - ref) / np.linalg.norm(ref) < 1e-5
  single = np.asarray(audio.stft(wav[1], n_fft=n_fft, hop_length=hop, win_length=win,
                                 center=center))
  np.testing.assert_allclose(single, ours[1], atol=1e-4)


@pytest.mark.parametrize('n_fft,hop,win,center', [(1024, 240, None, True), (512, 128, 400, True),
                                                  (256, 64, None, True), (256, 100, None, False),
                                                  (2048, 512, None, True), (1031, 240, None, True), (4096, 1024, None, True),
                                                  (128, 32, None, True)])
def test_stft_dft_matches_fft(n_fft, hop, win, center):
  """The matmul transforms (four-step for 1024+ composite sizes, else one DFT basis) equal FFT."""
  wav = _signals()
  ref = np.asarray(audio.stft(wav, n_fft=n_fft, hop_length=hop, win_length=win, center=center))
  real, imag = audio.stft_dft(wav, n_fft=n_fft, hop_length=hop, win_length=win, center=center,
                              precision=jax.lax.Precision.HIGHEST)
  ours = np.asarray(real) + 1j * np.asarray(imag)
  assert ours.shape == ref.shape
  assert np.linalg.norm(ours - ref) / np.linalg.norm(ref) < 1e-5


@pytest.mark.parametrize('name', sorted(CONFIGS))
def test_log_mel_dft_transform_matches_fft(name):
  cfg = CONFIGS[name]
  wav = _signals()
  ref = np.asarray(audio.log_mel(wav, cfg))
  ours = np.asarray(audio.log_mel(wav, dataclasses.replace(cfg, transform='dft')))
  assert ours.shape == ref.shape
  big = ref > ref.max() + np.log(1e-4)  # bins within 40 dB of the peak
  assert big.mean() > 0.2
  np.testing.assert_allclose(ours[big], ref[big], atol=2e-3)
  with pytest.raises(ValueError, match='transform'):
    dataclasses.replace(cfg, transform='wavelet')


@pytest.mark.parametrize('name', sorted(CONFIGS))
def test_melspectrogram_matches_librosa(name):
  cfg = CONFIGS[name]
  wav = _signals()
  ours = np.asarray(audio.melspectrogram(wav, cfg))  # [B, T, n_mels]
  ref = _librosa_mel(wav, cfg).transpose(0, 2, 1)
  assert ours.shape == ref.shape == (3, audio.num_frames(wav.shape[-1], cfg), cfg.n_mels)
  assert ours.dtype == np.float32
  for b in range(3):  # whole-tensor relative error, per signal
    assert np.linalg.norm(ours[b] - ref[b]) / np.linalg.norm(ref[b]) < 1e-3
  big = ref > 1e-4 * ref.max()  # per bin where the power is not tiny
  assert big.mean() > 0.2
  assert np.max(np.abs(ours[big] - ref[big]) / ref[big]) < 1e-3
  logs = np.asarray(audio.log_mel(wav, cfg))
  expected = np.log(np.maximum(ref, cfg.log_floor))
  assert logs.shape == ref.shape and np.all(logs >= np.log(cfg.log_floor) - 1e-6)
  np.testing.assert_allclose(logs[big], expected[big], atol=2e-3)


def test_front_end_jit_vmap_and_shapes():
  cfg = audio.MelConfig()
  wav = _signals(4800)
  batched = audio.log_mel(jnp.asarray(wav), cfg)
  mapped = jax.vmap(lambda w: audio.log_mel(w, cfg))(jnp.asarray(wav))
  single = audio.log_mel(wav[0], cfg)
  assert batched.shape == (3, 21, 128) and single.shape == (21, 128)
  np.testing.assert_allclose(np.asarray(mapped), np.asarray(batched), atol=1e-4)
  np.testing.assert_allclose(np.asarray(single), np.asarray(batched[0]), atol=1e-4)
  # Silence hits the floor instead of -inf.
  silent = np.asarray(audio.log_mel(np.zeros(2400, np.float32), cfg))
  np.testing.assert_allclose(silent, np.log(cfg.log_floor))
  assert audio.num_frames(24000, cfg) == 101
  assert audio.num_frames(24000, audio.MelConfig(center=False)) == 1 + (24000 - 1024) // 240
  assert hash(cfg) == hash(audio.MelConfig())
  with pytest.raises(ValueError):
    audio.MelConfig(win_length=2048)
  with pytest.raises(ValueError):
    audio.MelConfig(fmin=9000.0, fmax=8000.0)
  with pytest.raises(ValueError):
    audio.num_frames(100, audio.MelConfig(center=False))


# ----------------------------------------------------------------------------- load_audio

FORMATS = [('wav', 'PCM_16'), ('flac', 'PCM_16'), ('ogg', 'VORBIS')]
if 'MP3' in sf.available_formats():
  FORMATS.append(('mp3', 'MPEG_LAYER_III'))


@pytest.mark.parametrize('ext,subtype', FORMATS)
def test_load_formats(tmp_path, ext, subtype):
  wav = _sine(440.0, 0.5, SR)
  path = tmp_path / f'tone.{ext}'
  sf.write(path, wav, SR, subtype=subtype)
  out = audio.load_audio(path)
  assert out.dtype == np.float32 and out.ndim == 1
  assert abs(len(out) - len(wav)) <= (0 if ext in ('wav', 'flac') else 2000)
  assert abs(_peak_hz(out, SR) - 440.0) < 5.0
  if ext in ('wav', 'flac'):
    np.testing.assert_allclose(out, wav, atol=1e-4)


def test_load_48k_stereo_to_24k_mono(tmp_path):
  left, right = _sine(440.0, 1.0, 48000, 0.6), _sine(1000.0, 1.0, 48000, 0.2)
  path = tmp_path / 'stereo48.wav'
  sf.write(path, np.stack([left, right], axis=1), 48000, subtype='FLOAT')
  out = audio.load_audio(path)
  assert out.shape == (24000,) and out.dtype == np.float32
  expected = (_sine(440.0, 1.0, SR, 0.6) + _sine(1000.0, 1.0, SR, 0.2)) / 2
  np.testing.assert_allclose(out[100:-100], expected[100:-100], atol=2e-3)
  assert abs(_peak_hz(out, SR) - 440.0) < 2.0
  both = audio.load_audio(path, mono=False)
  assert both.shape == (2, 24000)
  assert abs(_peak_hz(both[1], SR) - 1000.0) < 2.0


def test_load_8bit_pcm(tmp_path):
  wav = _sine(300.0, 0.25, SR, 0.8)
  path = tmp_path / 'u8.wav'
  sf.write(path, wav, SR, subtype='PCM_U8')
  out = audio.load_audio(path)
  assert out.shape == wav.shape
  np.testing.assert_allclose(out, wav, atol=1.5 / 128)


def test_offset_duration(tmp_path):
  rng = np.random.default_rng(1)
  wav = (0.3 * rng.standard_normal(3 * SR)).astype(np.float32)
  path = tmp_path / 'noise.wav'
  sf.write(path, wav, SR, subtype='FLOAT')
  out = audio.load_audio(path, offset_s=0.5, duration_s=1.25)
  np.testing.assert_array_equal(out, wav[SR // 2:SR // 2 + 30000])
  tail = audio.load_audio(path, offset_s=2.5, duration_s=5.0)  # runs past the end
  np.testing.assert_array_equal(tail, wav[int(2.5 * SR):])
  # Resampled segments agree with a slice of the whole file resampled (context avoids edges).
  tone = _sine(440.0, 3.0, 44100) + _sine(3000.0, 3.0, 44100, 0.2)
  path44 = tmp_path / 'tone44.flac'
  sf.write(path44, tone, 44100, subtype='PCM_24')
  whole = audio.load_audio(path44)
  seg = audio.load_audio(path44, offset_s=1.0, duration_s=0.5)
  assert seg.shape == (12000,)
  np.testing.assert_allclose(seg, whole[SR:SR + 12000], atol=1e-3)


@pytest.mark.skipif('MP3' not in sf.available_formats(), reason='libsndfile without MP3')
def test_mp3_offset_matches_whole_file(tmp_path):
  path = tmp_path / 'tone.mp3'
  sf.write(path, _sine(440.0, 3.0, 44100, 0.3), 44100)
  whole = audio.load_audio(path)
  seg = audio.load_audio(path, offset_s=1.7, duration_s=0.5)  # seeks past the decoder warm-up
  np.testing.assert_allclose(seg, whole[int(1.7 * SR):int(1.7 * SR) + 12000], atol=1e-3)


def test_normalize_and_silence(tmp_path):
  path = tmp_path / 'quiet.wav'
  sf.write(path, _sine(440.0, 0.5, SR, 0.1), SR, subtype='FLOAT')
  peak = audio.load_audio(path, normalize='peak')
  assert np.isclose(np.abs(peak).max(), 0.95, atol=1e-4)
  rms = audio.load_audio(path, normalize='rms')
  assert np.isclose(20 * np.log10(np.sqrt(np.mean(rms.astype(np.float64) ** 2))), -20.0,
                    atol=1e-3)
  silent_path = tmp_path / 'silent.wav'
  sf.write(silent_path, np.zeros(SR, np.float32), SR)
  silent = audio.load_audio(silent_path, normalize='peak')  # silence is not an error
  assert not silent.any() and audio.is_silent(silent)
  assert not audio.is_silent(peak) and audio.is_silent(peak * 1e-4)
  with pytest.raises(ValueError):
    audio.load_audio(path, normalize='loud')


def _write_bad(tmp_path, kind):
  """Writes one kind of bad file; returns (path, kwargs, expected reason substring)."""
  good = _sine(440.0, 0.5, SR)
  if kind == 'corrupt_bytes':
    path = tmp_path / 'corrupt.wav'
    path.write_bytes(np.random.default_rng(0).bytes(4096))
    return path, {}, 'corrupt'
  if kind == 'corrupt_flac_data':
    path = tmp_path / 'broken.flac'
    sf.write(path, _signals(48000)[0], SR)
    data = bytearray(path.read_bytes())
    data[2000:6000] = np.random.default_rng(1).bytes(4000)
    path.write_bytes(bytes(data))
    return path, {}, 'corrupt'
  if kind == 'empty':
    path = tmp_path / 'empty.wav'
    path.write_bytes(b'')
    return path, {}, 'empty'
  if kind == 'zero_length':
    path = tmp_path / 'zero.wav'
    sf.write(path, np.zeros((0,), np.float32), SR)
    return path, {}, 'zero-length'
  if kind in ('nan', 'inf'):
    path = tmp_path / f'{kind}.wav'
    bad = good.copy()
    bad[100] = np.nan if kind == 'nan' else np.inf
    sf.write(path, bad, SR, subtype='FLOAT')
    return path, {}, 'NaN/Inf'
  if kind == 'text':
    path = tmp_path / 'notes.wav'
    path.write_text('these are not the samples you are looking for\n' * 20)
    return path, {}, 'not audio'
  if kind == 'unsupported_ext':
    path = tmp_path / 'tone.xyz'
    sf.write(path, good, SR, format='WAV')
    return path, {}, 'unsupported format'
  if kind == 'missing':
    return tmp_path / 'nowhere.wav', {}, 'not found'
  if kind == 'too_short':
    path = tmp_path / 'short.wav'
    sf.write(path, good, SR)
    return path, {'min_duration_s': 1.0}, 'too short'
  if kind == 'too_long':
    path = tmp_path / 'long.wav'
    sf.write(path, good, SR)
    return path, {'max_duration_s': 0.25}, 'too long'
  if kind == 'offset_past_end':
    path = tmp_path / 'offset.wav'
    sf.write(path, good, SR)
    return path, {'offset_s': 2.0}, 'past the end'
  raise AssertionError(kind)


BAD_KINDS = ['corrupt_bytes', 'corrupt_flac_data', 'empty', 'zero_length', 'nan', 'inf', 'text',
             'unsupported_ext', 'missing', 'too_short', 'too_long', 'offset_past_end']


@pytest.mark.parametrize('kind', BAD_KINDS)
def test_bad_audio_raises_audio_error(tmp_path, kind):
  path, kwargs, reason = _write_bad(tmp_path, kind)
  try:
    audio.load_audio(path, **kwargs)
  except audio.AudioError as e:
    message = str(e)
  else:
    pytest.fail(f'{kind}: no AudioError')
  assert type(message) is str and '\n' not in message
  assert message.startswith(f'{path}: ') and path.name in message
  assert reason in message, message
  assert isinstance(audio.AudioError('x', 'y'), ValueError)


# ----------------------------------------------------------------------------- write and helpers


def test_write_wav_round_trip_atomic_replace(tmp_path):
  path = tmp_path / 'deep' / 'er' / 'out.wav'
  stereo = np.stack([_sine(440.0, 1.0, SR), _sine(660.0, 1.0, SR)])  # [2, N]
  audio.write_wav(path, stereo)
  assert os.listdir(path.parent) == ['out.wav']
  back = audio.load_audio(path, mono=False)
  assert back.shape == (2, SR)
  np.testing.assert_allclose(back, stereo, atol=1.0 / 32768 + 1e-6)
  # Replacing an existing file writes it whole; loud input is clipped.
  short = np.full(100, 2.0, np.float32)
  audio.write_wav(path, short)
  info = sf.info(path)
  assert (info.frames, info.channels, info.samplerate) == (100, 1, SR)
  assert np.abs(audio.load_audio(path)).max() <= 1.0
  assert os.listdir(path.parent) == ['out.wav']
  # A failed write leaves the old file intact and no temp file behind.
  with pytest.raises(ValueError):
    audio.write_wav(path, np.array([0.0, np.nan], np.float32))
  with pytest.raises(Exception):
    audio.write_wav(path, short, subtype='NOT_A_SUBTYPE')
  assert os.listdir(path.parent) == ['out.wav'] and sf.info(path).frames == 100
  audio.write_wav(tmp_path / 'x.flac', short * 0.1, sample_rate=16000)
  assert sf.info(tmp_path / 'x.flac').format == 'FLAC'


def test_crop_or_pad_resample_mono():
  wav = np.arange(10, dtype=np.float32)
  np.testing.assert_array_equal(audio.crop_or_pad(wav, 4), [0, 1, 2, 3])
  np.testing.assert_array_equal(audio.crop_or_pad(wav, 4, start=6), [6, 7, 8, 9])
  np.testing.assert_array_equal(audio.crop_or_pad(wav, 12), list(range(10)) + [0, 0])
  a = audio.crop_or_pad(wav, 4, rng=np.random.default_rng(3))
  b = audio.crop_or_pad(wav, 4, rng=np.random.default_rng(3))
  np.testing.assert_array_equal(a, b)
  starts = {int(audio.crop_or_pad(wav, 4, rng=seed)[0]) for seed in range(30)}
  assert len(starts) > 2 and starts <= set(range(7))
  assert audio.crop_or_pad(np.ones((2, 5)), 8).shape == (2, 8)
  with pytest.raises(ValueError):
    audio.crop_or_pad(wav, 4, start=7)
  stereo = np.stack([_sine(440.0, 0.5, 48000), _sine(440.0, 0.5, 48000)])
  res = audio.resample(stereo, 48000, SR)
  assert res.shape == (2, 12000) and res.dtype == np.float32
  assert audio.resample(stereo[0], 48000, SR).shape == (12000,)
  np.testing.assert_allclose(audio.to_mono(np.stack([wav, -wav])), np.zeros(10))
  assert np.isclose(np.abs(audio.normalize_peak(wav, 0.5)).max(), 0.5)
  np.testing.assert_array_equal(audio.normalize_rms(np.zeros(5)), np.zeros(5))


def test_equal_length_batches_cut_at_size_and_shape_changes():
  clips = [np.full(3, i, np.float32) for i in range(3)] + [np.zeros(4, np.float32)] * 2 + [
      np.zeros(3, np.float32)]
  batches = list(audio.equal_length_batches(iter(clips), 2))
  assert [b.shape for b in batches] == [(2, 3), (1, 3), (2, 4), (1, 3)]
  np.testing.assert_array_equal(np.concatenate([b[:, 0] for b in batches[:2]]), [0, 1, 2])
  assert not list(audio.equal_length_batches([], 2))
