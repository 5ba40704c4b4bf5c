"""LanceDBStore shared by processes, on a local folder and on an S3-compatible store (moto): writers of
the same keys leave one row per item with the last write's value, and a store open in another process
sees those writes on its next read."""

from __future__ import annotations

import json
import os
import subprocess
import sys
import textwrap
import time
from pathlib import Path

import pytest
from langchain_hullft import LanceDBStore
from langgraph.store.base import PutOp

from hullft_agent.memory.testing import HashingEmbedder

ROOT = Path(__file__).resolve().parents[2]
DIM = 16
KEYS = 5
ROUNDS = 2

# The child writer: opens the store, waits for the start file, then runs `write` (below), as the test
# process does at the same time.
WRITER = textwrap.dedent(
    """
    import json, os, sys, time
    from langchain_hullft import LanceDBStore

    cfg = json.loads(sys.argv[1])
    sys.path.insert(0, cfg["tests"])
    from test_store_processes import _index, write

    store = LanceDBStore(cfg["uri"], namespace="shared", index=_index(),
                         storage_options=cfg["storage_options"])
    open(cfg["ready"], "w").close()
    while not os.path.exists(cfg["start"]):
        time.sleep(0.005)
    write(store, cfg["name"])
    """
)


def _index() -> dict:
    """Only the text is embedded, so a search for an item's exact text scores it 1."""
    return {"embed": HashingEmbedder(DIM), "fields": ["text"]}


def write(store: LanceDBStore, name: str) -> None:
    """Every key ROUNDS times: one put at a time, and as one batch."""
    for r in range(ROUNDS):
        for k in range(KEYS):
            store.put(("items",), f"k{k}", {"text": f"{name} round {r} key {k}", "round": r})
        store.batch([PutOp(("batch",), f"k{k}", {"text": f"{name} round {r}", "round": r}) for k in range(KEYS)])


def _env() -> dict[str, str]:
    env = dict(os.environ)
    env["PYTHONPATH"] = os.pathsep.join([str(ROOT), str(ROOT / "integrations"), env.get("PYTHONPATH", "")])
    env["RUST_LOG"] = "error"
    return env


def _wait(paths: list[Path], procs: list[subprocess.Popen], timeout: float = 60) -> None:
    deadline = time.monotonic() + timeout
    while not all(p.exists() for p in paths):
        for proc in procs:
            if proc.poll() is not None:
                raise AssertionError(f"a writer exited early: {proc.communicate()[1].decode()[-2000:]}")
        if time.monotonic() > deadline:
            raise AssertionError("timed out waiting for the writers to start")
        time.sleep(0.01)


def hammer(uri: str, tmp_path: Path, storage_options: dict[str, str]) -> LanceDBStore:
    """This process and a child write the same keys at the same time; return a store over what they left."""
    start, ready = tmp_path / "start", tmp_path / "child.ready"
    cfg = {"uri": uri, "storage_options": storage_options, "ready": str(ready), "start": str(start),
           "tests": str(Path(__file__).parent), "name": "child"}
    child = subprocess.Popen([sys.executable, "-c", WRITER, json.dumps(cfg)], env=_env(),
                             stdout=subprocess.DEVNULL, stderr=subprocess.PIPE)
    store = LanceDBStore(uri, namespace="shared", index=_index(), storage_options=storage_options)
    _wait([ready], [child])
    start.touch()
    write(store, "parent")
    _, err = child.communicate(timeout=180)
    assert child.returncode == 0, err.decode()[-3000:]
    return store


def check_last_writes(store: LanceDBStore) -> None:
    assert store.table.count_rows() == 2 * KEYS  # one row per item: no key landed twice
    items = store.search((), limit=100)
    assert len(items) == 2 * KEYS and len({(i.namespace, i.key) for i in items}) == 2 * KEYS
    assert {i.value["round"] for i in items} == {ROUNDS - 1}  # every item holds a last-round write
    # Either writer may have won k3; its stored text must find it.
    last = store.get(("items",), "k3").value["text"]
    assert last.endswith(f"round {ROUNDS - 1} key 3")
    found = store.search(("items",), query=last, limit=1)[0]
    assert found.key == "k3" and found.value["text"] == last


def test_two_processes_writing_the_same_keys_leave_one_row_each(tmp_path):
    uri = str(tmp_path / "db")
    before = LanceDBStore(uri, namespace="shared", index=_index())
    before.put(("items",), "k0", {"text": "the parent's first value", "round": -1})
    check_last_writes(hammer(uri, tmp_path, {}))
    check_last_writes(before)  # a store opened before the writers sees their writes on its next read


def test_an_object_store_shared_by_processes(s3_server, tmp_path):
    uri = "s3://agents/store"
    store = hammer(uri, tmp_path, s3_server)
    check_last_writes(store)
    other = LanceDBStore(uri, namespace="other", index=_index(), storage_options=s3_server)
    other.put(("items",), "k0", {"text": "another tenant"})
    assert store.get(("items",), "k0").value["round"] == ROUNDS - 1 and other.count() == 1


@pytest.mark.parametrize("omit", [False, True])
def test_expired_items_on_an_object_store(s3_server, omit):
    store = LanceDBStore("s3://agents/ttl", namespace="t", index=False, storage_options=s3_server,
                         ttl={"default_ttl": 0.001, "omit_expired": omit})
    store.put(("a",), "short", {"v": 1})
    store.put(("a",), "kept", {"v": 2}, ttl=None)
    time.sleep(0.1)
    visible = [i.key for i in store.search(("a",), refresh_ttl=False)]
    assert visible == (["kept"] if omit else ["kept", "short"])
    assert store.sweep_ttl() == 1 and [i.key for i in store.search(("a",))] == ["kept"]
