"""No command may destroy its input: output paths are checked against every input before writing.

Two paths are the same file when they resolve to the same inode (a hard link, a symlink, ``./x`` vs
``x``) or, for a path that does not exist yet, the same real path. The check runs right after the
arguments are parsed, so nothing has been opened for writing when it refuses.

Inputs are found generically: every string argument (or list element) that is not an output and names
an existing file. That way a new ``--gt``/``--vocab``/``--questions`` option is covered without
anyone remembering to list it here.
"""

from __future__ import annotations

import dataclasses
import os
import re
from collections.abc import Iterable
from pathlib import Path

from bpo.errors import BpoError
from bpo.jobs import errors_path, job_path, shard_files

OUTPUT_ARGS = ("out", "details", "report")  # argparse dests that name files a command writes

# Files a resumable job writes beside its --out (bpo.jobs): OUT.job.json, OUT.errors.jsonl,
# OUT.shard-<rank>.jsonl and OUT.shard-<rank>.errors.jsonl.
_JOB_SUFFIX = re.compile(r"\.(job\.json|errors\.jsonl|shard-\d+\.jsonl|shard-\d+\.errors\.jsonl)$")


def same_file(a: str | os.PathLike, b: str | os.PathLike) -> bool:
    """True when ``a`` and ``b`` are one file: same inode if both exist, else the same real path."""
    try:
        if os.path.exists(a) and os.path.exists(b):
            return os.path.samefile(a, b)
    except OSError:
        pass
    return os.path.realpath(a) == os.path.realpath(b)


def _is_job_file_of(path: str, out: str) -> bool:
    """``path`` is one of the resumable-job files bpo writes beside ``out`` (by name, after resolving)."""
    rp, ro = Path(os.path.realpath(path)), Path(os.path.realpath(out))
    if rp.parent != ro.parent or not rp.name.startswith(ro.name):
        return False
    return bool(_JOB_SUFFIX.fullmatch(rp.name[len(ro.name):]))


def _alternative(path: str) -> str:
    p = Path(path)
    suffixes = "".join(p.suffixes) or ""
    stem = p.name[: len(p.name) - len(suffixes)] if suffixes else p.name
    return str(p.with_name(f"{stem}.out{suffixes}"))


def refuse_overwrite(outputs: dict[str, str], inputs: dict[str, str], *, job: Iterable[str] = ()) -> None:
    """Raise :class:`BpoError` if any output (or a job file beside a ``job`` output) is one of ``inputs``.

    ``outputs``/``inputs`` map a label (``--out``) to a path; ``job`` lists output labels that also
    write resumable-job files beside them.
    """
    job = set(job)
    for olabel, out in outputs.items():
        for ilabel, inp in inputs.items():
            clash = same_file(out, inp)
            family = olabel in job and not clash and (_is_job_file_of(inp, out) or _hardlinked_job_file(inp, out))
            if clash or family:
                what = "is the same file as" if clash else "would write its job files over"
                raise BpoError(f"{olabel} {out} {what} the input {ilabel} {inp}; bpo never overwrites its input: "
                               f"write to another path (e.g. {olabel} {_alternative(out)})")


def _hardlinked_job_file(inp: str, out: str) -> bool:
    existing = [job_path(out), errors_path(out), *shard_files(out), *shard_files(out, ".errors.jsonl")]
    return any(f.exists() and same_file(f, inp) for f in existing)


def _strings(value) -> list[str]:
    if isinstance(value, (str, os.PathLike)):
        return [str(value)]
    if isinstance(value, (list, tuple)):
        return [str(v) for v in value if isinstance(v, (str, os.PathLike))]
    return []


def _flat(args, prefix: str = "") -> list[tuple[str, object]]:
    """(key, value) of an argparse namespace or a command config, nested config sections included."""
    out = []
    for key, value in vars(args).items():
        if dataclasses.is_dataclass(value) and not isinstance(value, type):
            out.extend(_flat(value, f"{prefix}{key}_"))
        else:
            out.append((prefix + key, value))
    return out


def check_args(args, *, outputs: Iterable[str] = OUTPUT_ARGS, job: Iterable[str] = (),
               output_dirs: Iterable[str] = ()) -> None:
    """Refuse parsed ``args`` whose output paths resolve to one of their input files.

    ``output_dirs`` are folder outputs (``bpo analyze --out DIR``): such a folder may not be an input file.
    """
    outputs, output_dirs = tuple(outputs), tuple(output_dirs)
    outs = {f"--{k.replace('_', '-')}": str(v) for k in outputs + output_dirs
            if isinstance(v := getattr(args, k, None), (str, os.PathLike)) and str(v)}
    ins: dict[str, str] = {}
    for key, value in _flat(args):
        if key in outputs or key in output_dirs:
            continue
        for s in _strings(value):
            if s and os.path.isfile(s):
                ins.setdefault(s, f"--{key.replace('_', '-')}")
    refuse_overwrite(outs, {label: path for path, label in _label_unique(ins)},
                     job=[f"--{k.replace('_', '-')}" for k in job])


def _label_unique(ins: dict[str, str]) -> list[tuple[str, str]]:
    # refuse_overwrite takes {label: path}; two inputs of one list option (compare A B) need distinct labels.
    seen: dict[str, int] = {}
    out = []
    for path, label in ins.items():
        n = seen.get(label, 0)
        seen[label] = n + 1
        out.append((path, label if n == 0 else f"{label}[{n}]"))
    return out


# Files ``bpo train`` writes inside run.output_dir (bpo.train.trainer / metrics / checkpoint).
TRAIN_OUTPUT_NAMES = ("metrics.jsonl", "config.yaml", "dropped.txt", "result.json", "adapter", "merged", "model",
                      "tb")


def check_train_paths(train: str, output_dir: str, extra_inputs: dict[str, str] | None = None) -> None:
    """``run.output_dir`` may not be ``data.train`` (or another input file), nor hold it where training writes."""
    inputs = {"data.train": train, **{k: v for k, v in (extra_inputs or {}).items() if v}}
    for label, path in inputs.items():
        if not path:
            continue
        if same_file(output_dir, path) or os.path.isfile(output_dir):
            what = f"the input {label}" if same_file(output_dir, path) else "a file"
            raise BpoError(f"run.output_dir {output_dir} is {what}; run.output_dir must be a folder that is not "
                           f"an input: pass e.g. run.output_dir={Path(output_dir).with_suffix('')}_run")
        rel = os.path.relpath(os.path.realpath(path), os.path.realpath(output_dir))
        top = rel.split(os.sep)[0]
        if not rel.startswith("..") and (top in TRAIN_OUTPUT_NAMES or top.startswith("checkpoint-")):
            raise BpoError(f"{label} {path} lies where training writes its outputs (run.output_dir {output_dir}); "
                           "move the input or pass another run.output_dir")
