"""A scripted tool-calling upstream that speaks OpenAI chat completions and Anthropic Messages.

It stands in for a capable model so that real agent clients can run a whole tool loop through
interference. When a request offers a shell-like tool and the last message is the user's, it answers
with one call of that tool that reads ``secret_file``; when the last message carries a tool result, it
answers with text quoting that result. Streamed and whole answers alike. It records every body.
"""

from __future__ import annotations

import socket
import threading
import time
from collections.abc import AsyncIterator, Iterator
from dataclasses import dataclass, field
from typing import Any

import orjson
import uvicorn
from starlette.applications import Starlette
from starlette.requests import Request
from starlette.responses import JSONResponse, Response, StreamingResponse
from starlette.routing import Route

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
class Plan:
    """What to answer: a tool call, or text."""

    text: str | None = None
    tool: str | None = None
    arguments: dict[str, Any] = field(default_factory=dict)


@dataclass
class ScriptedUpstream:
    secret_file: str = ""
    bodies: list[dict[str, Any]] = field(default_factory=list)
    paths: list[str] = field(default_factory=list)
    port: int = 0
    _server: uvicorn.Server | None = None
    _thread: threading.Thread | None = None

    @property
    def url(self) -> str:
        """The base URL without ``/v1`` (an ``anthropic`` deployment's form)."""
        return f"http://127.0.0.1:{self.port}"

    def start(self) -> ScriptedUpstream:
        sock = socket.socket()
        sock.setsockopt(socket.SOL_SOCKET, socket.SO_REUSEADDR, 1)
        sock.bind(("127.0.0.1", self.port))
        self.port = sock.getsockname()[1]
        app = Starlette(
            routes=[
                Route("/v1/chat/completions", self._chat, methods=["POST"]),
                Route("/v1/messages", self._messages, methods=["POST"]),
            ]
        )
        config = uvicorn.Config(app, log_level="critical", lifespan="off", timeout_graceful_shutdown=1)
        self._server = uvicorn.Server(config)
        self._thread = threading.Thread(target=self._server.run, kwargs={"sockets": [sock]}, daemon=True)
        self._thread.start()
        deadline = time.monotonic() + 10
        while not self._server.started:
            if time.monotonic() > deadline:
                raise RuntimeError("scripted upstream did not start")
            time.sleep(0.01)
        return self

    def stop(self) -> None:
        if self._server is not None and self._thread is not None:
            self._server.should_exit = True
            self._thread.join(timeout=10)
        self._server = self._thread = None

    def tools_offered(self) -> list[list[str]]:
        """The tool names each recorded request offered, in order."""
        return [[_tool_name(t) for t in body.get("tools") or []] for body in self.bodies]

    # ------------------------------------------------------------------ the script

    def _plan(self, tool_names: list[str], result: str | None) -> Plan:
        if result is not None:
            return Plan(text=ANSWER_PREFIX + result)
        for name in tool_names:
            if name in SHELL_TOOLS:
                arg, kind = SHELL_TOOLS[name]
                value = self.secret_file if kind == "path" else f"cat {self.secret_file}"
                return Plan(tool=name, arguments={arg: value})
        return Plan(text=NO_TOOL_ANSWER)

    # ------------------------------------------------------------------ OpenAI chat completions

    async def _chat(self, request: Request) -> Response:
        body = orjson.loads(await request.body())
        self.bodies.append(body)
        self.paths.append(request.url.path)
        messages = body.get("messages") or []
        last = messages[-1] if messages else {}
        result = _text_of(last.get("content")) if last.get("role") == "tool" else None
        plan = self._plan([_tool_name(t) for t in body.get("tools") or []], result)
        model = body.get("model", "scripted")
        if body.get("stream"):
            return StreamingResponse(_chat_events(plan, model), media_type="text/event-stream")
        if plan.tool is not None:
            message: dict[str, Any] = {"role": "assistant", "content": None, "tool_calls": [_call(plan)]}
            finish = "tool_calls"
        else:
            message, finish = {"role": "assistant", "content": plan.text}, "stop"
        return JSONResponse(
            {
                "id": "chatcmpl-scripted",
                "object": "chat.completion",
                "created": 1,
                "model": model,
                "choices": [{"index": 0, "message": message, "logprobs": None, "finish_reason": finish}],
                "usage": {"prompt_tokens": 10, "completion_tokens": 5, "total_tokens": 15},
            }
        )

    # ------------------------------------------------------------------ Anthropic Messages

    async def _messages(self, request: Request) -> Response:
        body = orjson.loads(await request.body())
        self.bodies.append(body)
        self.paths.append(request.url.path)
        messages = body.get("messages") or []
        last = messages[-1] if messages else {}
        result = None
        if last.get("role") == "user" and isinstance(last.get("content"), list):
            results = [b for b in last["content"] if isinstance(b, dict) and b.get("type") == "tool_result"]
            if results:
                result = _text_of(results[-1].get("content"))
        plan = self._plan([_tool_name(t) for t in body.get("tools") or []], result)
        model = body.get("model", "scripted")
        if body.get("stream"):
            return StreamingResponse(_anthropic_events(plan, model), media_type="text/event-stream")
        return JSONResponse(
            {
                "id": "msg_scripted",
                "type": "message",
                "role": "assistant",
                "model": model,
                "content": [_block(plan)],
                "stop_reason": "tool_use" if plan.tool else "end_turn",
                "stop_sequence": None,
                "usage": {"input_tokens": 10, "output_tokens": 5},
            }
        )


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


def _call(plan: Plan) -> dict[str, Any]:
    return {
        "id": "call_scripted_1",
        "type": "function",
        "function": {"name": plan.tool, "arguments": orjson.dumps(plan.arguments).decode()},
    }


def _block(plan: Plan) -> dict[str, Any]:
    if plan.tool is not None:
        return {"type": "tool_use", "id": "toolu_scripted_1", "name": plan.tool, "input": plan.arguments}
    return {"type": "text", "text": plan.text}


def _sse(data: dict[str, Any], event: str | None = None) -> bytes:
    head = f"event: {event}\n".encode() if event else b""
    return head + b"data: " + orjson.dumps(data) + b"\n\n"


async def _chat_events(plan: Plan, model: str) -> AsyncIterator[bytes]:
    base = {"id": "chatcmpl-scripted", "object": "chat.completion.chunk", "created": 1, "model": model}

    def chunk(delta: dict[str, Any], finish: str | None = None) -> bytes:
        return _sse({**base, "choices": [{"index": 0, "delta": delta, "finish_reason": finish}]})

    yield chunk({"role": "assistant", "content": ""})
    if plan.tool is not None:
        call = _call(plan)
        arguments = call["function"]["arguments"]
        call["function"]["arguments"] = ""
        yield chunk({"tool_calls": [{"index": 0, **call}]})
        for piece in _halves(arguments):
            yield chunk({"tool_calls": [{"index": 0, "function": {"arguments": piece}}]})
        yield chunk({}, "tool_calls")
    else:
        for piece in _halves(plan.text or ""):
            yield chunk({"content": piece})
        yield chunk({}, "stop")
    usage = {"prompt_tokens": 10, "completion_tokens": 5, "total_tokens": 15}
    yield _sse({**base, "choices": [], "usage": usage})
    yield b"data: [DONE]\n\n"


async def _anthropic_events(plan: Plan, model: str) -> AsyncIterator[bytes]:
    message = {
        "id": "msg_scripted",
        "type": "message",
        "role": "assistant",
        "model": model,
        "content": [],
        "stop_reason": None,
        "stop_sequence": None,
        "usage": {"input_tokens": 10, "output_tokens": 0},
    }
    yield _sse({"type": "message_start", "message": message}, "message_start")
    if plan.tool is not None:
        start = {"type": "tool_use", "id": "toolu_scripted_1", "name": plan.tool, "input": {}}
        deltas = [
            {"type": "input_json_delta", "partial_json": p}
            for p in _halves(orjson.dumps(plan.arguments).decode())
        ]
    else:
        start = {"type": "text", "text": ""}
        deltas = [{"type": "text_delta", "text": p} for p in _halves(plan.text or "")]
    yield _sse({"type": "content_block_start", "index": 0, "content_block": start}, "content_block_start")
    for delta in deltas:
        yield _sse({"type": "content_block_delta", "index": 0, "delta": delta}, "content_block_delta")
    yield _sse({"type": "content_block_stop", "index": 0}, "content_block_stop")
    stop = "tool_use" if plan.tool is not None else "end_turn"
    yield _sse(
        {
            "type": "message_delta",
            "delta": {"stop_reason": stop, "stop_sequence": None},
            "usage": {"output_tokens": 5},
        },
        "message_delta",
    )
    yield _sse({"type": "message_stop"}, "message_stop")


def _halves(text: str) -> Iterator[str]:
    """The text in two pieces, so that clients really assemble a streamed value."""
    middle = len(text) // 2
    yield from (p for p in (text[:middle], text[middle:]) if p)
