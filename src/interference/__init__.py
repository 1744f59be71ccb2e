"""interference: a drop-in OpenAI-compatible LLM server and gateway."""

__version__ = "0.1.0"
__all__ = ["__version__"]
