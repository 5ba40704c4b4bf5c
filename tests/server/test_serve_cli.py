"""End to end: `hullft-agent serve` with the packaged SmolLM2 and embedder, as a user starts it."""

from __future__ import annotations

import socket
import subprocess
import sys
import time
from pathlib import Path

import httpx
import openai
import pytest

from hullft_agent.cli import build_parser, serve_adapter_config
from hullft_agent.config import DECISION_FORMATS, AdapterConfig, LearnFrom
from hullft_agent.embedding import Embedder
from hullft_agent.memory import TrajectoryMemory


def free_port() -> int:
    with socket.socket() as sock:
        sock.bind(("127.0.0.1", 0))
        return sock.getsockname()[1]


def test_serve_command_answers_adapted_with_the_packaged_model(tmp_path):
    memory = TrajectoryMemory.open(tmp_path / "mem", embedder=Embedder())
    memory.log_episode("earlier", [("observation", "The fridge in the kitchen is closed."),
                                   ("action", "open fridge"), ("observation", "You see a red apple."),
                                   ("action", "take red apple")])
    port = free_port()
    cli = Path(sys.executable).with_name("hullft-agent")
    proc = subprocess.Popen([str(cli), "serve", "--memory", str(tmp_path / "mem"), "--port", str(port), "--n", "2",
                             "--max-tokens", "8"], stdout=subprocess.PIPE, stderr=subprocess.STDOUT, text=True)
    try:
        deadline = time.monotonic() + 180
        while True:
            assert proc.poll() is None, proc.stdout.read()
            assert time.monotonic() < deadline, "the server did not come up"
            try:
                if httpx.get(f"http://127.0.0.1:{port}/health", timeout=2).status_code == 200:
                    break
            except httpx.HTTPError:
                time.sleep(0.5)
        client = openai.OpenAI(base_url=f"http://127.0.0.1:{port}/v1", api_key="none", max_retries=0)
        model = client.models.list().data[0].id
        reply = client.chat.completions.create(model=model, messages=[
            {"role": "user", "content": "The fridge is closed. What do you do?"}], temperature=0, user="e2e")
        report = reply.model_extra["hullft"]["adaptation"]
        assert reply.choices[0].message.content.strip() and report["steps"] == 2 and report["selected_ids"]
        assert reply.usage.completion_tokens <= 8
    finally:
        proc.terminate()
        output = proc.communicate(timeout=60)[0]
    assert "hullft-agent serve: model 'smollm2-135m-instruct', adapting" in output, output
    assert TrajectoryMemory.open(tmp_path / "mem", create=False).count(episode_id="e2e") == 2


def test_serve_answers_in_the_prompt_format_it_is_given():
    from hullft_server.run import build_runtime

    runtime = build_runtime(build_parser().parse_args(["serve", "--no-adapt", "--prompt-format", "nosys-h1"]),
                            AdapterConfig())
    assert runtime.prompt_format == DECISION_FORMATS["nosys-h1"]
    assert build_runtime(build_parser().parse_args(["serve", "--no-adapt"]), AdapterConfig()).prompt_format is None
    with pytest.raises(SystemExit):
        build_parser().parse_args(["serve", "--prompt-format", "short"])


def test_serve_flags_choose_the_rows_adaptation_learns_from():
    args = build_parser().parse_args(["serve", "--learn-kinds", "decision", "--learn-outcomes", "won", "--mode",
                                      "per_query"])
    config = serve_adapter_config(args)
    assert config.learn_from == LearnFrom(kinds=["decision"], outcomes=["won"]) and config.mode == "per_query"
    assert serve_adapter_config(build_parser().parse_args(["serve"])).learn_from is None
