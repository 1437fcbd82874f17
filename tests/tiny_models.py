"""Tiny random-weight chat models built from a config (no download): a Llama and a Phi-3.

They have real architectures, real chat templates and a real (word-level) tokenizer, so loading,
prompt assembly, streaming, stopping and LoRA adapters run the same code as for full-size models.
"""

from __future__ import annotations

from pathlib import Path

WORDS = (
    "the a of to and is in it for on with as at by be are this that what how when where which who why "
    "pump pumps seal seals valve valves boiler pressure bar relief open opens replace hours water flow "
    "answer question source sources sentence number hello yes no one two three four five "
    "user assistant system does do you know careful expert only using cite each like if not contain say"
).split()

CHATML = (
    "{% for m in messages %}<|im_start|>{{ m['role'] }}\n{{ m['content'] }}<|im_end|>\n{% endfor %}"
    "{% if add_generation_prompt %}<|im_start|>assistant\n{% endif %}"
)
PHI3 = (
    "{% for m in messages %}{% if m['role'] == 'system' %}<|system|>\n{{ m['content'] }}<|end|>\n"
    "{% elif m['role'] == 'user' %}<|user|>\n{{ m['content'] }}<|end|>\n"
    "{% else %}<|assistant|>\n{{ m['content'] }}<|end|>\n{% endif %}{% endfor %}"
    "{% if add_generation_prompt %}<|assistant|>\n{% endif %}"
)
SPECIAL = ["<unk>", "<s>", "</s>", "<pad>", "<|im_start|>", "<|im_end|>", "<|system|>", "<|user|>", "<|assistant|>", "<|end|>"]


def tiny_tokenizer(chat_template: str):
    from tokenizers import Tokenizer, decoders, models, pre_tokenizers
    from transformers import PreTrainedTokenizerFast

    punctuation = list(".,:;?!()[]'\"-/>…") + [str(d) for d in range(10)]
    vocab = {token: i for i, token in enumerate(SPECIAL + WORDS + punctuation)}
    backend = Tokenizer(models.WordLevel(vocab, unk_token="<unk>"))
    backend.pre_tokenizer = pre_tokenizers.Sequence([pre_tokenizers.Whitespace(), pre_tokenizers.Digits(individual_digits=True)])
    backend.decoder = decoders.WordPiece(prefix="##")  # joins words with spaces
    tokenizer = PreTrainedTokenizerFast(
        tokenizer_object=backend, unk_token="<unk>", bos_token="<s>", eos_token="</s>", pad_token="<pad>",
        additional_special_tokens=SPECIAL[4:], model_max_length=512,
    )
    tokenizer.chat_template = chat_template
    return tokenizer


def build_tiny_model(folder: Path, architecture: str = "llama", seed: int = 0, hidden_size: int = 32) -> Path:
    """Save a tiny random model with tokenizer and chat template in `folder`; return the folder."""
    import torch
    from transformers import LlamaConfig, LlamaForCausalLM, Phi3Config, Phi3ForCausalLM

    torch.manual_seed(seed)
    tokenizer = tiny_tokenizer(CHATML if architecture == "llama" else PHI3)
    common = dict(
        vocab_size=len(tokenizer), hidden_size=hidden_size, intermediate_size=2 * hidden_size, num_hidden_layers=2, num_attention_heads=4,
        num_key_value_heads=2, max_position_embeddings=512, bos_token_id=tokenizer.bos_token_id,
        eos_token_id=tokenizer.eos_token_id, pad_token_id=tokenizer.pad_token_id,
    )
    if architecture == "llama":
        model = LlamaForCausalLM(LlamaConfig(**common))
    elif architecture == "phi3":
        model = Phi3ForCausalLM(Phi3Config(**common))
    elif architecture == "phi4mini":  # Phi-4-mini: the Phi-3 architecture with partial rotary and tied embeddings
        model = Phi3ForCausalLM(Phi3Config(**common, partial_rotary_factor=0.75, tie_word_embeddings=True))
    else:
        raise ValueError(architecture)
    folder.mkdir(parents=True, exist_ok=True)
    model.save_pretrained(folder)
    tokenizer.save_pretrained(folder)
    return folder


def build_tiny_adapter(base_folder: str | Path, target: Path, seed: int = 1, train_seconds: float | None = None) -> Path:
    """A real PEFT LoRA adapter for `base_folder` whose weights change the output, saved to `target`;
    with `train_seconds`, a training record (training.json) as a fine-tuning job would leave."""
    import json

    import torch
    from peft import LoraConfig, get_peft_model
    from transformers import AutoModelForCausalLM

    torch.manual_seed(seed)
    model = get_peft_model(AutoModelForCausalLM.from_pretrained(base_folder), LoraConfig(r=4, lora_alpha=8, target_modules="all-linear"))
    for name, parameter in model.named_parameters():
        if "lora_B" in name:
            parameter.data.normal_(0, 0.5)  # LoRA starts as a no-op; make it change the output
    model.save_pretrained(target)
    if train_seconds is not None:
        (Path(target) / "training.json").write_text(json.dumps({"metrics": {"train_seconds": train_seconds}}))
    return Path(target)
