"""Claims: the verdict rule on fabricated numbers and runs whose answer is known, the study
file's checks, and a sweep on the fake trainer whose stored runs alone give the verdicts.

Run: .venv/bin/python -m pytest tests/test_claims.py -q
"""

from __future__ import annotations

import math

import numpy as np
import pytest
import yaml

from workbench.sweep import claims as wc
from workbench.sweep.claims import ClaimSpec, judge, paired_link
from workbench.config import ConfigError
from workbench.names import TAG_ARM, TAG_SEED
from workbench.report import claims as rc
from workbench.sweep.study_file import load_study_file, parse_study
from workbench.tracking import MetricSeries, RunRecord

SEEDS = range(5)


def spec(measure="final_accuracy", arms=("a", "b"), expect="higher", id="c") -> ClaimSpec:
    return ClaimSpec(id=id, text="t", measure=measure, arms=list(arms), expect=expect)


def per_seed(values) -> dict[int, float]:
    return dict(zip(SEEDS, values))


# Seed effects shared by both arms (paired), as a real warm start would add.
BASE = [0.20, 0.35, 0.25, 0.41, 0.30]


@pytest.mark.parametrize("shift, noise, expect, verdict", [
    (+0.05, [0.004, -0.003, 0.002, -0.001, 0.003], "higher", "reproduced"),  # clear effect
    (0.0, [0.02, -0.02, 0.01, -0.01, 0.0], "higher", "inconclusive"),  # no effect
    (-0.05, [0.004, -0.003, 0.002, -0.001, 0.003], "higher", "refuted"),  # effect, wrong direction
    (-0.05, [0.004, -0.003, 0.002, -0.001, 0.003], "lower", "reproduced"),  # the same, claimed lower
])
def test_verdict_rule_on_paired_seeds(shift, noise, expect, verdict):
    a = per_seed([b + shift + n for b, n in zip(BASE, noise)])
    result = judge(spec(expect=expect), {"a": a, "b": per_seed(BASE)})
    (link,) = result.links
    assert result.verdict == verdict and link.verdict == verdict
    assert link.n == 5 and link.effect == pytest.approx(shift + np.mean(noise))
    assert link.low <= link.effect <= link.high
    if verdict == "reproduced":
        assert link.agree == 5
    # pairing matters: unpaired, the seed spread (0.20-0.41) would swamp a 0.05 shift
    assert link.high - link.low < 0.05


def test_fewer_than_five_paired_seeds_is_inconclusive_even_for_a_clear_effect():
    a = {0: 0.5, 1: 0.6, 2: 0.55, 3: 0.52, 4: math.nan}  # seed 4 missing its measure
    b = {s: v - 0.2 for s, v in a.items()}
    link = paired_link("a", "b", a, b, "higher")
    assert link.n == 4 and link.effect == pytest.approx(0.2) and link.verdict == "inconclusive"
    assert paired_link("a", "b", {}, b, "higher").verdict == "inconclusive"


def test_a_chain_is_reproduced_only_when_every_link_is_and_refuted_when_any_link_is():
    b = per_seed(BASE)
    up = per_seed([x + 0.1 for x in BASE])
    up2 = per_seed([x + 0.2 for x in BASE])
    chain = spec(arms=("top", "mid", "low"))
    assert judge(chain, {"top": up2, "mid": up, "low": b}).verdict == "reproduced"
    assert judge(chain, {"top": up2, "mid": b, "low": up}).verdict == "refuted"
    flat = per_seed([x + n for x, n in zip(BASE, [0.02, -0.02, 0.01, -0.01, 0.0])])
    assert judge(chain, {"top": up2, "mid": up, "low": flat}).verdict == "reproduced"
    assert judge(chain, {"top": up, "mid": flat, "low": b}).verdict == "inconclusive"


def test_collapse_indicators_every_tight_seed_collapsed_none_of_the_base():
    link = paired_link("tight", "base", per_seed([1, 1, 1, 1, 1]), per_seed([0] * 5), "higher")
    assert (link.effect, link.low, link.high, link.verdict) == (1.0, 1.0, 1.0, "reproduced")
    # 2 of 5 collapsed, against none: the interval reaches 0, so it is not shown
    assert paired_link("tight", "base", per_seed([1, 0, 1, 0, 0]), per_seed([0] * 5), "higher").verdict == "inconclusive"


def test_bootstrap_interval_is_deterministic():
    d = np.array([0.1, -0.05, 0.2, 0.07, 0.01])
    assert wc.bootstrap_interval(d) == wc.bootstrap_interval(d)


# ---- runs: measures read off stored series and tags ----

def fake_run(arm: str, seed: int, entropy: list[float], acc: float, collapse: str | None = None,
             status: str = "FINISHED") -> RunRecord:
    steps = np.arange(1, len(entropy) + 1)
    series = {"entropy/mean": MetricSeries(steps, np.array(entropy, float), steps * 1.0),
              "eval/micro/accuracy": MetricSeries(np.array([0, len(entropy)]), np.array([0.2, acc]), np.zeros(2)),
              "ratio/abs_dev_mean": MetricSeries(steps, np.full(len(steps), 0.05), steps * 1.0),
              "regime/pos_up/clip_frac": MetricSeries(steps, np.full(len(steps), 0.04), steps * 1.0)}
    tags = {TAG_ARM: arm, TAG_SEED: str(seed), **({"collapse": collapse} if collapse else {})}
    return RunRecord(f"{arm}{seed}", f"{arm}-s{seed}", "1", status, 0, 1, {}, tags, tuple(series), series)


def test_claims_from_fabricated_runs_with_known_answers():
    runs = []
    for s in SEEDS:
        e0 = 0.3 + 0.05 * s  # seed-dependent entropy level, shared by the arms
        runs.append(fake_run("base", s, [e0] * 9, 0.3 + 0.02 * s))
        runs.append(fake_run("loose", s, [e0] * 6 + [e0 + 0.1 + 0.01 * s] * 3, 0.3 + 0.02 * s))  # late entropy up
        runs.append(fake_run("tight", s, [e0] * 9, 0.01, collapse="repetition" if s != 2 else None))
        runs.append(fake_run("same", s, [e0 + (0.01 if s % 2 else -0.01)] * 9, 0.3 + 0.02 * s))
    runs.append(fake_run("loose", 5, [9.0] * 9, 0.9, status="FAILED"))  # a failed run is left out
    specs = [spec("entropy_late", ("loose", "base"), id="explore"),
             spec("entropy_late", ("same", "base"), id="nothing"),
             spec("collapse:repetition", ("tight", "base"), id="rep"),
             spec("final_accuracy", ("tight", "base"), id="wrong_way"),
             spec("collapse:length", ("tight", "base"), id="no_length")]
    info = rc.get_claims_info(runs, specs)
    verdicts = {r.claim.id: r.verdict for r in info.results}
    assert verdicts == {"explore": "reproduced", "nothing": "inconclusive", "rep": "reproduced",
                        "wrong_way": "refuted", "no_length": "inconclusive"}
    explore = info.results[0].links[0]
    assert explore.n == 5 and explore.effect == pytest.approx(0.1 + 0.01 * np.mean(list(SEEDS)))
    rep = info.results[2].links[0]
    assert rep.effect == pytest.approx(0.8) and rep.agree == 4
    frame = rc.claims_frame(info)
    assert list(frame["claim"]) == ["explore", "nothing", "rep", "wrong_way", "no_length"]
    assert list(frame["verdict"]) == list(verdicts.values())
    arms = {a.arm: a for a in info.arms}
    assert arms["tight"].collapsed == 4 and arms["base"].abs_dev == pytest.approx(0.05)
    assert arms["base"].clip_frac["pos_up"] == pytest.approx(0.04) and math.isnan(arms["base"].clip_frac["neg_up"])
    page = rc.claims_html(info)
    assert "reproduced" in page and "refuted" in page and wc.RULE[:40] in page


# ---- the study file ----

def test_claims_study_file_parses_with_five_claims_over_its_arms():
    study = load_study_file("studies/claims.yaml")
    assert [c.id for c in study.claims] == ["exploration", "distillation", "repetition_collapse", "length_collapse",
                                            "dispo_beats_cispo_beats_dapo"]
    arms = set(study.space["arm"].arms)
    assert all(set(c.arms) <= arms for c in study.claims) and len(study.seeds) >= wc.MIN_SEEDS
    assert not study.prunes_on_collapse and study.pruner.name == "none"
    assert wc.declared_claims(wc.claims_tag(study.claims)) == study.claims


def _claims_study(tmp_path, **change):
    data = yaml.safe_load(open("studies/claims.yaml"))
    data.update(change)
    return parse_study(data, tmp_path / "claims.yaml")


def test_claims_study_file_errors_name_the_field(tmp_path):
    with pytest.raises(ConfigError) as e:
        _claims_study(tmp_path, seeds=[0, 1, 2])
    assert e.value.lines == ["seeds: a claims study needs at least 5 seeds (paired by seed), got 3"]
    claims = yaml.safe_load(open("studies/claims.yaml"))["claims"]
    claims[1]["arms"] = ["pos_down_loose", "nosuch"]
    with pytest.raises(ConfigError) as e:
        _claims_study(tmp_path, claims=claims)
    assert e.value.lines[0].startswith("claims.1.arms: unknown arm(s) nosuch; the study's arms: base, pos_up_loose")
    with pytest.raises(ConfigError) as e:
        _claims_study(tmp_path, directions=["maximize eval/micro/accuracy"])
    assert e.value.lines[0].startswith("directions: a claims study must run every arm on every seed")
    claims = yaml.safe_load(open("studies/claims.yaml"))["claims"]
    claims[0]["measure"] = "vibes"
    with pytest.raises(ConfigError) as e:
        _claims_study(tmp_path, claims=claims)
    assert e.value.lines[0].startswith("claims.0.measure: unknown measure 'vibes'; allowed: entropy_late")


# ---- a sweep whose stored runs alone give the verdicts ----

def test_sweep_stores_what_the_claims_report_reads(tmp_path):
    from mlflow import MlflowClient

    from tests import fake_trainer
    from workbench import sweep, tracking

    uri = f"sqlite:///{tmp_path / 'mlflow.db'}"
    data = {"name": "mini_claims", "base": {"experiment": "claims-test", "steps": 2, "model": {"name": "micro-0.5m"},
                                            "eval": {"every": 1}},
            "space": {"arm": {"base": {}, "tight": {"objective.params.eps_neg_up": 0.01}}},
            "sampler": "grid", "pruner": "none", "seeds": list(SEEDS), "workers": 1,
            "directions": ["maximize eval/micro/accuracy", "minimize collapse"],
            "claims": [{"id": "rep", "text": "tight collapses", "measure": "collapse:repetition",
                        "arms": ["tight", "base"], "expect": "higher"},
                       {"id": "acc", "text": "tight is better", "measure": "final_accuracy",
                        "arms": ["tight", "base"], "expect": "higher"}]}
    path = tmp_path / "mini_claims.yaml"
    path.write_text(yaml.safe_dump(data))
    sweep.run_study(load_study_file(path), tracking_uri=uri, train_fn=fake_trainer.train, echo=lambda s: None)

    target = tracking.resolve_target("mini_claims", uri)
    tracking.load_histories(target.runs, uri)
    parent = MlflowClient(uri).get_run(target.anchor_run_id)
    declared = wc.declared_claims(parent.data.tags)
    assert [c.id for c in declared] == ["rep", "acc"]
    assert sorted((r.tags[TAG_ARM], r.tags[TAG_SEED]) for r in target.runs) == sorted(
        (a, str(s)) for a in ("base", "tight") for s in SEEDS)
    info = rc.get_claims_info(target.runs, declared)
    assert [r.verdict for r in info.results] == ["reproduced", "refuted"]

    # `dispo-wb report STUDY` prints the verdicts and writes them as claims.csv beside the page
    import pandas as pd
    from typer.testing import CliRunner

    from workbench.cli.app import app

    out = CliRunner().invoke(app, ["report", "mini_claims", "--tracking-uri", uri, "--out-dir", str(tmp_path / "r"),
                                   "--no-png", "--no-log-artifact"])
    assert out.exit_code == 0, out.output
    assert "claim rep: reproduced (tight > base on collapse:repetition: effect +1.000 [+1.000, +1.000], 5/5" in out.output
    assert "claim acc: refuted" in out.output
    table = pd.read_csv(tmp_path / "r" / "mini_claims" / "claims.csv")
    assert list(table["verdict"]) == ["reproduced", "refuted"] and list(table["paired_seeds"]) == [5, 5]
    page = (tmp_path / "r" / "mini_claims" / "index.html").read_text()
    assert '<section id="claims">' in page and wc.RULE[:60] in page


def test_report_prints_a_claim_without_paired_seeds_as_na(tmp_path, monkeypatch):
    # A study still running (or an arm that never finished) has links with no pairs: their CSV cells are empty.
    from typer.testing import CliRunner

    from workbench.report import page as report
    from workbench.cli.app import app

    folder = tmp_path / "study"
    folder.mkdir()
    (folder / "index.html").write_text("<html></html>")
    (folder / "claims.csv").write_text(
        "claim,verdict,comparison,measure,effect,ci_low,ci_high,seeds_agree,paired_seeds\n"
        "exploration,inconclusive,pos_up_loose > base,entropy_late,,,,0,0\n"
        "distillation,reproduced,pos_down_loose < base,entropy_late,-0.05,-0.08,-0.02,5,5\n")
    monkeypatch.setattr(report, "make_report", lambda *a, **k: folder / "index.html")
    out = CliRunner().invoke(app, ["report", "study", "--tracking-uri", f"sqlite:///{tmp_path / 'm.db'}"])
    assert out.exit_code == 0, out.output
    assert "claim exploration: inconclusive (pos_up_loose > base on entropy_late: effect n/a [n/a, n/a], 0/0" in out.output
    assert "claim distillation: reproduced (pos_down_loose < base on entropy_late: effect -0.050 [-0.080, -0.020], 5/5" in out.output
