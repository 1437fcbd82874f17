"""A model's context window: how many tokens it reads at once, prompt and answer together."""

from __future__ import annotations

# Configs name their position limit differently (Llama/Phi: max_position_embeddings; GPT-2: n_positions).
_POSITION_LIMITS = ("max_position_embeddings", "n_positions", "max_sequence_length", "seq_length")
DEFAULT_CONTEXT_WINDOW = 2048  # a config that names no limit


def context_window(config, tokenizer=None) -> int:
    """The config's position limit, capped by the tokenizer's own limit when it sets a real one
    (tokenizers without a limit say 1e30)."""
    window = next((getattr(config, name) for name in _POSITION_LIMITS if getattr(config, name, None)), None)
    window = int(window or DEFAULT_CONTEXT_WINDOW)
    tokenizer_limit = getattr(tokenizer, "model_max_length", None)
    if tokenizer_limit and tokenizer_limit < 1_000_000:
        window = min(window, int(tokenizer_limit))
    return window
