"""Host setup before jax starts: CPU device layout, matmul precision, jax.distributed."""
import logging
import os

import jax

log = logging.getLogger("treadle")
_FORCE_FLAG = "--xla_force_host_platform_device_count"


def configure(cpu_devices: int, matmul_precision: str, coordinator_address: str | None = None,
              num_processes: int | None = None, process_id: int | None = None,
              multihost: bool = False) -> None:
  """Must run before the first jax computation."""
  if _FORCE_FLAG not in os.environ.get("XLA_FLAGS", ""):
    # XLA:CPU leaves cores idle on small ops; one device per core with the batch split
    # over them was the biggest single speed-up measured on CPU hosts.
    jax.config.update("jax_num_cpu_devices", cpu_devices or os.cpu_count() or 1)
  if matmul_precision != "default":
    jax.config.update("jax_default_matmul_precision", matmul_precision)
  _maybe_initialize_distributed(coordinator_address, num_processes, process_id, multihost)


def _maybe_initialize_distributed(coordinator_address, num_processes, process_id, multihost):
  explicit = coordinator_address and num_processes and num_processes > 1
  auto = multihost or int(os.environ.get("SLURM_NTASKS", "1")) > 1
  if explicit:
    jax.distributed.initialize(coordinator_address=coordinator_address,
                               num_processes=num_processes, process_id=process_id)
  elif auto:
    jax.distributed.initialize()  # detects SLURM, TPU pods, Kubernetes, ...
  else:
    return
  log.info("jax.distributed: process %d of %d, %d local / %d global devices",
           jax.process_index(), jax.process_count(), jax.local_device_count(),
           jax.device_count())
