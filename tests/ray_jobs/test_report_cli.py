"""``journey report RUN [runs_dir=DIR]``: prints the page's path; a wrong run or argument is one line and exit 2."""
from __future__ import annotations

from ray_jobs import cli
from tests.shared.report.small_run import RUN, build


def test_journey_report_prints_the_path_of_the_page(tmp_path, capsys):
    runs = tmp_path / "runs"
    build(runs, with_eval=False)
    assert cli.main(["report", RUN, f"runs_dir={runs}"]) == 0
    out = capsys.readouterr().out.strip()
    assert out == str(runs.resolve() / RUN / "report" / "index.html")
    assert (runs / RUN / "report" / "report.md").exists()


def test_an_unknown_run_is_one_line_and_exit_2(tmp_path, capsys):
    runs = tmp_path / "runs"
    build(runs, with_eval=False)
    assert cli.main(["report", "nope", f"runs_dir={runs}"]) == 2
    err = capsys.readouterr().err.strip()
    assert len(err.splitlines()) == 1
    assert err.startswith("journey: error: run 'nope' has no finished artifacts") and "runs there: r" in err


def test_bad_arguments_are_one_line_and_exit_2(capsys):
    assert cli.main(["report"]) == 2
    assert "journey report takes one run name" in capsys.readouterr().err
    assert cli.main(["report", "r", "colour=blue"]) == 2
    assert "unknown option 'colour' for journey report" in capsys.readouterr().err
