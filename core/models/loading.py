"""Load a causal LM once per process on the best device, and switch LoRA adapters on it.

Device and precision are chosen for the user (core.models.device): CUDA in bf16 (fp16 where bf16 is
missing), else the CPU in float32; 4-bit NF4 through bitsandbytes on request, imported only then.
A few models stay loaded (max_loaded_language_models); the least recently used one is dropped first,
and its memory is given back before the next one loads.
"""

from __future__ import annotations

import gc
import json
import sys
import threading
from collections import OrderedDict
from dataclasses import dataclass, field
from pathlib import Path

from core.config import Settings, get_settings
from core.documents.embeddings import bitsandbytes_deferred
from core.formatting import human_size
from core.models.adapters import AdapterError
from core.models.context import context_window
from core.models.device import choose_device, four_bit_config
from core.models.registry import ModelNotAvailable, resolve_model_path

NO_ADAPTER = "none"


@dataclass
class LoadedModel:
    model_id: str
    path: Path
    model: object  # a transformers PreTrainedModel, or a peft PeftModel once an adapter is attached
    tokenizer: object
    device: str
    dtype: str
    quantized_4bit: bool
    memory_bytes: int
    context_window: int
    adapters: dict[str, Path] = field(default_factory=dict)
    # generate() and adapter switches share the weights: one at a time per model.
    lock: threading.Lock = field(default_factory=threading.Lock, repr=False)

    @property
    def description(self) -> str:
        precision = "4-bit NF4" if self.quantized_4bit else self.dtype
        return f"{self.model_id} on {self.device} ({precision}, {human_size(self.memory_bytes)})"


def _load(model_id: str, path: Path, load_in_4bit: bool) -> LoadedModel:
    import torch
    from transformers import AutoModelForCausalLM, AutoTokenizer

    with bitsandbytes_deferred():  # generation and adapters import peft, which would import bitsandbytes
        import peft  # noqa: F401

    device, dtype_name = choose_device()
    dtype = getattr(torch, dtype_name)
    kwargs: dict = {"dtype": dtype}
    if load_in_4bit:
        kwargs["quantization_config"] = four_bit_config(dtype)
        kwargs["device_map"] = {"": device}
    try:
        tokenizer = AutoTokenizer.from_pretrained(path)
        model = AutoModelForCausalLM.from_pretrained(path, **kwargs)
    except Exception as error:  # loaders raise OSError, SafetensorError, KeyError...: all mean "cannot load"
        raise ModelNotAvailable(
            f"{model_id} could not be loaded from {path} ({type(error).__name__}: {str(error)[:300]}). "
            "The folder may be incomplete or corrupt: copy it again, or choose another model."
        ) from error
    if not load_in_4bit:
        model.to(device)
    model.eval()
    if tokenizer.chat_template is None:
        raise ModelNotAvailable(f"{model_id} has no chat template: choose an instruct/chat model.")
    return LoadedModel(
        model_id=model_id,
        path=path,
        model=model,
        tokenizer=tokenizer,
        device=device,
        dtype=dtype_name,
        quantized_4bit=load_in_4bit,
        memory_bytes=int(model.get_memory_footprint()),
        context_window=context_window(model.config, tokenizer),
    )


_lock = threading.Lock()
_loaded: OrderedDict[tuple[str, bool], LoadedModel] = OrderedDict()  # least recently used first


def load_model(model_id: str | None = None, *, load_in_4bit: bool | None = None, settings: Settings | None = None) -> LoadedModel:
    """One copy per process of each (model, 4-bit) pair; adapters attach to it instead of new copies.
    At most `max_loaded_language_models` stay loaded: the least recently used goes before another loads."""
    settings = settings or get_settings()
    model_id = model_id or settings.language_model
    four_bit = settings.load_in_4bit if load_in_4bit is None else load_in_4bit
    with _lock:
        key = (model_id, four_bit)
        if key in _loaded:
            _loaded.move_to_end(key)
            return _loaded[key]
        path = resolve_model_path(model_id, settings)  # a refused or missing model evicts nothing
        _evict(keep=settings.max_loaded_language_models - 1)
        _loaded[key] = _load(model_id, path, four_bit)
        return _loaded[key]


def register_loaded_model(loaded: LoadedModel, settings: Settings | None = None) -> None:
    """Make an in-memory model loadable by id (tests build tiny models without files)."""
    settings = settings or get_settings()
    with _lock:
        key = (loaded.model_id, loaded.quantized_4bit)
        _loaded.pop(key, None)
        _evict(keep=settings.max_loaded_language_models - 1)
        _loaded[key] = loaded


def _evict(keep: int) -> None:
    """Drop the least recently used models until `keep` are left, and give their memory back. A caller still
    generating with a dropped model keeps it alive until it is done."""
    if len(_loaded) <= keep:
        return
    while len(_loaded) > keep:
        _loaded.popitem(last=False)
    gc.collect()
    torch = sys.modules.get("torch")  # a model was loaded, so torch is; never import it just for this
    if torch is not None and torch.cuda.is_available():
        torch.cuda.empty_cache()


# --- adapters ---------------------------------------------------------------------------------


def adapter_base_model(adapter_path: Path) -> str | None:
    config = adapter_path / "adapter_config.json"
    if not config.is_file():
        raise AdapterError(f"{adapter_path} has no adapter_config.json: it is not a PEFT adapter folder.")
    return json.loads(config.read_text()).get("base_model_name_or_path")


def _same_base(adapter_base: str | None, loaded: LoadedModel) -> bool:
    if not adapter_base:
        return True
    names = {loaded.model_id, str(loaded.path), Path(loaded.model_id).name, loaded.path.name}
    return adapter_base in names or Path(adapter_base).name in names


def use_adapter(loaded: LoadedModel, name: str | None, path: Path | None = None) -> None:
    """Make `name` the active adapter (attaching it from `path` the first time), or none.

    Call with `loaded.lock` held: the switch changes the weights every caller sees."""
    from peft import PeftModel

    if not name or name == NO_ADAPTER:
        return
    if name in loaded.adapters and path is not None and Path(path) != loaded.adapters[name]:
        # The name now means other files (adapters are cached by content hash: retrained, new path):
        # drop the old weights instead of answering with them.
        if isinstance(loaded.model, PeftModel) and name in loaded.model.peft_config:
            loaded.model.delete_adapter(name)
        del loaded.adapters[name]
    if name not in loaded.adapters:
        if path is None:
            raise AdapterError(f"Adapter {name!r} is not known; give its folder.")
        base = adapter_base_model(path)
        if not _same_base(base, loaded):
            raise AdapterError(
                f"Adapter {name!r} was trained on {base}, but the loaded model is {loaded.model_id}. "
                "Load that base model, or pick an adapter trained on this one."
            )
        try:
            with bitsandbytes_deferred():  # peft imports bitsandbytes to wrap layers; only 4-bit layers need it
                if isinstance(loaded.model, PeftModel):
                    loaded.model.load_adapter(str(path), adapter_name=name)
                else:
                    loaded.model = PeftModel.from_pretrained(loaded.model, str(path), adapter_name=name)
        except (ValueError, RuntimeError, KeyError, OSError) as error:
            raise AdapterError(f"Adapter {name!r} does not fit {loaded.model_id}: {str(error)[:300]}") from error
        loaded.model.eval()
        loaded.adapters[name] = path
    loaded.model.set_adapter(name)
