"""A scripted tool-calling upstream that speaks OpenAI chat completions and Anthropic Messages.

It stands in for a capable model so that real agent clients can run a whole tool loop through
interference. When a request offers a shell-like tool and the last message is the user's, it answers
with one call of that tool that reads ``secret_file``; when the last message carries a tool result, it
answers with text quoting that result. Streamed and whole answers alike. It is the tests' upstream
server (``upstream_server.py``) with this script; it records every body.
"""

from __future__ import annotations

from collections.abc import Iterator
from dataclasses import dataclass
from typing import Any

import orjson

from upstream_server import UpstreamServer
from upstream_wire import Reply

__all__ = ["ANSWER_PREFIX", "NO_TOOL_ANSWER", "SHELL_TOOLS", "ScriptedUpstream"]

# Tool name -> (argument name, whether it takes a shell command or a path).
SHELL_TOOLS = {
    "exec_command": ("cmd", "command"),  # Codex
    "shell": ("command", "command"),
    "Bash": ("command", "command"),  # Claude Code
    "run": ("command", "command"),
    "read_file": ("path", "path"),  # the SDK tests' function tool
}
ANSWER_PREFIX = "The tool said: "
NO_TOOL_ANSWER = "No shell tool was offered."


@dataclass
class ScriptedUpstream(UpstreamServer):
    """Its ``url`` is the root (an ``anthropic`` deployment's form; an ``openai`` one adds ``/v1``)."""

    secret_file: str = ""
    base_path: str = ""
    stream_usage: bool = True

    def __post_init__(self) -> None:
        self.script = self._answer

    def tools_offered(self) -> list[list[str]]:
        """The tool names each recorded request offered, in order."""
        return [[_tool_name(t) for t in body.get("tools") or []] for body in self.bodies]

    def _answer(self, path: str, body: dict[str, Any]) -> Reply:
        messages = body.get("messages") or []
        last = messages[-1] if messages else {}
        result = None
        if path.endswith("/messages"):
            if last.get("role") == "user" and isinstance(last.get("content"), list):
                blocks = last["content"]
                results = [b for b in blocks if isinstance(b, dict) and b.get("type") == "tool_result"]
                if results:
                    result = _text_of(results[-1].get("content"))
        elif last.get("role") == "tool":
            result = _text_of(last.get("content"))
        if result is not None:
            return Reply(pieces=tuple(_halves(ANSWER_PREFIX + result)))
        for name in (_tool_name(t) for t in body.get("tools") or []):
            if name in SHELL_TOOLS:
                arg, kind = SHELL_TOOLS[name]
                value = self.secret_file if kind == "path" else f"cat {self.secret_file}"
                arguments = orjson.dumps({arg: value}).decode()
                return Reply(tool=name, tool_pieces=tuple(_halves(arguments)))
        return Reply(pieces=tuple(_halves(NO_TOOL_ANSWER)))


def _tool_name(tool: Any) -> str:
    if not isinstance(tool, dict):
        return ""
    function = tool.get("function")
    if isinstance(function, dict):
        return str(function.get("name", ""))
    return str(tool.get("name", ""))


def _text_of(content: Any) -> str:
    """A message's or tool result's text: a string, or the text parts of a list."""
    if isinstance(content, str):
        return content
    if isinstance(content, list):
        return "".join(str(p.get("text", "")) for p in content if isinstance(p, dict))
    return ""


def _halves(text: str) -> Iterator[str]:
    """The text in two pieces, so that clients really assemble a streamed value."""
    middle = len(text) // 2
    yield from (p for p in (text[:middle], text[middle:]) if p)
