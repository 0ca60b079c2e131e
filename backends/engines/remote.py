"""The OpenAI-compatible engine (`DUET_ENGINE=openai`): answers stream from a model server (vLLM, llama.cpp's
server, Ollama, or another Duet's `backends serve`) instead of a local engine.

The server holds the base model and its LoRA adapters; an adapter is addressed by its name as the request's
`model` (vLLM's `--lora-modules name=path`), the base model by `llm_server_model`. A server may answer a name it
does not serve with its base model (llama.cpp's does), so an adapter answers only once the server lists it or has
just loaded it. Prompts stay Duet's; first token and total are timed here, on the client. A server gives no logits:
RAG's extraction is held to one source sentence by the server's grammar (llama.cpp) or structured outputs (vLLM)
where it has one, and writes freely elsewhere (the app says which). A stream that ends without a finish reason, or
with no text, is a failure of that answer, never an empty answer.
"""

from __future__ import annotations

import json
import threading
import time
from pathlib import Path
from typing import Iterator

from backends.core.errors import ModelUnavailable
from backends.engines.base import Engine

# What /v1/models says owns the models -> how that server constrains output.
CONSTRAINT_OF_OWNER = {"vllm": "choice", "me": "grammar", "llamacpp": "grammar"}  # "me": llama-cpp-python's server
ASK_AGAIN_S = 30.0
CUT_HINT = ("llama.cpp's server cuts a running answer when another request arrives: start llama-cpp-python's server "
            "with --interrupt_requests False, or llama-server with --parallel N (N answers at once), and keep "
            "DUET_LLM_SERVER_IN_FLIGHT at most N")


def serve_adapter_help(name: str, folder: Path) -> str:
    """How to serve an adapter under its name on the servers Duet knows."""
    folder = Path(folder).resolve()
    return (f"vLLM: --enable-lora --lora-modules {name}={folder}; llama.cpp: `python -m backends adapter export "
            f"{name}.gguf --name {name}`, then a model entry {{\"model_alias\": \"{name}\", \"lora_path\": "
            f"\"{name}.gguf\"}} in llama-cpp-python's --config_file, or a [{name}] preset with lora = {name}.gguf for "
            f"llama-server; Ollama: a Modelfile with FROM <base model> and ADAPTER {name}.gguf, then `ollama create "
            f"{name}` (docs/engines.md, 'Serving Duet's adapters')")


def gbnf_choice(passages: list[str]) -> str:
    """A llama.cpp grammar whose only sentences are the passages, each whole."""
    def literal(text: str) -> str:
        return '"' + text.replace("\\", "\\\\").replace('"', '\\"').replace("\n", "\\n").replace("\r", "\\r") + '"'

    return "root ::= " + " | ".join(literal(p) for p in dict.fromkeys(passages))


class RemoteEngine(Engine):
    name = "openai"
    streams_remotely = True  # the scheduler hands whole answers to `stream` (core of `scheduler.stream_chat`)

    def __init__(self, settings, tokenizer_counts):
        if not settings.llm_server:
            raise ModelUnavailable("engine 'openai' needs DUET_LLM_SERVER, the server's address (for example "
                                   "http://127.0.0.1:8000/v1)")
        self.url = settings.llm_server.rstrip("/")
        self.model = settings.llm_server_model
        self.key = settings.llm_api_key
        self.timeout = settings.llm_timeout_s
        self.count = tokenizer_counts  # the local tokenizer's count where the server gives no usage
        self.registered: dict[str, str] = {}  # adapter -> how the server has it ("loaded", "listed")
        self.in_flight = settings.llm_server_in_flight
        self.slots = threading.BoundedSemaphore(self.in_flight)
        self.constraint = None if settings.llm_server_constraint == "auto" else settings.llm_server_constraint
        self.ask_again_at = 0.0  # when an unanswered /v1/models may be asked again

    def forward(self, feeds):
        raise ModelUnavailable("the openai engine answers through its server, not in forward passes")

    def _headers(self) -> dict:
        return {"Content-Type": "application/json", **({"Authorization": f"Bearer {self.key}"} if self.key else {})}

    def _failure(self, what: str) -> ModelUnavailable:
        return ModelUnavailable(f"the model server at {self.url} {what}. Start it or check DUET_LLM_SERVER; "
                                f"DUET_LLM_TIMEOUT_S sets how long to wait ({self.timeout:g} s now)")

    def listed(self) -> list[dict]:
        """The models the server lists (/v1/models)."""
        import httpx

        try:
            return list(httpx.get(f"{self.url}/models", headers=self._headers(), timeout=self.timeout).json()["data"])
        except (httpx.HTTPError, ValueError, KeyError, TypeError) as error:
            raise self._failure(f"did not list its models ({type(error).__name__})") from None

    def load_adapter(self, name: str, folder: Path, replacing: bool) -> None:
        """The adapter is served under its name: loaded now through vLLM's dynamic loading where the server has it
        (VLLM_ALLOW_RUNTIME_LORA_UPDATING), or listed by the server. Otherwise ModelUnavailable says how to serve it:
        the server would answer with its base model under the adapter's name."""
        import httpx

        try:
            if replacing:  # vLLM keeps a name's first weights ("already loaded") until it is unloaded
                httpx.post(f"{self.url}/unload_lora_adapter", headers=self._headers(), timeout=self.timeout,
                           json={"lora_name": name})
            reply = httpx.post(f"{self.url}/load_lora_adapter", headers=self._headers(), timeout=self.timeout,
                               json={"lora_name": name, "lora_path": str(Path(folder).resolve())})
            loaded = reply.status_code == 200 or (not replacing and reply.status_code == 400 and "already" in reply.text)
        except httpx.HTTPError:
            loaded = False
        ids = [str(m.get("id")) for m in self.listed()]
        if loaded or name in ids or f"{name}:latest" in ids:  # Ollama lists its models with a tag
            self.registered[name] = "loaded" if loaded else "listed"
            return
        self.registered.pop(name, None)
        raise ModelUnavailable(f"the model server at {self.url} does not serve adapter {name!r} (it lists "
                               f"{', '.join(ids) or 'no model'}), and a server answers an unknown name with its base "
                               f"model: Duet will not show that as fine-tuned. Serve the adapter under that name. "
                               + serve_adapter_help(name, folder))

    def constrains_choice(self) -> bool:
        """Whether this server can hold an answer to one of given passages (asked once from /v1/models)."""
        if self.constraint is None:
            if time.monotonic() < self.ask_again_at:
                return False
            try:
                owners = {str(m.get("owned_by", "")) for m in self.listed()}
            except ModelUnavailable:  # asked again a little later (the server may be starting), not at every answer
                self.ask_again_at = time.monotonic() + ASK_AGAIN_S
                return False
            self.constraint = next((CONSTRAINT_OF_OWNER[o] for o in owners if o in CONSTRAINT_OF_OWNER), "none")
        return self.constraint != "none"

    def notice(self) -> str:
        if self.constrains_choice():
            held = ("RAG's answer is held to one of its source sentences by the server's "
                    + ("grammar." if self.constraint == "grammar" else "structured outputs."))
        else:
            held = ("RAG writes freely from its numbered sources there: copy-constrained extraction needs the "
                    "model's logits or a server that constrains output (llama.cpp's grammar, vLLM's structured "
                    "outputs)" + (", and the server did not say what it is yet." if self.constraint is None else "."))
        return f"Answers come from the model server at {self.url}. {held}"

    def _base_model(self) -> str:
        """The configured base model's name, else the first model the server lists."""
        if not self.model:
            listed = self.listed()
            if not listed:
                raise self._failure("lists no model; set DUET_LLM_SERVER_MODEL")
            self.model = listed[0]["id"]
        return self.model

    def stream(self, messages: list[dict], max_new_tokens: int, adapter: str | None, choices=None,
               repetition_penalty: float = 1.0) -> Iterator:
        """Text pieces, then (text, tokens in, tokens out, prompt s, first token s, generate s). `choices`: the
        passages the answer must be one of, where the server can hold it to them."""
        body = {"model": adapter or self._base_model(), "messages": messages, "max_tokens": max_new_tokens,
                "temperature": 0, "stream": True, "stream_options": {"include_usage": True},
                # vLLM's name and rule are transformers' (Duet's); llama.cpp's server takes its own name
                "repetition_penalty": repetition_penalty, "repeat_penalty": repetition_penalty}
        if choices and self.constrains_choice():
            if self.constraint == "grammar":
                body["grammar"] = gbnf_choice(choices)
            else:  # vLLM: structured outputs (newer) and guided choice (older); each ignores the other
                body["structured_outputs"], body["guided_choice"] = {"choice": list(choices)}, list(choices)
        # The server's capacity (DUET_LLM_SERVER_IN_FLIGHT): the others wait here, within the timeout.
        if not self.slots.acquire(timeout=self.timeout):
            raise self._failure(f"was busy with {self.in_flight} answer(s) of this Duet for {self.timeout:g} s "
                                "(DUET_LLM_SERVER_IN_FLIGHT)")
        try:
            yield from self._streamed(body, messages, adapter)
        finally:
            self.slots.release()

    def _streamed(self, body: dict, messages: list[dict], adapter: str | None) -> Iterator:
        import httpx

        started = time.perf_counter()
        pieces, usage, first, finish = [], None, 0.0, None
        try:
            with httpx.stream("POST", f"{self.url}/chat/completions", json=body, headers=self._headers(),
                              timeout=self.timeout) as reply:
                if reply.status_code != 200:
                    raise self._failure(f"answered {reply.status_code}: {_error_text(reply)}")
                for line in reply.iter_lines():
                    if not line.startswith("data: ") or line == "data: [DONE]":
                        continue
                    event = json.loads(line[6:])
                    if "error" in event:
                        raise self._failure(f"reported: {event['error'].get('message', event['error'])}")
                    usage = event.get("usage") or usage
                    for choice in event.get("choices", []):
                        finish = choice.get("finish_reason") or finish
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
        if finish is None:
            raise ModelUnavailable(f"the model server at {self.url} ended this answer without a finish reason, after "
                                   f"{len(pieces)} pieces: it was cut off, not finished. {CUT_HINT}")
        if not text:
            raise ModelUnavailable(f"the model server at {self.url} gave no text for this answer (finish reason "
                                   f"{finish!r}){'; ' + CUT_HINT if finish == 'stop' else ''}")
        # The server's count where it gives one (llama-cpp-python's stream does not), else the whole prompt's.
        tokens_in = (usage or {}).get("prompt_tokens") or self.count(messages, None)
        tokens_out = (usage or {}).get("completion_tokens") or self.count(None, text)
        yield text, tokens_in, tokens_out, 0.0, first or total, total


def _error_text(reply) -> str:
    reply.read()
    try:
        return str(json.loads(reply.text).get("error", {}).get("message", reply.text))[:300]
    except ValueError:
        return reply.text[:300]
