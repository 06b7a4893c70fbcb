from django.dispatch import Signal

# Sent by ``runner.store.write`` right after its transaction committed, on the runner's
# database thread, with ``sender=Engine`` and these keyword arguments:
#   ``statuses``   the ``StatusRow`` list written (each with ``id`` = engine id and ``code``),
#   ``errors``     the ``EngineError`` rows created,
#   ``restarts``   the ``EngineRestart`` rows created,
#   ``heartbeats`` True when heartbeats (and PnL) were flushed,
#   ``acks``       the ``Ack`` list of commands carried out,
#   ``books``      the ``BookRow`` list of fills and daily resets.
# Also sent by ``runner.store.claim_engines`` after a claim committed, with only:
#   ``takeovers``  [{"runner": claimer, "previous": old owner, "symbols": [...]}] for engines
#                  claimed from another runner whose lease had expired.
# Receivers must be quick: push a hint, enqueue a task; never block, never write.
engines_written = Signal()
