"""Error injection: a language model rewrites the ground-truth answer with plausible wrong details.

Pi et al. (methods.md §1.3) ask the MLLM's text-only backbone (Vicuna for LLaVA-1.5) to rewrite the
GT answer, zero-shot on descriptions by default or with a 6-shot prompt. Our two templates are
versioned files under ``bpo/bootstrap/templates/`` (``inject_<name>.v<k>.txt``, snapshot-tested):
``zero_shot`` (description only, the question is not used, as in the paper's default) and
``few_shot`` (question + answer, one worked example per error type: objects added/removed,
attributes, counts, spatial relations, text in the image; the examples are ours).

Departures from the public script, which kept whatever came back: outputs are parsed (labels and
a continued few-shot pattern are cut), then rejected and retried (up to ``retries`` more attempts,
each with its own seed) when they are empty, identical to the answer after normalising case,
punctuation and whitespace, refusals, or echoes of the prompt. Every rejection is recorded in the
negative's ``meta.rejected_attempts``; when all attempts fail, the record gets ``meta.rejections``
and no negative.

Backends (registry ``INJECT_BACKENDS``): ``self`` = the MLLM's own language model without the image
(default, as in the paper), ``hf`` = any local causal LM, ``openai`` = an OpenAI-compatible chat
endpoint (``OPENAI_BASE_URL`` / ``OPENAI_API_KEY``; the key is never printed or stored),
``rules`` = offline rule-based edits over an object vocabulary (:mod:`bpo.bootstrap.rules`).
"""

from __future__ import annotations

import json
import os
import re
import unicodedata
from dataclasses import dataclass

from bpo.data.records import Negative, Record
from bpo.errors import BpoError, RecordError
from bpo.jobs import Outcome, record_row
from bpo.llm import NO_AUTH_KEY, openai_client
from bpo.models.engines import ENGINES
from bpo.models.generation import Generation, Request, SamplingSettings, derive_seed
from bpo.paths import package_file
from bpo.registry import Registry

# name -> versioned template file (bump the version when the text changes; snapshots pin it).
TEMPLATES = {"zero_shot": "inject_zero_shot.v1", "few_shot": "inject_few_shot.v1"}
# A model continuing the few-shot pattern starts a new block with one of these.
CONTINUATION_MARKERS = ("\nQuestion:", "\nAnswer:", "\nModified answer:", "\nDescription:",
                        "\nRewritten description:")
LEADING_LABEL = re.compile(r"^\s*(modified answer|rewritten description|modified description|rewritten answer|"
                           r"answer|description)\s*:\s*", re.IGNORECASE)
REFUSAL = re.compile(r"^\s*(i'm sorry|i am sorry|sorry,|i apologi[sz]e|i cannot|i can't|i can not|i'm unable|"
                     r"i am unable|i'm not able|i am not able|i won't|as an ai)", re.IGNORECASE)
REJECTION_REASONS = ("empty", "identical", "refusal", "echo")

# name -> factory(settings=, model=, lm=, engine=, dtype=, adapter=, batch_size=, device=) -> backend
INJECT_BACKENDS = Registry("injection backend")
INJECT_BACKENDS.register("self", "bpo.bootstrap.inject:self_backend")
INJECT_BACKENDS.register("hf", "bpo.bootstrap.inject:hf_backend")
INJECT_BACKENDS.register("openai", "bpo.bootstrap.inject:openai_backend")
INJECT_BACKENDS.register("rules", "bpo.bootstrap.rules:rules_backend")


@dataclass(frozen=True)
class Template:
    name: str
    version: str  # e.g. "few_shot.v1"
    text: str

    @property
    def instruction(self) -> str:
        return self.text.split("\n", 1)[0]

    def render(self, question: str, answer: str) -> str:
        # One pass, so a "{answer}" inside the question is not expanded in turn.
        values = {"question": question.strip(), "answer": answer.strip()}
        return re.sub(r"\{(question|answer)\}", lambda m: values[m.group(1)], self.text)


def load_template(name: str) -> Template:
    if name not in TEMPLATES:
        raise BpoError(f"unknown injection template {name!r}; use one of {', '.join(TEMPLATES)}")
    stem = TEMPLATES[name]
    text = package_file("bootstrap", "templates", stem + ".txt").read_text(encoding="utf-8").rstrip()
    return Template(name, f"{name}.{stem.rsplit('.', 1)[1]}", text)


def normalize(text: str) -> str:
    """Lowercase, punctuation removed, whitespace collapsed: what 'the same answer' means here."""
    text = unicodedata.normalize("NFKC", text).lower()
    text = "".join(" " if unicodedata.category(c).startswith("P") else c for c in text)
    return " ".join(text.split())


def parse_rewrite(raw: str) -> str:
    """The rewritten answer from a raw completion: cut a continued pattern, a leading label, quotes."""
    text = raw.replace("\r\n", "\n")
    for marker in CONTINUATION_MARKERS:
        pos = text.find(marker)
        if pos != -1:
            text = text[:pos]
    text = LEADING_LABEL.sub("", text.strip(), count=1).strip()
    if len(text) >= 2 and text[0] == text[-1] and text[0] in "\"'`":
        text = text[1:-1].strip()
    return text


def rejection_reason(text: str, *, answer: str, question: str, prompt: str, template: Template) -> str | None:
    """Why a parsed rewrite is not a usable negative (one of ``REJECTION_REASONS``), or None."""
    norm = normalize(text)
    if not norm:
        return "empty"
    if norm == normalize(answer):
        return "identical"
    if REFUSAL.match(text.replace("\u2019", "'")):
        return "refusal"
    # Echo: the prompt (or a piece of it, e.g. a truncated copy of the answer) given back.
    if norm == normalize(question) or norm in normalize(prompt) or normalize(template.instruction) in norm:
        return "echo"
    return None


class EngineBackend:
    """``self`` / ``hf``: a local model behind :class:`bpo.models.generation.HFEngine` (text-only prompt)."""

    def __init__(self, engine, settings: SamplingSettings, name: str = "self"):
        self.engine, self.settings, self.name = engine, settings, name

    def complete(self, prompts: list[tuple[str, str, Record]]) -> list[Generation]:
        """``prompts``: (key, prompt text, source record) -> one completion each, in order."""
        requests = [Request(key, Record(id=rec.id, prompt=[{"role": "user", "content": text}], chosen="-",
                                        meta=dict(rec.meta)))
                    for key, text, rec in prompts]
        return self.engine.generate(requests, self.settings)


class OpenAIBackend:
    """An OpenAI-compatible chat endpoint (``OPENAI_BASE_URL``, ``OPENAI_API_KEY`` from the environment)."""

    name = "openai"

    def __init__(self, model: str, settings: SamplingSettings, *, timeout: float = 60.0, max_retries: int = 2):
        base_url = os.environ.get("OPENAI_BASE_URL") or None
        # Local OpenAI-compatible servers (vLLM, llama.cpp) accept any key, so with a base URL none is needed.
        self.client = openai_client(api_key_env="OPENAI_API_KEY", base_url=base_url, timeout=timeout,
                                    max_retries=max_retries, need="--backend openai", allow_missing_key=True,
                                    key_hint=" (or set OPENAI_BASE_URL to a local server that needs none)")
        self.model, self.settings = model, settings
        self.endpoint = base_url or "api.openai.com"

    def _clean(self, message: str) -> str:
        # Servers and client errors may quote the key back; it must not reach error files or logs.
        key = self.client.api_key
        return message.replace(key, "***") if key and key != NO_AUTH_KEY else message

    def complete(self, prompts: list[tuple[str, str, Record]]) -> list[Generation]:
        out = []
        for key, text, rec in prompts:
            try:
                resp = self.client.chat.completions.create(
                    model=self.model, messages=[{"role": "user", "content": text}],
                    temperature=self.settings.temperature, top_p=self.settings.top_p,
                    max_tokens=self.settings.max_new_tokens, seed=derive_seed(self.settings.seed, key) % (1 << 31),
                    stop=list(self.settings.stop) or None)
                choices = getattr(resp, "choices", None)
                content = choices[0].message.content if choices else None
                if not isinstance(content, str):
                    raise ValueError(f"the response has no message content: {str(resp)[:120]!r}")
                out.append(Generation(key, content))
            except Exception as exc:  # connection errors, HTTP errors, garbage bodies: all per record
                msg = self._clean(str(exc).splitlines()[0] if str(exc) else "")
                if isinstance(exc, json.JSONDecodeError):
                    msg = f"the endpoint answered with something that is not JSON ({msg})"
                out.append(Generation(key, error=RecordError(
                    f"openai endpoint {self.endpoint} failed: {type(exc).__name__}: {msg[:200]}",
                    where=rec.meta.get("_where"), record_id=rec.id)))
        return out


def self_backend(*, settings: SamplingSettings, model: str | None, engine: str = "hf", dtype: str = "float32",
                 adapter: str | None = None, batch_size: int = 8, device=None, **_) -> EngineBackend:
    """The MLLM itself, prompted with text only (the paper's choice: the MLLM's own LLM)."""
    if not model:
        raise BpoError("--backend self needs --model (the MLLM whose language model rewrites the answers)")
    built = ENGINES.get(engine)(model, dtype=dtype, adapter=adapter, batch_size=batch_size, device=device)
    return EngineBackend(built, settings, "self")


def hf_backend(*, settings: SamplingSettings, lm: str | None, dtype: str = "float32", batch_size: int = 8,
               device=None, **_) -> EngineBackend:
    """Any local causal LM (e.g. the MLLM's original backbone, vicuna-7b-v1.5 for LLaVA-1.5)."""
    from bpo.models.generation import build_text_engine

    if not lm:
        raise BpoError("--backend hf needs --lm PATH_OR_ID (a causal language model)")
    return EngineBackend(build_text_engine(lm, dtype=dtype, batch_size=batch_size, device=device), settings, "hf")


def openai_backend(*, settings: SamplingSettings, lm: str | None, **_) -> OpenAIBackend:
    if not lm:
        raise BpoError("--backend openai needs --lm MODEL_NAME (the model name the endpoint serves)")
    return OpenAIBackend(lm, settings)


class InjectGenerator:
    """One ``injected`` negative per record (or ``meta.rejections`` when every attempt is rejected)."""

    source = "injected"

    def __init__(self, backend, *, model: str, template: str = "zero_shot", retries: int = 3):
        if retries < 0:
            raise BpoError(f"--retries must be >= 0, not {retries}")
        self.backend, self.model_name = backend, model
        self.template, self.retries = load_template(template), retries

    def meta(self) -> dict:
        return {"generator": "inject", "model": self.model_name, "backend": self.backend.name,
                "template": self.template.version, "retries": self.retries, **self.backend.settings.to_meta()}

    def fingerprint(self) -> dict:
        return self.meta()

    def prompt(self, rec: Record) -> str:
        return self.template.render(rec.last_user_text(), rec.chosen)

    def process(self, records: list[Record]) -> list[Outcome]:
        rejected: dict[str, list[dict]] = {r.id: [] for r in records}
        accepted: dict[str, str] = {}
        errors: dict[str, RecordError] = {}
        pending = list(records)
        for attempt in range(self.retries + 1):
            prompts = [(f"{r.id}\x1fattempt={attempt}", self.prompt(r), r) for r in pending]
            still = []
            for rec, (_, text, _), gen in zip(pending, prompts, self.backend.complete(prompts)):
                if gen.error is not None:
                    errors[rec.id] = gen.error
                    continue
                rewrite = parse_rewrite(gen.text)
                reason = rejection_reason(rewrite, answer=rec.chosen, question=rec.last_user_text(), prompt=text,
                                          template=self.template)
                if reason is None:
                    accepted[rec.id] = rewrite
                else:
                    rejected[rec.id].append({"attempt": attempt, "reason": reason, "text": gen.text[:300]})
                    still.append(rec)
            pending = still
            if not pending:
                break
        return [self._outcome(rec, accepted.get(rec.id), rejected[rec.id], errors.get(rec.id)) for rec in records]

    def _outcome(self, rec: Record, text: str | None, rejected: list[dict], error: RecordError | None) -> Outcome:
        if error is not None:
            return Outcome(rec.id, error=error)
        if text is not None:
            meta = self.meta()
            if rejected:
                meta["rejected_attempts"] = rejected
            return Outcome(rec.id, row=record_row(rec, [Negative(text, self.source, meta)]))
        row = record_row(rec)
        row.setdefault("meta", {})
        row["meta"]["rejections"] = list(row["meta"].get("rejections", [])) + [
            {"generator": "inject", "template": self.template.version, **r} for r in rejected]
        return Outcome(rec.id, row=row)
