"""Meshes, logical axis rules and sharded initialisation (the flax lm1b recipe in one place).

Parameters carry logical axis names (`embed`, `mlp`, ...); rules map them to the mesh axes
(`data`, `fsdp`, `tensor`). The rules are bound from gin (`gin/mesh/*.gin`); the defaults here
serve library users who call without gin.
"""

from collections.abc import Callable, Mapping, Sequence
import math
from typing import Any

import flax.linen as nn
import jax
from jax.sharding import Mesh, NamedSharding, PartitionSpec as P
import numpy as np

MESH_AXES = ('data', 'fsdp', 'tensor')

LogicalRules = Sequence[tuple[str, str | tuple[str, ...] | None]]

DEFAULT_RULES: LogicalRules = (
    # Parameters.
    ('embed', 'fsdp'),
    ('mlp', 'tensor'),
    ('heads', 'tensor'),
    ('kv', None),
    ('vocab', 'tensor'),
    ('layers', None),
    ('conv_kernel', None),
    ('conv_in', None),
    ('conv_out', 'tensor'),
    ('codebook', None),
    ('codebook_dim', None),
    ('norm', None),
    # Activations and batches.
    ('batch', ('data', 'fsdp')),
    ('activation_batch', ('data', 'fsdp')),
    ('activation_length', None),
    ('activation_embed', None),
    ('activation_mlp', 'tensor'),
    ('activation_heads', 'tensor'),
    ('activation_kv', None),
    ('activation_vocab', 'tensor'),
)


class MeshError(ValueError):
  """A mesh shape that does not fit the available devices."""


def resolve_mesh_shape(mesh_shape: Mapping[str, int], num_devices: int) -> dict[str, int]:
  """Fills a single -1 entry and checks that the product equals `num_devices`.

  Args:
    mesh_shape: sizes per mesh axis, e.g. {'data': -1, 'fsdp': 1, 'tensor': 1}.
    num_devices: devices over all hosts.

  Returns:
    Sizes for every axis of MESH_AXES (missing axes get 1).
  """
  unknown = set(mesh_shape) - set(MESH_AXES)
  if unknown:
    raise MeshError(f'MESH_SHAPE has unknown axes {sorted(unknown)}; allowed: {MESH_AXES}')
  shape = {axis: int(mesh_shape.get(axis, 1)) for axis in MESH_AXES}
  free = [a for a, s in shape.items() if s == -1]
  if len(free) > 1:
    raise MeshError(f'MESH_SHAPE {dict(mesh_shape)} has more than one -1 entry')
  if any(s == 0 or s < -1 for s in shape.values()):
    raise MeshError(f'MESH_SHAPE {dict(mesh_shape)} has a non-positive size')
  fixed = math.prod(s for s in shape.values() if s != -1)
  if free:
    if num_devices % fixed:
      raise MeshError(f'MESH_SHAPE {dict(mesh_shape)} (fixed product {fixed}) does not divide '
                      f'the {num_devices} available devices')
    shape[free[0]] = num_devices // fixed
  elif fixed != num_devices:
    raise MeshError(f'MESH_SHAPE {dict(mesh_shape)} needs {fixed} devices but '
                    f'{num_devices} are available')
  return shape


def make_mesh(mesh_shape: Mapping[str, int], devices: Sequence[jax.Device] | None = None) -> Mesh:
  """Builds a ('data', 'fsdp', 'tensor') mesh over all devices of all hosts."""
  devices = list(jax.devices() if devices is None else devices)
  shape = resolve_mesh_shape(mesh_shape, len(devices))
  dims = tuple(shape[a] for a in MESH_AXES)
  try:
    device_array = jax.experimental.mesh_utils.create_device_mesh(dims, devices=devices)
  except Exception:  # Fake CPU devices or odd topologies: plain row-major order.
    device_array = np.asarray(devices, dtype=object).reshape(dims)
  return Mesh(device_array, MESH_AXES)


def logical_to_sharding(logical_specs: Any, mesh: Mesh, rules: LogicalRules) -> Any:
  """Maps a pytree of logical PartitionSpecs to NamedShardings."""
  return nn.logical_to_mesh_sharding(logical_specs, mesh, list(rules))


def batch_sharding(mesh: Mesh, rules: LogicalRules, ndim: int) -> NamedSharding:
  """Sharding for an input array whose leading axis is the global batch."""
  spec = nn.logical_to_mesh_axes(('batch',) + (None,) * (ndim - 1), list(rules))
  return NamedSharding(mesh, spec)


def replicated(mesh: Mesh) -> NamedSharding:
  return NamedSharding(mesh, P())


def sharded_init(init_fn: Callable[..., Any], mesh: Mesh, rules: LogicalRules,
                 *args: Any) -> tuple[Any, Any]:
  """Runs `init_fn(*args)` directly into its sharded layout (flax examples/lm1b recipe).

  `eval_shape` gives the boxed abstract tree; its logical specs become mesh shardings; the
  jitted init then materialises each parameter on its own shard only.

  Returns:
    (unboxed pytree, matching pytree of NamedShardings).
  """
  abstract = jax.eval_shape(init_fn, *args)
  logical_specs = nn.get_partition_spec(abstract)
  shardings = logical_to_sharding(logical_specs, mesh, rules)
  with mesh, nn.logical_axis_rules(list(rules)):
    values = jax.jit(lambda *a: nn.unbox(init_fn(*a)), out_shardings=shardings)(*args)
  return values, shardings


def shard_batch(batch: Mapping[str, np.ndarray], mesh: Mesh, rules: LogicalRules) -> dict:
  """Places a host-local batch onto the mesh as global arrays sharded along `batch`.

  On one host this is `device_put`; on several, each host contributes its local rows.
  """
  out = {}
  for key, value in batch.items():
    value = np.asarray(value)
    sharding = batch_sharding(mesh, rules, value.ndim)
    if jax.process_count() == 1:
      out[key] = jax.device_put(value, sharding)
    else:
      out[key] = jax.make_array_from_process_local_data(sharding, value)
  return out
