"""Trains the sentencepiece text tokenizer (MuLan text tower) on the corpora's captions.

  python -m musiclm_jax.data.train_spm --data_dir OUT [--corpora synth,musiccaps] \\
      --vocab_size 2000 --out DIR

Text sources (one sentence per caption, one per aspect list):
  synth, folder  captions (+ aspects) of the `train` split of the prepared TFDS dataset under
                 `--data_dir` (skipped with a note when not prepared);
  musiccaps      captions + aspects straight from the CSV, so it works offline without audio.
Writes `DIR/spm.model`, `DIR/spm.vocab` and `DIR/spm_settings.json` (trainer settings, sources,
counts, sha256s), each atomically. The model is a unigram LM with byte fallback and lowercasing
NFKC normalization (`nmt_nfkc_cf`); ids: pad 0, eos 1, unk 2, no bos (the T5/seqio layout).
Training is single-threaded over the sentences in a fixed order, so the same inputs give a
byte-identical model. Exit codes: 0 ok, 1 training failed, 2 bad arguments.
"""

import argparse
from collections.abc import Iterator, Sequence
import hashlib
import json
import os
from pathlib import Path
import sys
import tempfile

CORPORA = ('synth', 'musiccaps', 'folder')
TRAINER_SETTINGS = {
    'model_type': 'unigram',
    'byte_fallback': True,
    'normalization_rule_name': 'nmt_nfkc_cf',
    'character_coverage': 0.9995,
    'split_digits': True,
    'pad_id': 0, 'eos_id': 1, 'unk_id': 2, 'bos_id': -1,
    'input_sentence_size': 0,  # use every sentence
    'shuffle_input_sentence': False,
    'max_sentence_length': 8192,
    'hard_vocab_limit': True,
}
SYNTH_CONFIG_PREFERENCE = ('full', 'small')


class _Parser(argparse.ArgumentParser):
  """Argument errors are one line (and exit code 2)."""

  def error(self, message):
    self.exit(2, f'{self.prog}: error: {message}\n')


def _clean(text: str) -> str:
  return ' '.join(text.split())


def musiccaps_sentences(csv_path: str | os.PathLike[str] | None, split: str = 'all'
                        ) -> Iterator[str]:
  """Captions and aspect lists of the MusicCaps CSV, in file order."""
  from musiclm_jax.data.musiccaps import read_musiccaps_csv  # pylint: disable=g-import-not-at-top
  for row in read_musiccaps_csv(csv_path):
    if split == 'train' and row.is_audioset_eval:
      continue
    yield _clean(row.caption)
    if row.aspects:
      yield _clean(', '.join(row.aspects))


def _variant_dir(data_dir: Path, corpus: str, config: str | None) -> Path | None:
  """The newest prepared version folder of `corpus` (and `config`) under `data_dir`."""
  root = data_dir / corpus
  if corpus == 'synth':
    if config is None:
      prepared = {p.parent.parent.name for p in root.glob('*/*/dataset_info.json')}
      preferred = [c for c in SYNTH_CONFIG_PREFERENCE if c in prepared]
      config = preferred[0] if preferred else min(prepared, default=None)
    if config is None:
      return None
    root = root / config
  versions = sorted((p.parent for p in root.glob('*/dataset_info.json')),
                    key=lambda p: tuple(int(x) if x.isdigit() else 0 for x in p.name.split('.')))
  return versions[-1] if versions else None


def tfds_sentences(variant_dir: Path, split: str = 'train') -> Iterator[str]:
  """Captions (and aspects) of one split of a prepared TFDS dataset, in stored order."""
  import tensorflow_datasets as tfds  # pylint: disable=g-import-not-at-top
  builder = tfds.builder_from_directory(os.fspath(variant_dir))
  features = builder.info.features
  if 'caption' not in features:
    raise ValueError(f'{variant_dir}: dataset has no caption feature')
  decoders = {k: tfds.decode.SkipDecoding() for k in features if k not in ('caption', 'aspects')}
  ds = builder.as_dataset(split=split, shuffle_files=False, decoders=decoders)
  for ex in tfds.as_numpy(ds.map(lambda e: {k: e[k] for k in ('caption', 'aspects') if k in e})):
    caption = _clean(ex['caption'].decode('utf-8', 'replace'))
    if caption:
      yield caption
    aspects = [a.decode('utf-8', 'replace').strip() for a in ex.get('aspects', [])]
    if any(aspects):
      yield _clean(', '.join(a for a in aspects if a))


def _sha256(path: Path) -> str:
  h = hashlib.sha256()
  with open(path, 'rb') as f:
    for chunk in iter(lambda: f.read(1 << 20), b''):
      h.update(chunk)
  return h.hexdigest()


def _strip_paths(model_path: Path) -> None:
  """Drops the temporary paths the trainer records, so equal inputs give equal bytes."""
  from sentencepiece import sentencepiece_model_pb2  # pylint: disable=g-import-not-at-top
  proto = sentencepiece_model_pb2.ModelProto()
  proto.ParseFromString(model_path.read_bytes())
  del proto.trainer_spec.input[:]
  proto.trainer_spec.input.append('sentences.txt')
  proto.trainer_spec.model_prefix = 'spm'
  model_path.write_bytes(proto.SerializeToString(deterministic=True))


def train(sentences: Sequence[str], out_dir: str | os.PathLike[str], *, vocab_size: int,
          num_threads: int = 1, sources: Sequence[dict] = ()) -> dict:
  """Trains and writes `spm.model`, `spm.vocab`, `spm_settings.json` into `out_dir`.

  Returns:
    The settings dict written to `spm_settings.json`.
  """
  import sentencepiece as spm  # pylint: disable=g-import-not-at-top
  out_dir = Path(out_dir)
  out_dir.mkdir(parents=True, exist_ok=True)
  settings = dict(TRAINER_SETTINGS, vocab_size=int(vocab_size), num_threads=int(num_threads))
  with tempfile.TemporaryDirectory(prefix='.spm_', dir=out_dir) as tmp:
    text = Path(tmp) / 'sentences.txt'
    text.write_text(''.join(s + '\n' for s in sentences), encoding='utf-8')
    prefix = Path(tmp) / 'spm'
    spm.SentencePieceTrainer.train(input=os.fspath(text), model_prefix=os.fspath(prefix),
                                   minloglevel=2, **settings)
    _strip_paths(prefix.with_suffix('.model'))
    info = {
        'trainer': settings,
        'sentencepiece_version': spm.__version__,
        'sources': list(sources),
        'num_sentences': len(sentences),
        'num_characters': sum(len(s) for s in sentences),
        'sha256': {'sentences': _sha256(text), 'spm.model': _sha256(prefix.with_suffix('.model')),
                   'spm.vocab': _sha256(prefix.with_suffix('.vocab'))},
    }
    (Path(tmp) / 'spm_settings.json').write_text(json.dumps(info, indent=2) + '\n',
                                                  encoding='utf-8')
    for name in ('spm.model', 'spm.vocab', 'spm_settings.json'):
      os.replace(Path(tmp) / name, out_dir / name)
  return info


def main(argv: Sequence[str] | None = None, *, prog: str = 'musiclm data train_spm') -> int:
  """Runs the command; returns the exit code (0 ok, 1 training failed, 2 bad arguments)."""
  p = _Parser(prog=prog, description=__doc__.split('\n\n')[0])
  p.add_argument('--out', required=True, help='folder for spm.model, spm.vocab, spm_settings.json')
  p.add_argument('--data_dir', default=None, help='TFDS data folder with prepared corpora')
  p.add_argument('--corpora', default='synth,musiccaps',
                 help=f'comma-separated, from {",".join(CORPORA)} (default synth,musiccaps)')
  p.add_argument('--vocab_size', type=int, default=2000)
  p.add_argument('--csv', default=None, help='MusicCaps CSV (default as in data build)')
  p.add_argument('--musiccaps_split', choices=('all', 'train'), default='all',
                 help='MusicCaps rows to use: all, or train only (not is_audioset_eval)')
  p.add_argument('--synth_config', default=None,
                 help='synth config to read (default: full if prepared, else small)')
  p.add_argument('--num_threads', type=int, default=1,
                 help='trainer threads; 1 keeps the model byte-identical across runs')
  try:
    args = p.parse_args(argv)
  except SystemExit as e:
    return int(e.code or 0)
  corpora = [c.strip() for c in args.corpora.split(',') if c.strip()]
  bad = [c for c in corpora if c not in CORPORA]
  problem = None
  if bad or not corpora:
    problem = f'--corpora: unknown {",".join(bad) or "(empty)"}; choose from {",".join(CORPORA)}'
  elif args.vocab_size < 300:
    problem = f'--vocab_size must be >= 300 (byte fallback takes 256 ids), got {args.vocab_size}'
  elif args.num_threads < 1:
    problem = f'--num_threads must be >= 1, got {args.num_threads}'
  elif args.data_dir is not None and not Path(args.data_dir).expanduser().is_dir():
    problem = f'--data_dir {args.data_dir}: no such folder'
  elif Path(args.out).expanduser().exists() and not Path(args.out).expanduser().is_dir():
    problem = f'--out {args.out}: not a folder'
  if problem:
    print(f'{prog}: error: {problem}', file=sys.stderr)
    return 2

  sentences: list[str] = []
  sources: list[dict] = []
  for corpus in corpora:
    try:
      if corpus == 'musiccaps':
        from musiclm_jax.data import musiccaps  # pylint: disable=g-import-not-at-top
        csv_path = Path(args.csv).expanduser() if args.csv else musiccaps.default_csv_path()
        got = list(musiccaps_sentences(csv_path, args.musiccaps_split))
        source = {'corpus': corpus, 'path': os.fspath(csv_path), 'split': args.musiccaps_split,
                  'sha256': _sha256(csv_path)}
      else:
        data_dir = Path(args.data_dir).expanduser() if args.data_dir else None
        variant = _variant_dir(data_dir, corpus, args.synth_config) if data_dir else None
        if variant is None:
          print(f'{prog}: note: {corpus} is not prepared under {args.data_dir}; skipped '
                f'(build it with: python -m musiclm_jax.data.build --corpus {corpus} ...)',
                file=sys.stderr)
          continue
        got = list(tfds_sentences(variant))
        source = {'corpus': corpus, 'path': os.fspath(variant), 'split': 'train'}
    except Exception as e:  # pylint: disable=broad-except
      print(f'{prog}: error: {corpus}: {" ".join(str(e).split())}', file=sys.stderr)
      return 2 if isinstance(e, ValueError) else 1
    source['sentences'] = len(got)
    sources.append(source)
    sentences.extend(got)
    print(f'{corpus}: {len(got)} sentences')
  if not sentences:
    print(f'{prog}: error: no text found in {",".join(corpora)}', file=sys.stderr)
    return 2
  try:
    info = train(sentences, Path(args.out).expanduser(), vocab_size=args.vocab_size,
                 num_threads=args.num_threads, sources=sources)
  except (RuntimeError, OSError) as e:  # e.g. vocab_size larger than the text allows
    print(f'{prog}: error: training failed: {" ".join(str(e).split())}', file=sys.stderr)
    return 1
  print(f'wrote {Path(args.out) / "spm.model"} (vocab {args.vocab_size}, '
        f'{info["num_sentences"]} sentences, sha256 {info["sha256"]["spm.model"][:12]})')
  return 0


if __name__ == '__main__':
  sys.exit(main(sys.argv[1:], prog='python -m musiclm_jax.data.train_spm'))
