"""English text that exists on every machine, for the demo, tests and held-out perplexity.

Python's own documentation topics (``pydoc_data.topics``, ~0.5 MB) ship with CPython. They are
split into documents deterministically: every tenth document is held out and never trained on.
"""

from __future__ import annotations

import re


def python_doc_documents() -> list[str]:
    """The pydoc topics as cleaned paragraphs-of-text documents, in a fixed order."""
    from pydoc_data.topics import topics

    docs = []
    for key in sorted(topics):
        text = re.sub(r"\n{3,}", "\n\n", topics[key]).strip()
        if len(text) > 200:
            docs.append(text)
    return docs


def heldout_documents() -> list[str]:
    """Documents reserved for evaluation (every tenth)."""
    return python_doc_documents()[::10]


def training_documents() -> list[str]:
    """Documents available for training (all but the held-out ones)."""
    return [d for i, d in enumerate(python_doc_documents()) if i % 10]
