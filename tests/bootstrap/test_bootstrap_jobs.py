"""Resumable shards: kills at any moment, restarts, ranks, merges, settings fingerprints."""

from __future__ import annotations

import json
import os
import signal
import subprocess
import sys
import time
from pathlib import Path

import pytest
from bootstrap_helpers import read_rows, record, write_jsonl

from bpo.data.records import Record
from bpo.errors import BpoError, RecordError
from bpo.jobs import Outcome, errors_path, fail, merge_shards, record_row, run_job, shard_path

REPO = Path(__file__).resolve().parents[2]


def _records(n=10):
    return [Record.from_dict(record(f"id{i}", None, f"question {i}")) for i in range(n)]


def _data(tmp_path, recs):
    return write_jsonl(tmp_path / "in.jsonl", [r.to_dict() for r in recs])


class Fake:
    """A generator stand-in: one negative per record, optional failures and a simulated crash."""

    def __init__(self, fail_ids=(), crash_on_call=None):
        self.seen: list[str] = []
        self.calls = 0
        self.fail_ids, self.crash_on_call = set(fail_ids), crash_on_call

    def __call__(self, chunk):
        self.calls += 1
        if self.calls == self.crash_on_call:
            raise KeyboardInterrupt  # what a kill looks like to everything already written
        self.seen += [r.id for r in chunk]
        from bpo.data.records import Negative

        return [fail(r, "scripted failure") if r.id in self.fail_ids
                else Outcome(r.id, row=record_row(r, [Negative(f"neg {r.id}", "self")])) for r in chunk]


def _run(recs, data, out, fake, **kw):
    kw.setdefault("fingerprint", {"generator": "fake"})
    return run_job(recs, fake, out=out, data=data, chunk_size=3, progress=False, **kw)


def _ids(path):
    return [r["id"] for r in read_rows(path)]


def test_resume_after_truncated_shard_gives_each_id_once(tmp_path):
    recs = _records(10)
    data, out = _data(tmp_path, recs), tmp_path / "out.jsonl"
    _run(recs, data, out, Fake())
    shard = shard_path(out, 0)
    lines = shard.read_bytes().split(b"\n")
    # A kill in the middle of writing row 7: six full rows and half of the seventh.
    shard.write_bytes(b"\n".join(lines[:6]) + b"\n" + lines[6][: len(lines[6]) // 2])
    out.unlink()
    again = Fake()
    summary = _run(recs, data, out, again)
    assert again.seen == [f"id{i}" for i in range(6, 10)]
    assert summary.resumed == 6 and summary.written == 4 and summary.merged == 10
    assert _ids(out) == [r.id for r in recs]
    assert _ids(shard) == [r.id for r in recs]  # the partial line was dropped, nothing duplicated
    assert all(row["rejected"][-1]["text"] == f"neg {row['id']}" for row in read_rows(out))


def test_crash_mid_job_then_restart(tmp_path):
    recs = _records(10)
    data, out = _data(tmp_path, recs), tmp_path / "out.jsonl"
    with pytest.raises(KeyboardInterrupt):
        _run(recs, data, out, Fake(crash_on_call=3))
    assert _ids(shard_path(out, 0)) == [f"id{i}" for i in range(6)]  # two chunks of 3 were saved
    again = Fake()
    _run(recs, data, out, again)
    assert again.seen == [f"id{i}" for i in range(6, 10)]
    assert _ids(out) == [r.id for r in recs]


def test_on_error_raise_keeps_what_was_written_and_skip_counts(tmp_path):
    recs = _records(5)
    data, out = _data(tmp_path, recs), tmp_path / "out.jsonl"
    with pytest.raises(RecordError, match="id1.*scripted failure"):
        _run(recs, data, out, Fake(fail_ids={"id1"}), on_error="raise")
    assert _ids(shard_path(out, 0)) == ["id0", "id2"]  # the good rows of the chunk are kept
    summary = _run(recs, data, out, Fake(fail_ids={"id1"}), on_error="skip")
    assert len(summary.errors) == 1 and summary.missing == 1
    assert _ids(out) == ["id0", "id2", "id3", "id4"]
    assert [e["id"] for e in read_rows(errors_path(out))] == ["id1"]
    fixed = Fake()
    _run(recs, data, out, fixed)  # re-running retries exactly the failed record
    assert fixed.seen == ["id1"]
    assert _ids(out) == [r.id for r in recs] and not errors_path(out).exists()


def test_ranks_write_their_own_shards_and_merge_dedupes(tmp_path):
    recs = _records(7)
    data, out = _data(tmp_path, recs), tmp_path / "out.jsonl"
    r1 = Fake()
    _run(recs, data, out, r1, rank=1, world=2, merge=False)
    assert r1.seen == ["id1", "id3", "id5"]
    r0 = Fake()
    _run(recs, data, out, r0, rank=0, world=2)
    assert r0.seen == ["id0", "id2", "id4", "id6"]
    assert _ids(out) == [r.id for r in recs]
    # A duplicated row (e.g. the same rank run twice by hand into two shards) is merged once.
    with open(shard_path(out, 2), "w") as fh:
        fh.write(json.dumps({**read_rows(out)[3], "rejected": []}) + "\n")
    n, missing = merge_shards(data, out)
    assert (n, missing) == (7, 0) and _ids(out) == [r.id for r in recs]
    assert read_rows(out)[3]["rejected"]  # the first row per id wins (shard order)


def test_other_settings_are_refused_on_resume(tmp_path):
    recs = _records(3)
    data, out = _data(tmp_path, recs), tmp_path / "out.jsonl"
    _run(recs, data, out, Fake(), fingerprint={"generator": "fake", "seed": 0})
    with pytest.raises(BpoError, match="different settings .*seed"):
        _run(recs, data, out, Fake(), fingerprint={"generator": "fake", "seed": 1})
    _run(recs, data, out, Fake(), fingerprint={"generator": "fake", "seed": 0})  # same settings: fine


def test_shards_of_older_versions_resume_without_a_weights_identity(tmp_path, capsys):
    """Shards written before jobs recorded ``model_files`` resume on the path alone, once; from then on the
    identity is recorded and other weights are refused."""
    recs = _records(3)
    data, out = _data(tmp_path, recs), tmp_path / "out.jsonl"
    _run(recs, data, out, Fake(), fingerprint={"generator": "fake", "model": "m"})
    _run(recs, data, out, Fake(), fingerprint={"generator": "fake", "model": "m", "model_files": "aaa"})
    assert "do not record model_files" in capsys.readouterr().err
    with pytest.raises(BpoError, match="different settings .*model_files"):
        _run(recs, data, out, Fake(), fingerprint={"generator": "fake", "model": "m", "model_files": "bbb"})


def test_kill_dash_nine_then_rerun(tmp_path, tiny_llava, image_root):
    """A real ``kill -9`` of ``bpo bootstrap self`` mid-run; the same command finishes the job."""
    from bpo.cli import main

    rows = [record(f"k{i}", f"{i % 6}.png", "Describe the image in detail " + "please " * (i % 4))
            for i in range(24)]
    data = write_jsonl(tmp_path / "in.jsonl", rows)
    out = tmp_path / "out.jsonl"
    argv = ["bootstrap", "self", "--model", tiny_llava, "--data", data, "--image-root", image_root, "--out",
            str(out), "--batch-size", "1", "--max-new-tokens", "24", "--no-progress"]
    env = dict(os.environ, PYTHONPATH=str(REPO))
    proc = subprocess.Popen([sys.executable, "-m", "bpo", *argv], cwd=REPO, env=env,
                            stdout=subprocess.DEVNULL, stderr=subprocess.DEVNULL)
    shard = shard_path(out, 0)
    deadline = time.time() + 120
    while time.time() < deadline and proc.poll() is None:
        if shard.exists() and shard.read_bytes().count(b"\n") >= 1:
            break
        time.sleep(0.02)
    os.kill(proc.pid, signal.SIGKILL)
    proc.wait()
    before = shard.read_bytes().count(b"\n")
    assert 1 <= before < 24, "the job must be killed part-way"
    assert not out.exists()
    assert main(argv) == 0
    assert _ids(out) == [r["id"] for r in rows]
    assert sorted(_ids(shard)) == sorted(r["id"] for r in rows)  # no id written twice
