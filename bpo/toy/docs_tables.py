"""The demo's results as markdown, written by the demo itself into README.md and docs/toy.md.

``bpo demo ... --write-docs`` replaces the text between ``BEGIN`` and ``END`` markers in both files
with the table and the claims of the run it just finished (from its ``summary.json``), together with
the machine it ran on: a reader who runs the same command sees the same layout, and the numbers
beside a stated CPU, thread count and torch version.
"""

from __future__ import annotations

import json
import platform
from pathlib import Path

from bpo.errors import BpoError

BEGIN = "<!-- bpo-demo-results:begin (written by `bpo demo --write-docs`; edits here are overwritten) -->"
END = "<!-- bpo-demo-results:end -->"
DOCS = ("README.md", "docs/toy.md")


def machine_info() -> dict:
    import torch

    cpu = platform.processor() or platform.machine()
    try:
        for line in Path("/proc/cpuinfo").read_text().splitlines():
            if line.startswith("model name"):
                cpu = line.split(":", 1)[1].strip()
                break
    except OSError:
        pass
    import os

    return {"cpu": cpu, "cores": os.cpu_count(), "torch_threads": torch.get_num_threads(), "torch": torch.__version__}


def machine_line(info: dict | None = None) -> str:
    m = info or machine_info()
    return f"{m['cpu']}, {m['cores']} cores, {m['torch_threads']} torch threads, torch {m['torch']}"


def results_markdown(summary: dict) -> str:
    """The block written between the markers: command, machine, table, verdicts."""
    from bpo.toy.claims import claim_line
    from bpo.toy.pipeline import format_table

    cfg = summary["config"]
    seeds = [s["seed"] for s in summary["seeds"]]
    lines = [f"Command: `{summary.get('command', 'bpo demo')}`; seeds {', '.join(map(str, seeds))}, "
             f"{cfg['n_eval']} eval images per seed, wall time {summary['wall_s']:.0f} s on "
             f"{machine_line(summary['machine'])}. Another CPU or thread count gives other training "
             "trajectories (floating-point reduction order differs), so other numbers: compare the verdicts, "
             "not the digits.", "",
             "Mean ± std over seeds (CHAIR / pull: lower is better; POPE rand / adv acc: random / adversarial split "
             "accuracy; POPE adv yes: yes-ratio on the adversarial split; yes partner / far: first-token false-yes rate on "
             "absent partners of present objects / on absent kinds as far from every present object, the prior in the "
             "yes/no answers, 1 = none):", "",
             format_table(summary["table"]), "",
             "Verdicts (95% paired bootstrap over images, resampled within each seed and averaged over seeds; holds / "
             "fails when the interval excludes the threshold on the claimed / the other side, else unresolved):", ""]
    lines += [f"- {claim_line(c)}" for c in summary["claims"]]
    return "\n".join(lines)


def replace_block(text: str, block: str, where: str) -> str:
    if text.count(BEGIN) != 1 or text.count(END) != 1 or text.index(BEGIN) > text.index(END):
        raise BpoError(f"{where}: needs exactly one pair of demo-result markers ({BEGIN} ... {END}); add them "
                       "where the demo's results should go")
    head, rest = text.split(BEGIN)
    _, tail = rest.split(END)
    return f"{head}{BEGIN}\n{block}\n{END}{tail}"


def write_docs(summary_path: str | Path, root: str | Path | None = None) -> list[Path]:
    """Write the results block of ``summary_path`` into README.md and docs/toy.md under ``root`` (the repo)."""
    from bpo.io import atomic_write

    root = Path(root) if root is not None else Path(__file__).resolve().parents[2]
    summary = json.loads(Path(summary_path).read_text())
    block = results_markdown(summary)
    files = [root / f for f in DOCS]
    missing = [str(f) for f in files if not f.is_file()]
    if missing:
        raise BpoError(f"--write-docs: {', '.join(missing)} not found; run it from a source checkout of bpo")
    new = [replace_block(f.read_text(encoding="utf-8"), block, str(f)) for f in files]  # all checked first
    for f, text in zip(files, new):
        with atomic_write(f) as fh:
            fh.write(text)
    return files
