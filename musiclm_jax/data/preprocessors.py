"""seqio preprocessors for raw audio + text tasks (see `tasks/audio_tasks.py`).

The tasks chain them as

  select_audio_text -> random_crop -> gain_jitter -> choose_text -> tokenize_text

Random choices come from seqio's per-example stateless seeds (`seqio.map_over_dataset(
num_seeds=1)`), which `Task.get_dataset(seed=...)` derives from its seed: the same seed, shard
and dataset give the same crops, gains and texts. `salt` (an int, e.g. a hash of the task name)
is folded into each seed so the tasks of a mixture, which seqio seeds identically, draw
independent numbers.

The tensor-level helpers (`crop_or_pad`, `apply_gain`, `pick_text`) are also used by the
seqio-free `inputs.tfds_audio_input_fn`.
"""

from collections.abc import Mapping, Sequence
import zlib

import seqio
import tensorflow as tf

AUDIO = 'audio'
CAPTION = 'caption'
ASPECTS = 'aspects'
TEXT_TOKENS = 'text_tokens'


def stable_salt(name: str) -> int:
  """A process-independent 31-bit integer for `name` (Python's hash() is randomized)."""
  return zlib.crc32(name.encode('utf-8')) & 0x7FFFFFFF


def _salted(seed: tf.Tensor, salt: int) -> tf.Tensor:
  """Folds `salt` into a stateless seed [2]."""
  seed = tf.cast(seed, tf.int64)
  return tf.random.experimental.stateless_fold_in(seed, tf.constant(salt, tf.int64))


def _sequence_length(sequence_length: Mapping[str, int] | None, key: str) -> int:
  if not sequence_length or sequence_length.get(key) is None:
    raise ValueError(f'feature_lengths needs an int length for {key!r}, got {sequence_length}')
  return int(sequence_length[key])


# -- tensor-level helpers --------------------------------------------------------------------


def to_float_audio(audio: tf.Tensor) -> tf.Tensor:
  """Any TFDS audio tensor -> float32 [samples] (integer PCM is scaled to [-1, 1))."""
  if audio.dtype.is_integer:
    scale = {tf.int16: 32768.0, tf.int32: 2147483648.0, tf.int64: 2147483648.0,
             tf.uint8: 128.0}.get(audio.dtype, 32768.0)
    audio = tf.cast(audio, tf.float32) / scale
  audio = tf.cast(audio, tf.float32)
  if audio.shape.rank == 2:  # [samples, channels] -> mono
    audio = tf.reduce_mean(audio, axis=-1)
  return tf.reshape(audio, [-1])


def crop_or_pad(audio: tf.Tensor, length: int, seed: tf.Tensor) -> tf.Tensor:
  """A uniformly random window of `length` samples, zero-padded at the end when shorter.

  Args:
    audio: float32 [samples].
    length: output samples.
    seed: stateless seed [2].

  Returns:
    float32 [length].
  """
  total = tf.shape(audio)[0]
  max_start = tf.maximum(total - length, 0)
  start = tf.random.stateless_uniform([], seed, minval=0, maxval=max_start + 1, dtype=tf.int32)
  crop = audio[start:start + length]
  crop = tf.pad(crop, [[0, length - tf.shape(crop)[0]]])
  return tf.ensure_shape(crop, [length])


def apply_gain(audio: tf.Tensor, seed: tf.Tensor, min_db: float, max_db: float) -> tf.Tensor:
  """Scales by a gain drawn uniformly in [min_db, max_db] dB."""
  if min_db == max_db == 0:
    return audio
  gain_db = tf.random.stateless_uniform([], seed, minval=min_db, maxval=max_db)
  return audio * tf.pow(10.0, gain_db / 20.0)


def pick_text(caption: tf.Tensor, aspects: tf.Tensor, seed: tf.Tensor, *, caption_prob: float,
              separator: str = ', ') -> tf.Tensor:
  """The caption (with probability `caption_prob`) or a random subset of the aspects.

  The subset has a uniform size in [1, len(aspects)], in random order, joined by `separator`.
  With no aspects the caption is used; with an empty caption the aspects are.

  Args:
    caption: string [].
    aspects: string [n].
    seed: stateless seed [2].
    caption_prob: probability of choosing the caption when both exist.
    separator: joins the chosen aspects.

  Returns:
    string [].
  """
  seeds = tf.random.experimental.stateless_split(tf.cast(seed, tf.int64), 3)
  n = tf.size(aspects)
  order = tf.argsort(tf.random.stateless_uniform([n], seeds[0]))
  k = tf.random.stateless_uniform([], seeds[1], minval=1, maxval=tf.maximum(n, 1) + 1,
                                  dtype=tf.int32)
  subset = tf.strings.reduce_join(tf.gather(aspects, order[:k]), separator=separator)
  has_caption = tf.strings.length(tf.strings.strip(caption)) > 0
  wants_caption = tf.random.stateless_uniform([], seeds[2]) < caption_prob
  use_caption = tf.logical_or(tf.logical_and(wants_caption, has_caption), tf.equal(n, 0))
  return tf.where(use_caption, caption, subset)


# -- seqio preprocessors -----------------------------------------------------------------------


@seqio.map_over_dataset
def select_audio_text(ex: Mapping[str, tf.Tensor]) -> dict[str, tf.Tensor]:
  """Keeps `audio` (float32 [samples]), `caption` (string []) and `aspects` (string [n])."""
  out = {AUDIO: to_float_audio(ex[AUDIO])}
  out[CAPTION] = ex[CAPTION] if CAPTION in ex else tf.constant('', tf.string)
  out[ASPECTS] = (tf.reshape(ex[ASPECTS], [-1]) if ASPECTS in ex
                  else tf.constant([], tf.string))
  return out


@seqio.map_over_dataset(num_seeds=1)
def random_crop(ex: Mapping[str, tf.Tensor], seed: tf.Tensor,
                sequence_length: Mapping[str, int] | None = None, *, key: str = AUDIO,
                salt: int = 0) -> dict[str, tf.Tensor]:
  """Crops `ex[key]` to `sequence_length[key]` samples at a random offset (pads if short)."""
  length = _sequence_length(sequence_length, key)
  out = dict(ex)
  out[key] = crop_or_pad(ex[key], length, _salted(seed, salt))
  return out


@seqio.map_over_dataset(num_seeds=1)
def gain_jitter(ex: Mapping[str, tf.Tensor], seed: tf.Tensor, *, key: str = AUDIO,
                gain_db: Sequence[float] = (-6.0, 0.0), salt: int = 0) -> dict[str, tf.Tensor]:
  """Multiplies `ex[key]` by a random gain, uniform in `gain_db` = (min_db, max_db)."""
  min_db, max_db = (float(g) for g in gain_db)
  if min_db > max_db:
    raise ValueError(f'gain_db must be (min_db, max_db) with min_db <= max_db, got {gain_db}')
  out = dict(ex)
  out[key] = apply_gain(ex[key], _salted(seed, salt), min_db, max_db)
  return out


@seqio.map_over_dataset(num_seeds=1)
def choose_text(ex: Mapping[str, tf.Tensor], seed: tf.Tensor, *, caption_prob: float = 0.5,
                salt: int = 0) -> dict[str, tf.Tensor]:
  """Replaces `caption` by the chosen text (see `pick_text`) and drops `aspects`."""
  if not 0.0 <= caption_prob <= 1.0:
    raise ValueError(f'caption_prob must be in [0, 1], got {caption_prob}')
  out = {k: v for k, v in ex.items() if k != ASPECTS}
  out[CAPTION] = pick_text(ex[CAPTION], ex[ASPECTS], _salted(seed, salt),
                           caption_prob=caption_prob)
  return out


def tokenize_text(dataset: tf.data.Dataset, output_features: Mapping[str, seqio.Feature],
                  sequence_length: Mapping[str, int] | None = None, *, text_key: str = CAPTION,
                  tokens_key: str = TEXT_TOKENS) -> tf.data.Dataset:
  """Adds `tokens_key`: int32 [L] ids of `ex[text_key]`, trimmed, EOS-terminated, 0-padded.

  The vocabulary is `output_features[tokens_key].vocabulary`; EOS is appended when that
  feature has `add_eos` (after trimming to L - 1, so it is never cut off).
  """
  feature = output_features[tokens_key]
  vocab = feature.vocabulary
  length = _sequence_length(sequence_length, tokens_key)
  keep = length - 1 if feature.add_eos else length
  if keep < 0 or (feature.add_eos and vocab.eos_id is None):
    raise ValueError(f'{tokens_key}: length {length} leaves no room for EOS')

  def fn(ex):
    ids = tf.cast(vocab.encode_tf(ex[text_key]), tf.int32)[:keep]
    if feature.add_eos:
      ids = tf.concat([ids, tf.constant([vocab.eos_id], tf.int32)], axis=0)
    ids = tf.pad(ids, [[0, length - tf.shape(ids)[0]]], constant_values=vocab.pad_id or 0)
    out = dict(ex)
    out[tokens_key] = tf.ensure_shape(ids, [length])
    return out

  return dataset.map(fn, num_parallel_calls=tf.data.AUTOTUNE)
