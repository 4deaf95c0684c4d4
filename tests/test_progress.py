"""Progress bars: a few plain lines in a log file, tqdm in a terminal."""
from __future__ import annotations

import io

from sleepemo.progress import LogBar, bar


class Terminal(io.StringIO):
    def isatty(self):
        return True


def test_a_log_gets_a_few_plain_lines():
    log = io.StringIO()
    for _ in bar(range(1000), desc="folds", unit="fold", stream=log):
        pass
    text = log.getvalue()
    assert "\r" not in text
    lines = text.splitlines()
    assert lines[0].startswith("folds: 0/1000 fold start")
    assert lines[-1].startswith("folds: 1000/1000 fold done")
    assert len(lines) <= 5


def test_quarters_are_reported_when_the_work_is_slow():
    log = io.StringIO()
    b = LogBar(total=8, desc="steps", stream=log, every=0)
    for i in range(8):
        b.set_postfix(fold=i)
        b.update(1)
    b.close()
    b.close()  # closing twice prints once
    lines = log.getvalue().splitlines()
    assert len(lines) == 5 and "(25 %)" in lines[1] and "(75 %)" in lines[3]
    assert "fold=1" in lines[1] and lines[-1].startswith("steps: 8/8")


def test_inner_bars_are_silent_in_a_log_and_disabled_bars_everywhere():
    log = io.StringIO()
    for _ in bar(range(10), desc="inner", leave=False, stream=log):
        pass
    for _ in bar(range(10), desc="off", enabled=False, stream=Terminal()):
        pass
    assert log.getvalue() == ""


def test_an_interrupted_bar_says_so():
    log = io.StringIO()
    try:
        for i in bar(range(10), desc="work", stream=log):
            if i == 3:
                raise KeyboardInterrupt
    except KeyboardInterrupt:
        pass
    assert log.getvalue().splitlines()[-1].startswith("work: 3/10 it stopped")


def test_a_terminal_gets_tqdm():
    from tqdm.auto import tqdm

    term = Terminal()
    b = bar(total=3, desc="live", stream=term)
    assert isinstance(b, tqdm)
    b.update(3)
    b.close()
    assert "\r" in term.getvalue()


def test_a_bar_with_nothing_to_do_says_nothing():
    log = io.StringIO()
    for _ in bar([], desc="band features", stream=log):
        pass
    assert log.getvalue() == ""


def test_in_a_run_the_log_file_gets_only_each_bars_final_line(tmp_path):
    """tqdm stays on the terminal; <out>/run.log gets one line per kept bar, shown or not
    (sleepemo.runlog)."""
    from sleepemo import runlog

    term, console = Terminal(), io.StringIO()
    runlog.setup("test", stdout=console, stderr=console)
    try:
        runlog.attach(tmp_path)
        for _ in bar(range(50), desc="folds", unit="fold", stream=term):
            pass
        for _ in bar(range(5), desc="inner", leave=False, stream=term):
            pass
        for _ in bar(range(5), desc="hidden", enabled=False, stream=term):
            pass
        for _ in bar(range(3), desc="piped", stream=io.StringIO()):
            pass
    finally:
        runlog.reset()
    lines = (tmp_path / "run.log").read_text().splitlines()
    assert [line.split(" [test] INFO    ", 1)[1] for line in lines] == [
        "folds: 50/50 fold done, 0 s", "hidden: 5/5 it done, 0 s", "piped: 3/3 it done, 0 s"]
    assert "\r" in term.getvalue() and console.getvalue() == ""
