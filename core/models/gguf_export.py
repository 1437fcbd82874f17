"""An adapter merged into its base model and written as one GGUF file, the format Ollama and
llama.cpp run. It runs as a merge job (kind "merge" with the `gguf` parameter: one merge or export
per adapter at a time, and no job kind of its own).

The merge is core.models.adapters.merge_adapter's (full precision, into a folder beside the output
that is removed afterwards); the file is written with the `gguf` package the way llama.cpp's
convert_hf_to_gguf.py writes these architectures:
- llama (SmolLM2, Llama 2 and others without rope scaling) and phi3 (Phi-3-mini-4k). Others are
  refused, and so are rope scaling (Llama 3.1+, Phi-3.5-mini's and the 128k models' longrope) and
  partial rotary (Phi-4-mini): transformers' GGUF loader, our check that a file is right, does
  not read those back.
- the tokenizer as llama.cpp's "gpt2" (byte-level BPE: tokens, merges, token types, special ids,
  chat template) or "llama" (sentencepiece-style BPE with byte fallback, as Phi-3's), whose text
  splitting llama.cpp knows by name;
- llama's Q and K projections permuted as llama.cpp's rotary embedding wants them;
- types: f16, q8_0, or q4_0 (the 4-bit type the installed gguf package can quantize in Python; it
  has no q4_K quantizer). Norms stay f32; with q4_0 the token embedding and output stay q8_0, as
  llama.cpp keeps them in more bits; a matrix whose rows are not whole 32-value blocks stays f16.
The merged model and the file are written beside the destination and the file renamed into place,
so no half-written file is ever at the path a user gave; what a killed export left there the next
export to the same path removes. Tensors are written one at a time (a model never sits whole in
memory twice); the merged float32 folder needs disk space of about 4 bytes per parameter.
"""

from __future__ import annotations

import glob
import json
import os
import re
import shutil
import uuid
from dataclasses import dataclass
from pathlib import Path

from core.config import Settings
from core.db import Database
from core.errors import UserError
from core.jobs.process import JobContext
from core.jobs.queue import Job, create_job
from core.models.adapters import AdapterError, list_adapters, merge_adapter
from core.models.merge_job import KIND, MergeParams
from core.models.registry import BUNDLED_MODEL, check_model_available, models_dir, resolve_model_path

TYPES = ("f16", "q8_0", "q4_0")
ARCHITECTURES = {"llama": "llama", "phi3": "phi3"}  # transformers model_type -> GGUF architecture
SUPPORTED_TEXT = "llama (SmolLM2, Llama 2, others without rope scaling) and phi3 (Phi-3-mini-4k)"


class GGUFExportError(UserError):
    """A model, tokenizer or output that cannot be exported to GGUF; the message says why."""


# --- the job ------------------------------------------------------------------------------------


def default_output(adapter: str, quant_type: str, settings: Settings | None = None) -> Path:
    """Where an export goes when no path is named: the app's own folder, replaced on the next export."""
    return models_dir(settings) / "gguf" / f"{adapter}-{quant_type}.gguf"


def _user_output(adapter: str, quant_type: str, output: str | Path) -> Path:
    """The file a named output means: a path ending in .gguf, or a folder to put the default name in.
    An existing file is refused: an export never overwrites a user's file."""
    path = Path(output).expanduser().resolve()
    if path.is_dir():
        path = path / f"{adapter}-{quant_type}.gguf"
    elif path.suffix.lower() != ".gguf":
        raise GGUFExportError(f"{path} does not end in .gguf: name the file (model.gguf) or an existing folder.")
    if path.exists():
        raise GGUFExportError(f"{path} already exists; choose another file name or remove it first.")
    if not path.parent.is_dir():
        raise GGUFExportError(f"The folder {path.parent} does not exist.")
    return path


def submit_gguf_export(db: Database, adapter: str, quant_type: str = "q4_0", output: str | Path | None = None,
                       settings: Settings | None = None) -> Job:
    """Check the adapter, its base model's architecture, the type and the output, then queue the export
    (a merge job whose `gguf` names the type; `output` a file, None: <models dir>/gguf/<adapter>-<type>.gguf)."""
    if quant_type not in TYPES:
        raise GGUFExportError(f"Unknown GGUF type {quant_type!r}: one of {', '.join(TYPES)}.")
    info = {a.name: a for a in list_adapters(db)}.get(adapter)
    if info is None:
        known = ", ".join(a.name for a in list_adapters(db)) or "none yet (fine-tune one first)"
        raise AdapterError(f"No adapter named {adapter!r}. Available: {known}.")
    if not info.base_model:
        raise AdapterError(f"Adapter {adapter!r} does not name its base model, so there is nothing to merge it into.")
    check_model_available(info.base_model, settings)
    if info.base_model != BUNDLED_MODEL:  # the bundled one is llama with a byte-level BPE; resolving it would convert it here
        check_exportable(resolve_model_path(info.base_model, settings))
    path = str(_user_output(adapter, quant_type, output)) if output is not None else None
    params = MergeParams(adapter=adapter, output=path, gguf=quant_type)
    return create_job(db, kind=KIND, params=params, title=f"Export {adapter} on {info.base_model} as GGUF ({quant_type})",
                      unique_key="adapter")


def run_gguf_export(context: JobContext, p: MergeParams) -> dict:
    """The merge job's entry point when it exports a GGUF: merge, write the file, name it."""
    path = export_gguf(context.db, p.adapter, p.gguf, Path(p.output) if p.output else None, settings=context.settings,
                       token=str(context.job.id))
    message = f"GGUF ({p.gguf}) saved in {path} ({path.stat().st_size / 1e6:.1f} MB)."
    print(message, flush=True)
    return {"adapter": p.adapter, "gguf": p.gguf, "output": str(path), "size_bytes": path.stat().st_size, "message": message}


def export_gguf(db: Database, adapter: str, quant_type: str, output: Path | None = None, *,
                settings: Settings | None = None, token: str | None = None) -> Path:
    """Merge `adapter` into its base model in a folder beside the output, write the GGUF file there,
    and move it into place. Returns the file's path."""
    if quant_type not in TYPES:
        raise GGUFExportError(f"Unknown GGUF type {quant_type!r}: one of {', '.join(TYPES)}.")
    target = _user_output(adapter, quant_type, output) if output is not None else default_output(adapter, quant_type, settings)
    target.parent.mkdir(parents=True, exist_ok=True)
    token = token or uuid.uuid4().hex[:12]
    for stage in ("merged", "partial"):  # what a killed export to this path left
        for leftover in target.parent.glob(f".{glob.escape(target.name)}.{stage}-*"):
            shutil.rmtree(leftover, ignore_errors=True) if leftover.is_dir() else leftover.unlink(missing_ok=True)
    merged = target.with_name(f".{target.name}.merged-{token}")
    partial = target.with_name(f".{target.name}.partial-{token}")
    try:
        print(f"Merging adapter {adapter!r} into its base model (full precision).", flush=True)
        info = merge_adapter(db, adapter, merged, settings)
        print(f"Writing the GGUF file ({quant_type}).", flush=True)
        write_gguf(merged, partial, quant_type, name=f"{info.base_model} + {adapter}",
                   pre_tokenizer="smollm" if info.base_model == BUNDLED_MODEL else None)
        with open(partial, "rb") as file:
            os.fsync(file.fileno())
        if output is None:
            os.replace(partial, target)  # the app's own file: the newer export replaces it
        else:
            try:
                os.link(partial, target)  # fails if a file appeared there meanwhile: never overwrite a user's file
            except FileExistsError:
                raise GGUFExportError(f"{target} appeared while the export ran; the export was not saved.") from None
            except OSError:  # a filesystem without hard links
                if target.exists():
                    raise GGUFExportError(f"{target} appeared while the export ran; the export was not saved.") from None
                os.replace(partial, target)
    finally:
        shutil.rmtree(merged, ignore_errors=True)
        partial.unlink(missing_ok=True)
    return target


# --- the file -----------------------------------------------------------------------------------


@dataclass(frozen=True)
class Vocabulary:
    model: str  # "gpt2" or "llama", llama.cpp's tokenizer.ggml.model
    pre: str | None  # gpt2: how text is split before the merges (tokenizer.ggml.pre)
    tokens: list[str]
    types: list[int]
    merges: list[str]
    scores: list[float] | None


def check_architecture(config: dict) -> str:
    """The GGUF architecture for a transformers config, or a clear refusal."""
    model_type = config.get("model_type")
    arch = ARCHITECTURES.get(model_type)
    if arch is None:
        raise GGUFExportError(f"GGUF export supports {SUPPORTED_TEXT}; this model's architecture is {model_type!r}. "
                              "Merge it (adapters merge) and convert it with llama.cpp's convert_hf_to_gguf.py instead.")
    rope = config.get("rope_parameters") or config.get("rope_scaling") or {}
    if rope.get("rope_type", rope.get("type", "default")) not in ("default", None):
        raise GGUFExportError(f"This {model_type} model uses {rope.get('rope_type') or rope.get('type')!r} rope scaling, "
                              "which this GGUF export does not write; use llama.cpp's convert_hf_to_gguf.py.")
    if config.get("partial_rotary_factor", 1.0) != 1.0:
        raise GGUFExportError("This model rotates only part of each attention head (Phi-4-mini does), which this GGUF "
                              "export does not write; use llama.cpp's convert_hf_to_gguf.py.")
    if config.get("attention_bias") or config.get("mlp_bias"):
        raise GGUFExportError("This model has bias terms in its attention or MLP, which this GGUF export does not write.")
    return arch


def check_exportable(model_folder: Path) -> str:
    """Refuse a model folder whose architecture or tokenizer the export cannot write; its GGUF architecture."""
    config = json.loads((Path(model_folder) / "config.json").read_text())
    arch = check_architecture(config)
    read_vocabulary(Path(model_folder), config)
    return arch


def write_gguf(model_folder: Path, path: Path, quant_type: str = "f16", *, name: str | None = None,
               pre_tokenizer: str | None = None) -> Path:
    """Write the transformers model in `model_folder` (safetensors, tokenizer) as one GGUF file at
    `path`. `pre_tokenizer` names llama.cpp's text splitting when the tokenizer files do not show it."""
    import gguf

    model_folder = Path(model_folder)
    config = json.loads((model_folder / "config.json").read_text())
    arch = check_architecture(config)
    if quant_type not in TYPES:
        raise GGUFExportError(f"Unknown GGUF type {quant_type!r}: one of {', '.join(TYPES)}.")
    vocab = read_vocabulary(model_folder, config, pre_tokenizer)
    writer = gguf.GGUFWriter(path, arch)
    try:
        _write_hyperparameters(writer, arch, config, name or model_folder.name, quant_type)
        _write_tokenizer(writer, model_folder, config, vocab)
        plan = plan_tensors(arch, config, model_folder, quant_type)
        for tensor in plan:
            writer.add_tensor_info(tensor.name, *tensor.stored_as(), raw_dtype=tensor.kind)
        writer.write_header_to_file()
        writer.write_kv_data_to_file()
        writer.write_ti_data_to_file()
        for tensor in plan:  # one at a time: a model never sits whole in memory
            writer.write_tensor_data(tensor.packed(arch, config))
    finally:
        writer.close()
    return Path(path)


def _write_hyperparameters(writer, arch: str, config: dict, name: str, quant_type: str) -> None:
    import gguf

    heads = config["num_attention_heads"]
    hidden = config["hidden_size"]
    rope = config.get("rope_parameters") or {}
    writer.add_name(name)
    writer.add_context_length(config["max_position_embeddings"])
    writer.add_embedding_length(hidden)
    writer.add_block_count(config["num_hidden_layers"])
    writer.add_feed_forward_length(config["intermediate_size"])
    writer.add_head_count(heads)
    writer.add_head_count_kv(config.get("num_key_value_heads") or heads)
    writer.add_rope_freq_base(float(rope.get("rope_theta", config.get("rope_theta", 10000.0))))
    writer.add_layer_norm_rms_eps(float(config["rms_norm_eps"]))
    writer.add_vocab_size(config["vocab_size"])
    writer.add_rope_dimension_count(config.get("head_dim") or hidden // heads)
    if arch == "phi3":
        writer.add_rope_scaling_orig_ctx_len(config.get("original_max_position_embeddings") or config["max_position_embeddings"])
        # llama.cpp refuses a phi3 file without a window; none (None) is one as long as the context
        writer.add_sliding_window(config.get("sliding_window") or config["max_position_embeddings"])
    file_types = {"f16": gguf.LlamaFileType.MOSTLY_F16, "q8_0": gguf.LlamaFileType.MOSTLY_Q8_0,
                  "q4_0": gguf.LlamaFileType.MOSTLY_Q4_0}
    writer.add_file_type(file_types[quant_type])
    if quant_type != "f16":
        writer.add_quantization_version(gguf.GGML_QUANT_VERSION)


# -- tokenizer


# Text splitting llama.cpp knows by name (tokenizer.ggml.pre), by the regex a tokenizer.json splits with.
def _known_splits() -> dict[str, str]:
    try:  # transformers' table of them (an internal module: without it, only the shapes below are known)
        from transformers.integrations.gguf.gguf_tokenizer_mapping import GGUF_PRE_TOKENIZER_SPLITS
    except ImportError:
        return {}
    names = {}
    for pre, regex in GGUF_PRE_TOKENIZER_SPLITS.items():
        names.setdefault(regex, pre)
    return names


def _pre_tokenizer_name(pre: dict | None) -> str | None:
    """llama.cpp's name for a byte-level tokenizer's text splitting, or None when it is not one it knows."""
    if not pre:
        return None
    steps = pre["pretokenizers"] if pre.get("type") == "Sequence" else [pre]
    kinds = [step.get("type") for step in steps]
    if kinds == ["ByteLevel"] and steps[0].get("use_regex", True):
        return "gpt-2"
    if kinds == ["Digits", "ByteLevel"] and steps[0].get("individual_digits") and steps[1].get("use_regex", True):
        return "smollm"
    if kinds == ["Split", "ByteLevel"] and not steps[1].get("use_regex", True):
        return _known_splits().get((steps[0].get("pattern") or {}).get("Regex"))
    return None


def read_vocabulary(model_folder: Path, config: dict, pre_tokenizer: str | None = None) -> Vocabulary:
    """The tokenizer as llama.cpp stores it, from the folder's tokenizer.json."""
    tokenizer_file = model_folder / "tokenizer.json"
    if not tokenizer_file.is_file():
        raise GGUFExportError(f"{model_folder} has no tokenizer.json (a fast tokenizer), which the GGUF export reads.")
    spec = json.loads(tokenizer_file.read_text())
    model = spec.get("model") or {}
    if model.get("type") != "BPE":
        raise GGUFExportError(f"The model's tokenizer is {model.get('type')!r}; GGUF export writes BPE tokenizers only "
                              "(byte-level as SmolLM2's and Llama 3's, or sentencepiece-style as Phi-3's).")
    added = {t["id"]: t for t in spec.get("added_tokens") or []}
    by_id = {index: token for token, index in model["vocab"].items()} | {i: t["content"] for i, t in added.items()}
    size = config["vocab_size"]
    if max(by_id) >= size:
        raise GGUFExportError(f"The tokenizer has token ids up to {max(by_id)} but the model only {size} embeddings.")
    merges = [m if isinstance(m, str) else " ".join(m) for m in model.get("merges") or []]
    byte_fallback = bool(model.get("byte_fallback"))
    tokens, types = [], []
    for index in range(size):
        token = by_id.get(index)
        if token is None:  # embeddings past the tokenizer (padded vocabularies), as llama.cpp names them
            tokens.append(f"[PAD{index}]")
            types.append(5)  # UNUSED
        elif index in added:
            tokens.append(token)
            types.append(3 if added[index].get("special") else 4)  # CONTROL, USER_DEFINED
        elif byte_fallback and re.fullmatch(r"<0x[0-9A-F]{2}>", token):
            tokens.append(token)
            types.append(6)  # BYTE
        else:
            tokens.append(token)
            types.append(1)  # NORMAL
    if byte_fallback:  # sentencepiece-style: llama.cpp merges the pair whose result scores highest
        unk = model.get("unk_token")
        types = [2 if t == unk else kind for t, kind in zip(tokens, types, strict=True)]
        scores = [0.0 if kind != 1 else -float(index) for index, kind in enumerate(types)]
        return Vocabulary("llama", None, tokens, types, merges, scores)
    pre = pre_tokenizer or _pre_tokenizer_name(spec.get("pre_tokenizer"))
    if pre is None or spec.get("decoder", {}).get("type") != "ByteLevel":
        raise GGUFExportError("The model's tokenizer splits text in a way this GGUF export cannot name for llama.cpp "
                              "(it knows byte-level BPE tokenizers such as GPT-2's, SmolLM2's, Llama 3's, Qwen2's).")
    return Vocabulary("gpt2", pre, tokens, types, merges, None)


def _write_tokenizer(writer, model_folder: Path, config: dict, vocab: Vocabulary) -> None:
    from transformers import AutoTokenizer

    tokenizer = AutoTokenizer.from_pretrained(model_folder)
    writer.add_tokenizer_model(vocab.model)
    if vocab.pre:
        writer.add_tokenizer_pre(vocab.pre)
    writer.add_token_list(vocab.tokens)
    writer.add_token_types(vocab.types)
    if vocab.scores is not None:
        writer.add_token_scores(vocab.scores)
    writer.add_token_merges(vocab.merges)
    ids = {"bos": tokenizer.bos_token_id, "eos": tokenizer.eos_token_id, "unk": tokenizer.unk_token_id,
           "pad": tokenizer.pad_token_id}
    ids = {key: value if value is not None else config.get(f"{key}_token_id") for key, value in ids.items()}
    for key, add in (("bos", writer.add_bos_token_id), ("eos", writer.add_eos_token_id),
                     ("unk", writer.add_unk_token_id), ("pad", writer.add_pad_token_id)):
        if isinstance(ids[key], int):
            add(ids[key])
    probe = tokenizer("a")["input_ids"]  # does the tokenizer put BOS/EOS around a text itself?
    writer.add_add_bos_token(bool(probe) and probe[0] == ids["bos"] and ids["bos"] is not None)
    writer.add_add_eos_token(len(probe) > 1 and probe[-1] == ids["eos"] and ids["eos"] is not None)
    if vocab.model == "gpt2":
        writer.add_add_space_prefix(False)
    if isinstance(tokenizer.chat_template, str):
        writer.add_chat_template(tokenizer.chat_template)


# -- tensors


def permute_for_rope(weights, heads: int):
    """llama.cpp's order of a Q or K projection's rows (convert_hf_to_gguf.py's LlamaModel.permute):
    per head, the two rotated halves interleaved."""
    return (weights.reshape(heads, 2, weights.shape[0] // heads // 2, *weights.shape[1:])
            .swapaxes(1, 2).reshape(weights.shape))


def tensor_type(gguf_name: str, shape: tuple[int, ...], quant_type: str):
    """The GGML type of one tensor: norms f32; with q4_0 the embedding and output q8_0; rows that are
    not whole quant blocks f16 (as llama.cpp does)."""
    from gguf import GGML_QUANT_SIZES
    from gguf import GGMLQuantizationType as T

    if len(shape) < 2:
        return T.F32
    wanted = {"f16": T.F16, "q8_0": T.Q8_0, "q4_0": T.Q4_0}[quant_type]
    if wanted == T.Q4_0 and gguf_name in ("token_embd.weight", "output.weight"):
        wanted = T.Q8_0
    if wanted != T.F16 and shape[-1] % GGML_QUANT_SIZES[wanted][0]:
        return T.F16
    return wanted


@dataclass(frozen=True)
class PlannedTensor:
    key: str  # its name in the safetensors file
    file: Path
    name: str  # its GGUF name
    kind: object  # gguf.GGMLQuantizationType
    shape: tuple[int, ...]  # transformers' shape

    def stored_as(self) -> tuple[tuple[int, ...], object, int]:
        """Shape, numpy dtype and size of the tensor as written (a quantized one as rows of bytes)."""
        import numpy as np
        from gguf import GGMLQuantizationType as T
        from gguf.quants import quant_shape_to_byte_shape

        if self.kind in (T.F32, T.F16):
            dtype = np.dtype(np.float32 if self.kind == T.F32 else np.float16)
            return self.shape, dtype, int(np.prod(self.shape)) * dtype.itemsize
        shape = quant_shape_to_byte_shape(self.shape, self.kind)
        return shape, np.dtype(np.uint8), int(np.prod(shape))

    def packed(self, arch: str, config: dict):
        """The tensor read, put in llama.cpp's row order, and quantized."""
        import numpy as np
        from gguf.quants import quantize
        from safetensors import safe_open

        with safe_open(self.file, framework="pt") as weights:
            data = weights.get_tensor(self.key).float().numpy()
        if arch == "llama" and self.name.endswith("attn_q.weight"):
            data = permute_for_rope(data, config["num_attention_heads"])
        elif arch == "llama" and self.name.endswith("attn_k.weight"):
            data = permute_for_rope(data, config.get("num_key_value_heads") or config["num_attention_heads"])
        return quantize(np.ascontiguousarray(data), self.kind)


def plan_tensors(arch: str, config: dict, model_folder: Path, quant_type: str) -> list[PlannedTensor]:
    """Every tensor the file gets, with its GGUF name and type, read from the safetensors headers only."""
    import gguf
    from safetensors import safe_open

    names = gguf.get_tensor_name_map(gguf.MODEL_ARCH.LLAMA if arch == "llama" else gguf.MODEL_ARCH.PHI3,
                                     config["num_hidden_layers"])
    files = sorted(model_folder.glob("*.safetensors"))
    if not files:
        raise GGUFExportError(f"{model_folder} holds no safetensors weights.")
    shapes: dict[str, tuple[Path, tuple[int, ...]]] = {}
    for file in files:
        with safe_open(file, framework="pt") as weights:
            shapes |= {key: (file, tuple(weights.get_slice(key).get_shape())) for key in weights.keys()}  # noqa: SIM118
    tied = config.get("tie_word_embeddings", False)
    embedding = "model.embed_tokens.weight"
    if tied and embedding not in shapes and "lm_head.weight" in shapes:
        embedding = "lm_head.weight"  # a tied pair saved under the head's name (the bundled model's folder)
    if embedding not in shapes:
        raise GGUFExportError(f"{model_folder} has no token embedding (model.embed_tokens.weight) in its weights.")
    plan = []
    for key, (file, shape) in shapes.items():
        if key.endswith("rotary_emb.inv_freq") or (tied and key == "lm_head.weight" and key != embedding):
            continue  # llama.cpp computes the rotary frequencies, and uses the embedding when there is no output tensor
        name = "token_embd.weight" if key == embedding else names.get_name(key, try_suffixes=(".weight", ".bias"))
        if name is None:
            raise GGUFExportError(f"No GGUF name for the {arch} tensor {key!r}: this model has parts the export does not know.")
        plan.append(PlannedTensor(key, file, name, tensor_type(name, shape, quant_type), shape))
    return plan
