"""Training data on the real database: import in every format with every bad row named by its line,
lengths in the base model's tokens, saves that are one transaction, generation from a collection
(tiny random model, scripted replies, and the real SmolLM2), edits, and a split that never puts
one document on both sides."""

import csv
import io
import json
import math

import pytest
from sqlalchemy import text
from transformers import AutoTokenizer

import core.datasets.generation
from core.datasets import (
    DatasetError,
    delete_dataset,
    delete_examples,
    generate_qa_dataset,
    generate_text_dataset,
    get_dataset,
    list_datasets,
    list_examples,
    load_training_examples,
    parse_qa,
    preview_dataset,
    save_dataset,
    split_dataset,
    update_example,
)
from core.datasets import store as dataset_store
from core.datasets.generation import BORROWED, CUT_OFF, DUPLICATE, NO_PAIR
from core.datasets.preview import template_lengths
from core.documents.ingest import ingest_bytes
from core.documents.library import create_collection
from core.models import BUNDLED_MODEL

QUESTION, ANSWER = "When does the relief valve open?", "At 3.5 bar."
CHAT = [{"role": "user", "content": QUESTION}, {"role": "assistant", "content": ANSWER}]

EQUIPMENT = [
    ("Pump P-1", "moves cooling water from the river to the condenser", "Replace its mechanical seal every 2,000 hours",
     "If it runs dry, stop it at once: the seal overheats within seconds"),
    ("Boiler B2", "makes steam for the paper machine", "Test its relief valve every quarter; it opens at 3.5 bar",
     "Never bypass the low-water cutoff"),
    ("Valve V-7", "is a gate valve on the main water line", "Exercise it fully once a year so it does not seize",
     "Never throttle with it: a gate valve is either fully open or fully closed"),
    ("Fan F-3", "cools the tower and runs at 900 rpm", "Check the belt tension every month",
     "Lock out the motor before touching the blades"),
    ("Compressor C-5", "supplies instrument air at 7 bar", "Drain the receiver every shift",
     "Do not open the oil cap while the compressor is under pressure"),
    ("Heat exchanger H-4", "heats the process water with steam", "Clean the plates every six months",
     "Let it cool for an hour before opening it"),
    ("Conveyor K-2", "carries wood chips to the digester", "Grease the rollers every week",
     "Pull the emergency cord to stop it anywhere along its length"),
    ("Tank T-9", "stores 40 cubic metres of caustic soda", "Inspect the level gauge every day",
     "Wear a face shield and gloves near its valves"),
]


def document(name: str, role: str, care: str, warning: str) -> str:
    return f"{name}.\n\n{name} {role}.\n\nMaintenance: {care}.\n\nSafety: {warning}."


def jsonl(*rows) -> bytes:
    """JSON Lines from objects, or strings written as they are (to break a line on purpose)."""
    return "\n".join(row if isinstance(row, str) else json.dumps(row) for row in rows).encode()


def csv_bytes(rows: list[list[str]], delimiter: str = ",", encoding: str = "utf-8") -> bytes:
    out = io.StringIO()
    csv.writer(out, delimiter=delimiter, lineterminator="\n").writerows(rows)
    return out.getvalue().encode(encoding)


def template_length(model: str, messages: list[dict]) -> int:
    tokenizer = AutoTokenizer.from_pretrained(model)
    return len(tokenizer.apply_chat_template(messages, tokenize=True, return_dict=True)["input_ids"])


def row_counts(db) -> tuple[int, int]:
    with db.engine.connect() as connection:
        return tuple(connection.execute(text("SELECT (SELECT count(*) FROM datasets), (SELECT count(*) FROM training_examples)")).one())


@pytest.fixture(scope="module")
def plant(db):
    """Eight documents of three or four small chunks each."""
    create_collection(db, "plant", chunk_tokens=24, chunk_overlap=0)
    for entry in EQUIPMENT:
        outcome = ingest_bytes(db, "plant", f"{entry[0]}.txt", document(*entry).encode())
        assert outcome.ok and outcome.chunks >= 2, outcome.message
    return "plant"


def chunk_rows(db, collection: str) -> dict[int, tuple[int, str]]:
    """chunk id → (document id, text)."""
    with db.engine.connect() as connection:
        rows = connection.execute(
            text("SELECT c.id, c.document_id, c.text FROM chunks c JOIN collections k ON k.id = c.collection_id WHERE k.name = :n"),
            {"n": collection},
        ).all()
    return {r.id: (r.document_id, r.text) for r in rows}


def sides(db, dataset: str) -> tuple[set, set]:
    """Documents that feed the train side and the validation side."""
    examples = list_examples(db, dataset, limit=10_000)
    return ({e.document_id for e in examples if e.split == "train"}, {e.document_id for e in examples if e.split == "validation"})


# --- import: formats --------------------------------------------------------------------------

JSONL_FORMATS = [
    ("chat", {"messages": CHAT}, "chat (messages) in JSON Lines"),
    ("alpaca", {"instruction": QUESTION, "input": "", "output": ANSWER}, "Alpaca (instruction, input, output) in JSON Lines"),
    ("prompt_completion", {"prompt": QUESTION, "completion": ANSWER}, "prompt/completion in JSON Lines"),
]


@pytest.mark.parametrize(("format_", "row", "detected"), JSONL_FORMATS, ids=[f[0] for f in JSONL_FORMATS])
def test_each_jsonl_format_is_detected_and_becomes_chat(tiny_llama, format_, row, detected):
    preview = preview_dataset("train.jsonl", jsonl(row, row), model_id=tiny_llama)
    assert (preview.format, preview.detected, preview.problems) == (format_, detected, [])
    assert [e.messages for e in preview.examples] == [CHAT, CHAT] and [e.row for e in preview.examples] == [1, 2]
    assert preview.examples[0].tokens == template_length(tiny_llama, CHAT)
    assert preview.summary == f"train.jsonl: {detected}; 2 valid examples, no problems."


CSV_FORMATS = [
    ("chat", [["messages"], [json.dumps(CHAT)]], ","),
    ("alpaca", [["Instruction", "Input", "Output"], [QUESTION, "", ANSWER]], ","),
    ("prompt_completion", [["prompt", "completion"], [QUESTION, ANSWER]], ";"),
]


@pytest.mark.parametrize(("format_", "rows", "delimiter"), CSV_FORMATS, ids=[f[0] for f in CSV_FORMATS])
def test_each_csv_format_is_detected_and_becomes_chat(tiny_llama, format_, rows, delimiter):
    preview = preview_dataset("train.csv", b"\xef\xbb\xbf" + csv_bytes(rows, delimiter), model_id=tiny_llama)  # Excel's BOM
    assert (preview.format, preview.file_type, preview.problems) == (format_, "csv", [])
    assert [(e.row, e.messages) for e in preview.examples] == [(2, CHAT)]


def test_alpaca_input_and_system_join_the_conversation(tiny_llama):
    row = {"system": "You maintain boilers.", "instruction": "When does the valve open?", "input": "Boiler B2", "output": ANSWER}
    (example,) = preview_dataset("a.jsonl", jsonl(row), model_id=tiny_llama).examples
    assert example.messages == [
        {"role": "system", "content": "You maintain boilers."},
        {"role": "user", "content": "When does the valve open?\n\nBoiler B2"},
        {"role": "assistant", "content": ANSWER},
    ]


def test_a_json_array_is_read_with_the_line_of_each_item(tiny_llama):
    data = json.dumps([{"prompt": QUESTION, "completion": ANSWER}, {"prompt": QUESTION}], indent=2).encode()
    preview = preview_dataset("alpaca_data.json", data, model_id=tiny_llama)
    assert preview.detected == "prompt/completion in a JSON array"
    assert [e.row for e in preview.examples] == [2] and [str(p) for p in preview.problems] == ["line 6: missing field 'completion'"]


def test_a_file_in_a_legacy_encoding_is_read(tiny_llama):
    data = csv_bytes([["instruction", "output"], ["Quelle température ?", "Environ 90 °C, pas plus."]], encoding="cp1252")
    preview = preview_dataset("fr.csv", data, model_id=tiny_llama)
    assert preview.examples[0].messages[0]["content"] == "Quelle température ?"
    assert preview.notes[0].startswith("Not UTF-8: read as ")


# --- import: bad rows -------------------------------------------------------------------------


def test_every_bad_chat_row_is_named_with_its_line_and_reason(tiny_llama):
    too_long = [{"role": "user", "content": "pump " * 600}, {"role": "assistant", "content": "yes"}]
    data = jsonl(
        {"messages": CHAT},
        "{not json",
        [1, 2],
        {"messages": "hello"},
        {"messages": [{"role": "bot", "content": "hi"}, {"role": "assistant", "content": "yes"}]},
        {"messages": [{"role": "user", "content": "hi"}]},
        {"messages": [{"role": "user", "content": "hi"}, {"role": "assistant", "content": "  "}]},
        "",
        {"messages": [CHAT[0], {"role": "system", "content": "late"}, CHAT[1]]},
        {"messages": [{"role": "assistant", "content": "hi"}]},
        {"prompt": "not a chat row"},
        {"messages": too_long},
        {"messages": [{"role": "user"}, CHAT[1]]},
        {"messages": [{"role": "system", "content": ""}, *CHAT]},
        {"messages": []},
    )
    preview = preview_dataset("chat.jsonl", data, model_id=tiny_llama, max_tokens=512)
    assert [str(p) for p in preview.problems] == [
        "line 2: invalid JSON (Expecting property name enclosed in double quotes at column 2)",
        'line 3: expected a JSON object like {"messages": [...]}, found a list',
        "line 4: 'messages' is text that is not JSON, not a list of turns (Expecting value at column 1)",
        "line 5: turn 1 has unknown role 'bot' (expected system, user or assistant)",
        "line 6: the conversation ends with a user turn; it must end with an assistant turn (the answer to learn)",
        "line 7: empty answer",
        "line 9: turn 2 is a system turn; a system turn can only come first",
        "line 10: the conversation has no user turn",
        "line 11: missing field 'messages'",
        f"line 12: {template_length(tiny_llama, too_long):,} tokens after the chat template, over the maximum of 512",
        "line 13: turn 1 (user) has no text 'content'",
        "line 15: 'messages' must be a non-empty list of turns like {\"role\": \"user\", \"content\": \"...\"}",
    ]
    assert [(e.row, e.messages) for e in preview.examples] == [(1, CHAT), (14, CHAT)]  # an empty system turn is dropped
    assert preview.summary == "chat.jsonl: chat (messages) in JSON Lines; 2 valid examples, 12 rows with problems."


def test_every_bad_alpaca_row_is_named(tiny_llama):
    good = {"instruction": QUESTION, "output": ANSWER}
    data = jsonl(good, {"instruction": QUESTION}, {"instruction": QUESTION, "output": ""}, {"instruction": " ", "output": "x"},
                 {"instruction": QUESTION, "output": ["a"]}, {"instruction": QUESTION, "output": 42})
    preview = preview_dataset("alpaca.jsonl", data, model_id=tiny_llama)
    assert [str(p) for p in preview.problems] == [
        "line 2: missing field 'output'",
        "line 3: empty answer",
        "line 4: empty instruction",
        "line 5: field 'output' must be text, not a list",
    ]
    assert preview.examples[-1].messages[-1]["content"] == "42"  # a number is a fine answer


def test_csv_rows_are_numbered_by_their_line_with_the_header_as_line_1(tiny_llama):
    data = (
        b"instruction,input,output\n"
        b"When does the valve open?,,At 3.5 bar.\n"
        b'"A question that spans\ntwo lines?",,Yes.\n'
        b"Only a question\n"
        b"No answer here,,\n"
        b"one,two,three,four\n"
        b"\n"
        b"How often is the seal replaced?,,Every 2000 hours.\n"
    )
    preview = preview_dataset("qa.csv", data, model_id=tiny_llama)
    assert [str(p) for p in preview.problems] == [
        "line 5: missing field 'output'",
        "line 6: empty answer",
        "line 7: 4 values but the header names 3 columns (a value containing ',' without quotes around it?)",
    ]
    assert [e.row for e in preview.examples] == [2, 3, 9]
    assert preview.examples[1].messages[0]["content"] == "A question that spans\ntwo lines?"


UNUSABLE_FILES = [
    ("empty.jsonl", b"", "empty.jsonl is empty: there are no rows to import."),
    ("blank.csv", b"\n \n", "blank.csv is empty"),
    ("sheet.csv", bytes(range(256)) * 40, "sheet.csv is not text: it is not UTF-8"),
    ("odd.jsonl", jsonl({"question": "q", "reply": "a"}),
     "odd.jsonl: no recognizable columns. Found 'question', 'reply'; expected 'messages' (chat); 'instruction' and 'output'"),
    ("odd.csv", b"a,b\n1,2\n", "odd.csv: no recognizable columns. Found 'a', 'b'; expected 'messages' (chat)"),
    ("header.csv", b"instruction,output\n", "header.csv has a header row but no data rows."),
    ("half.csv", b"instruction,input\nq,x\n", "half.csv looks like Alpaca (instruction, input, output) but has no 'output' column"),
    ("broken.jsonl", b"{oops\n[1]\n", "broken.jsonl: no row could be read:\nline 1: invalid JSON"),
    ("cut.json", b'[{"prompt": "a", "completion": "b"},', "cut.json: the JSON array is not closed with ']'"),
    ("bad.json", b'[{"prompt": "a"}\n{"prompt": "b"}]', "bad.json: line 2: expected ',' or ']'"),
]


@pytest.mark.parametrize(("filename", "data", "message"), UNUSABLE_FILES, ids=[f[0] for f in UNUSABLE_FILES])
def test_unusable_files_are_refused_as_a_whole(tiny_llama, filename, data, message):
    with pytest.raises(DatasetError) as error:
        preview_dataset(filename, data, model_id=tiny_llama)
    assert str(error.value).startswith(message)


def test_the_maximum_is_capped_at_the_model_window_and_lengths_are_summarized(tiny_llama):
    rows = [{"prompt": f"question {n}", "completion": " ".join(["pump"] * n)} for n in range(1, 21)]
    preview = preview_dataset("lengths.jsonl", jsonl(*rows), model_id=tiny_llama, max_tokens=4096)
    assert preview.max_tokens == 512 and "reads at most 512 tokens" in preview.notes[0]
    expected = [template_length(tiny_llama, e.messages) for e in preview.examples]
    stats, ordered = preview.lengths, sorted(expected)
    assert stats.lengths == expected and stats.count == 20
    assert (stats.min, stats.max) == (ordered[0], ordered[-1])
    assert (stats.p50, stats.p90, stats.p95) == tuple(ordered[math.ceil(p * 20) - 1] for p in (0.5, 0.9, 0.95))


class PickyTokenizer:
    """A tokenizer whose chat template, like Gemma's, refuses a system turn; one token per turn."""

    def apply_chat_template(self, conversation, **options):
        batch = conversation if isinstance(conversation[0], list) else [conversation]
        if any(turn["role"] == "system" for messages in batch for turn in messages):
            raise ValueError("System role not supported")
        ids = [[0] * len(messages) for messages in batch]
        return {"input_ids": ids if batch is conversation else ids[0]}


def test_a_conversation_the_chat_template_refuses_is_named_alone():
    with_system = [{"role": "system", "content": "Be brief."}, *CHAT]
    assert template_lengths(PickyTokenizer(), [CHAT, with_system, CHAT]) == [2, "System role not supported", 2]


# --- saving -----------------------------------------------------------------------------------


def test_bad_rows_are_refused_by_default_and_skipped_on_request(db, tiny_llama):
    data = jsonl({"instruction": QUESTION, "output": ANSWER}, {"instruction": QUESTION}, {"instruction": "Seal?", "output": "2,000 h."})
    preview = preview_dataset("faq.jsonl", data, model_id=tiny_llama)
    before = row_counts(db)
    with pytest.raises(DatasetError, match=r"(?s)faq.jsonl: 1 row cannot be used:\nline 2: missing field 'output'\n.*skip the bad rows"):
        save_dataset(db, "faq", preview)
    assert row_counts(db) == before

    info = save_dataset(db, "faq", preview, skip_bad_rows=True)
    assert (info.name, info.kind, info.source, info.collection) == ("faq", "chat", "faq.jsonl (Alpaca (instruction, input, output))", None)
    assert (info.train_count, info.validation_count) == (1, 1)
    assert sorted(e.source_row for e in list_examples(db, "faq")) == [1, 3]
    train, validation = load_training_examples(db, "faq")
    assert sorted(m[0]["content"] for m in train + validation) == ["Seal?", QUESTION]

    with pytest.raises(DatasetError, match="A dataset named 'faq' already exists; choose another name"):
        save_dataset(db, "faq", preview, skip_bad_rows=True)
    nothing = preview_dataset("bad.jsonl", jsonl({"instruction": QUESTION}), model_id=tiny_llama)
    with pytest.raises(DatasetError, match="bad.jsonl has no valid rows, so there is nothing to save"):
        save_dataset(db, "bad", nothing, skip_bad_rows=True)
    with pytest.raises(DatasetError, match="A dataset needs a name"):
        save_dataset(db, "  ", preview, skip_bad_rows=True)


def test_a_failed_save_leaves_nothing(db, tiny_llama, monkeypatch):
    preview = preview_dataset("many.jsonl", jsonl(*[{"prompt": f"q{n}", "completion": "a"} for n in range(20)]), model_id=tiny_llama)
    real_insert = dataset_store._insert_examples

    def insert_then_fail(connection, *args):
        real_insert(connection, *args)  # the rows are written inside the transaction...
        raise RuntimeError("disk full")  # ...and then something fails

    monkeypatch.setattr(dataset_store, "_insert_examples", insert_then_fail)
    before = row_counts(db)
    with pytest.raises(RuntimeError, match="disk full"):
        save_dataset(db, "half-saved", preview)
    assert row_counts(db) == before
    assert "half-saved" not in [d.name for d in list_datasets(db)]


# --- generation -------------------------------------------------------------------------------


def test_text_dataset_has_one_example_per_chunk_and_splits_by_document(db, plant):
    info = generate_text_dataset(db, "plant-text", plant, validation_fraction=0.25, seed=3)
    chunks = chunk_rows(db, plant)
    assert (info.kind, info.collection, info.example_count) == ("text", plant, len(chunks))
    examples = list_examples(db, "plant-text", limit=1000)
    assert all(e.messages is None and e.text == chunks[e.chunk_id][1].strip() and e.document_id == chunks[e.chunk_id][0]
               for e in examples)
    assert {e.filename for e in examples} == {f"{entry[0]}.txt" for entry in EQUIPMENT}
    train_documents, validation_documents = sides(db, "plant-text")
    assert len(validation_documents) == 2 and not train_documents & validation_documents  # a quarter of 8 documents
    train, validation = load_training_examples(db, "plant-text")
    assert all(isinstance(t, str) for t in train + validation) and len(validation) == info.validation_count


def test_sample_of_chunks_is_spread_over_the_collection(db, plant):
    info = generate_text_dataset(db, "plant-sample", plant, max_chunks=4)
    assert info.example_count == 4
    assert len({e.document_id for e in list_examples(db, "plant-sample")}) == 4


def test_tiny_random_model_writes_no_pairs_and_nothing_is_saved(db, plant, tiny_llama):
    fractions = []
    before = row_counts(db)
    with pytest.raises(DatasetError) as error:
        generate_qa_dataset(db, "tiny-qa", plant, model_id=tiny_llama, max_chunks=2, max_new_tokens=16, progress=fractions.append)
    message = str(error.value)
    assert f"{tiny_llama} wrote no usable question/answer pair from the 2 chunks it read" in message
    assert "so nothing was saved" in message and "Its first reply began:" in message
    assert row_counts(db) == before and fractions == [0.0, 0.5, 1.0]


def test_pairs_keep_their_chunk_and_unusable_replies_are_counted(db, plant, tiny_llama, monkeypatch):
    """The model's replies are scripted (a tiny random model writes none that parse): this tests the judging."""
    prompts: list[str] = []

    def scripted_replies(loaded, conversations, max_new_tokens, temperature):
        return [scripted(messages) for messages in conversations]

    def scripted(messages):
        prompts.append(messages[-1]["content"])
        first_line = messages[-1]["content"].splitlines()[1]  # "Text:\n<chunk>"
        replies = [
            (f"Question: What is the passage about?\nAnswer: {first_line}", "end of turn"),
            (f"**Question:** Which passage is this?\n**Answer:** {first_line}", "end of turn"),
            ("I am sorry, I cannot write a quiz.", "end of turn"),
            ("Question: What is the passage about?\nAnswer: again", "end of turn"),
            ("Question: What comes next?\nAnswer: It runs until the", "max new tokens"),
            (f"1. Question: Where is this from? Answer: {first_line}\nQuestion: another one?", "max new tokens"),
            ("Question: Why does the pump never spoil?\nAnswer: Because bacteria cannot grow in it.", "end of turn"),
        ]
        reply, stopped_by = replies[len(prompts) - 1]
        return reply, stopped_by == "max new tokens"

    monkeypatch.setattr(core.datasets.generation, "_write_replies", scripted_replies)
    report = generate_qa_dataset(db, "scripted-qa", plant, model_id=tiny_llama, max_chunks=7)
    assert (report.chunks, report.pairs) == (7, 3)
    assert report.dropped == {NO_PAIR: 1, DUPLICATE: 1, CUT_OFF: 1, BORROWED: 1}
    assert report.unparsed == ["I am sorry, I cannot write a quiz."]
    assert report.message.startswith("3 question/answer pairs from 7 chunks saved as 'scripted-qa'")
    chunks = chunk_rows(db, plant)
    examples = list_examples(db, "scripted-qa")
    assert [e.messages[0]["content"] for e in examples] == ["What is the passage about?", "Which passage is this?", "Where is this from?"]
    for example in examples:
        document_id, chunk_text = chunks[example.chunk_id]
        assert example.document_id == document_id and example.messages[1]["content"] in chunk_text
    assert get_dataset(db, "scripted-qa").source == f"questions and answers by {tiny_llama} from 'plant'"


def test_replies_are_parsed_in_the_forms_small_models_write():
    assert parse_qa("Question: Why?  \nAnswer: Because.") is None  # a one-word question says nothing
    assert parse_qa("Question: Why is it so?\nAnswer: Because\nit is.") == parse_qa("Q: Why is it so? A: Because\nit is.")
    assert parse_qa("## Question: What opens at 3.5 bar?\n**Answer**: The relief valve.").answer == "The relief valve."
    assert parse_qa("Question: <the question>\nAnswer: <the answer>") is None  # the format copied, not filled in
    assert parse_qa("Question: Why does sealed honey never spoil?\nAnswer: Because.") is None  # the worked example
    assert parse_qa("Question: What is cut off?\nAnswer: Half a sentence. And th", cut_off=True).answer == "Half a sentence."
    assert parse_qa("Answer: first\nQuestion: then what?") is None


def test_generation_refuses_a_taken_name_or_an_empty_collection_before_any_work(db, plant, collection, tiny_llama):
    generate_text_dataset(db, "taken", plant, max_chunks=1)
    with pytest.raises(DatasetError, match="'taken' already exists"):
        generate_qa_dataset(db, "taken", plant, model_id=tiny_llama)
    with pytest.raises(DatasetError, match="allow at least 16 new tokens, not 4"):
        generate_qa_dataset(db, "short", plant, model_id=tiny_llama, max_new_tokens=4)
    with pytest.raises(DatasetError, match=f"Collection '{collection}' has no documents yet"):
        generate_text_dataset(db, "from-empty", collection)


# --- split ------------------------------------------------------------------------------------


def test_resplitting_keeps_each_document_on_one_side(db, plant):
    generated = generate_text_dataset(db, "resplit", plant)
    first = split_dataset(db, "resplit", validation_fraction=0.5, seed=7)
    train_documents, validation_documents = sides(db, "resplit")
    assert len(validation_documents) == 4 and not train_documents & validation_documents
    assert first.example_count == generated.example_count
    assert split_dataset(db, "resplit", validation_fraction=0.5, seed=7) == first
    assert sides(db, "resplit") == (train_documents, validation_documents)  # same seed, same split
    assert split_dataset(db, "resplit", validation_fraction=0.0).validation_count == 0
    with pytest.raises(DatasetError, match="at least 0 and below 1"):
        split_dataset(db, "resplit", validation_fraction=1.0)


def test_imported_rows_split_by_row_with_at_least_one_for_validation(db, tiny_llama):
    def imported(name: str, rows: int, **split) -> tuple[int, int]:
        data = jsonl(*[{"prompt": f"question {n}", "completion": "answer"} for n in range(rows)])
        info = save_dataset(db, name, preview_dataset(f"{name}.jsonl", data, model_id=tiny_llama), **split)
        return info.train_count, info.validation_count

    assert imported("rows-10", 10, validation_fraction=0.2) == (8, 2)
    assert imported("rows-2", 2) == (1, 1)
    assert imported("rows-1", 1) == (1, 0)
    made_by_import = [e.split for e in list_examples(db, "rows-10")]
    split_dataset(db, "rows-10", validation_fraction=0.2, seed=0)
    assert [e.split for e in list_examples(db, "rows-10")] == made_by_import  # same rule, same seed, same split


# --- listing, editing -------------------------------------------------------------------------


def test_examples_can_be_listed_edited_and_dropped(db, tiny_llama):
    data = jsonl(*[{"prompt": f"question {n}", "completion": f"answer {n}"} for n in range(6)])
    save_dataset(db, "editable", preview_dataset("e.jsonl", data, model_id=tiny_llama), validation_fraction=0.5)
    examples = list_examples(db, "editable")
    assert [e.ordinal for e in examples] == list(range(6))
    assert [e.ordinal for e in list_examples(db, "editable", limit=2, offset=3)] == [3, 4]
    assert {e.split for e in list_examples(db, "editable", split="validation")} == {"validation"}

    edited = update_example(db, examples[0].id, [{"role": "user", "content": "Better question?"},
                                                 {"role": "assistant", "content": " Better answer. "}])
    assert edited.messages[1] == {"role": "assistant", "content": "Better answer."}
    with pytest.raises(DatasetError, match=rf"Example {examples[1].id}: the conversation ends with a user turn"):
        update_example(db, examples[1].id, [{"role": "user", "content": "No answer"}])
    with pytest.raises(DatasetError, match=rf"Example {examples[1].id}: \d+ tokens after the chat template, over the maximum of 8"):
        update_example(db, examples[1].id, CHAT, model_id=tiny_llama, max_tokens=8)
    with pytest.raises(DatasetError, match="is a chat example: give its new messages"):
        update_example(db, examples[1].id, text="plain")

    assert delete_examples(db, [examples[1].id, examples[2].id, 10**12]) == 2
    assert get_dataset(db, "editable").example_count == 4
    train, validation = load_training_examples(db, "editable")
    assert [edited.messages] == [m for m in train + validation if m[0]["content"] == "Better question?"]
    with pytest.raises(DatasetError, match="No training example with id"):
        update_example(db, examples[1].id, CHAT)
    with pytest.raises(DatasetError, match="'train' or 'validation', not 'test'"):
        list_examples(db, "editable", split="test")


def test_text_examples_are_edited_as_text(db, plant):
    generate_text_dataset(db, "editable-text", plant, max_chunks=2)
    example = list_examples(db, "editable-text", limit=1)[0]
    assert update_example(db, example.id, text="  Pump P-1 moves water.  ").text == "Pump P-1 moves water."
    with pytest.raises(DatasetError, match="is plain text: give its new text"):
        update_example(db, example.id, CHAT)


def test_datasets_are_listed_read_and_deleted(db, tiny_llama):
    preview = preview_dataset("d.jsonl", jsonl({"messages": CHAT}), model_id=tiny_llama)
    save_dataset(db, "to-delete", preview)
    save_dataset(db, "to-keep", preview)
    names = [d.name for d in list_datasets(db)]
    assert "to-delete" in names and names == sorted(names)
    info = get_dataset(db, "to-delete")
    assert (info.example_count, info.kind) == (1, "chat") and info.created_at is not None
    assert delete_dataset(db, "to-delete") == 1
    with pytest.raises(DatasetError, match=r"No dataset named 'to-delete'\. Existing datasets: .*to-keep"):
        get_dataset(db, "to-delete")
    with db.engine.connect() as connection:
        assert connection.execute(text("SELECT count(*) FROM training_examples WHERE dataset_id = :d"), {"d": info.id}).scalar() == 0


# --- the real bundled model -------------------------------------------------------------------


def test_smollm2_writes_pairs_that_link_to_their_chunks(db, plant):
    report = generate_qa_dataset(db, "smol-qa", plant, model_id=BUNDLED_MODEL, max_chunks=2, max_new_tokens=80)
    assert report.pairs == 2, (report.dropped, report.unparsed)
    chunks = chunk_rows(db, plant)
    for example in list_examples(db, "smol-qa"):
        question, answer = (m["content"] for m in example.messages)
        assert len(question.split()) >= 3 and answer
        assert chunks[example.chunk_id][0] == example.document_id
