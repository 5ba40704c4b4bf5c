"""The server against the real clients users point at it: the `openai` SDK and LangChain's ChatOpenAI."""

from __future__ import annotations

import httpx
import openai
import pytest
from langchain_openai import ChatOpenAI
from live_server import KEYS, MODEL, serve_fixture  # noqa: F401  (the `serve` fixture)

from hullft_agent.memory import TrajectoryMemory

ASK = [{"role": "system", "content": "Answer with one command."},
       {"role": "user", "content": "The fridge is closed. What do you do?"}]


def client(server, key: str | None = None, **kwargs) -> openai.OpenAI:
    return openai.OpenAI(base_url=server.base_url, api_key=key or "unused", max_retries=0, **kwargs)


def test_openai_client_invoke_adapts_and_logs_the_exchange(serve):
    server = serve()
    response = client(server).chat.completions.create(
        model=MODEL, messages=ASK, temperature=0, max_tokens=6, seed=3, user="session-1")
    choice = response.choices[0]
    assert choice.message.role == "assistant" and choice.finish_reason in ("stop", "length")
    assert response.usage.completion_tokens >= 1 and response.usage.prompt_tokens > 0
    hullft = response.model_extra["hullft"]
    assert hullft["task"] == "session-1" and hullft["episode_id"] == "session-1"
    assert hullft["adaptation"]["selected_ids"] and not hullft["adaptation"]["skipped"]
    rows = server.memory.get(hullft["logged_ids"])
    assert [r["kind"] for r in rows] == ["observation", "action"][: len(rows)] and rows[0]["episode_id"] == "session-1"
    again = client(server).chat.completions.create(model=MODEL, messages=ASK, temperature=0, max_tokens=6, seed=3,
                                                    user="session-1")
    assert again.model_extra["hullft"]["adaptation"]["task_steps"] > hullft["adaptation"]["task_steps"], \
        "per_task: the session's adapter keeps training"


def test_openai_client_stream_matches_invoke_and_reports_usage(serve):
    server = serve()
    kwargs = dict(model=MODEL, messages=ASK, temperature=0, max_tokens=8, seed=5, extra_body={"hullft": {"adapt": False}})
    whole = client(server).chat.completions.create(**kwargs).choices[0].message.content
    chunks = list(client(server).chat.completions.create(stream=True, stream_options={"include_usage": True}, **kwargs))
    text = "".join(c.choices[0].delta.content or "" for c in chunks if c.choices)
    assert text == whole
    assert chunks[0].choices[0].delta.role == "assistant"
    finals = [c for c in chunks if c.choices and c.choices[0].finish_reason]
    assert len(finals) == 1 and finals[0].model_extra["hullft"]["adaptation"]["skipped"]
    assert chunks[-1].choices == [] and chunks[-1].usage.completion_tokens >= 1


def test_chat_openai_invoke_and_stream(serve):
    server = serve()
    llm = ChatOpenAI(model=MODEL, base_url=server.base_url, api_key="unused", temperature=0, max_tokens=6, seed=1,
                     max_retries=0, extra_body={"hullft": {"log": False}})  # the same memory for both calls
    message = llm.invoke("The fridge is closed. What do you do?")
    assert isinstance(message.content, str) and message.usage_metadata["output_tokens"] >= 1
    streamed = "".join(chunk.content for chunk in llm.stream("The fridge is closed. What do you do?"))
    assert streamed == message.content


def test_bad_requests_get_4xx_with_openai_error_bodies(serve):
    server = serve()
    c = client(server)
    with pytest.raises(openai.NotFoundError, match="serves 'tiny-test-model'"):
        c.chat.completions.create(model="gpt-4o", messages=ASK)
    with pytest.raises(openai.BadRequestError, match="n must be 1"):
        c.chat.completions.create(model=MODEL, messages=ASK, n=2)
    with pytest.raises(openai.BadRequestError, match="role"):
        c.chat.completions.create(model=MODEL, messages=[{"role": "wizard", "content": "hi"}])
    with pytest.raises(openai.BadRequestError, match="context of 1024 tokens"):
        c.chat.completions.create(model=MODEL, messages=[{"role": "user", "content": "fridge " * 3000}])
    with pytest.raises(openai.BadRequestError, match="text only"):
        c.chat.completions.create(model=MODEL, messages=[{"role": "user", "content": [
            {"type": "image_url", "image_url": {"url": "http://x/y.png"}}]}])
    raw = httpx.post(server.base_url + "/chat/completions", content=b"{not json", timeout=10,
                     headers={"content-type": "application/json"})
    assert raw.status_code == 400 and raw.json()["error"]["type"] == "invalid_request_error"
    missing = httpx.post(server.base_url + "/chat/completions", json={"model": MODEL}, timeout=10)
    assert missing.status_code == 400 and "messages" in missing.json()["error"]["message"]
    huge = httpx.post(server.base_url + "/chat/completions", timeout=10, headers={"content-type": "application/json"},
                      content=b'{"model": "x", "messages": [], "pad": "' + b"a" * 5_000_000 + b'"}')
    assert huge.status_code == 413
    bad_session = httpx.post(server.base_url + "/chat/completions", timeout=10,
                             json={"model": MODEL, "messages": ASK, "user": "two\nlines"})
    assert bad_session.status_code == 400 and "session" in bad_session.json()["error"]["message"]
    health = httpx.get(server.url + "/health", timeout=10).json()
    assert health["status"] == "ok" and health["waiting"] == 0 and health["running"] == 0


def test_api_keys_scope_namespaces_and_sessions(serve):
    server = serve(api_keys=KEYS)
    with pytest.raises(openai.AuthenticationError):
        client(server, "wrong-key").chat.completions.create(model=MODEL, messages=ASK)
    assert httpx.get(server.base_url + "/models", timeout=10).status_code == 401
    alice, bob = client(server, "key-alice-0001"), client(server, "key-bob-0002")
    a = alice.chat.completions.create(model=MODEL, messages=ASK, max_tokens=4, user="s1").model_extra["hullft"]
    b = bob.chat.completions.create(model=MODEL, messages=ASK, max_tokens=4, user="s1").model_extra["hullft"]
    assert (a["namespace"], b["namespace"]) == ("alice", "bob")
    memory: TrajectoryMemory = server.memory
    assert {r["namespace"] for r in memory.get(a["adaptation"]["selected_ids"], namespace="*")} == {"alice"}
    assert {r["namespace"] for r in memory.get(b["adaptation"]["selected_ids"], namespace="*")} == {"bob"}
    assert b["adaptation"]["task_steps"] == b["adaptation"]["steps"], "bob's session s1 is not alice's s1"
    assert {r["namespace"] for r in memory.get(a["logged_ids"] + b["logged_ids"], namespace="*")} == {"alice", "bob"}
    assert memory.count("alice", episode_id="s1") == len(a["logged_ids"])
    headers = {"Authorization": "Bearer key-bob-0002"}
    found = httpx.post(server.base_url + "/memory/search", json={"query": "fridge", "k": 50}, headers=headers,
                       timeout=10).json()["data"]
    assert found and {row["metadata"]["namespace"] for row in found} == {"bob"}
    stats = httpx.get(server.base_url + "/memory/stats", headers=headers, timeout=10).json()
    assert stats["namespace"] == "bob" and "s1" in stats["sessions"]
    gone = httpx.delete(server.base_url + "/memory/episodes/s1", headers=headers, timeout=10).json()
    assert gone["deleted"] == len(b["logged_ids"]) and memory.count("alice", episode_id="s1") == len(a["logged_ids"])


def test_a_request_can_bound_its_training(serve):
    server = serve()
    response = client(server).chat.completions.create(
        model=MODEL, messages=ASK, temperature=0, max_tokens=4, user="budget",
        extra_body={"hullft": {"n": 4, "max_instances": 1}})
    adaptation = response.model_extra["hullft"]["adaptation"]
    assert adaptation["steps"] == 1 and adaptation["deferred"] == sum(adaptation["counts"]) - 1 == 3


def test_a_client_logs_decisions_marks_won_sessions_and_learns_only_from_them(serve):
    server = serve(api_keys=KEYS)
    server.runtime.log_decisions = True
    alice = client(server, "key-alice-0001")
    headers = {"Authorization": "Bearer key-alice-0001"}

    def ask(session: str, **hullft) -> dict:
        return alice.chat.completions.create(model=MODEL, messages=ASK, seed=3, max_tokens=6, user=session,
                                             extra_body={"hullft": hullft}).model_extra["hullft"]

    won = ask("won-1", actor="expert", reward=1.0)
    lost = ask("lost-1")
    decision = next(r for r in server.memory.get(won["logged_ids"], namespace="alice") if r["kind"] == "decision")
    assert (decision["metadata"]["actor"], decision["reward"]) == ("expert", 1.0)
    finish = httpx.post(server.base_url + "/memory/episodes/won-1/finish", json={"outcome": "won"}, headers=headers,
                        timeout=10)
    assert finish.status_code == 200 and finish.json()["updated"] == len(won["logged_ids"])
    assert httpx.post(server.base_url + "/memory/episodes/lost-1/finish", json={"outcome": "won"}, timeout=10,
                      headers={"Authorization": "Bearer key-bob-0002"}).status_code == 404, "bob's namespace"
    assert httpx.post(server.base_url + "/memory/episodes/lost-1/finish", json={}, headers=headers,
                      timeout=10).status_code == 400
    learned = ask("new-1", learn_from={"kinds": ["decision"], "outcomes": ["won"]})["adaptation"]
    assert learned["selected_ids"] == [decision["id"]] and learned["decisions"] == 1 and learned["steps"] > 0
    assert lost["logged_ids"] and not set(learned["selected_ids"]) & set(lost["logged_ids"])
    with pytest.raises(openai.BadRequestError, match="where"):
        ask("new-2", learn_from={"where": "1 = 1"})
