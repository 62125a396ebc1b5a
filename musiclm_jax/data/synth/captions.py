"""Captions and aspect tags of synth clips, written from what was actually rendered.

Every caption names each rendered instrument (its `instruments` caption name), the tempo (a word
and/or the beat BPM), the key and mode (after transposition), the dynamics, and, where known,
the composer or collection, the style period and the texture. One of `TEMPLATES` is drawn per
rendering with the rendering's seed.
"""

import numpy as np

# collection folder -> (composer display name or None, style or None, source phrase or None)
COLLECTIONS: dict[str, tuple[str | None, str | None, str | None]] = {
    'bach': ('J. S. Bach', 'baroque', None),
    'cpebach': ('C. P. E. Bach', 'classical', None),
    'handel': ('Handel', 'baroque', None),
    'corelli': ('Corelli', 'baroque', None),
    'monteverdi': ('Monteverdi', 'renaissance', None),
    'palestrina': ('Palestrina', 'renaissance', None),
    'josquin': ('Josquin des Prez', 'renaissance', None),
    'lusitano': ('Vicente Lusitano', 'renaissance', None),
    'trecento': (None, 'medieval', 'from the Italian trecento'),
    'ciconia': ('Johannes Ciconia', 'medieval', None),
    'luca': (None, 'medieval', 'from a medieval manuscript'),
    'haydn': ('Haydn', 'classical', None),
    'mozart': ('Mozart', 'classical', None),
    'beethoven': ('Beethoven', 'classical', None),
    'schubert': ('Schubert', 'romantic', None),
    'schumann_robert': ('Robert Schumann', 'romantic', None),
    'schumann_clara': ('Clara Schumann', 'romantic', None),
    'chopin': ('Chopin', 'romantic', None),
    'verdi': ('Verdi', 'romantic', None),
    'weber': ('Weber', 'romantic', None),
    'beach': ('Amy Beach', 'romantic', None),
    'joplin': ('Scott Joplin', 'ragtime', None),
    'johnson_j_r': ('J. Rosamond Johnson', None, None),
    'liliuokalani': ('Liliuokalani', None, 'from Hawaii'),
    'schoenberg': ('Schoenberg', 'modern', None),
    'webern': ('Webern', 'modern', None),
    'ryansMammoth': (None, 'folk', "from Ryan's Mammoth Collection of fiddle tunes"),
    'oneills1850': (None, 'folk', "from O'Neill's collection of Irish music"),
    'essenFolksong': (None, 'folk', 'from the Essen folk song collection'),
    'airdsAirs': (None, 'folk', "from Aird's collection of Scottish airs"),
    'miscFolk': (None, 'folk', None),
    'nottingham-dataset': (None, 'folk', 'from the Nottingham folk tune collection'),
}
_CLASSICAL_STYLES = ('medieval', 'renaissance', 'baroque', 'classical', 'romantic', 'modern')
_ELECTRIC = ('electric piano', 'electric organ', 'electric guitar', 'electric bass',
             'synth bass', 'synth lead', 'synth pad')

# Dynamics level -> caption adjective.
DYNAMICS_WORDS = {'pp': 'very soft', 'p': 'soft', 'mp': 'moderately soft',
                  'mf': 'moderately loud', 'f': 'loud', 'ff': 'very loud'}
DYNAMICS_TAGS = {'pp': 'soft', 'p': 'soft', 'mp': 'medium volume', 'mf': 'medium volume',
                 'f': 'loud', 'ff': 'loud'}
SHAPE_PHRASES = {'steady': '', 'crescendo': ', growing louder (crescendo)',
                 'diminuendo': ', fading away (diminuendo)'}
TEXTURE_PHRASES = {'chorale': 'four-part chorale', 'solo melody': 'solo melody',
                   'solo': 'solo piece', 'choral piece': 'choral piece',
                   'duet': 'duet', 'trio': 'trio', 'quartet': 'quartet', 'quintet': 'quintet',
                   'ensemble': 'ensemble piece'}
_TEMPO_TAGS = {'slow': 'slow tempo', 'moderate': 'medium tempo', 'fast': 'fast tempo'}
_ENSEMBLES = ('choir', 'string ensemble', 'brass section', 'pizzicato strings')
# Instruments that play several parts at once: never counted ('three church organs').
_POLYPHONIC = _ENSEMBLES + (
    'piano', 'electric piano', 'harpsichord', 'celesta', 'glockenspiel', 'music box',
    'vibraphone', 'marimba', 'xylophone', 'electric organ', 'church organ', 'accordion',
    'acoustic guitar', 'steel-string guitar', 'jazz guitar', 'electric guitar', 'harp',
    'synth pad', 'kalimba', 'steel drums')
_NUMBERS = {2: 'two', 3: 'three', 4: 'four', 5: 'five', 6: 'six', 7: 'seven', 8: 'eight'}

TEMPLATES = (
    'A {tempo_word} {style_adj}{texture} in {key} played by {instruments}{drums}. '
    'It sounds {dynamics}{shape}.',
    '{Instruments}{drums} {perform} a {dynamics} {texture}{source} at {bpm} BPM{shape}. '
    'The piece is in {key} and has a {tempo_word} tempo.',
    'This {style_adj}{texture}{source} is played on {instruments}{drums}; it is {dynamics}{shape}, '
    'in {key}, at a {tempo_word} {italian} tempo of about {bpm} BPM.',
    '{texture}, {instruments}{drums}, {tempo_word} tempo ({bpm} BPM), {key}, {dynamics}{shape}'
    '{style_tag}',
    'A recording of a {style_adj}{texture}{source}. You can hear {instruments}{drums}. '
    'The music is {dynamics} and {tempo_word}{shape}, in the key of {key}.',
)


def tempo_word(bpm: float) -> str:
  return 'slow' if bpm < 76 else ('moderate' if bpm <= 110 else 'fast')


def italian_tempo(bpm: float) -> str:
  for limit, word in ((60, 'largo'), (76, 'adagio'), (96, 'andante'), (110, 'moderato'),
                      (150, 'allegro')):
    if bpm < limit:
      return word
  return 'presto'


def instrument_phrase(part_names: list[str]) -> str:
  """'two violins, viola and cello' from per-part names (top to bottom), first-seen order."""
  counts: dict[str, int] = {}
  for name in part_names:
    counts[name] = counts.get(name, 0) + 1
  items = []
  for name, n in counts.items():
    if name in _ENSEMBLES:
      items.append(f'a {name}' if len(counts) == 1 else name)
    elif len(counts) == 1:
      items.append(f'a single {name}' if n > 1 else name)
    elif n == 1 or name in _POLYPHONIC:
      items.append(name)
    else:
      items.append(f'{_NUMBERS.get(n, str(n))} {name}s')
  return items[0] if len(items) == 1 else ', '.join(items[:-1]) + ' and ' + items[-1]


def texture_of(score_texture: str, part_names: list[str]) -> str:
  """The texture heard: one instrument on every part of a multi-part score is a solo (or a
  choral piece for a choir); otherwise the score's texture."""
  if score_texture in ('chorale', 'solo', 'solo melody') or len(set(part_names)) > 1:
    return score_texture
  return 'choral piece' if part_names[0] == 'choir' else 'solo'


def source_info(collection: str, composer: str) -> tuple[str | None, str | None]:
  """(source phrase like 'by J. S. Bach', style) of a corpus collection."""
  name, style, phrase = COLLECTIONS.get(collection, (None, None, None))
  if name:
    return f'by {name}', style
  if phrase:
    return phrase, style
  name = composer.split(',')[0].strip() if composer else ''
  if name.lower() == 'music21':  # the package's own demo files
    name = ''
  return (f'by {name}' if name else None), style


def aspects(*, names, drums, bpm, key, style, texture, dynamics, shape) -> list[str]:
  """MusicCaps-like tags: instruments, tempo, mode, style, texture, dynamics, timbre."""
  tags = list(dict.fromkeys(names))
  if drums:
    tags += ['drums', 'simple beat']
  tags.append(_TEMPO_TAGS[tempo_word(bpm)])
  tags.append(f'{key.split()[-1]} key')
  if style:
    tags.append(style)
    if style in _CLASSICAL_STYLES:
      tags.append('classical music')
  tags.append(texture)
  tags.append(DYNAMICS_TAGS[dynamics])
  if shape != 'steady':
    tags.append(shape)
  tags.append('choir' if 'choir' in names else 'instrumental')
  tags.append('electronic' if any(n in _ELECTRIC for n in names) else 'acoustic')
  return list(dict.fromkeys(tags))


def caption(rng: np.random.Generator, *, part_names, drums, bpm, key, collection, composer,
            texture, dynamics, shape) -> str:
  """One caption drawn from `TEMPLATES`, naming every rendered instrument."""
  source, style = source_info(collection, composer)
  instruments = instrument_phrase(list(part_names))
  fields = dict(
      tempo_word=tempo_word(bpm), italian=italian_tempo(bpm), bpm=int(round(bpm)), key=key,
      style_adj=f'{style} ' if style else '', style_tag=f', {style}' if style else '',
      texture=TEXTURE_PHRASES[texture], source=f' {source}' if source else '',
      instruments=instruments, Instruments=instruments[0].upper() + instruments[1:],
      perform='performs' if len(set(part_names)) == 1 else 'perform',
      drums=' with drums' if drums else '', dynamics=DYNAMICS_WORDS[dynamics],
      shape=SHAPE_PHRASES[shape])
  text = TEMPLATES[int(rng.integers(len(TEMPLATES)))].format(**fields)
  return text[0].upper() + text[1:]
