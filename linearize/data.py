"""Training data: load, template, tokenize, split, pack.

Sources (``--data`` / ``recipe.data.dataset``):

* ``offline`` (alias ``pydoc``): the offline default corpus, Python's own documentation: pydoc topics
  and the standard library's docstrings and comments, ~1.2M tokens
  (:func:`linearize.offline_text.training_documents`; the held-out documents never appear here);
* a local file or directory of ``.txt`` (one example per paragraph: a ``.txt`` file is split into
  examples at blank lines), ``.jsonl`` (one JSON object per line), ``.json`` or ``.parquet`` files;
* otherwise a Hugging Face dataset id (needs the network), e.g. ``yahma/alpaca-cleaned``.

``.txt`` and ``.jsonl`` files are read by this module, as far as they are needed; ``.json``,
``.parquet`` and Hub datasets through ``datasets``.

Templates: ``alpaca`` turns ``instruction`` / ``input`` / ``output`` rows into the Alpaca prompt,
with the prompt tokens masked from the loss (label -100); ``text`` trains on every token of a
``text`` column. A source without the template's columns but with a ``text`` column (every
``.txt`` file) is read as text. Examples are split into train / validation *before* packing, so
no validation text is ever trained on; each split is concatenated (EOS between examples) and cut
into ``seq_len`` windows.

How much is read: without ``max_tokens`` every example is read and tokenised. With ``max_tokens``
(the training tokens the budget needs), examples are read in file order only until the text read
can cover the budget (the first 1 MiB at least), split with the seed, and training examples are
tokenised in order until they fill ``max_tokens`` -- but always at least those in the first 1 MiB
of text, so the trainer's windows come from more than a handful of examples and a small
source, such as the offline corpus, is used whole. Validation examples are tokenised only until
they fill the validation windows. When more text is needed, twice as much is read and the split
is made again over everything read. So when ``max_tokens`` covers the source (or the source is
under 1 MiB), every example is read and tokenised and the result is exactly what it is without a
limit; the same seed always gives the same split and windows. Tokenising more than 4 MiB of text
shows a progress bar.

Every problem (missing file, unknown extension, a JSONL line that is not a JSON object, no rows,
no usable column, a single paragraph, fewer tokens than one sequence) raises :class:`DataError`
naming the file; :func:`check_source` finds the ones that need no tokenizer before any model loads.

:func:`data_identity` says what a run was trained on (file hashes, a dataset id) so that a resumed
run can check it continues on the same data. Names recorded in reports are file or directory
names, never local absolute paths.
"""

from __future__ import annotations

import json
import math
import random
from collections.abc import Iterable, Iterator
from dataclasses import dataclass
from itertools import chain, islice
from pathlib import Path

import numpy as np
import torch

from .errors import DataError, first_line  # DataError is defined with the other user errors; imported from here too

OFFLINE_NAMES = ("offline", "pydoc")
OFFLINE_NAME = "offline (Python docs)"
IGNORE_INDEX = -100
EXTENSIONS = {".txt": "text", ".jsonl": "jsonl", ".json": "json", ".parquet": "parquet"}
ALWAYS_TOKENISED_CHARS = 1 << 20  # a budget never tokenises less training text than this (when there is as much)
PROGRESS_CHARS = 4 << 20  # tokenising more text than this shows a progress bar
TOKENISE_BATCH_CHARS = 256 << 10  # text per tokenizer call
READ_CHUNK_CHARS = 1 << 20  # text read from a .txt file at a time
CHARS_PER_TOKEN_GUESS = 5  # a generous guess, for how much to read before anything is tokenised
COLUMN_PEEK_ROWS = 1000  # a .jsonl file's columns are the keys of its first rows

ALPACA_PROMPT = (
    "Below is an instruction that describes a task. Write a response that appropriately completes the request.\n\n"
    "### Instruction:\n{instruction}\n\n### Response:\n"
)
ALPACA_PROMPT_WITH_INPUT = (
    "Below is an instruction that describes a task, paired with an input that provides further context. "
    "Write a response that appropriately completes the request.\n\n"
    "### Instruction:\n{instruction}\n\n### Input:\n{input}\n\n### Response:\n"
)


@dataclass
class Example:
    """One training example: ``prompt`` is context only (masked), ``response`` is trained on."""

    prompt: str
    response: str

    @property
    def chars(self) -> int:
        return len(self.prompt) + len(self.response)


@dataclass
class PackedData:
    """Token windows of one split: ``input_ids`` and ``labels`` shaped (N, seq_len)."""

    input_ids: torch.Tensor
    labels: torch.Tensor

    def __len__(self) -> int:
        return self.input_ids.shape[0]

    @property
    def seq_len(self) -> int:
        return self.input_ids.shape[1]

    @property
    def num_tokens(self) -> int:
        return self.input_ids.numel()


@dataclass
class TrainingData:
    train: PackedData
    validation: PackedData
    source: str  # the source's name: "offline (Python docs)", a file or directory name, a dataset id
    template: str
    num_examples: int  # examples read (after max_samples), before the split

    def describe(self) -> str:
        return (
            f"{self.source} ({self.template}): {self.num_examples} examples, "
            f"{len(self.train)} x {self.train.seq_len} training tokens, "
            f"{len(self.validation)} x {self.validation.seq_len} validation tokens"
        )


# ----- sources -----------------------------------------------------------------------------------
def is_offline(source: str | None) -> bool:
    return source is None or str(source).lower() in OFFLINE_NAMES


def _looks_like_path(source: str) -> bool:
    return (
        source.startswith((".", "/", "~"))
        or Path(source).suffix.lower() in EXTENSIONS
        or Path(source).expanduser().exists()
    )


def source_name(source: str | None) -> str:
    """What reports call a source: never a local absolute path (a file or directory name instead)."""
    if is_offline(source):
        return OFFLINE_NAME
    if _looks_like_path(str(source)):
        path = Path(str(source)).expanduser()
        return path.resolve().name or str(source)
    return str(source)


def _local_files(source: str) -> tuple[str, list[Path]]:
    """The kind (``text``, ``jsonl``, ``json``, ``parquet``) and the files of a local source."""
    path = Path(source).expanduser()
    if not path.exists():
        raise DataError(f"data file not found: {path}")
    if path.is_dir():
        files = sorted(p for p in path.rglob("*") if p.is_file() and p.suffix.lower() in EXTENSIONS)
        if not files:
            raise DataError(f"{path}: no .txt, .jsonl, .json or .parquet files in this directory")
    else:
        files = [path]
    kinds = {EXTENSIONS.get(p.suffix.lower()) for p in files}
    if kinds == {"json", "jsonl"}:
        kinds = {"json"}  # datasets' json reader takes both (check_source checks the .jsonl lines)
    if None in kinds:
        raise DataError(f"{path}: unsupported data file type {path.suffix!r} (use .txt, .jsonl, .json or .parquet)")
    if len(kinds) > 1:
        raise DataError(f"{path}: mixes file types {sorted(kinds)}; use one type per data directory")
    empty = [p for p in files if p.stat().st_size == 0]
    if len(empty) == len(files):
        raise DataError(f"data file is empty: {files[0] if len(files) == 1 else path}")
    return kinds.pop(), files


def _text_paragraphs(files: list[Path]) -> Iterator[dict]:
    """``{"text": paragraph}`` rows of .txt files: the text between blank lines (``\\n\\n``), read 1 MiB
    at a time, without empty pieces -- the rows ``datasets``' text loader gives with ``sample_by="paragraph"``."""
    for path in files:
        try:
            with open(path, encoding="utf-8") as f:
                carry = ""
                while chunk := f.read(READ_CHUNK_CHARS):
                    pieces = (carry + chunk + f.readline()).split("\n\n")
                    carry = pieces.pop()
                    yield from ({"text": p} for p in pieces if p)
                if carry:
                    yield {"text": carry}
        except UnicodeDecodeError as err:
            raise DataError(f"{path}: not UTF-8 text ({err.reason}, byte {err.object[err.start:err.end]!r})") from None


def _jsonl_rows(files: list[Path]) -> Iterator[dict]:
    """The JSON objects of .jsonl files, one per non-blank line, read as they are needed; the first bad
    line is a DataError naming the file, the line number and the parse error."""
    for path in files:
        with open(path, "rb") as f:
            for number, raw in enumerate(f, start=1):
                try:
                    line = raw.decode("utf-8")
                except UnicodeDecodeError as err:
                    raise DataError(f"{path}: line {number} is not UTF-8 text ({err.reason})") from None
                if number == 1:
                    line = line.removeprefix("\ufeff")  # a byte order mark
                if not line.strip():
                    continue
                try:
                    row = json.loads(line)
                except json.JSONDecodeError as err:
                    message = f"{path}: line {number} is not valid JSON: {err.msg} (column {err.colno})"
                    raise DataError(message) from None
                if not isinstance(row, dict):
                    raise DataError(f"{path}: line {number} is a JSON {type(row).__name__}, not an object")
                yield row


def _text_kind_error(path: Path | str, found: int) -> DataError:
    return DataError(
        f"{path}: need at least 2 examples to split off a validation set, found {found}; "
        "a .txt file is split into examples at blank lines, so separate paragraphs with an empty line"
    )


def check_source(source: str | None) -> None:
    """Early checks of a source, before any model loads: a local one exists, has a known type and is not
    empty; every .jsonl line is a JSON object; .txt files hold at least 2 paragraphs. A Hub dataset id
    fails at once when the Hub cannot be reached (instead of spending a minute in download retries)."""
    if is_offline(source):
        return
    if not _looks_like_path(str(source)):
        check_hub_dataset(str(source))
        return
    kind, files = _local_files(str(source))
    if kind in ("json", "jsonl"):
        for _ in _jsonl_rows([f for f in files if f.suffix.lower() == ".jsonl"]):
            pass
    elif kind == "text":
        found = sum(1 for _ in islice((r for r in _text_paragraphs(files) if r["text"].strip()), 2))
        path = Path(str(source)).expanduser()
        if found == 0:
            raise DataError(f"{path}: the dataset is empty (only blank lines)")
        if found == 1:
            raise _text_kind_error(path, found)


@dataclass
class _Rows:
    """A source's raw rows, read lazily where the format allows, and its columns."""

    rows: Iterable[dict]
    columns: list[str]
    kind: str  # offline, text, jsonl, json, parquet, hub


def _open_rows(source: str | None, name: str) -> _Rows:
    if is_offline(source):
        from .offline_text import training_documents

        return _Rows(({"text": doc} for doc in training_documents()), ["text"], "offline")
    source = str(source)
    local = _looks_like_path(source)
    if local:
        kind, files = _local_files(source)
        if kind == "text":
            return _Rows(_text_paragraphs(files), ["text"], kind)
        if kind == "jsonl":
            rows = _jsonl_rows(files)
            head = list(islice(rows, COLUMN_PEEK_ROWS))
            if not head:
                raise DataError(f"{name}: the dataset is empty (no rows)")
            columns = sorted({key for row in head for key in row})
            return _Rows(chain(head, rows), columns, kind)
    import datasets

    datasets.logging.set_verbosity_error()
    if local:
        try:
            table = datasets.load_dataset(kind, data_files=[str(f) for f in files], split="train")
        except Exception as err:  # noqa: BLE001 - any reader failure is a data problem
            raise DataError(f"could not read {source}: {first_line(err)}") from None
        return _Rows(table, list(table.column_names), kind)
    try:
        table = datasets.load_dataset(source, split="train")
    except Exception as err:  # noqa: BLE001
        raise DataError(
            f"could not load dataset {source!r}: {first_line(err)} (offline? use --data offline or --data PATH)"
        ) from None
    return _Rows(table, list(table.column_names), "hub")


def check_hub_dataset(dataset_id: str) -> None:
    """Refuse a Hub dataset id at once when the Hub cannot answer (``HF_HUB_OFFLINE`` leaves the choice to
    ``datasets``, which then reads its cache)."""
    from huggingface_hub import constants

    from .teachers import hub_unreachable

    if constants.HF_HUB_OFFLINE:
        return
    problem = hub_unreachable()
    if problem is not None:
        local = Path(dataset_id).expanduser().resolve()
        raise DataError(
            f"dataset {dataset_id!r}: no local path {local}, and the Hub ({constants.ENDPOINT}) is unreachable: "
            f"{problem}; set HF_HUB_OFFLINE=1 to use a cached copy, or use --data offline or --data PATH"
        )



def _resolve_template(template: str, columns: Iterable[str], source: str) -> str:
    """The template a source's columns allow: ``alpaca`` falls back to ``text`` when there is a text column."""
    cols = set(columns)
    if template == "alpaca" and not {"instruction", "output"} <= cols:
        if "text" in cols:
            return "text"
        raise DataError(
            f"{source}: the alpaca template needs 'instruction' and 'output' columns (or a 'text' column); "
            f"found {sorted(cols)}"
        )
    if template == "text" and "text" not in cols:
        raise DataError(f"{source}: the text template needs a 'text' column; found {sorted(cols)}")
    return template


def _field(row: dict, column: str, source: str) -> str:
    value = row.get(column)
    if value is None:
        return ""
    if isinstance(value, str):
        return value
    if isinstance(value, (int, float)) and not isinstance(value, bool):
        return str(value)
    raise DataError(f"{source}: column {column!r} holds {type(value).__name__} values, not text")


def _to_example(row: dict, template: str, source: str) -> Example | None:
    """The example a row gives under ``template``, or None for a row without text to train on."""
    if template == "alpaca":
        inp = _field(row, "input", source).strip()
        fmt = ALPACA_PROMPT_WITH_INPUT if inp else ALPACA_PROMPT
        prompt = fmt.format(instruction=_field(row, "instruction", source).strip(), input=inp)
        response = _field(row, "output", source).strip()
        return Example(prompt, response) if response else None
    text = _field(row, "text", source).strip()
    return Example("", text) if text else None


class _ExampleReader:
    """Examples of a source in order, read on demand (``read_until``)."""

    def __init__(self, source: str | None, template: str, max_samples: int | None, name: str):
        opened = _open_rows(source, name)
        self.kind = opened.kind
        self.template = "text" if opened.kind == "offline" else _resolve_template(template, opened.columns, name)
        rows = iter(opened.rows)
        self._rows = islice(rows, max_samples) if max_samples is not None else rows
        self._name = name
        self.rows_read = 0
        self.chars = 0
        self.exhausted = False

    def read_until(self, examples: list[Example], chars: float) -> None:
        """Append examples until ``chars`` characters of example text have been read (or the rows end)."""
        while self.chars < chars:
            row = next(self._rows, None)
            if row is None:
                self.exhausted = True
                return
            self.rows_read += 1
            example = _to_example(row, self.template, self._name)
            if example is not None:
                examples.append(example)
                self.chars += example.chars


# ----- tokenize, split, pack ---------------------------------------------------------------------
def tokenize_examples(tokenizer, examples: list[Example]) -> tuple[list[int], list[int]]:
    """One stream of ids and labels (prompt tokens labelled -100); EOS ends every example."""
    ids: list[int] = []
    labels: list[int] = []
    for example_ids, n_prompt in _tokenize_each(tokenizer, examples):
        ids.extend(example_ids.tolist())
        labels.extend([IGNORE_INDEX] * n_prompt)
        labels.extend(example_ids[n_prompt:].tolist())
    return ids, labels


def _tokenize_each(tokenizer, examples: list[Example]) -> list[tuple[np.ndarray, int]]:
    """Per example: its ids (prompt, response, EOS) and the number of prompt tokens."""
    eos = tokenizer.eos_token_id
    prompts = [e.prompt for e in examples]
    responses = [e.response for e in examples]
    p_ids = tokenizer(prompts, add_special_tokens=False)["input_ids"] if any(prompts) else [[] for _ in examples]
    r_ids = tokenizer(responses, add_special_tokens=False)["input_ids"]
    out = []
    for p, r in zip(p_ids, r_ids):
        ids = [*p, *r, *([eos] if eos is not None else [])]
        out.append((np.asarray(ids, dtype=np.int64), len(p)))
    return out


def pack(ids, labels, seq_len: int, max_sequences: int | None = None) -> PackedData:
    """Cut the stream into windows of ``seq_len`` tokens (the remainder is dropped)."""
    n = len(ids) // seq_len
    if max_sequences is not None:
        n = min(n, max_sequences)
    ids_t = torch.as_tensor(ids[: n * seq_len], dtype=torch.long).reshape(n, seq_len)
    labels_t = torch.as_tensor(labels[: n * seq_len], dtype=torch.long).reshape(n, seq_len)
    return PackedData(ids_t, labels_t)


def split_indices(n: int, fraction: float, seed: int) -> tuple[list[int], list[int]]:
    """A deterministic random split of ``range(n)`` (both sides in their original order); at least one
    example on each side."""
    order = list(range(n))
    random.Random(seed).shuffle(order)
    n_val = min(n - 1, max(1, round(n * fraction)))
    val = sorted(order[:n_val])
    val_set = set(val)
    return [i for i in range(n) if i not in val_set], val


class _Tokenizer:
    """Tokenises examples on demand, each once, with one progress bar for the whole call."""

    def __init__(self, tokenizer, desc: str, progress: bool):
        self.tokenizer = tokenizer
        self.cache: dict[int, tuple[np.ndarray, int]] = {}
        self.desc, self.progress, self.bar = desc, progress, None

    def _show(self, upcoming_chars: int) -> None:
        if self.progress and self.bar is None and upcoming_chars > PROGRESS_CHARS:
            from tqdm.auto import tqdm

            self.bar = tqdm(total=upcoming_chars, unit="char", unit_scale=True, desc=self.desc, leave=False)
        elif self.bar is not None:
            self.bar.total = self.bar.n + upcoming_chars
            self.bar.refresh()

    def stream(self, examples: list[Example], indices: list[int], needed_tokens: int | None, min_chars: int = 0):
        """ids and labels of ``examples[indices]`` in order, tokenising only until ``needed_tokens`` (None:
        all) and ``min_chars`` are covered; and whether ``needed_tokens`` was reached."""
        pending = sum(examples[i].chars for i in indices if i not in self.cache)
        if needed_tokens is not None:
            pending = min(pending, max(min_chars, CHARS_PER_TOKEN_GUESS * needed_tokens))
        self._show(pending)
        parts: list[tuple[np.ndarray, int]] = []
        tokens = chars = position = 0
        while position < len(indices):
            if needed_tokens is not None and tokens >= needed_tokens and chars >= min_chars:
                break
            batch, batch_chars = [], 0
            while position < len(indices) and (not batch or batch_chars < TOKENISE_BATCH_CHARS):
                batch.append(indices[position])
                batch_chars += examples[indices[position]].chars
                position += 1
            todo = [i for i in batch if i not in self.cache]
            if todo:
                for i, encoded in zip(todo, _tokenize_each(self.tokenizer, [examples[i] for i in todo])):
                    self.cache[i] = encoded
                if self.bar is not None:
                    self.bar.update(sum(examples[i].chars for i in todo))
            for i in batch:
                parts.append(self.cache[i])
                tokens += len(self.cache[i][0])
            chars += batch_chars
        ids = np.concatenate([p[0] for p in parts]) if parts else np.zeros(0, dtype=np.int64)
        labels = ids.copy()
        start = 0
        for example_ids, n_prompt in parts:
            labels[start : start + n_prompt] = IGNORE_INDEX
            start += len(example_ids)
        return ids, labels, needed_tokens is not None and tokens >= needed_tokens

    def close(self) -> None:
        if self.bar is not None:
            self.bar.close()


def prepare_data(
    tokenizer,
    source: str | None,
    seq_len: int,
    template: str = "text",
    validation_fraction: float = 0.02,
    max_samples: int | None = None,
    seed: int = 0,
    max_validation_sequences: int | None = 16,
    max_tokens: int | None = None,
    progress: bool = True,
) -> TrainingData:
    """Load ``source``, apply the template, split, tokenize and pack (see module docstring).

    ``max_tokens``: the training tokens the budget needs; only enough examples to fill them are read
    and tokenised (None: all). ``progress``: a progress bar when tokenising more than 4 MiB of text."""
    name = source_name(source)
    reader = _ExampleReader(source, template, max_samples, name)
    train_needed = None if max_tokens is None else max(1, math.ceil(max_tokens / seq_len)) * seq_len
    val_needed = None if max_validation_sequences is None else max_validation_sequences * seq_len
    if max_tokens is None:
        to_read = math.inf
    else:
        fraction = validation_fraction
        want = train_needed / (1 - fraction) + (val_needed or 0) / fraction
        to_read = max(ALWAYS_TOKENISED_CHARS, CHARS_PER_TOKEN_GUESS * want)
    tokens = _Tokenizer(tokenizer, f"tokenising {name}", progress)
    examples: list[Example] = []
    try:
        while True:
            reader.read_until(examples, to_read)
            if len(examples) < 2 and reader.exhausted:
                if not examples:
                    what = "no rows" if reader.rows_read == 0 else "no rows with text"
                    raise DataError(f"{name}: the dataset is empty ({what})")
                if reader.kind == "text":
                    raise _text_kind_error(name, len(examples))
                raise DataError(f"{name}: need at least 2 examples to split off a validation set, got {len(examples)}")
            if len(examples) < 2:
                to_read *= 2
                continue
            train_idx, val_idx = split_indices(len(examples), validation_fraction, seed)
            train_ids, train_labels, train_full = tokens.stream(
                examples, train_idx, train_needed, min_chars=ALWAYS_TOKENISED_CHARS
            )
            val_ids, val_labels, val_full = tokens.stream(examples, val_idx, val_needed)
            if reader.exhausted or (train_full and (val_full or val_needed is None)):
                break
            to_read = max(2 * to_read, 2 * reader.chars)
    finally:
        tokens.close()
    train = pack(train_ids, train_labels, seq_len)
    if len(train) == 0:
        raise DataError(f"{name}: fewer training tokens than one sequence of {seq_len}")
    val_len = min(seq_len, len(val_ids))
    if val_len < 2:
        raise DataError(f"{name}: the validation split has no text")
    validation = pack(val_ids, val_labels, val_len, max_validation_sequences)
    return TrainingData(train, validation, name, reader.template, len(examples))


# ----- identity, for resuming --------------------------------------------------------------------
def data_identity(source: str | None) -> dict:
    """What a run trains on, for resume provenance: ``{"offline": sha256 of the offline training
    documents}``, ``{"files": {name: sha256}}`` for local files (names relative to a data directory),
    or ``{"dataset": id, "split": "train"}`` for a Hub dataset."""
    import hashlib

    if is_offline(source):
        from .offline_text import training_identity

        return {"offline": training_identity()}
    source = str(source)
    if _looks_like_path(source):
        from .teachers import file_sha256

        path = Path(source).expanduser()
        _, files = _local_files(source)
        root = path if path.is_dir() else path.parent
        return {"files": {f.relative_to(root).as_posix(): file_sha256(f) for f in files}}
    return {"dataset": source, "split": "train"}


# ----- a second held-out text from another source ------------------------------------------------
LICENSE_DIR = Path("/usr/share/common-licenses")


def license_documents() -> list[str]:
    """English text from a different source than the training data: software licences.

    Debian/Ubuntu's ``base-files`` installs ``/usr/share/common-licenses`` (GPL, Apache, MPL, ...)
    on every machine; elsewhere the licence files shipped in installed Python distributions are used.
    """
    files = sorted(p for p in LICENSE_DIR.glob("*") if p.is_file() and not p.is_symlink()) if LICENSE_DIR.is_dir() else []
    if not files:
        import site

        roots = [Path(p) for p in site.getsitepackages()]
        files = sorted(
            {p.resolve() for root in roots for p in root.glob("*.dist-info/**/LICEN[CS]E*") if p.is_file()}
        )
    docs = []
    for path in files:
        text = path.read_text(errors="replace").strip()
        if len(text) > 200:
            docs.append(text)
    if not docs:
        raise DataError("no licence texts found for the second held-out set")
    return docs
