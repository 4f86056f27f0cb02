"""JAX's multi-host runtime: when to call `jax.distributed.initialize()`, and barriers between processes.

`cluster.distributed`: "on" always initialises; "off" never; "auto" initialises when the environment describes
a multi-process job: a coordinator in the config or in `JDISTILL_COORDINATOR` (with `JDISTILL_NUM_PROCESSES`,
`JDISTILL_PROCESS_ID`), a multi-host TPU slice (`TPU_WORKER_HOSTNAMES` with more than one host, or
`MEGASCALE_COORDINATOR_ADDRESS` for multi-slice), or Slurm with more than one task (`SLURM_NTASKS`).
Arguments left unset are detected by JAX itself (TPU metadata, Slurm, Open MPI). On CPU the collectives
go through gloo, so several processes on one machine form one job (how the tests check multi-host runs).
"""

from __future__ import annotations

import os
from collections.abc import Mapping
from typing import Any

import jax

from jdistill.configs.schema import ClusterConfig
from jdistill.errors import UserError

ENV_COORDINATOR, ENV_NUM_PROCESSES, ENV_PROCESS_ID = (
    "JDISTILL_COORDINATOR",
    "JDISTILL_NUM_PROCESSES",
    "JDISTILL_PROCESS_ID",
)


def multi_process_environment(environ: Mapping[str, str] = os.environ) -> bool:
    """Does the environment describe a job of several processes?"""
    if environ.get(ENV_COORDINATOR):
        return True
    hosts = [h for h in environ.get("TPU_WORKER_HOSTNAMES", "").split(",") if h.strip()]
    if len(hosts) > 1 or environ.get("MEGASCALE_COORDINATOR_ADDRESS"):
        return True
    return int(environ.get("SLURM_NTASKS", "1") or 1) > 1


def initialize_arguments(cluster: ClusterConfig, environ: Mapping[str, str] = os.environ) -> dict[str, Any]:
    """Keyword arguments for `jax.distributed.initialize` from the config, then the JDISTILL_* variables."""

    def configured_or_env(value: int | None, variable: str) -> int | None:
        return value if value is not None else _int(environ, variable)

    arguments = {
        "coordinator_address": cluster.coordinator_address or environ.get(ENV_COORDINATOR),
        "num_processes": configured_or_env(cluster.num_processes, ENV_NUM_PROCESSES),
        "process_id": configured_or_env(cluster.process_id, ENV_PROCESS_ID),
    }
    return {key: value for key, value in arguments.items() if value is not None}


def _int(environ: Mapping[str, str], name: str) -> int | None:
    value = environ.get(name)
    if value is None:
        return None
    try:
        return int(value)
    except ValueError:
        raise UserError(f"${name}: expected an integer, got {value!r}") from None


_initialized = False


def maybe_initialize(cluster: ClusterConfig, environ: Mapping[str, str] = os.environ) -> bool:
    """Initialise the multi-host runtime if the config or the environment asks for it; True if it did."""
    global _initialized
    wanted = cluster.distributed == "on" or (
        cluster.distributed == "auto"
        and (cluster.coordinator_address is not None or multi_process_environment(environ))
    )
    if not wanted or _initialized:
        return _initialized
    if environ.get("JAX_PLATFORMS", "").split(",")[0] == "cpu":
        jax.config.update("jax_cpu_collectives_implementation", "gloo")
    try:
        jax.distributed.initialize(**initialize_arguments(cluster, environ))
    except (RuntimeError, ValueError) as error:
        raise UserError(
            f"cluster.distributed: jax.distributed.initialize failed ({str(error).splitlines()[0]})"
        ) from None
    _initialized = True
    return True


def barrier(name: str) -> None:
    """Wait until every process reaches this point (no-op on one process)."""
    if jax.process_count() > 1:
        from jax.experimental import multihost_utils

        multihost_utils.sync_global_devices(name)
