"""Which models a user may make the app load: presets, the Hugging Face cache, folders under the model roots.

Model references come from users: the sidebar and the pages, the CLI's --model options, job parameters, an
imported adapter's base model, a collection's embedding model. Loading any server path would let them read
files anywhere, and an error that says whether a path exists tells them what is on the server. So a folder
counts only when it lies under a model root once symlinks and `..` are resolved, and a refusal reads the same
whether or not the path exists; it does not repeat the path either, since callers may have rewritten it
(made it absolute, followed its links) before it got here. Language models (core.models.registry) and
embedding models (core.documents.embeddings) both go through `locate_model`.
"""

from __future__ import annotations

from collections.abc import Callable, Iterable, Mapping
from pathlib import Path

from core.config import Settings, get_settings
from core.errors import UserError


class ModelSourceError(UserError):
    """The model reference names nothing the app may load; callers pass their own subclass of UserError."""


def app_models_dir(settings: Settings | None = None) -> Path:
    """The app's own models folder (converted and merged models): models_dir, else data_dir/models."""
    settings = settings or get_settings()
    return (settings.models_dir or settings.data_dir / "models").expanduser().resolve()


def model_roots(settings: Settings | None = None) -> list[Path]:
    """The folders models may be loaded from: the app's models folder, then EXPERT_STUDIO_MODEL_ROOTS."""
    settings = settings or get_settings()
    roots = [app_models_dir(settings), *(root.expanduser().resolve() for root in settings.model_roots)]
    return list(dict.fromkeys(roots))


def folder_under_roots(reference: str, roots: Iterable[Path]) -> Path | None:
    """The resolved path `reference` names (absolute, or relative to the working folder) when it lies under
    one of `roots` after symlinks and `..` are resolved; None otherwise, whether or not it exists."""
    try:
        path = Path(reference).expanduser().resolve()
    except (OSError, RuntimeError, ValueError):  # "~nobody/...", a symlink loop, a NUL byte: refused like any other
        return None
    return path if any(path.is_relative_to(root) for root in roots) else None


def absolute_if_allowed_folder(reference: str, settings: Settings | None = None,
                               extra_roots: Iterable[Path] = ()) -> str:
    """A relative model folder means the caller's working folder, but a job's process runs elsewhere: the
    reference made absolute when it names a folder under the model roots; anything else unchanged, so that
    the allow-list answers it alike whether or not it exists."""
    if is_hub_id(reference):
        return reference
    path = folder_under_roots(reference, [*model_roots(settings), *extra_roots])
    return str(path) if path is not None and path.is_dir() else reference


def is_hub_id(reference: str) -> bool:
    """`org/name` or `name` as the Hugging Face Hub spells repository ids (no `..`, no leading `/`, `.` or `~`)."""
    from huggingface_hub.errors import HFValidationError
    from huggingface_hub.utils import validate_repo_id

    try:
        validate_repo_id(reference)
    except HFValidationError:
        return False
    return True


def _roots_text(roots: list[Path]) -> str:
    return ", ".join(str(root) for root in roots)


def refusal_message(settings: Settings | None = None) -> str:
    """The one answer for every reference outside the allowed sources: the same whether or not the path exists."""
    return (
        f"Models can be loaded from the presets, the Hugging Face cache, or folders under {_roots_text(model_roots(settings))}; "
        "the model given is none of these (it is not a model folder there). EXPERT_STUDIO_MODEL_ROOTS adds folders."
    )


def locate_model(
    reference: str,
    *,
    settings: Settings | None = None,
    presets: Mapping[str, Callable[[], Path]] | None = None,
    extra_roots: Iterable[Path] = (),
    error: type[UserError] = ModelSourceError,
) -> Path:
    """The local folder of a model reference, or `error` saying what may be loaded.

    In order: a preset (`presets` maps its id to a function giving its folder), a folder under the model roots
    (or `extra_roots`, such as a model shipped inside a Python package), a hub id in the local Hugging Face
    cache (nothing is downloaded). Paths are resolved before they are compared with the roots, and nothing
    outside the roots is looked at beyond that."""
    settings = settings or get_settings()
    reference = (reference or "").strip()
    roots = model_roots(settings)
    if not reference:
        raise error(f"Choose a model: a preset, a Hugging Face id, or a folder under {_roots_text(roots)}.")
    if presets and reference in presets:
        return presets[reference]()
    extra = []
    for root in extra_roots:
        try:
            extra.append(Path(root).resolve())
        except (OSError, RuntimeError):
            continue
    folder = folder_under_roots(reference, [*roots, *extra])
    if folder is not None and folder.is_dir():
        return folder
    if is_hub_id(reference):
        return cached_hub_snapshot(reference, roots, error)
    if folder is not None:  # under a root: saying it is missing there tells nothing about the rest of the server
        raise error(f"{reference} is not a model folder under {_roots_text(roots)}.")
    raise error(refusal_message(settings))


def cached_hub_snapshot(model_id: str, roots: list[Path], error: type[UserError] = ModelSourceError) -> Path:
    """The folder of `model_id` in the local Hugging Face cache; never downloads."""
    from huggingface_hub import snapshot_download
    from huggingface_hub.errors import HFValidationError, LocalEntryNotFoundError

    try:
        return Path(snapshot_download(model_id, local_files_only=True))
    except (LocalEntryNotFoundError, HFValidationError, OSError, ValueError) as cause:
        raise error(
            f"{model_id} could not be loaded offline: it is not on this machine, and models are never downloaded at "
            f"run time. Download it first (Models page, or `python -m core models download {model_id}`, where the "
            f"Hub is reachable); or on a machine with internet run `hf download {model_id}` and copy the Hugging Face "
            f"cache (~/.cache/huggingface) here, or put the model's folder under {_roots_text(roots)}."
        ) from cause
