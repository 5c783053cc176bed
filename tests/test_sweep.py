"""The sweep's variant settings resolve onto the calibration defaults, and reject typos."""
import pytest

from pear_edge.calibrate import DEFAULTS, CalibrationSettings
from pear_edge.errors import PearError
from pear_edge.eval.sweep import BUILTIN_VARIANTS, settings_from


def test_variant_overrides_reach_detection_and_training():
    s = settings_from({"method": "gradient", "proxy": "mdqa", "top_k": 16, "steps": 24, "lr": 0.02,
                       "lengths": [10, 20]}, seed=3)
    assert (s.method, s.top_k, s.lengths, s.seed) == ("gradient", 16, (10, 20), 3)
    assert (s.train.proxy, s.train.steps, s.train.lr, s.train.seed) == ("mdqa", 24, 0.02, 3)
    assert s.train.constraint == CalibrationSettings().train.constraint  # variants ignore the chosen recipe


def test_the_default_recipe_is_a_builtin_variant():
    assert settings_from(BUILTIN_VARIANTS["passage-all-free-p1-g3-40x8"]) == DEFAULTS


def test_builtin_variants_are_valid_and_typos_are_refused():
    for overrides in BUILTIN_VARIANTS.values():
        settings_from(overrides)
    with pytest.raises(PearError, match="unknown variant settings"):
        settings_from({"topk": 3})
    with pytest.raises(PearError, match="at least 1"):
        settings_from({"steps": 0})
    with pytest.raises(PearError, match="--guard must be 0"):
        settings_from({"guard": float("nan")})
