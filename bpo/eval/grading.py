"""Backends of the judged benchmarks, and a :class:`~bpo.eval.judging.Grader` built from the judge options.

The engine itself (template, strict parse, retries, cache) is :mod:`bpo.eval.judging`; this module picks
its transport: the ``llm`` (OpenAI-compatible HTTP, with a sampling temperature for several MM-Vet
samples) or ``hf`` (local causal LM) judges of :mod:`bpo.eval.judge_backends`, used only for their
``_complete(prompt) -> str``, their error handling (a wrong key or model stops the run, timeouts and 5xx
are retried) and their key hygiene.
"""

from __future__ import annotations

from collections.abc import Callable
from types import SimpleNamespace
from typing import Any

from bpo.errors import BpoError
from bpo.eval.judge_backends import HFJudge, LLMJudge
from bpo.eval.judging import (  # noqa: F401  (the names graded benchmarks import from here)
    Grade,
    Grader,
    GradeRequest,
    JudgeSection,
    ReplyCache,
    Template,
    backend_settings,
    default_cache_path,
    describe_backend,
    load_template,
    mean,
    resolve_device,
)

BACKENDS = ("llm", "hf")
GradeTemplate = Template  # the names before one engine served every judge
GradeCache = ReplyCache
default_grade_cache = default_cache_path


def load_grade_template(name_or_path: str, fields) -> Template:
    """A shipped template by name or any text file with exactly the placeholders ``fields``."""
    return load_template(name_or_path, fields)


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


def grader_for(judge: JudgeSection, fields: tuple[str, ...], parse: Callable[[str], Any], *, template: str,
               max_tokens: int) -> Grader:
    """The grader of a task: ``judge`` holds the options, ``template``/``max_tokens`` the task's defaults."""
    template_ = load_template(judge.template or template, fields)  # fail on a bad template before any call
    samples, temperature = getattr(judge, "samples", 1), getattr(judge, "temperature", 0.0)
    device = resolve_device(judge.device) if judge.kind == "hf" else "cpu"
    backend = build_backend(judge.kind, model=judge.model, base_url=judge.base_url, api_key_env=judge.api_key_env,
                            timeout=judge.timeout, max_tokens=max_tokens if judge.max_tokens is None
                            else judge.max_tokens, temperature=temperature, device=device)
    grader = Grader(backend, template_, parse, samples=samples, retries=judge.retries, backoff=judge.backoff,
                    workers=judge.workers, cache=judge.cache, use_cache=not judge.no_cache)
    if samples > 1 and temperature == 0:
        print(f"note: {samples} judge samples at temperature 0 may be identical; pass --judge-temperature "
              "(e.g. 0.7) to sample the judge")
    return grader
