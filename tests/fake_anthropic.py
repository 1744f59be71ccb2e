"""A fake Anthropic Messages upstream: the tests' upstream server with Anthropic's defaults.

Its ``mode`` picks how it behaves and can be changed while it runs (see ``upstream_server.py``); it
records what it received (bodies, the ``x-api-key``, ``anthropic-version`` and ``anthropic-beta``
headers, the query strings).
"""

from __future__ import annotations

from dataclasses import dataclass

import upstream_wire
from upstream_server import UpstreamServer

__all__ = ["CACHE_READ", "INPUT_TOKENS", "PIECES", "SIGNATURE", "THOUGHTS", "TOOL_INPUT", "FakeAnthropic"]

PIECES = ("Hel", "lo", " from", " Claude", "!")
INPUT_TOKENS, CACHE_READ = upstream_wire.PROMPT_TOKENS, upstream_wire.CACHED_TOKENS
TOOL_INPUT = {"city": "Paris"}  # mode "tools": the arguments of upstream_wire.TOOL_PIECES
THOUGHTS = ("Hmm, ", "a greeting.")  # mode "thinking": a thinking block, signed, before the text
SIGNATURE = upstream_wire.SIGNATURE


@dataclass
class FakeAnthropic(UpstreamServer):
    """An Anthropic-compatible upstream; its ``url`` is the root, as in ``ANTHROPIC_BASE_URL``."""

    pieces: tuple[str, ...] = PIECES
    thoughts: tuple[str, ...] = THOUGHTS
    base_path: str = ""
