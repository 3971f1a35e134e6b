"""Claims: the verdict rule on fabricated numbers and runs whose answer is known, the study
file's checks, and a sweep on the fake trainer whose stored runs alone give the verdicts.

Run: .venv/bin/python -m pytest tests/test_claims.py -q
"""

from __future__ import annotations

import json
import math

import numpy as np
import pytest
import yaml

from workbench.sweep import claims as wc
from workbench.sweep.claims import ClaimSpec, arms_needing_seeds, judge
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


def link_of(a, b, expect="higher", measure="final_accuracy", **kw):
    (link,) = judge(spec(measure, expect=expect), {"a": a, "b": b}, **kw).links
    return link


@pytest.mark.parametrize("shift, noise, expect, verdict", [
    (+0.05, [0.004, -0.003, 0.002, -0.001, 0.003], "higher", "reproduced"),  # clear effect
    (0.0, [0.02, -0.02, 0.01, -0.01, 0.0], "higher", "absent"),  # no effect, measured inside +-0.02
    (0.0, [0.08, -0.08, 0.04, -0.04, 0.0], "higher", "undecided"),  # no effect, measured loosely
    (-0.05, [0.004, -0.003, 0.002, -0.001, 0.003], "higher", "refuted"),  # effect, wrong direction
    (-0.05, [0.004, -0.003, 0.002, -0.001, 0.003], "lower", "reproduced"),  # the same, claimed lower
])
def test_verdict_rule_on_paired_seeds(shift, noise, expect, verdict):
    a = per_seed([b + shift + n for b, n in zip(BASE, noise)])
    result = judge(spec(expect=expect), {"a": a, "b": per_seed(BASE)})
    (link,) = result.links
    assert result.verdict == verdict and link.verdict == verdict
    assert link.n == 5 and link.effect == pytest.approx(shift + np.mean(noise))
    assert link.low <= link.effect <= link.high and link.alpha == pytest.approx(0.05)
    # the paired t-interval, by hand: mean +- t(0.975, 4) * sd / sqrt(5)
    d = np.array(noise) + shift
    half = 2.7764451 * d.std(ddof=1) / math.sqrt(5)
    assert (link.low, link.high) == pytest.approx((d.mean() - half, d.mean() + half), rel=1e-6)
    if verdict == "reproduced":
        assert link.agree == 5
    if verdict == "undecided":  # says what it could have seen: (t(.975, 4) + t(.8, 4)) * sd / sqrt(n)
        assert link.detectable == pytest.approx((2.7764451 + 0.9409646) * d.std(ddof=1) / math.sqrt(5), rel=1e-5)
        assert result.look is None and link.look is None
    else:
        assert result.look == 1 and link.look == 1 and math.isnan(link.detectable)
    # pairing matters: unpaired, the seed spread (0.20-0.41) would swamp a 0.05 shift
    assert link.high - link.low < 0.2


def test_look_k_uses_only_the_first_n_k_seeds_and_the_first_deciding_look_is_the_verdict():
    rng = np.random.default_rng(1)
    seeds = list(range(20))
    b = {s: 0.3 for s in seeds}
    # seeds 0-4 say nothing; from seed 5 on the first arm is 0.1 higher (with noise)
    a = {s: 0.3 + (0.1 if s >= 5 else 0.0) + rng.normal(0, 0.03) for s in seeds}
    res = judge(spec(), {"a": a, "b": b}, seeds, looks=[5, 10, 15, 20])
    (link,) = res.links
    assert res.verdict == "reproduced" and res.look == 2 and link.look == 2 and link.n == 10
    assert link.alpha == pytest.approx(0.05 / 4)  # Bonferroni over 4 looks
    assert link.effect == pytest.approx(np.mean([a[s] - 0.3 for s in range(10)]))
    # a study that has only run 12 seeds reaches looks 1 and 2, not 3
    partial = {arm: {s: v for s, v in m.items() if s < 12} for arm, m in (("a", a), ("b", b))}
    assert judge(spec(), partial, seeds, looks=[5, 10, 15, 20]).reached == 2
    first = judge(spec(), {k: {s: v for s, v in m.items() if s < 7} for k, m in partial.items()}, seeds,
                  looks=[5, 10, 15, 20])
    assert first.reached == 1 and first.verdict == "undecided" and first.links[0].n == 5
    assert arms_needing_seeds([first]) == {"a", "b"} and arms_needing_seeds([res]) == set()
    # the last look reached and still undecided: nothing more to add
    assert arms_needing_seeds([judge(spec(), {"a": {0: 1, 1: 0}, "b": {0: 0, 1: 1}}, [0, 1], [2])]) == set()


def test_a_look_is_judged_only_once_its_last_seed_has_run():
    # 9 of 10 seeds run, every one collapsed in the first arm only: 9 discordant pairs would give p = 0.004,
    # but look 2 (10 seeds) is not reached, and look 1 (4 of 4, p = 0.125) does not decide
    claim = spec("collapse:length")
    ran = {"a": dict.fromkeys(range(9), 1.0), "b": dict.fromkeys(range(9), 0.0)}
    res = judge(claim, ran, list(range(10)), [4, 10])
    assert res.reached == 1 and res.verdict == "undecided" and res.links[0].n == 4
    assert arms_needing_seeds([res]) == {"a", "b"}
    ran = {arm: {**m, 9: m[0]} for arm, m in ran.items()}
    assert judge(claim, ran, list(range(10)), [4, 10]).verdict == "reproduced"


def test_a_look_with_fewer_than_two_pairs_is_undecided():
    a = {0: 0.5, 1: math.nan}
    link = link_of(a, {0: 0.1, 1: 0.2})
    assert link.n == 1 and link.verdict == "undecided" and math.isnan(link.effect)
    assert link_of({}, {0: 0.1}).verdict == "undecided"


def test_a_chain_combines_links_refuted_then_absent_then_all_reproduced():
    b = per_seed(BASE)
    up = per_seed([x + 0.1 for x in BASE])
    up2 = per_seed([x + 0.2 for x in BASE])
    wide = per_seed([x + n for x, n in zip(BASE, [0.08, -0.08, 0.04, -0.04, 0.0])])
    flat = per_seed([x + n for x, n in zip(BASE, [0.002, -0.002, 0.001, -0.001, 0.0])])
    chain = spec(arms=("top", "mid", "low"))
    res = judge(chain, {"top": up2, "mid": up, "low": b})
    assert res.verdict == "reproduced" and [l.alpha for l in res.links] == pytest.approx([0.025, 0.025])
    assert judge(chain, {"top": up2, "mid": b, "low": up}).verdict == "refuted"
    assert judge(chain, {"top": up2, "mid": flat, "low": b}).verdict == "absent"  # mid = low: no strict order
    assert judge(chain, {"top": up2, "mid": wide, "low": b}).verdict == "undecided"
    assert arms_needing_seeds([judge(chain, {"top": up2, "mid": wide, "low": b})]) == set()  # one look only


def test_collapse_indicators_use_the_exact_sign_test():
    # 5 of 5 against 0 of 5: the exact paired sign test cannot go below p = 2 / 2^5 = 0.0625
    link = link_of(per_seed([1, 1, 1, 1, 1]), per_seed([0] * 5), measure="collapse:repetition")
    assert link.p == pytest.approx(0.0625) and link.effect == 1.0 and link.verdict == "undecided"
    assert link.detectable == math.inf  # no effect is detectable at 5 pairs
    # 8 of 8 is p = 0.0078 <= 0.05: reproduced; 7 of 8 against 1 is p = 0.07: not
    eight = dict(zip(range(8), [1] * 8))
    assert link_of(eight, dict.fromkeys(range(8), 0), measure="collapse:length").verdict == "reproduced"
    seven = {**eight, 7: 0}
    assert link_of(seven, {**dict.fromkeys(range(8), 0), 7: 1}, measure="collapse:length").verdict == "undecided"
    # 0 of 20 in both: the exact interval (Clopper-Pearson bounds at alpha/4) is +-0.197, inside the 0.3 margin
    none = link_of(dict.fromkeys(range(20), 0), dict.fromkeys(range(20), 0), measure="collapse:length")
    assert none.verdict == "absent" and none.high == pytest.approx(1 - 0.0125 ** (1 / 20))


def test_measures_are_families_and_margins_default_per_family():
    assert wc.measure_family("collapse:repetition") == "collapse:<kind>" and wc.is_binary("collapse:length")
    assert wc.measure_family("collapse:") is None and not wc.is_binary("entropy_late")
    assert spec("entropy_late").equivalence_margin == 0.02
    assert spec("collapse:length").equivalence_margin == 0.3
    assert ClaimSpec(id="c", text="t", measure="final_accuracy", arms=["a", "b"], expect="higher",
                     margin=0.05).equivalence_margin == 0.05
    with pytest.raises(ValueError, match="greater than 0"):
        ClaimSpec(id="c", text="t", measure="final_accuracy", arms=["a", "b"], expect="higher", margin=0)


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
    # 4 of 5 collapsed against none is no evidence at 5 seeds (exact sign test: p = 0.125); entropy
    # moved by +-0.01 is measured inside the 0.02 margin: absent
    assert verdicts == {"explore": "reproduced", "nothing": "absent", "rep": "undecided",
                        "wrong_way": "refuted", "no_length": "undecided"}
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
    assert list(frame["look"].astype(object).where(frame["look"].notna(), None)) == [1, 1, None, 1, None]
    assert frame.loc[2, "detectable"] == math.inf and frame.loc[1, "margin"] == 0.02
    page = rc.claims_html(info)
    for word in ("reproduced", "refuted", "absent", "undecided", "at look 1 of 1 (5 seeds)", "margin 0.02",
                 "Bonferroni", "Lan &amp; DeMets 1983"):
        assert word in page, word


# ---- the study file ----

@pytest.mark.parametrize("path", ["studies/claims.yaml", "studies/claims_onpolicy.yaml"])
def test_claims_study_file_parses_with_five_claims_over_its_arms(path):
    study = load_study_file(path)
    assert [c.id for c in study.claims] == ["exploration", "distillation", "repetition_collapse", "length_collapse",
                                            "dispo_beats_cispo_beats_dapo"]
    arms = set(study.space["arm"].arms)
    assert all(set(c.arms) <= arms for c in study.claims)
    assert study.seeds == list(range(20)) and study.looks == [5, 10, 20] and study.n_trials == 8 * 3
    assert [c.equivalence_margin for c in study.claims] == [0.02, 0.02, 0.3, 0.3, 0.02]
    assert not study.prunes_on_collapse and study.pruner.name == "none"
    tag = wc.claims_tag(study.claims, study.looks)
    assert wc.declared_claims(tag) == study.claims and wc.declared_looks(tag) == [5, 10, 20]
    # a parent run written before looks existed: the tag is the bare list of claims
    old = {"dispo.claims": json.dumps([c.model_dump(exclude={"margin"}) for c in study.claims])}
    assert [c.id for c in wc.declared_claims(old)] == [c.id for c in study.claims] and wc.declared_looks(old) is None


def test_a_plain_seed_list_still_works_as_one_look(tmp_path):
    study = _claims_study(tmp_path, seeds=[3, 1, 4, 5, 9])
    assert study.seeds == [3, 1, 4, 5, 9] and study.looks == []


@pytest.mark.parametrize("seeds, line", [
    ({"looks": [5, 5]}, "seeds.looks: must be increasing numbers of seeds, each at least 2, e.g. [5, 10, 20]; got [5, 5]"),
    ({"looks": [1, 5]}, "seeds.looks: must be increasing numbers of seeds, each at least 2, e.g. [5, 10, 20]; got [1, 5]"),
    ({"looks": []}, "seeds.looks: must be increasing numbers of seeds, each at least 2, e.g. [5, 10, 20]; got []"),
    ({"look": [5]}, "seeds: must be a list of distinct integer seeds, e.g. [0, 1, 2], or {looks: [5, 10, 20]} "
                    "(seeds 0..19 judged after 5, 10, 20); got {'look': [5]}"),
    ([0, 1, 1, 2, 3], "seeds: each seed at most once, got [0, 1, 1, 2, 3]"),
    ([0, 1.5, 2], "seeds: must be a list of distinct integer seeds, e.g. [0, 1, 2], or {looks: [5, 10, 20]} "
                  "(seeds 0..19 judged after 5, 10, 20); got [0, 1.5, 2]"),
    ("0-19", "seeds: must be a list of distinct integer seeds, e.g. [0, 1, 2], or {looks: [5, 10, 20]} "
             "(seeds 0..19 judged after 5, 10, 20); got '0-19'"),
])
def test_bad_seed_forms_are_refused_in_one_line(tmp_path, seeds, line):
    with pytest.raises(ConfigError) as e:
        _claims_study(tmp_path, seeds=seeds)
    assert e.value.lines == [line]


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
            "sampler": "grid", "pruner": "none", "seeds": {"looks": [3, 5]}, "workers": 1,
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
    info = rc.study_claims_info(target.runs, parent.data.tags)
    rep, acc = info.results
    assert rep.looks == acc.looks == (3, 5) and rep.reached == 2
    # every tight seed collapsed, no base seed did: 5 of 5 discordant pairs, p = 0.0625 > 0.05 / 2 looks
    assert rep.verdict == "undecided" and rep.links[0].p == pytest.approx(0.0625) and rep.links[0].n == 5
    assert acc.verdict == "refuted" and acc.look in (1, 2) and acc.links[0].n == (3, 5)[acc.look - 1]

    # `dispo-wb report STUDY` prints the verdicts and writes them as claims.csv beside the page
    import pandas as pd
    from typer.testing import CliRunner

    from workbench.cli.app import app

    out = CliRunner().invoke(app, ["report", "mini_claims", "--tracking-uri", uri, "--out-dir", str(tmp_path / "r"),
                                   "--no-png", "--no-log-artifact"])
    assert out.exit_code == 0, out.output
    # the exact interval: Clopper-Pearson bounds at 0.025 / 4 on the shares of pairs (1, 0) and (0, 1)
    low = 0.00625 ** (1 / 5) - (1 - 0.00625 ** (1 / 5))
    assert rep.links[0].low == pytest.approx(low)
    assert (f"claim rep: undecided, undecided so far (tight > base on collapse:repetition: undecided, effect +1.000 "
            f"[{low:+.3f}, +1.000], 5/5 seeds agree, margin 0.3; detectable at 80% power none at 5 seeds, none at 5)"
            in out.output)
    n = (3, 5)[acc.look - 1]
    assert f"claim acc: refuted, look {acc.look} of 2 ({n} seeds) (tight > base on final_accuracy: refuted" in out.output
    assert f"rule: {wc.RULE}" in out.output
    table = pd.read_csv(tmp_path / "r" / "mini_claims" / "claims.csv")
    assert list(table["verdict"]) == ["undecided", "refuted"] and list(table["paired_seeds"]) == [5, n]
    assert list(table["looks"]) == ["3/5", "3/5"] and table["look"].isna().tolist() == [True, False]
    page = (tmp_path / "r" / "mini_claims" / "index.html").read_text()
    assert '<section id="claims">' in page and wc.RULE[:60] in page

    # the same stored runs judged at other looks: look k uses the first n_k seeds only
    args = ["report", "mini_claims", "--tracking-uri", uri, "--out-dir", str(tmp_path / "r2"), "--no-png",
            "--no-log-artifact"]
    out = CliRunner().invoke(app, [*args, "--looks", "2,4"])
    assert out.exit_code == 0, out.output
    table = pd.read_csv(tmp_path / "r2" / "mini_claims" / "claims.csv")
    assert list(table["looks"]) == ["2/4", "2/4"] and table["paired_seeds"].max() <= 4
    for bad, line in (("5,3", "error: --looks: must be increasing numbers of seeds, each at least 2, e.g. 5,10,20; "
                               "got [5, 3]"),
                      ("5,x", "error: --looks: must be increasing numbers of seeds, each at least 2, e.g. 5,10,20; "
                              "got '5,x'"),
                      ("2,9", "error: looks: the study declared 5 seeds, so no look can use more; got [2, 9]")):
        out = CliRunner().invoke(app, [*args, "--out-dir", str(tmp_path / "r3"), "--looks", bad])
        assert out.exit_code == 2 and out.output.strip().splitlines() == [line], out.output
        assert not (tmp_path / "r3").exists()  # nothing half-written


def test_report_prints_a_claim_without_paired_seeds_as_na(tmp_path, monkeypatch):
    # A study still running (or an arm that never finished) has links with no pairs: their CSV cells are empty.
    from typer.testing import CliRunner

    from workbench.report import page as report
    from workbench.cli.app import app

    folder = tmp_path / "study"
    folder.mkdir()
    (folder / "index.html").write_text("<html></html>")
    (folder / "claims.csv").write_text(
        "claim,text,measure,comparison,verdict,look,looks,link_verdict,link_look,paired_seeds,effect,ci_low,ci_high,"
        "p,alpha,seeds_agree,margin,detectable,detectable_at_max_seeds\n"
        "exploration,t,entropy_late,pos_up_loose > base,undecided,,5/10,undecided,,0,,,,,0.025,0,0.02,,\n"
        "distillation,t,entropy_late,pos_down_loose < base,reproduced,2,5/10,reproduced,2,10,-0.05,-0.08,-0.02,"
        "0.001,0.025,10,0.02,,\n"
        "rep,t,collapse:length,tight > base,undecided,,5/10,undecided,,10,0.2,-0.3,0.6,0.5,0.025,3,0.3,0.45,0.3\n")
    monkeypatch.setattr(report, "make_report", lambda *a, **k: folder / "index.html")
    out = CliRunner().invoke(app, ["report", "study", "--tracking-uri", f"sqlite:///{tmp_path / 'm.db'}"])
    assert out.exit_code == 0, out.output
    assert ("claim exploration: undecided, undecided so far (pos_up_loose > base on entropy_late: undecided, effect n/a "
            "[n/a, n/a], 0/0 seeds agree, margin 0.02)") in out.output
    assert ("claim distillation: reproduced, look 2 of 2 (10 seeds) (pos_down_loose < base on entropy_late: reproduced, "
            "effect -0.050 [-0.080, -0.020], 10/10 seeds agree, margin 0.02)") in out.output
    assert ("claim rep: undecided, undecided so far (tight > base on collapse:length: undecided, effect +0.200 "
            "[-0.300, +0.600], 3/10 seeds agree, margin 0.3; detectable at 80% power 0.45 at 10 seeds, 0.3 at 10)"
            ) in out.output


# ---- a sequential sweep: look by look, decided arms stop getting seeds ----

def sequential_study(tmp_path, run_name=None):
    base = {"experiment": "seq-test", "steps": 2, "model": {"name": "micro-0.5m"}, "eval": {"every": 1}}
    if run_name:
        base["run_name"] = run_name
    data = {"name": "seq_claims", "base": base,
            "space": {"arm": {"base": {}, "loose": {"objective.params.eps_pos_up": ".inf"},
                              "tight": {"objective.params.eps_neg_up": 0.01}}},
            "sampler": "grid", "pruner": "none", "seeds": {"looks": [2, 4, 7]}, "workers": 1,
            "directions": ["maximize eval/micro/accuracy", "minimize collapse"],
            # the fake trainer: loose's accuracy is lower at every seed (decided at look 1); tight
            # collapses at every seed and base never, which the exact sign test at alpha 0.05/3
            # decides only at 7 pairs (p = 2 * 0.5^7 = 0.016)
            "claims": [{"id": "acc", "text": "loose is better", "measure": "final_accuracy",
                        "arms": ["loose", "base"], "expect": "higher"},
                       {"id": "rep", "text": "tight collapses", "measure": "collapse:repetition",
                        "arms": ["tight", "base"], "expect": "higher"}]}
    path = tmp_path / "seq_claims.yaml"
    path.write_text(yaml.safe_dump(data))
    return load_study_file(path)


def test_a_sequential_sweep_gives_later_looks_only_to_arms_of_undecided_claims(tmp_path):
    from tests import fake_trainer
    from workbench import sweep, tracking
    from workbench.sweep.storage import load_study

    uri = f"sqlite:///{tmp_path / 'mlflow.db'}"
    study = sequential_study(tmp_path)
    assert study.n_trials == 9  # at most one trial per arm and look
    lines: list[str] = []
    result = sweep.run_study(study, tracking_uri=uri, train_fn=fake_trainer.train, echo=lines.append)
    assert result.complete
    assert any(line.startswith("look 1 of 3 (2 paired seeds): seeds 0..1 for base, loose, tight") for line in lines)
    assert any(line.startswith("look 2 of 3 (4 paired seeds): seeds 2..3 for base, tight") for line in lines), lines
    assert any(line.startswith("look 3 of 3 (7 paired seeds): seeds 4..6 for base, tight") for line in lines), lines

    target = tracking.resolve_target("seq_claims", uri)
    seeds_run: dict[str, list[int]] = {}
    for r in target.runs:
        seeds_run.setdefault(r.tags[TAG_ARM], []).append(int(r.tags[TAG_SEED]))
    assert {a: sorted(s) for a, s in seeds_run.items()} == {"base": list(range(7)), "tight": list(range(7)),
                                                           "loose": [0, 1]}
    ostudy, _ = load_study(study.path)
    assert sorted((t.params["arm"], t.user_attrs["look"]) for t in ostudy.trials) == [
        ("base", 0), ("base", 1), ("base", 2), ("loose", 0), ("tight", 0), ("tight", 1), ("tight", 2)]

    tracking.load_histories(target.runs, uri)
    from mlflow import MlflowClient

    info = rc.study_claims_info(target.runs, MlflowClient(uri).get_run(target.anchor_run_id).data.tags)
    acc, rep = info.results
    assert (acc.verdict, acc.look, acc.links[0].n) == ("refuted", 1, 2)
    assert (rep.verdict, rep.look, rep.links[0].n) == ("reproduced", 3, 7)

    from workbench.sweep.status import study_status

    notes = sorted(r.note for r in study_status(study.path).rows)
    assert notes == ["look 1"] * 3 + ["look 2"] * 2 + ["look 3"] * 2

    # run again: nothing left to do, nothing run twice
    again = sweep.run_study(study, tracking_uri=uri, train_fn=fake_trainer.train, echo=lines.append)
    assert again.complete and len(load_study(study.path)[0].trials) == 7


def test_a_failed_trial_of_a_look_is_run_again_once(tmp_path):
    from tests import fake_trainer
    from workbench import sweep
    from workbench.sweep.storage import load_study

    uri = f"sqlite:///{tmp_path / 'mlflow.db'}"
    study = sequential_study(tmp_path, run_name=f"fake:crash_once={tmp_path / 'crashed'}")
    result = sweep.run_study(study, tracking_uri=uri, train_fn=fake_trainer.train, echo=lambda s: None)
    assert result.complete
    trials = load_study(study.path)[0].trials
    assert [t.state.name for t in trials].count("FAIL") == 1
    (retry,) = [t for t in trials if "retry_of" in t.user_attrs]
    assert retry.state.name == "COMPLETE" and retry.user_attrs["look"] == 0
