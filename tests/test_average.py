"""`pear-edge average`: the mean of coefficient files for one model."""
from __future__ import annotations

import hashlib
import json

import numpy as np
import pytest

from pear_edge.arch.layout import HeadLayout
from pear_edge.base.errors import PearError
from pear_edge.cli import main
from pear_edge.edits.average import average_coefficients, common_record, describe_agreement, head_agreement
from pear_edge.edits.coefficients import (ChannelScales, Coefficients, HeadCoefficient, ModelFingerprint,
                                          QKChannelScale, QTemperature)

LAYOUT = HeadLayout("llama", 2, 4, 8, 32)
MODEL = ModelFingerprint(LAYOUT, "ab" * 32, (1.0, 2.0))


def coeffs(heads, seed=0, template="generic", **edits) -> Coefficients:
    calibration = {"seed": seed, "recipe": "pear", "template": {"family": template},
                   "train": {"seed": seed, "steps": 30}}
    return Coefficients(MODEL, [HeadCoefficient(*h) for h in heads], calibration=calibration, **edits)


def test_head_scales_are_the_mean_with_a_missing_head_counting_as_one():
    a = coeffs([(0, 1, 0.5, 0.2), (1, 3, 1.5, 0.4)])
    b = coeffs([(0, 1, 0.9, 0.6)], seed=1)
    mean = average_coefficients([a, b], ["a", "b"])
    got = {(h.layer, h.head): (h.coefficient, h.score) for h in mean.heads}
    assert got[(0, 1)][0] == pytest.approx(0.7) and got[(0, 1)][1] == pytest.approx(0.4)
    assert got[(1, 3)] == (pytest.approx(1.25), None)  # b lacks the head: 1.0 in the mean, no score
    assert mean.o_proj_factors()[0][8:16] == pytest.approx(np.full(8, 0.7))


def test_channel_scales_and_temperatures_are_averaged_too():
    width = LAYOUT.num_heads * LAYOUT.head_dim
    a = coeffs([], o_proj_channels=[ChannelScales(1, tuple([0.5] * width))],
               q_temperatures=[QTemperature(0, 2, 2.0)])
    b = coeffs([], seed=1, q_temperatures=[QTemperature(0, 2, 1.0), QTemperature(1, 0, 0.5)])
    mean = average_coefficients([a, b], ["a", "b"])
    assert mean.o_proj_channels[0].layer == 1 and set(mean.o_proj_channels[0].scales) == {0.75}
    assert mean.q_factors() == {0: {2: 1.5}, 1: {0: 0.75}}
    assert mean.version == 3  # saved with every edit kind it has


def test_a_file_averaged_with_itself_is_unchanged():
    a = coeffs([(0, 0, 0.8, None), (1, 2, 1.3, None)])
    mean = average_coefficients([a, a], ["a", "a"])
    assert mean.as_dict() == a.as_dict()


def test_the_record_keeps_what_the_files_share_and_names_each_file():
    a, b = coeffs([(0, 0, 0.8)]), coeffs([(0, 0, 1.0)], seed=7)
    mean = average_coefficients([a, b], ["a.json", "b.json"],
                                [hashlib.sha256(b"text a").hexdigest(), hashlib.sha256(b"text b").hexdigest()])
    assert mean.calibration["template"] == {"family": "generic"}  # the template warning still applies
    assert mean.calibration["train"] == {"steps": 30} and "seed" not in mean.calibration
    assert mean.calibration["averaged"] == [
        {"file": "a.json", "seed": 0, "sha256": hashlib.sha256(b"text a").hexdigest()},
        {"file": "b.json", "seed": 7, "sha256": hashlib.sha256(b"text b").hexdigest()}]
    assert mean.metrics == {}  # a source's held-out proxy numbers say nothing of the mean
    assert common_record([{"x": 1, "t": {"a": 1}}, {"x": 2, "t": {"a": 2}}]) == {}


def test_refuses_one_file_another_model_and_other_qk_edits():
    a = coeffs([(0, 0, 0.8)])
    with pytest.raises(PearError, match="at least two"):
        average_coefficients([a], ["a"])
    other = Coefficients(ModelFingerprint(HeadLayout("llama", 3, 4, 8, 32), "", (1.0, 1.0, 1.0)),
                         [HeadCoefficient(0, 0, 0.5)])
    with pytest.raises(PearError, match="layers/heads"):
        average_coefficients([a, other], ["a", "other"])
    qk = coeffs([(0, 0, 0.8)], qk_channels=[QKChannelScale(3, -0.5, 0, 1)])
    with pytest.raises(PearError, match="q/k channel"):
        average_coefficients([a, qk], ["a", "qk"])


def test_cli_writes_the_mean_and_refuses_to_overwrite_an_input(tmp_path, capsys):
    pa, pb, out = tmp_path / "a.json", tmp_path / "b.json", tmp_path / "mean.json"
    coeffs([(0, 1, 0.4)]).save(pa)
    coeffs([(0, 1, 0.8)], seed=1).save(pb)
    assert main(["average", str(pa), str(pb), "-o", str(out)]) == 0
    assert Coefficients.load(out).as_dict() == {(0, 1): pytest.approx(0.6)}
    assert f"{pb} vs {pa}: correlation of (c - 1) undefined" in capsys.readouterr().out  # one head each
    assert json.loads(out.read_text())["calibration"]["averaged"][1]["sha256"] == \
        hashlib.sha256(pb.read_bytes()).hexdigest()
    before = pa.read_bytes()
    capsys.readouterr()
    assert main(["average", str(pa), str(pb), "-o", str(pa)]) == 2
    err = capsys.readouterr().err.strip().splitlines()
    assert len(err) == 1 and err[0].startswith("pear-edge: error:")
    assert pa.read_bytes() == before
    assert main(["average", str(pa), "-o", str(tmp_path / "one.json")]) == 2
    assert not (tmp_path / "one.json").exists()


@pytest.mark.parametrize("content", [None, "not json", '{"format": "other"}'])
def test_cli_bad_input_is_one_line_and_writes_nothing(tmp_path, capsys, content):
    good, bad, out = tmp_path / "a.json", tmp_path / "bad.json", tmp_path / "mean.json"
    coeffs([(0, 1, 0.4)]).save(good)
    if content is not None:
        bad.write_text(content)
    assert main(["average", str(good), str(bad), "-o", str(out)]) == 2
    err = capsys.readouterr().err.strip().splitlines()
    assert len(err) == 1 and err[0].startswith("pear-edge: error:")
    assert not out.exists() and sorted(p.name for p in tmp_path.iterdir()) == sorted(
        ["a.json"] + (["bad.json"] if content is not None else []))


def test_agreement_correlates_the_moves_from_one_and_counts_same_direction_heads():
    a = coeffs([(0, 0, 0.5, 0.0), (0, 1, 1.2, 0.0), (1, 2, 0.9, 0.0)])
    b = coeffs([(0, 0, 0.7, 0.0), (0, 1, 0.8, 0.0)], seed=1)  # (1, 2) missing: 1
    (pair,) = head_agreement([a, b], ["a", "b"])
    x, y = np.array([-0.5, 0.2, -0.1]), np.array([-0.3, -0.2, 0.0])
    assert (pair.a, pair.b) == ("b", "a")
    assert pair.correlation == pytest.approx(float(np.corrcoef(x, y)[0, 1]))
    assert (pair.moved, pair.same_direction) == (2, 1)  # (0, 0) both down; (0, 1) opposite; (1, 2) b unmoved
    assert pair.largest_gap == (0, 1, pytest.approx(0.4))
    assert "L0H1 by 0.400" in describe_agreement(pair)


def test_agreement_of_three_files_is_every_pair_and_undefined_without_spread():
    flat = coeffs([(0, 0, 0.8, 0.0), (0, 1, 0.8, 0.0)])
    pairs = head_agreement([flat, coeffs([(0, 0, 0.9, 0.0)], seed=1), coeffs([(0, 1, 1.1, 0.0)], seed=2)],
                           ["s0", "s1", "s2"])
    assert [(p.a, p.b) for p in pairs] == [("s1", "s0"), ("s2", "s0"), ("s2", "s1")]
    assert pairs[0].correlation is None and "undefined" in describe_agreement(pairs[0])
    assert pairs[2].correlation == pytest.approx(1.0)
    width = LAYOUT.num_heads * LAYOUT.head_dim
    channels_only = [coeffs([], o_proj_channels=[ChannelScales(0, tuple([v] * width))]) for v in (0.5, 0.9)]
    assert head_agreement(channels_only, ["c0", "c1"]) == []  # no head scales: nothing to compare  # s1 lowers (0, 0), s2 raises (0, 1): both rise along the heads
