"""Data parallelism with `jax.jit` and named shardings (no pmap).

One mesh axis, "data". The dataset, the parameters and the optimiser state are replicated
(`P()`); inside the compiled step the batch a recipe loads is constrained to `P("data")`, so
XLA splits every per-example computation across the devices and inserts the all-reduces
(gradients, BatchNorm statistics) itself. The global batch is drawn from one key and then
split, so no two devices ever see the same random numbers, and the result equals the
one-device run up to float reduction order.

Multi-host: call `initialize_distributed` first (only when a flag asks for it); `make_mesh`
then spans the devices of every process, and `host_local_to_global` assembles a global batch
from per-host pieces (each process's rows: `process_rows`) for host-fed input pipelines.
Every process runs the same program on the same replicated values (`replicate` fills each
process's own devices, no transfer between processes); replicated results are read on any
process (`np.asarray`), batch-sharded ones are not (they span other processes' devices).
`is_main_process` names the process that writes a run's files, `broadcast_text` shares its
decisions (the workdir a run goes to) with the others.
"""

from __future__ import annotations

from typing import Any

import jax
import numpy as np
from jax.experimental import multihost_utils
from jax.sharding import Mesh, NamedSharding, PartitionSpec as P

PyTree = Any
DATA_AXIS = "data"


def make_mesh(num_devices: int | None = None) -> Mesh:
  """A 1-D mesh with axis "data" over the first `num_devices` devices (default: all).

  `jax.devices()` lists the devices process by process, so each process holds one
  contiguous block of a batch (`process_rows`). A multi-process mesh spans every device.
  """
  devices = jax.devices()
  num = len(devices) if num_devices is None else num_devices
  if not 1 <= num <= len(devices):
    raise ValueError(f"num_devices must be in [1, {len(devices)}], got {num_devices}.")
  if jax.process_count() > 1 and num != len(devices):
    raise ValueError(f"a run of {jax.process_count()} processes trains on all "
                     f"{len(devices)} devices, got num_devices={num_devices}.")
  return Mesh(np.asarray(devices[:num]), (DATA_AXIS,))


def replicated(mesh: Mesh) -> NamedSharding:
  """The sharding that puts a full copy on every device of the mesh."""
  return NamedSharding(mesh, P())


def batch_sharding(mesh: Mesh) -> NamedSharding:
  """The sharding that splits the leading (batch) axis over the "data" axis."""
  return NamedSharding(mesh, P(DATA_AXIS))


def replicate(tree: PyTree, mesh: Mesh) -> PyTree:
  """Places every array of `tree` fully on every device of the mesh.

  `tree` must hold the same values in every process. In a multi-process run each process
  fills its own devices' copies by an identity `jax.jit` with a replicated output (no
  cross-process transfer, weak types kept): `jax.device_put` would compare every leaf
  across the processes first (one collective per leaf), and its comparison fails for a
  Python float (checked as float64 against the gathered float32).
  """
  if jax.process_count() == 1:
    return jax.device_put(tree, replicated(mesh))
  devices = set(mesh.devices.flat)
  tree = jax.tree.map(lambda x: _movable(x, devices), tree)
  return jax.jit(lambda t: t, out_shardings=replicated(mesh))(tree)


def _movable(x: Any, devices: set[jax.Device]) -> Any:
  """`x`, or an uncommitted copy when it is an array committed to other devices than the
  mesh's (e.g. restored onto one local device), which a jitted call over the mesh refuses."""
  if not isinstance(x, jax.Array) or not x.committed or x.sharding.device_set == devices:
    return x
  return uncommitted_copy(x)


def uncommitted_copy(x: jax.Array) -> jax.Array:
  """`x` through the host, as an uncommitted array (free to move to any device; typed PRNG
  keys stay keys)."""
  if jax.dtypes.issubdtype(x.dtype, jax.dtypes.prng_key):
    return jax.random.wrap_key_data(np.asarray(jax.random.key_data(x)),
                                    impl=jax.random.key_impl(x))
  return jax.device_put(np.asarray(x))


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


def process_rows(batch_size: int, mesh: Mesh) -> slice:
  """The rows of a global batch of `batch_size` that this process's devices hold.

  The slice each process passes to `host_local_to_global` (all rows in a one-process run).

  Raises:
    ValueError: a batch the data axis does not split evenly, or a mesh on which this
      process's rows are not one contiguous block.
  """
  check_divisible(batch_size, mesh)
  indices = batch_sharding(mesh).addressable_devices_indices_map((batch_size,)).values()
  starts = sorted(index[0].indices(batch_size)[0] for index in indices)
  size = batch_size // mesh.shape[DATA_AXIS]
  if starts != list(range(starts[0], starts[0] + size * len(starts), size)):
    raise ValueError(f"the devices of process {jax.process_index()} hold rows starting at "
                     f"{starts} of the batch, not one contiguous block: order the mesh's "
                     "devices by process (make_mesh does).")
  return slice(starts[0], starts[0] + size * len(starts))


def local_copy(tree: PyTree) -> PyTree:
  """Every replicated array of `tree` as its copy on one device of this process, for
  computations one process runs alone (other leaves as they are).

  Raises:
    ValueError: an array that is not fully replicated (this process lacks part of it).
  """
  def local(x: Any) -> Any:
    if not isinstance(x, jax.Array):
      return x
    if not x.is_fully_replicated:
      raise ValueError(f"local_copy takes replicated arrays, got one of shape {x.shape} "
                       f"sharded as {x.sharding}.")
    return x.addressable_data(0)

  return jax.tree.map(local, tree)


def is_main_process() -> bool:
  """Whether this process is process 0, the one that writes a run's files."""
  return jax.process_index() == 0


def broadcast_text(text: str) -> str:
  """Process 0's `text`, in every process (a collective: every process must call it).

  One process: `text` itself.
  """
  if jax.process_count() == 1:
    return text
  data = np.frombuffer(text.encode(), np.uint8) if is_main_process() else np.zeros(0, np.uint8)
  size = int(multihost_utils.broadcast_one_to_all(np.int32(data.size)))
  if not size:
    return ""
  buffer = np.zeros(size, np.uint8)
  buffer[:data.size] = data
  return bytes(np.asarray(multihost_utils.broadcast_one_to_all(buffer))).decode()


def initialize_distributed(coordinator_address: str | None = None,
                           num_processes: int | None = None,
                           process_id: int | None = None) -> None:
  """Connects the processes of a multi-host job (`jax.distributed.initialize`).

  With all arguments None, JAX detects the cluster (SLURM, TPU pods, ...). Call it once,
  before any other JAX call, and only in multi-process runs.
  """
  jax.distributed.initialize(coordinator_address=coordinator_address,
                             num_processes=num_processes, process_id=process_id)
