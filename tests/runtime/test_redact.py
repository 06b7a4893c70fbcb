"""redact_url / redact_text: what is masked in a URL, and what is left as written."""

from __future__ import annotations

import pytest

from engines_app.runtime.redact import redact_text, redact_url


@pytest.mark.parametrize(
    ("url", "redacted"),
    [
        (
            "wss://u:p@h.example:9443/ws?symbol=btc/usdt",
            "wss://***@h.example:9443/ws?symbol=btc/usdt",
        ),
        ("ws://h/x?api_key=K&Signature=S&x=1", "ws://h/x?api_key=***&Signature=***&x=1"),
        ("ws://h/x?apiKey=K;passphrase=P#f", "ws://h/x?apiKey=***;passphrase=***#f"),
        (
            "ws://h/x?listenKey=K&secret=&password=P",
            "ws://h/x?listenKey=***&secret=***&password=***",
        ),
        ("ws://u:p@[::1/x?token=T", "ws://***@[::1/x?token=***"),
        ("ws://h:8443/x?symbol=BTCUSDT", "ws://h:8443/x?symbol=BTCUSDT"),
    ],
)
def test_redact_url_masks_user_info_and_credential_parameters(url, redacted):
    assert redact_url(url) == redacted


def test_redact_text_masks_every_url_in_a_message():
    message = "ws://u:pw@h/a isn't a valid URI; retried wss://h/b?token=T0 after 1 s"
    assert (
        redact_text(message)
        == "ws://***@h/a isn't a valid URI; retried wss://h/b?token=*** after 1 s"
    )
