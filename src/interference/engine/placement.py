"""Where an admitted request runs, and what its slot holds first: slot choice and the prompt cache.

On the scheduler thread only. The longest common prefix wins, whether an idle slot or the host-RAM
prompt cache holds it; a slot's KV is saved to that cache before being overwritten. Choices of one
request (n > 1) get their leader's prompt by a whole-sequence copy instead of a prefill of their own.
"""

from __future__ import annotations

import logging
import time
from collections.abc import Sequence

from ._llama import LlamaRuntime
from .disk_cache import DiskCache
from .prefix import MIN_SIMILARITY, SlotView, pick_slot
from .prompt_cache import CacheEntry, PromptCache, PromptCachePool
from .slots import EngineStats, Job, Phase, Slot
from .types import EngineRequest

__all__ = ["MIN_SAVE_TOKENS", "Placement"]

logger = logging.getLogger(__name__)

# A slot about to lose fewer tokens than this is not saved to the prompt cache: prefilling them again
# costs less than the memory they would hold.
MIN_SAVE_TOKENS = 16


class Placement:
    """Slot choice plus the moves of KV between slots and the prompt cache."""

    def __init__(
        self,
        runtime: LlamaRuntime,
        slots: list[Slot],
        stats: EngineStats,
        *,
        cache_bytes: int,
        cache_pool: PromptCachePool | None = None,
        disk: DiskCache | None = None,
    ) -> None:
        self._rt = runtime
        self.slots = slots
        self.stats = stats
        self.cache = PromptCache(cache_bytes, pool=cache_pool) if cache_bytes > 0 else None
        self.disk = disk
        # Sequences whose whole-sequence copy waits for the next decode: their state must not be read
        # or replaced until then.
        self.pending_copy: set[int] = set()

    def decoded(self) -> None:
        """``llama_decode`` ran: it performs the queued sequence copies first."""
        self.pending_copy.clear()

    def place(self, req: EngineRequest, idle: list[Slot]) -> tuple[Slot, int, Job | None, bool]:
        """Pick a slot and prepare its KV: (slot, prompt tokens already in it, leader to wait for, moved).

        The longest common prefix wins, held by an idle slot or by the prompt cache; a slot is saved to
        the cache before its KV is overwritten. Choices of one request copy their leader's prompt.
        """
        prompt = req.prompt
        leader = self.leader(req)
        if leader is not None:
            target = self.victim(idle)
            if target is not None:
                moved = self.save(target, keep=0)
                # A leader still prefilling hands its prompt over when done (Scheduler._share_prompt).
                if leader.phase is Phase.PREFILL:
                    self._rt.seq_clear(target.seq)
                    target.tokens.clear()
                    return target, 0, leader, moved
                # The leader is generating already: copy its whole sequence, keep the prompt but its
                # last token, whose logits this choice needs.
                keep = len(prompt) - 1
                self.copy_seq(leader.seq, target.seq)
                self._rt.seq_rm(target.seq, keep, -1)
                target.tokens[:] = prompt[:keep]
                self.stats.shared_prompt_tokens += keep
                return target, keep, None, moved
        views = [SlotView(i, s.tokens, s.last_used) for i, s in enumerate(self.slots) if s in idle]
        index, n_past = pick_slot(views, prompt)
        restored = self._from_caches(prompt, n_past, idle)
        if restored is not None:
            return restored
        slot = self.slots[index]
        moved = self.save(slot, keep=n_past)
        if not self._rt.seq_rm(slot.seq, n_past, -1):
            self._rt.seq_clear(slot.seq)
            n_past = 0
        del slot.tokens[n_past:]
        if n_past < MIN_SIMILARITY * len(prompt):  # a new conversation: its whole prompt to prefill
            self._release_saved(slot)
        return slot, n_past, None, moved

    def _release_saved(self, keep: Slot) -> None:
        """Give back the cells of the idle slots (but ``keep``) that the host-RAM cache holds already.

        For a new conversation, whose whole prompt is to prefill. Attention runs over the pool up to its
        highest cell in use, masked cells included: on a 135M model, seven idle conversations of 430
        tokens made a 430-token prefill 17-29% slower. Their KV is in the cache, so nothing is lost: a
        conversation that comes back is restored from it (a copy, milliseconds) instead of finding its
        slot as it was. Slots the cache lacks keep their cells until the idle-time saves copy them.
        A conversation that continues (agent sessions resending a long history) gives nothing back:
        there, releasing the other sessions made later turns slower (1.13x in one run), each coming
        back by a restore of a large state.
        """
        cache = self.cache
        if cache is None:
            return
        for slot in self._idle_holders(keep):
            if cache.covers(slot.tokens):
                self.forget(slot)
                self.stats.cache_released_slots += 1

    def _from_caches(
        self, prompt: Sequence[int], n_past: int, idle: list[Slot]
    ) -> tuple[Slot, int, None, bool] | None:
        """Restore the longest prefix the prompt cache holds (host RAM, else disk) when it beats the
        idle slots' ``n_past``; None when neither tier has a better one."""
        if self.cache is None and self.disk is None:
            return None
        limit = len(prompt) - 1  # one token at least is evaluated, for its logits
        floor = max(n_past + 1, MIN_SIMILARITY * len(prompt))
        entry, n_hit = self.cache.best(prompt) if self.cache is not None else (None, 0)
        n_hit = min(n_hit, limit)
        target = self.victim(idle)
        if self.disk is not None and target is not None:
            on_disk, n_disk = self.disk.best(prompt)
            n_disk = min(n_disk, limit)
            if on_disk is not None and n_disk > n_hit and n_disk >= floor:
                state = self.disk.load(on_disk)
                if state is not None:
                    self.stats.cache_hits += 1
                    self.stats.cache_disk_hits += 1
                    loaded = CacheEntry(on_disk.tokens, state, len(state))
                    return target, self.restore(loaded, n_disk, target), None, True
        if entry is not None and target is not None and n_hit >= floor:
            self.stats.cache_hits += 1
            return target, self.restore(entry, n_hit, target), None, True
        self.stats.cache_misses += 1
        return None

    def persist_one(self, *, ram: bool = True) -> bool:
        """Save one idle slot whose KV no cache tier holds yet (to host RAM unless ``ram`` is False, and
        to the disk tier); True when it saved one (call again), False when none is left or the disk
        writer is busy. For the scheduler's idle time: a slot saved now is not saved later, on the path
        of the request that overwrites it."""
        for slot in sorted(self.slots, key=lambda s: s.last_used, reverse=True):
            if slot.job is not None or slot.persisted or slot.seq in self.pending_copy:
                continue  # (a pending copy is settled by the next decode)
            if len(slot.tokens) < MIN_SAVE_TOKENS:
                slot.persisted = True
                continue
            disk = self.disk
            if disk is not None and not disk.covers(slot.tokens):
                size = self._rt.state_size(slot.seq)
                if not disk.fits(size):
                    disk = None  # larger than the disk tier's bounds: host RAM only
                elif not disk.has_room(size):
                    return False  # the writer is behind: this slot waits for the next idle moment
            slot.persisted = True
            did = ram and self.save(slot, keep=0)
            if disk is not None and not disk.covers(slot.tokens):
                started = time.perf_counter()
                state, length = self._rt.state_save(slot.seq)
                did = disk.submit(slot.tokens, state, length) or did
                self.stats.cache_seconds += time.perf_counter() - started
            if did:
                return True
        return False

    def persist_idle(self) -> bool:
        """The engine has nothing to decode: save one idle slot (``persist_one``), never failing."""
        try:
            saved = self.persist_one()
        except Exception:
            logger.exception("saving an idle slot to the prompt cache failed")
            saved = False
        if self.disk is not None:
            stats, disk = self.stats, self.disk
            stats.cache_disk_writes, stats.cache_disk_bytes = disk.writes, disk.bytes_held
            stats.cache_disk_entries = len(disk)
        return saved

    def persist_all(self) -> None:
        """At shutdown: hand every idle slot and host-RAM entry the disk tier lacks to its writer
        (nothing reuses the entries' buffers any more)."""
        if self.disk is None:
            return
        while self.persist_one(ram=False):
            pass
        for entry in reversed(self.cache.entries() if self.cache is not None else []):  # newest first
            if not self.disk.covers(entry.tokens) and self.disk.has_room(entry.length):
                self.disk.submit(entry.tokens, entry.state, entry.length)

    def leader(self, req: EngineRequest) -> Job | None:
        """A running choice of the same request that prefills (or prefilled) the same prompt."""
        if req.group is None:
            return None
        for slot in self.slots:
            job = slot.job
            if job is not None and job.leader is None and not job.handle.is_aborted:
                other = job.handle.request
                if other.group == req.group and other.prompt == req.prompt:
                    return job
        return None

    def victim(self, idle: list[Slot]) -> Slot | None:
        """The idle slot to overwrite: an empty one, else the least recently used."""
        free = [s for s in idle if s.seq not in self.pending_copy]
        if not free:
            return None
        empty = [s for s in free if not s.tokens]
        return empty[0] if empty else min(free, key=lambda s: s.last_used)

    def forget(self, slot: Slot) -> None:
        """Drop an idle slot's KV, giving its cells back to the pool."""
        self._rt.seq_clear(slot.seq)
        slot.tokens.clear()

    def copy_seq(self, src: int, dst: int) -> None:
        self._rt.seq_copy(src, dst)
        self.pending_copy.update((src, dst))

    def save(self, slot: Slot, *, keep: int, restoring: CacheEntry | None = None) -> bool:
        """Save the slot's KV to the prompt cache when it is about to lose enough of it (never evicting
        ``restoring``, the entry about to be restored into it)."""
        cache = self.cache
        if cache is None or len(slot.tokens) - keep < MIN_SAVE_TOKENS or slot.seq in self.pending_copy:
            return False
        if cache.covers(slot.tokens):
            return False
        started = time.perf_counter()
        buffer = cache.buffer(self._rt.state_size(slot.seq), keep=restoring)
        if buffer is None:
            return False
        state, length = self._rt.state_save(slot.seq, into=buffer)
        if cache.put(slot.tokens, state, length):
            self.stats.cache_saves += 1
        self._cache_stats(time.perf_counter() - started)
        return True

    def restore(self, entry: CacheEntry, n_hit: int, slot: Slot) -> int:
        """Load a cached state into ``slot`` and trim it to the shared prefix; returns tokens reused."""
        self.save(slot, keep=0, restoring=entry)
        started = time.perf_counter()
        restored = self._rt.state_restore(slot.seq, entry.state, entry.length)
        if not restored and self._release_idle(slot, entry):
            # The shared pool had no run of free cells for the state: idle slots gave theirs back
            # (saved first), so only running sequences hold cells now. Once more.
            restored = self._rt.state_restore(slot.seq, entry.state, entry.length)
        if not restored:
            logger.warning("could not restore a cached prompt of %d tokens; prefilling it", len(entry.tokens))
            if self.cache is not None:
                self.cache.discard(entry)
            self._rt.seq_clear(slot.seq)
            slot.tokens.clear()
            return 0
        if not self._rt.seq_rm(slot.seq, n_hit, -1):
            self._rt.seq_clear(slot.seq)
            slot.tokens.clear()
            return 0
        slot.tokens[:] = entry.tokens[:n_hit]
        if self.cache is not None and n_hit + MIN_SAVE_TOKENS > len(entry.tokens):
            self.cache.discard(entry)  # the slot holds it now, and saves it again (longer) if overwritten
        elapsed = time.perf_counter() - started
        self.stats.cache_restored_tokens += n_hit
        self._cache_stats(elapsed)
        logger.debug(
            "prompt cache hit: %d tokens restored into slot %d (%.1f ms, %d KiB)",
            n_hit,
            slot.seq,
            elapsed * 1e3,
            entry.length // 1024,
        )
        return n_hit

    def _release_idle(self, keep: Slot, restoring: CacheEntry) -> bool:
        """Give every idle slot's cells but ``keep``'s back to the pool, each saved to the prompt cache
        first (never evicting ``restoring``); True when any was released."""
        released = False
        for slot in self._idle_holders(keep):
            self.save(slot, keep=0, restoring=restoring)
            self.forget(slot)
            released = True
        return released

    def _idle_holders(self, keep: Slot) -> list[Slot]:
        """The idle slots but ``keep`` whose cells may be given back (they hold tokens and await no
        sequence copy), least recently used first."""
        return [
            slot
            for slot in sorted(self.slots, key=lambda s: s.last_used)
            if slot is not keep and slot.job is None and slot.tokens and slot.seq not in self.pending_copy
        ]

    def _cache_stats(self, elapsed: float) -> None:
        stats = self.stats
        stats.cache_seconds += elapsed
        if self.cache is None:
            return
        stats.cache_bytes = self.cache.bytes_held
        stats.cache_entries = len(self.cache)
        stats.cache_evictions = self.cache.evictions
