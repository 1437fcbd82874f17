"""GGUF export of a merged adapter (`adapters export-gguf`): the file that Ollama and llama.cpp run.
No llama.cpp here, so transformers' own GGUF loader reads each file back: it reverses llama.cpp's
Q/K permutation and rebuilds the tokenizer from the metadata, so an f16 file that answers exactly
like the merged model (weights rounded to f16) shows the weights, their order and the
hyperparameters are right. Tiny random Llama and Phi-3 models with a tiny byte-level BPE tokenizer
(the shape of SmolLM2's), and a real LoRA adapter that changes the answers."""

from __future__ import annotations

import json
from pathlib import Path

import numpy as np
import pytest
import streamlit as st
import torch
from gguf import GGMLQuantizationType, GGUFReader
from gguf.quants import dequantize
from sqlalchemy import text
from streamlit.testing.v1 import AppTest
from tiny_models import CHATML, PHI3, SPECIAL, WORDS, build_tiny_adapter, build_tiny_model
from training_helpers import wait_for

from core.cli import build_parser, main
from core.jobs.queue import cancel_job, get_job, job_log_tail, list_jobs
from core.jobs.worker import run_worker
from core.models.adapters import AdapterError, import_adapter
from core.models.gguf_export import (
    GGUFExportError,
    check_architecture,
    export_gguf,
    submit_gguf_export,
    tensor_type,
    write_gguf,
)
from core.models.merge_job import MergeParams
from core.models.registry import models_dir

PROMPT = [{"role": "user", "content": "when does the relief valve open?"}]


def bpe_tokenizer(chat_template: str):
    """A byte-level BPE tokenizer (GPT-2's text splitting) learned from the tiny models' words."""
    from tokenizers import Tokenizer, decoders, models, pre_tokenizers, trainers
    from transformers import PreTrainedTokenizerFast

    backend = Tokenizer(models.BPE())
    backend.pre_tokenizer = pre_tokenizers.ByteLevel(add_prefix_space=False)
    backend.decoder = decoders.ByteLevel()
    trainer = trainers.BpeTrainer(vocab_size=400, special_tokens=SPECIAL, show_progress=False,
                                  initial_alphabet=pre_tokenizers.ByteLevel.alphabet())
    backend.train_from_iterator([" ".join(WORDS)] * 4 + ["Pump P-1 opens at 3.5 bar; replace every 2,000 hours."], trainer)
    tokenizer = PreTrainedTokenizerFast(tokenizer_object=backend, unk_token="<unk>", bos_token="<s>", eos_token="</s>",
                                        pad_token="<pad>", additional_special_tokens=SPECIAL[4:])
    tokenizer.chat_template = chat_template
    return tokenizer


def sentencepiece_style_tokenizer(chat_template: str):
    """A BPE with byte fallback that writes spaces as '▁', the shape of Phi-3's (and Llama 2's) tokenizer."""
    from tokenizers import Tokenizer, decoders, models, normalizers, pre_tokenizers, trainers
    from transformers import PreTrainedTokenizerFast

    learner = Tokenizer(models.BPE())
    learner.pre_tokenizer = pre_tokenizers.Metaspace(prepend_scheme="first")
    learner.train_from_iterator([" ".join(WORDS)] * 4, trainers.BpeTrainer(vocab_size=300, show_progress=False))
    learned = json.loads(learner.to_str())["model"]
    pieces = ["<unk>", "<s>", "</s>"] + [f"<0x{byte:02X}>" for byte in range(256)]
    pieces += [t for t in sorted(learned["vocab"], key=learned["vocab"].get) if t not in pieces]
    merges = [tuple(m) if isinstance(m, list) else tuple(m.split(" ")) for m in learned["merges"]]
    backend = Tokenizer(models.BPE({p: i for i, p in enumerate(pieces)}, merges, unk_token="<unk>", byte_fallback=True,
                                   fuse_unk=True))
    backend.normalizer = normalizers.Sequence([normalizers.Prepend("▁"), normalizers.Replace(" ", "▁")])
    backend.decoder = decoders.Sequence([decoders.Replace("▁", " "), decoders.ByteFallback(), decoders.Fuse(),
                                         decoders.Strip(" ", 1, 0)])
    tokenizer = PreTrainedTokenizerFast(tokenizer_object=backend, unk_token="<unk>", bos_token="<s>", eos_token="</s>",
                                        pad_token="<pad>", additional_special_tokens=SPECIAL[4:])
    tokenizer.chat_template = chat_template
    return tokenizer


def bpe_model(folder, architecture: str, hidden_size: int = 64):
    """A tiny model of `architecture` with a real model's kind of tokenizer (the tiny models' own is word-level):
    llama a byte-level BPE as SmolLM2, phi3 a sentencepiece-style BPE as Phi-3-mini."""
    from transformers import AutoModelForCausalLM

    build_tiny_model(folder, architecture, hidden_size=hidden_size)
    tokenizer = bpe_tokenizer(CHATML) if architecture == "llama" else sentencepiece_style_tokenizer(PHI3)
    model = AutoModelForCausalLM.from_pretrained(folder)
    torch.manual_seed(3)
    model.resize_token_embeddings(len(tokenizer), mean_resizing=False)
    for name in ("bos", "eos", "pad"):
        setattr(model.config, f"{name}_token_id", getattr(tokenizer, f"{name}_token_id"))
    model.save_pretrained(folder)
    tokenizer.save_pretrained(folder)
    return str(folder)


@pytest.fixture(scope="module")
def llama_adapter(db, tmp_path_factory):
    base = bpe_model(tmp_path_factory.mktemp("bpe-llama"), "llama")
    import_adapter(db, build_tiny_adapter(base, tmp_path_factory.mktemp("adapter") / "a"), "gguf-llama")
    return "gguf-llama", base


@pytest.fixture(scope="module")
def phi3_adapter(db, tmp_path_factory):
    base = bpe_model(tmp_path_factory.mktemp("bpe-phi3"), "phi3")
    import_adapter(db, build_tiny_adapter(base, tmp_path_factory.mktemp("adapter") / "a"), "gguf-phi3")
    return "gguf-phi3", base


@pytest.fixture
def clean_queue(db):
    """No job left queued or running by another test: a worker takes the oldest queued job."""
    with db.engine.begin() as connection:
        connection.execute(text("UPDATE jobs SET status = 'cancelled', owner = NULL WHERE status IN ('queued', 'running')"))
    return db


def merged_model(base: str, adapter_name: str, db, round_to_f16: bool = False):
    """The adapter merged into its base in transformers; with `round_to_f16`, the matrices rounded as an f16 file holds them."""
    from peft import PeftModel
    from transformers import AutoModelForCausalLM

    from core.models.adapters import find_adapter

    model = AutoModelForCausalLM.from_pretrained(base, dtype=torch.float32)
    model = PeftModel.from_pretrained(model, str(find_adapter(db, adapter_name).path)).merge_and_unload().eval()
    if round_to_f16:
        with torch.no_grad():
            for parameter in model.parameters():
                if parameter.dim() == 2:
                    parameter.copy_(parameter.half().float())
    return model


def gguf_model(path):
    from transformers import AutoModelForCausalLM

    return AutoModelForCausalLM.from_pretrained(path.parent, gguf_file=path.name, dtype=torch.float32).eval()


def prompt_ids(base: str) -> torch.Tensor:
    from transformers import AutoTokenizer

    tokenizer = AutoTokenizer.from_pretrained(base)
    return torch.tensor([tokenizer.apply_chat_template(PROMPT, add_generation_prompt=True, tokenize=True,
                                                        return_dict=True)["input_ids"]])


def greedy(model, ids: torch.Tensor, tokens: int = 12) -> list[int]:
    with torch.no_grad():
        out = model.generate(ids, attention_mask=torch.ones_like(ids), max_new_tokens=tokens, min_new_tokens=tokens,
                             do_sample=False, pad_token_id=0)
    return out[0, ids.shape[1]:].tolist()


def field(reader: GGUFReader, key: str):
    return reader.fields[key].contents()


def tensors(reader: GGUFReader) -> dict[str, object]:
    return {t.name: t for t in reader.tensors}


# --- f16: the same model, read back --------------------------------------------------------------


@pytest.mark.parametrize("fixture", ["llama_adapter", "phi3_adapter"])
def test_an_f16_file_answers_exactly_like_the_merged_model(db, tmp_path, request, fixture):
    name, base = request.getfixturevalue(fixture)
    path = export_gguf(db, name, "f16", tmp_path / "model.gguf")
    ids = prompt_ids(base)
    exported = gguf_model(path)
    rounded = merged_model(base, name, db, round_to_f16=True)
    with torch.no_grad():
        assert torch.allclose(exported(ids).logits, rounded(ids).logits, atol=1e-4)
    answer = greedy(exported, ids)
    assert answer == greedy(rounded, ids)
    with torch.no_grad():  # the adapter is in the file, not just the base model
        assert not torch.allclose(exported(ids).logits, base_model(base)(ids).logits, atol=1e-2)


def base_model(base: str):
    from transformers import AutoModelForCausalLM

    return AutoModelForCausalLM.from_pretrained(base, dtype=torch.float32).eval()


def test_the_file_describes_the_model_and_its_tokenizer_as_llama_cpp_reads_them(db, tmp_path, llama_adapter):
    from transformers import AutoTokenizer

    name, base = llama_adapter
    path = export_gguf(db, name, "f16", tmp_path / "model.gguf")
    reader = GGUFReader(path)
    tokenizer = AutoTokenizer.from_pretrained(base)
    assert field(reader, "general.architecture") == "llama"
    hyper = {key: field(reader, f"llama.{key}") for key in (
        "context_length", "embedding_length", "block_count", "feed_forward_length", "attention.head_count",
        "attention.head_count_kv", "vocab_size", "rope.dimension_count")}
    assert hyper == {"context_length": 512, "embedding_length": 64, "block_count": 2, "feed_forward_length": 128,
                     "attention.head_count": 4, "attention.head_count_kv": 2, "vocab_size": len(tokenizer),
                     "rope.dimension_count": 16}
    assert field(reader, "llama.rope.freq_base") == pytest.approx(10000.0)
    assert field(reader, "llama.attention.layer_norm_rms_epsilon") == pytest.approx(1e-6)
    assert field(reader, "tokenizer.ggml.model") == "gpt2" and field(reader, "tokenizer.ggml.pre") == "gpt-2"
    tokens = field(reader, "tokenizer.ggml.tokens")
    assert tokens == [tokenizer.convert_ids_to_tokens(i) for i in range(len(tokenizer))]
    types = field(reader, "tokenizer.ggml.token_type")
    assert [types[tokenizer.convert_tokens_to_ids(t)] for t in SPECIAL] == [3] * len(SPECIAL)  # CONTROL
    assert {types[i] for i in tokenizer(" pump seals", add_special_tokens=False)["input_ids"]} == {1}  # NORMAL
    learned = json.loads((Path(base) / "tokenizer.json").read_text())["model"]["merges"]
    assert field(reader, "tokenizer.ggml.merges") == [m if isinstance(m, str) else " ".join(m) for m in learned]
    assert field(reader, "tokenizer.ggml.bos_token_id") == tokenizer.bos_token_id
    assert field(reader, "tokenizer.ggml.eos_token_id") == tokenizer.eos_token_id
    assert field(reader, "tokenizer.ggml.padding_token_id") == tokenizer.pad_token_id
    assert field(reader, "tokenizer.chat_template") == CHATML
    by_name = tensors(reader)
    assert by_name["blk.0.attn_norm.weight"].tensor_type == GGMLQuantizationType.F32
    assert by_name["blk.1.attn_q.weight"].tensor_type == GGMLQuantizationType.F16
    assert "output.weight" in by_name and len(by_name) == 2 + 2 * 9 + 1
    # transformers rebuilds the same tokenizer from the metadata alone
    loaded = AutoTokenizer.from_pretrained(path.parent, gguf_file=path.name)
    text_ = tokenizer.apply_chat_template(PROMPT, add_generation_prompt=True, tokenize=False) + "Pump P-1, 3.5 bar!"
    assert loaded(text_, add_special_tokens=False)["input_ids"] == tokenizer(text_, add_special_tokens=False)["input_ids"]


def test_tied_embeddings_saved_under_the_heads_name_become_the_token_embedding(tmp_path_factory, tmp_path):
    """The bundled SmolLM2 folder holds its tied embedding as lm_head.weight alone (safetensors' save_model keeps one
    name of a shared tensor); llama.cpp wants it as token_embd.weight and no output tensor."""
    from safetensors import safe_open
    from safetensors.torch import save_model
    from transformers import AutoModelForCausalLM

    folder = Path(bpe_model(tmp_path_factory.mktemp("bpe-llama-tied"), "llama"))
    model = AutoModelForCausalLM.from_pretrained(folder, tie_word_embeddings=True)
    model.tie_weights()
    (folder / "model.safetensors").unlink()
    save_model(model, str(folder / "model.safetensors"), metadata={"format": "pt"})
    model.config.save_pretrained(folder)
    with safe_open(folder / "model.safetensors", framework="pt") as weights:
        assert list(weights.keys()).count("model.embed_tokens.weight") + list(weights.keys()).count("lm_head.weight") == 1
    path = write_gguf(folder, tmp_path / "tied.gguf", "f16")
    by_name = tensors(GGUFReader(path))
    assert "token_embd.weight" in by_name and "output.weight" not in by_name
    ids = prompt_ids(str(folder))
    rounded = AutoModelForCausalLM.from_pretrained(folder, dtype=torch.float32).eval()
    with torch.no_grad():
        for parameter in rounded.parameters():
            if parameter.dim() == 2:
                parameter.copy_(parameter.half().float())
        assert torch.allclose(gguf_model(path)(ids).logits, rounded(ids).logits, atol=1e-4)


def test_the_llama_q_and_k_rows_are_in_llama_cpp_order(db, tmp_path, llama_adapter):
    """Unpermuted, a file would still load elsewhere but answer wrongly: its Q rows differ from the merged weights'."""
    name, base = llama_adapter
    path = export_gguf(db, name, "f16", tmp_path / "model.gguf")
    q = tensors(GGUFReader(path))["blk.0.attn_q.weight"].data.astype(np.float32)
    merged = merged_model(base, name, db).model.layers[0].self_attn.q_proj.weight.detach().half().float().numpy()
    assert q.shape == merged.shape and not np.array_equal(q, merged)
    heads = 4
    order = merged.reshape(heads, 2, -1, merged.shape[1]).swapaxes(1, 2).reshape(merged.shape)
    assert np.array_equal(q, order)


def test_a_phi3_file_carries_a_sentencepiece_style_tokenizer_that_transformers_rebuilds(db, tmp_path, phi3_adapter):
    from transformers import AutoTokenizer

    name, base = phi3_adapter
    path = export_gguf(db, name, "f16", tmp_path / "phi3.gguf")
    reader = GGUFReader(path)
    tokenizer = AutoTokenizer.from_pretrained(base)
    assert field(reader, "general.architecture") == "phi3" and field(reader, "tokenizer.ggml.model") == "llama"
    assert "tokenizer.ggml.pre" not in reader.fields
    tokens, types = field(reader, "tokenizer.ggml.tokens"), field(reader, "tokenizer.ggml.token_type")
    assert tokens[3:259] == [f"<0x{byte:02X}>" for byte in range(256)] and set(types[3:259]) == {6}  # BYTE
    assert types[0] == 2 and types[tokenizer.convert_tokens_to_ids("<|end|>")] == 3  # UNKNOWN, CONTROL
    scores = field(reader, "tokenizer.ggml.scores")
    normal = [score for score, kind in zip(scores, types, strict=True) if kind == 1]
    assert normal == sorted(normal, reverse=True)  # earlier merges score higher: llama.cpp applies them first
    assert field(reader, "phi3.attention.head_count") == 4 and field(reader, "phi3.block_count") == 2
    assert field(reader, "phi3.attention.sliding_window") == 512  # llama.cpp refuses phi3 without one; none: the context
    assert field(reader, "tokenizer.chat_template") == PHI3
    loaded = AutoTokenizer.from_pretrained(path.parent, gguf_file=path.name)
    text_ = tokenizer.apply_chat_template(PROMPT, add_generation_prompt=True, tokenize=False) + "pump seals, 3 bar é"
    assert loaded(text_, add_special_tokens=False)["input_ids"] == tokenizer(text_, add_special_tokens=False)["input_ids"]


# --- 4-bit ---------------------------------------------------------------------------------------


@pytest.mark.parametrize("fixture", ["llama_adapter", "phi3_adapter"])
def test_a_q4_0_file_loads_answers_and_holds_the_weights_within_the_quantization_error(db, tmp_path, request, fixture):
    name, base = request.getfixturevalue(fixture)
    exact = GGUFReader(export_gguf(db, name, "f16", tmp_path / "f16.gguf"))
    path = export_gguf(db, name, "q4_0", tmp_path / "q4.gguf")
    reader = GGUFReader(path)
    arch = "llama" if fixture == "llama_adapter" else "phi3"
    assert field(reader, "general.architecture") == arch and field(reader, "general.file_type") == 2  # MOSTLY_Q4_0
    quantized = tensors(reader)
    originals = tensors(exact)
    assert quantized["blk.0.ffn_down.weight"].tensor_type == GGMLQuantizationType.Q4_0
    assert quantized["token_embd.weight"].tensor_type == GGMLQuantizationType.Q8_0  # kept in more bits, as llama.cpp does
    assert quantized["output_norm.weight"].tensor_type == GGMLQuantizationType.F32
    for tensor_name, tensor in quantized.items():
        original = originals[tensor_name].data.astype(np.float32)
        restored = dequantize(tensor.data, tensor.tensor_type).reshape(original.shape)
        bound = np.abs(original).max() / 8 if tensor.tensor_type == GGMLQuantizationType.Q4_0 else np.abs(original).max() / 100
        assert np.abs(restored - original).max() <= bound, tensor_name
    assert path.stat().st_size < 0.6 * (tmp_path / "f16.gguf").stat().st_size
    ids = prompt_ids(base)
    answer = greedy(gguf_model(path), ids)
    assert len(answer) == 12 and all(0 <= t < field(reader, f"{arch}.vocab_size") for t in answer)


def test_matrices_whose_rows_are_not_whole_blocks_stay_f16_as_llama_cpp_does(db, tmp_path_factory, tmp_path):
    base = bpe_model(tmp_path_factory.mktemp("bpe-llama-48"), "llama", hidden_size=48)  # 48 is not a multiple of 32
    import_adapter(db, build_tiny_adapter(base, tmp_path / "adapter"), "gguf-odd")
    path = export_gguf(db, "gguf-odd", "q4_0", tmp_path / "odd.gguf")
    by_name = tensors(GGUFReader(path))
    assert by_name["blk.0.attn_q.weight"].tensor_type == GGMLQuantizationType.F16  # rows of 48
    assert by_name["blk.0.ffn_down.weight"].tensor_type == GGMLQuantizationType.Q4_0  # rows of 96
    assert by_name["token_embd.weight"].tensor_type == GGMLQuantizationType.F16
    assert len(greedy(gguf_model(path), prompt_ids(base), tokens=4)) == 4


def test_tensor_types_per_kind_of_tensor():
    q4, q8, f16, f32 = (GGMLQuantizationType.Q4_0, GGMLQuantizationType.Q8_0, GGMLQuantizationType.F16,
                        GGMLQuantizationType.F32)
    assert tensor_type("blk.0.attn_q.weight", (64, 64), "q4_0") == q4
    assert tensor_type("blk.0.attn_q.weight", (64, 64), "q8_0") == q8
    assert tensor_type("blk.0.attn_q.weight", (64, 64), "f16") == f16
    assert tensor_type("blk.0.attn_q.weight", (64, 48), "q4_0") == f16
    assert tensor_type("output.weight", (300, 64), "q4_0") == q8
    assert tensor_type("blk.0.attn_norm.weight", (64,), "q4_0") == f32


# --- the job, the CLI, and bad input -------------------------------------------------------------


def test_an_export_job_writes_the_file_and_names_it_in_its_result(db, llama_adapter, tmp_path, clean_queue):
    name, _ = llama_adapter
    output = tmp_path / "out.gguf"
    (tmp_path / ".out.gguf.merged-99").mkdir()  # what an export killed by a power cut left
    (tmp_path / ".out.gguf.merged-99" / "model.safetensors").write_text("half")
    (tmp_path / ".out.gguf.partial-99").write_text("half")
    job = submit_gguf_export(db, name, "q8_0", output)
    assert job.kind == "merge" and job.params == {"adapter": name, "output": str(output), "gguf": "q8_0"}
    run_worker(db, once=True)
    job = get_job(db, job.id)
    assert job.status == "succeeded", "\n".join([f"{job.error}", *job_log_tail(db, job.id, 30)])
    assert job.result["output"] == str(output) and job.result["size_bytes"] == output.stat().st_size
    assert tensors(GGUFReader(output))["blk.0.attn_q.weight"].tensor_type == GGMLQuantizationType.Q8_0
    assert sorted(p.name for p in tmp_path.iterdir()) == ["out.gguf"]  # no merged folder or partial file, old or new


def test_the_default_output_is_the_apps_own_file_which_the_next_export_replaces(db, llama_adapter, settings):
    name, _ = llama_adapter
    first = export_gguf(db, name, "q8_0")
    assert first == models_dir(settings) / "gguf" / f"{name}-q8_0.gguf"
    assert export_gguf(db, name, "q8_0") == first and first.is_file()
    assert sorted(p.name for p in first.parent.iterdir() if name in p.name) == [first.name]


def test_the_cli_queues_an_export_with_a_type(db, llama_adapter, tmp_path, clean_queue, capsys):
    name, _ = llama_adapter
    assert main(["adapters", "export-gguf", name, "--type", "f16", "--output", str(tmp_path / "m.gguf"), "--no-wait"]) == 0
    job = list_jobs(db, 1, kind="merge")[0]
    assert job.params == {"adapter": name, "output": str(tmp_path / "m.gguf"), "gguf": "f16"}
    assert f"Queued job {job.id}" in capsys.readouterr().out
    cancel_job(db, job.id)
    assert build_parser().parse_args(["adapters", "export-gguf", "mine"]).type == "q4_0"
    with pytest.raises(SystemExit):
        build_parser().parse_args(["adapters", "export-gguf", "mine", "--type", "q4_K"])
    assert MergeParams(adapter="x").model_dump(mode="json") == {"adapter": "x", "output": None}  # plain merges as before


def test_bad_input_is_refused_before_a_job_is_queued(db, llama_adapter, tiny_phi4mini, tiny_llama, tmp_path, clean_queue):
    name, _ = llama_adapter
    (tmp_path / "taken.gguf").write_text("a user's file")
    with pytest.raises(AdapterError, match="No adapter named 'nope'. Available: .*gguf-llama"):
        submit_gguf_export(db, "nope")
    with pytest.raises(GGUFExportError, match="already exists"):
        submit_gguf_export(db, name, "q4_0", tmp_path / "taken.gguf")
    with pytest.raises(GGUFExportError, match="does not end in .gguf"):
        submit_gguf_export(db, name, "q4_0", tmp_path / "model.bin")
    with pytest.raises(GGUFExportError, match="Unknown GGUF type 'q4_K'"):
        submit_gguf_export(db, name, "q4_K")
    import_adapter(db, build_tiny_adapter(tiny_phi4mini, tmp_path / "phi4"), "gguf-phi4mini")
    with pytest.raises(GGUFExportError, match="rotates only part of each attention head"):
        submit_gguf_export(db, "gguf-phi4mini")
    import_adapter(db, build_tiny_adapter(tiny_llama, tmp_path / "wordlevel"), "gguf-wordlevel")
    with pytest.raises(GGUFExportError, match="tokenizer is 'WordLevel'"):
        submit_gguf_export(db, "gguf-wordlevel")
    assert (tmp_path / "taken.gguf").read_text() == "a user's file"
    with db.engine.connect() as connection:
        assert connection.execute(text("SELECT count(*) FROM jobs WHERE status = 'queued'")).scalar() == 0
    first = submit_gguf_export(db, name)
    with pytest.raises(Exception, match="already working on 'gguf-llama'"):
        submit_gguf_export(db, name, "f16")
    cancel_job(db, first.id)


@pytest.mark.parametrize(("config", "message"), [
    ({"model_type": "qwen2"}, "supports llama .* and phi3 .*'qwen2'"),
    ({"model_type": "llama", "rope_parameters": {"rope_type": "llama3", "rope_theta": 5e5}}, "'llama3' rope scaling"),
    ({"model_type": "phi3", "rope_scaling": {"type": "longrope"}}, "'longrope' rope scaling"),
    ({"model_type": "llama", "attention_bias": True}, "bias terms"),
])
def test_architectures_the_export_cannot_write_are_refused_with_the_reason(config, message):
    with pytest.raises(GGUFExportError, match=message):
        check_architecture(config)
    assert check_architecture({"model_type": "llama", "rope_parameters": {"rope_type": "default", "rope_theta": 1e4}}) == "llama"


# --- the Fine-tune page ---------------------------------------------------------------------------


def open_finetune_adapters() -> AppTest:
    st.cache_resource.clear()
    at = AppTest.from_file("../streamlit_app.py", default_timeout=120)
    at.run()
    at.session_state["ft_open_tab"] = "Adapters"
    at.switch_page("pages/finetune.py").run()
    assert not at.exception
    return at


def test_the_adapters_tab_exports_a_gguf_and_offers_it_for_download(db, llama_adapter, settings, clean_queue, stop_workers):
    name, _ = llama_adapter
    page = open_finetune_adapters()
    page.button(key=f"gguf_{name}").click().run()
    assert not page.exception and not page.error
    job = list_jobs(db, 1, kind="merge")[0]
    assert job.params == {"adapter": name, "output": None, "gguf": "q4_0"}
    wait_for(lambda: get_job(db, job.id).finished, timeout=300, message="the export job to finish")
    assert get_job(db, job.id).status == "succeeded", "\n".join(job_log_tail(db, job.id, 30))
    page = open_finetune_adapters()  # a restarted app finds the job and offers its file
    assert [d.proto.label for d in page.get("download_button")].count(f"Download {name}-q4_0.gguf") == 1
    assert (models_dir(settings) / "gguf" / f"{name}-q4_0.gguf").is_file()
