"""The in-process provider: requests become token prompts for the local llama.cpp engine."""

from __future__ import annotations

import asyncio
import dataclasses
from collections.abc import AsyncIterator, Callable
from typing import Any

from ..engine import Engine, EngineRequest, EngineUnavailable, QueueFull, SamplingParams
from ..engine.chat_template import TemplateError
from ..errors import (
    ContextLengthExceeded,
    EngineFailure,
    InvalidRequest,
    Overloaded,
    RequestTimedOut,
    ServiceUnavailable,
    UnsupportedParameter,
)
from ..protocol import (
    ChatCompletionRequest,
    CompletionRequest,
    CountTokensRequest,
    MessagesRequest,
    SamplingFields,
    new_id,
)
from ..protocol.anthropic import ImageBlock
from .base import Delta, MessageEvent, Provider, ProviderStats, TokenUsage, chat_from_messages
from .choices import chat_logprobs, completion_logprobs, merge, shape_tool_calls
from .reasoning import CLOSE, OPEN, split_reasoning
from .tools import (
    TOOL_CALL_CLOSE,
    TOOL_CALL_OPEN,
    call_schema,
    enforced_in_auto,
    max_calls,
    message_dicts,
    offered_tools,
    tool_mode,
)

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
    clamp: bool = False  # max_tokens beyond the context is shortened, not refused


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

    def is_healthy(self) -> bool:
        return self.engine.scheduler.failure is None

    def stats(self) -> ProviderStats:
        sched = self.engine.scheduler
        s = sched.stats
        return ProviderStats(
            slots_active=sched.n_active,
            slots_total=sched.n_slots,
            requests_waiting=sched.n_waiting,
            requests_finished=s.requests_finished,
            prompt_tokens=s.prompt_tokens,
            cached_tokens=s.cached_tokens,
            completion_tokens=s.completion_tokens,
            steps=s.steps,
            decode_seconds=s.decode_seconds,
            cache_hits=s.cache_hits,
            cache_misses=s.cache_misses,
            cache_restored_tokens=s.cache_restored_tokens,
            cache_saves=s.cache_saves,
            cache_evictions=s.cache_evictions,
            cache_released_slots=s.cache_released_slots,
            shared_prompt_tokens=s.shared_prompt_tokens,
            cache_bytes=s.cache_bytes,
            cache_entries=s.cache_entries,
            cache_seconds=s.cache_seconds,
            cache_pause_max_seconds=s.cache_pause_max_seconds,
            cache_disk_hits=s.cache_disk_hits,
            cache_disk_writes=s.cache_disk_writes,
            cache_disk_bytes=s.cache_disk_bytes,
            cache_disk_entries=s.cache_disk_entries,
        )

    # ------------------------------------------------------------------ requests

    def chat(self, request: ChatCompletionRequest, *, model: str) -> AsyncIterator[Delta]:
        return self._chat(request, thinking=request.enable_thinking, clamp=False)

    async def _chat(
        self, request: ChatCompletionRequest, *, thinking: bool | None, clamp: bool
    ) -> AsyncIterator[Delta]:
        """``thinking``: turn the template's thinking mode on or off (None: the template's default);
        ``clamp``: shorten ``max_tokens`` to the room left in the context instead of refusing it."""
        self._check_n(request)
        mode = tool_mode(request)
        # Rendering, tokenizing and compiling a schema grow with the request: off the event loop.
        prompt, grammar, tagged = await asyncio.to_thread(self._chat_prompt, request, mode, thinking)
        top = (request.top_logprobs or 0) if request.logprobs else None
        plan = _Plan(
            prompt,
            request.max_new_tokens,
            "messages",
            grammar=grammar,
            top_logprobs=top,
            group=_group(request),
            clamp=clamp,
        )
        # A tagged-calls grammar leaves the answer free text (reasoning included); others make it JSON.
        constrained = grammar is not None and not tagged
        thinks = self.engine.template_thinks and not constrained
        opened = thinks and self._opens_thinking(prompt)
        choices: list[AsyncIterator[Delta]] = []
        for i in range(request.n or 1):
            choice = self._generate(plan, request, index=i)
            if thinks:
                choice = split_reasoning(choice, opened=opened)
            if mode != "none":
                choice = shape_tool_calls(choice, tools=list(request.tools or []), constrained=constrained)
            choices.append(choice)
        async for delta in merge(choices):
            yield delta

    def _chat_prompt(
        self, request: ChatCompletionRequest, mode: str, thinking: bool | None
    ) -> tuple[list[int], str | None, bool]:
        """The prompt's tokens, the output grammar if any, and whether that grammar is the tagged-calls
        one of optional calls (runs in a worker thread)."""
        prompt = self._render(request, mode, thinking)
        if enforced_in_auto(request):
            return prompt, self._tagged_grammar(request, prompt), True
        return prompt, self._grammar(request, mode), False

    def _opens_thinking(self, prompt: list[int]) -> bool:
        """Whether the rendered prompt already opened the reasoning (the model goes on inside it)."""
        return self.engine.detokenize(prompt[-8:]).rstrip().endswith(OPEN)

    def messages(self, request: MessagesRequest, *, model: str) -> AsyncIterator[Delta | MessageEvent]:
        """Claude clients always send ``thinking`` and a large ``max_tokens``: a model without a thinking
        mode simply does not think, and the answer is as long as the context leaves room for."""
        self._check_anthropic(request)
        return self._chat(chat_from_messages(request), thinking=request.thinking_enabled, clamp=True)

    async def count_tokens(self, request: CountTokensRequest, *, model: str) -> int:
        self._check_anthropic(request)
        chat = chat_from_messages(request)
        rendered = await asyncio.to_thread(self._render, chat, tool_mode(chat), request.thinking_enabled)
        return len(rendered)

    @staticmethod
    def _check_anthropic(request: CountTokensRequest) -> None:
        if any(isinstance(b, ImageBlock) for b in request.blocks()):
            raise UnsupportedParameter(
                "This model does not read images (image content blocks).", param="messages"
            )

    def _render(self, request: ChatCompletionRequest, mode: str, thinking: bool | None = None) -> list[int]:
        """The prompt's tokens: the chat template over the messages, with the tools when they are on."""
        native = mode != "none" and self.engine.template_renders_tools
        extra: dict[str, Any] = {}
        if thinking is not None and self.engine.template_thinks:
            extra["enable_thinking"] = thinking
        if native:
            extra["tools"] = [t.model_dump(exclude_none=True) for t in offered_tools(request)]
        try:
            return self.engine.render_chat(message_dicts(request, native=native), **extra)
        except TemplateError as exc:
            raise InvalidRequest(str(exc), param="messages") from exc

    async def complete(self, request: CompletionRequest, *, model: str) -> AsyncIterator[Delta]:
        self._check_n(request)
        if request.suffix:
            raise UnsupportedParameter("suffix (fill-in-the-middle) is not supported", param="suffix")
        prompt, echoed = await asyncio.to_thread(self._completion_prompt, request)
        plan = _Plan(
            prompt,
            request.max_tokens,
            "prompt",
            top_logprobs=request.logprobs,
            legacy_logprobs=True,
            group=_group(request),
        )
        choices = [self._generate(plan, request, index=i, echo=echoed) for i in range(request.n or 1)]
        async for delta in merge(choices):
            yield delta

    def _completion_prompt(self, request: CompletionRequest) -> tuple[list[int], str]:
        """The prompt's tokens and the text to echo (runs in a worker thread)."""
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
        echoed = ""
        if request.echo:
            echoed = source if isinstance(source, str) else self.engine.detokenize(prompt)
        return prompt, echoed

    def _check_n(self, request: SamplingFields) -> None:
        """More choices than the engine can ever hold at once is the request's fault, not a busy server."""
        capacity = self.engine.scheduler.capacity
        if request.n is not None and request.n > capacity:
            raise InvalidRequest(
                f"n must be at most {capacity} on this server (its slots plus its waiting queue).", param="n"
            )

    def _grammar(self, request: ChatCompletionRequest, mode: str) -> str | None:
        from ..engine.json_schema import JSON_OBJECT_GBNF, schema_to_gbnf

        if mode in ("required", "named"):
            return self._compiled(call_schema(request), "tools", schema_to_gbnf)
        fmt = request.response_format
        if fmt is not None and fmt.type == "json_object":
            return JSON_OBJECT_GBNF
        if fmt is not None and fmt.type == "json_schema":
            assert fmt.json_schema is not None
            schema = fmt.json_schema.schema_
            return self._compiled(schema, "response_format", schema_to_gbnf) if schema else JSON_OBJECT_GBNF
        return None

    def _tagged_grammar(self, request: ChatCompletionRequest, prompt: list[int]) -> str:
        from ..engine.call_grammar import tagged_calls_gbnf

        think = (OPEN, CLOSE) if self.engine.template_thinks else None
        opened = think is not None and self._opens_thinking(prompt)

        def build(schema: dict[str, Any]) -> str:
            return tagged_calls_gbnf(
                schema,
                open_tag=TOOL_CALL_OPEN,
                close_tag=TOOL_CALL_CLOSE,
                max_calls=max_calls(request),
                think=think,
                thinking_open=opened,
            )

        return self._compiled(call_schema(request, one=True), "tools", build)

    def _compiled(self, schema: dict[str, Any], param: str, build: Callable[[dict[str, Any]], str]) -> str:
        """The grammar ``build`` makes of ``schema``, checked by llama.cpp. A custom tool's format that
        llama.cpp cannot take (left recursion, say) is left unenforced rather than refused."""
        from ..engine.json_schema import UnsupportedSchema

        try:
            gbnf = build(schema)
            parses = self.engine.check_grammar(gbnf)
            if not parses and _has_text_grammar(schema):
                gbnf = build(_without_text_grammars(schema))
                parses = self.engine.check_grammar(gbnf)
        except UnsupportedSchema as exc:
            raise UnsupportedParameter(
                f"JSON schema keyword '{exc.keyword}' (at {exc.path or 'the root'}) is not supported: {exc}",
                param=param,
            ) from exc
        if not parses:
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
                tokens=len(prompt),
                limit=n_ctx,
            )
        if plan.clamp and max_tokens is not None:
            max_tokens = min(max_tokens, n_ctx - len(prompt))
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
            tenant=request.tenant,
        )
        try:
            handle = self.engine.submit(engine_request)
        except QueueFull as exc:
            raise Overloaded(
                "The server is at capacity: too many requests are waiting. Retry shortly.",
                retry_after=exc.retry_after,
            ) from None
        except EngineUnavailable as exc:
            raise ServiceUnavailable(f"The model is not available: {exc}.") from None
        offset = len(echo)
        is_first = True
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
                elif is_first:
                    # The prompt's size, known once generation starts (Anthropic streams report it first).
                    usage = TokenUsage(out.prompt_tokens, 0, out.cached_tokens)
                is_first = False
                yield Delta(
                    text=out.text,
                    index=index,
                    finish_reason=str(out.finish_reason) if out.finish_reason else None,
                    usage=usage,
                    logprobs=logprobs,
                    stop_sequence=out.stop_sequence,
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


def _has_text_grammar(schema: Any) -> bool:
    if isinstance(schema, dict):
        return "x-grammar" in schema or any(_has_text_grammar(v) for v in schema.values())
    return isinstance(schema, list) and any(_has_text_grammar(v) for v in schema)


def _without_text_grammars(schema: Any) -> Any:
    if isinstance(schema, dict):
        return {k: _without_text_grammars(v) for k, v in schema.items() if k != "x-grammar"}
    return [_without_text_grammars(v) for v in schema] if isinstance(schema, list) else schema
