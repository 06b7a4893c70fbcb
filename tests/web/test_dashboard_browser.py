"""The dashboard in headless Chromium against a real web server and runner (subprocesses on a
temp data dir), as an operator uses it."""

from __future__ import annotations

import os
import shutil
import signal

import pytest
from playwright.sync_api import Page, expect

from engines_app.testing import ROOT, Installation
from tests.helpers import CHROMIUM, IN_CI

pytestmark = pytest.mark.browser

SCREENSHOT = ROOT / "docs" / "dashboard.png"
ARTIFACTS = ROOT / "test-artifacts"
CHROMIUM_ARGS = [
    "--no-sandbox",
    "--disable-gpu",
    "--disable-quic",
    "--no-first-run",
    "--disable-background-networking",
    "--disable-component-update",
    "--disable-sync",
]
PANEL_ENV = {
    "LEVIPANEL_SYMBOLS": "BTCUSDT,ETHUSDT,SOLUSDT",
    "LEVIPANEL_FLUSH_INTERVAL": "0.3",
    "LEVIPANEL_PUSH_INTERVAL": "0.2",
}


@pytest.fixture(scope="session")
def browser_type_launch_args(browser_type_launch_args):
    if not CHROMIUM.exists():
        reason = f"Chromium is not installed at {CHROMIUM} (apt-get install chromium)"
        pytest.fail(reason) if IN_CI else pytest.skip(reason)
    return {**browser_type_launch_args, "executable_path": str(CHROMIUM), "args": CHROMIUM_ARGS}


@pytest.fixture(scope="module")
def panel(tmp_path_factory: pytest.TempPathFactory):
    """One installation for this module's tests; the reconnect test, which restarts the
    web server, comes last."""
    with Installation(tmp_path_factory.mktemp("browser") / "data", PANEL_ENV) as installation:
        installation.start_panel()
        yield installation


def log_in(page: Page, panel: Installation) -> None:
    page.goto(panel.url + "/")
    expect(page).to_have_url(panel.url + "/login/?next=/")
    page.fill("input[name=username]", "admin")
    page.fill("input[name=password]", panel.password)
    page.click("button[type=submit]")
    expect(page).to_have_url(panel.url + "/")
    expect(page.locator("#live")).to_have_text("live")


def row(page: Page, symbol: str):
    return page.locator(f'tr[data-symbol="{symbol}"]')


def counter(page: Page, name: str):
    return page.locator(f'[data-count="{name}"]')


def test_operator_stops_and_restarts_an_engine_without_a_reload(page: Page, panel):
    log_in(page, panel)
    expect(page.locator("tr[data-symbol] .badge.running")).to_have_count(3)
    expect(counter(page, "running")).to_have_text("3")
    page.evaluate("window.__sameDocument = true")  # gone if the page reloads

    eth = row(page, "ETHUSDT")
    eth.locator('button[data-action="stop"]').click()
    expect(eth.locator(".pending")).to_contain_text("stop")  # pending, then its outcome
    expect(eth.locator(".badge")).to_have_text("stopped")
    expect(eth.locator('[data-field="uptime"]')).to_have_text("—")
    expect(counter(page, "running")).to_have_text("2")
    expect(counter(page, "stopped")).to_have_text("1")
    expect(eth.locator('button[data-action="start"]')).to_be_enabled()
    expect(row(page, "BTCUSDT").locator(".badge")).to_have_text("running")
    save_screenshot(page)

    eth.locator('button[data-action="restart"]').click()
    expect(eth.locator(".badge")).to_have_text("running")
    expect(counter(page, "running")).to_have_text("3")
    expect(eth.locator(".pending")).to_have_text("", timeout=10_000)  # acked, then faded
    assert page.evaluate("window.__sameDocument") is True


def test_uptime_ticks_in_the_browser_between_pushes(page: Page, panel):
    # Pushes never change started_at: a changing uptime is the page's own clock.
    log_in(page, panel)
    cell = row(page, "BTCUSDT").locator('[data-field="uptime"]')
    expect(cell).not_to_have_text("—")
    first = cell.inner_text()
    expect(cell).not_to_have_text(first, timeout=3000)


def test_engine_page_shows_history_log_and_chart(page: Page, panel):
    log_in(page, panel)
    row(page, "BTCUSDT").locator("a").click()
    expect(page).to_have_url(panel.url + "/engine/BTCUSDT/")
    expect(page.locator("h1")).to_contain_text("BTCUSDT")
    expect(page.locator("#log")).to_contain_text("Starting engine for BTCUSDT")
    expect(page.locator("#pnl-chart .uplot canvas")).to_have_count(1)  # drawn by uPlot


def test_command_shows_pending_until_the_runner_acknowledges_it(page: Page, panel):
    log_in(page, panel)
    btc = row(page, "BTCUSDT")
    runner = panel.processes[1]
    runner.send_signal(signal.SIGSTOP)  # the runner is busy: nothing acknowledges yet
    try:
        btc.locator('button[data-action="stop"]').click()
        expect(btc.locator(".pending")).to_have_text("stop pending…")
        for action in ("start", "stop", "restart"):
            expect(btc.locator(f'button[data-action="{action}"]')).to_be_disabled()
        expect(btc.locator(".badge")).to_have_text("running")
    finally:
        runner.send_signal(signal.SIGCONT)
    expect(btc.locator(".badge")).to_have_text("stopped")
    expect(btc.locator(".pending")).to_have_text("stop: stopped")
    btc.locator('button[data-action="start"]').click()
    expect(btc.locator(".badge")).to_have_text("running")


def test_a_killed_runner_shows_its_engines_unknown_without_a_reload(page: Page, tmp_path):
    """kill -9: the runner writes nothing more, yet within about a second of its lease
    running out the page says unknown, not running, and lists the runner as silent."""
    env = {**PANEL_ENV, "LEVIPANEL_LEASE": "1.5", "LEVIPANEL_RUNNER_NAME": "runner-k"}
    with Installation(tmp_path / "data", env) as panel:
        panel.start_panel()
        log_in(page, panel)
        expect(counter(page, "running")).to_have_text("3")
        btc = row(page, "BTCUSDT").locator('[data-field="runner"]')
        expect(btc).to_have_text("runner-k")
        runner = page.locator('tr[data-runner="runner-k"]')
        expect(runner.locator('[data-field="state"]')).to_have_text("live")
        expect(runner.locator('[data-field="last_seen"]')).to_have_text("now")
        panel.processes[1].kill()
        expect(counter(page, "unknown")).to_have_text("3")
        expect(counter(page, "running")).to_have_text("0")
        expect(page.locator("tr[data-symbol] .badge.unknown")).to_have_count(3)
        expect(btc).to_contain_text("none (runner last seen")
        expect(runner.locator('[data-field="state"]')).to_have_text("silent")
        expect(runner.locator('[data-field="last_seen"]')).to_contain_text("ago")


RECORD_SOCKETS = """
window.__sockets = [];
window.WebSocket = class extends window.WebSocket {
  constructor(...args) { super(...args); window.__sockets.push(this); }
};
"""


def test_page_goes_to_the_login_page_when_its_session_is_gone(page: Page, panel):
    page.add_init_script(RECORD_SOCKETS)
    log_in(page, panel)
    other = page.context.new_page()  # the operator logs out in another tab
    other.goto(panel.url + "/")
    other.click("text=Log out")
    expect(other).to_have_url(panel.url + "/login/")
    page.evaluate("window.__sockets.at(-1).close()")  # as daphne does after a day
    expect(page).to_have_url(panel.url + "/login/?next=/", timeout=10_000)


def test_page_reconnects_and_takes_a_fresh_snapshot(page: Page, panel):
    log_in(page, panel)
    web = panel.processes[0]
    web.terminate()
    web.wait(10)
    expect(page.locator("#live")).to_have_text("reconnecting…")
    panel.manage(
        "shell", "-c", "from engines_app import services; services.engine_stop(symbol='SOLUSDT')"
    )
    panel.processes[0] = panel.serve(log_name="web2")  # on the same port
    expect(page.locator("#live")).to_have_text("live", timeout=15_000)
    expect(row(page, "SOLUSDT").locator(".badge")).to_have_text("stopped")


def save_screenshot(page: Page) -> None:
    """Always into test-artifacts/; into docs/ (the README's picture) when asked or absent."""
    ARTIFACTS.mkdir(exist_ok=True)
    shot = ARTIFACTS / "dashboard.png"
    page.set_viewport_size({"width": 1280, "height": 420})
    page.screenshot(path=str(shot))
    if os.environ.get("LEVIPANEL_UPDATE_SCREENSHOT") or not SCREENSHOT.exists():
        SCREENSHOT.parent.mkdir(exist_ok=True)
        shutil.copyfile(shot, SCREENSHOT)
