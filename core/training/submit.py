"""Starting a job: every check that can fail fast happens here, before anything is queued."""

from __future__ import annotations

from dataclasses import dataclass

from core.config import Settings, get_settings
from core.db import Database
from core.documents.embeddings import import_bitsandbytes
from core.formatting import plural
from core.jobs.queue import Job, JobError, create_job, validate_adapter_name
from core.models.adapters import adapter_exists
from core.models.context import context_window
from core.models.device import choose_device
from core.models.registry import ModelNotAvailable, resolve_model_path
from core.training.estimate import Estimate, estimate_job, model_shape
from core.training.spec import Method, TrainingSettings, TrainParams

# bitsandbytes' CPU kernels (on CPUs with AVX512-BF16) reshape each 4-bit layer into blocks of this many inputs.
FOUR_BIT_BLOCK = 64


def check_four_bit_support() -> None:
    """QLoRA needs bitsandbytes able to quantize on this machine's device (CUDA, or CPU since 0.48)."""
    try:
        import_bitsandbytes()
        import bitsandbytes.functional as bnb_functional
        import torch

        device, _ = choose_device()
        bnb_functional.quantize_4bit(torch.randn(64, 64, device=device), quant_type="nf4")
    except Exception as error:  # ImportError, RuntimeError from a missing backend, ...
        raise JobError(
            f"4-bit (QLoRA) cannot run here: bitsandbytes fails on this machine ({type(error).__name__}: "
            f"{str(error)[:200]}). Use LoRA instead, or a machine with a CUDA GPU."
        ) from error


@dataclass(frozen=True)
class JobPlan:
    """What the page shows before Start: the checked inputs and the estimate."""

    dataset: str
    examples: int
    mean_tokens: float
    estimate: Estimate
    lengths: Lengths | None = None

    @property
    def length_warning(self) -> str | None:
        return self.lengths.warning if self.lengths else None


@dataclass(frozen=True)
class Lengths:
    """How the dataset's examples fit max_seq_length: long ones are cut, and one cut before its answer
    teaches nothing and is left out (RAFT examples with their passages often run to 1,000 tokens)."""

    max_seq_length: int
    examples: int  # in the training split
    cut: int  # longer than max_seq_length
    left_out: int  # cut before any answer token
    longest: int

    @property
    def warning(self) -> str | None:
        if not self.cut:
            return None
        lost = f"; {plural(self.left_out, 'example')} lose their whole answer and are left out" if self.left_out else ""
        return (f"{self.cut:,} of {self.examples:,} examples are longer than the max sequence length "
                f"{self.max_seq_length:,} (longest {self.longest:,} tokens) and are cut{lost}. Raise Max sequence "
                f"length to {self.longest:,} to train on them whole (it costs memory and time).")


def plan_job(db: Database, *, dataset: str, base_model: str, method: Method, settings: TrainingSettings,
             app_settings: Settings | None = None) -> JobPlan:
    app_settings = app_settings or get_settings()
    problems = settings.validate()
    if problems:
        raise JobError(" ".join(problems))
    if method not in ("lora", "qlora"):
        raise JobError(f"Unknown method {method!r}: use lora or qlora.")
    try:
        path = resolve_model_path(base_model, app_settings)
    except ModelNotAvailable as error:
        raise JobError(str(error)) from error
    from transformers import AutoConfig

    try:
        shape = model_shape(path, settings.target_modules)
        limit = context_window(AutoConfig.from_pretrained(path))
    except (ValueError, KeyError, OSError) as error:
        raise JobError(f"{base_model} cannot be read as a causal language model "
                       f"({type(error).__name__}: {str(error)[:200]}). Choose another model.") from error
    if settings.max_seq_length > limit:
        raise JobError(f"Max sequence length {settings.max_seq_length:,} is more than {base_model} supports ({limit:,}).")
    device, _ = choose_device()
    if method == "qlora" and device == "cpu" and shape.narrowest_linear_inputs < FOUR_BIT_BLOCK:
        raise JobError(
            f"QLoRA on the CPU needs layers at least {FOUR_BIT_BLOCK} inputs wide (bitsandbytes quantizes blocks of "
            f"{FOUR_BIT_BLOCK} weights); {base_model} has layers only {shape.narrowest_linear_inputs} wide. Use LoRA for this model."
        )
    examples, mean_tokens, lengths = _token_stats(db, dataset, path, settings.max_seq_length)
    if examples == 0:
        if lengths.examples:
            raise JobError(f"No example of dataset {dataset!r} can be trained: {lengths.warning}")
        raise JobError(f"Dataset {dataset!r} has no training examples; import or generate some first.")
    estimate = estimate_job(shape, method, settings, examples=examples, mean_tokens=mean_tokens, device=device)
    return JobPlan(dataset, examples, mean_tokens, estimate, lengths)


def _token_stats(db: Database, dataset: str, model_path, max_length: int) -> tuple[int, float, Lengths]:
    """Training examples kept, their mean length in the base model's tokens (template included, after
    cutting), and how the examples fit `max_length`."""
    from transformers import AutoTokenizer

    from core.datasets import load_training_examples
    from core.training.data import IGNORE, tokenize_examples

    train, _validation = load_training_examples(db, dataset)
    whole = tokenize_examples(AutoTokenizer.from_pretrained(model_path), train, 1 << 30)
    kept = [r for r in whole if any(label != IGNORE for label in r["labels"][:max_length])]
    lengths = Lengths(max_length, len(whole), sum(len(r["input_ids"]) > max_length for r in whole),
                      len(whole) - len(kept), max((len(r["input_ids"]) for r in whole), default=0))
    mean = sum(min(len(r["input_ids"]), max_length) for r in kept) / len(kept) if kept else 0.0
    return len(kept), mean, lengths


def submit_job(db: Database, *, adapter_name: str, dataset: str, base_model: str, method: Method,
               settings: TrainingSettings, app_settings: Settings | None = None) -> Job:
    """Check everything, then queue the job. A worker picks it up (the app starts one if needed)."""
    from core.datasets import get_dataset

    adapter_name = validate_adapter_name(adapter_name)
    if adapter_exists(db, adapter_name):
        raise JobError(f"An adapter named {adapter_name!r} already exists; choose another name or delete it first.")
    info = get_dataset(db, dataset)
    if method == "qlora":
        check_four_bit_support()
    plan_job(db, dataset=dataset, base_model=base_model, method=method, settings=settings, app_settings=app_settings)
    params = TrainParams(adapter_name=adapter_name, dataset_id=info.id, dataset_name=info.name, base_model=base_model,
                         method=method, settings=settings.to_dict())
    return create_job(db, kind="train", params=params, title=f"Fine-tune {adapter_name}", unique_key="adapter_name")
