"""A backtest from an engine's admin page ("Backtest this config"), its page with the report
and the equity chart, and the chart in a real browser: drawn by uPlot, with a tooltip and
drag-to-zoom."""

from __future__ import annotations

import json

import pytest
from django.contrib.auth.models import Permission
from django.test import Client
from playwright.sync_api import Page, expect

from engines_app.models import Backtest, Engine
from engines_app.testing import Installation
from tests.helpers import make_user

CONFIG = {"strategy": "sma_cross", "params": {"fast": 5, "slow": 20}, "order_qty": 0.1}


def staff_client(django_user_model, *codenames: str) -> Client:
    user = make_user(django_user_model, "operator")
    user.is_staff = True
    user.save()
    user.user_permissions.add(*Permission.objects.filter(codename__in=codenames))
    client = Client()
    client.force_login(user)
    return client


@pytest.mark.django_db
def test_backtest_this_config_from_the_engine_admin_page(django_user_model):
    engine = Engine.objects.create(symbol="ETHUSDT", config=CONFIG)
    client = staff_client(
        django_user_model, "view_engine", "change_engine", "add_backtest", "view_backtest"
    )
    change = client.get(f"/admin/engines_app/engine/{engine.pk}/change/").content.decode()
    url = f"/admin/engines_app/engine/{engine.pk}/backtest/"
    assert f'href="{url}"' in change and "Backtest this config" in change
    form = client.get(url).content.decode()
    assert 'value="synthetic_ethusdt_1m.csv.gz" selected' in form  # its symbol's file

    response = client.post(
        url,
        {
            "source": "synthetic_ethusdt_1m.csv.gz",
            "start": "2025-01-01 00:00",
            "end": "2025-01-03 00:00",
            "config": json.dumps(CONFIG),
        },
    )
    row = Backtest.objects.get()
    assert response.status_code == 302 and response["Location"] == f"/backtest/{row.pk}/"
    assert (row.engine, row.symbol, row.candles, row.source) == (
        engine,
        "ETHUSDT",
        2 * 1440,
        "synthetic_ethusdt_1m.csv.gz",
    )
    assert row.user.username == "operator" and row.metrics["trades"] == len(row.trades) > 0

    page = client.get(f"/backtest/{row.pk}/").content.decode()
    assert "Backtest" in page and f"{row.metrics['total_pnl']:.2f}" in page
    chart = json.loads(
        page.split('<script id="equity-data" type="application/json">')[1].split("<")[0]
    )
    assert [s["label"] for s in chart["series"]] == ["strategy", "buy and hold"]
    assert chart["series"][0]["points"] == row.equity
    assert "vendor/uplot-1.6.32/uPlot.iife.min.js" in page
    listed = client.get("/admin/engines_app/backtest/").content.decode()
    assert f'href="/backtest/{row.pk}/"' in listed and "ETHUSDT" in listed


@pytest.mark.django_db
@pytest.mark.parametrize(
    ("data", "reason"),
    [
        ({"config": json.dumps({"params": {"fast": 50, "slow": 20}})}, "params.fast must be"),
        ({"source": "/etc/passwd"}, "Select a valid choice"),
        ({"start": "2031-01-01 00:00"}, "fewer than 2 candles"),
    ],
)
def test_a_bad_backtest_is_refused_with_the_reason_and_stores_nothing(
    django_user_model, data, reason
):
    engine = Engine.objects.create(symbol="ETHUSDT", config=CONFIG)
    client = staff_client(django_user_model, "view_engine", "change_engine", "add_backtest")
    form = {"source": "sample_btcusdt_1m.csv", "config": json.dumps(CONFIG)} | data
    response = client.post(f"/admin/engines_app/engine/{engine.pk}/backtest/", form)
    assert response.status_code == 200
    assert reason in response.content.decode()
    assert not Backtest.objects.exists()


@pytest.mark.django_db
def test_backtesting_needs_its_permission(django_user_model):
    engine = Engine.objects.create(symbol="ETHUSDT", config=CONFIG)
    client = staff_client(django_user_model, "view_engine", "change_engine")
    assert client.get(f"/admin/engines_app/engine/{engine.pk}/backtest/").status_code == 403
    change = client.get(f"/admin/engines_app/engine/{engine.pk}/change/").content.decode()
    assert "Backtest this config" not in change


@pytest.fixture(scope="module")
def web(tmp_path_factory: pytest.TempPathFactory):
    with Installation(tmp_path_factory.mktemp("backtest") / "data") as installation:
        installation.migrate()
        installation.demo_login()
        installation.manage(
            "backtest",
            "BTCUSDT",
            "--strategy",
            "sma_cross",
            "--params",
            '{"fast": 5, "slow": 20}',
            "--csv",
            "synthetic_btcusdt_1m.csv.gz",
            "--to",
            "2025-01-08",
        )
        installation.serve()
        yield installation


@pytest.mark.browser
def test_the_equity_chart_is_drawn_with_a_tooltip_and_zooms(page: Page, web):
    page.goto(web.url + "/login/?next=/backtest/1/")
    page.fill("input[name=username]", "admin")
    page.fill("input[name=password]", web.password)
    page.click("button[type=submit]")
    expect(page).to_have_url(web.url + "/backtest/1/")
    plot = page.locator("#equity-chart .uplot")
    expect(plot.locator("canvas")).to_have_count(1)
    expect(plot.locator(".u-legend")).to_contain_text("buy and hold")
    scale = "document.querySelector('#equity-chart [data-chart]').uplot.scales.x"
    before = page.evaluate(f"[{scale}.min, {scale}.max]")
    assert before[1] - before[0] > 6 * 86_400  # a week of candles

    over = plot.locator(".u-over")
    box = over.bounding_box()
    page.mouse.move(box["x"] + box["width"] * 0.5, box["y"] + box["height"] * 0.5)
    tip = plot.locator(".chart-tip")
    expect(tip).to_be_visible()
    expect(tip).to_contain_text("UTC")
    expect(tip).to_contain_text("strategy: ")
    expect(tip).to_contain_text("2025-01-0")

    page.mouse.move(box["x"] + box["width"] * 0.3, box["y"] + box["height"] * 0.5)
    page.mouse.down()
    page.mouse.move(box["x"] + box["width"] * 0.4, box["y"] + box["height"] * 0.5, steps=5)
    page.mouse.up()
    after = page.evaluate(f"[{scale}.min, {scale}.max]")
    assert before[0] < after[0] < after[1] < before[1]
    assert after[1] - after[0] < (before[1] - before[0]) * 0.2  # zoomed in on the drag
    page.mouse.dblclick(box["x"] + box["width"] * 0.5, box["y"] + box["height"] * 0.5)
    assert page.evaluate(f"[{scale}.min, {scale}.max]") == before  # double-click resets
