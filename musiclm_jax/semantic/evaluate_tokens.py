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
A table is printed and everything is written to `--out` as JSON (atomically).
"""

import argparse
from collections.abc import Callable, Iterable, Mapping, Sequence
import dataclasses
import itertools
import json
import os
import sys
import time
from typing import Any

import jax
import jax.numpy as jnp
import numpy as np

from musiclm_jax import audio as audio_lib
from musiclm_jax import files
from musiclm_jax.semantic import kmeans as kmeans_lib
from musiclm_jax.semantic import tokenizer as tokenizer_lib

FRAME_RATE = 25.0
LABELS = ('pitch_class_set', 'melody_pitch_class', 'instrument')
REST = 12  # melody_pitch_class of a rest


# -- labels -----------------------------------------------------------------------------------


def pitch_class_set_ids(pitch_classes: np.ndarray) -> np.ndarray:
  """[F, 12] 0/1 -> int64 [F]: sum_k pitch_classes[:, k] << k (0 = no pitch sounds)."""
  pc = np.asarray(pitch_classes)
  if pc.ndim != 2 or pc.shape[1] != 12:
    raise ValueError(f'pitch_classes must be [frames, 12], got {pc.shape}')
  return ((pc != 0).astype(np.int64) << np.arange(12)).sum(axis=1)


def melody_pitch_classes(melody_pitch: np.ndarray) -> np.ndarray:
  """MIDI pitch [F] (0 = rest) -> int64 [F]: pitch % 12, or `REST` (12) for a rest."""
  melody = np.asarray(melody_pitch).astype(np.int64)
  return np.where(melody > 0, melody % 12, REST)


def instrument_key(programs: Sequence[int]) -> str:
  """The clip's instrument set as a string: sorted distinct GM programs, e.g. '0+40+128'."""
  return '+'.join(str(p) for p in sorted({int(p) for p in programs})) or 'none'


def clip_labels(clip: Mapping[str, Any], instrument_ids: dict[str, int]) -> dict[str, np.ndarray]:
  """Per-frame int64 labels of one clip; `instrument_ids` maps instrument sets to ids (grows)."""
  pcs = pitch_class_set_ids(clip['pitch_classes'])
  melody = melody_pitch_classes(clip['melody_pitch'])
  if len(melody) != len(pcs):
    raise ValueError(f'{clip.get("render_id", "clip")}: pitch_classes has {len(pcs)} frames, '
                     f'melody_pitch {len(melody)}')
  inst = instrument_ids.setdefault(instrument_key(clip['programs']), len(instrument_ids))
  return {'pitch_class_set': pcs, 'melody_pitch_class': melody,
          'instrument': np.full(len(pcs), inst, np.int64)}


# -- information measures ---------------------------------------------------------------------


def _codes(x: np.ndarray) -> tuple[np.ndarray, int]:
  values, inverse = np.unique(np.asarray(x).reshape(-1), return_inverse=True)
  return inverse.reshape(-1), len(values)


def entropy(x: np.ndarray) -> float:
  """Shannon entropy (nats) of the empirical distribution of x."""
  codes, _ = _codes(x)
  if codes.size == 0:
    return 0.0
  p = np.bincount(codes) / codes.size
  p = p[p > 0]
  return float(-np.sum(p * np.log(p)))


def mutual_information(a: np.ndarray, b: np.ndarray) -> float:
  """Empirical mutual information (nats) of two labelings of the same items."""
  a_codes, _ = _codes(a)
  b_codes, nb = _codes(b)
  if a_codes.shape != b_codes.shape:
    raise ValueError(f'labelings differ in length: {a_codes.size} vs {b_codes.size}')
  n = a_codes.size
  if n == 0:
    return 0.0
  pairs, joint = np.unique(a_codes * nb + b_codes, return_counts=True)
  pair_a, pair_b = np.divmod(pairs, nb)
  pa = np.bincount(a_codes) / n
  pb = np.bincount(b_codes) / n
  pab = joint / n
  mi = np.sum(pab * (np.log(pab) - np.log(pa[pair_a]) - np.log(pb[pair_b])))
  return float(max(mi, 0.0))


def nmi(a: np.ndarray, b: np.ndarray) -> float:
  """Normalised mutual information MI / mean(H(a), H(b)) in [0, 1] (sklearn's default).

  Two constant labelings give 1.0, one constant labeling 0.0 (as sklearn).
  """
  ha, hb = entropy(a), entropy(b)
  if ha == 0.0 and hb == 0.0:
    return 1.0
  mi = mutual_information(a, b)
  if mi <= 0.0:
    return 0.0
  return float(min(mi / (0.5 * (ha + hb)), 1.0))


def conditional_nmi(t: np.ndarray, y: np.ndarray, g: np.ndarray) -> float:
  """I(t; y | g) / H(y | g): the share of y's uncertainty left within each g that t explains.

  Both terms are averages over the values of g weighted by their frequency; NaN when y is
  determined by g (nothing left to explain).
  """
  t, y, g = (np.asarray(v).reshape(-1) for v in (t, y, g))
  cmi, ch = 0.0, 0.0
  for value in np.unique(g):
    sel = g == value
    w = sel.mean()
    cmi += w * mutual_information(t[sel], y[sel])
    ch += w * entropy(y[sel])
  return float(cmi / ch) if ch > 0 else float('nan')


def conditional_nmi_chance(t: np.ndarray, y: np.ndarray, g: np.ndarray, *, seed: int = 0,
                           permutations: int = 5) -> float:
  """Mean `conditional_nmi` after permuting t within each value of g (seeded).

  The plug-in estimate is biased upwards when a group holds few frames for many token/label
  pairs; this keeps every group's token counts and destroys only the alignment with y.
  """
  t, y, g = (np.asarray(v).reshape(-1) for v in (t, y, g))
  rng = np.random.default_rng(seed)
  members = [np.flatnonzero(g == value) for value in np.unique(g)]
  values = []
  for _ in range(permutations):
    shuffled = t.copy()
    for idx in members:
      shuffled[idx] = t[rng.permutation(idx)]
    values.append(conditional_nmi(shuffled, y, g))
  return float(np.mean(values))


def agreement(tokens: Sequence[np.ndarray], groups: Sequence[str]) -> tuple[float, int]:
  """Share of aligned frames where two clips of the same group have the same token.

  Args:
    tokens: per clip int [T_i] (a pair is compared over its common length).
    groups: per clip group name (the melody group).

  Returns:
    (agreement over all same-group pairs' frames, number of pairs); NaN if no pair.
  """
  by_group: dict[str, list[int]] = {}
  for i, g in enumerate(groups):
    by_group.setdefault(g, []).append(i)
  same, total, pairs = 0, 0, 0
  for members in by_group.values():
    for i, j in itertools.combinations(members, 2):
      n = min(len(tokens[i]), len(tokens[j]))
      same += int(np.sum(tokens[i][:n] == tokens[j][:n]))
      total += n
      pairs += 1
  return (same / total if total else float('nan')), pairs


def chance_agreement(tokens: np.ndarray) -> float:
  """sum_k p_k^2: agreement of two independent draws from the tokens' marginal."""
  codes, _ = _codes(tokens)
  p = np.bincount(codes) / max(codes.size, 1)
  return float(np.sum(p * p))


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


def logmel_frames(wav: jax.Array, mel_config: audio_lib.MelConfig, pool: int) -> jax.Array:
  """[B, N] -> [B, N // (hop * pool), n_mels]: log-mel averaged over `pool` frames."""
  frames = wav.shape[-1] // (mel_config.hop_length * pool)
  mel = audio_lib.log_mel(wav, mel_config)[:, :frames * pool]  # [B, pool * T, n_mels]
  return mel.reshape(mel.shape[0], frames, pool, mel.shape[-1]).mean(axis=2)


@dataclasses.dataclass
class LogMelKMeans:
  """k-means on standardised, pooled log-mel frames (the raw-feature baseline), 25 Hz."""
  mel_config: audio_lib.MelConfig
  pool: int
  mean: np.ndarray       # [n_mels]
  std: np.ndarray        # [n_mels]
  centroids: np.ndarray  # [K, n_mels]

  @property
  def cardinality(self) -> int:
    return int(self.centroids.shape[0])

  @property
  def description(self) -> str:
    return (f'k-means on log-mel ({self.mel_config.n_mels} mels, hop '
            f'{self.mel_config.hop_length}, mean of {self.pool} frames), K={self.cardinality}')

  def features(self, wav: np.ndarray) -> np.ndarray:
    return np.asarray(_jit_logmel(jnp.asarray(wav, jnp.float32), self.mel_config, self.pool))

  def tokenize(self, wav: np.ndarray) -> np.ndarray:
    x = self.features(wav)  # [B, T, n_mels]
    b, t, d = x.shape
    ids, _ = kmeans_lib.assign(((x - self.mean) / self.std).reshape(b * t, d), self.centroids)
    return np.asarray(ids).reshape(b, t)


_jit_logmel = jax.jit(logmel_frames, static_argnames=('mel_config', 'pool'))


def fit_logmel_kmeans(audio_batches: Iterable[np.ndarray], *, num_clusters: int,
                      mel_config: audio_lib.MelConfig | None = None, pool: int = 4,
                      seed: int = 0, num_iters: int = 20, batch_size: int | None = 10_000,
                      max_frames: int = 20_000, log: Callable[[str], None] = print
                      ) -> tuple[LogMelKMeans, kmeans_lib.KMeansResult]:
  """Fits the log-mel baseline as `fit_kmeans` fits the semantic one (per-dim standardised)."""
  mel_config = mel_config or audio_lib.MelConfig()
  probe = LogMelKMeans(mel_config, pool, np.zeros(1), np.ones(1), np.zeros((1, 1)))
  chunks, total = [], 0
  for wav in audio_batches:
    x = probe.features(wav)
    x = x.reshape(-1, x.shape[-1])[:max_frames - total]
    chunks.append(x)
    total += len(x)
    if total >= max_frames:
      break
  if not chunks or total < num_clusters:
    raise ValueError(f'log-mel k-means: {total} frames, fewer than {num_clusters} clusters')
  x = np.concatenate(chunks)
  mean = x.mean(axis=0, dtype=np.float64)
  std = np.maximum(x.std(axis=0, dtype=np.float64), 1e-5)
  normed = ((x - mean) / std).astype(np.float32)
  log(f'log-mel k-means: {len(normed)} frames x {normed.shape[1]} dims, K={num_clusters}')
  result = kmeans_lib.minibatch_kmeans(normed, num_clusters, seed=seed, num_iters=num_iters,
                                       batch_size=batch_size)
  log(f'log-mel k-means: inertia {result.inertia[0]:.4f} -> {result.inertia[-1]:.4f}')
  return LogMelKMeans(mel_config, pool, mean.astype(np.float32), std.astype(np.float32),
                      result.centroids), result


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


def adjusted_mutual_information(a: np.ndarray, b: np.ndarray) -> float | None:
  """sklearn's AMI (0 = chance for these marginals), or None without scikit-learn."""
  try:
    from sklearn import metrics  # pylint: disable=g-import-not-at-top
  except ImportError:
    return None
  return float(metrics.adjusted_mutual_info_score(a, b))


CONDITIONAL = ('pitch_class_set|clip', 'melody_pitch_class|clip', 'clip|melody_group')


def _scores(per_clip: Sequence[np.ndarray], labels: Mapping[str, np.ndarray],
            groups: Sequence[str], seed: int) -> dict[str, Any]:
  flat = np.concatenate(per_clip)
  agree, pairs = agreement(per_clip, groups)
  chance = chance_agreement(flat)
  group_ids = {g: i for i, g in enumerate(dict.fromkeys(groups))}
  ids = {'clip': np.concatenate([np.full(len(t), i) for i, t in enumerate(per_clip)]),
         'melody_group': np.concatenate([np.full(len(t), group_ids[g]) for t, g in
                                         zip(per_clip, groups)]), **labels}
  return {'nmi': {name: nmi(flat, lab) for name, lab in labels.items()},
          'ami': {name: adjusted_mutual_information(flat, lab) for name, lab in labels.items()},
          'conditional_nmi': {key: conditional_nmi(flat, ids[key.split('|')[0]],
                                                   ids[key.split('|')[1]])
                              for key in CONDITIONAL},
          'conditional_nmi_chance': {key: conditional_nmi_chance(
              flat, ids[key.split('|')[0]], ids[key.split('|')[1]], seed=seed)
                                     for key in CONDITIONAL},
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
  labels = [clip_labels(c, instrument_ids) for c in clips]
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
                 for k in LABELS}
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
  label_nmi = {f'{a}~{b}': nmi(named[a], named[b])
               for a, b in itertools.combinations(list(named), 2)}
  return {'clips': len(clips), 'frames': int(sum(lengths)), 'label_nmi': label_nmi,
          'labels': {k: {'distinct': int(len(np.unique(v))),
                         'entropy_bits': entropy(v) / np.log(2)} for k, v in flat_labels.items()},
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
    logmel, fit = fit_logmel_kmeans(
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
