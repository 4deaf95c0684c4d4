"""docs/reliability.md is generated from the cases tests record (tests/reliability.py)."""
from reliability import read_records, recorder, render


def test_records_from_several_processes_become_one_sorted_table(tmp_path, monkeypatch):
    monkeypatch.setenv("SLEEPEMO_RELIABILITY_DIR", str(tmp_path))
    recorder("tests/test_a.py::test_x[3]")("reader", "bit flip | header", "DataError")
    recorder("tests/test_a.py::test_y")("faults", "SIGKILL in stage 01", "same submission")
    (tmp_path / "other.jsonl").write_text(
        '{"area": "reader", "case": "bit flip | header", "outcome": "DataError", '
        '"test": "tests/test_a.py::test_x"}\n')
    rows = read_records(tmp_path)
    assert len(rows) == 3
    text = render(rows)
    assert text.index("## faults") < text.index("## reader")
    assert text.count("bit flip") == 1  # the same case from two processes: one row
    assert "bit flip \\| header" in text  # a table cell cannot break the table
    assert "`tests/test_a.py::test_x`" in text  # parametrised ids folded into the test


def test_without_the_session_folder_nothing_is_recorded(tmp_path, monkeypatch):
    monkeypatch.delenv("SLEEPEMO_RELIABILITY_DIR", raising=False)
    recorder("t")("a", "b", "c")
    assert read_records(tmp_path) == []
