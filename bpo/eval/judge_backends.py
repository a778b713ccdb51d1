"""The two model-backed safety judges: ``llm`` (OpenAI-compatible HTTP) and ``hf`` (local causal LM).

Both inherit rendering, caching, retries and strict parsing from :class:`bpo.eval.judges.ModelJudge`
and only implement one completion. Heavy imports (``openai``, ``torch``, ``transformers``) happen on
the first uncached item, so a fully cached rerun needs neither the network nor the model.
"""

from __future__ import annotations

import os
from pathlib import Path

from bpo.errors import BpoError
from bpo.eval.judges import DEFAULT_TEMPLATE, ModelJudge, TransientError


class LLMJudge(ModelJudge):
    """Any OpenAI-compatible chat endpoint via the ``openai`` client.

    ``base_url`` (e.g. ``http://localhost:8000/v1`` for vLLM; None = the OpenAI API), ``model`` the
    served model name, ``api_key_env`` the *name* of the environment variable holding the key (the key
    itself is never stored, printed or cached). ``timeout`` is per request, in seconds; the client's
    own retries are off so that ``retries``/``backoff`` here are the only ones.
    """

    name = "llm"
    cache_unparsed = False

    def __init__(self, model: str | None = None, *, base_url: str | None = None,
                 api_key_env: str = "OPENAI_API_KEY", timeout: float = 60.0, max_tokens: int | None = 16,
                 template: str = DEFAULT_TEMPLATE, cache=None, use_cache: bool = True, retries: int = 3,
                 backoff: float = 1.0, workers: int = 1, **_ignored):
        if not model:
            raise BpoError("the llm judge needs a model name: pass --judge-model (e.g. gpt-4o-mini, or the "
                           "name your vLLM server serves)")
        if timeout <= 0:
            raise BpoError("--judge-timeout must be > 0 seconds")
        super().__init__(template=template, cache=cache, use_cache=use_cache, retries=retries,
                         backoff=backoff, workers=workers)
        self.model, self.base_url, self.api_key_env = model, base_url, api_key_env
        self.timeout, self.max_tokens = float(timeout), max_tokens
        self._client = None

    @property
    def model_id(self) -> str:
        return self.model

    def _get_client(self):
        if self._client is None:
            try:
                import openai
            except ImportError:
                raise BpoError("the llm judge needs the openai package: pip install openai "
                               "(or pip install 'bpo[openai]')") from None
            key = os.environ.get(self.api_key_env)
            if not key:
                raise BpoError(f"the llm judge reads its API key from ${self.api_key_env}, which is not set; "
                               "export it (any non-empty value for a local server without auth) or name "
                               "another variable with --api-key-env")
            self._client = openai.OpenAI(api_key=key, base_url=self.base_url, timeout=self.timeout,
                                         max_retries=0)
        return self._client

    def _complete(self, prompt: str) -> str:
        import openai

        client = self._get_client()
        kwargs = {"max_tokens": self.max_tokens} if self.max_tokens else {}
        try:
            resp = client.chat.completions.create(
                model=self.model, messages=[{"role": "user", "content": prompt}], temperature=0,
                timeout=self.timeout, **kwargs)
        except (openai.AuthenticationError, openai.PermissionDeniedError) as exc:
            # Never echo the server's message: it can contain a masked copy of the key.
            raise BpoError(f"the judge endpoint rejected the API key in ${self.api_key_env} "
                           f"(HTTP {exc.status_code}); check the key and --base-url") from None
        except openai.NotFoundError:
            raise BpoError(f"judge endpoint {self.base_url or 'api.openai.com'}: model {self.model!r} or the "
                           "/chat/completions route was not found (HTTP 404); check --judge-model and "
                           "--base-url (it usually ends in /v1)") from None
        except openai.APITimeoutError:
            raise TransientError(f"timed out after {self.timeout:g}s") from None
        except openai.APIStatusError as exc:
            raise TransientError(f"HTTP {exc.status_code}") from None
        except openai.APIError as exc:  # connection errors, unreadable responses
            raise TransientError(type(exc).__name__) from None
        if not resp.choices:
            return ""
        return resp.choices[0].message.content or ""

    def describe(self) -> dict:
        out = super().describe()
        out.update(base_url=self.base_url, api_key_env=self.api_key_env, timeout=self.timeout)
        return out


class HFJudge(ModelJudge):
    """A local causal LM (``AutoModelForCausalLM`` + ``AutoTokenizer`` from a directory), greedy.

    The prompt goes through the tokenizer's chat template when it has one, else it is used raw.
    Greedy decoding repeats itself, so retries default to 0 and unparsed replies are cached too.
    """

    name = "hf"
    cache_unparsed = True

    def __init__(self, model: str | None = None, *, device: str = "cpu", max_new_tokens: int = 16,
                 template: str = DEFAULT_TEMPLATE, cache=None, use_cache: bool = True, retries: int = 0,
                 backoff: float = 0.0, **_ignored):
        if not model:
            raise BpoError("the hf judge needs --judge-model PATH (a local causal LM directory)")
        super().__init__(template=template, cache=cache, use_cache=use_cache, retries=retries,
                         backoff=backoff, workers=1)
        path = Path(model).expanduser()
        self.model_path = str(path.resolve()) if path.exists() else model
        self.device, self.max_new_tokens = device, max_new_tokens
        self._model = self._tokenizer = None

    @property
    def model_id(self) -> str:
        return self.model_path

    def _load(self):
        if self._model is None:
            from transformers import AutoModelForCausalLM, AutoTokenizer

            try:
                self._tokenizer = AutoTokenizer.from_pretrained(self.model_path)
                self._model = AutoModelForCausalLM.from_pretrained(self.model_path)
            except (OSError, ValueError) as exc:
                first_line = str(exc).splitlines()[0] if str(exc) else type(exc).__name__
                raise BpoError(f"cannot load the hf judge from {self.model_path!r}: {first_line} (pass a "
                               "local directory with config.json, weights and tokenizer)") from None
            self._model.to(self.device).eval()
        return self._model, self._tokenizer

    def _complete(self, prompt: str) -> str:
        import torch

        model, tok = self._load()
        if getattr(tok, "chat_template", None):
            enc = tok.apply_chat_template([{"role": "user", "content": prompt}], add_generation_prompt=True,
                                          return_tensors="pt", return_dict=True)
            input_ids = enc["input_ids"]
        else:
            input_ids = tok(prompt, return_tensors="pt")["input_ids"]
        input_ids = input_ids.to(self.device)
        pad = tok.pad_token_id if tok.pad_token_id is not None else tok.eos_token_id
        with torch.inference_mode():
            out = model.generate(input_ids, attention_mask=torch.ones_like(input_ids), do_sample=False,
                                 max_new_tokens=self.max_new_tokens, pad_token_id=pad)
        return tok.decode(out[0, input_ids.shape[1]:], skip_special_tokens=True)

    def describe(self) -> dict:
        out = super().describe()
        out.update(device=self.device, max_new_tokens=self.max_new_tokens)
        return out
