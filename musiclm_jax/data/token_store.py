"""The frozen tokenizers and the token store, without TensorFlow.

  tokenizers = load_tokenizers(tokenizer_paths('demo_work'))   # codec/, semantic_tok/, mulan_rvq/
  batch = BatchTokenizer(tokenizers, batch_size=8)
  batch([wav, ...], [caption, ...])  # per clip: semantic, acoustic, mulan_audio, mulan_text
                                     # (+ melody [W, levels] with a melody embedder)

A melody embedder (`musiclm_jax.melody.MelodyEmbedder` with RVQ codebooks) is optional: the
tokenizers folder's `melody/` sub-folder (or an explicit path) adds per-clip melody tokens.

`python -m musiclm_jax.data.precompute` writes a token store with these (layout in its
docstring); `tasks/token_tasks.py` reads it. The gin hooks of the stage run files live here,
so that a stage run's config.gin parses without TensorFlow:

  stage_task      registers the token tasks on TOKENS_DIR, returns the task/mixture name
  checked_layout  a stage layout, checked against the stored vocabularies and feature lengths
"""

from collections.abc import Mapping, Sequence
import dataclasses
import json
import logging
import math
import os
from typing import Any

from etils import epath
import numpy as np

log = logging.getLogger(__name__)

TOKENS_DIR_ENV = 'MUSICLM_TOKENS_DIR'
INFO_FILE = 'tokenizers.json'
INDEX_FILE = 'index.json'
DONE_FILE = 'DONE'
SHARD_PATTERN = 'shard-*-of-*.tfrecord'
SUBDIRS = {'codec': 'codec', 'semantic': 'semantic_tok', 'mulan': 'mulan_rvq'}
MELODY_SUBDIR = 'melody'  # optional: a saved MelodyEmbedder with RVQ (melody.fit_rvq output)


@dataclasses.dataclass
class Tokenizers:
  """The three frozen tokenizers (duck-typed: anything with the same methods works).

  codec: `encode(wav [B, N]) -> [B, T_a, L]`, `frame_rate`, `codebook_size`, `num_codebooks`,
    `sample_rate`. semantic: `tokenize(wav [B, N]) -> [B, T_s]`, `frame_rate`, `cardinality`,
    `sample_rate`. mulan: `audio_tokens(wav) -> [B, 12]`, `text_tokens(list[str]) -> [B, 12]`,
    `num_codebooks`, `cardinality`. melody (optional): `tokens(wav [B, N]) -> [B, W * levels]`,
    `num_windows(N)`, `num_codebooks`, `cardinality`, `sample_rate` and a `config` with
    `window_seconds`/`hop_seconds` (a `MelodyEmbedder`); None = no melody tokens.
  """
  codec: Any
  semantic: Any
  mulan: Any
  paths: Mapping[str, str] = dataclasses.field(default_factory=dict)
  melody: Any = None

  @property
  def sample_rate(self) -> int:
    return int(self.codec.sample_rate)

  def info(self) -> dict[str, Any]:
    """What `tokenizers.json` records."""
    c, s, m = self.codec, self.semantic, self.mulan
    return {
        'codec': {'path': self.paths.get('codec'), 'codebook_size': int(c.codebook_size),
                  'num_levels': int(c.num_codebooks), 'frame_rate': float(c.frame_rate),
                  'sample_rate': int(c.sample_rate)},
        'semantic': {'path': self.paths.get('semantic'), 'codebook_size': int(s.cardinality),
                     'frame_rate': float(s.frame_rate), 'sample_rate': int(s.sample_rate)},
        'mulan': {'path': self.paths.get('mulan'), 'codebook_size': int(m.cardinality),
                  'num_levels': int(m.num_codebooks)},
        **({'melody': melody_info(self.melody, self.paths.get('melody'))}
           if self.melody is not None else {}),
    }


def melody_info(melody: Any, path: str | None = None) -> dict[str, Any]:
  """What `tokenizers.json` records about a melody embedder (windows of `window_seconds`
  every `hop_seconds`; `frame_rate` = windows per second)."""
  config = melody.config
  return {'path': path, 'codebook_size': int(melody.cardinality),
          'num_levels': int(melody.num_codebooks), 'frame_rate': 1.0 / float(config.hop_seconds),
          'window_seconds': float(config.window_seconds),
          'hop_seconds': float(config.hop_seconds), 'sample_rate': int(melody.sample_rate)}


def tokenizer_paths(tokenizers_dir: str | None, codec: str | None = None,
                    semantic: str | None = None, mulan: str | None = None,
                    melody: str | None = None, use_melody: bool = True) -> dict[str, str]:
  """Absolute paths of the tokenizers: explicit ones, else `tokenizers_dir/<subdir>`.

  'melody' is included when given explicitly or when `tokenizers_dir/melody/` exists (and
  `use_melody`); the three others are required.
  """
  explicit = {'codec': codec, 'semantic': semantic, 'mulan': mulan}
  paths = {}
  for kind, sub in SUBDIRS.items():
    path = explicit[kind] or (os.path.join(tokenizers_dir, sub) if tokenizers_dir else None)
    if path is None:
      raise ValueError(f'no {kind} tokenizer: pass --tokenizers DIR (with {sub}/) or --{kind}')
    paths[kind] = os.path.abspath(os.path.expanduser(path))
  if use_melody:
    found = os.path.join(tokenizers_dir, MELODY_SUBDIR) if tokenizers_dir else None
    path = melody or (found if found and os.path.isdir(found) else None)
    if path:
      paths['melody'] = os.path.abspath(os.path.expanduser(path))
  return paths


def load_codec(run_dir: str, gin_files: Sequence[str] | None = None):
  """A `SoundStreamCodec` from a training run: its `MODEL` from config.gin + the last checkpoint."""
  from musiclm_jax import checkpoints  # pylint: disable=g-import-not-at-top
  from musiclm_jax import train as train_lib  # pylint: disable=g-import-not-at-top
  from musiclm_jax.codec import model as codec_model  # pylint: disable=g-import-not-at-top
  model = train_lib.model_from_run(run_dir, gin_files, codec_model.SoundStreamModel)
  params, model_state, _ = checkpoints.load_params(run_dir)
  return codec_model.SoundStreamCodec(model, params['generator'], model_state)


def load_tokenizers(paths: Mapping[str, str], codec_gin_files: Sequence[str] | None = None
                    ) -> Tokenizers:
  """Loads the codec run, the semantic tokenizer folder, the MuLan folder (and the melody
  embedder when `paths` has 'melody')."""
  # pylint: disable=g-import-not-at-top
  from musiclm_jax.mulan.inference import MuLan
  from musiclm_jax.semantic.tokenizer import SemanticTokenizer
  melody = None
  if paths.get('melody'):
    from musiclm_jax.melody.inference import MelodyEmbedder
    melody = MelodyEmbedder.from_path(paths['melody'])
    if melody.codebooks is None:
      raise ValueError(f'{paths["melody"]}: the melody embedder has no RVQ codebooks (run '
                       'python -m musiclm_jax.melody.fit_rvq)')
  return Tokenizers(codec=load_codec(paths['codec'], codec_gin_files),
                    semantic=SemanticTokenizer.load(paths['semantic']),
                    mulan=MuLan.load(paths['mulan']), paths=dict(paths), melody=melody)


# -- one batch --------------------------------------------------------------------------------


def _data_sharding():
  import jax  # pylint: disable=g-import-not-at-top
  devices = np.array(jax.local_devices())
  mesh = jax.sharding.Mesh(devices, ('data',))
  return jax.sharding.NamedSharding(mesh, jax.sharding.PartitionSpec('data')), len(devices)


def clip_problem(wav: np.ndarray, sample_rate: int, min_samples: int,
                 max_seconds: float) -> str | None:
  """Why a clip cannot be tokenized (a skip reason), or None."""
  if wav.ndim != 1 or wav.size == 0:
    return f'empty: shape {wav.shape}'
  if not np.all(np.isfinite(wav)):
    return 'non_finite: NaN or Inf samples'
  if wav.size < min_samples:
    return f'too_short: {wav.size} samples < {min_samples}'
  if wav.size > max_seconds * sample_rate:
    return f'too_long: {wav.size / sample_rate:.0f} s > {max_seconds:g} s'
  return None


class BatchTokenizer:
  """Tokenizes lists of clips with fixed batch shapes (few compilations), data-parallel."""

  def __init__(self, tokenizers: Tokenizers, *, batch_size: int, max_seconds: float = 600.0):
    self.tok = tokenizers
    rates = {k: getattr(t, 'sample_rate', None) for k, t in
             (('codec', tokenizers.codec), ('semantic', tokenizers.semantic),
              ('mulan', tokenizers.mulan), ('melody', tokenizers.melody)) if t is not None}
    if len({r for r in rates.values() if r is not None}) > 1:
      raise ValueError(f'the tokenizers expect different sample rates: {rates}')
    self.sharding, devices = _data_sharding()
    self.batch_size = -(-batch_size // devices) * devices
    self.sample_rate = tokenizers.sample_rate
    sem_hop = round(self.sample_rate / tokenizers.semantic.frame_rate)
    self.codec_hop = round(self.sample_rate / tokenizers.codec.frame_rate)
    self.sem_hop = sem_hop
    self.bucket = math.lcm(sem_hop, self.codec_hop, self.sample_rate)
    self.max_seconds = max_seconds
    self.mulan_levels = int(tokenizers.mulan.num_codebooks)
    self.melody = tokenizers.melody

  def problem(self, wav: np.ndarray) -> str | None:
    return clip_problem(wav, self.sample_rate, self.sem_hop, self.max_seconds)

  def _text_tokens(self, texts: Sequence[str]) -> tuple[np.ndarray, list[bool]]:
    """MuLan text tokens [B, levels] and which rows have a real caption.

    MuLan rejects empty prompts: rows without a caption (and padding rows) get a stand-in text
    whose tokens the caller discards (-1 = missing); a caption MuLan still rejects (e.g. empty
    after cleaning) counts as no caption.
    """
    stand_in = 'music'
    has_text = [bool(t) for t in texts]
    try:
      return np.asarray(self.tok.mulan.text_tokens(
          [t if ok else stand_in for t, ok in zip(texts, has_text)])), has_text
    except ValueError:  # find the rejected caption(s), keep the others
      rows = []
      for i, t in enumerate(texts):
        try:
          rows.append(np.asarray(self.tok.mulan.text_tokens([t if has_text[i] else stand_in])))
        except ValueError:
          has_text[i] = False
          rows.append(np.asarray(self.tok.mulan.text_tokens([stand_in])))
      return np.concatenate(rows), has_text

  def __call__(self, wavs: Sequence[np.ndarray], captions: Sequence[str]) -> list[dict]:
    """Valid float32 clips [N_i] and captions -> per clip {'semantic', 'acoustic', 'mulan_*'}."""
    import jax  # pylint: disable=g-import-not-at-top
    n = len(wavs)
    if not 0 < n <= self.batch_size:
      raise ValueError(f'batch of {n} clips, expected 1..{self.batch_size}')
    length = -(-max(w.size for w in wavs) // self.bucket) * self.bucket
    batch = np.zeros((self.batch_size, length), np.float32)
    for i, w in enumerate(wavs):
      batch[i, :w.size] = w
    sharded = jax.device_put(batch, self.sharding)
    acoustic = np.asarray(self.tok.codec.encode(sharded))  # [B, T_a, L]
    semantic = np.asarray(self.tok.semantic.tokenize(sharded))  # [B, T_s]
    mulan_audio = np.asarray(self.tok.mulan.audio_tokens(batch))  # [B, 12]
    texts = [c.strip() for c in captions] + [''] * (self.batch_size - n)
    mulan_text, has_text = self._text_tokens(texts)
    melody = None
    if self.melody is not None:  # windows are embedded one by one: padding does not leak in
      levels = int(self.melody.num_codebooks)
      melody = np.asarray(self.melody.tokens(batch)).reshape(self.batch_size, -1, levels)
    out = []
    for i, w in enumerate(wavs):
      t_s, t_a = w.size // self.sem_hop, -(-w.size // self.codec_hop)
      out.append({
          'semantic': semantic[i, :t_s].astype(np.int64),
          'acoustic': acoustic[i, :t_a].astype(np.int64),  # [T_a, L]
          'mulan_audio': mulan_audio[i].astype(np.int64),
          'mulan_text': (mulan_text[i].astype(np.int64) if has_text[i]
                         else np.full(self.mulan_levels, -1, np.int64)),
      })
      if melody is not None:  # [W, levels]: the clip's own windows (every hop, whole ones)
        out[-1]['melody'] = melody[i, :self.melody.num_windows(w.size)].astype(np.int64)
    return out


# -- reading the store + gin hooks (TensorFlow-free) ------------------------------------------


def _config_error(message: str) -> ValueError:
  """A `musiclm_jax.train.ConfigError` (one line, exit code 2 from the train CLI)."""
  from musiclm_jax.train import ConfigError  # pylint: disable=g-import-not-at-top
  return ConfigError(message)


def resolve_tokens_dir(tokens_dir: str | None = None) -> str:
  """`tokens_dir`, else $MUSICLM_TOKENS_DIR; error when neither is set."""
  tokens_dir = tokens_dir or os.environ.get(TOKENS_DIR_ENV)
  if not tokens_dir:
    raise _config_error(f'no token folder: set --gin.TOKENS_DIR="\'/path/to/tokens\'" or '
                        f'${TOKENS_DIR_ENV} (written by python -m musiclm_jax.data.precompute)')
  if '://' in tokens_dir:
    return tokens_dir
  return os.path.abspath(os.path.expanduser(tokens_dir))


def read_info(tokens_dir: str) -> dict[str, Any]:
  """The token store's tokenizers.json (one-line error when absent)."""
  path = epath.Path(tokens_dir) / INFO_FILE
  if not path.exists():
    raise FileNotFoundError(f'{path}: not a token folder (run python -m '
                            'musiclm_jax.data.precompute --out ...)')
  return json.loads(path.read_text())


def stage_task(*, name: str, tokens_dir: str = '', corpus: str = 'synth',
               cond_dropout: float = 0.1, mulan_text_prob: float = 0.0,
               melody_dropout: float = 0.1) -> str:
  """Gin hook: registers the token tasks of `corpus` on TOKENS_DIR; returns `name` unchanged.

  `melody_dropout` only matters for the melody-conditioned semantic task
  (`musiclm_semantic_melody[_<corpus>]`), which needs a store with melody tokens.
  """
  tokens_dir = resolve_tokens_dir(tokens_dir)
  try:
    info = read_info(tokens_dir)
  except (OSError, ValueError) as e:
    raise _config_error(f'TOKENS_DIR: {e}') from e
  if name.startswith(MELODY_TASK_PREFIX) and 'melody' not in info.get('tokenizers', {}):
    raise _config_error(f'{name}: TOKENS_DIR {tokens_dir} has no melody tokens (precompute '
                        f'with a melody embedder: --tokenizers DIR holding {MELODY_SUBDIR}/, '
                        'or --melody DIR)')
  from tasks import token_tasks  # pylint: disable=g-import-not-at-top
  token_tasks.register_token_tasks(tokens_dir, corpus=corpus, cond_dropout=cond_dropout,
                                   mulan_text_prob=mulan_text_prob,
                                   melody_dropout=melody_dropout)
  return name


_MACROS = {'mulan': 'MULAN_CODEBOOK_SIZE', 'semantic': 'SEMANTIC_CODEBOOK_SIZE',
           'coarse': 'CODEC_CODEBOOK_SIZE', 'fine': 'CODEC_CODEBOOK_SIZE',
           'melody': 'MELODY_CODEBOOK_SIZE'}
MELODY_TASK_PREFIX = 'musiclm_semantic_melody'


def melody_windows_fit(*, semantic_frames: int, semantic_rate: float, window_seconds: float,
                       hop_seconds: float) -> int:
  """Most melody windows (every hop_seconds, each window_seconds long, from the crop start)
  that lie inside a semantic window of `semantic_frames`; 1 at least."""
  span = semantic_frames / semantic_rate
  return max(1, 1 + int(math.floor((span - window_seconds) / hop_seconds + 1e-9)))


def checked_layout(*, layout, tokens_dir: str = '',
                   feature_lengths: Mapping[str, int] | None = None):
  """Gin hook: `layout`, after checking it against the token store and the feature lengths.

  Fails with one line naming the gin macro to change when a stored vocabulary is larger than
  the layout's codebook, when RVQ level counts differ, or when a TASK_FEATURE_LENGTHS entry
  differs from the layout's frames. Without a readable store only the lengths are checked.
  """
  problems = []
  for f in layout.fields:
    want = (feature_lengths or {}).get(f.name)
    if want is not None and int(want) != f.num_frames:
      problems.append(f"TASK_FEATURE_LENGTHS['{f.name}'] = {want} but the {layout.name} layout "
                      f'has {f.num_frames} {f.name} frames')
  try:
    info = read_info(resolve_tokens_dir(tokens_dir))['tokenizers']
  except (ValueError, OSError) as e:
    log.warning('not checking the %s layout against stored tokens: %s', layout.name, e)
    info = None
  for f in layout.fields if info else ():
    kind = {'coarse': 'codec', 'fine': 'codec'}.get(f.name, f.name)
    if kind not in info:
      if f.name == 'melody':
        problems.append(f'the {layout.name} layout conditions on melody tokens but the token '
                        'store has none (precompute with a melody embedder, or set '
                        '--gin.MELODY_FRAMES=0)')
      continue
    size = int(info[kind]['codebook_size'])
    if size > f.codebook_size:
      problems.append(f'stored {kind} tokens have {size} codes but the {layout.name} layout has '
                      f'{f.codebook_size}: set --gin.{_MACROS[f.name]}={size}')
    levels = info[kind].get('num_levels')
    if f.name == 'mulan' and levels is not None and int(levels) != f.num_levels:
      problems.append(f'stored MuLan tokens have {levels} levels, the layout {f.num_levels}')
    if f.name == 'melody':
      if levels is not None and int(levels) != f.num_levels:
        problems.append(f'stored melody tokens have {levels} levels, the layout '
                        f'{f.num_levels}: set --gin.MELODY_LEVELS={levels}')
      if 'semantic' in info and layout.target.name == 'semantic':
        most = melody_windows_fit(
            semantic_frames=layout.target.num_frames,
            semantic_rate=float(info['semantic']['frame_rate']),
            window_seconds=float(info[kind]['window_seconds']),
            hop_seconds=float(info[kind]['hop_seconds']))
        if f.num_frames > most:
          problems.append(f'{f.num_frames} melody windows do not fit in '
                          f'{layout.target.num_frames} semantic frames (at most {most})')
    if f.name in ('coarse', 'fine') and levels is not None and \
        f.first_level + f.num_levels > int(levels):
      problems.append(f'{f.name} needs codec levels up to {f.first_level + f.num_levels}, '
                      f'stored tokens have {levels}')
  if problems:
    raise _config_error(f'{layout.name} stage: ' + '; '.join(problems))
  return layout

