"""Shared pieces of the viewer's browser tests: launching Debian's chromium through Playwright
and loading the viewer's JavaScript modules into a page."""

from __future__ import annotations

import base64
import math
import shutil
from pathlib import Path
from typing import Any

import pytest

STATIC = Path(__file__).resolve().parent.parent / "server" / "static"
CHROMIUM = "/usr/bin/chromium"
CHROMIUM_ARGS = [
    "--no-sandbox",
    "--disable-gpu",
    "--disable-background-networking",
    "--disable-component-update",
    "--disable-sync",
    "--no-first-run",
]


def launch(playwright: Any, args: list[str] = CHROMIUM_ARGS) -> Any:
    """Debian's chromium, headless (never a browser downloaded by `playwright install`)."""
    if not Path(CHROMIUM).exists() and not shutil.which("chromium"):
        pytest.fail("chromium is not installed: scripts/test installs it with apt-get")
    return playwright.chromium.launch(
        executable_path=CHROMIUM if Path(CHROMIUM).exists() else shutil.which("chromium"),
        headless=True,
        args=args,
    )


def load_module(page: Any, name: str, exports: list[str], global_name: str) -> None:
    """Run server/static/<name> as a module in `page`, its exports under window.<global_name>."""
    source = (STATIC / name).read_text()
    names = ", ".join(exports)
    page.add_script_tag(content=f"{source}\nwindow.{global_name} = {{ {names} }};", type="module")
    page.wait_for_function(f"() => window.{global_name} !== undefined")


def b64(data: bytes) -> str:
    return base64.b64encode(data).decode("ascii")


def plain(value: Any) -> Any:
    """A value in the JSON-safe form `toPlain` gives decoded values in the page."""
    if isinstance(value, float):
        if math.isnan(value):
            return {"$": "nan"}
        if math.isinf(value):
            return {"$": "inf" if value > 0 else "-inf"}
        return value
    if isinstance(value, bool) or value is None or isinstance(value, str):
        return value
    if isinstance(value, int):
        return value if abs(value) <= 2**53 - 1 else {"$big": str(value)}
    if isinstance(value, bytes):
        return {"$bin": list(value)}
    if isinstance(value, list | tuple):
        return [plain(v) for v in value]
    if isinstance(value, dict):
        return {k: plain(v) for k, v in value.items()}
    raise TypeError(type(value))


# The page-side twin of `plain`.
TO_PLAIN_JS = """
window.toPlain = function toPlain(v) {
  if (typeof v === "number") {
    if (Number.isNaN(v)) return {"$": "nan"};
    if (v === Infinity) return {"$": "inf"};
    if (v === -Infinity) return {"$": "-inf"};
    return v;
  }
  if (typeof v === "bigint") return {"$big": v.toString()};
  if (v instanceof Uint8Array) return {"$bin": Array.from(v)};
  if (Array.isArray(v)) return v.map(toPlain);
  if (v && typeof v === "object") {
    const out = {};
    for (const [k, x] of Object.entries(v)) {
      Object.defineProperty(out, k, {value: toPlain(x), enumerable: true, writable: true});
    }
    return out;
  }
  return v;
};
"""
