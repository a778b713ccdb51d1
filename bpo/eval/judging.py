"""The one judging engine: versioned template, strict parse, retries with backoff, one keyed reply cache.

Every model-judged number in ``bpo eval`` goes through :class:`Grader`: the safety verdicts
(:class:`bpo.eval.judges.ModelJudge`), MM-Vet and LLaVA-Bench grades, pairwise answers, VLGuard
helpfulness and the LLM-listed CHAIR objects. A grader renders a template with named fields
(``$question``, ``$answer`` ...), asks a backend (``_complete(prompt) -> str``: the OpenAI-compatible
``llm`` or the local ``hf`` transport of :mod:`bpo.eval.judge_backends`), parses the reply with the
task's *strict* parser and retries. A reply the parser rejects is ``unknown``: retried, then kept as
``unknown`` and reported by the caller, never turned into a score (MM-Vet's reference grader turns it
into 0.0; MM-SafetyBench's counts it as safe).

The cache is one JSONL file of ``{"key", "raw", "parsed", "template", "judge", "model", ...}`` rows
(default ``$BPO_HOME/judge/grades.jsonl``). It stores the raw reply, not the parsed value, so a parser
fix applies to cached replies too; the value is re-parsed on every hit. The key is a SHA-256 of the
template (version and text hash), backend kind, model, decoding settings, the rendered fields and the
sample index, so several samples per item (``samples > 1``, MM-Vet's "average of several GPT-4 runs")
are separate entries and a rerun with more samples only asks for the new ones. HTTP judges cache
parsed replies only (a malformed reply may be transient); deterministic backends (``hf``: greedy)
also cache unparsed ones and default to no retries, since they would repeat themselves. A backend
that answers many prompts at once (the pairwise policy judge, which batches images) plugs in with
``complete_many`` and its own ``request_key``; the cache, chunked resume and counts stay the engine's.

:class:`JudgeSection` is the judge's options, declared once for every ``bpo eval`` subcommand.
"""

from __future__ import annotations

import os
import string
import threading
import time
from collections.abc import Callable, Iterable, Mapping
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any

from bpo.config import option
from bpo.errors import BpoError
from bpo.io import KeyedJsonlCache, read_text, stable_hash
from bpo.paths import cache_dir, package_file

TEMPLATE_DIR = ("eval", "templates")


class TransientError(Exception):
    """A judge call failed in a way worth retrying (timeout, connection, rate limit, 5xx)."""


# ---- templates ------------------------------------------------------------------------------------------
@dataclass(frozen=True)
class Template:
    """A prompt with ``$field`` placeholders; ``version`` is the file stem (``mmvet_grade_v1``)."""

    version: str
    text: str
    fields: tuple[str, ...]

    @property
    def sha256(self) -> str:
        return stable_hash(self.text)

    def render(self, values: Mapping[str, str]) -> str:
        # string.Template does not re-scan substituted values, so "$" inside an answer is harmless.
        return string.Template(self.text).substitute({k: values[k] for k in self.fields})


def _placeholders(text: str) -> set[str]:
    return set(string.Template(text).get_identifiers())


def load_template(name_or_path: str, fields: Iterable[str], *, cls: type = Template, wanted: str = "",
                  what: str = "this template") -> Template:
    """A shipped template by name (``bpo/eval/templates/NAME.txt``) or any text file whose placeholders are
    exactly ``fields``. ``wanted`` words the placeholders in the error (default ``$a, $b``)."""
    want = set(fields)
    path = Path(name_or_path)
    if not path.is_file():
        path = package_file(*TEMPLATE_DIR, f"{name_or_path}.txt")
    if not path.is_file():  # list the shipped templates this task can use
        shipped = sorted(p.stem for p in package_file(*TEMPLATE_DIR).glob("*.txt")
                         if _placeholders(p.read_text(encoding="utf-8")) == want)
        raise BpoError(f"judge template {name_or_path!r} not found (shipped: {', '.join(shipped)}; "
                       "or pass the path of a text file)")
    text = read_text(path, "judge template")
    found = _placeholders(text)
    if found != want:
        wanted = wanted or ", ".join("$" + f for f in sorted(want))
        raise BpoError(f"{path}: {what} needs exactly the placeholders {wanted} (found: "
                       f"{', '.join('$' + f for f in sorted(found)) or 'none'}); write a literal dollar sign as $$")
    return cls(version=path.stem, text=text, fields=tuple(sorted(want)))


# ---- results and the cache ------------------------------------------------------------------------------
@dataclass
class Grade:
    """One parsed judge reply; ``value is None`` means unknown (never a default score)."""

    value: Any = None
    raw: str = ""
    reason: str = ""
    cached: bool = False
    extra: dict = field(default_factory=dict)  # backend-specific audit data (e.g. option log-probs)

    @property
    def known(self) -> bool:
        return self.value is not None

    def to_dict(self) -> dict:
        out = {"value": self.value, "raw": self.raw, "reason": self.reason, "cached": self.cached}
        if self.extra:
            out.update(self.extra)
        return out


@dataclass
class GradeRequest:
    id: str
    fields: dict[str, str]
    context: Any = None  # what a batched backend asks beyond the fields (the policy judge: the prompt record)


class ReplyCache(KeyedJsonlCache):
    """The judges' reply cache: a row counts when it holds a raw reply string.

    Appends are line-atomic, and a partial last line after a crash is skipped.
    """

    def keep(self, row: dict) -> bool:
        return isinstance(row.get("raw"), str)


def default_cache_path() -> Path:
    return cache_dir("judge") / "grades.jsonl"


def open_cache(path: str | os.PathLike | None, use: bool = True) -> ReplyCache | None:
    return ReplyCache(path or default_cache_path()) if use else None


def cached_grade(cache: ReplyCache | None, key: str, parse: Callable[[str], Any], *, keep_unparsed: bool,
                 extra: tuple[str, ...] = ()) -> Grade | None:
    """The cached grade for ``key`` (re-parsed), or None when it must be asked (again)."""
    hit = cache.get(key) if cache is not None else None
    if hit is None:
        return None
    value = parse(hit["raw"])
    if value is None and not keep_unparsed:
        return None  # an HTTP judge's malformed reply may be transient: ask again
    return Grade(value, hit["raw"], "cached", cached=True, extra={k: hit[k] for k in extra if k in hit})


# ---- backends ---------------------------------------------------------------------------------------------
def backend_settings(backend) -> dict:
    """The decoding settings that change a reply, for cache keys and reports."""
    return {"temperature": getattr(backend, "temperature", 0.0),
            "max_tokens": getattr(backend, "max_tokens", None) or getattr(backend, "max_new_tokens", None)}


def describe_backend(backend) -> dict:
    out = {"judge": backend.name, "model": backend.model_id, **backend_settings(backend)}
    for attr in ("base_url", "api_key_env", "timeout", "device"):
        if hasattr(backend, attr):
            out[attr] = getattr(backend, attr)
    return out


# ---- the grader -------------------------------------------------------------------------------------------
class Grader:
    """Render, ask, parse strictly, retry, cache; ``samples`` replies per request.

    ``parse(raw) -> value | None`` must never raise and must return ``None`` for anything that is not
    exactly the requested format. ``audit(grade) -> dict`` adds fields to a cached row (the safety judge
    writes its verdict there, so the file reads without re-parsing).
    """

    def __init__(self, backend, template: Template, parse: Callable[[str], Any], *, samples: int = 1,
                 retries: int | None = None, backoff: float = 1.0, workers: int = 1,
                 cache: str | os.PathLike | None = None, use_cache: bool = True,
                 audit: Callable[[Grade], dict] | None = None):
        deterministic = bool(getattr(backend, "cache_unparsed", False))
        if samples < 1:
            raise BpoError(f"--judge-samples must be >= 1, not {samples}")
        if samples > 1 and deterministic:
            raise BpoError(f"the {backend.name} judge decodes greedily, so extra samples would repeat the first; "
                           "use --judge-samples 1 (or an llm judge with --judge-temperature > 0)")
        retries = (0 if deterministic else 3) if retries is None else retries
        if retries < 0 or backoff < 0 or workers < 1:
            raise BpoError("judge retries and backoff must be >= 0 and workers >= 1")
        self.backend, self.template, self.parse, self.audit = backend, template, parse, audit
        self.samples, self.retries, self.backoff, self.workers = samples, retries, backoff, workers
        self.cache_unparsed = deterministic
        self.cache = open_cache(cache, use_cache)
        self.calls = 0  # completions requested (cache hits excluded)
        self._lock = threading.Lock()

    def key(self, fields: Mapping[str, str], sample: int) -> str:
        return stable_hash({"template": self.template.version, "template_sha256": self.template.sha256,
                            "judge": self.backend.name, "model": self.backend.model_id,
                            "settings": backend_settings(self.backend),
                            "fields": {k: fields[k] for k in self.template.fields}, "sample": sample})

    def _ask(self, prompt: str) -> tuple[Grade, bool]:
        """The grade and whether the backend replied at all (transport errors only: not cached)."""
        last, replied = "", False
        for attempt in range(self.retries + 1):
            if attempt:
                time.sleep(self.backoff * 2 ** (attempt - 1))
            with self._lock:
                self.calls += 1
            try:
                raw = self.backend._complete(prompt)
            except TransientError as exc:
                last = f"error: {exc}"
                continue
            replied = True
            value = self.parse(raw)
            if value is not None:
                return Grade(value, raw, f"parsed (attempt {attempt + 1})"), True
            last = raw
        return Grade(None, last[:2000], f"no valid reply after {self.retries + 1} attempt(s)"), replied

    def _store(self, key: str, grade: Grade) -> None:
        if self.cache is not None:
            self.cache.put(key, {"raw": grade.raw, "parsed": grade.known, "template": self.template.version,
                                 "judge": self.backend.name, "model": self.backend.model_id, **grade.extra,
                                 **(self.audit(grade) if self.audit else {})})

    def _grade_uncached(self, fields: Mapping[str, str], key: str) -> Grade:
        grade, replied = self._ask(self.template.render(fields))
        if replied and (grade.known or self.cache_unparsed):
            self._store(key, grade)
        return grade

    def _grade_batched(self, requests: list[GradeRequest], todo: list, out: list, bar) -> None:
        """A backend that answers many requests at once (``complete_many(requests) -> [(raw, extra)]``; the policy
        judge batches images). It is deterministic, so every answer is cached, chunk by chunk (``backend.chunk``
        bounds the memory held by image tensors), and a killed run resumes where it stopped."""
        size = getattr(self.backend, "chunk", 16)
        for start in range(0, len(todo), size):
            part = todo[start:start + size]
            replies = self.backend.complete_many([requests[i] for i, _, _, _ in part])
            with self._lock:
                self.calls += len(part)
            for (i, k, _, key), (raw, extra) in zip(part, replies):
                out[i][k] = Grade(self.parse(raw), raw, getattr(self.backend, "mode", "batched"), extra=extra)
                self._store(key, out[i][k])
            bar.update(len(part))

    def grade(self, requests: list[GradeRequest], desc: str = "judge") -> list[list[Grade]]:
        """``out[i][k]``: the grade of request ``i``, sample ``k``, in request order."""
        from tqdm import tqdm

        out: list[list[Grade | None]] = [[None] * self.samples for _ in requests]
        own_key = getattr(self.backend, "request_key", None)  # a backend whose prompt is more than the fields
        kept = getattr(self.backend, "cached_extra", ())  # audit fields a cache hit restores (option log-probs)
        todo = []
        for i, req in enumerate(requests):
            for k in range(self.samples):
                key = own_key(req) if own_key is not None else self.key(req.fields, k)
                hit = cached_grade(self.cache, key, self.parse, keep_unparsed=self.cache_unparsed, extra=kept)
                if hit is not None:
                    out[i][k] = hit
                else:
                    todo.append((i, k, req.fields, key))
        bar = tqdm(total=len(todo), desc=f"{desc} ({self.backend.name})", unit="call", disable=None)
        try:
            if hasattr(self.backend, "complete_many"):
                self._grade_batched(requests, todo, out, bar)
            elif self.workers == 1 or len(todo) <= 1:
                for i, k, fields, key in todo:
                    out[i][k] = self._grade_uncached(fields, key)
                    bar.update()
            else:
                from concurrent.futures import ThreadPoolExecutor

                with ThreadPoolExecutor(self.workers) as pool:
                    futures = {pool.submit(self._grade_uncached, f, key): (i, k) for i, k, f, key in todo}
                    for fut, (i, k) in futures.items():
                        out[i][k] = fut.result()
                        bar.update()
        finally:
            bar.close()
        return out  # type: ignore[return-value]

    def describe(self) -> dict:
        return {**describe_backend(self.backend), "template": self.template.version,
                "template_sha256": self.template.sha256, "samples": self.samples, "retries": self.retries,
                "cache": str(self.cache.path) if self.cache is not None else None}

    def close(self) -> None:
        if self.cache is not None:
            self.cache.close()


def grade_counts(grader, grades: list[list[Grade]]) -> dict:
    """Counts every report of a judged run carries: replies, cache hits, calls, unknown replies."""
    flat = [g for row in grades for g in row]
    return {"judge_replies": len(flat), "cache_hits": sum(g.cached for g in flat),
            "judge_calls": grader.calls, "unknown_replies": sum(not g.known for g in flat)}


def mean(values: Iterable[float]) -> float | None:
    """Arithmetic mean, ``None`` for no values (a metric over nothing is undefined, not 0)."""
    vals = list(values)
    return sum(vals) / len(vals) if vals else None


# ---- the judge options, declared once for every `bpo eval` subcommand ----------------------------------------
@dataclass
class JudgeSection:
    """``judge.*`` keys (flags ``--judge``, ``--judge-model`` ...). ``template`` and ``max_tokens`` default to
    the task's own (listed in ``--help``); ``kind`` is checked against the task's judges by the command."""

    kind: str | None = option(None, flag="--judge", metavar="KIND",
                              help="llm: any OpenAI-compatible endpoint; hf: a local causal LM directory "
                                   "(safety also: refusal, rule-based; pairwise also: policy, the VLM itself)")
    model: str | None = option(None, help="llm: served model name; hf/policy: local model directory")
    base_url: str | None = option(None, flag="--base-url",
                                  help="llm: OpenAI-compatible base URL, e.g. http://localhost:8000/v1")
    api_key_env: str = option("OPENAI_API_KEY", flag="--api-key-env",
                              help="llm: name of the environment variable holding the API key")
    template: str | None = option(None, help="shipped template name or a file (default: the task's: safety_judge_v1, "
                                             "mmvet_grade_v1, llavabench_review_v1, chair_objects_v1, "
                                             "pairwise_{safety,quality}_v1 by --criterion, vlguard pairwise_quality_v1)")
    timeout: float = option(60.0, help="llm: seconds per request")
    retries: int | None = option(None, help="retries after a malformed reply or a transport error "
                                            "(default: llm 3, hf 0)")
    backoff: float = option(1.0, help="llm: first retry delay in seconds, doubled each retry")
    workers: int = option(1, help="llm: concurrent requests")
    max_tokens: int | None = option(None, help="longest judge reply in tokens (0: llm sends no limit; default: the "
                                               "task's: safety 16, mmvet 10, llavabench 40, pairwise/vlguard 8, "
                                               "chair 256)")
    device: str = option("auto", help="hf/policy: torch device (auto: cuda if available)")
    cache: str | None = option(None, help="reply cache JSONL (default: $BPO_HOME/judge/grades.jsonl)")
    no_cache: bool = option(False, flag="--no-judge-cache", help="neither read nor write the reply cache")

    def check(self, kinds: Iterable[str], *, required: bool, flag: str = "--judge") -> None:
        """The kind is one of the task's ``kinds`` (and given when ``required``)."""
        kinds = tuple(kinds)
        if self.kind is None:
            if required:
                raise BpoError(f"missing {flag} (one of {', '.join(kinds)})")
        elif self.kind not in kinds:
            raise BpoError(f"{flag} {self.kind!r} is not one of {', '.join(kinds)}")


@dataclass
class SampledJudgeSection(JudgeSection):
    """The judge options plus several samples per item (MM-Vet, LLaVA-Bench)."""

    samples: int = option(1, help="judge replies per item, averaged (llm only)")
    temperature: float = option(0.0, help="llm: sampling temperature of the judge")


def resolve_device(name: str) -> str:
    if name != "auto":
        return name
    import torch

    return "cuda" if torch.cuda.is_available() else "cpu"
