"""Codec evaluation on held-out clips: SoundStream at 3/6/12 levels vs Opus, silence and noise.

  python -m musiclm_jax.codec.evaluate --checkpoint demo_work/codec --data_dir demo_work/data \\
      --split test --out demo_work/codec_eval

prints a table and writes OUT/codec_eval.json and OUT/codec_eval.md. Per system, means over
clips of:

  mel distance      the codec's `losses.mel_distance` (mean |log-mel(x) - log-mel(y)|, natural
                    log, `LossConfig.metric_mel` frames) - the figure training logs
  STFT distance     `losses.multi_resolution_stft_loss` (spectral convergence + log-|STFT| L1,
                    `LossConfig.stft_resolutions`), per clip
  SI-SNR            scale-invariant SNR in dB (undefined, so left out, for a silent estimate)
  chroma sim.       pitch: cosine of 12-bin chroma vectors per 20 ms frame (`music_similarity`)
  onset corr.       rhythm: correlation of the onset-strength envelopes (`music_similarity`)
  frame-rate share  share of the output's 100-4000 Hz power at multiples of the frame rate
                    (`harmonic_share`): near 1 when the decoder buzzes at 50 Hz
  ViSQOL            MOS-LQO of ViSQOL v3 audio mode at 48 kHz when the `visqol-python` package
                    is importable (optional)

Systems: the codec decoding its first n levels (bitrate n * log2(codebook_size) * frame_rate),
Opus (opusenc --bitrate K, decoded by opusdec at the clip rate; the bitrate is *measured* from
the Opus packets, since libopus does not go below ~5-6 kbps), and two references every codec must
beat by far: silence and white noise at the clip's RMS. Codebook perplexity and dead codes (codes
never chosen on the evaluation clips) come per RVQ level.

`evaluate_clips` takes arrays (tests need no TFDS); only `main` reads a prepared corpus.
"""

import argparse
from collections.abc import Callable, Sequence
import json
import math
import os
import shutil
import subprocess
import sys
import tempfile
import time
from typing import Any

import jax
import numpy as np

from musiclm_jax import audio as audio_lib
from musiclm_jax.codec import losses as losses_lib

VisqolFn = Callable[[np.ndarray, np.ndarray, int], float]


# -- metrics ---------------------------------------------------------------------------------


def si_snr(ref: np.ndarray, est: np.ndarray, eps: float = 1e-8) -> np.ndarray:
  """Scale-invariant SNR in dB over the last axis; NaN where `est` is silent (undefined).

  SI-SNR = 10 log10(|s|^2 / |e|^2), s = <est, ref> ref / |ref|^2, e = est - s, both zero-mean.
  """
  ref = np.asarray(ref, np.float64)
  est = np.asarray(est, np.float64)
  ref = ref - ref.mean(axis=-1, keepdims=True)
  est = est - est.mean(axis=-1, keepdims=True)
  alpha = np.sum(est * ref, axis=-1, keepdims=True) / (np.sum(ref * ref, axis=-1, keepdims=True)
                                                       + eps)
  target = alpha * ref
  noise = est - target
  out = 10 * np.log10((np.sum(target**2, axis=-1) + eps) / (np.sum(noise**2, axis=-1) + eps))
  silent = np.sum(est * est, axis=-1) <= eps
  return np.where(silent, np.nan, out)


def codebook_usage(codes: np.ndarray, codebook_size: int) -> list[dict[str, float]]:
  """Per level of codes [frames, L]: perplexity (exp entropy), used and dead (never used) codes."""
  out = []
  for level in range(codes.shape[-1]):
    counts = np.bincount(codes[:, level].astype(np.int64), minlength=codebook_size)
    p = counts[counts > 0] / max(counts.sum(), 1)
    used = int(np.count_nonzero(counts))
    out.append({'level': level + 1, 'perplexity': float(np.exp(-np.sum(p * np.log(p)))),
                'used_codes': used, 'dead_codes': codebook_size - used})
  return out


def make_metric_fn(sample_rate: int, loss_config: losses_lib.LossConfig):
  """Jitted (x [B, N], y [B, N]) -> (mel distance [B], multi-resolution STFT distance [B])."""
  n_fft, hop, n_mels = loss_config.metric_mel

  def one(x, y):  # [N], [N]
    mel = losses_lib.mel_distance(x[None], y[None], sample_rate=sample_rate, n_fft=n_fft,
                                  hop=hop, n_mels=n_mels)
    stft = losses_lib.multi_resolution_stft_loss(
        x[None], y[None], resolutions=loss_config.stft_resolutions,
        log_floor=loss_config.log_floor)
    return mel, stft

  return jax.jit(jax.vmap(one))


def _power_frames(x: np.ndarray, n_fft: int, hop: int) -> np.ndarray:
  """|STFT|^2 of x [B, N] (centered, periodic Hann) -> [B, T, n_fft // 2 + 1] float32."""
  x = np.pad(np.asarray(x, np.float32), ((0, 0), (n_fft // 2, n_fft // 2)))
  frames = np.lib.stride_tricks.sliding_window_view(x, n_fft, axis=-1)[:, ::hop]  # [B, T, n_fft]
  window = np.hanning(n_fft + 1)[:-1].astype(np.float32)
  return np.square(np.abs(np.fft.rfft(frames * window, axis=-1))).astype(np.float32)


def music_similarity(x: np.ndarray, y: np.ndarray, sample_rate: int
                     ) -> tuple[np.ndarray, np.ndarray]:
  """Pitch and rhythm agreement of estimates y with references x ([B, N] each).

  Returns:
    (chroma similarity [B]: mean over the reference's non-silent 20 ms frames of the cosine
     between 12-bin chroma vectors, 0 for a silent estimate; onset correlation [B]: Pearson
     correlation of the 10 ms onset-strength envelopes (positive log-mel flux), NaN when an
     envelope is constant, e.g. for silence).
  """
  import librosa  # pylint: disable=g-import-not-at-top  (numpy filters only)
  fb = librosa.filters.chroma(sr=sample_rate, n_fft=4096).T  # [F, 12]
  cx, cy = _power_frames(x, 4096, 480) @ fb, _power_frames(y, 4096, 480) @ fb  # [B, T, 12]
  nx, ny = np.linalg.norm(cx, axis=-1), np.linalg.norm(cy, axis=-1)  # [B, T]
  cos = np.sum(cx * cy, axis=-1) / (nx * ny + 1e-12)
  active = nx > 1e-3 * nx.max(axis=-1, keepdims=True)
  chroma = np.sum(cos * active, axis=-1) / np.maximum(active.sum(axis=-1), 1)
  mel = audio_lib.mel_filterbank(audio_lib.MelConfig(sample_rate=sample_rate, n_fft=1024,
                                                     n_mels=64))  # [F, 64]

  def onset(w):  # [B, N] -> [B, T - 1]
    logmel = np.log(_power_frames(w, 1024, 240) @ mel + 1e-5)
    return np.maximum(np.diff(logmel, axis=1), 0).mean(axis=-1)

  ox, oy = onset(x), onset(y)
  ox, oy = ox - ox.mean(-1, keepdims=True), oy - oy.mean(-1, keepdims=True)
  sx, sy = np.linalg.norm(ox, axis=-1), np.linalg.norm(oy, axis=-1)
  with np.errstate(invalid='ignore', divide='ignore'):
    corr = np.where((sx > 1e-9) & (sy > 1e-9), np.sum(ox * oy, axis=-1) / (sx * sy), np.nan)
  return chroma, corr


def harmonic_share(wav: np.ndarray, sample_rate: int, f0: float, *, band=(100.0, 4000.0),
                   tolerance_hz: float = 1.0) -> np.ndarray:
  """Share of the `band` power of wav [B, N] within `tolerance_hz` of a multiple of `f0`.

  With f0 = the codec frame rate this exposes a decoder that buzzes at the frame rate instead
  of reproducing pitch: music and noise give a few percent (about 2 * tolerance / f0).
  """
  power = np.square(np.abs(np.fft.rfft(np.asarray(wav, np.float32), axis=-1)))  # [B, F]
  freqs = np.fft.rfftfreq(wav.shape[-1], 1.0 / sample_rate)
  inside = (freqs >= band[0]) & (freqs <= band[1])
  near = inside & (np.abs(freqs - f0 * np.round(freqs / f0)) <= tolerance_hz)
  with np.errstate(invalid='ignore', divide='ignore'):
    return power[:, near].sum(-1) / power[:, inside].sum(-1)  # NaN for silence


# -- Opus ------------------------------------------------------------------------------------


def ogg_packet_sizes(data: bytes) -> list[int]:
  """Byte sizes of the packets of a single-stream Ogg file (header packets included)."""
  sizes, current, pos = [], 0, 0
  while pos < len(data):
    if data[pos:pos + 4] != b'OggS' or pos + 27 > len(data):
      raise ValueError(f'not an Ogg page at byte {pos}')
    nseg = data[pos + 26]
    lacing = data[pos + 27:pos + 27 + nseg]
    pos += 27 + nseg + sum(lacing)
    for value in lacing:
      current += value
      if value < 255:
        sizes.append(current)
        current = 0
  return sizes


def opus_version() -> str:
  """`opusenc --version` first line, or raises RuntimeError when opus-tools is missing."""
  for tool in ('opusenc', 'opusdec'):
    if shutil.which(tool) is None:
      raise RuntimeError(f'{tool} not found: install the Debian package opus-tools')
  out = subprocess.run(['opusenc', '--version'], capture_output=True, text=True, check=False)
  return (out.stdout or out.stderr).splitlines()[0].strip()


def opus_roundtrip(wav: np.ndarray, *, sample_rate: int, kbps: float,
                   workdir: str | None = None) -> tuple[np.ndarray, dict[str, float]]:
  """Encodes [N] audio with `opusenc --bitrate kbps` and decodes it with `opusdec --rate`.

  opusdec drops the encoder's pre-skip, so the output is time-aligned with the input; it is
  cut or zero-padded to N samples.

  Returns:
    (float32 [N] decoded audio, {'payload_kbps': Opus packets only, 'file_kbps': whole .opus
     file incl. Ogg pages and headers, 'bytes': file size}).
  """
  wav = np.clip(np.asarray(wav, np.float32).reshape(-1), -1.0, 1.0)
  seconds = wav.size / sample_rate
  with tempfile.TemporaryDirectory(dir=workdir, prefix='opus_') as tmp:
    src, enc, dec = (os.path.join(tmp, n) for n in ('in.wav', 'x.opus', 'out.wav'))
    audio_lib.write_wav(src, wav, sample_rate=sample_rate)
    for cmd in (['opusenc', '--quiet', '--bitrate', f'{kbps:g}', src, enc],
                ['opusdec', '--quiet', '--rate', str(sample_rate), enc, dec]):
      run = subprocess.run(cmd, capture_output=True, text=True, check=False)
      if run.returncode:
        raise RuntimeError(f'{" ".join(cmd[:4])} failed ({run.returncode}): '
                           f'{run.stderr.strip()[-300:]}')
    with open(enc, 'rb') as f:
      data = f.read()
    decoded = _read_wav(dec)
  payload = sum(ogg_packet_sizes(data)[2:])  # skip OpusHead and OpusTags
  decoded = decoded[:wav.size]
  decoded = np.pad(decoded, (0, wav.size - decoded.size))
  return decoded, {'payload_kbps': 8 * payload / seconds / 1000,
                   'file_kbps': 8 * len(data) / seconds / 1000, 'bytes': float(len(data))}


def _read_wav(path: str) -> np.ndarray:
  import soundfile as sf  # pylint: disable=g-import-not-at-top
  wav, _ = sf.read(path, dtype='float32', always_2d=True)
  return wav.mean(axis=-1)


# -- ViSQOL (optional) -----------------------------------------------------------------------


def make_visqol() -> VisqolFn:
  """ViSQOL v3 audio mode from the `visqol-python` package; ImportError when it is missing."""
  from visqol import VisqolApi  # pylint: disable=g-import-not-at-top
  api = VisqolApi()
  api.create(mode='audio')

  def score(ref: np.ndarray, deg: np.ndarray, sample_rate: int) -> float:
    ref48 = audio_lib.resample(np.asarray(ref, np.float32), sample_rate, 48000)
    deg48 = audio_lib.resample(np.asarray(deg, np.float32), sample_rate, 48000)
    return float(api.measure_from_arrays(ref48.astype(np.float64), deg48.astype(np.float64),
                                         48000).moslqo)

  return score


# -- the evaluation core ---------------------------------------------------------------------


def _batches(clips: Sequence[np.ndarray], batch_size: int):
  """Yields (indices, [batch_size, N] zero-row-padded) over groups of equal-length clips."""
  by_length: dict[int, list[int]] = {}
  for i, c in enumerate(clips):
    by_length.setdefault(int(c.size), []).append(i)
  for length, idx in by_length.items():
    for s in range(0, len(idx), batch_size):
      part = idx[s:s + batch_size]
      x = np.zeros((batch_size, length), np.float32)
      x[:len(part)] = np.stack([clips[i] for i in part])
      yield part, x


def _summary(values: Sequence[float]) -> tuple[float | None, float | None]:
  v = np.asarray(values, np.float64)
  v = v[np.isfinite(v)]
  return (float(v.mean()), float(v.std())) if v.size else (None, None)


def evaluate_clips(codec: Any, clips: Sequence[np.ndarray], *, levels: Sequence[int] = (3, 6, 12),
                   opus_kbps: Sequence[float] = (1.5, 3.0, 6.0), batch_size: int = 8,
                   seed: int = 0, visqol: VisqolFn | None = None,
                   visqol_max_clips: int | None = None,
                   log: Callable[[str], None] | None = None) -> dict[str, Any]:
  """Metrics of the codec at `levels`, Opus at `opus_kbps`, silence and noise on `clips`.

  Args:
    codec: a `SoundStreamCodec` (or anything with its encode/decode/config attributes).
    clips: float32 [N] audio at `codec.sample_rate`; equal lengths batch together.
    levels: RVQ level counts to decode.
    opus_kbps: requested Opus bitrates (empty: no Opus rows).
    batch_size: clips per jitted encode/decode call (the last batch is zero-padded).
    seed: seed of the noise reference.
    visqol: `make_visqol()` (or None: no ViSQOL column).
    visqol_max_clips: score ViSQOL on the first clips only (None: all).
    log: progress lines (e.g. `print`).

  Returns:
    {'rows': [{'system', 'kind', 'levels', 'requested_kbps', 'kbps', 'file_kbps',
     'mel_distance', 'stft_distance', 'si_snr_db', 'chroma_similarity', 'onset_correlation',
     'frame_rate_share' (of the output), 'visqol' (None: undefined or not run), each with
     '<key>_std', 'clips'}], 'codebooks': per-level usage,
     'num_clips', 'seconds', 'sample_rate', 'frame_rate', 'codebook_size', 'num_levels',
     'visqol_failures'}.
  """
  log = log or (lambda _: None)
  clips = [np.asarray(c, np.float32).reshape(-1) for c in clips]
  if not clips or min(c.size for c in clips) == 0:
    raise ValueError('evaluate_clips: need at least one non-empty clip')
  max_levels = int(codec.num_codebooks)
  for n in levels:
    if not 1 <= n <= max_levels:
      raise ValueError(f'evaluate_clips: levels {n} outside [1, {max_levels}]')
  sr = int(codec.sample_rate)
  bits = math.log2(codec.codebook_size)
  metric_fn = make_metric_fn(sr, codec.config.losses)
  systems: dict[str, dict[str, Any]] = {}

  def system(name, kind, **info):
    return systems.setdefault(name, {'system': name, 'kind': kind, **info, 'mel': [],
                                     'stft': [], 'snr': [], 'chroma': [], 'onset': [], 'buzz': [],
                                     'visqol': [], 'kbps': [], 'file_kbps': []})

  codes_all, visqol_failures, done, start = [], 0, 0, time.time()
  for idx, x in _batches(clips, batch_size):
    n_real, length = len(idx), x.shape[1]
    codes = np.asarray(codec.encode(x))  # [B, T, L]
    codes_all.append(codes[:n_real].reshape(-1, codes.shape[-1]))
    outputs = []
    for n in levels:
      y = np.asarray(codec.decode(codes, num_levels=n))[:, :length]
      name = f'codec {n} level' + ('s' if n > 1 else '')
      outputs.append((system(name, 'codec', levels=n, requested_kbps=None),
                      y, [n * bits * codec.frame_rate / 1000] * n_real, None))
    for kbps in opus_kbps:
      y = np.zeros_like(x)
      rates = []
      for r in range(n_real):
        y[r], info = opus_roundtrip(x[r], sample_rate=sr, kbps=kbps)
        rates.append(info)
      outputs.append((system(f'Opus {kbps:g} kbps', 'opus', levels=None, requested_kbps=kbps),
                      y, [i['payload_kbps'] for i in rates], [i['file_kbps'] for i in rates]))
    rng = np.random.default_rng([seed, idx[0]])
    rms = np.sqrt(np.mean(np.square(x), axis=-1, keepdims=True))
    noise = (rng.standard_normal(x.shape) * rms).astype(np.float32)
    outputs.append((system('silence', 'reference', levels=None, requested_kbps=None),
                    np.zeros_like(x), [0.0] * n_real, None))
    outputs.append((system('white noise at clip RMS', 'reference', levels=None,
                           requested_kbps=None), noise, [0.0] * n_real, None))
    for s, y, kbps, file_kbps in outputs:
      mel, stft = (np.asarray(v)[:n_real] for v in metric_fn(x, y))
      s['mel'] += mel.tolist()
      s['stft'] += stft.tolist()
      s['snr'] += si_snr(x[:n_real], y[:n_real]).tolist()
      chroma, onset = music_similarity(x[:n_real], y[:n_real], sr)
      s['chroma'] += chroma.tolist()
      s['onset'] += onset.tolist()
      s['buzz'] += harmonic_share(y[:n_real], sr, float(codec.frame_rate)).tolist()
      s['kbps'] += kbps
      s['file_kbps'] += file_kbps or []
      for r, i in enumerate(idx):
        if visqol is None or (visqol_max_clips is not None and i >= visqol_max_clips):
          continue
        try:
          score = float(visqol(x[r], y[r], sr))
        except Exception:  # pylint: disable=broad-except  (e.g. a silent estimate)
          score = float('nan')
        visqol_failures += not np.isfinite(score)
        s['visqol'].append(score)
    done += n_real
    log(f'[{done}/{len(clips)} clips] {time.time() - start:.0f}s')

  rows = []
  for s in systems.values():
    row = {k: s[k] for k in ('system', 'kind', 'levels', 'requested_kbps')}
    row['kbps'] = _summary(s['kbps'])[0]
    row['file_kbps'] = _summary(s['file_kbps'])[0]
    for key, values in (('mel_distance', s['mel']), ('stft_distance', s['stft']),
                        ('si_snr_db', s['snr']), ('chroma_similarity', s['chroma']),
                        ('onset_correlation', s['onset']), ('frame_rate_share', s['buzz']),
                        ('visqol', s['visqol'])):
      row[key], row[f'{key}_std'] = _summary(values)
    row['clips'] = len(s['mel'])
    rows.append(row)
  return {'rows': rows, 'codebooks': codebook_usage(np.concatenate(codes_all),
                                                   int(codec.codebook_size)),
          'num_clips': len(clips), 'seconds': float(sum(c.size for c in clips) / sr),
          'sample_rate': sr, 'frame_rate': float(codec.frame_rate),
          'codebook_size': int(codec.codebook_size), 'num_levels': max_levels,
          'visqol_failures': visqol_failures, 'visqol_used': visqol is not None}


# -- report ----------------------------------------------------------------------------------


def _fmt(value: float | None, digits: int = 3, std: float | None = None) -> str:
  if value is None:
    return 'n/a'
  return f'{value:.{digits}f}' + (f' ± {std:.{digits}f}' if std is not None else '')


def format_markdown(result: dict[str, Any]) -> str:
  """The result as markdown: the system table, notes and per-level codebook usage."""
  r = result
  src = f"`{r['checkpoint']}` (step {r.get('step')})" if r.get('checkpoint') else 'codec'
  data = f" on {r['dataset']} `{r['split']}`" if r.get('dataset') else ''
  lines = [f'# Codec evaluation: {src}{data}', '',
           f"{r['num_clips']} clips, {r['seconds']:.1f} s of audio at {r['sample_rate']} Hz. "
           f"Codec: {r['num_levels']} RVQ levels x {r['codebook_size']} codes at "
           f"{r['frame_rate']:g} Hz = {math.log2(r['codebook_size']) * r['frame_rate'] / 1000:g} "
           'kbps per level. Means ± std over clips.', '',
           '| system | kbps requested | kbps measured | mel distance ↓ | STFT distance ↓ | '
           'SI-SNR dB ↑ | chroma sim. ↑ | onset corr. ↑ | frame-rate share | ViSQOL ↑ |',
           '|---|---|---|---|---|---|---|---|---|---|']
  for row in r['rows']:
    kbps = _fmt(row['kbps'], 2)
    if row.get('file_kbps') is not None:
      kbps += f" ({row['file_kbps']:.2f} with Ogg)"
    lines.append(
        f"| {row['system']} | {_fmt(row['requested_kbps'], 1)} | {kbps} | "
        f"{_fmt(row['mel_distance'], 3, row['mel_distance_std'])} | "
        f"{_fmt(row['stft_distance'], 3, row['stft_distance_std'])} | "
        f"{_fmt(row['si_snr_db'], 1, row['si_snr_db_std'])} | "
        f"{_fmt(row['chroma_similarity'], 2)} | {_fmt(row['onset_correlation'], 2)} | "
        f"{_fmt(row['frame_rate_share'], 3)} | "
        f"{_fmt(row['visqol'], 2, row['visqol_std']) if r.get('visqol_used') else 'not run'} |")
  lines += ['',
            '- mel distance: mean |log-mel(x) - log-mel(y)| (natural log of the power mel, the '
            'metric training logs); STFT distance: multi-resolution spectral convergence + '
            'log-magnitude L1; SI-SNR: scale-invariant SNR, undefined (n/a) for silence.',
            '- Pitch and rhythm: chroma sim. = mean cosine of 12-bin chroma vectors over the '
            "reference's non-silent 20 ms frames; onset corr. = Pearson correlation of 10 ms "
            'onset-strength envelopes (positive log-mel flux), undefined for silence.',
            f"- Frame-rate share: share of the output's 100-4000 Hz power within 1 Hz of a "
            f"multiple of the {r['frame_rate']:g} Hz frame rate (a few % for music or noise; "
            'near 1 for a decoder that buzzes at the frame rate instead of reproducing pitch).',
            '- Opus: `opusenc --bitrate K` (VBR, 20 ms frames) then `opusdec --rate '
            f"{r['sample_rate']}`; measured kbps counts the Opus packets, the figure in brackets "
            f"the whole .opus file. {r.get('opus_version') or ''}".rstrip(),
            '- Noise: white Gaussian noise with the RMS of each clip (seeded).']
  if r.get('visqol_used'):
    lines.append(f"- ViSQOL v3 audio mode (visqol-python) at 48 kHz; {r['visqol_failures']} "
                 'scores failed (n/a).')
  lines += ['', '| RVQ level | perplexity | used codes | dead codes |', '|---|---|---|---|']
  for c in r['codebooks']:
    lines.append(f"| {c['level']} | {c['perplexity']:.1f} | {c['used_codes']} | "
                 f"{c['dead_codes']} |")
  return '\n'.join(lines) + '\n'


def _atomic_write(path: str, text: str) -> None:
  os.makedirs(os.path.dirname(os.path.abspath(path)), exist_ok=True)
  tmp = f'{path}.tmp'
  with open(tmp, 'w', encoding='utf-8') as f:
    f.write(text)
  os.replace(tmp, path)


def _latest_step(run_dir: str) -> int | None:
  folder = os.path.join(run_dir, 'checkpoints')
  steps = [int(n) for n in os.listdir(folder) if n.isdigit()] if os.path.isdir(folder) else []
  return max(steps) if steps else None


def _numbers(text: str, kind: type) -> list:
  try:
    return [kind(t) for t in text.split(',') if t.strip()]
  except ValueError:
    raise argparse.ArgumentTypeError(f'expected comma-separated numbers, got {text!r}') from None


def main(argv: Sequence[str] | None = None) -> int:
  p = argparse.ArgumentParser(prog='python -m musiclm_jax.codec.evaluate',
                              description=__doc__.split('\n')[0])
  p.add_argument('--checkpoint', required=True, help='codec training run folder')
  p.add_argument('--gin_file', action='append', default=None,
                 help='codec model gin file(s), when the run config.gin cannot be used')
  p.add_argument('--data_dir', default=None,
                 help='TFDS data_dir (default $MUSICLM_DATA_DIR, else ~/tensorflow_datasets)')
  p.add_argument('--dataset', default='synth/small')
  p.add_argument('--split', default='test')
  p.add_argument('--max_clips', type=int, default=32)
  p.add_argument('--seconds', type=float, default=10.0, help='crop clips to at most this long')
  p.add_argument('--levels', type=lambda t: _numbers(t, int), default=[3, 6, 12])
  p.add_argument('--opus_kbps', type=lambda t: _numbers(t, float), default=[1.5, 3.0, 6.0],
                 help="requested Opus bitrates ('' for none)")
  p.add_argument('--batch_size', type=int, default=8)
  p.add_argument('--seed', type=int, default=0)
  p.add_argument('--visqol', choices=('auto', 'on', 'off'), default='auto',
                 help='ViSQOL column: auto = when the visqol-python package is importable')
  p.add_argument('--visqol_max_clips', type=int, default=None)
  p.add_argument('--out', default=None, help='folder for codec_eval.json / codec_eval.md')
  args = p.parse_args(argv)
  args.checkpoint = os.path.abspath(os.path.expanduser(args.checkpoint))  # orbax needs absolute
  log = lambda m: print(m, file=sys.stderr, flush=True)

  # pylint: disable=g-import-not-at-top
  from musiclm_jax import checkpoints
  from musiclm_jax.data import codec_eval_reader, token_store
  try:
    opus = opus_version() if args.opus_kbps else None
    codec = token_store.load_codec(args.checkpoint, args.gin_file)
  except (RuntimeError, FileNotFoundError, ValueError, checkpoints.CheckpointError) as e:
    log(f'error: {e}')
    return 2
  visqol = None
  if args.visqol != 'off':
    try:
      visqol = make_visqol()
    except ImportError as e:
      if args.visqol == 'on':
        log(f'error: --visqol on needs the visqol-python package ({e})')
        return 2
      log('ViSQOL: visqol-python not importable, column skipped')

  sr, hop = int(codec.sample_rate), int(codec.hop_length)
  max_samples = int(args.seconds * sr)
  counts: dict[str, int] = {}
  clips, ids = [], []
  try:
    for clip in codec_eval_reader.read_audio_clips(args.data_dir, args.split,
                                                   dataset=args.dataset,
                                                   limit=args.max_clips, counts=counts):
      wav = clip['audio'][:max_samples]
      if wav.size < max(sr // 2, 2048, hop):  # too short for the STFT metrics
        counts['skipped_too_short'] = counts.get('skipped_too_short', 0) + 1
        continue
      clips.append(wav)
      ids.append(clip['id'])
  except ValueError as e:
    log(f'error: {e}')
    return 2
  if not clips:
    log(f'error: no usable clips in {args.dataset} {args.split} ({counts})')
    return 2
  log(f'{len(clips)} clips from {args.dataset} {args.split} {counts}; codec step '
      f'{_latest_step(args.checkpoint)}, levels {args.levels}, Opus {args.opus_kbps} kbps, '
      f'ViSQOL {"on" if visqol else "off"}')
  result = evaluate_clips(codec, clips, levels=args.levels, opus_kbps=args.opus_kbps,
                          batch_size=args.batch_size, seed=args.seed, visqol=visqol,
                          visqol_max_clips=args.visqol_max_clips, log=log)
  result.update(checkpoint=args.checkpoint, step=_latest_step(args.checkpoint),
                dataset=args.dataset, split=args.split, clip_ids=ids, counts=counts,
                opus_version=opus, command=' '.join(['python -m musiclm_jax.codec.evaluate',
                                                     *(argv or sys.argv[1:])]))
  md = format_markdown(result)
  print(md)
  if args.out:
    _atomic_write(os.path.join(args.out, 'codec_eval.json'), json.dumps(result, indent=1) + '\n')
    _atomic_write(os.path.join(args.out, 'codec_eval.md'), md)
    log(f'wrote {args.out}/codec_eval.json and codec_eval.md')
  return 0


if __name__ == '__main__':
  sys.exit(main())
