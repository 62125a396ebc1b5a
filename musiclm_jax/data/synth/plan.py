"""Per-rendering choices of the synth corpus and the split rule.

Every choice is drawn from a generator seeded with `stable_hash(seed, render_id)`, so a build
is reproducible from the config seed alone, whatever the order or process that renders it.

Split rule: a work goes to `train` / `validation` / `test` by `stable_hash('split', work_id)`
(80 / 10 / 10 %), independent of the seed and the config, so no piece ever crosses splits. A
rendering whose instrument set holds one of `HELDOUT_INSTRUMENT_COMBINATIONS` is redrawn when its
work is in train and goes to `test_heldout_instruments` when its work is in validation or test
(where a `heldout_rate` share of renderings is forced to hold such a pair).
"""

import dataclasses

import numpy as np

from musiclm_jax.data.synth import captions, instruments
from musiclm_jax.data.synth.excerpts import Excerpt
from musiclm_jax.data.synth.scores import stable_hash

SPLITS = ('train', 'validation', 'test', 'test_heldout_instruments')
HELDOUT_SPLIT = 'test_heldout_instruments'
DYNAMICS = ('pp', 'p', 'mp', 'mf', 'f', 'ff')
_DYNAMICS_P = (0.08, 0.17, 0.2, 0.25, 0.2, 0.1)
SHAPES = ('steady', 'crescendo', 'diminuendo')
_SHAPES_P = (0.7, 0.15, 0.15)
DRUM_PROBABILITY = 0.2
ORIGINAL_PROBABILITY = 0.6  # of rendering 0 keeping the score's own instruments, when known
_MAX_REDRAWS = 20


def work_split(work_id: str) -> str:
  """'train' (80 %), 'validation' (10 %) or 'test' (10 %) from a hash of the work id."""
  bucket = stable_hash('split', work_id) % 100
  return 'train' if bucket < 80 else ('validation' if bucket < 90 else 'test')


@dataclasses.dataclass
class RenderPlan:
  """Everything that distinguishes one rendering of an excerpt from the others."""
  render_id: str
  index: int
  seed: int
  split: str
  mode: str                 # instrumentation mode (see `instruments`), or 'heldout'
  part_names: list[str]     # caption instrument name per excerpt part (top to bottom)
  texture: str              # as heard: a multi-part score on one instrument is a 'solo'
  drums: bool
  dynamics: str             # 'pp' .. 'ff'
  shape: str                # 'steady', 'crescendo', 'diminuendo'
  reverb: float             # wet/dry ratio of the synthetic room (0.05 .. 0.45)
  room_seconds: float       # reverberation time (RT60) of the room
  caption: str
  aspects: list[str]

  @property
  def part_programs(self) -> list[int]:
    return [instruments.NAME_TO_PROGRAM[n] for n in self.part_names]

  @property
  def instruments(self) -> list[str]:
    """Distinct instruments heard, top part first, 'drums' last."""
    names = list(dict.fromkeys(self.part_names))
    return names + ['drums'] if self.drums else names

  @property
  def programs(self) -> list[int]:
    """GM programs aligned with `instruments` (`DRUMS` = 128 for the kit)."""
    return [instruments.NAME_TO_PROGRAM[n] for n in self.instruments]


def _ranges(excerpt: Excerpt) -> list[tuple[int, int]]:
  return [(int(p.pitches.min()), int(p.pitches.max())) for p in excerpt.parts]


def plan_renders(excerpt: Excerpt, *, renders: int, seed: int,
                 heldout_rate: float) -> list[RenderPlan]:
  """Draws `renders` renderings of an excerpt (instruments, dynamics, drums, room, caption)."""
  split = work_split(excerpt.work_id)
  part_names = [p.name for p in excerpt.parts]
  ranges = _ranges(excerpt)
  plans = []
  for index in range(renders):
    render_id = f'{excerpt.melody_group}#r{index}'
    render_seed = stable_hash(seed, render_id)
    rng = np.random.default_rng(render_seed)
    forced = None
    if split != 'train' and rng.random() < heldout_rate:
      forced = instruments.force_heldout(rng, len(excerpt.parts))
    if forced is not None:
      mode, names, drums = 'heldout', forced[1], forced[2]
    else:
      allow_original = index == 0 and rng.random() < ORIGINAL_PROBABILITY
      for _ in range(_MAX_REDRAWS):
        mode, names = instruments.draw_instrumentation(rng, part_names, ranges,
                                                       allow_original=allow_original)
        drums = mode != 'original' and rng.random() < DRUM_PROBABILITY
        heard = names + (['drums'] if drums else [])
        if split != 'train' or not instruments.heldout_combinations_in(heard):
          break
        allow_original = False
      else:
        mode, names, drums = 'single', ['piano'] * len(part_names), False
    heard = names + (['drums'] if drums else [])
    render_split = HELDOUT_SPLIT if instruments.heldout_combinations_in(heard) else split
    dynamics = str(rng.choice(DYNAMICS, p=_DYNAMICS_P))
    shape = str(rng.choice(SHAPES, p=_SHAPES_P))
    reverb, room_seconds = float(rng.uniform(0.05, 0.45)), float(rng.uniform(0.3, 2.2))
    texture = captions.texture_of(excerpt.texture, names)
    caption_rng = np.random.default_rng(stable_hash(seed, render_id, 'caption'))
    text = captions.caption(
        caption_rng, part_names=names, drums=drums, bpm=excerpt.tempo_bpm, key=excerpt.key,
        collection=excerpt.collection, composer=excerpt.composer, texture=texture,
        dynamics=dynamics, shape=shape)
    _, style = captions.source_info(excerpt.collection, excerpt.composer)
    tags = captions.aspects(names=names, drums=drums, bpm=excerpt.tempo_bpm, key=excerpt.key,
                            style=style, texture=texture, dynamics=dynamics, shape=shape)
    plans.append(RenderPlan(
        render_id=render_id, index=index, seed=render_seed, split=render_split, mode=mode,
        part_names=list(names), texture=texture, drums=drums, dynamics=dynamics, shape=shape,
        reverb=reverb, room_seconds=room_seconds, caption=text, aspects=tags))
  return plans
