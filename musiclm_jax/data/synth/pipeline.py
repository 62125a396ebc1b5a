"""The TF-free work of a synth build: plan a corpus file, render a batch of planned clips.

Both functions take and return plain picklable objects, so the builder can run them inline or
in worker processes. Nothing here raises for one bad work or clip: failures come back as skip
records `{"item": ..., "reason": "<kind>: <detail>"}`.
"""

import dataclasses

import numpy as np

from musiclm_jax.data.synth import captions, excerpts, plan, render, scores, voice


@dataclasses.dataclass(frozen=True)
class Options:
  """What workers need from the builder config."""
  clip_seconds: float = 10.0
  max_excerpts_per_work: int | None = 2
  renders_per_excerpt: int = 3
  seed: int = 0
  heldout_rate: float = 0.25
  soundfont: str = ''


Item = tuple[excerpts.Excerpt, plan.RenderPlan]


def _one_line(e: Exception) -> str:
  return ' '.join(f'{type(e).__name__}: {e}'.split())[:300]


def plan_file(rel_path: str, options: Options) -> tuple[list[Item], list[dict[str, str]]]:
  """Parses one corpus file once and plans every rendering of its excerpts."""
  try:
    works, skipped = scores.read_file(rel_path)
  except Exception as e:  # pylint: disable=broad-except
    return [], [{'item': rel_path, 'reason': f'unparsable: {_one_line(e)}'}]
  items: list[Item] = []
  for score in works:
    try:
      cut, cut_skipped = excerpts.cut_excerpts(
          score, clip_seconds=options.clip_seconds,
          max_excerpts=options.max_excerpts_per_work, seed=options.seed)
      skipped.extend(cut_skipped)
      for excerpt in cut:
        for render_plan in plan.plan_renders(excerpt, renders=options.renders_per_excerpt,
                                             seed=options.seed,
                                             heldout_rate=options.heldout_rate):
          items.append((excerpt, render_plan))
    except Exception as e:  # pylint: disable=broad-except
      skipped.append({'item': score.work_id, 'reason': f'unplannable: {_one_line(e)}'})
  return items, skipped


def example_of(excerpt: excerpts.Excerpt, render_plan: plan.RenderPlan, audio: np.ndarray,
               options: Options) -> dict:
  """The TFDS example (numpy/str values) of one rendered clip."""
  line = excerpts.top_line(excerpt.top)
  hummed = voice.hum(line, seconds=options.clip_seconds, seed=render_plan.seed + 2)
  whistled = voice.whistle(line, seconds=options.clip_seconds, seed=render_plan.seed + 3)
  pitch_classes, melody_pitch = excerpts.frame_features(excerpt)
  source, _ = captions.source_info(excerpt.collection, excerpt.composer)
  return {
      'audio': render.to_int16(audio),
      'hum': render.to_int16(hummed),
      'whistle': render.to_int16(whistled),
      'caption': render_plan.caption,
      'aspects': list(render_plan.aspects),
      'instruments': render_plan.instruments,
      'programs': np.asarray(render_plan.programs, dtype=np.int32),
      'tempo_bpm': np.float32(excerpt.tempo_bpm),
      'key': excerpt.key,
      'time_signature': f'{excerpt.time_signature[0]}/{excerpt.time_signature[1]}',
      'texture': render_plan.texture,
      'dynamics': render_plan.dynamics if render_plan.shape == 'steady'
                  else f'{render_plan.dynamics} {render_plan.shape}',
      'composer': source[3:] if source and source.startswith('by ') else '',
      'title': excerpt.title,
      'work_id': excerpt.work_id,
      'melody_group': excerpt.melody_group,
      'render_id': render_plan.render_id,
      'transposition': np.int32(excerpt.transposition),
      'excerpt_start': np.float32(excerpt.start_quarters),
      'excerpt_end': np.float32(excerpt.end_quarters),
      'pitch_classes': pitch_classes,
      'melody_pitch': melody_pitch,
  }


def render_batch(items: list[Item], options: Options) -> tuple[list[tuple[str, dict]],
                                                               list[dict[str, str]]]:
  """Renders planned clips with one fluidsynth run; returns ([(key, example)], skipped)."""
  try:
    clips = render.render_segments(items, clip_seconds=options.clip_seconds,
                                   soundfont=options.soundfont)
  except Exception as e:  # pylint: disable=broad-except
    reason = f'render failed: {_one_line(e)}'
    return [], [{'item': p.render_id, 'reason': reason} for _, p in items]
  examples, skipped = [], []
  for (excerpt, render_plan), clip in zip(items, clips):
    try:
      clip = render.add_room(clip, wet=render_plan.reverb, rt60=render_plan.room_seconds,
                             seed=render_plan.seed + 4)
      audio = render.fade_and_normalize(clip, render.PEAK_BY_DYNAMICS[render_plan.dynamics])
      examples.append((render_plan.render_id, example_of(excerpt, render_plan, audio, options)))
    except render.RenderError as e:
      skipped.append({'item': render_plan.render_id, 'reason': f'bad audio: {e}'})
    except Exception as e:  # pylint: disable=broad-except
      skipped.append({'item': render_plan.render_id, 'reason': f'example failed: {_one_line(e)}'})
  return examples, skipped
