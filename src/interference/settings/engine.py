"""Engine options: what one local llama.cpp engine is built with (flags, environment, TOML, per model)."""

from __future__ import annotations

from typing import Annotated, Literal

from pydantic import Field

from .fields import Count, Frozen, Seconds, flag

__all__ = ["EngineOptions"]


class EngineOptions(Frozen):
    """Options of one local llama.cpp engine."""

    ctx_size: Annotated[Count, flag("-c", "--ctx-size", metavar="N")] = 0
    """total context tokens, shared by the slots (default: parallel x 2048)"""
    threads: Annotated[Count, flag("-t", "--threads", metavar="N")] = 0
    """CPU threads (default: physical cores)"""
    parallel: Annotated[int, Field(ge=1, le=256), flag("-np", "--parallel", metavar="N")] = 8
    """sequences decoded together (default: 8)"""
    batch_size: Annotated[int, Field(ge=16), flag("-b", "--batch-size", metavar="N")] = 512
    """prompt tokens evaluated per step beside running streams (default: 512)"""
    step_target_ms: Annotated[Count, flag("--step-target-ms", metavar="MS")] = 1000
    """a step beside running streams carries fewer prompt tokens when its measured cost says it would
    take longer than this (their inter-token latency); 0: always --batch-size (default: 1000)"""
    max_queue: Annotated[Count, flag("--max-queue", metavar="N")] = 64
    """requests that may wait for a slot before 429 (default: 64)"""
    cache_type: Annotated[Literal["f16", "q8_0", "q4_0"], flag("--cache-type")] = "f16"
    """KV cache type: q8_0 halves its memory for a few % of speed (default: f16)"""
    cache_ram: Annotated[Count, flag("--cache-ram", metavar="MIB")] = 2048
    """host RAM for saved prompt KV, restored when a prompt shares its prefix; 0: off (default: 2048)"""
    # The prompt cache's disk tier (engine/disk_cache.py): states survive restarts.
    cache_disk: Annotated[str | None, flag("--cache-disk", metavar="DIR")] = None
    """directory for saved prompt KV that survives restarts (written in the background, checked
    against the model and KV settings before reuse; default: off)"""
    cache_disk_max: Annotated[Count, flag("--cache-disk-max", metavar="MIB")] = 20480
    """most MiB the disk tier holds per model, least recently used go first (default: 20480)"""
    request_timeout: Annotated[Seconds, flag("--request-timeout", metavar="SECONDS")] = 600.0
    """per-request limit (default: 600)"""
    # llama.cpp's repacked weight buffers; None: off on CPUs with AMX (they crash there), on elsewhere.
    repack: Annotated[bool | None, flag("--repack", action="toggle")] = None
    """let llama.cpp repack weights for this CPU's matrix instructions
    (default: off on CPUs with AMX, where it crashes; on elsewhere)"""
