"""The demo's results as markdown, written by the demo itself into README.md and docs/toy.md.

``bpo demo ... --write-docs`` replaces the text between ``BEGIN`` and ``END`` markers in both files
with the table and the claims of the run it just finished (from its ``summary.json``), together with
the machine it ran on: a reader who runs the same command sees the same layout, and the numbers
beside a stated CPU, thread count and torch version.
"""

from __future__ import annotations

import json
from pathlib import Path

from bpo.errors import BpoError
from bpo.io import atomic_write
from bpo.toy.claims import claim_line
from bpo.toy.stages import format_table as _format_table
from bpo.toy.stages import machine_line, mean_std, write_outputs

BEGIN = "<!-- bpo-demo-results:begin (written by `bpo demo --write-docs`; edits here are overwritten) -->"
END = "<!-- bpo-demo-results:end -->"
DOCS = ("README.md", "docs/toy.md")


# ---- the results table and report.md ------------------------------------------------------------------------------------------
METRICS = [("CHAIR_s", lambda r: r["chair"]["chair_s"]), ("CHAIR_i", lambda r: r["chair"]["chair_i"]),
           ("recall", lambda r: r["chair"]["recall"]), ("objects", lambda r: r["chair"]["objects_per_response"]),
           ("POPE acc", lambda r: r["pope"]["accuracy"]), ("POPE F1", lambda r: r["pope"]["f1"]),
           ("POPE rand acc", lambda r: r["pope"]["per_split"]["random"]["accuracy"]),
           ("POPE adv acc", lambda r: r["pope"]["per_split"]["adversarial"]["accuracy"]),
           ("POPE adv yes", lambda r: r["pope"]["per_split"]["adversarial"]["yes_ratio"]),
           ("yes partner / far", lambda r: r["existence_prior"]["excess"]),
           ("P(yes) partner / far", lambda r: r["existence_prior"]["p_excess"]),
           ("pull", lambda r: r["pull"]["pull"]), ("parse", lambda r: r["parse_rate"])]


def summarize(seed_results: list[dict]) -> dict:
    names = list(seed_results[0]["results"])
    table = {}
    for name in names:
        table[name] = {}
        for label, get in METRICS:
            vals = []
            for sr in seed_results:
                try:
                    vals.append(get(sr["results"][name]))
                except (KeyError, TypeError):
                    vals.append(None)
            table[name][label] = mean_std(vals)
    return table


def format_table(table: dict) -> str:
    return _format_table(table, [m for m, _ in METRICS])


def write_report(out: Path, cfg, seed_results: list[dict], table: dict, claims: list[dict],
                 wall: float) -> Path:
    lines = ["# bpo demo: Bootstrapped PO in the toy world", "",
             f"Seeds: {', '.join(str(s['seed']) for s in seed_results)}; {cfg.n_eval} {cfg.eval_split} images; "
             f"wall time {wall:.0f}s; {machine_line()}. "
             "Mean ± std over seeds. CHAIR_i / CHAIR_s: lower is better; recall, POPE: higher is better; "
             "*pull* = P(partner | \"a A and a\") with the partner absent from the image (the prior's grip; "
             "lower is better); *parse* = share of captions in the world's grammar.", "",
             format_table(table), "", "## The paper's claims, measured", ""]
    lines += ["Verdicts: 95% paired bootstrap over images (resampled within each seed, averaged over seeds); "
              "holds / fails when the interval excludes the threshold on the claimed / the other side, "
              "otherwise unresolved.", ""]
    for c in claims:
        lines += [f"- {claim_line(c)}"]
    pope_acc = [table[name]["POPE acc"][0] for name in table]
    if all(abs(a - 0.5) <= 0.1 for a in pope_acc if a == a):
        lines += ["", "Note: POPE accuracy is at chance (0.5 +- 0.1) for every model, so the POPE columns carry "
                      "no signal in this run (see docs/toy.md, POPE)."]
    lines += ["", "## Noise sweep of the base model (CHAIR_i of greedy captions per diffusion step)", "",
              "| seed | " + " | ".join(f"t={r['t']}" for r in seed_results[0]["noise"]) + " |",
              "|---|" + "---|" * len(seed_results[0]["noise"])]
    for sr in seed_results:
        lines.append(f"| {sr['seed']} | " + " | ".join(f"{r['chair_i']:.3f}" for r in sr["noise"]) + " |")
    plots = ("Plots: `seed-*/plots/curves/*.png` (log-probs, rewards, margins per source over steps) and "
             "`seed-*/plots/noise/` (probability of the partner's colour vs another absent colour after "
             "\"a A and a\" as the noise step grows, with the answers per step).")
    return write_outputs(out, lines, plots, cfg, seed_results, table, claims, wall)


def results_markdown(summary: dict) -> str:
    """The block written between the markers: command, machine, table, verdicts."""
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
             "yes/no answers, 1 = none, mean over the seeds where far kinds got any yes; P(yes) partner / far: the same "
             "ratio of the mean first-token P(yes), which shows the prior before it flips an answer):", "",
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
