"""Example strategies, to copy and adapt (see docs/strategies.md)."""
