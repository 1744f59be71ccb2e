"""The in-process provider: requests become token prompts for the local llama.cpp engine."""

from __future__ import annotations

import asyncio
from collections.abc import AsyncIterator
from typing import Any

from ..engine import Engine, EngineRequest, QueueFull, SamplingParams
from ..engine.chat_template import TemplateError
from ..errors import (
    ContextLengthExceeded,
    EngineFailure,
    InvalidRequest,
    Overloaded,
    RequestTimedOut,
    UnsupportedParameter,
)
from ..protocol import ChatCompletionRequest, CompletionRequest, SamplingFields, new_id
from .base import Delta, Provider, TokenUsage

__all__ = ["LocalProvider"]


class LocalProvider(Provider):
    """Serves one GGUF through the batching scheduler."""

    def __init__(self, engine: Engine, *, name: str) -> None:
        self.name = name
        self.engine = engine

    async def start(self) -> None:
        self.engine.start()

    async def aclose(self) -> None:
        await asyncio.to_thread(self.engine.close)

    # ------------------------------------------------------------------ requests

    async def chat(self, request: ChatCompletionRequest, *, model: str) -> AsyncIterator[Delta]:
        _reject_unsupported(request)
        messages = [_template_message(m.role, m.text) for m in request.messages]
        try:
            prompt = self.engine.render_chat(messages)
        except TemplateError as exc:
            raise InvalidRequest(str(exc), param="messages") from exc
        async for delta in self._generate(prompt, request, request.max_new_tokens, param="messages"):
            yield delta

    async def complete(self, request: CompletionRequest, *, model: str) -> AsyncIterator[Delta]:
        _reject_unsupported(request)
        if request.suffix:
            raise UnsupportedParameter("suffix (fill-in-the-middle) is not supported", param="suffix")
        source = request.prompt_text
        if isinstance(source, str):
            prompt = self.engine.tokenize(source)
        else:
            bad = [t for t in source if not self.engine.runtime.is_valid_token(t)]
            if bad:
                raise InvalidRequest(
                    f"prompt holds token ids outside the vocabulary: {bad[:5]}", param="prompt"
                )
            prompt = source
        if not prompt:
            raise InvalidRequest("prompt must not be empty", param="prompt")
        if request.echo:
            echoed = source if isinstance(source, str) else self.engine.detokenize(prompt)
            yield Delta(text=echoed)
        async for delta in self._generate(prompt, request, request.max_tokens, param="prompt"):
            yield delta

    async def _generate(
        self, prompt: list[int], request: SamplingFields, max_tokens: int | None, *, param: str
    ) -> AsyncIterator[Delta]:
        n_ctx = self.engine.n_ctx_seq
        if len(prompt) >= n_ctx:
            raise ContextLengthExceeded(
                f"This model's maximum context length is {n_ctx} tokens. However, your {param} "
                f"resulted in {len(prompt)} tokens.",
                param=param,
            )
        if max_tokens is not None and len(prompt) + max_tokens > n_ctx:
            raise ContextLengthExceeded(
                f"This model's maximum context length is {n_ctx} tokens. However, you requested "
                f"{len(prompt) + max_tokens} tokens ({len(prompt)} in the {param}, {max_tokens} in the "
                "completion). Please reduce the length of the prompt or the completion.",
                param="max_tokens",
            )
        engine_request = EngineRequest(
            request_id=new_id("req"),
            prompt=tuple(prompt),
            sampling=self._sampling(request),
            max_tokens=max_tokens,
            stop=tuple(request.stop_strings),
        )
        try:
            handle = self.engine.submit(engine_request)
        except QueueFull:
            raise Overloaded(
                "The server is at capacity: too many requests are waiting. Retry shortly.", retry_after=1.0
            ) from None
        try:
            async for out in handle:
                if out.error is not None:
                    if out.error == "request timed out":
                        raise RequestTimedOut("The request took longer than the server's request timeout.")
                    raise EngineFailure(out.error)
                usage = None
                if out.finish_reason is not None:
                    usage = TokenUsage(out.prompt_tokens, out.completion_tokens, out.cached_tokens)
                yield Delta(
                    text=out.text,
                    finish_reason=str(out.finish_reason) if out.finish_reason else None,
                    usage=usage,
                )
        finally:
            handle.abort()

    def _sampling(self, request: SamplingFields) -> SamplingParams:
        bias: list[tuple[int, float]] = []
        for key, value in (request.logit_bias or {}).items():
            try:
                token = int(key)
            except ValueError:
                raise InvalidRequest(
                    f"logit_bias keys must be token ids, got {key!r}", param="logit_bias"
                ) from None
            if not self.engine.runtime.is_valid_token(token):
                raise InvalidRequest(
                    f"logit_bias token id {token} is outside the vocabulary", param="logit_bias"
                )
            bias.append((token, value))
        return SamplingParams(
            temperature=1.0 if request.temperature is None else request.temperature,
            top_p=1.0 if request.top_p is None else request.top_p,
            top_k=request.top_k or 0,
            min_p=request.min_p or 0.0,
            presence_penalty=request.presence_penalty or 0.0,
            frequency_penalty=request.frequency_penalty or 0.0,
            repeat_penalty=1.0 if request.repeat_penalty is None else request.repeat_penalty,
            seed=request.seed,
            logit_bias=tuple(bias),
        )


def _template_message(role: str, text: str) -> dict[str, Any]:
    # "developer" is OpenAI's newer name for the system role; templates only know "system".
    return {"role": "system" if role == "developer" else role, "content": text}


def _reject_unsupported(request: SamplingFields) -> None:
    if request.n is not None and request.n > 1:
        raise UnsupportedParameter("n > 1 is not supported by the local engine yet", param="n")
    if isinstance(request, ChatCompletionRequest):
        if request.tools and request.tool_choice != "none":
            raise UnsupportedParameter("tools are not supported by the local engine yet", param="tools")
        fmt = (request.response_format or {}).get("type", "text")
        if fmt != "text":
            raise UnsupportedParameter(
                f"response_format '{fmt}' is not supported yet", param="response_format"
            )
        if request.logprobs:
            raise UnsupportedParameter("logprobs are not supported by the local engine yet", param="logprobs")
    elif isinstance(request, CompletionRequest) and request.logprobs:
        raise UnsupportedParameter("logprobs are not supported by the local engine yet", param="logprobs")
