"""The Training data and Fine-tune pages through streamlit.testing, with a real worker process
started by the page and a tiny random model as the base."""

import json

import streamlit as st
from streamlit.testing.v1 import AppTest
from training_helpers import make_dataset, wait_for

from core.datasets import get_dataset
from core.jobs.queue import get_job, list_jobs
from core.models.adapters import list_adapters
from core.models.device import choose_device

APP = "../streamlit_app.py"


def open_page(page: str, tab: str | None = None) -> AppTest:
    st.cache_resource.clear()
    at = AppTest.from_file(APP, default_timeout=300)
    at.run()
    if tab:
        at.session_state["ft_open_tab"] = tab
    at.switch_page(page).run()
    assert not at.exception
    return at


def jsonl(*rows) -> bytes:
    return "\n".join(json.dumps(r) for r in rows).encode()


def test_import_previews_names_bad_rows_and_saves(db, tiny_llama, settings, monkeypatch):
    monkeypatch.setenv("EXPERT_STUDIO_LANGUAGE_MODEL", tiny_llama)  # token counts with the tiny model's tokenizer
    from core.config import get_settings

    get_settings.cache_clear()
    at = open_page("pages/training_data.py")
    data = jsonl(
        {"instruction": "what opens at 3 bar ?", "output": "the relief valve"},
        {"instruction": "how often is the seal replaced ?", "output": ""},
        {"instruction": "when are bearings checked ?", "output": "once a month"},
    )
    at.file_uploader(key="td_file").set_value(("facts.jsonl", data, "application/json")).run()
    assert not at.exception
    assert any("facts.jsonl: Alpaca" in m.value and "2 valid examples, 1 row with problems" in m.value for m in at.markdown)
    assert "line 2: empty answer" in at.warning[0].value
    at.button(key="td_save").click().run()
    assert "rows with problems" in at.error[0].value or "skip" in at.error[0].value.lower()
    at.checkbox(key="td_skip").check().run()
    at.button(key="td_save").click().run()
    assert at.success[0].value.startswith("Saved 'facts'")
    assert get_dataset(db, "facts").example_count == 2
    get_settings.cache_clear()


def test_start_a_job_watch_it_and_find_the_adapter(db, tiny_llama, stop_workers):
    make_dataset(db, "page-facts")
    at = open_page("pages/finetune.py")
    at.selectbox(key="ft_dataset").select("page-facts")
    at.selectbox(key="ft_model").select("Other…").run()
    at.text_input(key="ft_model_other").set_value(tiny_llama)
    at.radio(key="ft_preset").set_value("quick CPU check").run()
    assert not at.exception and not at.error
    device, _ = choose_device()  # the cpu here, cuda on a GPU machine
    assert any(c.value.startswith(f"Estimate: 10 steps on the {device}") for c in at.caption)
    at.text_input(key="ft_adapter_name").set_value("page-adapter")
    at.button(key="ft_start").click().run()
    assert not at.exception and not at.error
    (job,) = [j for j in list_jobs(db) if j.adapter_name == "page-adapter"]

    # the app "restarts" while the job runs: a new session with cleared caches sees the same job
    wait_for(lambda: get_job(db, job.id).status in ("running", "succeeded"), timeout=120, message="a worker to take the job")
    restarted = open_page("pages/finetune.py", tab="Jobs")
    assert any(job.adapter_name in str(row) for row in restarted.dataframe[0].value.to_dict("records"))

    wait_for(lambda: get_job(db, job.id).finished, timeout=400, message="the job to finish")
    assert get_job(db, job.id).status == "succeeded", get_job(db, job.id).error
    assert "page-adapter" in {a.name for a in list_adapters(db)}
    done = open_page("pages/finetune.py", tab="Jobs")
    done.selectbox(key="ft_selected_job").select(job.id).run()
    assert not done.exception
    assert any(c.value.startswith("loss ") and "tokens/s" in c.value for c in done.caption)
    adapters = open_page("pages/finetune.py", tab="Adapters")
    assert any("**page-adapter**" in m.value for m in adapters.markdown)
