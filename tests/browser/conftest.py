"""A real browser for the dashboard's tests: Debian's Chromium driven by Playwright.

Playwright's own browser download is never used (``playwright install`` is not run): the
tests launch ``/usr/bin/chromium`` (``apt-get install chromium``; another path through
``GRIDPILOT_CHROMIUM``), headless, with nothing that phones home. Screenshots go to the
test's tmp dir and to ``artifacts/screenshots/`` for review.
"""

from __future__ import annotations

import functools
import http.server
import os
import threading
from collections.abc import Iterator
from importlib import resources
from pathlib import Path
from typing import TYPE_CHECKING, Any

import pytest

if TYPE_CHECKING:
    from playwright.sync_api import Browser, Page

REPO = Path(__file__).resolve().parent.parent.parent
CHROMIUM = Path(os.environ.get("GRIDPILOT_CHROMIUM", "/usr/bin/chromium"))
CHROMIUM_ARGS = [
    "--headless",
    "--no-sandbox",
    "--disable-gpu",
    "--disable-quic",
    "--no-first-run",
    "--disable-background-networking",
    "--disable-component-update",
    "--disable-sync",
]
SCREENSHOTS = REPO / "artifacts" / "screenshots"
STATIC = Path(str(resources.files("gridpilot.api").joinpath("static")))
TABLET = {"width": 1024, "height": 1366}
"""A 12.9-inch tablet held upright, the plant-room case; the layout must work at this size."""


@pytest.fixture(scope="module")
def browser() -> Iterator[Browser]:
    """Chromium for one test module. Not for the session: Playwright's sync API runs an
    event loop in this thread while it is open, and the async tests after these would find
    it running."""
    if not CHROMIUM.exists():
        pytest.fail(
            f"chromium not found at {CHROMIUM}: apt-get install chromium "
            "(the dashboard is tested in a real browser)"
        )
    try:
        from playwright.sync_api import sync_playwright  # noqa: PLC0415 -- only these tests
    except ImportError:
        pytest.fail("playwright is not installed: scripts/bootstrap test (the test extra)")
    from playwright.sync_api import expect  # noqa: PLC0415

    # Waits long enough for a 2-s refresh on a busy 2-core CI machine.
    expect.set_options(timeout=15_000)
    with sync_playwright() as playwright:
        chromium = playwright.chromium.launch(executable_path=str(CHROMIUM), args=CHROMIUM_ARGS)
        yield chromium
        chromium.close()


class PageProblems:
    """What the page reported on its own: uncaught errors and CSP or console errors."""

    def __init__(self) -> None:
        self.errors: list[str] = []
        self.console: list[str] = []

    def on_console(self, message: Any) -> None:
        if message.type == "error":
            self.console.append(message.text)


@pytest.fixture
def page(browser: Browser) -> Iterator[tuple[Page, PageProblems]]:
    context = browser.new_context(viewport=TABLET, has_touch=True)
    page = context.new_page()
    problems = PageProblems()
    page.on("pageerror", lambda error: problems.errors.append(str(error)))
    page.on("console", problems.on_console)
    page.set_default_timeout(15_000)
    yield page, problems
    context.close()


def screenshot(page: Page, tmp_path: Path, name: str, *, full_page: bool = True) -> Path:
    """Save ``name``.png in the test's tmp dir and in ``artifacts/screenshots/``."""
    path = tmp_path / f"{name}.png"
    page.screenshot(path=str(path), full_page=full_page)
    SCREENSHOTS.mkdir(parents=True, exist_ok=True)
    (SCREENSHOTS / path.name).write_bytes(path.read_bytes())
    return path


class _QuietHandler(http.server.SimpleHTTPRequestHandler):
    def log_message(self, format: str, *args: Any) -> None:
        pass


@pytest.fixture(scope="session")
def static_url() -> Iterator[str]:
    """The package's static files over HTTP on loopback (modules do not load from file://)."""
    handler = functools.partial(_QuietHandler, directory=str(STATIC))
    server = http.server.ThreadingHTTPServer(("127.0.0.1", 0), handler)
    thread = threading.Thread(target=server.serve_forever, daemon=True)
    thread.start()
    yield f"http://127.0.0.1:{server.server_address[1]}"
    server.shutdown()
    server.server_close()
    thread.join(timeout=5)
