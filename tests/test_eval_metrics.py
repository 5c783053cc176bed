"""Metrics and paired statistics against hand-computed values."""
import math

import pytest

from pear_edge.base.errors import PearError
from pear_edge.eval.harness import EvalResults, ExampleResult, PassageResult, paired_compare
from pear_edge.eval.metrics import best_subspan_em, bootstrap_ci, mcnemar_exact, median_iqr, normalize_answer


def test_normalize_answer_follows_squad():
    assert normalize_answer("  The Ivory-Kettle!  ") == "ivorykettle"
    assert normalize_answer("An apple, a pear and THE plum.") == "apple pear and plum"


@pytest.mark.parametrize("prediction, answers, expected", [
    ("The answer is Paris.", ["Paris"], True),
    ("He built the ivory kettle in 1648.", ["ivory kettle"], True),
    ("ivory", ["ivory kettle"], False),
    ("Parisian food", ["Paris"], False),          # whole words only
    ("In 17845 it happened", ["1784"], False),
    ("in 1784", ["1900", "1784"], True),           # any accepted answer
    ("", ["x"], False),
    ("anything", ["!!"], False),                    # an answer that normalises to nothing never matches
])
def test_best_subspan_em(prediction, answers, expected):
    assert best_subspan_em(prediction, answers) is expected


def test_mcnemar_exact_matches_hand_computed_binomial():
    # n = 7 discordant, min = 1: 2 * (C(7,0) + C(7,1)) / 2^7 = 16/128
    assert mcnemar_exact(1, 6) == pytest.approx(0.125, abs=0)
    assert mcnemar_exact(6, 1) == mcnemar_exact(1, 6)
    # n = 12, min = 2: 2 * (1 + 12 + 66) / 4096
    assert mcnemar_exact(2, 10) == pytest.approx(158 / 4096, abs=0)
    assert mcnemar_exact(0, 0) == 1.0
    assert mcnemar_exact(5, 5) == 1.0                # capped at 1
    assert mcnemar_exact(0, 20) == pytest.approx(2 / 2 ** 20, abs=0)


def test_bootstrap_is_deterministic_and_brackets_the_mean():
    diffs = [1, 0, 0, -1, 1, 1, 0, 1, 0, 0, 1, -1] * 3
    a = bootstrap_ci(diffs, resamples=2000, seed=7)
    assert a == bootstrap_ci(diffs, resamples=2000, seed=7)
    wavy = [math.sin(i) for i in range(30)]  # continuous values: another seed moves the percentiles
    assert bootstrap_ci(wavy, resamples=2000, seed=7) != bootstrap_ci(wavy, resamples=2000, seed=8)
    mean = sum(diffs) / len(diffs)
    assert a[0] < mean < a[1]
    assert bootstrap_ci([0.25] * 10, resamples=100) == (0.25, 0.25)


def test_median_iqr():
    assert median_iqr([1, 2, 3, 4, 5]) == (3.0, 2.0, 4.0)


def _qa(correct, positions):
    items = [ExampleResult(f"{i}@{p}", p, ("a",), "", c) for i, (c, p) in enumerate(zip(correct, positions))]
    return EvalResults("t", {"kind": "x"}, items)


def test_paired_compare_counts_discordant_pairs_per_position():
    positions = [0, 0, 0, 0, 9, 9, 9, 9]
    base = _qa([1, 0, 0, 1, 0, 0, 0, 1], positions)
    pear = _qa([1, 1, 1, 0, 1, 1, 0, 1], positions)
    cmp = paired_compare(base, pear, resamples=500)
    o = cmp.overall
    assert (o.n, o.base, o.pear, o.delta) == (8, 3 / 8, 6 / 8, 3 / 8)
    assert (o.base_only, o.pear_only) == (1, 4)
    assert o.p_value == pytest.approx(mcnemar_exact(1, 4))
    assert o.ci_low <= o.delta <= o.ci_high
    assert set(cmp.by_position) == {0, 9}
    assert (cmp.by_position[9].base, cmp.by_position[9].pear) == (0.25, 0.75)
    assert (cmp.by_position[0].base_only, cmp.by_position[0].pear_only) == (1, 2)
    # position 0: base 2/4, PEAR 3/4; position 9: base 1/4, PEAR 3/4 -> gap 0.25 -> 0.0
    assert cmp.position_gap() == (0.25, 0.0) and cmp.as_dict()["position_gap"] == {"base": 0.25, "pear": 0.0}


def test_paired_compare_refuses_different_examples():
    with pytest.raises(PearError, match="different examples"):
        paired_compare(_qa([1, 0], [0, 0]), _qa([1], [0]))


def test_paired_perplexity():
    base = EvalResults("p", {}, [PassageResult("a", 20.0, 10), PassageResult("b", 30.0, 10)])
    pear = EvalResults("p", {}, [PassageResult("a", 21.0, 10), PassageResult("b", 29.0, 10)])
    o = paired_compare(base, pear, resamples=200).overall
    assert o.metric == "perplexity"
    assert o.base == pytest.approx(math.exp(2.5)) and o.pear == pytest.approx(math.exp(2.5))
    assert (o.base_only, o.pear_only, o.p_value) == (1, 1, 1.0)
