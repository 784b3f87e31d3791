"""Every case of cli_cases.py: one ``error:`` line naming the problem, exit 2, no traceback, nothing
half-written; and docs/errors.md shows exactly these cases."""

import os
import re
from pathlib import Path

import pytest
from click.testing import CliRunner
from cli_cases import FAULTS, _cases, render_faults, render_table
from tiny_models import save_tiny_teacher

from linearize.cli import main

CASES = _cases()
DOC = Path(__file__).parent.parent / "docs" / "errors.md"


@pytest.fixture(scope="module")
def built(tmp_path_factory):
    root = tmp_path_factory.mktemp("teachers")
    teacher = save_tiny_teacher(root / "tiny-teacher")
    converted = root / "tiny-converted"
    result = CliRunner().invoke(main, ["convert", str(teacher), "--recipe", "liger-gla", "--out", str(converted)])
    assert result.exit_code == 0, result.output
    os.environ["LINEARIZE_TEST_TEACHER"] = str(teacher)  # for setups that copy the teacher
    return {"teacher": str(teacher), "converted": str(converted)}


def _fill(text: str, values: dict) -> str:
    for name, value in values.items():
        text = text.replace("{" + name + "}", value)
    return text


@pytest.mark.parametrize("case", CASES, ids=[c.id for c in CASES])
def test_user_error_is_one_line_and_exit_2(case, built, tmp_path, monkeypatch):
    monkeypatch.chdir(tmp_path)
    values = {**built, "tmp": str(tmp_path)}
    if case.setup is not None:
        case.setup(tmp_path)
    before = sorted(p.relative_to(tmp_path) for p in tmp_path.rglob("*"))
    result = CliRunner().invoke(main, [_fill(a, values) for a in case.args])
    output = result.output
    assert result.exit_code == case.exit_code, (output, result.exception)
    assert "Traceback" not in output, output
    errors = [line for line in output.splitlines() if line.startswith("error:")]
    assert len(errors) == 1, output
    assert _fill(case.message, values) in errors[0], errors[0]
    if case.check is not None:
        case.check(tmp_path)
    after = sorted(p.relative_to(tmp_path) for p in tmp_path.rglob("*"))
    created = [p for p in after if p not in before]
    assert not created, f"a refused command left {created}"


def test_docs_table_lists_every_case():
    text = DOC.read_text()
    table = render_table(CASES)
    assert table in text, "docs/errors.md is out of date: python tests/cli_cases.py prints the table"
    assert len({c.id for c in CASES}) == len(CASES)
    assert os.path.basename(__file__) in text and re.search(r"cli_cases\.py", text)


def test_docs_fault_table_names_tests_that_exist():
    text = DOC.read_text()
    assert render_faults() in text, "docs/errors.md is out of date: python tests/cli_cases.py prints the table"
    for fault in FAULTS:
        module, function = fault.test.split("::")
        assert f"def {function}(" in (Path(__file__).parent / module).read_text(), fault.test
