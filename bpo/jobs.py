"""Resumable, data-parallel jobs over records: append-only shards, a settings fingerprint, a merge.

Layout for ``--out OUT.jsonl``::

    OUT.jsonl.job.json            settings of the job (a restart with other settings is refused)
    OUT.jsonl.shard-<rank>.jsonl  append-only rows of rank <rank>, one per finished record
    OUT.jsonl.shard-<rank>.errors.jsonl   records that failed in the last run of that rank
    OUT.jsonl                     the merge: rows deduplicated by id, in input order (atomic write)
    OUT.jsonl.errors.jsonl        failed records that are not in OUT.jsonl (absent when none)

Rank r of a world of size w takes the records at input positions i with ``i % w == r``. A row is
written (one ``write`` + fsync) only when every generation for its record is done, so a job killed
at any moment (even ``kill -9``) leaves at most one partial last line, which the next run drops;
the restart skips the ids already in the shard. The merge keeps the first row per id, so each
input id appears exactly once in OUT. Failed records are not written to the shard: re-running the
same command retries exactly those.
"""

from __future__ import annotations

import json
import os
import re
import sys
import time
from collections.abc import Callable, Sequence
from dataclasses import dataclass, field
from pathlib import Path

from bpo.data.records import Negative, Record, read_records
from bpo.errors import BpoError, RecordError
from bpo.io import AppendOnlyJsonl, read_jsonl, write_json, write_jsonl


@dataclass
class Outcome:
    """What processing one record gave: a row for the shard, or an error."""

    id: str
    row: dict | None = None
    error: RecordError | None = None


@dataclass
class JobSummary:
    out: Path
    assigned: int = 0  # records of this rank
    resumed: int = 0  # already in the shard before this run
    written: int = 0  # rows written by this run
    errors: list[RecordError] = field(default_factory=list)
    merged: int | None = None  # rows in OUT after the merge (rank 0 only)
    missing: int = 0  # input ids not in OUT after the merge
    seconds: float = 0.0

    def line(self, what: str) -> str:
        parts = [f"{what}: {self.written} new, {self.resumed} resumed, {len(self.errors)} failed "
                 f"of {self.assigned} record(s) in {self.seconds:.1f}s"]
        if self.merged is not None:
            parts.append(f"-> {self.out} ({self.merged} row(s)")
            parts[-1] += f", {self.missing} input id(s) missing: see {errors_path(self.out)})" if self.missing else ")"
        return " ".join(parts)


def shard_path(out, rank: int) -> Path:
    return Path(f"{out}.shard-{rank}.jsonl")


def shard_errors_path(out, rank: int) -> Path:
    return Path(f"{out}.shard-{rank}.errors.jsonl")


def errors_path(out) -> Path:
    return Path(f"{out}.errors.jsonl")


def job_path(out) -> Path:
    return Path(f"{out}.job.json")


def shard_files(out, suffix: str = ".jsonl") -> list[Path]:
    out = Path(out)
    pat = re.compile(re.escape(out.name) + r"\.shard-(\d+)" + re.escape(suffix) + "$")
    if not out.parent.is_dir():
        return []
    found = [(int(m.group(1)), out.parent / n) for n in os.listdir(out.parent) if (m := pat.match(n))]
    return [p for _, p in sorted(found)]


def dist_context():
    """``(rank, world, barrier, device)`` from ``accelerate`` (a single process is rank 0 of 1)."""
    import torch
    from accelerate import PartialState

    # Without a GPU, accelerate only sets up a multi-process (gloo) group when told to use the CPU.
    multi_cpu = int(os.environ.get("WORLD_SIZE", "1")) > 1 and not torch.cuda.is_available()
    state = PartialState(cpu=multi_cpu)
    return state.process_index, state.num_processes, state.wait_for_everyone, state.device


def record_row(rec: Record, new: Sequence[Negative] = ()) -> dict:
    """The record as a JSONL row with ``new`` negatives appended (bookkeeping ``_`` meta dropped)."""
    row = rec.to_dict()
    row["rejected"] = row["rejected"] + [n.to_dict() for n in new]
    if "meta" in row:
        row["meta"] = {k: v for k, v in row["meta"].items() if not k.startswith("_")}
        if not row["meta"]:
            del row["meta"]
    return row


def load_input(path, *, on_error: str, limit: int | None = None) -> tuple[list[Record], list[RecordError]]:
    """Read records; with ``on_error='skip'`` malformed ones are returned as errors instead of raised."""
    if on_error not in ("skip", "raise"):
        raise BpoError(f"--on-error must be skip or raise, not {on_error!r}")
    errors: list[RecordError] = []
    records = []
    for rec in read_records(path, on_error=on_error, errors=errors):
        records.append(rec)
        if limit is not None and len(records) >= limit:
            break
    return records, errors


LATER_KEYS = ("model_files", "adapter_files")  # fingerprint keys added after shards of earlier versions exist


def check_fingerprint(out, fingerprint: dict, rank: int) -> None:
    """Refuse to resume shards made with other settings; rank 0 records the settings."""
    path = job_path(out)
    if path.exists() and shard_files(out):
        try:
            old = json.loads(path.read_text(encoding="utf-8"))
        except (OSError, ValueError):
            old = None
        # Shards from before jobs recorded the weights' content carry no such keys: resume them on the path
        # alone (as then), saying so, rather than refuse every older output.
        unrecorded = [k for k in LATER_KEYS if k in fingerprint and old is not None and k not in old]
        if unrecorded and rank == 0:
            print(f"note: {out}: the existing shards do not record {', '.join(unrecorded)}; resuming them on the "
                  "model path alone", file=sys.stderr)
        old = None if old is None else {**old, **{k: fingerprint[k] for k in unrecorded}}
        if old != fingerprint:
            keys = sorted(k for k in set(fingerprint) | set(old or {}) if (old or {}).get(k) != fingerprint.get(k))
            raise BpoError(f"{out}: existing shards were made with different settings ({', '.join(keys)}); "
                           f"use another --out, or delete {out}.shard-*.jsonl and {path} to start over")
    if rank == 0:
        write_json(path, fingerprint)


def run_job(records: list[Record], process: Callable[[list[Record]], list[Outcome]], *, out, data,
            fingerprint: dict, chunk_size: int, on_error: str = "skip", desc: str = "bootstrap",
            progress: bool = True, rank: int = 0, world: int = 1, barrier: Callable[[], None] | None = None,
            merge: bool = True, input_errors: Sequence[RecordError] = (), limit: int | None = None) -> JobSummary:
    """Run ``process`` over this rank's records in chunks, appending one row per finished record.

    ``limit``: ``records`` are only the first N of the input (``--limit``); the merge then expects only
    them, so the records never read are not reported as failures.
    """
    from tqdm.auto import tqdm

    start = time.time()
    summary = JobSummary(out=Path(out))
    if rank == 0:  # every rank read the same file; report its problems once
        summary.errors.extend(input_errors)
        for err in input_errors:
            print(f"failed: {err}", file=sys.stderr)
    check_fingerprint(out, fingerprint, rank)
    mine = [r for i, r in enumerate(records) if i % world == rank]
    summary.assigned = len(mine)
    with AppendOnlyJsonl(shard_path(out, rank)) as shard:
        done = shard.done_ids()
        todo = [r for r in mine if r.id not in done]
        summary.resumed = len(mine) - len(todo)
        bar = tqdm(total=len(mine), initial=summary.resumed, desc=desc, unit="rec", disable=not progress,
                   dynamic_ncols=True)
        try:
            for start_i in range(0, len(todo), chunk_size):
                chunk = todo[start_i:start_i + chunk_size]
                first_error = None
                for outcome in process(chunk):
                    if outcome.error is None:
                        shard.append(outcome.row)
                        summary.written += 1
                    else:
                        summary.errors.append(outcome.error)
                        first_error = first_error or outcome.error
                        tqdm.write(f"failed: {outcome.error}", file=sys.stderr)
                bar.update(len(chunk))
                bar.set_postfix(failed=len(summary.errors))
                if first_error is not None and on_error == "raise":
                    raise first_error
        finally:
            bar.close()
            _write_errors(shard_errors_path(out, rank), summary.errors)
    if barrier is not None:
        barrier()
    if merge and rank == 0:
        expected = None
        if limit is not None:
            expected = {r.id for r in records} | {str(e.record_id) for e in input_errors if e.record_id}
        summary.merged, summary.missing = merge_shards(data, out, expected=expected)
    summary.seconds = time.time() - start
    return summary


def _write_errors(path: Path, errors: list[RecordError]) -> None:
    if errors:
        write_jsonl(path, ({"id": e.record_id, "where": e.where, "reason": e.reason} for e in errors))
    elif path.exists():
        path.unlink()


def merge_shards(data, out, *, expected: set[str] | None = None) -> tuple[int, int]:
    """Write OUT from every shard: first row per id, in the input file's order. Returns (rows, missing).

    ``expected``: the ids this job was given (``--limit``); others are neither written nor missing.
    """
    order: list[str] = []
    seen: set[str] = set()
    for _, obj in read_jsonl(data, skip_bad=True):
        rid = obj.get("id")
        if rid is not None and str(rid) not in seen and (expected is None or str(rid) in expected):
            seen.add(str(rid))
            order.append(str(rid))
    rows: dict[str, dict] = {}
    shards = shard_files(out)
    if not shards:
        raise BpoError(f"no shards {out}.shard-*.jsonl to merge; run the job first")
    for shard in shards:
        for _, row in read_jsonl(shard, skip_bad=True):
            if "id" in row:
                rows.setdefault(str(row["id"]), row)
    n = write_jsonl(out, (rows[i] for i in order if i in rows))
    missing = [i for i in order if i not in rows]
    failed = []
    for rank_errors in shard_files(out, ".errors.jsonl"):
        failed += [e for _, e in read_jsonl(rank_errors, skip_bad=True) if str(e.get("id")) not in rows]
    if missing:
        known = {str(e.get("id")) for e in failed}
        failed += [{"id": i, "where": None, "reason": "not processed (job not finished on its rank?)"}
                   for i in missing if i not in known]
        write_jsonl(errors_path(out), failed)
    elif errors_path(out).exists():
        errors_path(out).unlink()
    return n, len(missing)


def fail(rec: Record, message: str) -> Outcome:
    return Outcome(rec.id, error=RecordError(message, where=rec.meta.get("_where"), record_id=rec.id))
