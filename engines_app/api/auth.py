"""Who is calling: an API token (``Authorization: Bearer …``) or a logged-in session."""

from __future__ import annotations

from django.http import HttpRequest
from ninja.errors import AuthenticationError
from ninja.security import HttpBearer
from ninja.security import SessionAuth as NinjaSessionAuth

from .reads import read
from .tokens import api_token_found, api_token_touch, api_token_user


class TokenAuth(HttpBearer):
    """A token from the admin. A bad one is refused outright, never passed on to the
    session, so a client learns its token is wrong."""

    def authenticate(self, request: HttpRequest, token: str):
        return self.accepted(request, api_token_user(token.strip()))

    @staticmethod
    def accepted(request: HttpRequest, user):
        """The token's user, now the request's; a 401 for a bad token (``user`` None)."""
        if user is None:
            raise AuthenticationError(message="invalid or revoked API token")
        request.user = user
        return user

    def __call__(self, request: HttpRequest):
        header = request.headers.get(self.header, "")
        if header and not header.lower().startswith("bearer "):
            raise AuthenticationError(
                message="malformed Authorization header: use 'Bearer <token>'"
            )
        return super().__call__(request)


class SessionAuth(NinjaSessionAuth):
    """The admin's session; unsafe methods need the CSRF token too."""

    def __call__(self, request: HttpRequest):
        if "Authorization" in request.headers:
            return None  # the token decides
        user = getattr(request, "user", None)
        if user is None or not user.is_authenticated:
            # No credentials at all: a 401, whatever the method. The CSRF check guards a
            # session, and there is none.
            return None
        return super().__call__(request)

    def authenticate(self, request: HttpRequest, key):
        user = getattr(request, "user", None)
        return user if user is not None and user.is_authenticated else None


class ReadTokenAuth(TokenAuth):
    """``TokenAuth`` for the status reads: the token is looked up on the short reads'
    thread, with its kept connection. Its use is noted (a write, once a minute) on the
    request's own thread: a write waiting for the database's lock holds up no other read."""

    def authenticate(self, request: HttpRequest, key: str):
        token = read(api_token_found, key.strip())
        if token is not None:
            api_token_touch(token)
        return self.accepted(request, None if token is None else token.user)


class ReadSessionAuth(SessionAuth):
    """``SessionAuth`` for the status reads: the session is loaded on the short reads'
    thread."""

    def __call__(self, request: HttpRequest):
        return read(super().__call__, request)


# The OpenAPI schema names a scheme after its class: these are the same two schemes, so a
# client authorized for them in /docs can call the status reads too.
ReadTokenAuth.__name__ = TokenAuth.__name__
ReadSessionAuth.__name__ = SessionAuth.__name__
