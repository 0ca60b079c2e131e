"""Duet as an OpenAI-compatible server (`python -m backends serve`): /v1/models and /v1/chat/completions over
Duet's own systems, so that Open WebUI or any OpenAI client can ask them.

Models: `duet-rag`, `duet-ft:<adapter>`, `duet-rag-ft:<adapter>`. The question is the last user message (earlier
turns are not used: every system answers one question). Responses are OpenAI's chat completion objects with one
documented extra field, `duet`: the sources (file, location, text, score), the stage timings and whether RAG
abstained, so a client can show citations. Streaming uses server-sent events, the sources in the last chunk.
Starlette and uvicorn come with the stack (Streamlit's own server); no hand-written HTTP.
"""

from __future__ import annotations

import dataclasses
import hmac
import json
import time
import uuid

from backends.answering.prompts import check_question
from backends.core.errors import BadInput, DuetError

LOOPBACK = ("127.0.0.1", "localhost", "::1")
SYSTEMS = {"duet-rag": "rag", "duet-ft": "ft", "duet-rag-ft": "rag_ft"}


def model_ids(duet) -> list[str]:
    names = duet.registry.names()
    return ["duet-rag"] + [f"{prefix}:{name}" for prefix in ("duet-ft", "duet-rag-ft") for name in names]


def system_of(model: str, duet) -> tuple[str, str | None]:
    """(backend, adapter) of a model id; BadInput names the models there are."""
    prefix, _, adapter = str(model).partition(":")
    if prefix not in SYSTEMS or (prefix == "duet-rag") == bool(adapter):
        raise BadInput(f"unknown model {model!r}: choose from {', '.join(model_ids(duet))}")
    if adapter and adapter not in duet.registry.names():
        raise BadInput(f"unknown adapter {adapter!r} in model {model!r}: choose from {', '.join(model_ids(duet))}")
    return SYSTEMS[prefix], adapter or None


def question_of(body: dict) -> str:
    messages = body.get("messages")
    users = [m.get("content") for m in messages if isinstance(m, dict) and m.get("role") == "user"] \
        if isinstance(messages, list) else []
    if not users or not isinstance(users[-1], str):
        raise BadInput('"messages" needs a user message whose content is text')
    return users[-1]


def extra(answer) -> dict:
    """The `duet` field: what the answer rests on."""
    return {"backend": answer.backend, "adapter": answer.adapter, "abstained": answer.abstained,
            "timings": dataclasses.asdict(answer.timings),
            "sources": [{"file_name": s.file_name, "location": s.location, "text": s.text, "score": round(s.score, 4)}
                        for s in answer.sources]}


def completion(model: str, answer, reply_id: str) -> dict:
    return {"id": reply_id, "object": "chat.completion", "created": int(time.time()), "model": model,
            "choices": [{"index": 0, "message": {"role": "assistant", "content": answer.text}, "finish_reason": "stop"}],
            "usage": {"prompt_tokens": answer.tokens_in, "completion_tokens": answer.tokens_out,
                      "total_tokens": answer.tokens_in + answer.tokens_out},
            "duet": extra(answer)}


def chunk(model: str, reply_id: str, delta: dict, finish: str | None = None, **more) -> str:
    body = {"id": reply_id, "object": "chat.completion.chunk", "created": int(time.time()), "model": model,
            "choices": [{"index": 0, "delta": delta, "finish_reason": finish}], **more}
    return f"data: {json.dumps(body)}\n\n"


def create_app(duet, api_key: str | None = None):
    from starlette.applications import Starlette
    from starlette.concurrency import run_in_threadpool
    from starlette.responses import JSONResponse, StreamingResponse
    from starlette.routing import Route

    def error(status: int, message: str, kind: str = "invalid_request_error") -> JSONResponse:
        return JSONResponse({"error": {"message": message, "type": kind}}, status_code=status)

    def authorised(request) -> bool:
        if not api_key:
            return True
        given = request.headers.get("authorization", "").removeprefix("Bearer ").strip()
        return hmac.compare_digest(given.encode(), api_key.encode())

    async def models(request):
        if not authorised(request):
            return error(401, "a valid API key is required: send Authorization: Bearer <key>", "authentication_error")
        return JSONResponse({"object": "list", "data": [{"id": m, "object": "model", "owned_by": "duet"}
                                                         for m in model_ids(duet)]})

    async def chat(request):
        if not authorised(request):
            return error(401, "a valid API key is required: send Authorization: Bearer <key>", "authentication_error")
        try:
            body = await request.json()
        except ValueError:
            return error(400, "the body is not JSON")
        try:
            if not isinstance(body, dict):
                raise BadInput("the body must be a JSON object")
            model = body.get("model", "")
            backend, adapter = system_of(model, duet)
            question = check_question(question_of(body), duet.settings)  # the app's limits
            reply_id = f"chatcmpl-{uuid.uuid4().hex[:24]}"
            if not body.get("stream"):
                from backends.core.types import final_answer

                answer = await run_in_threadpool(lambda: final_answer(duet.stream(backend, question, adapter)))
                return JSONResponse(completion(model, answer, reply_id))
            pieces = duet.stream(backend, question, adapter)  # checks the question before the response starts
        except DuetError as failure:
            return error(400, str(failure))

        def events():
            yield chunk(model, reply_id, {"role": "assistant", "content": ""})
            try:
                for item in pieces:
                    if isinstance(item, str):
                        yield chunk(model, reply_id, {"content": item})
                    else:
                        yield chunk(model, reply_id, {}, "stop", duet=extra(item))
            except DuetError as failure:  # after the headers: the error goes in the stream
                yield f"data: {json.dumps({'error': {'message': str(failure), 'type': 'invalid_request_error'}})}\n\n"
            yield "data: [DONE]\n\n"

        return StreamingResponse(events(), media_type="text/event-stream")

    return Starlette(routes=[Route("/v1/models", models), Route("/v1/chat/completions", chat, methods=["POST"])])


def serve(duet, host: str, port: int, api_key: str | None) -> None:
    import uvicorn

    if host not in LOOPBACK and not api_key:
        raise BadInput(f"serving on {host} makes Duet reachable from other machines: set DUET_API_KEY (clients send "
                       "it as Authorization: Bearer <key>), or serve on 127.0.0.1")
    duet.llm  # noqa: B018 - load before the first request
    uvicorn.run(create_app(duet, api_key), host=host, port=port, log_level="warning")
