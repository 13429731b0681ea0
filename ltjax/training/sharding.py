"""Data parallelism with `jax.jit` and named shardings (no pmap).

One mesh axis, "data". The dataset, the parameters and the optimiser state are replicated
(`P()`); inside the compiled step the batch a recipe loads is constrained to `P("data")`, so
XLA splits every per-example computation across the devices and inserts the all-reduces
(gradients, BatchNorm statistics) itself. The global batch is drawn from one key and then
split, so no two devices ever see the same random numbers, and the result equals the
one-device run up to float reduction order.

Multi-host: call `initialize_distributed` first (only when a flag asks for it); `make_mesh`
then spans the devices of every process, and `host_local_to_global` assembles a global batch
from per-host pieces for host-fed input pipelines.
"""

from __future__ import annotations

from typing import Any

import jax
import numpy as np
from jax.sharding import Mesh, NamedSharding, PartitionSpec as P

PyTree = Any
DATA_AXIS = "data"


def make_mesh(num_devices: int | None = None) -> Mesh:
  """A 1-D mesh with axis "data" over the first `num_devices` devices (default: all)."""
  devices = jax.devices()
  num = len(devices) if num_devices is None else num_devices
  if not 1 <= num <= len(devices):
    raise ValueError(f"num_devices must be in [1, {len(devices)}], got {num_devices}.")
  return Mesh(np.asarray(devices[:num]), (DATA_AXIS,))


def replicated(mesh: Mesh) -> NamedSharding:
  """The sharding that puts a full copy on every device of the mesh."""
  return NamedSharding(mesh, P())


def batch_sharding(mesh: Mesh) -> NamedSharding:
  """The sharding that splits the leading (batch) axis over the "data" axis."""
  return NamedSharding(mesh, P(DATA_AXIS))


def replicate(tree: PyTree, mesh: Mesh) -> PyTree:
  """Places every array of `tree` fully on every device of the mesh."""
  return jax.device_put(tree, replicated(mesh))


def check_divisible(batch_size: int, mesh: Mesh) -> None:
  """Raises ValueError unless the batch splits evenly over the data axis."""
  devices = mesh.shape[DATA_AXIS]
  if batch_size % devices:
    raise ValueError(f"batch_size {batch_size} is not divisible by the {devices} devices "
                     "of the data axis.")


def shard_batch(x: jax.Array, mesh: Mesh | None) -> jax.Array:
  """Inside jit: constrains a batch tensor to be split along its leading axis."""
  if mesh is None:
    return x
  return jax.lax.with_sharding_constraint(x, batch_sharding(mesh))


def host_local_to_global(local: PyTree, mesh: Mesh) -> PyTree:
  """Assembles a global batch-sharded array from each process's local slice of the batch."""
  sharding = batch_sharding(mesh)
  return jax.tree.map(lambda a: jax.make_array_from_process_local_data(sharding, a), local)


def initialize_distributed(coordinator_address: str | None = None,
                           num_processes: int | None = None,
                           process_id: int | None = None) -> None:
  """Connects the processes of a multi-host job (`jax.distributed.initialize`).

  With all arguments None, JAX detects the cluster (SLURM, TPU pods, ...). Call it once,
  before any other JAX call, and only in multi-process runs.
  """
  jax.distributed.initialize(coordinator_address=coordinator_address,
                             num_processes=num_processes, process_id=process_id)
