"""Duet as an OpenAI-compatible server (`python -m backends serve`): /v1/models and /v1/chat/completions over
Duet's own systems, so that Open WebUI or any OpenAI client can ask them.

Models: `duet-rag`, `duet-ft:<adapter>`, `duet-rag-ft:<adapter>`: the question is the last user message (earlier
turns are not used: every system answers one question). And, vLLM-style, the bare model: `duet-llm`, and each
adapter by its own name, which complete the messages as given (what another Duet's `DUET_ENGINE=openai` asks). Responses are OpenAI's chat completion objects with one
documented extra field, `duet`: the sources (file, location, text, score), the stage timings and whether RAG
abstained, so a client can show citations. Streaming uses server-sent events, the sources in the last chunk.
Starlette and uvicorn come with the stack (Streamlit's own server); no hand-written HTTP.
"""

from __future__ import annotations

import dataclasses
import hmac
import json
import threading
import time
import uuid

from backends.answering.prompts import check_question
from backends.core.errors import BadInput, DuetError

LOOPBACK = ("127.0.0.1", "localhost", "::1")
SYSTEMS = {"duet-rag": "rag", "duet-ft": "ft", "duet-rag-ft": "rag_ft"}
BARE_MODEL = "duet-llm"
MAX_PROMPT_CHARS, MAX_TOKENS = 32_000, 512  # a bare completion's limits (RAG prompts with sources are long)
# A request body is read no further than this (a bare prompt's 32,000 characters fit with room to spare).
MAX_BODY_BYTES = 256 * 1024
# Generations at once: the decoder batches them; more would only queue behind them, so they are told to come back.
MAX_IN_FLIGHT = 16


def _adapters(duet) -> list[str]:
    """The adapters a model id may name: never one called like a built-in model ("duet-rag" stays RAG)."""
    return [n for n in duet.registry.names() if n != BARE_MODEL and n not in SYSTEMS]


def model_ids(duet) -> list[str]:
    names = _adapters(duet)
    # The bare model first, as vLLM lists its base model: a client that takes the first model gets it.
    return ([BARE_MODEL] + names + ["duet-rag"]
            + [f"{prefix}:{name}" for prefix in ("duet-ft", "duet-rag-ft") for name in names])


def system_of(model: str, duet) -> tuple[str, str | None]:
    """(backend, adapter) of a model id, backend "llm" for a bare completion; BadInput names the models there are."""
    if model == BARE_MODEL or (model in _adapters(duet) and ":" not in model):
        return "llm", None if model == BARE_MODEL else model
    prefix, _, adapter = str(model).partition(":")
    if prefix not in SYSTEMS or (prefix == "duet-rag") == bool(adapter):
        raise BadInput(f"unknown model {model!r}: choose from {', '.join(model_ids(duet))}")
    if adapter and adapter not in _adapters(duet):
        raise BadInput(f"unknown adapter {adapter!r} in model {model!r}: choose from {', '.join(model_ids(duet))}")
    return SYSTEMS[prefix], adapter or None


def question_of(body: dict) -> str:
    messages = body.get("messages")
    users = [m.get("content") for m in messages if isinstance(m, dict) and m.get("role") == "user"] \
        if isinstance(messages, list) else []
    if not users or not isinstance(users[-1], str):
        raise BadInput('"messages" needs a user message whose content is text')
    return users[-1]


def checked_messages(body: dict) -> list[dict]:
    messages = body.get("messages")
    if not isinstance(messages, list) or not messages or not all(
            isinstance(m, dict) and m.get("role") in ("system", "user", "assistant") and isinstance(m.get("content"), str)
            for m in messages):
        raise BadInput('"messages" must be a list of {"role": system|user|assistant, "content": text}')
    if sum(len(m["content"]) for m in messages) > MAX_PROMPT_CHARS:
        raise BadInput(f"the messages are longer than {MAX_PROMPT_CHARS} characters in all: shorten them")
    return [{"role": m["role"], "content": m["content"]} for m in messages]


def bare_stream(duet, messages: list[dict], adapter: str | None, max_tokens):
    """The model's own completion of the messages (with the adapter when named): text pieces, then its stats."""
    from backends.engines.scheduler import stream_chat

    tokens = min(int(max_tokens or duet.settings.max_new_tokens), MAX_TOKENS)
    return stream_chat(duet.llm, messages, max(1, tokens), duet.ft.use(adapter).name if adapter else None)


def extra(answer) -> dict:
    """The `duet` field: what the answer rests on."""
    return {"backend": answer.backend, "adapter": answer.adapter, "abstained": answer.abstained,
            "timings": dataclasses.asdict(answer.timings),
            "sources": [{"file_name": s.file_name, "location": s.location, "text": s.text, "score": round(s.score, 4)}
                        for s in answer.sources]}


def usage(final) -> dict:
    return {"prompt_tokens": final.tokens_in, "completion_tokens": final.tokens_out,
            "total_tokens": final.tokens_in + final.tokens_out}


def completion(model: str, final, reply_id: str) -> dict:
    """A chat completion from a system's Answer (with the `duet` field) or a bare completion's stats."""
    from backends.core.types import Answer

    return {"id": reply_id, "object": "chat.completion", "created": int(time.time()), "model": model,
            "choices": [{"index": 0, "message": {"role": "assistant", "content": final.text}, "finish_reason": "stop"}],
            "usage": usage(final), **({"duet": extra(final)} if isinstance(final, Answer) else {})}


def chunk(model: str, reply_id: str, delta: dict, finish: str | None = None, **more) -> str:
    body = {"id": reply_id, "object": "chat.completion.chunk", "created": int(time.time()), "model": model,
            "choices": [{"index": 0, "delta": delta, "finish_reason": finish}], **more}
    return f"data: {json.dumps(body)}\n\n"


def host_name(header: str) -> str:
    """'localhost:8000' -> 'localhost', '[::1]:8000' -> '::1'."""
    if header.startswith("["):
        return header[1:].partition("]")[0]
    return header.rsplit(":", 1)[0] if header.count(":") == 1 else header


class _InFlight:
    """Generations running now, capped: a request past the cap is answered 429 at once."""

    def __init__(self, limit: int):
        self.limit, self.count, self.lock = limit, 0, threading.Lock()

    def enter(self) -> bool:
        with self.lock:
            if self.count >= self.limit:
                return False
            self.count += 1
            return True

    def leave(self) -> None:
        with self.lock:
            self.count -= 1


def create_app(duet, api_key: str | None = None, any_host: bool = False, max_in_flight: int = MAX_IN_FLIGHT):
    """`any_host`: accept any Host header (served beyond loopback, behind an API key); otherwise only loopback names,
    so a web page that rebinds its own name to 127.0.0.1 cannot read the documents through the browser."""
    from starlette.applications import Starlette
    from starlette.concurrency import run_in_threadpool
    from starlette.responses import JSONResponse, StreamingResponse
    from starlette.routing import Route

    in_flight = _InFlight(max_in_flight)

    def error(status: int, message: str, kind: str = "invalid_request_error") -> JSONResponse:
        return JSONResponse({"error": {"message": message, "type": kind}}, status_code=status)

    def refused(request) -> JSONResponse | None:
        if not any_host and host_name(request.headers.get("host", "")) not in LOOPBACK:
            return error(403, "this server answers requests for localhost only (the Host header named another "
                              "name); serve with --host to open it to other machines", "permission_error")
        if api_key:
            given = request.headers.get("authorization", "").removeprefix("Bearer ").strip()
            if not hmac.compare_digest(given.encode(), api_key.encode()):
                return error(401, "a valid API key is required: send Authorization: Bearer <key>",
                             "authentication_error")
        return None

    async def body_of(request) -> bytes | None:
        """The body, or None past MAX_BODY_BYTES (read no further than that)."""
        declared = request.headers.get("content-length", "")
        if declared.isdigit() and int(declared) > MAX_BODY_BYTES:
            return None
        data = bytearray()
        async for piece in request.stream():
            data += piece
            if len(data) > MAX_BODY_BYTES:
                return None
        return bytes(data)

    async def models(request):
        if (refusal := refused(request)) is not None:
            return refusal
        return JSONResponse({"object": "list", "data": [{"id": m, "object": "model", "owned_by": "duet"}
                                                         for m in model_ids(duet)]})

    async def chat(request):
        if (refusal := refused(request)) is not None:
            return refusal
        data = await body_of(request)
        if data is None:
            return error(413, f"the request body is larger than {MAX_BODY_BYTES // 1024} KB")
        try:
            body = json.loads(data)
        except ValueError:
            return error(400, "the body is not JSON")
        if not in_flight.enter():
            return error(429, f"{max_in_flight} answers are being generated already: try again in a few seconds",
                         "rate_limit_error")
        streaming = False
        try:
            if not isinstance(body, dict):
                raise BadInput("the body must be a JSON object")
            model = body.get("model", "")
            backend, adapter = system_of(model, duet)
            reply_id = f"chatcmpl-{uuid.uuid4().hex[:24]}"
            if backend == "llm":
                pieces = bare_stream(duet, checked_messages(body), adapter, body.get("max_tokens"))
            else:
                question = check_question(question_of(body), duet.settings)  # the app's limits
                pieces = duet.stream(backend, question, adapter)
            if not body.get("stream"):
                final = await run_in_threadpool(lambda: list(pieces)[-1])
                return JSONResponse(completion(model, final, reply_id))
            streaming = True
        except DuetError as failure:
            return error(400, str(failure))
        finally:
            if not streaming:
                in_flight.leave()

        from backends.core.types import Answer

        def events():
            try:
                yield chunk(model, reply_id, {"role": "assistant", "content": ""})
                for item in pieces:
                    if isinstance(item, str):
                        yield chunk(model, reply_id, {"content": item})
                    elif isinstance(item, Answer):
                        yield chunk(model, reply_id, {}, "stop", duet=extra(item), usage=usage(item))
                    else:  # a bare completion's stats
                        yield chunk(model, reply_id, {}, "stop", usage=usage(item))
            except DuetError as failure:  # after the headers: the error goes in the stream
                yield f"data: {json.dumps({'error': {'message': str(failure), 'type': 'invalid_request_error'}})}\n\n"
            finally:
                in_flight.leave()
            yield "data: [DONE]\n\n"

        return StreamingResponse(events(), media_type="text/event-stream")

    return Starlette(routes=[Route("/v1/models", models), Route("/v1/chat/completions", chat, methods=["POST"])])


def serve(duet, host: str, port: int, api_key: str | None) -> None:
    import uvicorn

    if host not in LOOPBACK and not api_key:
        raise BadInput(f"serving on {host} makes Duet reachable from other machines: set DUET_API_KEY (clients send "
                       "it as Authorization: Bearer <key>), or serve on 127.0.0.1")
    duet.llm  # noqa: B018 - load before the first request
    uvicorn.run(create_app(duet, api_key, any_host=host not in LOOPBACK), host=host, port=port, log_level="warning")
