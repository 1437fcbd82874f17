"""The benchmark exam's variants side by side when they were scored in separate evaluation runs
(base and RAG in one run, the fine-tuned adapters in later ones): per variant the means with 95%
bootstrap intervals, and each pair's paired difference over the questions both answered, with its
verdict. Greedy decoding makes each run's answers repeatable, so runs of one exam can be paired.

    EXPERT_STUDIO_DATA_DIR=/tmp/evalbench PYTHONPATH=. .venv/bin/python benchmarks/exam_runs_table.py \
        base=2:base rag=4:rag ft=5:ft rag+ft=6:rag+ft --pairs rag:base,ft:base,rag+ft:rag,rag+ft:ft

Each column is NAME=RUN_ID:VARIANT. Prints Markdown.
"""

from __future__ import annotations

import argparse

from core.config import get_settings
from core.db import open_database
from core.evaluation.results import get_run, load_answers
from core.evaluation.stats import bootstrap_mean, paired_difference, verdict

METRICS = ("token_f1", "rouge_l", "similarity", "looped", "new_tokens")
LOWER_IS_BETTER = {"looped", "new_tokens"}


def column(db, spec: str) -> tuple[str, dict[int, dict[str, float]], dict]:
    name, _, where = spec.partition("=")
    run_id, _, variant = where.partition(":")
    run = get_run(db, int(run_id))
    values: dict[int, dict[str, float]] = {}
    diagnoses: dict[str, int] = {}
    for answer in load_answers(db, run):
        if answer.variant != variant:
            continue
        values[answer.question_id] = {m: answer.value(m) for m in METRICS}
        diagnoses[answer.diagnosis or "–"] = diagnoses.get(answer.diagnosis or "–", 0) + 1
    if not values:
        raise SystemExit(f"Run {run_id} has no answers of variant {variant!r}.")
    return name, values, {"run": run, "diagnoses": diagnoses, "variant": variant}


def cell(scores: list[float]) -> str:
    interval = bootstrap_mean(scores)
    digits = 0 if abs(interval.mean) >= 10 else 3
    return f"{interval.mean:.{digits}f} [{interval.low:.{digits}f}, {interval.high:.{digits}f}]"


def main() -> None:
    parser = argparse.ArgumentParser()
    parser.add_argument("columns", nargs="+", help="NAME=RUN_ID:VARIANT")
    parser.add_argument("--pairs", default="", help="A:B,C:D — paired differences A − B")
    args = parser.parse_args()

    db = open_database(get_settings())
    columns = [column(db, spec) for spec in args.columns]
    shared = set.intersection(*(set(values) for _, values, _ in columns))
    print(f"{len(shared)} questions answered in every run.\n")
    print("| metric | " + " | ".join(f"{name} (run {info['run'].id})" for name, _, info in columns) + " |")
    print("|---" * (len(columns) + 1) + "|")
    for metric in METRICS:
        cells = []
        for _, values, _ in columns:
            scores = [values[q][metric] for q in sorted(shared) if values[q][metric] is not None]
            cells.append(cell(scores) if scores else "–")
        print(f"| {metric} | " + " | ".join(cells) + " |")
    print("| diagnoses | " + " | ".join(", ".join(f"{k} {v}" for k, v in sorted(info["diagnoses"].items()))
                                        for _, _, info in columns) + " |")

    by_name = {name: values for name, values, _ in columns}
    pairs = [p.split(":") for p in args.pairs.split(",") if p]
    if pairs:
        print("\n| paired difference (A − B) | " + " | ".join(METRICS) + " |")
        print("|---" * (len(METRICS) + 1) + "|")
    for a, b in pairs:
        row = []
        for metric in METRICS:
            both = [q for q in sorted(shared) if by_name[a][q][metric] is not None and by_name[b][q][metric] is not None]
            interval = paired_difference([by_name[a][q][metric] for q in both], [by_name[b][q][metric] for q in both])
            word = verdict(interval)
            if metric in LOWER_IS_BETTER and word in ("better", "worse"):
                word = {"better": "more", "worse": "fewer"}[word]
            digits = 0 if metric == "new_tokens" else 3
            row.append(f"{interval.mean:+.{digits}f} [{interval.low:+.{digits}f}, {interval.high:+.{digits}f}] {word}")
        print(f"| {a} − {b} | " + " | ".join(row) + " |")


if __name__ == "__main__":
    main()
