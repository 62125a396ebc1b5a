"""TFDS builder of `synth`: music21's corpus rendered with FluidSynth, with captions.

    from musiclm_jax.data.synth.builder import Synth
    builder = Synth(config='small', data_dir='/tmp/synth_data')  # or 'tiny', 'full'
    builder.download_and_prepare()   # parses, plans, renders; ~3 min for `small` on 2 cores
    builder.skipped, builder.summary  # also written to <data_dir>/synth/skipped.jsonl
    ds = builder.as_dataset(split='train')

A build parses each selected corpus file once (`pipeline.plan_file`), plans every rendering
(instruments, dynamics, drums, split), then renders the planned clips of each split in batches
(`pipeline.render_batch`, one fluidsynth run per batch) in `num_workers` threads. Nothing one
work or clip does can stop the build: it is skipped and reported. See docs/SYNTH.md.
"""

import collections
import concurrent.futures
import dataclasses
import functools
import os
import time

import numpy as np
import tensorflow_datasets as tfds

from musiclm_jax.data.skips import SkipReport
from musiclm_jax.data.synth import excerpts, pipeline, plan, render, scores

_BATCH = 16  # clips per fluidsynth run

_QUARTETS = ('haydn/opus1no1/movement4.mxl', 'haydn/opus1no1/movement2.mxl',
             'mozart/k80/movement3.mxl', 'mozart/k156/movement4.mxl')


class PcmAudio(tfds.features.Audio):
  """`tfds.features.Audio` of int16 PCM stored as raw bytes (2 bytes a sample).

  Plain `Audio` ignores `encoding=` for arrays and writes an int64 list (~6 bytes a sample);
  this stores `ndarray.tobytes()` and decodes back to int16 [samples] like `Audio`.
  """

  def __init__(self, *, shape, sample_rate, doc=None, **unused):
    """`unused`: dtype/encoding/file_format/lazy_decode from a saved features.json (fixed)."""
    del unused
    super().__init__(shape=shape, dtype=np.int16, sample_rate=sample_rate, doc=doc,
                     encoding=tfds.features.Encoding.BYTES)

  def encode_example(self, audio):
    return tfds.features.Tensor.encode_example(self, np.asarray(audio, dtype=np.int16))


@dataclasses.dataclass(eq=False)
class SynthConfig(tfds.core.BuilderConfig):
  """A synth corpus configuration.

  Attributes:
    selectors: `(glob over corpus-relative paths, limit or None)`; a limit keeps a seeded,
      hash-ranked subset of the matches.
    max_excerpts_per_work: excerpts cut per work (None: every clip-long stretch).
    renders_per_excerpt: renderings per excerpt (one melody group).
    clip_seconds: clip length.
    seed: seed of every random choice (the split rule does not depend on it).
    heldout_rate: share of validation/test renderings forced to hold a held-out instrument pair.
  """
  selectors: tuple[tuple[str, int | None], ...] = (('*', None),)
  max_excerpts_per_work: int | None = 2
  renders_per_excerpt: int = 3
  clip_seconds: float = 10.0
  seed: int = 0
  heldout_rate: float = 0.25


SMALL = SynthConfig(
    name='small',
    description='~300 clips: 36 Bach chorales, 16 fiddle tunes, 4 quartet movements; '
                '2 excerpts per work, 3 renderings each. Builds in a few minutes on 2 cores.',
    selectors=(('bach/bwv*.mxl', 36), ('ryansMammoth/*.abc', 16)) + tuple(
        (q, None) for q in _QUARTETS))
FULL = SynthConfig(
    name='full',
    description='The whole bundled corpus (every score, every tune of multi-tune files, ~15k '
                'works); 2 excerpts per work, 3 renderings each (~80k clips, ~220 h).',
    max_excerpts_per_work=2)
TINY = SynthConfig(
    name='tiny',
    description='8 clips of 4 works (2 train, 1 validation, 1 test) for tests.',
    selectors=(('bach/bwv1.6.mxl', None), ('bach/bwv102.7.mxl', None),
               ('ryansMammoth/7thRegimentReel.abc', None),
               ('ryansMammoth/AfterTheHareReel.abc', None)),
    max_excerpts_per_work=1, renders_per_excerpt=2, heldout_rate=0.5)


class Synth(tfds.core.GeneratorBasedBuilder):
  """music21's bundled corpus rendered with FluidSynth + GM soundfont, captioned from metadata.

  Attributes:
    skipped: `[{"item": ..., "reason": ...}]` of the last generation.
    summary: clips, audio hours, clips per split, skips, seconds of the last
      `download_and_prepare` (`reused: True` when the data already existed).
  """

  VERSION = tfds.core.Version('1.0.0')
  RELEASE_NOTES = {'1.0.0': 'First release.'}
  BUILDER_CONFIGS = [SMALL, FULL, TINY]
  DEFAULT_CONFIG_NAME = 'small'

  def __init__(self, *, num_workers: int | None = None, soundfont: str | None = None, **kwargs):
    """Creates the builder.

    Args:
      num_workers: rendering threads (default: up to 2; 1 renders inline).
      soundfont: a GM .sf2 file (default: $MUSICLM_SOUNDFONT or Debian's FluidR3_GM.sf2).
      **kwargs: TFDS builder arguments (`config`, `data_dir`, ...).
    """
    self.num_workers = num_workers if num_workers is not None else min(2, os.cpu_count() or 1)
    self.soundfont = soundfont
    self.skipped: list[dict[str, str]] = []
    self.summary: dict = {}
    self._report = SkipReport()
    self._items: dict[str, list] = {}
    self._counts: dict[str, int] = {}
    self._plan_stats: dict = {}
    super().__init__(**kwargs)

  def _info(self) -> tfds.core.DatasetInfo:
    config = self.builder_config
    samples = int(round(config.clip_seconds * render.SAMPLE_RATE))
    frames = int(round(config.clip_seconds * excerpts.FRAME_RATE))
    audio = functools.partial(PcmAudio, shape=(samples,), sample_rate=render.SAMPLE_RATE)
    text = tfds.features.Text
    return self.dataset_info_from_configs(
        description=__doc__.split('\n')[0],
        features=tfds.features.FeaturesDict({
            'audio': audio(doc='mono 24 kHz int16 rendering'),
            'hum': audio(doc='"oo" hum of the top line, same timing'),
            'whistle': audio(doc='whistle of the top line, same timing'),
            'caption': text(),
            'aspects': tfds.features.Sequence(text()),
            'instruments': tfds.features.Sequence(text()),
            'programs': tfds.features.Tensor(shape=(None,), dtype=np.int32,
                                             doc='GM programs aligned with instruments; '
                                                 '128 = drum kit'),
            'tempo_bpm': tfds.features.Scalar(dtype=np.float32, doc='beats per minute'),
            'key': text(), 'time_signature': text(), 'texture': text(), 'dynamics': text(),
            'composer': text(), 'title': text(),
            'work_id': text(), 'melody_group': text(), 'render_id': text(),
            'transposition': tfds.features.Scalar(dtype=np.int32, doc='semitones'),
            'excerpt_start': tfds.features.Scalar(dtype=np.float32, doc='quarter notes'),
            'excerpt_end': tfds.features.Scalar(dtype=np.float32, doc='quarter notes'),
            'pitch_classes': tfds.features.Tensor(shape=(frames, 12), dtype=np.uint8,
                                                  doc='sounding pitch classes at 25 Hz'),
            'melody_pitch': tfds.features.Tensor(shape=(frames,), dtype=np.uint8,
                                                 doc='top-line MIDI pitch at 25 Hz, 0 = rest'),
        }),
        homepage='https://web.mit.edu/music21/',
    )

  def _options(self) -> pipeline.Options:
    config = self.builder_config
    return pipeline.Options(
        clip_seconds=config.clip_seconds, max_excerpts_per_work=config.max_excerpts_per_work,
        renders_per_excerpt=config.renders_per_excerpt, seed=config.seed,
        heldout_rate=config.heldout_rate,
        soundfont=self.soundfont or render.default_soundfont())

  def _map(self, fn, jobs):
    """Ordered results of fn over jobs, in `num_workers` threads with bounded look-ahead.

    Threads, not processes: the heavy work (fluidsynth subprocesses, large numpy operations)
    runs outside the GIL, and threads avoid re-importing the caller's main module (spawn) or
    forking a process that holds TensorFlow and JAX threads.
    """
    if self.num_workers <= 1:
      yield from map(fn, jobs)
      return
    with concurrent.futures.ThreadPoolExecutor(self.num_workers) as pool:
      pending = collections.deque()
      for job in jobs:
        pending.append(pool.submit(fn, job))
        if len(pending) > 2 * self.num_workers:
          yield pending.popleft().result()
      while pending:
        yield pending.popleft().result()

  def _split_generators(self, dl_manager):
    del dl_manager  # everything comes from the installed music21 package
    options = self._options()
    start = time.time()
    files = scores.select_files(self.builder_config.selectors, seed=self.builder_config.seed)
    self._items = {split: [] for split in plan.SPLITS}
    for rel_path in files:  # music21 parsing holds the GIL: one file at a time
      items, skipped = pipeline.plan_file(rel_path, options=options)
      self._report.extend(skipped)
      for excerpt, render_plan in items:
        self._items[render_plan.split].append((excerpt, render_plan))
    planned = [item for items in self._items.values() for item in items]
    self._plan_stats = {
        'files': len(files), 'works': len({e.work_id for e, _ in planned}),
        'melody_groups': len({e.melody_group for e, _ in planned}),
        'planned_clips': len(planned), 'plan_seconds': round(time.time() - start, 1)}
    return {split: self._generate_examples(split, options)
            for split in plan.SPLITS if self._items[split]}

  def _generate_examples(self, split: str, options: pipeline.Options):
    items = self._items.pop(split)
    batches = [items[i:i + _BATCH] for i in range(0, len(items), _BATCH)]
    for examples, skipped in self._map(functools.partial(pipeline.render_batch, options=options),
                                       batches):
      self._report.extend(skipped)
      for key, example in examples:
        self._counts[split] = self._counts.get(split, 0) + 1
        yield key, example

  def _download_and_prepare(self, dl_manager, download_config=None):
    start = time.time()
    self._report, self._counts, self._plan_stats = SkipReport(), {}, {}
    try:
      super()._download_and_prepare(dl_manager, download_config)
    finally:
      self._finish_report(time.time() - start)

  def _finish_report(self, seconds: float) -> None:
    self.skipped = list(self._report.records)
    clips = sum(self._counts.values())
    self.summary = {
        'config': self.builder_config.name, 'clips': clips,
        'audio_hours': round(clips * self.builder_config.clip_seconds / 3600, 4),
        'splits': dict(self._counts), **self._plan_stats, 'skipped': len(self.skipped),
        'skipped_by_reason': self._report.counts(), 'seconds': round(seconds, 1),
        'num_workers': self.num_workers}
    self._report.write_jsonl(os.path.join(os.fspath(self.data_dir_root), 'synth',
                                          'skipped.jsonl'))

  def download_and_prepare(self, *args, **kwargs):
    """TFDS `download_and_prepare`; afterwards `summary` describes the data on disk."""
    self.summary = {}
    super().download_and_prepare(*args, **kwargs)
    if not self.summary:  # already prepared: describe what is there
      splits = {name: info.num_examples for name, info in self.info.splits.items()}
      clips = sum(splits.values())
      self.summary = {'config': self.builder_config.name, 'clips': clips,
                      'audio_hours': round(clips * self.builder_config.clip_seconds / 3600, 4),
                      'splits': splits, 'reused': True}
