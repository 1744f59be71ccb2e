"""Agent-sized request bodies for bench/agent_overhead.py, built here with made-up content.

The shapes follow what the agent clients were seen to send (2026-12): a Claude Code ``/v1/messages``
request (about 117 KB: three system blocks with ``cache_control``, the long one about 27k characters,
24 tools whose ``input_schema`` carries ``$schema``, ``thinking``, ``context_management``, ``metadata``
and a few turns of tool use), the same conversation as a ``/v1/chat/completions`` request, and a Codex
``/v1/responses`` request (about 41 KB: developer messages of about 19k characters, 9 tools among them
a ``namespace`` tool and the hosted ``web_search``, ``function_call`` / ``function_call_output``
history, ``store: false``, ``include``, ``reasoning``, ``prompt_cache_key``, ``parallel_tool_calls``).
The text is generated from a fixed seed, so every run sends the same bytes.
"""

from __future__ import annotations

import json
import random
from typing import Any

_WORDS = [
    "the",
    "a",
    "an",
    "of",
    "to",
    "in",
    "for",
    "on",
    "with",
    "when",
    "before",
    "after",
    "every",
    "each",
    "file",
    "files",
    "directory",
    "command",
    "commands",
    "test",
    "tests",
    "change",
    "changes",
    "user",
    "project",
    "repository",
    "branch",
    "commit",
    "build",
    "run",
    "check",
    "read",
    "write",
    "edit",
    "search",
    "pattern",
    "result",
    "results",
    "output",
    "error",
    "errors",
    "tool",
    "tools",
    "call",
    "calls",
    "answer",
    "request",
    "response",
    "prefer",
    "avoid",
    "never",
    "always",
    "keep",
    "make",
    "sure",
    "only",
    "use",
    "using",
    "should",
    "must",
    "may",
    "path",
    "paths",
    "line",
    "lines",
    "function",
    "module",
    "class",
    "value",
    "values",
    "list",
    "item",
    "items",
    "task",
    "tasks",
    "plan",
    "step",
    "steps",
    "code",
    "review",
    "note",
    "shell",
    "process",
    "exit",
    "status",
    "timeout",
    "background",
    "parallel",
    "context",
    "window",
    "summary",
    "detail",
    "details",
]
_ODD = ("—", "…", "`npm test`", '"quoted"', "'single'", "naïve", "→", "{placeholder}", "<tag>", "\\n")


def _prose(rng: random.Random, chars: int) -> str:
    """Sentences and short paragraphs of filler, with the punctuation and odd characters prompts have."""
    out: list[str] = []
    size = 0
    while size < chars:
        words = [rng.choice(_WORDS) for _ in range(rng.randint(6, 18))]
        if rng.random() < 0.2:
            words.insert(rng.randrange(len(words)), rng.choice(_ODD))
        sentence = " ".join(words).capitalize() + rng.choice((".", ".", ".", ":", "?"))
        if rng.random() < 0.12:
            sentence += "\n\n"
        elif rng.random() < 0.1:
            sentence = "\n- " + sentence
        else:
            sentence += " "
        out.append(sentence)
        size += len(sentence)
    return "".join(out)[:chars]


def _schema(rng: random.Random, n_props: int, *, draft: bool) -> dict[str, Any]:
    props: dict[str, Any] = {}
    for i in range(n_props):
        kind = rng.choice(("string", "string", "number", "boolean", "array", "enum"))
        name = f"{rng.choice(_WORDS)}_{rng.choice(_WORDS)}_{i}"
        prop: dict[str, Any]
        if kind == "array":
            prop = {"type": "array", "items": {"type": "string"}}
        elif kind == "enum":
            prop = {"type": "string", "enum": [rng.choice(_WORDS) for _ in range(4)]}
        else:
            prop = {"type": kind}
        prop["description"] = _prose(rng, rng.randint(60, 400))
        props[name] = prop
    schema: dict[str, Any] = {
        "type": "object",
        "properties": props,
        "required": list(props)[: max(1, n_props // 2)],
        "additionalProperties": False,
    }
    if draft:
        schema["$schema"] = "https://json-schema.org/draft/2020-12/schema"
    return schema


def _tools(rng: random.Random) -> list[tuple[str, str, dict[str, Any]]]:
    """24 (name, description, schema) tools; a few long descriptions, as a shell tool's is."""
    long_ones = {0: 4000, 1: 4200, 2: 3500, 5: 2500}
    out = []
    names = [
        "Bash",
        "Task",
        "TodoWrite",
        "Glob",
        "Grep",
        "Read",
        "Edit",
        "MultiEdit",
        "Write",
        "NotebookEdit",
        "WebFetch",
        "WebSearch",
        "BashOutput",
        "KillShell",
        "ExitPlanMode",
        "ListMcpResources",
        "ReadMcpResource",
        "SlashCommand",
        "Skill",
        "AskUserQuestion",
        "mcp__notes__search",
        "mcp__notes__fetch",
        "mcp__issues__list",
        "mcp__issues__comment",
    ]
    for i, name in enumerate(names):
        description = _prose(rng, long_ones.get(i, rng.randint(400, 1400)))
        if name == "Bash":
            schema = {
                "$schema": "https://json-schema.org/draft/2020-12/schema",
                "type": "object",
                "properties": {
                    "command": {"type": "string", "description": "The command to execute"},
                    "timeout": {"type": "number", "description": "Optional timeout in milliseconds"},
                    "description": {"type": "string", "description": _prose(rng, 300)},
                },
                "required": ["command"],
                "additionalProperties": False,
            }
        else:
            schema = _schema(rng, rng.randint(1, 5), draft=True)
        out.append((name, description, schema))
    return out


def _history(rng: random.Random) -> list[dict[str, Any]]:
    """A few turns in a neutral form: user text, assistant text + tool calls, tool results."""
    turns: list[dict[str, Any]] = [
        {"role": "user", "text": _prose(rng, 1200), "reminder": _prose(rng, 2400)},
    ]
    for turn in range(4):
        calls = [
            {
                "id": f"toolu_01{turn}{j}{rng.randrange(16**16):016x}",
                "name": rng.choice(("Bash", "Read", "Grep", "Glob")),
                "input": {"command": f"ls -la src/{rng.choice(_WORDS)}", "description": _prose(rng, 60)},
            }
            for j in range(rng.randint(1, 2))
        ]
        turns.append(
            {"role": "assistant", "text": _prose(rng, 300), "thinking": _prose(rng, 500), "calls": calls}
        )
        turns.append({"role": "tool", "results": [(c["id"], _prose(rng, 2200)) for c in calls]})
    turns.append({"role": "user", "text": _prose(rng, 400), "reminder": None})
    return turns


def _conversation() -> tuple[list[str], list[tuple[str, str, dict[str, Any]]], list[dict[str, Any]]]:
    """The system texts, tools and history that the Messages and chat bodies both carry."""
    rng = random.Random(18)
    system_texts = [
        "You are an interactive command line assistant for software work.",
        _prose(rng, 27_000),
        _prose(rng, 2_600),
    ]
    tools = _tools(rng)
    return system_texts, tools, _history(rng)


def messages_body(model: str, *, stream: bool) -> dict[str, Any]:
    """A Claude Code shaped ``/v1/messages`` body, about 117 KB."""
    system_texts, tools, history = _conversation()
    messages: list[dict[str, Any]] = []
    for turn in history:
        if turn["role"] == "user":
            blocks: list[dict[str, Any]] = [{"type": "text", "text": turn["text"]}]
            if turn["reminder"]:
                blocks.insert(
                    0, {"type": "text", "text": f"<system-reminder>\n{turn['reminder']}\n</system-reminder>"}
                )
            blocks[-1]["cache_control"] = {"type": "ephemeral"}
            messages.append({"role": "user", "content": blocks})
        elif turn["role"] == "assistant":
            content: list[dict[str, Any]] = [
                {"type": "thinking", "thinking": turn["thinking"], "signature": "c2lnbmF0dXJl" * 40},
                {"type": "text", "text": turn["text"]},
            ]
            content += [
                {"type": "tool_use", "id": c["id"], "name": c["name"], "input": c["input"]}
                for c in turn["calls"]
            ]
            messages.append({"role": "assistant", "content": content})
        else:
            results: list[dict[str, Any]] = []
            for k, (call_id, text) in enumerate(turn["results"]):
                body: Any = text if k % 2 == 0 else [{"type": "text", "text": text}]
                results.append(
                    {"type": "tool_result", "tool_use_id": call_id, "content": body, "is_error": False}
                )
            messages.append({"role": "user", "content": results})
    out: dict[str, Any] = {
        "model": model,
        "messages": messages,
        "system": [{"type": "text", "text": t, "cache_control": {"type": "ephemeral"}} for t in system_texts],
        "tools": [{"name": n, "description": d, "input_schema": s} for n, d, s in tools],
        "metadata": {"user_id": json.dumps({"device_id": "0" * 64, "session_id": "bench-session"})},
        "max_tokens": 32000,
        "thinking": {"type": "enabled", "budget_tokens": 31999},
        "context_management": {"edits": [{"type": "clear_thinking_20251015", "keep": "all"}]},
    }
    if stream:
        out["stream"] = True
    return out


def chat_body(model: str, *, stream: bool) -> dict[str, Any]:
    """The same conversation as a ``/v1/chat/completions`` body (24 function tools and one more)."""
    system_texts, tools, history = _conversation()
    messages: list[dict[str, Any]] = [{"role": "system", "content": "\n\n".join(system_texts)}]
    for turn in history:
        if turn["role"] == "user":
            text = (
                turn["text"]
                if not turn["reminder"]
                else f"<system-reminder>\n{turn['reminder']}\n</system-reminder>\n{turn['text']}"
            )
            messages.append({"role": "user", "content": text})
        elif turn["role"] == "assistant":
            calls = [
                {
                    "id": c["id"],
                    "type": "function",
                    "function": {"name": c["name"], "arguments": json.dumps(c["input"])},
                }
                for c in turn["calls"]
            ]
            messages.append({"role": "assistant", "content": turn["text"], "tool_calls": calls})
        else:
            for call_id, text in turn["results"]:
                messages.append({"role": "tool", "tool_call_id": call_id, "content": text})
    functions = [
        {"type": "function", "function": {"name": n, "description": d, "parameters": s}} for n, d, s in tools
    ]
    finish = {"name": "finish", "description": "Say the task is done.", "parameters": {"type": "object"}}
    functions.append({"type": "function", "function": finish})
    out: dict[str, Any] = {
        "model": model,
        "messages": messages,
        "tools": functions,
        "tool_choice": "auto",
        "parallel_tool_calls": True,
        "max_completion_tokens": 32000,
        "user": "bench-session",
    }
    if stream:
        out["stream"] = True
        out["stream_options"] = {"include_usage": True}
    return out


def responses_body(model: str, *, stream: bool) -> dict[str, Any]:
    """A Codex shaped ``/v1/responses`` body, about 41 KB."""
    rng = random.Random(5)

    def function(name: str, props: int) -> dict[str, Any]:
        schema = _schema(rng, props, draft=False)
        return {
            "type": "function",
            "name": name,
            "description": _prose(rng, rng.randint(200, 700)),
            "strict": False,
            "parameters": schema,
        }

    tools: list[dict[str, Any]] = [
        function(n, p)
        for n, p in (
            ("exec_command", 5),
            ("write_stdin", 3),
            ("request_user_input", 2),
            ("view_image", 1),
            ("get_goal", 1),
            ("create_goal", 3),
            ("update_goal", 3),
        )
    ]
    tools.append(
        {
            "type": "namespace",
            "name": "multi_agent_v1",
            "description": _prose(rng, 400),
            "tools": [function(n, 2) for n in ("spawn_agent", "send_message", "wait_agent")],
        }
    )
    tools.append({"type": "web_search", "external_web_access": False})
    items: list[dict[str, Any]] = [
        {
            "type": "message",
            "role": "developer",
            "content": [{"type": "input_text", "text": _prose(rng, 15_000)}],
        },
        {
            "type": "message",
            "role": "developer",
            "content": [{"type": "input_text", "text": _prose(rng, 4_000)}],
        },
        {"type": "message", "role": "user", "content": [{"type": "input_text", "text": _prose(rng, 500)}]},
        {"type": "message", "role": "user", "content": [{"type": "input_text", "text": _prose(rng, 300)}]},
    ]
    for turn in range(3):
        call_id = f"call_{turn}{rng.randrange(16**20):020x}"
        items.append(
            {
                "type": "reasoning",
                "id": f"rs_{turn:04d}",
                "summary": [],
                "encrypted_content": "ZW5jcnlwdGVk" * 30,
            }
        )
        items.append(
            {
                "type": "message",
                "role": "assistant",
                "id": f"msg_{turn:04d}",
                "content": [{"type": "output_text", "text": _prose(rng, 200), "annotations": []}],
            }
        )
        items.append(
            {
                "type": "function_call",
                "id": f"fc_{turn:04d}",
                "call_id": call_id,
                "name": "exec_command",
                "arguments": json.dumps({"cmd": f"rg -n {rng.choice(_WORDS)} src", "yield_time_ms": 1000}),
            }
        )
        output = (
            f"Chunk ID: {turn}\nWall time: 0.0{turn} seconds\nProcess exited with code 0\n"
            f"Output:\n{_prose(rng, 1_000)}"
        )
        items.append({"type": "function_call_output", "call_id": call_id, "output": output})
    return {
        "model": model,
        "input": items,
        "tools": tools,
        "tool_choice": "auto",
        "parallel_tool_calls": True,
        "reasoning": {"summary": "auto"},
        "store": False,
        "stream": stream,
        "include": ["reasoning.encrypted_content"],
        "prompt_cache_key": "0199f0b2-bench-session",
        "client_metadata": {"originator": "codex_exec"},
    }
