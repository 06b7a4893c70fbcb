"""Who is asking: the client's address, believing forwarded headers only from a named proxy.

``X-Forwarded-For`` and ``X-Real-IP`` are written by whoever sends the request, so they are
read only when the peer is one of ``LEVIPANEL_TRUSTED_PROXIES``. Then the client is the
right-most address in ``X-Forwarded-For`` that is not a trusted proxy: each proxy appends
the address it saw, so the entries left of it may be forged, the right-most untrusted one
cannot. A server that already rewrote the peer from such a header (``daphne
--proxy-headers``) is recognised and not believed.
"""

from __future__ import annotations

import ipaddress
from collections.abc import Iterable

from django.conf import settings
from django.http import HttpRequest

Network = ipaddress.IPv4Network | ipaddress.IPv6Network
Address = ipaddress.IPv4Address | ipaddress.IPv6Address
FORWARDING_HEADERS = ("X-Forwarded-For", "X-Real-IP", "Forwarded")


def networks(entries: Iterable[str]) -> list[Network]:
    """The entries that parse as an IP address or network (the system check reports the
    rest)."""
    out = []
    for entry in entries:
        try:
            out.append(ipaddress.ip_network(entry.strip(), strict=False))
        except ValueError:
            continue
    return out


def parse_address(text: str) -> Address | None:
    try:
        return ipaddress.ip_address(text.strip().strip("[]"))
    except ValueError:
        return None


def within(address: Address | None, allowed: list[Network]) -> bool:
    return address is not None and any(address in network for network in allowed)


def client_address(request: HttpRequest) -> Address | None:
    """The client's address; None when it cannot be known: a trusted proxy that did not
    say whom it forwards, or a peer named by the request's own forwarding headers (an
    address a server rewrote from them)."""
    peer = parse_address(request.META.get("REMOTE_ADDR", ""))
    proxies = networks(settings.TRUSTED_PROXIES)
    if within(peer, proxies):
        # Without the header the proxy did not say whom it forwards: not known, rather than
        # everyone behind it counting as the proxy's own address.
        return _rightmost_untrusted(request.headers.get("X-Forwarded-For", ""), proxies)
    forwarded = [request.headers[name] for name in FORWARDING_HEADERS if name in request.headers]
    if peer is not None and _named_in(peer, forwarded):
        return None  # the peer was taken from a header (daphne --proxy-headers): forgeable
    return peer


def login_address(request: HttpRequest) -> str | None:
    """The client's address for login throttling (django-axes), by the same rules."""
    address = client_address(request)
    return None if address is None else str(address)


def _rightmost_untrusted(header: str, proxies: list[Network]) -> Address | None:
    entries = [parse_address(entry) for entry in header.split(",") if entry.strip()]
    for address in reversed(entries):
        if address is None:
            return None  # garbage where an address should be: a broken or forged chain
        if not within(address, proxies):
            return address
    return entries[0] if entries else None


def _named_in(peer: Address, headers: list[str]) -> bool:
    for header in headers:
        for entry in header.replace(";", ",").split(","):
            _, _, value = entry.rpartition("=")  # Forwarded: for=1.2.3.4
            if parse_address(value.strip('"')) == peer:
                return True
    return False
