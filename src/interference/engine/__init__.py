"""Local inference on llama.cpp: model loading, chat templates, continuous batching, sampling."""

from ._llama import ModelLoadError
from .engine import EMBEDDED_MODEL_FILE, Engine, EngineConfig, embedded_model_path, model_id_for
from .handle import EngineUnavailable, QueueFull, RequestHandle
from .types import EngineOutput, EngineRequest, FinishReason, SamplingParams, TokenLogprob

__all__ = [
    "EMBEDDED_MODEL_FILE",
    "Engine",
    "EngineConfig",
    "EngineOutput",
    "EngineRequest",
    "EngineUnavailable",
    "FinishReason",
    "ModelLoadError",
    "QueueFull",
    "RequestHandle",
    "SamplingParams",
    "TokenLogprob",
    "embedded_model_path",
    "model_id_for",
]
