"""Generation speed of the app's streaming path against plain `generate`, and RAG time to first token.

What is measured, on the bundled SmolLM2 (float32 on the CPU, as the app runs it here):

  (1) Overhead of the app's streaming path. `core.models.stream_chat` runs `model.generate` in a
      background thread and hands text pieces over through a `TextIteratorStreamer`; that costs
      something over calling `generate` directly. On the same prompt token ids
      (`core.models.generation.chat_prompt_ids`) and the same greedy settings:
        * app: time to first token as the app records it (`g.stats.time_to_first_token`), the
          time from calling `stream_chat` to the first text piece the caller receives (what a
          user sees: includes templating and the streamer's word buffering), and decode tokens/s
          (`g.stats.tokens_per_second`, i.e. (new tokens - 1) / (seconds - TTFT));
        * plain: TTFT = one `generate(max_new_tokens=1)` call; decode tokens/s = (new tokens - 1)
          / (time of a full `generate(max_new_tokens=N)` - median plain TTFT);
        * plain in a worker thread: the same `generate(max_new_tokens=1)` in a new thread, as the
          app must run it to stream. It separates what the thread costs on this machine (a second
          OpenMP team for torch; +10-20 % time to first token on 2 cores in 2026-11-29's runs)
          from what the app's own code (templating aside: stop ids, streamer, adapter switch) costs.
      The three kinds of run are interleaved (order alternating per repetition) so that load from
      other processes on the shared machine hits both sides alike; medians and ratios are printed.
      Goal: app overhead within 5% (TTFT ratio and decode-speed ratio ≤ 1.05).

  (2) RAG end to end: SciFact abstracts are ingested as Markdown (`# title\\n\\ntext`)
      through `core.documents.ingest.ingest_files` into a fresh collection until it holds `--chunks` (2,000), then
      for `--queries` SciFact claims `core.answers.rag.ask(..., max_new_tokens=1)` is called and streamed
      to its first piece. Reported: p50/p95 of retrieval (`answer.timings.retrieval_seconds`) and
      of time to first token from the question (`answer.timings.time_to_first_token`, retrieval,
      prompt building and prefill included), and the prompt sizes. The queries are SciFact test
      claims whose cited abstracts are among those ingested, so retrieval finds relevant passages
      and the model is really asked (an empty retrieval answers without the model).

SciFact is read at run time from /work/shared/data/scifact (or --scifact); nothing is copied.
Set EXPERT_STUDIO_MODELS_DIR to a folder holding the converted bundled model for fast loading.

    PYTHONPATH=. .venv/bin/python benchmarks/generation_bench.py [--reps 6] [--new-tokens 48] [--chunks 2000] [--docs N] [--queries 20]
"""

from __future__ import annotations

import argparse
import sys
import threading
import time
from pathlib import Path

from _common import DEFAULT_SCIFACT, as_markdown, data_dir, machine, median, percentile, scifact_corpus, table

PROMPT = [
    {"role": "system", "content": "You are a helpful assistant who explains things at length."},
    {"role": "user", "content": (
        "Explain in detail how a refrigerator keeps food cold: the compressor, the refrigerant, the condenser "
        "coils at the back, the expansion valve and the evaporator inside. Describe each step of the cycle, "
        "why the back of the fridge gets warm, and what the thermostat does. Then give five practical tips "
        "for using a refrigerator efficiently at home."
    )},
]


def app_run(loaded, new_tokens: int) -> dict:
    from core.models import stream_chat

    called = time.perf_counter()
    g = stream_chat(loaded, PROMPT, max_new_tokens=new_tokens, temperature=0.0)
    first_piece = None
    for _ in g:
        if first_piece is None:
            first_piece = time.perf_counter() - called
    return {"ttft": g.stats.time_to_first_token, "first_piece": first_piece, "tps": g.stats.tokens_per_second,
            "new_tokens": g.stats.new_tokens, "seconds": time.perf_counter() - called, "text": g.text}


def plain_run(loaded, input_ids, attention_mask, new_tokens: int) -> tuple[float, int, list[int]]:
    import torch

    start = time.perf_counter()
    with torch.inference_mode():
        output = loaded.model.generate(input_ids, attention_mask=attention_mask, max_new_tokens=new_tokens,
                                       do_sample=False, temperature=None, top_p=None, top_k=None)
    seconds = time.perf_counter() - start
    new = output[0, input_ids.shape[1]:].tolist()
    return seconds, len(new), new


def in_thread(function, *args):
    """Run `function` in a new thread, as the app runs `generate`, and return its result."""
    box = {}
    worker = threading.Thread(target=lambda: box.setdefault("result", function(*args)))
    worker.start()
    worker.join()
    return box["result"]


def bench_streaming(loaded, reps: int, new_tokens: int) -> None:
    import torch

    from core.models.generation import chat_prompt_ids

    ids = chat_prompt_ids(loaded, PROMPT)
    input_ids = torch.tensor([ids])
    mask = torch.ones_like(input_ids)
    print(f"## Streaming path vs plain generate\n\nprompt {len(ids)} tokens, greedy, max_new_tokens={new_tokens}, "
          f"{reps} interleaved repetitions (after one warm-up of each)\n")

    app_run(loaded, new_tokens)  # warm-up
    plain_run(loaded, input_ids, mask, 1)
    plain_run(loaded, input_ids, mask, new_tokens)

    app, plain_ttft, thread_ttft, plain_full = [], [], [], []
    for rep in range(reps):
        order = ("app", "ttft", "thread", "full") if rep % 2 == 0 else ("full", "thread", "ttft", "app")
        for kind in order:
            if kind == "app":
                app.append(app_run(loaded, new_tokens))
            elif kind == "ttft":
                plain_ttft.append(plain_run(loaded, input_ids, mask, 1)[0])
            elif kind == "thread":
                thread_ttft.append(in_thread(plain_run, loaded, input_ids, mask, 1)[0])
            else:
                plain_full.append(plain_run(loaded, input_ids, mask, new_tokens))

    app_ttft = median([r["ttft"] for r in app])
    app_piece = median([r["first_piece"] for r in app])
    app_tps = median([r["tps"] for r in app])
    p_ttft = median(plain_ttft)
    t_ttft = median(thread_ttft)
    p_tps = median([(n - 1) / (s - p_ttft) for s, n, _ in plain_full])
    app_tokens = sorted({r["new_tokens"] for r in app})
    plain_tokens = sorted({n for _, n, _ in plain_full})
    same_text = app[0]["text"].strip() == loaded.tokenizer.decode(plain_full[0][2], skip_special_tokens=True).strip()
    rows = [
        ["time to first token (s), median", f"{p_ttft:.3f}", f"{app_ttft:.3f}", f"{app_ttft / p_ttft:.3f}"],
        ["time to first token, plain generate in a worker thread (s)", f"{t_ttft:.3f}", f"{app_ttft:.3f}",
         f"{app_ttft / t_ttft:.3f}"],
        ["time to first text piece from the call (s), median", "—", f"{app_piece:.3f}", f"{app_piece / p_ttft:.3f}"],
        ["decode tokens/s, median", f"{p_tps:.1f}", f"{app_tps:.1f}", f"{p_tps / app_tps:.3f}"],
        ["new tokens per run", ",".join(map(str, plain_tokens)), ",".join(map(str, app_tokens)), ""],
    ]
    print(table(["measure", "plain generate", "app stream_chat", "overhead (app/plain; plain/app for tok/s)"], rows))
    print("\nper-rep TTFT app  :", " ".join(f"{r['ttft']:.3f}" for r in app))
    print("per-rep TTFT plain:", " ".join(f"{t:.3f}" for t in plain_ttft))
    print("per-rep TTFT plain in a thread:", " ".join(f"{t:.3f}" for t in thread_ttft))
    print("per-rep tok/s app  :", " ".join(f"{r['tps']:.1f}" for r in app))
    print("per-rep tok/s plain:", " ".join(f"{(n - 1) / (s - p_ttft):.1f}" for s, n, _ in plain_full))
    print(f"same greedy text on both sides: {same_text}")
    worst = max(app_ttft / p_ttft, p_tps / app_tps)
    print(f"\ngoal (app overhead ≤ 5%): {'met' if worst <= 1.05 else 'NOT met'} (worst ratio {worst:.3f})")
    own = max(app_ttft / t_ttft, p_tps / app_tps)
    print(f"app's own code against generate in a worker thread (the thread is what streaming needs): "
          f"{'within' if own <= 1.05 else 'over'} 5% (worst ratio {own:.3f})\n")


def bench_rag(loaded, args) -> None:
    from _common import scifact_queries, scifact_test_qrels

    from core.answers.rag import ask
    from core.config import Settings
    from core.db import open_database
    from core.documents.ingest import ingest_files
    from core.documents.library import create_collection

    settings = Settings(data_dir=data_dir(args.data_dir))
    db = open_database(settings)
    corpus = scifact_corpus(args.scifact)
    queries = scifact_queries(args.scifact)
    qrels = scifact_test_qrels(args.scifact)
    by_id = {d["_id"]: d for d in corpus}

    # The abstracts the first test claims cite go in first, then the rest of the corpus in order.
    chosen_queries = [q for q in qrels if q in queries][: args.queries]
    wanted = [d for q in chosen_queries for d in sorted(qrels[q]) if d in by_id]
    docs = list(dict.fromkeys(wanted + [d["_id"] for d in corpus]))[: args.docs]
    create_collection(db, "rag-bench", settings=settings)
    start, chunks, failed = time.perf_counter(), 0, 0
    for first in range(0, len(docs), 100):  # 100 abstracts per call: embedded together, stopped near --chunks
        block = docs[first : first + 100]
        outcomes = ingest_files(db, "rag-bench", [(f"{d}.md", as_markdown(by_id[d])) for d in block], settings=settings)
        chunks += sum(o.chunks for o in outcomes)
        failed += sum(not o.ok for o in outcomes)
        stopped_at = first + len(block)
        print(f"  ingested {stopped_at}/{len(docs)} docs, {chunks} chunks, {time.perf_counter() - start:.0f} s", flush=True)
        if chunks >= args.chunks:
            break
    ingest_seconds = time.perf_counter() - start
    print(f"## RAG end to end\n\ncollection: {stopped_at} SciFact abstracts -> {chunks} chunks "
          f"({failed} failed) ingested in {ingest_seconds:.0f} s; {len(chosen_queries)} test claims, "
          f"top_k={settings.rag_top_k}, hybrid search, max_new_tokens=1\n")

    ask(db, queries[chosen_queries[0]], collection="rag-bench", max_new_tokens=1, settings=settings).complete()  # warm-up
    retrieval, ttft, prompt_tokens, sources, nothing = [], [], [], [], 0
    for q in chosen_queries:
        answer = ask(db, queries[q], collection="rag-bench", max_new_tokens=1, temperature=0.0, settings=settings)
        for _ in answer.stream():
            break  # the first streamed piece is what is being timed
        answer.complete()
        if answer.nothing_found:
            nothing += 1
            continue
        retrieval.append(answer.timings.retrieval_seconds)
        ttft.append(answer.timings.time_to_first_token)
        prompt_tokens.append(answer.timings.context_tokens)
        sources.append(len(answer.sources))
    rows = [
        ["retrieval (embed query + hybrid search)", f"{percentile(retrieval, 50) * 1000:.0f}",
         f"{percentile(retrieval, 95) * 1000:.0f}"],
        ["time to first token (question → first piece)", f"{percentile(ttft, 50) * 1000:.0f}",
         f"{percentile(ttft, 95) * 1000:.0f}"],
        ["  of which after retrieval (prompt fitting + prefill)",
         f"{percentile([t - r for t, r in zip(ttft, retrieval, strict=True)], 50) * 1000:.0f}",
         f"{percentile([t - r for t, r in zip(ttft, retrieval, strict=True)], 95) * 1000:.0f}"],
    ]
    print(table(["stage", "p50 (ms)", "p95 (ms)"], rows))
    print(f"\n{len(ttft)} answered queries ({nothing} found nothing); prompt tokens median {median(prompt_tokens):.0f} "
          f"(min {min(prompt_tokens)}, max {max(prompt_tokens)}); sources per prompt median {median(sources):.0f}\n")


def main() -> int:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--reps", type=int, default=6, help="interleaved repetitions of each side (≥ 5)")
    parser.add_argument("--new-tokens", type=int, default=48, help="max_new_tokens of the full runs")
    parser.add_argument("--chunks", type=int, default=2000, help="stop ingesting once the collection has this many chunks")
    parser.add_argument("--docs", type=int, default=5183, help="at most this many SciFact abstracts to ingest")
    parser.add_argument("--queries", type=int, default=20, help="questions for the RAG part")
    parser.add_argument("--skip-rag", action="store_true", help="only the streaming comparison")
    parser.add_argument("--data-dir", help="keep the database here (default: a throwaway folder under /tmp)")
    parser.add_argument("--scifact", type=Path, default=DEFAULT_SCIFACT)
    args = parser.parse_args()

    from core.models import BUNDLED_MODEL, load_model

    started = time.perf_counter()
    loaded = load_model(BUNDLED_MODEL)
    print(f"machine: {machine()}\nmodel: {loaded.description} (loaded in {time.perf_counter() - started:.1f} s)\n")
    bench_streaming(loaded, args.reps, args.new_tokens)
    if not args.skip_rag:
        bench_rag(loaded, args)
    return 0


if __name__ == "__main__":
    sys.exit(main())
