"""The command line: argument defaults, list, run (summary table), report, errors with exit code 2."""

from __future__ import annotations

import pytest

from benchmark import cli

import runner_fakes

pytestmark = pytest.mark.usefixtures("one_thread")


def test_no_arguments_runs_the_quick_suite_into_results_quick(monkeypatch):
    seen = {}
    monkeypatch.setattr(cli, "cmd_run", lambda args: seen.update(vars(args)) or 0)
    assert cli.main([]) == 0
    assert seen["command"] == "run" and seen["suite"] == "quick" and seen["out"] is None
    assert seen["device"] is None and seen["fresh"] is False
    assert cli.main(["--plugin", "x.py"]) == 0 and seen["plugin"] == ["x.py"]


def test_list_commands(capsys):
    assert cli.main(["list", "suites"]) == 0
    out = capsys.readouterr().out
    for name in ("quick", "full-synthetic", "imagenet", "voc", "coco"):
        assert name in out
    assert cli.main(["list", "methods"]) == 0
    out = capsys.readouterr().out
    assert "gradcam" in out and "family=gradient" in out
    rows = {line.split()[0]: line for line in out.splitlines() if line.strip()}  # the cost class (issue 29)
    assert all("cost=expensive" in rows[m] for m in ("scorecam", "sscam", "iscam", "ablationcam"))
    assert "cost=cheap" in rows["gradcam"] and "cost=cheap" in rows["random"]
    plugin = runner_fakes.__file__
    assert cli.main(["--plugin", plugin, "list", "metrics"]) == 0
    out = capsys.readouterr().out
    assert "fake_drop" in out and "higher_is_better=False" in out
    assert cli.main(["--plugin", plugin, "list", "datasets"]) == 0
    assert "fake_shapes" in capsys.readouterr().out


def test_run_then_report_print_the_summary(tmp_path, capsys):
    out = tmp_path / "o"
    suite = str(runner_fakes.SUITES / "failures.toml")
    assert cli.main(["run", suite, "--out", str(out), "--quiet", "--no-plots", "--limit", "3"]) == 0
    text = capsys.readouterr().out
    assert "1 unit(s) run, 0 reused" in text and "gradcam" in text
    assert "score row(s) failed" in text and (out / "leaderboard.csv").is_file()
    # the findings are the summary's last lines (before the report's path), one per experiment, short
    findings = text[text.index("Findings") :].splitlines()
    assert findings[-1].startswith("report: ") and len(findings) <= 6, findings
    assert " on " in findings[1] and "n = 3" in findings[1]
    assert len(text.splitlines()) < 30
    assert cli.main(["report", str(out), "--no-plots"]) == 0
    assert "Findings" in capsys.readouterr().out


@pytest.mark.parametrize(
    "argv, needle",
    [
        (["run", "no-such-suite"], "Unknown suite 'no-such-suite'"),
        (["run", "missing/file.toml"], "does not exist"),
        (["run", "tiny.toml", "--device", "gpu"], "must be auto, cpu"),
        (["report", "/nonexistent/dir"], "no run.json"),
    ],
)
def test_bad_input_exits_2_with_a_clear_message(argv, needle, capsys, monkeypatch):
    monkeypatch.chdir(runner_fakes.SUITES)
    assert cli.main(argv) == 2
    assert needle in capsys.readouterr().err
