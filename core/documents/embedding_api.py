"""Embeddings from an OpenAI-compatible `/v1/embeddings` endpoint, and how a collection names its embedder.

A collection records one model reference in `collections.embedding_model`, and that string alone says
how its vectors are made, so ingest, search, re-embed and evaluation need nothing else:
- `sentence-transformers/all-MiniLM-L6-v2`, a hub id or a folder: a local sentence-transformers model;
  `...?trust_remote_code=true` opts that one collection into running code from the model's repository.
- `openai:text-embedding-3-small` or `api:<model>`: the same wire format at EXPERT_STUDIO_EMBEDDING_API_BASE
  (OpenAI by default; text-embeddings-inference, Ollama, vLLM, Infinity speak it too); `openai:` only says so.
- `azure:<deployment>`: Azure OpenAI (deployment in the URL, `api-version` query, `api-key` header).
- `?dimensions=512` after an API model: shorter vectors (text-embedding-3 takes the `dimensions` parameter).
The base URL and the key are settings of the deployment, never part of the reference: the key is read
from the environment or Streamlit's secrets.toml when a request is made, and is never stored or shown.
"""

from __future__ import annotations

import base64
import email.utils
import json
import logging
import math
import re
import threading
import time
import tomllib
from collections.abc import Callable, Sequence
from dataclasses import dataclass
from functools import cached_property
from pathlib import Path
from urllib.parse import parse_qsl, quote, urlencode

import numpy as np

from core.config import Settings, get_settings
from core.documents.embeddings import EmbeddingModelError, resolve_model_path

logger = logging.getLogger(__name__)

API_PREFIXES = ("openai", "api", "azure")
# Native sizes and input limits (tokens) of OpenAI's models, so a collection knows them without a request.
KNOWN_DIMENSIONS = {"text-embedding-3-small": 1536, "text-embedding-3-large": 3072, "text-embedding-ada-002": 1536}
KNOWN_MAX_INPUT_TOKENS = {"text-embedding-3-small": 8191, "text-embedding-3-large": 8191, "text-embedding-ada-002": 8191}
ACCEPTS_DIMENSIONS = {"text-embedding-3-small", "text-embedding-3-large"}
KNOWN_DEFAULT_DIMENSIONS_REFUSED = {"text-embedding-ada-002"}
# pgvector's HNSW index takes at most 2,000 dimensions of `vector`; every collection gets one (library.py).
MAX_INDEXED_DIMENSIONS = 2000
# Statuses worth another try: rate limits and the server's own trouble.
RETRY_STATUSES = {408, 409, 429, 500, 502, 503, 504}


class EmbeddingApiError(EmbeddingModelError):
    """The embedding endpoint refused or failed a request; the message names it and says what to do."""


# --- model references -------------------------------------------------------------------------------


@dataclass(frozen=True)
class ModelReference:
    """A parsed `collections.embedding_model`: where the vectors come from and how they are asked for."""

    provider: str | None  # None: a local sentence-transformers model; else "openai", "api" or "azure"
    model: str  # hub id or folder (local), model name or Azure deployment (API)
    dimensions: int | None = None
    trust_remote_code: bool = False

    @property
    def is_api(self) -> bool:
        return self.provider is not None

    def __str__(self) -> str:
        options = {}
        if self.dimensions is not None:
            options["dimensions"] = str(self.dimensions)
        if self.trust_remote_code:
            options["trust_remote_code"] = "true"
        prefix = f"{self.provider}:" if self.provider else ""
        return f"{prefix}{self.model}" + (f"?{urlencode(options)}" if options else "")


_TRUE, _FALSE = {"true", "1", "yes"}, {"false", "0", "no"}


def parse_reference(reference: str) -> ModelReference:
    """`[openai:|api:|azure:]model[?dimensions=N&trust_remote_code=true]`; anything else is a local model."""
    reference = (reference or "").strip()
    head, _, query = reference.partition("?")
    provider, colon, model = head.partition(":")
    if colon and provider.lower() in API_PREFIXES:
        provider = provider.lower()
    else:
        provider, model = None, head
    model = model.strip()
    if not model and provider is None:
        return ModelReference(None, "")  # resolve_model_path says what to choose
    if not model:
        raise EmbeddingModelError(f"{reference!r} names no model; e.g. openai:text-embedding-3-small.")
    options = dict(parse_qsl(query, keep_blank_values=True)) if query else {}
    unknown = set(options) - {"dimensions", "trust_remote_code"}
    if unknown:
        raise EmbeddingModelError(
            f"Unknown option {', '.join(sorted(unknown))} in the embedding model {reference!r}; "
            "only dimensions= (API models) and trust_remote_code= (local models) exist."
        )
    return _checked(ModelReference(provider, model, _dimensions(options, reference), _trust(options, reference)))


def embedding_reference(model: str, *, dimensions: int | None = None, trust_remote_code: bool = False) -> str:
    """The reference a collection records for `model` with the CLI's --dimensions / --trust-remote-code (or the
    page's fields); options already written into `model` stay, and must agree."""
    parsed = parse_reference(model)
    if dimensions is not None and parsed.dimensions not in (None, dimensions):
        raise EmbeddingModelError(f"{model!r} already asks for {parsed.dimensions} dimensions, not {dimensions}.")
    return str(
        _checked(
            ModelReference(
                parsed.provider,
                parsed.model,
                dimensions if dimensions is not None else parsed.dimensions,
                trust_remote_code or parsed.trust_remote_code,
            )
        )
    )


def _dimensions(options: dict[str, str], reference: str) -> int | None:
    if "dimensions" not in options:
        return None
    try:
        return int(options["dimensions"])
    except ValueError:
        raise EmbeddingModelError(f"dimensions in {reference!r} must be a whole number.") from None


def _trust(options: dict[str, str], reference: str) -> bool:
    value = options.get("trust_remote_code", "false").lower()
    if value not in _TRUE | _FALSE:
        raise EmbeddingModelError(f"trust_remote_code in {reference!r} must be true or false.")
    return value in _TRUE


def _checked(ref: ModelReference) -> ModelReference:
    if ref.dimensions is not None:
        if not ref.is_api:
            raise EmbeddingModelError(
                f"dimensions= is sent to embedding APIs only; {ref.model!r} is a local model (prefix it with api: "
                "or openai: if a server provides it)."
            )
        if not 1 <= ref.dimensions <= MAX_INDEXED_DIMENSIONS:
            raise EmbeddingModelError(f"dimensions must be between 1 and {MAX_INDEXED_DIMENSIONS}; got {ref.dimensions}.")
        if ref.model in KNOWN_DEFAULT_DIMENSIONS_REFUSED:
            raise EmbeddingModelError(f"{ref.model} does not take the dimensions parameter; leave it out.")
        native = KNOWN_DIMENSIONS.get(ref.model)
        if native is not None and ref.dimensions > native:
            raise EmbeddingModelError(f"{ref.model} gives at most {native} dimensions; got {ref.dimensions}.")
    if ref.trust_remote_code and ref.is_api:
        raise EmbeddingModelError("trust_remote_code applies to local models only; an API model runs on its server.")
    return ref


# --- the API key --------------------------------------------------------------------------------------

KEY_NAMES = ("EXPERT_STUDIO_EMBEDDING_API_KEY", "OPENAI_API_KEY")


def streamlit_secrets_files() -> list[Path]:
    """Where Streamlit reads secrets.toml by default (its `secrets.files` option): the user's, then the
    project's, the later winning. Read here with tomllib because the jobs and the CLI embed too, in
    processes where no Streamlit runs, and core never imports streamlit."""
    return [Path.home() / ".streamlit" / "secrets.toml", Path.cwd() / ".streamlit" / "secrets.toml"]


def api_key(settings: Settings) -> str | None:
    """The key from the settings (EXPERT_STUDIO_EMBEDDING_API_KEY or OPENAI_API_KEY in the environment or .env),
    else from Streamlit's secrets.toml (the same names at its top level); None when there is none."""
    if settings.embedding_api_key is not None and settings.embedding_api_key.get_secret_value():
        return settings.embedding_api_key.get_secret_value()
    found = None
    for path in streamlit_secrets_files():
        try:
            secrets = tomllib.loads(path.read_text(encoding="utf-8"))
        except (OSError, UnicodeDecodeError, tomllib.TOMLDecodeError):
            continue  # no file, or one Streamlit would refuse too: no key from it
        for name in KEY_NAMES:
            if isinstance(secrets.get(name), str) and secrets[name].strip():
                found = secrets[name].strip()
                break
    return found


_SK_PATTERN = re.compile(r"\b(sk-[A-Za-z0-9_*\-]{2})[A-Za-z0-9_*\-]{6,}")


def mask_secret(message: str, key: str | None) -> str:
    """`message` with the key (and anything shaped like an OpenAI key, which servers echo) blanked out."""
    if key:
        message = message.replace(key, "***")
    return _SK_PATTERN.sub(r"\1***", message)


# --- the embedder -------------------------------------------------------------------------------------


class ApiEmbedder:
    """The Embedder interface (name, dim, max_tokens, tokenizer, count_tokens, embed) over HTTP.

    Chunking counts tokens with a local tokenizer: the served model's own when it is also here (a hub id in
    the cache, a folder, the bundled MiniLM), else EXPERT_STUDIO_EMBEDDING_API_TOKENIZER's (for OpenAI's
    models that is an estimate: their BPE is not shipped; a chunk of 200 estimated tokens is far inside 8,191).
    An input over the model's limit is refused before it is sent, naming the limit's setting."""

    def __init__(self, reference: str, settings: Settings | None = None, *, sleep: Callable[[float], None] = time.sleep):
        self.settings = settings or get_settings()
        self.ref = parse_reference(reference)
        if not self.ref.is_api:
            raise EmbeddingModelError(f"{reference!r} is not an API model (prefix it with openai:, api: or azure:).")
        self.name = str(self.ref)
        self.base = self.settings.embedding_api_base.rstrip("/")
        self.sleep = sleep  # waits between retries go through here
        self._dim: int | None = self.ref.dimensions or KNOWN_DIMENSIONS.get(self.ref.model) or self._local_dimension()
        self._client_lock = threading.Lock()
        self._client = None

    # where the requests go ------------------------------------------------------------------------------

    @property
    def endpoint(self) -> str:
        """The URL requests go to (no secret in it: the key travels in a header)."""
        if self.ref.provider == "azure":
            query = urlencode({"api-version": self.settings.embedding_api_version})
            return f"{self.base}/openai/deployments/{quote(self.ref.model, safe='')}/embeddings?{query}"
        return f"{self.base}/embeddings"

    def _headers(self, key: str | None) -> dict[str, str]:
        if not key:
            return {}
        return {"api-key": key} if self.ref.provider == "azure" else {"Authorization": f"Bearer {key}"}

    def _body(self, texts: Sequence[str]) -> dict:
        body: dict = {"input": list(texts), "encoding_format": "float"}
        if self.ref.provider != "azure":  # Azure takes the model from the deployment in the URL
            body["model"] = self.ref.model
        if self.ref.dimensions is not None:
            body["dimensions"] = self.ref.dimensions
        return body

    # the model's shape ---------------------------------------------------------------------------------

    @cached_property
    def _local_folder(self) -> Path | None:
        """The served model's folder when it is also here (the same id in the cache, a folder, the bundled one)."""
        try:
            return Path(resolve_model_path(self.ref.model, self.settings))
        except EmbeddingModelError:
            return None

    def _local_dimension(self) -> int | None:
        folder = self._local_folder
        if folder is None:
            return None
        for pooling in sorted(folder.glob("*_Pooling/config.json")):
            try:
                return int(json.loads(pooling.read_text())["word_embedding_dimension"])
            except (OSError, ValueError, KeyError, TypeError):
                return None
        return None

    @property
    def dim(self) -> int:
        """The vectors' size: asked for (dimensions=), known (OpenAI's, or the same model here), else one request."""
        if self._dim is None:
            self._dim = len(self._request(["dimension probe"])[0])
        if self._dim > MAX_INDEXED_DIMENSIONS:
            raise EmbeddingApiError(
                f"{self.ref.model} gives {self._dim} dimensions; the vector index takes at most {MAX_INDEXED_DIMENSIONS}. "
                f"Ask for fewer: add ?dimensions=1024 to the model (CLI: --dimensions 1024), if the model takes it."
            )
        return self._dim

    @cached_property
    def tokenizer(self):
        """A `tokenizers.Tokenizer` (truncation and padding off) to chunk and count with."""
        from tokenizers import Tokenizer

        folder = self._local_folder
        if folder is None or not (folder / "tokenizer.json").is_file():
            folder = Path(resolve_model_path(self.settings.embedding_api_tokenizer, self.settings))
        tokenizer = Tokenizer.from_file(str(folder / "tokenizer.json"))
        tokenizer.no_truncation()
        tokenizer.no_padding()
        return tokenizer

    @cached_property
    def max_tokens(self) -> int:
        """Longest input in tokens: the setting for this model, OpenAI's known limit, the local model's own
        (as sentence-transformers reads it, without special tokens), else the default setting."""
        configured = self.settings.embedding_api_max_input_tokens
        if self.ref.model in configured:
            return int(configured[self.ref.model])
        if self.ref.model in KNOWN_MAX_INPUT_TOKENS:
            return KNOWN_MAX_INPUT_TOKENS[self.ref.model]
        folder = self._local_folder
        if folder is not None:
            try:
                length = int(json.loads((folder / "sentence_bert_config.json").read_text())["max_seq_length"])
                return length - self.tokenizer.num_special_tokens_to_add(False)
            except (OSError, ValueError, KeyError, TypeError, AttributeError):
                pass
        return self.settings.embedding_api_default_max_input_tokens

    def count_tokens(self, texts: Sequence[str]) -> list[int]:
        return [len(encoding.ids) for encoding in self.tokenizer.encode_batch(list(texts), add_special_tokens=False)]

    # embedding -------------------------------------------------------------------------------------------

    def embed(self, texts: Sequence[str], batch_size: int = 64) -> np.ndarray:
        """Unit-length float32 vectors, one row per text, in order. Requests carry at most
        `embedding_api_batch_size` inputs (the caller's `batch_size` sizes a local forward pass, not this)."""
        texts = list(texts)
        if not texts:
            return np.zeros((0, self.dim), dtype=np.float32)
        counts = self.count_tokens(texts)
        for position, count in enumerate(counts):
            if count > self.max_tokens:
                raise EmbeddingApiError(
                    f"A text of {count} tokens is longer than {self.ref.model} takes ({self.max_tokens} tokens; "
                    f"input {position + 1} of {len(texts)}, starting {texts[position][:40]!r}). Use smaller chunks, or "
                    "set the model's limit in EXPERT_STUDIO_EMBEDDING_API_MAX_INPUT_TOKENS if it takes more."
                )
        expected = self.dim
        rows: list[list[float]] = []
        for batch in self._batches(texts, counts):
            rows += self._request(batch)
            if (wrong := next((len(row) for row in rows if len(row) != expected), None)) is not None:
                raise EmbeddingApiError(
                    f"The embedding API at {self.endpoint} returned a vector of {wrong} dimensions for {self.ref.model}; "
                    f"expected {expected}. Check that the server runs the model the collection was made with "
                    "(and that it honours dimensions=, if set)."
                )
        vectors = np.asarray(rows, dtype=np.float32)
        norms = np.linalg.norm(vectors, axis=1, keepdims=True)
        return vectors / np.where(norms > 0, norms, 1.0)

    def _batches(self, texts: list[str], counts: list[int]):
        """Consecutive texts, at most `embedding_api_batch_size` and `embedding_api_max_batch_tokens` a request."""
        batch, tokens = [], 0
        for text, count in zip(texts, counts, strict=True):
            if batch and (len(batch) >= self.settings.embedding_api_batch_size
                          or tokens + count > self.settings.embedding_api_max_batch_tokens):
                yield batch
                batch, tokens = [], 0
            batch.append(text)
            tokens += count
        if batch:
            yield batch

    def _request(self, texts: list[str]) -> list[list[float]]:
        """One request's vectors in input order, retried on rate limits, server errors and lost connections."""
        import httpx2

        key = api_key(self.settings)
        if not key and _needs_key(self.base):
            raise EmbeddingApiError(
                f"{self.name} needs an API key for {self.base}: set EXPERT_STUDIO_EMBEDDING_API_KEY or OPENAI_API_KEY "
                "in the environment (or .env), or put one of them in .streamlit/secrets.toml."
            )
        attempts = self.settings.embedding_api_max_retries + 1
        for attempt in range(attempts):
            last = attempt == attempts - 1
            try:
                response = self._http().post(self.endpoint, json=self._body(texts), headers=self._headers(key))
            except httpx2.TransportError as error:  # refused, reset, timed out
                if last:
                    raise EmbeddingApiError(
                        mask_secret(f"Cannot reach the embedding API at {self.endpoint} ({type(error).__name__}: {error}) "
                                    f"after {attempts} tries. Check EXPERT_STUDIO_EMBEDDING_API_BASE and that the server "
                                    "runs.", key)
                    ) from None
                self._wait(attempt, None)
                continue
            if response.status_code in RETRY_STATUSES and not last:
                logger.info("Embedding API %s answered %s; retrying", self.endpoint, response.status_code)
                self._wait(attempt, response.headers)
                continue
            if response.status_code != 200:
                raise EmbeddingApiError(mask_secret(self._failure_message(response, attempts), key))
            return self._vectors(response, len(texts), key)
        raise AssertionError("unreachable")

    def _http(self):
        import httpx2

        with self._client_lock:
            if self._client is None:
                self._client = httpx2.Client(timeout=self.settings.embedding_api_timeout_s, follow_redirects=False)
            return self._client

    def _wait(self, attempt: int, headers) -> None:
        """Retry-After (seconds or a date, or OpenAI's retry-after-ms) when the server says; else doubling waits."""
        wait = self.settings.embedding_api_backoff_s * (2**attempt)
        said = _retry_after(headers) if headers is not None else None
        if said is not None:
            wait = said
        self.sleep(min(max(wait, 0.0), self.settings.embedding_api_max_wait_s))

    def _failure_message(self, response, attempts: int) -> str:
        detail = _server_message(response)
        status = response.status_code
        where = f"The embedding API at {self.endpoint} answered {status} for {self.ref.model}"
        if status in (401, 403):
            advice = "Check the key (EXPERT_STUDIO_EMBEDDING_API_KEY or OPENAI_API_KEY) and that it may use this model."
        elif status == 404:
            advice = ("Check the model name (the deployment name for azure:) and EXPERT_STUDIO_EMBEDDING_API_BASE "
                      "(it ends before /embeddings, e.g. https://api.openai.com/v1).")
        elif status in RETRY_STATUSES:
            advice = f"It still failed after {attempts} tries; try again later."
        else:
            advice = "The request was refused as sent; the server's message says why."
        return f"{where}: {detail} {advice}"

    def _vectors(self, response, count: int, key: str | None) -> list[list[float]]:
        """The response's vectors put in input order by their `index`; a malformed answer is an error."""
        try:
            data = response.json()["data"]
            by_index = {int(item["index"]): _decode(item["embedding"]) for item in data}
        except (ValueError, KeyError, TypeError) as error:
            raise EmbeddingApiError(
                mask_secret(f"The embedding API at {self.endpoint} sent an answer that is not an embeddings list "
                            f"({type(error).__name__}: {error}).", key)
            ) from None
        if sorted(by_index) != list(range(count)):
            raise EmbeddingApiError(
                f"The embedding API at {self.endpoint} returned vectors for inputs {sorted(by_index)[:10]} of "
                f"{count} sent; expected one for each."
            )
        return [by_index[i] for i in range(count)]


def _decode(embedding) -> list[float]:
    """A vector as floats (`encoding_format` float), or base64 little-endian float32 from servers that send it."""
    if isinstance(embedding, str):
        return np.frombuffer(base64.b64decode(embedding), dtype="<f4").tolist()
    if not isinstance(embedding, list) or not all(isinstance(v, int | float) and math.isfinite(v) for v in embedding):
        raise TypeError("an embedding is not a list of finite numbers")
    return [float(v) for v in embedding]


def _retry_after(headers) -> float | None:
    try:
        if "retry-after-ms" in headers:
            return float(headers["retry-after-ms"]) / 1000
        if "retry-after" in headers:
            value = headers["retry-after"].strip()
            try:
                return float(value)
            except ValueError:
                moment = email.utils.parsedate_to_datetime(value)
                return moment.timestamp() - time.time()
    except (TypeError, ValueError, OverflowError):
        return None
    return None


def _server_message(response) -> str:
    """The server's own error message, short (OpenAI: {"error": {"message": ...}}; others: text)."""
    try:
        body = response.json()
        error = body.get("error", body) if isinstance(body, dict) else body
        message = error.get("message", error) if isinstance(error, dict) else error
        text = message if isinstance(message, str) else json.dumps(message)
    except ValueError:
        text = response.text
    text = " ".join(text.split())
    return (text[:300] + "…") if len(text) > 300 else (text or "(no message)")


def _needs_key(base: str) -> bool:
    """OpenAI and Azure OpenAI always want a key; a local server may not, so none is sent when none is set."""
    from urllib.parse import urlsplit

    host = (urlsplit(base).hostname or "").lower()
    return host == "api.openai.com" or host.endswith(".openai.azure.com")


def _api_settings(settings: Settings) -> tuple:
    """The settings an embedder is made with (not the key: that is read at each request)."""
    return tuple(
        json.dumps(value, sort_keys=True, default=str)
        for name, value in settings.model_dump().items()
        if name.startswith("embedding_api_") and name != "embedding_api_key"
    )


_lock = threading.Lock()
_embedders: dict[tuple, ApiEmbedder] = {}


def load_api_embedder(reference: str, settings: Settings | None = None) -> ApiEmbedder:
    """One embedder per reference and API settings per process (it keeps its HTTP connections and its size)."""
    settings = settings or get_settings()
    key = (str(parse_reference(reference)), _api_settings(settings))
    with _lock:
        if key not in _embedders:
            _embedders[key] = ApiEmbedder(reference, settings)
        return _embedders[key]


def forget_api_embedders() -> None:
    """Drop the cached embedders (tests that change the server behind a reference)."""
    with _lock:
        _embedders.clear()
