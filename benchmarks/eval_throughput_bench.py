"""Evaluation throughput: the same exam answers generated in batches (what an evaluation run does)
vs one by one (what asking each question would cost), in one run, on the bundled SmolLM2; and the
four-way comparison (Compare page) vs four plain `model.generate` calls on the same prompts.

    EXPERT_STUDIO_DATA_DIR=/tmp/evalbench PYTHONPATH=. .venv/bin/python benchmarks/eval_throughput_bench.py \
        --collection debian-docs --questions 16

The collection must hold benchmarks/exam_data/documents. Goals (issue "Compare and evaluate"):
batched ≥ 2x faster than one by one on 2 CPU cores with identical answers; the comparison's
overhead over plain generate small. Prints Markdown.
"""

from __future__ import annotations

import argparse
import json
import time
from pathlib import Path

from core.answers.rag import prepare_answer
from core.config import get_settings
from core.db import open_database
from core.models import load_model
from core.models.batch import generate_batch
from core.models.generation import chat_prompt_ids, stop_token_ids

EXAM = Path(__file__).parent / "exam_data" / "exam.jsonl"


def plain_generate(loaded, messages: list[dict], max_new_tokens: int) -> int:
    """transformers' generate, greedy, the prompt as the app renders it; returns new tokens."""
    import torch

    ids = torch.tensor([chat_prompt_ids(loaded, messages)])
    with torch.inference_mode():
        output = loaded.model.generate(input_ids=ids, attention_mask=torch.ones_like(ids), max_new_tokens=max_new_tokens,
                                       do_sample=False, temperature=None, top_p=None, top_k=None,
                                       eos_token_id=stop_token_ids(loaded), pad_token_id=stop_token_ids(loaded)[0])
    return output.shape[1] - ids.shape[1]


def main() -> None:
    parser = argparse.ArgumentParser()
    parser.add_argument("--collection", default="debian-docs")
    parser.add_argument("--questions", type=int, default=16)
    parser.add_argument("--max-new-tokens", type=int, default=128)
    parser.add_argument("--batch-size", type=int, default=8)
    parser.add_argument("--compare-questions", type=int, default=2)
    parser.add_argument("--adapter", help="an adapter of the collection's model: compare all four variants")
    parser.add_argument("--kinds", default="base,rag", help="prompt kinds to time: base (the question alone), rag")
    args = parser.parse_args()

    settings = get_settings()
    db = open_database(settings)
    loaded = load_model(settings.language_model)
    rows = [json.loads(line) for line in EXAM.read_text().splitlines() if line.strip()]
    rows = [r for r in rows if not r["out_of_scope"]][:: max(1, len(rows) // args.questions)][: args.questions]
    for kind in args.kinds.split(","):
        collection = args.collection if kind == "rag" else None
        prompts = [prepare_answer(db, loaded, r["question"], collection=collection,
                                  max_new_tokens=args.max_new_tokens, settings=settings).messages for r in rows]
        throughput(loaded, prompts, kind, args, settings)
    if args.compare_questions:
        compare_side_by_side(db, loaded, rows, args, settings)


def throughput(loaded, prompts: list[list[dict]], kind: str, args, settings) -> None:
    """One by one, then the evaluation's batching (on a CPU: each prompt prefilled alone, the batch
    decoded together), then batches prefilled at once, on the same prompts; every side's answers compared."""
    prompt_tokens = [len(chat_prompt_ids(loaded, p)) for p in prompts]
    print(f"**{kind}**: {len(prompts)} prompts of the benchmark exam, {sum(prompt_tokens) / len(prompt_tokens):.0f} "
          f"tokens on average; {loaded.description}; at most {args.max_new_tokens} new tokens, greedy, loop guard "
          f"{'on' if settings.stop_loops else 'off'}.\n")
    started = time.perf_counter()
    single = [generate_batch(loaded, [p], max_new_tokens=args.max_new_tokens, batch_size=1)[0] for p in prompts]
    one_by_one = time.perf_counter() - started
    print("| generation | seconds | answers/min | speed-up | answers identical to one by one |\n|---|---:|---:|---:|---:|")
    print(f"| one by one | {one_by_one:.1f} | {60 * len(prompts) / one_by_one:.1f} | 1.00x | – |")
    sides = [(f"evaluation batching (batches of {args.batch_size}; on a CPU each prompt prefilled alone, decoded "
              "together)", None), (f"batches of {args.batch_size} prefilled at once", False)]
    for label, one_by_one_prefill in sides:
        started = time.perf_counter()
        batched = generate_batch(loaded, prompts, max_new_tokens=args.max_new_tokens, batch_size=args.batch_size,
                                 prefill_one_by_one=one_by_one_prefill)
        seconds = time.perf_counter() - started
        same = sum(a.text == b.text for a, b in zip(single, batched, strict=True))
        print(f"| {label} | {seconds:.1f} | {60 * len(prompts) / seconds:.1f} | **{one_by_one / seconds:.2f}x** | "
              f"{same} of {len(prompts)} |")
    print()


def compare_side_by_side(db, loaded, rows, args, settings) -> None:

    from core.evaluation.compare import compare
    from core.models.adapters import find_adapter
    from core.models.generation import _adapter_active

    variants = ["base", "rag", "ft", "rag+ft"] if args.adapter else ["base", "rag"]
    adapter_path = find_adapter(db, args.adapter, settings).path if args.adapter else None
    app_seconds = plain_seconds = 0.0
    for row in rows[: args.compare_questions]:
        started = time.perf_counter()
        for answer in compare(db, row["question"], collection=args.collection, variants=variants, adapter=args.adapter,
                              max_new_tokens=args.max_new_tokens, settings=settings):
            answer.answer.complete()
        app_seconds += time.perf_counter() - started
        started = time.perf_counter()
        for variant in variants:
            messages = prepare_answer(db, loaded, row["question"], collection=args.collection if "rag" in variant else None,
                                      max_new_tokens=args.max_new_tokens, settings=settings).messages
            fine_tuned = variant in ("ft", "rag+ft")
            with _adapter_active(loaded, args.adapter if fine_tuned else None, adapter_path if fine_tuned else None):
                plain_generate(loaded, messages, args.max_new_tokens)
        plain_seconds += time.perf_counter() - started
    print(f"| {len(variants)} answers to one question ({', '.join(variants)}) | seconds per question |\n|---|---:|")
    print(f"| Compare (streamed, retrieval, timings) | {app_seconds / args.compare_questions:.1f} |")
    print(f"| {len(variants)} plain `generate` calls | {plain_seconds / args.compare_questions:.1f} |")
    print(f"\nCompare / plain: **{app_seconds / plain_seconds:.2f}** (the loop guard can make it < 1: plain generate "
          "runs loops to the token limit).")


if __name__ == "__main__":
    main()
