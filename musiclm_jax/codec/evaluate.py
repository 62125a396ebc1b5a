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
  chroma sim.       pitch: cosine of 12-bin chroma vectors per 20 ms frame
                    (`metrics.music_similarity`)
  onset corr.       rhythm: correlation of the onset-strength envelopes (same)
  frame-rate share  share of the output's 100-4000 Hz power at multiples of the frame rate
                    (`metrics.harmonic_share`): near 1 when the decoder buzzes at 50 Hz
  ViSQOL            MOS-LQO of ViSQOL v3 audio mode at 48 kHz when the `visqol-python` package
                    is importable (optional)

Systems: the codec decoding its first n levels (bitrate n * log2(codebook_size) * frame_rate),
Opus (opusenc --bitrate K, decoded by opusdec at the clip rate; the bitrate is *measured* from
the Opus packets, since libopus does not go below ~5-6 kbps), and two references every codec must
beat by far: silence and white noise at the clip's RMS. Codebook perplexity and dead codes (codes
never chosen on the evaluation clips) come per RVQ level.

The metrics live in `musiclm_jax.codec.metrics`, the Opus round trip in
`musiclm_jax.codec.opus`. `evaluate_clips` takes arrays (tests need no TFDS); only `main` reads
a prepared corpus.
"""

import argparse
from collections.abc import Callable, Sequence
import json
import math
import os
import sys
import time
from typing import Any

import numpy as np

from musiclm_jax import files
from musiclm_jax.codec import metrics as metrics_lib
from musiclm_jax.codec import opus as opus_lib


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
                   seed: int = 0, visqol: metrics_lib.VisqolFn | None = None,
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
    visqol: `metrics.make_visqol()` (or None: no ViSQOL column).
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
  metric_fn = metrics_lib.make_metric_fn(sr, codec.config.losses)
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
        y[r], info = opus_lib.opus_roundtrip(x[r], sample_rate=sr, kbps=kbps)
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
      s['snr'] += metrics_lib.si_snr(x[:n_real], y[:n_real]).tolist()
      chroma, onset = metrics_lib.music_similarity(x[:n_real], y[:n_real], sr)
      s['chroma'] += chroma.tolist()
      s['onset'] += onset.tolist()
      s['buzz'] += metrics_lib.harmonic_share(y[:n_real], sr, float(codec.frame_rate)).tolist()
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
  return {'rows': rows, 'codebooks': metrics_lib.codebook_usage(np.concatenate(codes_all),
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
    opus = opus_lib.opus_version() if args.opus_kbps else None
    codec = token_store.load_codec(args.checkpoint, args.gin_file)
  except (RuntimeError, FileNotFoundError, ValueError, checkpoints.CheckpointError) as e:
    log(f'error: {e}')
    return 2
  visqol = None
  if args.visqol != 'off':
    try:
      visqol = metrics_lib.make_visqol()
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
    files.atomic_write_text(os.path.join(args.out, 'codec_eval.json'),
                            json.dumps(result, indent=1) + '\n')
    files.atomic_write_text(os.path.join(args.out, 'codec_eval.md'), md)
    log(f'wrote {args.out}/codec_eval.json and codec_eval.md')
  return 0


if __name__ == '__main__':
  sys.exit(main())
