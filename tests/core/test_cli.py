"""The `hullft-agent` command: pool parsing, select/adapt output, info, and user errors."""

from __future__ import annotations

import json

import pytest

from hullft_agent.cli import main, read_pool
from hullft_agent.errors import CLIError

POOL = [
    "To open a file in Python use the open() built-in and a with statement.",
    "The fridge in the kitchen holds a yellow potato and a red apple.",
    "A for loop iterates over the items of any iterable object.",
    "Exceptions are raised with the raise statement and caught with try/except.",
    "Go north from the kitchen to reach the pantry with the salt.",
    "List comprehensions build lists from iterables in a single expression.",
]


@pytest.fixture()
def pool_file(tmp_path):
    path = tmp_path / "pool.jsonl"
    lines = [json.dumps({"id": f"doc{i}", "text": t}) for i, t in enumerate(POOL[:3])]
    lines += [json.dumps(t) for t in POOL[3:]]
    path.write_text("\n".join(lines) + "\n\n")
    return path


def test_read_pool_accepts_objects_and_strings(pool_file):
    ids, texts = read_pool(pool_file)
    assert ids[:3] == ["doc0", "doc1", "doc2"] and ids[3:] == ["3", "4", "5"]
    assert texts == POOL


@pytest.mark.parametrize(
    "content, match",
    [
        ('{"text": "ok"}\nnot json\n', ":2: not valid JSON"),
        ('{"text": ""}\n', ":1: expected a non-empty string"),
        ('{"id": 3}\n', ":1: expected"),
        ("\n\n", "holds no texts"),
    ],
)
def test_read_pool_errors_name_the_line(tmp_path, content, match):
    path = tmp_path / "bad.jsonl"
    path.write_text(content)
    with pytest.raises(CLIError, match=match):
        read_pool(path)


def test_missing_pool_file_is_a_clean_error(tmp_path, capsys):
    assert main(["select", "--pool", str(tmp_path / "nope.jsonl"), "--query", "x"]) == 2
    assert "pool file not found" in capsys.readouterr().err


def test_select_prints_the_selection_table(pool_file, capsys):
    code = main(["select", "--pool", str(pool_file), "--query", "how do I loop over a list in Python",
                 "--n", "5", "--k", "6"])
    out = capsys.readouterr().out
    assert code == 0
    assert "method hullft  n 5  pool 6" in out
    rows = [line for line in out.splitlines() if line.strip()[:1].isdigit() and "  " in line]
    counts = [int(line.split()[2]) for line in rows]
    assert sum(counts) == 5
    assert "doc2" in out  # the for-loop text is the nearest neighbour


def test_select_rejects_bad_n(pool_file, capsys):
    assert main(["select", "--pool", str(pool_file), "--query", "loop", "--n", "0"]) == 2
    assert "n" in capsys.readouterr().err


def test_adapt_end_to_end_on_a_local_model(pool_file, tmp_path, tiny_model, tiny_tokenizer, capsys):
    folder = tmp_path / "tiny-model"
    tiny_model.save_pretrained(folder)
    tiny_tokenizer.save_pretrained(folder)
    code = main(["adapt", "--pool", str(pool_file), "--query", "open the fridge in the kitchen",
                 "--model", str(folder), "--n", "4", "--k", "6", "--max-length", "32", "--lr", "0.01"])
    out = capsys.readouterr().out
    assert code == 0, out
    assert "forward-backward passes" in out
    before, after, restored = (
        float(out.split(key)[1].split()[0].rstrip(")")) for key in ("before", "after", "restored:")
    )
    assert after != before and restored == pytest.approx(before, abs=1e-6)
    assert "finetune" in out and "total" in out


def test_info_runs(capsys):
    assert main(["info"]) == 0
    out = capsys.readouterr().out
    assert "torch" in out and "device:" in out and "cache dir:" in out


def test_adapt_demo_names_the_topics_for_an_unknown_one(capsys):
    assert main(["adapt-demo", "--topic", "no-such-topic"]) == 2
    err = capsys.readouterr().err
    assert "unknown topic 'no-such-topic'" in err and "raise" in err
