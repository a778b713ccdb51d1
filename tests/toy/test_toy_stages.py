"""run_seeds: seeds in worker processes give what a sequential run gives, in seed order."""

import os

from bpo.toy.stages import default_jobs, run_seeds


class Probe:
    """Stands in for a demo's seed run: its result depends on the seed and the torch threads it was given."""

    def __init__(self, cfg, out, seed, log, run_command):
        self.cfg, self.seed, self.run_command = cfg, seed, run_command

    def run(self) -> dict:
        import torch

        torch.manual_seed(self.seed)
        return {"seed": self.seed, "draw": torch.rand(3).tolist(), "cfg": self.cfg, "pid": os.getpid(),
                "threads": torch.get_num_threads(), "command": self.run_command(["x"])}


def fake_command(argv):
    return len(argv)


def test_parallel_seeds_equal_sequential_ones(tmp_path):
    seq = run_seeds(Probe, {"k": 1}, tmp_path, [3, 1, 2], print, fake_command, jobs=1)
    par = run_seeds(Probe, {"k": 1}, tmp_path, [3, 1, 2], print, fake_command, jobs=2, threads=1)
    strip = [{k: v for k, v in r.items() if k not in ("pid", "threads")} for r in par]
    assert strip == [{k: v for k, v in r.items() if k not in ("pid", "threads")} for r in seq]
    assert [r["seed"] for r in par] == [3, 1, 2]  # seed order, whatever finished first
    assert all(r["pid"] != os.getpid() and r["threads"] == 1 for r in par)
    assert all(r["pid"] == os.getpid() for r in seq)


def test_default_jobs_fill_the_cores_and_never_exceed_the_seeds(monkeypatch):
    monkeypatch.setattr(os, "cpu_count", lambda: 8)
    assert default_jobs(5, 1) == 5 and default_jobs(20, 1) == 8 and default_jobs(20, 2) == 4
    assert default_jobs(1, 1) == 1 and default_jobs(3, 16) == 1
