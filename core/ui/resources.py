"""Process-wide resources for the app, created once per server process (not once per rerun)."""

from __future__ import annotations

import streamlit as st

from core.config import get_settings
from core.db import Database, open_database
from core.models import LoadedModel, load_model
from core.models.adapters import import_local_adapters


@st.cache_resource(show_spinner="Starting the database…")
def database() -> Database:
    settings = get_settings()
    db = open_database(settings)
    import_local_adapters(db, settings)  # adapters saved as folders by older versions join the database once
    return db


@st.cache_resource(show_spinner="Loading the language model (the first time converts the bundled model)…")
def language_model(model_id: str, load_in_4bit: bool = False) -> LoadedModel:
    return load_model(model_id, load_in_4bit=load_in_4bit)
