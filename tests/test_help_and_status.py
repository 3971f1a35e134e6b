"""What a newcomer reads in a terminal: `--help` without `<bool>`, `sweep status` at 80 columns.

Run: .venv/bin/python -m pytest tests/test_help_and_status.py -q
"""

from __future__ import annotations

import math

import pytest
from rich.console import Console
from typer.testing import CliRunner

from workbench.cli.app import app
from workbench.cli.sweep import render_status
from workbench.sweep import StudyStatus, TrialRow


@pytest.mark.parametrize("command", [["train"], ["report"], ["ui"], ["sweep", "status"], ["sweep", "run"]])
def test_help_shows_no_type_for_flags(command):
    out = CliRunner().invoke(app, [*command, "--help"], env={"COLUMNS": "160"})
    assert out.exit_code == 0, out.output
    assert "<bool>" not in out.output
    assert "--help" in out.output


def test_flags_are_still_listed_with_their_help():
    out = CliRunner().invoke(app, ["train", "--help"], env={"COLUMNS": "160"}).output
    assert "--quiet" in out and "no progress bar" in out
    assert "<int>" in out  # options that take a value keep their type


def _status() -> StudyStatus:
    rows = [TrialRow(0, "COMPLETE", {"eps_neg_up": math.inf, "eps_neg_down": 1.0}, [0.2104], None,
                     "0123456789abcdef0123456789abcdef", 151.0, ""),
            TrialRow(1, "PRUNED", {"eps_neg_up": 0.01, "eps_neg_down": 0.2}, None, "runaway collapse at step 5 (seed 0)",
                     "fedcba9876543210fedcba9876543210", 98.0, ""),
            TrialRow(2, "RUNNING", {"eps_neg_up": 0.5, "eps_neg_down": 0.05}, None, None, None, None, "")]
    return StudyStatus("demo", "/tmp/studies/demo.journal", ["maximize eval/micro/accuracy"], 3,
                       {"COMPLETE": 1, "PRUNED": 1, "RUNNING": 1}, rows, [0], None)


def _render(width: int) -> str:
    console = Console(width=width, record=True, color_system=None)
    console.print(render_status(_status(), width))
    return console.export_text()


def test_status_fits_80_columns_with_whole_run_ids():
    text = _render(80)
    assert max(len(line) for line in text.splitlines()) <= 80
    assert "01234567" in text and "fedcba98" in text  # the id prefix, on one line
    assert "0123456789abcdef0123456789abcdef" not in text
    assert "first 8 characters" in text


def test_status_says_off_and_none_like_the_report():
    text = _render(80)
    rows = [line for line in text.splitlines() if line.startswith("│") and line[1:].split("│")[0].strip()]
    lines = {line[1:].split("│")[0].strip(): line for line in rows}
    assert "inf" not in text
    assert lines["0*"].count("off") == 2  # eps_neg_up inf and eps_neg_down >= 1: both switched off
    assert "none" in lines["0*"]
    assert "none" not in lines["2"]  # a running trial has no verdict yet
    wide = _render(200)
    assert "0123456789abcdef0123456789abcdef" in wide


def test_status_names_every_collapsed_seed(tmp_path):
    """A trial whose seeds 0 and 2 collapsed shows both; the trial's own flag held only the last one."""
    import optuna

    from workbench.sweep import study_status
    from workbench.sweep.storage import open_storage

    journal = tmp_path / "demo.journal"
    study = optuna.create_study(study_name="demo", storage=open_storage(str(journal)))
    seeds = {"0": {"collapse": "accuracy", "collapse_step": 11}, "1": {"collapse": None, "collapse_step": None},
             "2": {"collapse": "runaway", "collapse_step": 6}}
    dist = {"eps_neg_down": optuna.distributions.CategoricalDistribution([0.01, 1.0])}
    study.add_trial(optuna.trial.create_trial(params={"eps_neg_down": 0.01}, distributions=dist, value=0.03,
                                              user_attrs={"seeds": seeds, "collapse": "runaway (seed 2)"}))
    study.add_trial(optuna.trial.create_trial(params={"eps_neg_down": 1.0}, distributions=dist, value=0.07,
                                              user_attrs={"seeds": {"0": {"collapse": None}}}))
    status = study_status("demo", storage=str(journal))
    both = "seed 0: accuracy, step 11; seed 2: runaway, step 6"
    assert [r.collapse for r in status.rows] == [both, None]
    for width in (80, 200):  # one seed per line, so that a fold never splits a seed's kind from its step
        console = Console(width=width, record=True, color_system=None)
        console.print(render_status(status, width))
        text = console.export_text()
        assert "seed 0: accuracy, step 11;" in text and "seed 2: runaway, step 6" in text
        assert max(len(line) for line in text.splitlines()) <= width
