"""The JSON API: the guide's paths and shapes, who may call what, and a JSON error for
every bad request."""

from __future__ import annotations

import json
import shutil
import subprocess
from datetime import UTC, datetime, timedelta

import pytest
from django.core.management import call_command
from django.test import Client

from engines_app.api.tokens import api_token_create
from engines_app.models import Engine, EngineCommand
from engines_app.runtime import Status as RuntimeStatus
from tests.helpers import bearer, eventually_sync, heartbeat, hold, make_user

pytestmark = pytest.mark.django_db

# The Epic-1 guide's example responses, as written there.
GUIDE_ENGINE = {
    "symbol": "BTCUSDT",
    "status": "running",
    "uptime_seconds": 45.23,
    "last_heartbeat": 1697180234.567,
    "error_count": 0,
    "last_error": None,
    "position": None,
    "daily_pnl": 0.0,
    "total_pnl": 0.0,
    "trade_count": 0,
}
GUIDE_FLEET = {"total": 3, "running": 3, "crashed": 0, "stopped": 0, "engines": [GUIDE_ENGINE]}
NUMBER = (int, float)
NULLABLE = {"last_heartbeat", "last_error", "position"}  # an engine that never ran has none


def same_shape(example: dict, actual: dict) -> None:
    """Every key of the guide's example is there, with a value of the same kind."""
    for key, value in example.items():
        assert key in actual, f"missing {key!r}"
        if value is None or (key in NULLABLE and actual[key] is None):
            continue
        kind = NUMBER if isinstance(value, NUMBER) else type(value)
        assert isinstance(actual[key], kind), f"{key}: {actual[key]!r} is not like {value!r}"


@pytest.fixture
def engines(db):
    """Four engines a live runner holds, in four statuses."""
    now = datetime.now(UTC)
    engines = [
        Engine.objects.create(
            symbol="BTCUSDT", status="running", started_at=now, last_heartbeat=now, position=0.5
        ),
        Engine.objects.create(symbol="ETHUSDT", status="crashed", last_error="boom"),
        Engine.objects.create(symbol="SOLUSDT", status="stopped", desired_state="stopped"),
        Engine.objects.create(symbol="XRPUSDT", status="failed"),
    ]
    heartbeat("runner-a", host="db-host", pid=4242, held=4, engines=3)
    hold(engines, "runner-a")
    return engines


@pytest.fixture
def operator(django_user_model):
    return make_user(django_user_model, "operator", control=True)


@pytest.fixture
def viewer(django_user_model):
    return make_user(django_user_model, "viewer")


@pytest.fixture
def token(operator) -> dict[str, str]:
    return bearer(operator)


# Shapes --------------------------------------------------------------------------------


def test_fleet_status_has_the_guides_shape_and_counts_every_status(client, engines, token):
    response = client.get("/engines/status", **token)
    assert response.status_code == 200
    assert response["Content-Type"] == "application/json; charset=utf-8"
    body = response.json()
    same_shape({k: v for k, v in GUIDE_FLEET.items() if k != "engines"}, body)
    assert body["total"] == 4
    assert (body["running"], body["crashed"], body["stopped"], body["failed"]) == (1, 1, 1, 1)
    assert body["starting"] == body["backoff"] == body["stopping"] == 0
    assert [e["symbol"] for e in body["engines"]] == ["BTCUSDT", "ETHUSDT", "SOLUSDT", "XRPUSDT"]
    for engine in body["engines"]:
        same_shape(GUIDE_ENGINE, engine)
    btc = body["engines"][0]
    assert btc["status"] == "running" and btc["position"] == 0.5
    assert btc["uptime_seconds"] >= 0 and btc["last_heartbeat"] > 1.6e9
    assert body["engines"][1]["last_error"] == "boom"
    assert body["unknown"] == 0
    assert {engine["runner"] for engine in body["engines"]} == {"runner-a"}


def test_an_engine_whose_runner_went_silent_is_unknown_never_running(client, engines, token):
    """The runner was killed: its rows still say running and crashed, but its lease ran out."""
    seen = datetime.now(UTC) - timedelta(seconds=40)
    heartbeat("runner-a", last_seen=seen)
    hold(engines, "runner-a", seconds=-25)
    body = client.get("/engines/status", **token).json()
    assert (body["running"], body["crashed"], body["unknown"]) == (0, 0, 2)
    assert (body["stopped"], body["failed"], body["total"]) == (1, 1, 4)
    btc = body["engines"][0]
    assert btc["status"] == "unknown" and btc["runner"] is None
    assert btc["runner_last_seen"] == round(seen.timestamp(), 3)
    assert btc["uptime_seconds"] == 0.0 and btc["heartbeat_age_seconds"] >= 0
    one = client.get("/engines/status/ETHUSDT", **token).json()
    assert (one["status"], one["runner"]) == ("unknown", None)
    assert one["runner_last_seen"] == btc["runner_last_seen"]


def test_an_engine_no_runner_ever_held_has_no_runner(client, token):
    Engine.objects.create(symbol="BTCUSDT", status="running")  # a row from before leases
    body = client.get("/engines/status/BTCUSDT", **token).json()
    assert (body["status"], body["runner"], body["runner_last_seen"]) == ("unknown", None, None)


def test_the_runner_of_a_live_engine_and_when_it_was_last_seen(client, engines, token):
    hold(engines[:1], "runner-b")
    beat = heartbeat("runner-b")
    body = client.get("/engines/status/BTCUSDT", **token).json()
    assert (body["status"], body["runner"]) == ("running", "runner-b")
    assert body["runner_last_seen"] == round(beat.last_seen.timestamp(), 3)


def test_the_statuses_counted_are_the_runtimes_and_migrated():
    statuses = [(status.name, status.value) for status in RuntimeStatus]
    assert [(status.name, status.value) for status in Engine.Status] == statuses
    assert max(map(len, Engine.Status.values)) <= Engine._meta.get_field("status").max_length
    # A status added to the runtime needs a migration of the status field's choices.
    call_command("makemigrations", "engines_app", "--check", "--dry-run", verbosity=0)


def test_one_engine_status_has_the_guides_shape(client, engines, token):
    response = client.get("/engines/status/BTCUSDT", **token)
    assert response.status_code == 200
    same_shape(GUIDE_ENGINE, response.json())
    assert response.json()["symbol"] == "BTCUSDT"
    assert response.json()["desired_state"] == "running"


@pytest.mark.parametrize(
    ("action", "desired"), [("start", "running"), ("stop", "stopped"), ("restart", "running")]
)
def test_control_records_a_command_and_answers_202(
    client, engines, token, operator, action, desired
):
    response = client.post(f"/engines/{action}/SOLUSDT", **token)
    assert response.status_code == 202
    body = response.json()
    command = EngineCommand.objects.get()
    assert body == {
        "symbol": "SOLUSDT",
        "action": action,
        "command_id": command.id,
        "outcome": "pending",
        "desired_state": desired,
        "status": "stopped",
        "message": f"{action} SOLUSDT requested; the runner carries it out",
    }
    recorded = (command.symbol, command.action, command.user, command.source)
    assert recorded == ("SOLUSDT", action, operator, "api")
    assert Engine.objects.get(symbol="SOLUSDT").desired_state == desired


def test_restart_of_a_failed_engine_clears_its_failure_budget(client, engines, token):
    assert client.post("/engines/restart/XRPUSDT", **token).status_code == 202
    assert Engine.objects.get(symbol="XRPUSDT").failures_reset_at is not None


def test_schema_and_docs_are_generated_from_the_code(client):
    schema = client.get("/openapi.json").json()
    assert set(schema["paths"]) == {
        "/engines/status",
        "/engines/status/{symbol}",
        "/engines/start/{symbol}",
        "/engines/stop/{symbol}",
        "/engines/restart/{symbol}",
        "/engines/configure/{symbol}",
        "/engines/kill-switch",
        "/engines/trades/{symbol}",
        "/engines/profit",
        "/runners",
    }
    fleet = schema["components"]["schemas"]["FleetOut"]["properties"]
    assert {"total", "running", "crashed", "stopped", "unknown", "engines"} <= set(fleet)
    engine = schema["components"]["schemas"]["EngineOut"]["properties"]
    assert {"runner", "runner_last_seen"} <= set(engine)
    runner = schema["components"]["schemas"]["RunnerOut"]["properties"]
    assert {"name", "host", "pid", "held", "engines", "last_seen", "live"} <= set(runner)
    assert "202" in schema["paths"]["/engines/stop/{symbol}"]["post"]["responses"]
    docs = client.get("/docs")
    assert docs.status_code == 200
    assert b"/openapi.json" in docs.content and b"swagger-ui" in docs.content


# Runners -------------------------------------------------------------------------------


def test_runners_lists_each_runner_and_whether_it_is_live(client, viewer):
    now = datetime.now(UTC)
    heartbeat("runner-a", host="host-1", pid=11, held=20, engines=20)
    heartbeat("runner-b", host="host-2", pid=22, held=7, last_seen=now - timedelta(seconds=60))
    heartbeat("runner-c", host="host-3", pid=33, stopped_at=now)  # stopped on a signal
    response = client.get("/runners", **bearer(viewer))
    assert response.status_code == 200
    runners = response.json()["runners"]
    assert [(r["name"], r["live"]) for r in runners] == [
        ("runner-a", True),
        ("runner-b", False),
        ("runner-c", False),
    ]
    a = runners[0]
    assert (a["host"], a["pid"], a["held"], a["engines"]) == ("host-1", 11, 20, 20)
    assert a["stopped_at"] is None and a["last_seen"] >= a["started_at"] > 1.6e9
    assert runners[2]["stopped_at"] == round(now.timestamp(), 3)


def test_a_runner_is_live_within_the_lease(client, viewer, settings):
    settings.LEVIPANEL = {**settings.LEVIPANEL, "LEASE": 60.0}
    heartbeat("runner-b", last_seen=datetime.now(UTC) - timedelta(seconds=45))
    (runner,) = client.get("/runners", **bearer(viewer)).json()["runners"]
    assert runner["live"] is True


def test_runners_needs_a_user(client):
    response = client.get("/runners")
    assert response.status_code == 401 and "detail" in response.json()


# Who may call what ---------------------------------------------------------------------

GET, POST = ("get", "/engines/status/BTCUSDT"), ("post", "/engines/stop/BTCUSDT")


def login(client: Client, user) -> Client:
    client.force_login(user)
    return client


@pytest.mark.parametrize(
    ("who", "request_", "expected"),
    [
        ("anonymous", GET, 401),
        ("anonymous", POST, 401),
        ("viewer session", GET, 200),
        ("viewer session", POST, 403),
        ("operator session", GET, 200),
        ("operator session", POST, 202),
        ("viewer token", GET, 200),
        ("viewer token", POST, 403),
        ("operator token", GET, 200),
        ("operator token", POST, 202),
        ("bad token", GET, 401),
        ("bad token", POST, 401),
        ("inactive user's token", GET, 401),
    ],
)
def test_auth_matrix(client, engines, operator, viewer, who, request_, expected):
    headers = {}
    if who == "viewer session":
        login(client, viewer)
    elif who == "operator session":
        login(client, operator)
    elif who == "viewer token":
        headers = bearer(viewer)
    elif who == "operator token":
        headers = bearer(operator)
    elif who == "bad token":
        headers = {"HTTP_AUTHORIZATION": "Bearer lvp_" + "x" * 43}
    elif who == "inactive user's token":
        headers = bearer(operator)
        operator.is_active = False
        operator.save()
    method, url = request_
    response = getattr(client, method)(url, **headers)
    assert response.status_code == expected, response.content
    assert response["Content-Type"].startswith("application/json")
    if expected >= 400:
        assert response.json()["detail"]
        assert not EngineCommand.objects.exists()  # refused: nothing changed
        assert Engine.objects.get(symbol="BTCUSDT").desired_state == "running"


def test_session_control_needs_the_csrf_token(engines, operator):
    client = login(Client(enforce_csrf_checks=True), operator)
    refused = client.post("/engines/stop/BTCUSDT")
    assert refused.status_code == 403
    assert "CSRF" in refused.json()["detail"]
    assert not EngineCommand.objects.exists()
    client.get("/admin/login/")  # sets the csrftoken cookie, as any page with a form does
    csrf = client.cookies["csrftoken"].value
    assert client.post("/engines/stop/BTCUSDT", HTTP_X_CSRFTOKEN=csrf).status_code == 202
    assert client.get("/engines/status").status_code == 200  # reads need no CSRF token


def test_token_control_needs_no_csrf_token(engines, token):
    client = Client(enforce_csrf_checks=True)
    assert client.post("/engines/stop/BTCUSDT", **token).status_code == 202


def test_a_bad_token_is_refused_even_with_a_valid_session(client, engines, operator):
    login(client, operator)
    response = client.post("/engines/stop/BTCUSDT", HTTP_AUTHORIZATION="Bearer nope")
    assert response.status_code == 401
    assert not EngineCommand.objects.exists()


@pytest.mark.parametrize(
    "header",
    [
        "Bearer",
        "Bearer ",
        "Token lvp_abc",
        "Basic dXNlcjpwdw==",
        "bearer lvp_short",
        "Bearer lvp_" + "é" * 43,
        "Bearer " + "x" * 5000,
        "lvp_" + "x" * 43,
    ],
)
def test_a_malformed_token_is_a_json_401(client, engines, header):
    response = client.get("/engines/status", HTTP_AUTHORIZATION=header)
    assert response.status_code == 401
    assert response.json()["detail"]


def test_a_deleted_token_no_longer_works(client, engines, operator):
    token, key = api_token_create(user=operator, name="ci")
    headers = {"HTTP_AUTHORIZATION": f"Bearer {key}"}
    assert client.get("/engines/status", **headers).status_code == 200
    token.refresh_from_db()
    assert token.last_used_at is not None
    assert token.key_hash != key and key not in token.key_hash  # only a hash is stored
    token.delete()
    assert client.get("/engines/status", **headers).status_code == 401


# Bad input -----------------------------------------------------------------------------


@pytest.mark.parametrize("method", ["get", "post"])
def test_an_unknown_symbol_is_404(client, engines, token, method):
    url = "/engines/status/DOGEUSDT" if method == "get" else "/engines/start/DOGEUSDT"
    response = getattr(client, method)(url, **token)
    assert response.status_code == 404
    assert response.json() == {"detail": "no engine with symbol DOGEUSDT"}
    assert not EngineCommand.objects.exists()


@pytest.mark.parametrize(
    ("symbol", "message"),
    [
        ("btcusdt", "did you mean BTCUSDT?"),
        ("B", "2-20 upper-case"),
        ("BTC-USDT", "2-20 upper-case"),
        ("BTC%20USDT", "2-20 upper-case"),
        ("%C3%87USDT", "2-20 upper-case"),
        ("%FF", "2-20 upper-case"),
        ("BTC%00", "2-20 upper-case"),
        ("BTCUSDT%0A", "2-20 upper-case"),  # "$" alone would let a trailing newline by
        ("A" * 21, "longer than 20"),
        ("A" * 5000, "longer than 20"),
    ],
)
@pytest.mark.parametrize("path", ["status", "start", "stop", "restart"])
def test_a_malformed_symbol_is_400(client, engines, token, symbol, message, path):
    method = client.get if path == "status" else client.post
    response = method(f"/engines/{path}/{symbol}", **token)
    assert response.status_code == 400
    assert message in response.json()["detail"]
    assert not EngineCommand.objects.exists()


@pytest.mark.parametrize(
    ("method", "url", "allowed"),
    [
        ("post", "/engines/status", "GET"),
        ("delete", "/engines/status/BTCUSDT", "GET"),
        ("get", "/engines/start/BTCUSDT", "POST"),
        ("put", "/engines/stop/BTCUSDT", "POST"),
        ("patch", "/engines/restart/BTCUSDT", "POST"),
    ],
)
def test_a_wrong_method_is_a_json_405(client, engines, token, method, url, allowed):
    response = getattr(client, method)(url, **token)
    assert response.status_code == 405
    assert response["Allow"] == allowed
    assert allowed in response.json()["detail"]
    assert not EngineCommand.objects.exists()


@pytest.mark.parametrize(
    "url",
    [
        "/engines",
        "/engines/",
        "/engines/status/",
        "/engines/pause/BTCUSDT",
        "/engines/start/BTC/USDT",
        "/engines/start",
        "/engines/status/BTCUSDT/extra",
    ],
)
def test_an_unknown_path_under_engines_is_a_json_404(client, token, url):
    response = client.get(url, **token)
    assert response.status_code == 404
    assert response.json()["detail"].startswith("not found")


@pytest.mark.parametrize("url", ["/engines/restart/", "/engines/pause/BTCUSDT"])
def test_a_post_to_an_unknown_path_is_a_json_404_not_a_csrf_page(engines, token, url):
    client = Client(enforce_csrf_checks=True)  # a token client has no CSRF cookie
    response = client.post(url, **token)
    assert response.status_code == 404
    assert response.json()["detail"].startswith("not found")


def test_a_newline_in_a_path_under_engines_is_a_json_404(client, token):
    response = client.get("/engines/status/BTCUSDT%0A/", **token)
    assert response.status_code == 404
    assert response.json()["detail"].startswith("not found")


# The guide's curl examples, against a running panel -------------------------------------

MAKE_TOKEN = (
    "from django.contrib.auth import get_user_model;"
    "from engines_app.api.tokens import api_token_create;"
    "user = get_user_model().objects.create_superuser('ops', '', None);"
    "print(api_token_create(user=user, name='curl')[1])"
)
ACKED = (
    "from engines_app.models import EngineCommand;print(EngineCommand.objects.get(pk=%d).outcome)"
)


@pytest.mark.skipif(not shutil.which("curl"), reason="curl is not installed")
def test_the_guides_curl_examples_work_against_the_running_panel(project):
    key = project.manage("shell", "-c", MAKE_TOKEN).stdout.split()[-1]
    project.start("manage.py", "runengines", log_name="runner")
    project.serve()
    port = project.port
    auth = f' -H "Authorization: Bearer {key}"'

    def curl(example: str) -> dict:
        """Run a line of the guide, on this panel's port, with the token header added."""
        command = example.replace("localhost:8000", f"localhost:{port}").replace(
            " |", auth + " |", 1
        )
        command = command if auth in command else command + auth
        done = subprocess.run(["bash", "-c", command], capture_output=True, text=True, timeout=20)
        assert done.returncode == 0 and done.stdout, (command, done.stdout, done.stderr)
        return json.loads(done.stdout)

    def all_three_running() -> dict | None:
        fleet = curl("curl -s http://localhost:8000/engines/status | jq")
        return fleet if fleet["running"] == 3 else None

    fleet = eventually_sync(all_three_running, message="the three engines did not start")
    assert fleet["total"] == 3 and fleet["crashed"] == fleet["stopped"] == 0
    assert [e["symbol"] for e in fleet["engines"]] == ["BTCUSDT", "ETHUSDT", "SOLUSDT"]
    for engine in fleet["engines"]:
        same_shape(GUIDE_ENGINE, engine)
    same_shape(GUIDE_ENGINE, curl("curl -s http://localhost:8000/engines/status/BTCUSDT | jq"))

    def status(symbol: str) -> str:
        return curl(f"curl -s http://localhost:8000/engines/status/{symbol} | jq")["status"]

    assert curl("curl -X POST http://localhost:8000/engines/stop/SOLUSDT")["action"] == "stop"
    eventually_sync(lambda: status("SOLUSDT") == "stopped", message="SOLUSDT did not stop")
    assert curl("curl -X POST http://localhost:8000/engines/start/SOLUSDT")["action"] == "start"
    eventually_sync(lambda: status("SOLUSDT") == "running", message="SOLUSDT did not start")
    restart = curl("curl -X POST http://localhost:8000/engines/restart/BTCUSDT")
    assert restart["action"] == "restart"

    def outcome(command_id: int) -> str:
        return project.manage("shell", "-c", ACKED % command_id).stdout.split()[-1]

    eventually_sync(
        lambda: outcome(restart["command_id"]) == "done", message="the restart was not carried out"
    )
    assert status("BTCUSDT") == "running"


@pytest.mark.parametrize("page", ["1000001", "99999999999999999999"])
def test_a_page_far_past_the_end_is_a_400_not_a_busy_database(client, engines, token, page):
    response = client.get(f"/engines/trades/BTCUSDT?page={page}", **token)
    assert response.status_code == 400
    assert "page must be >= 1 (at most 1000000)" in response.json()["detail"]


def api_operations() -> list[tuple[str, str]]:
    """Every (method, path) the API serves, from its OpenAPI schema, with a symbol filled in."""
    from engines_app.api import api

    schema = api.get_openapi_schema()
    return [
        (method.upper(), path.replace("{symbol}", "BTCUSDT"))
        for path, operations in schema["paths"].items()
        for method in operations
    ]


@pytest.mark.parametrize(("method", "path"), api_operations())
def test_every_method_on_every_path_without_credentials_is_a_json_401(engines, method, path):
    client = Client(enforce_csrf_checks=True)  # as a real client: CSRF is checked
    response = client.generic(method, path)
    assert response.status_code == 401, response.content
    assert response.json()["detail"]
    assert not EngineCommand.objects.exists()


@pytest.mark.parametrize("method", ["POST", "PUT", "PATCH", "DELETE"])
def test_an_unsafe_method_without_credentials_is_never_a_csrf_403(engines, method):
    client = Client(enforce_csrf_checks=True)
    for path in ("/engines/status", "/engines/stop/BTCUSDT"):
        response = client.generic(method, path)
        assert response.status_code in (401, 405), (path, response.content)
        assert "CSRF" not in response.json()["detail"]
