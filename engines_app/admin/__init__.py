"""The admin, one module per area; importing this package registers every ModelAdmin."""

from . import alerts, engines, trading  # noqa: F401
