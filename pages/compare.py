"""Compare: one question, answered by the base model, base + RAG, fine-tuned and fine-tuned + RAG side
by side; in blind mode the expert votes for the best, and the votes rank the variants."""

import secrets

import streamlit as st

from core.config import get_settings
from core.documents.library import list_collections
from core.errors import UserError
from core.evaluation.compare import blind_order, compare, generation_settings
from core.evaluation.stats import ALL_WRONG, TIE
from core.evaluation.votes import record_vote, vote_ranking
from core.models import NO_ADAPTER, PRESETS
from core.models.adapters import list_adapters
from core.models.served import served_choices
from core.ui.auth import require_access
from core.ui.compare import ShownComparison, choice_label, render_comparison, render_ranking, reveal_line
from core.ui.errors import user_errors
from core.ui.resources import database
from core.ui.safe_text import literal

require_access()  # also when Streamlit runs this file without streamlit_app.py (see core/ui/auth.py)

OTHER_MODEL = "Other (Hugging Face id or folder)…"
SHOWN = "compare_shown"
VOTE_ERROR = "compare_vote_error"

settings = get_settings()
db = database()
st.title("Compare")
st.caption("One question, answered by the base model, with RAG, fine-tuned, and fine-tuned with RAG: one loaded "
           "model, the adapter switched on and off. Blind mode hides which is which until you vote.")

collections = [c.name for c in list_collections(db) if c.document_count]
adapters = [NO_ADAPTER] + [a.name for a in list_adapters(db)]
question = st.text_area("Question", key="compare_question", height=80,
                        placeholder="e.g. At what pressure does the relief valve of boiler B2 open?")
left, middle, right = st.columns([2, 2, 1], vertical_alignment="bottom")
collection = left.selectbox("Collection", collections, key="compare_collection", index=0 if collections else None,
                            placeholder="no collection with documents yet", help="The RAG variants answer from it.")
adapter = middle.selectbox("Adapter", adapters, key="compare_adapter", help="The fine-tuned variants use it.")
blind = right.toggle("Blind mode", key="compare_blind", help="Answers appear as A–D in random order; vote, then see which was which.")

with st.expander("Model and generation settings"):
    served = served_choices(settings)  # the chat endpoint's model (openai:<name>), when one is configured
    preset_ids = [p.model_id for p in PRESETS] + list(served)
    default = preset_ids.index(settings.language_model) if settings.language_model in preset_ids else len(preset_ids)
    choice = st.selectbox("Model", [*preset_ids, OTHER_MODEL], index=default, key="compare_model",
                          format_func=lambda m: served.get(m) or next((p.label for p in PRESETS if p.model_id == m), m))
    model_id = st.text_input("Model id or folder", value=settings.language_model if default == len(preset_ids) else "",
                             key="compare_model_other") if choice == OTHER_MODEL else choice
    max_new_tokens = st.number_input("Max new tokens", 1, 8192, settings.max_new_tokens, 16, key="compare_max_new_tokens")

variants = ["base", *(["rag"] if collection else []), *(["ft"] if adapter != NO_ADAPTER else []),
            *(["rag+ft"] if collection and adapter != NO_ADAPTER else [])]
if len(variants) < 4:
    missing = [why for why, ok in (("a collection with documents for the RAG variants", collection),
                                   ("an adapter for the fine-tuned variants", adapter != NO_ADAPTER)) if not ok]
    st.caption(f"Comparing {', '.join(variants)}: pick {' and '.join(missing)} to see all four.")

if st.button("Compare", key="compare_run", type="primary", disabled=len(variants) < 2):
    with user_errors(stop=True):
        answers = compare(db, question, collection=collection, adapter=adapter, model_id=model_id, variants=variants,
                          max_new_tokens=int(max_new_tokens))
    shown = ShownComparison(
        question.strip(), collection, answers[0].answer.model, adapter if adapter != NO_ADAPTER else None,
        generation_settings(settings, int(max_new_tokens)), answers,
        order=blind_order(variants, secrets.randbits(32)) if blind else None,
    )
    with user_errors(stop=True):
        render_comparison(shown, stream=True)
    st.session_state[SHOWN] = shown  # reruns (the vote) show these answers again, in the same order
elif shown := st.session_state.get(SHOWN):
    render_comparison(shown)


def submit_vote() -> None:
    """Runs before the page's next run, so that run already draws the answers revealed."""
    shown, pick = st.session_state[SHOWN], st.session_state.get("compare_choice")
    if pick is None:
        st.session_state[VOTE_ERROR] = "Pick the best answer, or “tie”, or “all wrong”."
        return
    try:
        record_vote(db, question=shown.question, collection=shown.collection, model=shown.model, adapter=shown.adapter,
                    settings=shown.settings, answers={a.variant: a.text for a in shown.answers},
                    shown_order=shown.shown_order, choice=shown.variant_of(pick), note=st.session_state.get("compare_note"))
    except UserError as error:
        st.session_state[VOTE_ERROR] = str(error)
    else:
        shown.choice = shown.variant_of(pick)


shown = st.session_state.get(SHOWN)
if shown is not None and shown.blind and shown.choice is None:
    with st.form("compare_vote"):
        st.radio("Which answer is best?", [*shown.order, TIE, ALL_WRONG], index=None, horizontal=True, key="compare_choice")
        st.text_input("Note (optional)", key="compare_note", placeholder="why, or what all of them missed")
        st.form_submit_button("Submit vote", key="compare_submit_vote", on_click=submit_vote)
    if error := st.session_state.pop(VOTE_ERROR, None):
        st.error(error)
if shown is not None and shown.blind and shown.choice is not None:
    st.success(f"Vote recorded: {choice_label(shown)}. {reveal_line(shown)}.")

st.subheader("Ranking from the votes")
model_for_ranking = shown.model if shown is not None else model_id
st.caption(f"Bradley–Terry strengths (ties allowed) with bootstrap 95% intervals, from the blind votes on {literal(model_for_ranking)}.")
render_ranking(vote_ranking(db, model=model_for_ranking))
st.page_link("pages/ask.py", label="Ask one question with one variant", icon=":material/forum:")
