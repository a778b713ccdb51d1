"""Text-in/text-out LLM backends for entity finding and the optional fluency rewrite.

A backend is any callable ``prompt -> reply`` (tests pass plain functions). Two are built in:

* ``openai``: an OpenAI-compatible ``/v1/chat/completions`` endpoint (OpenAI, vLLM, llama.cpp, ...)
  through the ``openai`` client. The API key is read from the environment variable *named* by
  ``api_key_env``; the key itself never appears in arguments, logs, reports or error messages.
* ``hf``: a local Hugging Face causal LM (a directory or cached model id), greedy decoding.

Decoding is greedy/temperature 0 so that a rebuild with the same model gives the same data.
Prompt templates live in ``bpo/safety/templates/<name>_v<N>.txt``; a change of wording is a new
version file (old builds stay reproducible), and every template has a snapshot test.
"""

from __future__ import annotations

import json
import os
import re
from collections.abc import Callable
from dataclasses import dataclass

from bpo.errors import BpoError
from bpo.io import AppendOnlyJsonl, stable_hash
from bpo.llm import LocalCausalLM, chat_once, openai_client
from bpo.paths import cache_dir, package_file
from bpo.registry import Registry

ChatLLM = Callable[[str], str]
LLM_BACKENDS = Registry("LLM backend")
_PLACEHOLDER = re.compile(r"\{(\w+)\}")


def render_template(name: str, **fields: str) -> str:
    """Fill ``{field}`` placeholders of ``templates/<name>.txt``.

    Plain replacement rather than ``str.format``: user text full of braces must pass through
    untouched, and a placeholder without a value is an error rather than a silent ``{text}``.
    """
    path = package_file("safety", "templates", f"{name}.txt")
    if not path.is_file():
        raise BpoError(f"unknown prompt template {name!r} (looked for {path})")
    template = path.read_text(encoding="utf-8")
    wanted = set(_PLACEHOLDER.findall(template))
    missing = wanted - set(fields)
    if missing:
        raise BpoError(f"template {name!r} needs {', '.join(sorted(missing))}")
    return _PLACEHOLDER.sub(lambda m: str(fields[m.group(1)]) if m.group(1) in fields else m.group(0), template)


@dataclass
class LLMSpec:
    """Where the LLM lives. ``model`` is a model name (openai) or a local path / cached id (hf)."""

    backend: str = "openai"
    model: str = ""
    base_url: str | None = None
    api_key_env: str = "OPENAI_API_KEY"
    max_new_tokens: int = 128
    timeout_s: float = 60.0
    max_retries: int = 2


class OpenAIChat:
    """One user message in, the first choice's text out; temperature 0."""

    def __init__(self, spec: LLMSpec):
        if not spec.model:
            raise BpoError("the openai LLM backend needs a model name: pass --llm-model NAME")
        self.client = openai_client(
            api_key_env=spec.api_key_env, base_url=spec.base_url, timeout=spec.timeout_s,
            max_retries=spec.max_retries, need="the openai LLM backend",
            key_hint=" or name another variable with --llm-api-key-env")
        self.spec = spec

    def __call__(self, prompt: str) -> str:
        import openai

        try:
            return chat_once(self.client, self.spec.model, prompt, temperature=0.0,
                             max_tokens=self.spec.max_new_tokens)
        except openai.APIStatusError as exc:
            raise BpoError(f"LLM endpoint {self.spec.base_url or 'api.openai.com'} answered HTTP "
                           f"{exc.status_code}; check --llm-base-url, --llm-model and the key in "
                           f"{self.spec.api_key_env}") from None
        except openai.APIError as exc:
            raise BpoError(f"LLM endpoint {self.spec.base_url or 'api.openai.com'} failed "
                           f"({type(exc).__name__}); is the server up?") from None


class HFCausalLM:
    """A local causal LM; uses the tokenizer's chat template when it has one."""

    def __init__(self, spec: LLMSpec):
        if not spec.model:
            raise BpoError("the hf LLM backend needs a local model: pass --llm-model PATH")
        self.lm = LocalCausalLM(spec.model, max_new_tokens=spec.max_new_tokens, what="the local model")
        self.lm.load()  # eagerly: a bad path fails before a long build starts, not on its first record
        self.spec = spec

    def __call__(self, prompt: str) -> str:
        return self.lm.complete(prompt)


LLM_BACKENDS.register("openai", OpenAIChat)
LLM_BACKENDS.register("hf", HFCausalLM)


class CachedLLM:
    """Replies kept in an append-only JSONL keyed by a hash of (model identity, prompt).

    A 40k-pair build makes 40k+ calls; after a crash or a re-run with other filters, the calls already
    made are read back instead of paid for again. Safe because decoding is greedy (same prompt, same
    reply). A partial last line from a killed run is dropped on open.
    """

    def __init__(self, llm: ChatLLM, path: str | os.PathLike, identity: dict):
        self.llm, self.identity = llm, identity
        self.hits = self.misses = 0
        self._shard = AppendOnlyJsonl(path, id_key="key")
        self._replies: dict[str, str] = {}
        with open(self._shard.path, encoding="utf-8") as fh:
            for line in fh:
                try:
                    row = json.loads(line)
                    self._replies[row["key"]] = row["reply"]
                except (json.JSONDecodeError, KeyError, TypeError):
                    continue

    def __call__(self, prompt: str) -> str:
        key = stable_hash({**self.identity, "prompt": prompt})
        if key in self._replies:
            self.hits += 1
            return self._replies[key]
        self.misses += 1
        reply = self.llm(prompt)
        self._shard.append({"key": key, "reply": reply})
        self._replies[key] = reply
        return reply


def make_llm(spec: LLMSpec, *, cache: bool = True) -> ChatLLM:
    """The backend for ``spec``; with ``cache`` its replies are kept under ``$BPO_HOME/safety-llm``."""
    llm = LLM_BACKENDS.get(spec.backend)(spec)
    if not cache:
        return llm
    # The key never enters the identity: only where the model is and what it is.
    identity = {"backend": spec.backend, "model": spec.model, "base_url": spec.base_url,
                "max_new_tokens": spec.max_new_tokens}
    return CachedLLM(llm, cache_dir("safety-llm") / f"{stable_hash(identity)[:16]}.jsonl", identity)
