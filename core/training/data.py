"""Turn training examples into token ids and labels, with the loss on the assistant's tokens only.

Each conversation goes through the base model's own chat template, so the tuned model sees the
format it will be asked in, and each assistant turn ends with the template's end-of-turn token,
so the tuned model learns to stop.
"""

from __future__ import annotations

from dataclasses import dataclass

IGNORE = -100  # label value the loss skips


@dataclass(frozen=True)
class TokenizedExample:
    input_ids: list[int]
    labels: list[int]

    @property
    def trained_tokens(self) -> int:
        return sum(label != IGNORE for label in self.labels)


def _template_ids(tokenizer, messages: list[dict], add_generation_prompt: bool) -> list[int]:
    encoded = tokenizer.apply_chat_template(messages, tokenize=True, add_generation_prompt=add_generation_prompt,
                                            return_dict=True)
    return list(encoded["input_ids"])


def tokenize_chat(tokenizer, messages: list[dict], max_length: int) -> TokenizedExample:
    """Labels copy the assistant turns (end-of-turn token included) and ignore everything else.

    An assistant turn's tokens are the difference between the conversation rendered up to the turn
    (with the generation prompt) and rendered through it. Templates that do not render a conversation
    as the concatenation of its turns fall back to training the last assistant turn only."""
    input_ids: list[int] = []
    labels: list[int] = []
    for index, message in enumerate(messages):
        if message["role"] != "assistant":
            continue
        before = _template_ids(tokenizer, messages[:index], add_generation_prompt=True)
        through = _template_ids(tokenizer, messages[: index + 1], add_generation_prompt=False)
        if before[: len(input_ids)] != input_ids or through[: len(before)] != before:
            return _last_turn_only(tokenizer, messages, max_length)
        prompt = before[len(input_ids):]
        answer = _end_at_turn_end(tokenizer, through[len(before):])
        input_ids += prompt + answer
        labels += [IGNORE] * len(prompt) + answer
    return TokenizedExample(input_ids[:max_length], labels[:max_length])


def _last_turn_only(tokenizer, messages: list[dict], max_length: int) -> TokenizedExample:
    last = max(i for i, m in enumerate(messages) if m["role"] == "assistant")
    prompt = _template_ids(tokenizer, messages[:last], add_generation_prompt=True)
    through = _template_ids(tokenizer, messages[: last + 1], add_generation_prompt=False)
    answer = _end_at_turn_end(tokenizer, through[len(prompt):])
    return TokenizedExample((prompt + answer)[:max_length], ([IGNORE] * len(prompt) + answer)[:max_length])


def _end_at_turn_end(tokenizer, answer: list[int]) -> list[int]:
    """Keep the answer through its end-of-turn token and drop what a template adds after it (a newline):
    the model should learn to stop, not to write the next turn's separator."""
    from core.models.generation import END_OF_TURN_TOKENS

    vocabulary = tokenizer.get_vocab()
    stops = {vocabulary[t] for t in END_OF_TURN_TOKENS if t in vocabulary} | {tokenizer.eos_token_id}
    for position, token in enumerate(answer):
        if token in stops:
            return answer[: position + 1]
    return answer + [tokenizer.eos_token_id]  # a template without an end marker: teach eos


def tokenize_text(tokenizer, text: str, max_length: int) -> TokenizedExample:
    """Continued pre-training: every token is trained, and the passage ends with eos."""
    ids = tokenizer(text, add_special_tokens=False)["input_ids"][: max_length - 1] + [tokenizer.eos_token_id]
    return TokenizedExample(ids, list(ids))


def tokenize_examples(tokenizer, examples: list, max_length: int) -> list[dict]:
    """Examples are chat message lists or plain strings; the result is what Trainer feeds the collator."""
    rows = []
    for example in examples:
        tokenized = (tokenize_text(tokenizer, example, max_length) if isinstance(example, str)
                     else tokenize_chat(tokenizer, example, max_length))
        if tokenized.trained_tokens:
            rows.append({"input_ids": tokenized.input_ids, "labels": tokenized.labels})
    return rows


class PadToLongest:
    """Pads each batch to its own longest example (not to max length), labels with IGNORE."""

    def __init__(self, pad_token_id: int):
        self.pad_token_id = pad_token_id

    def __call__(self, features: list[dict]) -> dict:
        import torch

        longest = max(len(f["input_ids"]) for f in features)
        input_ids, labels, mask = [], [], []
        for f in features:
            padding = longest - len(f["input_ids"])
            input_ids.append(f["input_ids"] + [self.pad_token_id] * padding)
            labels.append(f["labels"] + [IGNORE] * padding)
            mask.append([1] * len(f["input_ids"]) + [0] * padding)
        return {"input_ids": torch.tensor(input_ids), "labels": torch.tensor(labels), "attention_mask": torch.tensor(mask)}
