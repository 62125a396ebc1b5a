"""Skip report: which input items a build left out, and why.

A build never dies on one bad item: it records `{"item": ..., "reason": ...}` and moves on.
`reason` reads `"<kind>: <detail>"` (for example `"unreadable: not a WAV file"`) or just
`"<kind>"`; counts group by the kind, so details such as durations do not split the counts.
"""

from collections import Counter
from collections.abc import Iterable, Mapping
import json
import os
from pathlib import Path
import tempfile


def reason_kind(reason: str) -> str:
  """The part of a reason before the first ': ' (the whole reason when there is none)."""
  return reason.split(': ', 1)[0].strip()


class SkipReport:
  """An ordered set of skipped items; the first reason recorded for an item wins.

  Attributes:
    records: `[{"item": str, "reason": str}, ...]` in the order they were added.
  """

  def __init__(self, records: Iterable[Mapping[str, str]] = ()):
    self.records: list[dict[str, str]] = []
    self._items: set[str] = set()
    self.extend(records)

  def add(self, item: str, reason: str) -> None:
    """Records that `item` was skipped for `reason` (one line; later duplicates are ignored)."""
    item = str(item)
    if item in self._items:
      return
    self._items.add(item)
    self.records.append({'item': item, 'reason': ' '.join(str(reason).split())})

  def extend(self, records: Iterable[Mapping[str, str]]) -> None:
    for record in records:
      self.add(record['item'], record['reason'])

  def __len__(self) -> int:
    return len(self.records)

  def __contains__(self, item: str) -> bool:
    return item in self._items

  def counts(self) -> dict[str, int]:
    """Skipped items per reason kind, most frequent first (ties alphabetical)."""
    counts = Counter(reason_kind(r['reason']) for r in self.records)
    return dict(sorted(counts.items(), key=lambda kv: (-kv[1], kv[0])))

  def summary_line(self) -> str:
    """E.g. `'3 skipped (no audio 2, silent 1)'`."""
    if not self.records:
      return '0 skipped'
    parts = ', '.join(f'{kind} {n}' for kind, n in self.counts().items())
    return f'{len(self.records)} skipped ({parts})'

  def write_jsonl(self, path: str | os.PathLike[str]) -> Path:
    """Writes one JSON object per line to `path` atomically (temp file + `os.replace`)."""
    return write_jsonl_atomic(path, self.records)


def write_jsonl_atomic(path: str | os.PathLike[str],
                       records: Iterable[Mapping[str, object]]) -> Path:
  """Writes `records` as JSON lines; readers see the old file or the new one, never a part."""
  path = Path(path)
  path.parent.mkdir(parents=True, exist_ok=True)
  fd, tmp = tempfile.mkstemp(prefix=f'.{path.name}.', suffix='.tmp', dir=path.parent)
  try:
    with os.fdopen(fd, 'w', encoding='utf-8') as f:
      for record in records:
        f.write(json.dumps(record, ensure_ascii=False) + '\n')
    os.replace(tmp, path)
  except BaseException:
    Path(tmp).unlink(missing_ok=True)
    raise
  return path


def read_jsonl(path: str | os.PathLike[str]) -> list[dict[str, str]]:
  """Reads a skip report written by `write_jsonl`."""
  with open(path, encoding='utf-8') as f:
    return [json.loads(line) for line in f if line.strip()]
