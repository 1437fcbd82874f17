"""Answers from an OpenAI-compatible chat endpoint: llama.cpp's server, Ollama, vLLM, LM Studio, Azure OpenAI.

A model reference `openai:<served name>` selects it; the setting `chat_api_base` says where it listens
(up to `/chat/completions`, e.g. http://127.0.0.1:8080/v1). Retrieval and the prompt stay local: only the
finished messages go out, as `POST {base}/chat/completions` with `stream: true`, and the answer comes back
as server-sent events (`data: {json}` lines, `data: [DONE]` last) that fill the same GenerationStats as a
local model. A fine-tuned variant asks for the adapter's own served name (vLLM: `--lora-modules NAME=FOLDER`).

The API key is read from the environment (EXPERT_STUDIO_CHAT_API_KEY, else OPENAI_API_KEY) for each request
and goes nowhere else: not into settings, answers, the database, logs or error messages.
"""

from __future__ import annotations

import contextlib
import json
import math
import os
import re
import threading
import time
from collections.abc import Iterable, Iterator
from dataclasses import dataclass
from pathlib import Path
from urllib.parse import urlsplit, urlunsplit

from core.config import Settings, get_settings
from core.errors import UserError
from core.models.generation import GenerationStats
from core.models.loading import NO_ADAPTER
from core.models.repetition import loop_start

SERVED_PREFIX = "openai:"
API_KEY_VARIABLES = ("EXPERT_STUDIO_CHAT_API_KEY", "OPENAI_API_KEY")
CHARS_PER_TOKEN = 3  # conservative: English text runs ~4 characters per token in common tokenizers
TURN_OVERHEAD_TOKENS = 8  # role markers and separators a chat template adds around each turn
STOPPED_BY = {"stop": "end of turn", "length": "max new tokens"}


class ServedModelError(UserError):
    """The chat endpoint cannot answer as configured; the message says what to change."""


def is_served(model_ref: str | None) -> bool:
    """True for `openai:<served name>`: answered by the configured OpenAI-compatible endpoint."""
    return bool(model_ref) and model_ref.strip().startswith(SERVED_PREFIX)


def estimate_tokens(text: str) -> int:
    return math.ceil(len(text) / CHARS_PER_TOKEN)


class EstimatingTokenizer:
    """Counts tokens as characters / 3 where no tokenizer of the served model is at hand. It answers the
    calls that fitting passages makes (count_chat_tokens, cutting a passage): its "ids" are 3-character
    pieces of the text, so a prefix of them decodes back to a prefix of the text."""

    chat_template = "estimate"

    def __call__(self, text: str, add_special_tokens: bool = False) -> dict:
        return {"input_ids": [text[i:i + CHARS_PER_TOKEN] for i in range(0, len(text), CHARS_PER_TOKEN)]}

    def decode(self, ids: list[str], **_) -> str:
        return "".join(ids)

    def apply_chat_template(self, messages: list[dict], add_generation_prompt: bool = True, **_) -> dict:
        count = sum(estimate_tokens(m["content"]) + TURN_OVERHEAD_TOKENS for m in messages)
        return {"input_ids": [0] * (count + (TURN_OVERHEAD_TOKENS if add_generation_prompt else 0))}


@dataclass
class ServedModel:
    """A model behind the chat endpoint, shaped where answers need it like a LoadedModel: an id, a context
    window and a tokenizer that counts prompt tokens (the matching local one, or the estimate)."""

    model_id: str  # "openai:<served name>", as answers and votes record it
    served_name: str
    base_url: str
    context_window: int
    tokenizer: object
    tokens_estimated: bool  # no local tokenizer of this model: prompt sizes are characters / 3
    timeout_s: float

    @property
    def where(self) -> str:
        return shown_url(self.base_url)

    @property
    def description(self) -> str:
        counted = "tokens estimated as characters / 3" if self.tokens_estimated else "tokens counted locally"
        return f"{self.served_name} served at {self.where} ({counted})"


def shown_url(url: str) -> str:
    """The endpoint's address without any user:password@ in it."""
    parts = urlsplit(url)
    if not parts.hostname:
        return url
    host = f"[{parts.hostname}]" if ":" in parts.hostname else parts.hostname
    return urlunsplit(parts._replace(netloc=host + (f":{parts.port}" if parts.port else "")))


def served_model(model_ref: str | None = None, settings: Settings | None = None) -> ServedModel:
    """The served model `openai:<name>` (default: the `language_model` setting), or a ServedModelError
    saying which setting is missing."""
    settings = settings or get_settings()
    model_ref = (model_ref or settings.language_model).strip()
    name = model_ref.removeprefix(SERVED_PREFIX).strip()
    if not name:
        raise ServedModelError(f"Name the served model after {SERVED_PREFIX!r}, e.g. openai:phi3 (as the server knows it).")
    base = (settings.chat_api_base or "").strip().rstrip("/")
    if not base:
        raise ServedModelError(
            f"{model_ref} is answered by an OpenAI-compatible server: set EXPERT_STUDIO_CHAT_API_BASE to its address "
            "up to /chat/completions (llama.cpp: http://127.0.0.1:8080/v1, Ollama: http://127.0.0.1:11434/v1, "
            "vLLM: http://127.0.0.1:8000/v1)."
        )
    if urlsplit(base).scheme not in ("http", "https") or not urlsplit(base).hostname:
        raise ServedModelError(f"EXPERT_STUDIO_CHAT_API_BASE must be an http:// or https:// address, not {shown_url(base)!r}.")
    tokenizer = _local_tokenizer(settings.chat_api_tokenizer, settings) if settings.chat_api_tokenizer else None
    return ServedModel(f"{SERVED_PREFIX}{name}", name, base, settings.chat_api_context_window,
                       tokenizer or EstimatingTokenizer(), tokenizer is None, settings.chat_api_timeout_s)


def served_choices(settings: Settings | None = None) -> dict[str, str]:
    """{reference: label} of the served models the pages offer beside the presets (none without an endpoint)."""
    settings = settings or get_settings()
    if not settings.chat_api_base:
        return {}
    configured = settings.language_model.removeprefix(SERVED_PREFIX) if is_served(settings.language_model) else None
    names = [settings.chat_api_model, configured]
    where = shown_url(settings.chat_api_base.strip().rstrip("/"))
    return {f"{SERVED_PREFIX}{n.strip()}": f"{n.strip()} (served at {where})" for n in names if n and n.strip()}


_tokenizers: dict[Path, object] = {}
_tokenizers_lock = threading.Lock()


def _local_tokenizer(model_ref: str, settings: Settings):
    """The tokenizer and chat template of a local copy of the served model, loaded once (no weights)."""
    from transformers import AutoTokenizer

    from core.models.registry import ModelNotAvailable, resolve_model_path

    path = resolve_model_path(model_ref, settings)  # the same sources as any local model, refused the same way
    with _tokenizers_lock:
        if path not in _tokenizers:
            try:
                tokenizer = AutoTokenizer.from_pretrained(path)
            except Exception as error:  # OSError, ValueError...: all mean the folder has no usable tokenizer
                raise ModelNotAvailable(f"The tokenizer of {model_ref} (EXPERT_STUDIO_CHAT_API_TOKENIZER) could not be "
                                        f"loaded from {path}: {type(error).__name__}.") from error
            if tokenizer.chat_template is None:
                raise ServedModelError(f"{model_ref} (EXPERT_STUDIO_CHAT_API_TOKENIZER) has no chat template: name the "
                                       "instruct/chat model the server runs, or unset it to estimate token counts.")
            _tokenizers[path] = tokenizer
        return _tokenizers[path]


# --- the request ----------------------------------------------------------------------------------------


@dataclass
class ServedStats(GenerationStats):
    tokens_estimated: bool = False  # the server sent no usage: token counts are the app's own


def _api_key() -> str | None:
    return next((os.environ[v].strip() for v in API_KEY_VARIABLES if os.environ.get(v, "").strip()), None)


def _redact(text: str) -> str:
    """Text from a server or a library, with any API key in it blanked out before it is shown."""
    for variable in API_KEY_VARIABLES:
        key = os.environ.get(variable, "").strip()
        if key:
            text = text.replace(key, "[API key]")
    return text


def _headers(base_url: str) -> dict[str, str]:
    headers = {"Accept": "text/event-stream"}
    key = _api_key()
    if key:
        headers["Authorization"] = f"Bearer {key}"
        if (urlsplit(base_url).hostname or "").endswith(".azure.com"):  # Azure OpenAI takes its keys in api-key
            headers["api-key"] = key
    return headers


def stream_served_chat(served: ServedModel, messages: list[dict], *, max_new_tokens: int = 256, temperature: float = 0.0,
                       top_p: float = 0.9, adapter: str | None = None, adapter_path: Path | None = None) -> ServedGeneration:
    """As stream_chat, from the endpoint: a fine-tuned `adapter` is asked for by its served name."""
    name = adapter if adapter and adapter != NO_ADAPTER else served.served_name
    body = {"model": name, "messages": messages, "max_tokens": max_new_tokens, "temperature": temperature,
            "top_p": top_p, "stream": True, "stream_options": {"include_usage": True}}
    prompt_tokens = len(served.tokenizer.apply_chat_template(messages, add_generation_prompt=True, tokenize=True,
                                                             return_dict=True)["input_ids"])
    return ServedGeneration(served, body, prompt_tokens)


class ServedGeneration:
    """One streamed answer from the endpoint. Iterate once; `text` and `stats` are complete afterwards.
    Stopping early (a loop, or the reader going away) closes the connection, which ends the server's work."""

    def __init__(self, served: ServedModel, body: dict, prompt_tokens: int):
        self.served, self.body = served, body
        self.text = ""
        self.stats = ServedStats(prompt_tokens=prompt_tokens)

    def __iter__(self) -> Iterator[str]:
        import httpx2

        stats, served = self.stats, self.served
        guard = WordLoopGuard() if get_settings().stop_loops else None
        usage, finish, loop_cut = None, None, None
        started = time.perf_counter()
        try:
            with httpx2.Client(timeout=served.timeout_s) as client, contextlib.closing(self._events(client)) as events:
                for event in events:
                    if event.get("usage"):
                        usage = event["usage"]
                    for choice in event.get("choices") or []:
                        piece = (choice.get("delta") or choice.get("message") or {}).get("content") or ""
                        finish = choice.get("finish_reason") or finish
                        if not piece:
                            continue
                        if stats.time_to_first_token is None:
                            stats.time_to_first_token = time.perf_counter() - started
                        self.text += piece
                        yield piece
                        loop_cut = guard.add(piece) if guard is not None else None
                        if loop_cut is not None:
                            break
                    if loop_cut is not None:
                        break
        except httpx2.ConnectError as error:
            raise ServedModelError(
                f"Cannot reach the chat endpoint {served.where} ({_redact(str(error)) or type(error).__name__}). Start the "
                "server (llama.cpp: `llama-server -m MODEL.gguf --port 8080`; Ollama: `ollama serve`; vLLM: `vllm serve MODEL`) "
                "or correct EXPERT_STUDIO_CHAT_API_BASE."
            ) from None
        except httpx2.TimeoutException:
            raise ServedModelError(
                f"The chat endpoint {served.where} sent nothing for {served.timeout_s:g} s: it may be busy or stuck; "
                "try again, or raise EXPERT_STUDIO_CHAT_API_TIMEOUT_S."
            ) from None
        except httpx2.HTTPError as error:  # the connection broke off, or the server spoke something else than HTTP
            raise ServedModelError(f"The connection to the chat endpoint {served.where} broke off: "
                                   f"{_redact(str(error)) or type(error).__name__}.") from None
        stats.seconds = time.perf_counter() - started
        if loop_cut is not None:  # the answer began to repeat itself: keep it up to the first copy
            self.text, stats.stopped_by = self.text[:loop_cut], "loop"
        else:
            stats.stopped_by = STOPPED_BY.get(finish, finish or "")
        if usage and loop_cut is None:
            stats.prompt_tokens = int(usage.get("prompt_tokens") or stats.prompt_tokens)
            stats.new_tokens = int(usage.get("completion_tokens") or 0)
        else:
            stats.new_tokens = len(served.tokenizer(self.text, add_special_tokens=False)["input_ids"])
            stats.tokens_estimated = True

    def _events(self, client) -> Iterator[dict]:
        """The JSON events of the answer; an error status becomes a ServedModelError that says what to do."""
        url = f"{self.served.base_url}/chat/completions"
        with client.stream("POST", url, json=self.body, headers=_headers(self.served.base_url)) as response:
            if response.status_code == 400 and "stream_options" in _server_message(response):
                body = {k: v for k, v in self.body.items() if k != "stream_options"}  # older servers refuse it
                with client.stream("POST", url, json=body, headers=_headers(self.served.base_url)) as retried:
                    yield from _response_events(client, retried, self.served, self.body["model"])
                return
            yield from _response_events(client, response, self.served, self.body["model"])


def _response_events(client, response, served: ServedModel, name: str) -> Iterator[dict]:
    if response.status_code >= 400:
        raise _status_error(client, response, served, name)
    if response.headers.get("content-type", "").startswith("application/json"):  # a server that ignored stream: true
        response.read()
        yield _json(response.text, served)
        return
    yield from sse_events(response.iter_lines(), served)


def sse_events(lines: Iterable[str], served: ServedModel) -> Iterator[dict]:
    """The JSON payloads of server-sent events (`data: {...}` lines) up to `data: [DONE]`."""
    for line in lines:
        if not line.startswith("data:"):
            continue  # blank separators, `: keep-alive` comments, `event:` names
        payload = line[len("data:"):].strip()
        if payload == "[DONE]":
            return
        event = _json(payload, served)
        if event.get("error"):
            raise ServedModelError(f"The chat endpoint {served.where} stopped with an error: {_error_text(event['error'])}")
        yield event


def _json(payload: str, served: ServedModel) -> dict:
    try:
        event = json.loads(payload)
    except ValueError:
        event = None
    if not isinstance(event, dict):
        raise ServedModelError(f"The chat endpoint {served.where} does not speak the OpenAI chat format: it sent "
                               f"{_redact(payload[:200])!r}. Check EXPERT_STUDIO_CHAT_API_BASE (it often ends in /v1).")
    return event


def _error_text(error) -> str:
    message = error.get("message") if isinstance(error, dict) else error
    return _redact(str(message or "no message"))[:300]


def _server_message(response) -> str:
    """What an error response says, short, with the API key blanked out."""
    response.read()
    try:
        data = response.json()
    except ValueError:
        return _redact(response.text.strip())[:300]
    return _error_text(data.get("error", data.get("detail", data))) if isinstance(data, dict) else _redact(str(data))[:300]


def _status_error(client, response, served: ServedModel, name: str) -> ServedModelError:
    status, where = response.status_code, served.where
    detail = _server_message(response)
    if status in (401, 403):
        if _api_key() is None:
            return ServedModelError(f"The chat endpoint {where} wants an API key ({status}): set EXPERT_STUDIO_CHAT_API_KEY "
                                    "(or OPENAI_API_KEY) in the environment of the app and the worker.")
        return ServedModelError(f"The chat endpoint {where} refused the API key ({status}: {detail}): set "
                                "EXPERT_STUDIO_CHAT_API_KEY (or OPENAI_API_KEY) to a key it accepts.")
    if status == 404:
        names = served_names(client, served)
        if names:
            return ServedModelError(
                f"The chat endpoint {where} serves no model named {name!r}; it serves: {', '.join(names)}. Choose one "
                f"as openai:<name>; a fine-tuned adapter needs its own name there (vLLM: --lora-modules {name}=ADAPTER_FOLDER)."
            )
        return ServedModelError(f"The chat endpoint {where} answered 404 for model {name!r} ({detail}), and it lists no "
                                "models: check that EXPERT_STUDIO_CHAT_API_BASE ends where /chat/completions begins (often /v1).")
    if status == 429:
        wait = response.headers.get("retry-after")
        after = f", retry after {wait} s" if wait else ""
        return ServedModelError(f"The chat endpoint {where} is limiting requests (429{after}): ask again in a moment, "
                                "or raise its rate limit.")
    if status == 400 and "context" in detail.lower():
        return ServedModelError(f"The chat endpoint {where} found the prompt too long ({detail}): set "
                                "EXPERT_STUDIO_CHAT_API_CONTEXT_WINDOW to the context size the server runs with.")
    return ServedModelError(f"The chat endpoint {where} answered {status}: {detail}")


def served_names(client, served: ServedModel) -> list[str]:
    """The model names GET {base}/models lists (empty when it lists none or cannot be read)."""
    import httpx2

    try:
        response = client.get(f"{served.base_url}/models", headers=_headers(served.base_url))
        data = response.json() if response.status_code == 200 else {}
    except (httpx2.HTTPError, ValueError):
        return []
    rows = (data.get("data") or data.get("models") or []) if isinstance(data, dict) else []
    return [_redact(str(r.get("id") or r.get("name"))) for r in rows if isinstance(r, dict) and (r.get("id") or r.get("name"))]


# --- loops ------------------------------------------------------------------------------------------------

_WORD = re.compile(r"\S+(?=\s)")  # a word counts once the whitespace after it has arrived


class WordLoopGuard:
    """loop_start (core/models/repetition.py) on whitespace-separated words: a served model's token ids never
    reach the app, and words repeat back to back exactly when the tokens under them do."""

    def __init__(self):
        self.text = ""
        self.words: list[str] = []
        self.starts: list[int] = []  # where each word begins in the text
        self._scanned = 0

    def add(self, piece: str) -> int | None:
        """Take the next piece; where the repeated copies begin in the text, once it ends in a loop, else None."""
        self.text += piece
        found = False
        for match in _WORD.finditer(self.text, self._scanned):
            self.words.append(match.group())
            self.starts.append(match.start())
            self._scanned = match.end()
            found = True
        if not found:
            return None
        cut = loop_start(self.words)
        return None if cut is None else self.starts[cut]
