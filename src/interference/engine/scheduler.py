"""Continuous batching: one thread owns the llama.cpp context and decodes every active sequence per step.

Requests wait in a bounded FIFO. Between steps the scheduler admits waiting requests into free slots
(reusing the longest cached prefix), reaps aborted or timed-out ones, then builds one ``llama_batch``:
one decode token per generating sequence first, then prompt chunks within the prefill budget, and
runs one ``llama_decode``. Outputs go back to asyncio through ``call_soon_threadsafe``.
"""

from __future__ import annotations

import asyncio
import contextlib
import logging
import threading
import time

from ._llama import LlamaRuntime
from .cache_pool import PromptCachePool
from .detok import StopMatcher
from .disk_cache import DiskCache
from .handle import EngineUnavailable, QueueFull, RequestHandle, WaitQueue, estimate_wait
from .kv_pool import KvPool
from .placement import Placement
from .prefill import PrefillPolicy
from .profile import StepProfile
from .sampling import CandidateBuffer, Sampler
from .slots import EngineStats, Job, Phase, Slot, sample_row, take_logprobs
from .types import EngineOutput, EngineRequest, FinishReason

__all__ = ["EngineStats", "EngineUnavailable", "QueueFull", "RequestHandle", "Scheduler"]

logger = logging.getLogger(__name__)


class Scheduler:
    """Owns a ``LlamaRuntime`` on one worker thread; ``submit`` from the event loop."""

    def __init__(
        self,
        runtime: LlamaRuntime,
        *,
        n_slots: int,
        prefill_chunk: int,
        step_target: float = 0.0,
        max_queue: int,
        request_timeout: float,
        cache_bytes: int = 0,
        cache_pool: PromptCachePool | None = None,
        disk: DiskCache | None = None,
    ) -> None:
        self._rt = runtime
        self._disk = disk
        self._slots = [Slot(seq=i) for i in range(n_slots)]
        self._prefill = PrefillPolicy(n_batch=runtime.n_batch, chunk=prefill_chunk, step_target=step_target)
        self._timeout = request_timeout
        self._waiting = WaitQueue(n_slots=n_slots, max_waiting=max_queue)
        self._candidates = CandidateBuffer(runtime.n_vocab)
        self._outbox: list[tuple[RequestHandle, EngineOutput]] = []
        self._stopping = False
        self._thread: threading.Thread | None = None
        self._failure: str | None = None  # why the worker thread stopped, when it did not stop cleanly
        self.stats = EngineStats()
        self.profile: StepProfile | None = None  # set by a benchmark to time the phases of each step
        self._placement = Placement(
            runtime, self._slots, self.stats, cache_bytes=cache_bytes, cache_pool=cache_pool, disk=disk
        )
        self._pool = KvPool(runtime.n_ctx, self._slots, self._placement)

    # ------------------------------------------------------------------ event-loop side

    @property
    def capacity(self) -> int:
        return self._waiting.capacity

    @property
    def n_slots(self) -> int:
        return len(self._slots)

    @property
    def n_waiting(self) -> int:
        return len(self._waiting)

    @property
    def n_active(self) -> int:
        return self._waiting.active

    @property
    def failure(self) -> str | None:
        """Why the engine cannot serve (its thread failed or exited), or None while it can."""
        if self._failure is not None:
            return self._failure
        if self._thread is not None and not self._thread.is_alive() and not self._stopping:
            return "the engine thread exited"
        return None

    def start(self) -> None:
        self._thread = threading.Thread(target=self._run, name="interference-engine", daemon=True)
        self._thread.start()

    def submit(self, request: EngineRequest) -> RequestHandle:
        """Queue a request; raises ``QueueFull`` at the queue's bound, ``EngineUnavailable`` once the
        engine has stopped."""
        failure = "the server is shutting down" if self._stopping else self.failure
        if failure is not None:
            raise EngineUnavailable(failure)
        loop = asyncio.get_running_loop()
        handle = RequestHandle(request, loop, self._on_abort, deadline=time.monotonic() + self._timeout)
        try:
            self._waiting.put(handle)
        except QueueFull:
            raise QueueFull(self.retry_after()) from None
        return handle

    def retry_after(self) -> float:
        """Seconds a client turned away now should wait: the queue's length in recent service times."""
        return estimate_wait(
            position=len(self._waiting), n_slots=len(self._slots), service_seconds=self.stats.service_seconds
        )

    def _on_abort(self, handle: RequestHandle) -> None:
        self._waiting.remove(handle)  # frees its queue place at once if it was still waiting
        self._waiting.poke()

    def stop(self, timeout: float = 30.0) -> bool:
        """Stop the worker thread; False when it is still running after ``timeout`` seconds (then the
        llama.cpp context must not be freed under it)."""
        self._stopping = True
        self._waiting.poke()
        if self._thread is not None:
            self._thread.join(timeout=timeout)
        for handle in self._waiting.drain():
            handle.push(EngineOutput(error="the server is shutting down"))
        stopped = self._thread is None or not self._thread.is_alive()
        if self._disk is not None and not self._disk.close(timeout=timeout):
            logger.warning("the prompt cache's disk writer did not finish in time; a partial file is dropped")
        return stopped

    # ------------------------------------------------------------------ worker thread

    def _run(self) -> None:
        try:
            self._serve()
        except BaseException as exc:
            self._die(exc)

    def _die(self, exc: BaseException) -> None:
        """The loop itself failed: nothing may touch llama.cpp again. Every request in the engine ends
        with an error, and ``failure`` turns /health to 503 and new requests away."""
        self._failure = f"the engine failed: {type(exc).__name__}: {exc}"
        logger.critical(
            "%s; %d running and %d waiting requests fail, and new ones are refused until restart",
            self._failure,
            sum(1 for s in self._slots if s.job is not None),
            len(self._waiting),
            exc_info=exc,
        )
        outputs = [(s.job.handle, EngineOutput(error="internal engine error")) for s in self._slots if s.job]
        outputs += [(h, EngineOutput(error="internal engine error")) for h in self._waiting.drain()]
        for slot in self._slots:
            if slot.job is not None:
                slot.job = None
                self._waiting.release()
        for handle, output in outputs:
            with contextlib.suppress(Exception):
                handle.push(output)

    def _serve(self) -> None:
        while not self._stopping:
            busy = True
            try:
                prof = self.profile
                started = time.perf_counter()
                self._admit()
                self._reap()
                busy = any(s.job for s in self._slots)
                if prof is not None and busy:
                    prof.admit += time.perf_counter() - started
                if busy:
                    self._step()
            except Exception:  # an engine bug must not kill the loop: fail what is running
                logger.exception("engine step failed")
                self._fail_all("internal engine error")
                busy = False
            if not busy:
                self._flush()
                if self._placement.persist_idle():
                    continue  # one slot saved: look for new work before saving the next
                self._waiting.wait(timeout=1.0)
        self._fail_all("the server is shutting down")
        self._flush()
        self._placement.persist_all()  # what the slots and the RAM cache hold outlives the process

    def _emit(self, handle: RequestHandle, output: EngineOutput) -> None:
        """Queue an output; ``_flush`` hands a whole step's outputs to the event loop in one wake-up
        (just before the next decode, or before the thread goes idle)."""
        handle.mark(output)
        self._outbox.append((handle, output))

    def _flush(self) -> None:
        if not self._outbox:
            return
        by_loop: dict[asyncio.AbstractEventLoop, list[tuple[RequestHandle, EngineOutput]]] = {}
        for item in self._outbox:
            by_loop.setdefault(item[0].loop, []).append(item)
        self._outbox = []
        for loop, items in by_loop.items():
            with contextlib.suppress(RuntimeError):  # a closed loop: nobody is listening any more
                loop.call_soon_threadsafe(RequestHandle.deliver_all, items)

    def _admit(self) -> None:
        # How many admissions that move KV state may come before the next step: engine/prefill.py.
        active = [s for s in self._slots if s.job is not None]
        streaming = sum(1 for s in active if s.job is not None and s.job.phase is Phase.GENERATE)
        prompts = self._pool.prefill_order(active)
        held_back = self._prefill.one_move_a_step(streaming, len(prompts) + len(self._waiting))
        moved = False
        while not (moved and held_back):
            idle = [s for s in self._slots if s.job is None]
            if not idle:
                return
            handle = self._waiting.pop()
            if handle is None:
                return
            try:
                moved = self._start(handle, idle) or moved
            except Exception as exc:
                logger.exception("could not start request %s", handle.request.request_id)
                self._waiting.release()
                self._emit(handle, EngineOutput(error=f"could not start generation: {exc}"))

    def _start(self, handle: RequestHandle, idle: list[Slot]) -> bool:
        """Give ``handle`` a slot; True when KV state moved to or from host memory."""
        req = handle.request  # RUNNING already (WaitQueue.pop): an abort during a restore is seen by _reap
        grammar = None
        if req.grammar is not None:
            grammar = Sampler.grammar(self._rt.vocab, req.grammar)
            if grammar is None:
                raise ValueError("the grammar does not parse")
        sampler = Sampler(req.sampling, n_vocab=self._rt.n_vocab, grammar=grammar)
        started = time.perf_counter()
        try:
            slot, n_past, leader, moved = self._placement.place(req, idle)
        except BaseException:
            sampler.free()
            raise
        if moved:
            pause = time.perf_counter() - started
            self.stats.cache_pause_max_seconds = max(self.stats.cache_pause_max_seconds, pause)
        job = Job(handle, sampler, n_cached=n_past, cursor=n_past, seq=slot.seq, leader=leader)
        slot.job = job
        job.stops = StopMatcher(list(req.stop))
        if req.top_logprobs is not None:
            job.logprobs = []
        logger.debug(
            "request %s -> slot %d, %d/%d prompt tokens cached%s",
            req.request_id,
            slot.seq,
            n_past,
            len(req.prompt),
            ", waiting for the shared prompt" if leader is not None else "",
        )
        return moved

    def _reap(self) -> None:
        now = time.monotonic()
        for slot in self._slots:
            job = slot.job
            if job is None:
                continue
            if job.handle.is_aborted:
                self._release(slot)
            elif now > job.handle.deadline:
                self._release(slot, EngineOutput(error="request timed out"))

    def _release(self, slot: Slot, final: EngineOutput | None = None) -> None:
        """Free the slot; its KV and mirror stay for prefix reuse."""
        job = slot.job
        if job is None:
            return
        slot.job = None
        slot.last_used = time.monotonic()
        slot.persisted = False
        job.sampler.free()
        # Choices waiting for this one's prompt: the first prefills it now, the others wait for that one.
        followers = [s.job for s in self._slots if s.job is not None and s.job.leader is job]
        for follower in followers:
            follower.leader = followers[0] if follower is not followers[0] else None
        self._waiting.release()
        if final is not None:
            self._emit(job.handle, final)

    def _fail_all(self, message: str) -> None:
        for slot in self._slots:
            if slot.job is not None:
                self._rt.seq_clear(slot.seq)
                slot.tokens.clear()
                self._release(slot, EngineOutput(error=message))

    def _step(self) -> None:
        rt = self._rt
        prof = self.profile
        t0 = time.perf_counter()
        rt.batch_clear()
        free = self._pool.room(lambda slot, job: self._finish(slot, job, "", FinishReason.LENGTH))
        active = [s for s in self._slots if s.job is not None]
        n_decode = 0
        for slot in active:
            job = slot.job
            assert job is not None
            job.row, job.added = -1, 0
            if job.phase is Phase.GENERATE:
                job.row = rt.batch_add(job.pending, len(slot.tokens), slot.seq, logits=True)
                job.added = 1
                n_decode += 1
        # How much of which prompts this step evaluates: engine/prefill.py.
        room = free - n_decode  # cells left in the pool for prompts
        prompts = [((slot, job), left, job.started) for slot, job, left in self._pool.prefill_order(active)]
        # Conversations waiting for a first token: these prompts (a request's other choices, which copy
        # their leader's, not counted) and the requests queued for a slot.
        n_waiting = len(prompts) + len(self._waiting)
        for (slot, job), take in self._prefill.plan(n_decode, prompts, room, time.monotonic(), n_waiting):
            prompt = job.handle.request.prompt
            pos = len(slot.tokens)
            for k in range(take):
                last = job.cursor + k == len(prompt) - 1
                row = rt.batch_add(prompt[job.cursor + k], pos + k, slot.seq, logits=last)
                if last:
                    job.row = row
            job.added = take

        # The last step's outputs go to the event loop now, so its work (framing, socket writes) runs
        # while llama_decode holds no GIL, instead of holding up this thread between steps.
        t1 = time.perf_counter()
        self._flush()
        started = time.perf_counter()
        rc = rt.decode()
        if rc == 1 and self._pool.make_room(self._pool.size) > 0:
            rc = rt.decode()  # no contiguous room for the batch: idle slots gave theirs back, once more
        decoded = time.perf_counter()
        self.stats.decode_seconds += decoded - started
        if rc == 0:
            self._prefill.observe(n_decode, rt.batch_size - n_decode, decoded - started)
        self.stats.steps += 1
        if prof is not None:
            prof.steps += 1
            prof.assemble += t1 - t0
            prof.flush += started - t1
            prof.decode += decoded - started
        if rc != 0:
            logger.error("llama_decode returned %d with %d tokens in the batch", rc, rt.batch_size)
            self._fail_all(f"llama_decode failed ({rc})")
            return
        self._placement.decoded()
        sampled_before = prof.sample if prof is not None else 0.0

        # A snapshot: sharing a prompt can finish (and release) a choice before its turn in this loop.
        for slot, job in [(s, s.job) for s in active if s.job is not None]:
            if job.added == 0:
                continue
            if job.phase is Phase.GENERATE:
                slot.tokens.append(job.pending)
            else:
                prompt = job.handle.request.prompt
                slot.tokens.extend(prompt[job.cursor : job.cursor + job.added])
                job.cursor += job.added
            if job.row >= 0:
                token = self._sample(job, job.row)
                if job.phase is Phase.PREFILL:
                    self._share_prompt(slot, job)
                self._on_token(slot, job, token)
        if prof is not None:
            prof.emit += time.perf_counter() - decoded - (prof.sample - sampled_before)

    def _sample(self, job: Job, row: int) -> int:
        prof = self.profile
        if prof is None:
            return sample_row(self._rt, job, row, self._candidates)
        started = time.perf_counter()
        token = sample_row(self._rt, job, row, self._candidates)
        prof.sample += time.perf_counter() - started
        prof.tokens_sampled += 1
        return token

    def _share_prompt(self, leader_slot: Slot, leader: Job) -> None:
        """Hand a just-prefilled prompt to the choices waiting for it: copy the KV, sample the same row."""
        for slot in self._slots:
            job = slot.job
            if job is None or job.leader is not leader:
                continue
            job.leader = None
            prompt = job.handle.request.prompt
            self._placement.copy_seq(leader_slot.seq, slot.seq)
            slot.tokens[:] = prompt
            job.cursor = job.n_cached = len(prompt)
            self.stats.shared_prompt_tokens += len(prompt)
            self._on_token(slot, job, self._sample(job, leader.row))

    def _on_token(self, slot: Slot, job: Job, token: int) -> None:
        rt = self._rt
        req = job.handle.request
        job.phase = Phase.GENERATE
        job.n_generated += 1
        finish: FinishReason | None = None
        text = ""
        if rt.is_eog(token):
            finish = FinishReason.STOP
            if job.logprobs:
                job.logprobs.pop()  # the end-of-turn token is not part of the answer
        else:
            text = job.stops.feed(job.detok.decode(rt.piece(token)))
            if job.stops.stopped:
                finish = FinishReason.STOP
            else:
                budget_spent = req.max_tokens is not None and job.n_generated >= req.max_tokens
                context_full = len(slot.tokens) + 1 >= rt.n_ctx_seq  # no room to decode this token
                if budget_spent or context_full:
                    finish = FinishReason.LENGTH
        if finish is None:
            job.pending = token
            if text:
                # The prompt's size and cached part go out early too, for APIs that report them first.
                output = EngineOutput(
                    text=text,
                    prompt_tokens=len(req.prompt),
                    cached_tokens=job.n_cached,
                    logprobs=take_logprobs(job),
                )
                self._emit(job.handle, output)
            return
        self._finish(slot, job, text, finish)

    def _finish(self, slot: Slot, job: Job, text: str, finish: FinishReason) -> None:
        """End ``job`` with ``finish``: the text still held back goes out with the final output."""
        req = job.handle.request
        if not job.stops.stopped:
            text += job.stops.feed(job.detok.flush())
            text += job.stops.flush()
        self.stats.finished(time.monotonic() - job.started, len(req.prompt), job.n_cached, job.n_generated)
        self._release(
            slot,
            EngineOutput(
                text=text,
                finish_reason=finish,
                prompt_tokens=len(req.prompt),
                completion_tokens=job.n_generated,
                cached_tokens=job.n_cached,
                logprobs=take_logprobs(job),
                stop_sequence=job.stops.matched,
            ),
        )
