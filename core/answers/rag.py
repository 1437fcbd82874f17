"""Retrieval-augmented answers: retrieve → fit the passages into the context budget → a prompt
that numbers them → a streamed answer that cites them as [1], [2].

When nothing relevant is retrieved the answer says so plainly, without asking the model, so it
cannot invent one.
"""

from __future__ import annotations

import re
import time
from collections.abc import Iterator
from dataclasses import asdict, dataclass, field

from core.config import Settings, get_settings
from core.db import Database, open_database
from core.documents.library import LibraryError, get_collection
from core.documents.search import SearchHit, search
from core.errors import UserError
from core.models import NO_ADAPTER, Generation, LoadedModel, count_chat_tokens, load_model, stream_chat
from core.models.adapters import find_adapter
from core.models.generation import fold_system_turn_if_refused
from core.models.served import ServedStats, is_served, served_model, stream_served_chat

# The instruction above the numbered passages. Which one is the default is decided by the benchmark
# exam (docs/benchmarks.md, "RAG defaults"); the setting `rag_prompt` picks another, and every
# evaluation run records which one produced its answers.
RAG_PROMPTS = {
    "cite-or-unknown": (
        "You are a careful expert assistant. Answer the question using only the numbered sources. "
        "Cite each source you use with its number in square brackets, like [1] or [2]. "
        "If the sources do not contain the answer, say that you do not know."
    ),
    "short-cited": (
        "Answer the question in one or two sentences, using only the numbered sources. "
        "Cite the source you use, like [1]. If the sources do not contain the answer, reply: "
        "The documents do not say."
    ),
}
SYSTEM_PROMPT = RAG_PROMPTS["cite-or-unknown"]


class QuestionError(UserError):
    """A question that cannot be answered as asked; the message says what to change."""


@dataclass(frozen=True)
class Source:
    number: int
    chunk_id: int
    document_id: int
    filename: str
    page: int | None
    heading: str | None
    text: str  # as given to the model (cut to fit when the first passage alone is too long)
    score: float
    similarity: float | None

    @property
    def location(self) -> str:
        if self.page:
            return f"page {self.page}"
        return self.heading or "text"

    @classmethod
    def from_hit(cls, number: int, hit: SearchHit, text: str | None = None) -> Source:
        return cls(number, hit.chunk_id, hit.document_id, hit.filename, hit.page, hit.heading,
                   hit.text if text is None else text, hit.score, hit.vector_similarity)


def _format_source(source: Source) -> str:
    return f"[{source.number}] {source.filename} ({source.location})\n{source.text}"


def rag_messages(question: str, sources: list[Source], prompt: str | None = None) -> list[dict]:
    """The RAG prompt: an instruction (`prompt`, default the `rag_prompt` setting), the numbered
    passages, the question. Training data in the RAFT style is built with this same function."""
    context = "\n\n".join(_format_source(s) for s in sources)
    instruction = RAG_PROMPTS[prompt or get_settings().rag_prompt]
    return [
        {"role": "system", "content": instruction},
        {"role": "user", "content": f"Sources:\n\n{context}\n\nQuestion: {question}"},
    ]


@dataclass
class RagPrompt:
    messages: list[dict]
    sources: list[Source]
    prompt_tokens: int
    left_out: int  # retrieved passages that did not fit the budget


def fit_sources(loaded: LoadedModel, question: str, hits: list[SearchHit], *, max_new_tokens: int,
                prompt: str | None = None) -> RagPrompt:
    """Number and add passages, best first, while the prompt leaves `max_new_tokens` for the answer."""
    budget = loaded.context_window - max_new_tokens
    sources: list[Source] = []
    for hit in hits:
        candidate = [*sources, Source.from_hit(len(sources) + 1, hit)]
        if count_chat_tokens(loaded, fold_system_turn_if_refused(loaded, rag_messages(question, candidate, prompt))) <= budget:
            sources = candidate
        elif not sources:  # the best passage alone is too long: keep as much of it as fits
            cut = _cut_to_fit(loaded, question, hit, budget, prompt)
            if cut is not None:
                sources = [cut]
    messages = fold_system_turn_if_refused(loaded, rag_messages(question, sources, prompt))
    return RagPrompt(messages, sources, count_chat_tokens(loaded, messages), len(hits) - len(sources))


def _cut_to_fit(loaded: LoadedModel, question: str, hit: SearchHit, budget: int, prompt: str | None = None) -> Source | None:
    ids = loaded.tokenizer(hit.text, add_special_tokens=False)["input_ids"]
    low, high, best = 0, len(ids), None
    while low <= high:  # the longest prefix that fits
        middle = (low + high) // 2
        source = Source.from_hit(1, hit, loaded.tokenizer.decode(ids[:middle]) + " …")
        if count_chat_tokens(loaded, fold_system_turn_if_refused(loaded, rag_messages(question, [source], prompt))) <= budget:
            best, low = source, middle + 1
        else:
            high = middle - 1
    return best if best is not None and len(best.text) > 2 else None


_CITATION = re.compile(r"\[(\d+(?:\s*[,;]\s*\d+)*)\]")


def cited_numbers(text: str, source_count: int) -> list[int]:
    """The source numbers an answer cites ([1], [2, 3]), in order of first mention."""
    seen: list[int] = []
    for group in _CITATION.findall(text):
        for number in map(int, re.split(r"\s*[,;]\s*", group)):
            if 1 <= number <= source_count and number not in seen:
                seen.append(number)
    return seen


@dataclass
class AnswerTimings:
    retrieval_seconds: float = 0.0
    time_to_first_token: float | None = None  # from the question, retrieval included
    total_seconds: float = 0.0
    tokens_per_second: float = 0.0
    context_tokens: int = 0
    new_tokens: int = 0
    tokens_estimated: bool = False  # a served model whose server sent no usage: the counts are the app's own


@dataclass
class Answer:
    question: str
    model: str
    adapter: str
    collection: str | None
    sources: list[Source] = field(default_factory=list)
    text: str = ""
    nothing_found: bool = False
    timings: AnswerTimings = field(default_factory=AnswerTimings)
    _generation: Generation | None = field(default=None, repr=False)
    _started: float = field(default_factory=time.perf_counter, repr=False)

    def stream(self) -> Iterator[str]:
        """The answer's text as it is produced; `text` and `timings` are final afterwards."""
        if self._generation is None:
            yield self.text
            self.timings.total_seconds = time.perf_counter() - self._started
            return
        for piece in self._generation:
            if self.timings.time_to_first_token is None:
                self.timings.time_to_first_token = time.perf_counter() - self._started
            yield piece
        stats = self._generation.stats
        self.text = self._generation.text.strip()
        self.timings.total_seconds = time.perf_counter() - self._started
        self.timings.tokens_per_second = stats.tokens_per_second
        self.timings.new_tokens = stats.new_tokens
        if isinstance(stats, ServedStats):  # the server's own count of the prompt, when it sent one
            self.timings.context_tokens, self.timings.tokens_estimated = stats.prompt_tokens, stats.tokens_estimated
        self._generation = None  # done: later streams replay the text; the model threads can go

    def complete(self) -> Answer:
        for _ in self.stream():
            pass
        return self

    @property
    def cited(self) -> list[int]:
        return cited_numbers(self.text, len(self.sources))

    def to_dict(self) -> dict:
        return {
            "question": self.question, "answer": self.text, "model": self.model, "adapter": self.adapter,
            "collection": self.collection, "nothing_found": self.nothing_found, "cited": self.cited,
            "sources": [asdict(s) for s in self.sources], "timings": asdict(self.timings),
        }


def ask(
    db: Database | None,
    question: str,
    *,
    collection: str | None = None,
    use_rag: bool = True,
    adapter: str | None = None,
    model_id: str | None = None,
    load_in_4bit: bool | None = None,
    max_new_tokens: int | None = None,
    temperature: float | None = None,
    top_p: float | None = None,
    document_ids: list[int] | None = None,
    settings: Settings | None = None,
) -> Answer:
    """Prepare an answer to `question` (retrieval happens here, generation when it is streamed)."""
    settings = settings or get_settings()
    started = time.perf_counter()
    question = (question or "").strip()
    if not question:
        raise QuestionError("Type a question first.")
    max_new_tokens = max_new_tokens or settings.max_new_tokens
    # `openai:<name>` is answered by the chat endpoint (core/models/served.py); retrieval stays here.
    served = is_served(model_id or settings.language_model)
    loaded = served_model(model_id, settings) if served else load_model(model_id, load_in_4bit=load_in_4bit, settings=settings)
    adapter = adapter or NO_ADAPTER
    # Adapters live in the database (an answer without RAG may come without one: open it then); a served
    # model's adapter lives on its server, under the adapter's name.
    adapter_path = (find_adapter(db or open_database(settings), adapter, settings).path
                    if adapter != NO_ADAPTER and not served else None)
    if use_rag and not collection:
        raise QuestionError("Choose a collection to answer from, or turn RAG off.")
    answer = Answer(question, loaded.model_id, adapter, collection if use_rag else None, _started=started)
    prepared = prepare_answer(db, loaded, question, collection=collection if use_rag else None,
                              max_new_tokens=max_new_tokens, document_ids=document_ids, settings=settings)
    answer.timings.retrieval_seconds = prepared.retrieval_seconds
    answer.timings.context_tokens = prepared.prompt_tokens
    answer.sources = prepared.sources
    if prepared.nothing_found:
        answer.nothing_found, answer.text = True, NOTHING_FOUND.format(collection=collection)
        return answer
    messages = prepared.messages
    answer._generation = (stream_served_chat if served else stream_chat)(
        loaded, messages, max_new_tokens=max_new_tokens,
        temperature=settings.temperature if temperature is None else temperature,
        top_p=settings.top_p if top_p is None else top_p, adapter=adapter, adapter_path=adapter_path,
    )
    return answer


NOTHING_FOUND = (
    "I found nothing about this in the collection {collection!r}, so I cannot answer from your "
    "documents. Try other words, add documents that cover it, or ask without RAG."
)


@dataclass
class PreparedAnswer:
    """What goes to the model for one question: the messages, and for RAG what retrieval found."""

    messages: list[dict]
    sources: list[Source]
    hits: list[SearchHit]  # everything retrieved, best first (also those below the threshold)
    prompt_tokens: int
    retrieval_seconds: float = 0.0
    nothing_found: bool = False


def prepare_answer(db: Database | None, loaded: LoadedModel, question: str, *, collection: str | None,
                   max_new_tokens: int, document_ids: list[int] | None = None,
                   settings: Settings | None = None) -> PreparedAnswer:
    """The prompt for `question`: the model alone (collection None) or RAG from `collection`.
    The page, the CLI, the comparison and the evaluation all build prompts here."""
    settings = settings or get_settings()
    question_tokens = count_chat_tokens(loaded, [{"role": "user", "content": question}])
    if question_tokens + max_new_tokens > loaded.context_window:
        raise QuestionError(
            f"The question is {question_tokens:,} tokens long; {loaded.model_id} reads {loaded.context_window:,} "
            f"tokens in all, and {max_new_tokens:,} are kept for the answer. Shorten the question."
        )
    if collection is None:
        messages = [{"role": "user", "content": question}]
        return PreparedAnswer(messages, [], [], question_tokens)
    started = time.perf_counter()
    _require_documents(db, collection)
    hits = search(db, question[: settings.max_query_chars], collection=collection, k=settings.rag_top_k,
                  mode="hybrid", document_ids=document_ids, settings=settings)
    relevant = [h for h in hits if h.vector_similarity is not None and h.vector_similarity >= settings.rag_min_similarity]
    if not relevant:
        return PreparedAnswer([], [], hits, 0, time.perf_counter() - started, nothing_found=True)
    fitted = fit_sources(loaded, question, relevant, max_new_tokens=max_new_tokens, prompt=settings.rag_prompt)
    return PreparedAnswer(fitted.messages, fitted.sources, hits, fitted.prompt_tokens, time.perf_counter() - started)


def _require_documents(db: Database, collection: str) -> None:
    from core.documents.library import list_collections

    info = next((c for c in list_collections(db) if c.name == collection), None)
    if info is None:
        get_collection(db, collection)  # raises the usual "no collection named ..." message
        raise LibraryError(f"No collection named {collection!r}.")
    if info.document_count == 0:
        raise QuestionError(
            f"The collection {collection!r} has no documents yet: upload some on the Documents page "
            "(or `python -m core ingest PATH --collection NAME`), or ask without RAG."
        )
