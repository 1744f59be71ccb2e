"""The in-process provider: requests become token prompts for the local llama.cpp engine."""

from __future__ import annotations

import asyncio
import dataclasses
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
from .choices import chat_logprobs, completion_logprobs, merge, shape_tool_calls
from .tools import call_schema, message_dicts, offered_tools, tool_mode

__all__ = ["LocalProvider"]

# llama-server's defaults for the knobs OpenAI's API lacks. The 40 likeliest tokens hold nearly all the
# probability mass, and sampling among them instead of the whole vocabulary saves a sort of ~50k
# logits per token; min_p drops tokens far less likely than the best one, which keeps small models
# from drifting into noise on long answers. ``top_k: 0`` / ``min_p: 0`` in a request turn them off.
DEFAULT_TOP_K = 40
DEFAULT_MIN_P = 0.05


@dataclasses.dataclass(frozen=True, slots=True)
class _Plan:
    """How to run one choice."""

    prompt: list[int]
    max_tokens: int | None
    param: str
    grammar: str | None = None
    top_logprobs: int | None = None
    legacy_logprobs: bool = False
    group: str | None = None  # set when n > 1: the engine prefills the shared prompt once


def _group(request: SamplingFields) -> str | None:
    return new_id("grp") if (request.n or 1) > 1 else None


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
        self._check_n(request)
        mode = tool_mode(request)
        grammar = self._grammar(request, mode)
        native = mode != "none" and self.engine.template_renders_tools
        extra: dict[str, Any] = {}
        if native:
            extra["tools"] = [t.model_dump(exclude_none=True) for t in offered_tools(request)]
        try:
            prompt = self.engine.render_chat(message_dicts(request, native=native), **extra)
        except TemplateError as exc:
            raise InvalidRequest(str(exc), param="messages") from exc
        top = (request.top_logprobs or 0) if request.logprobs else None
        plan = _Plan(
            prompt,
            request.max_new_tokens,
            "messages",
            grammar=grammar,
            top_logprobs=top,
            group=_group(request),
        )
        choices: list[AsyncIterator[Delta]] = []
        for i in range(request.n or 1):
            choice = self._generate(plan, request, index=i)
            if mode != "none":
                choice = shape_tool_calls(
                    choice, tools=list(request.tools or []), constrained=grammar is not None
                )
            choices.append(choice)
        async for delta in merge(choices):
            yield delta

    async def complete(self, request: CompletionRequest, *, model: str) -> AsyncIterator[Delta]:
        self._check_n(request)
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
        plan = _Plan(
            prompt,
            request.max_tokens,
            "prompt",
            top_logprobs=request.logprobs,
            legacy_logprobs=True,
            group=_group(request),
        )
        echoed = ""
        if request.echo:
            echoed = source if isinstance(source, str) else self.engine.detokenize(prompt)
        choices = [self._generate(plan, request, index=i, echo=echoed) for i in range(request.n or 1)]
        async for delta in merge(choices):
            yield delta

    def _check_n(self, request: SamplingFields) -> None:
        """More choices than the engine can ever hold at once is the request's fault, not a busy server."""
        capacity = self.engine.scheduler.capacity
        if request.n is not None and request.n > capacity:
            raise InvalidRequest(
                f"n must be at most {capacity} on this server (its slots plus its waiting queue).", param="n"
            )

    def _grammar(self, request: ChatCompletionRequest, mode: str) -> str | None:
        from ..engine.json_schema import JSON_OBJECT_GBNF, UnsupportedSchema, schema_to_gbnf

        schema: dict[str, Any] | None = None
        param = "response_format"
        if mode in ("required", "named"):
            schema, param = call_schema(request), "tools"
        elif request.response_format is not None and request.response_format.type == "json_object":
            return JSON_OBJECT_GBNF
        elif request.response_format is not None and request.response_format.type == "json_schema":
            assert request.response_format.json_schema is not None
            schema = request.response_format.json_schema.schema_
            if not schema:
                return JSON_OBJECT_GBNF
        if schema is None:
            return None
        try:
            gbnf = schema_to_gbnf(schema)
        except UnsupportedSchema as exc:
            raise UnsupportedParameter(
                f"JSON schema keyword '{exc.keyword}' (at {exc.path or 'the root'}) is not supported: {exc}",
                param=param,
            ) from exc
        if not self.engine.check_grammar(gbnf):
            raise InvalidRequest("the JSON schema could not be turned into a grammar", param=param)
        return gbnf

    async def _generate(
        self, plan: _Plan, request: SamplingFields, *, index: int, echo: str = ""
    ) -> AsyncIterator[Delta]:
        prompt, max_tokens, param = plan.prompt, plan.max_tokens, plan.param
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
            sampling=self._sampling(request, index),
            max_tokens=max_tokens,
            stop=tuple(request.stop_strings),
            grammar=plan.grammar,
            top_logprobs=plan.top_logprobs,
            group=plan.group,
        )
        try:
            handle = self.engine.submit(engine_request)
        except QueueFull:
            raise Overloaded(
                "The server is at capacity: too many requests are waiting. Retry shortly.", retry_after=1.0
            ) from None
        offset = len(echo)
        try:
            if echo:
                yield Delta(text=echo, index=index)
            async for out in handle:
                if out.error is not None:
                    if out.error == "request timed out":
                        raise RequestTimedOut("The request took longer than the server's request timeout.")
                    raise EngineFailure(out.error)
                logprobs = None
                if out.logprobs:
                    if plan.legacy_logprobs:
                        logprobs = completion_logprobs(out.logprobs, offset)
                    else:
                        logprobs = chat_logprobs(out.logprobs)
                offset += len(out.text)
                usage = None
                if out.finish_reason is not None:
                    usage = TokenUsage(out.prompt_tokens, out.completion_tokens, out.cached_tokens)
                yield Delta(
                    text=out.text,
                    index=index,
                    finish_reason=str(out.finish_reason) if out.finish_reason else None,
                    usage=usage,
                    logprobs=logprobs,
                )
        finally:
            handle.abort()

    def _sampling(self, request: SamplingFields, index: int) -> SamplingParams:
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
            top_k=DEFAULT_TOP_K if request.top_k is None else request.top_k,
            min_p=DEFAULT_MIN_P if request.min_p is None else request.min_p,
            presence_penalty=request.presence_penalty or 0.0,
            frequency_penalty=request.frequency_penalty or 0.0,
            repeat_penalty=1.0 if request.repeat_penalty is None else request.repeat_penalty,
            # Each of n choices gets its own, still reproducible, seed.
            seed=None if request.seed is None else (request.seed + index) & 0xFFFFFFFF,
            logit_bias=tuple(bias),
        )
