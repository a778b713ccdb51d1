"""Per-step training metrics: overall and per negative source, to metrics.jsonl and TensorBoard."""

from __future__ import annotations

import json
import math
import os
from collections import defaultdict

# torch is only needed by StepStats (called with tensors); read_metrics stays import-light for plotting.
from pathlib import Path


class StepStats:
    """Accumulates per-example values over the micro-batches of one optimizer step."""

    def __init__(self):
        self.sums: dict[str, float] = defaultdict(float)
        self.counts: dict[str, int] = defaultdict(int)

    def add(self, key: str, values) -> None:
        values = values.detach().float().flatten()
        if values.numel():
            self.sums[key] += float(values.sum())
            self.counts[key] += int(values.numel())

    def add_preference(self, chosen_rewards, rejected_rewards, valid, sources: list[list[str]],
                       policy_chosen, policy_rejected) -> None:
        """Rewards, margins and accuracy overall and per source (``sources[b][k]`` names negative k)."""
        margins = chosen_rewards.unsqueeze(-1) - rejected_rewards
        self.add("rewards/chosen", chosen_rewards)
        self.add("logps/chosen", policy_chosen)
        self.add("rewards/rejected", rejected_rewards[valid])
        self.add("logps/rejected", policy_rejected[valid])
        self.add("rewards/margins", margins[valid])
        self.add("rewards/accuracies", (margins[valid] > 0).float())
        for b, srcs in enumerate(sources):
            for k, src in enumerate(srcs):
                if not valid[b, k]:
                    continue
                self.add(f"rewards/rejected/{src}", rejected_rewards[b, k:k + 1])
                self.add(f"logps/rejected/{src}", policy_rejected[b, k:k + 1])
                self.add(f"rewards/margins/{src}", margins[b, k:k + 1])
                self.add(f"rewards/accuracies/{src}", (margins[b, k:k + 1] > 0).float())

    def means(self) -> dict[str, float]:
        return {k: self.sums[k] / self.counts[k] for k in sorted(self.sums) if self.counts[k]}

    def merged(self, gather_object=None) -> StepStats:
        """The stats of every process together (exact means, not means of means), e.g. under DDP.

        ``gather_object`` is accelerate's; keys may differ per process (per-source keys), so sums and
        counts travel as plain dicts.
        """
        if gather_object is None:
            return self
        out = StepStats()
        for sums, counts in gather_object([(dict(self.sums), dict(self.counts))]):
            for k, v in sums.items():
                out.sums[k] += v
                out.counts[k] += counts[k]
        return out


class MetricsLogger:
    """Appends one JSON line per logged step; mirrors scalars to TensorBoard when available."""

    def __init__(self, output_dir: str | os.PathLike, *, tensorboard: bool = True, enabled: bool = True):
        self.path = Path(output_dir) / "metrics.jsonl"
        self.enabled = enabled
        self.writer = None
        if enabled and tensorboard:
            try:
                from torch.utils.tensorboard import SummaryWriter

                self.writer = SummaryWriter(log_dir=str(Path(output_dir) / "tb"))
            except ImportError:  # tensorboard not installed: jsonl only
                self.writer = None

    def truncate_after(self, step: int) -> None:
        """On resume, drop lines logged after the checkpoint so the file has each step once."""
        if not self.enabled or not self.path.exists():
            return
        keep = []
        for line in self.path.read_text(encoding="utf-8").splitlines():
            try:
                if json.loads(line).get("step", 0) <= step:
                    keep.append(line)
            except json.JSONDecodeError:
                break  # a torn last line from a kill
        from bpo.io import atomic_write

        with atomic_write(self.path) as fh:
            fh.write("".join(k + "\n" for k in keep))

    def log(self, step: int, values: dict) -> None:
        if not self.enabled:
            return
        row = {"step": step, **{k: (v if not isinstance(v, float) or math.isfinite(v) else None)
                                for k, v in values.items()}}
        self.path.parent.mkdir(parents=True, exist_ok=True)
        with open(self.path, "a", encoding="utf-8") as fh:
            fh.write(json.dumps(row) + "\n")
        if self.writer is not None:
            for k, v in values.items():
                if isinstance(v, (int, float)):
                    self.writer.add_scalar(k, v, step)

    def close(self) -> None:
        if self.writer is not None:
            self.writer.close()


def read_metrics(path: str | os.PathLike) -> list[dict]:
    rows = []
    with open(path, encoding="utf-8") as fh:
        for line in fh:
            try:
                rows.append(json.loads(line))
            except json.JSONDecodeError:
                break
    return rows
