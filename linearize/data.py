"""Training data: load, template, tokenize, split, pack.

Sources (``--data`` / ``recipe.data.dataset``):

* ``offline`` (alias ``pydoc``): the offline default corpus, Python's own documentation topics
  (:func:`linearize.offline_text.training_documents`; the held-out documents never appear here);
* a local file or directory of ``.txt`` (one example per paragraph), ``.jsonl``/``.json`` or
  ``.parquet`` files, read through ``datasets``;
* otherwise a Hugging Face dataset id (needs the network), e.g. ``yahma/alpaca-cleaned``.

Templates: ``alpaca`` turns ``instruction`` / ``input`` / ``output`` rows into the Alpaca prompt,
with the prompt tokens masked from the loss (label -100); ``text`` trains on every token of a
``text`` column. A source without the template's columns but with a ``text`` column (every
``.txt`` file) is read as text. Examples are split into train / validation *before* packing, so
no validation text is ever trained on; each split is concatenated (EOS between examples) and cut
into ``seq_len`` windows.

Every problem (missing file, unknown extension, no rows, no usable column, fewer tokens than one
sequence) raises :class:`DataError` before any training starts.
"""

from __future__ import annotations

import random
from dataclasses import dataclass
from pathlib import Path

import torch

from .errors import LinearizeError

OFFLINE_NAMES = ("offline", "pydoc")
IGNORE_INDEX = -100
EXTENSIONS = {".txt": "text", ".jsonl": "json", ".json": "json", ".parquet": "parquet"}

ALPACA_PROMPT = (
    "Below is an instruction that describes a task. Write a response that appropriately completes the request.\n\n"
    "### Instruction:\n{instruction}\n\n### Response:\n"
)
ALPACA_PROMPT_WITH_INPUT = (
    "Below is an instruction that describes a task, paired with an input that provides further context. "
    "Write a response that appropriately completes the request.\n\n"
    "### Instruction:\n{instruction}\n\n### Input:\n{input}\n\n### Response:\n"
)


class DataError(LinearizeError):
    """Training data that cannot be used (missing, empty, wrong columns, too short)."""


@dataclass
class Example:
    """One training example: ``prompt`` is context only (masked), ``response`` is trained on."""

    prompt: str
    response: str


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
    source: str
    template: str
    num_examples: int  # after max_samples, before the split

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


def _local_files(source: str) -> tuple[str, list[str]]:
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
    if None in kinds:
        raise DataError(f"{path}: unsupported data file type {path.suffix!r} (use .txt, .jsonl, .json or .parquet)")
    if len(kinds) > 1:
        raise DataError(f"{path}: mixes file types {sorted(kinds)}; use one type per data directory")
    empty = [p for p in files if p.stat().st_size == 0]
    if len(empty) == len(files):
        raise DataError(f"data file is empty: {files[0] if len(files) == 1 else path}")
    return kinds.pop(), [str(p) for p in files]


def check_source(source: str | None) -> None:
    """Cheap early check of a local source (exists, known type, not empty); Hub ids pass."""
    if not is_offline(source) and _looks_like_path(str(source)):
        _local_files(str(source))


def load_rows(source: str):
    """A ``datasets.Dataset`` (or a list of dicts for the offline corpus) of raw rows."""
    if is_offline(source):
        from .offline_text import training_documents

        return [{"text": doc} for doc in training_documents()]
    import datasets

    datasets.logging.set_verbosity_error()
    if _looks_like_path(source):
        kind, files = _local_files(source)
        kwargs = {"sample_by": "paragraph"} if kind == "text" else {}
        try:
            return datasets.load_dataset(kind, data_files=files, split="train", **kwargs)
        except Exception as err:  # noqa: BLE001 - any reader failure is a data problem
            raise DataError(f"could not read {source}: {str(err).splitlines()[0] if str(err) else type(err).__name__}") from None
    try:
        return datasets.load_dataset(source, split="train")
    except Exception as err:  # noqa: BLE001
        first = str(err).splitlines()[0] if str(err) else type(err).__name__
        raise DataError(
            f"could not load dataset {source!r}: {first} (offline? use --data offline or --data PATH)"
        ) from None


def _columns(rows) -> list[str]:
    if isinstance(rows, list):
        return sorted(rows[0]) if rows else []
    return list(rows.column_names)


def rows_to_examples(rows, template: str, source: str = "data") -> tuple[list[Example], str]:
    """Apply the template; returns the examples and the template actually used."""
    if len(rows) == 0:
        raise DataError(f"{source}: the dataset is empty (no rows)")
    cols = set(_columns(rows))
    if template == "alpaca" and not {"instruction", "output"} <= cols:
        if "text" in cols:
            template = "text"
        else:
            raise DataError(
                f"{source}: the alpaca template needs 'instruction' and 'output' columns (or a 'text' column); "
                f"found {sorted(cols)}"
            )
    if template == "text" and "text" not in cols:
        raise DataError(f"{source}: the text template needs a 'text' column; found {sorted(cols)}")
    examples = []
    for row in rows:
        if template == "alpaca":
            inp = (row.get("input") or "").strip()
            fmt = ALPACA_PROMPT_WITH_INPUT if inp else ALPACA_PROMPT
            prompt = fmt.format(instruction=(row["instruction"] or "").strip(), input=inp)
            response = (row["output"] or "").strip()
            if response:
                examples.append(Example(prompt, response))
        else:
            text = (row["text"] or "").strip()
            if text:
                examples.append(Example("", text))
    if not examples:
        raise DataError(f"{source}: the dataset is empty (no rows with text)")
    return examples, template


# ----- tokenize, split, pack ---------------------------------------------------------------------
def tokenize_examples(tokenizer, examples: list[Example]) -> tuple[list[int], list[int]]:
    """One stream of ids and labels (prompt tokens labelled -100); EOS ends every example."""
    ids: list[int] = []
    labels: list[int] = []
    eos = tokenizer.eos_token_id
    prompts = [e.prompt for e in examples]
    responses = [e.response for e in examples]
    p_ids = tokenizer(prompts, add_special_tokens=False)["input_ids"] if any(prompts) else [[] for _ in examples]
    r_ids = tokenizer(responses, add_special_tokens=False)["input_ids"]
    for p, r in zip(p_ids, r_ids):
        r = list(r) + ([eos] if eos is not None else [])
        ids.extend(p)
        ids.extend(r)
        labels.extend([IGNORE_INDEX] * len(p))
        labels.extend(r)
    return ids, labels


def pack(ids: list[int], labels: list[int], seq_len: int, max_sequences: int | None = None) -> PackedData:
    """Cut the stream into windows of ``seq_len`` tokens (the remainder is dropped)."""
    n = len(ids) // seq_len
    if max_sequences is not None:
        n = min(n, max_sequences)
    ids_t = torch.tensor(ids[: n * seq_len], dtype=torch.long).view(n, seq_len)
    labels_t = torch.tensor(labels[: n * seq_len], dtype=torch.long).view(n, seq_len)
    return PackedData(ids_t, labels_t)


def split_examples(examples: list[Example], fraction: float, seed: int) -> tuple[list[Example], list[Example]]:
    """A deterministic random split; at least one example on each side."""
    if len(examples) < 2:
        raise DataError(f"need at least 2 examples to split off a validation set, got {len(examples)}")
    order = list(range(len(examples)))
    random.Random(seed).shuffle(order)
    n_val = min(len(examples) - 1, max(1, round(len(examples) * fraction)))
    val_idx = set(order[:n_val])
    train = [e for i, e in enumerate(examples) if i not in val_idx]
    val = [e for i, e in enumerate(examples) if i in val_idx]
    return train, val


def prepare_data(
    tokenizer,
    source: str | None,
    seq_len: int,
    template: str = "text",
    validation_fraction: float = 0.02,
    max_samples: int | None = None,
    seed: int = 0,
    max_validation_sequences: int | None = 16,
) -> TrainingData:
    """Load ``source``, apply the template, split, tokenize and pack (see module docstring)."""
    name = "offline (pydoc topics)" if is_offline(source) else str(source)
    rows = load_rows("offline" if is_offline(source) else str(source))
    if is_offline(source):
        template = "text"
    if max_samples is not None and len(rows) > max_samples:
        rows = rows[:max_samples] if isinstance(rows, list) else rows.select(range(max_samples))
    examples, template = rows_to_examples(rows, template, name)
    train_ex, val_ex = split_examples(examples, validation_fraction, seed)
    train = pack(*tokenize_examples(tokenizer, train_ex), seq_len)
    if len(train) == 0:
        raise DataError(f"{name}: fewer training tokens than one sequence of {seq_len}")
    val_ids, val_labels = tokenize_examples(tokenizer, val_ex)
    val_len = min(seq_len, len(val_ids))
    if val_len < 2:
        raise DataError(f"{name}: the validation split has no text")
    validation = pack(val_ids, val_labels, val_len, max_validation_sequences)
    return TrainingData(train, validation, name, template, len(examples))


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
