"""The OpenAI-compatible server from the official `openai` client: adapted answers, a stream, a tool call,
and a later session learning from the decisions of one that worked.

Runs offline on the packaged SmolLM2-135M-Instruct and all-MiniLM-L6-v2 (under a minute on a 2-core CPU):

    .venv/bin/python examples/openai_server.py

It starts the same app `hullft-agent serve` runs, in a thread on 127.0.0.1, over a fresh memory holding
two past episodes of a text game. A session (`user=`) then asks for a command twice: each request
adapts the session's own adapter (per_task) on rows selected from the memory, and the response says
which rows were used. A streamed request follows, and a request that forces a tool call. The server
also logs each answer as a decision row; the client then marks the session won
(`POST /v1/memory/episodes/game-7/finish`), and a new session adapts only on decisions of won sessions.
With a real deployment you would run `hullft-agent serve --memory DIR --log-decisions` and only keep the
client part.
"""

from __future__ import annotations

import json
import tempfile

import httpx
import torch
from hullft_server import ServerConfig, create_app
from hullft_server.run import serve_in_thread
from openai import OpenAI

from hullft_agent import AdapterConfig, Embedder, FinetuneConfig, SelectionConfig, TestTimeAdapter, load_model
from hullft_agent.memory import TrajectoryMemory
from hullft_agent.runtime import Runtime

PAST = {
    "past-1": [("observation", "You are in a kitchen. There is a closed fridge and a counter."), ("action", "open fridge"),
               ("observation", "You open the fridge. Inside is a yellow potato."), ("action", "take yellow potato")],
    "past-2": [("observation", "You are in a pantry. A shelf holds salt and a knife."), ("action", "take knife"),
               ("observation", "You take the knife. The kitchen is to the north."), ("action", "go north")],
}
ASK = [{"role": "system", "content": "You play a text game. Answer with one command."},
       {"role": "user", "content": "You are in a kitchen. The fridge is closed. What do you do?"}]
WEATHER = {"type": "function", "function": {"name": "get_weather", "description": "The weather in a city.",
           "parameters": {"type": "object", "properties": {"city": {"type": "string"}}, "required": ["city"]}}}


def main() -> None:
    torch.set_num_threads(1)  # a tiny model on a shared CPU runs best on one thread
    embedder = Embedder()
    with tempfile.TemporaryDirectory() as folder:
        memory = TrajectoryMemory.open(folder, embedder=embedder)
        for episode, steps in PAST.items():
            memory.log_episode(episode, steps, task="cooking")
        config = AdapterConfig(selection=SelectionConfig(n=4, k=20), mode="per_task", finetune=FinetuneConfig(max_length=96))
        runtime = Runtime(adapter=TestTimeAdapter(load_model(), embedder=embedder, source=memory, config=config),
                          memory=memory, log_decisions=True)
        server, thread, url = serve_in_thread(create_app(runtime, ServerConfig(default_max_tokens=12)))
        try:
            client = OpenAI(base_url=url + "/v1", api_key="not-needed-without---api-key")
            model = client.models.list().data[0].id
            for turn in (1, 2):
                reply = client.chat.completions.create(model=model, messages=ASK, temperature=0, user="game-7")
                report = reply.model_extra["hullft"]["adaptation"]
                print(f"turn {turn}: {reply.choices[0].message.content.strip()!r}  (trained {report['steps']} steps on "
                      f"{len(report['selected_ids'])} rows, the session's adapter has {report['task_steps']} so far; "
                      f"adapt {report['timings'].get('total', 0):.1f} s)")
            pieces = [c.choices[0].delta.content or "" for c in client.chat.completions.create(
                model=model, messages=ASK, temperature=0, user="game-7", stream=True) if c.choices]
            print(f"streamed in {len(pieces)} chunks: {''.join(pieces).strip()!r}")
            tool = client.chat.completions.create(
                model=model, messages=[{"role": "user", "content": "What is the weather in Paris?"}], tools=[WEATHER],
                tool_choice={"type": "function", "function": {"name": "get_weather"}}, max_tokens=20)
            call = tool.choices[0].message.tool_calls[0].function
            print(f"tool call: {call.name}({json.loads(call.arguments)})")
            print(f"memory: {memory.count(episode_id='game-7')} rows logged for session game-7")
            finished = httpx.post(url + "/v1/memory/episodes/game-7/finish", json={"outcome": "won"}).json()
            print(f"session game-7 marked won: {finished['updated']} rows")
            wins = {"kinds": ["decision"], "outcomes": ["won"]}
            later = client.chat.completions.create(model=model, messages=ASK, temperature=0, user="game-8",
                                                   extra_body={"hullft": {"learn_from": wins}})
            report = later.model_extra["hullft"]["adaptation"]
            print(f"session game-8, learning from won decisions only: {report['decisions']} decision row(s) of "
                  f"{len(report['selected_ids'])} selected -> {later.choices[0].message.content.strip()!r}")
        finally:
            server.should_exit = True
            thread.join()


if __name__ == "__main__":
    main()
