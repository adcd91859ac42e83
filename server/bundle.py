"""The notebook widget's front end, made at import from the viewer page's own files.

The page (server/static) is ES modules that import each other by relative path; a widget's
code (anywidget's `_esm`) is one module with nowhere to import them from. So each module's
body is wrapped in a function that returns its exports, its imports read from the modules
before it (in import order), and the whole is a function (`instance()`) that makes a fresh
set of modules for each view: two widgets in one notebook share no state. index.html's body
goes along as a tree of [tag, attributes, children] that widget.js builds element by element
(no HTML parsed), and viewer.css rewritten for the widget's shadow root. The overview's layout
worker is bundled the same way into a script the page starts from a blob URL.

The transform is for the page's own code, which keeps to a few forms (checked here): `import
{ a, b as c } from "./x.js";` and `export` before a function, class, const or let.
"""

from __future__ import annotations

import functools
import json
import re
from html.parser import HTMLParser
from pathlib import Path

STATIC = Path(__file__).parent / "static"

_IMPORT = re.compile(r'^import\s*\{([^}]*)\}\s*from\s*"\./([\w-]+\.js)";[ \t]*$', re.M)
_EXPORT = re.compile(r"^export\s+((?:async\s+)?(?:function\*?|class|const|let)\s+)([\w$]+)", re.M)
_LEFT = re.compile(r"^\s*(?:import|export)\b(?!\.meta)", re.M)


class BundleError(Exception):
    """A static module in a form the bundler does not handle (a bug of the page's code)."""


@functools.cache
def widget_esm() -> str:
    """anywidget's `_esm`: the page's modules from widget.js down, made once per view."""
    body = json.dumps(_body_tree())
    css = json.dumps(viewer_css())
    worker = json.dumps(_modules("layout-worker.js"))
    return (
        f"const BODY = {body};\nconst CSS = {css};\nconst WORKER = {worker};\n\n"
        f'function instance() {{\n{_modules("widget.js")}\nreturn m["widget.js"];\n}}\n\n'
        "export default {\n"
        "  render({ model, el }) {\n"
        '    const blob = new Blob([WORKER], { type: "text/javascript" });\n'
        "    const workerUrl = URL.createObjectURL(blob);\n"
        "    const stop = instance().startWidget({ model, el, body: BODY, css: CSS, workerUrl });\n"
        "    return () => { stop(); URL.revokeObjectURL(workerUrl); };\n"
        "  },\n"
        "};\n"
    )


@functools.cache
def viewer_css() -> str:
    """viewer.css for a shadow root: the page's `html`/`body` rules are the `.page` div's, its
    `:root` variables the host's, and the page fills the widget's height, not the window's."""
    css = (STATIC / "viewer.css").read_text(encoding="utf-8")
    css = css.replace(":root {", ":host {").replace("html, body {", ".page {")
    css = re.sub(r"^body(\s*[{>])", r".page\1", css, flags=re.M)
    rules = re.sub(r"/\*.*?\*/", "", css, flags=re.S)  # (comments may say "body")
    if re.search(r"\bbody\b|\bhtml\b", rules):
        raise BundleError("viewer.css names body or html in a form bundle.py does not rewrite")
    widget = ":host { display: block; }\n.page { height: 100%; }\n.page:focus { outline: none; }\n"
    return f"{css}\n/* a notebook widget (bundle.py) */\n{widget}"


def _modules(entry: str) -> str:
    """`const m = {}` and the modules `entry` needs (itself last), each wrapped."""
    order: list[str] = []
    _visit(entry, order, [])
    return "const m = {};\n" + "\n".join(_wrap(name) for name in order)


def _visit(name: str, order: list[str], path: list[str]) -> None:
    if name in order:
        return
    if name in path:
        raise BundleError(f"import cycle: {' -> '.join([*path, name])}")
    for _, dep in _IMPORT.findall(_source(name)):
        _visit(dep, order, [*path, name])
    order.append(name)


def _source(name: str) -> str:
    return (STATIC / name).read_text(encoding="utf-8")


def _wrap(name: str) -> str:
    """One module as `m[name] = (() => { body; return { exports }; })();`."""
    exports: list[str] = []

    def imported(match: re.Match) -> str:
        names = ", ".join(
            re.sub(r"^([\w$]+)\s+as\s+([\w$]+)$", r"\1: \2", part.strip())
            for part in match.group(1).split(",")
            if part.strip()
        )
        return f"const {{ {names} }} = m[{json.dumps(match.group(2))}];"

    def exported(match: re.Match) -> str:
        exports.append(match.group(2))
        return match.group(1) + match.group(2)

    body = _EXPORT.sub(exported, _IMPORT.sub(imported, _source(name)))
    left = _LEFT.search(body)
    if left is not None:
        line = body[: left.start()].count("\n") + 1
        raise BundleError(f"{name}:{line}: an import or export bundle.py does not handle")
    return f"m[{json.dumps(name)}] = (() => {{\n{body}\nreturn {{ {', '.join(exports)} }};\n}})();"


_VOID = {
    "area",
    "base",
    "br",
    "col",
    "embed",
    "hr",
    "img",
    "input",
    "link",
    "meta",
    "source",
    "wbr",
}


class _Tree(HTMLParser):
    """index.html's body as [tag, [[name, value] ...], children]; text as strings."""

    def __init__(self) -> None:
        super().__init__(convert_charrefs=True)
        self.stack: list[list] = []
        self.body: list | None = None

    def handle_starttag(self, tag: str, attrs: list[tuple[str, str | None]]) -> None:
        node = [tag, [[k, v or ""] for k, v in attrs], []]
        if tag == "body":
            self.body = node[2]
            self.stack = [node]
        elif self.stack:
            self.stack[-1][2].append(node)
            if tag not in _VOID:
                self.stack.append(node)

    def handle_endtag(self, tag: str) -> None:
        if tag in _VOID or not self.stack:
            return
        if self.stack[-1][0] != tag:
            raise BundleError(f"index.html: </{tag}> closes <{self.stack[-1][0]}>")
        self.stack.pop()

    def handle_data(self, data: str) -> None:
        if self.stack:
            self.stack[-1][2].append(data)


def _body_tree() -> list:
    parser = _Tree()
    parser.feed(_source("index.html"))
    if parser.body is None:
        raise BundleError("index.html has no body")
    return parser.body
