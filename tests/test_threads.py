"""banacli.threads: torch's thread count for the host (issue 14 item 2)."""

from __future__ import annotations

import pytest

from banacli.errors import ConfigError
from banacli.threads import prepare_openmp_env, wanted_threads


def test_bana_num_threads_wins_over_the_cores():
    assert wanted_threads({"BANA_NUM_THREADS": "3", "OMP_NUM_THREADS": "1"}, cores=1) == (3, "BANA_NUM_THREADS")


def test_otherwise_the_available_cores():
    assert wanted_threads({}, cores=2) == (2, "cores available to this process")
    assert wanted_threads({"OMP_NUM_THREADS": "1"}, cores=1)[1] == "OMP_NUM_THREADS"


@pytest.mark.parametrize("bad", ["0", "-2", "two"])
def test_a_bad_value_is_a_config_error(bad):
    with pytest.raises(ConfigError, match="BANA_NUM_THREADS"):
        wanted_threads({"BANA_NUM_THREADS": bad})


def test_wait_policy_passive_unless_the_user_chose_one():
    env: dict = {}
    prepare_openmp_env(env)
    assert env["OMP_WAIT_POLICY"] == "PASSIVE"
    env = {"OMP_WAIT_POLICY": "ACTIVE"}
    prepare_openmp_env(env)
    assert env["OMP_WAIT_POLICY"] == "ACTIVE"
