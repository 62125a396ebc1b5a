"""Token layouts of the three stages: how codes become one LM sequence and back.

Each stage models one flat sequence over a unified vocabulary:

  [BOS] [conditioning fields, in order] [SEP] [target field]

  vocabulary:  0 PAD | 1 BOS | 2 SEP | field 0, level 0 | field 0, level 1 | ... | target levels

A `TokenField` is a stream of RVQ codes [frames, levels] (MuLan: 1 frame x 12 levels; semantic:
T frames x 1 level; coarse: T x 4; fine: T x 8). It is flattened frame-major
(t0l0, t0l1, ..., t1l0, ...) and code c of level l becomes id `offset(field) + l *
codebook_size + c`, so every level owns its own slice of the vocabulary. A negative code means
"missing" (a short clip) and becomes PAD, which the loss mask excludes.

The LM sees `inputs = sequence[:-1]`, `targets = sequence[1:]` and `loss_mask` = 1 exactly on
target-field tokens (never BOS, SEP, conditioning or PAD). Stage layouts (paper windows):

  semantic: [BOS, MuLan 12 (+ melody), SEP, semantic 750]       (30 s at 25 Hz)
  coarse:   [BOS, MuLan 12, semantic 250, SEP, SoundStream levels 1-4 x 500]  (10 s)
  fine:     [BOS, levels 1-4 x 150, SEP, levels 5-12 x 150]      (3 s at 50 Hz)

Functions take numpy arrays (data pipelines) or jax arrays (inside jit) and return the same kind.
"""

import dataclasses
from typing import Mapping

import jax
import jax.numpy as jnp
import numpy as np

PAD_ID, BOS_ID, SEP_ID = 0, 1, 2
NUM_SPECIAL_TOKENS = 3


def _xp(*arrays):
  return jnp if any(isinstance(a, jax.Array) for a in arrays) else np


@dataclasses.dataclass(frozen=True)
class TokenField:
  """A stream of codes laid out frame-major.

  Attributes:
    name: key of the field in a batch ('mulan', 'melody', 'semantic', 'coarse', 'fine').
    codebook_size: codes per level.
    num_levels: RVQ levels per frame (1 for semantic tokens).
    num_frames: frames in one window.
    first_level: global RVQ level of this field's level 0 (fine: 4), used in metric names.
  """
  name: str
  codebook_size: int
  num_levels: int = 1
  num_frames: int = 1
  first_level: int = 0

  @property
  def length(self) -> int:
    return self.num_frames * self.num_levels

  @property
  def vocab_size(self) -> int:
    return self.num_levels * self.codebook_size


@dataclasses.dataclass(frozen=True)
class StageLayout:
  """[BOS, conditioning..., SEP, target] over a unified vocabulary.

  Attributes:
    conditioning: fields of the prefix, in order.
    target: the predicted field.
    name: stage name, for messages.
  """
  conditioning: tuple[TokenField, ...]
  target: TokenField
  name: str = 'stage'

  def __post_init__(self):
    names = [f.name for f in self.fields]
    if len(set(names)) != len(names):
      raise ValueError(f'{self.name} layout: field names repeat: {names}')
    for f in self.fields:
      if min(f.codebook_size, f.num_levels, f.num_frames) < 1:
        raise ValueError(f'{self.name} layout: field {f.name!r} has a non-positive size')

  @property
  def fields(self) -> tuple[TokenField, ...]:
    return tuple(self.conditioning) + (self.target,)

  def field(self, name: str) -> TokenField:
    for f in self.fields:
      if f.name == name:
        return f
    raise KeyError(f'{self.name} layout: no field {name!r} (has {[f.name for f in self.fields]})')

  def offset(self, name: str) -> int:
    """First vocabulary id of a field (its level 0, code 0)."""
    base = NUM_SPECIAL_TOKENS
    for f in self.fields:
      if f.name == name:
        return base
      base += f.vocab_size
    raise KeyError(f'{self.name} layout: no field {name!r}')

  @property
  def vocab_size(self) -> int:
    return NUM_SPECIAL_TOKENS + sum(f.vocab_size for f in self.fields)

  @property
  def prefix_length(self) -> int:
    """Length of [BOS, conditioning..., SEP], the prompt that sampling prefills."""
    return 2 + sum(f.length for f in self.conditioning)

  @property
  def sequence_length(self) -> int:
    return self.prefix_length + self.target.length

  @property
  def model_length(self) -> int:
    """Length of `inputs`/`targets` (one shorter than the sequence)."""
    return self.sequence_length - 1

  def level_range(self, name: str, level: int) -> tuple[int, int]:
    """[lo, hi) vocabulary ids of one level of a field."""
    f = self.field(name)
    lo = self.offset(name) + level * f.codebook_size
    return lo, lo + f.codebook_size

  def target_range(self, index):
    """[lo, hi) ids allowed for the index-th target token (level = index % num_levels)."""
    level = index % self.target.num_levels
    lo = self.offset(self.target.name) + level * self.target.codebook_size
    return lo, lo + self.target.codebook_size

  def flatten(self, name: str, codes):
    """Codes [batch, frames, levels] -> ids [batch, num_frames * levels], frame-major.

    Args:
      name: the field.
      codes: int [batch, frames, levels] (or [batch, frames] / [batch, levels] when that
        is unambiguous: one level, or one frame), with frames <= num_frames; negative codes
        are missing and become PAD, as do frames beyond the given ones.

    Returns:
      int32 [batch, num_frames * num_levels].
    """
    f = self.field(name)
    xp = _xp(codes)
    codes = xp.asarray(codes)
    batch = codes.shape[0]
    if codes.ndim == 2:
      if f.num_levels == 1:
        codes = codes[:, :, None]
      elif f.num_frames == 1:
        codes = codes[:, None, :]
    if codes.ndim != 3 or codes.shape[2] != f.num_levels or codes.shape[1] > f.num_frames:
      raise ValueError(f'{self.name} layout, field {name!r}: expected codes [batch, <= '
                       f'{f.num_frames} frames, {f.num_levels} levels], got {codes.shape}')
    if xp is np and codes.size and codes.max() >= f.codebook_size:
      raise ValueError(f'{self.name} layout, field {name!r}: code {codes.max()} >= codebook '
                       f'size {f.codebook_size}')
    codes = codes.astype(xp.int32)
    missing = f.num_frames - codes.shape[1]
    if missing:
      codes = xp.concatenate([codes, xp.full((batch, missing, f.num_levels), -1, xp.int32)], 1)
    level_base = self.offset(name) + f.codebook_size * xp.arange(f.num_levels, dtype=xp.int32)
    ids = xp.where(codes < 0, PAD_ID, codes + level_base)  # [batch, frames, levels]
    return ids.reshape(batch, f.length).astype(xp.int32)

  def unflatten(self, name: str, ids):
    """Ids [batch, frames * levels] (frame-major) -> codes [batch, frames, levels].

    Ids outside the level's own vocabulary slice (PAD, another level) give code -1. A length
    that is not a whole number of frames is an error.
    """
    f = self.field(name)
    xp = _xp(ids)
    ids = xp.asarray(ids)
    if ids.ndim != 2 or ids.shape[1] % f.num_levels:
      raise ValueError(f'{self.name} layout, field {name!r}: expected ids [batch, frames * '
                       f'{f.num_levels}], got {ids.shape}')
    ids = ids.reshape(ids.shape[0], -1, f.num_levels)
    level_base = self.offset(name) + f.codebook_size * xp.arange(f.num_levels, dtype=xp.int32)
    codes = ids - level_base
    return xp.where((codes >= 0) & (codes < f.codebook_size), codes, -1).astype(xp.int32)

  def prefix(self, fields: Mapping[str, object]):
    """[batch, prefix_length] ids: BOS, the flattened conditioning fields, SEP."""
    parts = [self.flatten(f.name, self._get(fields, f.name)) for f in self.conditioning]
    xp = _xp(*parts)
    batch = parts[0].shape[0] if parts else np.shape(self._get(fields, self.target.name))[0]
    bos = xp.full((batch, 1), BOS_ID, xp.int32)
    sep = xp.full((batch, 1), SEP_ID, xp.int32)
    return xp.concatenate([bos, *parts, sep], axis=1)

  def sequence(self, fields: Mapping[str, object]):
    """[batch, sequence_length] ids: the prefix then the flattened target."""
    target = self.flatten(self.target.name, self._get(fields, self.target.name))
    prefix = self.prefix(fields)
    return _xp(prefix, target).concatenate([prefix, target], axis=1)

  def split(self, sequence) -> dict[str, object]:
    """Inverse of `sequence`: {field name: codes [batch, frames, levels]} (-1 where missing)."""
    out, pos = {}, 1
    for f in self.conditioning:
      out[f.name] = self.unflatten(f.name, sequence[:, pos:pos + f.length])
      pos += f.length
    out[self.target.name] = self.unflatten(self.target.name, sequence[:, pos + 1:])
    return out

  def loss_mask(self, targets):
    """float32 mask of `targets` [batch, length]: 1 on target-field tokens, 0 elsewhere."""
    xp = _xp(targets)
    pos = xp.arange(targets.shape[1]) + 1  # position of each target in the sequence
    mask = (pos >= self.prefix_length)[None, :] & (targets != PAD_ID)
    return mask.astype(xp.float32)

  def build(self, fields: Mapping[str, object]) -> dict[str, object]:
    """{'inputs', 'targets': int32 [batch, model_length], 'loss_mask': float32} from codes."""
    seq = self.sequence(fields)
    targets = seq[:, 1:]
    return {'inputs': seq[:, :-1], 'targets': targets, 'loss_mask': self.loss_mask(targets)}

  def target_levels(self, ids):
    """Level (0-based, within the target field) of each id; -1 for non-target ids."""
    xp = _xp(ids)
    rel = ids - self.offset(self.target.name)
    inside = (rel >= 0) & (rel < self.target.vocab_size)
    return xp.where(inside, rel // self.target.codebook_size, -1)

  def _get(self, fields, name):
    if name not in fields:
      raise KeyError(f'{self.name} layout: batch lacks field {name!r} '
                     f'(needs {[f.name for f in self.fields]})')
    return fields[name]


def _mulan(codebook_size: int, levels: int) -> TokenField:
  return TokenField('mulan', codebook_size, num_levels=levels, num_frames=1)


def _melody(codebook_size: int, levels: int, frames: int) -> tuple[TokenField, ...]:
  if not frames:
    return ()
  return (TokenField('melody', codebook_size, num_levels=levels, num_frames=frames),)


def semantic_layout(*, mulan_codebook_size: int = 1024, mulan_levels: int = 12,
                    semantic_codebook_size: int = 1024, semantic_frames: int = 750,
                    melody_codebook_size: int = 1024, melody_levels: int = 12,
                    melody_frames: int = 0) -> StageLayout:
  """Stage 1: [BOS, MuLan (+ melody), SEP] -> semantic tokens (30 s at 25 Hz by default)."""
  cond = (_mulan(mulan_codebook_size, mulan_levels),
          *_melody(melody_codebook_size, melody_levels, melody_frames))
  return StageLayout(cond, TokenField('semantic', semantic_codebook_size,
                                      num_frames=semantic_frames), name='semantic')


def coarse_layout(*, mulan_codebook_size: int = 1024, mulan_levels: int = 12,
                  semantic_codebook_size: int = 1024, semantic_frames: int = 250,
                  codec_codebook_size: int = 1024, coarse_levels: int = 4,
                  acoustic_frames: int = 500, melody_codebook_size: int = 1024,
                  melody_levels: int = 12, melody_frames: int = 0) -> StageLayout:
  """Stage 2: [BOS, MuLan (+ melody), semantic, SEP] -> SoundStream levels 1-4 (10 s)."""
  cond = (_mulan(mulan_codebook_size, mulan_levels),
          *_melody(melody_codebook_size, melody_levels, melody_frames),
          TokenField('semantic', semantic_codebook_size, num_frames=semantic_frames))
  target = TokenField('coarse', codec_codebook_size, num_levels=coarse_levels,
                      num_frames=acoustic_frames)
  return StageLayout(cond, target, name='coarse')


def fine_layout(*, codec_codebook_size: int = 1024, coarse_levels: int = 4,
                fine_levels: int = 8, acoustic_frames: int = 150) -> StageLayout:
  """Stage 3: [BOS, SoundStream levels 1-4, SEP] -> levels 5-12 (3 s at 50 Hz)."""
  cond = (TokenField('coarse', codec_codebook_size, num_levels=coarse_levels,
                     num_frames=acoustic_frames),)
  target = TokenField('fine', codec_codebook_size, num_levels=fine_levels,
                      num_frames=acoustic_frames, first_level=coarse_levels)
  return StageLayout(cond, target, name='fine')
