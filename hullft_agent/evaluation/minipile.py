"""A mini-Pile: real text of several domains, available offline, split into a memory and test queries.

Domains (each needs only what is installed; a domain whose source is missing is skipped with the reason):

| domain | source | package |
|---|---|---|
| wiki | Wikipedia dump excerpt (`enwiki-latest-pages-articles1...-shortened.bz2`, ~100 articles), markup stripped with `gensim.corpora.wikicorpus.filter_wiki` | gensim (its test data) |
| news | `lee_background.cor`: 300 Australian news articles (Lee corpus) | gensim (its test data) |
| newsgroups | `mini_newsgroup`: 200 Usenet posts (alt.atheism, sci.space), read from the pickle's string opcodes without unpickling (no code runs) | gensim (its test data) |
| code | this Python's standard-library sources (top-level `*.py` modules) | none |
| docs | the Python language reference topics (`pydoc_data`) | none |
| maths | DeepMind `mathematics-dataset` generators: question / answer pairs of its non-composed training modules, seeded, generated under PYTHONHASHSEED=0 | mathematics-dataset |

Each domain is a list of documents (an article, a post, a source file, a reference topic, one maths
module's questions). Documents are ordered by a seeded hash; the first `test_per_domain` documents are
held out and give one test sequence each (their middle chunk); the others give the memory's training
sequences, taken round-robin across documents (chunk 0 of every document, then chunk 1, ...) up to
`train_per_domain`. No test document contributes to the memory. Sequences are about `seq_chars`
characters, cut at line or word boundaries.
"""

from __future__ import annotations

import bz2
import hashlib
import importlib
import json
import logging
import os
import pickletools
import random
import re
import subprocess
import sys
import sysconfig
import warnings
import zlib
from collections.abc import Callable, Sequence
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any

import numpy as np

from hullft_agent.candidates import InMemoryCandidates
from hullft_agent.errors import InvalidArgumentError
from hullft_agent.evaluation.units import EvalUnit

logger = logging.getLogger(__name__)

DOMAINS: tuple[str, ...] = ("wiki", "news", "newsgroups", "code", "docs", "maths")


class DomainUnavailable(RuntimeError):
    """A domain's source is not installed (or does not work here); the message says how to get it."""


@dataclass(frozen=True)
class PileSequence:
    """One sequence of the mini-Pile: `doc` is its document (test documents never feed the memory)."""

    id: str
    domain: str
    doc: str
    text: str


@dataclass
class MiniPile:
    """Train sequences (the memory) and test sequences (the queries) of each domain."""

    train: list[PileSequence]
    test: list[PileSequence]
    skipped: dict[str, str] = field(default_factory=dict)
    settings: dict[str, Any] = field(default_factory=dict)

    @property
    def domains(self) -> list[str]:
        return list(dict.fromkeys(s.domain for s in self.test))

    def counts(self) -> dict[str, dict[str, int]]:
        out: dict[str, dict[str, int]] = {}
        for name, seqs in (("train", self.train), ("test", self.test)):
            for s in seqs:
                out.setdefault(s.domain, {"train": 0, "test": 0, "train_chars": 0})[name] += 1
                if name == "train":
                    out[s.domain]["train_chars"] += len(s.text)
        return out

    def memory(self, embedder: Any) -> InMemoryCandidates:
        """The train sequences as a candidate source (episode = document, task = domain)."""
        if not self.train:
            raise InvalidArgumentError("the mini-Pile has no training sequences")
        return InMemoryCandidates(
            [s.text for s in self.train],
            embedder=embedder,
            ids=[s.id for s in self.train],
            episodes=[f"{s.domain}/{s.doc}" for s in self.train],
            tasks=[s.domain for s in self.train],
        )

    def units(self) -> list[EvalUnit]:
        """The test sequences as evaluation units (query = the sequence, group = its domain)."""
        return [
            EvalUnit(id=s.id, text=s.text, query=s.text, group=s.domain, episode=f"{s.domain}/{s.doc}",
                     task=s.domain)
            for s in self.test
        ]


# ---------------------------------------------------------------------------------------- chunking


def chunk_text(text: str, seq_chars: int, *, min_chars: int | None = None) -> list[str]:
    """Greedily pack lines into chunks of at most `seq_chars` characters; a longer line is cut at a
    word boundary. Chunks shorter than `min_chars` (default seq_chars // 4) or blank are dropped."""
    if seq_chars < 16:
        raise InvalidArgumentError(f"seq_chars must be >= 16, got {seq_chars}")
    min_chars = seq_chars // 4 if min_chars is None else min_chars
    pieces: list[str] = []
    for line in text.split("\n"):
        while len(line) > seq_chars:
            cut = line.rfind(" ", seq_chars // 2, seq_chars)
            cut = seq_chars if cut < 0 else cut
            pieces.append(line[:cut])
            line = line[cut:].lstrip(" ")
        pieces.append(line)
    chunks: list[str] = []
    current: list[str] = []
    size = 0
    for piece in pieces:
        extra = len(piece) + (1 if current else 0)
        if current and size + extra > seq_chars:
            chunks.append("\n".join(current))
            current, size = [], 0
            extra = len(piece)
        if not current and not piece.strip():
            continue  # no chunk starts with a blank line
        current.append(piece)
        size += extra
    if current:
        chunks.append("\n".join(current))
    return [c.strip("\n") for c in chunks if c.strip() and len(c.strip()) >= min_chars]


# ---------------------------------------------------------------------------------------- sources


def _gensim_test_data() -> Path:
    try:
        spec = importlib.util.find_spec("gensim")
    except (ImportError, ValueError):
        spec = None
    if spec is None or not spec.submodule_search_locations:
        raise DomainUnavailable("gensim is not installed (pip install gensim); its test data holds this domain")
    folder = Path(next(iter(spec.submodule_search_locations))) / "test" / "test_data"
    if not folder.is_dir():
        raise DomainUnavailable(f"gensim's test data folder {folder} is missing")
    return folder


def _need(path: Path) -> Path:
    if not path.is_file():
        raise DomainUnavailable(f"{path.name} is not in gensim's test data ({path.parent})")
    return path


def wiki_documents() -> list[tuple[str, str]]:
    """Articles of the Wikipedia dump excerpt shipped with gensim, markup stripped (redirects dropped)."""
    path = _need(_gensim_test_data() / "enwiki-latest-pages-articles1.xml-p000000010p000030302-shortened.bz2")
    from gensim.corpora.wikicorpus import extract_pages, filter_wiki

    docs = []
    with bz2.open(path, "rb") as handle:
        for title, text, page_id in extract_pages(handle):
            if not text or text.lstrip().lower().startswith("#redirect"):
                continue
            clean = filter_wiki(text).replace("'''", "").replace("''", "")
            clean = re.sub(r"[ \t]+\n", "\n", clean)
            clean = re.sub(r"\n{3,}", "\n\n", clean).strip()
            if len(clean) >= 500:
                docs.append((f"{page_id}-{title}", f"{title}\n\n{clean}"))
    return docs


def news_documents() -> list[tuple[str, str]]:
    """The Lee background corpus: one news article per line."""
    path = _need(_gensim_test_data() / "lee_background.cor")
    lines = path.read_text(encoding="utf-8", errors="replace").splitlines()
    return [(f"lee-{i}", line.strip()) for i, line in enumerate(lines) if len(line.strip()) >= 200]


def newsgroup_documents() -> list[tuple[str, str]]:
    """Usenet posts from gensim's `mini_newsgroup` (a zlib-compressed pickle of a scikit-learn Bunch).

    The posts are read as the string operands of the pickle's opcodes; nothing is unpickled, so no
    code in the file can run. Headers other than Subject are dropped.
    """
    path = _need(_gensim_test_data() / "mini_newsgroup")
    raw = zlib.decompress(path.read_bytes())
    strings = [arg for _, arg, _ in pickletools.genops(raw) if isinstance(arg, str)]
    docs = []
    for i, post in enumerate(s for s in strings if "\nSubject:" in s or s.startswith("Subject:")):
        head, _, body = post.partition("\n\n")
        subject = next((line for line in head.splitlines() if line.startswith("Subject:")), "")
        body = body.strip()
        if len(body) >= 200:
            docs.append((f"post-{i}", f"{subject}\n\n{body}".strip()))
    return docs


def code_documents() -> list[tuple[str, str]]:
    """This Python's standard-library modules (top-level `*.py` files of at least 2,000 characters)."""
    folder = Path(sysconfig.get_paths()["stdlib"])
    docs = []
    for path in sorted(folder.glob("*.py")):
        if path.name.startswith("_") and path.name != "__future__.py":
            continue
        try:
            text = path.read_text(encoding="utf-8")
        except (OSError, UnicodeDecodeError):
            continue
        if len(text) >= 2000:
            docs.append((path.name, text))
    if not docs:
        raise DomainUnavailable(f"no standard-library sources found under {folder}")
    return docs


def docs_documents() -> list[tuple[str, str]]:
    """The Python language reference topics (`pydoc_data.topics`)."""
    try:
        from pydoc_data.topics import topics
    except ImportError as exc:
        raise DomainUnavailable(f"pydoc_data is not available in this Python: {exc}") from exc
    return [(name, topics[name]) for name in sorted(topics) if len(topics[name]) >= 500]


def _import_mathematics_dataset() -> Any:
    """`mathematics_dataset.modules.modules`, with a shim for SymPy >= 1.7, where
    `base_solution_linear` moved from `sympy.solvers.diophantine` into its `diophantine` submodule."""
    if importlib.util.find_spec("mathematics_dataset") is None:
        raise DomainUnavailable("mathematics-dataset is not installed (pip install mathematics-dataset)")
    try:
        importlib.import_module("sympy.solvers.diophantine")
        package = sys.modules["sympy.solvers.diophantine"]
        if not hasattr(package, "base_solution_linear"):
            inner = importlib.import_module("sympy.solvers.diophantine.diophantine")
            package.base_solution_linear = inner.base_solution_linear  # type: ignore[attr-defined]
        return importlib.import_module("mathematics_dataset.modules.modules")
    except Exception as exc:  # an incompatible sympy/numpy: report, do not crash the other domains
        raise DomainUnavailable(f"mathematics-dataset does not import here: {type(exc).__name__}: {exc}") from exc


def generate_maths(questions_per_module: int = 80, seed: int = 0) -> tuple[list[tuple[str, str]], dict[str, str]]:
    """(documents, failed modules) from the `mathematics-dataset` training modules, in this process.

    Deterministic only under a fixed `PYTHONHASHSEED` (the generators iterate over sets of strings);
    `maths_documents` arranges that. `*_composed` modules are left out: they vary from run to run
    even so. Some code paths of the package fail on NumPy 2 (`np.object`, `ndarray.itemset`): a sample
    that fails is skipped (up to 3x `questions_per_module` tries) and a module none of whose samples
    works is left out. The `random`, NumPy and SymPy generator states are restored afterwards.
    """
    modules = _import_mathematics_dataset()
    import sympy.core.random as sympy_random  # randprime & co. draw from SymPy's own generator

    py_state, np_state, sympy_state = random.getstate(), np.random.get_state(), sympy_random.rng.getstate()
    docs: list[tuple[str, str]] = []
    failed: dict[str, str] = {}
    try:
        flat: dict[str, Callable[[], Any]] = {}

        def add(tree: dict[str, Any], prefix: str = "") -> None:
            for key, value in tree.items():
                name = f"{prefix}__{key}" if prefix else key
                if isinstance(value, dict):
                    add(value, name)
                elif not name.endswith("_composed"):
                    flat[name] = value

        add(modules.train(lambda entropy_range: entropy_range))
        for index, name in enumerate(sorted(flat)):
            module_seed = seed * 1_000_003 + index
            random.seed(module_seed)
            np.random.seed(module_seed % (2**32))
            sympy_random.rng.seed(module_seed)
            pairs: list[str] = []
            error = ""
            for _ in range(3 * questions_per_module):
                if len(pairs) == questions_per_module:
                    break
                try:
                    with warnings.catch_warnings():
                        warnings.simplefilter("ignore")
                        example = flat[name]()
                except Exception as exc:  # noqa: BLE001 - a code path broken by NumPy 2 (np.object, itemset)
                    error = f"{type(exc).__name__}: {str(exc).splitlines()[0] if str(exc) else ''}"
                    continue
                pairs.append(f"Question: {example.question}\nAnswer: {example.answer}")
            if not pairs:
                failed[name] = error
                continue
            docs.append((name, "\n".join(pairs)))
    finally:
        random.setstate(py_state)
        np.random.set_state(np_state)
        sympy_random.rng.setstate(sympy_state)
    return docs, failed


_MATHS_SCRIPT = """
import json, sys
from hullft_agent.evaluation.minipile import generate_maths
docs, failed = generate_maths(int(sys.argv[1]), int(sys.argv[2]))
json.dump({"docs": docs, "failed": failed}, sys.stdout)
"""


def maths_documents(questions_per_module: int = 80, seed: int = 0) -> list[tuple[str, str]]:
    """Question/answer pairs of `mathematics-dataset`, one document per module (see `generate_maths`).

    Generated in a child Python with `PYTHONHASHSEED=0` (unless this process already has it), so
    the questions are the same on every run; about 10 s.
    """
    _import_mathematics_dataset()  # a clear DomainUnavailable here rather than in the child
    if os.environ.get("PYTHONHASHSEED") == "0":
        docs, failed = generate_maths(questions_per_module, seed)
    else:
        env = {**os.environ, "PYTHONHASHSEED": "0"}
        root = str(Path(__file__).resolve().parents[2])
        env["PYTHONPATH"] = os.pathsep.join(p for p in (root, env.get("PYTHONPATH")) if p)
        done = subprocess.run(
            [sys.executable, "-c", _MATHS_SCRIPT, str(questions_per_module), str(seed)],
            env=env, capture_output=True, text=True, check=False,
        )
        if done.returncode != 0:
            tail = done.stderr.strip().splitlines()[-1:] or ["(no output)"]
            raise DomainUnavailable(f"generating mathematics-dataset questions failed: {tail[0]}")
        payload = json.loads(done.stdout)
        docs = [(str(name), str(text)) for name, text in payload["docs"]]
        failed = payload["failed"]
    if failed:
        logger.info("maths: left out %d mathematics-dataset module(s) that fail here: %s", len(failed), sorted(failed))
    if not docs:
        raise DomainUnavailable(f"every mathematics-dataset module failed here: {failed}")
    return docs


SOURCES: dict[str, Callable[[], list[tuple[str, str]]]] = {
    "wiki": wiki_documents,
    "news": news_documents,
    "newsgroups": newsgroup_documents,
    "code": code_documents,
    "docs": docs_documents,
    "maths": maths_documents,
}


# ---------------------------------------------------------------------------------------- the split


def _rank(seed: int, domain: str, doc: str) -> str:
    return hashlib.sha256(f"{seed}\x00{domain}\x00{doc}".encode()).hexdigest()


def split_domain(
    domain: str,
    documents: Sequence[tuple[str, str]],
    *,
    train_per_domain: int,
    test_per_domain: int,
    seq_chars: int,
    seed: int = 0,
) -> tuple[list[PileSequence], list[PileSequence]]:
    """(train, test) sequences of one domain, deterministically (see the module docstring)."""
    ranked = sorted(documents, key=lambda d: _rank(seed, domain, d[0]))
    chunked = [(doc, chunk_text(text, seq_chars)) for doc, text in ranked]
    chunked = [(doc, chunks) for doc, chunks in chunked if chunks]
    if len(chunked) <= test_per_domain:
        raise InvalidArgumentError(
            f"domain {domain!r} has {len(chunked)} usable document(s); need more than test_per_domain="
            f"{test_per_domain} so some are left for the memory"
        )
    test = [
        PileSequence(f"{domain}/test/{doc}", domain, doc, chunks[len(chunks) // 2])
        for doc, chunks in chunked[:test_per_domain]
    ]
    train: list[PileSequence] = []
    rest = chunked[test_per_domain:]
    depth = 0
    while len(train) < train_per_domain and any(depth < len(chunks) for _, chunks in rest):
        for doc, chunks in rest:
            if depth < len(chunks) and len(train) < train_per_domain:
                train.append(PileSequence(f"{domain}/{doc}#{depth}", domain, doc, chunks[depth]))
        depth += 1
    return train, test


def build_minipile(
    domains: Sequence[str] = DOMAINS,
    *,
    train_per_domain: int = 200,
    test_per_domain: int = 3,
    seq_chars: int = 1000,
    seed: int = 0,
    strict: bool = False,
    sources: dict[str, Callable[[], list[tuple[str, str]]]] | None = None,
) -> MiniPile:
    """Load each domain and split it; an unavailable domain is skipped with its reason (or raises with
    `strict`). `sources` replaces the document loaders (tests)."""
    sources = {**SOURCES, **(sources or {})}
    unknown = [d for d in domains if d not in sources]
    if unknown:
        raise InvalidArgumentError(f"unknown domain(s) {unknown}; valid domains: {', '.join(sources)}")
    for name, value in (("train_per_domain", train_per_domain), ("test_per_domain", test_per_domain)):
        if isinstance(value, bool) or not isinstance(value, int) or value < 1:
            raise InvalidArgumentError(f"{name} must be an integer >= 1, got {value!r}")
    train: list[PileSequence] = []
    test: list[PileSequence] = []
    skipped: dict[str, str] = {}
    for domain in dict.fromkeys(domains):
        try:
            documents = sources[domain]()
        except DomainUnavailable as exc:
            if strict:
                raise
            skipped[domain] = str(exc)
            logger.warning("mini-Pile: domain %r skipped: %s", domain, exc)
            continue
        tr, te = split_domain(
            domain, documents, train_per_domain=train_per_domain, test_per_domain=test_per_domain,
            seq_chars=seq_chars, seed=seed,
        )
        train.extend(tr)
        test.extend(te)
        logger.info("mini-Pile %s: %d documents -> %d train, %d test sequences", domain, len(documents), len(tr), len(te))
    if not test:
        raise InvalidArgumentError(f"no mini-Pile domain is available: {skipped}")
    settings = {
        "domains": list(domains), "train_per_domain": train_per_domain, "test_per_domain": test_per_domain,
        "seq_chars": seq_chars, "seed": seed, "python": sys.version.split()[0],
    }
    return MiniPile(train=train, test=test, skipped=skipped, settings=settings)


def run_minipile(
    pile: MiniPile,
    model: Any = None,
    tokenizer: Any = None,
    *,
    embedder: Any,
    out_dir: str | Path,
    config: Any = None,
    **kwargs: Any,
) -> Any:
    """Evaluate methods on the mini-Pile: the train sequences are the memory, each test sequence a
    unit; the summary's `by_group` is the per-domain table. Keyword arguments go to `run_evaluation`."""
    from hullft_agent.evaluation.runner import run_evaluation

    metadata = {"minipile": {**pile.settings, "counts": pile.counts(), "skipped": pile.skipped}}
    metadata.update(kwargs.pop("metadata", None) or {})
    return run_evaluation(
        pile.units(), model, tokenizer, embedder=embedder, source=pile.memory(embedder), out_dir=out_dir,
        config=config, title=kwargs.pop("title", "mini-Pile BPB"), metadata=metadata, **kwargs,
    )
