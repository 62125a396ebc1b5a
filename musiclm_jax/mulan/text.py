"""MuLan text handling: prompt normalisation + sentencepiece ids, and per-example text sampling.

`TextTokenizer` wraps the project's sentencepiece model (`python -m musiclm_jax.data.train_spm`;
ids: pad 0, eos 1, unk 2) and gives the ids the seqio tasks give for training captions
(`text_tokens`: the pieces, then EOS, 0-padded), after cleaning untrusted prompts:

  html entities unescaped ("&amp;" -> "&"), markup tags removed ("<b>x</b>" -> " x "),
  unicode NFKC, lower case, control characters dropped, whitespace collapsed.

An empty prompt (after cleaning) raises ValueError; a prompt longer than `max_length` ids is
truncated (EOS kept) with a warning naming its original length.

`sample_text` draws the text a training example is paired with: the caption, a random subset
of its aspect tags, or a short template from its instruments ("a piece played by a violin and
a cello"), from a seeded numpy Generator.
"""

from collections.abc import Mapping, Sequence
import html
import os
import re
import unicodedata
import warnings

import numpy as np

PAD_ID = 0
EOS_ID = 1
_TAG = re.compile(r'<[^<>]{0,200}>')
_CONTROL = re.compile(r'[\u0000-\u0008\u000b\u000c\u000e-\u001f\u007f-\u009f\u200b-\u200f]')


def normalize_text(text: str) -> str:
  """Unescape entities, strip tags, NFKC, lower-case, drop control chars, collapse whitespace."""
  if not isinstance(text, str):
    raise TypeError(f'prompt must be a str, got {type(text).__name__}')
  text = html.unescape(html.unescape(text))  # also "&amp;lt;b&amp;gt;" style double escapes
  text = _TAG.sub(' ', text)
  text = unicodedata.normalize('NFKC', text).lower()
  text = _CONTROL.sub(' ', text)
  return ' '.join(text.split())


class TextTokenizer:
  """Prompt strings -> int32 sentencepiece ids [B, L] (EOS-terminated, 0-padded).

  Args:
    spm_path: the sentencepiece model file.
    max_length: ids per prompt including EOS; longer prompts are truncated with a warning.
  """

  def __init__(self, spm_path: str | os.PathLike, *, max_length: int = 64):
    import sentencepiece as spm  # pylint: disable=g-import-not-at-top
    path = os.fspath(spm_path)
    if not os.path.isfile(path):
      raise FileNotFoundError(f'{path}: sentencepiece model not found')
    if max_length < 2:
      raise ValueError(f'TextTokenizer: max_length must be >= 2, got {max_length}')
    self.spm_path = path
    self.max_length = int(max_length)
    self._sp = spm.SentencePieceProcessor(model_file=path)
    if self._sp.pad_id() != PAD_ID or self._sp.eos_id() != EOS_ID:
      raise ValueError(f'{path}: expected pad id {PAD_ID} and eos id {EOS_ID}, got '
                       f'{self._sp.pad_id()} and {self._sp.eos_id()} (train it with '
                       'musiclm_jax.data.train_spm)')

  @property
  def vocab_size(self) -> int:
    return int(self._sp.get_piece_size())

  def encode_one(self, text: str) -> list[int]:
    """Ids of one prompt (cleaned, EOS-terminated, truncated to max_length)."""
    clean = normalize_text(text)
    if not clean:
      raise ValueError(f'empty prompt after cleaning (got {text[:80]!r})')
    ids = list(self._sp.encode(clean)) + [EOS_ID]
    if len(ids) > self.max_length:
      message = (f'prompt of {len(ids)} tokens (incl. EOS) truncated to {self.max_length}: '
                 f'{clean[:60]!r}...')
      warnings.warn(message, stacklevel=3)
      ids = ids[:self.max_length - 1] + [EOS_ID]
    return ids

  def encode(self, texts: Sequence[str], *, length: int | None = None) -> np.ndarray:
    """int32 [B, length] ids; `length` defaults to the longest prompt rounded up to 16."""
    if isinstance(texts, str):
      texts = [texts]
    if not texts:
      raise ValueError('no prompts given')
    rows = [self.encode_one(t) for t in texts]
    if length is None:
      longest = max(len(r) for r in rows)
      length = min(self.max_length, -(-longest // 16) * 16)
    if length < max(len(r) for r in rows):
      raise ValueError(f'length {length} is shorter than a prompt ({max(len(r) for r in rows)})')
    out = np.zeros((len(rows), length), np.int32)
    for i, row in enumerate(rows):
      out[i, :len(row)] = row
    return out

  __call__ = encode

  def decode(self, ids: Sequence[int]) -> str:
    return self._sp.decode([int(i) for i in ids if int(i) not in (PAD_ID, EOS_ID)])


# -- text sampling for training and evaluation -------------------------------------------------

_VOWEL_SOUND = re.compile(r'^(?:[aeio]|u(?!ni|ku|ke)|hour|honest)', re.IGNORECASE)
_PLURALS = ('drums', 'pizzicato strings', 'steel drums', 'strings', 'bells', 'timpani')


def with_article(name: str) -> str:
  """'a violin', 'an oboe', 'a ukulele'; plural names ('drums') stay bare."""
  if name in _PLURALS:
    return name
  return f'{"an" if _VOWEL_SOUND.match(name) else "a"} {name}'


def join_words(items: Sequence[str]) -> str:
  items = list(items)
  if len(items) <= 1:
    return ''.join(items)
  return ', '.join(items[:-1]) + ' and ' + items[-1]


def instrument_prompt(instruments: Sequence[str]) -> str:
  """'a piece played by a violin and a cello' from instrument names (duplicates dropped)."""
  names = list(dict.fromkeys(n.strip() for n in instruments if n and n.strip()))
  if not names:
    raise ValueError('instrument_prompt: no instrument names')
  return 'a piece played by ' + join_words([with_article(n) for n in names])


def _as_str(value) -> str:
  return value.decode('utf-8', 'replace') if isinstance(value, bytes) else str(value)


def sample_text(example: Mapping[str, object], rng: np.random.Generator, *,
                caption_prob: float = 0.5, aspects_prob: float = 0.3,
                max_aspects: int = 5) -> str:
  """One text for a training example: its caption, an aspect subset or an instrument template.

  Args:
    example: has 'caption' (str/bytes) and optionally 'aspects' and 'instruments' (sequences).
    rng: numpy Generator (seed it per example, e.g. `np.random.default_rng([seed, index])`).
    caption_prob: probability of the caption.
    aspects_prob: probability of a comma-joined random subset (1..max_aspects, in random
      order) of the aspects; the rest goes to the instrument template.
    max_aspects: largest subset.

  Returns:
    The text; falls back to whatever of caption / aspects / instruments is present.
  """
  caption = _as_str(example.get('caption', '') or '').strip()
  aspects = [_as_str(a).strip() for a in example.get('aspects', ()) if _as_str(a).strip()]
  instruments = [_as_str(a).strip() for a in example.get('instruments', ())
                 if _as_str(a).strip()]
  choices = []
  if caption:
    choices.append(('caption', caption_prob))
  if aspects:
    choices.append(('aspects', aspects_prob))
  if instruments:
    choices.append(('instruments', max(0.0, 1.0 - caption_prob - aspects_prob)))
  if not choices:
    raise ValueError('sample_text: example has no caption, aspects or instruments')
  weights = np.array([w for _, w in choices], np.float64)
  weights = weights / weights.sum() if weights.sum() > 0 else np.full(len(choices),
                                                                      1 / len(choices))
  kind = choices[int(rng.choice(len(choices), p=weights))][0]
  if kind == 'caption':
    return caption
  if kind == 'aspects':
    k = int(rng.integers(1, min(max_aspects, len(aspects)) + 1))
    picked = rng.choice(len(aspects), size=k, replace=False)
    return ', '.join(aspects[i] for i in picked)
  return instrument_prompt(instruments)
