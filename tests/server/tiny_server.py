"""Run a tiny-model server in this process (for tests that signal it): tiny_server.py MEMORY_DIR PORT_FILE."""

from __future__ import annotations

import socket
import sys
from pathlib import Path

sys.path.insert(0, str(Path(__file__).resolve().parents[1]))

import uvicorn  # noqa: E402
from conftest import build_tiny_tokenizer  # noqa: E402
from hullft_server import ServerConfig, create_app  # noqa: E402
from live_server import tiny_runtime  # noqa: E402

from hullft_agent.memory import TrajectoryMemory  # noqa: E402
from hullft_agent.memory.testing import HashingEmbedder  # noqa: E402

if __name__ == "__main__":
    memory = TrajectoryMemory.open(sys.argv[1], embedder=HashingEmbedder(32))
    memory.log_episode("seed", [("observation", "the fridge is closed"), ("action", "open the fridge")])
    app = create_app(tiny_runtime(build_tiny_tokenizer(), memory), ServerConfig(default_max_tokens=8))
    sock = socket.socket()
    sock.bind(("127.0.0.1", 0))
    Path(sys.argv[2]).write_text(str(sock.getsockname()[1]))
    config = uvicorn.Config(app, log_level="warning", timeout_graceful_shutdown=60)
    uvicorn.Server(config).run(sockets=[sock])
