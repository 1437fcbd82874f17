"""The Fine-tune page's settings form, built from TrainingSettings and its help text."""

from __future__ import annotations

from dataclasses import fields

import streamlit as st

from core.training.spec import TrainingSettings


def settings_form(defaults: TrainingSettings, key: str) -> TrainingSettings:
    """One input per setting, three to a row, each with the setting's own help text."""
    values = {}
    columns = st.columns(3)
    for index, f in enumerate(fields(TrainingSettings)):
        column = columns[index % 3]
        label = f.name.replace("_", " ").capitalize()
        default = getattr(defaults, f.name)
        widget_key = f"{key}_{f.name}"
        meta = f.metadata
        if isinstance(default, bool):
            values[f.name] = column.checkbox(label, value=default, help=meta["help"], key=widget_key)
        elif "choices" in meta:
            values[f.name] = column.selectbox(label, meta["choices"], index=meta["choices"].index(default),
                                              help=meta["help"], key=widget_key)
        elif isinstance(default, int):
            values[f.name] = int(column.number_input(label, min_value=meta["min"], max_value=meta["max"], value=default,
                                                     step=1, help=meta["help"], key=widget_key))
        elif isinstance(default, float):
            values[f.name] = float(column.number_input(label, min_value=float(meta["min"]), max_value=float(meta["max"]),
                                                       value=default, help=meta["help"], key=widget_key,
                                                       format="%.6g"))
        else:
            values[f.name] = column.text_input(label, value=default, help=meta["help"], key=widget_key)
    return TrainingSettings(**values)
