"""python -m core.training.run --job ID: one fine-tuning run, top to bottom.

The worker starts this in its own process for each training job: settings → data → model → LoRA → train →
adapter. The job's full settings are written next to its checkpoints, so a result can be
reproduced from its run folder alone.
"""

from __future__ import annotations

import json
import os
import shutil
from pathlib import Path

from core.documents.embeddings import bitsandbytes_deferred
from core.jobs.process import Cancelled, JobContext, default_explanation, main_for
from core.jobs.queue import forget_metrics_after
from core.models.adapters import publish_adapter
from core.models.device import choose_device, four_bit_config
from core.models.registry import resolve_model_path
from core.training.callbacks import DatabaseReporter
from core.training.checkpoints import delete_checkpoint, restore_latest_checkpoint
from core.training.data import PadToLongest, tokenize_examples
from core.training.spec import TrainingSettings, target_modules_for


def run(context: JobContext) -> dict:
    """The job's entry point: record what is trained, train, publish the adapter."""
    job = context.job
    (context.run_dir / "job.json").write_text(json.dumps(
        {"job": job.id, "adapter": job.adapter_name, "dataset": job.dataset_name, "base_model": job.base_model,
         "method": job.method, "settings": job.params["settings"]}, indent=2))
    print(f"{job.method.upper()} of {job.base_model} on dataset {job.dataset_name!r} → adapter {job.adapter_name!r}.",
          flush=True)
    metrics = train(context)
    print(f"Done: adapter {job.adapter_name!r} saved. {json.dumps(metrics)}", flush=True)
    return metrics


def train(context: JobContext) -> dict:
    import torch
    from peft import LoraConfig, get_peft_model
    from transformers import AutoModelForCausalLM, AutoTokenizer, Trainer, TrainingArguments, set_seed
    from transformers.trainer_callback import PrinterCallback

    from core.datasets import DatasetError, load_training_examples

    db, job, run_dir = context.db, context.job, context.run_dir
    s = TrainingSettings.from_dict(job.params["settings"])
    set_seed(s.seed)

    # --- data -------------------------------------------------------------------------------
    train_examples, validation_examples = load_training_examples(db, job.dataset_name)
    model_path = resolve_model_path(job.base_model)
    tokenizer = AutoTokenizer.from_pretrained(model_path)
    if tokenizer.pad_token_id is None:
        tokenizer.pad_token = tokenizer.eos_token
    train_rows = tokenize_examples(tokenizer, train_examples, s.max_seq_length)
    validation_rows = tokenize_examples(tokenizer, validation_examples, s.max_seq_length)
    if not train_rows:
        raise DatasetError(f"Dataset {job.dataset_name!r} has no training examples with an answer to learn.")
    trained = sum(sum(label != -100 for label in row["labels"]) for row in train_rows)
    print(f"Data: {len(train_rows)} training and {len(validation_rows)} validation examples, "
          f"{trained:,} answer tokens to learn per epoch.", flush=True)
    cut = sum(len(row["input_ids"]) >= s.max_seq_length for row in train_rows)
    if cut or len(train_rows) < len(train_examples):
        print(f"Max sequence length {s.max_seq_length:,}: {cut} examples cut, "
              f"{len(train_examples) - len(train_rows)} left out (cut before their answer).", flush=True)

    # --- model ------------------------------------------------------------------------------
    device, dtype_name = choose_device()
    cuda = device == "cuda"
    dtype = getattr(torch, dtype_name)
    kwargs: dict = {"dtype": dtype}
    if job.method == "qlora":
        kwargs["quantization_config"] = four_bit_config(dtype)
        kwargs["device_map"] = {"": int(os.environ.get("LOCAL_RANK", 0)) if cuda else "cpu"}
    model = AutoModelForCausalLM.from_pretrained(model_path, **kwargs)
    if job.method == "qlora":
        from peft import prepare_model_for_kbit_training

        model = prepare_model_for_kbit_training(model, use_gradient_checkpointing=s.gradient_checkpointing)
    targets = target_modules_for(model.config.model_type, s.target_modules)
    with bitsandbytes_deferred():  # peft imports bitsandbytes to wrap layers; only QLoRA's 4-bit layers need it
        model = get_peft_model(model, LoraConfig(r=s.rank, lora_alpha=s.alpha, lora_dropout=s.dropout,
                                                 target_modules=targets, task_type="CAUSAL_LM"))
    trainable, total = model.get_nb_trainable_parameters()
    print(f"Model: {model.config.model_type}, LoRA on {targets}: {trainable:,} trainable of {total:,} parameters "
          f"({'4-bit NF4' if job.method == 'qlora' else str(dtype).removeprefix('torch.')}, {'cuda' if cuda else 'cpu'}).",
          flush=True)

    # --- trainer ----------------------------------------------------------------------------
    checkpoints = run_dir / "checkpoints"
    has_validation = bool(validation_rows)
    arguments = TrainingArguments(
        output_dir=str(checkpoints),
        per_device_train_batch_size=s.batch_size,
        per_device_eval_batch_size=s.batch_size,
        gradient_accumulation_steps=s.gradient_accumulation,
        learning_rate=s.learning_rate,
        lr_scheduler_type=s.lr_scheduler,
        warmup_steps=s.warmup_steps,
        num_train_epochs=s.epochs,
        max_steps=s.max_steps or -1,
        logging_steps=s.logging_steps,
        eval_strategy=("steps" if s.eval_steps else "epoch") if has_validation else "no",
        eval_steps=s.eval_steps or None,
        save_strategy="steps",
        save_steps=s.save_steps,
        save_total_limit=2,
        seed=s.seed,
        train_sampling_strategy="group_by_length" if s.length_grouping else "random",
        gradient_checkpointing=s.gradient_checkpointing and job.method != "qlora",
        bf16=cuda and dtype == torch.bfloat16,
        fp16=cuda and dtype == torch.float16,
        use_cpu=not cuda,
        include_num_input_tokens_seen="non_padding",
        remove_unused_columns=False,
        report_to=[],
        disable_tqdm=True,
        dataloader_num_workers=0,
    )
    reporter = DatabaseReporter(context)
    trainer = Trainer(model=model, args=arguments, train_dataset=train_rows,
                      eval_dataset=validation_rows or None, data_collator=PadToLongest(tokenizer.pad_token_id),
                      callbacks=[reporter])
    trainer.remove_callback(PrinterCallback)  # the reporter prints one readable line per log instead

    # The newest checkpoint of this job, here or stored by a worker on another machine.
    resume_from = restore_latest_checkpoint(db, job.id, checkpoints) if job.resume else None
    if resume_from:
        step = int(resume_from.name.split("-")[-1])
        forget_metrics_after(db, job.id, step)
        print(f"Resuming from {resume_from.name}.", flush=True)
    if context.cancel_requested:
        raise Cancelled
    result = trainer.train(resume_from_checkpoint=str(resume_from) if resume_from else None)
    if reporter.cancelled:
        raise Cancelled

    # --- adapter ----------------------------------------------------------------------------
    metrics = {"train_loss": result.training_loss, "steps": result.global_step,
               "train_seconds": result.metrics.get("train_runtime")}
    if has_validation:
        last_eval = next((log for log in reversed(trainer.state.log_history) if "eval_loss" in log), None)
        at_end = last_eval is not None and last_eval.get("step") == result.global_step
        metrics["eval_loss"] = last_eval["eval_loss"] if at_end else trainer.evaluate()["eval_loss"]
    staging = run_dir / "adapter"
    shutil.rmtree(staging, ignore_errors=True)
    model.save_pretrained(staging)
    tokenizer.save_pretrained(staging)
    publish_adapter(db, staging, job, metrics)
    delete_checkpoint(db, job.id)  # the adapter is what remains of a finished job
    return metrics


def explain_failure(error: BaseException, run_dir: Path) -> str:
    """Training's own advice for running out of memory; everything else as for any job."""
    if type(error).__name__ == "OutOfMemoryError" or isinstance(error, MemoryError):
        return "Out of memory: use QLoRA, a smaller batch, a shorter max sequence length, or gradient checkpointing."
    return default_explanation(error, run_dir)


if __name__ == "__main__":
    main_for(run, explain=explain_failure)
