"""Pages rerun on every click: the expensive work behind them must not run again each time."""

import streamlit as st
from streamlit.testing.v1 import AppTest
from training_helpers import make_dataset

import core.training.submit

APP = "../streamlit_app.py"


def test_finetune_page_plans_a_job_once_per_dataset_model_and_settings(db, tiny_llama, monkeypatch):
    """plan_job tokenizes the whole training set; a rerun that changes none of its inputs reuses the plan."""
    planned = []
    real_plan_job = core.training.submit.plan_job

    def counting_plan_job(*args, **kwargs):
        planned.append((kwargs["dataset"], kwargs["settings"].max_seq_length))
        return real_plan_job(*args, **kwargs)

    monkeypatch.setattr(core.training.submit, "plan_job", counting_plan_job)
    make_dataset(db, "rerun-facts")
    st.cache_resource.clear()
    st.cache_data.clear()
    at = AppTest.from_file(APP, default_timeout=300)
    at.run()
    at.session_state["ft_model"] = "Other…"
    at.session_state["ft_model_other"] = tiny_llama
    at.switch_page("pages/finetune.py").run()
    assert not at.exception and not at.error
    assert any(c.value.startswith("Estimate: ") for c in at.caption)
    (first,) = planned
    assert first[0] == "rerun-facts"

    at.text_input(key="ft_adapter_name").set_value("another-name").run()  # nothing the plan reads
    at.run()
    assert planned == [first]
    assert any(c.value.startswith("Estimate: ") for c in at.caption)

    preset = at.radio(key="ft_preset").value
    at.number_input(key=f"ft_{preset}_max_seq_length").set_value(first[1] // 2).run()  # a setting it reads
    assert not at.exception and planned == [first, ("rerun-facts", first[1] // 2)]
