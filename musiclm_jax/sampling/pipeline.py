"""Text (+ melody) -> MuLan (+ melody) tokens -> semantic -> coarse -> fine -> codec -> waveform.

  pipe = Pipeline(load_bundle(path), settings=PAPER_SETTINGS)
  results = pipe.generate([Request('a', plain_story('calm piano', 10.0), 10.0, seed=0)])
  results = pipe.generate([Request('b', plain_story('a guitar riff', 8.0), 8.0,
                                   melody=hum_24khz)])   # a bundle with melody (has_melody)

Requests with the same length share batches (rows padded to a power of two so only a few batch
shapes ever compile); each stage runs its sliding windows (`longform`) with one compiled decoder.
Every row has its own PRNG key (seed, request id), so a request's audio does not depend on the
other requests of the run. Timings per stage are wall seconds of the batch without the stage's
compile time (reported apart); the codec's include its compile on first use.

Melody: a request may carry a waveform (float32 [N] at the bundle's sample rate). Every window
of a stage whose layout has a 'melody' field is conditioned on the melody tokens of its own time
span: M windows of 4 s every 3 s starting at the window's first frame (the span the training
crops pair with their melody windows), embedded from the melody audio (zero-padded past its
end); windows that start after the melody ends, and every window of a request without a
melody, get -1 (PAD: the dropped melody the stage was trained with).
"""

import dataclasses
import math
import time
import zlib
from collections.abc import Callable, Mapping, Sequence
from typing import Any

import jax
import numpy as np

from musiclm_jax.sampling import decode as decode_lib
from musiclm_jax.sampling import longform
from musiclm_jax.sampling import story as story_lib

STAGES = ('semantic', 'coarse', 'fine')


@dataclasses.dataclass
class Request:
  """One piece to generate.

  Attributes:
    id: output name (unique in a run).
    segments: the timed prompts (a plain prompt is one segment over the whole duration).
    duration: seconds.
    seed: base seed; the row key is derived from (seed, id).
    prompt: the plain prompt text (None in story mode).
    melody: float32 [samples] at the bundle's sample rate, or None (no melody conditioning).
  """
  id: str
  segments: list[story_lib.StorySegment]
  duration: float
  seed: int = 0
  prompt: str | None = None
  melody: np.ndarray | None = None


def plain_story(prompt: str, duration: float) -> list[story_lib.StorySegment]:
  return [story_lib.StorySegment(prompt, 0.0, float(duration))]


@dataclasses.dataclass
class Result:
  """A generated piece: float32 audio [samples] and the timings of its batch.

  `stage_seconds` exclude the stages' compile time (`compile_seconds`); the codec's entry
  includes its compile on first use.
  """
  request: Request
  audio: np.ndarray
  sample_rate: int
  batch_size: int
  stage_seconds: dict[str, float]
  stage_tokens: dict[str, int]
  compile_seconds: dict[str, float] = dataclasses.field(default_factory=dict)
  batch_index: int = 0


def row_key(seed: int, request_id: str) -> np.ndarray:
  """uint32 [2] PRNG key of one request."""
  key = jax.random.PRNGKey(int(seed) & 0x7FFFFFFF)
  return np.asarray(jax.random.fold_in(key, zlib.crc32(request_id.encode('utf-8')) & 0x7FFFFFFF))


class Pipeline:
  """The whole MusicLM sampler over a loaded bundle.

  Args:
    bundle: `musiclm_jax.sampling.bundle.Bundle`.
    settings: stage name -> SamplingSettings (default: the paper's temperatures).
    devices: devices to shard batches over (default: all local devices).
    batch_size: most rows per batch.
    semantic_keep / coarse_keep / fine_keep: fraction of each window kept as the next
      window's prefix.
    codec_window_seconds / codec_context_seconds: the codec decodes fixed windows of
      window + context seconds, discarding the context (left) part after the first window.
  """

  def __init__(self, bundle: Any, *,
               settings: Mapping[str, decode_lib.SamplingSettings] = decode_lib.PAPER_SETTINGS,
               devices: Sequence[jax.Device] | None = None, batch_size: int = 8,
               semantic_keep: float = 0.5, coarse_keep: float = 0.5, fine_keep: float = 0.0,
               codec_window_seconds: float = 10.0, codec_context_seconds: float = 1.0):
    self.bundle = bundle
    self.settings = {s: settings.get(s, decode_lib.PAPER_SETTINGS[s]) for s in STAGES}
    self.batch_size = max(1, int(batch_size))
    self.decoders = {s: decode_lib.StageDecoder(bundle.stages[s], bundle.stage_params[s],
                                                settings=self.settings[s], devices=devices)
                     for s in STAGES}
    self.layouts = {s: bundle.stages[s].layout for s in STAGES}
    self.acoustic_rate = bundle.acoustic_frame_rate
    self.semantic_rate = bundle.semantic_frame_rate
    self.ratio = int(round(self.acoustic_rate / self.semantic_rate))
    self.keep = {
        'semantic': longform.keep_frames(self.layouts['semantic'].target.num_frames, semantic_keep),
        'coarse': longform.keep_frames(self.layouts['coarse'].target.num_frames, coarse_keep,
                                       multiple=self.ratio),
        'fine': longform.keep_frames(self.layouts['fine'].target.num_frames, fine_keep),
    }
    self.codec_window = max(1, int(round(codec_window_seconds * self.acoustic_rate)))
    self.codec_context = max(0, int(round(codec_context_seconds * self.acoustic_rate)))
    self._mulan_cache: dict[str, np.ndarray] = {}
    self.melody = getattr(bundle, 'melody', None)  # MelodyEmbedder or None
    self.melody_stages = [s for s in STAGES
                          if 'melody' in [f.name for f in self.layouts[s].conditioning]]

  @property
  def has_melody(self) -> bool:
    """Whether requests may carry a melody (an embedder and a stage that conditions on it)."""
    return self.melody is not None and bool(self.melody_stages)

  # -- sizes ---------------------------------------------------------------------------------

  def frames(self, duration: float) -> dict[str, int]:
    """Target frames per stage for a duration (semantic covers the acoustic frames)."""
    acoustic = max(1, math.ceil(duration * self.acoustic_rate - 1e-9))
    semantic = math.ceil(acoustic / self.ratio)
    return {'semantic': semantic, 'coarse': acoustic, 'fine': acoustic}

  def num_windows(self, duration: float) -> dict[str, int]:
    frames = self.frames(duration)
    return {s: longform.count_windows(frames[s], self.layouts[s].target.num_frames, self.keep[s])
            for s in STAGES}

  # -- conditioning --------------------------------------------------------------------------

  def mulan_tokens(self, texts: Sequence[str]) -> dict[str, np.ndarray]:
    """text -> int32 [levels the stages use]; raises ValueError for a text MuLan cannot read."""
    levels = self.layouts['semantic'].field('mulan').num_levels
    todo = [t for t in dict.fromkeys(texts) if t not in self._mulan_cache]
    if todo:
      tokens = self.bundle.mulan.text_tokens(list(todo))  # [n, mulan levels]
      for text, row in zip(todo, np.asarray(tokens)):
        self._mulan_cache[text] = row[:levels].astype(np.int32)
    return {t: self._mulan_cache[t] for t in texts}

  def set_mulan_tokens(self, text: str, tokens) -> None:
    """Uses `tokens` (int [levels]) for `text` instead of asking MuLan (benchmarks, tests)."""
    levels = self.layouts['semantic'].field('mulan').num_levels
    self._mulan_cache[text] = np.asarray(tokens, np.int32)[:levels]

  def check(self, request: Request) -> None:
    """Raises ValueError (one line) if the request cannot be generated."""
    if not request.duration > 0:
      raise ValueError(f'duration {request.duration} s must be positive')
    if request.duration > longform.MAX_DURATION_SECONDS + 1e-9:
      raise ValueError(f'duration {request.duration} s exceeds the limit of '
                       f'{longform.MAX_DURATION_SECONDS:.0f} s')
    story_lib.validate(request.segments, max_duration=longform.MAX_DURATION_SECONDS)
    for seg in request.segments:
      self.mulan_tokens([seg.text])
    if request.melody is not None:
      if not self.has_melody:
        raise ValueError('this bundle has no melody model (export it with --melody and a '
                         'semantic stage conditioned on melody tokens)')
      wav = np.asarray(request.melody)
      if wav.ndim != 1 or not wav.size or not np.all(np.isfinite(wav)):
        raise ValueError(f'melody: expected finite mono audio [samples], got shape {wav.shape}')

  def _mulan_at(self, requests: Sequence[Request], seconds: float) -> np.ndarray:
    rows = []
    for r in requests:
      seg = r.segments[story_lib.segment_at(r.segments, seconds)]
      rows.append(self.mulan_tokens([seg.text])[seg.text])
    return np.stack(rows)  # [batch, levels]

  def melody_at(self, requests: Sequence[Request], seconds: float, num_windows: int,
                levels: int) -> np.ndarray:
    """int32 [batch, num_windows, levels]: the melody tokens of windows every hop from
    `seconds` (-1 for rows without a melody and for windows starting after its end)."""
    config = self.melody.config
    window, hop = config.window_samples, config.hop_samples
    span = (num_windows - 1) * hop + window
    start = int(round(seconds * self.melody.sample_rate))
    out = np.full((len(requests), num_windows, levels), -1, np.int32)
    audio = np.zeros((len(requests), span), np.float32)  # one shape: one compiled embedder
    rows = [i for i, r in enumerate(requests) if r.melody is not None and start < len(r.melody)]
    if not rows:
      return out
    for i in rows:
      piece = np.asarray(requests[i].melody, np.float32)[start:start + span]
      audio[i, :len(piece)] = piece
    codes = np.asarray(self.melody.tokens(audio)).reshape(len(requests), num_windows, -1)
    for i in rows:
      whole = [j for j in range(num_windows) if start + j * hop < len(requests[i].melody)]
      out[i, whole] = codes[i, whole, :levels]
    return out

  def _conditioning(self, stage: str, requests: Sequence[Request], window: longform.Window,
                    rate: float) -> dict[str, np.ndarray]:
    """MuLan tokens of the window's story segment (+ melody tokens of its span)."""
    fields = {'mulan': self._mulan_at(requests, longform.conditioning_time(window, rate))}
    if stage in self.melody_stages:
      f = self.layouts[stage].field('melody')
      if self.melody is None:
        fields['melody'] = np.full((len(requests), f.num_frames, f.num_levels), -1, np.int32)
      else:
        fields['melody'] = self.melody_at(requests, window.start / rate, f.num_frames,
                                          f.num_levels)
    return fields

  # -- generation ----------------------------------------------------------------------------

  def generate(self, requests: Sequence[Request],
               on_window: Callable[[str, int], Any] | None = None,
               on_result: Callable[[Result], Any] | None = None,
               on_error: Callable[[list[Request], Exception], Any] | None = None
               ) -> list[Result | None]:
    """Generates every request (call `check` first); returns results in request order.

    Args:
      requests: the pieces.
      on_window: called with (stage, 1) after each window of each batch (progress bars).
      on_result: called with each finished Result (so callers can write outputs early).
      on_error: if given, a batch that raises is reported to it (its results stay None) and
        the other batches still run; otherwise the exception propagates.
    """
    results: list[Result | None] = [None] * len(requests)
    for batch_index, indices in enumerate(self.batches(requests)):
      batch = [requests[i] for i in indices]
      try:
        batch_results = self._generate_batch(batch, on_window)
      except Exception as e:  # pylint: disable=broad-except
        if on_error is None:
          raise
        on_error(batch, e)
        continue
      for i, result in zip(indices, batch_results):
        result.batch_index = batch_index
        results[i] = result
        if on_result is not None:
          on_result(result)
    return results

  def batches(self, requests: Sequence[Request]) -> list[list[int]]:
    """Request indices per batch: same length, at most `batch_size` rows."""
    groups: dict[int, list[int]] = {}
    for i, r in enumerate(requests):
      groups.setdefault(self.frames(r.duration)['coarse'], []).append(i)
    return [indices[start:start + self.batch_size] for indices in groups.values()
            for start in range(0, len(indices), self.batch_size)]

  def _generate_batch(self, requests: Sequence[Request],
                      on_window: Callable[[str, int], Any] | None) -> list[Result]:
    n = len(requests)
    rows = 1 << (n - 1).bit_length()  # pad to a power of two: few compiled batch shapes
    padded = list(requests) + [requests[0]] * (rows - n)
    keys = np.stack([row_key(r.seed, r.id) for r in padded])  # [rows, 2]
    frames = self.frames(requests[0].duration)
    seconds, tokens = {}, {}

    def progress(stage):
      return (lambda w: on_window(stage, 1)) if on_window else None

    compile_seconds = {}

    def timed(stage, fn):
      t0, c0 = time.perf_counter(), self.decoders[stage].compile_seconds
      out = fn()
      compile_seconds[stage] = self.decoders[stage].compile_seconds - c0
      seconds[stage] = time.perf_counter() - t0 - compile_seconds[stage]
      return out

    semantic = timed('semantic', lambda: longform.run_stage(
        self.decoders['semantic'], total_frames=frames['semantic'], keep=self.keep['semantic'],
        conditioning=lambda w: self._conditioning('semantic', padded, w, self.semantic_rate),
        keys=keys, stage_index=0, on_window=progress('semantic')))  # [rows, S, 1]
    sem_window = self.layouts['coarse'].field('semantic').num_frames
    coarse = timed('coarse', lambda: longform.run_stage(
        self.decoders['coarse'], total_frames=frames['coarse'], keep=self.keep['coarse'],
        conditioning=lambda w: {
            **self._conditioning('coarse', padded, w, self.acoustic_rate),
            'semantic': longform.slice_frames(semantic, w.start // self.ratio, sem_window)},
        keys=keys, stage_index=1, on_window=progress('coarse')))  # [rows, A, 4]
    fine_window = self.layouts['fine'].field('coarse').num_frames
    fine = timed('fine', lambda: longform.run_stage(
        self.decoders['fine'], total_frames=frames['fine'], keep=self.keep['fine'],
        conditioning=lambda w: {'coarse': longform.slice_frames(coarse, w.start, fine_window)},
        keys=keys, stage_index=2, on_window=progress('fine')))  # [rows, A, 8]

    t0 = time.perf_counter()
    codes = np.concatenate([coarse, fine], axis=-1)[:n]  # [n, A, levels]
    audio = self.decode_audio(codes)
    seconds['codec'] = time.perf_counter() - t0
    for s in STAGES:
      target = self.layouts[s].target
      tokens[s] = frames[s] * target.num_levels * n

    results = []
    for i, r in enumerate(requests):
      num = int(round(r.duration * self.bundle.sample_rate))
      wav = np.nan_to_num(audio[i, :num].astype(np.float32))
      results.append(Result(r, wav, self.bundle.sample_rate, n, dict(seconds), dict(tokens),
                            compile_seconds=dict(compile_seconds)))
    return results

  def decode_audio(self, codes: np.ndarray) -> np.ndarray:
    """codes [batch, frames, levels] -> float32 audio [batch, frames * hop], in fixed windows.

    The first window emits all of its window + context frames; each later one starts `context`
    frames before the next frame to emit and discards that part, so the causal decoder has
    left context and every call has the same shape (one compiled program).
    """
    codec = self.bundle.codec
    batch, total, levels = codes.shape
    hop = codec.hop_length
    span = self.codec_window + self.codec_context
    out = np.zeros((batch, total * hop), np.float32)
    emitted = 0
    while emitted < total:
      skip = 0 if emitted == 0 else self.codec_context
      lo = emitted - skip
      chunk = np.zeros((batch, span, levels), np.int32)
      piece = codes[:, lo:lo + span]
      chunk[:, :piece.shape[1]] = np.maximum(piece, 0)
      wav = np.asarray(codec.decode(chunk, num_levels=levels))  # [batch, span * hop]
      count = min(span - skip, total - emitted)
      out[:, emitted * hop:(emitted + count) * hop] = wav[:, skip * hop:(skip + count) * hop]
      emitted += count
    return out
