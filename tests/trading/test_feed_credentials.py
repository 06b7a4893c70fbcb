"""Credentials in a feed URL reach no log line, error row or page: only the stored config."""

from __future__ import annotations

import html
import json
import threading
from collections.abc import Iterator
from http import HTTPStatus

import httpx
import pytest
from websockets.sync.server import serve

from engines_app.runtime.redact import redact_url
from tests.helpers import eventually_sync, query

PASSWORD, API_KEY, TOKEN, MOVED_TOKEN = "pw-4f1c9e", "ak-77d2b0", "tk-0a93e5", "mv-52c8d1"
SECRETS = (PASSWORD, API_KEY, TOKEN, MOVED_TOKEN)


@pytest.fixture
def exchange() -> Iterator[int]:
    """A local stream server that refuses what it is asked for: ``/stream`` sends one message
    it cannot read and hangs up; ``/moved`` sends the client to an address with credentials
    in it and no host (the websockets client cannot follow it)."""

    def process_request(connection, request):
        if request.path.startswith("/moved"):
            response = connection.respond(HTTPStatus.FOUND, "moved\n")
            response.headers["Location"] = f"ws://trader:{PASSWORD}@/gone?token={MOVED_TOKEN}"
            return response
        return None

    def handler(socket) -> None:
        socket.send("not a market data message")
        socket.close()

    with serve(handler, "127.0.0.1", 0, process_request=process_request) as server:
        thread = threading.Thread(target=server.serve_forever, daemon=True)
        thread.start()
        yield server.socket.getsockname()[1]
        server.shutdown()


def ws_config(url: str) -> dict:
    options = {"url": url, "reconnect_base": 0.05, "reconnect_cap": 0.2}
    return {"feed": "ws", "feed_options": options}


def test_feed_credentials_stay_out_of_logs_errors_and_pages(project, exchange):
    stream = f"ws://trader:{PASSWORD}@127.0.0.1:{exchange}/stream?symbol=btcusdt&api_key={API_KEY}"
    moved = f"ws://127.0.0.1:{exchange}/moved?token={TOKEN}"
    configs = {"BTCUSDT": ws_config(stream), "ETHUSDT": ws_config(moved)}
    project.manage(
        "shell",
        "-c",
        "import json; from engines_app.services import engine_add\n"
        f"for symbol, config in json.loads({json.dumps(configs)!r}).items():\n"
        "    engine_add(symbol=symbol, config=config, cycle_interval=0.05)",
    )
    project.demo_login()
    project.start("manage.py", "runengines", "--symbols", "BTCUSDT", "ETHUSDT", log_name="run")

    def both_erred():
        rows = query(project, "SELECT symbol, error_count FROM engines_app_engine")
        return all(count >= 2 for _, count in rows) and len(rows) == 2

    eventually_sync(both_erred, timeout=30, interval=0.2, message="no feed errors recorded")
    logs = "".join(path.read_text() for path in (project.data_dir / "logs").glob("*.jsonl"))
    assert "Connected to market data at ws://***@127.0.0.1" in logs  # the stream was reached
    errors = query(project, "SELECT type, message, traceback FROM engines_app_engineerror")
    assert any(kind == "InvalidURI" for kind, _, _ in errors), errors
    engines = query(project, "SELECT last_error, status_reason FROM engines_app_engine")
    project.serve()
    with httpx.Client(base_url=project.url, cookies={"sessionid": project.login()}) as client:
        page = client.get("/engine/BTCUSDT/").text
        moved_page = client.get("/engine/ETHUSDT/").text

    # The engine page names the feed, without its credentials.
    assert html.escape(redact_url(stream)) in page
    for secret in SECRETS:
        for where, text in [
            ("log", logs),
            ("error rows", repr(errors)),
            ("engine rows", repr(engines)),
            ("engine page", page + moved_page),
        ]:
            assert secret not in text, f"{secret} in the {where}"
    stored = query(project, "SELECT config FROM engines_app_engine WHERE symbol = 'BTCUSDT'")
    assert json.loads(stored[0][0])["feed_options"]["url"] == stream  # kept as given
