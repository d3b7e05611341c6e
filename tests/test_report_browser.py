"""The run report in real headless Chromium (Debian package ``chromium``): it renders, logs nothing to the
console, loads nothing from outside, decodes every image, fits a 1280 px window, and shows a per-layer
table for every design. Chromium is driven over its DevTools protocol on a pipe (no Python dependency)."""

from __future__ import annotations

import contextlib
import json
import os
import select
import shutil
import subprocess
import time
from pathlib import Path
from typing import Any

import pytest

from test_report_run import quick_run  # noqa: F401  (the shared real run)

CHROMIUM = next((p for p in (shutil.which(n) for n in ("chromium", "chromium-browser")) if p), None)
pytestmark = pytest.mark.skipif(CHROMIUM is None, reason="chromium is not installed (apt-get install chromium)")

_PAGE = """JSON.stringify({
  title: document.title, lang: document.documentElement.lang, text: document.body.innerText.length,
  images: [...document.images].map(i => i.complete && i.naturalWidth > 0),
  sections: [...document.querySelectorAll('section')].map(s => s.id),
  layerTitles: [...document.querySelectorAll('#layers h3')].map(h => h.textContent),
  layerRows: [...document.querySelectorAll('#layers table')].map(t => t.tBodies[0].rows.length),
  bottlenecks: [...document.querySelectorAll('#layers table')].map(t => t.querySelectorAll('tr.bottleneck').length),
  scripts: document.scripts.length,
  overflow: document.documentElement.scrollWidth - window.innerWidth,
})"""


class Browser:
    """Headless Chromium with ``--remote-debugging-pipe``: JSON messages ending in NUL, on fds 3 (in) and 4 (out)."""

    def __init__(self, profile: Path) -> None:
        to_chrome, self._w = os.pipe()
        self._r, from_chrome = os.pipe()
        args = [str(CHROMIUM), "--headless", "--no-sandbox", "--disable-gpu", "--disable-background-networking",
                "--disable-component-update", "--disable-sync", "--no-first-run", "--no-default-browser-check",
                "--window-size=1280,900", f"--user-data-dir={profile}", "--remote-debugging-pipe", "about:blank"]
        self.proc = subprocess.Popen(["bash", "-c", f'exec "$0" "$@" 3<&{to_chrome} 4>&{from_chrome}', *args],
                                     pass_fds=(to_chrome, from_chrome), stdin=subprocess.DEVNULL,
                                     stdout=subprocess.DEVNULL, stderr=subprocess.DEVNULL)
        os.close(to_chrome)
        os.close(from_chrome)
        self._buf, self._id = b"", 0
        self.events: list[dict[str, Any]] = []

    def _next(self, deadline: float) -> dict[str, Any]:
        while b"\0" not in self._buf:
            left = deadline - time.monotonic()
            if left <= 0 or not select.select([self._r], [], [], left)[0]:
                raise TimeoutError("chromium did not answer in time")
            chunk = os.read(self._r, 1 << 20)
            if not chunk:
                raise RuntimeError(f"chromium exited (status {self.proc.poll()})")
            self._buf += chunk
        msg, self._buf = self._buf.split(b"\0", 1)
        return dict(json.loads(msg))

    def send(self, method: str, params: dict[str, Any] | None = None, session: str | None = None,
             timeout: float = 60.0) -> dict[str, Any]:
        self._id += 1
        msg: dict[str, Any] = {"id": self._id, "method": method, "params": params or {}}
        if session:
            msg["sessionId"] = session
        os.write(self._w, json.dumps(msg).encode() + b"\0")
        deadline = time.monotonic() + timeout
        while True:
            m = self._next(deadline)
            if m.get("id") == self._id:
                if "error" in m:
                    raise RuntimeError(f"{method}: {m['error']}")
                return dict(m.get("result", {}))
            self.events.append(m)

    def wait(self, method: str, timeout: float = 60.0) -> None:
        deadline = time.monotonic() + timeout
        while not any(e.get("method") == method for e in self.events):
            self.events.append(self._next(deadline))

    def close(self) -> None:
        with contextlib.suppress(RuntimeError, TimeoutError, OSError):
            self.send("Browser.close", timeout=10)
        try:
            self.proc.wait(timeout=15)
        except subprocess.TimeoutExpired:
            self.proc.kill()
            self.proc.wait()
        os.close(self._r)
        os.close(self._w)


def render(url: str, profile: Path) -> tuple[dict[str, Any], list[str], list[str]]:
    """Load ``url``; the page's figures (``_PAGE``), its console output and errors, and every URL it requested."""
    b = Browser(profile)
    try:
        target = b.send("Target.createTarget", {"url": "about:blank"})["targetId"]
        sid = b.send("Target.attachToTarget", {"targetId": target, "flatten": True})["sessionId"]
        for domain in ("Runtime", "Log", "Page", "Network"):
            b.send(f"{domain}.enable", session=sid)
        b.events.clear()
        b.send("Page.navigate", {"url": url}, session=sid)
        b.wait("Page.loadEventFired")
        page = json.loads(b.send("Runtime.evaluate", {"expression": _PAGE, "returnByValue": True},
                                 session=sid)["result"]["value"])
    finally:
        b.close()
    problems, requests = [], []
    for e in b.events:
        m, p = e.get("method"), e.get("params", {})
        if m == "Runtime.consoleAPICalled":
            problems.append(f"console.{p['type']}: {[a.get('value', a.get('description')) for a in p['args']]}")
        elif m == "Runtime.exceptionThrown":
            d = p["exceptionDetails"]
            problems.append(f"exception: {d.get('exception', {}).get('description') or d.get('text')}")
        elif m == "Log.entryAdded" and p["entry"]["level"] in ("error", "warning"):
            problems.append(f"log {p['entry']['level']}: {p['entry']['text']}")
        elif m == "Network.loadingFailed":
            problems.append(f"failed to load: {p.get('errorText')}")
        elif m == "Network.requestWillBeSent":
            requests.append(p["request"]["url"])
    return page, problems, requests


def test_harness_catches_console_errors(tmp_path: Path) -> None:
    bad = tmp_path / "bad.html"
    bad.write_text('<!DOCTYPE html><html lang="en"><head><meta charset="utf-8"><title>t</title></head>'
                   '<body><p>x</p><script>console.error("boom"); missing();</script></body></html>')
    page, problems, _ = render(bad.as_uri(), tmp_path / "profile")
    assert page["title"] == "t" and page["scripts"] == 1
    assert any("boom" in p for p in problems) and any("missing" in p for p in problems), problems


def test_run_report_renders_in_chromium(quick_run: Path, tmp_path: Path) -> None:  # noqa: F811
    summary = json.loads((quick_run / "summary.json").read_text())
    report = quick_run / "report.html"
    page, problems, requests = render(report.as_uri(), tmp_path / "profile")
    assert not problems, problems
    assert page["title"].startswith("mixq — cnv") and page["lang"] == "en" and page["text"] > 1000
    assert page["scripts"] == 0 and page["overflow"] <= 0, page["overflow"]
    assert all(page["images"]) and len(page["images"]) == len(summary["layers"])
    assert all(u.startswith(("file:", "data:")) for u in requests), [u[:80] for u in requests]
    assert page["sections"][:3] == ["chosen", "designs", "layers"]
    designs = summary["designs"]
    assert len(page["layerTitles"]) == len(designs)
    assert all(t.startswith(("headline", "MSQ")) for t in page["layerTitles"])
    assert page["layerRows"] == [len(d["hardware_layers"]) for d in designs]
    assert all(n >= 1 for n in page["bottlenecks"])
