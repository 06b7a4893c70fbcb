"""Schemathesis against ``/openapi.json``: every operation, with a token, in-process through
Django's WSGI handler. No answer is a 5xx, and every answer is one the schema documents,
with a body of its documented shape. Start, stop and restart are fuzzed too: 202 or 4xx."""

from __future__ import annotations

import pytest
import schemathesis
from django.core.signals import request_finished, request_started
from django.core.wsgi import get_wsgi_application
from django.db import close_old_connections
from schemathesis.checks import positive_data_acceptance

from engines_app.api.tokens import api_token_create
from engines_app.models import Engine
from tests.helpers import fuzz_examples, fuzz_settings, heartbeat, hold, make_user

# Loaded as a client loads it: the document the app serves.
schema = schemathesis.openapi.from_wsgi("/openapi.json", get_wsgi_application())
schema.config.generation.update(max_examples=fuzz_examples(25), deterministic=True)


@pytest.fixture(params=["operator", "reader"])
def token(request, db, django_user_model) -> str:
    """The token of an operator (may steer) or of a reader (gets 403s), with a few engines,
    two of them held by a live runner."""
    engines = [Engine.objects.create(symbol=symbol) for symbol in ("BTCUSDT", "ETHUSDT", "AB")]
    hold(engines[:2])
    heartbeat()
    user = make_user(django_user_model, request.param, control=request.param == "operator")
    return api_token_create(user=user, name="fuzz")[1]


@pytest.fixture(autouse=True)
def keep_connection():
    """Like Django's test client: a request must not close the test's database connection."""
    request_started.disconnect(close_old_connections)
    request_finished.disconnect(close_old_connections)
    yield
    request_started.connect(close_old_connections)
    request_finished.connect(close_old_connections)


@schema.parametrize()
@fuzz_settings(25)
def test_every_answer_is_documented(case, token):
    """Status documented, body valid, never a 5xx; a request without the token is a 401,
    another method a 405 (schemathesis's own checks, run by ``call_and_validate``)."""
    # An engine config's validity (a strategy's parameters, its module being listed) is not
    # a JSON schema's to say: a schema-valid config may still get its reasoned 400.
    excluded = [positive_data_acceptance] if case.path == "/engines/configure/{symbol}" else []
    # The app is called through werkzeug's test client, which does not undo a gzipped
    # body; the gzipped list is checked against the plain one in test_status_list.py.
    headers = {"Authorization": f"Bearer {token}", "Accept-Encoding": "identity"}
    response = case.call_and_validate(headers=headers, excluded_checks=excluded)
    assert response.status_code < 500
