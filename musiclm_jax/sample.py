r"""`musiclm sample`: prompts -> music, written as a gallery.

  python -m musiclm_jax.sample --bundle BUNDLE --prompt "a calm piano piece" --out out/
  python -m musiclm_jax.sample --bundle BUNDLE --prompts_file gin/demo_prompts.jsonl --out out/
  python -m musiclm_jax.sample --bundle BUNDLE --out out/ \
      --story "calm meditation (0:00-0:15), uplifting wake-up theme (0:15-0:30)"
  python -m musiclm_jax.sample --bundle BUNDLE --prompt "a guitar riff" --melody hum.wav \
      --out out/

Writes OUT/<id>.wav (24 kHz), OUT/<id>.png (log-mel), OUT/manifest.json (prompts, story
segments, seeds, settings, durations, bundle sha256, wall time and real-time factor per stage)
and OUT/index.html. Prompts files: `.jsonl`/`.json` lines
{"prompt": ..., "duration": ..., "story": [...], "id": ..., "seed": ..., "melody": ...} (prompt
or story), any other extension one prompt per line ('#' comments). A bad item (empty prompt,
broken line, bad story timing, duration <= 0 or above 300 s) is skipped and reported with its
line number; the rest still runs, and outputs already written stay. Exit status: 0 all written,
1 some items skipped, 2 nothing to do (usage errors, unknown bundle, a bad melody file).

Melody conditioning (bundles exported with a melody embedder and a melody-conditioned semantic
stage): `--melody FILE` conditions every prompt on one hummed/whistled/played melody; a jsonl
line's "melody" (a path, relative to the prompts file's folder) overrides it for that line.
A plain prompt with a melody lasts as long as the melody unless `--duration` (or the line's
"duration") says otherwise. Every melody file is read and checked before anything is written:
not audio or unreadable, silent (RMS below -60 dBFS), shorter than 1 s or longer than 300 s,
or a bundle without a melody model, is a one-line error naming the file, exit status 2, and
the output folder is left untouched. The manifest records each sample's melody (path, sha256,
duration) and OUT/<id>_melody.wav holds the melody as the model heard it (mono, 24 kHz), shown
next to the output in the gallery.

Sampling defaults are the paper's temperatures (1.0 / 0.95 / 0.4), no top-k/top-p, no
classifier-free guidance (--cfg_scale 1). Same seed, prompt and id: the same audio.
"""

import argparse
import json
import os
import sys
import time
from collections.abc import Sequence
from typing import Any

from musiclm_jax.sampling import gallery
from musiclm_jax.sampling import longform
from musiclm_jax.sampling import story as story_lib

STAGES = ('semantic', 'coarse', 'fine')
DEFAULT_DURATION = 10.0
MELODY_MIN_SECONDS = 1.0
MELODY_SILENCE_DB = -60.0  # a melody whose RMS level is below this is "silent"
_PAPER_TEMPERATURES = {'semantic': 1.0, 'coarse': 0.95, 'fine': 0.4}


class UsageError(ValueError):
  """A command-line problem (one line, exit status 2)."""


def build_parser() -> argparse.ArgumentParser:
  p = argparse.ArgumentParser(prog='musiclm sample', description=__doc__,
                              formatter_class=argparse.RawDescriptionHelpFormatter)
  p.add_argument('--bundle', required=True, help='bundle folder (python -m musiclm_jax.export)')
  p.add_argument('--out', required=True, help='output folder')
  p.add_argument('--prompt', action='append', default=[], help='a text prompt (repeatable)')
  p.add_argument('--prompts_file', help='.txt (one prompt per line) or .jsonl prompts')
  p.add_argument('--story', action='append', default=[],
                 help='timed prompts "text (0:00-0:15), text (0:15-0:30)" (repeatable)')
  p.add_argument('--duration', type=float, default=None,
                 help=f'seconds per plain prompt (default {DEFAULT_DURATION:g}, or the melody\'s '
                      f'length; max {longform.MAX_DURATION_SECONDS:g}); a story lasts to its end')
  p.add_argument('--melody', default=None,
                 help='audio file of a melody (hum, whistle, instrument) that conditions every '
                      'prompt (needs a bundle with a melody model)')
  p.add_argument('--num_samples', type=int, default=1, help='samples per prompt')
  p.add_argument('--seed', type=int, default=0)
  for stage in STAGES:
    p.add_argument(f'--temperature_{stage}', type=float, default=_PAPER_TEMPERATURES[stage])
    p.add_argument(f'--top_k_{stage}', type=int, default=0, help='0: off')
    p.add_argument(f'--top_p_{stage}', type=float, default=1.0, help='1.0: off')
  p.add_argument('--cfg_scale', type=float, default=1.0,
                 help='classifier-free guidance on the MuLan tokens (semantic and coarse '
                      'stages); 1.0: off')
  p.add_argument('--batch_size', type=int, default=8, help='most samples decoded together')
  p.add_argument('--devices', type=int, default=0, help='devices to shard over (0: all)')
  p.add_argument('--codec_window_seconds', type=float, default=10.0,
                 help='codec decoding window (one compiled shape)')
  p.add_argument('--no_progress', action='store_true', help='no progress bars')
  return p


# -- collecting requests ---------------------------------------------------------------------


def _check_duration(value: Any, where: str) -> float:
  if isinstance(value, bool) or not isinstance(value, (int, float)):
    raise ValueError(f'{where}: duration must be a number of seconds, got {value!r}')
  value = float(value)
  if not value > 0:
    raise ValueError(f'{where}: duration {value:g} s must be positive')
  if value > longform.MAX_DURATION_SECONDS:
    raise ValueError(f'{where}: duration {value:g} s exceeds the limit of '
                     f'{longform.MAX_DURATION_SECONDS:g} s')
  return value


def _item_from_json(obj: Any, where: str, default_duration: float) -> dict[str, Any]:
  """One jsonl object -> {'id', 'prompt', 'segments', 'duration', 'seed'}; ValueError if bad."""
  if not isinstance(obj, dict):
    raise ValueError(f'{where}: expected a JSON object, got {type(obj).__name__}')
  unknown = sorted(set(obj) - {'prompt', 'duration', 'story', 'id', 'seed', 'melody'})
  if unknown:
    raise ValueError(f'{where}: unknown keys {unknown}')
  prompt, story = obj.get('prompt'), obj.get('story')
  if (prompt is None) == (story is None):
    raise ValueError(f'{where}: give exactly one of "prompt" or "story"')
  item = {'id': obj.get('id'), 'seed': obj.get('seed'), 'duration_given': 'duration' in obj}
  if obj.get('melody') is not None:
    if not isinstance(obj['melody'], str) or not obj['melody'].strip():
      raise ValueError(f'{where}: "melody" must be a file path')
    item['melody'] = obj['melody']
  if item['id'] is not None and not isinstance(item['id'], str):
    raise ValueError(f'{where}: "id" must be a string')
  if item['seed'] is not None and (isinstance(item['seed'], bool) or
                                   not isinstance(item['seed'], int)):
    raise ValueError(f'{where}: "seed" must be an integer')
  if story is not None:
    try:
      segments = story_lib.segments_from_json(story)
    except story_lib.StoryError as e:
      raise ValueError(f'{where}: {e}') from None
    duration = segments[-1].end
    if 'duration' in obj and abs(_check_duration(obj['duration'], where) - duration) > 1e-6:
      raise ValueError(f'{where}: duration {obj["duration"]} s differs from the story end '
                       f'{story_lib.format_time(duration)}')
    _check_duration(duration, where)
    return {**item, 'prompt': None, 'segments': segments, 'duration': duration}
  if not isinstance(prompt, str) or not prompt.strip():
    raise ValueError(f'{where}: empty prompt')
  duration = _check_duration(obj.get('duration', default_duration), where)
  return {**item, 'prompt': prompt.strip(), 'duration': duration,
          'segments': [story_lib.StorySegment(prompt.strip(), 0.0, duration)]}


def read_prompts_file(path: str, default_duration: float
                      ) -> tuple[list[tuple[str, dict]], list[dict]]:
  """Returns ([(where, item)], [skipped {'where', 'reason'}]) for a .txt or .jsonl file."""
  try:
    with open(path, encoding='utf-8') as f:
      lines = f.read().splitlines()
  except (OSError, UnicodeDecodeError) as e:
    raise UsageError(f'--prompts_file {path}: cannot read ({type(e).__name__}: {e})') from None
  is_json = path.lower().endswith(('.jsonl', '.json'))
  folder = os.path.dirname(os.path.abspath(path))
  items, skipped = [], []
  for number, line in enumerate(lines, start=1):
    where = f'{path}:{number}'
    if not line.strip() or line.lstrip().startswith('#'):
      continue
    try:
      if is_json:
        try:
          obj = json.loads(line)
        except json.JSONDecodeError as e:
          raise ValueError(f'{where}: not valid JSON ({e.msg} at column {e.colno})') from None
        item = _item_from_json(obj, where, default_duration)
        if item.get('melody'):  # relative to the prompts file
          item['melody'] = os.path.join(folder, os.path.expanduser(item['melody']))
        items.append((where, item))
      else:
        items.append((where, _item_from_json({'prompt': line}, where, default_duration)))
    except ValueError as e:
      skipped.append({'where': where, 'reason': str(e).removeprefix(f'{where}: ')})
  return items, skipped


def collect_items(args: argparse.Namespace) -> tuple[list[tuple[str, dict]], list[dict]]:
  """All prompts of the command line and the prompts file, with the skipped ones."""
  if args.duration is not None:
    try:
      _check_duration(args.duration, '--duration')
    except ValueError as e:
      raise UsageError(str(e)) from None
  duration = DEFAULT_DURATION if args.duration is None else args.duration
  items, skipped = [], []
  for i, prompt in enumerate(args.prompt, start=1):
    where = f'--prompt {i}'
    try:
      items.append((where, _item_from_json({'prompt': prompt}, where, duration)))
    except ValueError as e:
      skipped.append({'where': where, 'reason': str(e).removeprefix(f'{where}: ')})
  for i, text in enumerate(args.story, start=1):
    where = f'--story {i}'
    try:
      items.append((where, _item_from_json({'story': text}, where, duration)))
    except ValueError as e:
      skipped.append({'where': where, 'reason': str(e).removeprefix(f'{where}: ')})
  if args.prompts_file:
    more, bad = read_prompts_file(args.prompts_file, duration)
    items += more
    skipped += bad
  return items, skipped


def attach_melodies(args: argparse.Namespace, items: list[tuple[str, dict]], bundle) -> None:
  """Reads and checks every melody file; sets item['melody_audio'] / ['melody_info'] and, for
  plain prompts without a given duration, the duration from the melody's length.

  Raises:
    UsageError: naming the first bad file (or a bundle without a melody model).
  """
  if args.melody:
    for _, item in items:
      if not item.get('melody'):
        item['melody'] = args.melody
  paths = list(dict.fromkeys(item['melody'] for _, item in items if item.get('melody')))
  if not paths:
    return
  if not getattr(bundle, 'has_melody', False):
    raise UsageError(f'{bundle.path}: this bundle has no melody model (export one with '
                     f'python -m musiclm_jax.export ... --melody DIR); cannot use melody '
                     f'{paths[0]}')
  loaded = {p: load_melody(p, bundle.sample_rate) for p in paths}
  for _, item in items:
    if not item.get('melody'):
      continue
    wav, info = loaded[item['melody']]
    item['melody_audio'], item['melody_info'] = wav, info
    if item['prompt'] is not None and not (item.get('duration_given') or
                                           args.duration is not None):
      item['duration'] = info['duration']
      item['segments'] = [story_lib.StorySegment(item['prompt'], 0.0, info['duration'])]


def load_melody(path: str, sample_rate: int):
  """(float32 mono audio at sample_rate, {'path', 'sha256', 'duration'}) of a melody file.

  Raises:
    UsageError: one line naming the file: not audio / unreadable, silent, shorter than
      MELODY_MIN_SECONDS or longer than the maximum duration.
  """
  from musiclm_jax import audio as audio_lib  # pylint: disable=g-import-not-at-top
  from musiclm_jax.sampling import bundle as bundle_lib  # pylint: disable=g-import-not-at-top
  try:
    wav = audio_lib.load_audio(path, sample_rate=sample_rate, mono=True,
                               min_duration_s=MELODY_MIN_SECONDS,
                               max_duration_s=longform.MAX_DURATION_SECONDS)
  except audio_lib.AudioError as e:
    raise UsageError(f'melody {path}: {e.reason}') from None
  except (OSError, ValueError) as e:
    raise UsageError(f'melody {path}: cannot read ({type(e).__name__}: '
                     f'{" ".join(str(e).split())[:200]})') from None
  duration = len(wav) / sample_rate
  if duration > longform.MAX_DURATION_SECONDS:  # resampling rounds
    raise UsageError(f'melody {path}: too long ({duration:.3f} s > max '
                     f'{longform.MAX_DURATION_SECONDS:g} s)')
  if audio_lib.is_silent(wav, MELODY_SILENCE_DB):
    raise UsageError(f'melody {path}: silent (RMS below {MELODY_SILENCE_DB:g} dBFS)')
  info = {'path': os.path.abspath(path), 'sha256': bundle_lib.sha256_file(path),
          'duration': round(duration, 6)}
  return wav, info


def _slug(item: dict, index: int) -> str:
  if item.get('id'):
    return gallery.safe_id(item['id'], f'sample_{index:03d}')
  text = item['prompt'] or item['segments'][0].text
  words = '_'.join(text.lower().split()[:5])
  return f'{index:02d}_' + gallery.safe_id(words, 'prompt')


# -- main --------------------------------------------------------------------------------------


def _settings(args):
  from musiclm_jax.sampling import decode  # pylint: disable=g-import-not-at-top
  out = {}
  for stage in STAGES:
    out[stage] = decode.SamplingSettings(
        temperature=getattr(args, f'temperature_{stage}'), top_k=getattr(args, f'top_k_{stage}'),
        top_p=getattr(args, f'top_p_{stage}'),
        cfg_scale=args.cfg_scale if stage != 'fine' else 1.0)
  return out


def _previous_samples(out_dir: str) -> list[dict]:
  try:
    with open(os.path.join(out_dir, 'manifest.json')) as f:
      old = json.load(f)
    return [s for s in old.get('samples', []) if isinstance(s, dict) and 'id' in s]
  except (OSError, ValueError, AttributeError):
    return []


def main(argv: Sequence[str] | None = None) -> int:
  args = build_parser().parse_args(argv)
  start_time = time.time()
  try:
    if args.num_samples < 1:
      raise UsageError(f'--num_samples must be >= 1, got {args.num_samples}')
    if args.batch_size < 1:
      raise UsageError(f'--batch_size must be >= 1, got {args.batch_size}')
    try:
      settings = _settings(args)
    except ValueError as e:
      raise UsageError(str(e)) from None
    items, skipped = collect_items(args)
    if not items and not skipped:
      raise UsageError('no prompts: give --prompt, --story or --prompts_file')
    from musiclm_jax.sampling import bundle as bundle_lib  # pylint: disable=g-import-not-at-top
    try:
      bundle = bundle_lib.load_bundle(args.bundle, reuse=True)
    except bundle_lib.BundleError as e:
      raise UsageError(str(e)) from None
    attach_melodies(args, items, bundle)
  except UsageError as e:
    print(f'error: {e}', file=sys.stderr)
    return 2
  return run(args, bundle, settings, items, skipped, start_time)


def run(args, bundle, settings, items, skipped, start_time) -> int:
  """Generates the collected items into args.out."""
  import jax  # pylint: disable=g-import-not-at-top
  from musiclm_jax.sampling import pipeline as pipeline_lib  # pylint: disable=g-import-not-at-top
  devices = jax.local_devices()[:args.devices] if args.devices > 0 else None
  pipe = pipeline_lib.Pipeline(bundle, settings=settings, devices=devices,
                               batch_size=args.batch_size,
                               codec_window_seconds=args.codec_window_seconds)
  requests, wheres, melodies = [], {}, {}
  names = gallery.unique_ids([_slug(item, i) for i, (_, item) in enumerate(items)])
  for name, (where, item) in zip(names, items):
    seed = args.seed if item.get('seed') is None else item['seed']
    for k in range(args.num_samples):
      rid = name if args.num_samples == 1 else f'{name}-s{k}'
      req = pipeline_lib.Request(rid, item['segments'], item['duration'], seed=seed,
                                 prompt=item['prompt'], melody=item.get('melody_audio'))
      try:
        pipe.check(req)
      except ValueError as e:
        skipped.append({'where': where, 'reason': str(e).splitlines()[0]})
        break
      requests.append(req)
      wheres[rid] = where
      if item.get('melody_info'):
        melodies[rid] = item['melody_info']
  for s in skipped:
    print(f'skipped: {s["where"]}: {s["reason"]}', file=sys.stderr)
  if not requests:
    print('error: nothing to generate (every item was skipped)', file=sys.stderr)
    return 2

  os.makedirs(args.out, exist_ok=True)
  new_ids = {r.id for r in requests}
  samples = [s for s in _previous_samples(args.out) if s['id'] not in new_ids]
  manifest = {
      'format': 'musiclm_jax.samples/1',
      'bundle': {'path': bundle.path, 'sha256': bundle.sha256},
      'settings': {k: v.to_json() for k, v in settings.items()},
      'seed': args.seed, 'num_samples': args.num_samples, 'samples': samples,
      'skipped': skipped, 'summary': {}}
  batch_seconds: dict[int, tuple[dict, dict, float]] = {}
  bars = _progress_bars(pipe, requests, disable=args.no_progress)

  def on_result(result):
    r = result.request
    wav_name, png_name = f'{r.id}.wav', f'{r.id}.png'
    gallery.write_wav(os.path.join(args.out, wav_name), result.audio, result.sample_rate)
    gallery.write_spectrogram(os.path.join(args.out, png_name), result.audio,
                              result.sample_rate)
    melody = {}
    if r.id in melodies:  # the melody as the model heard it, next to the output
      melody_name = f'{r.id}_melody.wav'
      gallery.write_wav(os.path.join(args.out, melody_name), r.melody, result.sample_rate)
      melody = {'melody': {**melodies[r.id], 'wav': melody_name}}
    audio_seconds = result.batch_size * r.duration
    samples.append({
        'id': r.id, 'source': wheres[r.id], 'prompt': r.prompt,
        'story': [s.to_json() for s in r.segments] if r.prompt is None else None,
        'duration': r.duration, 'seed': r.seed, 'wav': wav_name, 'png': png_name,
        'sample_rate': result.sample_rate, 'batch_size': result.batch_size,
        'stage_seconds': {k: round(v, 4) for k, v in result.stage_seconds.items()},
        'stage_tokens': result.stage_tokens,
        'compile_seconds': {k: round(v, 3) for k, v in result.compile_seconds.items()},
        'real_time_factor': {k: round(v / audio_seconds, 4)
                             for k, v in result.stage_seconds.items()}, **melody})
    batch_seconds[result.batch_index] = (result.stage_seconds, result.stage_tokens,
                                         audio_seconds)
    manifest['summary'] = _summary(batch_seconds, len(samples), len(skipped), start_time)
    gallery.write_outputs(args.out, manifest)

  def on_error(batch, error):
    reason = f'generation failed: {type(error).__name__}: {str(error).splitlines()[0][:300]}' \
        if str(error) else f'generation failed: {type(error).__name__}'
    for r in batch:
      skipped.append({'where': wheres[r.id], 'reason': reason})
      print(f'skipped: {wheres[r.id]} ({r.id}): {reason}', file=sys.stderr)
    manifest['summary'] = _summary(batch_seconds, len(samples), len(skipped), start_time)
    gallery.write_outputs(args.out, manifest)

  try:
    pipe.generate(requests, on_window=lambda stage, n: bars[stage].update(n),
                  on_result=on_result, on_error=on_error)
  finally:
    for bar in bars.values():
      bar.close()
  manifest['summary'] = _summary(batch_seconds, len(samples), len(skipped), start_time)
  gallery.write_outputs(args.out, manifest)
  written = sum(1 for s in samples if s['id'] in new_ids)
  print(f'wrote {written} samples to {args.out} ({os.path.join(args.out, "index.html")}) '
        f'in {time.time() - start_time:.1f} s' + (f'; skipped {len(skipped)}' if skipped else ''))
  return 1 if skipped else 0


def _progress_bars(pipe, requests, *, disable: bool) -> dict[str, Any]:
  from tqdm import tqdm  # pylint: disable=g-import-not-at-top
  totals = dict.fromkeys(STAGES, 0)
  for indices in pipe.batches(requests):
    for stage, n in pipe.num_windows(requests[indices[0]].duration).items():
      totals[stage] += n
  return {stage: tqdm(total=totals[stage], desc=f'{stage:>8} windows', position=i,
                      disable=disable, leave=True, file=sys.stderr)
          for i, stage in enumerate(STAGES)}


def _summary(batch_seconds, num_samples, num_skipped, start_time) -> dict[str, Any]:
  stages = {}
  audio = sum(a for _, _, a in batch_seconds.values())
  for stage in (*STAGES, 'codec'):
    secs = sum(s.get(stage, 0.0) for s, _, _ in batch_seconds.values())
    toks = sum(t.get(stage, 0) for _, t, _ in batch_seconds.values())
    stages[stage] = {'seconds': round(secs, 3),
                     'real_time_factor': round(secs / audio, 4) if audio else None}
    if stage != 'codec':
      stages[stage].update(tokens=toks, tokens_per_s=round(toks / secs, 1) if secs else None)
  return {'samples': num_samples, 'skipped': num_skipped, 'audio_seconds': round(audio, 3),
          'wall_seconds': round(time.time() - start_time, 3), 'stages': stages}


if __name__ == '__main__':
  sys.exit(main())
