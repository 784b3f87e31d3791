"""English text that exists on every machine, for the demo, tests and held-out perplexity.

Two sources ship with every CPython, so no download is needed:

* the pydoc topics (``pydoc_data.topics``): the language reference's prose, ~130k tokens;
* the standard library's own documentation: for each module, its docstrings and comment blocks in
  source order, each docstring under the ``def``/``class`` line it documents, and its messages (string
  constants that read as a sentence); files are parsed with
  :mod:`ast` and :mod:`tokenize`, never imported; the docstrings of the compiled modules (``builtins``,
  ``sys``, ``math``...: imported, as ``pydoc`` does); and the library's prose files (IDLE's help and
  news, ``email/architecture.rst``, the licence). On CPython 3.11: 1.01M training tokens and 88k
  held-out tokens for the SmolLM2 tokenizer.

Every document has a name (``pydoc:<topic>`` or the module's dotted name). The split is decided by
the name alone, before any tokenisation: a document is held out when the SHA-256 of its name is 0
modulo 12, so the same module is held out on every machine and Python version. Documents are
ordered by that hash (which mixes the two sources) and built lazily, so a run that needs 100k
tokens reads only the modules it uses.
"""

from __future__ import annotations

import ast
import hashlib
import io
import re
import sys
import sysconfig
import tokenize
from collections.abc import Iterator
from functools import lru_cache
from pathlib import Path

CORPUS_VERSION = 2  # bump when the way documents are built changes (it is part of a run's identity)
HELDOUT_EVERY = 12
MIN_CHARS = 100  # shorter documents (a module with one docstring line) are skipped
MIN_PIECE_CHARS = 16  # shorter docstrings and comments ("XXX", "noqa") are left out
# Folders of the standard library that hold tests, third-party packages or generated text.
_SKIPPED_PARTS = {"test", "tests", "idle_test", "site-packages", "dist-packages", "pydoc_data", "__pycache__"}
# Compiled modules that are not imported for their docstrings: test helpers, and modules whose import changes
# the process (readline takes over the terminal's line editing) or needs a display.
_UNIMPORTED = ("_test", "xx", "_xx", "_ctypes_test", "readline", "_curses", "_tkinter", "antigravity", "this")
_PROSE_SUFFIXES = (".txt", ".rst", ".html")


def _hash(name: str) -> int:
    return int(hashlib.sha256(name.encode()).hexdigest(), 16)


def is_heldout(name: str) -> bool:
    """Whether the document called ``name`` is reserved for evaluation."""
    return _hash(name) % HELDOUT_EVERY == 0


def _clean(text: str) -> str:
    return re.sub(r"\n{3,}", "\n\n", text).strip()


def _module_files() -> dict[str, Path]:
    root = Path(sysconfig.get_path("stdlib"))
    files = {}
    for path in root.rglob("*.py"):
        rel = path.relative_to(root)
        if _SKIPPED_PARTS & set(rel.parts):
            continue
        parts = list(rel.with_suffix("").parts)
        if parts[-1] == "__init__":
            parts = parts[:-1]
        # The codecs under encodings/ are generated character tables, not prose.
        if parts and all(p.isidentifier() for p in parts) and not (parts[0] == "encodings" and len(parts) > 1):
            files[".".join(parts)] = path
    return files


def _compiled_modules() -> list[str]:
    """Names of the standard library's compiled modules (built in, or in ``lib-dynload``)."""
    names = set(sys.builtin_module_names)
    dynload = Path(sysconfig.get_path("platstdlib")) / "lib-dynload"
    if dynload.is_dir():
        names |= {p.name.split(".")[0] for p in dynload.iterdir() if p.suffix in (".so", ".pyd")}
    return sorted(n for n in names if n.isidentifier() and not n.startswith(_UNIMPORTED))


def _prose_files() -> dict[str, Path]:
    root = Path(sysconfig.get_path("stdlib"))
    files = {}
    for path in root.rglob("*"):
        rel = path.relative_to(root)
        if path.suffix in _PROSE_SUFFIXES and not _SKIPPED_PARTS & set(rel.parts) and path.is_file():
            files[rel.as_posix()] = path
    return files


def compiled_module_document(name: str) -> str:
    """The docstrings of a compiled module: the module's, then each public function's and class's (with its
    methods'), as ``pydoc`` shows them."""
    import importlib
    import inspect

    try:
        module = importlib.import_module(name)
    except Exception:  # a module this build cannot load (a missing system library)
        return ""
    pieces = [module.__doc__ or ""]
    for key, value in sorted(vars(module).items()):
        doc = getattr(value, "__doc__", None)
        # _decimal's classes say they come from decimal: the module a compiled module is wrapped by.
        home = getattr(value, "__module__", name)
        if key.startswith("_") or not isinstance(doc, str) or home not in (name, name.lstrip("_")):
            continue
        if inspect.isclass(value):
            pieces.append(f"class {key}:\n{doc}")
            pieces += [f"{key}.{k}:\n{v.__doc__}" for k, v in sorted(vars(value).items())
                       if not k.startswith("_") and isinstance(getattr(v, "__doc__", None), str)]
        elif inspect.isroutine(value):
            pieces.append(doc)
    return _clean("\n\n".join(p for p in pieces if len(p) >= MIN_PIECE_CHARS))


def prose_document(path: Path) -> str:
    """A prose file's text (an HTML file's text without its tags)."""
    try:
        text = path.read_text(encoding="utf-8")
    except (OSError, UnicodeDecodeError):
        return ""
    if path.suffix == ".html":
        from html.parser import HTMLParser

        parts: list[str] = []
        parser = HTMLParser()
        parser.handle_data = parts.append
        parser.feed(text)
        text = "".join(parts)
    return _clean(re.sub(r"[ \t]+\n", "\n", text))


def _header(node: ast.AST) -> str:
    if isinstance(node, ast.ClassDef):
        bases = ", ".join(ast.unparse(b) for b in node.bases)
        return f"class {node.name}({bases}):" if bases else f"class {node.name}:"
    prefix = "async def" if isinstance(node, ast.AsyncFunctionDef) else "def"
    return f"{prefix} {node.name}({ast.unparse(node.args)}):"


def module_document(source: str) -> str:
    """A module's docstrings and comment blocks in source order ("" if it cannot be parsed)."""
    try:
        tree = ast.parse(source)
    except (SyntaxError, ValueError):
        return ""
    pieces: list[tuple[int, str]] = []
    doc = ast.get_docstring(tree)
    if doc:
        pieces.append((0, doc))
    docstrings = {id(tree.body[0].value)} if doc else set()
    for node in ast.walk(tree):
        if isinstance(node, (ast.ClassDef, ast.FunctionDef, ast.AsyncFunctionDef)):
            doc = ast.get_docstring(node)
            if doc:
                pieces.append((node.lineno, f"{_header(node)}\n{doc}"))
                docstrings.add(id(node.body[0].value))
    for node in ast.walk(tree):  # messages and help texts: string constants that read as a sentence
        if isinstance(node, ast.Constant) and isinstance(node.value, str) and id(node) not in docstrings:
            text = node.value.strip()
            if len(text) >= 60 and " " in text and sum(c.isalpha() or c == " " for c in text) >= 0.85 * len(text):
                pieces.append((node.lineno, text))
    block: list[str] = []
    block_start = last_line = -1
    try:
        for tok in tokenize.generate_tokens(io.StringIO(source).readline):
            if tok.type != tokenize.COMMENT:
                continue
            line = tok.start[0]
            text = tok.string.lstrip("#").strip()
            if line != last_line + 1 and block:
                pieces.append((block_start, " ".join(block)))
                block = []
            if not block:
                block_start = line
            if text and not text.startswith("!") and not text.startswith("-*-"):
                block.append(text)
            last_line = line
    except (tokenize.TokenError, SyntaxError):
        pass
    if block:
        pieces.append((block_start, " ".join(block)))
    pieces = [(line, text) for line, text in pieces if len(text) >= MIN_PIECE_CHARS]
    return _clean("\n\n".join(text for _, text in sorted(pieces, key=lambda p: p[0])))


@lru_cache(maxsize=1)
def _catalogue() -> tuple[tuple[str, str, str], ...]:
    """(name, kind, key) of every candidate document, in hash order; kind: topic, module, compiled, prose."""
    from pydoc_data.topics import topics

    entries = [(f"pydoc:{key}", "topic", key) for key in topics]
    entries += [(name, "module", str(path)) for name, path in _module_files().items()]
    entries += [(f"compiled:{name}", "compiled", name) for name in _compiled_modules()]
    entries += [(f"file:{name}", "prose", str(path)) for name, path in _prose_files().items()]
    return tuple(sorted(entries, key=lambda e: (_hash(e[0]), e[0])))


@lru_cache(maxsize=4096)
def _text(kind: str, key: str) -> str:
    if kind == "topic":
        from pydoc_data.topics import topics

        return _clean(topics[key])
    if kind == "compiled":
        return compiled_module_document(key)
    if kind == "prose":
        return prose_document(Path(key))
    try:
        source = Path(key).read_text(encoding="utf-8")
    except (OSError, UnicodeDecodeError):
        return ""
    return module_document(source)


def named_documents(heldout: bool) -> Iterator[tuple[str, str]]:
    """(name, text) of the held-out or the training documents, built lazily, in a fixed order."""
    for name, kind, key in _catalogue():
        if is_heldout(name) != heldout:
            continue
        text = _text(kind, key)
        if len(text) >= MIN_CHARS:
            yield name, text


def training_identity() -> str:
    """SHA-256 of what the training documents are built from (names, sources, the build's version),
    without building them."""
    from pydoc_data.topics import topics

    digest = hashlib.sha256(f"offline-corpus-{CORPUS_VERSION}".encode())
    for name, kind, key in _catalogue():
        if is_heldout(name):
            continue
        digest.update(name.encode() + b"\0")
        if kind == "topic":
            digest.update(topics[key].encode())
        elif kind == "compiled":  # a compiled module's docs change only with the Python build
            digest.update(f"{sys.version}".encode())
        else:
            digest.update(Path(key).read_bytes())
        digest.update(b"\0")
    return digest.hexdigest()


def training_documents() -> Iterator[str]:
    """Documents available for training (never a held-out one)."""
    return (text for _, text in named_documents(heldout=False))


def heldout_documents() -> list[str]:
    """Documents reserved for evaluation."""
    return [text for _, text in named_documents(heldout=True)]


def python_doc_documents() -> list[str]:
    """The pydoc topics alone, as documents in a fixed order (a small English corpus for tests)."""
    from pydoc_data.topics import topics

    docs = [_clean(topics[key]) for key in sorted(topics)]
    return [d for d in docs if len(d) > MIN_CHARS]
