"""Which RAG prompt and decoding defaults answer the benchmark exam best? All candidates in one run,
on the same retrieved passages, scored without a judge model, with paired bootstrap intervals
against the current default.

    EXPERT_STUDIO_DATA_DIR=/tmp/evalbench PYTHONPATH=. .venv/bin/python benchmarks/rag_prompt_bench.py \
        --collection debian-docs [--styles current,...] [--limit N]

The collection must hold benchmarks/exam_data/documents (`python -m core ingest ... --collection`).
Only in-scope and out-of-scope questions of benchmarks/exam_data/exam.jsonl are used; nothing here
changes the app. The results decide the defaults in core/answers/rag.py (docs/benchmarks.md).
"""

from __future__ import annotations

import argparse
import json
import time
from pathlib import Path

import core.answers.rag as rag
from core.config import get_settings
from core.db import open_database
from core.evaluation.metrics import abstention_score, exact_match, is_abstention, looped, rouge_l, token_f1
from core.evaluation.stats import bootstrap_mean, paired_difference, verdict
from core.models import load_model
from core.models.batch import generate_batch

EXAM = Path(__file__).parent / "exam_data" / "exam.jsonl"

CURRENT_SYSTEM = rag.RAG_PROMPTS["cite-or-unknown"]


def _sources_block(sources) -> str:
    return "\n\n".join(rag._format_source(s) for s in sources)


def style_current(question, sources, prompt=None):
    return [{"role": "system", "content": CURRENT_SYSTEM},
            {"role": "user", "content": f"Sources:\n\n{_sources_block(sources)}\n\nQuestion: {question}"}]


SHORT_SYSTEM = rag.RAG_PROMPTS["short-cited"]


def style_short(question, sources, prompt=None):
    return [{"role": "system", "content": SHORT_SYSTEM},
            {"role": "user", "content": f"Sources:\n\n{_sources_block(sources)}\n\nQuestion: {question}"}]


def style_sandwich(question, sources, prompt=None):
    """The question before the passages and again after them, where a small model looks last."""
    return [{"role": "system", "content": SHORT_SYSTEM},
            {"role": "user", "content": f"Question: {question}\n\nSources:\n\n{_sources_block(sources)}\n\n"
                                        f"Answer the question \"{question}\" from the sources, in one or two sentences."}]


def style_best_last(question, sources, prompt=None):
    """The best passage nearest the question (numbers kept, so citations still point right)."""
    return [{"role": "system", "content": SHORT_SYSTEM},
            {"role": "user", "content": f"Sources:\n\n{_sources_block(list(reversed(sources)))}\n\nQuestion: {question}"}]


STYLES = {"current": style_current, "short": style_short, "sandwich": style_sandwich, "best-last": style_best_last}


def load_exam(limit: int | None) -> list[dict]:
    rows = [json.loads(line) for line in EXAM.read_text().splitlines() if line.strip()]
    return rows[:limit] if limit else rows


def score(row: dict, answer: str) -> dict:
    reference = row["reference_answer"]
    out = bool(row.get("out_of_scope"))
    return {
        "f1": 0.0 if out else token_f1(answer, reference),
        "em": 0.0 if out else exact_match(answer, reference),
        "rouge_l": 0.0 if out else rouge_l(answer, reference),
        "contains": float(not out and rag_contains(answer, reference)),
        "abstention": abstention_score(answer, out),
        "looped": float(looped(answer)),
        "abstained_in_scope": float(not out and is_abstention(answer)),
    }


def rag_contains(answer: str, reference: str) -> bool:
    """The reference's words all appear in the answer (a lenient "right answer" check for short references)."""
    from core.evaluation.metrics import normalize_answer

    words = normalize_answer(reference).split()
    said = set(normalize_answer(answer).split())
    return bool(words) and all(w in said for w in words)


def main() -> None:
    parser = argparse.ArgumentParser()
    parser.add_argument("--collection", default="debian-docs")
    parser.add_argument("--styles", default="current,short,sandwich,best-last")
    parser.add_argument("--top-k", default="5", help="comma-separated passage counts to try with each style")
    parser.add_argument("--guard", default="off,on", help="loop guard settings to try: off, on")
    parser.add_argument("--max-new-tokens", type=int, default=256)
    parser.add_argument("--batch-size", type=int, default=8)
    parser.add_argument("--limit", type=int)
    parser.add_argument("--every", type=int, default=1, help="take every n-th question (a spread-out subset)")
    parser.add_argument("--out", default="/tmp/rag_prompt_bench.json")
    args = parser.parse_args()

    settings = get_settings()
    db = open_database(settings)
    loaded = load_model(settings.language_model)
    exam = load_exam(None)[:: args.every][: args.limit]
    print(f"{len(exam)} questions, model {loaded.description}")

    results: dict[str, list[dict]] = {}
    for top_k in [int(k) for k in args.top_k.split(",")]:
        settings_k = settings.model_copy(update={"rag_top_k": top_k})
        for style in args.styles.split(","):
            rag.rag_messages = STYLES[style]
            prompts, nothing = [], []
            for row in exam:
                prepared = rag.prepare_answer(db, loaded, row["question"], collection=args.collection,
                                              max_new_tokens=args.max_new_tokens, settings=settings_k)
                nothing.append(prepared.nothing_found)
                prompts.append(prepared.messages or [{"role": "user", "content": row["question"]}])
            for guard in args.guard.split(","):
                name = f"{style}/k{top_k}/guard-{guard}"
                started = time.perf_counter()
                answers = generate_batch(loaded, prompts, max_new_tokens=args.max_new_tokens,
                                         batch_size=args.batch_size, stop_loops=guard == "on")
                seconds = time.perf_counter() - started
                texts = [rag.NOTHING_FOUND.format(collection=args.collection) if n else a.text
                         for a, n in zip(answers, nothing, strict=True)]
                results[name] = [{**score(row, text), "tokens": a.new_tokens, "answer": text}
                                 for row, text, a in zip(exam, texts, answers, strict=True)]
                tokens = sum(a.new_tokens for a in answers)
                Path(args.out).write_text(json.dumps(results, indent=1))
                print(f"{name}: {seconds:.0f} s, {tokens} tokens, " + ", ".join(
                    f"{m} {sum(r[m] for r in results[name]) / len(exam):.3f}"
                    for m in ("f1", "contains", "rouge_l", "abstention", "looped", "abstained_in_scope")), flush=True)
    rag.rag_messages = STYLES["current"]

    baseline = next(iter(results))
    print(f"\nVersus {baseline} (paired bootstrap 95% intervals, token F1 / contains):")
    for name, rows in results.items():
        for metric in ("f1", "contains"):
            mean = bootstrap_mean([r[metric] for r in rows])
            diff = paired_difference([r[metric] for r in rows], [r[metric] for r in results[baseline]])
            print(f"  {name:<28} {metric:<8} {mean.mean:.3f} [{mean.low:.3f}, {mean.high:.3f}]  "
                  f"diff {diff.mean:+.3f} [{diff.low:+.3f}, {diff.high:+.3f}] {verdict(diff)}")
    Path(args.out).write_text(json.dumps(results, indent=1))
    print(f"answers: {args.out}")


if __name__ == "__main__":
    main()
