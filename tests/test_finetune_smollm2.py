"""A real short LoRA run on the bundled SmolLM2 through the worker: the training loss falls, and
the Ask page answers with the new adapter at once."""

import pytest
import streamlit as st
from streamlit.testing.v1 import AppTest
from training_helpers import FACTS, chat, make_dataset

from core.answers.rag import ask
from core.jobs.queue import get_job, job_metrics
from core.jobs.worker import run_worker
from core.models import BUNDLED_MODEL
from core.models.adapters import list_adapters
from core.training.spec import TrainingSettings
from core.training.submit import submit_job

ADAPTER = "smollm2-plant-facts"


@pytest.fixture(scope="module")
def trained(db):
    # A handful of pairs, one batch: every step sees the same examples, so the loss must fall.
    dataset = make_dataset(db, "plant-facts", [chat(q, a) for q, a in FACTS[:5]], validation=1)
    settings = TrainingSettings(rank=8, alpha=16, learning_rate=2e-3, max_steps=8, batch_size=4, max_seq_length=96,
                                logging_steps=1, eval_steps=0, save_steps=100, warmup_steps=0, lr_scheduler="constant")
    job = submit_job(db, adapter_name=ADAPTER, dataset=dataset, base_model=BUNDLED_MODEL, method="lora", settings=settings)
    run_worker(db, once=True)
    return get_job(db, job.id)


def test_training_loss_falls(db, trained):
    assert trained.status == "succeeded", trained.error
    losses = [m["loss"] for m in job_metrics(db, trained.id) if m["loss"] is not None]
    assert len(losses) == 8
    assert sum(losses[-2:]) / 2 < 0.6 * sum(losses[:2]) / 2, losses
    assert ADAPTER in {a.name for a in list_adapters(db)}
    assert next(a for a in list_adapters(db) if a.name == ADAPTER).base_model == BUNDLED_MODEL


def test_answers_with_the_adapter(db, trained):
    base = ask(db, FACTS[0][0], use_rag=False, max_new_tokens=16).complete()
    tuned = ask(db, FACTS[0][0], use_rag=False, adapter=ADAPTER, max_new_tokens=16).complete()
    assert tuned.adapter == ADAPTER and tuned.text
    assert tuned.text != base.text  # the adapter changed what the same loaded model says


def test_ask_page_lists_and_uses_the_adapter(db, trained):
    st.cache_resource.clear()
    at = AppTest.from_file("../streamlit_app.py", default_timeout=300)
    at.run()
    at.switch_page("pages/ask.py").run()
    assert ADAPTER in at.selectbox(key="ask_adapter").options
    at.toggle(key="ask_rag").set_value(False)
    at.selectbox(key="ask_adapter").select(ADAPTER)
    at.number_input(key="ask_max_new_tokens").set_value(16)
    at.run()
    at.chat_input(key="ask_question").set_value(FACTS[0][0]).run()
    assert not at.exception and not at.error
    assert any(f"adapter: {ADAPTER}" in c.value for c in at.caption)
