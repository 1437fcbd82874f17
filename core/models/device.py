"""Where a model runs and in which precision, for answering and for training alike.

CUDA in bf16 (fp16 on GPUs without bf16), else the CPU in float32; 4-bit NF4 through bitsandbytes
on request. bitsandbytes is imported only when 4 bits are asked for: peft would import it on its own
import, so the ML stack is imported inside `bitsandbytes_deferred` (core.documents.embeddings).
"""

from __future__ import annotations

from core.documents.embeddings import import_bitsandbytes
from core.models.registry import ModelNotAvailable


def choose_device() -> tuple[str, str]:
    """(device, dtype name) for this machine: ("cuda", "bfloat16" | "float16") or ("cpu", "float32")."""
    import torch

    if torch.cuda.is_available():
        return "cuda", "bfloat16" if torch.cuda.is_bf16_supported() else "float16"
    return "cpu", "float32"


def four_bit_config(compute_dtype):
    """transformers' quantization config for NF4 with double quantization, computing in `compute_dtype`."""
    from transformers import BitsAndBytesConfig

    try:
        import_bitsandbytes()
    except ImportError as error:
        raise ModelNotAvailable("4-bit loading needs bitsandbytes, which is not installed or cannot run here.") from error
    return BitsAndBytesConfig(
        load_in_4bit=True, bnb_4bit_quant_type="nf4", bnb_4bit_use_double_quant=True, bnb_4bit_compute_dtype=compute_dtype
    )
