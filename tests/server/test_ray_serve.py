"""The server on Ray Serve: session routing rules in-process, then two replicas on a local Ray cluster sharing
one memory on a local S3 server, each session kept on the replica that holds its adapter."""

from __future__ import annotations

import json
import os
import socket
import time
from pathlib import Path

import httpx
import pytest

pytest.importorskip("ray.serve", reason="the ray extra (ray[serve]) is not installed")

from hullft_server import ServerConfig, create_app  # noqa: E402
from hullft_server.ray_serve import (  # noqa: E402
    REPLICA_HEADER,
    ROUTING_HEADER,
    RayServeSpec,
    SessionRouter,
    SessionSlot,
    build_runtime,
)
from ray_tiny import DIM, MODEL  # noqa: E402

from hullft_agent.config import (  # noqa: E402
    DECISION_FORMATS,
    AdapterConfig,
    FinetuneConfig,
    LoRAConfig,
    SelectionConfig,
)
from hullft_agent.memory import TrajectoryMemory  # noqa: E402
from hullft_agent.memory.testing import HashingEmbedder  # noqa: E402

HERE = Path(__file__).resolve().parent
ADAPTER = dict(mode="per_task", selection=SelectionConfig(n=2, k=8),
               finetune=FinetuneConfig(lr=5e-2, max_length=64, lora=LoRAConfig(r=4, alpha=8)))


def ask(text: str, **fields) -> dict:
    return {"model": MODEL, "messages": [{"role": "system", "content": "Answer with one command."},
                                         {"role": "user", "content": text}],
            "max_tokens": 4, "temperature": 0, "seed": 1, **fields}


def seed(memory: TrajectoryMemory) -> None:
    memory.log_episode("seed", [("observation", "the fridge is closed"), ("action", "open the fridge"),
                                ("observation", "the pantry is dark"), ("action", "turn on the light")])


# ---------------------------------------------------------------------------- in one process, no Ray
def test_a_spec_takes_a_prompt_format_by_name():
    assert RayServeSpec(prompt_format="nosys-h1").prompt_format == DECISION_FORMATS["nosys-h1"]
    with pytest.raises(ValueError, match="unknown decision format"):
        RayServeSpec(prompt_format="short")


@pytest.mark.asyncio
async def test_router_checks_the_routing_header_and_an_evicted_session_continues_from_adapter_dir(tmp_path):
    spec = RayServeSpec(builder="ray_tiny:tiny_runtime", memory=str(tmp_path / "mem"),
                        adapter=AdapterConfig(**ADAPTER, adapter_dir=tmp_path / "adapters"))
    runtime = build_runtime(spec)
    seed(runtime.memory)
    opened: dict[str, SessionSlot] = {}

    async def open_session(session: str) -> SessionSlot:  # what Ray's multiplexing does, minus the LRU
        return opened.setdefault(session, SessionSlot(session, runtime))

    router = SessionRouter(create_app(runtime, spec.server), spec.server, open_session, "replica-a")
    transport = httpx.ASGITransport(app=router)
    async with httpx.AsyncClient(transport=transport, base_url="http://test", timeout=60) as client:
        async def chat(body: dict, **headers) -> httpx.Response:
            return await client.post("/v1/chat/completions", json=body, headers=headers)

        health = await client.get("/health")
        assert health.status_code == 200 and health.headers[REPLICA_HEADER] == "replica-a"
        refused = await chat(ask("fridge?", user="s1"))
        assert refused.status_code == 400 and ROUTING_HEADER in refused.json()["error"]["message"]
        assert refused.headers[REPLICA_HEADER] == "replica-a"
        mismatch = await chat(ask("fridge?", user="other"), **{ROUTING_HEADER: "s1"})
        assert mismatch.status_code == 400 and "'other'" in mismatch.json()["error"]["message"]
        task_mismatch = await chat(ask("fridge?", hullft={"task": "t9"}), **{ROUTING_HEADER: "s1"})
        assert task_mismatch.status_code == 400 and "hullft.task" in task_mismatch.json()["error"]["message"]
        too_long = await chat(ask("fridge?"), **{ROUTING_HEADER: "s" * 300})
        assert too_long.status_code == 400 and ROUTING_HEADER in too_long.json()["error"]["message"]
        assert not opened, "refused requests hold no session"
        anonymous = await chat(ask("fridge?"))
        assert anonymous.status_code == 200 and anonymous.json()["hullft"]["adaptation"]["mode"] == "per_query"

        first = await chat(ask("The fridge is closed."), **{ROUTING_HEADER: "s1"})  # the header is the session
        one = first.json()["hullft"]
        assert first.status_code == 200 and (one["task"], one["episode_id"]) == ("s1", "s1")
        assert one["adaptation"]["task_steps"] == one["adaptation"]["steps"] > 0
        two = (await chat(ask("The fridge is open.", user="s1"), **{ROUTING_HEADER: "s1"})).json()["hullft"]
        assert two["adaptation"]["task_steps"] == one["adaptation"]["task_steps"] + two["adaptation"]["steps"]
        assert set(opened) == {"s1"} and opened["s1"].keys == {(None, "s1")}

        opened["s1"].release()  # Ray evicts the session: saved to adapter_dir, dropped from this replica
        assert list((tmp_path / "adapters").glob("s1*.safetensors"))
        assert not runtime.adapter.release_task("s1"), "the replica keeps no copy of an evicted session"
        three = (await chat(ask("The fridge is open.", user="s1"), **{ROUTING_HEADER: "s1"})).json()["hullft"]
        assert three["adaptation"]["task_steps"] == two["adaptation"]["task_steps"] + three["adaptation"]["steps"], \
            "the session continues from the adapter its last replica saved"
        other = (await chat(ask("The fridge is open."), **{ROUTING_HEADER: "s2"})).json()["hullft"]
        assert other["adaptation"]["task_steps"] == other["adaptation"]["steps"], "s2 does not start from s1's adapter"


# ---------------------------------------------------------------------------- a local Ray cluster
def _free_port() -> int:
    with socket.socket() as s:
        s.bind(("127.0.0.1", 0))
        return s.getsockname()[1]


def _stream_report(response: httpx.Response) -> dict:
    events = [json.loads(line[6:]) for line in response.iter_lines() if line.startswith("data: {")]
    return next(e["hullft"] for e in events if "hullft" in e)


def test_two_replicas_keep_each_session_on_its_replica_and_share_one_memory(s3_server, tmp_path, monkeypatch):
    import ray
    from hullft_server.ray_serve import deploy
    from ray import serve

    uri = "s3://agents/shared"
    seed(TrajectoryMemory.open(uri, embedder=HashingEmbedder(DIM), storage_options=s3_server))
    spec = RayServeSpec(builder="ray_tiny:tiny_runtime", memory=uri,
                        memory_options={"storage_options": s3_server, "read_consistency_interval": 0},
                        adapter=AdapterConfig(**ADAPTER, adapter_dir=tmp_path / "adapters"),
                        server=ServerConfig(default_max_tokens=4), sessions_per_replica=2)
    # Replicas are processes Ray spawns: they inherit this environment, so they can import ray_tiny.
    monkeypatch.setenv("PYTHONPATH", os.pathsep.join(filter(None, [str(HERE.parent), str(HERE),
                                                                   os.environ.get("PYTHONPATH")])))
    port = _free_port()
    try:
        ray.init(address="local", num_cpus=2, include_dashboard=False, log_to_driver=False)
        serve.start(http_options={"host": "127.0.0.1", "port": port})
    except Exception as exc:  # no Ray here (sandbox, no shared memory): say why rather than fail
        ray.shutdown()
        pytest.skip(f"Ray Serve cannot start on this machine: {type(exc).__name__}: {exc}")
    try:
        url = deploy(spec, num_replicas=2, port=port, ray_actor_options={"num_cpus": 0.5})
        client = httpx.Client(base_url=url, timeout=120)
        replica: dict[str, str] = {}
        last: dict[str, dict] = {}

        def chat(session: str, text: str, **fields) -> dict:
            response = client.post("/v1/chat/completions", json=ask(text, **fields), headers={ROUTING_HEADER: session})
            assert response.status_code == 200, response.text
            hullft = response.json()["hullft"]
            assert hullft["task"] == session and hullft["episode_id"] == session
            replica.setdefault(session, response.headers[REPLICA_HEADER])
            assert response.headers[REPLICA_HEADER] == replica[session], f"{session} moved to another replica"
            return hullft

        sessions = ["s0", "s1", "s2", "s3"]
        for session in sessions:  # one at a time: Ray sends a new session to the replica holding the fewest
            kwargs = {"user": session} if session == "s0" else {}
            last[session] = chat(session, f"Kitchen {session}: the fridge is closed.", **kwargs)
            assert last[session]["adaptation"]["task_steps"] == last[session]["adaptation"]["steps"] > 0, \
                "a new session starts from the base model, not from another session's adapter"
            time.sleep(1.0)  # the replica reports the session it now holds; Ray's routers learn it
        assert sorted(list(replica.values()).count(r) for r in set(replica.values())) == [2, 2], replica

        for session in sessions:  # every session again, on its own replica, its own adapter growing
            if session == "s1":
                with client.stream("POST", "/v1/chat/completions", headers={ROUTING_HEADER: "s1", "X-Session-Id": "s1"},
                                   json=ask("Kitchen s1: the fridge is open.", stream=True)) as response:
                    assert response.status_code == 200 and response.headers[REPLICA_HEADER] == replica["s1"]
                    now = _stream_report(response)
            else:
                now = chat(session, f"Kitchen {session}: the fridge is open.")
            assert now["adaptation"]["task_steps"] == last[session]["adaptation"]["task_steps"] + \
                now["adaptation"]["steps"], f"{session}'s adapter did not keep training"
            last[session] = now

        a, b = "s0", next(s for s in sessions if replica[s] != replica["s0"])
        for asker, logger in ((a, b), (b, a)):  # each replica finds what the other one logged
            found = client.post("/v1/memory/search", json={"query": f"Kitchen {logger}: the fridge is open.", "k": 50},
                                headers={ROUTING_HEADER: asker})
            assert found.status_code == 200 and found.headers[REPLICA_HEADER] == replica[asker]
            ids = {row["id"] for row in found.json()["data"]}
            assert set(last[logger]["logged_ids"]) <= ids, f"{replica[asker]} does not see {logger}'s exchange"

        # A fifth session evicts the least recently used session of the replica it lands on; that session
        # then continues, on whichever replica gets it, from the adapter saved to the shared adapter_dir.
        chat("s4", "Kitchen s4: the fridge is closed.")
        evicted = next(s for s in sessions if replica[s] == replica["s4"])
        del replica[evicted]
        again = chat(evicted, f"Kitchen {evicted}: the fridge is open.")
        assert again["adaptation"]["task_steps"] == last[evicted]["adaptation"]["task_steps"] + \
            again["adaptation"]["steps"], f"{evicted} lost its adapter when it was evicted"
        client.close()
    finally:
        serve.shutdown()
        ray.shutdown()
