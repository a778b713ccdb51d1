"""The engine behind the model-graded benchmarks: MM-Vet, LLaVA-Bench, pairwise accuracy, LLM objects.

A :class:`Grader` renders a versioned template with named fields (``$question``, ``$answer`` ...),
asks a completion backend, parses the reply with the task's *strict* parser, retries, and caches
every reply by content hash. A reply the parser rejects is ``unknown``: it is retried, then kept as
``unknown`` and reported by the caller. It is never turned into a number (MM-Vet's reference
grader turns a reply it cannot parse into a score of 0.0 after five tries; we do not).

Backends are the ``llm`` (OpenAI-compatible HTTP) and ``hf`` (local causal LM) judges of
:mod:`bpo.eval.judge_backends`, used only for their transport: ``_complete(prompt) -> str``, their
error handling (a wrong key or model stops the run, timeouts and 5xx are retried) and their key
hygiene. The safety verdict template, parser and cache of those classes are not used here.

Several samples per item (``samples > 1``, MM-Vet's "average of several GPT-4 runs") are separate
cache entries keyed by the sample index, so a rerun with more samples only asks for the new ones.
The cache key is a SHA-256 of the task template (version and text hash), backend kind, model,
decoding settings, the rendered fields and the sample index.
"""

from __future__ import annotations

import os
import string
import threading
import time
from collections.abc import Callable, Iterable, Mapping
from dataclasses import dataclass, field
from pathlib import Path
from types import SimpleNamespace
from typing import Any

from bpo.errors import BpoError
from bpo.eval.judge_backends import HFJudge, LLMJudge
from bpo.eval.judges import TransientError
from bpo.io import KeyedJsonlCache, stable_hash
from bpo.paths import cache_dir, package_file

BACKENDS = ("llm", "hf")
# Kept apart from the safety judge templates (bpo/eval/templates/*.txt), whose loader lists that folder.
TEMPLATE_DIR = ("eval", "templates", "graded")


# ---- templates ------------------------------------------------------------------------------------------
@dataclass(frozen=True)
class GradeTemplate:
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


def load_grade_template(name_or_path: str, fields: Iterable[str]) -> GradeTemplate:
    """A shipped template by name or any text file with exactly the placeholders ``fields``."""
    want = set(fields)
    path = Path(name_or_path)
    if not path.is_file():
        path = package_file(*TEMPLATE_DIR, f"{name_or_path}.txt")
    if not path.is_file():
        shipped = sorted(p.stem for p in package_file(*TEMPLATE_DIR).glob("*.txt"))
        raise BpoError(f"judge template {name_or_path!r} not found (shipped: {', '.join(shipped)}; "
                       "or pass the path of a text file)")
    from bpo.io import read_text

    text = read_text(path, "judge template")
    found = set(string.Template(text).get_identifiers())
    if found != want:
        raise BpoError(f"{path}: this template needs exactly the placeholders "
                       f"{', '.join('$' + f for f in sorted(want))} (found: "
                       f"{', '.join('$' + f for f in sorted(found)) or 'none'}); write a literal dollar sign as $$")
    return GradeTemplate(version=path.stem, text=text, fields=tuple(sorted(want)))


# ---- results and cache ------------------------------------------------------------------------------------
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


class GradeCache(KeyedJsonlCache):
    """A JSONL file of ``{"key", "raw", "parsed", ...}`` rows; the value is re-parsed on every hit.

    Storing the raw reply (not the parsed value) keeps one source of truth: a parser fix applies to
    cached replies too. Appends are line-atomic, and a partial last line after a crash is skipped.
    """

    def keep(self, row: dict) -> bool:
        return isinstance(row.get("raw"), str)


def default_grade_cache() -> Path:
    return cache_dir("judge") / "grades.jsonl"


# ---- backends ---------------------------------------------------------------------------------------------
class _TemperatureClient:
    """Wraps an ``openai`` client so that ``chat.completions.create`` uses our temperature.

    ``LLMJudge`` always sends temperature 0 (right for safety verdicts); several MM-Vet samples need
    a temperature above 0 to differ. Wrapping the client keeps LLMJudge's error mapping in one place.
    """

    def __init__(self, client, temperature: float):
        def create(**kwargs):
            return client.chat.completions.create(**{**kwargs, "temperature": temperature})

        self.chat = SimpleNamespace(completions=SimpleNamespace(create=create))


class SampledLLMJudge(LLMJudge):
    """:class:`LLMJudge` with a configurable sampling temperature (default 0, as LLMJudge)."""

    def __init__(self, model: str | None = None, *, temperature: float = 0.0, **kwargs):
        super().__init__(model, **kwargs)
        if temperature < 0 or temperature > 2:
            raise BpoError(f"--judge-temperature must be in [0, 2], not {temperature}")
        self.temperature = float(temperature)

    def _get_client(self):
        client = super()._get_client()
        return _TemperatureClient(client, self.temperature) if self.temperature else client


def build_backend(kind: str, *, model: str | None, base_url: str | None = None,
                  api_key_env: str = "OPENAI_API_KEY", timeout: float = 60.0, max_tokens: int = 16,
                  temperature: float = 0.0, device: str = "cpu"):
    """A completion backend: an ``llm`` or ``hf`` judge object (only its ``_complete`` is used)."""
    if kind == "llm":
        return SampledLLMJudge(model, base_url=base_url, api_key_env=api_key_env, timeout=timeout,
                               max_tokens=max_tokens or None, temperature=temperature, use_cache=False)
    if kind == "hf":
        if base_url:
            raise BpoError("--base-url only applies to --judge llm")
        if temperature:
            raise BpoError("the hf judge decodes greedily; --judge-temperature applies to --judge llm only")
        return HFJudge(model, device=device, max_new_tokens=max_tokens or 16, use_cache=False)
    raise BpoError(f"unknown judge backend {kind!r}; use one of {', '.join(BACKENDS)}")


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
@dataclass
class GradeRequest:
    id: str
    fields: dict[str, str]


class Grader:
    """Render, ask, parse strictly, retry, cache; ``samples`` replies per request.

    ``parse(raw) -> value | None`` must never raise and must return ``None`` for anything that is not
    exactly the requested format. Deterministic backends (``hf``: greedy) also cache unparsed replies
    and default to no retries, since they would repeat themselves; HTTP judges cache parsed replies
    only and retry up to ``retries`` times with exponential backoff.
    """

    def __init__(self, backend, template: GradeTemplate, parse: Callable[[str], Any], *, samples: int = 1,
                 retries: int | None = None, backoff: float = 1.0, workers: int = 1,
                 cache: str | os.PathLike | None = None, use_cache: bool = True):
        deterministic = bool(getattr(backend, "cache_unparsed", False))
        if samples < 1:
            raise BpoError(f"--judge-samples must be >= 1, not {samples}")
        if samples > 1 and deterministic:
            raise BpoError(f"the {backend.name} judge decodes greedily, so extra samples would repeat the first; "
                           "use --judge-samples 1 (or an llm judge with --judge-temperature > 0)")
        retries = (0 if deterministic else 3) if retries is None else retries
        if retries < 0 or backoff < 0 or workers < 1:
            raise BpoError("judge retries and backoff must be >= 0 and workers >= 1")
        self.backend, self.template, self.parse = backend, template, parse
        self.samples, self.retries, self.backoff, self.workers = samples, retries, backoff, workers
        self.cache_unparsed = deterministic
        self.cache = GradeCache(cache or default_grade_cache()) if use_cache else None
        self.calls = 0  # completions requested (cache hits excluded)
        self._lock = threading.Lock()

    def key(self, fields: Mapping[str, str], sample: int) -> str:
        return stable_hash({"template": self.template.version, "template_sha256": self.template.sha256,
                            "judge": self.backend.name, "model": self.backend.model_id,
                            "settings": backend_settings(self.backend),
                            "fields": {k: fields[k] for k in self.template.fields}, "sample": sample})

    def _from_cache(self, key: str) -> Grade | None:
        hit = self.cache.get(key) if self.cache is not None else None
        if hit is None:
            return None
        value = self.parse(hit["raw"])
        if value is None and not self.cache_unparsed:
            return None  # an HTTP judge's malformed reply may be transient: ask again
        return Grade(value, hit["raw"], "cached", cached=True)

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

    def _grade_uncached(self, fields: Mapping[str, str], key: str) -> Grade:
        grade, replied = self._ask(self.template.render(fields))
        if self.cache is not None and replied and (grade.known or self.cache_unparsed):
            self.cache.put(key, {"raw": grade.raw, "parsed": grade.known, "template": self.template.version,
                                 "judge": self.backend.name, "model": self.backend.model_id})
        return grade

    def grade(self, requests: list[GradeRequest], desc: str = "judge") -> list[list[Grade]]:
        """``out[i][k]``: the grade of request ``i``, sample ``k``, in request order."""
        from tqdm import tqdm

        out: list[list[Grade | None]] = [[None] * self.samples for _ in requests]
        todo = []
        for i, req in enumerate(requests):
            for k in range(self.samples):
                key = self.key(req.fields, k)
                hit = self._from_cache(key)
                if hit is not None:
                    out[i][k] = hit
                else:
                    todo.append((i, k, req.fields, key))
        bar = tqdm(total=len(todo), desc=f"{desc} ({self.backend.name})", unit="call", disable=None)
        try:
            if self.workers == 1 or len(todo) <= 1:
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


def mean(values: Iterable[float]) -> float | None:
    """Arithmetic mean, ``None`` for no values (a metric over nothing is undefined, not 0)."""
    vals = list(values)
    return sum(vals) / len(vals) if vals else None
