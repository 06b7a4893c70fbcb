"""The admin, one module per area; importing this package registers every ModelAdmin."""

from . import alerts, engines, exchanges, runners, trading  # noqa: F401
