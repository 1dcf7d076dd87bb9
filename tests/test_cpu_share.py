"""Torch's threads fit the CPU share a container really has (a Space sees its host's cores under a quota)."""
import torch

from pmg_core.core import env


def _cgroup(tmp_path, v2=None, v1=None):
    tmp_path.mkdir(parents=True, exist_ok=True)
    if v2 is not None:
        (tmp_path / "cpu.max").write_text(v2)
    if v1 is not None:
        (tmp_path / "cpu").mkdir()
        (tmp_path / "cpu" / "cpu.cfs_quota_us").write_text(str(v1[0]))
        (tmp_path / "cpu" / "cpu.cfs_period_us").write_text(str(v1[1]))
    return tmp_path


def test_quota_is_read_from_cgroup_v2_then_v1_and_unlimited_or_unreadable_is_none(tmp_path):
    assert env.cpu_quota(_cgroup(tmp_path / "a", v2="250000 100000\n")) == 2.5
    assert env.cpu_quota(_cgroup(tmp_path / "b", v2="max 100000\n")) is None
    assert env.cpu_quota(_cgroup(tmp_path / "c", v1=(150000, 100000))) == 1.5
    assert env.cpu_quota(_cgroup(tmp_path / "d", v1=(-1, 100000))) is None
    assert env.cpu_quota(_cgroup(tmp_path / "e", v2="garbage")) is None
    assert env.cpu_quota(tmp_path / "nowhere") is None


def test_usable_cpus_is_the_quota_rounded_down_never_zero_never_above_the_cores(tmp_path):
    cores = env.usable_cpus(tmp_path / "nowhere")
    assert cores >= 1
    for name, quota, expected in (("half", "50000 100000", 1), ("huge", "99900000 100000", cores)):
        assert env.usable_cpus(_cgroup(tmp_path / name, v2=quota)) == expected


def test_fit_threads_lowers_torch_to_the_quota_unless_omp_num_threads_is_set(tmp_path, monkeypatch):
    before = torch.get_num_threads()
    cgroup = _cgroup(tmp_path, v2="100000 100000")
    try:
        torch.set_num_threads(2)
        monkeypatch.setenv("OMP_NUM_THREADS", "2")
        assert env.fit_threads(cgroup) == 2  # the user's explicit choice stands
        monkeypatch.delenv("OMP_NUM_THREADS")
        assert env.fit_threads(cgroup) == 1 == torch.get_num_threads()
    finally:
        torch.set_num_threads(before)
