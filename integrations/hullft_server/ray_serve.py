"""The OpenAI-compatible server on Ray Serve: several replicas, each session answered by the replica holding it.

Every replica builds its own runtime from a picklable `RayServeSpec` and serves the same `create_app`
app. The replicas share the trajectory memory (object storage, e.g. `s3://`) and, through
`AdapterConfig.adapter_dir` on a shared file system, the per_task adapters. A session's adapter lives
in one replica's memory, so its requests must reach that replica: Ray Serve's model multiplexing
routes by the `serve_multiplexed_model_id` header, and clients set it to the session. A replica keeps
at most `sessions_per_replica` sessions; taking one more evicts the least recently used, whose adapter
is then saved to `adapter_dir` and dropped, so whichever replica gets that session next continues
from the file. Every response names its replica in the `x-hullft-replica` header.

This is the only module that imports Ray (the `ray` extra); see docs/server.md.
"""

from __future__ import annotations

import asyncio
import importlib
import json
import logging
from collections.abc import Awaitable, Callable
from typing import Any, Literal

from pydantic import Field, field_validator
from ray import serve
from starlette.requests import Request
from starlette.responses import JSONResponse, Response

from hullft_agent.config import AdapterConfig, DecisionFormat, ModelConfig, StrictConfig, decision_format
from hullft_agent.errors import HullFTError, InvalidArgumentError, InvalidTypeError
from hullft_agent.memory.schema import check_name
from hullft_agent.runtime import Runtime
from hullft_server.app import SESSION_HEADER, create_app
from hullft_server.config import ServerConfig
from hullft_server.protocol import error_body

logger = logging.getLogger(__name__)

#: The header Ray Serve routes by (it also accepts hyphens); clients set it to the session id.
ROUTING_HEADER = "serve_multiplexed_model_id"
#: The response header naming the replica that answered.
REPLICA_HEADER = "x-hullft-replica"
CHAT_PATH = "/v1/chat/completions"
#: Requests a replica accepts beyond its model queue (health, metrics, memory endpoints), so Ray's router
#: never sees a session's replica as full before the app itself would answer 429.
EXTRA_ONGOING = 8
LOCAL_HOSTS = ("127.0.0.1", "localhost", "::1")


class RayServeSpec(StrictConfig):
    """What every replica builds: plain data, so Ray can ship it to replica processes on any node."""

    builder: str | None = Field(None, description="'module:function' called with this spec in each replica to "
                                "build the Runtime to serve (instead of model/memory/embedder below)")
    model: str | None = Field(None, description="model name or folder (None: the packaged model)")
    device: str = "auto"
    memory: str | None = Field(None, description="trajectory memory URI every replica shares (s3://..., or a "
                               "folder all nodes mount)")
    memory_options: dict[str, Any] = Field(default_factory=dict, description="TrajectoryMemory.open overrides, "
                                           "e.g. storage_options, read_consistency_interval")
    namespace: str | None = Field(None, description="the memory namespace of requests without an API key")
    embedder: str | None = Field(None, description="the memory's embedder model (None: the packaged one)")
    adapt: bool = True
    adapter: AdapterConfig = Field(default_factory=lambda: AdapterConfig(mode="per_task"))
    server: ServerConfig = Field(default_factory=ServerConfig)
    context_overflow: Literal["error", "truncate_oldest"] = "error"
    log_decisions: bool = False
    prompt_format: DecisionFormat | None = Field(None, description="answer every conversation trimmed to this "
                                                 "decision format (or its name, e.g. 'nosys-h1'); None: all of it")
    sessions_per_replica: int = Field(8, ge=1, description="sessions a replica keeps; taking one more saves the "
                                      "least recently used one to adapter_dir and drops it")

    @field_validator("prompt_format", mode="before")
    @classmethod
    def _prompt_format(cls, value: Any) -> DecisionFormat | None:
        return decision_format(value)

    @field_validator("builder")
    @classmethod
    def _builder(cls, value: str | None) -> str | None:
        if value is not None:
            module, sep, name = value.partition(":")
            if not sep or not module or not name.isidentifier():
                raise ValueError(f"builder must be 'package.module:function', got {value!r}")
        return value


def build_runtime(spec: RayServeSpec) -> Runtime:
    """The runtime one replica serves: the spec's builder's, or the model, memory and adapter it names."""
    if spec.builder is not None:
        module, _, name = spec.builder.partition(":")
        try:
            build = getattr(importlib.import_module(module), name)
        except (ImportError, AttributeError) as exc:
            raise InvalidArgumentError(f"cannot import the runtime builder {spec.builder!r} in this replica: {exc} "
                                       "(is its folder on the replicas' PYTHONPATH?)") from exc
        runtime = build(spec)
        if not isinstance(runtime, Runtime):
            raise InvalidTypeError(f"the builder {spec.builder!r} must return a Runtime, got {type(runtime).__name__}")
        return runtime
    from hullft_agent.adapter import TestTimeAdapter
    from hullft_agent.embedding import Embedder
    from hullft_agent.memory import TrajectoryMemory
    from hullft_agent.models import load_model

    model = load_model(ModelConfig(device=spec.device, **({"name_or_path": spec.model} if spec.model else {})))
    memory = adapter = None
    if spec.memory:
        embedder = Embedder(**({"model": spec.embedder} if spec.embedder else {}))
        memory = TrajectoryMemory.open(spec.memory, embedder=embedder, namespace=spec.namespace, **spec.memory_options)
        if spec.adapt:
            adapter = TestTimeAdapter(model, embedder=embedder, source=memory, config=spec.adapter)
    else:
        logger.warning("no memory: the replicas answer with the unadapted model and log nothing")
    return Runtime(model if adapter is None else None, adapter=adapter, memory=memory,
                   context_overflow=spec.context_overflow, log_source="hullft_server", log_decisions=spec.log_decisions,
                   prompt_format=spec.prompt_format)


class SessionSlot:
    """One session's stay on a replica: the per_task adapters ((namespace, task) keys) its requests used.

    Ray Serve calls `__del__` when it evicts the session (least recently used, past `sessions_per_replica`);
    the adapters are then saved to `adapter_dir` and dropped, so this replica keeps no copy that goes stale
    while another replica continues the session.
    """

    def __init__(self, session: str, runtime: Runtime) -> None:
        self.session = session
        self.keys: set[tuple[str | None, str]] = set()
        self.released = False
        self._runtime = runtime
        # Ray calls `__del__` on eviction when the object has one. An instance attribute rather than a
        # class finaliser: garbage collection never runs it, so the lock is never taken from a finaliser.
        self.__del__ = self.release

    def release(self) -> None:
        """Save (with `adapter_dir`) and drop this session's adapters; blocks until the model is free."""
        self.released = True
        adapter = self._runtime.adapter
        if adapter is None:
            return
        with self._runtime.lock:
            for namespace, task in sorted(self.keys, key=repr):
                adapter.release_task(task, namespace=namespace, save=True)
        logger.info("session %r left this replica (%d adapter(s) released)", self.session, len(self.keys))


class SessionRouter:
    """The ASGI app a replica serves: `create_app`'s, behind the session routing rules.

    A chat completion's session is the app's (`X-Session-Id`, else `user`) and its adapter key is
    `hullft.task` or the session. With the routing header set, that key must equal it (a request without a
    session takes the header's value as its session); a request with a session but no routing header is
    refused, since Ray could send it to a replica that does not hold the session's adapter. Everything
    else passes through untouched. Every response carries `x-hullft-replica`.
    """

    def __init__(self, app: Any, config: ServerConfig, open_session: Callable[[str], Awaitable[SessionSlot]],
                 replica: str) -> None:
        self.app, self.config, self.open_session, self.replica = app, config, open_session, replica

    async def __call__(self, scope: dict[str, Any], receive: Any, send: Any) -> None:
        if scope["type"] != "http":
            await self.app(scope, receive, send)
            return
        send = self._naming(send)
        if scope["method"] != "POST" or _route(scope) != CHAT_PATH:
            await self.app(scope, receive, send)
            return
        length = _header(scope, "content-length")
        if length is not None and (not length.isdigit() or int(length) > self.config.max_request_bytes):
            await self.app(scope, receive, send)  # the app answers 413 without reading the body
            return
        body = await _read_body(receive, self.config.max_request_bytes)
        if body is None:
            await _error(scope, receive, send, 413, f"the request body is over {self.config.max_request_bytes} bytes")
            return
        receive = _replay(body, receive)
        user, task = _session_fields(body)
        session = _header(scope, SESSION_HEADER) or user
        key = task or session
        routing = _routing_id(scope)
        if not routing:
            if key is not None:
                await _error(scope, receive, send, 400, f"this deployment runs several replicas: send the "
                             f"{ROUTING_HEADER} header set to the session ({key!r}) so every request of the session "
                             "reaches the replica that holds its adapter")
                return
            await self.app(scope, receive, send)  # no session: adapts per_query, any replica will do
            return
        try:
            check_name(routing, f"the {ROUTING_HEADER} header (the session)")
        except HullFTError as exc:
            await _error(scope, receive, send, 400, str(exc))
            return
        if key is None:
            scope = {**scope, "headers": [*scope["headers"], (SESSION_HEADER.encode(), routing.encode())]}
            key = routing
        elif key != routing:
            where = "hullft.task" if task else ("X-Session-Id" if _header(scope, SESSION_HEADER) else "user")
            await _error(scope, receive, send, 400, f"the {ROUTING_HEADER} header is {routing!r} but the request's "
                         f"session ({where}) is {key!r}: send the same id in both, so the request reaches the replica "
                         "that holds the session's adapter")
            return
        try:
            namespace = self.config.tenant(_header(scope, "authorization"))
        except PermissionError:
            await self.app(scope, receive, send)  # the app answers 401
            return
        slot = await self.open_session(routing)
        slot.keys.add((namespace, key))
        try:
            await self.app(scope, receive, send)
        finally:
            if slot.released:  # evicted while this request waited or ran: what it trained goes to the file too
                await asyncio.to_thread(slot.release)

    def _naming(self, send: Any) -> Any:
        name = (REPLICA_HEADER.encode(), self.replica.encode())

        async def named(message: dict[str, Any]) -> None:
            if message["type"] == "http.response.start":
                message = {**message, "headers": [*message.get("headers", []), name]}
            await send(message)

        return named


class _Forward(Response):
    """A response that is the router answering the request (how a plain deployment hands over to ASGI)."""

    def __init__(self, router: SessionRouter) -> None:
        super().__init__()
        self._router = router

    async def __call__(self, scope: Any, receive: Any, send: Any) -> None:
        await self._router(scope, receive, send)


@serve.deployment
class HullFTDeployment:
    """One replica: its own runtime and `create_app` app, and the sessions it holds (Ray's multiplexed models)."""

    def __init__(self, spec: RayServeSpec) -> None:
        self.replica = serve.get_replica_context().replica_tag
        self.runtime = build_runtime(spec)
        app = create_app(self.runtime, spec.server)
        runtime = self.runtime

        async def open_session(session: str) -> SessionSlot:
            return SessionSlot(session, runtime)

        # Wired up here, not as a decorated method, so the capacity comes from the spec.
        self.open_session = serve.multiplexed(max_num_models_per_replica=spec.sessions_per_replica)(open_session)
        self.router = SessionRouter(app, spec.server, self.open_session, self.replica)
        self._saved = False
        logger.info("replica %s serves %r", self.replica, runtime.name)

    async def __call__(self, request: Request) -> Response:
        return _Forward(self.router)

    def __del__(self) -> None:
        # Ray runs no ASGI lifespan for a plain deployment: keep what the active session trained, as the
        # app's shutdown would (sessions swapped out earlier were written to adapter_dir then).
        if getattr(self, "_saved", True) or self.runtime.adapter is None:
            return
        self._saved = True
        with self.runtime.lock:
            self.runtime.adapter.save_tasks()


def build_app(spec: RayServeSpec, *, num_replicas: int = 2, ray_actor_options: dict[str, Any] | None = None,
              **deployment_options: Any) -> Any:
    """The Ray Serve application (`serve.run` it, or use `deploy`); extra options go to `.options(...)`."""
    if num_replicas < 1:
        raise InvalidArgumentError(f"num_replicas must be at least 1, got {num_replicas}")
    options = {"num_replicas": num_replicas, "ray_actor_options": ray_actor_options or {"num_cpus": 1},
               "max_ongoing_requests": spec.server.max_queue + 1 + EXTRA_ONGOING, **deployment_options}
    return HullFTDeployment.options(**options).bind(spec)


def deploy(spec: RayServeSpec, *, num_replicas: int = 2, host: str = "127.0.0.1", port: int = 8000,
           name: str = "hullft", route_prefix: str = "/", ray_actor_options: dict[str, Any] | None = None,
           **deployment_options: Any) -> str:
    """Start Serve (and a local Ray, unless connected to a cluster) and deploy; returns the base URL.

    `host`/`port` apply when this call starts Serve; a running Serve keeps its own HTTP address.
    """
    if host not in LOCAL_HOSTS and not spec.server.api_keys:
        raise InvalidArgumentError(f"host {host!r} exposes the server beyond this machine: set "
                                   "spec.server.api_keys (or bind to 127.0.0.1)")
    serve.start(http_options={"host": host, "port": port})
    serve.run(build_app(spec, num_replicas=num_replicas, ray_actor_options=ray_actor_options, **deployment_options),
              name=name, route_prefix=route_prefix)
    return f"http://{host}:{port}{route_prefix.rstrip('/')}"


# ---------------------------------------------------------------------- ASGI helpers
def _header(scope: dict[str, Any], name: str) -> str | None:
    wanted = name.encode()
    for key, value in scope["headers"]:
        if key.lower() == wanted:
            return value.decode("latin-1") or None
    return None


def _routing_id(scope: dict[str, Any]) -> str | None:
    """The routing header, spelt with underscores or hyphens (as Ray's proxy accepts both)."""
    for key, value in scope["headers"]:
        if key.decode("latin-1").lower().replace("-", "_") == ROUTING_HEADER:
            return value.decode("latin-1") or None
    return None


def _route(scope: dict[str, Any]) -> str:
    path, root = scope["path"], scope.get("root_path", "")
    return path[len(root):] if root and path.startswith(root) else path


async def _read_body(receive: Any, limit: int) -> bytes | None:
    """The whole request body, or None past `limit` bytes (or when the client left)."""
    parts, size = [], 0
    while True:
        message = await receive()
        if message["type"] == "http.disconnect":
            return None
        chunk = message.get("body", b"")
        size += len(chunk)
        if size > limit:
            return None
        parts.append(chunk)
        if not message.get("more_body", False):
            return b"".join(parts)


def _replay(body: bytes, receive: Any) -> Any:
    """A `receive` that hands the app the body already read, then the client's later messages (disconnect)."""
    pending = [{"type": "http.request", "body": body, "more_body": False}]

    async def replayed() -> dict[str, Any]:
        return pending.pop() if pending else await receive()

    return replayed


def _session_fields(body: bytes) -> tuple[str | None, str | None]:
    """`user` and `hullft.task` of a chat request (None where absent; a malformed body is the app's to refuse)."""
    try:
        data = json.loads(body)
    except (ValueError, RecursionError):
        return None, None
    if not isinstance(data, dict):
        return None, None
    options = data.get("hullft")
    user = data.get("user")
    task = options.get("task") if isinstance(options, dict) else None
    return (user if isinstance(user, str) and user else None), (task if isinstance(task, str) and task else None)


async def _error(scope: Any, receive: Any, send: Any, status: int, message: str) -> None:
    await JSONResponse(error_body(message), status_code=status)(scope, receive, send)
