"""The runner hosts the runtime: ``lifecycle`` starts and stops it, ``reconciler`` moves the
engines toward the desired state, ``writer`` batches what happened into the database through
``store``, the runner's one boundary with the ORM."""

from .lifecycle import Runner, RunnerFailed

__all__ = ["Runner", "RunnerFailed"]
