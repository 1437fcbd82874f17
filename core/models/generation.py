"""Streaming generation through the model's own chat template, stopping at its end-of-turn token.

`stream_chat` returns a `Generation`: iterate it for text pieces as they are produced (the model
runs in a background thread); afterwards `.stats` holds the timings the pages show.
"""

from __future__ import annotations

import contextlib
import threading
import time
from collections.abc import Iterator
from dataclasses import dataclass
from pathlib import Path

from core.models.loading import NO_ADAPTER, LoadedModel, use_adapter
from core.models.repetition import loop_start

# End-of-turn markers of common chat templates (ChatML, Phi-3/4, Llama 3, Gemma).
END_OF_TURN_TOKENS = ("<|im_end|>", "<|end|>", "<|eot_id|>", "<end_of_turn>", "<|endoftext|>")


@dataclass
class GenerationStats:
    prompt_tokens: int = 0
    new_tokens: int = 0
    time_to_first_token: float | None = None
    seconds: float = 0.0
    stopped_by: str = ""  # "end of turn", "loop" (cut at its first repeat) or "max new tokens"

    @property
    def tokens_per_second(self) -> float:
        decode_time = self.seconds - (self.time_to_first_token or 0.0)
        return (self.new_tokens - 1) / decode_time if self.new_tokens > 1 and decode_time > 0 else 0.0


def stop_token_ids(loaded: LoadedModel) -> list[int]:
    """Every id that ends the assistant's turn for this model: eos plus the template's end-of-turn."""
    tokenizer = loaded.tokenizer
    ids = set()
    configured = getattr(loaded.model.generation_config, "eos_token_id", None)
    for value in (tokenizer.eos_token_id, configured):
        if isinstance(value, int):
            ids.add(value)
        elif value:
            ids.update(value)
    # Looked up one by one: building the whole vocabulary (get_vocab) costs ~20 ms per answer.
    for token in END_OF_TURN_TOKENS:
        token_id = tokenizer.convert_tokens_to_ids(token)
        if isinstance(token_id, int) and tokenizer.convert_ids_to_tokens(token_id) == token:
            ids.add(token_id)
    return sorted(ids)


def chat_prompt_ids(loaded: LoadedModel, messages: list[dict]) -> list[int]:
    """Token ids of `messages` in the model's chat template, ending where the assistant speaks."""
    encoded = loaded.tokenizer.apply_chat_template(messages, add_generation_prompt=True, tokenize=True, return_dict=True)
    return list(encoded["input_ids"])


def count_chat_tokens(loaded: LoadedModel, messages: list[dict]) -> int:
    return len(chat_prompt_ids(loaded, messages))


def fold_system_turn_if_refused(loaded: LoadedModel, messages: list[dict]) -> list[dict]:
    """Some chat templates reject a system turn; fold it into the first user turn for those."""
    try:
        chat_prompt_ids(loaded, messages)
        return messages
    except Exception:  # jinja2 TemplateError and friends, raised by the model's own template
        if messages[0]["role"] != "system":
            raise
        system, first, *rest = messages
        return [{"role": "user", "content": f"{system['content']}\n\n{first['content']}"}, *rest]


class Generation:
    """One streamed answer. Iterate once; `text` and `stats` are complete when iteration ends."""

    def __init__(self, loaded: LoadedModel, prompt_ids: list[int], *, max_new_tokens: int, temperature: float,
                 top_p: float, adapter: str | None, adapter_path: Path | None):
        self.loaded = loaded
        self.prompt_ids = prompt_ids
        self.settings = {"max_new_tokens": max_new_tokens, "temperature": temperature, "top_p": top_p}
        self.adapter, self.adapter_path = adapter, adapter_path
        self.text = ""
        self.stats = GenerationStats(prompt_tokens=len(prompt_ids))
        self.error: BaseException | None = None

    def __iter__(self) -> Iterator[str]:
        import torch
        from transformers import StoppingCriteria, StoppingCriteriaList, TextIteratorStreamer

        loaded = self.loaded
        stats = self.stats
        stop_ids = stop_token_ids(loaded)

        class CountingStreamer(TextIteratorStreamer):
            def put(self, value):
                if not self.next_tokens_are_prompt:  # the first call carries the prompt
                    if stats.time_to_first_token is None:
                        stats.time_to_first_token = time.perf_counter() - started
                    stats.new_tokens += int(value.numel())
                super().put(value)

        streamer = CountingStreamer(loaded.tokenizer, skip_prompt=True, skip_special_tokens=True, timeout=600)
        input_ids = torch.tensor([self.prompt_ids], device=loaded.model.device)
        sampling = self.settings["temperature"] > 0
        kwargs = dict(
            input_ids=input_ids,
            attention_mask=torch.ones_like(input_ids),
            streamer=streamer,
            max_new_tokens=self.settings["max_new_tokens"],
            do_sample=sampling,
            eos_token_id=stop_ids,
            pad_token_id=loaded.tokenizer.pad_token_id if loaded.tokenizer.pad_token_id is not None else stop_ids[0],
        )
        if sampling:
            kwargs.update(temperature=self.settings["temperature"], top_p=self.settings["top_p"])
        else:  # greedy: clear sampling defaults a model's generation_config may carry
            kwargs.update(temperature=None, top_p=None, top_k=None)

        abandoned = threading.Event()

        class StopWhenAbandoned(StoppingCriteria):
            """The reader went away (new question, closed page): free the model instead of finishing."""

            def __call__(self, input_ids, scores, **kwargs):
                return abandoned.is_set()

        from core.config import get_settings
        from core.models.repetition import loop_stopping_criteria

        stop_loops = get_settings().stop_loops
        criteria = [StopWhenAbandoned()] + ([loop_stopping_criteria(input_ids.shape[1])] if stop_loops else [])
        kwargs["stopping_criteria"] = StoppingCriteriaList(criteria)
        generated_ids: list[int] = []

        def run() -> None:
            try:
                with loaded.lock, torch.inference_mode(), _adapter_active(loaded, self.adapter, self.adapter_path):
                    output = loaded.model.generate(**kwargs)
                generated_ids.extend(output[0, input_ids.shape[1]:].tolist())
                last = int(output[0, -1])
                stats.stopped_by = "end of turn" if last in stop_ids else "max new tokens"
            except BaseException as error:  # re-raised in the consuming thread below
                self.error = error
                streamer.end()

        started = time.perf_counter()
        worker = threading.Thread(target=run, daemon=True, name="generate")
        worker.start()
        try:
            for piece in streamer:
                if piece:
                    self.text += piece
                    yield piece
        finally:
            abandoned.set()  # no-op when generation already ended; stops it when the caller stopped reading
        worker.join()
        stats.seconds = time.perf_counter() - started
        if self.error is not None:
            raise self.error
        cut = loop_start(generated_ids) if stop_loops else None
        if cut is not None:  # the answer began to repeat itself: keep it up to the first copy
            stats.stopped_by = "loop"
            self.text = loaded.tokenizer.decode(generated_ids[:cut], skip_special_tokens=True)


@contextlib.contextmanager
def _adapter_active(loaded: LoadedModel, adapter: str | None, adapter_path: Path | None):
    """The chosen adapter for the length of one generate(); "none" runs the same base weights."""
    from peft import PeftModel

    if adapter and adapter != NO_ADAPTER:
        use_adapter(loaded, adapter, adapter_path)
        yield
    elif isinstance(loaded.model, PeftModel):
        with loaded.model.disable_adapter():
            yield
    else:
        yield


def stream_chat(loaded: LoadedModel, messages: list[dict], *, max_new_tokens: int = 256, temperature: float = 0.0,
                top_p: float = 0.9, adapter: str | None = None, adapter_path: Path | None = None) -> Generation:
    return Generation(loaded, chat_prompt_ids(loaded, messages), max_new_tokens=max_new_tokens, temperature=temperature,
                      top_p=top_p, adapter=adapter, adapter_path=adapter_path)
