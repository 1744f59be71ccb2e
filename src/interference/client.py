"""``interference chat``: a terminal client for any OpenAI-compatible server."""

from __future__ import annotations

import argparse
import sys
from typing import Any

import httpx
import orjson

__all__ = ["run_chat"]


def _stream_reply(client: httpx.Client, args: argparse.Namespace, messages: list[dict[str, str]]) -> str:
    body: dict[str, Any] = {"model": args.model, "messages": messages, "stream": True}
    if args.max_tokens is not None:
        body["max_tokens"] = args.max_tokens
    if args.temperature is not None:
        body["temperature"] = args.temperature
    parts: list[str] = []
    with client.stream("POST", "/chat/completions", json=body) as response:
        if response.status_code != 200:
            response.read()
            message = response.json().get("error", {}).get("message", response.text)
            raise RuntimeError(f"{response.status_code}: {message}")
        for line in response.iter_lines():
            if not line.startswith("data: ") or line == "data: [DONE]":
                continue
            event = orjson.loads(line[6:])
            if "error" in event:
                raise RuntimeError(event["error"].get("message", "stream failed"))
            for choice in event.get("choices", []):
                text = choice.get("delta", {}).get("content")
                if text:
                    parts.append(text)
                    sys.stdout.write(text)
                    sys.stdout.flush()
    sys.stdout.write("\n")
    return "".join(parts)


def run_chat(args: argparse.Namespace) -> int:
    headers = {"Authorization": f"Bearer {args.api_key}"}
    messages: list[dict[str, str]] = []
    with httpx.Client(base_url=args.url, headers=headers, timeout=httpx.Timeout(600, connect=5)) as client:
        try:
            if args.prompt is not None:
                _stream_reply(client, args, [{"role": "user", "content": args.prompt}])
                return 0
            print("Type a message (Ctrl-D to quit).", file=sys.stderr)
            while True:
                try:
                    line = input("> ")
                except EOFError:
                    return 0
                if not line.strip():
                    continue
                messages.append({"role": "user", "content": line})
                reply = _stream_reply(client, args, messages)
                messages.append({"role": "assistant", "content": reply})
        except (httpx.HTTPError, RuntimeError) as exc:
            print(f"interference: error: {exc}", file=sys.stderr)
            return 1
