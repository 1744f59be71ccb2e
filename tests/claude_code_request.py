"""A request shaped like the ones Claude Code sends to /v1/messages (written for the tests, not recorded).

Every field Claude Code always sends is here: ``system`` as text blocks with ``cache_control``, 24 tools
whose JSON-Schema inputs carry ``$schema``, ``thinking``, ``max_tokens: 32000``, ``context_management``,
``metadata.user_id`` as a JSON string; and the ``anthropic-beta`` header and ``?beta=true`` beside them.
"""

from __future__ import annotations

import json
from typing import Any

BETA = "claude-code-20250219,interleaved-thinking-2025-05-14,context-management-2025-06-27"
TOOL_NAMES = (
    "Bash", "Read", "Write", "Edit", "MultiEdit", "Glob", "Grep", "LS", "WebFetch", "WebSearch",
    "TodoWrite", "Task", "NotebookEdit", "NotebookRead", "ExitPlanMode", "BashOutput", "KillShell",
    "SlashCommand", "ListMcpResources", "ReadMcpResource", "AskUser", "Skill", "Agent", "Plan",
)  # fmt: skip


def _tool(name: str) -> dict[str, Any]:
    return {
        "name": name,
        "description": f"The {name} tool. Use it when the task needs it; explain what it does first.",
        "input_schema": {
            "$schema": "https://json-schema.org/draft/2020-12/schema",
            "type": "object",
            "properties": {
                "command": {"type": "string", "description": "What to run or read"},
                "timeout": {"type": "number", "description": "Milliseconds"},
                "description": {"type": "string"},
            },
            "required": ["command"],
            "additionalProperties": False,
        },
    }


def claude_code_body(
    model: str, prompt: str, *, system_chars: int = 2_000, stream: bool = False
) -> dict[str, Any]:
    """A Claude Code turn; ``system_chars`` sizes the long system block (Claude Code's is about 27,000)."""
    line = "You are an interactive command line tool that helps users with software engineering. "
    long_block = (line * (system_chars // len(line) + 1))[:system_chars]
    cached = {"type": "ephemeral"}
    return {
        "model": model,
        "max_tokens": 32000,
        "stream": stream,
        "system": [
            {"type": "text", "text": "You are Claude Code.", "cache_control": cached},
            {"type": "text", "text": long_block, "cache_control": cached},
            {
                "type": "text",
                "text": "Working directory: /tmp/project",
                "cache_control": cached,
            },
        ],
        "messages": [
            {
                "role": "user",
                "content": [{"type": "text", "text": prompt, "cache_control": cached}],
            }
        ],
        "tools": [_tool(name) for name in TOOL_NAMES],
        "thinking": {"type": "enabled", "budget_tokens": 31999},
        "context_management": {"edits": [{"type": "clear_thinking_20251015", "keep": "all"}]},
        "metadata": {"user_id": json.dumps({"device_id": "d-1", "session_id": "s-1"})},
    }
