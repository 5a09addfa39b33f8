"""Data parallelism: a 1-D device mesh, replicated state, batches sharded along their first axis.

The same code runs on one CPU, on several local GPUs/TPU cores and on many hosts: with
`jax.distributed` initialised, each process feeds its own slice of every global batch
(`pipeline.epoch_batches(process_index=..., process_count=...)`) and `shard_batch` assembles the
global array.
"""

from __future__ import annotations

import collections
import itertools
import os
import socket
import sys
from collections.abc import Iterable, Iterator, Sequence

import jax
import numpy as np
from jax.sharding import AxisType, NamedSharding, PartitionSpec

DATA_AXIS = "data"


def initialize_distributed(
  coordinator_address: str | None = None, num_processes: int | None = None, process_id: int | None = None
) -> None:
  """`jax.distributed.initialize` (arguments come from the cluster environment when omitted:
  SLURM, TPU pods, Open MPI); on CPU, collectives go through gloo. Call it before anything starts
  JAX's backends (a device query, a trace, a computation).

  Under SLURM (`srun`, one process per task) the coordinator is the step's first node, on a port
  derived from the job id (`$JAX_COORDINATOR_PORT` or `$JAX_COORDINATOR_ADDRESS` override it): a
  node name that does not resolve, or a launch without `srun`, fails here at once with what to do,
  instead of after jax's five-minute connection timeout. SIGTERM (`scancel`, a time limit) stops
  the processes. Each process prints one line to stderr: its index, the process count and the
  coordinator.
  """
  # Only affects CPU collectives; must be set before the backends start.
  jax.config.update("jax_cpu_collectives_implementation", "gloo")
  # jax's preemption service catches SIGTERM and waits for the program to ask whether it reached a
  # sync point, which the training loop never does: `scancel` or a time limit would leave every
  # process training (and writing the workdir) until SLURM's SIGKILL, KillWait seconds later. Off,
  # SIGTERM stops a process at once and a resubmitted job resumes from the last checkpoint.
  jax.config.update("jax_enable_preemption_service", False)
  if coordinator_address is None and not os.environ.get("JAX_COORDINATOR_ADDRESS"):
    _check_slurm_environment()
  jax.distributed.initialize(
    coordinator_address=coordinator_address, num_processes=num_processes, process_id=process_id
  )
  from jax._src import distributed  # the address jax settled on, for the line below

  print(
    f"jax.distributed: process {jax.process_index()} of {jax.process_count()} "
    f"(coordinator {getattr(distributed.global_state, 'coordinator_address', None)})",
    file=sys.stderr,
    flush=True,
  )


def _check_slurm_environment() -> None:
  """Inside a SLURM job: the step environment jax's SLURM detection needs, and a coordinator name
  that resolves; a RuntimeError naming the fix otherwise. Other launchers jax detects first (an
  Open MPI `mpirun` inside an allocation) are left to jax."""
  if "SLURM_JOB_ID" not in os.environ:
    return
  from jax._src import clusters

  detected = next(
    (env for env in clusters.ClusterEnv._cluster_types if not env.opt_in_only_method and env.is_env_present()), None
  )
  if detected is None:
    raise RuntimeError(
      "jax.distributed in a SLURM job needs a job step's environment (SLURM_STEP_NODELIST, SLURM_NTASKS, "
      "SLURM_PROCID, SLURM_LOCALID): start the processes with srun, one per task"
    )
  if detected is not clusters.SlurmCluster:
    return
  address = clusters.SlurmCluster.get_coordinator_address(None, os.environ.get("JAX_COORDINATOR_PORT"))
  host = address.rsplit(":", 1)[0]
  try:
    socket.getaddrinfo(host, None)
  except OSError as error:
    raise RuntimeError(
      f"jax.distributed's coordinator is the job's first node, {host!r}, but that name does not resolve on "
      f"{socket.gethostname()} ({error}); make node names resolve (DNS or /etc/hosts), or set "
      "JAX_COORDINATOR_ADDRESS=IP:PORT of the first node in the job"
    ) from None


def make_mesh(num_devices: int | None = None) -> jax.sharding.Mesh:
  devices = jax.devices()
  count = num_devices or len(devices)
  if count > len(devices):
    raise ValueError(f"asked for {count} devices, only {len(devices)} available")
  # Auto axes: plain data parallelism; jit propagates the batch sharding (0.10 defaults to Explicit).
  return jax.make_mesh((count,), (DATA_AXIS,), axis_types=(AxisType.Auto,), devices=devices[:count])


def replicated(mesh) -> NamedSharding:
  return NamedSharding(mesh, PartitionSpec())


def batch_sharding(mesh) -> NamedSharding:
  return NamedSharding(mesh, PartitionSpec(DATA_AXIS))


def replicate(tree, mesh):
  return jax.device_put(tree, replicated(mesh))


def shard_batch(batch: dict, mesh) -> dict:
  """Host numpy batch (this process's rows) -> global jax arrays sharded over the data axis."""
  sharding = batch_sharding(mesh)
  if jax.process_count() == 1:
    return jax.device_put(batch, sharding)
  return {key: jax.make_array_from_process_local_data(sharding, np.asarray(value)) for key, value in batch.items()}


def prefetch_to_device(
  batches: Iterable[dict], mesh, size: int = 2, keys: Sequence[str] | None = None
) -> Iterator[dict]:
  """`shard_batch` of each host batch of `batches`, transferred `size` batches ahead.

  When batch i is handed out, batches i+1 .. i+size-1 are already on their way to the devices
  (`jax.device_put` is asynchronous); batch i+size is read and sent when the consumer asks for
  the next batch, i.e. right after it dispatched its (asynchronous) step on batch i. So on an
  accelerator the host input pipeline and the host-to-device copy of the next batch overlap the
  running step, and step i+1 never waits for its input. `keys`: keep only these entries of each
  batch (e.g. drop a host-only "mask"). Batches come out in order with the values of
  `shard_batch`; `size=1` transfers nothing ahead.
  """
  if isinstance(size, bool) or not isinstance(size, int) or size < 1:
    raise ValueError(f"prefetch size must be an int >= 1, got {size!r}")
  iterator = iter(batches)
  queue = collections.deque()

  def enqueue(n):
    for batch in itertools.islice(iterator, n):
      queue.append(shard_batch(batch if keys is None else {k: batch[k] for k in keys}, mesh))

  enqueue(size)
  while queue:
    yield queue.popleft()
    # Runs when the consumer asks for the next batch, i.e. after it dispatched its (async) step.
    enqueue(1)


def check_batch_size(global_batch_size: int, mesh) -> None:
  devices = mesh.devices.size
  if global_batch_size % devices:
    raise ValueError(f"batch size {global_batch_size} is not divisible by the {devices} devices of the mesh")


def shard_global_batch(batch: dict, mesh) -> dict:
  """A batch that every process holds in full (evaluation data) -> global arrays sharded over the
  data axis; each process places only the rows of its own devices."""
  sharding = batch_sharding(mesh)
  if jax.process_count() == 1:
    return jax.device_put(batch, sharding)
  return {
    key: jax.make_array_from_callback(np.shape(value), sharding, lambda index, v=np.asarray(value): v[index])
    for key, value in batch.items()
  }


def fetch(tree):
  """Host numpy copy of arrays that may span several processes, on every process."""
  if jax.process_count() == 1:
    return jax.device_get(tree)
  from jax.experimental import multihost_utils  # multi-host only

  return multihost_utils.process_allgather(tree, tiled=True)
