"""The one error type of training data: the message says what is wrong and what to do."""


class DatasetError(ValueError):
    """A dataset request that cannot be carried out as given."""
