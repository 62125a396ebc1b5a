r"""Are the semantic tokens semantic? NMI of token streams with score labels on held-out clips.

  python -m musiclm_jax.semantic.evaluate_tokens --tokenizers demo_work \
      --data_dir demo_work/data --split test [--max_clips N] --out tokens_eval.json

For every clip of the split(s) (synth corpus: audio with the score's per-frame labels) at 25 Hz:

  labels   pitch_class_set     the sounding pitch classes of the frame as a 12-bit integer
                               (bit k = pitch class k; 0 = nothing sounds)
           melody_pitch_class  the top line's pitch class, `melody_pitch % 12`; 12 = rest
           instrument          the clip's instrument set (sorted GM programs, 128 = drums),
                               one label for every frame of the clip
  streams  semantic            the w2v-BERT k-means tokens (`DIR/semantic_tok`, 25 Hz)
           codec_level1        SoundStream RVQ level-1 codes (`DIR/codec`, 50 Hz); the code of the
                               FIRST 50 Hz frame of each 25 Hz frame (codes[:, 0::2, 0]), i.e.
                               samples [960 t, 960 t + 480) of token frame t
           logmel_kmeans       k-means on raw log-mel frames (w2v-BERT's front end: 128 mels,
                               hop 240) averaged over the 4 mel frames of each 25 Hz frame, every
                               dimension standardised; K = the semantic k-means' K, fitted
                               (seeded) on the `--train_split` split
           <stream>_shuffled   the same tokens permuted across all frames (seeded): chance level

Reported per stream: NMI (arithmetic-mean normalisation, as sklearn's default) with each label,
the chance-adjusted AMI (sklearn's, when scikit-learn is installed; a librosa dependency),
tokens used, and the cross-rendering agreement: renderings of one melody group play the same
notes at the same times with other instruments, so the share of aligned frames where two such
renderings get the same token measures invariance to timbre (chance: sum_k p_k^2; kappa =
(agreement - chance) / (1 - chance)).

In a small test split each clip has its own instrument set, and the per-frame pitch labels are
clip-specific too (key, register), so a token that merely recognises the clip scores on every
label. Three conditional NMIs, I(tokens; y | g) / H(y | g), remove that confound:
  pitch_class_set|clip, melody_pitch_class|clip   pitch information WITHIN a clip (instrument
                                                   fixed): what is left must be pitch, not timbre
  clip|melody_group    which rendering of the SAME score a frame comes from (same notes, other
                       instruments/dynamics): timbre information, no pitch content possible
Small groups bias these plug-in estimates upwards, so each comes with its chance level: the same
measure after permuting the tokens within every group (seeded, mean of 5).
A table is printed and everything is written to `--out` as JSON (atomically). The labels, the
measures and the log-mel k-means baseline live in `musiclm_jax.semantic.token_metrics`.
"""

import argparse
from collections.abc import Callable, Iterable, Mapping, Sequence
import itertools
import json
import os
import sys
import time
from typing import Any

import numpy as np

from musiclm_jax import files
from musiclm_jax.semantic import token_metrics
from musiclm_jax.semantic import tokenizer as tokenizer_lib

FRAME_RATE = 25.0


# -- token streams ----------------------------------------------------------------------------


class SemanticStream:
  """w2v-BERT k-means tokens, 25 Hz."""

  def __init__(self, tokenizer: Any):
    self.tok = tokenizer
    self.cardinality = int(tokenizer.cardinality)
    self.description = (f'w2v-BERT layer {getattr(tokenizer, "layer", "?")} k-means, '
                        f'K={self.cardinality}')

  def tokenize(self, wav: np.ndarray) -> np.ndarray:
    return np.asarray(self.tok.tokenize(wav))  # [B, N // 960]


class CodecLevelStream:
  """One RVQ level of a codec at 2x the token rate: the code of the first frame of each pair."""

  def __init__(self, codec: Any, level: int = 0):
    self.codec, self.level = codec, level
    self.ratio = int(round(float(codec.frame_rate) / FRAME_RATE))
    if self.ratio * FRAME_RATE != float(codec.frame_rate):
      raise ValueError(f'codec frame rate {codec.frame_rate} is not a multiple of {FRAME_RATE}')
    self.cardinality = int(codec.codebook_size)
    self.description = (f'SoundStream RVQ level {level + 1}, K={self.cardinality}, code of the '
                        f'first of every {self.ratio} frames')

  def tokenize(self, wav: np.ndarray) -> np.ndarray:
    codes = np.asarray(self.codec.encode(wav))  # [B, T_a, L]
    return codes[:, ::self.ratio, self.level]  # [B, ceil(T_a / ratio)]


# -- evaluation -------------------------------------------------------------------------------


def tokenize_clips(stream: Any, wavs: Sequence[np.ndarray], *, batch_size: int,
                   samples_per_frame: int = 960) -> list[np.ndarray]:
  """Per clip int64 tokens [N_i // samples_per_frame] from fixed-shape batches.

  Clips of a batch are zero-padded to the batch's longest clip (rounded up to a whole frame),
  and the batch to `batch_size` rows, so equal-length clips compile once.
  """
  out = []
  for start in range(0, len(wavs), batch_size):
    chunk = wavs[start:start + batch_size]
    length = -(-max(w.size for w in chunk) // samples_per_frame) * samples_per_frame
    batch = np.zeros((batch_size, length), np.float32)
    for i, w in enumerate(chunk):
      batch[i, :w.size] = w
    tokens = np.asarray(stream.tokenize(batch))  # [batch_size, T]
    out.extend(tokens[i, :w.size // samples_per_frame].astype(np.int64)
               for i, w in enumerate(chunk))
  return out


CONDITIONAL = ('pitch_class_set|clip', 'melody_pitch_class|clip', 'clip|melody_group')


def _scores(per_clip: Sequence[np.ndarray], labels: Mapping[str, np.ndarray],
            groups: Sequence[str], seed: int) -> dict[str, Any]:
  flat = np.concatenate(per_clip)
  agree, pairs = token_metrics.agreement(per_clip, groups)
  chance = token_metrics.chance_agreement(flat)
  group_ids = {g: i for i, g in enumerate(dict.fromkeys(groups))}
  ids = {'clip': np.concatenate([np.full(len(t), i) for i, t in enumerate(per_clip)]),
         'melody_group': np.concatenate([np.full(len(t), group_ids[g]) for t, g in
                                         zip(per_clip, groups)]), **labels}
  cond = {key: (ids[key.split('|')[0]], ids[key.split('|')[1]]) for key in CONDITIONAL}
  return {'nmi': {name: token_metrics.nmi(flat, lab) for name, lab in labels.items()},
          'ami': {name: token_metrics.adjusted_mutual_information(flat, lab)
                  for name, lab in labels.items()},
          'conditional_nmi': {key: token_metrics.conditional_nmi(flat, y, g)
                              for key, (y, g) in cond.items()},
          'conditional_nmi_chance': {key: token_metrics.conditional_nmi_chance(flat, y, g,
                                                                               seed=seed)
                                     for key, (y, g) in cond.items()},
          'tokens_used': int(len(np.unique(flat))),
          'tokens_per_clip': float(np.mean([len(np.unique(t)) for t in per_clip])),
          'agreement': agree, 'agreement_chance': chance,
          'agreement_kappa': (agree - chance) / (1.0 - chance) if chance < 1 else float('nan'),
          'agreement_pairs': pairs}


def evaluate(clips: Sequence[Mapping[str, Any]], streams: Mapping[str, Any], *,
             batch_size: int = 4, seed: int = 0, samples_per_frame: int = 960,
             log: Callable[[str], None] = print) -> dict[str, Any]:
  """Labels and tokens of every clip, NMI table, tokens used, cross-rendering agreement.

  Args:
    clips: dicts with 'audio' float32 [N], 'pitch_classes' [F, 12], 'melody_pitch' [F],
      'programs', 'melody_group' (see `musiclm_jax.data.token_eval_reader`).
    streams: name -> object with `tokenize(wav [B, N]) -> [B, T]` at 25 Hz and `cardinality`.
    batch_size: clips per tokenizer call.
    seed: seed of the shuffled (chance) streams.
    samples_per_frame: audio samples per 25 Hz frame.
    log: progress printer.

  Returns:
    {'clips', 'frames', 'label_nmi': {'a~b': NMI of two labels or a label and the clip id},
     (per stream also 'ami', 'conditional_nmi', 'conditional_nmi_chance', 'agreement_kappa'),
     'labels': {name: {'distinct', 'entropy_bits'}},
     'streams': {name: {'nmi': {label: float}, 'tokens_used', 'cardinality', 'agreement',
     'agreement_chance', 'agreement_pairs', 'description'}}}, with `<name>_shuffled` rows.
  """
  if not clips:
    raise ValueError('evaluate_tokens: no clips')
  instrument_ids: dict[str, int] = {}
  labels = [token_metrics.clip_labels(c, instrument_ids) for c in clips]
  wavs = [np.asarray(c['audio'], np.float32) for c in clips]
  groups = [str(c.get('melody_group', i)) for i, c in enumerate(clips)]
  tokens = {}
  for name, stream in streams.items():
    start = time.time()
    tokens[name] = tokenize_clips(stream, wavs, batch_size=batch_size,
                                  samples_per_frame=samples_per_frame)
    log(f'{name}: tokenized {len(wavs)} clips ({time.time() - start:.1f} s)')
  lengths = [min([len(labels[i]['pitch_class_set'])] + [len(t[i]) for t in tokens.values()])
             for i in range(len(clips))]
  flat_labels = {k: np.concatenate([lab[k][:n] for lab, n in zip(labels, lengths)])
                 for k in token_metrics.LABELS}
  rng = np.random.default_rng(seed)
  results: dict[str, Any] = {}
  for name, per_clip in tokens.items():
    per_clip = [t[:n] for t, n in zip(per_clip, lengths)]
    card = int(streams[name].cardinality)
    desc = getattr(streams[name], 'description', name)
    results[name] = {**_scores(per_clip, flat_labels, groups, seed), 'cardinality': card,
                     'description': desc}
    shuffled = np.split(rng.permutation(np.concatenate(per_clip)), np.cumsum(lengths)[:-1])
    results[f'{name}_shuffled'] = {**_scores(shuffled, flat_labels, groups, seed),
                                   'cardinality': card,
                                   'description': f'{name} tokens permuted across all frames'}
  order = list(tokens) + [f'{n}_shuffled' for n in tokens]
  # How much the labels tell about each other and about the clip: a token that only names the
  # clip would already score NMI(clip, label) (the per-frame labels are clip-specific too).
  clip_ids = np.concatenate([np.full(n, i) for i, n in enumerate(lengths)])
  named = {**flat_labels, 'clip': clip_ids}
  label_nmi = {f'{a}~{b}': token_metrics.nmi(named[a], named[b])
               for a, b in itertools.combinations(list(named), 2)}
  return {'clips': len(clips), 'frames': int(sum(lengths)), 'label_nmi': label_nmi,
          'labels': {k: {'distinct': int(len(np.unique(v))),
                         'entropy_bits': token_metrics.entropy(v) / np.log(2)}
                     for k, v in flat_labels.items()},
          'instrument_sets': sorted(instrument_ids, key=instrument_ids.get),
          'streams': {k: results[k] for k in order}}


def format_conditional_table(report: Mapping[str, Any]) -> str:
  """Confound-free view: pitch within a clip, rendering within a score, kappa agreement."""
  lines = ['| tokens | pitch-class set within clip (chance) | melody pitch class within clip '
           '(chance) | rendering within score (chance) | agreement kappa |',
           '|---|---|---|---|---|']
  for name, r in report['streams'].items():
    c, ch = r['conditional_nmi'], r['conditional_nmi_chance']
    cells = ' | '.join(f'{c[k]:.3f} ({ch[k]:.3f})' for k in CONDITIONAL)
    lines.append(f'| {name} | {cells} | {r["agreement_kappa"]:.3f} |')
  return '\n'.join(lines)


def format_table(report: Mapping[str, Any], measure: str = 'nmi') -> str:
  """A markdown table: `measure` ('nmi' or 'ami') with each label, tokens used / K, agreement."""
  title = measure.upper()
  lines = [f'| tokens | {title} pitch-class set | {title} melody pitch class | '
           f'{title} instrument set | tokens used / K (per clip) | same-score agreement '
           '(chance) |', '|---|---|---|---|---|---|']

  def num(x):
    return 'n/a' if x is None else f'{x:.3f}'

  for name, r in report['streams'].items():
    m = r[measure]
    lines.append(f'| {name} | {num(m["pitch_class_set"])} | {num(m["melody_pitch_class"])} | '
                 f'{num(m["instrument"])} | {r["tokens_used"]} / {r["cardinality"]} '
                 f'({r["tokens_per_clip"]:.1f}) | '
                 f'{r["agreement"]:.3f} ({r["agreement_chance"]:.3f}) |')
  return '\n'.join(lines)


# -- CLI --------------------------------------------------------------------------------------


def _write_json(path: str, obj: Any) -> None:
  files.atomic_write_text(path, json.dumps(obj, indent=2) + '\n')


def _audio_batches(clips: Iterable[Mapping[str, Any]], batch_size: int,
                   crop_samples: int) -> Iterable[np.ndarray]:
  """[batch, crop_samples] batches: each clip's first crop, zero-padded."""
  pending = []
  for clip in clips:
    wav = clip['audio'][:crop_samples]
    pending.append(np.pad(wav, (0, crop_samples - wav.size)))
    if len(pending) == batch_size:
      yield np.stack(pending)
      pending = []
  if pending:
    yield np.stack(pending)


def main(argv: list[str] | None = None) -> int:
  p = argparse.ArgumentParser(description=__doc__.splitlines()[0])
  p.add_argument('--tokenizers', help='folder with codec/ and semantic_tok/ (the demo work dir)')
  p.add_argument('--codec', help='codec run folder (default TOKENIZERS/codec)')
  p.add_argument('--semantic', help='semantic tokenizer folder (default TOKENIZERS/semantic_tok)')
  p.add_argument('--data_dir', required=True, help='TFDS data_dir with the synth corpus')
  p.add_argument('--dataset', default='synth/small')
  p.add_argument('--split', default='test', help='split(s) to evaluate, comma-separated')
  p.add_argument('--max_clips', type=int, default=None, help='at most this many clips per split')
  p.add_argument('--train_split', default='train', help='split the log-mel k-means is fitted on')
  p.add_argument('--num_clusters', type=int, default=None,
                 help='log-mel k-means K (default: the semantic k-means K)')
  p.add_argument('--kmeans_max_frames', type=int, default=20_000)
  p.add_argument('--kmeans_iters', type=int, default=20)
  p.add_argument('--kmeans_batch_size', type=int, default=10_000, help='0: full-batch Lloyd')
  p.add_argument('--batch_size', type=int, default=4, help='clips per tokenizer call')
  p.add_argument('--seed', type=int, default=0)
  p.add_argument('--out', required=True, help='JSON report to write')
  args = p.parse_args(argv)

  # pylint: disable=g-import-not-at-top
  from musiclm_jax.data import token_eval_reader
  from musiclm_jax.data.token_store import load_codec
  # pylint: enable=g-import-not-at-top
  if not (args.tokenizers or (args.codec and args.semantic)):
    print('evaluate_tokens: pass --tokenizers DIR or both --codec and --semantic',
          file=sys.stderr)
    return 2
  # orbax wants absolute checkpoint paths.
  codec_dir = os.path.abspath(args.codec or os.path.join(args.tokenizers, 'codec'))
  semantic_dir = os.path.abspath(args.semantic or os.path.join(args.tokenizers, 'semantic_tok'))
  start = time.time()
  try:
    semantic = tokenizer_lib.SemanticTokenizer.load(semantic_dir)
    codec = load_codec(codec_dir)
  except Exception as e:  # pylint: disable=broad-except
    print(f'evaluate_tokens: cannot load the tokenizers: {type(e).__name__}: '
          f'{str(e).splitlines()[0] if str(e) else ""}', file=sys.stderr)
    return 2
  spf = semantic.config.samples_per_frame
  print(f'loaded {semantic_dir} (K={semantic.cardinality}) and {codec_dir} '
        f'({codec.num_codebooks} x {codec.codebook_size} at {codec.frame_rate:g} Hz)')

  splits = [s.strip() for s in args.split.split(',') if s.strip()]
  eval_counts: dict[str, int] = {}
  train_counts: dict[str, int] = {}
  try:  # the held-out clips first: a bad split or dataset fails before the k-means fit
    clips = [clip for split in splits for clip in token_eval_reader.read_labeled_clips(
        args.data_dir, split, dataset=args.dataset, limit=args.max_clips, counts=eval_counts)]
    print(f'{len(clips)} clips from {",".join(splits)}')
    train = token_eval_reader.read_labeled_clips(args.data_dir, args.train_split,
                                                 dataset=args.dataset, with_labels=False,
                                                 counts=train_counts)
    num_clusters = args.num_clusters or semantic.cardinality
    logmel, fit = token_metrics.fit_logmel_kmeans(
        _audio_batches(train, 8, int(10 * semantic.sample_rate)), num_clusters=num_clusters,
        mel_config=semantic.config.mel_config, pool=spf // semantic.config.hop_length,
        seed=args.seed, num_iters=args.kmeans_iters,
        batch_size=args.kmeans_batch_size or None, max_frames=args.kmeans_max_frames)
  except ValueError as e:
    print(f'evaluate_tokens: {str(e).splitlines()[0]}', file=sys.stderr)
    return 2
  if not clips:
    print(f'evaluate_tokens: no usable clips in {args.split} ({eval_counts})', file=sys.stderr)
    return 2
  streams = {'semantic': SemanticStream(semantic), 'codec_level1': CodecLevelStream(codec, 0),
             'logmel_kmeans': logmel}
  report = evaluate(clips, streams, batch_size=args.batch_size, seed=args.seed,
                    samples_per_frame=spf)
  report = {'command': 'python -m musiclm_jax.semantic.evaluate_tokens ' + ' '.join(
                sys.argv[1:] if argv is None else argv),
            'data_dir': args.data_dir, 'dataset': args.dataset, 'splits': splits,
            'frame_rate': FRAME_RATE, 'seed': args.seed,
            'codec_alignment': 'level-1 code of the first 50 Hz frame of each 25 Hz frame',
            'logmel_kmeans_fit': {'split': args.train_split, 'frames': args.kmeans_max_frames,
                                  'iters': args.kmeans_iters, 'inertia': fit.inertia[-1],
                                  'empty_clusters': int(np.sum(fit.counts == 0))},
            'eval_counts': eval_counts, 'train_counts': train_counts, **report, 'seconds': round(time.time() - start, 1)}
  _write_json(args.out, report)
  print(format_table(report))
  if all(v is not None for r in report['streams'].values() for v in r['ami'].values()):
    print(format_table(report, 'ami'))
  print(format_conditional_table(report))
  print(f'wrote {args.out} ({report["seconds"]} s)')
  return 0


if __name__ == '__main__':
  sys.exit(main())
