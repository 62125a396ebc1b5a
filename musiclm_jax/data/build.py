"""Prepares one corpus as a TFDS dataset: the single data-building command.

  python -m musiclm_jax.data.build --corpus synth --config small --data_dir OUT
  python -m musiclm_jax.data.build --corpus musiccaps --source CLIPS_DIR [--csv PATH] --data_dir OUT
  python -m musiclm_jax.data.build --corpus musiccaps --config captions_only --data_dir OUT
  python -m musiclm_jax.data.build --corpus folder --source MUSIC_DIR [--clip_seconds 10] \
      --data_dir OUT

(`musiclm data build ...` is the same command.) It shows a progress bar, prints a summary (clips
written, hours, skipped items by reason) and writes `OUT/<corpus>/skipped.jsonl`, one
`{"item", "reason"}` per skipped file/row. Exit codes: 0 built (or already prepared), 1 the build
failed, 2 bad arguments.
"""

import argparse
from collections.abc import Sequence
import json
import os
from pathlib import Path
import sys
import time

CORPORA = ('synth', 'musiccaps', 'folder')
DEFAULT_CONFIGS = {'synth': 'small', 'musiccaps': 'default', 'folder': None}
MUSICCAPS_CONFIGS = ('default', 'captions_only')


class _Parser(argparse.ArgumentParser):
  """Argument errors are one line (and exit code 2)."""

  def error(self, message):
    self.exit(2, f'{self.prog}: error: {message}\n')


def _parser(prog: str) -> argparse.ArgumentParser:
  p = _Parser(prog=prog, description=__doc__.split('\n\n')[0])
  p.add_argument('--corpus', required=True, choices=CORPORA, help='which corpus to build')
  p.add_argument('--data_dir', required=True, help='TFDS data folder to write into')
  p.add_argument('--config', default=None,
                 help='builder config: synth small|full|tiny (default small); '
                      'musiccaps default|captions_only (default default)')
  p.add_argument('--source', default=None,
                 help='audio folder: <ytid>.<ext> clips for musiccaps; any audio for folder')
  p.add_argument('--csv', default=None,
                 help='MusicCaps CSV (default: $MUSICLM_MUSICCAPS_CSV or '
                      '../shared/data/musiccaps/musiccaps-public.csv next to the repo)')
  p.add_argument('--clip_seconds', type=float, default=10.0, help='folder: clip length')
  p.add_argument('--no_progress', action='store_true', help='no progress bar')
  return p


def _check_args(args: argparse.Namespace) -> str | None:
  """The one-line problem with the arguments, or None."""
  corpus = args.corpus
  if args.source is not None and corpus == 'synth':
    return '--source is not used by --corpus synth'
  if args.csv is not None and corpus != 'musiccaps':
    return '--csv is only used by --corpus musiccaps'
  if corpus == 'folder' and args.config is not None:
    return '--corpus folder has no configs'
  if corpus == 'musiccaps' and args.config not in (None, *MUSICCAPS_CONFIGS):
    return f'--config for musiccaps must be one of {", ".join(MUSICCAPS_CONFIGS)}'
  if not args.clip_seconds > 0:
    return f'--clip_seconds must be > 0, got {args.clip_seconds}'
  needs_source = corpus == 'folder' or (corpus == 'musiccaps' and args.config != 'captions_only')
  if needs_source and args.source is None:
    what = 'audio files' if corpus == 'folder' else '<ytid>.<ext> clips (or --config captions_only)'
    return f'--corpus {corpus} needs --source DIR with {what}'
  if args.source is not None and not Path(args.source).expanduser().is_dir():
    return f'--source {args.source}: no such folder'
  if corpus == 'musiccaps':
    from musiclm_jax.data.musiccaps import default_csv_path  # pylint: disable=g-import-not-at-top
    csv_path = Path(args.csv).expanduser() if args.csv else default_csv_path()
    if not csv_path.is_file():
      return f'--csv {csv_path}: no such file (pass --csv or set $MUSICLM_MUSICCAPS_CSV)'
  if Path(args.data_dir).expanduser().exists() and not Path(args.data_dir).expanduser().is_dir():
    return f'--data_dir {args.data_dir}: not a folder'
  return None


def _builder_class(corpus: str):
  """The TFDS builder class of a corpus (importing it does not import TensorFlow yet)."""
  # pylint: disable=g-import-not-at-top
  if corpus == 'synth':
    from musiclm_jax.data.synth.builder import Synth
    return Synth
  if corpus == 'musiccaps':
    from musiclm_jax.data.musiccaps import MusicCaps
    return MusicCaps
  from musiclm_jax.data.folder import AudioFolder
  return AudioFolder


def _make_builder(cls, args: argparse.Namespace, data_dir: str):
  """The TFDS builder for the arguments (constructing it imports TensorFlow)."""
  progress = not args.no_progress
  config = args.config or DEFAULT_CONFIGS[args.corpus]
  if args.corpus == 'synth':
    return cls(config=config, data_dir=data_dir)
  if args.corpus == 'musiccaps':
    return cls(config=config, data_dir=data_dir, csv_path=args.csv, audio_dir=args.source,
               progress=progress)
  return cls(source_dir=args.source, clip_seconds=args.clip_seconds, data_dir=data_dir,
             progress=progress)


def _prepared(cls, config: str | None, data_dir: str) -> tuple[Path, dict[str, int], dict] | None:
  """(variant folder, examples per split, metadata) when already prepared, else None.

  Reads TFDS's `dataset_info.json` directly, so a rerun answers without importing TensorFlow.
  """
  version = cls.VERSION
  path = Path(data_dir) / cls.name
  if config is not None:
    for c in getattr(cls, 'BUILDER_CONFIGS', None) or []:
      if c.name == config and c.version:
        version = c.version
    path = path / config
  path = path / str(version)
  try:
    info = json.loads((path / 'dataset_info.json').read_text(encoding='utf-8'))
  except (OSError, ValueError):
    return None
  counts = {s.get('name', '?'): sum(int(n) for n in s.get('shardLengths', []))
            for s in info.get('splits', [])}
  try:
    metadata = json.loads((path / 'metadata.json').read_text(encoding='utf-8'))
  except (OSError, ValueError):
    metadata = {}
  return path, counts, metadata if isinstance(metadata, dict) else {}


def _mismatch(args: argparse.Namespace, metadata: dict) -> str | None:
  """How a prepared `folder` dataset differs from what the arguments ask for, or None."""
  if args.corpus != 'folder':
    return None
  wanted = os.fspath(Path(args.source).expanduser().resolve())
  if metadata.get('source_dir') not in (None, wanted):
    return f'from {metadata["source_dir"]}, not {wanted}'
  if metadata.get('clip_seconds') not in (None, args.clip_seconds):
    return f'with --clip_seconds {metadata["clip_seconds"]:g}, not {args.clip_seconds:g}'
  return None


def _split_counts(builder) -> dict[str, int]:
  try:
    return {name: int(info.num_examples) for name, info in builder.info.splits.items()}
  except Exception:  # pylint: disable=broad-except
    return {}


def main(argv: Sequence[str] | None = None, *, prog: str = 'musiclm data build') -> int:
  """Runs the command; returns the exit code (0 ok, 1 build failed, 2 bad arguments)."""
  try:
    args = _parser(prog).parse_args(argv)
  except SystemExit as e:  # argparse: --help (0) or a one-line error (2)
    return int(e.code or 0)
  problem = _check_args(args)
  if problem:
    print(f'{prog}: error: {problem}', file=sys.stderr)
    return 2
  data_dir = os.fspath(Path(args.data_dir).expanduser().resolve())
  report_path = Path(data_dir) / args.corpus / 'skipped.jsonl'
  config = args.config or DEFAULT_CONFIGS[args.corpus]
  label = f'{args.corpus}/{config}' if config else args.corpus
  try:
    cls = _builder_class(args.corpus)
    prepared = _prepared(cls, config, data_dir)
    if prepared is not None:
      path, counts, metadata = prepared
      mismatch = _mismatch(args, metadata)
      if mismatch:
        print(f'{prog}: error: {path} was built {mismatch}; use another --data_dir or delete it',
              file=sys.stderr)
        return 2
      source = f', built from {metadata["source_dir"]}' if metadata.get('source_dir') else ''
      print(f'{label}: already prepared at {path} ({sum(counts.values())} examples: '
            f'{", ".join(f"{k} {v}" for k, v in sorted(counts.items()))}{source}); '
            'delete that folder to rebuild')
      return 0
    import tensorflow_datasets as tfds  # pylint: disable=g-import-not-at-top
    from musiclm_jax.data.skips import SkipReport  # pylint: disable=g-import-not-at-top
    builder = _make_builder(cls, args, data_dir)
  except (ImportError, ValueError) as e:
    print(f'{prog}: error: {label}: {" ".join(str(e).split())}', file=sys.stderr)
    return 2 if isinstance(e, ValueError) else 1

  if args.corpus != 'synth' or args.no_progress:
    tfds.disable_progress_bar()  # our own tqdm bar over items instead of TFDS's
  start = time.time()
  error = None
  try:
    # Offline: never look for a prepared copy on GCS.
    builder.download_and_prepare(
        download_config=tfds.download.DownloadConfig(try_download_gcs=False))
  except KeyboardInterrupt:
    raise
  except Exception as e:  # pylint: disable=broad-except
    error = f'{type(e).__name__}: {" ".join(str(e).split())}' if not isinstance(
        e, ValueError) else ' '.join(str(e).split())
  report = SkipReport(getattr(builder, 'skipped', None) or [])
  report.write_jsonl(report_path)
  if error is not None:
    print(f'{prog}: error: {label}: build failed: {error}', file=sys.stderr)
    print(f'  {report.summary_line()}; skip report: {report_path}', file=sys.stderr)
    return 1

  summary = dict(getattr(builder, 'summary', None) or {})
  counts = _split_counts(builder)
  clips = summary.get('clips', sum(counts.values()))
  hours = float(summary.get('hours', summary.get('audio_hours', 0.0)))
  print(f'{label}: wrote {clips} clips ({hours:.3f} h) to {builder.data_dir} '
        f'in {time.time() - start:.1f} s')
  if counts:
    print(f'  splits: {", ".join(f"{k} {v}" for k, v in sorted(counts.items()))}')
  print(f'  {report.summary_line()}')
  print(f'  skip report: {report_path}')
  return 0


if __name__ == '__main__':
  sys.exit(main(sys.argv[1:], prog='python -m musiclm_jax.data.build'))
