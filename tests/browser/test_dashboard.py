"""The dashboard of a running `gridpilot demo`, in headless Chromium, as its users meet it.

One demo runs for the module, started the way README tells a person to: a subprocess with
its own embedded broker, simulated devices, SQLite and API on free loopback ports. Before it
starts, its database gets a year of 15-minute grid-meter history (a daily load shape), so
the year-long chart has a year to show. Tokens are made with `gridpilot token create`, as an
administrator would. Every test saves screenshots (tmp dir and artifacts/screenshots/).
"""

from __future__ import annotations

import asyncio
import concurrent.futures
import math
import re
import signal
import subprocess
import sys
import time
from collections.abc import Iterator
from dataclasses import dataclass
from pathlib import Path

import httpx
import pytest
from playwright.sync_api import Page, expect

from gridpilot.config.models import RetentionConfig
from gridpilot.model import Sample
from gridpilot.storage.sqlite import SqliteStorage
from tests.browser.conftest import PageProblems, screenshot

pytestmark = pytest.mark.integration

SITE = "demo"
BATTERY_SETPOINT = "battery.active_power_setpoint_w"
STARTUP_TIMEOUT_S = 60.0
DAY_MS = 86_400_000
SEED_STEP_MS = 15 * 60_000


@dataclass(frozen=True)
class Demo:
    url: str
    site_file: Path
    admin: str
    operator: str
    viewer: str


def seed_year_of_grid_history(db: Path, now_ms: int) -> int:
    """A year of 15-minute grid import (a weekday-ish daily shape, 40-110 kW) ending an hour
    ago, written before the demo opens the file. Returns how many samples were written."""
    end = now_ms - 3_600_000
    start = end - 365 * DAY_MS
    samples = []
    for ts in range(start - start % SEED_STEP_MS, end, SEED_STEP_MS):
        hour = (ts % DAY_MS) / 3_600_000
        day_shape = max(0.0, math.sin(math.pi * (hour - 6) / 14)) if 6 <= hour <= 20 else 0.0
        season = 1 + 0.15 * math.cos(2 * math.pi * (ts - start) / (365 * DAY_MS))
        samples.append(
            Sample(SITE, "grid_meter", "active_power_w", ts, (40_000 + 70_000 * day_shape) * season)
        )

    async def write() -> int:
        async with SqliteStorage(db, RetentionConfig()) as storage:
            result = await storage.write(samples)
            return result.written

    # In a thread of its own: Playwright's sync API keeps an event loop in this one.
    with concurrent.futures.ThreadPoolExecutor(1) as pool:
        return pool.submit(lambda: asyncio.run(write())).result()


def create_token(site_file: Path, role: str, name: str) -> str:
    done = subprocess.run(
        [sys.executable, "-m", "gridpilot", "token", "create", "--role", role, "--name", name,
         "--config", str(site_file)],
        capture_output=True, text=True, timeout=60, check=True,
    )  # fmt: skip
    token = done.stdout.strip().splitlines()[0]
    assert token.startswith("gpt_"), done.stdout
    return token


@pytest.fixture(scope="module")
def demo(tmp_path_factory: pytest.TempPathFactory) -> Iterator[Demo]:
    data = tmp_path_factory.mktemp("demo")
    data.chmod(0o700)  # the token store refuses a directory others may write to
    written = seed_year_of_grid_history(data / "gridpilot.db", int(time.time() * 1000))
    assert written > 35_000
    out_path, err_path = data / "demo.out", data / "demo.err"
    with out_path.open("wb") as out, err_path.open("wb") as err:
        # Files, not pipes: nobody reads a pipe while the tests run, and a full one would
        # block the demo. --duration is a backstop should teardown never come.
        process = subprocess.Popen(
            [sys.executable, "-m", "gridpilot", "demo", "--duration", "600",
             "--data-dir", str(data), "--mqtt-port", "0", "--http-port", "0"],
            stdout=out, stderr=err,
        )  # fmt: skip
    try:
        deadline = time.monotonic() + STARTUP_TIMEOUT_S
        banner = ""
        while "Stopping after" not in banner:
            if process.poll() is not None:
                pytest.fail(f"the demo exited early:\n{banner}\n{err_path.read_text()}")
            if time.monotonic() > deadline:
                pytest.fail(f"no banner within {STARTUP_TIMEOUT_S} s:\n{banner}")
            time.sleep(0.2)
            banner = out_path.read_text()
        url = re.search(r"dashboard\s+(http://127\.0\.0\.1:\d+)/", banner)
        admin = re.search(r"sign in with\s+(gpt_\S+)", banner)
        assert url is not None, banner
        assert admin is not None, banner
        site_file = data / "site.yaml"
        yield Demo(
            url=url.group(1),
            site_file=site_file,
            admin=admin.group(1),
            operator=create_token(site_file, "operator", "olga-operator"),
            viewer=create_token(site_file, "viewer", "victor-viewer"),
        )
    finally:
        process.send_signal(signal.SIGINT)
        try:
            process.wait(timeout=30)
        except subprocess.TimeoutExpired:
            process.kill()
            process.wait(timeout=10)


def sign_in(page: Page, demo: Demo, token: str, view: str = "flow") -> None:
    page.goto(f"{demo.url}/#{view}")
    expect(page.get_by_test_id("signin")).to_be_visible()
    page.get_by_test_id("signin-token").fill(token)
    page.get_by_test_id("signin-submit").click()
    expect(page.get_by_test_id("signin")).to_be_hidden()


def no_page_errors(problems: PageProblems) -> None:
    """No uncaught error, and nothing the Content-Security-Policy blocked."""
    assert problems.errors == []
    assert [m for m in problems.console if "Content Security Policy" in m] == []


def flow_numbers(page: Page) -> dict[str, float]:
    """The power-flow numbers in W as the page holds them, read at one instant (the page
    re-renders every 2 s). Grid: import +, battery: discharge +."""
    numbers: dict[str, float] = page.evaluate(
        """() => {
            const value = (id, key) => Number(document.getElementById(id).dataset[key]);
            return {grid: value("flow-grid-w", "signed"), pv: value("flow-pv-w", "value"),
                    battery: value("flow-battery-w", "value"), load: value("flow-load-w", "value")};
        }"""
    )
    return numbers


# ------------------------------------------------------------------------------ tests


def test_an_unknown_token_is_refused(
    demo: Demo, page: tuple[Page, PageProblems], tmp_path: Path
) -> None:
    browser_page, problems = page
    browser_page.goto(f"{demo.url}/")
    browser_page.get_by_test_id("signin-token").fill("gpt_0badc0de_" + "x" * 43)
    browser_page.get_by_test_id("signin-submit").click()
    message = browser_page.get_by_test_id("signin-message")
    expect(message).to_be_visible()
    expect(message).to_contain_text("token unknown or revoked", ignore_case=True)
    expect(browser_page.get_by_test_id("view-flow")).to_be_hidden()
    screenshot(browser_page, tmp_path, "01-unknown-token")
    no_page_errors(problems)


def test_operator_sees_who_they_are_and_live_power_flow(
    demo: Demo, page: tuple[Page, PageProblems], tmp_path: Path
) -> None:
    browser_page, problems = page
    sign_in(browser_page, demo, demo.operator)
    expect(browser_page.get_by_test_id("whoami")).to_contain_text("olga-operator")
    expect(browser_page.get_by_test_id("whoami-role")).to_have_text("operator")
    grid = browser_page.get_by_test_id("flow-grid-w")
    expect(grid).to_have_attribute("data-value", re.compile(r"\d"))
    expect(browser_page.get_by_test_id("flow-battery-soc")).to_have_attribute(
        "data-value", re.compile(r"\d")
    )
    first = grid.get_attribute("data-value")
    # The simulated meter moves every second; the page refreshes every 2 s.
    expect(grid).not_to_have_attribute("data-value", first or "", timeout=20_000)
    # The building's load is what the grid, PV and battery deliver together.
    flow = flow_numbers(browser_page)
    assert flow["load"] == pytest.approx(flow["grid"] + flow["pv"] + flow["battery"])
    # Every latest value of every device is listed.
    for device in ("grid_meter", "pv_inverter", "battery", "controller"):
        expect(
            browser_page.locator(f"#latest-tables details[data-device='{device}']")
        ).to_be_visible()
    screenshot(browser_page, tmp_path, "02-power-flow-operator", full_page=False)

    browser_page.get_by_role("link", name="Devices").click()
    expect(browser_page.get_by_test_id("device-status-grid_meter")).to_have_text("online")
    screenshot(browser_page, tmp_path, "03-devices", full_page=False)

    browser_page.get_by_test_id("sign-out").click()
    expect(browser_page.get_by_test_id("signin")).to_be_visible()
    assert browser_page.evaluate("sessionStorage.getItem('gridpilot.token')") is None
    no_page_errors(problems)


def test_a_year_long_chart_and_zooming_into_it(
    demo: Demo, page: tuple[Page, PageProblems], tmp_path: Path
) -> None:
    browser_page, problems = page
    sign_in(browser_page, demo, demo.operator, view="history")
    chart = browser_page.get_by_test_id("history-chart")
    expect(browser_page.get_by_test_id("history-device")).to_have_value("grid_meter")
    expect(browser_page.get_by_test_id("history-point")).to_have_value("active_power_w")
    browser_page.get_by_test_id("range-1y").click()
    expect(chart).to_have_attribute("data-range", "1y")
    expect(chart).to_have_attribute("data-state", "loaded")
    # 365 days in 6-hour buckets: at most ~2,000 points, and the seeded year fills them.
    assert chart.get_attribute("data-every") == "6h"
    assert int(chart.get_attribute("data-buckets") or 0) >= 1400
    expect(chart.locator("canvas")).to_be_visible()
    screenshot(browser_page, tmp_path, "04-history-1y", full_page=False)

    # Drag across the last tenth of the year: finer buckets are fetched for that window.
    box = browser_page.locator("#history-chart .u-over").bounding_box()
    assert box is not None
    y = box["y"] + box["height"] / 2
    browser_page.mouse.move(box["x"] + box["width"] * 0.88, y)
    browser_page.mouse.down()
    browser_page.mouse.move(box["x"] + box["width"] * 0.93, y, steps=5)
    browser_page.mouse.move(box["x"] + box["width"] * 0.98, y, steps=5)
    browser_page.mouse.up()
    expect(chart).to_have_attribute("data-range", "zoomed")
    expect(chart).to_have_attribute("data-state", "loaded")
    assert chart.get_attribute("data-every") in ("15m", "30m", "1h")
    screenshot(browser_page, tmp_path, "05-history-zoomed", full_page=False)

    # Double-click returns to the year.
    browser_page.locator("#history-chart .u-over").dblclick()
    expect(chart).to_have_attribute("data-range", "1y")
    expect(chart).to_have_attribute("data-state", "loaded")

    # On a tablet: a one-finger sideways drag across a tenth of the year zooms in too.
    cdp = browser_page.context.new_cdp_session(browser_page)
    left, right = box["x"] + box["width"] * 0.5, box["x"] + box["width"] * 0.6
    for kind, x in (("touchStart", left), ("touchMove", left + 20), ("touchMove", right)):
        cdp.send("Input.dispatchTouchEvent", {"type": kind, "touchPoints": [{"x": x, "y": y}]})
    cdp.send("Input.dispatchTouchEvent", {"type": "touchEnd", "touchPoints": []})
    expect(chart).to_have_attribute("data-range", "zoomed")
    expect(chart).to_have_attribute("data-state", "loaded")
    assert chart.get_attribute("data-every") in ("15m", "30m", "1h")
    no_page_errors(problems)


def test_operator_sets_the_battery_and_sees_it_applied(
    demo: Demo, page: tuple[Page, PageProblems], tmp_path: Path
) -> None:
    browser_page, problems = page
    sign_in(browser_page, demo, demo.operator, view="control")
    expect(browser_page.get_by_test_id("control-panel")).to_be_visible()
    expect(browser_page.get_by_test_id("control-limit-w")).to_have_attribute("data-value", "110000")
    point = browser_page.get_by_test_id("override-point")
    expect(point.locator(f"option[value='{BATTERY_SETPOINT}']")).to_be_attached()
    point.select_option(BATTERY_SETPOINT)
    # discharge: the demo's battery starts full (90 %, the top of its envelope), so a
    # charging override would be held at 0 W by the SoC window
    browser_page.get_by_test_id("override-value").fill("5000")
    browser_page.get_by_test_id("override-duration").select_option("600")
    browser_page.get_by_test_id("override-submit").click()
    message = browser_page.get_by_test_id("override-message")
    expect(message).to_have_attribute("data-state", "applied", timeout=40_000)
    expect(message).to_contain_text("Applied")
    targets = browser_page.get_by_test_id("control-targets")
    expect(targets.locator(f"tr[data-point='{BATTERY_SETPOINT}'] td.num")).to_have_attribute(
        "data-value", "5000"
    )
    overrides = browser_page.get_by_test_id("control-overrides")
    expect(overrides.locator(f"tr[data-point='{BATTERY_SETPOINT}']")).to_contain_text(
        "olga-operator"
    )
    screenshot(browser_page, tmp_path, "06-override-applied")

    # The audit log names the operator and what they did.
    with httpx.Client(base_url=demo.url, trust_env=False, timeout=10) as client:
        audit = client.get(
            "/api/v1/audit", headers={"Authorization": f"Bearer {demo.admin}"}
        ).json()["entries"]
    mine = [
        e for e in audit if e["who"]["name"] == "olga-operator" and e["target"] == BATTERY_SETPOINT
    ]
    assert mine, audit
    assert mine[0]["ok"] is True

    browser_page.get_by_test_id("override-release").click()
    expect(message).to_have_attribute("data-state", "released")
    expect(overrides.locator(f"tr[data-point='{BATTERY_SETPOINT}']")).to_have_count(0)

    # The controller's events are listed (its start-up ones at least), newest first.
    browser_page.get_by_role("link", name="Events").click()
    events = browser_page.get_by_test_id("event-rows")
    expect(events.locator("tr[data-level]").first).to_contain_text("controller")
    screenshot(browser_page, tmp_path, "07-events", full_page=False)
    no_page_errors(problems)


def test_viewer_is_refused_the_same_setpoint(
    demo: Demo, page: tuple[Page, PageProblems], tmp_path: Path
) -> None:
    browser_page, problems = page
    sign_in(browser_page, demo, demo.viewer, view="control")
    expect(browser_page.get_by_test_id("whoami-role")).to_have_text("viewer")
    form = browser_page.get_by_test_id("override-form")
    expect(form).to_have_class(re.compile(r"\brestricted\b"))
    point = browser_page.get_by_test_id("override-point")
    expect(point.locator(f"option[value='{BATTERY_SETPOINT}']")).to_be_attached()
    point.select_option(BATTERY_SETPOINT)
    browser_page.get_by_test_id("override-value").fill("-5000")
    browser_page.get_by_test_id("override-submit").click()
    message = browser_page.get_by_test_id("override-message")
    expect(message).to_have_attribute("data-state", "forbidden")
    expect(message).to_contain_text("your role (viewer) may not do this")
    overrides = browser_page.get_by_test_id("control-overrides")
    expect(overrides.locator(f"tr[data-point='{BATTERY_SETPOINT}']")).to_have_count(0)
    screenshot(browser_page, tmp_path, "08-viewer-refused")
    no_page_errors(problems)


def test_a_revoked_token_signs_the_page_out(
    demo: Demo, page: tuple[Page, PageProblems], tmp_path: Path
) -> None:
    browser_page, problems = page
    token = create_token(demo.site_file, "viewer", "short-lived")
    sign_in(browser_page, demo, token)
    expect(browser_page.get_by_test_id("flow-grid-w")).to_have_attribute(
        "data-value", re.compile(r"\d")
    )
    token_id = token.split("_")[1]
    subprocess.run(
        [sys.executable, "-m", "gridpilot", "token", "revoke", token_id,
         "--config", str(demo.site_file)],
        capture_output=True, timeout=60, check=True,
    )  # fmt: skip
    # The next refresh (2 s) answers 401: back to the sign-in, saying why.
    message = browser_page.get_by_test_id("signin-message")
    expect(message).to_contain_text("token unknown or revoked", ignore_case=True, timeout=15_000)
    screenshot(browser_page, tmp_path, "09-revoked")
    no_page_errors(problems)


def test_failing_routes_show_as_problems_and_the_page_goes_on(
    demo: Demo, page: tuple[Page, PageProblems], tmp_path: Path
) -> None:
    """What the server says is shown as text; a failing route is a line in the problem
    banner until it answers again; a site without a controller or events hides them."""
    browser_page, problems = page
    # The browser's view of the server is changed, the server is the real one.
    markup = '<img src="x" id="injected"><script>window.pwned = 1</script>'
    browser_page.route(
        "**/api/v1/events?*",
        lambda route: route.fulfill(
            json={"events": [{"ts": "2026-11-26T12:00:00Z", "level": "alarm",
                              "source": "gateway", "message": markup}]},
        ),
    )  # fmt: skip
    browser_page.route(
        "**/api/v1/control",
        lambda route: route.fulfill(status=404, json={"error": "no control section"}),
    )
    browser_page.route(
        "**/api/v1/latest",
        lambda route: route.fulfill(
            status=503, json={"error": "storage is unavailable; retry later"}
        ),
    )
    # A server that never answers: the request is given up after its timeout (10 s).
    browser_page.route("**/api/v1/site", lambda route: None)
    sign_in(browser_page, demo, demo.viewer)
    banner = browser_page.get_by_test_id("problems")
    expect(banner).to_contain_text("power flow: storage is unavailable; retry later")
    expect(banner).to_contain_text("site: no answer within 10 s", timeout=20_000)
    expect(browser_page.locator("#tabs a[data-view='control']")).to_be_hidden()
    expect(browser_page.get_by_test_id("alarm-count")).to_have_text("1")
    # The other views still work.
    browser_page.get_by_role("link", name="Devices").click()
    expect(browser_page.get_by_test_id("device-status-battery")).to_have_text("online")
    browser_page.get_by_role("link", name="Events").click()
    rows = browser_page.get_by_test_id("event-rows")
    expect(rows).to_contain_text(markup)
    assert browser_page.locator("#injected").count() == 0
    assert browser_page.evaluate("window.pwned") is None
    browser_page.goto(f"{demo.url}/#control")
    expect(browser_page.get_by_test_id("control-absent")).to_be_visible()
    screenshot(browser_page, tmp_path, "10-problems", full_page=False)

    # Storage is back: the line goes, the values come.
    browser_page.unroute("**/api/v1/latest")
    browser_page.unroute("**/api/v1/site")
    browser_page.get_by_role("link", name="Power flow").click()
    expect(browser_page.get_by_test_id("flow-grid-w")).to_have_attribute(
        "data-value", re.compile(r"\d")
    )
    expect(banner).not_to_contain_text("power flow")
    no_page_errors(problems)


def test_the_api_view_lists_the_routes_of_the_openapi_document(
    demo: Demo, page: tuple[Page, PageProblems], tmp_path: Path
) -> None:
    browser_page, problems = page
    sign_in(browser_page, demo, demo.viewer, view="api")
    rows = browser_page.get_by_test_id("api-rows")
    expect(rows.locator("tr[data-route='GET /api/v1/latest']")).to_be_visible()
    expect(
        rows.locator("tr[data-route='POST /api/v1/devices/{device}/points/{point}/command']")
    ).to_contain_text("401")
    document = httpx.get(
        f"{demo.url}/api/v1/openapi.json",
        headers={"Authorization": f"Bearer {demo.viewer}"},
        timeout=10,
    ).json()
    expected = sum(
        1
        for ops in document["paths"].values()
        for m in ops
        if m in ("get", "post", "put", "delete")
    )
    expect(rows.locator("tr")).to_have_count(expected)
    screenshot(browser_page, tmp_path, "09-api-reference", full_page=False)
    no_page_errors(problems)


def test_operator_changes_the_peak_shaving_limit_and_a_viewer_cannot(
    demo: Demo, page: tuple[Page, PageProblems], tmp_path: Path
) -> None:
    browser_page, problems = page
    sign_in(browser_page, demo, demo.operator, view="control")
    current = browser_page.get_by_test_id("limit-current")
    expect(current).to_have_text("110 kW")
    browser_page.get_by_test_id("limit-value").fill("95")
    browser_page.get_by_test_id("limit-submit").click()
    message = browser_page.get_by_test_id("limit-message")
    expect(message).to_have_attribute("data-state", "set")
    expect(message).to_contain_text("limit_w=95000")
    expect(current).to_have_text("95 kW", timeout=20_000)
    # the controller works to the new limit (its own figure, published as telemetry)
    expect(browser_page.get_by_test_id("control-limit-w")).to_have_attribute(
        "data-value", "95000", timeout=20_000
    )
    # disable and enable a controller from its row
    row = browser_page.get_by_test_id("control-controllers").locator(
        "tr[data-controller='peak_shaving']"
    )
    browser_page.get_by_test_id("toggle-peak_shaving").click()
    expect(row.locator("td").nth(1)).to_have_text("no", timeout=20_000)
    browser_page.get_by_test_id("toggle-peak_shaving").click()
    expect(row.locator("td").nth(1)).to_have_text("yes", timeout=20_000)
    screenshot(browser_page, tmp_path, "11-limit-changed")

    # a viewer: refused, and the limit stays
    browser_page.get_by_test_id("sign-out").click()
    sign_in(browser_page, demo, demo.viewer, view="control")
    browser_page.get_by_test_id("limit-value").fill("50")
    browser_page.get_by_test_id("limit-submit").click()
    expect(message).to_have_attribute("data-state", "forbidden")
    expect(message).to_contain_text("your role (viewer) may not do this")
    expect(current).to_have_text("95 kW")

    # put the demo back as the other tests expect it
    with httpx.Client(base_url=demo.url, trust_env=False, timeout=10) as client:
        answer = client.put(
            "/api/v1/control/controllers/peak_shaving/params",
            json={"params": {"limit_w": 110_000}},
            headers={"Authorization": f"Bearer {demo.operator}"},
        )
    assert answer.status_code == 200, answer.text
    no_page_errors(problems)


def test_the_events_view_shows_the_utilitys_active_and_scheduled_events(
    demo: Demo, page: tuple[Page, PageProblems], tmp_path: Path
) -> None:
    """While a 2030.5 client publishes utility events, the events view lists them above the
    site's events (the route's answer is set here; the page is the real one)."""
    browser_page, problems = page
    markup = '<img src="x" id="injected-utility">'
    status = {
        "site": SITE,
        "published": True,
        "message": None,
        "status": {
            "active_events": [
                {"mrid": "5A7E0C1D", "description": "Feeder 12 export limit " + markup,
                 "effective_start": "2026-11-27T09:55:00Z",
                 "effective_end": "2026-11-27T10:55:00Z",
                 "modes": {"opModExpLimW": {"value": 5000, "unit": "W"}}},
            ],
            "scheduled_events": [
                {"mrid": "6B8F1D2E", "description": "Evening limit",
                 "effective_start": "2026-11-27T17:00:00Z",
                 "effective_end": "2026-11-27T19:00:00Z",
                 "modes": {"opModConnect": {"value": False}}},
            ],
        },
    }  # fmt: skip
    browser_page.route("**/api/v1/ieee2030_5", lambda route: route.fulfill(json=status))
    sign_in(browser_page, demo, demo.viewer, view="events")
    panel = browser_page.get_by_test_id("utility-events")
    expect(panel).to_be_visible()
    items = browser_page.get_by_test_id("utility-event-list").locator("li")
    expect(items).to_have_count(2)
    expect(items.nth(0)).to_have_attribute("data-status", "active")
    expect(items.nth(0)).to_contain_text("Feeder 12 export limit")
    expect(items.nth(0)).to_contain_text("opModExpLimW 5000 W")
    expect(items.nth(1)).to_have_attribute("data-status", "scheduled")
    expect(items.nth(1)).to_contain_text("Evening limit: opModConnect false")
    assert browser_page.locator("#injected-utility").count() == 0
    screenshot(browser_page, tmp_path, "12-utility-events", full_page=False)

    # No client publishing: the panel goes with the next refresh (5 s).
    browser_page.unroute("**/api/v1/ieee2030_5")
    browser_page.route(
        "**/api/v1/ieee2030_5",
        lambda route: route.fulfill(
            json={"site": SITE, "published": False, "message": "no client", "status": None}
        ),
    )
    expect(panel).to_be_hidden(timeout=15_000)
    expect(browser_page.get_by_test_id("event-rows").locator("tr").first).to_be_visible()
    no_page_errors(problems)
