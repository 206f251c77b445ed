"""Loading test cases: what a user sees for good and bad files."""

from __future__ import annotations

import json
from pathlib import Path

import pytest

from convergence.config.models import TestCasesConfig as CasesConfig
from convergence.evaluation.cases import TestCaseError, load_test_cases


def test_inline_cases_get_default_ids_and_unknown_keys_go_to_metadata(tmp_path: Path) -> None:
    cfg = CasesConfig(
        inline=[
            {"input": "2+2", "expected": "4", "difficulty": "easy"},
            {"id": "q2", "input": {"question": "capital of France"}, "metadata": {"topic": "geo"}, "lang": "en"},
        ]
    )
    cases = load_test_cases(cfg, tmp_path)
    assert [c.id for c in cases] == ["case-1", "q2"]
    assert cases[0].expected == "4"
    assert cases[0].metadata == {"difficulty": "easy"}
    assert cases[1].input == {"question": "capital of France"}
    assert cases[1].expected is None
    assert cases[1].metadata == {"topic": "geo", "lang": "en"}


def test_json_list_and_object_forms_load_the_same(tmp_path: Path) -> None:
    items = [{"input": "a", "expected": "A"}, {"input": "b", "expected": "B"}]
    (tmp_path / "list.json").write_text(json.dumps(items))
    (tmp_path / "obj.json").write_text(json.dumps({"test_cases": items}))
    a = load_test_cases(CasesConfig(path="list.json"), tmp_path)
    b = load_test_cases(CasesConfig(path="obj.json"), tmp_path)
    assert a == b
    assert [(c.id, c.input, c.expected) for c in a] == [("case-1", "a", "A"), ("case-2", "b", "B")]


def test_jsonl_skips_blank_lines_and_limit_keeps_first_n(tmp_path: Path) -> None:
    lines = [json.dumps({"input": f"q{i}", "expected": i}) for i in range(5)]
    (tmp_path / "cases.jsonl").write_text("\n".join(lines[:2]) + "\n\n" + "\n".join(lines[2:]) + "\n")
    cases = load_test_cases(CasesConfig(path="cases.jsonl", limit=3), tmp_path)
    assert [c.input for c in cases] == ["q0", "q1", "q2"]
    assert [c.expected for c in cases] == [0, 1, 2]


def test_jsonl_error_names_file_and_line(tmp_path: Path) -> None:
    (tmp_path / "c.jsonl").write_text('{"input": "ok"}\n{"input": "broken"\n')
    with pytest.raises(TestCaseError) as ei:
        load_test_cases(CasesConfig(path="c.jsonl"), tmp_path)
    msg = str(ei.value)
    assert str(tmp_path / "c.jsonl") in msg and "line 2" in msg and "invalid JSON" in msg


def test_missing_input_names_item_and_expected_key(tmp_path: Path) -> None:
    (tmp_path / "c.json").write_text(json.dumps([{"input": 1}, {"question": "no input key"}]))
    with pytest.raises(TestCaseError, match=r"item 1: missing required key 'input'.*question"):
        load_test_cases(CasesConfig(path="c.json"), tmp_path)


def test_jsonl_missing_input_reports_line_number(tmp_path: Path) -> None:
    (tmp_path / "c.jsonl").write_text('{"input": 1}\n\n{"expected": 2}\n')
    with pytest.raises(TestCaseError, match=r"line 3: missing required key 'input'"):
        load_test_cases(CasesConfig(path="c.jsonl"), tmp_path)


def test_duplicate_ids_are_rejected(tmp_path: Path) -> None:
    cfg = CasesConfig(inline=[{"id": "a", "input": 1}, {"id": "b", "input": 2}, {"id": "a", "input": 3}])
    with pytest.raises(TestCaseError, match=r"item 2: duplicate test case id 'a' \(first used at item 0\)"):
        load_test_cases(cfg, tmp_path)


def test_explicit_id_colliding_with_a_default_id_is_rejected(tmp_path: Path) -> None:
    cfg = CasesConfig(inline=[{"input": 1}, {"id": "case-1", "input": 2}])
    with pytest.raises(TestCaseError, match="duplicate"):
        load_test_cases(cfg, tmp_path)


def test_missing_file_names_the_resolved_path(tmp_path: Path) -> None:
    with pytest.raises(TestCaseError) as ei:
        load_test_cases(CasesConfig(path="data/../nope.json"), tmp_path)
    assert str((tmp_path / "nope.json").resolve()) in str(ei.value)
    assert isinstance(ei.value, ValueError)


def test_wrong_top_level_shapes_say_what_was_expected(tmp_path: Path) -> None:
    (tmp_path / "o.json").write_text(json.dumps({"cases": []}))
    with pytest.raises(TestCaseError, match="'test_cases' list"):
        load_test_cases(CasesConfig(path="o.json"), tmp_path)
    (tmp_path / "s.json").write_text(json.dumps(["just a string"]))
    with pytest.raises(TestCaseError, match=r"item 0: expected an object with an 'input' key, found str"):
        load_test_cases(CasesConfig(path="s.json"), tmp_path)
    (tmp_path / "m.json").write_text(json.dumps([{"input": 1, "metadata": [1]}]))
    with pytest.raises(TestCaseError, match="'metadata' must be an object"):
        load_test_cases(CasesConfig(path="m.json"), tmp_path)


def test_invalid_json_reports_line(tmp_path: Path) -> None:
    (tmp_path / "c.json").write_text('[\n  {"input": 1},\n  {"input": }\n]')
    with pytest.raises(TestCaseError, match=r"line 3, column \d+: invalid JSON"):
        load_test_cases(CasesConfig(path="c.json"), tmp_path)


def test_empty_file_is_an_error(tmp_path: Path) -> None:
    (tmp_path / "c.jsonl").write_text("\n")
    with pytest.raises(TestCaseError, match="no test cases"):
        load_test_cases(CasesConfig(path="c.jsonl"), tmp_path)
