"""Build the runtime `hullft-agent serve` serves, from its command-line arguments, and run uvicorn."""

from __future__ import annotations

import argparse
import logging
import socket
import threading
import time
from typing import Any

from hullft_agent.config import DECISION_FORMATS, AdapterConfig, ModelConfig
from hullft_agent.errors import CLIError
from hullft_agent.runtime import Runtime
from hullft_server.config import ServerConfig, parse_api_keys

logger = logging.getLogger(__name__)


def build_runtime(args: argparse.Namespace, adapter_config: AdapterConfig) -> Runtime:
    """The packaged (or given) model, the memory at --memory, and an adapter over it unless --no-adapt."""
    from hullft_agent.adapter import TestTimeAdapter
    from hullft_agent.embedding import Embedder
    from hullft_agent.memory import TrajectoryMemory
    from hullft_agent.models import load_model

    model = load_model(ModelConfig(name_or_path=args.model, device=args.device))
    memory = None
    adapter = None
    if args.memory:
        embedder = Embedder(model=args.embedder)
        memory = TrajectoryMemory.open(args.memory, embedder=embedder, namespace=args.namespace)
        if not args.no_adapt:
            adapter = TestTimeAdapter(model, embedder=embedder, source=memory, config=adapter_config)
    elif not args.no_adapt:
        logger.warning("no --memory: the server answers with the unadapted model and logs nothing")
    return Runtime(model if adapter is None else None, adapter=adapter, memory=memory,
                   context_overflow=args.context_overflow, log_source="hullft_server",
                   log_decisions=args.log_decisions, prompt_format=args.prompt_format)


def server_config(args: argparse.Namespace, name: str) -> ServerConfig:
    keys = parse_api_keys(args.api_key or [])
    return ServerConfig(model_name=args.served_name or name, api_keys=keys, namespace=args.namespace,
                        max_queue=args.max_queue, request_timeout=args.request_timeout,
                        default_max_tokens=args.max_tokens)


def serve(args: argparse.Namespace, adapter_config: AdapterConfig) -> int:
    import uvicorn

    from hullft_server.app import create_app

    if args.host not in ("127.0.0.1", "localhost", "::1") and not args.api_key:
        raise CLIError(f"--host {args.host} exposes the server beyond this machine: give --api-key KEY[=NAMESPACE] "
                       "(or bind to 127.0.0.1)")
    from transformers.utils import logging as hf_logging

    hf_logging.disable_progress_bar()  # weight-loading bars say nothing a server log needs
    runtime = build_runtime(args, adapter_config)
    config = server_config(args, runtime.name)
    app = create_app(runtime, config)
    auth = f"{len(config.api_keys)} API key(s)" if config.api_keys else "no API keys (single tenant)"
    print(f"hullft-agent serve: model {config.model_name!r}, "
          f"{'adapting' if runtime.adapter is not None else 'not adapting'}, memory "
          f"{args.memory or 'none'}, {auth}; http://{args.host}:{args.port}/v1", flush=True)
    uvicorn.run(app, host=args.host, port=args.port, log_level="info" if args.verbose else "warning",
                timeout_graceful_shutdown=args.drain_seconds)
    return 0


def serve_in_thread(app: Any, host: str = "127.0.0.1", port: int = 0,
                    timeout: float = 30.0) -> tuple[Any, threading.Thread, str]:
    """Run `app` with uvicorn in a daemon thread (for tests, benchmarks and notebooks).

    Returns (server, thread, base URL); stop with `server.should_exit = True; thread.join()`.
    Port 0 picks a free port.
    """
    import uvicorn

    sock = socket.socket(socket.AF_INET6 if ":" in host else socket.AF_INET, socket.SOCK_STREAM)
    sock.setsockopt(socket.SOL_SOCKET, socket.SO_REUSEADDR, 1)
    sock.bind((host, port))
    server = uvicorn.Server(uvicorn.Config(app, log_level="warning", lifespan="on"))
    thread = threading.Thread(target=server.run, kwargs={"sockets": [sock]}, name="hullft-server", daemon=True)
    thread.start()
    deadline = time.monotonic() + timeout
    while not server.started:
        if time.monotonic() > deadline or not thread.is_alive():
            server.should_exit = True
            raise RuntimeError(f"the server did not start within {timeout:g} s")
        time.sleep(0.02)
    return server, thread, f"http://{host}:{sock.getsockname()[1]}"


def add_arguments(parser: Any) -> None:
    """The serve-specific flags (the model and adaptation flags are the CLI's shared ones)."""
    parser.add_argument("--host", default="127.0.0.1", help="address to bind (default %(default)s)")
    parser.add_argument("--port", type=int, default=8000)
    parser.add_argument("--memory", default=None, help="trajectory memory URI (folder or s3://...); exchanges are "
                        "logged there and adaptation learns from it")
    parser.add_argument("--namespace", default=None, help="namespace of requests when no --api-key is given")
    parser.add_argument("--api-key", action="append", dest="api_key", metavar="KEY[=NAMESPACE]",
                        help="accept this Bearer key, scoped to NAMESPACE (default: a namespace derived from the "
                        "key); repeat for several tenants")
    parser.add_argument("--served-name", dest="served_name", default=None,
                        help="model id clients send (default: the model's name)")
    parser.add_argument("--mode", choices=["per_query", "per_task"], default="per_task",
                        help="per_task keeps one adapter per session (default), per_query resets after each request")
    parser.add_argument("--adapter-dir", dest="adapter_dir", default=None,
                        help="save per-session adapters here (kept across restarts)")
    parser.add_argument("--no-adapt", action="store_true", dest="no_adapt", help="serve the unadapted model")
    parser.add_argument("--log-decisions", action="store_true", dest="log_decisions",
                        help="also log each exchange as a decision row (prompt -> answer)")
    parser.add_argument("--learn-kinds", nargs="+", default=None, dest="learn_kinds", metavar="KIND",
                        help="adapt only on rows of these kinds (e.g. decision); a request's hullft.learn_from "
                        "replaces the server's")
    parser.add_argument("--learn-outcomes", nargs="+", default=None, dest="learn_outcomes", metavar="OUTCOME",
                        help="adapt only on rows of episodes that ended so (e.g. won; set by POST "
                        "/v1/memory/episodes/{session}/finish)")
    parser.add_argument("--learn-min-reward", type=float, default=None, dest="learn_min_reward", metavar="R",
                        help="adapt only on rows whose reward is at least R")
    parser.add_argument("--prompt-format", choices=list(DECISION_FORMATS), default=None, dest="prompt_format",
                        help="answer every conversation trimmed to this decision format (nosys-h1: no system "
                        "messages, one earlier exchange); decision rows keep the trimmed prompt (default: all of it)")
    parser.add_argument("--max-queue", type=int, default=16, dest="max_queue",
                        help="requests that may wait for the model; more are answered 429 (default %(default)s)")
    parser.add_argument("--request-timeout", type=float, default=300.0, dest="request_timeout",
                        help="seconds a request may wait, adapt and generate (default %(default)s)")
    parser.add_argument("--max-tokens", type=int, default=256, dest="max_tokens",
                        help="max_tokens of requests that give none (default %(default)s)")
    parser.add_argument("--context-overflow", choices=["error", "truncate_oldest"], default="error",
                        dest="context_overflow", help="an oversize prompt: 400 (default) or drop the oldest messages")
    parser.add_argument("--drain-seconds", type=float, default=60.0, dest="drain_seconds",
                        help="on SIGTERM/Ctrl-C, wait this long for in-flight requests (default %(default)s)")
    parser.add_argument("--device", default="auto", help="auto, cpu, cuda, ...")
