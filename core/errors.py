"""The one base class of user mistakes."""


class UserError(ValueError):
    """A mistake the user can fix: a missing file, an unknown name or id, a setting out of range.

    The message says what is wrong and what to do, in one or two sentences. Each capability keeps
    its own subclass (IngestError, DatasetError, JobError, ...) so callers can still catch one kind;
    the command line (`python -m core`: "error: ...", exit status 2) and the pages
    (`core.ui.errors.user_errors`: st.error) catch the base class once. Anything else is a bug and
    keeps its traceback.
    """
