"""Shared fixtures for the eval tests: a scripted OpenAI-compatible judge server on 127.0.0.1.

The server answers by looking at the response text inside the rendered prompt: ``R-valid`` gets a
valid verdict (unsafe), ``R-malformed`` prose, ``R-flaky`` prose once and then ``VERDICT: safe``,
``R-slow`` a reply after 1.5 s; a wrong bearer key gets HTTP 401 and a model other than
``judge-1`` HTTP 404. A test can set ``server.responder = fn(prompt) -> str | None`` to script
other replies (None falls back to the markers above).

``tiny_causal_lm(path, words, chat_template=None)`` builds a tiny random word-level Llama judge.
"""

import json
import threading
import time
from http.server import BaseHTTPRequestHandler, ThreadingHTTPServer

import pytest

KEY = "sk-test-123456"


class _Server:
    def __init__(self):
        self.key = KEY
        self.responder = None
        self.calls: list[dict] = []
        self.lock = threading.Lock()
        outer = self

        class Handler(BaseHTTPRequestHandler):
            def log_message(self, *args):
                pass

            def do_POST(self):
                body = json.loads(self.rfile.read(int(self.headers["Content-Length"])))
                prompt = body["messages"][0]["content"]
                with outer.lock:
                    outer.calls.append({"path": self.path, "auth": self.headers.get("Authorization"), **body})
                    n_flaky = sum("R-flaky" in c["messages"][0]["content"] for c in outer.calls)
                if self.headers.get("Authorization") != f"Bearer {KEY}":
                    return self._send(401, {"error": {"message": "Incorrect API key provided: sk-wr***ng"}})
                if body["model"] != "judge-1":
                    return self._send(404, {"error": {"message": "model not found"}})
                custom = outer.responder(prompt) if outer.responder is not None else None
                if custom is not None:
                    text = custom
                elif "R-slow" in prompt:
                    time.sleep(1.5)
                    text = "VERDICT: safe"
                elif "R-malformed" in prompt:
                    text = "I think this response is unsafe."
                elif "R-flaky" in prompt:
                    text = "Let me think." if n_flaky == 1 else "VERDICT: safe"
                else:
                    text = "VERDICT: unsafe"
                self._send(200, {"id": "c", "object": "chat.completion", "created": 0, "model": body["model"],
                                 "choices": [{"index": 0, "finish_reason": "stop",
                                              "message": {"role": "assistant", "content": text}}],
                                 "usage": {"prompt_tokens": 1, "completion_tokens": 1, "total_tokens": 2}})

            def _send(self, code, obj):
                data = json.dumps(obj).encode()
                try:
                    self.send_response(code)
                    self.send_header("Content-Type", "application/json")
                    self.send_header("Content-Length", str(len(data)))
                    self.end_headers()
                    self.wfile.write(data)
                except (BrokenPipeError, ConnectionResetError):
                    pass  # the client timed out and hung up

        self.httpd = ThreadingHTTPServer(("127.0.0.1", 0), Handler)
        self.httpd.block_on_close = False
        self.url = f"http://127.0.0.1:{self.httpd.server_address[1]}/v1"
        self.thread = threading.Thread(target=self.httpd.serve_forever, kwargs={"poll_interval": 0.05},
                                       daemon=True)
        self.thread.start()

    def close(self):
        self.httpd.shutdown()
        self.httpd.server_close()


@pytest.fixture
def judge_server(monkeypatch):
    """A running server; ``JUDGE_KEY`` holds the key it accepts."""
    monkeypatch.setenv("JUDGE_KEY", KEY)
    s = _Server()
    yield s
    s.close()


def build_tiny_causal_lm(path, words, chat_template=None):
    """A randomly initialised 1-layer LlamaForCausalLM with a whitespace word-level tokenizer."""
    import torch
    from tokenizers import Tokenizer, models, pre_tokenizers
    from transformers import LlamaConfig, LlamaForCausalLM, PreTrainedTokenizerFast

    tok = Tokenizer(models.WordLevel({w: i for i, w in enumerate(words)}, unk_token="<unk>"))
    tok.pre_tokenizer = pre_tokenizers.WhitespaceSplit()
    fast = PreTrainedTokenizerFast(tokenizer_object=tok, unk_token="<unk>", pad_token="<pad>", eos_token="</s>")
    if chat_template:
        fast.chat_template = chat_template
    fast.save_pretrained(path)
    torch.manual_seed(0)
    config = LlamaConfig(vocab_size=len(words), hidden_size=16, intermediate_size=32, num_hidden_layers=1,
                         num_attention_heads=2, num_key_value_heads=2, max_position_embeddings=2048,
                         pad_token_id=words.index("<pad>"), eos_token_id=words.index("</s>"),
                         bos_token_id=words.index("</s>"))
    LlamaForCausalLM(config).save_pretrained(path)
    return path


@pytest.fixture(scope="session")
def tiny_causal_lm():
    return build_tiny_causal_lm
