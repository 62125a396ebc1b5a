"""seqio preprocessors that turn stored clip tokens into the stages' raw code windows.

A stored clip (see `musiclm_jax/data/precompute.py`) has semantic ids [T_s] at 25 Hz, codec
codes [T_a, 12] at 50 Hz and two sets of 12 MuLan tokens. Each stage takes one random window
of `sequence_length` frames (padded with -1, "missing", when the clip is shorter; the layout
turns -1 into PAD, which the loss ignores) and emits the fields `StageModel` lays out:

  semantic stage: 'mulan' [12], 'semantic' [S]
  coarse stage:   'mulan' [12], 'semantic' [S], 'coarse' [A, 4]   (A = S * 50 / 25: same window)
  fine stage:     'coarse' [A, 4], 'fine' [A, 8]
  semantic stage with melody (stores with melody tokens):
                  'mulan' [12], 'melody' [M, L], 'semantic' [S]

The conditioning MuLan tokens are the audio tokens (as in MusicLM training), or with
probability `mulan_text_prob` the caption's text tokens (when the clip has a caption); with
probability `cond_dropout` they are replaced by -1 (all PAD: the "null" conditioning that
classifier-free guidance samples against). Random draws use seqio's per-example stateless
seeds, salted per task (see `musiclm_jax.data.preprocessors`).

Melody: a clip stores one melody token frame [L] per 4 s window, one window every 3 s. The
melody window of the semantic stage starts at a multiple of the melody hop (k x 75 semantic
frames at 25 Hz), so its M melody frames are the clip's whole windows k .. k + M - 1, which lie
inside the semantic crop (M <= 1 + (S / 25 - 4) // 3). With probability `cond_dropout` MuLan
and melody are both dropped (the null condition of classifier-free guidance); with probability
`melody_dropout` the melody alone is (text-only conditioning).
"""

from collections.abc import Mapping

import seqio
import tensorflow as tf

from musiclm_jax.data import token_store

MISSING = -1


def _salted(seed: tf.Tensor, salt: int) -> tf.Tensor:
  """Folds `salt` into a stateless seed [2] (tasks of a mixture get the same seqio seeds)."""
  return tf.random.experimental.stateless_fold_in(tf.cast(seed, tf.int64),
                                                  tf.constant(salt, tf.int64))


def parse_tokens(dataset: tf.data.Dataset) -> tf.data.Dataset:
  """Raw parsed features -> int32 'semantic' [T_s], 'acoustic' [T_a, L], 'mulan_*' [12]
  (+ 'melody' [W, M] when the features include melody tokens)."""

  def fn(ex):
    levels = tf.cast(ex['acoustic_levels'][0], tf.int32)
    out = {
        'semantic': tf.cast(ex['semantic'], tf.int32),
        'acoustic': tf.reshape(tf.cast(ex['acoustic'], tf.int32), [-1, levels]),
        'mulan_audio': tf.cast(ex['mulan_audio'], tf.int32),
        'mulan_text': tf.cast(ex['mulan_text'], tf.int32),
    }
    if 'melody' in ex:
      melody_levels = tf.cast(ex['melody_levels'][0], tf.int32)
      out['melody'] = tf.reshape(tf.cast(ex['melody'], tf.int32), [-1, melody_levels])
    return out

  return dataset.map(fn, num_parallel_calls=tf.data.AUTOTUNE)


def _frames(sequence_length: Mapping[str, int] | None, key: str) -> int:
  if not sequence_length or sequence_length.get(key) is None:
    raise ValueError(f'TASK_FEATURE_LENGTHS needs {key!r} (frames per window), got '
                     f'{sequence_length}')
  return int(sequence_length[key])


def crop(x: tf.Tensor, start: tf.Tensor, length: int) -> tf.Tensor:
  """x[start:start + length] along axis 0, padded with -1 to `length` frames."""
  x = x[start:start + length]
  pad = [[0, length - tf.shape(x)[0]]] + [[0, 0]] * (x.shape.rank - 1)
  return tf.pad(x, pad, constant_values=MISSING)


def _start(max_start: tf.Tensor, seed: tf.Tensor) -> tf.Tensor:
  """Uniform in [0, max(max_start, 0)]."""
  return tf.random.stateless_uniform([], seed, minval=0, maxval=tf.maximum(max_start, 0) + 1,
                                     dtype=tf.int32)


def _check_probability(**probs: float) -> None:
  for name, p in probs.items():
    if not 0.0 <= p <= 1.0:
      raise ValueError(f'{name} must be in [0, 1], got {p}')


def _mulan_and_drop(ex: Mapping[str, tf.Tensor], seed: tf.Tensor, *, cond_dropout: float,
                    mulan_text_prob: float) -> tuple[tf.Tensor, tf.Tensor]:
  """(MuLan tokens [12] before dropout: audio or text, whether the conditioning is dropped)."""
  _check_probability(cond_dropout=cond_dropout, mulan_text_prob=mulan_text_prob)
  text_seed, drop_seed = tf.unstack(tf.random.experimental.stateless_split(seed, 2))
  audio, text = ex['mulan_audio'], ex['mulan_text']
  use_text = (tf.random.stateless_uniform([], text_seed) < mulan_text_prob) & tf.reduce_all(
      text >= 0)
  tokens = tf.where(use_text, text, audio)
  return tokens, tf.random.stateless_uniform([], drop_seed) < cond_dropout


def conditioning(ex: Mapping[str, tf.Tensor], seed: tf.Tensor, *, cond_dropout: float,
                 mulan_text_prob: float) -> tf.Tensor:
  """The MuLan tokens [12] a window conditions on (audio / text / dropped to -1)."""
  tokens, drop = _mulan_and_drop(ex, seed, cond_dropout=cond_dropout,
                                 mulan_text_prob=mulan_text_prob)
  return tf.where(drop, tf.fill(tf.shape(tokens), MISSING), tokens)


def _seeds(seed: tf.Tensor, salt: int) -> tuple[tf.Tensor, tf.Tensor]:
  crop_seed, cond_seed = tf.unstack(tf.random.experimental.stateless_split(
      _salted(seed, salt), 2))
  return crop_seed, cond_seed


@seqio.map_over_dataset(num_seeds=1)
def semantic_window(ex, seed, sequence_length=None, *, cond_dropout: float = 0.1,
                    mulan_text_prob: float = 0.0, salt: int = 0):
  """Stage 1 fields: 'mulan' [12], 'semantic' [S] (S = sequence_length['semantic'])."""
  frames = _frames(sequence_length, 'semantic')
  crop_seed, cond_seed = _seeds(seed, salt)
  semantic = ex['semantic']
  start = _start(tf.shape(semantic)[0] - frames, crop_seed)
  return {'mulan': conditioning(ex, cond_seed, cond_dropout=cond_dropout,
                                mulan_text_prob=mulan_text_prob),
          'semantic': tf.ensure_shape(crop(semantic, start, frames), [frames])}


@seqio.map_over_dataset(num_seeds=1)
def semantic_melody_window(ex, seed, sequence_length=None, *, hop_frames: int = 75,
                           melody_levels: int = 8, semantic_rate: float = 25.0,
                           window_seconds: float = 4.0, cond_dropout: float = 0.1,
                           melody_dropout: float = 0.1, mulan_text_prob: float = 0.0,
                           salt: int = 0):
  """Stage 1 with melody: 'mulan' [12], 'melody' [M, melody_levels], 'semantic' [S].

  The crop starts at semantic frame k * hop_frames (k uniform over the starts whose semantic
  window lies in the clip and whose M melody windows were stored; 0 for a short clip), and
  'melody' holds the stored windows k .. k + M - 1 (-1 past the clip's last window).
  M = sequence_length['melody'] must fit in the semantic window
  (`token_store.melody_windows_fit`).
  """
  frames = _frames(sequence_length, 'semantic')
  mel_frames = _frames(sequence_length, 'melody')
  _check_probability(melody_dropout=melody_dropout)
  most = token_store.melody_windows_fit(
      semantic_frames=frames, semantic_rate=semantic_rate, window_seconds=window_seconds,
      hop_seconds=hop_frames / semantic_rate)
  if mel_frames > most:
    raise ValueError(f"semantic stage with melody: TASK_FEATURE_LENGTHS['melody'] = "
                     f'{mel_frames} windows do not fit in {frames} semantic frames '
                     f'({frames / semantic_rate:g} s; at most {most})')
  crop_seed, cond_seed = _seeds(seed, salt)
  semantic, melody = ex['semantic'], ex['melody']  # [T_s], [W, L]
  max_start = tf.minimum((tf.shape(semantic)[0] - frames) // hop_frames,
                         tf.shape(melody)[0] - mel_frames)
  k = _start(max_start, crop_seed)
  mulan, drop_all = _mulan_and_drop(ex, cond_seed, cond_dropout=cond_dropout,
                                    mulan_text_prob=mulan_text_prob)
  melody_seed = tf.random.experimental.stateless_fold_in(cond_seed, tf.constant(1, tf.int64))
  drop_melody = drop_all | (tf.random.stateless_uniform([], melody_seed) < melody_dropout)
  window = crop(melody[:, :melody_levels], k, mel_frames)
  return {'mulan': tf.where(drop_all, tf.fill(tf.shape(mulan), MISSING), mulan),
          'melody': tf.ensure_shape(tf.where(drop_melody, tf.fill(tf.shape(window), MISSING),
                                             window), [mel_frames, melody_levels]),
          'semantic': tf.ensure_shape(crop(semantic, k * hop_frames, frames), [frames])}


@seqio.map_over_dataset(num_seeds=1)
def coarse_window(ex, seed, sequence_length=None, *, frame_ratio: int = 2,
                  coarse_levels: int = 4, cond_dropout: float = 0.1,
                  mulan_text_prob: float = 0.0, salt: int = 0):
  """Stage 2 fields: 'mulan' [12], 'semantic' [S], 'coarse' [A, coarse_levels], aligned.

  The window starts at semantic frame s and acoustic frame s * frame_ratio (acoustic frames per
  semantic frame), so both cover the same time; A must equal S * frame_ratio.
  """
  sem_frames = _frames(sequence_length, 'semantic')
  ac_frames = _frames(sequence_length, 'coarse')
  if ac_frames != sem_frames * frame_ratio:
    raise ValueError(f"coarse stage: TASK_FEATURE_LENGTHS['coarse'] = {ac_frames} must be "
                     f"{frame_ratio} x TASK_FEATURE_LENGTHS['semantic'] = {sem_frames} "
                     '(the same time window)')
  crop_seed, cond_seed = _seeds(seed, salt)
  semantic, acoustic = ex['semantic'], ex['acoustic']
  max_start = tf.minimum(tf.shape(semantic)[0] - sem_frames,
                         (tf.shape(acoustic)[0] - ac_frames) // frame_ratio)
  start = _start(max_start, crop_seed)
  coarse = crop(acoustic[:, :coarse_levels], start * frame_ratio, ac_frames)
  return {'mulan': conditioning(ex, cond_seed, cond_dropout=cond_dropout,
                                mulan_text_prob=mulan_text_prob),
          'semantic': tf.ensure_shape(crop(semantic, start, sem_frames), [sem_frames]),
          'coarse': tf.ensure_shape(coarse, [ac_frames, coarse_levels])}


@seqio.map_over_dataset(num_seeds=1)
def fine_window(ex, seed, sequence_length=None, *, coarse_levels: int = 4,
                fine_levels: int = 8, salt: int = 0):
  """Stage 3 fields: 'coarse' [A, coarse_levels], 'fine' [A, fine_levels] of one window."""
  frames = _frames(sequence_length, 'fine')
  if sequence_length.get('coarse') not in (None, frames):
    raise ValueError(f"fine stage: TASK_FEATURE_LENGTHS['coarse'] = {sequence_length['coarse']}"
                     f" must equal TASK_FEATURE_LENGTHS['fine'] = {frames}")
  crop_seed, _ = _seeds(seed, salt)
  acoustic = ex['acoustic']
  start = _start(tf.shape(acoustic)[0] - frames, crop_seed)
  window = crop(acoustic[:, :coarse_levels + fine_levels], start, frames)
  return {'coarse': tf.ensure_shape(window[:, :coarse_levels], [frames, coarse_levels]),
          'fine': tf.ensure_shape(window[:, coarse_levels:], [frames, fine_levels])}
