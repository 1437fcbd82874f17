"""python -m core.documents.reembed_job --job ID: a collection re-embedded with another model, as a
job of its own process (kind "reembed").

`submit_reembed` checks the collection and loads the model (the app searches with it afterwards
anyway), then queues the job; `run` re-embeds every chunk with the job's progress, with no lock held,
then writes the new vectors, catches up the documents uploaded meanwhile and switches the model in
one short transaction under the collection's lock (`reembed_collection` says why that order is safe
against uploads). A cancel or a failure changes nothing: searches keep the old vectors until the
new ones are all there.
"""

from __future__ import annotations

from pydantic import BaseModel, ConfigDict

from core.db import Database
from core.documents.embeddings import bundled_folders, load_embedder
from core.documents.library import LibraryError, check_embedder_fits, get_collection, reembed_collection
from core.jobs.process import JobContext, main_for
from core.jobs.queue import Job, create_job
from core.security.model_sources import absolute_if_allowed_folder

KIND = "reembed"


class ReembedParams(BaseModel):
    """A re-embed job's parameters as stored in its row (checked before it is queued)."""

    model_config = ConfigDict(extra="forbid")

    collection: str
    embedding_model: str


def submit_reembed(db: Database, collection: str, embedding_model: str) -> Job:
    """Check the collection and the model, then queue the re-embedding (one per collection)."""
    embedding_model = (embedding_model or "").strip()
    if not embedding_model:
        raise LibraryError("Name the new embedding model: a sentence-transformers id, or the folder of one.")
    # the caller's folder: the job's process runs elsewhere (only folders the allow-list accepts)
    embedding_model = absolute_if_allowed_folder(embedding_model, extra_roots=bundled_folders())
    info = get_collection(db, collection)
    check_embedder_fits(info, load_embedder(embedding_model))
    params = ReembedParams(collection=info.name, embedding_model=embedding_model)
    return create_job(db, kind=KIND, params=params, title=f"Re-embed {info.name} with {embedding_model}",
                      unique_key="collection")


def run(context: JobContext) -> dict:
    """The job's entry point: every chunk embedded again, then the collection switched, at once."""
    p = ReembedParams.model_validate(context.job.params)
    print(f"Re-embedding collection {p.collection!r} with {p.embedding_model} (searches and uploads use the old model "
          "until the new vectors are all written; uploads made meanwhile are re-embedded too).", flush=True)
    info = reembed_collection(context.db, p.collection, p.embedding_model, progress=context.fraction)
    message = f"Re-embedded {info.name!r} with {info.embedding_model} ({info.embedding_dim} dimensions)."
    print(message, flush=True)
    return {"collection": info.name, "embedding_model": info.embedding_model, "embedding_dim": info.embedding_dim,
            "message": message}


if __name__ == "__main__":
    main_for(run)
