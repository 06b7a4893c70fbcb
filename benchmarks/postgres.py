"""A PostgreSQL server for the benchmark sections that need one: where it is, whether it
answers, and a fresh database on it for one run."""

from __future__ import annotations

import contextlib
import os
import socket
import uuid
from collections.abc import Iterator
from urllib.parse import urlparse

from benchmarks import Skip

DEFAULT_SERVER = "postgres://postgres@127.0.0.1:5432/postgres"


def server_url() -> str:
    """The PostgreSQL server to create the run's database on: ``DATABASE_URL`` when it
    points at PostgreSQL, else the local default."""
    url = os.environ.get("DATABASE_URL", "")
    return url if urlparse(url).scheme.startswith("postgres") else DEFAULT_SERVER


def psycopg_module():
    """psycopg, or ``Skip`` when it is not installed."""
    try:
        import psycopg
    except ImportError as exc:
        raise Skip("psycopg is not installed") from exc
    return psycopg


def need(url: str) -> None:
    parsed = urlparse(url)
    address = (parsed.hostname or "127.0.0.1", parsed.port or 5432)
    try:
        with socket.create_connection(address, timeout=1):
            return
    except OSError:
        raise Skip(f"PostgreSQL is not reachable at {address[0]}:{address[1]}") from None


@contextlib.contextmanager
def database(server: str) -> Iterator[str]:
    """A fresh database on ``server`` for this run, dropped after it with every connection
    left on it; yields its URL."""
    psycopg = psycopg_module()
    name = f"levipanel_bench_{uuid.uuid4().hex[:12]}"
    with psycopg.connect(server, autocommit=True) as admin:
        admin.execute(f'CREATE DATABASE "{name}"')
    try:
        yield urlparse(server)._replace(path=f"/{name}").geturl()
    finally:
        with psycopg.connect(server, autocommit=True) as admin:
            admin.execute(f'DROP DATABASE IF EXISTS "{name}" WITH (FORCE)')
