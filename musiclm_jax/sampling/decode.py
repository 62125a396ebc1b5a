"""Compiled, batched decoding of one stage window: prefill + a `lax.fori_loop` over tokens.

One call of `StageDecoder.generate` fills target positions [prompt_len, prompt_len + num_new)
of a fixed-size token buffer [batch, layout.sequence_length]:

  1. prefill the whole buffer (prefix, known target tokens, PAD after them) into a KV cache of
     `sequence_length` positions; the logits at prompt_len - 1 give the first new token;
  2. `lax.fori_loop` over the new tokens: slice the logits to the codebook of the position's RVQ
     level (`layout.target_range`), apply classifier-free guidance, temperature, top-k, top-p,
     sample, write the token, `decode_step` it (cached positions beyond the current one are
     masked, so the PAD written by the prefill never leaks in).

`prompt_len` and `num_new` are traced scalars, so a stage compiles once per (batch, settings)
whatever the window's prompt and length: long-form generation reuses one program and one
fixed-size cache for every window (see `longform`).

Classifier-free guidance doubles the batch: the unconditional rows carry PAD where the
conditioning fields (`cfg_fields`, MuLan and melody by default) were, and
logits = uncond + scale * (cond - uncond). With more than one device the batch is sharded over
a 1-D 'data' mesh (parameters replicated); rows are padded to a multiple of the device count.

Randomness: each row has its own key; step keys are fold_in(fold_in(row key, salt), position)
(salt: the window index), so a row's tokens do not depend on which other rows share its
batch. Temperature 0 is greedy (argmax).
"""

import dataclasses
import functools
import time
from collections.abc import Sequence
from typing import Any

import jax
from jax.sharding import Mesh, NamedSharding, PartitionSpec as P
import jax.numpy as jnp
import numpy as np

from musiclm_jax.stages import layouts as layouts_lib
from musiclm_jax.stages import lm as lm_lib
from musiclm_jax.stages import model as model_lib

Array = jax.Array
DEFAULT_CFG_FIELDS = ('mulan', 'melody')

# Stage name -> how many times its decode program was traced (tests check for recompiles).
TRACE_COUNTS: dict[str, int] = {}
# (network, layout, settings, cfg mask, mesh, rows) -> compiled executable, shared by decoders.
_EXECUTABLES: dict[tuple, Any] = {}


@dataclasses.dataclass(frozen=True)
class SamplingSettings:
  """How one stage picks tokens.

  Attributes:
    temperature: softmax temperature; <= 0 means greedy argmax.
    top_k: keep the k most likely codes (0: all).
    top_p: nucleus sampling mass (1.0: off).
    cfg_scale: classifier-free guidance scale (1.0: off, conditional logits only).
  """
  temperature: float = 1.0
  top_k: int = 0
  top_p: float = 1.0
  cfg_scale: float = 1.0

  def __post_init__(self):
    if self.top_k < 0:
      raise ValueError(f'top_k must be >= 0, got {self.top_k}')
    if not 0.0 < self.top_p <= 1.0:
      raise ValueError(f'top_p must be in (0, 1], got {self.top_p}')
    if self.temperature != self.temperature:
      raise ValueError('temperature is NaN')

  def to_json(self) -> dict[str, Any]:
    return dataclasses.asdict(self)


# Paper (MusicLM section 4.1): temperatures 1.0 / 0.95 / 0.4 for semantic / coarse / fine.
PAPER_SETTINGS = {
    'semantic': SamplingSettings(temperature=1.0),
    'coarse': SamplingSettings(temperature=0.95),
    'fine': SamplingSettings(temperature=0.4),
}


def filter_logits(logits: Array, *, top_k: int = 0, top_p: float = 1.0) -> Array:
  """Sets logits outside the top-k / nucleus to -inf. logits: [batch, codes] float32."""
  neg = jnp.finfo(logits.dtype).min
  if 0 < top_k < logits.shape[-1]:
    kth = jax.lax.top_k(logits, top_k)[0][..., -1:]  # [batch, 1]
    logits = jnp.where(logits >= kth, logits, neg)
  if top_p < 1.0:
    ordered = jnp.sort(logits, axis=-1)[..., ::-1]  # [batch, codes] descending
    probs = jax.nn.softmax(ordered, axis=-1)
    before = jnp.cumsum(probs, axis=-1) - probs  # mass of strictly better codes
    keep = before < top_p  # always keeps the best code
    threshold = jnp.min(jnp.where(keep, ordered, jnp.inf), axis=-1, keepdims=True)
    logits = jnp.where(logits >= threshold, logits, neg)
  return logits


def sample_codes(keys: Array, logits: Array, settings: SamplingSettings) -> Array:
  """One code per row. keys: [batch, 2] uint32; logits: [batch, codes]. Returns int32 [batch]."""
  if settings.temperature <= 0:
    return jnp.argmax(logits, axis=-1).astype(jnp.int32)
  logits = logits / settings.temperature
  logits = filter_logits(logits, top_k=settings.top_k, top_p=settings.top_p)
  return jax.vmap(jax.random.categorical)(keys, logits).astype(jnp.int32)


def conditioning_mask(layout: layouts_lib.StageLayout,
                      fields: Sequence[str] = DEFAULT_CFG_FIELDS) -> np.ndarray | None:
  """bool [sequence_length]: positions of the guided conditioning fields (None if none)."""
  mask = np.zeros(layout.sequence_length, bool)
  pos = 1
  for f in layout.conditioning:
    if f.name in fields:
      mask[pos:pos + f.length] = True
    pos += f.length
  return mask if mask.any() else None


def _generate(network: lm_lib.DecoderLM, layout: layouts_lib.StageLayout,
              settings: SamplingSettings, cfg_mask: tuple[bool, ...] | None,
              cache_sharding: Any, params: Any, tokens: Array, prompt_len: Array,
              num_new: Array, keys: Array, salt: Array) -> Array:
  """The traced program: see the module docstring. tokens: [batch, length] int32."""
  TRACE_COUNTS[layout.name] = TRACE_COUNTS.get(layout.name, 0) + 1
  batch, length = tokens.shape
  target = layout.target
  target_offset = layout.offset(target.name)
  guided = cfg_mask is not None and settings.cfg_scale != 1.0
  if guided:
    mask = jnp.asarray(np.asarray(cfg_mask))[None, :]  # [1, length]
    rows = jnp.concatenate([tokens, jnp.where(mask, layouts_lib.PAD_ID, tokens)], axis=0)
  else:
    rows = tokens  # [rows, length]
  keys = jax.vmap(jax.random.fold_in, in_axes=(0, None))(keys, salt)  # [batch, 2]
  cache = lm_lib.init_cache(network.config, rows.shape[0], length)
  if cache_sharding is not None:
    cache = jax.lax.with_sharding_constraint(cache, cache_sharding)
  variables = {'params': params}
  logits, cache = network.apply(variables, rows, cache, method=lm_lib.DecoderLM.prefill)
  last = jax.lax.dynamic_index_in_dim(logits, prompt_len - 1, axis=1, keepdims=False)

  def body(i, carry):
    tokens, cache, last = carry  # [batch, length], cache, [rows, vocab]
    pos = prompt_len + i
    level = (pos - layout.prefix_length) % target.num_levels
    lo = target_offset + level * target.codebook_size
    sliced = jax.lax.dynamic_slice_in_dim(last, lo, target.codebook_size, axis=-1)  # [rows, C]
    if guided:
      cond, uncond = sliced[:batch], sliced[batch:]
      sliced = uncond + settings.cfg_scale * (cond - uncond)  # [batch, C]
    step_keys = jax.vmap(jax.random.fold_in, in_axes=(0, None))(keys, pos)
    token = lo + sample_codes(step_keys, sliced, settings)  # [batch]
    tokens = jax.lax.dynamic_update_slice(tokens, token[:, None], (0, pos))
    feed = jnp.concatenate([token, token]) if guided else token
    last, cache = network.apply(variables, feed, cache, pos, method=lm_lib.DecoderLM.decode_step)
    return tokens, cache, last

  tokens, _, _ = jax.lax.fori_loop(0, num_new, body, (tokens, cache, last))
  return tokens


@functools.lru_cache(maxsize=64)
def _compiled(network: lm_lib.DecoderLM, layout: layouts_lib.StageLayout,
              settings: SamplingSettings, cfg_mask: tuple[bool, ...] | None, mesh: Mesh | None):
  """One jitted program per (network config, layout, settings, mesh); shapes add the rest."""
  cache_sharding = None
  if mesh is not None:
    cache_sharding = NamedSharding(mesh, P(None, 'data'))
  fn = functools.partial(_generate, network, layout, settings, cfg_mask, cache_sharding)
  return jax.jit(fn)


class StageDecoder:
  """Batched, compiled window decoding for one stage.

  Args:
    stage: the `StageModel` (layout + LM config).
    params: its network parameters ({'model': tree} or the tree).
    settings: temperature / top-k / top-p / guidance.
    cfg_fields: conditioning fields blanked (PAD) in the unconditional rows.
    devices: devices to shard the batch over (default: all local devices).
  """

  def __init__(self, stage: model_lib.StageModel, params: Any, *,
               settings: SamplingSettings = SamplingSettings(),
               cfg_fields: Sequence[str] = DEFAULT_CFG_FIELDS,
               devices: Sequence[jax.Device] | None = None):
    self.stage = stage
    self.layout = stage.layout
    self.settings = settings
    params = params['model'] if isinstance(params, dict) and 'model' in params else params
    self._host_params = params
    self._placed: dict[int, Any] = {}
    self.devices = list(devices if devices is not None else jax.local_devices())
    mask = conditioning_mask(self.layout, cfg_fields)
    self.cfg_mask = None if mask is None else tuple(bool(x) for x in mask)
    self.guided = self.cfg_mask is not None and settings.cfg_scale != 1.0
    self.compile_seconds = 0.0  # time this decoder spent compiling (not decoding)

  @property
  def max_len(self) -> int:
    """Tokens per window buffer (= the KV cache length)."""
    return self.layout.sequence_length

  def cache_shape(self, batch: int) -> tuple[int, ...]:
    """Shape of one of the K/V cache arrays for `batch` rows (doubled under guidance)."""
    cfg = self.stage.config
    rows = self._padded_rows(batch) * (2 if self.guided else 1)
    return (cfg.num_layers, rows, self.max_len, cfg.kv_heads, cfg.per_head_dim)

  def _num_devices(self, batch: int) -> int:
    return max(1, min(len(self.devices), batch))

  def _padded_rows(self, batch: int) -> int:
    n = self._num_devices(batch)
    return -(-batch // n) * n

  def _mesh(self, n: int) -> Mesh | None:
    if n == 1:
      return None
    return Mesh(np.asarray(self.devices[:n]), ('data',))

  def _params(self, n: int, mesh: Mesh | None):
    if n not in self._placed:
      target = (NamedSharding(mesh, P()) if mesh is not None
                else jax.sharding.SingleDeviceSharding(self.devices[0]))
      self._placed[n] = jax.device_put(self._host_params, target)
    return self._placed[n]

  def generate(self, tokens: np.ndarray, prompt_len: int, num_new: int,
               keys: np.ndarray, salt: int = 0) -> np.ndarray:
    """Fills positions [prompt_len, prompt_len + num_new) of `tokens`.

    Args:
      tokens: int32 [batch, sequence_length]: prefix, known target tokens, anything after.
      prompt_len: number of given positions (>= prefix_length).
      num_new: tokens to generate (prompt_len + num_new <= sequence_length).
      keys: uint32 [batch, 2] PRNG keys, one per row.
      salt: folded into every row key first (the window index in long-form generation).

    Returns:
      int32 [batch, sequence_length] numpy; positions after the generated ones are unchanged.
    """
    tokens = np.asarray(tokens, np.int32)
    batch, length = tokens.shape
    if length != self.max_len:
      raise ValueError(f'{self.layout.name} decoder: token buffer has length {length}, '
                       f'expected {self.max_len}')
    if not self.layout.prefix_length <= prompt_len <= length or num_new < 0 or \
        prompt_len + num_new > length:
      raise ValueError(f'{self.layout.name} decoder: prompt_len={prompt_len}, num_new={num_new} '
                       f'do not fit a buffer of {length} with a prefix of '
                       f'{self.layout.prefix_length}')
    if num_new == 0:
      return tokens
    keys = np.asarray(keys, np.uint32).reshape(batch, 2)
    n = self._num_devices(batch)
    rows = self._padded_rows(batch)
    if rows > batch:  # pad with copies of row 0, dropped below
      tokens = np.concatenate([tokens, np.repeat(tokens[:1], rows - batch, 0)])
      keys = np.concatenate([keys, np.repeat(keys[:1], rows - batch, 0)])
    mesh = self._mesh(n)
    params = self._params(n, mesh)
    if mesh is not None:
      sharding = NamedSharding(mesh, P('data'))
      tokens_in, keys_in = jax.device_put(tokens, sharding), jax.device_put(keys, sharding)
    else:
      tokens_in, keys_in = tokens, keys
    key = (self.stage.network, self.layout, self.settings, self.cfg_mask, mesh, rows)
    executable = _EXECUTABLES.get(key)
    if executable is None:
      start = time.perf_counter()
      fn = _compiled(self.stage.network, self.layout, self.settings, self.cfg_mask, mesh)
      executable = fn.lower(params, tokens_in, np.int32(0), np.int32(0), keys_in,
                            np.int32(0)).compile()
      _EXECUTABLES[key] = executable
      self.compile_seconds += time.perf_counter() - start
    out = executable(params, tokens_in, np.int32(prompt_len), np.int32(num_new), keys_in,
                     np.int32(salt))
    return np.asarray(jax.device_get(out))[:batch]
