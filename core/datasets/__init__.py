"""Training data for fine-tuning: import JSONL/JSON/CSV files (chat, Alpaca, prompt/completion),
generate question/answer pairs, plain text or RAFT examples from a collection, edit, split by document, and hand
the examples to the training code. See docs/datasets.md.

    preview = preview_dataset("faq.jsonl", data, model_id=..., max_tokens=1024)  # writes nothing
    save_dataset(db, "faq", preview, skip_bad_rows=False)
    train, validation = load_training_examples(db, "faq")
"""

from core.datasets.errors import DatasetError
from core.datasets.formats import FORMAT_LABELS, RowProblem
from core.datasets.generation import GenerationReport, QAPair, generate_qa_dataset, generate_text_dataset, parse_qa
from core.datasets.preview import (
    DEFAULT_MAX_TOKENS,
    DatasetPreview,
    ImportedExample,
    LengthStats,
    preview_dataset,
    preview_dataset_file,
)
from core.datasets.raft import RaftReport, build_raft_dataset
from core.datasets.splitting import DEFAULT_VALIDATION_FRACTION
from core.datasets.store import (
    DatasetInfo,
    ExampleInfo,
    delete_dataset,
    delete_examples,
    get_dataset,
    list_datasets,
    list_examples,
    load_training_examples,
    save_dataset,
    split_dataset,
    update_example,
)

__all__ = [
    "DEFAULT_MAX_TOKENS", "DEFAULT_VALIDATION_FRACTION", "FORMAT_LABELS", "DatasetError", "DatasetInfo", "DatasetPreview",
    "ExampleInfo", "GenerationReport", "ImportedExample", "LengthStats", "QAPair", "RaftReport", "RowProblem",
    "build_raft_dataset", "delete_dataset",
    "delete_examples", "generate_qa_dataset", "generate_text_dataset", "get_dataset", "list_datasets", "list_examples",
    "load_training_examples", "parse_qa", "preview_dataset", "preview_dataset_file", "save_dataset", "split_dataset", "update_example",
]
