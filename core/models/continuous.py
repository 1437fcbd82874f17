"""Greedy answers on a CPU by continuous batching: each prompt prefilled alone, decoded with the others.

A CPU's prefill is compute-bound: reading 1,000 prompt tokens costs the same whether prompts go
together or not (and more when left-padded together), while one decoding step for 8 sequences costs
little more than for one (the weights are read once). So each prompt is read alone into its own
key/value cache and joins the running batch; every step decodes one token for every running
sequence; a sequence that ends leaves the batch at once and the next prompt takes its slot. The
batch never waits for its longest answer. Each sequence keeps the positions it has alone (its own
position ids; left padding masked out), so its greedy answer is the one it gets alone.

Works for models whose cache is a plain per-layer key/value tensor (Llama, Phi-3, most causal LMs);
`decode_continuously` returns None for others (sliding-window or hybrid caches), and the caller
batches them with `generate`.
"""

from __future__ import annotations

import time
from dataclasses import dataclass, field

from core.models.loading import LoadedModel
from core.models.repetition import loop_start


@dataclass
class _Running:
    index: int
    prompt_tokens: int
    position: int  # the position id of the next token fed in
    admitted: float  # when its prefill began
    first_token: float = 0.0  # seconds from admission to its first token
    tokens: list[int] = field(default_factory=list)


@dataclass(frozen=True)
class Decoded:
    ids: list[int]
    stopped_by: str  # "end of turn", "loop" or "max new tokens"
    seconds: float  # from its prefill's start until it stopped
    time_to_first_token: float


def decode_continuously(loaded: LoadedModel, prompts: list[list[int]], *, max_new_tokens: int, batch_size: int,
                        stop_ids: list[int], stop_loops: bool) -> list[Decoded] | None:
    """Greedy token ids per prompt (in order), at most `batch_size` sequences decoding at once; None
    when the model's cache is not plain per-layer tensors. The caller holds the model's lock and the
    adapter switch."""
    import torch

    model, device = loaded.model, loaded.model.device
    stops = set(stop_ids)
    waiting = list(range(len(prompts)))
    running: list[_Running] = []
    results: list[Decoded | None] = [None] * len(prompts)
    cache = mask = None  # the batch's cache and its (rows, width) attention mask
    next_tokens: list[int] = []

    def finish(row: int, stopped_by: str) -> None:
        sequence = running[row]
        ids = sequence.tokens[:-1] if stopped_by == "end of turn" else sequence.tokens
        if stop_loops and (cut := loop_start(ids)) is not None:
            ids, stopped_by = ids[:cut], "loop"
        results[sequence.index] = Decoded(ids, stopped_by, time.perf_counter() - sequence.admitted, sequence.first_token)

    def verdict(sequence: _Running) -> str | None:
        if sequence.tokens[-1] in stops:
            return "end of turn"
        if stop_loops and loop_start(sequence.tokens) is not None:
            return "loop"
        if len(sequence.tokens) >= max_new_tokens:
            return "max new tokens"
        return None

    while waiting or running:
        while waiting and len(running) < batch_size:  # admit: prefill alone, join the batch
            index = waiting.pop(0)
            admitted = time.perf_counter()
            output = _prefill(model, torch.tensor([prompts[index]], device=device))
            own = output.past_key_values
            if not _plain_cache(own):
                return None
            token = int(output.logits[0, -1].argmax())
            sequence = _Running(index, len(prompts[index]), len(prompts[index]), admitted, time.perf_counter() - admitted, [token])
            if (ended := verdict(sequence)) is not None:
                running.append(sequence)
                finish(len(running) - 1, ended)
                running.pop()
                continue
            cache, mask = _join(cache, mask, own, device)
            running.append(sequence)
            next_tokens.append(token)
        if not running:
            continue
        positions = torch.tensor([[s.position] for s in running], device=device)
        mask = torch.cat([mask, torch.ones((len(running), 1), dtype=mask.dtype, device=device)], dim=1)
        output = model(input_ids=torch.tensor([[t] for t in next_tokens], device=device), attention_mask=mask,
                       position_ids=positions, past_key_values=cache, use_cache=True)
        chosen = output.logits[:, -1].argmax(-1).tolist()
        keep: list[int] = []
        for row, (sequence, token) in enumerate(zip(running, chosen, strict=True)):
            sequence.tokens.append(token)
            sequence.position += 1
            if (ended := verdict(sequence)) is not None:
                finish(row, ended)
            else:
                keep.append(row)
        if len(keep) < len(running):
            running = [running[row] for row in keep]
            cache, mask = _keep_rows(cache, mask, keep)
        next_tokens = [s.tokens[-1] for s in running]
    return results  # type: ignore[return-value]


def _prefill(model, ids):
    try:
        return model(input_ids=ids, use_cache=True, logits_to_keep=1)  # logits of the last position only
    except TypeError:  # a remote-code model without logits_to_keep
        return model(input_ids=ids, use_cache=True)


def _plain_cache(cache) -> bool:
    from transformers.cache_utils import DynamicCache, DynamicLayer

    return isinstance(cache, DynamicCache) and all(type(layer) is DynamicLayer for layer in cache.layers)


def _join(cache, mask, own, device):
    """The batch's cache with one more sequence (its own cache of n positions), left-padded to a common width."""
    import torch
    import torch.nn.functional as F

    length = own.layers[0].keys.shape[-2]
    if cache is None:
        return own, torch.ones((1, length), dtype=torch.long, device=device)
    width = mask.shape[1]
    if length > width:  # the newcomer is longer: pad the batch
        for layer in cache.layers:
            layer.keys = F.pad(layer.keys, (0, 0, length - width, 0))
            layer.values = F.pad(layer.values, (0, 0, length - width, 0))
        mask = F.pad(mask, (length - width, 0))
        width = length
    for layer, joining in zip(cache.layers, own.layers, strict=True):
        layer.keys = torch.cat([layer.keys, F.pad(joining.keys, (0, 0, width - length, 0))])
        layer.values = torch.cat([layer.values, F.pad(joining.values, (0, 0, width - length, 0))])
    row = torch.cat([torch.zeros(width - length, dtype=mask.dtype, device=device),
                     torch.ones(length, dtype=mask.dtype, device=device)])
    return cache, torch.cat([mask, row[None]])


def _keep_rows(cache, mask, keep: list[int]):
    """Only the `keep` rows of the batch, without the padding columns that every remaining row has."""
    import torch

    if not keep:
        return None, None
    rows = torch.tensor(keep, device=mask.device)
    mask = mask.index_select(0, rows)
    first = int(mask.any(dim=0).nonzero()[0])  # columns before it are padding in every row
    for layer in cache.layers:
        layer.keys = layer.keys.index_select(0, rows)[:, :, first:]
        layer.values = layer.values.index_select(0, rows)[:, :, first:]
    return cache, mask[:, first:]
