"""Errors of the job system."""

from __future__ import annotations

from core.errors import UserError


class JobError(UserError):
    """A job request that cannot be carried out; the message says why and what to do."""


class LostOwnership(RuntimeError):
    """This attempt no longer owns its job (declared dead, cancelled or claimed again): stop now."""
