"""seqio tasks of the three MusicLM stages over a precomputed token store.

  register_token_tasks('/data/tokens', corpus='synth')
  ->  musiclm_semantic_synth, musiclm_coarse_synth, musiclm_fine_synth   (tasks)
      musiclm_semantic, musiclm_coarse, musiclm_fine                     (mixtures of every
                                                                         registered corpus)
      musiclm_semantic_melody_synth, musiclm_semantic_melody             (only for stores with
                                                                         melody tokens)

The store is what `python -m musiclm_jax.data.precompute --out TOKENS_DIR` writes: sharded
TFRecords per split (`TOKENS_DIR/<split>/shard-*-of-*.tfrecord`), read with
`seqio.TFExampleDataSource` (hosts shard by file when there are enough files). Feature lengths
are frames per window (`TASK_FEATURE_LENGTHS`), and each stage emits the raw codes
`musiclm_jax.stages.model.StageModel` lays out itself (see
`musiclm_jax/data/token_preprocessors.py`):

  stage     TASK_FEATURE_LENGTHS (tiny / paper)              output features (int32)
  semantic  {'semantic': 32 / 750}                           mulan [12], semantic [S]
  coarse    {'semantic': 16 / 250, 'coarse': 32 / 500}       mulan [12], semantic [S], coarse [A, 4]
  fine      {'coarse': 16 / 150, 'fine': 16 / 150}           coarse [A, 4], fine [A, 8]
  semantic  {'semantic': 100 / 750, 'melody': 1 / 9}         mulan [12], melody [M, L],
   +melody                                                   semantic [S]

-1 marks a missing frame (clip shorter than the window) or dropped conditioning; the layouts
turn it into PAD, which the loss mask excludes.

Registration is idempotent: calling `register_token_tasks` again replaces the tasks of that
corpus (e.g. to point them at another folder) and rebuilds the mixtures. Importing `tasks`
registers the 'synth' corpus on $MUSICLM_TOKENS_DIR when that is set.
"""

from collections.abc import Mapping
import functools
import json
import logging
import os

from etils import epath
import seqio
import tensorflow as tf

from musiclm_jax.data import preprocessors as prep
from musiclm_jax.data import token_preprocessors as tprep
from musiclm_jax.data import token_store

log = logging.getLogger(__name__)

STAGES = ('semantic', 'coarse', 'fine')
MELODY_STAGE = 'semantic_melody'  # the semantic stage conditioned on melody tokens too
SHUFFLE_BUFFER = 1024
_REGISTERED: dict[str, str] = {}  # corpus -> tokens dir, in registration order
_WITH_MELODY: set[str] = set()  # registered corpora whose store has melody tokens


def task_name(stage: str, corpus: str) -> str:
  return f'musiclm_{stage}_{corpus}'


def mixture_name(stage: str) -> str:
  return f'musiclm_{stage}'


def feature_description(melody: bool = False
                        ) -> dict[str, tf.io.FixedLenSequenceFeature | tf.io.FixedLenFeature]:
  """How to parse one stored clip (see musiclm_jax/data/precompute.py); `melody` adds the
  melody tokens (stores written with a melody embedder)."""
  ints = lambda: tf.io.FixedLenSequenceFeature([], tf.int64, allow_missing=True)
  out = {k: ints() for k in ('semantic', 'acoustic', 'mulan_audio', 'mulan_text',
                             'acoustic_levels', *(('melody', 'melody_levels') if melody else ()))}
  out.update({k: tf.io.FixedLenFeature([], tf.string, default_value='')
              for k in ('caption', 'work_id', 'render_id')})
  return out


def _feature(rank: int, size: int = 0) -> seqio.Feature:
  return seqio.Feature(vocabulary=seqio.PassThroughVocabulary(size=size), add_eos=False,
                       dtype=tf.int32, rank=rank)


def output_features(stage: str, sizes: Mapping[str, int] | None = None) -> dict[str, seqio.Feature]:
  """The raw code fields of a stage (vocabulary sizes are informational only)."""
  sizes = sizes or {}
  mulan = _feature(1, sizes.get('mulan', 0))
  semantic = _feature(1, sizes.get('semantic', 0))
  codec = _feature(2, sizes.get('codec', 0))
  melody = _feature(2, sizes.get('melody', 0))
  return {'semantic': {'mulan': mulan, 'semantic': semantic},
          'coarse': {'mulan': mulan, 'semantic': semantic, 'coarse': codec},
          'fine': {'coarse': codec, 'fine': codec},
          MELODY_STAGE: {'mulan': mulan, 'melody': melody, 'semantic': semantic}}[stage]


def _store_facts(tokens_dir: str) -> tuple[dict[str, int], dict[str, int], int]:
  """(vocabulary sizes, examples per split, acoustic frames per semantic frame) of a store."""
  try:
    info = token_store.read_info(tokens_dir)
  except FileNotFoundError:
    return {}, {}, 2  # not written yet: registration stays lazy, the paper rates apply
  tok = info['tokenizers']
  sizes = {k: int(tok[k]['codebook_size']) for k in ('mulan', 'semantic', 'codec')}
  ratio = tok['codec']['frame_rate'] / tok['semantic']['frame_rate']
  if abs(ratio - round(ratio)) > 1e-6 or round(ratio) < 1:
    raise ValueError(f'{tokens_dir}: codec frame rate {tok["codec"]["frame_rate"]} Hz is not a '
                     f'whole multiple of the semantic rate {tok["semantic"]["frame_rate"]} Hz')
  counts = {}
  for index in epath.Path(tokens_dir).glob(f'*/{token_store.INDEX_FILE}'):
    counts[index.parent.name] = int(json.loads(index.read_text())['num_examples'])
  return sizes, counts, int(round(ratio))


def melody_facts(tokens_dir: str) -> dict[str, float] | None:
  """The melody tokens of a store: {'levels', 'codebook_size', 'hop_frames' (semantic frames
  per melody hop), 'window_seconds', 'semantic_rate'}; None without melody tokens."""
  try:
    tok = token_store.read_info(tokens_dir)['tokenizers']
  except FileNotFoundError:
    return None
  if 'melody' not in tok:
    return None
  rate = float(tok['semantic']['frame_rate'])
  hop = float(tok['melody']['hop_seconds']) * rate
  if abs(hop - round(hop)) > 1e-6 or round(hop) < 1:
    raise ValueError(f'{tokens_dir}: the melody hop {tok["melody"]["hop_seconds"]} s is not a '
                     f'whole number of semantic frames at {rate} Hz')
  return {'levels': int(tok['melody']['num_levels']),
          'codebook_size': int(tok['melody']['codebook_size']), 'hop_frames': int(round(hop)),
          'window_seconds': float(tok['melody']['window_seconds']), 'semantic_rate': rate}


def stage_preprocessors(stage: str, *, salt: int, frame_ratio: int = 2, coarse_levels: int = 4,
                        fine_levels: int = 8, cond_dropout: float = 0.1,
                        mulan_text_prob: float = 0.0, melody_dropout: float = 0.1,
                        melody: Mapping[str, float] | None = None) -> list:
  """parse -> the stage's window (see musiclm_jax.data.token_preprocessors).

  `stage` is one of STAGES or MELODY_STAGE (which needs `melody`, from `melody_facts`).
  """
  if stage == MELODY_STAGE:
    if not melody:
      raise ValueError(f'{MELODY_STAGE}: the token store has no melody tokens')
    window = functools.partial(
        tprep.semantic_melody_window, hop_frames=int(melody['hop_frames']),
        melody_levels=int(melody['levels']), semantic_rate=float(melody['semantic_rate']),
        window_seconds=float(melody['window_seconds']), cond_dropout=cond_dropout,
        melody_dropout=melody_dropout, mulan_text_prob=mulan_text_prob, salt=salt)
  elif stage == 'semantic':
    window = functools.partial(tprep.semantic_window, cond_dropout=cond_dropout,
                               mulan_text_prob=mulan_text_prob, salt=salt)
  elif stage == 'coarse':
    window = functools.partial(tprep.coarse_window, frame_ratio=frame_ratio,
                               coarse_levels=coarse_levels, cond_dropout=cond_dropout,
                               mulan_text_prob=mulan_text_prob, salt=salt)
  elif stage == 'fine':
    window = functools.partial(tprep.fine_window, coarse_levels=coarse_levels,
                               fine_levels=fine_levels, salt=salt)
  else:
    raise ValueError(f'unknown stage {stage!r}; expected one of {STAGES}')
  return [tprep.parse_tokens, window]


def _replace(name: str) -> None:
  seqio.MixtureRegistry.remove(name)
  seqio.TaskRegistry.remove(name)


def register_token_tasks(tokens_dir: str | None = None, *, corpus: str = 'synth',
                         cond_dropout: float = 0.1, mulan_text_prob: float = 0.0,
                         coarse_levels: int = 4, fine_levels: int = 8,
                         shuffle_buffer_size: int = SHUFFLE_BUFFER,
                         melody_dropout: float = 0.1) -> list[str]:
  """Registers (or re-registers) the three stage tasks of `corpus` and the stage mixtures.

  When the store has melody tokens, also `musiclm_semantic_melody_<corpus>` (the semantic stage
  conditioned on MuLan and melody tokens) and the mixture `musiclm_semantic_melody` over every
  registered corpus with melody tokens.

  Args:
    tokens_dir: the token store (default $MUSICLM_TOKENS_DIR).
    corpus: names the tasks (`musiclm_<stage>_<corpus>`).
    cond_dropout: probability of replacing the MuLan tokens by -1 (null conditioning).
    mulan_text_prob: probability of conditioning on the caption's MuLan text tokens instead
      of the audio tokens (0 = MusicLM; clips without a caption always use audio).
    coarse_levels: codec levels of the coarse stage.
    fine_levels: codec levels of the fine stage (after the coarse ones).
    shuffle_buffer_size: example shuffle buffer per task.
    melody_dropout: probability of dropping the melody tokens alone (melody task only; with
      probability `cond_dropout` MuLan and melody are dropped together).

  Returns:
    The task names, then the mixture names (then the melody task and mixture, if any).
  """
  tokens_dir = token_store.resolve_tokens_dir(tokens_dir)
  sizes, counts, ratio = _store_facts(tokens_dir)
  splits = list(counts) or ['train', 'validation', 'test']  # no store yet: the usual splits
  source = seqio.TFExampleDataSource(
      split_to_filepattern={s: os.path.join(tokens_dir, s, token_store.SHARD_PATTERN)
                            for s in splits},
      feature_description=feature_description(), num_input_examples=counts or None)
  names = []
  for stage in STAGES:
    name = task_name(stage, corpus)
    _replace(name)
    seqio.TaskRegistry.add(
        name, source=source, output_features=output_features(stage, sizes),
        preprocessors=stage_preprocessors(
            stage, salt=prep.stable_salt(name), frame_ratio=ratio, coarse_levels=coarse_levels,
            fine_levels=fine_levels, cond_dropout=cond_dropout, mulan_text_prob=mulan_text_prob),
        shuffle_buffer_size=shuffle_buffer_size)
    names.append(name)
  _REGISTERED.pop(corpus, None)
  _REGISTERED[corpus] = tokens_dir
  for stage in STAGES:
    _replace(mixture_name(stage))
    seqio.MixtureRegistry.add(mixture_name(stage),
                              [(task_name(stage, c), 1.0) for c in _REGISTERED])
    names.append(mixture_name(stage))
  names += _register_melody_task(tokens_dir, corpus, counts, sizes, cond_dropout=cond_dropout,
                                 mulan_text_prob=mulan_text_prob, melody_dropout=melody_dropout,
                                 shuffle_buffer_size=shuffle_buffer_size)
  log.debug('registered %s on %s', names, tokens_dir)
  return names


def _register_melody_task(tokens_dir: str, corpus: str, counts: Mapping[str, int],
                          sizes: Mapping[str, int], *, cond_dropout: float,
                          mulan_text_prob: float, melody_dropout: float,
                          shuffle_buffer_size: int) -> list[str]:
  """The melody task of `corpus` (if its store has melody tokens) and the melody mixture."""
  name = task_name(MELODY_STAGE, corpus)
  _replace(name)
  _WITH_MELODY.discard(corpus)
  facts = melody_facts(tokens_dir)
  names = []
  if facts is not None:
    splits = list(counts) or ['train', 'validation', 'test']
    source = seqio.TFExampleDataSource(
        split_to_filepattern={s: os.path.join(tokens_dir, s, token_store.SHARD_PATTERN)
                              for s in splits},
        feature_description=feature_description(melody=True),
        num_input_examples=counts or None)
    seqio.TaskRegistry.add(
        name, source=source,
        output_features=output_features(MELODY_STAGE, {**sizes,
                                                       'melody': facts['codebook_size']}),
        preprocessors=stage_preprocessors(
            MELODY_STAGE, salt=prep.stable_salt(name), cond_dropout=cond_dropout,
            mulan_text_prob=mulan_text_prob, melody_dropout=melody_dropout, melody=facts),
        shuffle_buffer_size=shuffle_buffer_size)
    _WITH_MELODY.add(corpus)
    names.append(name)
  mixture = mixture_name(MELODY_STAGE)
  _replace(mixture)
  corpora = [c for c in _REGISTERED if c in _WITH_MELODY]
  if corpora:
    seqio.MixtureRegistry.add(mixture, [(task_name(MELODY_STAGE, c), 1.0) for c in corpora])
    if facts is not None:
      names.append(mixture)
  return names


def register_default() -> list[str]:
  """Registers the 'synth' corpus on $MUSICLM_TOKENS_DIR, if set (called on `import tasks`)."""
  if not os.environ.get(token_store.TOKENS_DIR_ENV):
    return []
  return register_token_tasks(corpus='synth')


register_default()
