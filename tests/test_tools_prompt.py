"""How tools reach the prompt: described by us, or rendered by a tool-aware chat template."""

from __future__ import annotations

import json

from interference.engine.chat_template import ChatTemplate
from interference.protocol import ChatCompletionRequest
from interference.providers.tools import call_schema, message_dicts

# The shape of Qwen/Hermes templates: tools in the system turn, calls as <tool_call> JSON.
TOOL_AWARE = (
    "{% if tools %}<|im_start|>system\n<tools>{% for t in tools %}{{ t | tojson }}{% endfor %}</tools>"
    "<|im_end|>\n{% endif %}{% for m in messages %}<|im_start|>{{ m.role }}\n{{ m.content }}"
    "{% for c in m.tool_calls or [] %}<tool_call>"
    "{{ {'name': c.function.name, 'arguments': c.function.arguments} | tojson }}"
    "</tool_call>{% endfor %}<|im_end|>\n{% endfor %}"
    "{% if add_generation_prompt %}<|im_start|>assistant\n{% endif %}"
)
TOOL = {
    "type": "function",
    "function": {"name": "lookup", "parameters": {"type": "object", "properties": {"q": {"type": "string"}}}},
}
CALL = {"id": "call_1", "type": "function", "function": {"name": "lookup", "arguments": '{"q": "tree"}'}}


def _request(**fields: object) -> ChatCompletionRequest:
    body = {
        "model": "m",
        "messages": [
            {"role": "user", "content": "Look up tree."},
            {"role": "assistant", "content": None, "tool_calls": [CALL]},
            {"role": "tool", "tool_call_id": "call_1", "content": "a plant"},
        ],
        "tools": [TOOL],
        **fields,
    }
    return ChatCompletionRequest.model_validate_json(json.dumps(body))


def test_tools_described_in_a_system_message_when_the_template_cannot() -> None:
    messages = message_dicts(_request())
    assert messages[0]["role"] == "system"
    assert '"name": "lookup"' in messages[0]["content"]
    assert "<tool_call>" in messages[0]["content"]
    # The earlier call is shown the way the model is asked to write one.
    assert messages[2]["content"] == '<tool_call>{"name": "lookup", "arguments": {"q": "tree"}}</tool_call>'
    assert messages[3] == {"role": "tool", "content": "a plant"}


def test_tool_choice_none_hides_the_tools() -> None:
    assert [m["role"] for m in message_dicts(_request(tool_choice="none"))] == ["user", "assistant", "tool"]


def test_tool_aware_template_renders_tools_and_calls_itself() -> None:
    request = _request()
    messages = message_dicts(request, native=True)
    assert [m["role"] for m in messages] == ["user", "assistant", "tool"]
    assert messages[1]["tool_calls"][0]["function"]["arguments"] == {"q": "tree"}
    assert messages[2]["tool_call_id"] == "call_1"
    text = ChatTemplate(TOOL_AWARE).render(
        messages, tools=[t.model_dump(exclude_none=True) for t in request.tools or []]
    )
    shown = json.loads(text.split("<tools>")[1].split("</tools>")[0])
    assert shown["function"]["name"] == "lookup"
    call = json.loads(text.split("<tool_call>")[1].split("</tool_call>")[0])
    assert call == {"name": "lookup", "arguments": {"q": "tree"}}
    assert text.endswith("<|im_start|>assistant\n")


def test_call_schema_hoists_definitions_and_lists_parallel_calls() -> None:
    tool = {
        "type": "function",
        "function": {
            "name": "pick",
            "parameters": {
                "type": "object",
                "properties": {"c": {"$ref": "#/$defs/colour"}},
                "$defs": {"colour": {"enum": ["red", "blue"]}},
            },
        },
    }
    schema = call_schema(_request(tools=[tool], tool_choice="required"))
    assert schema["type"] == "array" and schema["minItems"] == 1
    assert schema["$defs"]["colour"] == {"enum": ["red", "blue"]}
    single = call_schema(_request(tools=[tool], tool_choice="required", parallel_tool_calls=False))
    assert single["properties"]["name"] == {"const": "pick"}
