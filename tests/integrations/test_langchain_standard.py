"""LangChain's own standard test suites for chat models, run on ChatHullFT with the tiny test model.

Capabilities the model lacks (tool calling, structured output, JSON mode, images, audio, PDFs,
per-call model switching) are declared unsupported, so the suites skip those tests.
"""

from __future__ import annotations

import inspect
from typing import Any

import pytest
from conftest import build_tiny_model, build_tiny_tokenizer
from langchain_hullft import ChatHullFT
from langchain_tests.integration_tests import ChatModelIntegrationTests
from langchain_tests.unit_tests import ChatModelUnitTests

_TOKENIZER = build_tiny_tokenizer()
# enough positions for the suites' prompts plus max_tokens=100; generation on it is instant
_MODEL = build_tiny_model(len(_TOKENIZER), seed=3, max_positions=512)


def _mark_async_tests(cls: type) -> type:
    """The suites' async tests carry no marker; mark them for pytest-asyncio (strict mode).

    The suite refuses overridden tests, so the inherited functions themselves get the mark.
    """
    for name in dir(cls):
        test = getattr(cls, name)
        if name.startswith("test_") and inspect.iscoroutinefunction(test):
            if not any(m.name == "asyncio" for m in getattr(test, "pytestmark", [])):
                pytest.mark.asyncio(test)
    return cls


class _Capabilities:
    @property
    def chat_model_class(self) -> type[ChatHullFT]:
        return ChatHullFT

    @property
    def chat_model_params(self) -> dict[str, Any]:
        return {"llm": _MODEL, "tokenizer": _TOKENIZER, "model": "tiny-llama", "seed": 0}

    @property
    def has_tool_calling(self) -> bool:
        return False

    @property
    def has_tool_choice(self) -> bool:
        return False

    @property
    def has_structured_output(self) -> bool:
        return False

    @property
    def supports_json_mode(self) -> bool:
        return False

    @property
    def supports_image_inputs(self) -> bool:
        return False

    @property
    def supports_model_override(self) -> bool:
        return False

    @property
    def returns_usage_metadata(self) -> bool:
        return True


class TestChatHullFTUnit(_Capabilities, ChatModelUnitTests):
    pass


@_mark_async_tests
class TestChatHullFTIntegration(_Capabilities, ChatModelIntegrationTests):
    pass
