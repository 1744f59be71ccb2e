"""Chat templates: the model's own jinja2 template from its GGUF metadata."""

from __future__ import annotations

import json
from datetime import datetime
from typing import Any

import jinja2
from jinja2 import nodes
from jinja2.ext import Extension
from jinja2.parser import Parser
from jinja2.sandbox import ImmutableSandboxedEnvironment

__all__ = ["CHATML_TEMPLATE", "THINKING_MARKERS", "ChatTemplate", "TemplateError"]

# Used when a GGUF carries no template of its own.
CHATML_TEMPLATE = (
    "{% for message in messages %}"
    "{{ '<|im_start|>' + message['role'] + '\n' + message['content'] + '<|im_end|>' + '\n' }}"
    "{% endfor %}"
    "{% if add_generation_prompt %}{{ '<|im_start|>assistant\n' }}{% endif %}"
)


# What a chat template with a thinking mode mentions: Qwen3 and SmolLM3 read ``enable_thinking``; Qwen3
# and DeepSeek-R1 write ``<think>`` or cut earlier turns at ``</think>``; Qwen3 and GLM show earlier
# turns' ``reasoning_content``. Such a model writes its reasoning between ``<think>`` and ``</think>``.
THINKING_MARKERS = ("enable_thinking", "<think>", "</think>", "reasoning_content")


class TemplateError(ValueError):
    """The template could not render these messages (it raised, or it is broken)."""


def _raise_exception(message: str) -> None:
    raise TemplateError(message)


def _strftime_now(fmt: str) -> str:
    return datetime.now().strftime(fmt)


def _tojson(
    value: Any,
    ensure_ascii: bool = False,
    indent: int | None = None,
    separators: tuple[str, str] | None = None,
    sort_keys: bool = False,
) -> str:
    """``tojson`` as Hugging Face templates expect it: keys in their order and no HTML escaping (jinja's
    own sorts keys and turns ``<`` into ``\\u003c``, which changes tool schemas shown to the model)."""
    return json.dumps(
        value, ensure_ascii=ensure_ascii, indent=indent, separators=separators, sort_keys=sort_keys
    )


class _GenerationTag(Extension):
    """``{% generation %}...{% endgeneration %}`` marks the assistant's part of a training sample in
    Hugging Face templates; rendering for inference keeps its body as it is."""

    tags = {"generation"}

    def parse(self, parser: Parser) -> nodes.Node:
        lineno = next(parser.stream).lineno
        body = parser.parse_statements(("name:endgeneration",), drop_needle=True)
        return nodes.CallBlock(self.call_method("_body"), [], [], body).set_lineno(lineno)

    def _body(self, caller: Any) -> str:
        return str(caller())


class ChatTemplate:
    """A compiled chat template, rendered the way Hugging Face tokenizers render it."""

    def __init__(self, source: str | None, *, bos_token: str = "", eos_token: str = "") -> None:
        env = ImmutableSandboxedEnvironment(
            trim_blocks=True, lstrip_blocks=True, extensions=["jinja2.ext.loopcontrols", _GenerationTag]
        )
        env.filters["tojson"] = _tojson
        env.globals["raise_exception"] = _raise_exception
        env.globals["strftime_now"] = _strftime_now
        self.source = source or CHATML_TEMPLATE
        try:
            self._template = env.from_string(self.source)
        except jinja2.TemplateSyntaxError as exc:
            raise TemplateError(f"the model's chat template does not compile: {exc}") from exc
        self._bos = bos_token
        self._eos = eos_token

    @property
    def has_thinking_mode(self) -> bool:
        """Whether the template belongs to a model that reasons in ``<think>`` blocks."""
        return any(marker in self.source for marker in THINKING_MARKERS)

    def render(
        self,
        messages: list[dict[str, Any]],
        *,
        add_generation_prompt: bool = True,
        **extra: Any,
    ) -> str:
        try:
            return self._template.render(
                messages=messages,
                bos_token=self._bos,
                eos_token=self._eos,
                add_generation_prompt=add_generation_prompt,
                **extra,
            )
        except TemplateError:
            raise
        except jinja2.TemplateError as exc:
            raise TemplateError(f"chat template failed: {exc}") from exc
