"""Real text that ships with Python, cut into training-sized chunks (no downloads needed)."""

from __future__ import annotations

from dataclasses import dataclass

from hullft_agent.errors import InvalidArgumentError


@dataclass(frozen=True)
class Chunk:
    source: str
    index: int
    text: str

    @property
    def id(self) -> str:
        return f"{self.source}#{self.index}"


def split_paragraphs(text: str, chunk_chars: int) -> list[str]:
    """Greedily pack blank-line-separated paragraphs into chunks of about `chunk_chars` characters."""
    if chunk_chars < 1:
        raise InvalidArgumentError(f"chunk_chars must be >= 1, got {chunk_chars}")
    chunks: list[str] = []
    current = ""
    for paragraph in text.split("\n\n"):
        if not paragraph.strip():
            continue
        candidate = f"{current}\n\n{paragraph}" if current else paragraph
        if current and len(candidate) > chunk_chars:
            chunks.append(current)
            current = paragraph
        else:
            current = candidate
    if current.strip():
        chunks.append(current)
    return [c[: chunk_chars * 2] for c in chunks]


def pydoc_topic_chunks(chunk_chars: int = 1000) -> list[Chunk]:
    """The Python language reference topics from `pydoc_data`, one `Chunk` per ~chunk_chars."""
    from pydoc_data.topics import topics

    return [
        Chunk(topic, i, text)
        for topic in sorted(topics)
        for i, text in enumerate(split_paragraphs(topics[topic], chunk_chars))
    ]
