"""Ask: questions answered from a collection, streamed, with numbered citations to the passages."""

import streamlit as st

from core.answers.rag import ask
from core.config import get_settings
from core.documents.library import list_collections
from core.models import NO_ADAPTER, PRESETS
from core.models.adapters import list_adapters
from core.models.served import is_served, served_choices, served_model
from core.ui.answers import answer_caption, answer_markdown, render_answer, render_sources
from core.ui.auth import require_access
from core.ui.errors import user_errors
from core.ui.resources import database, language_model
from core.ui.safe_text import literal, safe_markdown, stream_markdown

require_access()  # also when Streamlit runs this file without streamlit_app.py (see core/ui/auth.py)

OTHER_MODEL = "Other (Hugging Face id or folder)…"

settings = get_settings()
db = database()
st.title("Ask")

collections = [c.name for c in list_collections(db)]
left, middle, right = st.columns([2, 1, 2], vertical_alignment="bottom")
collection = left.selectbox("Collection", collections or ["(no collections yet)"], key="ask_collection")
use_rag = middle.toggle("RAG", value=True, key="ask_rag", help="Answer from the collection's passages, with citations.")
adapters = [NO_ADAPTER] + [a.name for a in list_adapters(db)]
adapter = right.selectbox("Adapter", adapters, key="ask_adapter", help="Fine-tuned LoRA adapters appear here.")

with st.expander("Model and generation settings"):
    served = served_choices(settings)  # the chat endpoint's model (openai:<name>), when one is configured
    preset_ids = [p.model_id for p in PRESETS] + list(served)
    default = preset_ids.index(settings.language_model) if settings.language_model in preset_ids else len(preset_ids)
    choice = st.selectbox("Model", [*preset_ids, OTHER_MODEL], index=default, key="ask_model",
                          format_func=lambda m: served.get(m) or next((p.label for p in PRESETS if p.model_id == m), m))
    model_id = st.text_input("Model id or folder", value=settings.language_model if default == len(preset_ids) else "",
                             key="ask_model_other") if choice == OTHER_MODEL else choice
    four_bit = st.checkbox("Load in 4 bits (bitsandbytes NF4)", value=settings.load_in_4bit, key="ask_4bit")
    c1, c2, c3 = st.columns(3)
    temperature = c1.slider("Temperature", 0.0, 2.0, settings.temperature, 0.05, key="ask_temperature",
                            help="0 answers greedily: the same question gives the same answer.")
    top_p = c2.slider("Top-p", 0.05, 1.0, settings.top_p, 0.05, key="ask_top_p")
    max_new_tokens = c3.number_input("Max new tokens", 1, 8192, settings.max_new_tokens, 16, key="ask_max_new_tokens")

with user_errors(stop=True):
    loaded = served_model(model_id) if is_served(model_id) else language_model(model_id, four_bit)
st.caption(f"Model: {literal(loaded.description)} · context window {loaded.context_window:,} tokens")

history = st.session_state.setdefault("ask_history", [])
for turn, (question, answer) in enumerate(history):
    st.chat_message("user").markdown(safe_markdown(question))
    with st.chat_message("assistant"):
        render_answer(answer, turn)

if history and st.button("Clear conversation", key="ask_clear"):
    history.clear()
    st.rerun()

question = st.chat_input("Ask a question about your documents", key="ask_question")
if question:
    turn = len(history)
    st.chat_message("user").markdown(safe_markdown(question))
    with st.chat_message("assistant"):
        with user_errors(stop=True):
            answer = ask(db, question, collection=collection if collections else None, use_rag=use_rag, adapter=adapter,
                         model_id=model_id, load_in_4bit=four_bit, max_new_tokens=int(max_new_tokens), temperature=temperature, top_p=top_p)
        text_column, sources_column = st.columns([3, 2]) if answer.sources else (st.container(), None)
        sources_panel = sources_column.empty() if sources_column is not None else None
        if sources_panel is not None:
            with sources_panel.container():
                render_sources(answer.sources, turn, cited=[])
        with text_column, user_errors(stop=True):  # a served model's endpoint can fail mid-answer
            # Made safe at every update: a half-written answer must not load an image either.
            stream_markdown(st.empty(), answer.stream(), lambda _: answer_markdown(answer.text, turn, len(answer.sources)))
            st.caption(answer_caption(answer))
        if sources_panel is not None and answer.cited:  # mark what the answer actually cited
            with sources_panel.container():
                render_sources(answer.sources, turn, cited=answer.cited)
    history.append((question, answer))
