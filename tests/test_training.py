"""Fine-tuning end to end through the real worker and a real training process, on tiny random
Llama and Phi-3 models (no download), against the real database: LoRA, QLoRA on the CPU, cancel,
resume, SIGKILL, a dead worker, a full disk, and the checks that refuse bad jobs."""

import errno
import os
import signal
import subprocess
import sys
import threading
import time
from pathlib import Path

import pytest
import torch
from tiny_models import build_tiny_model, tiny_tokenizer
from training_helpers import chat, make_dataset, wait_for

from core.db import open_database
from core.jobs.queue import (
    JobError,
    cancel_job,
    fail_stale_jobs,
    get_job,
    job_log_since,
    job_log_tail,
    job_metrics,
    resume_job,
)
from core.jobs.worker import run_worker
from core.models.adapters import find_adapter, list_adapters
from core.training.data import IGNORE, tokenize_chat
from core.training.estimate import estimate_job, model_shape
from core.training.run import explain_failure
from core.training.spec import PRESETS, TrainingSettings, target_modules_for, with_overrides
from core.training.submit import check_four_bit_support, submit_job

ROOT = Path(__file__).resolve().parents[1]
QUICK = with_overrides(PRESETS["quick CPU check"].settings, max_steps=4, save_steps=2, eval_steps=2, batch_size=2)


def adapter_names(db) -> set[str]:
    return {a.name for a in list_adapters(open_database())}  # the module's database (conftest's settings)


def submit(db, dataset, adapter, base_model, settings=QUICK, method="lora"):
    return submit_job(db, adapter_name=adapter, dataset=dataset, base_model=base_model, method=method, settings=settings)


def start_worker_thread(db):
    thread = threading.Thread(target=run_worker, args=(db,), kwargs={"once": True}, daemon=True)
    thread.start()
    return thread


# --- data and settings ------------------------------------------------------------------------


@pytest.mark.parametrize(("template", "turn_end"), [("CHATML", "<|im_end|>"), ("PHI3", "<|end|>")])
def test_loss_covers_only_the_assistant_tokens_through_end_of_turn(template, turn_end):
    import tiny_models

    tokenizer = tiny_tokenizer(getattr(tiny_models, template))
    example = tokenize_chat(tokenizer, chat("what opens at 3 bar ?", "the relief valve"), 512)
    trained = [tokenizer.convert_ids_to_tokens(t) for t, label in zip(example.input_ids, example.labels, strict=True)
               if label != IGNORE]
    assert trained == ["the", "relief", "valve", turn_end]
    assert example.input_ids[-1] == tokenizer.convert_tokens_to_ids(turn_end)


def test_target_modules_follow_the_architecture():
    assert target_modules_for("llama") == ["q_proj", "k_proj", "v_proj", "o_proj"]
    assert target_modules_for("phi3") == ["qkv_proj", "o_proj"]  # Phi-3 fuses q, k and v
    assert target_modules_for("phi3", "all-linear") == "all-linear"
    assert target_modules_for("llama", "q_proj, v_proj") == ["q_proj", "v_proj"]
    assert target_modules_for("some-new-arch") == "all-linear"


def test_settings_are_validated_with_readable_messages():
    problems = TrainingSettings(rank=0, lr_scheduler="wavy").validate()
    assert "rank must be between 1 and 512 (got 0)." in problems
    assert any(p.startswith("lr scheduler must be one of cosine, linear, constant") for p in problems)
    assert TrainingSettings().validate() == []
    assert set(PRESETS) == {"quick CPU check", "LoRA", "QLoRA"} and PRESETS["QLoRA"].method == "qlora"


def test_estimate_scales_with_method_and_warns_when_it_will_not_fit(tiny_llama):
    shape = model_shape(tiny_llama)
    assert shape.model_type == "llama" and shape.parameters > 0 and shape.lora_parameters_per_rank > 0
    settings = TrainingSettings(batch_size=4, max_seq_length=256)
    lora = estimate_job(shape, "lora", settings, examples=100, mean_tokens=80, device="cpu", available_bytes=2**34)
    qlora = estimate_job(shape, "qlora", settings, examples=100, mean_tokens=80, device="cpu", available_bytes=2**34)
    assert qlora.peak_memory_bytes < lora.peak_memory_bytes and qlora.seconds > lora.seconds
    assert lora.fits and lora.warning is None and lora.steps == 50  # 25 batches × 2 epochs
    tight = estimate_job(shape, "lora", settings, examples=100, mean_tokens=80, device="cpu", available_bytes=1000)
    assert not tight.fits and "try QLoRA" in tight.warning


# --- whole runs through the worker --------------------------------------------------------------


@pytest.mark.parametrize("architecture", ["llama", "phi3", "phi4mini"])
def test_lora_job_produces_an_adapter_that_changes_the_model(request, db, architecture):
    from peft import PeftModel
    from transformers import AutoModelForCausalLM

    base = request.getfixturevalue(f"tiny_{architecture}")
    dataset = make_dataset(db, f"facts-{architecture}")
    job = submit(db, dataset, f"tiny-{architecture}-lora", base)
    assert job.status == "queued"
    run_worker(db, once=True)

    job = get_job(db, job.id)
    assert job.status == "succeeded", "\n".join([job.error or "", *job_log_tail(db, job.id)])
    assert job.final_metrics["steps"] == 4 and job.final_metrics["eval_loss"] > 0
    steps = [m for m in job_metrics(db, job.id) if m["loss"] is not None]
    assert [m["step"] for m in steps] == [1, 2, 3, 4]
    assert all(m["tokens_per_second"] for m in steps[1:]) and all(m["learning_rate"] for m in steps)
    assert any(m["eval_loss"] for m in job_metrics(db, job.id))
    log = "\n".join(job_log_tail(db, job.id, 200))
    expected_targets = "['qkv_proj', 'o_proj']" if architecture.startswith("phi") else "['q_proj', 'k_proj', 'v_proj', 'o_proj']"
    assert f"LoRA on {expected_targets}" in log and "Done: adapter" in log

    adapter = find_adapter(db, f"tiny-{architecture}-lora")  # fetched into the local artifact cache
    assert adapter.base_model == base
    assert (adapter.path / "adapter_model.safetensors").is_file() and (adapter.path / "training.json").is_file()
    model = AutoModelForCausalLM.from_pretrained(base)
    inputs = torch.tensor([[1, 10, 11, 12, 13]])
    with torch.no_grad():
        before = model(inputs).logits
        tuned = PeftModel.from_pretrained(model, str(adapter.path))
        after = tuned(inputs).logits
    assert not torch.allclose(before, after)


def test_qlora_job_runs_on_the_cpu(db, tmp_path):
    try:
        check_four_bit_support()
    except JobError as error:
        pytest.skip(f"bitsandbytes cannot do 4-bit on this CPU: {error}")
    # 64 wide: on CPUs with AVX512-BF16, bitsandbytes' 4-bit layers need at least 64 inputs (see the next test).
    base = str(build_tiny_model(tmp_path / "tiny-llama-64", "llama", hidden_size=64))
    dataset = make_dataset(db, "facts-qlora")
    job = submit(db, dataset, "tiny-qlora", base, method="qlora",
                 settings=with_overrides(QUICK, gradient_checkpointing=True))
    run_worker(db, once=True)
    job = get_job(db, job.id)
    assert job.status == "succeeded", "\n".join([job.error or "", *job_log_tail(db, job.id)])
    assert "4-bit NF4" in "\n".join(job_log_tail(db, job.id, 200))
    assert "tiny-qlora" in adapter_names(db)


LONG = with_overrides(QUICK, max_steps=60, save_steps=5, eval_steps=0, logging_steps=1)


# Long enough that a fast machine cannot finish it between the cancel and the next check (every 2 s).
LONGER = with_overrides(LONG, max_steps=300)


def test_cancel_stops_within_seconds_and_resume_continues_from_the_checkpoint(db, tiny_llama):
    job = submit(db, make_dataset(db, "facts-cancel"), "tiny-cancelled", tiny_llama, settings=LONGER)
    worker = start_worker_thread(db)
    wait_for(lambda: (get_job(db, job.id).progress or {}).get("done", 0) >= 8, message="step 8")
    cancelled_at = time.monotonic()
    cancel_job(db, job.id)
    wait_for(lambda: get_job(db, job.id).finished, timeout=10, message="the job to stop")
    assert time.monotonic() - cancelled_at < 10
    worker.join(timeout=30)
    job = get_job(db, job.id)
    assert job.status == "cancelled" and "tiny-cancelled" not in adapter_names(db)
    checkpoints = sorted(Path(job.run_dir, "checkpoints").glob("checkpoint-*"), key=lambda p: int(p.name.split("-")[1]))
    assert checkpoints, "a cancel saves a checkpoint"
    resumed_from = int(checkpoints[-1].name.split("-")[1])

    resume_job(db, job.id)
    run_worker(db, once=True)
    job = get_job(db, job.id)
    assert job.status == "succeeded", "\n".join([job.error or "", *job_log_tail(db, job.id)])
    assert f"Resuming from checkpoint-{resumed_from}." in [line for _, line in job_log_since(db, job.id)]
    steps = [m["step"] for m in job_metrics(db, job.id) if m["loss"] is not None]
    assert steps == list(range(1, 301))  # no step lost or recorded twice across the two attempts
    assert job.attempts == 2 and "tiny-cancelled" in adapter_names(db)


def test_sigkill_of_the_training_process_fails_the_job_with_its_last_lines(db, tiny_llama):
    job = submit(db, make_dataset(db, "facts-kill"), "tiny-killed", tiny_llama, settings=LONG)
    worker = start_worker_thread(db)
    wait_for(lambda: (get_job(db, job.id).progress or {}).get("done", 0) >= 3, message="training to start")
    os.kill(get_job(db, job.id).pid, signal.SIGKILL)
    worker.join(timeout=60)
    job = get_job(db, job.id)
    assert job.status == "failed"
    assert "killed by signal SIGKILL" in job.error and "Last log lines:" in job.error and "step " in job.error
    assert "tiny-killed" not in adapter_names(db)


def test_a_dead_worker_is_noticed_by_its_heartbeat(db, tiny_llama, settings):
    job = submit(db, make_dataset(db, "facts-dead-worker"), "tiny-orphan", tiny_llama, settings=LONG)
    worker = subprocess.Popen([sys.executable, "-m", "core", "worker", "--once"], cwd=ROOT, env={**os.environ},
                              stdout=subprocess.DEVNULL, stderr=subprocess.DEVNULL)
    wait_for(lambda: (get_job(db, job.id).progress or {}).get("done", 0) >= 2, message="training to start")
    training_pid = get_job(db, job.id).pid
    worker.kill()  # SIGKILL: no chance to record anything
    worker.wait()
    wait_for(lambda: not Path(f"/proc/{training_pid}").exists() or _zombie(training_pid), timeout=10,
             message="the training process to die with its worker")
    wait_for(lambda: fail_stale_jobs(db, stale_after=3), timeout=20, message="the stale job to be failed")
    job = get_job(db, job.id)
    assert job.status == "failed" and "stopped without finishing" in job.error and "Last log lines" in job.error


def _zombie(pid: int) -> bool:
    try:
        return Path(f"/proc/{pid}/stat").read_text().split()[2] == "Z"
    except OSError:
        return True


def test_a_full_disk_while_checkpointing_fails_cleanly(db, tmp_path):
    """A disk that fills up during training, with no privileges needed: once a first checkpoint is
    stored, the running training process gets a file size limit (RLIMIT_FSIZE, set from outside with
    prlimit; Python ignores SIGXFSZ, so a write past it fails with EFBIG, "File too large") above
    what its log reaches but below a checkpoint's weights. The next checkpoint save, the real code
    path, fails: the job fails with a disk-full reason and keeps its log, and the checkpoint stored
    before stays whole."""
    import json
    import resource

    from safetensors.torch import load_file

    from core.jobs.artifacts import restore_folder
    from core.training.checkpoints import TRAINER_STATE, restore_latest_checkpoint, stored_checkpoint

    base = str(build_tiny_model(tmp_path / "tiny-llama-128", "llama", hidden_size=128))  # weights far above the log
    job = submit(db, make_dataset(db, "facts-disk"), "tiny-disk-full", base, settings=with_overrides(LONGER, save_steps=2))
    worker = start_worker_thread(db)
    stored = wait_for(lambda: stored_checkpoint(db, job.id), message="a first stored checkpoint")
    training = wait_for(lambda: _training_process(get_job(db, job.id).pid), message="the training process")
    run_dir = Path(get_job(db, job.id).run_dir)
    weights = min(path.stat().st_size for path in run_dir.glob("checkpoints/checkpoint-*/adapter_model.safetensors"))
    log_size = (run_dir / "output.log").stat().st_size
    limit = (log_size + weights) // 2
    assert log_size + 8 * 1024 < limit < weights, (log_size, weights)
    for process in [training, *training.children(recursive=True)]:
        resource.prlimit(process.pid, resource.RLIMIT_FSIZE, (limit, limit))
    worker.join(timeout=300)

    job = get_job(db, job.id)
    assert job.status == "failed", "\n".join([job.error or "", *job_log_tail(db, job.id)])
    assert job.error.startswith("The disk is full") and "File too large" in job.error and "resume the job" in job.error
    log = [line for _, line in job_log_since(db, job.id)]
    assert any(line.startswith("step ") for line in log) and f"Checkpoint at step {stored.metadata['step']} stored." in log
    assert log[-1].startswith("The job's process exited")  # the log is kept to its last line
    assert "tiny-disk-full" not in adapter_names(db)

    # What was saved before the disk filled up is whole: the stored checkpoint (its sha256 is checked
    # while it is restored), and the local one a resume would start from.
    stored = stored_checkpoint(db, job.id)
    restored, _ = restore_folder(db, "checkpoint", f"job-{job.id}", tmp_path / "restored", lambda info: "stored")
    assert json.loads((restored / TRAINER_STATE).read_text())["global_step"] == stored.metadata["step"]
    assert load_file(restored / "adapter_model.safetensors")
    resume_from = restore_latest_checkpoint(db, job.id, run_dir / "checkpoints")
    assert int(resume_from.name.split("-")[1]) >= stored.metadata["step"] and (resume_from / TRAINER_STATE).is_file()
    assert load_file(resume_from / "adapter_model.safetensors")


def _training_process(pid: int | None):
    """The job's training process, once its worker has reported it (before that, the job's pid is the worker's)."""
    import psutil

    try:
        process = psutil.Process(pid) if pid and pid != os.getpid() else None
        return process if process and "core.training.run" in process.cmdline() else None
    except psutil.Error:
        return None


def test_explain_failure_messages(tmp_path):
    assert explain_failure(OSError(errno.ENOSPC, "No space left on device"), tmp_path).startswith("The disk is full")
    wrapped = RuntimeError("Error while serializing: I/O error: No space left on device (os error 28)")
    assert explain_failure(wrapped, tmp_path).startswith("The disk is full")
    assert explain_failure(MemoryError(), tmp_path).startswith("Out of memory")


# --- jobs that are refused before they start ----------------------------------------------------


def test_bad_jobs_are_refused_with_a_specific_message(db, tiny_llama):
    facts = make_dataset(db, "facts-checks")
    empty = make_dataset(db, "empty-set", examples=[], validation=0)
    with pytest.raises(JobError, match="has no training examples"):
        submit(db, empty, "x1", tiny_llama)
    with pytest.raises(JobError, match=r"Max sequence length 4,096 is more than .* supports \(512\)"):
        submit(db, facts, "x2", tiny_llama, settings=with_overrides(QUICK, max_seq_length=4096))
    with pytest.raises(JobError, match="not on this machine"):
        submit(db, facts, "x3", "nobody/no-model")
    with pytest.raises(JobError, match="cannot be an adapter name"):
        submit(db, facts, "../escape", tiny_llama)
    with pytest.raises(JobError, match="rank must be between"):
        submit(db, facts, "x4", tiny_llama, settings=with_overrides(QUICK, rank=0))
    with pytest.raises(ValueError):
        submit(db, "no-such-dataset", "x5", tiny_llama)


def test_qlora_on_the_cpu_refuses_layers_narrower_than_a_4bit_block(db, tiny_llama):
    if torch.cuda.is_available():
        pytest.skip("the limit is bitsandbytes' CPU kernels'")
    with pytest.raises(JobError, match="at least 64 inputs wide.*only 32 wide. Use LoRA"):
        submit(db, make_dataset(db, "facts-narrow"), "narrow-qlora", tiny_llama, method="qlora")


def test_qlora_is_refused_when_bitsandbytes_cannot_quantize(db, tiny_llama, monkeypatch):
    """Stands in for a machine whose bitsandbytes has no working backend (the real one works here)."""
    import bitsandbytes.functional

    def broken(*args, **kwargs):
        raise RuntimeError("no kernel for this device")

    monkeypatch.setattr(bitsandbytes.functional, "quantize_4bit", broken)
    with pytest.raises(JobError, match="4-bit \\(QLoRA\\) cannot run here.*Use LoRA instead"):
        submit(db, make_dataset(db, "facts-no-4bit"), "x6", tiny_llama, method="qlora")


def test_job_command_with_two_gpus_faked_goes_through_accelerate_launch(monkeypatch):
    """CUDA cannot run here: the GPU count is faked; accelerate's own parser reads the command."""
    from types import SimpleNamespace

    from accelerate.commands.launch import launch_command_parser

    from core.jobs.worker import job_command

    job = SimpleNamespace(id=7, kind="train")  # the command needs only the job's id and kind
    monkeypatch.setattr(torch.cuda, "device_count", lambda: 1 if torch.cuda.is_available() else 0)
    assert job_command(job)[1:] == ["-m", "core.training.run", "--job", "7"]  # one GPU or none: one plain process

    monkeypatch.setattr(torch.cuda, "device_count", lambda: 2)
    command = job_command(job)
    assert command[1:3] == ["-m", "accelerate.commands.launch"]
    parsed = launch_command_parser().parse_args(command[3:])
    assert (parsed.num_processes, parsed.module, parsed.training_script, parsed.training_script_args) == (
        2, True, "core.training.run", ["--job", "7"]
    )
