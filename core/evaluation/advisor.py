"""The advisor: RAG, fine-tuning, or both, for this user's documents, with the numbers behind it.

It starts from the classic guide, turned into a few questions (AdvisorAnswers):
data that changes or must be traceable to its source → RAG; stable terminology and a house style
→ fine-tuning; little or low-quality training data → RAG; answers that combine many facts → RAG;
automated flows that need both → RAG + fine-tuning.

Once evaluation runs exist, measurements weigh more than the questions. The advisor reads the
scored answers (eval_runs / eval_answers) of the newest exam that has any, pairs each variant's
token F1 with another's over the same questions, and calls a variant better only when the whole
95% interval of the paired difference is above 0 (core.evaluation.stats.verdict). Latency (mean
seconds per answer) and training cost (the adapter's training seconds) decide between variants the
scores cannot tell apart. Every measured recommendation names at least two numbers that drove it,
and says whether the similarity to the reference confirms the gain (token F1 also rises when answers
merely get shorter or stop looping) and whether the latencies it weighs come from separate runs.
Without runs it says which run to make first. Runs are read through core.evaluation.results.
"""

from __future__ import annotations

from dataclasses import asdict, dataclass, field, fields
from typing import TYPE_CHECKING, Literal

from sqlalchemy import text

from core.errors import UserError
from core.evaluation.stats import BETTER, WORSE, Interval, bootstrap_mean, paired_difference, verdict
from core.evaluation.variants import LABELS

if TYPE_CHECKING:
    from core.db import Database

Recommendation = Literal["rag", "fine-tune", "rag+fine-tune", "run an evaluation first"]
RECOMMENDATION_LABELS = {
    "rag": "RAG",
    "fine-tune": "Fine-tuning",
    "rag+fine-tune": "RAG + fine-tuning",
    "run an evaluation first": "Run an evaluation first",
}
CHANGES = ("rarely", "monthly", "weekly+")
TRAINING_DATA = ("none", "<100", "100-1000", ">1000")
SCORE = "token_f1"  # the key scoring writes into eval_answers.scores
SCORE_LABEL = "token F1"
CHECK = "similarity"  # a second measure of the same gain: embedding similarity to the reference
MIN_QUESTIONS = 40  # an exam smaller than this rarely shows a real difference


class AdvisorError(UserError):
    """An answer to the advisor's questions that is not one of the choices."""


@dataclass(frozen=True)
class AdvisorAnswers:
    """The advisor's questions, each with its choices; the page and the CLI are built from these fields."""

    changes: str = field(default="monthly", metadata={
        "help": "How often do the documents change?", "choices": CHANGES})
    traceable: bool = field(default=True, metadata={
        "help": "Must every answer be traceable to a source passage?"})
    house_style: bool = field(default=False, metadata={
        "help": "Is there a house style or terminology the answers must follow?"})
    training_examples: str = field(default="none", metadata={
        "help": "How many good question/answer examples exist to train on?", "choices": TRAINING_DATA})
    combines_facts: bool = field(default=False, metadata={
        "help": "Do answers combine many facts from different places?"})
    automated_both: bool = field(default=False, metadata={
        "help": "Is it for automated flows that need both a fixed output format and current facts?"})

    def __post_init__(self) -> None:
        for f in fields(self):
            choices = f.metadata.get("choices")
            value = getattr(self, f.name)
            if choices and value not in choices:
                raise AdvisorError(f"{f.metadata['help']} Answer one of {', '.join(choices)}; got {value!r}.")
            if not choices and not isinstance(value, bool):
                raise AdvisorError(f"{f.metadata['help']} Answer yes or no; got {value!r}.")

    @property
    def enough_training_data(self) -> bool:
        return self.training_examples in ("100-1000", ">1000")


@dataclass(frozen=True)
class Evidence:
    """One measured number and where it comes from."""

    what: str  # e.g. "token F1: RAG − base model"
    value: float
    unit: str  # "token F1", "s per answer", "s of training"
    source: str  # e.g. "exam 'pumps', eval runs 3, 4"
    low: float | None = None  # 95% interval, when the number has one
    high: float | None = None
    n: int | None = None  # questions (or answers) behind it
    verdict: str | None = None  # for differences: better / worse / no detectable difference

    @property
    def text(self) -> str:
        signed = self.verdict is not None  # a difference between two variants
        number = f"{self.value:+.2f}" if signed else _number(self.value, self.unit)
        interval = ""
        if self.low is not None and self.high is not None:
            fmt = "{:+.2f}" if signed else "{:.2f}"
            interval = f" (95% CI {fmt.format(self.low)}…{fmt.format(self.high)})"
        count = f", {self.n} questions" if self.n is not None and self.unit == SCORE_LABEL else ""
        judged = f", {self.verdict}" if self.verdict else ""
        return f"{self.what}: {number}{'' if self.unit == SCORE_LABEL else ' ' + self.unit}{interval}{count}{judged} [{self.source}]"


def _number(value: float, unit: str) -> str:
    return f"{value:,.0f}" if unit == "s of training" else f"{value:.2f}"


@dataclass
class Advice:
    recommendation: Recommendation
    reasons: list[str]
    evidence: list[Evidence]
    next_step: str
    measured: bool = False  # True when evaluation runs weighed in
    exam: str | None = None
    answers: AdvisorAnswers | None = None

    @property
    def label(self) -> str:
        return RECOMMENDATION_LABELS[self.recommendation]

    def as_dict(self) -> dict:
        return {
            "recommendation": self.recommendation, "reasons": self.reasons,
            "evidence": [{**asdict(e), "text": e.text} for e in self.evidence], "next_step": self.next_step,
            "measured": self.measured, "exam": self.exam, "answers": asdict(self.answers) if self.answers else None,
        }


# --- the questions ----------------------------------------------------------------------------


def rule_advice(answers: AdvisorAnswers) -> tuple[Recommendation, list[str]]:
    """The classic guide applied to the answers: a recommendation and the reasons for it."""
    rag: list[str] = []
    if answers.changes != "rarely":
        how_often = "every month" if answers.changes == "monthly" else "every week or more often"
        rag.append(f"The documents change {how_often}: RAG answers from the current text at once; an adapter "
                   "would have to be trained again after every change.")
    if answers.traceable:
        rag.append("Answers must be traceable to a source: RAG cites the passages it used; a fine-tuned model "
                   "cannot say where a fact came from.")
    if not answers.enough_training_data:
        how_many = "no" if answers.training_examples == "none" else "fewer than 100"
        rag.append(f"There are {how_many} good training examples: too few to teach facts reliably, and RAG needs none.")
    if answers.combines_facts:
        rag.append("Answers combine many facts: RAG puts the passages that hold them side by side in the prompt, "
                   "where a small fine-tuned model tends to blend or miss them.")
    fine_tune: list[str] = []
    if answers.house_style:
        stable = "Stable terminology and a house style" if answers.changes == "rarely" else "A house style"
        fine_tune.append(f"{stable}: fine-tuning teaches the wording and the format, which retrieval cannot.")

    if answers.automated_both:
        reasons = ["Automated flows need both: a fixed output format, taught by fine-tuning, and current facts "
                   "with their sources, from RAG.", *rag, *fine_tune]
        if not answers.enough_training_data:
            reasons.append("Generate training data from the collection first (Training data page): fine-tuning "
                           "needs at least a few hundred good examples.")
        return "rag+fine-tune", reasons
    if fine_tune and not answers.enough_training_data:
        return "rag", [*rag, "The house style would call for fine-tuning, but it needs more good examples: generate "
                             "training data from the collection first, then fine-tune and compare."]
    if fine_tune and rag:
        return "rag+fine-tune", [*fine_tune, *rag]
    if fine_tune:
        return "fine-tune", [*fine_tune, "The documents rarely change and need no citations, and there is enough "
                                         "training data: an adapter can carry the knowledge and the style."]
    return "rag", rag or ["Nothing here calls for fine-tuning: RAG is the cheaper start, needs no training and "
                          "cites its sources."]


# --- the measurements -------------------------------------------------------------------------


@dataclass
class Measurements:
    """The newest scored answer per question and variant on one exam, with its runs' latency."""

    exam: str
    exam_id: int
    runs: list[int]
    model: str
    adapter: str | None
    scores: dict[str, dict[int, float]]  # variant → question id → token F1
    latency: dict[str, float]  # variant → mean seconds per answer
    train_seconds: float | None
    checks: dict[str, dict[int, float]] = field(default_factory=dict)  # variant → question id → similarity
    looped: dict[str, dict[int, float]] = field(default_factory=dict)  # variant → question id → 1.0 if it looped
    latency_runs: dict[str, set[int]] = field(default_factory=dict)  # variant → the runs its latencies come from

    @property
    def source(self) -> str:
        runs = ", ".join(str(r) for r in self.runs)
        return f"exam {self.exam!r}, eval run{'s' if len(self.runs) > 1 else ''} {runs}"

    def has(self, variant: str) -> bool:
        return bool(self.scores.get(variant))

    def mean(self, variant: str) -> Interval:
        return bootstrap_mean(self.scores[variant].values())

    def difference(self, a: str, b: str, values: dict[str, dict[int, float]] | None = None) -> Interval | None:
        """Paired a − b of `values` (default: token F1) over the questions both answered, or None
        when they share none."""
        values = self.scores if values is None else values
        common = sorted(set(values.get(a, {})) & set(values.get(b, {})))
        if not common:
            return None
        return paired_difference([values[a][q] for q in common], [values[b][q] for q in common])

    def loop_share(self, variant: str) -> float | None:
        marks = self.looped.get(variant)
        return sum(marks.values()) / len(marks) if marks else None


def _changed_references(settings: dict) -> bool:
    """A knowledge-update run scores against edited references: not comparable with the others."""
    return bool(settings.get("reference_overrides") or settings.get("knowledge_update"))


def load_measurements(db: Database, *, exam: str | None = None) -> Measurements | None:
    """What the evaluation runs measured on `exam` (default: the exam scored most recently), or None.

    Runs of the same exam and base model are merged, the newest answer per question and variant
    counting, so base and RAG scored in one run pair with FT and RAG+FT scored in a later one. The
    fine-tuned variants come from one adapter: the newest run's that scored them.
    """
    from core.evaluation.results import list_runs, load_answers

    runs = [run for run in list_runs(db, exam) if run.answers and not _changed_references(run.settings or {})]
    if not runs:
        return None
    newest = runs[0]  # newest first
    scores: dict[str, dict[int, float]] = {}
    checks: dict[str, dict[int, float]] = {}
    looped: dict[str, dict[int, float]] = {}
    latencies: dict[str, list[float]] = {}
    latency_runs: dict[str, set[int]] = {}
    used: list[int] = []
    adapter: str | None = None
    seen: set[tuple[int, str]] = set()
    for run in (r for r in runs if r.exam_id == newest.exam_id and r.model == newest.model):
        if adapter is None and {"ft", "rag+ft"} & set(run.variants):
            adapter = run.adapter
        contributed = False
        for answer in load_answers(db, run):
            key = (answer.question_id, answer.variant)
            if key in seen or (answer.variant in ("ft", "rag+ft") and run.adapter != adapter):
                continue
            seen.add(key)
            contributed = True
            if (score := answer.value(SCORE)) is not None:
                scores.setdefault(answer.variant, {})[answer.question_id] = float(score)
            if (check := answer.value(CHECK)) is not None:
                checks.setdefault(answer.variant, {})[answer.question_id] = float(check)
            if (loop := answer.value("looped")) is not None:
                looped.setdefault(answer.variant, {})[answer.question_id] = float(loop)
            if answer.latency_seconds is not None:
                latencies.setdefault(answer.variant, []).append(float(answer.latency_seconds))
                latency_runs.setdefault(answer.variant, set()).add(run.id)
        if contributed:
            used.append(run.id)
    return Measurements(
        exam=newest.exam, exam_id=newest.exam_id, runs=sorted(used), model=newest.model, adapter=adapter, scores=scores,
        latency={variant: sum(values) / len(values) for variant, values in latencies.items()},
        train_seconds=_train_seconds(db, adapter), checks=checks, looped=looped, latency_runs=latency_runs,
    )


def _train_seconds(db: Database, adapter: str | None) -> float | None:
    from core.models.adapters import AdapterError, adapter_record

    if not adapter:
        return None
    try:
        seconds = (adapter_record(db, adapter).get("metrics") or {}).get("train_seconds")
    except AdapterError:  # deleted since the run
        return None
    return float(seconds) if seconds is not None else None


def _name(variant: str) -> str:
    return {"base": "the base model", "rag": "RAG alone", "ft": "the fine-tuned model"}.get(variant, LABELS[variant])


def _measured_advice(db: Database, m: Measurements, prior: Recommendation | None) -> tuple[Recommendation, list[str], list[Evidence], str]:
    evidence: list[Evidence] = []
    for variant in ("base", "rag", "ft", "rag+ft"):
        if m.has(variant):
            mean = m.mean(variant)
            evidence.append(Evidence(f"{SCORE_LABEL}: {LABELS[variant]}", mean.mean, SCORE_LABEL, m.source,
                                     mean.low, mean.high, mean.n))
    for variant in ("base", "rag", "ft", "rag+ft"):
        if variant in m.latency:
            evidence.append(Evidence(f"latency: {LABELS[variant]}", m.latency[variant], "s per answer", m.source))
    if m.train_seconds is not None:
        evidence.append(Evidence(f"training: adapter {m.adapter!r}", m.train_seconds, "s of training",
                                 f"training record of {m.adapter!r}"))

    differences: dict[tuple[str, str], Interval] = {}
    for a, b in (("rag", "base"), ("ft", "base"), ("rag+ft", "rag"), ("rag+ft", "ft"), ("ft", "rag")):
        interval = m.difference(a, b) if m.has(a) and m.has(b) else None
        if interval is not None:
            differences[(a, b)] = interval
            evidence.append(Evidence(f"{SCORE_LABEL}: {LABELS[a]} − {LABELS[b]}", interval.mean, SCORE_LABEL, m.source,
                                     interval.low, interval.high, interval.n, verdict(interval)))

    def judged(a: str, b: str) -> str | None:
        return verdict(differences[(a, b)]) if (a, b) in differences else None

    def gain(a: str, b: str) -> str:
        d = differences[(a, b)]
        return (f"{LABELS[a]} {d.mean:+.2f} {SCORE_LABEL} over {_name(b)} (95% CI {d.low:+.2f}…{d.high:+.2f}, "
                f"{d.n} questions, {verdict(d)})")

    def cost(variant: str) -> str:
        return f"{m.latency[variant]:.1f} s per answer" if variant in m.latency else "latency not recorded"

    training = f", after {m.train_seconds:,.0f} s of training" if m.train_seconds is not None else ""
    reasons: list[str] = []
    lead: tuple[str, str] | None = None  # the measured gain the recommendation rests on
    if judged("rag+ft", "rag") == BETTER and judged("rag+ft", "ft") != WORSE:
        recommendation: Recommendation = "rag+fine-tune"
        lead = ("rag+ft", "rag")
        reasons.append(f"{gain('rag+ft', 'rag')} at {cost('rag+ft')}{training}.")
        if ("rag", "base") in differences:
            reasons.append(f"RAG on its own: {gain('rag', 'base')} at {cost('rag')}.")
    elif judged("ft", "rag") == BETTER:
        recommendation = "fine-tune"
        lead = ("ft", "rag")
        reasons.append(f"{gain('ft', 'rag')} at {cost('ft')} (RAG: {cost('rag')}){training}.")
    elif judged("rag", "base") == BETTER:
        recommendation = "rag"
        lead = ("rag", "base")
        reasons.append(f"{gain('rag', 'base')} at {cost('rag')} (the base model: {cost('base')}).")
        if ("rag+ft", "rag") in differences:
            reasons.append(f"The adapter adds no measurable gain on top of RAG: {gain('rag+ft', 'rag')}, at "
                           f"{cost('rag+ft')}{training}.")
        elif ("ft", "base") in differences:
            reasons.append(f"The fine-tuned model alone: {gain('ft', 'base')} at {cost('ft')}{training}.")
    elif judged("ft", "base") == BETTER:
        recommendation = "fine-tune"
        lead = ("ft", "base")
        reasons.append(f"{gain('ft', 'base')} at {cost('ft')}{training}.")
    else:
        recommendation = prior if prior not in (None, "run an evaluation first") else "rag"
        shown = next(iter(differences), None)
        if shown is not None:
            reasons.append(f"No variant is measurably better yet: {gain(*shown)}, at {cost(shown[0])}; "
                           f"the interval includes 0, so the measurements do not decide.")
        else:
            only = next(e for e in evidence if e.unit == SCORE_LABEL)
            reasons.append(f"Only one variant is scored so far ({only.text}); a comparison needs two.")
        reasons.append(f"Until they do, the {'answers to the questions' if prior else 'cheaper choice'} decide: "
                       f"{RECOMMENDATION_LABELS[recommendation]} ({'no training' if recommendation == 'rag' else 'see below'}).")

    if lead is not None:
        reasons[1:1] = _second_opinion(m, *lead)
    compared = {variant for variant in ("base", "rag", "ft", "rag+ft") if variant in m.latency and m.has(variant)}
    runs = {variant: m.latency_runs.get(variant, set()) for variant in compared}
    if len({frozenset(r) for r in runs.values()}) > 1:
        reasons.append("The latencies come from separate runs, which can differ in batching and in the machine's load: "
                       "compare latencies measured in one run (score the variants together) before weighing them.")
    if prior and prior != recommendation and prior != "run an evaluation first":
        reasons.append(f"Your answers to the questions pointed to {RECOMMENDATION_LABELS[prior]}; the measured "
                       "differences above weigh more.")
    if prior in ("fine-tune", "rag+fine-tune") and recommendation == "rag":
        reasons.append(f"{SCORE_LABEL[0].upper()}{SCORE_LABEL[1:]} measures the facts, not the house style: compare the answers side "
                       "by side on the Compare page to judge the style.")
    return recommendation, reasons, evidence, _next_measured_step(m, _newest_adapter(db, m.model))


def _second_opinion(m: Measurements, a: str, b: str) -> list[str]:
    """What a second measure says of the gain of `a` over `b`: similarity to the reference, and how
    often each looped. Token F1 rewards short answers in the reference's words, so a gain that the
    similarity does not show may be the answers' form (shorter, fewer loops) more than their facts."""
    said: list[str] = []
    check = m.difference(a, b, m.checks)
    if check is not None:
        judged = verdict(check)
        numbers = f"{check.mean:+.2f} (95% CI {check.low:+.2f}…{check.high:+.2f}, {check.n} questions)"
        if judged == BETTER:
            said.append(f"Similarity to the reference agrees: {numbers}.")
        elif judged == WORSE:
            said.append(f"But similarity to the reference is worse: {numbers}; read answers side by side on the Compare "
                        "page before relying on the gain.")
        else:
            said.append(f"Similarity to the reference shows no detectable difference: {numbers}. The gain may lie in "
                        "the answers' form (shorter, fewer loops) more than in their facts: read a few answers side by "
                        "side on the Compare page before relying on it.")
    loops_a, loops_b = m.loop_share(a), m.loop_share(b)
    if loops_a is not None and loops_b is not None and (loops_a or loops_b):
        said.append(f"Answers that looped: {_name(b)} {loops_b:.0%}, {LABELS[a]} {loops_a:.0%}.")
    return said


def _next_measured_step(m: Measurements, newest_adapter: str | None) -> str:
    missing = [v for v in ("base", "rag") if not m.has(v)]
    if missing:
        return (f"Score {' and '.join(missing)} on the same exam: "
                f"python -m core eval --exam {m.exam} --variants {','.join(missing)}")
    if not m.has("ft") or not m.has("rag+ft"):
        adapter = m.adapter or newest_adapter or "ADAPTER"
        return ("Fine-tune an adapter on training data generated from the documents outside the exam, then score it: "
                f"python -m core eval --exam {m.exam} --variants ft,rag+ft --adapter {adapter}")
    smallest = min(len(s) for s in m.scores.values())
    if smallest < MIN_QUESTIONS:
        return (f"The exam has {smallest} scored questions: add questions (at least {MIN_QUESTIONS}) and score again "
                "for narrower intervals.")
    return "Check the verdict on your own questions: blind votes on the Compare page rank the variants too."


def _newest_adapter(db: Database, model: str) -> str | None:
    """The newest adapter trained on `model` (named in the next step), if there is one."""
    with db.engine.connect() as connection:
        return connection.execute(
            text("SELECT name FROM artifacts WHERE kind = 'adapter' AND base_model = :m ORDER BY created_at DESC, id DESC LIMIT 1"),
            {"m": model},
        ).scalar()


def _first_run_step(db: Database) -> str:
    with db.engine.connect() as connection:
        exam = connection.execute(text("SELECT name FROM exams ORDER BY created_at DESC, id DESC LIMIT 1")).scalar()
    if exam is None:
        return ("Draft an exam from your collection (Exams page, or python -m core exams generate), then score base "
                "and RAG on it: python -m core eval --exam NAME --variants base,rag")
    return f"Score base and RAG on an exam first: python -m core eval --exam {exam} --variants base,rag"


def advise(db: Database, answers: AdvisorAnswers | None = None, *, exam: str | None = None) -> Advice:
    """Advice for the user's case: the questions' answers (if given), weighed against what evaluation
    runs measured on `exam` (default: the exam scored most recently), when there are any."""
    prior, prior_reasons = rule_advice(answers) if answers is not None else (None, [])
    measurements = load_measurements(db, exam=exam)
    if measurements is None:
        if exam is not None:
            raise AdvisorError(f"No scored answers on an exam named {exam!r}: run an evaluation on it first.")
        next_step = _first_run_step(db)
        if prior is None:
            return Advice("run an evaluation first", ["No evaluation has been run yet, and the questions are not "
                          "answered: answer them for advice now, or measure first."], [], next_step)
        return Advice(prior, prior_reasons, [], next_step, answers=answers)
    recommendation, reasons, evidence, next_step = _measured_advice(db, measurements, prior)
    if prior is not None:
        reasons += [f"From the questions: {reason}" for reason in prior_reasons]
    return Advice(recommendation, reasons, evidence, next_step, measured=True, exam=measurements.exam, answers=answers)


def scored_exams(db: Database) -> list[str]:
    """Exams with scored answers, the most recently scored first."""
    with db.engine.connect() as connection:
        return list(connection.execute(text(
            "SELECT e.name FROM exams e JOIN eval_runs r ON r.exam_id = e.id "
            "WHERE EXISTS (SELECT 1 FROM eval_answers a WHERE a.run_id = r.id) "
            "GROUP BY e.name ORDER BY max(r.created_at) DESC"
        )).scalars())
