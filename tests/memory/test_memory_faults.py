"""Bad input on the trajectory memory must fail cleanly and write nothing: values a table cannot hold
(surrogates, huge numbers), read-only folders, foreign folders, missing files and memories."""

from __future__ import annotations

import json
import os
import shutil
import subprocess
import sys
import textwrap

import pytest
from test_memory_processes import DIM, child_env

from hullft_agent.cli import main
from hullft_agent.errors import InvalidStepError, MemoryNotFoundError, NotAMemoryTableError
from hullft_agent.memory import TrajectoryMemory
from hullft_agent.memory import cli as memory_cli
from hullft_agent.memory.testing import HashingEmbedder

# ------------------------------------------------------------------------------- bad values


@pytest.mark.parametrize(
    ("step", "match"),
    [
        ({"step": 2**63}, "step must be at most 9223372036854775807, got 9223372036854775808"),
        ({"step": 99999999999999999999}, "step must be at most .* got 99999999999999999999"),
        ({"reward": 10**400}, "reward must be finite"),
        ({"text": "a \ud800"}, r"text is not valid Unicode: a lone surrogate '\\ud800' at position 2"),
        ({"episode_id": "ep\udfff"}, "episode_id is not valid Unicode"),
        ({"task": "\ud800"}, "task is not valid Unicode"),
        ({"outcome": "won\ud800"}, "outcome is not valid Unicode"),
        ({"id": "x\ud800"}, "id is not valid Unicode"),
        ({"metadata": {"note": "\ud800"}}, "metadata is not valid Unicode"),
    ],
)
def test_values_a_table_cannot_hold_are_invalid_steps(tmp_path, step, match):
    mem = TrajectoryMemory.open(tmp_path / "mem", embedder=HashingEmbedder(DIM))
    row = {"episode_id": "e", "kind": "action", "text": "fine", **step}
    with pytest.raises(InvalidStepError, match=match) as info:
        mem.add([{"episode_id": "e", "kind": "action", "text": "fine"}, row])
    assert info.value.index == 1 and str(info.value).startswith("row 1")
    assert mem.count() == 0


def test_log_step_names_the_row_of_a_bad_value(tmp_path):
    mem = TrajectoryMemory.open(tmp_path / "mem", embedder=HashingEmbedder(DIM))
    with pytest.raises(InvalidStepError, match="row 0 .*step must be at most"):
        mem.log_step("e", "action", "x", step=2**63)
    with pytest.raises(InvalidStepError, match="row 0.*surrogate"):
        mem.log_step("e", "action", "\ud800")


@pytest.fixture()
def hashing_cli(monkeypatch):
    """The CLIs' embedders replaced by the hashing one (named after the model asked for)."""
    from hullft_agent.evaluation import cli as eval_cli

    made = lambda model: HashingEmbedder(DIM, model_name=model or "hashing-cli")  # noqa: E731
    monkeypatch.setattr(memory_cli, "make_embedder", made)
    monkeypatch.setattr(eval_cli, "make_embedder", made)


def test_a_pool_line_with_a_lone_surrogate_is_a_clean_cli_error(tmp_path, capsys):
    pool = tmp_path / "pool.jsonl"
    pool.write_text('{"text": "fine"}\n{"text": "a \\ud800"}\n', encoding="utf-8")
    assert main(["select", "--pool", str(pool), "--query", "q"]) == 2
    err = capsys.readouterr().err
    assert f"{pool}:2" in err and "surrogate" in err and "Traceback" not in err
    pool.write_text('{"text": "fine", "id": "x\\udfff"}\n', encoding="utf-8")
    assert main(["select", "--pool", str(pool), "--query", "q"]) == 2
    assert f"{pool}:1" in capsys.readouterr().err


def test_a_huge_step_number_in_an_import_is_a_clean_cli_error(tmp_path, hashing_cli, capsys):
    path = tmp_path / "big.jsonl"
    line = {"episode_id": "e", "step": 99999999999999999999, "kind": "action", "text": "x"}
    path.write_text(json.dumps({**line, "step": 0}) + "\n" + json.dumps(line) + "\n")
    new = tmp_path / "new"
    assert main(["memory", "import", str(path), "--uri", str(new), "--no-progress"]) == 2
    err = capsys.readouterr().err
    assert f"{path}:2" in err and "99999999999999999999" in err
    assert not new.exists()


# Every write on a read-only memory, in a process that cannot override file permissions.
READ_ONLY = textwrap.dedent(
    """
    import contextlib, io, json, sys
    from hullft_agent.errors import MemoryPermissionError
    from hullft_agent.memory import TrajectoryMemory
    from hullft_agent.memory import cli as memory_cli
    from hullft_agent.memory.testing import HashingEmbedder
    from hullft_agent.cli import main

    uri, jsonl, dim = sys.argv[1], sys.argv[2], int(sys.argv[3])
    memory_cli.make_embedder = lambda model: HashingEmbedder(dim)
    mem = TrajectoryMemory.open(uri, embedder=HashingEmbedder(dim))
    calls = {
        "log_step": lambda: mem.log_step("e", "action", "more"),
        "log_episode": lambda: mem.log_episode("e2", [("action", "a"), ("action", "b")]),
        "finish_episode": lambda: mem.finish_episode("e", reward=1.0),
        "forget": lambda: mem.forget(episode_id="e"),
        "new table": lambda: TrajectoryMemory.open(uri, embedder=HashingEmbedder(dim), table="other"),
    }
    out = {}
    for name, call in calls.items():
        try:
            call()
            out[name] = "written"
        except MemoryPermissionError as exc:
            out[name] = "refused: " + str(exc)
        except Exception as exc:
            out[name] = f"{type(exc).__name__}: {exc}"
    err = io.StringIO()
    with contextlib.redirect_stderr(err):
        rc = main(["memory", "import", jsonl, "--uri", uri, "--no-progress"])
    out["cli"] = f"{rc} {err.getvalue()}"
    out["rows"] = TrajectoryMemory.open(uri).count()
    print(json.dumps(out))
    """
)


def test_every_write_on_a_read_only_memory_is_a_permission_error(tmp_path):
    uri = tmp_path / "mem"
    TrajectoryMemory.open(uri, embedder=HashingEmbedder(DIM)).log_step("e", "action", "first")
    jsonl = tmp_path / "one.jsonl"
    jsonl.write_text(json.dumps({"episode_id": "e3", "kind": "action", "text": "x"}) + "\n")
    command = [sys.executable, "-c", READ_ONLY, str(uri), str(jsonl), str(DIM)]
    if os.geteuid() == 0:  # root ignores file modes; a user namespace without a mapping does not
        if shutil.which("unshare") is None:
            pytest.skip("running as root without unshare(1): cannot make a folder read-only")
        command = ["unshare", "--user", *command]
    modes = {}
    for path in [uri, *uri.rglob("*")]:
        modes[path] = path.stat().st_mode
        path.chmod(modes[path] & ~0o222)
    try:
        done = subprocess.run(command, env=child_env(), capture_output=True, text=True, timeout=120)
    finally:
        for path, mode in modes.items():
            path.chmod(mode)
    if done.returncode != 0 and "unshare" in done.stderr:
        pytest.skip(f"unshare is not permitted here: {done.stderr.strip()}")
    assert done.returncode == 0, done.stderr[-3000:]
    out = json.loads(done.stdout.strip().splitlines()[-1])
    for name in ("log_step", "log_episode", "finish_episode", "forget", "new table"):
        assert out[name].startswith("refused: ") and "permission denied" in out[name], (name, out[name])
        assert str(uri) in out[name]
    assert out["cli"].startswith("2 ") and "permission denied" in out["cli"] and "Traceback" not in out["cli"]
    assert out["rows"] == 1


# ------------------------------------------------------------------------------- foreign folders


def test_a_folder_that_is_not_a_lance_table_is_never_taken_over(tmp_path):
    stray = tmp_path / "mem" / "trajectories.lance"
    stray.mkdir(parents=True)
    (stray / "notes.txt").write_text("not a table")
    (tmp_path / "file").mkdir()
    (tmp_path / "file" / "trajectories.lance").write_text("a file")
    before = sorted(str(p.relative_to(tmp_path)) for p in tmp_path.rglob("*"))
    for uri in (tmp_path / "mem", tmp_path / "file"):
        with pytest.raises(NotAMemoryTableError, match="trajectories.lance.*not a Lance table"):
            TrajectoryMemory.open(uri, embedder=HashingEmbedder(DIM))
        with pytest.raises(NotAMemoryTableError):
            TrajectoryMemory.open(uri)
    assert sorted(str(p.relative_to(tmp_path)) for p in tmp_path.rglob("*")) == before
    # an empty folder of that name holds nothing to take over: the table is made in it
    (tmp_path / "empty" / "trajectories.lance").mkdir(parents=True)
    assert TrajectoryMemory.open(tmp_path / "empty", embedder=HashingEmbedder(DIM)).count() == 0


# ------------------------------------------------------------------------------- nothing written before validation


def test_failed_commands_create_nothing(tmp_path, hashing_cli, capsys):
    new = tmp_path / "new"
    out = str(tmp_path / "out")
    bad = tmp_path / "bad.jsonl"
    bad.write_text(json.dumps({"episode_id": "e", "kind": "dance", "text": "x"}) + "\n")
    commands = [
        ["memory", "import", str(tmp_path / "missing.jsonl"), "--uri", str(new)],
        ["memory", "import", str(bad), "--uri", str(new), "--no-progress"],
        ["memory", "stats", "--uri", str(new)],
        ["memory", "search", "fridge", "--uri", str(new)],
        ["memory", "search", "fridge", "--uri", str(new), "--embedder", "hashing-cli"],
        ["memory", "forget", "--episode", "e", "--uri", str(new)],
        ["eval", "--memory", str(new), "--out", out],
        ["eval", "--memory", str(new), "--out", out, "--embedder", "hashing-cli"],
    ]
    for argv in commands:
        assert main(argv) == 2, argv
        err = capsys.readouterr().err
        assert "Traceback" not in err and (
            "missing.jsonl" in err or "bad.jsonl:1" in err or str(new) in err
        ), err
        assert not new.exists(), argv
    with pytest.raises(MemoryNotFoundError, match="pass an embedder to create it"):
        TrajectoryMemory.open(new)
    with pytest.raises(MemoryNotFoundError, match="no memory table"):
        TrajectoryMemory.open(new, embedder=HashingEmbedder(DIM), create=False)
    assert not new.exists()

