"""Process-wide resources for the app, created once per server process (not once per rerun)."""

from __future__ import annotations

import streamlit as st

from core.config import get_settings
from core.db import Database, open_database
from core.errors import UserError
from core.models import LoadedModel, load_model
from core.models.adapters import import_local_adapters


def _answers(db: Database) -> bool:
    """Checked on every run of a page, so a database that went away is opened again; while it
    cannot be, `database()` raises DatabaseUnavailable (a UserError) and the app says so instead
    of showing a traceback. An embedded server that died is started again by the engine itself."""
    try:
        db.check()
    except UserError:  # DatabaseUnavailable, or EmbeddedDatabaseError when it cannot start again
        return False
    return True


@st.cache_resource(show_spinner="Starting the database…", validate=_answers)
def database() -> Database:
    settings = get_settings()
    db = open_database(settings)
    db.check()
    import_local_adapters(db, settings)  # adapters saved as folders by older versions join the database once
    return db


def language_model(model_id: str, load_in_4bit: bool = False) -> LoadedModel:
    """Not st.cache_resource: load_model keeps a bounded cache of its own, and a second cache here would keep
    the models it drops in memory. The spinner shows only when loading takes a moment."""
    with st.spinner("Loading the language model (the first time converts the bundled model)…"):
        return load_model(model_id, load_in_4bit=load_in_4bit)
