r"""Melody following of a bundle: pitch agreement of generated audio with the melody it was given.

  python -m musiclm_jax.melody.evaluate_generation --bundle B --data_dir D --split test \
      --max_clips 12 --num_samples 2 --seed 0 --out DIR [--voices hum,whistle] [--duration 10]

For each of the first `--max_clips` clips of a held-out synth split, its caption is the prompt
and its hum (and with `--voices`, its whistle) the melody. The bundle generates `--duration`
seconds (default: the melody's own length) per prompt, `--num_samples` times, once with the
melody and once without it (the same requests, ids and seeds: the same PRNG keys per row), in
batches. Each output is pitch-tracked with pYIN (`musiclm_jax.melody.agreement`) and scored
against the melody's track (raw pitch accuracy, raw chroma accuracy, chroma similarity):

  * generated with the melody: the model under test;
  * generated without the melody (chance: what the text alone gives);
  * the source excerpt, i.e. the instrument rendering the melody was rendered from, cut to
    the same duration (upper bound: the real music that goes with this melody);
  * the source excerpt encoded and decoded by the bundle's codec (the upper bound through
    this codec: generated audio reaches the ear through the same decoder);
  * tracker checks: the tracks of the melody, the source and its codec round trip against the
    score's top line (`melody_pitch`), which say how well pYIN reads each kind of signal.

A clip's figure is the mean over its samples; tables give mean ± std over clips (n) and the
per-clip paired difference with minus without melody (mean ± standard error), and for each
kind of signal its voiced fraction and the share of its voiced frames in its most frequent
pitch class (near 1: a drone, whatever the melody). Writes
DIR/melody_agreement.json (settings, bundle sha256, per-clip values) and DIR/melody_agreement.md
(the table), atomically; `--save_audio` also writes DIR/audio/*.wav. Progress goes to stderr.
A missing bundle, a bundle without a melody model or no usable clip is a one-line error, exit 2.
TensorFlow is imported only when the corpus is read (`musiclm_jax.data.melody_eval_reader`).
"""

import argparse
from collections.abc import Mapping, Sequence
import json
import os
import sys
import time
from typing import Any

import numpy as np

from musiclm_jax import files
from musiclm_jax.melody import agreement as ag

FORMAT = 'musiclm_jax.melody_agreement/1'
DEFAULT_DATASET = 'synth/small'  # as `data.melody_eval_reader`
FIGURES = ('raw_pitch_accuracy', 'raw_chroma_accuracy', 'chroma_similarity')
SCORE_FRAME_RATE = 25  # `melody_pitch` frames per second


def log(message: str) -> None:
  print(message, file=sys.stderr, flush=True)


# -- generation ----------------------------------------------------------------------------------


def generate(pipe: Any, requests: Sequence[Any], name: str) -> tuple[list, list[dict]]:
  """Audio per request (None where its batch failed) and the failures, with progress logs."""
  total = sum(pipe.num_windows(requests[0].duration).values()) * len(pipe.batches(requests))
  state = {'windows': 0, 'failed': []}
  start = time.time()

  def on_window(stage, count):
    state['windows'] += count
    if state['windows'] % 20 == 0 or state['windows'] == total:
      log(f'  {name}: windows {state["windows"]}/{total} ({stage}, {time.time() - start:.0f} s)')

  def on_error(batch, error):
    reason = f'{type(error).__name__}: {str(error).splitlines()[0][:200]}'
    state['failed'] += [{'id': r.id, 'condition': name, 'reason': reason} for r in batch]
    log(f'  {name}: batch of {len(batch)} failed: {reason}')

  results = pipe.generate(requests, on_window=on_window, on_error=on_error)
  log(f'{name}: {len(requests)} pieces in {time.time() - start:.0f} s')
  return [None if r is None else r.audio for r in results], state['failed']


# -- scoring -------------------------------------------------------------------------------------


def score_track(melody_pitch: np.ndarray, frames: int) -> np.ndarray:
  """The score's top line (25 Hz MIDI, 0 = rest) as f0 Hz on the tracker's 50 Hz frames."""
  per = int(round(1.0 / ag.HOP_SECONDS / SCORE_FRAME_RATE))  # 2 tracker frames per score frame
  hz = ag.midi_to_hz(np.repeat(np.asarray(melody_pitch, np.float64), per))
  return np.pad(hz, (0, max(frames - len(hz), 0)), constant_values=np.nan)[:frames]


def _clip_value(pairs: Sequence[Mapping[str, Any] | None], figure: str) -> float | None:
  values = [p[figure] for p in pairs if p is not None and p[figure] is not None]
  return float(np.mean(values)) if values else None


def codec_round_trip(pipe: Any, wav: np.ndarray) -> np.ndarray:
  """`wav` encoded by the bundle's codec and decoded as the sampler decodes its output (the
  coarse + fine levels, the same windowed decoder): what this codec can carry of the music."""
  levels = sum(pipe.layouts[s].target.num_levels for s in ('coarse', 'fine'))
  codes = np.asarray(pipe.bundle.codec.encode(np.asarray(wav, np.float32)[None]))
  return pipe.decode_audio(codes[..., :levels])[0, :len(wav)]


def score(clips: Sequence[Mapping[str, Any]], voices: Sequence[str],
          signals: Mapping[str, Sequence[Sequence[np.ndarray | None]]], sr: int,
          duration: Sequence[float]) -> dict[str, Any]:
  """Every figure of every row, per clip and summarised.

  Args:
    clips: the clips (`data.melody_eval_reader.read_melody_clips`).
    voices: melody kinds used ('hum', 'whistle').
    signals: row key ('generated_<voice>', 'generated_none', 'source', 'codec') -> per clip,
      a list of float32 audio (one per sample; None where generation failed).
    sr: sample rate of everything.
    duration: seconds per clip (the melody and every signal are cut to it).

  Returns:
    {'rows': {voice: {row key: {figure: summary}}}, 'paired': {voice: {figure: summary}},
     'tracker': {signal: {figure: summary}}, 'signal_stats': {kind: {'voiced_fraction',
     'top_pitch_class_share'}}, 'clips': per-clip values}.
  """
  tracks: dict[str, list] = {}
  stats: dict[str, dict[str, list]] = {}
  start = time.time()

  def track(kind, wav):
    f0, voiced = ag.pitch_track(wav, sr)
    kind_stats = stats.setdefault(kind, {'voiced_fraction': [], 'top_pitch_class_share': []})
    kind_stats['voiced_fraction'].append(float(np.mean(voiced)) if len(voiced) else 0.0)
    kind_stats['top_pitch_class_share'].append(ag.top_pitch_class_share(f0))
    return f0

  for i, clip in enumerate(clips):
    num = int(round(duration[i] * sr))
    for voice in voices:
      tracks.setdefault(voice, []).append(track(voice, clip[voice][:num]))
    for kind, per_clip in signals.items():
      tracks.setdefault(kind, []).append(
          [None if w is None else track(kind, w[:num]) for w in per_clip[i]])
  log(f'pitch-tracked {sum(len(v["voiced_fraction"]) for v in stats.values())} signals '
      f'({time.time() - start:.0f} s)')

  single = [k for k in ('source', 'codec') if k in signals]  # one signal per clip
  per_clip = []
  for i, clip in enumerate(clips):
    ref_score = score_track(clip['melody_pitch'], len(tracks[voices[0]][i]))
    entry = {'render_id': clip['render_id'], 'work_id': clip['work_id'],
             'caption': clip['caption'], 'seconds': duration[i], 'tracker': {}}
    for voice in voices:
      ref = tracks[voice][i]
      entry[voice] = {kind: [None if f0 is None else ag.agreement(ref, f0)
                             for f0 in tracks[kind][i]] for kind in signals}
    for name in single + list(voices):
      f0 = tracks[name][i][0] if name in single else tracks[name][i]
      entry['tracker'][name] = ag.agreement(ref_score, f0)
    per_clip.append(entry)

  rows, paired = {}, {}
  for voice in voices:
    order = [f'generated_{voice}', 'generated_none'] + single
    rows[voice] = {kind: {f: ag.summarize([_clip_value(c[voice][kind], f) for c in per_clip])
                          for f in FIGURES} for kind in order}
    paired[voice] = {}
    for f in FIGURES:
      diffs = []
      for c in per_clip:
        a = _clip_value(c[voice][f'generated_{voice}'], f)
        b = _clip_value(c[voice]['generated_none'], f)
        diffs.append(None if a is None or b is None else a - b)
      paired[voice][f] = ag.summarize(diffs)
  tracker = {name: {f: ag.summarize([c['tracker'][name][f] for c in per_clip])
                    for f in FIGURES} for name in list(voices) + single}
  signal_stats = {kind: {k: ag.summarize(v) for k, v in s.items()} for kind, s in stats.items()}
  return {'rows': rows, 'paired': paired, 'tracker': tracker, 'signal_stats': signal_stats,
          'clips': per_clip}


# -- report --------------------------------------------------------------------------------------


def _fmt(s: Mapping[str, Any], spread: str = 'std', sign: bool = False) -> str:
  if s['mean'] is None:
    return f'- (n 0, {s["undefined"]} undefined)'
  text = f'{s["mean"]:+.3f}' if sign else f'{s["mean"]:.3f}'
  text += f' ± {s[spread]:.3f}'
  return text + (f' ({s["undefined"]} undefined)' if s['undefined'] else '')


def _signal(stats: Mapping[str, Any] | None) -> str:
  """'voiced fraction / top pitch-class share' of a kind of signal."""
  if stats is None:
    return '-'
  vf, top = stats['voiced_fraction']['mean'], stats['top_pitch_class_share']['mean']
  return f'{vf:.2f} / ' + ('-' if top is None else f'{top:.2f}')


def row_label(kind: str) -> str:
  if kind == 'generated_none':
    return 'generated without melody, same text and seeds (chance)'
  if kind.startswith('generated_'):
    return f'generated with the {kind[len("generated_"):]}'
  return {'source': 'source excerpt, instrument rendering (upper bound)',
          'codec': 'source excerpt through the bundle\'s codec (upper bound via this codec)'
          }.get(kind, kind)


def markdown(result: Mapping[str, Any], *, command: str) -> str:
  """The tables of one run (one block per melody voice, then the tracker checks)."""
  stats = result['signal_stats']
  head = ('raw pitch accuracy | raw chroma accuracy | chroma similarity | '
          'voiced fraction / top pitch-class share |')
  lines = [f'`{command}`', '',
           f'{result["num_clips"]} clips of {result["data"]["split"]}, '
           f'{result["num_samples"]} sample(s) each, seed {result["seed"]}; a clip\'s figure is '
           'the mean over its samples; mean ± std over clips (paired difference: ± standard '
           'error). Last column: of the audio scored (a drone has a top share near 1).', '',
           f'| melody | audio scored against the melody | clips | {head}',
           '|---|---|---|---|---|---|---|']
  for voice, rows in result['rows'].items():
    for kind, row in rows.items():
      lines.append(f'| {voice} | {row_label(kind)} | {row[FIGURES[0]]["n"]} | '
                   + ' | '.join(_fmt(row[f]) for f in FIGURES) + f' | {_signal(stats.get(kind))} |')
    paired = result['paired'][voice]
    lines.append(f'| {voice} | with minus without melody, paired per clip | '
                 f'{paired[FIGURES[0]]["n"]} | '
                 + ' | '.join(_fmt(paired[f], 'sem', sign=True) for f in FIGURES) + ' | |')
  lines += ['', 'Tracker check: each signal\'s pYIN track against the score\'s top line '
            '(`melody_pitch`; the voices are moved by whole octaves, so read raw chroma '
            'accuracy):', '', f'| signal | clips | {head}', '|---|---|---|---|---|---|']
  for name, row in result['tracker'].items():
    lines.append(f'| {name} | {row[FIGURES[0]]["n"]} | '
                 + ' | '.join(_fmt(row[f]) for f in FIGURES) + f' | {_signal(stats.get(name))} |')
  gen = result['generation']
  lines += ['', f'Generation: {gen["pieces"]} pieces of {result["duration"]} s in '
            f'{gen["seconds"]:.0f} s; whole run {result["wall_seconds"]:.0f} s'
            + (f'; {len(gen["failed"])} failed' if gen['failed'] else '') + '.']
  return '\n'.join(lines) + '\n'


# -- CLI -----------------------------------------------------------------------------------------


def build_parser() -> argparse.ArgumentParser:
  p = argparse.ArgumentParser(prog='python -m musiclm_jax.melody.evaluate_generation',
                              description=__doc__.splitlines()[0])
  p.add_argument('--bundle', required=True, help='bundle folder with a melody model')
  p.add_argument('--data_dir', required=True, help='TFDS data_dir with the prepared synth corpus')
  p.add_argument('--dataset', default=DEFAULT_DATASET)
  p.add_argument('--split', default='test', help='a held-out split')
  p.add_argument('--max_clips', type=int, default=12, help='the first N clips of the split')
  p.add_argument('--num_samples', type=int, default=1, help='samples per clip and condition')
  p.add_argument('--seed', type=int, default=0, help='sample k uses request seed SEED + k')
  p.add_argument('--voices', default='hum', help='melody inputs: hum, whistle or hum,whistle')
  p.add_argument('--duration', type=float, default=None,
                 help='seconds per piece (default: the melody\'s length)')
  p.add_argument('--batch_size', type=int, default=8)
  p.add_argument('--cfg_scale', type=float, default=1.0,
                 help='classifier-free guidance (semantic and coarse stages); 1.0: off')
  p.add_argument('--out', required=True, help='folder for melody_agreement.json / .md')
  p.add_argument('--save_audio', action='store_true', help='also write OUT/audio/*.wav')
  return p


def _fail(message: str) -> int:
  print(f'error: {message}', file=sys.stderr)
  return 2


def main(argv: Sequence[str] | None = None) -> int:
  args = build_parser().parse_args(argv)
  argv = sys.argv[1:] if argv is None else list(argv)
  command = 'python -m musiclm_jax.melody.evaluate_generation ' + ' '.join(argv)
  voices = [v for v in args.voices.split(',') if v]
  if not voices or any(v not in ('hum', 'whistle') for v in voices):
    return _fail(f'--voices {args.voices!r}: expected hum, whistle or hum,whistle')
  if args.max_clips < 1 or args.num_samples < 1 or args.batch_size < 1 or (
      args.duration is not None and not args.duration > 0):
    return _fail('need --max_clips, --num_samples, --batch_size >= 1 and --duration > 0')
  start = time.time()
  from musiclm_jax.sampling import bundle as bundle_lib  # pylint: disable=g-import-not-at-top
  from musiclm_jax.sampling import decode  # pylint: disable=g-import-not-at-top
  from musiclm_jax.sampling import pipeline as pipeline_lib  # pylint: disable=g-import-not-at-top
  try:
    bundle = bundle_lib.load_bundle(args.bundle)
  except (bundle_lib.BundleError, FileNotFoundError, ValueError) as e:
    return _fail(str(e).splitlines()[0] if str(e) else f'{args.bundle}: cannot load bundle')
  settings = {s: decode.SamplingSettings(temperature=decode.PAPER_SETTINGS[s].temperature,
                                         cfg_scale=args.cfg_scale if s != 'fine' else 1.0)
              for s in decode.PAPER_SETTINGS}
  pipe = pipeline_lib.Pipeline(bundle, settings=settings, batch_size=args.batch_size)
  if not pipe.has_melody:
    return _fail(f'{args.bundle}: this bundle has no melody model (export it with --melody and '
                 'a semantic stage conditioned on melody tokens)')
  sr = bundle.sample_rate
  counts: dict[str, int] = {}
  from musiclm_jax.data import melody_eval_reader  # pylint: disable=g-import-not-at-top
  try:
    clips = list(melody_eval_reader.read_melody_clips(
        args.data_dir, args.split, dataset=args.dataset, limit=args.max_clips, counts=counts))
  except (ValueError, FileNotFoundError) as e:
    return _fail(str(e).splitlines()[0])
  if not clips:
    return _fail(f'{args.dataset} {args.split} under {args.data_dir}: no usable clips ({counts})')
  log(f'{len(clips)} clips from {args.dataset} {args.split} ({counts}); '
      f'bundle {bundle.sha256[:12]}')
  duration = [min(args.duration or np.inf, len(c[voices[0]]) / sr) for c in clips]
  duration = [float(np.floor(d * 50) / 50) for d in duration]  # whole 20 ms frames

  def requests(voice):
    out = []
    for i, (clip, seconds) in enumerate(zip(clips, duration)):
      for k in range(args.num_samples):
        melody = None if voice is None else clip[voice][:int(round(seconds * sr))]
        out.append(pipeline_lib.Request(
            f'c{i:02d}_s{k}', pipeline_lib.plain_story(clip['caption'], seconds), seconds,
            seed=args.seed + k, prompt=clip['caption'], melody=melody))
    return out

  outputs, failed, gen_start = {}, [], time.time()
  for cond in [None] + voices:  # same ids and seeds: the same PRNG key per row in every run
    reqs = requests(cond)
    try:
      for r in reqs:
        pipe.check(r)
    except ValueError as e:
      return _fail(f'{reqs[0].id}: {str(e).splitlines()[0]}')
    audio, fails = generate(pipe, reqs, cond or 'no melody')
    failed += fails
    outputs[f'generated_{cond or "none"}'] = [
        audio[i * args.num_samples:(i + 1) * args.num_samples] for i in range(len(clips))]
  gen_seconds = time.time() - gen_start
  sources = [c['audio'][:int(round(d * sr))] for c, d in zip(clips, duration)]
  signals = {**outputs, 'source': [[w] for w in sources],
             'codec': [[codec_round_trip(pipe, w)] for w in sources]}
  if args.save_audio:
    from musiclm_jax.sampling import gallery  # pylint: disable=g-import-not-at-top
    for kind, per_clip in signals.items():
      for i, samples in enumerate(per_clip):
        for k, wav in enumerate(samples):
          if wav is not None and kind.startswith('generated_'):
            name = f'c{i:02d}_s{k}_{kind[len("generated_"):]}.wav'
          elif wav is not None:
            name = f'c{i:02d}_{kind}.wav'
          else:
            continue
          gallery.write_wav(os.path.join(args.out, 'audio', name), wav, sr)

  result = score(clips, voices, signals, sr, duration)
  result.update(
      format=FORMAT, command=command, num_clips=len(clips), num_samples=args.num_samples,
      seed=args.seed, voices=voices, cfg_scale=args.cfg_scale,
      duration=sorted(set(duration))[0] if len(set(duration)) == 1 else duration,
      prompt='the clip\'s caption',
      pitch_tracker={'name': 'librosa.pyin', 'fmin_hz': ag.FMIN_HZ, 'fmax_hz': ag.FMAX_HZ,
                     'frame_length': ag.frame_sizes(sr)[0], 'hop_length': ag.frame_sizes(sr)[1],
                     'cents_tolerance': ag.CENTS_TOLERANCE},
      data={'data_dir': os.path.abspath(args.data_dir), 'dataset': args.dataset,
            'split': args.split, 'counts': counts},
      bundle={'path': bundle.path, 'sha256': bundle.sha256,
              'sources': bundle.manifest.get('sources')},
      generation={'pieces': sum(len(s) for o in outputs.values() for s in o),
                  'seconds': round(gen_seconds, 1), 'failed': failed},
      wall_seconds=round(time.time() - start, 1))
  table = markdown(result, command=command)
  print(table)
  files.atomic_write_text(os.path.join(args.out, 'melody_agreement.json'),
                          json.dumps(result, indent=1, default=float) + '\n')
  files.atomic_write_text(os.path.join(args.out, 'melody_agreement.md'), table)
  log(f'wrote {os.path.join(args.out, "melody_agreement.json")} ({result["wall_seconds"]:.0f} s)')
  return 0


if __name__ == '__main__':
  sys.exit(main())
