"""The kinds of job, and the module that runs each one in its own process.

Only module names live here (nothing is imported), so the worker stays light and a crash while
importing one kind's code fails that job alone. Each module validates its own parameters with a
pydantic model and runs through `core.jobs.process.run_job_process`.
"""

from __future__ import annotations

from dataclasses import dataclass

from core.jobs.errors import JobError


@dataclass(frozen=True)
class JobKind:
    name: str
    module: str
    label: str
    # Loads a language model (GPU memory, or both CPU cores): one such job per machine at a time.
    exclusive: bool


KINDS: dict[str, JobKind] = {
    kind.name: kind
    for kind in (
        JobKind("train", "core.training.run", "Fine-tune", exclusive=True),
        JobKind("evaluate", "core.evaluation.run", "Evaluate", exclusive=True),
        JobKind("generate-dataset", "core.datasets.generation_job", "Generate training data", exclusive=True),
        JobKind("reembed", "core.documents.reembed_job", "Re-embed a collection", exclusive=False),
        JobKind("merge", "core.models.merge_job", "Merge an adapter", exclusive=True),
        JobKind("generate-exam", "core.evaluation.exam_job", "Generate an exam", exclusive=True),
        JobKind("download", "core.models.download_job", "Download a model", exclusive=False),
    )
}
EXCLUSIVE_KINDS = tuple(name for name, kind in KINDS.items() if kind.exclusive)


def job_kind(name: str) -> JobKind:
    try:
        return KINDS[name]
    except KeyError:
        raise JobError(f"Unknown job kind {name!r}: one of {', '.join(KINDS)}.") from None
