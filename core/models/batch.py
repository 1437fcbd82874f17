"""Greedy answers to many prompts at once.

Scoring an exam asks the same model hundreds of questions; decoding many sequences per step keeps
the CPU's matrix units busy instead of decoding one token of one question at a time. On a CPU the
prompts go through continuous batching (core/models/continuous.py: each prompt prefilled alone, a
running batch that finished sequences leave and new ones join); on a GPU, and for models whose cache
that path cannot batch, `generate` runs batches with left padding. Prompts are sorted by length (little
padding), and answers come back in the caller's order. Each answer gets its own latency and time to
first token. Greedy decoding makes a rerun give the same answers.
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
    seconds: float  # until this answer stopped: from its own prefill (CPU path) or its batch's start (generate)
    time_to_first_token: float  # its own prefill (CPU path), or its batch's first step (generate)
    stopped_by: str  # "end of turn", "loop" or "max new tokens"


# On a CPU a batch's prefill costs more per prompt than prompts read one by one (measured with SmolLM2:
# 1.6x per prompt for 8 left-padded 1,000-token prompts, 2 threads), while decoding gains from batching
# (a step for 8 sequences with 1,000-token caches costs 2.8x less per sequence than for one). Hence the
# continuous path there; on a GPU the batch prefills at once.


def generate_batch(loaded: LoadedModel, conversations: list[list[dict]], *, max_new_tokens: int = 256,
                   adapter: str | None = None, adapter_path: Path | None = None, batch_size: int = 8,
                   stop_loops: bool | None = None, prefill_one_by_one: bool | None = None) -> list[BatchAnswer]:
    """Greedy answers to `conversations` (chat messages each), in their order, at most `batch_size`
    decoding at once. `stop_loops` defaults to the `stop_loops` setting; `prefill_one_by_one`
    (continuous batching) to True on a CPU, False on a GPU."""
    if stop_loops is None:
        from core.config import get_settings

        stop_loops = get_settings().stop_loops
    if prefill_one_by_one is None:
        prefill_one_by_one = loaded.model.device.type == "cpu"
    prompts = [chat_prompt_ids(loaded, messages) for messages in conversations]
    order = sorted(range(len(prompts)), key=lambda index: len(prompts[index]))  # little padding per batch
    answers: list[BatchAnswer | None] = [None] * len(prompts)
    size = max(1, batch_size)
    if prefill_one_by_one and prompts:
        decoded = _continuous(loaded, [prompts[i] for i in order], max_new_tokens=max_new_tokens, batch_size=size,
                              adapter=adapter, adapter_path=adapter_path, stop_loops=stop_loops)
        if decoded is not None:
            for index, answer in zip(order, decoded, strict=True):
                answers[index] = answer
            return answers  # type: ignore[return-value]
    for start in range(0, len(order), size):
        indexes = order[start:start + size]
        batch = generate_token_batch(loaded, [prompts[i] for i in indexes], max_new_tokens=max_new_tokens,
                                     adapter=adapter, adapter_path=adapter_path, stop_loops=stop_loops)
        for index, answer in zip(indexes, batch, strict=True):
            answers[index] = answer
    return answers  # type: ignore[return-value]


def _continuous(loaded: LoadedModel, prompts: list[list[int]], *, max_new_tokens: int, batch_size: int,
                adapter: str | None, adapter_path: Path | None, stop_loops: bool) -> list[BatchAnswer] | None:
    """The CPU path (core/models/continuous.py); None for models whose cache it cannot batch."""
    import torch

    from core.models.continuous import decode_continuously

    with loaded.lock, torch.inference_mode(), _adapter_active(loaded, adapter, adapter_path):
        decoded = decode_continuously(loaded, prompts, max_new_tokens=max_new_tokens, batch_size=batch_size,
                                      stop_ids=stop_token_ids(loaded), stop_loops=stop_loops)
    if decoded is None:
        return None
    return [BatchAnswer(loaded.tokenizer.decode(d.ids, skip_special_tokens=True).strip(), len(prompt), len(d.ids),
                        d.seconds, d.time_to_first_token, d.stopped_by) for prompt, d in zip(prompts, decoded, strict=True)]


def generate_token_batch(loaded: LoadedModel, prompts: list[list[int]], *, max_new_tokens: int,
                         adapter: str | None = None, adapter_path: Path | None = None,
                         stop_loops: bool = True) -> list[BatchAnswer]:
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
        output = loaded.model.generate(
            input_ids=input_ids, attention_mask=attention, max_new_tokens=max_new_tokens, do_sample=False,
            temperature=None, top_p=None, top_k=None, eos_token_id=stop_ids, pad_token_id=pad_id,
            stopping_criteria=StoppingCriteriaList(criteria),
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
