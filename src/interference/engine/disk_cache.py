"""The prompt cache's disk tier: saved sequence states in files, so a restarted server restores a known
prefix instead of prefilling it again.

Layout: ``DIR/<fingerprint>/<name>.kv``. The fingerprint hashes what makes a saved state valid: the
model file (resolved path, size, modification time), the engine settings that shape the KV (context
size, sequences, KV type, flash attention, unified KV) and the file format. Another model or other
settings get another subdirectory, so their states are never restored where they do not belong.

One file holds a magic line, a JSON header (fingerprint, token count, state length, CRC-32 of tokens
and state), the tokens (int32) and the state. Writes go through a background thread: the scheduler
thread hands over a state it has copied out of llama.cpp and goes on; the writer writes a temporary
file, fsyncs it and renames it into place, so a crash mid-write leaves at most a ``.tmp`` file, which
the next start removes. At start the headers are read (never the states); a file whose header does not
parse, whose fingerprint differs or whose size is wrong is removed. The CRC is checked when a state is
read back, and a mismatch removes the file and counts as a miss.

Bounded: the files never hold more than ``max_bytes`` together (least recently used go first; a hit
touches the file's modification time, so the order survives restarts), and the states waiting for the
writer never hold more than ``max_pending`` bytes (a save that would exceed it is skipped).
"""

from __future__ import annotations

import contextlib
import hashlib
import json
import logging
import os
import queue
import threading
import zlib
from collections import OrderedDict
from collections.abc import Sequence
from dataclasses import dataclass
from pathlib import Path
from typing import Any

import numpy as np

from .prefix import common_prefix

__all__ = ["FORMAT_VERSION", "DiskCache", "DiskEntry", "fingerprint"]

logger = logging.getLogger(__name__)

FORMAT_VERSION = 1
MAGIC = b"IFKVSTATE1\n"
_LEN = 4  # bytes of the header length that follows the magic line


def fingerprint(model: Path, settings: dict[str, Any]) -> str:
    """A short hash of the model file's identity and the KV-shaping engine settings."""
    stat = model.stat()
    facts = {
        "format": FORMAT_VERSION,
        "model": str(model.resolve()),
        "size": stat.st_size,
        "mtime_ns": stat.st_mtime_ns,
        **settings,
    }
    return hashlib.sha256(json.dumps(facts, sort_keys=True).encode()).hexdigest()[:24]


@dataclass(frozen=True, slots=True)
class DiskEntry:
    """One state file: the tokens whose KV it holds and its size on disk."""

    tokens: tuple[int, ...]
    path: Path
    size: int
    state_len: int
    offset: int  # where the tokens start in the file


def _is_prefix(short: Sequence[int], long: Sequence[int]) -> bool:
    return len(short) <= len(long) and common_prefix(short, long) == len(short)


class DiskCache:
    """Saved states in one directory per fingerprint, least recently used first; thread-safe."""

    def __init__(self, root: Path, *, key: str, max_bytes: int, max_pending: int = 1024 * 2**20) -> None:
        self.dir = root / key
        self.dir.mkdir(parents=True, exist_ok=True)
        self.key = key
        self.max_bytes = max_bytes
        self.max_pending = max_pending
        self.bytes_held = 0
        self.pending_bytes = 0
        self.writes = self.evictions = self.dropped = self.bad_files = 0
        self._lock = threading.Lock()
        self._entries: OrderedDict[Path, DiskEntry] = OrderedDict()  # oldest first
        self._pending: list[tuple[int, ...]] = []  # tokens handed to the writer, not yet on disk
        self._counter = 0
        self._scan()
        self._queue: queue.Queue[tuple[tuple[int, ...], bytearray, int] | None] = queue.Queue()
        self._thread = threading.Thread(target=self._write_loop, name="interference-cache-disk", daemon=True)
        self._thread.start()

    def __len__(self) -> int:
        return len(self._entries)

    # ------------------------------------------------------------------ start-up

    def _scan(self) -> None:
        found: list[tuple[int, DiskEntry]] = []
        for path in self.dir.iterdir():
            if path.name.endswith(".tmp"):  # a write that never finished
                path.unlink(missing_ok=True)
                continue
            if path.suffix != ".kv":
                continue
            entry = self._read_header(path)
            if entry is None:
                self.bad_files += 1
                logger.warning("removing an unusable prompt cache file: %s", path)
                path.unlink(missing_ok=True)
                continue
            with contextlib.suppress(OSError):
                found.append((path.stat().st_mtime_ns, entry))
        for _, entry in sorted(found, key=lambda pair: pair[0]):
            self._entries[entry.path] = entry
            self.bytes_held += entry.size
        self._evict(0)

    def _read_header(self, path: Path) -> DiskEntry | None:
        try:
            with path.open("rb") as f:
                if f.read(len(MAGIC)) != MAGIC:
                    return None
                n = int.from_bytes(f.read(_LEN), "little")
                header = json.loads(f.read(n))
                if header.get("fingerprint") != self.key:
                    return None
                n_tokens, state_len = int(header["n_tokens"]), int(header["state_len"])
                offset = len(MAGIC) + _LEN + n
                size = path.stat().st_size
                if n_tokens <= 0 or state_len <= 0 or size != offset + 4 * n_tokens + state_len:
                    return None
                tokens = np.frombuffer(f.read(4 * n_tokens), dtype="<i4")
                return DiskEntry(tuple(int(t) for t in tokens), path, size, state_len, offset)
        except (OSError, ValueError, KeyError, TypeError):
            return None

    # ------------------------------------------------------------------ lookups (scheduler thread)

    def best(self, prompt: Sequence[int]) -> tuple[DiskEntry | None, int]:
        """The entry sharing the longest prefix with ``prompt``, and that prefix's length."""
        with self._lock:
            best: DiskEntry | None = None
            best_len = 0
            for entry in self._entries.values():
                n = common_prefix(entry.tokens, prompt)
                if n > best_len:
                    best, best_len = entry, n
            return best, best_len

    def covers(self, tokens: Sequence[int]) -> bool:
        """Whether a file (or a write under way) holds ``tokens`` or a longer sequence starting with them."""
        with self._lock:
            return any(_is_prefix(tokens, e.tokens) for e in self._entries.values()) or any(
                _is_prefix(tokens, p) for p in self._pending
            )

    def load(self, entry: DiskEntry) -> bytearray | None:
        """The state of ``entry`` read back and checked; None (and the file removed) when it is gone or
        damaged."""
        try:
            with entry.path.open("rb") as f:
                f.seek(entry.offset)
                raw_tokens = f.read(4 * len(entry.tokens))
                state = bytearray(entry.state_len)
                got = f.readinto(state)
                f.seek(len(MAGIC))
                n = int.from_bytes(f.read(_LEN), "little")
                crc = int(json.loads(f.read(n))["crc32"])
        except (OSError, ValueError, KeyError, TypeError):
            got, crc, raw_tokens, state = -1, 0, b"", bytearray()
        if got != entry.state_len or zlib.crc32(state, zlib.crc32(raw_tokens)) != crc:
            logger.warning("removing a damaged prompt cache file: %s", entry.path)
            self.bad_files += 1
            self._remove(entry)
            return None
        with self._lock:
            if entry.path in self._entries:
                self._entries.move_to_end(entry.path)
        with contextlib.suppress(OSError):
            os.utime(entry.path)  # most recently used, across restarts too
        return state

    # ------------------------------------------------------------------ writes

    def fits(self, length: int) -> bool:
        """Whether a state of ``length`` bytes could ever be written (within both bounds)."""
        return length <= self.max_bytes and length <= self.max_pending

    def has_room(self, length: int) -> bool:
        """Whether a state of ``length`` bytes may be queued now."""
        with self._lock:
            return length <= self.max_bytes and self.pending_bytes + length <= self.max_pending

    def submit(self, tokens: Sequence[int], state: bytearray, length: int) -> bool:
        """Queue a state for writing (the writer owns ``state`` from now on); False when it was skipped:
        covered already, larger than the bound, or too many bytes already wait."""
        key = tuple(tokens)
        if not key or length > self.max_bytes:
            return False
        with self._lock:
            if self.pending_bytes + length > self.max_pending:
                self.dropped += 1
                return False
            self.pending_bytes += length
            self._pending.append(key)
        self._queue.put((key, state, length))
        return True

    def close(self, timeout: float = 10.0) -> bool:
        """Finish the writes queued so far (within ``timeout``) and stop the writer; False if it is
        still writing (a partial file is removed at the next start)."""
        self._queue.put(None)
        self._thread.join(timeout)
        return not self._thread.is_alive()

    def _write_loop(self) -> None:
        while True:
            item = self._queue.get()
            if item is None:
                return
            tokens, state, length = item
            try:
                self._write(tokens, state, length)
            except OSError as exc:
                logger.warning("could not write a prompt cache file to %s: %s", self.dir, exc)
            finally:
                with self._lock:
                    self.pending_bytes -= length
                    self._pending.remove(tokens)

    def _write(self, tokens: tuple[int, ...], state: bytearray, length: int) -> None:
        if self._covered_on_disk(tokens):
            return
        raw_tokens = np.asarray(tokens, dtype="<i4").tobytes()
        view = memoryview(state)[:length]
        header = json.dumps(
            {
                "fingerprint": self.key,
                "n_tokens": len(tokens),
                "state_len": length,
                "crc32": zlib.crc32(view, zlib.crc32(raw_tokens)),
            }
        ).encode()
        self._counter += 1
        name = f"{hashlib.sha256(raw_tokens).hexdigest()[:20]}-{os.getpid()}-{self._counter}"
        path = self.dir / f"{name}.kv"
        tmp = self.dir / f"{name}.kv.tmp"
        with tmp.open("wb") as f:
            f.write(MAGIC + len(header).to_bytes(_LEN, "little") + header)
            f.write(raw_tokens)
            f.write(view)
            f.flush()
            os.fsync(f.fileno())
        os.replace(tmp, path)
        with contextlib.suppress(OSError):  # the rename itself survives a crash once the directory is synced
            fd = os.open(self.dir, os.O_RDONLY)
            try:
                os.fsync(fd)
            finally:
                os.close(fd)
        offset = len(MAGIC) + _LEN + len(header)
        entry = DiskEntry(tokens, path, offset + len(raw_tokens) + length, length, offset)
        with self._lock:
            superseded = [e for e in self._entries.values() if _is_prefix(e.tokens, tokens)]
            self._entries[path] = entry
            self.bytes_held += entry.size
            self.writes += 1
        for old in superseded:  # the new state holds their KV too
            self._remove(old)
        self._evict(0)

    def _covered_on_disk(self, tokens: tuple[int, ...]) -> bool:
        with self._lock:
            return any(_is_prefix(tokens, e.tokens) for e in self._entries.values())

    def _evict(self, size: int) -> None:
        while True:
            with self._lock:
                if self.bytes_held + size <= self.max_bytes or not self._entries:
                    return
                victim = next(iter(self._entries.values()))
            self._remove(victim)
            self.evictions += 1

    def _remove(self, entry: DiskEntry) -> None:
        with self._lock:
            if self._entries.pop(entry.path, None) is not None:
                self.bytes_held -= entry.size
        entry.path.unlink(missing_ok=True)
