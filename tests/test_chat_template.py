"""Chat templates render as Hugging Face renders them; a broken one stops start-up with one line."""

from __future__ import annotations

import json
import subprocess
from pathlib import Path

import pytest

from conftest import free_port, serve_command
from interference.engine import embedded_model_path
from interference.engine.chat_template import ChatTemplate, TemplateError

TOOL = {"name": "get_weather", "parameters": {"type": "object", "properties": {"city": {"type": "string"}}}}


def test_tojson_keeps_key_order_and_does_not_escape_html() -> None:
    template = ChatTemplate("{{ tools | tojson }}")
    value = {"z": "<b>&'", "a": [1, {"y": 2, "b": 3}], "m": "\u00e9\u2713"}
    assert template.render([], tools=value) == json.dumps(value, ensure_ascii=False)
    assert (
        template.render([], tools=value) == '{"z": "<b>&\'", "a": [1, {"y": 2, "b": 3}], "m": "\u00e9\u2713"}'
    )


def test_tojson_takes_hugging_face_arguments() -> None:
    template = ChatTemplate("{{ tools | tojson(indent=2) }}|{{ tools | tojson(sort_keys=true) }}")
    indented, ordered = template.render([], tools={"b": 1, "a": 2}).split("|")
    assert indented == '{\n  "b": 1,\n  "a": 2\n}'
    assert ordered == '{"a": 2, "b": 1}'


def test_tool_schemas_reach_the_prompt_unchanged() -> None:
    source = (
        "{% for t in tools %}{{ t | tojson }}\n{% endfor %}{% for m in messages %}{{ m.content }}{% endfor %}"
    )
    text = ChatTemplate(source).render([{"role": "user", "content": "hi"}], tools=[TOOL])
    assert text == json.dumps(TOOL) + "\nhi"


def test_generation_tag_keeps_its_body() -> None:
    source = (
        "{% for m in messages %}{% if m.role == 'assistant' %}{% generation %}[{{ m.content }}]"
        "{% endgeneration %}{% else %}{{ m.content }}{% endif %}{% endfor %}"
    )
    messages = [{"role": "user", "content": "q"}, {"role": "assistant", "content": "a"}]
    assert ChatTemplate(source).render(messages) == "q[a]"


@pytest.mark.parametrize("source", ["{% if %}", "{{ messages | no_such_filter }}", "{% for m in messages %}"])
def test_a_broken_template_fails_when_loaded(source: str) -> None:
    with pytest.raises(TemplateError, match="does not compile"):
        ChatTemplate(source)


def test_a_template_that_raises_fails_when_rendered() -> None:
    template = ChatTemplate("{{ raise_exception('roles must alternate') }}")
    with pytest.raises(TemplateError, match="roles must alternate"):
        template.render([{"role": "user", "content": "hi"}])


def _with_template(source: Path, target: Path, template: str) -> None:
    """A copy of ``source`` whose chat template is replaced by ``template``, padded to the same length
    so that nothing else in the file moves."""
    data = source.read_bytes()
    key = b"tokenizer.chat_template"
    at = data.index(key) + len(key) + 4  # the value's type (uint32), then its length (uint64)
    length = int.from_bytes(data[at : at + 8], "little")
    replacement = template.encode().ljust(length, b" ")
    assert len(replacement) == length
    target.write_bytes(data[: at + 8] + replacement + data[at + 8 + length :])


def test_a_model_whose_template_does_not_compile_stops_start_up_with_one_line(tmp_path: Path) -> None:
    broken = tmp_path / "broken-template.gguf"
    _with_template(embedded_model_path(), broken, "{% for message in messages %}{{ message.content }")
    proc = subprocess.run(
        serve_command("--port", str(free_port()), "-m", str(broken), "--no-embeddings"),
        capture_output=True,
        text=True,
        timeout=60,
    )
    assert proc.returncode != 0
    errors = [line for line in proc.stderr.splitlines() if line.startswith("interference: error:")]
    assert len(errors) == 1, proc.stderr
    assert "chat template" in errors[0] and "broken-template.gguf" in errors[0]
    assert "Traceback" not in proc.stderr
