"""Deliver an alert's text to Slack (incoming webhook) and Telegram (Bot API), with retries.

Delivery never raises: every failure ends up in the returned results, for the Alert row.
"""

from __future__ import annotations

import logging
import time
from dataclasses import dataclass

import httpx
from django.conf import settings

log = logging.getLogger("levipanel.alerts")

OK = "ok"
# An attempt with less time than this is not worth making.
MIN_ATTEMPT = 0.2


@dataclass(frozen=True)
class Channel:
    name: str
    url: str
    payload_key: str
    extra: dict


def channels() -> list[Channel]:
    """The channels whose settings are present."""
    conf = settings.ALERTS
    found = []
    if conf["SLACK_WEBHOOK_URL"]:
        found.append(Channel("slack", conf["SLACK_WEBHOOK_URL"], "text", {}))
    if conf["TELEGRAM_BOT_TOKEN"] and conf["TELEGRAM_CHAT_ID"]:
        base = conf["TELEGRAM_API_BASE"].rstrip("/")
        url = f"{base}/bot{conf['TELEGRAM_BOT_TOKEN']}/sendMessage"
        extra = {"chat_id": conf["TELEGRAM_CHAT_ID"], "disable_web_page_preview": True}
        found.append(Channel("telegram", url, "text", extra))
    return found


def delivery_budget() -> float:
    """Seconds one alert's delivery may take: well inside the task cluster's timeout, which
    kills a task mid-delivery and leaves its alert pending, unrecorded and re-run later."""
    from django_q.conf import Conf

    return 0.75 * (Conf.TIMEOUT or 60)


def deliver(text: str, *, budget: float | None = None) -> tuple[dict[str, str], int]:
    """Send ``text`` to every channel; return {channel: "ok" | why it failed} and attempts.

    Channels take turns, attempt by attempt, so a dead one never starves the others; past
    the budget the rest is given up."""
    conf = settings.ALERTS
    deadline = time.monotonic() + (delivery_budget() if budget is None else budget)
    waiting = {channel.name: channel for channel in channels()}
    results: dict[str, str] = {}
    problems: dict[str, str] = {}
    tries = dict.fromkeys(waiting, 0)
    out_of_time = False
    with httpx.Client() as client:
        for attempt in range(1, conf["RETRIES"] + 1):
            for name, channel in list(waiting.items()):
                # Connect and read each get the timeout: half of what is left covers both.
                timeout = min(conf["TIMEOUT"], (deadline - time.monotonic()) / 2)
                if timeout < MIN_ATTEMPT:
                    out_of_time = True
                    break
                tries[name] += 1
                result, final = _send(client, channel, text, timeout)
                if final:
                    results[name] = result
                    del waiting[name]
                else:
                    problems[name] = result
                    retries = conf["RETRIES"]
                    log.warning(
                        "alert to %s failed (attempt %d/%d): %s", name, attempt, retries, result
                    )
            if out_of_time or not waiting or attempt == conf["RETRIES"]:
                break
            pause = conf["RETRY_DELAY"] * 2 ** (attempt - 1)
            if time.monotonic() + pause >= deadline:
                out_of_time = True
                break
            time.sleep(pause)
    why = " (out of time)" if out_of_time else ""
    for name in waiting:
        problem = problems.get(name, "not tried")
        results[name] = f"gave up after {tries[name]} attempts: {problem}{why}"
    return results, sum(tries.values())


def _send(client: httpx.Client, channel: Channel, text: str, timeout: float) -> tuple[str, bool]:
    """One attempt: its result, and whether it is final (sent, or refused for good)."""
    payload = {**channel.extra, channel.payload_key: text}
    try:
        response = client.post(channel.url, json=payload, timeout=timeout)
    except httpx.HTTPError as exc:
        # The message may hold the URL, and Telegram's URL holds the bot token.
        return type(exc).__name__, False
    if response.is_success:
        return OK, True
    problem = f"HTTP {response.status_code}"
    if response.status_code < 500 and response.status_code != 429:
        return f"refused: {problem}", True  # retrying cannot fix a 4xx
    return problem, False
