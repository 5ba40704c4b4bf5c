"""LangChain's own standard test suites for chat models, run on ChatHullFT with the tiny test model.

Tool calling, tool choice and structured output (LangChain's function-calling method over a forced
tool call) run. Capabilities the model lacks (JSON mode, images, audio, PDFs, per-call model
switching) are declared unsupported, so the suites skip those tests. The few tool-calling tests
that need a model that understands the request are expected to fail on the random tiny model and
say so (`_NEEDS_A_REAL_MODEL`).
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
_MODEL = build_tiny_model(len(_TOKENIZER), seed=3, max_positions=4096)


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
        return True

    @property
    def has_tool_choice(self) -> bool:
        return True

    @property
    def has_structured_output(self) -> bool:
        return True

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


_NEEDS_A_REAL_MODEL = (
    "needs a model that understands the request: the random tiny model writes a well-formed forced call of "
    "magic_function, but its argument value is random (the test wants input=3)"
)


@_mark_async_tests
class TestChatHullFTIntegration(_Capabilities, ChatModelIntegrationTests):
    @pytest.mark.parametrize("model", [{}, {"output_version": "v1"}], indirect=True)  # as the suite's own
    @pytest.mark.xfail(reason=_NEEDS_A_REAL_MODEL)
    def test_tool_calling(self, model: Any) -> None:
        super().test_tool_calling(model)

    @pytest.mark.xfail(reason=_NEEDS_A_REAL_MODEL)
    async def test_tool_calling_async(self, model: Any) -> None:
        await super().test_tool_calling_async(model)

    @pytest.mark.xfail(reason="tool_choice is 'auto' here, and the random tiny model does not choose to write a "
                              "<tool_call> block on its own; a real tool-trained model is needed")
    @pytest.mark.parametrize("model", [{}, {"output_version": "v1"}], indirect=True)
    def test_agent_loop(self, model: Any) -> None:
        super().test_agent_loop(model)

    @pytest.mark.xfail(reason="the forced call's customer_name is valid text but random: copying the Chinese "
                              "name from the request needs a model that understands it")
    def test_unicode_tool_call_integration(self, model: Any, *, tool_choice: str | None = None,
                                           force_tool_call: bool = True) -> None:
        super().test_unicode_tool_call_integration(model, tool_choice=tool_choice, force_tool_call=force_tool_call)
