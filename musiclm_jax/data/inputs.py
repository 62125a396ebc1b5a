"""Input functions for the trainer: seqio tasks or TFDS audio -> host-local numpy batches.

Both follow the trainer's contract (`musiclm_jax.trainer.fit`):

  input_fn(batch_size=, seed=, start_index=, shard_index=, num_shards=) -> Iterator[dict]

yielding dicts of numpy arrays with a leading per-host batch dimension, forever (the data
repeats), dropping incomplete batches. `start_index` batches are skipped, so a run resumed at
input position k sees exactly the batches k, k+1, ... of an uninterrupted run with the same
seed and sharding. Skipping runs the pipeline over the skipped examples (no audio is kept, but
it is read and decoded): at the measured rate (docs/PERFORMANCE.md, "Input pipeline") that is
seconds per thousand batches on CPU.

Bind them in gin with dynamic registration, e.g.

  import musiclm_jax.data.inputs as inputs
  INPUT_FN = @inputs.seqio_input_fn
  inputs.seqio_input_fn:
    mixture_or_task_name = %MIXTURE_OR_TASK_NAME
    feature_lengths = %TASK_FEATURE_LENGTHS    # {'audio': 240000, 'text_tokens': 64}

TensorFlow, TFDS and seqio are imported when a function is first called, not on import.
"""

from collections.abc import Iterator, Mapping, Sequence
import importlib
import logging
import os

import numpy as np

log = logging.getLogger(__name__)

DEFAULT_TASK_MODULE = 'tasks'


def host_seed(seed: int, shard_index: int) -> int:
  """A per-host seed for random choices made after sharding: `seed` on host 0."""
  if shard_index == 0:
    return int(seed)
  return int(np.random.SeedSequence([int(seed), int(shard_index)]).generate_state(1)[0] >> 1)


def _check_common(batch_size: int, start_index: int, shard_index: int, num_shards: int):
  if batch_size < 1:
    raise ValueError(f'batch_size must be >= 1, got {batch_size}')
  if start_index < 0:
    raise ValueError(f'start_index must be >= 0, got {start_index}')
  if not 0 <= shard_index < num_shards:
    raise ValueError(f'need 0 <= shard_index < num_shards, got {shard_index} of {num_shards}')


def _numpy_batches(ds, *, batch_size: int, start_index: int, keys: Sequence[str] | None
                   ) -> Iterator[dict[str, np.ndarray]]:
  """Batches (drop_remainder), skips `start_index` batches, yields numpy dicts."""
  import tensorflow as tf  # pylint: disable=g-import-not-at-top
  import tensorflow_datasets as tfds  # pylint: disable=g-import-not-at-top
  if keys is None:  # numeric features only: strings cannot go onto devices
    keys = [k for k, spec in ds.element_spec.items() if spec.dtype != tf.string]
  missing = sorted(set(keys) - set(ds.element_spec))
  if missing:
    raise ValueError(f'features {missing} not in the dataset (has {sorted(ds.element_spec)})')
  keys = tuple(keys)
  ds = ds.map(lambda ex: {k: ex[k] for k in keys}, num_parallel_calls=tf.data.AUTOTUNE)
  ds = ds.batch(batch_size, drop_remainder=True)
  if start_index:
    ds = ds.skip(start_index)
  options = tf.data.Options()
  options.deterministic = True
  ds = ds.with_options(options).prefetch(tf.data.AUTOTUNE)
  return iter(tfds.as_numpy(ds))


def _check_prepared(provider, split: str) -> None:
  """One-line error naming every TFDS source of the task/mixture that lacks the split."""
  import seqio  # pylint: disable=g-import-not-at-top
  import tensorflow_datasets as tfds  # pylint: disable=g-import-not-at-top
  tasks = provider.tasks if isinstance(provider, seqio.Mixture) else [provider]
  missing = []
  for task in tasks:
    if not isinstance(task.source, seqio.TfdsDataSource):
      continue
    loader = task.source.tfds_dataset
    try:
      splits = sorted(loader.builder.info.splits)
    except tfds.core.DatasetNotFoundError:
      splits = []
    if split not in splits:
      missing.append(f'{task.name}: TFDS {loader.name} under {loader.data_dir} '
                     f'(found: {", ".join(splits) or "nothing"})')
  if missing:
    raise ValueError(
        f'{provider.name}: no prepared split {split!r} for ' + '; '.join(missing) +
        '. Build it with `python -m musiclm_jax.data.build`, or point $MUSICLM_DATA_DIR / '
        'tasks.audio_tasks.register_audio_tasks(data_dir=...) at it')


def seqio_input_fn(*, mixture_or_task_name: str, feature_lengths: Mapping[str, int],
                   batch_size: int, seed: int, start_index: int = 0, shard_index: int = 0,
                   num_shards: int = 1, split: str = 'train', shuffle: bool = True,
                   use_cached: bool = False, features: Sequence[str] | None = None,
                   shuffle_buffer_size: int | None = None, try_in_mem_cache: bool = False,
                   task_module: str | None = DEFAULT_TASK_MODULE
                   ) -> Iterator[dict[str, np.ndarray]]:
  """Batches of a registered seqio task or mixture, repeated forever, for the trainer.

  Args:
    mixture_or_task_name: e.g. 'synth_audio' or 'all_audio'.
    feature_lengths: seqio sequence lengths, e.g. {'audio': 240000, 'text_tokens': 64}.
    batch_size: examples per batch on this host.
    seed: seeds file order, shuffling and every random preprocessor. As in t5x, every host
      gives seqio the same seed (with fewer files than hosts, seqio shards the examples of
      the file-shuffled stream, so the hosts must shuffle alike); example j of each host's
      stream therefore gets the same random draws (crop fraction, gain).
    start_index: batches already consumed; they are skipped.
    shard_index: this host's shard (`seqio.ShardInfo(shard_index, num_shards)`).
    num_shards: number of hosts.
    split: dataset split.
    shuffle: shuffle files and examples.
    use_cached: read a seqio cache (the audio tasks do not support one).
    features: keys to yield; default every non-string feature (`audio`, `text_tokens`).
    shuffle_buffer_size: overrides the task's example shuffle buffer (tasks only).
    try_in_mem_cache: let seqio keep small datasets in memory (off: raw audio is large).
    task_module: imported first when the name is not registered (t5x's
      MIXTURE_OR_TASK_MODULE); None to skip.

  Returns:
    An endless iterator of {feature: np.ndarray [batch_size, length]}.
  """
  import seqio  # pylint: disable=g-import-not-at-top
  _check_common(batch_size, start_index, shard_index, num_shards)
  if task_module and mixture_or_task_name not in (set(seqio.TaskRegistry.names())
                                                  | set(seqio.MixtureRegistry.names())):
    importlib.import_module(task_module)
  provider = seqio.get_mixture_or_task(mixture_or_task_name)
  if not use_cached:
    _check_prepared(provider, split)
  kwargs = dict(sequence_length=dict(feature_lengths), split=split, use_cached=use_cached,
                shuffle=shuffle, seed=seed,
                shard_info=seqio.ShardInfo(index=shard_index, num_shards=num_shards),
                num_epochs=None, trim_output_features=True, try_in_mem_cache=try_in_mem_cache)
  if isinstance(provider, seqio.Mixture):
    ds = provider.get_dataset(**kwargs, passthrough_features=None)
  else:
    ds = provider.get_dataset(**kwargs, shuffle_buffer_size=shuffle_buffer_size)
  return _numpy_batches(ds, batch_size=batch_size, start_index=start_index, keys=features)


def tfds_audio_input_fn(*, batch_size: int, seed: int, start_index: int = 0,
                        shard_index: int = 0, num_shards: int = 1, name: str = 'synth/small',
                        data_dir: str | None = None, split: str = 'train',
                        clip_samples: int = 24000, gain_db: Sequence[float] = (0.0, 0.0),
                        shuffle: bool = True, shuffle_buffer_size: int = 256,
                        key: str = 'audio') -> Iterator[dict[str, np.ndarray]]:
  """Batches of random audio crops straight from TFDS (no text), for codec / w2v-BERT.

  Args:
    batch_size: examples per batch on this host.
    seed: seeds the file order (same on every host), and, folded with `shard_index`, the
      example shuffle, crop offsets and gains.
    start_index: batches already consumed; they are skipped.
    shard_index: this host's shard.
    num_shards: number of hosts.
    name: TFDS name ('synth/small', 'musiccaps', 'folder', optionally ':version').
    data_dir: TFDS data folder (default $MUSICLM_DATA_DIR, else ~/tensorflow_datasets).
    split: dataset split.
    clip_samples: samples per crop (short clips are zero-padded at the end).
    gain_db: (min_db, max_db) of a random gain; (0, 0) for none.
    shuffle: shuffle files and examples.
    shuffle_buffer_size: example shuffle buffer.
    key: the audio feature.

  Returns:
    An endless iterator of {key: float32 [batch_size, clip_samples]}.
  """
  import tensorflow as tf  # pylint: disable=g-import-not-at-top
  import tensorflow_datasets as tfds  # pylint: disable=g-import-not-at-top
  from musiclm_jax.data import preprocessors as prep  # pylint: disable=g-import-not-at-top
  _check_common(batch_size, start_index, shard_index, num_shards)
  if clip_samples < 1:
    raise ValueError(f'clip_samples must be >= 1, got {clip_samples}')
  min_db, max_db = (float(g) for g in gain_db)
  if min_db > max_db:
    raise ValueError(f'gain_db must be (min_db, max_db) with min_db <= max_db, got {gain_db}')
  data_dir = os.path.expanduser(data_dir or os.environ.get('MUSICLM_DATA_DIR')
                                or os.environ.get('TFDS_DATA_DIR') or '~/tensorflow_datasets')
  try:
    builder = tfds.builder(name, data_dir=data_dir)
    splits = sorted(builder.info.splits)
  except tfds.core.DatasetNotFoundError:
    splits = []
  if split not in splits:
    raise ValueError(f'TFDS {name} under {data_dir} has no prepared split {split!r} (found: '
                     f'{", ".join(splits) or "nothing"}); build it with '
                     '`python -m musiclm_jax.data.build` or pass data_dir')
  by_files = builder.info.splits[split].num_shards >= num_shards
  read_config = tfds.ReadConfig(
      shuffle_seed=seed, skip_prefetch=True,
      input_context=(tf.distribute.InputContext(num_input_pipelines=num_shards,
                                                input_pipeline_id=shard_index)
                     if by_files and num_shards > 1 else None))
  ds = builder.as_dataset(split=split, shuffle_files=shuffle, read_config=read_config,
                          decoders=tfds.decode.PartialDecoding({key: True}))
  if not by_files and num_shards > 1:
    ds = ds.shard(num_shards, shard_index)
  ds = ds.repeat()
  seed = host_seed(seed, shard_index)  # random choices below are made after sharding
  seeds = tf.data.Dataset.random(seed=seed).batch(4)  # 2 seeds [2] per example

  def crop(ex, s):
    wav = prep.crop_or_pad(prep.to_float_audio(ex[key]), clip_samples, s[:2])
    return {key: prep.apply_gain(wav, s[2:], min_db, max_db)}

  ds = tf.data.Dataset.zip((ds, seeds)).map(crop, num_parallel_calls=tf.data.AUTOTUNE)
  if shuffle:
    ds = ds.shuffle(shuffle_buffer_size, seed=seed)
  return _numpy_batches(ds, batch_size=batch_size, start_index=start_index, keys=[key])
