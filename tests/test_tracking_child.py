"""A run written by a child process (tracking.ChildTracker): the same run as RunTracker's, errors
raised where the call was made, and a training process that never imports MLflow.

Run: pytest tests/test_tracking_child.py
"""

import json
import os
import subprocess
import sys
import textwrap
from pathlib import Path

import pytest
from mlflow import MlflowClient

from workbench.names import TAG_PID
from workbench.tracking import ChildTracker

ROOT = Path(__file__).resolve().parents[1]


def test_the_child_writes_the_run_runtracker_would_and_names_this_process_its_writer(tmp_path):
    uri = f"sqlite:///{tmp_path}/m.db"
    t = ChildTracker(experiment="e", run_name="r", tracking_uri=uri, params={"lr": 0.1}, tags={"kind": "train"},
                     artifacts={"config.yaml": "a: 1\n"})
    t.log_metrics({"loss": 0.5, "acc": 1}, step=1)
    t.log_metrics({"loss": 0.25}, step=2)
    t.set_tags({"collapse": "none"})
    t.log_table([{"prompt": "1+2=", "reward": 1.0}], "rollouts/step_0001.json")
    t.finish("FINISHED")
    assert t.child_peak_rss_mb > 20  # the child's own high-water mark, read before it exits
    c = MlflowClient(uri)
    run = c.get_run(t.run_id)
    assert run.info.status == "FINISHED" and run.data.params == {"lr": "0.1"}
    assert run.data.tags["kind"] == "train" and run.data.tags["collapse"] == "none"
    assert run.data.tags[TAG_PID] == str(os.getpid())  # the training process, not the child
    assert [m.value for m in c.get_metric_history(t.run_id, "loss")] == [0.5, 0.25]
    table = json.loads(Path(c.download_artifacts(t.run_id, "rollouts/step_0001.json", str(tmp_path))).read_text())
    assert table["columns"] == ["prompt", "reward"] and table["data"] == [["1+2=", 1.0]]
    assert t._proc.poll() == 0


def test_an_error_in_the_child_is_raised_by_the_call_that_caused_it(tmp_path):
    from mlflow.exceptions import MlflowException

    uri = f"sqlite:///{tmp_path}/m.db"
    with pytest.raises(MlflowException, match="nonexistent"):
        ChildTracker(experiment="e", run_name="r", tracking_uri=uri, resume_run_id="nonexistent")
    t = ChildTracker(experiment="e", run_name="r", tracking_uri=uri)
    with pytest.raises(Exception, match="missing.txt"):  # a file that is not there
        t.log_file(tmp_path / "missing.txt")
    t.log_metrics({"loss": 1.0}, step=1)  # the child is still there
    t.finish("FAILED", "why")
    assert MlflowClient(uri).get_run(t.run_id).data.tags["failure_reason"] == "why"


def test_a_training_process_never_imports_mlflow_and_its_run_is_whole(tmp_path):
    code = textwrap.dedent(f"""
        import os, sys
        from workbench.config import build_run_config
        from workbench.train.trainer import train

        if __name__ == "__main__":
            cfg = build_run_config({{"model": {{"name": "micro-0.5m"}}, "sft": {{"enabled": False}}, "steps": 2,
                                    "threads": 1, "seed": 3, "updates_per_rollout": 2, "rollout_lag": 2,
                                    "rollout": {{"prompts_per_step": 2, "group_size": 2, "max_new_tokens": 8}},
                                    "eval": {{"every": 100, "k": 1, "limit": 2}}, "sample_every": 1}})
            res = train(cfg, tracking_uri="sqlite:///{tmp_path}/m.db", progress=False, checkpoint_root="{tmp_path}/ck")
            print(res.status, res.run_id, os.getpid(), "mlflow" in sys.modules)
        """)
    script = tmp_path / "run.py"
    script.write_text(code)
    env = {**os.environ, "PYTHONPATH": str(ROOT)}
    out = subprocess.run([sys.executable, str(script)], capture_output=True, text=True, env=env, cwd=tmp_path,
                         timeout=600)
    assert out.returncode == 0, out.stderr[-3000:]
    status, run_id, pid, imported = out.stdout.split()[-4:]
    assert status == "FINISHED" and imported == "False"
    c = MlflowClient(f"sqlite:///{tmp_path}/m.db")
    run = c.get_run(run_id)
    assert run.info.status == "FINISHED" and run.data.tags[TAG_PID] == pid
    assert len(c.get_metric_history(run_id, "reward/mean")) == 2
    assert [a.path for a in c.list_artifacts(run_id, "rollouts")] == ["rollouts/step_0001.json",
                                                                        "rollouts/step_0002.json"]
