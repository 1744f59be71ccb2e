"""Build a reference ``llama-server`` from the llama-cpp-python sdist, once.

The binary is compiled from the very llama.cpp sources vendored in the
llama-cpp-python release installed in the running interpreter, so both servers
run the same inference kernels. The result is cached and reused.

Usage::

    python bench/baseline.py            # build if needed, print the path
    python bench/baseline.py --version 0.3.36
"""

from __future__ import annotations

import argparse
import importlib.metadata
import os
import shutil
import subprocess
import sys
import tarfile
import tempfile
import time
from pathlib import Path

BINARY = "llama-server"


def llama_cpp_python_version() -> str:
    """Version of llama-cpp-python installed in this interpreter."""
    return importlib.metadata.version("llama-cpp-python")


def cache_dir(version: str) -> Path:
    """Directory holding the cached binary for ``version``."""
    root = os.environ.get("INTERFERENCE_BENCH_CACHE")
    base = Path(root) if root else Path.home() / ".cache" / "interference" / "bench"
    return base / f"{BINARY}-{version}"


def _run(cmd: list[str], cwd: Path | None = None) -> None:
    print("+", " ".join(cmd), file=sys.stderr, flush=True)
    subprocess.run(cmd, cwd=cwd, check=True)


def _download_sdist(version: str, dest: Path) -> Path:
    _run(
        [
            sys.executable,
            "-m",
            "pip",
            "download",
            "--no-deps",
            "--no-binary",
            ":all:",
            f"llama-cpp-python=={version}",
            "-d",
            str(dest),
        ]
    )
    archives = sorted(dest.glob("llama_cpp_python-*.tar.gz")) + sorted(dest.glob("llama-cpp-python-*.tar.gz"))
    if not archives:
        raise RuntimeError(f"no sdist found in {dest}: {list(dest.iterdir())}")
    return archives[0]


def _extract(archive: Path, dest: Path) -> Path:
    with tarfile.open(archive) as tar:
        tar.extractall(dest, filter="data")
    roots = [p for p in dest.iterdir() if p.is_dir()]
    if len(roots) != 1:
        raise RuntimeError(f"unexpected sdist layout: {roots}")
    return roots[0]


def _compile(llama_cpp: Path, jobs: int) -> Path:
    _run(
        [
            "cmake",
            "-B",
            "build",
            "-DLLAMA_CURL=OFF",
            "-DCMAKE_BUILD_TYPE=Release",
            "-DGGML_NATIVE=ON",
            "-DLLAMA_BUILD_TESTS=OFF",
            "-DLLAMA_BUILD_EXAMPLES=OFF",
            "-DBUILD_SHARED_LIBS=OFF",
        ],
        cwd=llama_cpp,
    )
    _run(
        ["cmake", "--build", "build", "--target", BINARY, "-j", str(jobs)],
        cwd=llama_cpp,
    )
    found = list((llama_cpp / "build").rglob(BINARY))
    found = [p for p in found if p.is_file() and os.access(p, os.X_OK)]
    if not found:
        raise RuntimeError("build finished but no llama-server binary was found")
    return found[0]


def _missing_libs(binary: Path) -> list[str]:
    """Shared libraries ``ldd`` cannot resolve for ``binary``."""
    try:
        out = subprocess.run(["ldd", str(binary)], capture_output=True, text=True, check=False).stdout
    except FileNotFoundError:
        return []
    return [line.split()[0] for line in out.splitlines() if "not found" in line]


def build(version: str, target: Path, jobs: int) -> Path:
    """Download, compile and install ``llama-server`` into ``target``."""
    started = time.monotonic()
    with tempfile.TemporaryDirectory(prefix="llama-server-build-") as tmp:
        tmp_path = Path(tmp)
        src_root = _extract(_download_sdist(version, tmp_path / "dl"), tmp_path / "src")
        built = _compile(src_root / "vendor" / "llama.cpp", jobs)
        target.mkdir(parents=True, exist_ok=True)
        staged = target / f".{BINARY}.tmp"
        shutil.copy2(built, staged)
        staged.chmod(0o755)
        staged.replace(target / BINARY)
    binary = target / BINARY
    missing = _missing_libs(binary)
    if missing:
        raise RuntimeError(f"{binary} has unresolved libraries: {missing}")
    elapsed = time.monotonic() - started
    (target / "BUILD_INFO").write_text(
        f"llama-cpp-python {version}\nbuild_seconds {elapsed:.1f}\n", encoding="utf-8"
    )
    print(f"built {binary} in {elapsed:.0f}s", file=sys.stderr)
    return binary


def ensure_llama_server(version: str | None = None, jobs: int = 2) -> Path:
    """Return the cached ``llama-server`` path, building it on first use."""
    ver = version or llama_cpp_python_version()
    target = cache_dir(ver)
    binary = target / BINARY
    if binary.is_file() and os.access(binary, os.X_OK):
        return binary
    return build(ver, target, jobs)


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--version", help="llama-cpp-python version (default: installed)")
    parser.add_argument("--jobs", type=int, default=os.cpu_count() or 2)
    args = parser.parse_args()
    print(ensure_llama_server(args.version, args.jobs))


if __name__ == "__main__":
    main()
