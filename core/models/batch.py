"""Greedy answers to many prompts at once: left padding, one forward pass per step for a batch.

Scoring an exam asks the same model hundreds of questions; one `generate` call per batch keeps
the CPU's matrix units busy instead of decoding one token of one question at a time. Prompts are
sorted by length so a batch carries little padding, and answers come back in the caller's order.
Each answer gets its own latency (the time its sequence stopped) and the batch's time to first
token. Greedy decoding makes a rerun give the same answers.
"""

from __future__ import annotations

import time
from dataclasses import dataclass
from pathlib import Path

from core.models.generation import _adapter_active, chat_prompt_ids, stop_token_ids
from core.models.loading import LoadedModel
from core.models.repetition import loop_start, loop_stopping_criteria


@dataclass(frozen=True)
class BatchAnswer:
    text: str
    prompt_tokens: int
    new_tokens: int
    seconds: float  # from the batch's start until this answer stopped
    time_to_first_token: float  # the batch's first step (prefill), shared by its answers
    stopped_by: str  # "end of turn", "loop" or "max new tokens"


# On a CPU a batch's prefill costs more per prompt than prompts read one by one (measured with SmolLM2,
# 1 thread: 1,000-token prompts cost 1.3x each in a batch of 4 without padding, 2.1x with left padding,
# which rules out the fused causal attention kernel), while decoding gains from batching: one step reads
# the weights once for every sequence. So on a CPU each prompt is read alone into its own cache, the
# caches are stacked (left-padded), and the batch decodes together. On a GPU the batch prefills at once.


def generate_batch(loaded: LoadedModel, conversations: list[list[dict]], *, max_new_tokens: int = 256,
                   adapter: str | None = None, adapter_path: Path | None = None, batch_size: int = 8,
                   stop_loops: bool | None = None, prefill_one_by_one: bool | None = None) -> list[BatchAnswer]:
    """Greedy answers to `conversations` (chat messages each), in their order. `stop_loops`
    defaults to the `stop_loops` setting; `prefill_one_by_one` to True on a CPU, False on a GPU."""
    if stop_loops is None:
        from core.config import get_settings

        stop_loops = get_settings().stop_loops
    if prefill_one_by_one is None:
        prefill_one_by_one = loaded.model.device.type == "cpu"
    prompts = [chat_prompt_ids(loaded, messages) for messages in conversations]
    order = sorted(range(len(prompts)), key=lambda index: len(prompts[index]))  # little padding per batch
    answers: list[BatchAnswer | None] = [None] * len(prompts)
    size = max(1, batch_size)
    for start in range(0, len(order), size):
        indexes = order[start:start + size]
        batch = generate_token_batch(loaded, [prompts[i] for i in indexes], max_new_tokens=max_new_tokens,
                                     adapter=adapter, adapter_path=adapter_path, stop_loops=stop_loops,
                                     prefill_one_by_one=prefill_one_by_one)
        for index, answer in zip(indexes, batch, strict=True):
            answers[index] = answer
    return answers  # type: ignore[return-value]


def generate_token_batch(loaded: LoadedModel, prompts: list[list[int]], *, max_new_tokens: int,
                         adapter: str | None = None, adapter_path: Path | None = None,
                         stop_loops: bool = True, prefill_one_by_one: bool = False) -> list[BatchAnswer]:
    import torch
    from transformers import StoppingCriteria, StoppingCriteriaList

    stop_ids = stop_token_ids(loaded)
    pad_id = loaded.tokenizer.pad_token_id if loaded.tokenizer.pad_token_id is not None else stop_ids[0]
    width = max(len(p) for p in prompts)
    input_ids = torch.tensor([[pad_id] * (width - len(p)) + p for p in prompts], device=loaded.model.device)
    attention = torch.tensor([[0] * (width - len(p)) + [1] * len(p) for p in prompts], device=loaded.model.device)
    step_times: list[float] = []

    class StepClock(StoppingCriteria):
        """Called once per decoding step: the time each step ended, for per-answer latency."""

        def __call__(self, ids, scores, **kwargs):
            step_times.append(time.perf_counter() - started)
            return torch.zeros(ids.shape[0], dtype=torch.bool, device=ids.device)

    criteria = [StepClock()] + ([loop_stopping_criteria(width)] if stop_loops else [])
    started = time.perf_counter()
    with loaded.lock, torch.inference_mode(), _adapter_active(loaded, adapter, adapter_path):
        cache = _prefilled_cache(loaded, prompts, width) if prefill_one_by_one and len(prompts) > 1 else None
        output = loaded.model.generate(
            input_ids=input_ids, attention_mask=attention, max_new_tokens=max_new_tokens, do_sample=False,
            temperature=None, top_p=None, top_k=None, eos_token_id=stop_ids, pad_token_id=pad_id,
            stopping_criteria=StoppingCriteriaList(criteria), **({"past_key_values": cache} if cache else {}),
        )
    total = time.perf_counter() - started
    first = step_times[0] if step_times else total
    answers = []
    for prompt, row in zip(prompts, output[:, width:].tolist(), strict=True):
        ids, stopped_by = _own_tokens(row, stop_ids, pad_id)
        if stop_loops:
            cut = loop_start(ids)
            if cut is not None:
                ids, stopped_by = ids[:cut], "loop"
        steps = len(row) if stopped_by == "max new tokens" else _steps_until_stop(row, stop_ids, pad_id)
        seconds = step_times[min(steps, len(step_times)) - 1] if step_times and steps else total
        text = loaded.tokenizer.decode(ids, skip_special_tokens=True).strip()
        answers.append(BatchAnswer(text, len(prompt), len(ids), seconds, first, stopped_by))
    return answers


def _prefilled_cache(loaded: LoadedModel, prompts: list[list[int]], width: int):
    """The batch's cache of every prompt but its last token, each prompt read alone, stacked with left
    padding to `width - 1` positions: `generate` then reads only the last tokens, all at once, and
    decodes the batch together. Each prompt keeps the positions it would have alone (0..n-1, as the
    attention mask gives them), so its answer is the one it gets alone. None (prefill the batch at
    once) for caches that are not plain per-layer key/value tensors (sliding windows, hybrids)."""
    import torch
    from transformers.cache_utils import DynamicCache, DynamicLayer

    if min(len(p) for p in prompts) < 2:
        return None
    caches = []
    for prompt in prompts:
        ids = torch.tensor([prompt[:-1]], device=loaded.model.device)
        try:
            output = loaded.model(input_ids=ids, use_cache=True, logits_to_keep=1)  # no logits for the prompt
        except TypeError:  # a remote-code model without logits_to_keep
            output = loaded.model(input_ids=ids, use_cache=True)
        cache = output.past_key_values
        if not isinstance(cache, DynamicCache) or any(type(layer) is not DynamicLayer for layer in cache.layers):
            return None
        caches.append(cache)
    merged = caches[0]
    for number, layer in enumerate(merged.layers):
        layer.keys = torch.cat([_left_padded(c.layers[number].keys, width - 1) for c in caches])
        layer.values = torch.cat([_left_padded(c.layers[number].values, width - 1) for c in caches])
    return merged


def _left_padded(states, length: int):
    """(1, heads, n, dim) key or value states with zeros before them up to `length` positions
    (masked out by the attention mask)."""
    import torch.nn.functional as F

    return F.pad(states, (0, 0, length - states.shape[-2], 0))


def _own_tokens(row: list[int], stop_ids: list[int], pad_id: int) -> tuple[list[int], str]:
    """This sequence's tokens up to its end of turn (the batch pads finished sequences)."""
    for position, token in enumerate(row):
        if token in stop_ids:
            return row[:position], "end of turn"
    while row and row[-1] == pad_id and pad_id not in stop_ids:
        row = row[:-1]
    return row, "max new tokens" if len(row) else "end of turn"


def _steps_until_stop(row: list[int], stop_ids: list[int], pad_id: int) -> int:
    """Decoding steps this sequence took: through its stop token, or until padding began."""
    for position, token in enumerate(row):
        if token in stop_ids:
            return position + 1
    trimmed = len(row)
    while trimmed and row[trimmed - 1] == pad_id:
        trimmed -= 1
    return max(trimmed, 1)
