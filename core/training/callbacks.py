"""The Trainer callback that reports a run to Postgres (metrics, progress, log lines) and stops it
when a cancel arrives, saving a checkpoint first so the job can be resumed."""

from __future__ import annotations

import time
from pathlib import Path

from core.documents.embeddings import bitsandbytes_deferred
from core.jobs.process import JobContext
from core.jobs.queue import record_metrics, record_progress
from core.training.checkpoints import publish_checkpoint

with bitsandbytes_deferred():  # transformers' Trainer imports peft, which imports bitsandbytes: only QLoRA needs it
    from transformers import TrainerCallback


def peak_memory_mb() -> float:
    import torch

    if torch.cuda.is_available():
        return torch.cuda.max_memory_allocated() / 2**20
    import resource

    return resource.getrusage(resource.RUSAGE_SELF).ru_maxrss / 1024  # Linux reports KiB


class DatabaseReporter(TrainerCallback):
    def __init__(self, context: JobContext):
        self.context = context
        self.db, self.job_id, self.owner = context.db, context.job.id, context.owner
        self.cancelled = False
        self._last_tokens = 0
        self._last_time = time.perf_counter()
        self._started = time.perf_counter()
        self._start_step = 0

    def on_train_begin(self, args, state, control, **kwargs):
        self._start_step = state.global_step
        self._started = self._last_time = time.perf_counter()
        self._last_tokens = state.num_input_tokens_seen
        print(f"Training: {state.max_steps} steps from step {state.global_step}.", flush=True)

    def on_step_end(self, args, state, control, **kwargs):
        if not state.is_world_process_zero:
            return
        done = state.global_step - self._start_step
        elapsed = time.perf_counter() - self._started
        remaining = (state.max_steps - state.global_step) * elapsed / done if done else None
        record_progress(self.db, self.job_id, self.owner, {
            "done": state.global_step, "total": state.max_steps, "unit": "steps", "epoch": state.epoch,
            "elapsed_seconds": elapsed, "eta_seconds": remaining,
        })
        if self.context.cancel_requested:
            self.cancelled = True
            control.should_save = True  # a checkpoint to resume from
            control.should_training_stop = True
            print(f"Cancel received: stopping after step {state.global_step} with a checkpoint.", flush=True)

    def on_save(self, args, state, control, **kwargs):
        """Store each checkpoint in the database: a resume on any machine continues from it."""
        if not state.is_world_process_zero:
            return
        folder = Path(args.output_dir) / f"checkpoint-{state.global_step}"
        publish_checkpoint(self.db, self.job_id, folder, state.global_step)
        print(f"Checkpoint at step {state.global_step} stored.", flush=True)

    def on_log(self, args, state, control, logs=None, **kwargs):
        if not state.is_world_process_zero or not logs:
            return
        now = time.perf_counter()
        tokens = state.num_input_tokens_seen
        speed = (tokens - self._last_tokens) / (now - self._last_time) if now > self._last_time and "loss" in logs else None
        if "loss" in logs:
            self._last_tokens, self._last_time = tokens, now
        values = {
            "epoch": logs.get("epoch", state.epoch),
            "loss": logs.get("loss"),
            "eval_loss": logs.get("eval_loss"),
            "learning_rate": logs.get("learning_rate"),
            "grad_norm": logs.get("grad_norm"),
            "tokens_per_second": speed,
            "memory_mb": peak_memory_mb(),
        }
        if values["loss"] is None and values["eval_loss"] is None:
            return  # the end-of-training summary: reported as the job's final metrics instead
        record_metrics(self.db, self.job_id, self.owner, state.global_step, values)
        shown = ", ".join(f"{k} {v:.4g}" for k, v in values.items() if v is not None and k != "epoch")
        print(f"step {state.global_step}/{state.max_steps} epoch {values['epoch'] or 0:.2f}: {shown}", flush=True)
