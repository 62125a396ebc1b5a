"""Story mode: timed text segments that switch the MuLan conditioning while the windows continue.

Two spellings, both validated by `validate`:

  --story "calm meditation (0:00-0:15), uplifting wake-up theme (0:15-0:30)"
  {"story": [{"text": "calm meditation", "start": 0, "end": 15},
             {"text": "uplifting wake-up theme", "start": "0:15", "end": "0:30"}]}

Times are seconds (`15`, `15.5`, `15s`), `m:ss` or `h:mm:ss`. Segments must start at 0, follow
each other in order without overlap or gap, and each last a positive time; every violation is a
one-line `StoryError` naming the segment (1-based) and its text. The story's end is the piece's
duration.
"""

import dataclasses
import re
from collections.abc import Mapping, Sequence
from typing import Any

# "text (start-end)"; the text is everything since the previous segment (comma-separated).
_SEGMENT = re.compile(r'\(\s*(\d[\d:.]*\s*s?)\s*[-\u2013]\s*(\d[\d:.]*\s*s?)\s*\)')
_TIME = re.compile(r'^(?:(\d+):)?(?:(\d+):)?(\d+(?:\.\d*)?)\s*s?$')
_EPS = 1e-6


class StoryError(ValueError):
  """A malformed or inconsistent story (the message is one line)."""


@dataclasses.dataclass(frozen=True)
class StorySegment:
  """One timed prompt: `text` conditions the music from `start` to `end` seconds."""
  text: str
  start: float
  end: float

  @property
  def duration(self) -> float:
    return self.end - self.start

  def to_json(self) -> dict[str, Any]:
    return {'text': self.text, 'start': self.start, 'end': self.end}


def format_time(seconds: float) -> str:
  """Seconds -> 'm:ss' (with decimals when not whole), for messages and the gallery."""
  sign = '-' if seconds < 0 else ''
  seconds = abs(seconds)
  minutes, rest = divmod(seconds, 60.0)
  if abs(rest - round(rest)) < 1e-6:
    rest_text = f'{int(round(rest)):02d}'
  else:
    rest_text = f'{rest:05.2f}'.rstrip('0')
  return f'{sign}{int(minutes)}:{rest_text}'


def parse_time(value: Any, *, where: str = 'time') -> float:
  """'1:30' / '0:01:30' / '90' / '90s' / 90 -> 90.0 seconds."""
  if isinstance(value, bool):
    raise StoryError(f'{where}: expected a time, got {value!r}')
  if isinstance(value, (int, float)):
    seconds = float(value)
  elif isinstance(value, str):
    match = _TIME.match(value.strip())
    if not match:
      raise StoryError(f'{where}: cannot read time {value!r} (use seconds, m:ss or h:mm:ss)')
    first, second, last = match.groups()
    parts = [p for p in (first, second) if p is not None]
    seconds = float(last)
    if parts:
      if seconds >= 60:
        raise StoryError(f'{where}: seconds field of {value!r} must be below 60')
      if len(parts) == 2 and int(parts[1]) >= 60:
        raise StoryError(f'{where}: minutes field of {value!r} must be below 60')
      scale = 60
      for p in reversed(parts):
        seconds += int(p) * scale
        scale *= 60
  else:
    raise StoryError(f'{where}: expected a time, got {type(value).__name__}')
  if seconds != seconds or seconds in (float('inf'), float('-inf')):
    raise StoryError(f'{where}: time {value!r} is not finite')
  return seconds


def parse_story(text: str) -> list[StorySegment]:
  """Parses and validates 'text (0:00-0:15), text (0:15-0:30), ...'."""
  if not isinstance(text, str) or not text.strip():
    raise StoryError('story: empty (expected "text (0:00-0:15), text (0:15-0:30), ...")')
  segments, pos = [], 0
  for index, match in enumerate(_SEGMENT.finditer(text), start=1):
    seg_text = text[pos:match.start()].strip().lstrip(',').strip()
    where = f'story segment {index} ({_short(seg_text)})'
    start = parse_time(match.group(1), where=f'{where}: start')
    end = parse_time(match.group(2), where=f'{where}: end')
    segments.append(StorySegment(seg_text, start, end))
    pos = match.end()
  rest = text[pos:].strip().strip(',').strip()
  if rest:
    raise StoryError(f'story segment {len(segments) + 1} ({_short(rest)}): no (start-end) '
                     'timing, e.g. "calm piano (0:00-0:15)"')
  return validate(segments)


def segments_from_json(items: Any) -> list[StorySegment]:
  """Parses and validates [{"text", "start", "end"}, ...] (the jsonl spelling)."""
  if isinstance(items, str):
    return parse_story(items)
  if not isinstance(items, Sequence) or not items:
    raise StoryError('story: expected a non-empty list of {"text", "start", "end"} objects')
  segments = []
  for index, item in enumerate(items, start=1):
    if not isinstance(item, Mapping):
      raise StoryError(f'story segment {index}: expected an object with "text", "start", "end", '
                       f'got {type(item).__name__}')
    missing = [k for k in ('text', 'start', 'end') if k not in item]
    text = item.get('text')
    where = f'story segment {index} ({_short(text if isinstance(text, str) else "")})'
    if missing:
      raise StoryError(f'{where}: missing {", ".join(missing)}')
    if not isinstance(text, str):
      raise StoryError(f'{where}: "text" must be a string')
    segments.append(StorySegment(text.strip(), parse_time(item['start'], where=f'{where}: start'),
                                 parse_time(item['end'], where=f'{where}: end')))
  return validate(segments)


def validate(segments: Sequence[StorySegment], *,
             max_duration: float | None = None) -> list[StorySegment]:
  """Checks order, contiguity and lengths; returns the segments as a list.

  Raises:
    StoryError: naming the first offending segment.
  """
  if not segments:
    raise StoryError('story: no segments')
  previous = None
  for index, seg in enumerate(segments, start=1):
    where = f'story segment {index} ({_short(seg.text)})'
    if not seg.text:
      raise StoryError(f'story segment {index}: empty text')
    if seg.start < 0:
      raise StoryError(f'{where}: negative start {format_time(seg.start)}')
    if seg.end <= seg.start + _EPS:
      raise StoryError(f'{where}: non-positive length (from {format_time(seg.start)} to '
                       f'{format_time(seg.end)})')
    if previous is None:
      if seg.start > _EPS:
        raise StoryError(f'{where}: the story must start at 0:00, this segment starts at '
                         f'{format_time(seg.start)} (gap)')
    else:
      prev_where = f'segment {index - 1} ({_short(previous.text)})'
      if seg.start < previous.start - _EPS:
        raise StoryError(f'{where}: out of order, starts at {format_time(seg.start)} before '
                         f'{prev_where} at {format_time(previous.start)}')
      if seg.start < previous.end - _EPS:
        raise StoryError(f'{where}: overlaps {prev_where}, starts at {format_time(seg.start)} '
                         f'before it ends at {format_time(previous.end)}')
      if seg.start > previous.end + _EPS:
        raise StoryError(f'{where}: gap after {prev_where}, which ends at '
                         f'{format_time(previous.end)} but this one starts at '
                         f'{format_time(seg.start)}')
    previous = seg
  if max_duration is not None and segments[-1].end > max_duration + _EPS:
    raise StoryError(f'story segment {len(segments)} ({_short(segments[-1].text)}): ends at '
                     f'{format_time(segments[-1].end)}, beyond the limit of '
                     f'{format_time(max_duration)}')
  return list(segments)


def segment_at(segments: Sequence[StorySegment], seconds: float) -> int:
  """Index of the segment active at `seconds` (the last one past the end, the first before 0)."""
  for index, seg in enumerate(segments):
    if seconds < seg.end:
      return index
  return len(segments) - 1


def _short(text: str, limit: int = 40) -> str:
  text = ' '.join(str(text).split())
  return repr(text if len(text) <= limit else text[:limit - 3] + '...')
