"""Melody-embedder training batches: groups of clips that share a melody, from the synth corpus.

  batch = {'audio': float32 [batch_size, window_samples], 'melody': int32 [batch_size]}

The synth corpus renders each excerpt (a *melody group*) several times with other instruments,
and with a hum and a whistle of its top line, all with exactly the same timing. A batch holds
`batch_size // clips_per_melody` *units* of `clips_per_melody` window crops each; the clips of a
unit share a melody id (positives of each other), every other clip of the batch is a negative:

  * a group unit: one melody group, one crop offset (a window where the top line sounds), and
    members drawn from its instrument renderings (half, rounded up) and its voice renderings
    (the stored hums and whistles, plus a hum or whistle re-synthesised from `melody_pitch`);
  * a shifted twin (`shifted_fraction` of the units): the same group, offset and rhythm,
    re-synthesised as hums/whistles transposed by 1..`max_shift` semitones (never 0 or an
    octave). Every melody group has one transposition in the corpus, so these are the
    pitch-shifted hard negatives: same rhythm and timbre as a positive, other pitches.

The re-synthesis (`musiclm_jax.data.synth.voice`) rebuilds the top line from the 25 Hz
`melody_pitch` frames, so repeated notes of one pitch merge; group units hold re-synthesised
voices at shift 0 too, so "re-synthesised" is never a cue for "negative". Members get a small
independent time jitter and a random gain.

Determinism and resuming: batch i is a pure function of (seed, shard_index, i): group order
comes from a per-epoch permutation of this host's groups (seeded by seed and epoch; an epoch is
`len(groups) // group_units` batches, each group at most once per batch), every other choice
from `numpy.random.default_rng([seed, shard_index, i, unit])`. So `start_index` costs nothing,
and a resumed run sees exactly the batches an uninterrupted one would. Hosts split the melody
groups (group k goes to host k % num_shards); melody ids are `shard_index * units + unit`, so
they are unique in the global batch.

The split's audio (instrument renderings, hums, whistles) is held in memory as int16, once per
process: synth `small` train is ~390 MB. That bounds this reader to corpora of that order
(`full` would need a streaming group reader). A background thread prepares `prefetch` batches
ahead. TensorFlow/TFDS are imported only when data is read.
"""

from collections.abc import Callable, Iterator, Sequence
import dataclasses
import functools
import queue
import threading
from typing import Any

import numpy as np

from musiclm_jax.data import clip_reader

SAMPLE_RATE = 24000
FRAME_RATE = 25  # melody_pitch frames per second
DEFAULT_DATASET = 'synth/small'
VOICES = ('hum', 'whistle')


@dataclasses.dataclass(frozen=True)
class MelodyGroup:
  """All renderings of one excerpt.

  Attributes:
    name: the `melody_group` id.
    audio: int16 [renders, N] instrument renderings.
    hum: int16 [renders, N] the stored hums (one per rendering).
    whistle: int16 [renders, N] the stored whistles.
    melody_pitch: uint8 [frames] top-line MIDI pitch at 25 Hz, 0 = rest.
    transposition: semitones applied to the score.
  """
  name: str
  audio: np.ndarray
  hum: np.ndarray
  whistle: np.ndarray
  melody_pitch: np.ndarray
  transposition: int

  @property
  def num_samples(self) -> int:
    return int(self.audio.shape[1])


def _pcm(v) -> np.ndarray:
  """A stored audio feature as int16 [N] (float input is scaled; stereo is averaged)."""
  wav = np.asarray(v)
  if wav.ndim == 2:
    wav = wav.mean(axis=-1)
  if not np.issubdtype(wav.dtype, np.integer):
    wav = np.clip(np.round(wav * 32768.0), -32768, 32767)
  return wav.reshape(-1).astype(np.int16)


def _tfds_examples(data_dir: str | None, split: str, dataset: str, wanted: Sequence[str]
                   ) -> Iterator[dict[str, Any]]:
  """Numpy examples of a prepared split with only the `wanted` features decoded."""
  builder = clip_reader.open_split(
      data_dir, split, dataset=dataset, required=wanted, build_args='--corpus synth',
      needs='the melody embedder needs the synth corpus: melody groups, hums, whistles')
  return clip_reader.numpy_examples(builder, split, wanted)


def read_melody_examples(data_dir: str | None, split: str, *, dataset: str = DEFAULT_DATASET,
                         limit: int | None = None, counts: dict[str, int] | None = None
                         ) -> Iterator[dict[str, Any]]:
  """Clips of a prepared synth split as plain Python, for the evaluation and RVQ CLIs.

  Yields dicts: 'audio', 'hum', 'whistle' float32 [N]; 'melody_group', 'render_id',
  'work_id' str; 'instruments' list[str]; 'transposition' int; 'melody_pitch' uint8 [frames].
  Clips with empty or non-finite audio are skipped and counted in `counts['skipped_bad_audio']`.
  """
  counts = {} if counts is None else counts
  wanted = ('audio', 'hum', 'whistle', 'melody_group', 'render_id', 'work_id', 'instruments',
            'transposition', 'melody_pitch')
  for n, ex in enumerate(_tfds_examples(data_dir, split, dataset, wanted)):
    if limit is not None and n >= limit:
      break
    out = {}
    for key in ('audio', 'hum', 'whistle'):
      out[key] = _pcm(ex[key]).astype(np.float32) / 32768.0
    if not clip_reader.usable(counts, out['audio'], out['hum'], out['whistle']):
      continue
    out.update(melody_group=clip_reader.text(ex['melody_group']),
               render_id=clip_reader.text(ex['render_id']),
               work_id=clip_reader.text(ex['work_id']),
               instruments=[clip_reader.text(i) for i in ex['instruments']],
               transposition=int(ex['transposition']),
               melody_pitch=np.asarray(ex['melody_pitch'], np.uint8))
    yield out


@functools.lru_cache(maxsize=4)
def load_groups(data_dir: str | None, dataset: str, split: str, shard_index: int = 0,
                num_shards: int = 1) -> tuple[MelodyGroup, ...]:
  """This host's melody groups of a split, sorted by name, renderings sorted by render id.

  Cached per process (the trainer opens the input function twice). Clips whose audio does
  not match the group's length or is not finite are left out.
  """
  wanted = ('audio', 'hum', 'whistle', 'melody_group', 'render_id', 'transposition',
            'melody_pitch')
  raw: dict[str, list] = {}
  for ex in _tfds_examples(data_dir, split, dataset, wanted):
    name = clip_reader.text(ex['melody_group'])
    raw.setdefault(name, []).append(ex)
  names = sorted(raw)[shard_index::num_shards]
  groups = []
  for name in names:
    clips = sorted(raw.pop(name), key=lambda e: clip_reader.text(e['render_id']))
    arrays = [(_pcm(e['audio']), _pcm(e['hum']), _pcm(e['whistle'])) for e in clips]
    length = arrays[0][0].size
    arrays = [a for a in arrays if all(x.size == length for x in a)]
    if not arrays or length == 0:
      continue
    groups.append(MelodyGroup(
        name=name, audio=np.stack([a[0] for a in arrays]), hum=np.stack([a[1] for a in arrays]),
        whistle=np.stack([a[2] for a in arrays]),
        melody_pitch=np.asarray(clips[0]['melody_pitch'], np.uint8),
        transposition=int(clips[0]['transposition'])))
  return tuple(groups)


def melody_line(melody_pitch: np.ndarray, start: float, seconds: float,
                frame_rate: int = FRAME_RATE) -> list[tuple[float, float, int]]:
  """The top line in [start, start + seconds) as notes (start s, end s, MIDI pitch), from 0.

  Consecutive frames of one pitch form one note (so repeated notes merge); 0 is a rest.
  """
  pitch = np.asarray(melody_pitch).astype(np.int64)
  notes = []
  begin = 0
  for i in range(1, len(pitch) + 1):
    if i == len(pitch) or pitch[i] != pitch[begin]:
      if pitch[begin] > 0:
        s = max(begin / frame_rate - start, 0.0)
        e = min(i / frame_rate - start, seconds)
        if e - s > 1e-3:
          notes.append((s, e, int(pitch[begin])))
      begin = i
  return notes


def resynthesize(melody_pitch: np.ndarray, *, start: float, seconds: float, shift: int,
                 kind: str, seed: int) -> np.ndarray:
  """A hum or whistle of the top line in the window, transposed by `shift` semitones.

  Returns:
    float32 [round(seconds * 24000)] (silence where the line rests).
  """
  from musiclm_jax.data.synth import voice  # pylint: disable=g-import-not-at-top
  line = [(s, e, p + shift) for s, e, p in melody_line(melody_pitch, start, seconds)]
  fn = {'hum': voice.hum, 'whistle': voice.whistle}[kind]
  out = fn(line, seconds=seconds, seed=seed)
  n = int(round(seconds * SAMPLE_RATE))
  return np.pad(out[:n], (0, max(0, n - out.size))).astype(np.float32)


@dataclasses.dataclass(frozen=True)
class BatchSpec:
  """How a batch is drawn (see the module docstring).

  Attributes:
    clips_per_melody: clips per unit (>= 2: the positives of each other).
    window_seconds: crop length.
    shifted_fraction: share of the units that are pitch-shifted twins.
    max_shift: largest transposition of a twin, semitones (1..11).
    jitter_seconds: per-clip random offset around the unit's offset.
    gain_db: (min_db, max_db) of a per-clip random gain.
    min_voiced: the crop offset is redrawn (up to 8 times) while less of the window than
      this holds a sounding top-line note.
  """
  clips_per_melody: int = 4
  window_seconds: float = 4.0
  shifted_fraction: float = 0.25
  max_shift: int = 6
  jitter_seconds: float = 0.1
  gain_db: tuple[float, float] = (-12.0, 0.0)
  min_voiced: float = 0.5

  def __post_init__(self):
    if self.clips_per_melody < 2:
      raise ValueError(f'clips_per_melody must be >= 2, got {self.clips_per_melody}')
    if not 0 <= self.shifted_fraction <= 0.5:
      raise ValueError(f'shifted_fraction must be in [0, 0.5], got {self.shifted_fraction}')
    if not 1 <= self.max_shift <= 11:
      raise ValueError(f'max_shift must be in 1..11, got {self.max_shift}')
    if self.gain_db[0] > self.gain_db[1]:
      raise ValueError(f'gain_db must be (min_db, max_db), got {self.gain_db}')

  @property
  def window_samples(self) -> int:
    return int(round(self.window_seconds * SAMPLE_RATE))

  def units(self, batch_size: int) -> tuple[int, int]:
    """(group units, shifted twins) of a host batch."""
    if batch_size % self.clips_per_melody:
      raise ValueError(f'batch_size {batch_size} is not a multiple of clips_per_melody '
                       f'{self.clips_per_melody}')
    total = batch_size // self.clips_per_melody
    if total < 2:
      raise ValueError(f'batch_size {batch_size} holds {total} melody; need >= 2 '
                       f'(each of {self.clips_per_melody} clips)')
    shifted = min(int(round(total * self.shifted_fraction)), total // 2)
    return total - shifted, shifted


def _choose_offset(group: MelodyGroup, spec: BatchSpec, rng: np.random.Generator) -> float:
  span = max(group.num_samples / SAMPLE_RATE - spec.window_seconds, 0.0)
  frames = int(round(spec.window_seconds * FRAME_RATE))
  offset = 0.0
  for _ in range(8):
    offset = float(rng.uniform(0.0, span))
    first = int(round(offset * FRAME_RATE))
    if np.mean(group.melody_pitch[first:first + frames] > 0) >= spec.min_voiced:
      break
  return offset


def _crop(wav: np.ndarray, start: float, spec: BatchSpec) -> np.ndarray:
  n = spec.window_samples
  s = int(round(start * SAMPLE_RATE))
  out = wav[s:s + n].astype(np.float32)
  if wav.dtype == np.int16:
    out = out / 32768.0
  return np.pad(out, (0, n - out.size))


def _unit_clips(group: MelodyGroup, spec: BatchSpec, rng: np.random.Generator, offset: float,
                shift: int) -> list[np.ndarray]:
  """The clips of one unit: a group unit (shift 0) or a shifted twin."""
  k = spec.clips_per_melody
  span = max(group.num_samples / SAMPLE_RATE - spec.window_seconds, 0.0)
  starts = np.clip(offset + rng.uniform(-spec.jitter_seconds, spec.jitter_seconds, k), 0.0, span)
  if shift:
    first = int(rng.integers(2))
    sources = [('resynth', VOICES[(first + i) % 2]) for i in range(k)]
  else:
    renders = group.audio.shape[0]
    n_inst = k - k // 2
    order = rng.permutation(renders)
    sources = [('audio', int(order[i % renders])) for i in range(n_inst)]
    voices = ([('hum', r) for r in range(renders)] + [('whistle', r) for r in range(renders)]
              + [('resynth', VOICES[int(rng.integers(2))])])
    picks = rng.choice(len(voices), size=k // 2, replace=k // 2 > len(voices))
    sources += [voices[int(i)] for i in picks]
  clips = []
  for (kind, which), start in zip(sources, starts):
    if kind == 'resynth':
      wav = resynthesize(group.melody_pitch, start=float(start), seconds=spec.window_seconds,
                         shift=shift, kind=which, seed=int(rng.integers(2**31)))
    else:
      wav = _crop(getattr(group, kind)[which], float(start), spec)
    gain = 10.0 ** (rng.uniform(*spec.gain_db) / 20.0)
    clips.append(wav * gain)
  return clips


def make_batch(groups: Sequence[MelodyGroup], index: int, *, batch_size: int, seed: int,
               spec: BatchSpec, shard_index: int = 0) -> dict[str, np.ndarray]:
  """Batch `index` of this host (a pure function of its arguments)."""
  base, shifted = spec.units(batch_size)
  if len(groups) < base:
    raise ValueError(f'{len(groups)} melody groups on this host, fewer than the {base} a batch '
                     'holds; lower batch_size or shifted_fraction, or use more data')
  per_epoch = len(groups) // base
  epoch, k = divmod(index, per_epoch)
  order = np.random.default_rng([seed, shard_index, epoch, 0x6D656C]).permutation(len(groups))
  chosen = order[k * base:(k + 1) * base]
  audio, labels = [], []
  offsets = []
  for unit, g in enumerate(chosen):
    rng = np.random.default_rng([seed, shard_index, index, unit])
    offset = _choose_offset(groups[g], spec, rng)
    offsets.append(offset)
    audio += _unit_clips(groups[g], spec, rng, offset, 0)
    labels += [unit] * spec.clips_per_melody
  for twin in range(shifted):
    unit = base + twin
    rng = np.random.default_rng([seed, shard_index, index, unit])
    shift = int(rng.integers(1, spec.max_shift + 1)) * (1 if rng.integers(2) else -1)
    audio += _unit_clips(groups[chosen[twin]], spec, rng, offsets[twin], shift)
    labels += [unit] * spec.clips_per_melody
  units = base + shifted
  return {'audio': np.stack(audio).astype(np.float32),
          'melody': (shard_index * units + np.asarray(labels)).astype(np.int32)}


def _prefetched(make: Callable[[int], dict[str, np.ndarray]], start: int, size: int
                ) -> Iterator[dict[str, np.ndarray]]:
  """make(start), make(start + 1), ... computed `size` ahead on a daemon thread."""
  if size <= 0:
    index = start
    while True:
      yield make(index)
      index += 1
  items: queue.Queue = queue.Queue(maxsize=size)
  stop = threading.Event()

  def work():
    index = start
    try:
      while not stop.is_set():
        item = make(index)
        index += 1
        while not stop.is_set():
          try:
            items.put(item, timeout=0.1)
            break
          except queue.Full:
            continue
    except BaseException as e:  # pylint: disable=broad-except
      items.put(e)

  threading.Thread(target=work, daemon=True, name='melody-batches').start()
  try:
    while True:
      item = items.get()
      if isinstance(item, BaseException):
        raise item
      yield item
  finally:
    stop.set()


def melody_input_fn(*, batch_size: int, seed: int, start_index: int = 0, shard_index: int = 0,
                    num_shards: int = 1, name: str = DEFAULT_DATASET, data_dir: str | None = None,
                    split: str = 'train', clips_per_melody: int = 4, window_seconds: float = 4.0,
                    shifted_fraction: float = 0.25, max_shift: int = 6,
                    jitter_seconds: float = 0.1, gain_db: Sequence[float] = (-12.0, 0.0),
                    min_voiced: float = 0.5, prefetch: int = 2
                    ) -> Iterator[dict[str, np.ndarray]]:
  """Endless melody-group batches for the trainer (see the module docstring).

  Args:
    batch_size: clips per host batch (a multiple of `clips_per_melody`).
    seed: seeds group order and every random choice.
    start_index: batches already consumed; they are skipped (at no cost).
    shard_index: this host's shard.
    num_shards: number of hosts.
    name: TFDS name of a synth build ('synth/small').
    data_dir: TFDS data folder (default $MUSICLM_DATA_DIR, else ~/tensorflow_datasets).
    split: dataset split.
    clips_per_melody, window_seconds, shifted_fraction, max_shift, jitter_seconds, gain_db,
      min_voiced: see `BatchSpec`.
    prefetch: batches prepared ahead on a thread (0: none).

  Returns:
    An endless iterator of {'audio': float32 [batch_size, window_samples],
    'melody': int32 [batch_size]}.
  """
  if batch_size < 1 or start_index < 0 or not 0 <= shard_index < num_shards:
    raise ValueError(f'melody_input_fn: bad batch_size {batch_size}, start_index {start_index} '
                     f'or shard {shard_index} of {num_shards}')
  spec = BatchSpec(clips_per_melody=clips_per_melody, window_seconds=window_seconds,
                   shifted_fraction=shifted_fraction, max_shift=max_shift,
                   jitter_seconds=jitter_seconds, gain_db=tuple(float(g) for g in gain_db),
                   min_voiced=min_voiced)
  spec.units(batch_size)  # validates before any data is read
  data_dir = clip_reader.default_data_dir(data_dir)
  groups = load_groups(data_dir, name, split, shard_index, num_shards)
  if not groups:
    raise ValueError(f'TFDS {name} {split} under {data_dir}: no usable melody groups '
                     f'for shard {shard_index} of {num_shards}')
  make = functools.partial(make_batch, groups, batch_size=batch_size, seed=seed, spec=spec,
                           shard_index=shard_index)
  first = make(start_index)  # fails here, not in the thread, on a configuration problem

  def batches():
    yield first
    yield from _prefetched(make, start_index + 1, prefetch)

  return batches()
