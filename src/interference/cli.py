"""Command line: ``interference serve | models | chat | bench``."""

from __future__ import annotations

import argparse
import logging
import socket
import sys
import time
import typing
from collections.abc import Sequence
from pathlib import Path
from typing import Any

from . import __version__
from .memory_budget import AUTO_SHARE
from .settings import ConfigError, Settings, load_settings, setting_flags

if typing.TYPE_CHECKING:
    from .protocol import MemoryReport

__all__ = ["main"]

logger = logging.getLogger("interference")

DESCRIPTION = """\
interference: an OpenAI-compatible LLM server and gateway.

Serves an embedded model (SmolLM2-135M-Instruct) out of the box, any local GGUF, and any
OpenAI-compatible upstream (vLLM, SGLang, Ollama, llama-server, OpenAI) behind one URL.
Settings come from flags, then INTERFERENCE_* environment variables, then a TOML file.
"""


_GROUP_TITLES = {
    "engine": "local engine",
    "models": "many local models (docs/models.md)",
    "limits": "limits and shutdown",
}
_SERVE_ONLY = ("server", "limits")


def _value_kind(annotation: Any) -> dict[str, Any]:
    """argparse's ``type`` or ``choices`` for a settings field's annotation."""
    args = typing.get_args(annotation)
    if typing.get_origin(annotation) is typing.Literal:
        return {"choices": list(args)}
    for candidate in (annotation, *args):
        if candidate in (int, float):
            return {"type": candidate}
        if typing.get_origin(candidate) is typing.Literal:
            return {"choices": list(typing.get_args(candidate))}
    return {}


def _setting_flags(p: argparse.ArgumentParser, *, server: bool) -> None:
    """One flag per setting that declares a ``Flag`` (``server`` ones only for serve)."""
    groups: dict[str, Any] = {}
    for name, spec in setting_flags().items():
        if spec.group in _SERVE_ONLY and not server:
            continue
        title = _GROUP_TITLES.get(spec.group)
        target = p if title is None else groups.setdefault(spec.group, p.add_argument_group(title))
        kw: dict[str, Any] = {"dest": name, "help": spec.help}
        if spec.metavar:
            kw["metavar"] = spec.metavar
        if spec.action == "store":
            kw.update(_value_kind(Settings.model_fields[name].annotation))
        elif spec.action == "append":
            kw["action"] = "append"
        elif spec.action == "toggle":
            kw.update(action=argparse.BooleanOptionalAction, default=None)
        else:
            kw.update(action="store_const", const=spec.action == "true")
        target.add_argument(*spec.names, **kw)


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
    serve.add_argument("--config", metavar="FILE", help="TOML config file (or INTERFERENCE_CONFIG)")
    _setting_flags(serve, server=True)
    scale = serve.add_argument_group("Ray Serve (pip install 'interference[ray]', docs/ray.md)")
    scale.add_argument(
        "--ray",
        nargs="?",
        const="local",
        metavar="ADDRESS",
        help="serve as a Ray Serve application: no ADDRESS starts a local Ray, 'auto' or ray://... joins one",
    )
    scale.add_argument("--replicas", type=int, default=1, metavar="N", help="engine replicas (default: 1)")
    scale.add_argument("--min-replicas", type=int, metavar="N", help="autoscale engine replicas from N")
    scale.add_argument("--max-replicas", type=int, metavar="N", help="autoscale engine replicas up to N")
    scale.add_argument(
        "--ingress-replicas", type=int, default=1, metavar="N", help="HTTP ingress replicas (default: 1)"
    )
    scale.add_argument(
        "--requests-per-slot",
        type=int,
        default=2,
        metavar="N",
        help="requests one engine replica takes at once per decoding slot (default: 2)",
    )
    scale.add_argument(
        "--routing",
        choices=["prefix", "pow2"],
        default="prefix",
        help="engine replica choice: prefix (a conversation stays on its replica; default) or pow2",
    )

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
    models.add_argument("--config", metavar="FILE", help="TOML config file (or INTERFERENCE_CONFIG)")
    _setting_flags(models, server=False)

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


def _settings(args: argparse.Namespace) -> Settings:
    cli: dict[str, Any] = {k: getattr(args, k, None) for k in setting_flags()}
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
    if args.ray is not None:
        return _serve_ray(settings, args)
    try:
        sock = _bind(settings.host, settings.port)
    except OSError as exc:
        return _fail(f"cannot listen on {settings.host}:{settings.port}: {exc.strerror}")

    from .assembly import build_app
    from .engine import ModelLoadError
    from .engine._llama import quiet_llama_logs

    quiet_llama_logs(verbose=settings.log_level == "debug")
    try:
        app = build_app(settings)
    except ModelLoadError as exc:
        sock.close()
        return _fail(str(exc))

    from .server import serve

    port = sock.getsockname()[1]
    logger.info(
        "serving on http://%s:%d (OpenAI API at /v1 and /); ready in %.2f s; %s",
        settings.host,
        port,
        time.perf_counter() - started,
        _memory_line(app.state.interference.router.memory(), settings.memory_budget),
    )
    serve(app, sock, settings, access_log=False)  # ours (api/request_log.py) replaces uvicorn's
    return 0


def _memory_line(report: MemoryReport | None, asked: int | str | None) -> str:
    """The memory budget and its use, for the start-up line."""
    if report is None or report.budget_mb is None:
        return "no memory budget"
    how = f"auto: {AUTO_SHARE:.0%} of the RAM available" if asked == "auto" else "--memory-budget"
    return (
        f"memory budget {report.budget_mb} MiB ({how}): models {report.models_mb} MiB, "
        f"embedding model {report.embedding_mb} MiB "
        f"(KV {report.kv_mb} MiB), prompt cache {report.prompt_cache_mb} MiB of up to "
        f"{report.prompt_cache_limit_mb} MiB, {report.evictions} evicted"
    )


def _serve_ray(settings: Settings, args: argparse.Namespace) -> int:
    try:  # the extra: the base install never imports Ray
        from .ray.app import Scaling
        from .ray.run import run
    except ImportError as exc:
        return _fail(f"--ray needs the ray extra (pip install 'interference[ray]'): {exc}")
    scaling = Scaling(
        replicas=args.replicas,
        min_replicas=args.min_replicas,
        max_replicas=args.max_replicas,
        ingress_replicas=args.ingress_replicas,
        requests_per_slot=args.requests_per_slot,
    )
    return run(settings, args.ray, scaling, routing=args.routing)


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
        path = Path(settings.model) if settings.model else embedded_model_path()
    except ModelLoadError as exc:
        return _fail(str(exc))
    name = settings.model_name or model_id_for(path)
    # Configured models win alias clashes, as the router resolves them.
    claimed = {n for entry in settings.models for n in (entry.name, *entry.aliases)}
    free = [a for a in settings.aliases if a not in claimed]
    aliases = f"  aliases: {', '.join(free)}" if free else ""
    print(f"{name}  ->  local {path}{aliases}")
    if settings.models_dir:
        taken = claimed | {name, *free}
        for gguf in sorted(Path(settings.models_dir).expanduser().glob("*.gguf")):
            if model_id_for(gguf) not in taken:
                print(f"{model_id_for(gguf)}  ->  local {gguf} (models dir)")
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
