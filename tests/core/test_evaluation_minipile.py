"""The mini-Pile: chunking, the deterministic document split, and the offline domain sources."""

from __future__ import annotations

import importlib.util

import pytest

from hullft_agent.evaluation.minipile import (
    DomainUnavailable,
    build_minipile,
    chunk_text,
    code_documents,
    docs_documents,
    split_domain,
)


def test_chunks_respect_the_size_and_keep_the_text():
    text = "\n".join(f"line {i} " + "word " * (i % 30) for i in range(200)) + "\n" + "x" * 50 + " y" * 400
    chunks = chunk_text(text, 300, min_chars=0)
    assert all(0 < len(c) <= 300 for c in chunks)
    assert "".join(chunks).replace("\n", "").replace(" ", "") == text.replace("\n", "").replace(" ", "")
    assert chunk_text("short", 300) == []  # below min_chars (300 // 4)
    with pytest.raises(ValueError):
        chunk_text(text, 3)


def fake_documents(n=12):
    return [(f"doc{i}", "\n".join(f"document {i} paragraph {j}: " + "lorem ipsum " * 8 for j in range(6)))
            for i in range(n)]


def test_split_is_deterministic_by_document_and_never_shares_a_document():
    train, test = split_domain("x", fake_documents(), train_per_domain=20, test_per_domain=3, seq_chars=250)
    again = split_domain("x", list(reversed(fake_documents())), train_per_domain=20, test_per_domain=3, seq_chars=250)
    assert (train, test) == again  # independent of the documents' order
    assert len(test) == 3 and len(train) == 20
    assert not {s.doc for s in test} & {s.doc for s in train}
    assert len({s.doc for s in train}) == 9  # round-robin: every remaining document contributes
    other_seed = split_domain("x", fake_documents(), train_per_domain=20, test_per_domain=3, seq_chars=250, seed=1)
    assert other_seed[1] != test
    with pytest.raises(ValueError, match="usable document"):
        split_domain("x", fake_documents(3), train_per_domain=5, test_per_domain=3, seq_chars=250)


def test_build_skips_an_unavailable_domain_with_its_reason():
    def missing():
        raise DomainUnavailable("not installed here")

    pile = build_minipile(["fake", "gone"], train_per_domain=10, test_per_domain=2, seq_chars=250,
                          sources={"fake": fake_documents, "gone": missing})
    assert pile.skipped == {"gone": "not installed here"} and pile.domains == ["fake"]
    assert pile.counts()["fake"]["train"] == 10
    units = pile.units()
    assert [u.group for u in units] == ["fake", "fake"] and all(u.episode.startswith("fake/") for u in units)
    with pytest.raises(DomainUnavailable):
        build_minipile(["gone"], sources={"gone": missing}, strict=True)
    with pytest.raises(ValueError, match="unknown domain"):
        build_minipile(["nope"])


def test_python_domains_are_real_text():
    code = dict(code_documents())
    assert "os.py" in code and "def " in code["os.py"]
    docs = dict(docs_documents())
    assert "raise" in docs and "raise_stmt" in docs["raise"]


@pytest.mark.skipif(importlib.util.find_spec("gensim") is None, reason="gensim (its test data) not installed")
def test_gensim_domains():
    from hullft_agent.evaluation.minipile import news_documents, newsgroup_documents

    news = news_documents()
    posts = newsgroup_documents()
    assert len(news) > 250 and len(posts) > 150
    assert all(text.startswith("Subject:") for _, text in posts[:20])
    assert "Path:" not in posts[0][1]
