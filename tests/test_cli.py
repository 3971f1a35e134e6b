"""`dispo-wb` commands through Typer's CliRunner: output, exit codes, nothing written on bad input.

Run: pytest tests/test_cli.py
"""

import os
import subprocess
import sys

import pytest
from mlflow import MlflowClient
from typer.testing import CliRunner

from workbench.cli.app import app

runner = CliRunner()


def test_objectives_lists_every_objective_with_defaults():
    out = runner.invoke(app, ["objectives"])
    assert out.exit_code == 0
    for name in ["grpo", "dr_grpo", "dapo", "cispo", "gspo", "dispo"]:
        assert name in out.output
    assert "eps_neg_up" in out.output and "0.28" in out.output


@pytest.mark.parametrize("args, message", [
    (["--objective", "ppo2"], "unknown objective 'ppo2'"),
    (["--eps-neg-up", "-0.5"], "eps_neg_up"),
    (["--model", "micro-7b"], "micro-7b"),
    (["--steps", "0"], "steps: Input should be greater than or equal to 1"),
    (["--set", "sft.target_lo=0.4"], "sft.target_lo: unknown field"),
    (["--set", "rollout.group_size"], "expected KEY=VALUE"),
    (["--set", "rollout.group_size=eight"], "rollout.group_size: Input should be a valid integer"),
    (["--set", "lr=[1"], "not valid YAML"),
    (["--set", "steps=3", "--resume", "abc"], "--set cannot change a resumed run"),
    (["--eps-neg-up", "nan"], "eps_neg_up must be a number >= 0"),
    (["--set", "rollout.group_size=1"], "rollout.group_size: Input should be greater than or equal to 2"),
    # Refused up front since issue 16; each used to open a run and then fail, or to run to the end.
    (["--lr", "1e400"], "lr: Input should be a finite number"),
    (["--set", "lr=.inf"], "lr: Input should be a finite number"),
    (["--set", "reward_timeout_s=.inf"], "reward_timeout_s: Input should be a finite number"),
    (["--set", "rollout.temperature=.inf"], "rollout.temperature: Input should be a finite number"),
    (["--set", "eval.benchmarks=[micro, gsm9k]"], "eval.benchmarks: unknown benchmark 'gsm9k'; valid: micro, aime24"),
    (["--set", "eval.benchmarks=[file:nowhere/x.jsonl]"], "eval.benchmarks: benchmark file 'nowhere/x.jsonl' does not exist"),
    (["--experiment", ""], "experiment: String should have at least 1 character"),
    (["--experiment", "  "], "experiment: String should match pattern"),
    (["--seed", str(2**64)], "seed: Input should be less than or equal to 4294967295"),
    (["--seed", "-1"], "seed: Input should be greater than or equal to 0"),
])
def test_bad_train_input_is_one_line_exit_2_and_writes_nothing(tmp_path, monkeypatch, args, message):
    monkeypatch.chdir(tmp_path)
    out = runner.invoke(app, ["train", "--tracking-uri", f"sqlite:///{tmp_path}/m.db", *args])
    _refused(out, message, tmp_path)


def _refused(out, message: str, tmp_path) -> None:
    """One `error:` line holding `message`, exit 2, and no store, lock or cache written."""
    assert out.exit_code == 2, out.output
    errors = [line for line in out.output.splitlines() if line.startswith("error:")]
    assert len(errors) == 1 and message in errors[0], out.output
    assert "Traceback" not in out.output
    assert not list(tmp_path.rglob("*.db*")) and not (tmp_path / ".cache").exists()


@pytest.mark.parametrize("content, message", [
    (b"steps: 3\nrun_name: caf\xe9\n", "not UTF-8 text"),
    (b"- steps: 3\n", "must be a mapping of config fields, got list"),
    (b"steps: [3\n", "not valid YAML"),
])
def test_bad_config_file_is_refused(tmp_path, monkeypatch, content, message):
    monkeypatch.chdir(tmp_path)
    cfg = tmp_path / "run.yaml"
    cfg.write_bytes(content)
    out = runner.invoke(app, ["train", "--config", str(cfg), "--tracking-uri", f"sqlite:///{tmp_path}/m.db"])
    _refused(out, message, tmp_path)


def test_store_in_a_folder_that_is_a_file_is_refused(tmp_path, monkeypatch):
    monkeypatch.chdir(tmp_path)
    (tmp_path / "afile").write_text("")
    out = runner.invoke(app, ["train", "--tracking-uri", f"sqlite:///{tmp_path}/afile/m.db"])
    _refused(out, "is a file, not a folder", tmp_path)
    out = runner.invoke(app, ["train", "--tracking-uri", f"sqlite:///{tmp_path}/nowhere/m.db"])
    _refused(out, f"folder {tmp_path}/nowhere does not exist", tmp_path)
    (tmp_path / "adir.db").mkdir()
    out = runner.invoke(app, ["train", "--tracking-uri", f"sqlite:///{tmp_path}/adir.db"])
    assert out.exit_code == 2 and "is not a file" in out.output


@pytest.mark.skipif(os.geteuid() == 0, reason="root may write anywhere")
def test_store_in_an_unwritable_folder_is_refused(tmp_path, monkeypatch):
    monkeypatch.chdir(tmp_path)
    locked = tmp_path / "locked"
    locked.mkdir(mode=0o500)
    out = runner.invoke(app, ["train", "--tracking-uri", f"sqlite:///{locked}/m.db"])
    assert out.exit_code == 2 and f"folder {locked} is not writable" in out.output


def test_refusing_a_bad_input_imports_neither_torch_nor_mlflow(tmp_path):
    """The bottom layer at work: parsing and validating a run config stays light (< 1 s to refuse)."""
    code = ("import sys; from typer.testing import CliRunner; from workbench.cli.app import app; "
            f"out = CliRunner().invoke(app, ['train', '--tracking-uri', 'sqlite:///{tmp_path}/m.db', '--lr', 'inf']); "
            "assert out.exit_code == 2, out.output; "
            "print(sorted(m for m in ('torch', 'transformers', 'mlflow', 'optuna') if m in sys.modules))")
    out = subprocess.run([sys.executable, "-c", code], capture_output=True, text=True, cwd=tmp_path)
    assert out.returncode == 0, out.stderr
    assert out.stdout.strip() == "[]"


def test_yaml_type_error_names_the_field(tmp_path):
    cfg = tmp_path / "run.yaml"
    cfg.write_text("rollout:\n  group_size: eight\nobjective:\n  name: dispo\n  params: {eps_pos_up: 0.3}\n")
    out = runner.invoke(app, ["train", "--config", str(cfg), "--tracking-uri", f"sqlite:///{tmp_path}/m.db"])
    assert out.exit_code == 2
    assert "rollout.group_size: Input should be a valid integer" in out.output
    assert not (tmp_path / "m.db").exists()


def test_train_runs_and_logs(tmp_path, monkeypatch):
    monkeypatch.chdir(tmp_path)
    cfg = tmp_path / "run.yaml"
    cfg.write_text("model: {name: micro-0.5m}\nsft: {enabled: false}\nsteps: 2\nupdates_per_rollout: 2\n"
                   "rollout: {prompts_per_step: 2, group_size: 2, max_new_tokens: 16}\neval: {k: 1, limit: 4}\n"
                   "run_name: from-file\n")
    uri = f"sqlite:///{tmp_path}/m.db"
    out = runner.invoke(app, ["train", "--config", str(cfg), "--tracking-uri", uri, "--quiet", "--eps-neg-up", "inf",
                              "--set", "rollout.max_new_tokens=12", "--set", "eval.benchmarks=[micro]",
                              "--set", "run_name=null", "--set", "steps=5", "--steps", "2"])
    assert out.exit_code == 0, out.output
    assert "FINISHED after 2 steps" in out.output
    c = MlflowClient(uri)
    run = c.search_runs([c.get_experiment_by_name("dispo-wb").experiment_id])[0]
    assert run.data.params["objective.params.eps_neg_up"] == "inf"
    assert run.data.params["eval.benchmarks"] == "['micro']"  # --set reads YAML: a list, not the text "[micro]"
    assert run.data.params["rollout.max_new_tokens"] == "12"  # --set overrides the file
    assert run.info.run_name != "from-file"  # null is a value for --set: back to the default name


def test_eval_unknown_benchmark_and_missing_checkpoint(tmp_path):
    out = runner.invoke(app, ["eval", "--checkpoint", str(tmp_path / "nope")])
    assert out.exit_code == 2 and "--checkpoint" in out.output
    out = runner.invoke(app, ["eval", "--checkpoint", "micro-0.5m", "--benchmark", "gsm9k", "--k", "1"])
    assert out.exit_code == 2 and "gsm9k" in out.output


def test_eval_reports_avg_and_pass_at_k():
    out = runner.invoke(app, ["eval", "--checkpoint", "micro-0.5m", "--k", "2", "--limit", "4", "--max-new-tokens", "8"])
    assert out.exit_code == 0, out.output
    assert "eval/micro/accuracy\t" in out.output and "eval/micro/pass_at_2\t" in out.output


def test_eval_scores_a_run_on_the_task_it_trained_on(tmp_path, monkeypatch):
    """`eval --checkpoint .cache/checkpoints/<run_id>` draws micro problems from the run's task, not the default one."""
    import torch

    from workbench.train import evaluation
    from workbench.config import TaskConfig
    from workbench.tasks.micro import build_task

    monkeypatch.chdir(tmp_path)
    uri = f"sqlite:///{tmp_path}/m.db"
    cfg = tmp_path / "run.yaml"
    cfg.write_text("model: {name: micro-0.5m}\nsft: {enabled: false}\nsteps: 1\nthreads: 1\nupdates_per_rollout: 2\n"
                   "rollout: {prompts_per_step: 2, group_size: 2, max_new_tokens: 8}\neval: {k: 1, limit: 2}\n"
                   "task: {min_terms: 3, max_terms: 3, digits: 2}\n")
    out = runner.invoke(app, ["train", "--config", str(cfg), "--tracking-uri", uri, "--quiet"])
    assert out.exit_code == 0, out.output
    (folder,) = (tmp_path / ".cache" / "checkpoints").iterdir()
    trained = torch.load(folder / "state.pt", weights_only=False)["policy"]
    seen: list = []

    def fake_evaluate(backend, tok, problems, *, benchmark, **_):
        seen.append([p.prompt for p in problems])
        weights = backend.model.state_dict()
        assert all(torch.equal(weights[k].cpu(), v) for k, v in trained.items())  # the run's policy, not a fresh one
        return {f"eval/{benchmark}/accuracy": 0.0}

    monkeypatch.setattr(evaluation, "evaluate", fake_evaluate)

    def prompts(**task):
        return [p.prompt for p in build_task(TaskConfig(**task)).eval_set()[:5]]

    args = ["eval", "--checkpoint", str(folder), "--k", "1", "--limit", "5"]
    out = runner.invoke(app, args)
    assert out.exit_code == 0, out.output
    assert seen.pop() == prompts(min_terms=3, max_terms=3, digits=2) != prompts()
    assert f"task: chain_sum, 3-3 terms of 2 digit(s), held-out set of 200 (seed 1234) (from {folder / 'config.yaml'})" in out.output
    # A folder from before config.yaml was written beside state.pt: the run's config artifact.
    (folder / "config.yaml").unlink()
    out = runner.invoke(app, [*args, "--tracking-uri", uri])
    assert out.exit_code == 0, out.output
    assert seen.pop() == prompts(min_terms=3, max_terms=3, digits=2) and f"(from run {folder.name})" in out.output
    out = runner.invoke(app, [*args, "--tracking-uri", f"sqlite:///{tmp_path}/other.db"])
    assert out.exit_code == 2 and "holds no config.yaml" in out.output and not (tmp_path / "other.db").exists()
    # An explicit task setting still wins; anything but task.* is refused.
    out = runner.invoke(app, [*args, "--tracking-uri", uri, "--set", "task.min_terms=2", "--set", "task.digits=1"])
    assert out.exit_code == 0, out.output
    assert seen.pop() == prompts(min_terms=2, max_terms=3, digits=1)
    out = runner.invoke(app, [*args, "--set", "lr=0.1"])
    assert out.exit_code == 2 and "eval takes task settings only" in out.output and not seen
