// A small markdown renderer that builds DOM nodes and never parses HTML: every piece of model text
// becomes a text node, so "<script>" or "<img onerror=...>" in an answer shows as text.
// Covers what chat answers use: fenced code blocks (with a copy button), headings, lists, quotes,
// rules, paragraphs, and inline code, bold, italic and http(s) links.
"use strict";

(function () {
  function el(tag, className) {
    const node = document.createElement(tag);
    if (className) node.className = className;
    return node;
  }

  function copyButton(getText) {
    const button = el("button", "copy");
    button.type = "button";
    button.textContent = "Copy";
    button.setAttribute("aria-label", "Copy code");
    button.addEventListener("click", async () => {
      const text = getText();
      try {
        await navigator.clipboard.writeText(text);
      } catch {
        const area = document.createElement("textarea");
        area.value = text;
        document.body.appendChild(area);
        area.select();
        document.execCommand("copy");
        area.remove();
      }
      button.textContent = "Copied";
      setTimeout(() => { button.textContent = "Copy"; }, 1500);
    });
    return button;
  }

  function codeBlock(lang, text) {
    const wrap = el("div", "code");
    const bar = el("div", "code-bar");
    const label = el("span", "code-lang");
    label.textContent = lang || "code";
    const code = el("code");
    code.textContent = text;
    bar.append(label, copyButton(() => code.textContent));
    const pre = el("pre");
    pre.appendChild(code);
    wrap.append(bar, pre);
    return wrap;
  }

  // Inline spans: `code`, **bold**, *italic* / _italic_, [text](http...). Nothing else is special.
  const INLINE = /`([^`\n]+)`|\*\*([^*\n]+)\*\*|__([^_\n]+)__|\*([^*\s][^*\n]*)\*|\b_([^_\n]+)_\b|\[([^\]\n]+)\]\((https?:\/\/[^\s)]+)\)/g;

  function inline(parent, text) {
    let last = 0;
    for (const m of text.matchAll(INLINE)) {
      if (m.index > last) parent.appendChild(document.createTextNode(text.slice(last, m.index)));
      let node;
      if (m[1] !== undefined) {
        node = el("code");
        node.textContent = m[1];
      } else if (m[2] !== undefined || m[3] !== undefined) {
        node = el("strong");
        inline(node, m[2] ?? m[3]);
      } else if (m[4] !== undefined || m[5] !== undefined) {
        node = el("em");
        inline(node, m[4] ?? m[5]);
      } else {
        node = el("a");
        node.href = m[7];
        node.rel = "noopener noreferrer nofollow";
        node.target = "_blank";
        node.textContent = m[6];
      }
      parent.appendChild(node);
      last = m.index + m[0].length;
    }
    if (last < text.length) parent.appendChild(document.createTextNode(text.slice(last)));
  }

  function paragraph(lines) {
    const p = el("p");
    lines.forEach((line, i) => {
      if (i) p.appendChild(el("br"));
      inline(p, line);
    });
    return p;
  }

  const FENCE = /^\s*(```|~~~)\s*([\w+#.-]*)\s*$/;
  const HEADING = /^(#{1,6})\s+(.*)$/;
  const BULLET = /^\s*[-*+]\s+(.*)$/;
  const NUMBERED = /^\s*(\d{1,9})[.)]\s+(.*)$/;
  const QUOTE = /^\s*>\s?(.*)$/;
  const RULE = /^\s*([-*_])(\s*\1){2,}\s*$/;

  function render(text) {
    const root = document.createDocumentFragment();
    const lines = text.replace(/\r\n?/g, "\n").split("\n");
    let i = 0;
    while (i < lines.length) {
      const line = lines[i];
      const fence = FENCE.exec(line);
      if (fence) {
        const body = [];
        i++;
        while (i < lines.length && !lines[i].trim().startsWith(fence[1])) body.push(lines[i++]);
        i++; // the closing fence (absent while an answer is still streaming in)
        root.appendChild(codeBlock(fence[2], body.join("\n")));
        continue;
      }
      if (!line.trim()) { i++; continue; }
      const heading = HEADING.exec(line);
      if (heading) {
        const h = el("h" + Math.min(6, heading[1].length + 2));
        inline(h, heading[2]);
        root.appendChild(h);
        i++;
        continue;
      }
      if (RULE.test(line)) { root.appendChild(el("hr")); i++; continue; }
      if (QUOTE.test(line)) {
        const body = [];
        while (i < lines.length && QUOTE.test(lines[i])) body.push(QUOTE.exec(lines[i++])[1]);
        const quote = el("blockquote");
        quote.appendChild(render(body.join("\n")));
        root.appendChild(quote);
        continue;
      }
      const isBullet = BULLET.test(line);
      if (isBullet || NUMBERED.test(line)) {
        const pattern = isBullet ? BULLET : NUMBERED;
        const list = el(isBullet ? "ul" : "ol");
        if (!isBullet) list.start = Number(NUMBERED.exec(line)[1]);
        while (i < lines.length && pattern.test(lines[i])) {
          const m = pattern.exec(lines[i++]);
          const item = el("li");
          inline(item, isBullet ? m[1] : m[2]);
          list.appendChild(item);
        }
        root.appendChild(list);
        continue;
      }
      const body = [];
      while (
        i < lines.length && lines[i].trim() && !FENCE.test(lines[i]) && !HEADING.test(lines[i]) &&
        !BULLET.test(lines[i]) && !NUMBERED.test(lines[i]) && !QUOTE.test(lines[i])
      ) body.push(lines[i++]);
      root.appendChild(paragraph(body));
    }
    return root;
  }

  window.renderMarkdown = render;
})();
