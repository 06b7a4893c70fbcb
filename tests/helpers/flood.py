"""A websocket flood, run as its own process so it does not share the test's interpreter:
``python tests/helpers/flood.py WS_URL ORIGIN SESSION CLIENTS SECONDS``.

Each client opens the dashboard's websocket, sends snapshot requests as fast as it can and
never reads what comes back; when the server closes it, it connects again a moment later
(a handshake flood is for the reverse proxy's per-address limits). At the end it prints one
JSON line: connections made and frames sent.
"""

from __future__ import annotations

import asyncio
import json
import sys
import time

from websockets.asyncio.client import connect
from websockets.exceptions import InvalidStatus, WebSocketException

FRAME = json.dumps({"type": "snapshot"})
RECONNECT_AFTER = 0.2


async def client(url: str, headers: dict[str, str], until: float, totals: dict[str, int]) -> None:
    while time.monotonic() < until:
        try:
            # max_queue=1: stop reading from the socket after one unread frame.
            async with connect(url, additional_headers=headers, max_queue=1) as socket_:
                totals["connections"] += 1
                while time.monotonic() < until:
                    await socket_.send(FRAME)
                    totals["frames"] += 1
                    await asyncio.sleep(0)
        except (InvalidStatus, WebSocketException, OSError):
            totals["closed"] += 1
        await asyncio.sleep(RECONNECT_AFTER)


async def main(url: str, origin: str, session: str, clients: int, seconds: float) -> None:
    headers = {"Origin": origin, "Cookie": f"sessionid={session}"}
    totals = {"connections": 0, "frames": 0, "closed": 0}
    until = time.monotonic() + seconds
    await asyncio.gather(*(client(url, headers, until, totals) for _ in range(clients)))
    print(json.dumps(totals), flush=True)


if __name__ == "__main__":
    url, origin, session, clients, seconds = sys.argv[1:6]
    asyncio.run(main(url, origin, session, int(clients), float(seconds)))
