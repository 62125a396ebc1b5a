"""seqio tasks and a mixture of raw audio + text from the project's TFDS corpora.

  synth_audio      synth/small   (musiclm_jax.data.synth.builder.Synth)
  musiccaps_audio  musiccaps/default (musiclm_jax.data.musiccaps.MusicCaps)
  folder_audio     folder        (musiclm_jax.data.folder.AudioFolder)
  all_audio        mixture of the above whose data is prepared under the data dir

Each example: `audio` float32 [N] (a random N-sample window of the 24 kHz clip, zero-padded at
the end when the clip is shorter, times a random gain in `gain_db`), `text_tokens` int32 [L]
(sentencepiece ids of the chosen text + EOS, 0-padded) and `caption` string [] (the chosen
text: the caption with probability `caption_prob`, else a random comma-joined subset of the
aspects). N and L are the feature lengths: `{'audio': N, 'text_tokens': L}`.

  import tasks  # registers with $MUSICLM_DATA_DIR / $MUSICLM_SPM_MODEL or the defaults
  seqio.get_mixture_or_task('synth_audio').get_dataset(
      {'audio': 240000, 'text_tokens': 64}, split='train', seed=0,
      shard_info=seqio.ShardInfo(jax.process_index(), jax.process_count()))

Registration is idempotent: `register_audio_tasks(data_dir, spm_path)` replaces earlier
registrations of the same names (e.g. to point them at another data dir).
"""

from collections.abc import Mapping, Sequence
import functools
import logging
import os

import seqio
import tensorflow as tf
import tensorflow_datasets as tfds

from musiclm_jax.data import preprocessors as prep

log = logging.getLogger(__name__)

DATA_DIR_ENV = 'MUSICLM_DATA_DIR'
SPM_ENV = 'MUSICLM_SPM_MODEL'
SAMPLE_RATE = 24000
# Task name -> TFDS name (with a version pattern, as seqio requires one).
SOURCES = {
    'synth_audio': 'synth/small:1.*.*',
    'musiccaps_audio': 'musiccaps/default:1.*.*',
    'folder_audio': 'folder:1.*.*',
}
MIXTURE = 'all_audio'
SHUFFLE_BUFFER = 256  # examples after cropping: 256 x 10 s float32 = 250 MB
_FEATURES_READ = ('audio', 'caption', 'aspects')


def default_data_dir() -> str:
  """$MUSICLM_DATA_DIR, else $TFDS_DATA_DIR, else ~/tensorflow_datasets."""
  return os.path.expanduser(os.environ.get(DATA_DIR_ENV) or os.environ.get('TFDS_DATA_DIR')
                            or '~/tensorflow_datasets')


def default_spm_path(data_dir: str | None = None) -> str:
  """$MUSICLM_SPM_MODEL, else <data_dir>/spm/spm.model (as `train_spm --out <data_dir>/spm`)."""
  if os.environ.get(SPM_ENV):
    return os.path.expanduser(os.environ[SPM_ENV])
  return os.path.join(data_dir or default_data_dir(), 'spm', 'spm.model')


def is_prepared(data_dir: str, tfds_name: str) -> bool:
  """Whether a version of `tfds_name` ('name[/config]:pattern') is prepared under data_dir."""
  name = tfds_name.split(':')[0]
  return bool(tf.io.gfile.glob(os.path.join(data_dir, name, '*', 'dataset_info.json')))


def output_features(spm_path: str) -> dict[str, seqio.Feature]:
  """`audio` float32 [N], `text_tokens` int32 [L] (EOS-terminated), `caption` string []."""
  vocab = seqio.SentencePieceVocabulary(spm_path)
  return {
      prep.AUDIO: seqio.ContinuousFeature(dtype=tf.float32, rank=1),
      prep.TEXT_TOKENS: seqio.Feature(vocabulary=vocab, add_eos=True, dtype=tf.int32),
      prep.CAPTION: seqio.Feature(vocabulary=seqio.PassThroughVocabulary(size=0),
                                  add_eos=False, dtype=tf.string, rank=0, required=False),
  }


def audio_preprocessors(*, salt: int, gain_db: Sequence[float] = (-6.0, 0.0),
                        caption_prob: float = 0.5) -> list:
  """The preprocessor chain of every audio task (see musiclm_jax.data.preprocessors)."""
  return [
      prep.select_audio_text,
      functools.partial(prep.random_crop, salt=salt),
      functools.partial(prep.gain_jitter, gain_db=tuple(gain_db), salt=salt + 1),
      functools.partial(prep.choose_text, caption_prob=caption_prob, salt=salt + 2),
      prep.tokenize_text,
  ]


def _replace_task(name: str, **kwargs) -> seqio.Task:
  seqio.MixtureRegistry.remove(name)
  seqio.TaskRegistry.remove(name)
  return seqio.TaskRegistry.add(name, **kwargs)


def register_audio_tasks(data_dir: str | None = None, spm_path: str | None = None, *,
                         prefix: str = '', sources: Mapping[str, str] | None = None,
                         gain_db: Sequence[float] = (-6.0, 0.0), caption_prob: float = 0.5,
                         shuffle_buffer_size: int = SHUFFLE_BUFFER,
                         mixture_tasks: Sequence[str] | None = None,
                         mixture_rates: Mapping[str, float] | None = None) -> list[str]:
  """Registers (or re-registers) the audio tasks and the `all_audio` mixture.

  Args:
    data_dir: TFDS data folder (default `default_data_dir()`).
    spm_path: sentencepiece model (default `default_spm_path(data_dir)`); read lazily.
    prefix: prepended to every task/mixture name (tests register private copies).
    sources: task name (without prefix) -> TFDS name with version; default `SOURCES`.
    gain_db: (min_db, max_db) of the random gain.
    caption_prob: probability of the full caption over an aspect subset.
    shuffle_buffer_size: example shuffle buffer per task.
    mixture_tasks: task names (without prefix) in the mixture; default: those whose data is
      prepared under `data_dir` now (all of them when none is).
    mixture_rates: task name (without prefix) -> mixing rate; default 1 each.

  Returns:
    The registered task names, mixture last.
  """
  data_dir = os.path.expanduser(data_dir) if data_dir else default_data_dir()
  spm_path = os.path.expanduser(spm_path) if spm_path else default_spm_path(data_dir)
  sources = dict(SOURCES if sources is None else sources)
  features = output_features(spm_path)
  names = []
  for task, tfds_name in sources.items():
    name = prefix + task
    _replace_task(
        name,
        source=seqio.TfdsDataSource(
            tfds_name=tfds_name, tfds_data_dir=data_dir, read_only=True,
            decoders=tfds.decode.PartialDecoding({k: True for k in _FEATURES_READ})),
        output_features=features,
        preprocessors=audio_preprocessors(salt=prep.stable_salt(name), gain_db=gain_db,
                                          caption_prob=caption_prob),
        shuffle_buffer_size=shuffle_buffer_size)
    names.append(name)
  if mixture_tasks is None:
    mixture_tasks = [t for t, n in sources.items() if is_prepared(data_dir, n)] or list(sources)
  unknown = sorted(set(mixture_tasks) - set(sources))
  if unknown:
    raise ValueError(f'mixture_tasks: unknown tasks {unknown}; known: {sorted(sources)}')
  rates = dict(mixture_rates or {})
  seqio.TaskRegistry.remove(prefix + MIXTURE)
  seqio.MixtureRegistry.remove(prefix + MIXTURE)
  seqio.MixtureRegistry.add(prefix + MIXTURE,
                            [(prefix + t, float(rates.get(t, 1.0))) for t in mixture_tasks])
  names.append(prefix + MIXTURE)
  log.debug('registered %s (data %s, spm %s)', names, data_dir, spm_path)
  return names
