"""`hullft-agent memory import|stats|search|forget`, the JSONL format, and the adapter on a memory."""

from __future__ import annotations

import argparse
import json
from pathlib import Path

import numpy as np
import pytest

from hullft_agent.memory import JsonlFormatError, TrajectoryMemory, import_jsonl, read_jsonl
from hullft_agent.memory import cli as memory_cli
from hullft_agent.memory.testing import HashingEmbedder

DIM = 24

EPISODES = [
    {
        "episode_id": "cook-1",
        "task": "cook",
        "reward": 1.0,
        "outcome": "won",
        "metadata": {"seed": 1},
        "steps": [
            {"kind": "observation", "text": "You are in a kitchen with a closed fridge."},
            {"kind": "action", "text": "open fridge", "metadata": {"parser": "ok"}},
            {"kind": "observation", "text": "The fridge holds a yellow potato."},
            {"kind": "action", "text": "take yellow potato"},
        ],
    },
    {
        "episode_id": "garden-1",
        "task": "garden",
        "namespace": "bob",
        "steps": [
            {"kind": "observation", "text": "You are in a garden with roses."},
            {"kind": "action", "text": "take shovel", "created_at": "2024-05-01T12:00:00Z"},
        ],
    },
]
STEP_LINES = [
    {"episode_id": "cook-2", "step": 0, "kind": "observation", "text": "A kitchen again.", "task": "cook"},
    {"episode_id": "cook-2", "step": 1, "kind": "action", "text": "open the fridge", "task": "cook"},
]


@pytest.fixture()
def jsonl(tmp_path):
    path = tmp_path / "episodes.jsonl"
    lines = [json.dumps(e) for e in EPISODES] + [""] + [json.dumps(s) for s in STEP_LINES]
    path.write_text("\n".join(lines) + "\n", encoding="utf-8")
    return path


@pytest.fixture()
def run(monkeypatch, tmp_path):
    made = []

    def fake_embedder(model):
        made.append(model)
        return HashingEmbedder(DIM, model_name=model or "hashing-cli")

    monkeypatch.setattr(memory_cli, "make_embedder", fake_embedder)
    uri = str(tmp_path / "mem")

    def call(*argv: str) -> int:
        parser = argparse.ArgumentParser()
        sub = parser.add_subparsers(dest="command")
        memory_cli.add_memory_commands(sub)
        args = parser.parse_args(["memory", argv[0], "--uri", uri, *argv[1:]])
        return args.func(args)

    call.uri = uri
    call.made = made
    return call


def test_read_jsonl_accepts_episode_and_step_lines(jsonl):
    steps, lines = read_jsonl(jsonl)
    assert len(steps) == 8 and lines == [1, 1, 1, 1, 2, 2, 4, 5]
    assert steps[1].metadata == {"seed": 1, "parser": "ok"} and steps[1].reward == 1.0
    assert steps[4].namespace == "bob" and steps[5].created_at.year == 2024
    assert steps[6].step == 0 and steps[7].task == "cook"


@pytest.mark.parametrize(
    ("line", "match"),
    [
        ("{not json", "not valid JSON"),
        ("[1, 2]", "must be a JSON object"),
        ('{"episode_id": "e", "steps": []}', "non-empty list"),
        ('{"steps": [{"kind": "action", "text": "x"}]}', "needs 'episode_id'"),
        ('{"episode_id": "e", "steps": [{"kind": "action"}]}', "needs 'text'"),
        ('{"episode_id": "e", "kind": "action", "text": "x", "colour": 1}', "unknown step field"),
        (
            '{"episode_id": "e", "steps": [{"kind": "action", "text": "x"}], "extra": 1}',
            "unknown episode field",
        ),
        ('{"kind": "action", "text": "x"}', "needs 'episode_id'"),
        ('{"episode_id": "e", "kind": "action", "text": "x", "created_at": "yesterday"}', "ISO 8601"),
    ],
)
def test_bad_lines_name_their_line(tmp_path, line, match):
    path = tmp_path / "bad.jsonl"
    path.write_text(json.dumps(STEP_LINES[0]) + "\n" + line + "\n")
    with pytest.raises(JsonlFormatError, match=match) as info:
        read_jsonl(path)
    assert info.value.line == 2 and f"{path}:2" in str(info.value)


def test_import_validates_everything_before_writing(tmp_path):
    mem = TrajectoryMemory.open(tmp_path / "m", embedder=HashingEmbedder(DIM))
    path = tmp_path / "bad.jsonl"
    path.write_text(json.dumps(EPISODES[0]) + "\n" + json.dumps({**STEP_LINES[0], "kind": "dance"}) + "\n")
    with pytest.raises(JsonlFormatError, match=r"bad.jsonl:2: unknown kind 'dance'"):
        import_jsonl(mem, path)
    assert mem.count("*") == 0


def test_cli_import_stats_search_forget(run, jsonl, capsys):
    assert run("import", str(jsonl), "--no-progress") == 0
    out = capsys.readouterr().out
    assert "imported 8 rows (3 episodes, 4 lines)" in out
    assert run.made == [None]  # a new table: the default (packaged) embedder

    assert run("stats") == 0
    out = capsys.readouterr().out
    assert "rows       8 in namespace '*'" in out and "bob=2" in out and "default=6" in out

    assert run("stats", "--json", "--namespace", "bob") == 0
    stats = json.loads(capsys.readouterr().out)
    assert stats["rows"] == 2 and stats["episodes"] == 1 and stats["embedder"] == "hashing-cli"

    assert run("search", "open the fridge", "-k", "3") == 0
    out = capsys.readouterr().out.splitlines()
    assert len(out) == 3 and "open" in out[0] and "fridge" in out[0]
    assert run.made[-1] == "hashing-cli"  # search reuses the embedder the table was written with

    assert run("search", "fridge", "--json", "--where", "kind = 'action'", "--exclude-episode", "cook-2") == 0
    rows = json.loads(capsys.readouterr().out)
    assert rows and all(r["kind"] == "action" and r["episode_id"] == "cook-1" for r in rows)
    assert run("search", "fridge", "--namespace", "nobody") == 0
    assert "no rows" in capsys.readouterr().out

    assert run("search", "fridge", "--where", "1=1) OR (1=1") == 2
    assert "unmatched ')'" in capsys.readouterr().err

    assert run("forget", "--episode", "cook-2") == 0
    assert "forgot 2 rows" in capsys.readouterr().out
    assert run("forget") == 2 and "say what to forget" in capsys.readouterr().err
    assert run("forget", "--all", "--namespace", "bob") == 2 and "--yes" in capsys.readouterr().err
    assert run("forget", "--all", "--namespace", "bob", "--yes") == 0
    mem = TrajectoryMemory.open(run.uri)
    assert mem.count("*") == 4 and mem.count("bob") == 0


def test_cli_reports_bad_input_and_writes_nothing(run, tmp_path, capsys):
    bad = tmp_path / "bad.jsonl"
    bad.write_text(json.dumps(EPISODES[0]) + "\n" + json.dumps({**STEP_LINES[0], "text": "  "}) + "\n")
    assert run("import", str(bad), "--no-progress") == 2
    assert "bad.jsonl:2" in capsys.readouterr().err
    assert not Path(run.uri).exists()  # validated before a table was made
    assert run("import", str(tmp_path / "missing.jsonl")) == 2
    assert run("stats", "--uri", str(tmp_path / "nothing-here")) == 2
    assert "pass an embedder" in capsys.readouterr().err


def test_cli_window_import_with_progress(run, jsonl, capsys):
    assert run("import", str(jsonl), "--granularity", "window", "--window", "2", "--batch-size", "3") == 0
    mem = TrajectoryMemory.open(run.uri)
    assert (mem.granularity, mem.window, mem.count("*")) == ("window", 2, 8)
    pool = mem.candidates(
        np.asarray(HashingEmbedder(DIM).encode("take yellow potato")), 1, namespace="default"
    )
    assert pool.texts == ["observation: The fridge holds a yellow potato.\naction: take yellow potato"]


def test_adapter_takes_the_memory_as_its_source(tmp_path, tiny_model, tiny_tokenizer):
    adapter_mod = pytest.importorskip("hullft_agent.adapter")
    from hullft_agent.config import AdapterConfig, FinetuneConfig, SelectionConfig

    emb = HashingEmbedder(DIM)
    mem = TrajectoryMemory.open(tmp_path / "m", embedder=emb, namespace="agent")
    for e in EPISODES:
        mem.log_episode(e["episode_id"], [(s["kind"], s["text"]) for s in e["steps"]], task=e["task"])
    config = AdapterConfig(
        selection=SelectionConfig(n=3, k=20), finetune=FinetuneConfig(max_length=32, lr=1e-3)
    )
    adapter = adapter_mod.TestTimeAdapter(tiny_model, tiny_tokenizer, embedder=emb, source=mem, config=config)
    report = adapter.adapt("open fridge", task="cook", episode_id="cook-1")
    assert report.pool_size == 2  # the current episode's 4 rows are excluded: only garden-1 remains
    assert set(report.selected_ids) <= set(mem.candidates(context="x", k=10, exclude_episode="cook-1").ids)
    assert report.steps > 0 and not report.skipped
    report = adapter.adapt("open fridge", source=TrajectoryMemory.open(tmp_path / "empty", embedder=emb))
    assert report.skipped and "no candidates" in report.skip_reason
