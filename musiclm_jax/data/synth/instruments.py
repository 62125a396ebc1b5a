"""General MIDI instruments of the synth corpus: names, ranges, pools and held-out combinations.

Programs are 0-based GM program numbers; `DRUMS` (128) stands for the GM percussion kit on
MIDI channel 10. Every program has exactly one caption name, so the `instruments` feature, the
caption and the MIDI programs can be checked against each other.

Instrumentation is drawn per rendering (`draw_instrumentation`) in one of five modes:
`original` (programs mapped from the score's part names, never from the score's own MIDI program,
which is wrong in some corpus files), `family` (a homogeneous ensemble: strings, woodwinds,
brass, saxophones, choir), `single` (one instrument plays all parts), `lead` (a lead instrument on
the top part, one accompaniment instrument, optionally a separate bass) and `mixed` (every part
drawn from a register pool).
"""

import re

import numpy as np

DRUMS = 128

# program -> (caption name, lowest MIDI pitch, highest MIDI pitch), ranges with some slack.
PROGRAMS: dict[int, tuple[str, int, int]] = {
    0: ('piano', 21, 108), 4: ('electric piano', 28, 103), 6: ('harpsichord', 29, 89),
    8: ('celesta', 60, 108), 9: ('glockenspiel', 60, 108), 10: ('music box', 53, 100),
    11: ('vibraphone', 53, 89), 12: ('marimba', 45, 96), 13: ('xylophone', 60, 108),
    16: ('electric organ', 24, 96), 19: ('church organ', 21, 108), 21: ('accordion', 41, 89),
    22: ('harmonica', 60, 96), 24: ('acoustic guitar', 40, 84), 25: ('steel-string guitar', 40, 84),
    26: ('jazz guitar', 40, 86), 27: ('electric guitar', 40, 88), 32: ('acoustic bass', 28, 55),
    33: ('electric bass', 28, 60), 35: ('fretless bass', 28, 60), 38: ('synth bass', 24, 60),
    40: ('violin', 55, 100), 41: ('viola', 48, 88), 42: ('cello', 36, 76),
    43: ('double bass', 28, 60), 45: ('pizzicato strings', 28, 96), 46: ('harp', 24, 103),
    48: ('string ensemble', 28, 96), 52: ('choir', 36, 84), 56: ('trumpet', 54, 84),
    57: ('trombone', 40, 72), 58: ('tuba', 28, 58), 60: ('french horn', 34, 77),
    61: ('brass section', 36, 84), 64: ('soprano saxophone', 56, 87),
    65: ('alto saxophone', 49, 80), 66: ('tenor saxophone', 44, 75),
    67: ('baritone saxophone', 36, 68), 68: ('oboe', 58, 91), 69: ('english horn', 52, 81),
    70: ('bassoon', 34, 75), 71: ('clarinet', 50, 91), 72: ('piccolo', 74, 108),
    73: ('flute', 60, 96), 74: ('recorder', 60, 96), 75: ('pan flute', 60, 96),
    80: ('synth lead', 36, 96), 88: ('synth pad', 36, 96), 104: ('sitar', 48, 84),
    105: ('banjo', 48, 84), 108: ('kalimba', 60, 88), 114: ('steel drums', 52, 88),
    DRUMS: ('drums', 0, 127),
}
NAME_TO_PROGRAM = {name: program for program, (name, _, _) in PROGRAMS.items()}


def program_name(program: int) -> str:
  """Caption name of a GM program (`DRUMS` -> 'drums')."""
  return PROGRAMS[program][0]


# Instrument pairs that never sound together in `train`. A rendering whose instrument set
# contains one of them is redrawn when its work hashes to train, and is routed to the
# `test_heldout_instruments` split when its work hashes to validation or test. The first name of
# each pair takes the top (melody) part when a rendering is forced to hold a pair; the second
# plays the other parts ('drums' joins as a kit).
HELDOUT_INSTRUMENT_COMBINATIONS: tuple[tuple[str, str], ...] = (
    ('violin', 'harp'),
    ('trumpet', 'marimba'),
    ('flute', 'electric bass'),
    ('clarinet', 'acoustic guitar'),
    ('vibraphone', 'cello'),
    ('church organ', 'drums'),
)


def heldout_combinations_in(names) -> list[tuple[str, str]]:
  """The held-out pairs fully present in a collection of instrument names."""
  names = set(names)
  return [pair for pair in HELDOUT_INSTRUMENT_COMBINATIONS if set(pair) <= names]


# Register pools (caption names) for drawing instruments per part.
LEAD_POOL = (
    'violin', 'flute', 'oboe', 'clarinet', 'trumpet', 'soprano saxophone', 'alto saxophone',
    'recorder', 'pan flute', 'piccolo', 'harmonica', 'accordion', 'acoustic guitar',
    'steel-string guitar', 'jazz guitar', 'electric guitar', 'piano', 'electric piano',
    'vibraphone', 'marimba', 'xylophone', 'glockenspiel', 'celesta', 'music box', 'harp', 'choir',
    'synth lead', 'french horn', 'sitar', 'banjo', 'kalimba', 'steel drums', 'church organ',
    'electric organ', 'english horn')
INNER_POOL = (
    'viola', 'clarinet', 'french horn', 'english horn', 'alto saxophone', 'tenor saxophone',
    'trombone', 'acoustic guitar', 'jazz guitar', 'piano', 'electric piano', 'church organ',
    'electric organ', 'string ensemble', 'choir', 'harp', 'marimba', 'vibraphone', 'accordion',
    'synth pad', 'bassoon', 'cello', 'pizzicato strings')
BASS_POOL = (
    'cello', 'double bass', 'bassoon', 'tuba', 'trombone', 'acoustic bass', 'electric bass',
    'fretless bass', 'synth bass', 'baritone saxophone', 'piano', 'church organ', 'harpsichord',
    'pizzicato strings')
SINGLE_POOL = (
    'piano', 'electric piano', 'harpsichord', 'church organ', 'electric organ', 'accordion',
    'harp', 'acoustic guitar', 'marimba', 'vibraphone', 'string ensemble', 'choir', 'synth pad',
    'brass section')
ACCOMPANIMENT_POOL = (
    'piano', 'electric piano', 'acoustic guitar', 'steel-string guitar', 'string ensemble',
    'church organ', 'harp', 'harpsichord', 'accordion', 'synth pad', 'marimba', 'vibraphone')
FAMILIES: dict[str, tuple[str, ...]] = {  # top to bottom
    'strings': ('violin', 'violin', 'viola', 'cello', 'double bass'),
    'woodwinds': ('flute', 'oboe', 'clarinet', 'bassoon'),
    'brass': ('trumpet', 'trumpet', 'french horn', 'trombone', 'tuba'),
    'saxophones': ('soprano saxophone', 'alto saxophone', 'tenor saxophone', 'baritone saxophone'),
    'choir': ('choir',),
}
MODES = ('original', 'family', 'single', 'lead', 'mixed')
_MODE_WEIGHTS = {'family': 0.2, 'single': 0.2, 'lead': 0.3, 'mixed': 0.3}

# Part name (lower case) -> caption name. Order matters: first match wins.
_PART_NAME_RULES: tuple[tuple[str, str], ...] = (
    (r'violoncell|cello|\bvc\b', 'cello'),
    (r'contrabass|double bass|kontrabass|violone', 'double bass'),
    (r'viola|\bvla\b|bratsche', 'viola'),
    (r'viol|\bvl\b|\bvn\b|fiddle', 'violin'),
    (r'piccolo', 'piccolo'),
    (r'recorder|flauto dolce|blockfl', 'recorder'),
    (r'flute|flauto|traverso|\bfl\b', 'flute'),
    (r'english horn|cor anglais', 'english horn'),
    (r'oboe|hautbois|\bob\b', 'oboe'),
    (r'clarinet|klarinette', 'clarinet'),
    (r'bassoon|fagott', 'bassoon'),
    (r'horn|corno', 'french horn'),
    (r'trumpet|tromba|clarino|trompete', 'trumpet'),
    (r'trombone|posaune', 'trombone'),
    (r'tuba', 'tuba'),
    (r'harpsichord|cembalo|continuo', 'harpsichord'),
    (r'organ|organo|orgel', 'church organ'),
    (r'piano|klavier|pianoforte', 'piano'),
    (r'guitar|gitarre', 'acoustic guitar'),
    (r'harp|arpa|harfe', 'harp'),
    (r'soprano|alto|tenor|bass|cantus|altus|quintus|sextus|septimus|voice|voce|canto|choir|chor'
     r'|vox|superius|discantus|contra', 'choir'),
)


def name_from_part_name(part_name: str | None) -> str | None:
  """Caption instrument name for a score part name ('Violoncello' -> 'cello'); None if unknown."""
  text = (part_name or '').lower()
  for pattern, name in _PART_NAME_RULES:
    if re.search(pattern, text):
      return name
  return None


def fits(name: str, low: int, high: int, slack: int = 4) -> bool:
  """Whether a part spanning MIDI pitches [low, high] fits the instrument's range."""
  _, lo, hi = PROGRAMS[NAME_TO_PROGRAM[name]]
  return low >= lo - slack and high <= hi + slack


def _pick(rng: np.random.Generator, pool, low: int, high: int) -> str:
  candidates = [n for n in pool if fits(n, low, high)]
  return str(rng.choice(candidates)) if candidates else 'piano'


def roles(num_parts: int) -> list[str]:
  """'lead' / 'inner' / 'bass' for parts ordered top (highest) to bottom."""
  if num_parts == 1:
    return ['lead']
  return ['lead'] + ['inner'] * (num_parts - 2) + ['bass']


def draw_instrumentation(rng: np.random.Generator, part_names, ranges,
                         *, allow_original: bool = True) -> tuple[str, list[str]]:
  """Draws a caption name per part.

  Args:
    rng: the rendering's random generator.
    part_names: the score's part names, ordered top (highest) to bottom.
    ranges: (lowest, highest) MIDI pitch of each part, same order.
    allow_original: whether the `original` mode (names from part names) may be used.

  Returns:
    (mode, names): one caption name per part.
  """
  n = len(part_names)
  mapped = [name_from_part_name(p) for p in part_names]
  if allow_original and all(mapped) and all(fits(m, *r, slack=12) for m, r in zip(mapped, ranges)):
    return 'original', list(mapped)
  modes = list(_MODE_WEIGHTS)
  weights = np.array([_MODE_WEIGHTS[m] for m in modes])
  if n == 1:  # a solo line: 'family'/'lead' reduce to one instrument from the lead pool
    weights[modes.index('family')] = weights[modes.index('lead')] = 0.0
  mode = str(rng.choice(modes, p=weights / weights.sum()))
  low = min(r[0] for r in ranges)
  high = max(r[1] for r in ranges)
  if mode == 'single':
    return mode, [_pick(rng, SINGLE_POOL, low, high)] * n
  if mode == 'family':
    family = FAMILIES[str(rng.choice(sorted(FAMILIES)))]
    names = []
    for i in range(n):
      names.append(family[round(i * (len(family) - 1) / max(n - 1, 1))])
    return mode, names
  if mode == 'lead':
    lead = _pick(rng, LEAD_POOL, *ranges[0])
    rest = ranges[1:]
    accomp = _pick(rng, ACCOMPANIMENT_POOL, min(r[0] for r in rest), max(r[1] for r in rest))
    names = [lead] + [accomp] * (n - 1)
    if n >= 3 and rng.random() < 0.5:
      names[-1] = _pick(rng, BASS_POOL, *ranges[-1])
    return mode, names
  pools = {'lead': LEAD_POOL, 'inner': INNER_POOL, 'bass': BASS_POOL}
  names = [_pick(rng, pools[role], *r) for role, r in zip(roles(n), ranges)]
  return 'mixed', names


def force_heldout(rng: np.random.Generator, num_parts: int) -> tuple[str, list[str], bool] | None:
  """Instrumentation holding one held-out pair, or None when the parts cannot hold any.

  Returns:
    (pair label, names per part, drums): with 'drums' in the pair the first instrument plays
    every part and a kit joins.
  """
  usable = [p for p in HELDOUT_INSTRUMENT_COMBINATIONS if num_parts >= 2 or 'drums' in p]
  if not usable:
    return None
  first, second = usable[int(rng.integers(len(usable)))]
  if second == 'drums':
    return f'{first} + {second}', [first] * num_parts, True
  return f'{first} + {second}', [first] + [second] * (num_parts - 1), False
