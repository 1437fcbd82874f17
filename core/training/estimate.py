"""A rough estimate of a job's peak memory and duration before it starts, and whether it fits.

Calibrated on this project's own runs (SmolLM2-135M, LoRA on 2 CPU cores: ~180 trained tokens/s;
QLoRA about 2× slower; see docs/benchmarks.md). It is meant to catch "this will not fit" and
"this will take all night", not to be precise.
"""

from __future__ import annotations

from dataclasses import dataclass

from core.training.spec import Method, TrainingSettings, target_modules_for

_CPU_TOKENS_PER_SECOND_135M = 180.0
_GPU_SPEEDUP = 25.0


@dataclass(frozen=True)
class ModelShape:
    model_type: str
    parameters: int
    hidden_size: int
    layers: int
    vocab_size: int
    lora_parameters_per_rank: int
    narrowest_linear_inputs: int  # bitsandbytes' CPU 4-bit layers need at least 64


@dataclass(frozen=True)
class Estimate:
    peak_memory_bytes: int
    available_memory_bytes: int
    seconds: float
    steps: int
    device: str
    warning: str | None

    @property
    def fits(self) -> bool:
        return self.peak_memory_bytes <= self.available_memory_bytes


def model_shape(model_path, target_choice: str = "auto") -> ModelShape:
    """Parameter counts from the config alone (weights on the meta device: nothing is loaded)."""
    import torch
    from transformers import AutoConfig, AutoModelForCausalLM

    config = AutoConfig.from_pretrained(model_path)
    with torch.device("meta"):
        model = AutoModelForCausalLM.from_config(config)
    targets = target_modules_for(config.model_type, target_choice)
    per_rank = 0
    narrowest = None
    for name, module in model.named_modules():
        if isinstance(module, torch.nn.Linear) and name.split(".")[-1] != "lm_head":
            narrowest = min(module.in_features, narrowest or module.in_features)
            if targets == "all-linear" or name.split(".")[-1] in targets:
                per_rank += module.in_features + module.out_features  # A: in×r, B: r×out
    return ModelShape(
        model_type=config.model_type,
        parameters=sum(p.numel() for p in model.parameters()),
        hidden_size=config.hidden_size,
        layers=config.num_hidden_layers,
        vocab_size=config.vocab_size,
        lora_parameters_per_rank=per_rank,
        narrowest_linear_inputs=narrowest or config.hidden_size,
    )


def available_memory(device: str) -> int:
    if device == "cuda":
        import torch

        free, _total = torch.cuda.mem_get_info()
        return int(free)
    import psutil

    return int(psutil.virtual_memory().available)


def estimate_job(shape: ModelShape, method: Method, settings: TrainingSettings, *, examples: int, mean_tokens: float,
                 device: str, available_bytes: int | None = None) -> Estimate:
    bytes_per_weight = 0.55 if method == "qlora" else (4.0 if device == "cpu" else 2.0)
    weights = shape.parameters * bytes_per_weight
    lora = shape.lora_parameters_per_rank * settings.rank * 16  # fp32 weight, gradient and two Adam moments
    tokens_per_batch = settings.batch_size * min(settings.max_seq_length, max(mean_tokens, 1) * 1.3)
    per_layer = 2 if settings.gradient_checkpointing else 18  # bytes of activations kept per token and hidden unit
    activations = tokens_per_batch * shape.hidden_size * shape.layers * per_layer
    logits = tokens_per_batch * shape.vocab_size * 4 * 3  # logits, their softmax and gradient in fp32
    peak = int((weights + lora + activations + logits) * 1.2)  # allocator overhead and workspace

    batches_per_epoch = max(1, -(-examples // settings.batch_size))
    steps_per_epoch = max(1, batches_per_epoch // settings.gradient_accumulation)
    steps = settings.max_steps or max(1, int(steps_per_epoch * settings.epochs))
    trained_tokens = steps * settings.gradient_accumulation * settings.batch_size * mean_tokens
    speed = _CPU_TOKENS_PER_SECOND_135M * 135e6 / max(shape.parameters, 1)
    speed *= 0.5 if method == "qlora" else 1.0
    speed *= _GPU_SPEEDUP if device == "cuda" else 1.0
    seconds = trained_tokens / speed + 10  # + model load

    available = available_memory(device) if available_bytes is None else available_bytes
    warning = None
    if peak > available:
        warning = (
            f"This job needs about {peak / 2**30:.1f} GiB but {available / 2**30:.1f} GiB is free on the {device}: "
            + ("try QLoRA, " if method == "lora" else "")
            + "a smaller batch, a shorter max sequence length, or gradient checkpointing."
        )
    elif seconds > 6 * 3600:
        warning = f"This job would take about {seconds / 3600:.0f} hours here: fewer steps or a GPU would help."
    return Estimate(peak, available, seconds, steps, device, warning)
