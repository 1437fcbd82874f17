"""User mistakes in the pages: shown as one st.error with core's message, never a traceback."""

from __future__ import annotations

from collections.abc import Iterator
from contextlib import contextmanager
from dataclasses import dataclass

import streamlit as st

from core.errors import UserError
from core.ui.safe_text import safe_markdown


@dataclass
class Caught:
    """What `user_errors` caught: the error, or None when the block ran to its end."""

    error: UserError | None = None


@contextmanager
def user_errors(prefix: str = "", *, stop: bool = False) -> Iterator[Caught]:
    """Show a UserError raised in the block as st.error(prefix + its message), and carry on after the
    block (`stop`: end this run of the page there). Any other exception is a bug and propagates.

        with user_errors() as caught:
            preview = preview_dataset(...)
        if caught.error:
            return
    """
    caught = Caught()
    try:
        yield caught
    except UserError as error:
        caught.error = error
        st.error(safe_markdown(f"{prefix}{error}"))  # messages quote file contents: names, rows, questions
        if stop:
            st.stop()
