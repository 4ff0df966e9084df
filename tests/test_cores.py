from pathlib import Path

import pytest

from banacli.cores import available_cores, cgroup_cpu_limit, threads_per_worker


def test_cgroup_v2_quota(tmp_path: Path):
    (tmp_path / "cpu.max").write_text("150000 100000\n")
    assert cgroup_cpu_limit(tmp_path) == pytest.approx(1.5)
    (tmp_path / "cpu.max").write_text("max 100000\n")
    assert cgroup_cpu_limit(tmp_path) is None


def test_cgroup_v1_quota(tmp_path: Path):
    (tmp_path / "cpu").mkdir()
    (tmp_path / "cpu" / "cpu.cfs_quota_us").write_text("50000")
    (tmp_path / "cpu" / "cpu.cfs_period_us").write_text("100000")
    assert cgroup_cpu_limit(tmp_path) == pytest.approx(0.5)
    (tmp_path / "cpu" / "cpu.cfs_quota_us").write_text("-1")
    assert cgroup_cpu_limit(tmp_path) is None


def test_available_cores_takes_the_smallest_limit(tmp_path: Path, monkeypatch):
    monkeypatch.setattr("os.sched_getaffinity", lambda pid: {0, 1, 2, 3, 4, 5, 6, 7})
    monkeypatch.delenv("OMP_NUM_THREADS", raising=False)
    assert available_cores(cgroup_root=tmp_path) == 8  # no cgroup files: affinity only
    (tmp_path / "cpu.max").write_text("250000 100000")
    assert available_cores(cgroup_root=tmp_path) == 3  # 2.5 cores of quota, rounded up
    monkeypatch.setenv("OMP_NUM_THREADS", "2")
    assert available_cores(cgroup_root=tmp_path) == 2
    monkeypatch.setenv("OMP_NUM_THREADS", "junk")
    assert available_cores(cgroup_root=tmp_path) == 3


def test_threads_per_worker_never_oversubscribes():
    assert threads_per_worker(1, cores=8) == 8
    assert threads_per_worker(3, cores=8) == 2
    assert threads_per_worker(16, cores=2) == 1
    for w in range(1, 10):
        assert w * threads_per_worker(w, cores=8) <= max(8, w)
