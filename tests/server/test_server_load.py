"""Queueing, disconnects and shutdown: the server under the conditions a busy agent fleet creates."""

from __future__ import annotations

import signal
import subprocess
import sys
import threading
import time
from pathlib import Path

import httpx
import openai
from live_server import MODEL, serve_fixture  # noqa: F401  (the `serve` fixture)

from hullft_agent.memory import TrajectoryMemory

ASK = [{"role": "user", "content": "The fridge is closed. What do you do?"}]
LONG = 900  # tokens: long enough that a generation is still running when the test acts


def logged_answers(memory: TrajectoryMemory, session: str) -> list[str]:
    rows = memory.table.to_arrow().to_pylist()
    return [r["text"] for r in sorted(rows, key=lambda r: r["step"]) if r["episode_id"] == session and r["kind"] == "action"]


def wait_for(predicate, seconds: float = 30.0) -> None:
    deadline = time.monotonic() + seconds
    while not predicate():
        assert time.monotonic() < deadline, "timed out waiting"
        time.sleep(0.02)


def test_full_queue_answers_429_and_a_closed_stream_stops_its_generation(serve):
    server = serve(max_queue=0)
    c = openai.OpenAI(base_url=server.base_url, api_key="unused", max_retries=0)
    stream = c.chat.completions.create(model=MODEL, messages=ASK, max_tokens=LONG, temperature=1, seed=1, stream=True,
                                       user="slow", extra_body={"hullft": {"adapt": False}})
    next(iter(stream))  # the model is now busy with this request
    try:
        c.chat.completions.create(model=MODEL, messages=ASK, max_tokens=4)
        raise AssertionError("a request found room in a full queue")
    except openai.RateLimitError as exc:
        assert int(exc.response.headers["retry-after"]) >= 1 and "busy" in exc.message
    stream.close()  # the client goes away mid-answer
    wait_for(lambda: httpx.get(server.url + "/health", timeout=5).json()["running"] == 0)
    wait_for(lambda: bool(logged_answers(server.memory, "slow")))
    cut = server.runtime.tokenizer(logged_answers(server.memory, "slow")[-1])["input_ids"]
    assert len(cut) < LONG // 2, "the abandoned generation kept running"
    ok = c.chat.completions.create(model=MODEL, messages=ASK, max_tokens=4)
    assert ok.choices[0].message.content is not None
    metrics = httpx.get(server.url + "/metrics", timeout=5).text
    assert 'hullft_requests_total{endpoint="/v1/chat/completions",status="429"} 1.0' in metrics
    assert "hullft_queue_depth 0.0" in metrics and "hullft_tokens_total" in metrics


def test_a_client_that_times_out_stops_a_non_streaming_generation(serve):
    server = serve()
    body = {"model": MODEL, "messages": ASK, "max_tokens": LONG, "temperature": 1, "seed": 1, "user": "gone",
            "hullft": {"adapt": False}}
    try:
        httpx.post(server.base_url + "/chat/completions", json=body, timeout=0.5)
    except httpx.ReadTimeout:
        pass
    wait_for(lambda: bool(logged_answers(server.memory, "gone")))
    cut = server.runtime.tokenizer(logged_answers(server.memory, "gone")[-1])["input_ids"]
    assert len(cut) < LONG // 2, "the generation outlived its client"


def test_sigterm_drains_in_flight_requests_and_leaves_the_memory_consistent(tmp_path):
    port_file = tmp_path / "port"
    proc = subprocess.Popen([sys.executable, str(Path(__file__).with_name("tiny_server.py")), str(tmp_path / "mem"),
                             str(port_file)])
    try:
        wait_for(lambda: port_file.exists() and port_file.read_text() != "", 60)
        url = f"http://127.0.0.1:{port_file.read_text()}"
        wait_for(lambda: _up(url), 60)
        answers: list[httpx.Response] = []
        body = {"model": MODEL, "messages": ASK, "max_tokens": 300, "temperature": 0, "user": "drained"}
        worker = threading.Thread(target=lambda: answers.append(
            httpx.post(url + "/v1/chat/completions", json=body, timeout=120)))
        worker.start()
        wait_for(lambda: httpx.get(url + "/health", timeout=5).json()["running"] == 1)
        proc.send_signal(signal.SIGTERM)
        worker.join(120)
        assert proc.wait(120) in (0, -signal.SIGTERM)  # uvicorn re-raises the signal once drained
    finally:
        proc.kill()
    assert answers and answers[0].status_code == 200, answers and answers[0].text
    logged = answers[0].json()["hullft"]["logged_ids"]
    memory = TrajectoryMemory.open(tmp_path / "mem", create=False)
    assert len(memory.get(logged)) == len(logged) == 2 and memory.count() == 4


def _up(url: str) -> bool:
    try:
        return httpx.get(url + "/health", timeout=2).status_code == 200
    except httpx.HTTPError:
        return False


def test_timeouts_answer_504_for_a_waiting_and_an_overrunning_request(serve, monkeypatch):
    server = serve(request_timeout=0.5)
    adapt = server.runtime.adapter.adapt

    def slow_adapt(*args, **kwargs):
        time.sleep(1.6)  # an adaptation that overruns the request's whole budget
        return adapt(*args, **kwargs)

    monkeypatch.setattr(server.runtime.adapter, "adapt", slow_adapt)
    answers: list[httpx.Response] = []
    slow = threading.Thread(target=lambda: answers.append(httpx.post(
        server.base_url + "/chat/completions", timeout=30, json={"model": MODEL, "messages": ASK, "max_tokens": 4})))
    slow.start()
    time.sleep(0.1)
    waited = httpx.post(server.base_url + "/chat/completions", timeout=30,
                        json={"model": MODEL, "messages": ASK, "max_tokens": 4, "hullft": {"adapt": False}})
    slow.join(30)
    assert waited.status_code == 504 and "waiting for the model" in waited.json()["error"]["message"]
    assert answers[0].status_code == 504 and "did not finish" in answers[0].json()["error"]["message"]


def test_finish_reasons_are_openai_ones():
    from hullft_server.protocol import finish_reason

    from hullft_agent.runtime import CallResult, GenerationStats
    from hullft_agent.runtime.engine import skipped_report

    def reason(runtime_reason: str) -> str:
        stats = GenerationStats(finish_reason=runtime_reason)
        return finish_reason(CallResult(text="", report=skipped_report("test"), stats=stats, prompt_tokens=1, dropped=0))

    assert [reason(r) for r in ("stop", "length", "tool_calls", "time_limit", "cancelled")] == \
        ["stop", "length", "tool_calls", "length", "length"]
