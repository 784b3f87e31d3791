"""Training data: sources, templates, prompt masking, splitting, packing, clear errors."""

import json

import pytest
import torch
from click.testing import CliRunner

from linearize.cli import main
from linearize.data import (
    ALPACA_PROMPT,
    IGNORE_INDEX,
    DataError,
    Example,
    check_source,
    data_identity,
    license_documents,
    pack,
    prepare_data,
    tokenize_examples,
)
from linearize.offline_text import heldout_documents


class ByteTokenizer:
    """A stand-in tokenizer: one token per byte (+3), EOS = 2."""

    eos_token_id = 2

    def __call__(self, texts, add_special_tokens=False):
        return {"input_ids": [[b + 3 for b in t.encode()] for t in texts]}

    def decode(self, ids):
        return bytes(i - 3 for i in ids if i >= 3).decode(errors="replace")


TOK = ByteTokenizer()


class CountingTokenizer(ByteTokenizer):
    """The byte tokenizer, counting the characters it was asked to tokenise."""

    def __init__(self):
        self.chars = 0

    def __call__(self, texts, add_special_tokens=False):
        self.chars += sum(len(t) for t in texts)
        return super().__call__(texts, add_special_tokens)


def _jsonl(path, rows):
    path.write_text("".join(json.dumps(r) + "\n" for r in rows))
    return path


def test_alpaca_prompt_tokens_are_masked(tmp_path):
    ids, labels = tokenize_examples(TOK, [Example(ALPACA_PROMPT.format(instruction="Add 2 and 2."), "4")])
    n_prompt = len(ALPACA_PROMPT.format(instruction="Add 2 and 2.").encode())
    assert labels[:n_prompt] == [IGNORE_INDEX] * n_prompt
    assert labels[n_prompt:] == ids[n_prompt:] == [ord("4") + 3, TOK.eos_token_id]

    rows = [{"instruction": f"Say {i}.", "input": "loud" if i % 2 else "", "output": f"{i}!"} for i in range(40)]
    data = prepare_data(TOK, str(_jsonl(tmp_path / "a.jsonl", rows)), 32, template="alpaca", validation_fraction=0.1)
    assert data.template == "alpaca" and data.num_examples == 40
    labelled = data.train.labels[data.train.labels != IGNORE_INDEX]
    assert 0 < labelled.numel() < 0.2 * data.train.num_tokens  # responses are short, prompts long
    assert "### Input:" in TOK.decode(data.train.input_ids.flatten().tolist())
    # every labelled token equals its input token (labels are aligned with input_ids)
    mask = data.train.labels != IGNORE_INDEX
    assert torch.equal(data.train.labels[mask], data.train.input_ids[mask])


def test_text_files_pack_and_split_without_overlap(tmp_path):
    paragraphs = [f"paragraph number {i} " + "word " * (5 + i % 7) for i in range(50)]
    path = tmp_path / "corpus.txt"
    path.write_text("\n\n".join(paragraphs))
    data = prepare_data(TOK, str(path), 16, template="alpaca", validation_fraction=0.1, seed=3)
    assert data.template == "text"  # a .txt file has no instruction columns
    assert data.train.input_ids.shape[1] == 16 and len(data.train) > 10
    assert (data.train.labels == data.train.input_ids).all()
    train_text = TOK.decode(data.train.input_ids.flatten().tolist())
    val_text = TOK.decode(data.validation.input_ids.flatten().tolist())
    val_numbers = {w for w in val_text.split() if w.isdigit()}
    assert val_numbers and not any(f"number {n} " in train_text for n in val_numbers if len(n) > 1)
    # same seed, same split; another seed, another split
    again = prepare_data(TOK, str(path), 16, validation_fraction=0.1, seed=3)
    other = prepare_data(TOK, str(path), 16, validation_fraction=0.1, seed=4)
    assert torch.equal(again.validation.input_ids, data.validation.input_ids)
    assert not torch.equal(other.validation.input_ids, data.validation.input_ids)


def test_parquet_and_directory_sources(tmp_path):
    import pandas as pd

    folder = tmp_path / "pq"
    folder.mkdir()
    for part in range(2):
        pd.DataFrame({"text": [f"row {part}-{i} " * 4 for i in range(20)]}).to_parquet(folder / f"p{part}.parquet")
    data = prepare_data(TOK, str(folder), 32, template="text")
    assert data.num_examples == 40 and len(data.train) > 0


def test_offline_default_corpus_excludes_heldout_documents():
    data = prepare_data(TOK, None, 256, max_samples=30)
    assert data.source.startswith("offline") and len(data.train) > 20
    text = TOK.decode(data.train.input_ids[:4].flatten().tolist())
    assert not any(doc[:200] in text for doc in heldout_documents())


def test_offline_corpus_is_over_a_million_tokens_split_by_document_before_tokenisation(smollm2):
    """Pydoc topics and the standard library's documentation: over 1M tokens of training text for the offline
    teacher's tokenizer, held-out documents chosen by their name, disjoint from the training ones in names and
    in text, and enough of them for perplexity at 2048 tokens of context and the evaluation pack."""
    from linearize.offline_text import is_heldout, named_documents, training_identity

    train = list(named_documents(heldout=False))
    held = list(named_documents(heldout=True))
    count = lambda docs: sum(len(smollm2.tokenizer(text)["input_ids"]) for _, text in docs)  # noqa: E731
    assert count(train) >= 1_000_000
    assert count(held) >= 64 * 1024
    train_names, held_names = {n for n, _ in train}, {n for n, _ in held}
    assert not train_names & held_names
    assert all(is_heldout(n) for n in held_names) and not any(is_heldout(n) for n in train_names)
    assert any(n.startswith("pydoc:") for n in held_names) and any(":" not in n for n in held_names)
    train_text = "\n".join(text for _, text in train)
    assert not any(text[:300] in train_text for _, text in held)
    assert "threading" in train_names | held_names  # a module's docstrings, read from its source
    assert len(training_identity()) == 64


def test_module_document_keeps_docstrings_and_comments_in_source_order():
    from linearize.offline_text import module_document

    source = (
        '"""The module docstring, long enough to be kept as prose."""\n'
        "# A comment block that explains what follows,\n# over two lines.\n"
        "def f(a, b=2):\n    '''What f does, in a sentence of prose.'''\n    return a  # short\n"
    )
    assert module_document(source) == (
        "The module docstring, long enough to be kept as prose.\n\n"
        "A comment block that explains what follows, over two lines.\n\n"
        "def f(a, b=2):\nWhat f does, in a sentence of prose."
    )
    assert module_document("def broken(:\n") == ""


def test_pack_drops_the_remainder():
    packed = pack(list(range(10)), list(range(10)), 4)
    assert packed.input_ids.tolist() == [[0, 1, 2, 3], [4, 5, 6, 7]]


@pytest.mark.parametrize(
    "make, message",
    [
        (lambda p: p / "missing.jsonl", "data file not found"),
        (lambda p: (p / "empty.txt").write_text("") and None or p / "empty.txt", "empty"),
        (lambda p: _jsonl(p / "cols.jsonl", [{"question": "q", "answer": "a"}] * 3), "'instruction' and 'output'"),
        (lambda p: _jsonl(p / "blank.jsonl", [{"text": "   "}] * 3), "empty"),
        (lambda p: (p / "short.txt").write_text("tiny\n\nbits") and None or p / "short.txt", "fewer training tokens"),
        (lambda p: (p / "x.csv").write_text("a,b\n1,2\n") and None or p / "x.csv", "unsupported data file type"),
    ],
)
def test_bad_data_is_a_clear_error(tmp_path, make, message):
    with pytest.raises(DataError, match=message):
        prepare_data(TOK, str(make(tmp_path)), 64, template="alpaca")


def test_cli_reports_bad_data_before_loading_or_training(tmp_path, monkeypatch):
    import linearize.pipeline  # imported before the patch, so that undoing it restores the real function
    import linearize.teachers

    def no_model(*a, **k):
        raise AssertionError("the model must not be loaded when the data is bad")

    monkeypatch.setattr(linearize.teachers, "load_model", no_model)
    monkeypatch.setattr("linearize.pipeline.load_model", no_model)
    runner = CliRunner()
    (tmp_path / "empty.jsonl").write_text("")
    (tmp_path / "bad.jsonl").write_text('{"text": "fine"}\n{"text": oops}\n')
    (tmp_path / "one.txt").write_text("one paragraph only\n")
    for path, message in [
        (tmp_path / "nope.txt", "data file not found"),
        (tmp_path / "empty.jsonl", "empty"),
        (tmp_path / "bad.jsonl", "bad.jsonl: line 2 is not valid JSON"),
        (tmp_path / "one.txt", "a .txt file is split into examples at blank lines"),
    ]:
        res = runner.invoke(main, ["--data", str(path), "--out", str(tmp_path / "out"), "--budget", "demo"])
        assert res.exit_code == 2, res.output
        assert res.output.count("\n") == 1 and message in res.output
    assert not (tmp_path / "out").exists()


def test_second_heldout_source_is_different_text():
    docs = license_documents()
    assert sum(len(d) for d in docs) > 50_000
    assert "warranty" in " ".join(docs).lower()
    assert not {d[:100] for d in docs} & {d[:100] for d in heldout_documents()}


# ----- bad files name the file and the problem ---------------------------------------------------
def test_malformed_jsonl_names_the_file_the_line_and_the_parse_error(tmp_path):
    path = tmp_path / "rows.jsonl"
    path.write_text('{"text": "one"}\n\n{"text": "two"}\n{"text": "three" "x"}\n' + '{"text": "more"}\n' * 10)
    expected = r"rows\.jsonl: line 4 is not valid JSON: Expecting ',' delimiter \(column 18\)"
    with pytest.raises(DataError, match=expected):
        check_source(str(path))
    with pytest.raises(DataError, match=expected):
        prepare_data(TOK, str(path), 8)


def test_single_paragraph_txt_names_the_file_and_the_blank_line_rule(tmp_path):
    path = tmp_path / "one.txt"
    path.write_text("a single paragraph\nover two lines, with no blank line between any of them\n")
    for check in (lambda: check_source(str(path)), lambda: prepare_data(TOK, str(path), 8)):
        with pytest.raises(DataError, match=r"one\.txt: need at least 2 examples.*split into examples at blank lines"):
            check()


def test_sources_are_named_without_local_paths(tmp_path):
    folder = tmp_path / "my-corpus"
    folder.mkdir()
    (folder / "part.txt").write_text("\n\n".join(f"paragraph {i} " * 8 for i in range(40)))
    for source, name in [(folder / "part.txt", "part.txt"), (folder, "my-corpus")]:
        data = prepare_data(TOK, str(source), 16)
        assert data.source == name
        assert str(tmp_path) not in data.describe()


# ----- max_tokens: read and tokenise only what the budget needs ----------------------------------
def _paragraphs_file(path, megabytes: float):
    paragraph = "the quick brown fox jumps over the lazy dog " * 6
    count = int(megabytes * 2**20 / (len(paragraph) + 2))
    path.write_text("\n\n".join(f"{i} {paragraph}" for i in range(count)))
    return path, count


def test_max_tokens_reads_and_tokenises_only_what_the_budget_needs(tmp_path):
    path, paragraphs = _paragraphs_file(tmp_path / "big.txt", 3)
    tokenizer = CountingTokenizer()
    data = prepare_data(tokenizer, str(path), 64, max_tokens=1024)
    assert len(data.train) >= 1024 // 64 and len(data.validation) == 16
    assert tokenizer.chars < 1.5 * 2**20  # the first MiB, not the 3 MiB file
    assert data.num_examples < paragraphs / 2  # reading stopped early too
    again = prepare_data(TOK, str(path), 64, max_tokens=1024)
    assert torch.equal(again.train.input_ids, data.train.input_ids)
    assert torch.equal(again.validation.input_ids, data.validation.input_ids)

    tokenizer = CountingTokenizer()
    more = prepare_data(tokenizer, str(path), 64, max_tokens=2_000_000)  # more than the first round reads
    assert len(more.train) * 64 >= 2_000_000 and tokenizer.chars < 2.9 * 2**20


@pytest.mark.parametrize("source", ["offline", "file"])
def test_max_tokens_changes_nothing_when_the_budget_covers_the_data(tmp_path, source):
    if source == "file":
        source, _ = _paragraphs_file(tmp_path / "small.txt", 0.2)
    budgets = (10**9,) if source == "offline" else (64 * 1024, 10**9)  # the demo's stage budget; more than the data
    whole = prepare_data(TOK, str(source), 128, seed=5)
    for max_tokens in budgets:
        limited = prepare_data(TOK, str(source), 128, seed=5, max_tokens=max_tokens)
        for split in ("train", "validation"):
            assert torch.equal(getattr(limited, split).input_ids, getattr(whole, split).input_ids)
            assert torch.equal(getattr(limited, split).labels, getattr(whole, split).labels)
        assert limited.num_examples == whole.num_examples


# ----- identity, for resuming --------------------------------------------------------------------
def test_data_identity_follows_the_files(tmp_path):
    offline = data_identity("offline")
    assert set(offline) == {"offline"} and len(offline["offline"]) == 64 and data_identity(None) == offline
    assert data_identity("yahma/alpaca-cleaned") == {"dataset": "yahma/alpaca-cleaned", "split": "train"}

    folder = tmp_path / "d"
    (folder / "sub").mkdir(parents=True)
    (folder / "a.txt").write_text("first\n\nsecond")
    (folder / "sub" / "b.txt").write_text("third\n\nfourth")
    before = data_identity(str(folder))
    assert set(before["files"]) == {"a.txt", "sub/b.txt"}
    assert data_identity(str(folder)) == before
    assert data_identity(str(folder / "a.txt")) == {"files": {"a.txt": before["files"]["a.txt"]}}
    (folder / "sub" / "b.txt").write_text("third\n\nfifth!")
    after = data_identity(str(folder))
    assert after["files"]["a.txt"] == before["files"]["a.txt"]
    assert after["files"]["sub/b.txt"] != before["files"]["sub/b.txt"]


def test_hub_dataset_with_the_hub_unreachable_fails_at_once(monkeypatch, tmp_path):
    import time

    import huggingface_hub

    from linearize.data import check_source

    monkeypatch.chdir(tmp_path)
    monkeypatch.setattr(huggingface_hub.constants, "HF_HUB_OFFLINE", False)
    monkeypatch.setattr(huggingface_hub.constants, "ENDPOINT", "http://127.0.0.1:9")  # nothing listens
    t0 = time.perf_counter()
    with pytest.raises(DataError, match=r"dataset 'someone/some-data': no local path .*the Hub \(http://127.0.0.1:9\) "
                                        r"is unreachable.*HF_HUB_OFFLINE=1"):
        check_source("someone/some-data")
    assert time.perf_counter() - t0 < 5
