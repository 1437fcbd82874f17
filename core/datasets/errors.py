"""The one error type of training data: the message says what is wrong and what to do."""

from core.errors import UserError


class DatasetError(UserError):
    """A dataset request that cannot be carried out as given."""
