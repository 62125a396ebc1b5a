"""`JsonConfig`: JSON round trip of the flat, frozen dataclass configs saved beside a model."""

import dataclasses
import json
from typing import Any


class JsonConfig:
  """Mixin for a flat dataclass config: to_dict / to_json, and from_dict that rejects unknown
  fields (a config saved by a newer version fails loudly instead of being half read)."""

  def to_dict(self) -> dict[str, Any]:
    return dataclasses.asdict(self)

  def to_json(self) -> str:
    return json.dumps(self.to_dict(), sort_keys=True)

  @classmethod
  def from_dict(cls, d: dict[str, Any]):
    names = {f.name for f in dataclasses.fields(cls)}
    unknown = sorted(set(d) - names)
    if unknown:
      raise ValueError(f'{cls.__name__}: unknown fields {unknown}')
    return cls(**d)
