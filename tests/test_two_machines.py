"""Any machine with the same DATABASE_URL can run a worker: two data folders on one database stand
for two machines. A worker on "machine B" trains; the app on "machine A" lists the adapter and
answers with it (B's folder is gone by then), and a job cancelled on B resumes on A from B's last
checkpoint, which only the database holds."""

from __future__ import annotations

import os
import shutil
import subprocess
import sys
from pathlib import Path

from training_helpers import make_dataset, wait_for

from core.answers.rag import ask
from core.jobs.queue import cancel_job, get_job, job_log_since, job_log_tail, job_metrics, resume_job
from core.jobs.worker import run_worker
from core.models.adapters import find_adapter, list_adapters
from core.training.checkpoints import stored_checkpoint
from core.training.spec import PRESETS, with_overrides
from core.training.submit import submit_job

ROOT = Path(__file__).resolve().parents[1]
QUICK = with_overrides(PRESETS["quick CPU check"].settings, max_steps=4, save_steps=2, eval_steps=0, batch_size=2)
LONG = with_overrides(QUICK, max_steps=300, save_steps=5, logging_steps=1)


def worker_on_machine_b(folder: Path) -> subprocess.Popen:
    env = {**os.environ, "EXPERT_STUDIO_DATA_DIR": str(folder)}
    return subprocess.Popen([sys.executable, "-m", "core.jobs.worker", "--once"], cwd=ROOT, env=env,
                            stdout=subprocess.DEVNULL, stderr=subprocess.DEVNULL)


def test_an_adapter_trained_on_another_machine_is_listed_and_answers_here(db, settings, tiny_llama, tmp_path):
    machine_b = tmp_path / "machine-b"
    job = submit_job(db, adapter_name="from-b", dataset=make_dataset(db, "facts-b"), base_model=tiny_llama,
                     method="lora", settings=QUICK)
    assert worker_on_machine_b(machine_b).wait(timeout=300) == 0
    job = get_job(db, job.id)
    assert job.status == "succeeded", "\n".join([job.error or "", *job_log_tail(db, job.id)])
    assert str(machine_b) in job.run_dir
    shutil.rmtree(machine_b)  # nothing of B's disk is left for A to read

    adapter = next(a for a in list_adapters(db) if a.name == "from-b")
    assert adapter.base_model == tiny_llama
    answer = ask(db, "What opens at 3.5 bar?", use_rag=False, adapter="from-b", model_id=tiny_llama, max_new_tokens=8,
                 settings=settings)
    text = "".join(answer.stream())
    assert answer.adapter == "from-b" and answer.timings.new_tokens > 0 and text == answer.text
    fetched = find_adapter(db, "from-b", settings).path  # A's own cache, filled from the database
    assert settings.data_dir.resolve() in fetched.resolve().parents and (fetched / "adapter_model.safetensors").is_file()


def test_a_job_cancelled_on_machine_b_resumes_on_machine_a_from_bs_checkpoint(db, settings, tiny_llama, tmp_path):
    machine_b = tmp_path / "machine-b"
    job = submit_job(db, adapter_name="moved", dataset=make_dataset(db, "facts-moved"), base_model=tiny_llama,
                     method="lora", settings=LONG)
    worker = worker_on_machine_b(machine_b)
    wait_for(lambda: (stored_checkpoint(db, job.id) or None) and (get_job(db, job.id).progress or {}).get("done", 0) >= 12,
             timeout=300, message="B to store a checkpoint")
    cancel_job(db, job.id)
    assert worker.wait(timeout=60) == 0
    job = get_job(db, job.id)
    assert job.status == "cancelled"
    stored_step = int(stored_checkpoint(db, job.id).metadata["step"])
    assert stored_step >= 10
    shutil.rmtree(machine_b)  # B's local checkpoints are gone: only the database has one

    resume_job(db, job.id)
    run_worker(db, once=True)  # machine A: this process, its own data folder
    job = get_job(db, job.id)
    assert job.status == "succeeded", "\n".join([job.error or "", *job_log_tail(db, job.id)])
    assert str(settings.data_dir.resolve()) in job.run_dir
    log = [line for _, line in job_log_since(db, job.id)]
    assert f"Resuming from checkpoint-{stored_step}." in log
    steps = [m["step"] for m in job_metrics(db, job.id) if m["loss"] is not None]
    assert steps == list(range(1, 301))  # B's steps up to the checkpoint, then A's: none lost or repeated
    assert "moved" in {a.name for a in list_adapters(db)}
    assert stored_checkpoint(db, job.id) is None  # a finished job's checkpoint is dropped
