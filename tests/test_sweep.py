"""Variant definitions (eval/lab/variants/*.json): settings resolve onto the calibration field defaults, names
are unambiguous across files, typos are refused."""
import json

import pytest

from pear_edge.calibration.calibrate import DEFAULTS, CalibrationSettings
from pear_edge.base.errors import PearError
from pear_edge.eval.lab.variants import all_variants, load_variants, results_from_dict, settings_from


def test_variant_overrides_reach_detection_and_training():
    s = settings_from({"method": "gradient", "proxy": "mdqa", "top_k": 16, "steps": 24, "lr": 0.02,
                       "lengths": [10, 20]}, seed=3)
    assert (s.method, s.top_k, s.lengths, s.seed) == ("gradient", 16, (10, 20), 3)
    assert (s.train.proxy, s.train.steps, s.train.lr, s.train.seed) == ("mdqa", 24, 0.02, 3)
    assert s.train.constraint == CalibrationSettings().train.constraint  # variants ignore the chosen recipe


def test_the_default_recipe_is_a_bundled_variant():
    assert any(settings_from(v).comparable() == DEFAULTS.comparable() for v in all_variants().values())


def test_bundled_variants_are_valid_and_typos_are_refused():
    for overrides in all_variants().values():  # also: no name means two settings across files
        settings_from(overrides)
    with pytest.raises(PearError, match="unknown settings"):
        settings_from({"topk": 3})
    with pytest.raises(PearError, match="at least 1"):
        settings_from({"steps": 0})
    with pytest.raises(PearError, match="--guard must be 0"):
        settings_from({"guard": float("nan")})


def test_a_user_file_may_not_reuse_a_bundled_name_for_other_settings(tmp_path):
    name, overrides = next(iter(all_variants().items()))
    mine = tmp_path / "v.json"
    mine.write_text(json.dumps({name: {**overrides, "steps": 999}, "mine": {"top_k": 2}}))
    with pytest.raises(PearError, match="mean other settings"):
        load_variants(str(mine))
    mine.write_text(json.dumps({name: overrides, "mine": {"top_k": 2}}))
    assert list(load_variants(str(mine), only="mine")) == ["mine"]
    with pytest.raises(PearError, match="unknown variants"):
        load_variants(str(mine), only="nope")


def test_cached_results_round_trip():
    from pear_edge.eval.harness import EvalResults, ExampleResult, PassageResult

    qa = EvalResults("nq", {"kind": "torch"}, [ExampleResult("0@0", 0, ("a", "b"), "a", True)], {"batch": 4})
    ppl = EvalResults("perplexity", {"kind": "torch"}, [PassageResult("x", 12.5, 10)])
    for r in (qa, ppl):
        back = results_from_dict(json.loads(json.dumps(r.as_dict())))
        assert back.items == r.items and back.score == r.score and back.task == r.task


def test_corpus_or_cloze_flags_start_from_the_validated_cloze_recipe():
    from pear_edge.calibration.calibrate import PROXY_SETTINGS, CalibrationSettings, profile_for
    from pear_edge.cli import build_parser

    for argv, corpus in ((["--corpus", "docs"], "docs"), (["--proxy", "cloze"], None)):
        args = build_parser().parse_args(["calibrate", *argv, "--lr", "0.03", "-o", "c.json"])
        s = CalibrationSettings.from_args(args, profile_for("default"))
        assert (s.train.proxy, s.train.corpus, s.train.lr) == ("cloze", corpus, 0.03)  # the user's flag wins
        cloze = PROXY_SETTINGS["cloze"]
        assert (s.train.steps, s.train.batch) == (cloze["steps"], cloze["batch"])
    args = build_parser().parse_args(["calibrate", "--proxy", "passage", "-o", "c.json"])
    s = CalibrationSettings.from_args(args, profile_for("default"))  # the previous default, as validated
    passage = PROXY_SETTINGS["passage"]
    assert (s.train.proxy, s.train.steps, s.train.batch, s.train.guard) == ("passage", passage["steps"],
                                                                            passage["batch"], passage["guard"])
    args = build_parser().parse_args(["calibrate", "--corpus", "docs", "--proxy", "copy", "-o", "c.json"])
    with pytest.raises(PearError, match="--corpus goes with the cloze proxy"):
        CalibrationSettings.from_args(args, profile_for("default"))
    args = build_parser().parse_args(["calibrate", "--gold", "middle", "-o", "c.json"])
    assert CalibrationSettings.from_args(args, profile_for("default")).train.gold == "middle"
    args = build_parser().parse_args(["calibrate", "--gold", "middle", "--proxy", "passage", "-o", "c.json"])
    with pytest.raises(PearError, match="--gold goes with the cloze proxy"):
        CalibrationSettings.from_args(args, profile_for("default"))
    from pear_edge.calibration.calibrate import with_overrides
    with pytest.raises(PearError, match="unknown gold placement"):  # the Python API, before any model load
        with_overrides(profile_for("default"), {"gold": "edges"})
