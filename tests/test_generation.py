"""Loading, streaming and stopping on tiny random Llama and Phi-3 models; LoRA adapters switched on
one loaded base model. No download: the models are built from a config in the test session."""

import json
import shutil

import pytest
import torch
from tiny_models import build_tiny_model

from core.models import NO_ADAPTER, AdapterError, ModelNotAvailable, load_model, stream_chat
from core.models.generation import chat_prompt_ids, stop_token_ids
from core.models.loading import use_adapter

QUESTION = [{"role": "user", "content": "when does the relief valve open ?"}]


def fresh_model(tmp_path, architecture):
    """A model only this test uses (tests below change its weights)."""
    return load_model(str(build_tiny_model(tmp_path / architecture, architecture)))


def bias_output_towards(loaded, token: str) -> None:
    """Make every next-token prediction `token`, so the test knows what the model will do."""
    model = loaded.model
    head = torch.nn.Linear(model.config.hidden_size, model.config.vocab_size, bias=True)
    head.weight.data.zero_()
    head.bias.data.fill_(-10.0)
    head.bias.data[loaded.tokenizer.convert_tokens_to_ids(token)] = 10.0
    model.lm_head = head


@pytest.mark.parametrize(
    ("architecture", "expected_prompt", "turn_end"),
    [
        ("llama", "<|im_start|> user when does the relief valve open? <|im_end|> <|im_start|> assistant", "<|im_end|>"),
        ("phi3", "<|user|> when does the relief valve open? <|end|> <|assistant|>", "<|end|>"),
    ],
)
def test_prompt_uses_the_models_chat_template(request, architecture, expected_prompt, turn_end):
    loaded = load_model(request.getfixturevalue(f"tiny_{architecture}"))
    assert loaded.tokenizer.decode(chat_prompt_ids(loaded, QUESTION)).strip() == expected_prompt
    assert loaded.tokenizer.convert_tokens_to_ids(turn_end) in stop_token_ids(loaded)
    # Only tokens the vocabulary has: eos and the end-of-turn markers it knows (not Llama 3's or Gemma's).
    assert loaded.tokenizer.convert_ids_to_tokens(stop_token_ids(loaded)) == ["</s>", "<|im_end|>", "<|end|>"]


@pytest.mark.parametrize("architecture", ["llama", "phi3", "phi4mini"])
def test_stops_at_the_end_of_turn_token_not_only_at_eos(tmp_path, architecture):
    loaded = fresh_model(tmp_path, architecture)
    turn_end = "<|im_end|>" if architecture == "llama" else "<|end|>"
    assert loaded.tokenizer.eos_token == "</s>"  # so stopping proves the end-of-turn token is used
    bias_output_towards(loaded, turn_end)
    generation = stream_chat(loaded, QUESTION, max_new_tokens=20)
    assert list(generation) == []
    assert generation.stats.stopped_by == "end of turn"
    assert generation.stats.new_tokens == 1


@pytest.mark.parametrize("architecture", ["llama", "phi3"])
def test_streams_pieces_until_max_new_tokens(tmp_path, architecture):
    loaded = fresh_model(tmp_path, architecture)
    bias_output_towards(loaded, "hello")
    generation = stream_chat(loaded, QUESTION, max_new_tokens=6)
    pieces = list(generation)
    assert len(pieces) >= 2  # streamed, not one block at the end
    assert "".join(pieces) == generation.text
    assert generation.text.split() == ["hello"] * 6
    stats = generation.stats
    assert (stats.new_tokens, stats.stopped_by) == (6, "max new tokens")
    assert stats.prompt_tokens == len(chat_prompt_ids(loaded, QUESTION))
    assert stats.time_to_first_token is not None and stats.seconds >= stats.time_to_first_token
    assert stats.tokens_per_second > 0


def test_sampling_settings_are_accepted(tiny_llama):
    generation = stream_chat(load_model(tiny_llama), QUESTION, max_new_tokens=5, temperature=0.9, top_p=0.8)
    list(generation)
    assert generation.stats.new_tokens == 5


def test_model_is_loaded_once_per_process(tiny_llama):
    assert load_model(tiny_llama) is load_model(tiny_llama)
    loaded = load_model(tiny_llama)
    from core.models.device import choose_device

    assert (loaded.device, loaded.dtype) == choose_device()
    assert loaded.memory_bytes > 0 and loaded.context_window == 512


def make_lora(base_folder: str, target: str, seed: int) -> str:
    """A real PEFT LoRA adapter for `base_folder` with non-zero weights, saved to `target`."""
    from peft import LoraConfig, get_peft_model
    from transformers import AutoModelForCausalLM

    torch.manual_seed(seed)
    model = AutoModelForCausalLM.from_pretrained(base_folder)
    peft_model = get_peft_model(model, LoraConfig(r=4, lora_alpha=8, target_modules="all-linear"))
    for name, parameter in peft_model.named_parameters():
        if "lora_B" in name:
            parameter.data.normal_(0, 0.5)  # LoRA starts as a no-op; make it change the output
    peft_model.save_pretrained(target)
    return target


def greedy(loaded, adapter, path=None) -> str:
    generation = stream_chat(loaded, QUESTION, max_new_tokens=8, adapter=adapter, adapter_path=path)
    list(generation)
    return generation.text


def test_adapters_switch_on_one_base_model(tmp_path):
    base_folder = str(build_tiny_model(tmp_path / "base", "llama"))
    loaded = load_model(base_folder)
    before = greedy(loaded, NO_ADAPTER)
    first = make_lora(base_folder, str(tmp_path / "first"), seed=1)
    second = make_lora(base_folder, str(tmp_path / "second"), seed=2)

    with_first = greedy(loaded, "first", tmp_path / "first")
    with_second = greedy(loaded, "second", tmp_path / "second")
    assert with_first != before and with_second != with_first
    assert greedy(loaded, NO_ADAPTER) == before  # "none" is the same loaded base weights
    assert greedy(loaded, "first") == with_first  # switching back needs no reload
    assert set(loaded.adapters) == {"first", "second"} and first and second
    assert load_model(base_folder) is loaded


def test_adapter_for_another_base_model_is_refused(tmp_path, tiny_phi3):
    loaded = fresh_model(tmp_path, "llama")
    adapter = make_lora(tiny_phi3, str(tmp_path / "phi3-adapter"), seed=3)
    with pytest.raises(AdapterError, match="was trained on .*tiny-phi3.*but the loaded model is"):
        use_adapter(loaded, "phi3-adapter", tmp_path / "phi3-adapter")
    assert adapter


def test_missing_and_corrupt_models_give_clear_messages(tmp_path):
    with pytest.raises(ModelNotAvailable, match="not on this machine, and models are never downloaded"):
        load_model("no-such-org/no-such-model")
    empty = tmp_path / "empty-folder"
    empty.mkdir()
    with pytest.raises(ModelNotAvailable, match="has no config.json"):
        load_model(str(empty))
    corrupt = tmp_path / "corrupt"
    shutil.copytree(build_tiny_model(tmp_path / "good", "llama"), corrupt)
    (corrupt / "model.safetensors").write_bytes(b"not weights")
    with pytest.raises(ModelNotAvailable, match="could not be loaded .* incomplete or corrupt"):
        load_model(str(corrupt))
    (corrupt / "config.json").write_text(json.dumps({"model_type": "no-such-architecture"}))
    with pytest.raises(ModelNotAvailable):
        load_model(str(corrupt))


def test_abandoned_stream_frees_the_model(tmp_path):
    loaded = fresh_model(tmp_path, "llama")
    bias_output_towards(loaded, "hello")
    generation = stream_chat(loaded, QUESTION, max_new_tokens=5000)
    stream = iter(generation)
    next(stream)
    stream.close()  # the reader goes away after the first piece
    assert loaded.lock.acquire(timeout=10), "generation kept the model after its reader left"
    loaded.lock.release()
