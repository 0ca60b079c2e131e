"""The OpenAI-compatible engine (`DUET_ENGINE=openai`): answers stream from a model server (vLLM, llama.cpp's
server, Ollama, or another Duet's `backends serve`) instead of a local engine.

The server holds the base model and its LoRA adapters; an adapter is addressed by its name as the request's
`model` (vLLM's `--lora-modules name=path`), the base model by `llm_server_model`. Prompts stay Duet's; first token
and total are timed here, on the client. A server gives no logits, so RAG's copy-constrained extraction cannot run:
RAG writes freely from its numbered sources (`uses_logits` is False, and the app says so).
"""

from __future__ import annotations

import json
import time
from pathlib import Path
from typing import Iterator

from backends.core.errors import ModelUnavailable
from backends.engines.base import Engine


class RemoteEngine(Engine):
    name = "openai"
    streams_remotely = True  # the scheduler hands whole answers to `stream` (core of `scheduler.stream_chat`)
    uses_logits = False

    def __init__(self, settings, tokenizer_counts):
        if not settings.llm_server:
            raise ModelUnavailable("engine 'openai' needs DUET_LLM_SERVER, the server's address (for example "
                                   "http://127.0.0.1:8000/v1)")
        self.url = settings.llm_server.rstrip("/")
        self.model = settings.llm_server_model
        self.key = settings.llm_api_key
        self.timeout = settings.llm_timeout_s
        self.count = tokenizer_counts  # the local tokenizer's count where the server gives no usage
        self.registered: dict[str, str] = {}  # adapter -> how the server got it

    def forward(self, feeds):
        raise ModelUnavailable("the openai engine answers through its server, not in forward passes")

    def _headers(self) -> dict:
        return {"Content-Type": "application/json", **({"Authorization": f"Bearer {self.key}"} if self.key else {})}

    def _failure(self, what: str) -> ModelUnavailable:
        return ModelUnavailable(f"the model server at {self.url} {what}. Start it or check DUET_LLM_SERVER; "
                                f"DUET_LLM_TIMEOUT_S sets how long to wait ({self.timeout:g} s now)")

    def load_adapter(self, name: str, folder: Path, replacing: bool) -> None:
        """vLLM's dynamic loading where the server has it (VLLM_ALLOW_RUNTIME_LORA_UPDATING); otherwise the adapter
        must be on the server already, and `registered` says the line that puts it there."""
        import httpx

        try:
            reply = httpx.post(f"{self.url}/load_lora_adapter", headers=self._headers(), timeout=self.timeout,
                               json={"lora_name": name, "lora_path": str(Path(folder).resolve())})
            loaded = reply.status_code == 200 or "already" in reply.text
        except httpx.HTTPError:
            loaded = False
        self.registered[name] = "loaded" if loaded else f"--lora-modules {name}={Path(folder).resolve()}"

    def _base_model(self) -> str:
        """The configured base model's name, else the first model the server lists."""
        import httpx

        if not self.model:
            try:
                listed = httpx.get(f"{self.url}/models", headers=self._headers(), timeout=self.timeout).json()["data"]
                self.model = listed[0]["id"]
            except (httpx.HTTPError, ValueError, KeyError, IndexError) as error:
                raise self._failure(f"did not list its models ({type(error).__name__}); set DUET_LLM_SERVER_MODEL") from None
        return self.model

    def stream(self, messages: list[dict], max_new_tokens: int, adapter: str | None) -> Iterator:
        """Text pieces, then (text, tokens in, tokens out, prompt s, first token s, generate s)."""
        import httpx

        body = {"model": adapter or self._base_model(), "messages": messages, "max_tokens": max_new_tokens, "temperature": 0,
                "stream": True, "stream_options": {"include_usage": True}}
        started = time.perf_counter()
        pieces, usage, first = [], None, 0.0
        try:
            with httpx.stream("POST", f"{self.url}/chat/completions", json=body, headers=self._headers(),
                              timeout=self.timeout) as reply:
                if reply.status_code != 200:
                    raise self._failure(f"answered {reply.status_code}: {_error_text(reply)}"
                                        + (f" (is adapter {adapter!r} on the server? {self.registered.get(adapter)})"
                                           if adapter and reply.status_code == 404 else ""))
                for line in reply.iter_lines():
                    if not line.startswith("data: ") or line == "data: [DONE]":
                        continue
                    event = json.loads(line[6:])
                    if "error" in event:
                        raise self._failure(f"reported: {event['error'].get('message', event['error'])}")
                    usage = event.get("usage") or usage
                    for choice in event.get("choices", []):
                        piece = (choice.get("delta") or {}).get("content") or ""
                        if piece:
                            first = first or time.perf_counter() - started
                            pieces.append(piece)
                            yield piece
        except httpx.TimeoutException:
            raise self._failure(f"did not answer within {self.timeout:g} s") from None
        except httpx.HTTPError as error:
            raise self._failure(f"is not reachable ({type(error).__name__}: {error})") from None
        total = time.perf_counter() - started
        text = "".join(pieces).strip()
        tokens_in = (usage or {}).get("prompt_tokens") or self.count(messages, None)
        tokens_out = (usage or {}).get("completion_tokens") or self.count(None, text)
        yield text, tokens_in, tokens_out, 0.0, first or total, total


def _error_text(reply) -> str:
    reply.read()
    try:
        return str(json.loads(reply.text).get("error", {}).get("message", reply.text))[:300]
    except ValueError:
        return reply.text[:300]
