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
from bpo.paths import package_file
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
        try:
            import openai
        except ImportError:
            raise BpoError("the openai LLM backend needs the openai package: pip install 'bpo[openai]'") from None
        if not spec.model:
            raise BpoError("the openai LLM backend needs a model name: pass --llm-model NAME")
        key = os.environ.get(spec.api_key_env)
        if not key:
            raise BpoError(f"environment variable {spec.api_key_env} is not set; export the API key there "
                           "(any non-empty value, e.g. EMPTY, for a local server without auth)")
        self._openai = openai
        self.spec = spec
        self.client = openai.OpenAI(api_key=key, base_url=spec.base_url, timeout=spec.timeout_s,
                                    max_retries=spec.max_retries)

    def __call__(self, prompt: str) -> str:
        try:
            resp = self.client.chat.completions.create(
                model=self.spec.model, messages=[{"role": "user", "content": prompt}],
                temperature=0.0, max_tokens=self.spec.max_new_tokens)
        except self._openai.APIStatusError as exc:
            raise BpoError(f"LLM endpoint {self.spec.base_url or 'api.openai.com'} answered HTTP "
                           f"{exc.status_code}; check --llm-base-url, --llm-model and the key in "
                           f"{self.spec.api_key_env}") from None
        except self._openai.APIError as exc:
            raise BpoError(f"LLM endpoint {self.spec.base_url or 'api.openai.com'} failed "
                           f"({type(exc).__name__}); is the server up?") from None
        if not resp.choices:
            return ""
        return resp.choices[0].message.content or ""


class HFCausalLM:
    """A local causal LM; uses the tokenizer's chat template when it has one."""

    def __init__(self, spec: LLMSpec):
        from transformers import AutoModelForCausalLM, AutoTokenizer

        if not spec.model:
            raise BpoError("the hf LLM backend needs a local model: pass --llm-model PATH")
        try:
            self.tok = AutoTokenizer.from_pretrained(spec.model)
            self.model = AutoModelForCausalLM.from_pretrained(spec.model)
        except OSError as exc:
            raise BpoError(f"cannot load the local model {spec.model!r} ({exc.__class__.__name__}); "
                           "pass a directory with config, weights and tokenizer") from None
        self.model.eval()
        self.spec = spec

    def __call__(self, prompt: str) -> str:
        import torch

        if getattr(self.tok, "chat_template", None):
            ids = self.tok.apply_chat_template([{"role": "user", "content": prompt}], add_generation_prompt=True,
                                               return_tensors="pt", return_dict=True)["input_ids"]
        else:
            ids = self.tok(prompt, return_tensors="pt")["input_ids"]
        pad = self.tok.pad_token_id if self.tok.pad_token_id is not None else self.tok.eos_token_id
        with torch.no_grad():
            out = self.model.generate(ids, attention_mask=torch.ones_like(ids), do_sample=False,
                                      max_new_tokens=self.spec.max_new_tokens, pad_token_id=pad)
        return self.tok.decode(out[0, ids.shape[1]:], skip_special_tokens=True)


LLM_BACKENDS.register("openai", OpenAIChat)
LLM_BACKENDS.register("hf", HFCausalLM)


class CachedLLM:
    """Replies kept in an append-only JSONL keyed by a hash of (model identity, prompt).

    A 40k-pair build makes 40k+ calls; after a crash or a re-run with other filters, the calls already
    made are read back instead of paid for again. Safe because decoding is greedy (same prompt, same
    reply). A partial last line from a killed run is dropped on open.
    """

    def __init__(self, llm: ChatLLM, path: str | os.PathLike, identity: dict):
        from bpo.io import AppendOnlyJsonl

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
        from bpo.io import stable_hash

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
    from bpo.io import stable_hash
    from bpo.paths import cache_dir

    # The key never enters the identity: only where the model is and what it is.
    identity = {"backend": spec.backend, "model": spec.model, "base_url": spec.base_url,
                "max_new_tokens": spec.max_new_tokens}
    return CachedLLM(llm, cache_dir("safety-llm") / f"{stable_hash(identity)[:16]}.jsonl", identity)
