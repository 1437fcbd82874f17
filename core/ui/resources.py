"""Process-wide resources for the app, created once per server process (not once per rerun)."""

from __future__ import annotations

import streamlit as st

from core.config import get_settings
from core.db import Database, open_database


@st.cache_resource(show_spinner="Starting the database…")
def database() -> Database:
    return open_database(get_settings())
