"""Shared building blocks for text-in/text-out LLM backends.

Several features ask a language model for text: the safety data builder (entity finding, rewrites,
:mod:`bpo.safety.llm`), the safety and graded-benchmark judges (:mod:`bpo.eval.judge_backends`) and
error injection (:mod:`bpo.bootstrap.inject`). They differ in prompts, retries and error mapping, but
share two transports, implemented once here:

* :func:`openai_client`: an ``openai.OpenAI`` client for any OpenAI-compatible endpoint, with the key
  read from the environment variable *named* by the caller. Errors are one line and never contain the
  key; the key is not stored anywhere else than in the client.
* :class:`LocalCausalLM`: a local Hugging Face causal LM, loaded lazily, prompted through the
  tokenizer's chat template when it has one, decoded greedily.

Heavy imports (``openai``, ``torch``, ``transformers``) happen inside the functions, so importing this
module is free.
"""

from __future__ import annotations

import os
from pathlib import Path

from bpo.errors import BpoError

NO_AUTH_KEY = "EMPTY"  # what local servers without auth (vLLM, llama.cpp) are sent: they accept any key


def openai_client(*, api_key_env: str = "OPENAI_API_KEY", base_url: str | None = None, timeout: float = 60.0,
                  max_retries: int = 2, need: str = "the openai backend", allow_missing_key: bool = False,
                  key_hint: str = ""):
    """An ``openai.OpenAI`` client whose key comes from ``$api_key_env``.

    ``need`` names the caller in messages ("the llm judge", "--backend openai"). With
    ``allow_missing_key`` a missing key is fine when ``base_url`` is set (a local server): the client
    then sends :data:`NO_AUTH_KEY`. ``key_hint`` is appended to the missing-key message (e.g. which flag
    names another variable).
    """
    try:
        import openai
    except ImportError:
        raise BpoError(f"{need} needs the openai package: pip install openai (or pip install 'bpo[openai]')") from None
    key = os.environ.get(api_key_env)
    if not key:
        if not (allow_missing_key and base_url):
            # With allow_missing_key a local server needs no key at all, so "any value" would mislead.
            local = "" if allow_missing_key else (f" (any non-empty value, e.g. {NO_AUTH_KEY}, for a local "
                                                  "server without auth)")
            raise BpoError(f"{need} reads its API key from ${api_key_env}, which is not set; "
                           f"export it{local}{key_hint}")
        key = NO_AUTH_KEY
    return openai.OpenAI(api_key=key, base_url=base_url, timeout=timeout, max_retries=max_retries)


def first_choice_text(resp) -> str:
    """The text of a chat completion's first choice; ``""`` when there is none (some servers send no choices)."""
    choices = getattr(resp, "choices", None)
    if not choices:
        return ""
    return choices[0].message.content or ""


def chat_once(client, model: str, prompt: str, **settings) -> str:
    """One user message in, the first choice's text out. API errors propagate: callers map them."""
    resp = client.chat.completions.create(model=model, messages=[{"role": "user", "content": prompt}], **settings)
    return first_choice_text(resp)


class LocalCausalLM:
    """A local causal LM (``AutoModelForCausalLM`` + ``AutoTokenizer``), greedy, loaded on first use.

    ``model_path`` is a directory (or an id already in the Hugging Face cache: nothing is downloaded
    in tests). ``what`` names the model in the load error ("the hf judge"). The prompt goes through the
    tokenizer's chat template when it has one, else it is tokenized raw; only the new tokens are decoded.
    """

    def __init__(self, model_path: str, *, device: str = "cpu", max_new_tokens: int = 128,
                 what: str = "the local model"):
        path = Path(model_path).expanduser()
        # Resolved so that the same model named two ways has one identity (cache keys, reports).
        self.model_path = str(path.resolve()) if path.exists() else model_path
        self.device, self.max_new_tokens, self.what = device, max_new_tokens, what
        self.model = self.tokenizer = None

    def load(self):
        """``(model, tokenizer)``, loading them once."""
        if self.model is None:
            from transformers import AutoModelForCausalLM, AutoTokenizer

            try:
                tokenizer = AutoTokenizer.from_pretrained(self.model_path)
                model = AutoModelForCausalLM.from_pretrained(self.model_path)
            except (OSError, ValueError) as exc:
                from bpo.models.loading import first_line as _first

                first_line = _first(exc)
                raise BpoError(f"cannot load {self.what} from {self.model_path!r}: {first_line} (pass a local "
                               "directory with config.json, weights and tokenizer)") from None
            model.to(self.device).eval()
            self.model, self.tokenizer = model, tokenizer
        return self.model, self.tokenizer

    def complete(self, prompt: str) -> str:
        import torch

        model, tok = self.load()
        if getattr(tok, "chat_template", None):
            from bpo.models.chat import normalize_messages

            messages = normalize_messages(tok, [{"role": "user", "content": prompt}])  # the form its template reads
            input_ids = tok.apply_chat_template(messages, add_generation_prompt=True,
                                                return_tensors="pt", return_dict=True)["input_ids"]
        else:
            input_ids = tok(prompt, return_tensors="pt")["input_ids"]
        input_ids = input_ids.to(self.device)
        # Many small/base tokenizers have no pad token; generate() warns and may misbehave without one.
        pad = tok.pad_token_id if tok.pad_token_id is not None else tok.eos_token_id
        with torch.inference_mode():
            out = model.generate(input_ids, attention_mask=torch.ones_like(input_ids), do_sample=False,
                                 max_new_tokens=self.max_new_tokens, pad_token_id=pad)
        return tok.decode(out[0, input_ids.shape[1]:], skip_special_tokens=True)
