"""The job system on the real database: claims, ownership, stale jobs, guarded resume, one model job
per host, and the migration that turned training jobs into jobs of a kind."""

from __future__ import annotations

import subprocess
import sys
import threading
import time
from pathlib import Path

import pytest
from alembic import command
from sqlalchemy import text
from training_helpers import make_dataset, wait_for

from core.db.migrate import alembic_config, upgrade_to_head
from core.jobs.errors import JobError, LostOwnership
from core.jobs.queue import (
    append_log,
    claim_next_job,
    create_job,
    fail_stale_jobs,
    finish_job,
    get_job,
    heartbeat,
    job_log_tail,
    list_jobs,
    record_progress,
    resume_job,
)


@pytest.fixture
def clean_queue(db):
    """No queued or running job left over from another test: claims take the oldest queued job."""
    with db.engine.begin() as connection:
        connection.execute(text("UPDATE jobs SET status = 'cancelled' WHERE status IN ('queued', 'running')"))
    return db


def queue(db, kind: str = "reembed", name: str = "x"):
    return create_job(db, kind=kind, params={"collection": name}, title=f"{kind} {name}")


def backdate_heartbeat(db, job_id: int, seconds: int = 600) -> None:
    with db.engine.begin() as connection:
        connection.execute(
            text("UPDATE jobs SET heartbeat_at = now() - make_interval(secs => :s) WHERE id = :id"), {"s": seconds, "id": job_id}
        )


def test_a_job_declared_stale_loses_every_write_and_never_succeeds(clean_queue):
    db = clean_queue
    job = queue(db)
    claimed = claim_next_job(db, pid=1, host="host-a")
    assert claimed.id == job.id and claimed.owner
    record_progress(db, job.id, claimed.owner, {"done": 1, "total": 10})

    backdate_heartbeat(db, job.id)
    assert fail_stale_jobs(db) == [job.id]
    assert get_job(db, job.id).status == "failed"

    assert heartbeat(db, job.id, claimed.owner).owned is False
    with pytest.raises(LostOwnership):
        record_progress(db, job.id, claimed.owner, {"done": 2, "total": 10})
    assert append_log(db, job.id, ["late line"], owner=claimed.owner) is False
    assert finish_job(db, job.id, claimed.owner, "succeeded") is False
    after = get_job(db, job.id)
    assert after.status == "failed" and "stopped without finishing" in after.error
    assert "late line" not in job_log_tail(db, job.id)


def test_a_resumed_and_reclaimed_job_ignores_its_earlier_attempt(clean_queue):
    db = clean_queue
    job = queue(db)
    first = claim_next_job(db, pid=1, host="host-a")
    backdate_heartbeat(db, job.id)
    fail_stale_jobs(db)
    resume_job(db, job.id)
    second = claim_next_job(db, pid=2, host="host-b")
    assert second.id == job.id and second.owner != first.owner and second.attempts == 2
    assert finish_job(db, job.id, first.owner, "failed", error="old attempt") is False
    assert finish_job(db, job.id, second.owner, "succeeded", result={"ok": True}) is True
    assert get_job(db, job.id).status == "succeeded"


def test_two_resumes_at_once_queue_the_job_once(clean_queue):
    db = clean_queue
    job = queue(db)
    claimed = claim_next_job(db, pid=1, host="host-a")
    finish_job(db, job.id, claimed.owner, "failed", error="boom")

    barrier = threading.Barrier(4)
    outcomes: list[str] = []

    def resume() -> None:
        barrier.wait()
        try:
            resume_job(db, job.id)
            outcomes.append("queued")
        except JobError:
            outcomes.append("refused")

    threads = [threading.Thread(target=resume) for _ in range(4)]
    for thread in threads:
        thread.start()
    for thread in threads:
        thread.join()
    assert sorted(outcomes) == ["queued", "refused", "refused", "refused"]
    assert claim_next_job(db, pid=2, host="host-a").id == job.id
    assert claim_next_job(db, pid=3, host="host-b") is None


def test_two_workers_racing_for_one_job_claim_it_once(clean_queue):
    db = clean_queue
    job = queue(db)
    barrier = threading.Barrier(6)
    claims: list = []

    def claim(index: int) -> None:
        barrier.wait()
        claims.append(claim_next_job(db, pid=100 + index, host=f"host-{index}"))

    threads = [threading.Thread(target=claim, args=(index,)) for index in range(6)]
    for thread in threads:
        thread.start()
    for thread in threads:
        thread.join()
    won = [c for c in claims if c is not None]
    assert len(won) == 1 and won[0].id == job.id


def test_one_model_job_per_host_at_a_time(clean_queue):
    """Two workers on one machine never train (or evaluate, or merge) on one GPU at once."""
    db = clean_queue
    first = queue(db, "train", "a")
    second = queue(db, "merge", "b")
    light = queue(db, "reembed", "c")
    assert claim_next_job(db, pid=1, host="gpu-box").id == first.id
    # the merge waits while the training runs on this host; the re-embed (no language model) goes ahead
    assert claim_next_job(db, pid=2, host="gpu-box").id == light.id
    assert claim_next_job(db, pid=3, host="gpu-box") is None
    assert claim_next_job(db, pid=4, host="other-box").id == second.id


def test_two_workers_of_one_host_claiming_at_once_start_one_model_job(clean_queue):
    db = clean_queue
    jobs = [queue(db, "train", f"t{index}") for index in range(2)]
    barrier = threading.Barrier(2)
    claims: list = []

    def claim(pid: int) -> None:
        barrier.wait()
        claims.append(claim_next_job(db, pid=pid, host="shared-gpu"))

    threads = [threading.Thread(target=claim, args=(pid,)) for pid in (1, 2)]
    for thread in threads:
        thread.start()
    for thread in threads:
        thread.join()
    assert sorted(c.id for c in claims if c is not None) == [jobs[0].id]


def test_listing_jobs_writes_nothing(clean_queue):
    """Stale jobs are the worker's business: a page listing jobs never changes them."""
    db = clean_queue
    job = queue(db)
    claim_next_job(db, pid=1, host="host-a")
    backdate_heartbeat(db, job.id)
    assert [j.status for j in list_jobs(db) if j.id == job.id] == ["running"]
    assert get_job(db, job.id).status == "running"


def test_unknown_kind_is_refused(db):
    with pytest.raises(JobError, match="Unknown job kind 'sing'"):
        create_job(db, kind="sing", params={}, title="la")


def test_a_stale_training_process_is_really_stopped(clean_queue, tiny_llama):
    """Another worker declares the job dead: this worker's next heartbeat finds it is no longer its
    own and kills the process; the job stays failed, it never flips to succeeded."""
    from core.jobs.worker import run_worker
    from core.training.spec import PRESETS, with_overrides
    from core.training.submit import submit_job

    db = clean_queue
    settings = with_overrides(PRESETS["quick CPU check"].settings, max_steps=400, save_steps=50, eval_steps=0,
                              logging_steps=1, batch_size=2)
    job = submit_job(db, adapter_name="tiny-stale", dataset=make_dataset(db, "facts-stale"), base_model=tiny_llama,
                     method="lora", settings=settings)
    worker = threading.Thread(target=run_worker, args=(db,), kwargs={"once": True}, daemon=True)
    worker.start()
    wait_for(lambda: (get_job(db, job.id).progress or {}).get("done", 0) >= 3, message="training to start")
    pid = get_job(db, job.id).pid
    # as another worker would; the live worker's own beat (every 2 s) can land between the two statements: retry
    wait_for(lambda: backdate_heartbeat(db, job.id) or fail_stale_jobs(db) == [job.id], timeout=30,
             message="the job to be declared stale")
    worker.join(timeout=30)
    assert not worker.is_alive()
    job = get_job(db, job.id)
    assert job.status == "failed" and job.progress["done"] < 400
    wait_for(lambda: not _alive(pid), timeout=10, message="the training process to exit")
    time.sleep(1)
    assert get_job(db, job.id).status == "failed"


def _alive(pid: int) -> bool:
    from pathlib import Path

    try:
        return Path(f"/proc/{pid}/stat").read_text().split()[2] != "Z"
    except OSError:
        return False


def test_training_jobs_survive_the_move_to_one_jobs_table(db):
    """A library from before migration 0005 keeps its training jobs, their logs and metrics."""
    with db.engine.begin() as connection:
        config = alembic_config()
        config.attributes["connection"] = connection
        command.downgrade(config, "0004")
        dataset_id = connection.execute(
            text("INSERT INTO datasets (name, kind, source) VALUES ('old-set', 'chat', 'test') RETURNING id")
        ).scalar_one()
        job_id = connection.execute(
            text(
                "INSERT INTO training_jobs (adapter_name, dataset_id, base_model, method, settings, status, final_metrics) "
                "VALUES ('old-adapter', :d, 'some/model', 'lora', '{\"rank\": 8}', 'succeeded', '{\"steps\": 3}') RETURNING id"
            ),
            {"d": dataset_id},
        ).scalar_one()
        connection.execute(text("INSERT INTO job_logs (job_id, line) VALUES (:j, 'trained')"), {"j": job_id})
    upgrade_to_head(db.engine)
    job = get_job(db, job_id)
    assert (job.kind, job.title, job.status) == ("train", "Fine-tune old-adapter", "succeeded")
    assert job.params == {"adapter_name": "old-adapter", "dataset_id": dataset_id, "dataset_name": "old-set",
                          "base_model": "some/model", "method": "lora", "settings": {"rank": 8}}
    assert job.result == {"steps": 3} and job_log_tail(db, job_id) == ["trained"]


def test_a_torch_save_cut_short_by_a_file_size_limit_reads_as_a_full_disk(tmp_path):
    """torch.save's zip writer drops the errno of a short write ("unexpected pos A vs B"); the job's
    reason still says the disk is full for it, and why. Real torch.save, in a child process under a
    file size limit (RLIMIT_FSIZE needs no privileges)."""
    script = f"""
import resource, sys, torch
from pathlib import Path
from core.jobs.process import default_explanation
resource.setrlimit(resource.RLIMIT_FSIZE, (64 * 1024, resource.getrlimit(resource.RLIMIT_FSIZE)[1]))
try:
    torch.save({{"weights": torch.zeros(100_000)}}, {str(tmp_path / "optimizer.pt")!r})
except BaseException as error:
    print(default_explanation(error, Path({str(tmp_path)!r})))
"""
    done = subprocess.run([sys.executable, "-c", script], capture_output=True, text=True, timeout=120,
                          cwd=Path(__file__).resolve().parents[1])
    assert done.stdout.startswith("The disk is full for this job"), done.stdout + done.stderr
    assert "File too large" in done.stdout and "resume the job" in done.stdout
