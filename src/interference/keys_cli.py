"""``interference keys add`` and ``interference usage``."""

from __future__ import annotations

import argparse
import sys

from .settings import load_settings

__all__ = ["run_keys", "run_usage"]


def _fail(message: str) -> int:
    print(f"interference: error: {message}", file=sys.stderr)
    return 2


def run_keys(args: argparse.Namespace) -> int:
    from .keys import KeyFileError, add_key

    path = load_settings({"keys_file": args.keys_file}).keys_file  # flag > env > file
    if not path:
        return _fail("name the keys file with --keys-file or INTERFERENCE_KEYS_FILE")
    models = tuple(m.strip() for m in args.models.split(",") if m.strip()) if args.models else None
    for flag in ("rpm", "tpm", "max_concurrent"):
        value = getattr(args, flag)
        if value is not None and value < 1:
            return _fail(f"--{flag.replace('_', '-')} must be at least 1")
    try:
        key = add_key(
            path,
            args.name,
            rpm=args.rpm,
            tpm=args.tpm,
            models=models,
            max_concurrent=args.max_concurrent,
            admin=args.admin,
        )
    except KeyFileError as exc:
        return _fail(str(exc))
    print(key)
    print(f"added key '{args.name}' to {path}; the key is shown only now", file=sys.stderr)
    return 0


def run_usage(args: argparse.Namespace) -> int:
    import orjson
    from rich.console import Console
    from rich.table import Table

    from .keys import default_usage_db, summarize
    from .keys.ledger import Group

    path = load_settings({"usage_db": args.usage_db}).usage_db or default_usage_db()
    from .api.usage import parse_since
    from .errors import InvalidRequest

    try:
        since = parse_since(args.since)
    except InvalidRequest as exc:
        return _fail(exc.message)
    by: Group = args.by
    rows = summarize(path, since=since, group_by=by)
    if args.json:
        print(orjson.dumps(rows).decode())
        return 0
    table = Table(title=f"usage by {by}" + (f" since {since}" if since else ""))
    columns = {
        by: by,
        "requests": "requests",
        "prompt_tokens": "prompt",
        "completion_tokens": "completion",
        "total_tokens": "total",
        "cached_tokens": "cached",
        "errors": "errors",
        "avg_ttft_ms": "ttft ms",
    }
    for title in columns.values():
        table.add_column(title, justify="left" if title == by else "right")
    for row in rows:
        table.add_row(*("-" if row[c] is None else str(row[c]) for c in columns))
    Console().print(table)
    return 0
