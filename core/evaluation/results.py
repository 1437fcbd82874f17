"""An evaluation run's results: per-variant means with bootstrap intervals, paired differences with
a verdict, diagnosis counts, per-question drill-down, comparison with an earlier run, CSV and JSON.

Every interval is a percentile bootstrap over questions with a fixed seed (SEED), so the same
answers give the same table on every machine. A pair of variants is compared on the questions
both answered (paired): "better" or "worse" only when the whole 95% interval of the difference is
on one side of zero, otherwise "no detectable difference". For latency, time to first token and
looping lower is better, so their verdicts read the other way round.
"""

from __future__ import annotations

import csv
import io
import json
from collections import Counter
from dataclasses import asdict, dataclass, field
from datetime import datetime
from itertools import combinations

from sqlalchemy import text

from core.db import Database
from core.errors import UserError
from core.evaluation.metrics import normalize_answer, token_f1
from core.evaluation.scoring import DIAGNOSES, QUALITY_METRICS
from core.evaluation.stats import BETTER, NO_DIFFERENCE, WORSE, Interval, bootstrap_mean, paired_difference, verdict

SEED = 0
RESAMPLES = 2000
CONFIDENCE = 0.95

TIMING_METRICS = ("latency_seconds", "time_to_first_token", "new_tokens")
METRICS = (*QUALITY_METRICS, *TIMING_METRICS)
HEADLINE = "token_f1"
LOWER_IS_BETTER = frozenset({"looped", "latency_seconds", "time_to_first_token"})
NOT_COMPARED = frozenset({"new_tokens"})  # more tokens is neither better nor worse
LABELS = {
    "exact_match": "exact match", "token_f1": "token F1", "rouge_l": "ROUGE-L", "similarity": "similarity",
    "hit_at_k": "hit@k", "mrr": "MRR", "cited_source": "cites source", "abstention": "abstention",
    "looped": "looped", "latency_seconds": "latency (s)", "time_to_first_token": "first token (s)",
    "new_tokens": "tokens",
}


class EvaluationError(UserError):
    """An evaluation that cannot be started or shown as asked; the message says what to do."""


@dataclass(frozen=True)
class RunInfo:
    id: int
    exam: str
    exam_id: int
    job_id: int | None
    job_status: str | None
    model: str
    adapter: str | None
    collection: str | None
    variants: list[str]
    settings: dict
    summary: dict | None
    created_at: datetime
    finished_at: datetime | None
    answers: int
    questions: int  # the questions this run asks (all of the exam's, or the chosen ones)

    @property
    def finished(self) -> bool:
        return self.finished_at is not None

    @property
    def label(self) -> str:
        adapter = f" + {self.adapter}" if self.adapter else ""
        return f"#{self.id} {self.exam}: {', '.join(self.variants)} ({self.model.split('/')[-1]}{adapter}, {self.created_at:%Y-%m-%d %H:%M})"


@dataclass(frozen=True)
class AnswerRow:
    question_id: int
    ordinal: int
    question: str
    reference: str
    out_of_scope: bool
    variant: str
    answer: str
    scores: dict
    diagnosis: str | None
    retrieved: list[dict]
    cited: list[dict]
    prompt_tokens: int | None
    new_tokens: int | None
    latency_seconds: float | None
    time_to_first_token: float | None
    stopped_by: str | None

    def value(self, metric: str) -> float | None:
        if metric in TIMING_METRICS:
            value = getattr(self, metric)
            return None if value is None else float(value)
        return self.scores.get(metric)


@dataclass
class RunResults:
    run: RunInfo
    answers: list[AnswerRow]
    summary: dict = field(default_factory=dict)


@dataclass(frozen=True)
class QuestionDetail:
    question_id: int
    ordinal: int
    question: str
    reference: str
    out_of_scope: bool
    answers: dict[str, AnswerRow]  # by variant, in the run's order


_RUN_SQL = """
    SELECT r.id, e.name AS exam, r.exam_id, r.job_id, j.status AS job_status, r.model, r.adapter,
           c.name AS collection, r.variants, r.settings, r.summary, r.created_at, r.finished_at,
           (SELECT count(*) FROM eval_answers a WHERE a.run_id = r.id) AS answers,
           CASE WHEN r.settings ? 'question_ids' AND jsonb_typeof(r.settings->'question_ids') = 'array'
                THEN jsonb_array_length(r.settings->'question_ids')
                ELSE (SELECT count(*) FROM exam_questions q WHERE q.exam_id = r.exam_id) END AS questions
    FROM eval_runs r JOIN exams e ON e.id = r.exam_id
    LEFT JOIN jobs j ON j.id = r.job_id
    LEFT JOIN collections c ON c.id = r.collection_id
"""


def _run(row) -> RunInfo:
    return RunInfo(**{name: row._mapping[name] for name in RunInfo.__dataclass_fields__})


def list_runs(db: Database, exam: str | None = None, limit: int = 200) -> list[RunInfo]:
    """Evaluation runs, newest first; only those of `exam` when given."""
    with db.engine.connect() as connection:
        rows = connection.execute(
            text(_RUN_SQL + " WHERE (CAST(:exam AS text) IS NULL OR e.name = :exam) ORDER BY r.id DESC LIMIT :limit"),
            {"exam": exam, "limit": limit},
        ).all()
    return [_run(row) for row in rows]


def get_run(db: Database, run_id: int) -> RunInfo:
    with db.engine.connect() as connection:
        row = connection.execute(text(_RUN_SQL + " WHERE r.id = :id"), {"id": run_id}).first()
    if row is None:
        raise EvaluationError(f"No evaluation run {run_id}; `python -m core eval runs` lists them.")
    return _run(row)


def load_answers(db: Database, run: RunInfo) -> list[AnswerRow]:
    """The run's answers in exam order, then the run's variant order. References are those the
    run scored against (a knowledge-update run may replace some)."""
    with db.engine.connect() as connection:
        rows = connection.execute(
            text(
                """
                SELECT a.question_id, q.ordinal, q.question, q.reference_answer AS reference, q.out_of_scope,
                       a.variant, a.answer, a.scores, a.diagnosis, coalesce(a.retrieved, '[]'::jsonb) AS retrieved,
                       coalesce(a.cited, '[]'::jsonb) AS cited, a.prompt_tokens, a.new_tokens, a.latency_seconds,
                       a.time_to_first_token, a.stopped_by
                FROM eval_answers a JOIN exam_questions q ON q.id = a.question_id
                WHERE a.run_id = :id ORDER BY q.ordinal, a.id
                """
            ),
            {"id": run.id},
        ).all()
    overrides = {int(k): v for k, v in (run.settings.get("reference_overrides") or {}).items()}
    order = {variant: i for i, variant in enumerate(run.variants)}
    answers = [AnswerRow(**{**row._mapping, "reference": overrides.get(row.question_id, row.reference)}) for row in rows]
    return sorted(answers, key=lambda a: (a.ordinal, order.get(a.variant, 99)))


def _interval(interval: Interval) -> dict:
    return {"mean": interval.mean, "low": interval.low, "high": interval.high, "n": interval.n}


def _pair_verdict(metric: str, interval: Interval) -> str:
    """The verdict on a difference (first minus second), read so that "better" means better for `metric`."""
    if metric in LOWER_IS_BETTER:
        return verdict(Interval(-interval.mean, -interval.high, -interval.low, interval.n))
    return verdict(interval)


def summarize(answers: list[AnswerRow], variants: list[str], *, knowledge_update: dict | None = None) -> dict:
    """Means with intervals per variant and metric, paired differences per pair, diagnosis counts.

    Not-applicable scores (None) are left out of a mean; a metric no answer of a variant has is None.
    """
    by_variant: dict[str, dict[int, AnswerRow]] = {v: {} for v in variants}
    for answer in answers:
        by_variant.setdefault(answer.variant, {})[answer.question_id] = answer
    table: dict[str, dict[str, dict | None]] = {}
    for variant in variants:
        table[variant] = {}
        for metric in METRICS:
            values = [v for a in by_variant[variant].values() if (v := a.value(metric)) is not None]
            table[variant][metric] = (_interval(bootstrap_mean(values, resamples=RESAMPLES, confidence=CONFIDENCE, seed=SEED))
                                      if values else None)
    pairs = []
    for a, b in combinations(variants, 2):
        for metric in METRICS:
            if metric in NOT_COMPARED:
                continue
            shared = [(x.value(metric), y.value(metric)) for q, x in by_variant[a].items()
                      if (y := by_variant[b].get(q)) is not None and x.value(metric) is not None and y.value(metric) is not None]
            if not shared:
                continue
            interval = paired_difference([x for x, _ in shared], [y for _, y in shared], resamples=RESAMPLES,
                                         confidence=CONFIDENCE, seed=SEED)
            pairs.append({"a": a, "b": b, "metric": metric, **_interval(interval), "verdict": _pair_verdict(metric, interval)})
    diagnoses = {v: {d: 0 for d in DIAGNOSES} | dict(Counter(a.diagnosis for a in by_variant[v].values() if a.diagnosis))
                 for v in variants}
    summary = {
        "variants": table, "pairs": pairs, "diagnoses": diagnoses,
        "questions": len({a.question_id for a in answers}), "answers": len(answers),
        "seed": SEED, "resamples": RESAMPLES, "confidence": CONFIDENCE,
    }
    if knowledge_update:
        summary["knowledge_update"] = knowledge_update_summary(answers, variants, knowledge_update)
    return summary


def knowledge_update_summary(answers: list[AnswerRow], variants: list[str], update: dict) -> dict:
    """After a document was replaced: per variant, how close the answers are to the new reference and
    to the old one, and (RAG) how often a passage given to the model holds the new reference."""
    old = {int(k): v for k, v in (update.get("old_references") or {}).items()}
    result = {}
    for variant in variants:
        rows = [a for a in answers if a.variant == variant]
        if not rows:
            continue
        entry = {
            "f1_new_reference": sum(token_f1(a.answer, a.reference) for a in rows) / len(rows),
            "f1_old_reference": sum(token_f1(a.answer, old.get(a.question_id, a.reference)) for a in rows) / len(rows),
            "questions": len(rows),
        }
        if variant in ("rag", "rag+ft"):
            entry["new_fact_in_passages"] = sum(new_fact_retrieved(a) for a in rows) / len(rows)
        result[variant] = entry
    return result


def new_fact_retrieved(answer: AnswerRow) -> bool:
    """Whether a passage given to the model contains the (normalised) reference answer."""
    wanted = normalize_answer(answer.reference)
    return bool(wanted) and any(p.get("number") is not None and wanted in normalize_answer(p.get("text") or "")
                                for p in answer.retrieved)


def load_results(db: Database, run_id: int) -> RunResults:
    """A run with its answers and summary (computed from the answers so far while it is unfinished)."""
    run = get_run(db, run_id)
    answers = load_answers(db, run)
    summary = _in_run_order(run.summary, run.variants) if run.finished and run.summary else summarize(
        answers, run.variants, knowledge_update=run.settings.get("knowledge_update"))
    return RunResults(run, answers, summary)


def _in_run_order(summary: dict, variants: list[str]) -> dict:
    """A summary read back from jsonb, whose keys Postgres sorts its own way: variants in the run's
    order again, diagnoses in DIAGNOSES order."""
    ordered = dict(summary)
    ordered["variants"] = {v: summary["variants"][v] for v in variants if v in summary.get("variants", {})}
    ordered["diagnoses"] = {v: {d: summary["diagnoses"][v].get(d, 0) for d in DIAGNOSES}
                            for v in variants if v in summary.get("diagnoses", {})}
    if "knowledge_update" in summary:
        ordered["knowledge_update"] = {v: summary["knowledge_update"][v] for v in variants if v in summary["knowledge_update"]}
    return ordered


def score_table(summary: dict, metrics: tuple[str, ...] = METRICS) -> list[dict]:
    """One row per variant: each metric as mean with its interval ("0.42 [0.30, 0.55]"), "–" where not applicable."""
    rows = []
    for variant, values in summary.get("variants", {}).items():
        row = {"variant": variant}
        for metric in metrics:
            cell = values.get(metric)
            row[LABELS[metric]] = format_interval(cell, metric) if cell else "–"
        row["n"] = max((c["n"] for c in values.values() if c), default=0)
        rows.append(row)
    return rows


def format_interval(cell: dict, metric: str = "") -> str:
    digits = 0 if metric == "new_tokens" else 2
    return f"{cell['mean']:.{digits}f} [{cell['low']:.{digits}f}, {cell['high']:.{digits}f}]"


def pair_rows(summary: dict, metrics: tuple[str, ...] | None = None) -> list[dict]:
    """Paired differences as readable rows: "rag vs base · token F1 · +0.21 [0.10, 0.33] · better"."""
    return [
        {"pair": f"{p['a']} vs {p['b']}", "metric": LABELS[p["metric"]],
         "difference": f"{p['mean']:+.2f} [{p['low']:+.2f}, {p['high']:+.2f}]", "n": p["n"],
         "verdict": f"{p['a']} {p['verdict']}" if p["verdict"] != NO_DIFFERENCE else NO_DIFFERENCE}
        for p in summary.get("pairs", []) if metrics is None or p["metric"] in metrics
    ]


def question_details(results: RunResults, question_id: int) -> QuestionDetail:
    """One question with each variant's answer and the passages retrieved for it."""
    rows = [a for a in results.answers if a.question_id == question_id]
    if not rows:
        raise EvaluationError(f"Run {results.run.id} has no answers to question {question_id}.")
    first = rows[0]
    return QuestionDetail(first.question_id, first.ordinal, first.question, first.reference, first.out_of_scope,
                          {a.variant: a for a in rows})


def question_list(results: RunResults) -> list[tuple[int, int, str]]:
    """(question id, ordinal, question) of each answered question, in exam order."""
    seen: dict[int, tuple[int, int, str]] = {}
    for a in results.answers:
        seen.setdefault(a.question_id, (a.question_id, a.ordinal, a.question))
    return list(seen.values())


# --- comparison with an earlier run --------------------------------------------------------------


def earlier_run(db: Database, run: RunInfo) -> RunInfo | None:
    """The newest finished run of the same exam before `run` that shares a variant with it."""
    for other in list_runs(db, run.exam):
        if other.id < run.id and other.finished and set(other.variants) & set(run.variants):
            return other
    return None


def compare_runs(db: Database, run_id: int, earlier_id: int | None = None, *, metrics: tuple[str, ...] = METRICS) -> dict | None:
    """How each variant moved since an earlier run of the same exam (default: the previous one):
    per variant and metric, the earlier and current means and the paired difference (now − then)
    over the questions both runs answered, with its verdict. None when there is no earlier run."""
    run = get_run(db, run_id)
    earlier = get_run(db, earlier_id) if earlier_id is not None else earlier_run(db, run)
    if earlier is None:
        return None
    if earlier.exam_id != run.exam_id:
        raise EvaluationError(f"Run {earlier.id} is of exam {earlier.exam!r}, run {run.id} of {run.exam!r}: "
                              "only runs of the same exam compare.")
    now = {(a.variant, a.question_id): a for a in load_answers(db, run)}
    then = {(a.variant, a.question_id): a for a in load_answers(db, earlier)}
    rows = []
    for variant in [v for v in run.variants if v in earlier.variants]:
        for metric in metrics:
            if metric in NOT_COMPARED:
                continue
            shared = [(x.value(metric), y.value(metric)) for (v, q), x in now.items() if v == variant
                      and (y := then.get((v, q))) is not None and x.value(metric) is not None and y.value(metric) is not None]
            if not shared:
                continue
            current, previous = [x for x, _ in shared], [y for _, y in shared]
            interval = paired_difference(current, previous, resamples=RESAMPLES, confidence=CONFIDENCE, seed=SEED)
            rows.append({"variant": variant, "metric": metric, "earlier": sum(previous) / len(previous),
                         "now": sum(current) / len(current), **_interval(interval),
                         "verdict": _pair_verdict(metric, interval)})
    return {"run": run.id, "earlier": earlier.id, "earlier_label": earlier.label, "rows": rows}


def comparison_rows(comparison: dict) -> list[dict]:
    verdict_words = {BETTER: "better now", WORSE: "worse now", NO_DIFFERENCE: NO_DIFFERENCE}
    return [{"variant": r["variant"], "metric": LABELS[r["metric"]], "earlier": round(r["earlier"], 3),
             "now": round(r["now"], 3), "change": f"{r['mean']:+.2f} [{r['low']:+.2f}, {r['high']:+.2f}]", "n": r["n"],
             "verdict": verdict_words[r["verdict"]]} for r in comparison["rows"]]


# --- export ---------------------------------------------------------------------------------------

CSV_SCORES = tuple(m for m in QUALITY_METRICS) + ("abstained",)


def to_csv(results: RunResults) -> str:
    """One row per answer: the question, the variant, the answer, every score, timings, passages."""
    out = io.StringIO()
    writer = csv.writer(out)
    writer.writerow(["run_id", "question_id", "ordinal", "question", "reference", "out_of_scope", "variant", "answer",
                     "diagnosis", *CSV_SCORES, "prompt_tokens", "new_tokens", "latency_seconds", "time_to_first_token",
                     "stopped_by", "retrieved", "cited"])
    for a in results.answers:
        writer.writerow([
            results.run.id, a.question_id, a.ordinal, a.question, a.reference, a.out_of_scope, a.variant, a.answer,
            a.diagnosis, *["" if a.scores.get(m) is None else a.scores[m] for m in CSV_SCORES],
            a.prompt_tokens, a.new_tokens, a.latency_seconds, a.time_to_first_token, a.stopped_by,
            "; ".join(f"{p['rank']}:{p['filename']}#{p['chunk_id']}" for p in a.retrieved),
            "; ".join(f"[{c['number']}] {c['filename']}#{c['chunk_id']}" for c in a.cited),
        ])
    return out.getvalue()


def to_json(results: RunResults) -> dict:
    """The run, its summary and every answer, JSON-ready."""
    run = {k: v.isoformat() if isinstance(v, datetime) else v for k, v in asdict(results.run).items() if k != "summary"}
    return {"run": run, "summary": results.summary, "answers": [asdict(a) for a in results.answers]}


def to_json_text(results: RunResults) -> str:
    return json.dumps(to_json(results), indent=2, ensure_ascii=False)


# --- text report (the command line) ---------------------------------------------------------------

REPORT_METRICS = ("token_f1", "exact_match", "rouge_l", "similarity", "hit_at_k", "mrr", "cited_source", "abstention",
                  "looped", "latency_seconds", "time_to_first_token", "new_tokens")


def text_report(results: RunResults) -> str:
    """The score table (a row per metric, a column per variant), the pairwise verdicts and the diagnoses."""
    run, summary = results.run, results.summary
    variants = list(summary.get("variants", {}))
    status = "finished" if run.finished else f"not finished ({run.job_status or 'no job'}; the table shows the answers so far)"
    lines = [f"Run {run.id} · exam {run.exam} · {run.model}" + (f" + {run.adapter}" if run.adapter else "")
             + (f" · collection {run.collection}" if run.collection else "") + f" · {status}",
             f"{summary.get('questions', 0)} questions, {summary.get('answers', 0)} answers; means with "
             f"{summary.get('confidence', CONFIDENCE):.0%} bootstrap intervals.", ""]
    note = leakage_note(run)
    if note:
        lines[-1:] = [note, ""]
    width = 20
    lines.append(f"{'':<18}" + "".join(f"{v:<{width}}" for v in variants))
    for metric in REPORT_METRICS:
        cells = [summary["variants"][v].get(metric) for v in variants]
        lines.append(f"{LABELS[metric]:<18}" + "".join(f"{format_interval(c, metric) if c else '–':<{width}}" for c in cells))
    pairs = pair_rows(summary)
    if pairs:
        lines += ["", f"Paired differences (first minus second; {LABELS[HEADLINE]}, then other metrics with a verdict):"]
        headline = [p for p in pairs if p["metric"] == LABELS[HEADLINE]]
        others = [p for p in pairs if p["metric"] != LABELS[HEADLINE] and p["verdict"] != NO_DIFFERENCE]
        for p in headline + others:
            lines.append(f"  {p['pair']:<16} {p['metric']:<16} {p['difference']:<24} {p['verdict']}")
    lines += ["", "Diagnoses:"]
    for variant, counts in summary.get("diagnoses", {}).items():
        shown = ", ".join(f"{name} {count}" for name, count in counts.items() if count)
        lines.append(f"  {variant:<8} {shown or '-'}")
    update = summary.get("knowledge_update")
    if update:
        lines += ["", "Knowledge update (token F1 against the new and the old reference answers):"]
        for variant, entry in update.items():
            passages = (f", new fact in the passages given for {entry['new_fact_in_passages']:.0%} of questions"
                        if "new_fact_in_passages" in entry else "")
            lines.append(f"  {variant:<8} new {entry['f1_new_reference']:.2f}, old {entry['f1_old_reference']:.2f}{passages}")
    return "\n".join(lines)


def leakage_note(run: RunInfo) -> str | None:
    """Why the adapter's training data could not be checked against the exam, when it could not."""
    leakage = run.settings.get("leakage") or {}
    return f"Leakage not verified: {leakage.get('note')}" if leakage and not leakage.get("verified") else None


def runs_table(runs: list[RunInfo]) -> list[dict]:
    """Rows for a list of runs: id, exam, variants, model, adapter, progress, headline score per variant."""
    rows = []
    for run in runs:
        f1 = {v: (m.get(HEADLINE) or {}).get("mean") for v, m in ((run.summary or {}).get("variants") or {}).items()}
        rows.append({"id": run.id, "exam": run.exam, "variants": ", ".join(run.variants), "model": run.model,
                     "adapter": run.adapter or "", "answers": f"{run.answers}/{run.questions * len(run.variants)}",
                     "status": "finished" if run.finished else (run.job_status or "no job"),
                     "token F1": ", ".join(f"{v} {x:.2f}" for v, x in f1.items() if x is not None),
                     "created": run.created_at.strftime("%Y-%m-%d %H:%M")})
    return rows

