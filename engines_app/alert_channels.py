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


def deliver(text: str) -> tuple[dict[str, str], int]:
    """Send ``text`` to every channel; return {channel: "ok" | why it failed} and attempts."""
    conf = settings.ALERTS
    results: dict[str, str] = {}
    attempts = 0
    with httpx.Client(timeout=conf["TIMEOUT"]) as client:
        for channel in channels():
            result, tries = _send(client, channel, text, conf["RETRIES"], conf["RETRY_DELAY"])
            results[channel.name] = result
            attempts += tries
    return results, attempts


def _send(
    client: httpx.Client, channel: Channel, text: str, retries: int, delay: float
) -> tuple[str, int]:
    payload = {**channel.extra, channel.payload_key: text}
    problem = ""
    for attempt in range(1, retries + 1):
        try:
            response = client.post(channel.url, json=payload)
        except httpx.HTTPError as exc:
            # The message may hold the URL, and Telegram's URL holds the bot token.
            problem = type(exc).__name__
        else:
            if response.is_success:
                return OK, attempt
            problem = f"HTTP {response.status_code}"
            if response.status_code < 500 and response.status_code != 429:
                return f"refused: {problem}", attempt  # retrying cannot fix a 4xx
        log.warning("alert to %s failed (attempt %d/%d): %s",
                    channel.name, attempt, retries, problem)  # fmt: skip
        if attempt < retries:
            time.sleep(delay * 2 ** (attempt - 1))
    return f"gave up after {retries} attempts: {problem}", retries
