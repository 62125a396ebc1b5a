r"""Runs the frozen tokenizers once over a corpus and stores the tokens as sharded TFRecords.

  python -m musiclm_jax.data.precompute --corpus synth [--config small] --data_dir D \
      --tokenizers DIR --out TOKENS_DIR [--splits train,validation,test] [--batch_size 8] \
      [--shard_size 64] [--codec RUN_DIR] [--semantic DIR] [--mulan DIR] [--melody DIR] \
      [--no_melody] [--no_progress]

`--tokenizers DIR` is a folder holding (the demo's work folder has this layout)
  codec/         a SoundStream training run (`config.gin` + `checkpoints/`)
  semantic_tok/  a saved `SemanticTokenizer` (python -m musiclm_jax.semantic.fit_kmeans)
  mulan_rvq/     a saved `MuLan` with RVQ codebooks (python -m musiclm_jax.mulan.fit_rvq)
  melody/        optional: a saved `MelodyEmbedder` with RVQ (python -m musiclm_jax.melody.fit_rvq)
and `--codec`, `--semantic`, `--mulan`, `--melody` override each one (`--no_melody` ignores a
melody/ folder).

Output (readers: `tasks/token_tasks.py`):
  TOKENS_DIR/tokenizers.json          tokenizer paths, vocabulary sizes, frame rates, source
  TOKENS_DIR/<split>/shard-KKKKK-of-NNNNN.tfrecord   one tf.train.Example per clip:
      semantic     int64 [T_s]        w2v-BERT k-means ids (25 Hz)
      acoustic     int64 [T_a * L]    SoundStream codes [T_a, L], frame-major (50 Hz, L = 12)
      mulan_audio  int64 [12]         MuLan RVQ tokens of the clip's audio
      mulan_text   int64 [12]         MuLan RVQ tokens of its caption (-1 when it has none)
      num_semantic_frames, num_acoustic_frames, acoustic_levels   int64 []
      caption, work_id, render_id     bytes []
    and, only with a melody embedder (tokenizers.json then has a 'melody' entry):
      melody       int64 [W * M]      melody RVQ tokens [W, M], window-major: one window of
                                      4 s every 3 s of the clip (W = 1 + (N - 4 s) // 3 s)
      num_melody_frames, melody_levels   int64 []
  TOKENS_DIR/<split>/shard-....json   the shard's example count and skipped clips
  TOKENS_DIR/<split>/index.json       shards, counts and skipped clips by reason
  TOKENS_DIR/DONE                     every requested split is complete

Shard k holds examples [k * shard_size, (k + 1) * shard_size) of the split (minus skipped clips).
Each shard is written under a hidden temp name and renamed into place when complete, so a
killed run never leaves a visible half shard; a rerun skips the finished shards. Clips that are
not finite, shorter than one semantic frame or longer than `--max_seconds` are skipped and
counted. Clips of a batch are zero-padded to a common length (a whole number of seconds) and
the batch to `batch_size` (a multiple of the local device count); the batch is sharded over all
local devices for the codec and w2v-BERT, whose jitted functions then run data-parallel.

Tokenizer loading and batching live in `musiclm_jax/data/token_store.py` (TensorFlow-free).
"""

import argparse
from collections.abc import Callable, Iterable, Mapping, Sequence
import json
import logging
import os
import sys
import time
from typing import Any

from etils import epath
import numpy as np

from musiclm_jax.data import clip_reader
from musiclm_jax.data.token_store import (BatchTokenizer, DONE_FILE, INDEX_FILE, INFO_FILE,
                                          Tokenizers, load_tokenizers, tokenizer_paths)

log = logging.getLogger(__name__)

CORPORA = {'synth': 'synth/{config}', 'musiccaps': 'musiccaps/{config}', 'folder': 'folder'}
DEFAULT_CONFIGS = {'synth': 'small', 'musiccaps': 'default', 'folder': None}
_ID_KEYS = ('work_id', 'ytid', 'path')


class ConfigError(ValueError):
  """Settings that cannot work (reported as one line, exit code 2)."""


def _atomic_write_text(path: epath.Path, text: str) -> None:
  """Temp file + rename (local folders or gs://; hidden names are not shard names)."""
  path.parent.mkdir(parents=True, exist_ok=True)
  tmp = path.with_name(f'.{path.name}.tmp-{os.getpid()}')
  try:
    tmp.write_text(text)
    tmp.replace(path)
  finally:
    tmp.unlink(missing_ok=True)


def _write_json(path: epath.Path, obj: Any) -> None:
  _atomic_write_text(path, json.dumps(obj, indent=2, sort_keys=True) + '\n')


def serialize(tokens: Mapping[str, np.ndarray], caption: str, work_id: str,
              render_id: str) -> bytes:
  """One clip's tf.train.Example (see the module docstring)."""
  import tensorflow as tf  # pylint: disable=g-import-not-at-top

  def ints(values):
    return tf.train.Feature(int64_list=tf.train.Int64List(value=np.ravel(values).tolist()))

  def text(value):
    return tf.train.Feature(bytes_list=tf.train.BytesList(value=[value.encode('utf-8')]))

  acoustic = np.asarray(tokens['acoustic'])
  feature = {
      'semantic': ints(tokens['semantic']), 'acoustic': ints(acoustic),
      'mulan_audio': ints(tokens['mulan_audio']), 'mulan_text': ints(tokens['mulan_text']),
      'num_semantic_frames': ints([len(tokens['semantic'])]),
      'num_acoustic_frames': ints([acoustic.shape[0]]),
      'acoustic_levels': ints([acoustic.shape[1]]),
      'caption': text(caption), 'work_id': text(work_id), 'render_id': text(render_id),
  }
  if 'melody' in tokens:  # [W, M]
    melody = np.asarray(tokens['melody'])
    feature.update(melody=ints(melody), num_melody_frames=ints([melody.shape[0]]),
                   melody_levels=ints([melody.shape[1]]))
  return tf.train.Example(features=tf.train.Features(feature=feature)).SerializeToString()


# -- corpus and shards ------------------------------------------------------------------------


def find_prepared(data_dir: str, tfds_name: str) -> epath.Path:
  """The newest prepared version folder of `name[/config]` under data_dir."""
  if '://' not in data_dir:
    data_dir = os.path.abspath(os.path.expanduser(data_dir))
  base = epath.Path(data_dir) / tfds_name
  versions = sorted((p for p in base.glob('*') if (p / 'dataset_info.json').exists()),
                    key=lambda p: tuple(int(x) if x.isdigit() else 0 for x in p.name.split('.')))
  if not versions:
    raise ValueError(f'{base}: no prepared TFDS dataset (build it with python -m '
                     'musiclm_jax.data.build)')
  return versions[-1]


def read_clips(builder, split: str, start: int, stop: int) -> Iterable[dict[str, Any]]:
  """Examples [start, stop) of a TFDS split as {'audio', 'caption', 'work_id', 'render_id'}."""
  import tensorflow_datasets as tfds  # pylint: disable=g-import-not-at-top
  keys = [k for k in ('audio', 'caption', 'render_id', 'clip_index', *_ID_KEYS)
          if k in builder.info.features]
  ds = builder.as_dataset(split=f'{split}[{start}:{stop}]', shuffle_files=False,
                          decoders=tfds.decode.PartialDecoding({k: True for k in keys}))
  for offset, ex in enumerate(tfds.as_numpy(ds)):
    index = start + offset
    work = next((clip_reader.text(ex[k]) for k in _ID_KEYS if k in ex), f'{split}:{index}')
    render = clip_reader.text(ex['render_id']) if 'render_id' in ex else (
        f'{work}#{int(ex["clip_index"])}' if 'clip_index' in ex else f'{work}#{index}')
    yield {'audio': clip_reader.float_audio(ex['audio']),
           'caption': clip_reader.text(ex.get('caption', b'')),
           'work_id': work, 'render_id': render}


def shard_name(index: int, count: int) -> str:
  return f'shard-{index:05d}-of-{count:05d}.tfrecord'


def write_shard(path: epath.Path, clips: Iterable[Mapping[str, Any]], tokenize: BatchTokenizer,
                progress: Callable[[int], None] = lambda n: None) -> dict[str, Any]:
  """Tokenizes `clips` into `path` atomically; returns {'examples', 'skipped': [...]}.

  The records go to a hidden temp file, the stats to `path.json`, then the temp file is
  renamed to `path`: the shard is visible only when complete.
  """
  import tensorflow as tf  # pylint: disable=g-import-not-at-top
  from musiclm_jax.data.skips import SkipReport  # pylint: disable=g-import-not-at-top
  skips, count = SkipReport(), 0
  tmp = path.with_name(f'.{path.name}.tmp-{os.getpid()}')
  try:
    with tf.io.TFRecordWriter(str(tmp)) as writer:
      pending = []

      def flush():
        nonlocal count
        if not pending:
          return
        tokens = tokenize([c['audio'] for c in pending], [c['caption'] for c in pending])
        for clip, toks in zip(pending, tokens):
          writer.write(serialize(toks, clip['caption'], clip['work_id'], clip['render_id']))
        count += len(pending)
        progress(len(pending))
        pending.clear()

      for clip in clips:
        reason = tokenize.problem(clip['audio'])
        if reason:
          skips.add(clip['render_id'], reason)
          progress(1)
          continue
        pending.append(clip)
        if len(pending) == tokenize.batch_size:
          flush()
      flush()
    stats = {'file': path.name, 'examples': count, 'skipped': skips.records}
    _write_json(path.with_suffix('.json'), stats)
    tmp.replace(path)
  finally:
    tmp.unlink(missing_ok=True)
  return stats


def precompute_split(builder, split: str, out_dir: epath.Path, tokenize: BatchTokenizer, *,
                     shard_size: int, max_clips: int | None = None,
                     progress: Callable[[int], None] = lambda n: None) -> dict[str, Any]:
  """Writes (or finishes) every shard of one split and its index.json; returns the index."""
  total = int(builder.info.splits[split].num_examples)
  if max_clips is not None:
    total = min(total, max_clips)
  count = max(1, -(-total // shard_size)) if total else 0
  out_dir.mkdir(parents=True, exist_ok=True)
  for stale in out_dir.glob('.shard-*.tmp-*'):
    stale.unlink(missing_ok=True)  # left by a killed run
  shards = []
  for k in range(count):
    path = out_dir / shard_name(k, count)
    start, stop = k * shard_size, min((k + 1) * shard_size, total)
    stats_path = path.with_suffix('.json')
    if path.exists() and stats_path.exists():
      shards.append(json.loads(stats_path.read_text()))
      progress(stop - start)
      continue
    shards.append(write_shard(path, read_clips(builder, split, start, stop), tokenize, progress))
  skipped = [r for s in shards for r in s['skipped']]
  from musiclm_jax.data.skips import SkipReport  # pylint: disable=g-import-not-at-top
  index = {'split': split, 'num_shards': count, 'shard_size': shard_size, 'source_examples': total,
           'num_examples': sum(s['examples'] for s in shards),
           'skipped': SkipReport(skipped).counts(), 'skipped_clips': skipped,
           'shards': [{'file': s['file'], 'examples': s['examples']} for s in shards]}
  _write_json(out_dir / INDEX_FILE, index)
  return index


def _check_resume(out: epath.Path, info: Mapping[str, Any]) -> str | None:
  """Why an existing TOKENS_DIR cannot be continued with these settings, or None."""
  path = out / INFO_FILE
  if not path.exists():
    return None
  try:
    old = json.loads(path.read_text())
  except ValueError:
    return f'{path} is not valid JSON; delete it or use another --out'
  for key in ('source', 'shard_size', 'max_clips', 'tokenizers'):
    if old.get(key) != info.get(key):
      return (f'{out} was written with another {key} ({old.get(key)!r} != {info.get(key)!r}); '
              'use the same settings or another --out')
  return None


def run(*, builder, tokenizers: Tokenizers, out: str, splits: Sequence[str] | None = None,
        batch_size: int = 8, shard_size: int = 64, max_clips: int | None = None,
        max_seconds: float = 600.0, source: Mapping[str, Any] | None = None,
        progress_bar: bool = True) -> dict[str, Any]:
  """Precomputes every split of `builder` (default: all) into `out`; returns the summary."""
  out_path = epath.Path(os.path.expanduser(out))
  available = list(builder.info.splits)
  splits = list(splits or available)
  unknown = [s for s in splits if s not in available]
  if unknown:
    raise ConfigError(f'splits {unknown} not in the dataset (has {available})')
  audio = builder.info.features['audio']
  rate = getattr(audio, 'sample_rate', None)
  if rate is not None and int(rate) != tokenizers.sample_rate:
    raise ConfigError(f'dataset audio is {rate} Hz but the tokenizers expect '
                     f'{tokenizers.sample_rate} Hz')
  info = {'tokenizers': tokenizers.info(), 'source': dict(source or {}),
          'shard_size': shard_size, 'max_clips': max_clips, 'splits': splits}
  problem = _check_resume(out_path, info)
  if problem:
    raise ConfigError(problem)
  if (out_path / INFO_FILE).exists():  # keep the splits of earlier runs listed
    old_splits = json.loads((out_path / INFO_FILE).read_text()).get('splits', [])
    info['splits'] = list(dict.fromkeys([*old_splits, *splits]))
  _write_json(out_path / INFO_FILE, info)
  (out_path / DONE_FILE).unlink(missing_ok=True)
  tokenize = BatchTokenizer(tokenizers, batch_size=batch_size, max_seconds=max_seconds)
  totals = {s: int(builder.info.splits[s].num_examples) for s in splits}
  if max_clips is not None:
    totals = {s: min(n, max_clips) for s, n in totals.items()}
  from tqdm import tqdm  # pylint: disable=g-import-not-at-top
  start = time.time()
  summary = {'splits': {}}
  with tqdm(total=sum(totals.values()), unit='clip', disable=not progress_bar,
            desc='tokenizing') as bar:
    for split in splits:
      index = precompute_split(builder, split, out_path / split, tokenize,
                               shard_size=shard_size, max_clips=max_clips, progress=bar.update)
      summary['splits'][split] = {k: index[k] for k in ('num_examples', 'num_shards', 'skipped')}
  summary['seconds'] = round(time.time() - start, 1)
  _write_json(out_path / DONE_FILE, summary)
  return summary


# -- command line -----------------------------------------------------------------------------


class _Parser(argparse.ArgumentParser):

  def error(self, message):
    self.exit(2, f'{self.prog}: error: {message}\n')


def build_parser() -> argparse.ArgumentParser:
  p = _Parser(prog='musiclm data precompute', description=__doc__.split('\n\n')[0])
  p.add_argument('--corpus', required=True, choices=sorted(CORPORA))
  p.add_argument('--config', default=None, help='builder config (synth: small|full|tiny)')
  p.add_argument('--tfds_name', default=None,
                 help='TFDS name[/config] under --data_dir (default from --corpus/--config)')
  p.add_argument('--data_dir', required=True, help='TFDS data folder with the prepared corpus')
  p.add_argument('--tokenizers', default=None,
                 help='folder with codec/, semantic_tok/, mulan_rvq/')
  p.add_argument('--codec', default=None, help='SoundStream run folder (overrides)')
  p.add_argument('--codec_gin_file', action='append', default=None,
                 help='codec model gin file(s) when the run config.gin cannot be parsed')
  p.add_argument('--semantic', default=None, help='SemanticTokenizer folder (overrides)')
  p.add_argument('--mulan', default=None, help='saved MuLan folder with RVQ (overrides)')
  p.add_argument('--melody', default=None,
                 help='saved melody embedder with RVQ (default: TOKENIZERS/melody/ if present)')
  p.add_argument('--no_melody', action='store_true',
                 help='no melody tokens, even when TOKENIZERS/melody/ exists')
  p.add_argument('--out', required=True, help='TOKENS_DIR to write')
  p.add_argument('--splits', default=None, help='comma-separated (default: every split)')
  p.add_argument('--batch_size', type=int, default=8)
  p.add_argument('--shard_size', type=int, default=64)
  p.add_argument('--max_clips', type=int, default=None, help='first N clips per split')
  p.add_argument('--max_seconds', type=float, default=600.0, help='longer clips are skipped')
  p.add_argument('--no_progress', action='store_true')
  return p


def main(argv: Sequence[str] | None = None) -> int:
  """Exit codes: 0 done, 1 failed (shards written so far are kept), 2 bad arguments."""
  logging.basicConfig(level=logging.INFO, format='%(asctime)s %(levelname)s %(message)s')
  for noisy in ('absl', 'jax._src', 'orbax'):
    logging.getLogger(noisy).setLevel(logging.WARNING)
  try:
    args = build_parser().parse_args(argv)
  except SystemExit as e:
    return int(e.code or 0)
  prog = 'musiclm data precompute'
  if args.batch_size < 1 or args.shard_size < 1:
    print(f'{prog}: error: --batch_size and --shard_size must be >= 1', file=sys.stderr)
    return 2
  config = args.config or DEFAULT_CONFIGS[args.corpus]
  tfds_name = args.tfds_name or CORPORA[args.corpus].format(config=config)
  splits = [s for s in (args.splits or '').split(',') if s] or None
  try:
    if args.melody and args.no_melody:
      raise ValueError('--melody and --no_melody exclude each other')
    paths = tokenizer_paths(args.tokenizers, args.codec, args.semantic, args.mulan,
                            melody=args.melody, use_melody=not args.no_melody)
    missing = [f'{k} ({p})' for k, p in paths.items() if not os.path.exists(p)]
    if missing:
      raise ValueError(f'missing tokenizers: {", ".join(missing)}')
    import tensorflow_datasets as tfds  # pylint: disable=g-import-not-at-top
    prepared = find_prepared(args.data_dir, tfds_name)
    builder = tfds.builder_from_directory(str(prepared))
    tokenizers = load_tokenizers(paths, args.codec_gin_file)
  except (ValueError, OSError) as e:
    print(f'{prog}: error: {" ".join(str(e).split())}', file=sys.stderr)
    return 2
  source = {'corpus': args.corpus, 'tfds_name': tfds_name, 'path': str(prepared)}
  try:
    summary = run(builder=builder, tokenizers=tokenizers, out=args.out, splits=splits,
                  batch_size=args.batch_size, shard_size=args.shard_size,
                  max_clips=args.max_clips, max_seconds=args.max_seconds, source=source,
                  progress_bar=not args.no_progress)
  except ConfigError as e:
    print(f'{prog}: error: {" ".join(str(e).split())}', file=sys.stderr)
    return 2
  except Exception as e:  # pylint: disable=broad-except
    print(f'{prog}: failed: {type(e).__name__}: {" ".join(str(e).split())[:300]} '
          f'(finished shards are kept; rerun to continue)', file=sys.stderr)
    return 1
  for split, s in summary['splits'].items():
    why = ', '.join(f'{k} {v}' for k, v in s['skipped'].items())
    print(f'{split}: wrote {s["num_examples"]} clips in {s["num_shards"]} shards, skipped '
          f'{sum(s["skipped"].values())}' + (f' ({why})' if why else ''))
  print(f'done in {summary["seconds"]:.0f} s: {args.out}')
  return 0


if __name__ == '__main__':
  sys.exit(main())
