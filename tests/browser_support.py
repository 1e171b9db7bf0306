"""Driving the system's Chromium with Playwright for the browser tests.

No browser is downloaded: Playwright starts the Chromium installed on the machine (`.ci/install-browser`
puts Debian's there), headless, with a fresh profile and without any of its background traffic. The
session records every console error, uncaught exception, failed or cross-origin request of its pages, and
can measure what the admin's charts actually drew on their canvases.
"""

from __future__ import annotations

import os
import shutil
import tempfile
from collections.abc import Iterator
from contextlib import contextmanager
from dataclasses import dataclass, field
from pathlib import Path
from urllib.parse import urlsplit

import pytest

CHROMIUM = os.environ.get("CHROMIUM", "/usr/bin/chromium")
CHROMIUM_ARGS = [
    "--headless",
    "--no-sandbox",  # tests run as root in containers, where the sandbox cannot start
    "--disable-gpu",
    "--disable-quic",
    "--no-first-run",
    "--disable-background-networking",
    "--disable-component-update",
    "--disable-sync",
]
ARTIFACTS = Path(__file__).resolve().parent / "artifacts" / "browser"
VIEWPORT = {"width": 1400, "height": 900}
TIMEOUT_MS = 15_000


@dataclass
class BrowserSession:
    """One page of a fresh browser, with what went wrong on it."""

    page: object  # playwright.sync_api.Page
    base_url: str
    problems: list[str] = field(default_factory=list)

    def url(self, path: str) -> str:
        return self.base_url.rstrip("/") + path

    def screenshot(self, name: str) -> Path:
        """A full-page PNG under tests/artifacts/browser/, kept for a person to look at."""
        ARTIFACTS.mkdir(parents=True, exist_ok=True)
        path = ARTIFACTS / f"{name}.png"
        self.page.screenshot(path=str(path), full_page=True)
        return path


@contextmanager
def chromium_session(base_url: str) -> Iterator[BrowserSession]:
    """A headless Chromium with a new profile and one page; closed, profile removed, on the way out.

    Nothing may touch the Django ORM inside the block: the Playwright sync API keeps an event loop
    running in this thread, and Django refuses database calls from an async context.
    """
    from playwright.sync_api import sync_playwright

    if not (os.path.isfile(CHROMIUM) and os.access(CHROMIUM, os.X_OK)):
        pytest.fail(f"Chromium not found at {CHROMIUM}: install it with `bash .ci/install-browser` (or set CHROMIUM)")
    profile = tempfile.mkdtemp(prefix="wp-chromium-")
    try:
        with sync_playwright() as playwright:
            context = playwright.chromium.launch_persistent_context(
                profile,
                executable_path=CHROMIUM,
                headless=True,
                args=CHROMIUM_ARGS,
                viewport=VIEWPORT,
                device_scale_factor=1,
                locale="en-US",
            )
            try:
                context.set_default_timeout(TIMEOUT_MS)
                page = context.pages[0] if context.pages else context.new_page()
                session = BrowserSession(page=page, base_url=base_url)
                page.on("console", lambda message: _record_console(session, message))
                page.on(
                    "pageerror", lambda error: session.problems.append(f"uncaught exception on {page.url}: {error}")
                )
                page.on(
                    "requestfailed",
                    lambda request: session.problems.append(f"request failed: {request.url} ({request.failure})"),
                )
                # Everything the admin needs is served by the portal itself (Chart.js included).
                page.on(
                    "request",
                    lambda request: (
                        session.problems.append(f"request to another origin: {request.url}")
                        if urlsplit(request.url).scheme in ("http", "https")
                        and urlsplit(request.url).netloc != urlsplit(base_url).netloc
                        else None
                    ),
                )
                page.on(
                    "response",
                    lambda response: (
                        session.problems.append(f"HTTP {response.status} for {response.url}")
                        if response.status >= 400
                        else None
                    ),
                )
                yield session
            finally:
                context.close()
    finally:
        shutil.rmtree(profile, ignore_errors=True)


def _record_console(session: BrowserSession, message) -> None:
    if message.type not in ("error", "assert"):
        return
    # The browser asks for /favicon.ico on its own; the admin's pages do not link one, so its 404 is not theirs.
    if urlsplit(message.location.get("url") or "").path == "/favicon.ico":
        return
    where = message.location.get("url") or session.page.url
    session.problems.append(f"console {message.type} on {session.page.url} ({where}): {message.text}")


# Runs in the page: what one canvas shows, measured on its pixels and on its Chart.js chart.
_CANVAS_REPORT_JS = """
(canvas) => {
  const hex = (color) => typeof color === "string" && /^#[0-9a-f]{6}$/i.test(color) ? color.toLowerCase() : null;
  const chart = window.Chart ? window.Chart.getChart(canvas) : undefined;
  const datasets = chart ? chart.data.datasets.map((d) => ({
    label: d.label,
    points: d.data.filter((v) => v !== null && v !== undefined).length,
    color: hex(d.type === "bar" ? d.backgroundColor : d.borderColor),
  })) : [];
  const rect = canvas.getBoundingClientRect();
  const pixels = canvas.getContext("2d").getImageData(0, 0, canvas.width, canvas.height).data;
  // Only inside the plotting area: the legend outside it shows every dataset's colour, drawn or not.
  const area = chart ? chart.chartArea : {left: 0, top: 0, right: canvas.width, bottom: canvas.height};
  const scale = canvas.width / (rect.width || canvas.width);
  let painted = 0;
  const seen = new Set();
  for (let i = 0; i < pixels.length; i += 4) {
    if (pixels[i + 3] === 0) continue;
    painted++;
    const x = ((i / 4) % canvas.width) / scale;
    const y = Math.floor(i / 4 / canvas.width) / scale;
    const inside = x >= area.left && x <= area.right && y >= area.top && y <= area.bottom;
    if (inside && pixels[i + 3] === 255) {
      seen.add("#" + [pixels[i], pixels[i + 1], pixels[i + 2]].map((c) => c.toString(16).padStart(2, "0")).join(""));
    }
  }
  return {
    id: canvas.id,
    width: canvas.width,
    height: canvas.height,
    css_width: rect.width,
    css_height: rect.height,
    painted: painted,
    has_chart: Boolean(chart),
    labels: chart ? chart.data.labels.length : 0,
    datasets: datasets,
    // Each dataset's own colour found as a solid pixel of the plotting area: its line or bars were drawn.
    drawn: datasets.filter((d) => d.color && seen.has(d.color)).map((d) => d.label),
  };
}
"""


def canvas_reports(session: BrowserSession) -> list[dict]:
    """Measure every chart canvas of the current page once its charts exist."""
    page = session.page
    page.wait_for_function(
        """() => {
          const canvases = [...document.querySelectorAll("canvas[data-wp-chart]")];
          return canvases.length > 0 && window.Chart && canvases.every((c) => window.Chart.getChart(c));
        }"""
    )
    return [canvas.evaluate(_CANVAS_REPORT_JS) for canvas in page.query_selector_all("canvas[data-wp-chart]")]


def assert_chart_drawn(report: dict) -> None:
    """A chart that is on screen, has figures, and whose figures were painted."""
    name = report["id"]
    assert report["width"] > 0 and report["height"] > 0, f"{name}: the canvas has no size: {report}"
    assert report["css_width"] > 100 and report["css_height"] > 50, f"{name}: the canvas is not laid out: {report}"
    assert report["has_chart"], f"{name}: no Chart.js chart on the canvas"
    assert report["labels"] > 0, f"{name}: the chart has no dates"
    assert report["datasets"], f"{name}: the chart has no dataset"
    assert any(d["points"] for d in report["datasets"]), f"{name}: every dataset is empty: {report}"
    assert report["painted"] > 0.01 * report["width"] * report["height"], f"{name}: the canvas is blank: {report}"
    with_data = [d["label"] for d in report["datasets"] if d["points"] and d["color"]]
    missing = sorted(set(with_data) - set(report["drawn"]))
    assert not missing, f"{name}: datasets with figures but no pixel of their colour: {missing} ({report})"
