"""What the scheduler keeps per slot and per running request, and the counters it publishes."""

from __future__ import annotations

import enum
import time
from collections.abc import Callable
from dataclasses import dataclass, field
from typing import Any

import numpy as np

from ._llama import LlamaRuntime
from .detok import IncrementalDetokenizer, StopMatcher
from .handle import RequestHandle
from .sampling import CandidateBuffer, Sampler
from .types import TokenLogprob

# Weight of the newest request in the running average of service times (Retry-After hints).
SERVICE_EWMA_ALPHA = 0.2

__all__ = ["EngineStats", "Job", "Phase", "Slot", "sample_row", "take_logprobs", "token_logprob"]


class Phase(enum.Enum):
    PREFILL = "prefill"
    GENERATE = "generate"


@dataclass(eq=False, slots=True)
class Job:
    handle: RequestHandle
    sampler: Sampler
    n_cached: int
    cursor: int  # next prompt index to evaluate
    seq: int
    leader: Job | None = None  # a choice of the same request prefilling the shared prompt
    phase: Phase = Phase.PREFILL
    detok: IncrementalDetokenizer = field(default_factory=IncrementalDetokenizer)
    stops: StopMatcher = field(default_factory=lambda: StopMatcher([]))
    pending: int = -1  # sampled token not yet decoded
    row: int = -1  # batch row holding this job's logits in the current step
    n_generated: int = 0
    added: int = 0  # tokens this job put in the current batch
    logprobs: list[TokenLogprob] | None = None  # gathered since the last output
    started: float = field(default_factory=time.monotonic)


@dataclass(eq=False, slots=True)
class Slot:
    seq: int
    tokens: list[int] = field(default_factory=list)  # mirror of what the sequence holds in KV
    last_used: float = 0.0
    job: Job | None = None
    persisted: bool = True  # False while the cache tiers may lack what ``tokens`` holds (set on release)


@dataclass(slots=True)
class EngineStats:
    """Counters read by the metrics endpoint (written by the scheduler thread only)."""

    requests_finished: int = 0
    prompt_tokens: int = 0
    cached_tokens: int = 0
    completion_tokens: int = 0
    steps: int = 0
    decode_seconds: float = 0.0
    service_seconds: float | None = None  # running average, admission to finish, of recent requests
    # The host-RAM prompt cache: a hit restores a saved sequence, a miss is an admission restoring none.
    cache_hits: int = 0
    cache_disk_hits: int = 0  # hits restored from the disk tier (counted in cache_hits too)
    cache_disk_writes: int = 0
    cache_disk_bytes: int = 0
    cache_disk_entries: int = 0
    cache_misses: int = 0
    cache_restored_tokens: int = 0
    cache_saves: int = 0
    cache_evictions: int = 0
    cache_released_slots: int = 0  # idle slots whose cells were given back, the cache holding their KV
    cache_bytes: int = 0
    cache_entries: int = 0
    cache_seconds: float = 0.0  # spent saving and restoring states, on the scheduler thread
    cache_pause_max_seconds: float = 0.0  # the longest one admission spent on it (running streams wait)
    shared_prompt_tokens: int = 0  # prompt tokens copied between the choices of n > 1 requests

    def finished(self, elapsed: float, prompt: int, cached: int, generated: int) -> None:
        """Count a finished request (``elapsed``: admission to finish, in seconds)."""
        previous = self.service_seconds
        alpha = SERVICE_EWMA_ALPHA
        self.service_seconds = elapsed if previous is None else previous + alpha * (elapsed - previous)
        self.requests_finished += 1
        self.prompt_tokens += prompt
        self.cached_tokens += cached
        self.completion_tokens += generated


def token_logprob(piece: Callable[[int], bytes], token: int, log_probs: Any, k: int) -> TokenLogprob:
    """The sampled token's log-probability and the ``k`` most likely alternatives."""
    top: tuple[tuple[bytes, float], ...] = ()
    if k > 0:
        best = np.argpartition(log_probs, -k)[-k:]
        best = best[np.argsort(log_probs[best])[::-1]]
        top = tuple((piece(int(t)), float(log_probs[t])) for t in best)
    return TokenLogprob(piece(token), float(log_probs[token]), top)


def take_logprobs(job: Job) -> list[TokenLogprob] | None:
    """The log-probabilities gathered since the job's last output (None when it asked for none)."""
    if job.logprobs is None:
        return None
    taken, job.logprobs = job.logprobs, []
    return taken


def sample_row(rt: LlamaRuntime, job: Job, row: int, candidates: CandidateBuffer) -> int:
    """Sample ``job``'s next token from batch row ``row`` (its logprobs gathered when it asked)."""
    if job.logprobs is not None:
        log_probs = rt.log_probs(row)
    if job.sampler.greedy:
        token = int(rt.logits(row).argmax())
    elif job.sampler.has_grammar:
        token = job.sampler.sample_constrained(rt.logits(row), candidates)
    else:
        token = rt.sample(job.sampler.chain, row)
    if job.logprobs is not None:
        job.logprobs.append(token_logprob(rt.piece, token, log_probs, job.handle.request.top_logprobs or 0))
    return token
