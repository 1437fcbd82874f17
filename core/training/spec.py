"""What a fine-tuning job is: its settings (one dataclass whose help text the page, the CLI and the
saved run all read), the presets, the LoRA target modules per architecture, and an estimate of its
memory and time before it starts."""

from __future__ import annotations

from dataclasses import asdict, dataclass, field, fields, replace
from typing import Literal

from pydantic import BaseModel, ConfigDict

Method = Literal["lora", "qlora"]


def _setting(default, help: str, **extra):
    return field(default=default, metadata={"help": help, **extra})


@dataclass(frozen=True)
class TrainingSettings:
    rank: int = _setting(16, "LoRA rank: size of the low-rank update. 8-64; higher learns more, costs more.", min=1, max=512)
    alpha: int = _setting(32, "LoRA alpha: scales the update (alpha / rank). Usually 2 × rank.", min=1, max=1024)
    dropout: float = _setting(0.05, "Dropout on the LoRA path, against overfitting small datasets.", min=0.0, max=0.9)
    target_modules: str = _setting(
        "auto", "Layers that get LoRA: 'auto' (attention projections of this architecture), 'all-linear', "
        "or a comma-separated list of module names."
    )
    learning_rate: float = _setting(2e-4, "Peak learning rate. 1e-4 to 3e-4 suits LoRA.", min=1e-7, max=1e-1)
    lr_scheduler: str = _setting("cosine", "Learning-rate schedule after warm-up: cosine, linear or constant.",
                                 choices=("cosine", "linear", "constant"))
    warmup_steps: int = _setting(0, "Steps of linear warm-up from 0 to the peak learning rate.", min=0, max=100_000)
    epochs: float = _setting(2.0, "Passes over the training set (ignored when max steps is set).", min=0.01, max=100)
    max_steps: int = _setting(0, "Stop after this many optimizer steps; 0 uses epochs.", min=0, max=1_000_000)
    batch_size: int = _setting(4, "Examples per forward pass.", min=1, max=1024)
    gradient_accumulation: int = _setting(1, "Forward passes per optimizer step (effective batch = batch × this).",
                                          min=1, max=1024)
    max_seq_length: int = _setting(512, "Longest example in tokens; longer ones are cut.", min=16, max=131_072)
    length_grouping: bool = _setting(True, "Batch examples of similar length together, so little padding is computed.")
    gradient_checkpointing: bool = _setting(False, "Recompute activations in the backward pass: less memory, ~30% slower.")
    eval_steps: int = _setting(0, "Evaluate on the validation split every N steps; 0 evaluates once per epoch.",
                               min=0, max=1_000_000)
    save_steps: int = _setting(50, "Write a checkpoint every N steps (resume continues from the last one).",
                               min=1, max=1_000_000)
    logging_steps: int = _setting(1, "Record loss and learning rate every N steps.", min=1, max=10_000)
    seed: int = _setting(42, "Random seed: same data, settings and seed give the same run.", min=0, max=2**31 - 1)

    def to_dict(self) -> dict:
        return asdict(self)

    @classmethod
    def from_dict(cls, values: dict) -> TrainingSettings:
        known = {f.name for f in fields(cls)}
        return cls(**{k: v for k, v in values.items() if k in known})

    def validate(self) -> list[str]:
        """Problems a user can fix, one sentence each (empty when all is well)."""
        problems = []
        for f in fields(self):
            value, meta = getattr(self, f.name), f.metadata
            if "min" in meta and value < meta["min"] or "max" in meta and value > meta["max"]:
                problems.append(f"{f.name.replace('_', ' ')} must be between {meta['min']} and {meta['max']} (got {value}).")
            if "choices" in meta and value not in meta["choices"]:
                problems.append(f"{f.name.replace('_', ' ')} must be one of {', '.join(meta['choices'])} (got {value!r}).")
        return problems


def setting_help(name: str) -> str:
    return next(f.metadata["help"] for f in fields(TrainingSettings) if f.name == name)


@dataclass(frozen=True)
class Preset:
    name: str
    method: Method
    settings: TrainingSettings
    description: str


PRESETS = {
    preset.name: preset
    for preset in (
        Preset("quick CPU check", "lora",
               TrainingSettings(rank=8, alpha=16, max_steps=10, batch_size=2, max_seq_length=256, learning_rate=5e-4,
                                save_steps=5, eval_steps=5),
               "10 steps on short examples: checks the data and settings end to end in a minute or two on a CPU."),
        Preset("LoRA", "lora", TrainingSettings(), "Full-precision base weights with LoRA adapters: the usual choice."),
        Preset("QLoRA", "qlora", TrainingSettings(gradient_checkpointing=True, batch_size=4, gradient_accumulation=2),
               "Base weights in 4-bit NF4 (double quantization): about a third of the memory, slower steps."),
    )
}

# Attention projections of each architecture family (Phi-3 fuses q, k and v into one qkv_proj).
TARGET_MODULES = {
    "llama": ["q_proj", "k_proj", "v_proj", "o_proj"],
    "mistral": ["q_proj", "k_proj", "v_proj", "o_proj"],
    "qwen2": ["q_proj", "k_proj", "v_proj", "o_proj"],
    "qwen3": ["q_proj", "k_proj", "v_proj", "o_proj"],
    "gemma": ["q_proj", "k_proj", "v_proj", "o_proj"],
    "gemma2": ["q_proj", "k_proj", "v_proj", "o_proj"],
    "phi3": ["qkv_proj", "o_proj"],
    "phi": ["q_proj", "k_proj", "v_proj", "dense"],
    "gpt2": ["c_attn", "c_proj"],
}


def target_modules_for(model_type: str, choice: str = "auto") -> list[str] | str:
    """The modules LoRA wraps: per architecture for 'auto', PEFT's 'all-linear', or the user's list."""
    choice = (choice or "auto").strip()
    if choice == "all-linear":
        return "all-linear"
    if choice == "auto":
        return TARGET_MODULES.get(model_type, "all-linear")
    return [name.strip() for name in choice.split(",") if name.strip()]


def with_overrides(settings: TrainingSettings, **overrides) -> TrainingSettings:
    return replace(settings, **{k: v for k, v in overrides.items() if v is not None})


class TrainParams(BaseModel):
    """A training job's parameters as stored in its row (validated before it is queued)."""

    model_config = ConfigDict(extra="forbid")

    adapter_name: str
    dataset_id: int
    dataset_name: str
    base_model: str
    method: Method
    settings: dict
