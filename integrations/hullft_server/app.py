"""`create_app(runtime)`: an OpenAI-compatible HTTP API over the core runtime, adapting per session.

Every chat completion takes the runtime's one path (adapt → generate → restore → log) for the
caller's namespace (its API key's) and session (`X-Session-Id` header or the `user` field): the
session keys the per_task adapter and the memory episode. Requests queue for the model on the event
loop (`ModelQueue`); a full queue answers 429 with Retry-After, a client that disconnects stops its
generation, and every error is OpenAI's error body with a 4xx status where the request was at fault.
"""

from __future__ import annotations

import asyncio
import json
import logging
import time
from collections.abc import AsyncIterator
from contextlib import asynccontextmanager
from typing import Any

from fastapi import FastAPI, Request
from fastapi.exceptions import RequestValidationError
from fastapi.responses import JSONResponse, Response, StreamingResponse
from pydantic import BaseModel, ConfigDict, Field
from starlette.exceptions import HTTPException as StarletteHTTPException

from hullft_agent.errors import HullFTError
from hullft_agent.memory.schema import check_name
from hullft_agent.runtime import Call, CallResult, Runtime
from hullft_server.admission import ModelQueue, QueueFullError, Slot
from hullft_server.config import ServerConfig
from hullft_server.metrics import Metrics
from hullft_server.protocol import (
    ChatCompletionRequest,
    build_call,
    chunk,
    completion_body,
    completion_id,
    error_body,
    final_delta,
    finish_reason,
    report_extra,
    usage,
)

logger = logging.getLogger(__name__)

SESSION_HEADER = "x-session-id"
#: How often a non-streaming request checks whether its client is still there.
DISCONNECT_POLL_SECONDS = 0.2
#: How long past its deadline a non-streaming request may still finish before it is cancelled (504).
WATCHDOG_GRACE_SECONDS = 1.0


class RequestTimeoutError(Exception):
    pass


class MemorySearch(BaseModel):
    model_config = ConfigDict(extra="forbid")

    query: str = Field(min_length=1, max_length=20_000)
    k: int = Field(10, ge=1, le=200)
    task: str | None = Field(None, min_length=1, max_length=256)


class EpisodeEnd(BaseModel):
    """How an episode (a session) ended: what `learn_from` outcomes and min_reward select on."""

    model_config = ConfigDict(extra="forbid")

    outcome: str | None = Field(None, min_length=1, max_length=64, description="e.g. won, lost, success, failure")
    reward: float | None = Field(None, allow_inf_nan=False, description="the episode's return, set on all its rows")


def create_app(runtime: Runtime, config: ServerConfig | None = None) -> FastAPI:
    """The FastAPI app serving `runtime` (build it once per process; it owns the model queue)."""
    config = config or ServerConfig()
    served = config.model_name or runtime.name
    queue = ModelQueue(config.max_queue)
    metrics = Metrics(lambda: queue.waiting, lambda: queue.running)

    @asynccontextmanager
    async def lifespan(app: FastAPI) -> AsyncIterator[None]:
        yield
        # uvicorn has drained in-flight requests; keep what per_task sessions trained (adapter_dir).
        if runtime.adapter is not None:
            with runtime.lock:
                runtime.adapter.save_tasks()

    app = FastAPI(title="hullft-agent", version="1", lifespan=lifespan)
    app.state.runtime, app.state.config, app.state.queue, app.state.metrics = runtime, config, queue, metrics

    # ------------------------------------------------------------------ errors in OpenAI's shape
    def error(status: int, message: str, *, kind: str = "invalid_request_error", code: str | None = None,
              headers: dict[str, str] | None = None) -> JSONResponse:
        return JSONResponse(error_body(message, kind=kind, code=code), status_code=status, headers=headers)

    @app.exception_handler(RequestValidationError)
    async def _invalid(request: Request, exc: RequestValidationError) -> JSONResponse:
        first = exc.errors()[0] if exc.errors() else {}
        where = ".".join(str(p) for p in first.get("loc", ()) if p != "body")
        message = f"{where}: {first.get('msg', 'invalid request')}" if where else first.get("msg", "invalid request")
        return error(400, message)

    @app.exception_handler(StarletteHTTPException)
    async def _http(request: Request, exc: StarletteHTTPException) -> JSONResponse:
        kind = "not_found_error" if exc.status_code == 404 else "invalid_request_error"
        return error(exc.status_code, str(exc.detail), kind=kind)

    @app.exception_handler(Exception)
    async def _unexpected(request: Request, exc: Exception) -> JSONResponse:
        logger.exception("unexpected error answering %s", request.url.path)
        return error(500, f"internal error: {type(exc).__name__}: {exc}", kind="server_error")

    @app.middleware("http")
    async def _count(request: Request, call_next: Any) -> Response:
        length = request.headers.get("content-length")
        if length is not None and (not length.isdigit() or int(length) > config.max_request_bytes):
            response: Response = error(413, f"the request body is over {config.max_request_bytes} bytes")
        else:
            response = await call_next(request)
        metrics.requests.labels(request.url.path if request.url.path in _KNOWN else "other",
                                str(response.status_code)).inc()
        return response

    def tenant(request: Request) -> str | None:
        return config.tenant(request.headers.get("authorization"))

    def unauthorized(exc: PermissionError) -> JSONResponse:
        return error(401, str(exc), kind="authentication_error", code="invalid_api_key",
                     headers={"WWW-Authenticate": "Bearer"})

    # ------------------------------------------------------------------ chat completions
    @app.post("/v1/chat/completions")
    async def chat_completions(request: Request, body: ChatCompletionRequest) -> Response:
        try:
            namespace = tenant(request)
        except PermissionError as exc:
            return unauthorized(exc)
        if body.model != served:
            return error(404, f"model {body.model!r} is not served here; this server serves {served!r}",
                         kind="not_found_error", code="model_not_found")
        session = request.headers.get(SESSION_HEADER) or body.user
        deadline = time.monotonic() + config.request_timeout
        try:
            if session is not None:
                check_name(session, "the session (X-Session-Id or user)")
            call = build_call(body, namespace=namespace, session=session, default_max_tokens=config.default_max_tokens,
                              time_limit=config.request_timeout, context_messages=config.context_messages)
            slot = await asyncio.wait_for(queue.acquire(), timeout=config.request_timeout)
        except HullFTError as exc:
            return error(400, str(exc))
        except QueueFullError as exc:
            return error(429, str(exc), kind="rate_limit_error", code="queue_full",
                         headers={"Retry-After": str(exc.retry_after)})
        except TimeoutError:
            return error(504, f"timed out after {config.request_timeout:g} s waiting for the model", kind="timeout")
        call.sampling.time_limit = max(0.1, deadline - time.monotonic())
        if body.stream:
            return await stream_response(request, body, call, slot)
        try:
            # the generation's own time limit normally ends it first (a partial answer, finish_reason
            # length); the watchdog's grace second catches an adaptation that overran the deadline
            result = await until_disconnect(request, runtime.agenerate(call), deadline + WATCHDOG_GRACE_SECONDS)
        except HullFTError as exc:
            return error(400, str(exc))
        except RequestTimeoutError:
            return error(504, f"the request did not finish within {config.request_timeout:g} s", kind="timeout")
        finally:
            slot.release()
        if result is None:  # the client went away; its generation was stopped
            return Response(status_code=499)
        observe(result, slot)
        return JSONResponse(completion_body(call, result, model=served, queue_seconds=slot.waited))

    def observe(result: CallResult, slot: Slot) -> None:
        metrics.observe_call(slot.waited, result.timings, result.prompt_tokens, result.stats.output_tokens,
                             result.report.adapted, result.report.skipped)

    async def stream_response(request: Request, body: ChatCompletionRequest, call: Call, slot: Slot) -> Response:
        items = runtime.astream(call).__aiter__()
        try:  # the first item comes after the prompt is fitted and adapted: errors still get a 4xx status
            first = await items.__anext__()
        except HullFTError as exc:
            slot.release()
            return error(400, str(exc))
        except BaseException:
            slot.release()
            raise
        stream_id, created = completion_id(), int(time.time())
        include_usage = bool(body.stream_options and body.stream_options.include_usage)

        def sse(payload: dict[str, Any]) -> str:
            return f"data: {json.dumps(payload, ensure_ascii=False)}\n\n"

        async def events() -> AsyncIterator[str]:
            item: str | CallResult = first
            yield sse(chunk(stream_id, served, created, {"role": "assistant", "content": ""}))
            try:
                while isinstance(item, str):
                    yield sse(chunk(stream_id, served, created, {"content": item}))
                    item = await items.__anext__()
                result = item
            except Exception as exc:  # headers are sent: report the error in the stream, OpenAI-style
                logger.warning("stream failed: %s", exc, exc_info=True)
                yield sse(error_body(f"{type(exc).__name__}: {exc}", kind="server_error"))
                return
            finally:
                slot.release()
            observe(result, slot)
            yield sse(chunk(stream_id, served, created, final_delta(result), finish_reason(result),
                            hullft=report_extra(call, result, slot.waited)))
            if include_usage:
                yield sse(chunk(stream_id, served, created, None, usage=usage(result)))
            yield "data: [DONE]\n\n"

        return ReleasingStream(events(), slot, items)

    # ------------------------------------------------------------------ models, health, metrics
    @app.get("/v1/models")
    async def models(request: Request) -> Response:
        try:
            tenant(request)
        except PermissionError as exc:
            return unauthorized(exc)
        return JSONResponse({"object": "list", "data": [model_card(served)]})

    @app.get("/v1/models/{model_id:path}")
    async def model(model_id: str, request: Request) -> Response:
        try:
            tenant(request)
        except PermissionError as exc:
            return unauthorized(exc)
        if model_id != served:
            return error(404, f"model {model_id!r} is not served here; this server serves {served!r}",
                         kind="not_found_error", code="model_not_found")
        return JSONResponse(model_card(served))

    @app.get("/health")
    async def health() -> dict[str, Any]:
        return {"status": "ok", "model": served, "waiting": queue.waiting, "running": queue.running,
                "adapter": runtime.adapter is not None, "memory": runtime.memory is not None}

    @app.get("/metrics")
    async def prometheus() -> Response:
        return Response(metrics.render(), media_type=metrics.content_type)

    # ------------------------------------------------------------------ the caller's memory
    def caller_memory(request: Request) -> tuple[Any, str] | JSONResponse:
        """The memory and the caller's namespace in it, or the error response to send instead."""
        try:
            namespace = tenant(request)
        except PermissionError as exc:
            return unauthorized(exc)
        if runtime.memory is None:
            return error(404, "this server logs to no memory (start it with --memory)", kind="not_found_error")
        return runtime.memory, namespace if namespace is not None else runtime.memory.namespace

    @app.post("/v1/memory/search")
    async def memory_search(request: Request, body: MemorySearch) -> Response:
        found = caller_memory(request)
        if isinstance(found, JSONResponse):
            return found
        memory, namespace = found
        try:
            pool = await asyncio.to_thread(memory.candidates, k=body.k, context=body.query, namespace=namespace,
                                           task=body.task)
        except HullFTError as exc:
            return error(400, str(exc))
        rows = [{"id": i, "text": t, "similarity": float(s), "metadata": m}
                for i, t, s, m in zip(pool.ids, pool.texts, pool.similarities, pool.metadata or [{}] * len(pool),
                                      strict=True)]
        return JSONResponse(json.loads(json.dumps({"object": "list", "data": rows}, default=str)))

    @app.get("/v1/memory/stats")
    async def memory_stats(request: Request) -> Response:
        found = caller_memory(request)
        if isinstance(found, JSONResponse):
            return found
        memory, ns = found
        episodes = await asyncio.to_thread(memory.episodes, ns)
        return JSONResponse({"namespace": ns, "rows": await asyncio.to_thread(memory.count, ns),
                             "episodes": len(episodes),
                             "sessions": sorted({e.episode_id for e in episodes})[:1000]})

    @app.post("/v1/memory/episodes/{episode_id}/finish")
    async def memory_finish(episode_id: str, body: EpisodeEnd, request: Request) -> Response:
        found = caller_memory(request)
        if isinstance(found, JSONResponse):
            return found
        memory, ns = found
        try:
            updated = await asyncio.to_thread(memory.finish_episode, episode_id, outcome=body.outcome,
                                              reward=body.reward, namespace=ns)
        except HullFTError as exc:
            return error(400, str(exc))
        if not updated:
            return error(404, f"no rows of episode {episode_id!r} in namespace {ns!r}", kind="not_found_error")
        return JSONResponse({"episode_id": episode_id, "updated": updated, "outcome": body.outcome,
                             "reward": body.reward})

    @app.delete("/v1/memory/episodes/{episode_id}")
    async def memory_forget(episode_id: str, request: Request) -> Response:
        found = caller_memory(request)
        if isinstance(found, JSONResponse):
            return found
        memory, ns = found
        try:
            deleted = await asyncio.to_thread(memory.forget, episode_id=episode_id, namespace=ns)
        except HullFTError as exc:
            return error(400, str(exc))
        return JSONResponse({"episode_id": episode_id, "deleted": deleted})

    return app


_KNOWN = {"/v1/chat/completions", "/v1/models", "/health", "/metrics", "/v1/memory/search", "/v1/memory/stats"}


def model_card(name: str) -> dict[str, Any]:
    return {"id": name, "object": "model", "created": 0, "owned_by": "hullft-agent"}


async def until_disconnect(request: Request, work: Any, deadline: float) -> CallResult | None:
    """Await `work`; cancel it (which stops generation) when the client disconnects (→ None) or at `deadline`."""
    task = asyncio.ensure_future(work)
    try:
        while True:
            left = deadline - time.monotonic()
            if left <= 0:
                raise RequestTimeoutError
            done, _ = await asyncio.wait({task}, timeout=min(DISCONNECT_POLL_SECONDS, left))
            if done:
                return task.result()
            if await request.is_disconnected():
                return None
    finally:
        if not task.done():
            task.cancel()
            await asyncio.gather(task, return_exceptions=True)


class ReleasingStream(StreamingResponse):
    """A server-sent-event stream that gives its model slot back however the response ends."""

    def __init__(self, events: AsyncIterator[str], slot: Slot, items: Any) -> None:
        super().__init__(events, media_type="text/event-stream", headers={"Cache-Control": "no-cache"})
        self._slot, self._items = slot, items

    async def __call__(self, scope: Any, receive: Any, send: Any) -> None:
        try:
            await super().__call__(scope, receive, send)
        finally:
            self._slot.release()
            await self._items.aclose()  # stops the generation if the client left mid-stream

