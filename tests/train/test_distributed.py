"""When the multi-host runtime is initialised, and with which arguments."""

import pytest

from jdistill.configs import ClusterConfig
from jdistill.errors import UserError
from jdistill.train import distributed


@pytest.mark.parametrize(
    "environ,expected",
    [
        ({}, False),
        ({"SLURM_NTASKS": "1"}, False),
        ({"SLURM_NTASKS": "16"}, True),
        ({"TPU_WORKER_HOSTNAMES": "10.0.0.2"}, False),
        ({"TPU_WORKER_HOSTNAMES": "10.0.0.2,10.0.0.3"}, True),
        ({"MEGASCALE_COORDINATOR_ADDRESS": "10.0.0.2:8080"}, True),
        ({"JDISTILL_COORDINATOR": "127.0.0.1:1234"}, True),
    ],
)
def test_multi_process_environment(environ, expected):
    assert distributed.multi_process_environment(environ) is expected


def test_config_wins_over_environment_and_unset_arguments_are_left_to_jax():
    environ = {"JDISTILL_COORDINATOR": "10.0.0.1:99", "JDISTILL_NUM_PROCESSES": "4", "JDISTILL_PROCESS_ID": "2"}
    assert distributed.initialize_arguments(ClusterConfig(), environ) == {
        "coordinator_address": "10.0.0.1:99",
        "num_processes": 4,
        "process_id": 2,
    }
    cluster = ClusterConfig(coordinator_address="h:1", num_processes=2, process_id=0)
    assert distributed.initialize_arguments(cluster, environ) == {
        "coordinator_address": "h:1",
        "num_processes": 2,
        "process_id": 0,
    }
    assert distributed.initialize_arguments(ClusterConfig(), {}) == {}


def test_bad_environment_value_is_a_one_line_error():
    with pytest.raises(UserError, match="JDISTILL_NUM_PROCESSES"):
        distributed.initialize_arguments(ClusterConfig(), {"JDISTILL_NUM_PROCESSES": "two"})


def test_single_process_runs_do_not_initialise():
    assert distributed.maybe_initialize(ClusterConfig(distributed="off"), {"SLURM_NTASKS": "8"}) is False
    assert distributed.maybe_initialize(ClusterConfig(), {}) is False
