"""Command line: ``interference serve | models | chat | bench``."""

from __future__ import annotations

import argparse
import logging
import socket
import sys
import time
from collections.abc import Sequence
from typing import Any

from . import __version__
from .config import ConfigError, Settings, load_settings

__all__ = ["main"]

logger = logging.getLogger("interference")

DESCRIPTION = """\
interference: an OpenAI-compatible LLM server and gateway.

Serves an embedded model (SmolLM2-135M-Instruct) out of the box, any local GGUF, and any
OpenAI-compatible upstream (vLLM, SGLang, Ollama, llama-server, OpenAI) behind one URL.
Settings come from flags, then INTERFERENCE_* environment variables, then a TOML file.
"""


def _engine_flags(p: argparse.ArgumentParser) -> None:
    g = p.add_argument_group("local engine")
    g.add_argument("-m", "--model", metavar="GGUF", help="GGUF file to serve (default: the embedded model)")
    g.add_argument("--model-name", metavar="ID", help="public id of that model (default: file name)")
    g.add_argument(
        "-c",
        "--ctx-size",
        type=int,
        metavar="N",
        help="total context tokens, shared by the slots (default: parallel x 2048)",
    )
    g.add_argument("-t", "--threads", type=int, metavar="N", help="CPU threads (default: physical cores)")
    g.add_argument("-np", "--parallel", type=int, metavar="N", help="sequences decoded together (default: 8)")
    g.add_argument(
        "-b",
        "--batch-size",
        type=int,
        metavar="N",
        help="prompt tokens evaluated per step beside running streams (default: 512)",
    )
    g.add_argument(
        "--max-queue",
        type=int,
        metavar="N",
        help="requests that may wait for a slot before 429 (default: 64)",
    )
    g.add_argument(
        "--cache-type",
        choices=["f16", "q8_0", "q4_0"],
        help="KV cache type: q8_0 halves its memory for a few %% of speed (default: f16)",
    )
    g.add_argument(
        "--request-timeout", type=float, metavar="SECONDS", help="per-request limit (default: 600)"
    )
    g.add_argument(
        "--repack",
        action=argparse.BooleanOptionalAction,
        default=None,
        help="let llama.cpp repack weights for this CPU's matrix instructions "
        "(default: off on CPUs with AMX, where it crashes; on elsewhere)",
    )
    g.add_argument(
        "--embedding-model",
        metavar="PATH",
        help="GGUF file or sentence-transformers BERT folder for /v1/embeddings (default: all-MiniLM-L6-v2)",
    )
    g.add_argument(
        "--no-embeddings",
        dest="embeddings",
        action="store_const",
        const=False,
        help="do not load an embedding model",
    )


def _common_flags(p: argparse.ArgumentParser) -> None:
    p.add_argument("--config", metavar="FILE", help="TOML config file (or INTERFERENCE_CONFIG)")
    p.add_argument(
        "--alias",
        dest="aliases",
        action="append",
        metavar="NAME",
        help="a name that maps to the default model (repeatable; replaces the default aliases)",
    )


def build_parser() -> argparse.ArgumentParser:
    parser = argparse.ArgumentParser(
        prog="interference", description=DESCRIPTION, formatter_class=argparse.RawDescriptionHelpFormatter
    )
    parser.add_argument("--version", action="version", version=f"interference {__version__}")
    sub = parser.add_subparsers(dest="command", metavar="COMMAND")

    serve = sub.add_parser(
        "serve",
        help="serve the OpenAI API (default: 127.0.0.1:1337)",
        description="Serve the OpenAI API at /v1/... and at the root.",
    )
    serve.add_argument("--host", help="address to listen on (default: 127.0.0.1)")
    serve.add_argument("--port", type=int, help="port to listen on (default: 1337)")
    serve.add_argument(
        "--api-key",
        dest="api_keys",
        action="append",
        metavar="KEY",
        help="require this key (repeatable; default: no auth)",
    )
    serve.add_argument("--log-level", choices=["debug", "info", "warning", "error"])
    serve.add_argument(
        "--no-access-log",
        dest="access_log",
        action="store_const",
        const=False,
        help="do not log each request",
    )
    serve.add_argument("--log-format", choices=["text", "json"], help="access log format (default: text)")
    serve.add_argument(
        "--cors-origin",
        dest="cors_origins",
        action="append",
        metavar="ORIGIN",
        help="let pages from this origin call the API ('*' for any; repeatable; default: none)",
    )
    serve.add_argument("--keys-file", metavar="FILE", help="named keys with limits (docs/keys.md)")
    serve.add_argument("--usage-db", metavar="FILE", help="usage ledger (default: the user's data dir)")
    serve.add_argument(
        "--limits-backend", metavar="URL", help='where limits are counted: "memory" or redis://host:port/db'
    )
    serve.add_argument(
        "--limits-fail-open",
        action=argparse.BooleanOptionalAction,
        default=None,
        help="serve limited keys unlimited while Redis is unreachable (default: refuse them, 503)",
    )
    _common_flags(serve)
    _engine_flags(serve)

    keys = sub.add_parser("keys", help="manage the keys file")
    keys_sub = keys.add_subparsers(dest="keys_command", metavar="ACTION", required=True)
    add = keys_sub.add_parser("add", help="create a key: prints it once and stores its hash")
    add.add_argument("name")
    add.add_argument("--keys-file", metavar="FILE", help="the file (or INTERFERENCE_KEYS_FILE)")
    add.add_argument("--rpm", type=int, metavar="N", help="requests per minute")
    add.add_argument("--tpm", type=int, metavar="N", help="prompt + completion tokens per minute")
    add.add_argument("--max-concurrent", type=int, metavar="N", help="requests in flight at once")
    add.add_argument("--models", metavar="A,B", help="allowed model ids and aliases (default: all)")
    add.add_argument("--admin", action="store_true", help="may read usage and load or unload models")

    usage = sub.add_parser("usage", help="print the usage ledger's totals")
    usage.add_argument("--usage-db", metavar="FILE", help="the ledger (default: the user's data dir)")
    usage.add_argument("--since", metavar="DATE", help="only requests since this ISO date or time (UTC)")
    usage.add_argument("--by", choices=["key", "model", "day", "route"], default="key")
    usage.add_argument("--json", action="store_true", help="print JSON instead of a table")

    models = sub.add_parser("models", help="list the models (and aliases) that serve would offer")
    _common_flags(models)
    _engine_flags(models)

    chat = sub.add_parser("chat", help="chat with a running server from the terminal")
    chat.add_argument("prompt", nargs="?", help="one prompt (omit for an interactive session)")
    chat.add_argument("--url", default="http://127.0.0.1:1337/v1", help="server base URL")
    chat.add_argument("--model", default="gpt-3.5-turbo", help="model or alias to use")
    chat.add_argument("--api-key", default="sk-local", help="key to send")
    chat.add_argument("--max-tokens", type=int, default=None)
    chat.add_argument("--temperature", type=float, default=None)

    bench = sub.add_parser(
        "bench", help="measure TTFT and tokens/s of a running server at some concurrency levels"
    )
    bench.add_argument("--url", default="http://127.0.0.1:1337/v1", help="server base URL")
    bench.add_argument("--model", default="gpt-3.5-turbo", help="model or alias to use")
    bench.add_argument("--api-key", default="sk-local", help="key to send")
    bench.add_argument("--concurrency", default="1,4,8", help="comma-separated levels (default: 1,4,8)")
    bench.add_argument("--max-tokens", type=int, default=128)
    bench.add_argument("--prompt", default="Write a short story about a lighthouse keeper.")
    return parser


_SETTINGS_FLAGS = (
    "host", "port", "model", "model_name", "ctx_size", "threads", "parallel", "batch_size", "max_queue",
    "cache_type", "request_timeout", "repack", "aliases", "api_keys", "log_level", "embeddings",
    "embedding_model", "log_format", "access_log", "cors_origins", "keys_file", "usage_db",
    "limits_backend", "limits_fail_open",
)  # fmt: skip


def _settings(args: argparse.Namespace) -> Settings:
    cli: dict[str, Any] = {k: getattr(args, k, None) for k in _SETTINGS_FLAGS}
    return load_settings(cli, config_file=args.config)


def _fail(message: str, code: int = 1) -> int:
    print(f"interference: error: {message}", file=sys.stderr)
    return code


def main(argv: Sequence[str] | None = None) -> int:
    parser = build_parser()
    args = parser.parse_args(argv)
    if args.command is None:
        parser.print_help()
        return 2
    try:
        if args.command == "serve":
            return _serve(args)
        if args.command == "models":
            return _models(args)
        if args.command == "chat":
            from .client import run_chat

            return run_chat(args)
        if args.command == "keys":
            from .keys_cli import run_keys

            return run_keys(args)
        if args.command == "usage":
            from .keys_cli import run_usage

            return run_usage(args)
        if args.command == "bench":
            from .loadtest import run_bench

            return run_bench(args)
    except ConfigError as exc:
        return _fail(str(exc), 2)
    except KeyboardInterrupt:
        return 130
    return 2


def _configure_logging(level: str, log_format: str = "text") -> None:
    logging.basicConfig(level=level.upper(), format="%(name)s: %(message)s", stream=sys.stderr)
    if log_format == "json":
        # One JSON object per line, with nothing before it, so log shippers can parse each line.
        handler = logging.StreamHandler(sys.stderr)
        handler.setFormatter(logging.Formatter("%(message)s"))
        access = logging.getLogger("interference.access")
        access.addHandler(handler)
        access.propagate = False
    if level != "debug":
        # httpx logs every upstream call at INFO: one line per request, beside our access log.
        logging.getLogger("httpx").setLevel(logging.WARNING)


def _bind(host: str, port: int) -> socket.socket:
    family = socket.AF_INET6 if ":" in host else socket.AF_INET
    sock = socket.socket(family, socket.SOCK_STREAM)
    sock.setsockopt(socket.SOL_SOCKET, socket.SO_REUSEADDR, 1)
    sock.bind((host, port))
    sock.listen(2048)
    sock.set_inheritable(True)
    return sock


def _serve(args: argparse.Namespace) -> int:
    started = time.perf_counter()
    settings = _settings(args)
    _configure_logging(settings.log_level, settings.log_format)
    try:
        sock = _bind(settings.host, settings.port)
    except OSError as exc:
        return _fail(f"cannot listen on {settings.host}:{settings.port}: {exc.strerror}")

    from .api.app import create_app
    from .engine import ModelLoadError
    from .engine._llama import quiet_llama_logs

    quiet_llama_logs(verbose=settings.log_level == "debug")
    try:
        app = create_app(settings)
    except ModelLoadError as exc:
        sock.close()
        return _fail(str(exc))

    import uvicorn

    config = uvicorn.Config(
        app,
        log_level=settings.log_level,
        access_log=False,  # ours (api/request_log.py) replaces uvicorn's: it has the request id
        timeout_graceful_shutdown=5,
        log_config=None,
    )
    server = uvicorn.Server(config)
    port = sock.getsockname()[1]
    logger.info(
        "serving on http://%s:%d (OpenAI API at /v1 and /); ready in %.2f s",
        settings.host,
        port,
        time.perf_counter() - started,
    )
    server.run(sockets=[sock])
    return 0


def _models(args: argparse.Namespace) -> int:
    from .engine import embedded_model_path, model_id_for
    from .engine._llama import ModelLoadError

    settings = _settings(args)
    for entry in settings.models:
        targets = ", ".join(
            f"local {d.path or 'embedded'}"
            if d.type == "local"
            else f"{d.base_url} ({d.model or entry.name})"
            for d in entry.deployments
        )
        aliases = f"  aliases: {', '.join(entry.aliases)}" if entry.aliases else ""
        print(f"{entry.name}  ->  {targets}{aliases}")
    try:
        from pathlib import Path

        path = Path(settings.model) if settings.model else embedded_model_path()
    except ModelLoadError as exc:
        return _fail(str(exc))
    name = settings.model_name or model_id_for(path)
    # Configured models win alias clashes, as the router resolves them.
    claimed = {n for entry in settings.models for n in (entry.name, *entry.aliases)}
    free = [a for a in settings.aliases if a not in claimed]
    aliases = f"  aliases: {', '.join(free)}" if free else ""
    print(f"{name}  ->  local {path}{aliases}")
    if settings.embeddings:
        from .engine.embedding_source import EmbeddingSource
        from .providers.local_embeddings import EMBEDDING_ALIASES

        try:
            source = EmbeddingSource.find(settings.embedding_model)
        except ModelLoadError as exc:
            return _fail(str(exc))
        if source is not None:
            aliases = f"  aliases: {', '.join(EMBEDDING_ALIASES)}"
            print(f"{source.name}  ->  local embeddings {source.path}{aliases}")
    return 0
