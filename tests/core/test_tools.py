"""Tool calling in the core runtime: definitions, parsing, rendering, forced calls, generate and logging."""

from __future__ import annotations

import json
import random

import pytest
from conftest import CHAT_TEMPLATE, build_tiny_model, build_tiny_tokenizer

from hullft_agent.errors import ContextOverflowError, InvalidArgumentError, InvalidTypeError
from hullft_agent.memory import TrajectoryMemory
from hullft_agent.memory.testing import HashingEmbedder
from hullft_agent.runtime import Call, Runtime, SamplingParams
from hullft_agent.runtime import engine as engine_module
from hullft_agent.runtime.constrained import forced_tool_call, simple_arguments
from hullft_agent.runtime.generation import GenerationStats
from hullft_agent.runtime.prompt import check_conversation, fit_prompt, prompt_ids, render_prompt
from hullft_agent.runtime.tools import (
    InvalidToolCall,
    ToolCall,
    check_tool_choice,
    check_tools,
    parse_tool_calls,
)

WEATHER = {"type": "function", "function": {
    "name": "get_weather", "description": "Weather at a place.",
    "parameters": {"type": "object", "properties": {
        "city": {"type": "string"}, "days": {"type": "integer"}, "unit": {"enum": ["c", "f"]},
        "rain": {"type": "boolean"}, "hours": {"type": "number"}, "note": {"type": "string"}},
        "required": ["city", "days", "unit", "rain", "hours"]}}}
ADD = {"name": "add", "description": "Add numbers.",
       "parameters": {"type": "object", "properties": {"a": {"type": "integer"}, "b": {"type": "number"},
                                                        "label": {"type": "string"},
                                                        "opts": {"type": "object", "properties": {
                                                            "round": {"type": "boolean"}}}}}}
LIST = {"name": "tag", "parameters": {"type": "object", "properties": {"tags": {"type": "array",
                                                                           "items": {"type": "string"}}},
                                      "required": ["tags"]}}
PING = {"name": "ping", "description": "Check the line.", "parameters": {"type": "object", "properties": {}}}
TOOLS = check_tools([WEATHER, ADD])
USER = {"role": "user", "content": "weather in Paris?"}


@pytest.fixture(scope="module")
def runtime_and_model():
    tokenizer = build_tiny_tokenizer()
    model = build_tiny_model(len(tokenizer), max_positions=2048)
    return Runtime(model, tokenizer), tokenizer


def call(**kwargs) -> Call:
    sampling = kwargs.pop("sampling", SamplingParams(max_new_tokens=48, temperature=0.0))
    return Call(conversation=kwargs.pop("conversation", [USER]), sampling=sampling, **kwargs)


# ---------------------------------------------------------------------------------------------- definitions
def test_check_tools_normalises_and_names_the_bad_tool():
    tools = check_tools([ADD, {"type": "function", "function": {"name": "ping"}}])
    assert [t["type"] for t in tools] == ["function", "function"]
    assert tools[0]["function"]["name"] == "add" and tools[1]["function"]["parameters"] == {
        "type": "object", "properties": {}}
    assert check_tools(None) == []
    with pytest.raises(InvalidArgumentError, match=r"tools\[1\] has name 'bad name'"):
        check_tools([ADD, {"name": "bad name"}])
    with pytest.raises(InvalidArgumentError, match=r"tools\[1\] \('add'\): another tool"):
        check_tools([ADD, ADD])
    with pytest.raises(InvalidArgumentError, match="'ping'.*type 'object'"):
        check_tools([{"name": "ping", "parameters": {"type": "string"}}])
    with pytest.raises(InvalidTypeError, match=r"tools\[0\] must be a dict"):
        check_tools(["add"])
    with pytest.raises(InvalidArgumentError, match="only 'function' tools"):
        check_tools([{"type": "retrieval", "function": {"name": "x"}}])


def test_check_tool_choice():
    assert check_tool_choice("auto", []) == "auto" and check_tool_choice("none", TOOLS) == "none"
    assert check_tool_choice("required", TOOLS) == "required"
    named = {"type": "function", "function": {"name": "add"}}
    assert check_tool_choice(named, TOOLS) == named
    assert check_tool_choice({"type": "function", "name": "add"}, TOOLS) == named  # Responses-API form
    with pytest.raises(InvalidArgumentError, match="'nope', which is not among the tools"):
        check_tool_choice({"type": "function", "function": {"name": "nope"}}, TOOLS)
    with pytest.raises(InvalidArgumentError, match="needs at least one tool"):
        check_tool_choice("required", [])
    with pytest.raises(InvalidArgumentError, match="tool_choice must be one of"):
        check_tool_choice("always", TOOLS)


def test_tool_call_to_openai():
    out = ToolCall("call_1", "add", {"a": 1, "label": "é"}).to_openai()
    assert out == {"id": "call_1", "type": "function", "function": {"name": "add", "arguments": '{"a": 1, "label": "é"}'}}
    assert json.loads(out["function"]["arguments"]) == {"a": 1, "label": "é"}


# ---------------------------------------------------------------------------------------------- parsing
def test_parse_hermes_blocks_and_content():
    text = ('Let me check.\n<tool_call>\n{"name": "add", "arguments": {"a": 2, "b": 3.5}}\n</tool_call>\n'
            '<tool_call>[{"name": "get_weather", "arguments": "{\\"city\\": \\"Paris\\"}"}, '
            '{"name": "add", "parameters": {"a": 1}}]</tool_call> done')
    content, calls, invalid = parse_tool_calls(text, TOOLS)
    assert content == "Let me check.\ndone" and invalid == []
    assert [(c.name, c.arguments) for c in calls] == [
        ("add", {"a": 2, "b": 3.5}), ("get_weather", {"city": "Paris"}), ("add", {"a": 1})]
    assert len({c.id for c in calls}) == 3 and all(c.id.startswith("call_") for c in calls)


def test_parse_plain_json_answers():
    content, calls, invalid = parse_tool_calls('{"name": "add", "parameters": {"a": "2"}}', TOOLS)
    assert content == "" and [(c.name, c.arguments) for c in calls] == [("add", {"a": 2})] and not invalid
    fenced = '```json\n[{"name": "add", "arguments": {}}, {"type": "function", "function": {"name": "add"}}]\n```'
    assert [c.name for c in parse_tool_calls(fenced, TOOLS)[1]] == ["add", "add"]
    for text in ('{"city": "Paris"}', '{"name": "Ada"}', "[1, 2]", "{not json"):  # JSON, but not a call
        assert parse_tool_calls(text, TOOLS) == (text, [], [])


def test_malformed_calls_are_reported_never_raised():
    content, calls, invalid = parse_tool_calls(
        'a <tool_call>{"name": "add", "arguments": {"a": 1</tool_call> b '
        '<tool_call>{"name": "launch", "arguments": {"x": 1}}</tool_call>'
        '<tool_call>{"name": "add", "arguments": [1]}</tool_call><tool_call>"add"</tool_call>'
        '<tool_call>{"arguments": {}}</tool_call><tool_call>{"name": "add", "arguments": "{oops"}', TOOLS)
    assert content == "a\nb" and calls == []
    errors = [c.error for c in invalid]
    assert "is not valid JSON" in errors[0] and invalid[0].arguments == '{"name": "add", "arguments": {"a": 1'
    assert errors[1] == "the <tool_call> block calls the unknown tool 'launch' (the tools are: add, get_weather)"
    assert invalid[1].name == "launch" and json.loads(invalid[1].arguments) == {"x": 1}
    assert "must be a JSON object, got list" in errors[2]
    assert "holds str JSON, not an object" in errors[3]
    assert 'has no "name"' in errors[4]
    assert "never closed" in errors[5] or "not JSON" in errors[5]
    assert all(isinstance(c, InvalidToolCall) and c.id for c in invalid)
    rng = random.Random(0)
    pieces = ["<tool_call>", "</tool_call>", "{", "}", '"name"', ":", '"add"', ",", '"arguments"', "[", "]", "x", "\n"]
    for _ in range(300):  # any mix of call markup parses without an exception
        content, calls, invalid = parse_tool_calls("".join(rng.choice(pieces) for _ in range(12)), TOOLS)
        assert isinstance(content, str)


def test_arguments_are_cast_to_the_schema_where_lossless():
    args = {"a": "7", "b": "2.5", "label": 3, "opts": {"round": "true"}, "extra": "9"}
    _, calls, _ = parse_tool_calls(json.dumps({"name": "add", "arguments": args}), TOOLS)
    assert calls[0].arguments == {"a": 7, "b": 2.5, "label": "3", "opts": {"round": True}, "extra": "9"}
    _, calls, _ = parse_tool_calls('{"name": "add", "arguments": {"a": 4.0, "b": "x", "label": "7"}}', TOOLS)
    assert calls[0].arguments == {"a": 4, "b": "x", "label": "7"}  # "x" cannot be a number: kept


def test_a_tokenizers_response_template_is_used_first():
    template = {"start_anchor": "<|im_start|>assistant\n", "fields": {
        "content": {"content": "text"},
        "tool_calls": {"open": "[CALL]", "close": "[/CALL]", "content": "json", "repeats": True,
                       "transform": {"type": "function", "function": "{content}"}}}}
    content, calls, invalid = parse_tool_calls('ok [CALL]{"name": "add", "arguments": {"a": "4"}}[/CALL]', TOOLS,
                                               response_template=template)
    assert content == "ok" and [(c.name, c.arguments) for c in calls] == [("add", {"a": 4})] and not invalid
    content, calls, invalid = parse_tool_calls("ok [CALL]{bad[/CALL]", TOOLS, response_template=template)
    assert calls == [] and "response template could not parse" in invalid[0].error
    _, calls, _ = parse_tool_calls('<tool_call>{"name": "add", "arguments": {}}</tool_call>', TOOLS,
                                   response_template=template)
    assert [c.name for c in calls] == ["add"]  # Hermes blocks still count


# ---------------------------------------------------------------------------------------------- rendering
HISTORY = [
    {"role": "system", "content": "Be brief."},
    USER,
    {"role": "assistant", "content": None, "tool_calls": [
        {"id": "c1", "type": "function", "function": {"name": "get_weather", "arguments": '{"city": "Paris"}'}}]},
    {"role": "tool", "content": "sunny", "tool_call_id": "c1", "name": "get_weather"},
]


def test_conversation_check_keeps_tool_calls_and_ids():
    conv = check_conversation(HISTORY)
    assert conv[2] == {"role": "assistant", "content": "",
                       "tool_calls": [{"id": "c1", "name": "get_weather", "arguments": {"city": "Paris"}}]}
    assert conv[3] == {"role": "tool", "content": "sunny", "tool_call_id": "c1", "name": "get_weather"}
    with pytest.raises(InvalidArgumentError, match=r"conversation\[0\] has tool_calls but role 'user'"):
        check_conversation([{"role": "user", "content": "", "tool_calls": [{"name": "a", "arguments": {}}]}])
    with pytest.raises(InvalidArgumentError, match=r"\['tool_calls'\]\[0\] \('a'\) has arguments that are not JSON"):
        check_conversation([{"role": "assistant", "content": "", "tool_calls": [{"name": "a", "arguments": "{x"}]}])
    with pytest.raises(InvalidArgumentError, match="string 'role' and 'content'"):
        check_conversation([{"role": "assistant", "content": None}])


def test_fallback_renders_tools_calls_and_results_as_text(tiny_tokenizer):
    prompt = render_prompt(tiny_tokenizer, check_conversation(HISTORY), TOOLS)
    system = prompt.split("<|im_end|>")[0]
    assert system.startswith("<|im_start|>system\nBe brief.\n\n# Tools") and "<tools>" in system
    assert json.dumps(TOOLS[0]) in system and "inside <tool_call></tool_call> tags" in system
    assert '<|im_start|>assistant\n<tool_call>\n{"name": "get_weather", "arguments": {"city": "Paris"}}\n' \
           "</tool_call><|im_end|>" in prompt
    assert "<|im_start|>tool\n<tool_response>\nsunny\n</tool_response><|im_end|>" in prompt
    assert prompt.endswith("<|im_start|>assistant\n")
    plain = [{"role": "user", "content": "hi"}, {"role": "tool", "content": "t"}]  # no tool calling: unchanged
    assert render_prompt(tiny_tokenizer, plain) == tiny_tokenizer.apply_chat_template(
        plain, tokenize=False, add_generation_prompt=True)
    tiny_tokenizer_without = build_tiny_tokenizer()
    tiny_tokenizer_without.chat_template = None
    assert render_prompt(tiny_tokenizer_without, [USER], TOOLS).startswith("System: # Tools")


TOOL_TEMPLATE = (
    "{% if tools %}<|im_start|>system\nTOOLS:{% for t in tools %} {{ t.function.name }}{% endfor %}<|im_end|>\n"
    "{% endif %}{% for m in messages %}<|im_start|>{{ m.role }}\n{{ m.content }}{% if m.tool_calls %}"
    "{% for c in m.tool_calls %}CALL {{ c.function.name }} {{ c.function.arguments | tojson }}{% endfor %}"
    "{% endif %}<|im_end|>\n{% endfor %}{% if add_generation_prompt %}<|im_start|>assistant\n{% endif %}"
)


def test_a_template_that_renders_tools_gets_them():
    tokenizer = build_tiny_tokenizer()
    tokenizer.chat_template = TOOL_TEMPLATE
    prompt = render_prompt(tokenizer, check_conversation(HISTORY), TOOLS)
    assert prompt.startswith("<|im_start|>system\nTOOLS: get_weather add<|im_end|>")
    assert 'CALL get_weather {"city": "Paris"}' in prompt and "<tool_call>" not in prompt
    tokenizer.chat_template = TOOL_TEMPLATE.replace("{% if tools %}", "{% if tools %}{{ raise_exception('no') }}")
    prompt = render_prompt(tokenizer, check_conversation(HISTORY), TOOLS)  # it refuses: tools go in as text
    assert "# Tools" in prompt and "<tool_call>" in prompt
    tokenizer.chat_template = CHAT_TEMPLATE


def test_fit_prompt_keeps_the_tools_while_dropping_old_messages(tiny_tokenizer):
    conv = check_conversation([{"role": "system", "content": "s"}, *[{"role": "user", "content": "x" * 40}] * 6, USER])
    full = len(prompt_ids(tiny_tokenizer, conv, TOOLS))
    ids, dropped = fit_prompt(tiny_tokenizer, conv, limit=full - 60, max_new=8, tools=TOOLS)
    assert dropped > 0 and len(ids) <= full - 68 and "# Tools" in tiny_tokenizer.decode(ids)


# ---------------------------------------------------------------------------------------------- generate
def test_a_named_tool_is_always_a_valid_call_of_the_schema(runtime_and_model):
    rt, _ = runtime_and_model
    emitted = []
    for seed in range(4):
        result = rt.generate(call(tools=TOOLS, tool_choice={"type": "function", "function": {"name": "get_weather"}},
                                  sampling=SamplingParams(max_new_tokens=48, temperature=1.0, seed=seed,
                                                          top_p=0.2 if seed % 2 else 1.0)),
                             emit=emitted.append)
        assert result.invalid_tool_calls == [] and len(result.tool_calls) == 1, result.stats.text
        args = result.tool_calls[0].arguments
        assert result.tool_calls[0].name == "get_weather" and set(args) == {"city", "days", "unit", "rain", "hours"}
        assert isinstance(args["city"], str) and args["city"] and isinstance(args["days"], int)
        assert args["unit"] in ("c", "f") and isinstance(args["rain"], bool) and isinstance(args["hours"], (int, float))
        assert result.stats.finish_reason == "tool_calls" and result.text == ""
        assert result.stats.text.startswith('<tool_call>\n{"name": "get_weather", "arguments": {"city": "')
        assert result.stats.output_tokens == len(result.stats.token_ids) > 0
    assert emitted == [], "a call is not streamed as text"


def test_required_picks_one_of_the_tools_and_complex_schemas_never_crash(runtime_and_model):
    rt, _ = runtime_and_model
    names = set()
    for seed in range(3):
        result = rt.generate(call(tools=check_tools([WEATHER, PING]), tool_choice="required",
                                  sampling=SamplingParams(max_new_tokens=8, temperature=1.0, seed=seed)))
        assert len(result.tool_calls) == 1 and not result.invalid_tool_calls, result.stats.text
        names.add(result.tool_calls[0].name)
    assert names <= {"get_weather", "ping"}
    for tool in (ADD, LIST):  # a nested object or an array: the arguments are sampled freely after "{"
        tools = check_tools([tool])
        assert simple_arguments(tools[0]["function"]["parameters"]) is None
        result = rt.generate(call(tools=tools, tool_choice="required"))
        assert len(result.tool_calls) + len(result.invalid_tool_calls) == 1
        assert result.stats.text.startswith(f'<tool_call>\n{{"name": "{tool["name"]}", "arguments": {{')


def test_a_forced_call_cut_short_is_reported(runtime_and_model):
    rt, _ = runtime_and_model
    tight = rt.generate(call(tools=check_tools([WEATHER]), tool_choice="required",
                             sampling=SamplingParams(max_new_tokens=1)))
    assert len(tight.tool_calls) == 1, "strings share max_new_tokens; numbers and enums are bounded anyway"
    result = rt.generate(call(tools=check_tools([LIST]), tool_choice="required",
                              sampling=SamplingParams(max_new_tokens=2)))
    assert result.tool_calls == [] and result.stats.finish_reason == "length"
    assert "never closed" in result.invalid_tool_calls[0].error
    cancelled = rt.generate(call(tools=TOOLS, tool_choice="required"), should_stop=lambda: True)
    assert cancelled.stats.finish_reason == "cancelled" and cancelled.tool_calls == []
    ids = prompt_ids(rt.tokenizer, [USER], TOOLS)
    short = Runtime(rt.model, rt.tokenizer, max_context_tokens=len(ids) + 40)
    with pytest.raises(ContextOverflowError, match="reserved for the answer"):  # the frame is reserved too
        short.generate(call(tools=TOOLS, tool_choice={"type": "function", "function": {"name": "get_weather"}},
                            sampling=SamplingParams(max_new_tokens=4)))
    stats = GenerationStats()
    text = forced_tool_call(rt.model, rt.tokenizer, ids, TOOLS, "get_weather", SamplingParams(max_new_tokens=8),
                            max_total=len(ids) + 30, stats=stats)
    assert stats.finish_reason == "length" and "never closed" in parse_tool_calls(text, TOOLS)[2][0].error


def test_auto_parses_the_answer_and_emits_only_its_content(runtime_and_model, monkeypatch):
    rt, _ = runtime_and_model
    answer = 'Checking.\n<tool_call>\n{"name": "add", "arguments": {"a": "1"}}\n</tool_call>' \
             '<tool_call>{"name": "nope", "arguments": {}}</tool_call>'

    def scripted(model, tokenizer, ids, params, *, max_total, stats, should_stop=None):
        for i in range(0, len(answer), 7):
            yield answer[i:i + 7]
        stats.text, stats.output_tokens, stats.finish_reason = answer, 12, "stop"

    monkeypatch.setattr(engine_module, "sample_tokens", scripted)
    emitted = []
    result = rt.generate(call(tools=TOOLS), emit=emitted.append)
    assert emitted == ["Checking."] and result.text == "Checking."
    assert [(c.name, c.arguments) for c in result.tool_calls] == [("add", {"a": 1})]
    assert "unknown tool 'nope'" in result.invalid_tool_calls[0].error
    assert result.stats.finish_reason == "tool_calls" and result.stats.text == answer
    pieces = []
    plain = rt.generate(call(tools=TOOLS, tool_choice="none"), emit=pieces.append)  # no tools: text as it comes
    assert "".join(pieces) == answer == plain.text and plain.tool_calls == []
    with_tools = rt.generate(call(tools=TOOLS))
    assert with_tools.prompt_tokens > plain.prompt_tokens, "tool_choice='none' does not offer the tools"


def test_call_checks_its_tools_before_the_model_runs():
    with pytest.raises(InvalidArgumentError, match="not among the tools"):
        call(tools=TOOLS, tool_choice={"type": "function", "function": {"name": "launch"}})
    with pytest.raises(InvalidArgumentError, match="needs at least one tool"):
        call(tool_choice="required")
    with pytest.raises(InvalidArgumentError, match=r"tools\[0\]"):
        call(tools=[{"name": ""}])
    assert call(tools=TOOLS, tool_choice="none").active_tools is None and call(tools=[]).tools is None


def test_tool_calls_are_logged_to_memory(runtime_and_model, tmp_path):
    _, tokenizer = runtime_and_model
    memory = TrajectoryMemory.open(tmp_path / "mem", embedder=HashingEmbedder(32))
    rt = Runtime(runtime_and_model[0].model, tokenizer, memory=memory)
    result = rt.generate(call(tools=TOOLS, tool_choice={"type": "function", "function": {"name": "get_weather"}},
                              conversation=[USER], episode_id="ep-1", log_metadata={"run": 1}))
    rows = sorted(memory.get(result.logged_ids), key=lambda r: r["step"])
    assert [r["kind"] for r in rows] == ["observation", "tool"]
    tool_call = result.tool_calls[0]
    args = json.dumps(tool_call.arguments, ensure_ascii=False, sort_keys=True)
    assert rows[1]["text"] == f"get_weather({args})"
    assert {k: rows[1]["metadata"][k] for k in ("role", "tool_call_id", "name", "run")} == {
        "role": "assistant", "tool_call_id": tool_call.id, "name": "get_weather", "run": 1}
    history = [USER, {"role": "assistant", "content": "", "tool_calls": [tool_call.to_message()]},
               {"role": "tool", "content": "sunny", "tool_call_id": tool_call.id, "name": "get_weather"}]
    answer = rt.generate(call(conversation=history, tools=TOOLS, episode_id="ep-1"))
    result_row = memory.get(answer.logged_ids)[0]
    assert result_row["kind"] == "result" and result_row["metadata"]["tool_call_id"] == tool_call.id
