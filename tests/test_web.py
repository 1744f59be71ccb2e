"""The chat page at /, end to end in a real browser: Debian's chromium driven by Playwright.

One server serves the embedded model and, through a fake upstream, a model whose answers are HTML
and markdown. Auth is on, so the page has to send the key typed into its settings.
"""

from __future__ import annotations

import json
import shutil
import time
from collections.abc import Iterator
from pathlib import Path
from typing import Any

import httpx
import pytest
from playwright.sync_api import Browser, BrowserContext, Page, expect, sync_playwright

from conftest import RunningServer, running_server
from fake_upstream import FakeUpstream

KEY = "sk-page-3b9d1f"
HTML_MODEL = "html-model"
LONG = "x" * 300
HTML_PIECES = (
    "<img src=x onerror=alert(1)>",
    " and <script>alert(2)</script>\n\n",
    "```python\nprint('" + LONG + "')\n```\n\n",
    "**bold** " + "y" * 200,
)
STATIC = Path(__file__).resolve().parent.parent / "src" / "interference" / "api" / "static"


def chromium_path() -> str:
    found = shutil.which("chromium") or shutil.which("chromium-browser")
    if found:
        return found
    if shutil.which("apt-get") is None:
        pytest.skip("no chromium and no apt-get to install it: browser tests need Debian's chromium")
    pytest.fail("chromium is missing: `apt-get install chromium` (scripts/test installs it)")


@pytest.fixture(scope="module")
def upstream() -> Iterator[FakeUpstream]:
    fake = FakeUpstream(pieces=HTML_PIECES).start()
    yield fake
    fake.stop()


@pytest.fixture(scope="module")
def web(upstream: FakeUpstream, tmp_path_factory: pytest.TempPathFactory) -> Iterator[RunningServer]:
    tmp = tmp_path_factory.mktemp("web")
    config = tmp / "web.toml"
    config.write_text(
        f'[[models]]\nname = "{HTML_MODEL}"\n\n[[models.deployments]]\n'
        f'type = "openai"\nbase_url = "{upstream.url}"\n'
    )
    with running_server("--config", str(config), "--api-key", KEY, "--parallel", "2", tmp=tmp) as server:
        yield server


@pytest.fixture(scope="module")
def browser() -> Iterator[Browser]:
    path = chromium_path()
    expect.set_options(timeout=60_000)  # the machine may be busy: a first token can take seconds
    with sync_playwright() as p:
        b = p.chromium.launch(executable_path=path, args=["--no-sandbox", "--disable-gpu"])
        yield b
        b.close()


def _context(browser: Browser, *, key: bool = True, **options: Any) -> BrowserContext:
    context = browser.new_context(**options)
    context.set_default_timeout(60_000)
    if key:
        # As if the person had typed the key in once: the page keeps it in localStorage.
        context.add_init_script(f"localStorage.setItem('interference.apiKey', JSON.stringify('{KEY}'))")
    return context


@pytest.fixture()
def page(browser: Browser) -> Iterator[Page]:
    context = _context(browser)
    yield context.new_page()
    context.close()


def _open(page: Page, web: RunningServer) -> None:
    page.goto(web.url + "/")
    expect(page.locator("#model[data-loaded=true]")).to_have_count(1)


def _send(page: Page, text: str) -> None:
    page.get_by_role("textbox", name="Message").fill(text)
    page.get_by_role("textbox", name="Message").press("Enter")


def _answers(page: Page) -> Any:
    return page.get_by_role("log").locator("[data-role=assistant]")


def _wait_done(page: Page) -> None:
    expect(page.get_by_role("button", name="Send")).to_be_visible(timeout=180_000)


def _slots_active(web: RunningServer) -> float:
    return web.metrics()["interference_engine_slots_active"]


def test_page_is_small_public_and_strict(web: RunningServer) -> None:
    total = sum(f.stat().st_size for f in STATIC.iterdir())
    assert total <= 150_000
    page = httpx.get(web.url + "/", timeout=10)  # no key: the page itself is public
    assert page.status_code == 200 and page.headers["content-type"].startswith("text/html")
    assert "script-src 'self'" in page.headers["content-security-policy"]
    for name in ("app.js", "markdown.js", "app.css"):
        assert httpx.get(f"{web.url}/static/{name}", timeout=10).status_code == 200
    missing = httpx.get(web.url + "/static/nope.js", timeout=10)
    assert missing.status_code == 404 and missing.json()["error"]["type"] == "invalid_request_error"
    # The API behind it still wants the key, and the root mount still serves the API.
    assert httpx.get(web.url + "/v1/models", timeout=10).status_code == 401
    models = httpx.get(web.url + "/models", headers={"Authorization": f"Bearer {KEY}"}, timeout=10)
    assert models.status_code == 200


def test_key_field_then_pick_a_chat_model(web: RunningServer, browser: Browser, tmp_path: Path) -> None:
    context = _context(browser, key=False)
    page = context.new_page()
    page.goto(web.url + "/")
    alert = page.get_by_role("alert")
    expect(alert).to_contain_text("API key")
    page.get_by_role("button", name="Settings").click()
    page.get_by_label("API key").fill(KEY)
    page.get_by_label("API key").press("Tab")  # change event: the page stores the key and retries
    expect(page.locator("#model[data-loaded=true]")).to_have_count(1)
    expect(alert).to_be_hidden()

    cards = httpx.get(web.url + "/v1/models", headers={"Authorization": f"Bearer {KEY}"}, timeout=10).json()
    chat = [c["id"] for c in cards["data"] if c["kind"] == "chat"]
    embedding = [c["id"] for c in cards["data"] if c["kind"] == "embedding"]
    default = [c["id"] for c in cards["data"] if c["default"]]
    assert embedding and len(default) == 1 and HTML_MODEL in chat
    model = page.get_by_role("combobox", name="Model")
    offered = model.locator("option").evaluate_all("options => options.map(o => o.value)")
    assert offered == chat  # chat models only, in the server's order
    expect(model).to_have_value(default[0])

    model.select_option("gpt-4o-mini")
    page.screenshot(path=str(tmp_path / "picked.png"))
    page.reload()
    expect(page.locator("#model[data-loaded=true]")).to_have_count(1)
    expect(model).to_have_value("gpt-4o-mini")  # the choice and the key outlive a reload
    context.close()


def test_answer_streams_in(web: RunningServer, page: Page, tmp_path: Path) -> None:
    _open(page, web)
    page.get_by_role("button", name="Settings").click()
    page.get_by_label("Max tokens").fill("48")  # enough to watch it grow, short enough to finish
    _send(page, "write a poem about a tree")
    expect(page.get_by_role("button", name="Stop")).to_be_visible()
    answer = _answers(page).last.locator(".body")
    seen: list[int] = []
    deadline = time.monotonic() + 120
    while len(seen) < 3 and time.monotonic() < deadline:
        length = len(answer.inner_text())
        if length and (not seen or length > seen[-1]):
            seen.append(length)
        page.wait_for_timeout(50)
    page.screenshot(path=str(tmp_path / "streaming.png"))
    assert len(seen) >= 2 and seen == sorted(seen), seen  # grew over at least two observations
    _wait_done(page)
    stats = _answers(page).last.locator(".stats")
    expect(stats).to_contain_text("TTFT")
    expect(stats).to_contain_text("tokens/s")
    page.screenshot(path=str(tmp_path / "answered.png"), full_page=True)


def test_stop_frees_the_slot(web: RunningServer, page: Page) -> None:
    _open(page, web)
    _send(page, "write a poem about a tree")
    expect(_answers(page).last.locator(".body")).not_to_be_empty(timeout=120_000)
    assert _slots_active(web) >= 1
    page.get_by_role("button", name="Stop").click()
    expect(page.get_by_role("button", name="Send")).to_be_visible()
    expect(_answers(page).last.locator(".stats")).to_contain_text("stopped")
    deadline = time.monotonic() + 30
    while _slots_active(web) != 0 and time.monotonic() < deadline:
        time.sleep(0.1)
    assert _slots_active(web) == 0


def test_reload_restores_the_conversation(web: RunningServer, page: Page) -> None:
    _open(page, web)
    page.get_by_role("button", name="New chat").click()
    page.get_by_role("button", name="Settings").click()
    page.get_by_label("Max tokens").fill("8")
    _send(page, "name three colours please")
    _wait_done(page)
    answer = _answers(page).last.locator(".body").inner_text()
    assert answer
    conversations = page.get_by_role("complementary", name="Conversations").get_by_role("listitem")
    titled = conversations.filter(has_text="name three colours please")
    expect(titled).to_have_count(1)

    page.reload()
    log = page.get_by_role("log")
    expect(log.locator("[data-role=user]")).to_have_text(["name three colours please"])
    expect(_answers(page)).to_have_count(1)
    # Rendered Markdown (a list, say) reads the same as before: compare what is shown, not raw text nodes.
    expect(_answers(page).locator(".body")).to_have_text(answer, use_inner_text=True)
    expect(page.get_by_label("Max tokens")).to_have_value("8")

    # Rename, then delete it: the list follows, and a reload agrees.
    titled.get_by_role("button", name="Rename").click()
    title = page.get_by_label("Conversation title")
    title.fill("Colours")
    title.press("Enter")
    expect(conversations.filter(has_text="Colours")).to_have_count(1)
    page.reload()
    renamed = conversations.filter(has_text="Colours")
    expect(renamed).to_have_count(1)
    renamed.get_by_role("button", name="Delete").click()
    renamed.get_by_role("button", name="Delete").click()  # the second click confirms
    expect(conversations.filter(has_text="Colours")).to_have_count(0)
    expect(page.get_by_role("log").locator("[data-role]")).to_have_count(0)


def test_html_in_answers_stays_inert(
    web: RunningServer, upstream: FakeUpstream, page: Page, tmp_path: Path
) -> None:
    dialogs: list[str] = []
    page.on("dialog", lambda d: (dialogs.append(d.message), d.dismiss()))
    _open(page, web)
    page.get_by_role("combobox", name="Model").select_option(HTML_MODEL)
    page.get_by_role("button", name="Settings").click()
    page.get_by_label("System prompt").fill("Answer in HTML.")
    page.get_by_label("Temperature").fill("0.3")
    page.get_by_label("Max tokens").fill("")
    _send(page, "show me some html")
    _wait_done(page)
    body = _answers(page).last.locator(".body")
    expect(body).to_contain_text("<img src=x onerror=alert(1)>")
    expect(body).to_contain_text("<script>alert(2)</script>")
    page.wait_for_timeout(300)  # an onerror would have fired by now
    assert page.locator("img").count() == 0
    assert page.get_by_role("log").locator("script").count() == 0
    assert dialogs == []
    # Markdown still renders: the code block is a real <pre> with a copy button, bold is bold.
    expect(body.locator("pre code")).to_have_text(f"print('{LONG}')")
    expect(body.get_by_role("button", name="Copy code")).to_have_count(1)
    expect(body.locator("strong")).to_have_text("bold")
    page.screenshot(path=str(tmp_path / "inert.png"), full_page=True)

    sent = upstream.bodies[-1]
    assert sent["stream"] is True and sent["stream_options"] == {"include_usage": True}
    assert sent["max_tokens"] == 1024 and sent["temperature"] == 0.3
    assert sent["messages"][0] == {"role": "system", "content": "Answer in HTML."}
    assert sent["messages"][-1] == {"role": "user", "content": "show me some html"}


def test_narrow_viewport(web: RunningServer, browser: Browser, tmp_path: Path) -> None:
    context = _context(browser, viewport={"width": 375, "height": 740}, is_mobile=True, has_touch=True)
    page = context.new_page()
    _open(page, web)
    page.get_by_role("combobox", name="Model").select_option(HTML_MODEL)
    _send(page, "a long line " + "z" * 200)
    _wait_done(page)

    def no_horizontal_scroll() -> None:
        widths = page.evaluate(
            "[document.documentElement.scrollWidth, document.body.scrollWidth, window.innerWidth]"
        )
        assert max(widths[:2]) <= widths[2] == 375, widths

    no_horizontal_scroll()
    for name in ("Message", "Send"):
        box = page.get_by_role("button" if name == "Send" else "textbox", name=name).bounding_box()
        assert box is not None and box["x"] >= 0 and box["x"] + box["width"] <= 375
    page.screenshot(path=str(tmp_path / "narrow.png"))
    page.get_by_role("button", name="Show conversations").click()
    expect(page.get_by_role("button", name="New chat")).to_be_in_viewport()
    page.wait_for_timeout(300)  # the drawer slides in
    no_horizontal_scroll()
    page.screenshot(path=str(tmp_path / "narrow-sidebar.png"))
    context.close()


def test_keys_and_errors_in_plain_words(web: RunningServer, page: Page) -> None:
    # The browser answers in the server's place: a busy server is hard to make on purpose.
    page.route(
        "**/v1/chat/completions",
        lambda route: route.fulfill(
            status=429,
            headers={"Retry-After": "7", "Content-Type": "application/json"},
            body=json.dumps(
                {"error": {"message": "busy", "type": "server_busy", "param": None, "code": None}}
            ),
        ),
    )
    _open(page, web)
    box = page.get_by_role("textbox", name="Message")
    box.fill("line one")
    box.press("Shift+Enter")
    box.press_sequentially("line two")
    expect(box).to_have_value("line one\nline two")  # Shift+Enter is a new line, nothing was sent
    expect(page.get_by_role("log").locator("[data-role=user]")).to_have_count(0)
    box.press("Enter")
    alert = page.get_by_role("alert")
    expect(alert).to_contain_text("Server busy, retry in 7 s")
    expect(page.get_by_role("log").locator("[data-role=user]")).to_have_text(["line one\nline two"])
    expect(_answers(page)).to_have_count(0)  # no empty answer is kept
    page.wait_for_timeout(500)
    expect(alert).to_be_visible()  # it stays until dismissed
    page.get_by_role("button", name="Dismiss error").click()
    expect(alert).to_be_hidden()
    _send(page, "again")
    expect(alert).to_contain_text("retry in 7 s")
    page.unroute("**/v1/chat/completions")
    page.get_by_role("button", name="Settings").click()
    page.get_by_label("Max tokens").fill("2")
    _send(page, "and now for real")
    expect(alert).to_be_hidden()  # the next send clears it
    _wait_done(page)


HOSTILE = [
    "[click](javascript:alert(1))",
    "[x](data:text/html,<script>alert(1)</script>)",
    "<a href=javascript:alert(1)>a</a> <iframe src=x></iframe> <svg onload=alert(1)>",
    "```\n</code></pre><img src=x onerror=alert(1)>\n```",
    "**<b onmouseover=alert(1)>b</b>** _<i>i</i>_ `<u>u</u>` > <style>*{}</style>",
    "# <h1>t</h1>\n- <li>x</li>\n1. [ok](https://example.com/a?b=<c>)",
]


def test_markdown_builds_only_safe_elements(web: RunningServer, page: Page) -> None:
    _open(page, web)
    found = page.evaluate(
        """(inputs) => inputs.map((text) => {
            const box = document.createElement("div");
            box.appendChild(window.renderMarkdown(text));
            return {
                text: box.textContent,
                tags: [...box.querySelectorAll("*")].map((e) => e.tagName.toLowerCase()),
                attrs: [...box.querySelectorAll("*")].flatMap((e) => [...e.attributes].map((a) => a.name)),
                hrefs: [...box.querySelectorAll("a")].map((a) => a.href),
            };
        })""",
        HOSTILE,
    )
    allowed_tags = {"p", "br", "strong", "em", "code", "pre", "div", "span", "button", "a", "ul", "ol", "li"}
    allowed_tags |= {"blockquote", "hr", "h3", "h4", "h5", "h6"}
    for text, out in zip(HOSTILE, found, strict=True):
        assert set(out["tags"]) <= allowed_tags, (text, out["tags"])
        assert set(out["attrs"]) <= {"class", "type", "aria-label", "href", "rel", "target", "start"}, out
        assert all(href.startswith("https://") for href in out["hrefs"]), out["hrefs"]
    assert "<img src=x onerror=alert(1)>" in found[3]["text"]  # a fence cannot be closed by HTML
    assert found[5]["hrefs"] == ["https://example.com/a?b=%3Cc%3E"]
