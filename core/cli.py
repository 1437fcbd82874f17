"""python -m core ...: the same functions the pages call, for scripts and automation.

Every command prints a short human summary, or JSON with --json. Bad input exits with status 2
and one line saying what to fix; nothing here prints a traceback for a user mistake.
"""

from __future__ import annotations

import argparse
import json
import sys
from dataclasses import asdict
from datetime import datetime
from pathlib import Path

from core.config import get_settings
from core.errors import UserError
from core.formatting import human_size

DEFAULT_COLLECTION = "default"


def _print_json(value) -> None:
    print(json.dumps(value, indent=2, ensure_ascii=False, default=lambda v: v.isoformat() if isinstance(v, datetime) else str(v)))


def _result(args, value, line: str) -> None:
    """A command's result: one line for people, or `value` as JSON with --json."""
    if args.json:
        _print_json(value)
    else:
        print(line)


def _database():
    from core.db import open_database
    from core.security.data_dir import protect_data_dir

    protect_data_dir(get_settings().data_dir)
    return open_database(get_settings())


# --- commands ---------------------------------------------------------------------------------


def cmd_ingest(args) -> int:
    from core.documents.ingest import ingest_paths
    from core.documents.library import ensure_collection

    db = _database()
    ensure_collection(db, args.collection)
    missing = [p for p in args.paths if not Path(p).exists()]
    for path in missing:
        print(f"{path}: no such file or folder.", file=sys.stderr)
    outcomes = ingest_paths(db, args.collection, [Path(p) for p in args.paths if Path(p).exists()], replace=args.replace)
    if args.json:
        _print_json([asdict(o) for o in outcomes])
    else:
        for outcome in outcomes:
            mark = {"added": "+", "replaced": "~", "skipped": "=", "failed": "!"}[outcome.status]
            print(f"{mark} {outcome.message}", file=sys.stderr if outcome.status == "failed" else sys.stdout)
        added = sum(o.status in ("added", "replaced") for o in outcomes)
        print(f"{added} of {len(outcomes)} files added to {args.collection!r}.")
    return 1 if missing or any(o.status == "failed" for o in outcomes) else 0


def cmd_search(args) -> int:
    from core.documents.search import search

    hits = search(
        _database(), args.query, collection=args.collection, k=args.k, mode=args.mode, document_ids=args.document,
        rerank=not args.no_rerank,
    )
    if args.json:
        _print_json([asdict(h) for h in hits])
        return 0
    if not hits:
        print("No passages found.")
    for rank, hit in enumerate(hits, start=1):
        where = f"p. {hit.page}" if hit.page else (hit.heading or f"chunk {hit.ordinal}")
        reranked = f"  rerank {hit.rerank_score:.4f}" if hit.rerank_score is not None else ""
        print(f"[{rank}] {hit.filename} ({where})  score {hit.score:.4f}{reranked}")
        print("    " + " ".join(hit.text.split())[:300])
    return 0


def cmd_documents(args) -> int:
    from core.documents.library import delete_document, document_chunks, list_documents

    db = _database()
    if args.action == "list":
        documents = list_documents(db, args.collection)
        if args.json:
            _print_json([asdict(d) for d in documents])
        elif not documents:
            print("No documents yet. Add some with: python -m core ingest PATH... --collection NAME")
        else:
            print(f"{'id':>5}  {'collection':<16} {'type':<8} {'pages':>5} {'chunks':>6} {'size':>9}  name")
            for d in documents:
                print(
                    f"{d.id:>5}  {d.collection[:16]:<16} {d.file_type:<8} {d.pages or '':>5} {d.chunk_count:>6} "
                    f"{human_size(d.size_bytes):>9}  {d.filename}"
                )
    elif args.action == "delete":
        deleted = []
        for document_id in args.ids:
            gone = delete_document(db, document_id)
            deleted.append(asdict(gone))
            if not args.json:
                print(f"Deleted {gone.filename!r} ({gone.chunk_count} chunks) from {gone.collection!r}.")
        if args.json:
            _print_json(deleted)
    elif args.action == "chunks":
        chunks = document_chunks(db, args.ids[0], limit=args.limit)
        if args.json:
            _print_json([asdict(c) for c in chunks])
        for c in chunks if not args.json else []:
            where = f"p. {c.page}" if c.page else (c.heading or "")
            print(f"#{c.ordinal} {where} [{c.char_start}:{c.char_end}] {c.token_count} tokens")
            print("    " + " ".join(c.text.split())[:300])
    return 0


def cmd_collections(args) -> int:
    from core.documents.library import create_collection, delete_collection, list_collections
    from core.documents.reembed_job import submit_reembed

    db = _database()
    if args.action == "list":
        collections = list_collections(db)
        if args.json:
            _print_json([asdict(c) for c in collections])
        for c in collections if not args.json else []:
            print(f"{c.name}: {c.document_count} documents, {c.chunk_count} chunks, {c.embedding_model} "
                  f"({c.embedding_dim} dims), chunks of {c.chunk_tokens} tokens, overlap {c.chunk_overlap}")
    elif args.action == "create":
        c = create_collection(
            db, args.name, embedding_model=_embedding_reference(args), chunk_tokens=args.chunk_tokens,
            chunk_overlap=args.chunk_overlap,
        )
        _result(args, asdict(c), f"Created {c.name!r} ({c.embedding_model}, {c.embedding_dim} dims).")
    elif args.action == "delete":
        if not args.yes:
            raise UserError(f"This deletes {args.name!r} with all its documents. Add --yes to confirm.")
        deleted = delete_collection(db, args.name)
        _result(args, {"deleted": args.name, "documents": deleted}, f"Deleted {args.name!r} and its {deleted} documents.")
    elif args.action == "reembed":
        if not args.embedding_model:
            raise UserError("Name the new model with --embedding-model.")
        return _queued(args, submit_reembed(db, args.name, _embedding_reference(args)))
    elif args.action == "rerank":
        from core.documents.rerank import set_collection_reranker

        if bool(args.rerank_model) == bool(args.off):
            raise UserError("Name the cross-encoder with --rerank-model, or turn reranking off with --off.")
        model = set_collection_reranker(db, args.name, None if args.off else args.rerank_model)
        _result(args, {"collection": args.name, "rerank_model": model},
                f"{args.name!r} reranks its search results with {model}." if model else f"{args.name!r} no longer reranks.")
    return 0


def _embedding_reference(args) -> str | None:
    """--embedding-model with --dimensions (API models) and --trust-remote-code folded into the one reference
    the collection records (core/documents/embedding_api.py); warns on stderr when code will run."""
    from core.documents.embedding_api import embedding_reference

    if not args.embedding_model:
        if args.dimensions is not None or args.trust_remote_code:
            raise UserError("--dimensions and --trust-remote-code go with --embedding-model.")
        return None
    reference = embedding_reference(args.embedding_model, dimensions=args.dimensions,
                                    trust_remote_code=args.trust_remote_code)
    if args.trust_remote_code:
        print(f"warning: {args.embedding_model} may run Python code from its repository on this machine, in every "
              "process that embeds for this collection. Use --trust-remote-code only for a repository you trust.",
              file=sys.stderr)
    return reference


def cmd_db(args) -> int:
    from core.db.migrate import current_revision
    from core.documents.library import library_stats

    db = _database()  # opening it migrates to the latest revision
    stats = library_stats(db)
    revision = current_revision(db.engine)
    _result(args, {"database": db.description, "embedded": db.embedded, "schema_revision": revision, **asdict(stats)},
            f"{db.description}; schema revision {revision}; "
            f"{stats.collections} collections, {stats.documents} documents, {stats.chunks} chunks.")
    return 0


def cmd_ask(args) -> int:
    from core.answers.rag import ask

    answer = ask(
        _database() if not args.no_rag else None, args.question, collection=args.collection, use_rag=not args.no_rag,
        adapter=args.adapter, model_id=args.model, max_new_tokens=args.max_new_tokens, temperature=args.temperature,
        top_p=args.top_p,
    )
    if args.json:
        answer.complete()
        _print_json(answer.to_dict())
        return 0
    for piece in answer.stream():
        print(piece, end="", flush=True)
    print()
    if answer.sources:
        print()
        cited = set(answer.cited)
        for source in answer.sources:
            mark = "*" if source.number in cited else " "
            print(f"{mark}[{source.number}] {source.filename} ({source.location})  score {source.score:.4f}")
    t = answer.timings
    first = f"{t.time_to_first_token:.2f}s" if t.time_to_first_token is not None else "-"
    print(f"\n{answer.model} · adapter {answer.adapter} · first token {first} · {t.tokens_per_second:.1f} tokens/s · "
          f"{t.context_tokens} context tokens · {t.total_seconds:.2f}s", file=sys.stderr)
    return 0


def cmd_models(args) -> int:
    from core.models.adapters import list_adapters
    from core.models.registry import PRESETS, model_is_available, prepare_bundled_model
    from core.security.model_sources import model_roots

    if args.action == "prepare":
        print(f"Bundled model ready in {prepare_bundled_model()}")
        return 0
    if args.action == "download":
        from core.models.download_job import submit_download

        if not args.model_id:
            raise UserError("models download needs a Hugging Face model id, such as microsoft/Phi-3-mini-4k-instruct.")
        return _queued(args, submit_download(_database(), args.model_id, args.revision))
    rows = [{"model": p.model_id, "label": p.label, "available": model_is_available(p.model_id), "note": p.note} for p in PRESETS]
    adapters = [{"adapter": a.name, "base_model": a.base_model, "sha256": a.sha256} for a in list_adapters(_database())]
    if args.json:
        _print_json({"models": rows, "adapters": adapters})
        return 0
    for row in rows:
        print(f"{'✓' if row['available'] else '·'} {row['model']:<40} {row['note']}")
    for adapter in adapters:
        print(f"  adapter {adapter['adapter']} (base {adapter['base_model']})")
    roots = ", ".join(str(root) for root in model_roots())
    print(f"✓ = loads offline here. Any Hugging Face id in the local cache, or a model folder under {roots}, works too "
          "(--model; EXPERT_STUDIO_MODEL_ROOTS adds folders).")
    return 0


def cmd_train(args) -> int:
    from dataclasses import fields

    from core.training.spec import PRESETS, TrainingSettings, with_overrides
    from core.training.submit import submit_job

    preset = PRESETS[args.preset]
    overrides = {f.name: getattr(args, f.name) for f in fields(TrainingSettings)}
    job = submit_job(
        _database(), adapter_name=args.adapter, dataset=args.dataset, base_model=args.model or get_settings().language_model,
        method=args.method or preset.method, settings=with_overrides(preset.settings, **overrides),
    )
    _result(args, job.as_dict(), f"Queued job {job.id}: {job.title} ({job.method}).")
    if args.wait:
        return _follow(job.id)
    if not args.json:
        print("A worker runs it: `python -m core worker` (the app starts one when needed). Follow it with "
              f"`python -m core jobs logs {job.id} --follow`.")
    return 0


def _follow(job_id: int, out=None) -> int:
    """Print the job's log (to `out`, default stdout) until it ends; 0 when it succeeded."""
    import time

    from core.jobs.queue import get_job, job_log_since
    from core.jobs.worker import PROCESS_EXITED, ensure_local_worker

    db = _database()
    ensure_local_worker(db)
    last_id = 0
    log_complete = False
    drain_until = float("inf")
    while True:
        job = get_job(db, job_id)  # read before the lines: no line written before the ending is missed
        if job.finished and drain_until == float("inf"):
            drain_until = time.monotonic() + 10
        for line_id, line in job_log_since(db, job_id, last_id):
            log_complete = log_complete or line.startswith(PROCESS_EXITED)
            print(line, file=out or sys.stdout, flush=True)
            last_id = line_id
        if job.finished and job.attempts and not log_complete and time.monotonic() < drain_until:
            time.sleep(0.3)  # it ran: its last lines are shipped by the worker just after the ending
            continue
        if job.finished:
            print(f"Job {job_id} {job.status}." + (f" {job.error}" if job.error and job.status == "failed" else ""),
                  file=out or sys.stdout)
            return 0 if job.status == "succeeded" else 1
        time.sleep(2)


def _queued(args, job) -> int:
    """A command that queues a job: its id, then (unless --no-wait) its log to the end, as `train --wait`
    does. With --json the job comes last as JSON (with its result), the log going to stderr."""
    if args.no_wait:
        _result(args, job.as_dict(), f"Queued job {job.id}: {job.title}. A worker runs it (`python -m core worker`); "
                                     f"follow it with `python -m core jobs logs {job.id} --follow`.")
        return 0
    print(f"Queued job {job.id}: {job.title}.", file=sys.stderr if args.json else sys.stdout, flush=True)
    code = _follow(job.id, out=sys.stderr if args.json else None)
    if args.json:
        from core.jobs.queue import get_job

        _print_json(get_job(_database(), job.id).as_dict())
    return code


def cmd_jobs(args) -> int:
    from core.jobs.errors import JobError
    from core.jobs.queue import cancel_job, delete_job, get_job, job_log_tail, job_metrics, list_jobs, resume_job

    db = _database()
    if args.action == "list":
        jobs = list_jobs(db, kind=args.kind)
        if args.json:
            _print_json([j.as_dict() for j in jobs])
            return 0
        if not jobs:
            print("No jobs yet. Start one with e.g.: python -m core train --dataset NAME --adapter NAME")
        for j in jobs:
            progress = j.progress or {}
            done, total = progress.get("done", progress.get("step")), progress.get("total", progress.get("max_steps"))
            shown = f"{done:g}/{total:g} {progress.get('unit', 'steps')}" if done is not None and total else ""
            print(f"{j.id:>4}  {j.status:<10} {j.kind:<17} {j.title[:40]:<40} {shown}")
        return 0
    if not args.id:
        raise JobError(f"jobs {args.action} needs a job id (python -m core jobs list shows them).")
    if args.action == "show":
        job = get_job(db, args.id)
        _print_json({**job.as_dict(), "metrics": job_metrics(db, args.id)[-5:]})
    elif args.action == "logs":
        if args.follow:
            return _follow(args.id)
        print("\n".join(job_log_tail(db, args.id, args.lines)))
    elif args.action == "cancel":
        job = cancel_job(db, args.id)
        _print_json(job.as_dict()) if args.json else print(f"Job {args.id}: {job.status} (cancel requested).")
    elif args.action == "resume":
        job = resume_job(db, args.id)
        from core.jobs.worker import ensure_local_worker

        ensure_local_worker(db)
        _print_json(job.as_dict()) if args.json else print(f"Job {job.id} queued again; it continues from what it saved.")
    elif args.action == "delete":
        delete_job(db, args.id)
        print(f"Job {args.id} deleted.")
    return 0


def cmd_worker(args) -> int:
    from core.jobs.worker import run_worker

    run_worker(_database(), once=args.once, exit_when_idle=args.exit_when_idle)
    return 0


def cmd_adapters(args) -> int:
    from core.models.adapters import (
        adapter_record,
        delete_adapter,
        import_adapter,
        import_local_adapters,
        list_adapters,
        zip_adapter,
    )
    from core.models.gguf_export import submit_gguf_export
    from core.models.merge_job import submit_merge

    db = _database()
    if args.action == "list":
        for name in import_local_adapters(db):  # folders of older versions join the database once
            print(f"Imported {name!r} from the old adapters folder into the database.", file=sys.stderr)
        adapters = [{"name": a.name, "base_model": a.base_model, "sha256": a.sha256, "size_bytes": a.size_bytes,
                     "metrics": adapter_record(db, a.name).get("metrics")} for a in list_adapters(db)]
        if args.json:
            _print_json(adapters)
        for a in adapters if not args.json else []:
            print(f"{a['name']:<24} base {a['base_model']}  {a['metrics'] or ''}")
        if not adapters and not args.json:
            print("No adapters yet: fine-tune one on the Fine-tune page or with `python -m core train`.")
        return 0
    if not args.name:
        print(f"adapters {args.action} needs an adapter name.", file=sys.stderr)
        return 2
    if args.action == "import":
        folder = Path(args.name)
        info = import_adapter(db, folder, args.as_name or folder.resolve().name)
        print(f"Imported {folder} as adapter {info.name!r} (base {info.base_model}, {human_size(info.size_bytes)}).")
    elif args.action == "export":
        target = Path(args.output or f"{args.name}.zip")
        target.write_bytes(zip_adapter(db, args.name))
        print(f"Wrote {target}.")
    elif args.action == "merge":
        return _queued(args, submit_merge(db, args.name, args.output))
    elif args.action == "export-gguf":
        return _queued(args, submit_gguf_export(db, args.name, args.type, args.output))
    elif args.action == "delete":
        delete_adapter(db, args.name)
        print(f"Deleted adapter {args.name!r}.")
    return 0


def _add_training_settings(parser: argparse.ArgumentParser) -> None:
    """One flag per TrainingSettings field, with the field's own help text."""
    from dataclasses import fields

    from core.training.spec import TrainingSettings

    group = parser.add_argument_group("training settings (default: the preset's)")
    for f in fields(TrainingSettings):
        flag = "--" + f.name.replace("_", "-")
        if f.type in ("bool", bool):
            group.add_argument(flag, action=argparse.BooleanOptionalAction, default=None, help=f.metadata["help"])
        else:
            kind = {"int": int, "float": float}.get(str(f.type), str)
            group.add_argument(flag, type=kind, default=None, help=f.metadata["help"])


def cmd_datasets(args) -> int:
    from core.datasets import (
        delete_dataset,
        list_datasets,
        list_examples,
        preview_dataset_file,
        save_dataset,
        split_dataset,
    )

    db = _database()
    if args.action == "list":
        datasets = list_datasets(db)
        if args.json:
            _print_json([asdict(d) for d in datasets])
        for d in datasets if not args.json else []:
            print(f"{d.name:<28} {d.kind:<5} train {d.train_count:>5}  validation {d.validation_count:>4}  {d.source}")
        if not datasets and not args.json:
            print("No datasets yet: `python -m core datasets import FILE --name NAME` or `datasets generate`.")
        return 0
    if args.action == "import":
        if not args.file or not args.name:
            raise UserError("datasets import needs FILE and --name.")
        preview = preview_dataset_file(args.file, model_id=args.model, max_tokens=args.max_tokens)
        problems = [asdict(p) for p in preview.problems]
        if not args.json:
            print(preview.summary)
            for note in preview.notes:
                print(note)
        if preview.problems and not args.json:
            print(preview.problem_list(None), file=sys.stderr)
        refused = preview.problems and not args.skip_bad_rows
        info = None
        if not args.dry_run and not refused:
            info = save_dataset(db, args.name, preview, skip_bad_rows=args.skip_bad_rows,
                                validation_fraction=args.validation_fraction, seed=args.seed)
        if args.json:
            _print_json({"summary": preview.summary, "notes": preview.notes, "problems": problems,
                         "saved": asdict(info) if info else None})
        elif info:
            print(f"Saved {info.name!r}: {info.train_count} train, {info.validation_count} validation.")
        if refused and not args.dry_run:
            print("Nothing saved: fix the rows above, or add --skip-bad-rows.", file=sys.stderr)
            return 2
        return 0
    if not args.name:
        raise UserError(f"datasets {args.action} needs --name.")
    if args.action == "generate":
        if not args.collection:
            raise UserError("datasets generate needs --collection.")
        from core.datasets.generation_job import submit_generate_dataset

        return _queued(args, submit_generate_dataset(
            db, name=args.name, collection=args.collection, kind=args.kind, model_id=args.model, max_chunks=args.max_chunks,
            validation_fraction=args.validation_fraction, seed=args.seed, from_dataset=args.from_dataset,
            distractors=args.distractors, oracle_fraction=args.oracle_fraction,
        ))
    elif args.action == "show":
        examples = list_examples(db, args.name, limit=args.limit)
        _print_json([asdict(e) for e in examples])
    elif args.action == "split":
        info = split_dataset(db, args.name, args.validation_fraction, args.seed)
        _result(args, asdict(info), f"{info.name!r}: {info.train_count} train, {info.validation_count} validation.")
    elif args.action == "delete":
        if not args.yes:
            raise UserError(f"This deletes {args.name!r} and its examples. Add --yes to confirm.")
        deleted = delete_dataset(db, args.name)
        _result(args, {"deleted": args.name, "examples": deleted}, f"Deleted {args.name!r} ({deleted} examples).")
    return 0


def cmd_compare(args) -> int:
    from core.evaluation.compare import compare

    variants = args.variants.split(",") if args.variants else (
        ["base", "rag", "ft", "rag+ft"] if args.adapter else ["base", "rag"])
    answers = compare(_database(), args.question, collection=args.collection, adapter=args.adapter, model_id=args.model,
                      variants=variants, max_new_tokens=args.max_new_tokens)
    if args.json:
        for answer in answers:  # one after another: they share the model
            answer.answer.complete()
        _print_json([answer.to_dict() for answer in answers])
        return 0
    for answer in answers:
        print(f"== {answer.variant}: {answer.label}" + (f" ({args.adapter})" if "ft" in answer.variant else "") + " ==")
        for piece in answer.stream():
            print(piece, end="", flush=True)
        print()
        cited = set(answer.answer.cited)
        for source in answer.sources:
            print(f"  {'*' if source.number in cited else ' '}[{source.number}] {source.filename} ({source.location})")
        t = answer.timings
        first = f"{t.time_to_first_token:.2f} s" if t.time_to_first_token is not None else "-"
        print(f"  {t.total_seconds:.2f} s · first token {first} · {t.new_tokens} tokens · {t.tokens_per_second:.1f} tokens/s\n")
    return 0


def cmd_votes(args) -> int:
    from core.evaluation.votes import list_votes, vote_ranking

    db = _database()
    if args.action == "list":
        votes = list_votes(db, model=args.model, limit=args.limit)
        if args.json:
            _print_json([v.as_dict() for v in votes])
        elif not votes:
            print("No votes yet: vote in blind mode on the Compare page.")
        for v in votes if not args.json else []:
            print(f"{v.id:>5}  {v.created_at:%Y-%m-%d %H:%M}  {v.choice:<9} {v.model[:32]:<32} {v.question[:60]}")
        return 0
    ranking = vote_ranking(db, model=args.model)
    if args.json:
        _print_json(ranking.as_dict())
        return 0
    for rank, v in enumerate(ranking.variants, start=1):
        print(f"{rank}. {v.variant:<7} strength {v.strength:5.2f}  95% interval {v.low:.2f}–{v.high:.2f}  {v.votes} votes")
    print(ranking.message)
    return 0


def cmd_advise(args) -> int:
    from dataclasses import fields

    from core.evaluation.advisor import AdvisorAnswers, advise

    given = {f.name: getattr(args, f.name) for f in fields(AdvisorAnswers) if getattr(args, f.name) is not None}
    given = {name: value == "yes" if value in ("yes", "no") else value for name, value in given.items()}
    advice = advise(_database(), AdvisorAnswers(**given) if given else None, exam=args.exam)
    if args.json:
        _print_json(advice.as_dict())
        return 0
    print(f"Recommendation: {advice.label}")
    for reason in advice.reasons:
        print(f"- {reason}")
    if advice.evidence:
        print("\nMeasured:")
        for evidence in advice.evidence:
            print(f"  {evidence.text}")
    print(f"\nNext: {advice.next_step}")
    return 0


def cmd_eval(args) -> int:
    from core.evaluation.results import list_runs, load_results, runs_table
    from core.evaluation.run import submit_evaluation

    db = _database()
    if args.action == "runs":
        runs = list_runs(db, args.exam)
        if args.json:
            _print_json([{k: v for k, v in asdict(r).items() if k != "summary"} for r in runs])
        elif not runs:
            print("No evaluation runs yet: python -m core eval --exam NAME --variants base,rag")
        for row in runs_table(runs) if not args.json else []:
            print(f"{row['id']:>4}  {row['status']:<10} {row['exam'][:20]:<20} {row['variants']:<22} {row['answers']:>9}  {row['token F1']}")
        return 0
    if args.action == "show":
        if not args.run_id:
            raise UserError("eval show needs a run id (python -m core eval runs lists them).")
        return _show_run(args, load_results(db, args.run_id))
    if not args.exam:
        raise UserError("eval needs --exam NAME (python -m core exams list shows them).")
    if args.update_document:
        from core.evaluation.knowledge_update import knowledge_update_check

        path = Path(args.update_document)
        if not path.is_file():
            raise UserError(f"{path}: no such file.")
        update = knowledge_update_check(
            db, filename=path.name, data=path.read_bytes(), exam=args.exam, run_id=args.from_run, adapter=args.adapter,
            model=args.model, collection=args.collection, new_references=_new_references(args.new_reference),
            max_new_tokens=args.max_new_tokens, batch_size=args.batch_size,
        )
        print(update.message, file=sys.stderr if args.json else sys.stdout)
        run_id, job = update.run_id, update.job
    else:
        run_id, job = submit_evaluation(
            db, exam=args.exam, variants=args.variants, model=args.model, adapter=args.adapter, collection=args.collection,
            max_new_tokens=args.max_new_tokens, batch_size=args.batch_size, top_k=args.top_k,
        )
    if args.no_wait:
        _result(args, {"run_id": run_id, "job": job.as_dict()},
                f"Queued job {job.id} (evaluation run {run_id}): {job.title}. Follow it with "
                f"`python -m core jobs logs {job.id} --follow`; then `python -m core eval show {run_id}`.")
        return 0
    print(f"Queued job {job.id} (evaluation run {run_id}): {job.title}.", file=sys.stderr if args.json else sys.stdout, flush=True)
    code = _follow(job.id, out=sys.stderr if args.json else None)
    if code == 0:
        _show_run(args, load_results(db, run_id))
    return code


def _show_run(args, results) -> int:
    from core.evaluation.results import text_report, to_csv, to_json

    if args.csv:
        Path(args.csv).write_text(to_csv(results), encoding="utf-8")
        print(f"Wrote {len(results.answers)} answers to {args.csv}.", file=sys.stderr)
    if args.json:
        values = to_json(results)
        _print_json(values if args.action == "show" else {"run": values["run"], "summary": values["summary"]})
    else:
        print(text_report(results))
    return 0


def _new_references(pairs: list[str] | None) -> dict[int, str] | None:
    """["12=4.2 bar", ...] → {12: "4.2 bar"}."""
    references = {}
    for pair in pairs or []:
        key, _, value = pair.partition("=")
        if not key.strip().isdigit() or not value.strip():
            raise UserError(f"--new-reference takes QUESTION_ID=ANSWER, not {pair!r}.")
        references[int(key)] = value.strip()
    return references or None


def cmd_exams(args) -> int:
    from core.evaluation.exams import delete_exam, export_exam, get_exam, list_exams, preview_exam_file, save_exam
    from core.formatting import plural

    db = _database()
    if args.action == "list":
        exams = list_exams(db, args.collection)
        if args.json:
            _print_json([asdict(e) for e in exams])
        for e in exams if not args.json else []:
            print(f"{e.name:<28} {e.source:<9} {e.question_count:>4} questions ({e.out_of_scope_count} out of scope)  "
                  f"{e.document_count} documents  collection {e.collection}")
        if not exams and not args.json:
            print("No exams yet: `python -m core exams import FILE --name NAME --collection C` or `exams generate`.")
        return 0
    if args.action == "import":
        if not args.target or not args.name or not args.collection:
            raise UserError("exams import needs FILE, --name and --collection.")
        preview = preview_exam_file(db, args.target, collection=args.collection)
        if not args.json:
            print(preview.summary)
            for note in preview.notes:
                print(note)
            if preview.problems:
                print(preview.problem_list(None), file=sys.stderr)
        refused = bool(preview.problems) and not args.skip_bad_rows
        info = None if refused else save_exam(db, args.name, preview, skip_bad_rows=args.skip_bad_rows)
        if args.json:
            _print_json({"summary": preview.summary, "notes": preview.notes, "problems": [asdict(p) for p in preview.problems],
                         "saved": asdict(info) if info else None})
        elif info:
            print(f"Saved exam {info.name!r}: {plural(info.question_count, 'question')}.")
        if refused:
            print("Nothing saved: fix the rows above, or add --skip-bad-rows.", file=sys.stderr)
            return 2
        return 0
    if args.action == "generate":
        if not args.collection:
            raise UserError("exams generate needs --collection.")
        from core.evaluation.exam_job import submit_generate_exam

        return _queued(args, submit_generate_exam(
            db, name=args.name or f"{args.collection}-exam", collection=args.collection, model_id=args.model, heldout_fraction=args.heldout_fraction,
            heldout_documents=args.heldout_document, questions=args.questions, out_of_scope=args.out_of_scope, seed=args.seed,
        ))
    if not args.target:
        raise UserError(f"exams {args.action} needs the exam's name (exams list shows them).")
    if args.action == "show":
        exam = get_exam(db, args.target)
        if args.json:
            _print_json({**asdict(exam.info), "questions": [asdict(q) for q in exam.questions]})
            return 0
        e = exam.info
        print(f"{e.name}: {e.question_count} questions ({e.out_of_scope_count} out of scope) on {e.document_count} documents "
              f"of {e.collection!r}, {e.source}.")
        for q in exam.questions:
            where = " (out of scope)" if q.out_of_scope else f"  [{q.source_document}]" if q.source_document else ""
            print(f"{q.ordinal + 1:>4}. {q.question}{where}\n      → {q.reference_answer}")
    elif args.action == "export":
        exported = export_exam(db, args.target)
        if args.output:
            Path(args.output).write_text(exported, encoding="utf-8")
            print(f"Wrote {args.output}.", file=sys.stderr)
        else:
            print(exported, end="")
    elif args.action == "delete":
        if not args.yes:
            raise UserError(f"This deletes exam {args.target!r} with its questions and evaluation runs. Add --yes to confirm.")
        deleted = delete_exam(db, args.target)
        _result(args, {"deleted": args.target, "questions": deleted}, f"Deleted exam {args.target!r} ({deleted} questions).")
    return 0


# --- parser -----------------------------------------------------------------------------------


def _read_new_password() -> str:
    """From the terminal (typed twice, not echoed) or one line of standard input; never from the command line."""
    import getpass

    if sys.stdin.isatty():
        password = getpass.getpass("New password: ")
        if getpass.getpass("Same password again: ") != password:
            raise UserError("The two passwords differ; nothing was made.")
    else:
        password = sys.stdin.readline().rstrip("\r\n")
    if not password:
        raise UserError("No password given: type one, or pipe it in on standard input.")
    return password


def cmd_auth(args) -> int:
    from core.security.exposure import configured_address, describe_address, oidc_section_in_secrets, refusal_reason
    from core.security.passwords import check_new_password, hash_password, parse_password_hash

    if args.action == "hash-password":
        password = _read_new_password()
        check_new_password(password)
        print(hash_password(password))
        print("Set this as EXPERT_STUDIO_PASSWORD_HASH in the app's environment (or .env) and restart the app.",
              file=sys.stderr)
        return 0
    settings = get_settings()
    if settings.password_hash:
        parse_password_hash(settings.password_hash)  # a broken hash is an error here, as in the app
    address = args.address if args.address is not None else configured_address()
    oidc = oidc_section_in_secrets()
    reason = refusal_reason(address, password_configured=bool(settings.password_hash), oidc_configured=oidc,
                            published_to_loopback_only=settings.published_to_loopback_only)
    status = {"address": address, "reach": describe_address(address), "password": bool(settings.password_hash),
              "openid_connect": oidc, "published_to_loopback_only": settings.published_to_loopback_only,
              "serves": reason is None, "refusal": reason}
    if args.json:
        _print_json(status)
    else:
        print(f"Listens on {status['reach']}. Password login: {'on' if status['password'] else 'off'}. "
              f"OpenID Connect login: {'on' if oidc else 'off'}.")
        print(reason or "The app serves its pages.")
    return 0 if reason is None else 1


def build_parser() -> argparse.ArgumentParser:
    from core.documents.search import SEARCH_MODES

    parser = argparse.ArgumentParser(prog="python -m core", description="Expert Studio from the command line.")
    commands = parser.add_subparsers(dest="command", required=True)

    ingest = commands.add_parser("ingest", help="add files or folders to a collection")
    ingest.add_argument("paths", nargs="+", help="files, or folders to walk for supported types")
    ingest.add_argument("--collection", "-c", default=DEFAULT_COLLECTION, help="created if it does not exist")
    ingest.add_argument("--replace", action="store_true", help="replace documents that have the same file name")
    ingest.add_argument("--json", action="store_true")
    ingest.set_defaults(handler=cmd_ingest)

    search = commands.add_parser("search", help="find the best passages for a query")
    search.add_argument("query")
    search.add_argument("--collection", "-c", default=DEFAULT_COLLECTION)
    search.add_argument("-k", type=int, default=5, help="how many passages (default 5)")
    search.add_argument("--mode", choices=SEARCH_MODES, default="hybrid")
    search.add_argument("--document", type=int, action="append", help="only this document id (repeatable)")
    search.add_argument("--no-rerank", action="store_true", help="skip the collection's reranker (the fused order)")
    search.add_argument("--json", action="store_true")
    search.set_defaults(handler=cmd_search)

    documents = commands.add_parser("documents", help="list, preview or delete documents")
    documents.add_argument("action", choices=("list", "delete", "chunks"))
    documents.add_argument("ids", nargs="*", type=int, help="document ids (delete, chunks)")
    documents.add_argument("--collection", "-c", help="only this collection (list)")
    documents.add_argument("--limit", type=int, default=20, help="chunks to show (chunks)")
    documents.add_argument("--json", action="store_true")
    documents.set_defaults(handler=cmd_documents)

    collections = commands.add_parser("collections", help="list, create, delete or re-embed collections")
    collections.add_argument("action", choices=("list", "create", "delete", "reembed", "rerank"))
    collections.add_argument("name", nargs="?")
    collections.add_argument("--embedding-model", help="sentence-transformers id, a folder under the model roots, or an "
                             "API model: openai:text-embedding-3-small, api:NAME (EXPERT_STUDIO_EMBEDDING_API_BASE), "
                             "azure:DEPLOYMENT")
    collections.add_argument("--dimensions", type=int, help="API models: ask for shorter vectors (text-embedding-3)")
    collections.add_argument("--trust-remote-code", action="store_true",
                             help="local models: allow running code from the model's repository (only one you trust)")
    collections.add_argument("--chunk-tokens", type=int)
    collections.add_argument("--chunk-overlap", type=int)
    collections.add_argument("--yes", action="store_true", help="confirm delete")
    collections.add_argument("--no-wait", action="store_true", help="reembed: queue the job and return at once")
    collections.add_argument("--rerank-model", help="rerank: a cross-encoder folder under the model roots or a cached "
                             "hub id (e.g. cross-encoder/ms-marco-MiniLM-L6-v2) that rescores the best hits")
    collections.add_argument("--off", action="store_true", help="rerank: search without a reranker again")
    collections.add_argument("--json", action="store_true")
    collections.set_defaults(handler=cmd_collections)

    ask = commands.add_parser("ask", help="answer a question from a collection, streamed, with citations")
    ask.add_argument("question")
    ask.add_argument("--collection", "-c", default=DEFAULT_COLLECTION)
    ask.add_argument("--no-rag", action="store_true", help="the model alone, without retrieved passages")
    ask.add_argument("--adapter", help="a fine-tuned LoRA adapter by name (python -m core models list)")
    ask.add_argument("--model", help="model id, a folder under the model roots, or openai:NAME for the model served at "
                     "EXPERT_STUDIO_CHAT_API_BASE (default: the configured language model)")
    ask.add_argument("--max-new-tokens", type=int)
    ask.add_argument("--temperature", type=float)
    ask.add_argument("--top-p", type=float)
    ask.add_argument("--json", action="store_true", help="print answer, sources and timings as JSON at the end")
    ask.set_defaults(handler=cmd_ask)

    models = commands.add_parser("models", help="list the language models and adapters, prepare the bundled one, or "
                                                "download one from the Hugging Face Hub (a job)")
    models.add_argument("action", choices=("list", "prepare", "download"))
    models.add_argument("model_id", nargs="?", metavar="ID", help="download: the Hub id (language, embedding or reranker model)")
    models.add_argument("--revision", default="main", help="download: branch, tag or commit (default main)")
    models.add_argument("--no-wait", action="store_true", help="download: queue the job and return at once")
    models.add_argument("--json", action="store_true")
    models.set_defaults(handler=cmd_models)

    datasets = commands.add_parser("datasets", help="training data: import, generate, list, show, split, delete")
    datasets.add_argument("action", choices=("list", "import", "generate", "show", "split", "delete"))
    datasets.add_argument("file", nargs="?", help="import: JSONL, JSON or CSV file")
    datasets.add_argument("--name")
    datasets.add_argument("--collection", help="generate: the collection to write pairs from")
    datasets.add_argument("--kind", choices=("qa", "text", "raft"), default="qa",
                          help="generate: Q/A pairs, plain text, or RAFT (a Q/A dataset's questions with their source among distractors)")
    datasets.add_argument("--from", dest="from_dataset", help="generate --kind raft: the Q/A dataset whose questions it asks")
    datasets.add_argument("--distractors", type=int, default=3, help="generate --kind raft: distractor passages per question")
    datasets.add_argument("--oracle-fraction", type=float, default=0.8,
                          help="generate --kind raft: share of examples that hold their source passage (default 0.8)")
    datasets.add_argument("--model", help="tokenizer for length checks / model that writes pairs")
    datasets.add_argument("--max-tokens", type=int, default=1024, help="import: longest example, chat template included")
    datasets.add_argument("--max-chunks", type=int, default=50)
    datasets.add_argument("--skip-bad-rows", action="store_true")
    datasets.add_argument("--dry-run", action="store_true", help="import: preview only")
    datasets.add_argument("--validation-fraction", type=float, default=0.1)
    datasets.add_argument("--seed", type=int, default=0)
    datasets.add_argument("--limit", type=int, default=20)
    datasets.add_argument("--yes", action="store_true")
    datasets.add_argument("--no-wait", action="store_true", help="generate: queue the job and return at once")
    datasets.add_argument("--json", action="store_true")
    datasets.set_defaults(handler=cmd_datasets)

    exams = commands.add_parser("exams", help="evaluation sets: import, generate (a job), list, show, export, delete")
    exams.add_argument("action", choices=("list", "import", "generate", "show", "export", "delete"))
    exams.add_argument("target", nargs="?", metavar="FILE|NAME", help="import: the JSONL/CSV file; show, export, delete: the exam")
    exams.add_argument("--name", help="import, generate: the new exam's name (generate: default COLLECTION-exam)")
    exams.add_argument("--collection", "-c", help="import: the documents it asks about; generate: where to draw it from")
    exams.add_argument("--skip-bad-rows", action="store_true", help="import: save the good rows, leave out the bad ones")
    exams.add_argument("--model", help="generate: the model that writes the questions (default: the configured one)")
    exams.add_argument("--heldout-fraction", type=float, default=0.2, help="generate: share of documents held out (default 0.2)")
    exams.add_argument("--heldout-document", action="append", help="generate: hold out this document (file name; repeatable)")
    exams.add_argument("--questions", type=int, default=25, help="generate: at most this many questions, one per chunk")
    exams.add_argument("--out-of-scope", type=int, default=0, help="generate: add this many questions the documents cannot answer")
    exams.add_argument("--seed", type=int, default=0, help="generate: which documents are held out")
    exams.add_argument("--output", help="export: the JSONL file to write (default: standard output)")
    exams.add_argument("--yes", action="store_true", help="confirm delete")
    exams.add_argument("--no-wait", action="store_true", help="generate: queue the job and return at once")
    exams.add_argument("--json", action="store_true")
    exams.set_defaults(handler=cmd_exams)

    from core.training.spec import PRESETS

    train = commands.add_parser("train", help="queue a LoRA/QLoRA fine-tuning job")
    train.add_argument("--dataset", required=True)
    train.add_argument("--adapter", required=True, help="name of the adapter the job produces")
    train.add_argument("--model", help="base model (default: the configured language model)")
    train.add_argument("--method", choices=("lora", "qlora"), help="default: the preset's")
    train.add_argument("--preset", choices=list(PRESETS), default="LoRA")
    train.add_argument("--wait", action="store_true", help="follow the job's log until it ends")
    train.add_argument("--json", action="store_true", help="print the queued job as JSON")
    _add_training_settings(train)
    train.set_defaults(handler=cmd_train)

    jobs = commands.add_parser("jobs", help="list, show, follow, cancel, resume or delete jobs of every kind")
    jobs.add_argument("action", choices=("list", "show", "logs", "cancel", "resume", "delete"))
    jobs.add_argument("--kind", help="list: only jobs of this kind (train, generate-dataset, generate-exam, reembed, merge, evaluate, download)")
    jobs.add_argument("id", nargs="?", type=int)
    jobs.add_argument("--follow", action="store_true", help="logs: keep printing until the job ends")
    jobs.add_argument("--lines", type=int, default=40)
    jobs.add_argument("--json", action="store_true")
    jobs.set_defaults(handler=cmd_jobs)

    worker = commands.add_parser("worker", help="run queued jobs of every kind (each in its own process)")
    worker.add_argument("--once", action="store_true", help="run at most one job, then exit")
    worker.add_argument("--exit-when-idle", type=float, help="exit after this many seconds without jobs")
    worker.set_defaults(handler=cmd_worker)

    adapters = commands.add_parser("adapters", help="list, import, export (zip), merge, export-gguf (merged, for "
                                   "Ollama and llama.cpp) or delete fine-tuned adapters")
    adapters.add_argument("action", choices=("list", "import", "export", "merge", "export-gguf", "delete"))
    adapters.add_argument("name", nargs="?", metavar="NAME", help="the adapter (import: the PEFT folder to import)")
    adapters.add_argument("--name", dest="as_name", help="import: the adapter's name (default: the folder's name)")
    adapters.add_argument("--output", help="export: zip path; merge: output folder (new, empty, or one a merge "
                          "exported before; it is replaced whole); export-gguf: a new .gguf file or a folder "
                          "(default: <models dir>/gguf/NAME-TYPE.gguf)")
    adapters.add_argument("--type", choices=("f16", "q8_0", "q4_0"), default="q4_0",
                          help="export-gguf: the weights' type (default q4_0, 4-bit; q8_0 8-bit; f16 unquantized)")
    adapters.add_argument("--no-wait", action="store_true", help="merge, export-gguf: queue the job and return at once")
    adapters.add_argument("--json", action="store_true")
    adapters.set_defaults(handler=cmd_adapters)

    compare = commands.add_parser("compare", help="one question answered by base, RAG, fine-tuned and both, side by side")
    compare.add_argument("question")
    compare.add_argument("--collection", "-c", default=DEFAULT_COLLECTION, help="the RAG variants answer from it")
    compare.add_argument("--adapter", help="the fine-tuned variants' adapter (python -m core adapters list)")
    compare.add_argument("--model", help="base model id, a folder under the model roots, or openai:NAME for the model served at "
                         "EXPERT_STUDIO_CHAT_API_BASE (its adapters by their served names; default: the configured language model)")
    compare.add_argument("--variants", help="comma-separated, from base,rag,ft,rag+ft (default: all four with --adapter, "
                                            "else base,rag)")
    compare.add_argument("--max-new-tokens", type=int)
    compare.add_argument("--json", action="store_true", help="every answer with its sources and timings as JSON")
    compare.set_defaults(handler=cmd_compare)

    votes = commands.add_parser("votes", help="blind votes from the Compare page: list them, or rank the variants")
    votes.add_argument("action", choices=("list", "ranking"))
    votes.add_argument("--model", help="only votes on this base model")
    votes.add_argument("--limit", type=int, default=50, help="list: newest this many")
    votes.add_argument("--json", action="store_true")
    votes.set_defaults(handler=cmd_votes)

    from dataclasses import fields

    from core.evaluation.advisor import AdvisorAnswers

    advise = commands.add_parser("advise", help="RAG, fine-tuning or both: advice from a few answers and the evaluation runs")
    for f in fields(AdvisorAnswers):
        advise.add_argument("--" + f.name.replace("_", "-"), choices=f.metadata.get("choices", ("yes", "no")),
                            help=f"{f.metadata['help']} (default: {f.default if f.metadata.get('choices') else ('yes' if f.default else 'no')})")
    advise.add_argument("--exam", help="weigh the runs on this exam (default: the one scored most recently)")
    advise.add_argument("--json", action="store_true")
    advise.set_defaults(handler=cmd_advise)

    evaluation = commands.add_parser(
        "eval", help="score base, RAG, fine-tuned and both on an exam (a job); list runs; show one",
        description="eval --exam NAME --variants base,rag,ft,rag+ft: queue the run, follow it, print the table. "
                    "eval runs [--exam NAME]. eval show RUN_ID [--json | --csv FILE].")
    evaluation.add_argument("action", nargs="?", choices=("run", "runs", "show"), default="run")
    evaluation.add_argument("run_id", nargs="?", type=int, help="show: the run (eval runs lists them)")
    evaluation.add_argument("--exam", help="the exam to answer (runs: only its runs)")
    evaluation.add_argument("--variants", default="base,rag", help="comma-separated: base, rag, ft, rag+ft (default base,rag)")
    evaluation.add_argument("--adapter", help="the fine-tuned adapter for ft and rag+ft")
    evaluation.add_argument("--collection", help="RAG's collection (default: the exam's)")
    evaluation.add_argument("--model", help="base model (default: the configured language model)")
    evaluation.add_argument("--batch-size", type=int, default=8, help="questions generated together (default 8)")
    evaluation.add_argument("--max-new-tokens", type=int, help="longest answer (default: the configured one)")
    evaluation.add_argument("--top-k", type=int, help="k of hit@k (default: the passages retrieved)")
    evaluation.add_argument("--update-document", metavar="FILE",
                            help="knowledge-update check: replace the collection's document of this file name with FILE, "
                                 "then ask its questions again with rag (and ft with --adapter)")
    evaluation.add_argument("--new-reference", action="append", metavar="QUESTION_ID=ANSWER",
                            help="with --update-document: the answer the edited document gives (repeatable)")
    evaluation.add_argument("--from-run", type=int, help="with --update-document: take exam, model, adapter, collection from this run")
    evaluation.add_argument("--no-wait", action="store_true", help="queue the job and return at once")
    evaluation.add_argument("--csv", metavar="FILE", help="show: also write one row per answer to FILE")
    evaluation.add_argument("--json", action="store_true")
    evaluation.set_defaults(handler=cmd_eval)

    auth = commands.add_parser("auth", help="who may reach the app: make a password hash, or check the configuration",
                               description="auth hash-password: read a password (typed, or one line on stdin) and "
                                           "print its hash for EXPERT_STUDIO_PASSWORD_HASH. auth status [--address A]: "
                                           "whether the app would serve on its address with the login configured.")
    auth.add_argument("action", choices=("hash-password", "status"))
    auth.add_argument("--address", help="status: judge this server.address instead of .streamlit/config.toml's")
    auth.add_argument("--json", action="store_true")
    auth.set_defaults(handler=cmd_auth)

    db = commands.add_parser("db", help="migrate the database and show where it is")
    db.add_argument("action", choices=("upgrade", "info"))
    db.add_argument("--json", action="store_true")
    db.set_defaults(handler=cmd_db)
    return parser


def main(argv: list[str] | None = None) -> int:
    args = build_parser().parse_args(argv)
    try:
        if args.command == "documents" and args.action in ("delete", "chunks") and not args.ids:
            raise UserError(f"documents {args.action} needs at least one document id (documents list shows them).")
        if args.command == "collections" and args.action != "list" and not args.name:
            raise UserError(f"collections {args.action} needs a collection name.")
        return args.handler(args)
    except UserError as error:  # every user mistake: one line, no traceback
        print(f"error: {error}", file=sys.stderr)
        return 2
