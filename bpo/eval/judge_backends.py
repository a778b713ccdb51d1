"""The two model-backed safety judges: ``llm`` (OpenAI-compatible HTTP) and ``hf`` (local causal LM).

Both inherit rendering, caching, retries and strict parsing from :class:`bpo.eval.judges.ModelJudge`
and only implement one completion. Heavy imports (``openai``, ``torch``, ``transformers``) happen on
the first uncached item, so a fully cached rerun needs neither the network nor the model.
"""

from __future__ import annotations

from bpo.errors import BpoError
from bpo.eval.judges import DEFAULT_TEMPLATE, ModelJudge, TransientError
from bpo.llm import LocalCausalLM, chat_once, openai_client


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
            # The client's own retries are off: ModelJudge's retries/backoff are the only ones.
            self._client = openai_client(api_key_env=self.api_key_env, base_url=self.base_url,
                                         timeout=self.timeout, max_retries=0, need="the llm judge",
                                         key_hint=" or name another variable with --api-key-env")
        return self._client

    def _complete(self, prompt: str) -> str:
        import openai

        client = self._get_client()
        kwargs = {"max_tokens": self.max_tokens} if self.max_tokens else {}
        try:
            return chat_once(client, self.model, prompt, temperature=0, timeout=self.timeout, **kwargs)
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
        self._lm = LocalCausalLM(model, device=device, max_new_tokens=max_new_tokens, what="the hf judge")

    # Read from the LocalCausalLM so that there is one copy of the settings that change a reply.
    model_path = property(lambda self: self._lm.model_path)
    device = property(lambda self: self._lm.device)
    max_new_tokens = property(lambda self: self._lm.max_new_tokens)

    @property
    def model_id(self) -> str:
        return self.model_path

    @property
    def _model(self):
        """The loaded model, or None while nothing needed it (a fully cached rerun never loads it)."""
        return self._lm.model

    def _load(self):
        return self._lm.load()

    def _complete(self, prompt: str) -> str:
        return self._lm.complete(prompt)

    def describe(self) -> dict:
        out = super().describe()
        out.update(device=self.device, max_new_tokens=self.max_new_tokens)
        return out
