"""Drawing an evaluation run: the score table, a chart per metric with its interval bars, the
pairwise verdicts, the diagnoses, one question's answers with their passages, the comparison with
an earlier run. Model text and exam text are shown as plain text (st.text), never as Markdown or HTML;
file names inside captions go through literal."""

from __future__ import annotations

import altair as alt
import pandas as pd
import streamlit as st

from core.evaluation.results import (
    HEADLINE,
    LABELS,
    METRICS,
    QuestionDetail,
    RunResults,
    comparison_rows,
    pair_rows,
    score_table,
)
from core.evaluation.scoring import DIAGNOSES
from core.ui.safe_text import literal


def metric_chart(summary: dict, metric: str) -> alt.Chart | None:
    """Each variant's mean as a point with its interval as a bar; None when no variant has the metric."""
    rows = [{"variant": variant, "mean": cell["mean"], "low": cell["low"], "high": cell["high"], "n": cell["n"]}
            for variant, values in summary["variants"].items() if (cell := values.get(metric))]
    if not rows:
        return None
    data = pd.DataFrame(rows)
    order = list(summary["variants"])
    x = alt.X("variant:N", sort=order, title=None)
    bars = alt.Chart(data).mark_errorbar(ticks=True).encode(
        x=x, y=alt.Y("low:Q", title=LABELS[metric]), y2="high:Q")
    points = alt.Chart(data).mark_point(filled=True, size=70).encode(
        x=x, y="mean:Q", color=alt.Color("variant:N", sort=order, legend=None),
        tooltip=["variant", alt.Tooltip("mean:Q", format=".3f"), alt.Tooltip("low:Q", format=".3f"),
                 alt.Tooltip("high:Q", format=".3f"), "n"])
    return (bars + points).properties(title=LABELS[metric], height=220)


def render_summary(results: RunResults) -> None:
    summary = results.summary
    st.dataframe(score_table(summary), hide_index=True, width="stretch")
    st.caption(f"Means over {summary['questions']} questions with {summary['confidence']:.0%} bootstrap intervals "
               f"({summary['resamples']} resamples, seed {summary['seed']}); – where a metric does not apply "
               "(retrieval scores without RAG or without a source passage).")
    charts = [(metric, chart) for metric in METRICS if (chart := metric_chart(summary, metric)) is not None]
    for start in range(0, len(charts), 3):
        for column, (metric, chart) in zip(st.columns(3), charts[start:start + 3], strict=False):
            column.altair_chart(chart, width="stretch", key=f"eval_chart_{metric}")

    st.subheader("Pairwise verdicts")
    if len(summary["variants"]) < 2:
        st.info("One variant: nothing to compare. Run two or more to get verdicts.")
    else:
        compared = [m for m in METRICS if any(p["metric"] == m for p in summary["pairs"])]
        metric = st.selectbox("Metric", compared, format_func=LABELS.get, key="eval_pair_metric",
                              index=compared.index(HEADLINE) if HEADLINE in compared else 0)
        st.dataframe(pair_rows(summary, (metric,) if metric else None), hide_index=True, width="stretch")
        st.caption("The difference is first minus second, paired over the questions both answered. A verdict is given "
                   "only when the whole interval is on one side of zero; for latency and loops lower is better.")

    st.subheader("Diagnoses")
    st.dataframe([{"variant": v, **{d: counts.get(d, 0) for d in DIAGNOSES}} for v, counts in summary["diagnoses"].items()],
                 hide_index=True, width="stretch")
    update = summary.get("knowledge_update")
    if update:
        st.subheader("Knowledge update")
        st.caption(f"After {literal(results.run.settings['knowledge_update']['document'])} was replaced: token F1 against the new "
                   "and the old reference answers; for RAG, how often a passage given to the model holds the new one.")
        st.dataframe([{"variant": v, "F1 new reference": round(e["f1_new_reference"], 3),
                       "F1 old reference": round(e["f1_old_reference"], 3),
                       "new fact in passages": f"{e['new_fact_in_passages']:.0%}" if "new_fact_in_passages" in e else "–"}
                      for v, e in update.items()], hide_index=True, width="stretch")


def render_question(detail: QuestionDetail) -> None:
    st.markdown(f"**Question {detail.ordinal}**" + (" · out of scope" if detail.out_of_scope else ""))
    st.text(detail.question)
    st.caption("Reference answer")
    st.text(detail.reference)
    for column, (variant, answer) in zip(st.columns(len(detail.answers)), detail.answers.items(), strict=True):
        with column.container(border=True):
            st.markdown(f"**{variant}** · {answer.diagnosis}")
            st.text(answer.answer or "(empty answer)")
            scores = [f"{LABELS[m]} {answer.scores[m]:.2f}" for m in ("token_f1", "rouge_l", "similarity", "hit_at_k", "mrr")
                      if answer.scores.get(m) is not None]
            timing = f"{answer.latency_seconds:.2f} s" if answer.latency_seconds is not None else ""
            st.caption(" · ".join([*scores, f"{answer.new_tokens or 0} tokens", timing, answer.stopped_by or ""]))
            if answer.retrieved:
                cited = {c["number"] for c in answer.cited}
                with st.expander(f"{len(answer.retrieved)} passages retrieved"):
                    for passage in answer.retrieved:
                        marks = [f"[{passage['number']}]" if passage["number"] else "not given to the model",
                                 "cited" if passage["number"] in cited else "", "source" if passage.get("is_source") else ""]
                        st.caption(f"#{passage['rank']} {literal(passage['filename'])} · " + " · ".join(m for m in marks if m))
                        st.text(passage["text"])


def render_comparison(comparison: dict | None) -> None:
    if comparison is None:
        st.info("No earlier finished run of this exam shares a variant with this one.")
        return
    st.caption(f"Against {literal(comparison['earlier_label'])}: now minus then, paired over the questions both runs answered.")
    st.dataframe(comparison_rows(comparison), hide_index=True, width="stretch")
