from django.dispatch import Signal

# Sent by the runner right after a write transaction committed, on its database thread.
# Keyword arguments: ``symbols`` (set of symbols whose status/error/restart rows changed),
# ``statuses``, ``errors``, ``restarts`` (lists of the rows written) and ``heartbeats``
# (True when heartbeats/PnL were flushed). Receivers must be quick: push a hint, enqueue a
# task; never block.
engines_written = Signal()
