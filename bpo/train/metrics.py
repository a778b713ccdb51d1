"""Per-step training metrics: overall and per negative source, to metrics.jsonl and TensorBoard."""

from __future__ import annotations

import json
import math
import os
from collections import defaultdict

# torch is only needed by StepStats (called with tensors); read_metrics stays import-light for plotting.
from pathlib import Path

from bpo.io import atomic_write, iter_lines


class StepStats:
    """Accumulates per-example values over the micro-batches of one optimizer step.

    Values on an accelerator are summed there and read back in one transfer when the step's means are
    asked for: a ``float()`` per value would block the host on the GPU dozens of times a step (the
    H100 profile in BENCHMARKS.md counted 46 such syncs per step here).
    """

    def __init__(self):
        self.sums: dict[str, float] = defaultdict(float)
        self.counts: dict[str, int] = defaultdict(int)
        self._pending: list[tuple[str, object]] = []  # (key, 0-dim sum tensor on the device)
        self._pending_pref: list[tuple[list, list[list[str]]]] = []  # add_preference calls not yet read back

    def add(self, key: str, values) -> None:
        values = values.detach().float().flatten()
        if values.numel():
            self.counts[key] += int(values.numel())
            if values.device.type == "cpu":
                self.sums[key] += float(values.sum())
            else:
                self._pending.append((key, values.sum()))

    def add_preference(self, chosen_rewards, rejected_rewards, valid, sources: list[list[str]],
                       policy_chosen, policy_rejected) -> None:
        """Rewards, margins and accuracy overall and per source (``sources[b][k]`` names negative k).

        Kept as tensors until the means are read: selecting the valid entries of a device tensor would
        block the host in the middle of the step, before the backward pass is queued.
        """
        parts = [t.detach() for t in (chosen_rewards, rejected_rewards, valid, policy_chosen, policy_rejected)]
        self._pending_pref.append((parts, sources))

    def _flush(self) -> None:
        """Read every pending device value back in one copy, then do the bookkeeping on the CPU."""
        if not (self._pending or self._pending_pref):
            return
        import torch

        tensors = [v.reshape(1) for _, v in self._pending]
        tensors += [t.float().reshape(-1) for parts, _ in self._pending_pref for t in parts]
        chunks = iter(torch.cat([t.to(tensors[0].device) for t in tensors]).cpu().split([t.numel() for t in tensors]))
        for key, _ in self._pending:
            self.sums[key] += float(next(chunks))
        for parts, sources in self._pending_pref:
            self._add_preference_cpu(*(next(chunks).reshape(t.shape) for t in parts), sources)
        self._pending, self._pending_pref = [], []

    def _add_preference_cpu(self, chosen_rewards, rejected_rewards, valid, policy_chosen, policy_rejected,
                            sources) -> None:
        valid = valid.bool()
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
        self._flush()
        return {k: self.sums[k] / self.counts[k] for k in sorted(self.sums) if self.counts[k]}

    def merged(self, gather_object=None) -> StepStats:
        """The stats of every process together (exact means, not means of means), e.g. under DDP.

        ``gather_object`` is accelerate's; keys may differ per process (per-source keys), so sums and
        counts travel as plain dicts.
        """
        self._flush()
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
    for _, line in iter_lines(path, "metrics file"):
        try:
            rows.append(json.loads(line))
        except json.JSONDecodeError:
            break  # a torn last line from a kill
    return rows
