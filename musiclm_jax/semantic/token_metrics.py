"""Measures of how much token streams tell about score labels, and a raw-feature baseline.

Used by `musiclm_jax.semantic.evaluate_tokens` (see its docstring for the protocol):
  labels     per-frame int labels of a synth clip: pitch-class set, melody pitch class,
             instrument set (`clip_labels`)
  measures   entropy, mutual information, NMI (sklearn's arithmetic normalisation), AMI
             (sklearn's, optional), conditional NMI and its within-group permutation chance
             level, same-score agreement and its chance level
  baseline   k-means on standardised, pooled log-mel frames (`fit_logmel_kmeans`): what a
             tokenizer without any learned representation scores
All take numpy arrays; only the baseline's feature extraction runs in JAX.
"""

from collections.abc import Callable, Iterable, Mapping, Sequence
import dataclasses
import itertools
from typing import Any

import jax
import jax.numpy as jnp
import numpy as np

from musiclm_jax import audio as audio_lib
from musiclm_jax.semantic import kmeans as kmeans_lib

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


def adjusted_mutual_information(a: np.ndarray, b: np.ndarray) -> float | None:
  """sklearn's AMI (0 = chance for these marginals), or None without scikit-learn."""
  try:
    from sklearn import metrics  # pylint: disable=g-import-not-at-top
  except ImportError:
    return None
  return float(metrics.adjusted_mutual_info_score(a, b))


# -- log-mel k-means baseline -----------------------------------------------------------------


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
