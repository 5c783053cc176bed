"""Recipes on tiny config-built models: each edit kind of the coefficients file folded equals it
hooked on every registry architecture (attention temperatures refused where a norm on the queries follows the
projection), the version-1 and version-2 files are unchanged and versions 2 and 3 are read strictly, SEAL-C
trains per channel and temperatures train with the head scales through the one training loop, the positional
channel is detected where one was planted, and the recipe options reach the settings."""
from __future__ import annotations

import json
from pathlib import Path

import numpy as np
import pytest
import torch
from tiny import TINY_CONFIGS, VOCAB, tiny_model

from pear_edge.calibration.calibrate import CalibrationSettings, with_overrides
from pear_edge.arch.registry import spec_for
from pear_edge.edits.coefficients import (ChannelScales, Coefficients, HeadCoefficient, QKChannelScale, QTemperature,
                                          parse_document, qk_factor_map)
from pear_edge.base.errors import PearError
from pear_edge.edits.fold import fold_coefficients
from pear_edge.edits.heads import apply_coefficients, scale_qk_channels
from pear_edge.calibration.positional import default_ranges, positional_channel_scores, search_positional, spearman_with_position
from pear_edge.calibration.calibrate import run_recipe
from pear_edge.calibration.recipes import RECIPES
from pear_edge.calibration.train import TrainSettings, train_coefficients

ARCHS = sorted(TINY_CONFIGS)
KINDS = ("heads", "o_proj_channels", "qk_channels", "q_temperatures", "all")
Q_NORM = "normalises each head's queries"  # the refusal of temperatures where a norm on the queries follows
REPO = Path(__file__).resolve().parents[1]


def takes_temperatures(lm) -> bool:
    return spec_for(lm.adapter.model_type).q_norm is None


def edits_of(lm, kind: str) -> Coefficients:
    """Coefficients of one edit kind for a tiny model: a negative and a zero scale included. "v2": the three
    kinds of version 2; "all": those and the attention temperatures where the family takes them."""
    L, width = lm.adapter.num_layers, lm.adapter.num_heads * lm.adapter.head_dim
    rng = np.random.default_rng(1)
    several = ("all", "v2")
    heads = [HeadCoefficient(0, 1, 0.5), HeadCoefficient(L - 1, 3, -0.75)] if kind in ("heads", *several) else []
    channels = ([ChannelScales(L - 1, tuple(float(x) for x in rng.uniform(-0.5, 1.8, width)))]
                if kind in ("o_proj_channels", *several) else [])
    qk = ([QKChannelScale(5, -1.0, 0, L - 1), QKChannelScale(7, 0.0, L - 1, L - 1)]
          if kind in ("qk_channels", *several) else [])
    temperatures = ([QTemperature(0, 1, 2.5), QTemperature(0, 2, 0.5), QTemperature(L - 1, 3, 1.75)]
                    if kind == "q_temperatures" or (kind == "all" and takes_temperatures(lm)) else [])
    return Coefficients(lm.fingerprint(), heads, o_proj_channels=channels, qk_channels=qk,
                        q_temperatures=temperatures)


def edited_entries(lm, coeffs: Coefficients) -> dict[str, torch.Tensor]:
    """Parameter name -> bool mask of the entries the coefficients may change (all others must not)."""
    names = {id(p): n for n, p in lm.model.named_parameters()}
    masks: dict[str, torch.Tensor] = {}
    dim = lm.adapter.spec.in_features_dim

    def mask_of(p: torch.Tensor) -> torch.Tensor:
        return masks.setdefault(names[id(p)], torch.zeros_like(p, dtype=torch.bool))

    for layer in coeffs.o_proj_factors():
        mask_of(lm.adapter.o_proj_weight(layer))[:] = True
    for layer, channels in coeffs.qk_factors().items():
        for module, rows in lm.adapter.qk_targets(layer):
            mask = mask_of(module.weight)
            view = mask if dim == 1 else mask.T
            for ch in channels:
                view[rows, ch] = True
    for layer, taus in coeffs.q_factors().items():
        module = lm.adapter.q_projection(layer)
        rows = [r for head in taus for r in lm.adapter.q_head_rows(layer, head)]
        lm.adapter.as_out_in(mask_of(module.weight))[rows] = True
        if module.bias is not None:
            mask_of(module.bias)[rows] = True
    return masks


@pytest.mark.parametrize("kind", KINDS)
@pytest.mark.parametrize("arch", ARCHS)
def test_each_edit_kind_folded_equals_hooked_and_touches_only_its_entries(arch, kind):
    lm = tiny_model(arch)
    coeffs = edits_of(lm, kind)
    tokens = torch.randint(3, VOCAB, (2, 24), generator=torch.Generator().manual_seed(0))
    before = {n: p.detach().clone() for n, p in lm.model.named_parameters()}
    plain = lm.model(input_ids=tokens).logits
    if coeffs.q_temperatures and not takes_temperatures(lm):  # a norm on the queries would undo them: refused
        with pytest.raises(PearError, match=Q_NORM):
            with apply_coefficients(lm.adapter, coeffs):
                pass
        with pytest.raises(PearError, match=Q_NORM):
            fold_coefficients(lm.model, lm.adapter, coeffs)
        assert torch.equal(lm.model(input_ids=tokens).logits, plain)  # no hook left, no weight changed
        assert all(torch.equal(p, before[n]) for n, p in lm.model.named_parameters())
        return
    with apply_coefficients(lm.adapter, coeffs):
        hooked = lm.model(input_ids=tokens).logits
    assert torch.equal(lm.model(input_ids=tokens).logits, plain)  # hooks gone
    fold_coefficients(lm.model, lm.adapter, coeffs)
    folded = lm.model(input_ids=tokens).logits
    assert (hooked - folded).abs().max() <= 1e-5
    assert (hooked - plain).abs().max() > 1e-6  # the edit did something
    masks = edited_entries(lm, coeffs)
    for name, p in lm.model.named_parameters():
        if name in masks:
            assert torch.equal(p[~masks[name]], before[name][~masks[name]]), f"{name} changed outside its edit"
        else:
            assert torch.equal(p, before[name]), f"{name} changed"
    exact_qk = {} if coeffs.q_temperatures else coeffs.qk_factors()  # temperatures rescale some of those rows
    for layer, channels in exact_qk.items():  # the q/k edit is exactly W[rows, ch] *= s
        for module, rows in lm.adapter.qk_targets(layer):
            name = next(n for n, p in lm.model.named_parameters() if p is module.weight)
            new, old = lm.adapter.as_out_in(module.weight), lm.adapter.as_out_in(before[name])
            for ch, s in channels.items():
                assert torch.equal(new[rows, ch], old[rows, ch] * torch.tensor(s, dtype=torch.float32))
    if kind == "q_temperatures":  # exactly W_q[rows of head h] *= tau, and those entries of the bias
        for layer, taus in coeffs.q_factors().items():
            module = lm.adapter.q_projection(layer)
            for p in filter(lambda p: p is not None, (module.weight, module.bias)):
                name = next(n for n, q in lm.model.named_parameters() if q is p)
                new = lm.adapter.as_out_in(p) if p.dim() == 2 else p
                old = lm.adapter.as_out_in(before[name]) if p.dim() == 2 else before[name]
                for head, tau in taus.items():
                    rows = lm.adapter.q_head_rows(layer, head)
                    assert torch.equal(new[rows], old[rows] * torch.tensor(tau, dtype=torch.float32)), name


def test_fused_qkv_values_keep_the_channel():
    """gpt_neox/bloom interleave [q k v] per head, phi3/gpt2 concatenate: the value outputs never change."""
    for arch in ("gpt_neox", "phi3", "gpt2", "bloom"):
        lm = tiny_model(arch)
        (module, rows), = lm.adapter.qk_targets(0)
        out = lm.adapter.as_out_in(module.weight).shape[0]
        values = sorted(set(range(out)) - set(rows))
        assert len(values) == out // 3 and len(rows) == 2 * out // 3, arch


def test_head_scales_stay_version_1_byte_for_byte():
    """A head-only file is written as version 1 exactly as before; every shipped file (v1, or v2 with other
    edit kinds) round-trips unchanged."""
    lm = tiny_model("llama")
    coeffs = edits_of(lm, "heads")
    doc = json.loads(coeffs.to_json())
    assert doc["version"] == 1 and list(doc) == ["format", "version", "model", "heads", "calibration", "metrics"]
    again = Coefficients.from_json(coeffs.to_json())
    assert again == coeffs and again.to_json() == coeffs.to_json()
    shipped = sorted((REPO / "pear_edge" / "results" / "coefficients").glob("*.coeffs.json"))
    assert shipped
    for path in shipped:
        text = path.read_text()
        loaded = Coefficients.load(path)
        head_only = not (loaded.o_proj_channels or loaded.qk_channels)
        assert loaded.version == (1 if head_only else 2) and loaded.to_json() + "\n" == text


def test_version_2_round_trip_and_strict_reader(tmp_path):
    lm = tiny_model("llama")
    coeffs = edits_of(lm, "v2")
    path = coeffs.save(tmp_path / "c.json")
    doc = json.loads(path.read_text())
    assert doc["version"] == 2 and list(doc) == ["format", "version", "model", "heads", "o_proj_channels",
                                                 "qk_channels", "calibration", "metrics"]
    assert Coefficients.load(path) == coeffs
    assert Coefficients.load(path).edit_counts() == {"heads": 2, "o_proj_channels": 1, "qk_channels": 4,
                                                      "q_temperatures": 0}

    def refused(mutate, match):
        bad = mutate(json.loads(json.dumps(doc)))
        with pytest.raises(PearError, match=match):
            parse_document(bad, "f.json")

    refused(lambda d: {**d, "o_proj_channels": [{"layer": 0, "scales": [1.0] * 31}]}, "31 values")
    refused(lambda d: {**d, "o_proj_channels": [{"layer": 0, "scales": [1.0] * 32}] * 2}, "appear twice")
    refused(lambda d: {**d, "o_proj_channels": [{"layer": 0, "scales": [1e6] * 32}]}, "beyond")
    refused(lambda d: {**d, "qk_channels": [{"channel": 32, "scale": -1, "first_layer": 0, "last_layer": 1}]},
            "hidden size 32")
    refused(lambda d: {**d, "qk_channels": [{"channel": 3, "scale": -1, "first_layer": 2, "last_layer": 1}]},
            "not a range")
    refused(lambda d: {**d, "qk_channels": [{"channel": 3, "scale": -1, "first_layer": 0, "last_layer": 1},
                                            {"channel": 3, "scale": 0.5, "first_layer": 1, "last_layer": 2}]},
            "scaled twice in layer 1")
    refused(lambda d: {**d, "qk_channels": [{"channel": 3, "scale": -1, "first_layer": 0, "last": 1}]},
            "unknown field")
    refused(lambda d: {k: v for k, v in d.items() if k != "qk_channels"}, "lacks the field 'qk_channels'")
    refused(lambda d: {**d, "heads": [], "o_proj_channels": [], "qk_channels": []}, "nothing to apply")
    refused(lambda d: {**d, "version": 1}, "unknown field")     # version 1 has no such keys
    refused(lambda d: {**d, "q_temperatures": []}, "unknown field")  # nor version 2 temperatures
    refused(lambda d: {**d, "version": 3}, "lacks the field 'q_temperatures'")
    refused(lambda d: {**d, "version": 4}, "reads versions 1, 2, 3")


def test_o_proj_factors_combine_head_and_channel_scales():
    lm = tiny_model("llama")
    coeffs = edits_of(lm, "v2")
    L = lm.adapter.num_layers
    f = coeffs.o_proj_factors()
    assert sorted(f) == [0, L - 1] and f[0].dtype == np.float32
    expected = np.asarray(coeffs.o_proj_channels[0].scales)
    expected[24:32] *= -0.75
    assert np.array_equal(f[L - 1], expected.astype(np.float32))
    assert np.array_equal(f[0][8:16], np.full(8, 0.5, np.float32)) and (np.delete(f[0], range(8, 16)) == 1).all()
    assert qk_factor_map(coeffs.qk_channels) == {0: {5: -1.0}, 1: {5: -1.0}, 2: {5: -1.0, 7: 0.0}}


def test_seal_c_trains_one_scale_per_channel_in_the_one_loop():
    lm = tiny_model("llama")
    heads = [(layer, head, 0.0) for layer in (0, 2) for head in range(4) if (layer, head) != (0, 0)]
    settings = TrainSettings(steps=25, batch=8, n=8, lr=0.05, constraint="none")
    coeffs = train_coefficients(lm, heads, settings, progress=False, per_channel=True)
    assert coeffs.heads == [] and [c.layer for c in coeffs.o_proj_channels] == [0, 2] and coeffs.version == 2
    scales = np.asarray(coeffs.o_proj_channels[0].scales)
    assert (scales[:8] == 1.0).all()                               # head 0 of layer 0 was not selected
    scales = scales[:16]
    assert np.unique(scales[8:16]).size == 8                       # one value per channel, not one per head
    proxy = coeffs.metrics["held_out_proxy"]
    assert proxy["after"]["copy_loss"] < proxy["before"]["copy_loss"]
    # the same loop as the head scales: identical settings, deterministic
    again = train_coefficients(lm, heads, settings, progress=False, per_channel=True)
    assert again.o_proj_channels == coeffs.o_proj_channels


@pytest.mark.parametrize("recipe", ["pear", "seal-c"])
def test_every_head_trained_scores_heads_by_the_first_step_with_the_same_coefficients(recipe):
    """With every head trained (top_k 0) detection selects nothing, so run_recipe skips its batches
    and scores the heads by the first training step's gradient; the coefficients equal detect-then-train's."""
    from pear_edge.calibration.calibrate import detect_heads, detection_fused, train_from_scores
    from pear_edge.calibration.detect import scale_gradient_scores
    from pear_edge.calibration.train import make_proxy

    lm = tiny_model("llama")
    settings = with_overrides(CalibrationSettings(method="gradient", top_k=0, gradient_batches=2),
                              {"recipe": recipe, "steps": 3, "batch": 4, "n": 8, "pull": 0.1, "guard": 0.0})
    assert detection_fused(settings) and not detection_fused(with_overrides(settings, {"top_k": 3}))
    seen = []
    fused = run_recipe(lm, settings, progress=False, on_scores=seen.append)
    separate = train_from_scores(lm, detect_heads(lm, settings, progress=False), settings, progress=False)
    assert fused.calibration["detect_seconds"] == 0.0
    assert fused.calibration["validated"] is False  # the one runner records it, for the Python API too
    assert fused.calibration["detection"] == {**seen[0].settings, "from": "the first training step"}
    if recipe == "pear":
        by_head = lambda c: {(h.layer, h.head): h.coefficient for h in c.heads}  # noqa: E731
        assert by_head(fused) == pytest.approx(by_head(separate), abs=1e-6)
        assert len(fused.heads) == 3 * 4  # every head
    else:
        np.testing.assert_allclose([c.scales for c in fused.o_proj_channels],
                                   [c.scales for c in separate.o_proj_channels], atol=1e-6)
    # the recorded scores are detection's quantity on the first training batch: d(loss)/d(head scale) at 1
    proxy = make_proxy(lm, settings.train)
    expected = scale_gradient_scores(lm, proxy, 1, seed=-20_000, progress=False)  # its seed + 20000 = 0, the train seed
    assert seen[0].scores == pytest.approx(expected, abs=1e-5)
    if recipe == "pear":
        assert {(h.layer, h.head): h.score for h in fused.heads} == pytest.approx(
            {(l, h): float(expected[l, h]) for l in range(3) for h in range(4)}, abs=1e-5)


def plant_position_channel(lm, channel: int, strength: float = 4.0):
    """Add a ramp over positions to one channel of the embedding output (every layer's residual stream
    carries it); returns the hook handle."""
    def hook(module, args, output):
        ramp = torch.linspace(-1, 1, output.shape[1], dtype=output.dtype)
        out = output.clone()
        out[..., channel] += strength * ramp
        return out
    return lm.model.get_input_embeddings().register_forward_hook(hook)


def test_spearman_with_position():
    x = torch.stack([torch.arange(10.0), -torch.arange(10.0) ** 3, torch.ones(10), torch.tensor([3.0, 1, 2] * 3 + [0])], 1)
    rho = spearman_with_position(x)
    assert rho[0] == pytest.approx(1.0) and rho[1] == pytest.approx(-1.0) and rho[2] == 0.0 and abs(rho[3]) < 0.6


@pytest.mark.parametrize("arch", ["llama", "gpt_neox", "phi3", "gpt2"])
def test_positional_channel_detection_finds_a_planted_channel(arch):
    lm = tiny_model(arch)
    clean = positional_channel_scores(lm, length=64, sequences=8, progress=False)
    handle = plant_position_channel(lm, 11)
    try:
        planted = positional_channel_scores(lm, length=64, sequences=8, progress=False)
    finally:
        handle.remove()
    assert planted.top(1)[0][0] == 11 and planted.scores[11] > 0.9
    assert planted.rho.shape == (lm.adapter.num_layers, 32)
    assert clean.scores[11] < planted.scores[11] - 0.3


def test_positional_detection_on_learned_positions_by_weight_edit():
    """GPT-2's learned position embeddings: write a ramp into one column of wpe (a weight edit)."""
    lm = tiny_model("gpt2")
    with torch.no_grad():
        lm.model.transformer.wpe.weight[:, 20] = torch.linspace(-3, 3, lm.model.transformer.wpe.weight.shape[0])
    assert positional_channel_scores(lm, length=128, sequences=8, progress=False).top(1)[0][0] == 20


def test_positional_search_takes_the_lowest_loss_and_none_when_nothing_helps():
    lm = tiny_model("llama")
    tokens = torch.randint(3, VOCAB, (2, 16), generator=torch.Generator().manual_seed(0))

    def logit(index: int):
        return lambda: float(lm.model(input_ids=tokens).logits[0, -1, index])

    ranges = default_ranges(lm.adapter.num_layers)
    assert ranges == [(0, 2), (1, 1), (2, 2)]  # all layers, the middle-to-late block, the second half
    assert default_ranges(30) == [(0, 29), (9, 23), (15, 29)] and default_ranges(1) == [(0, 0)]
    edit, record = search_positional(lm, logit(7), [3, 5], [0.5, -1.0], ranges, progress=False)
    losses = [t["loss"] for t in record["tried"]]
    assert len(losses) == 2 * 2 * 3
    best = record["tried"][int(np.argmin(losses))]
    assert record["chosen"] == best and min(losses) < record["baseline_loss"]
    assert edit == QKChannelScale(best["channel"], best["scale"], best["first_layer"], best["last_layer"])
    with scale_qk_channels(lm.adapter, qk_factor_map([edit])):   # the record is what the edit does
        assert logit(7)() == pytest.approx(best["loss"], abs=1e-5)
    nothing, record = search_positional(lm, lambda: 0.0, [3], [0.5], ranges, progress=False)
    assert nothing is None and record["chosen"] is None


def test_recipes_are_data_and_each_makes_its_edit_kinds(tmp_path):
    assert set(RECIPES) >= {"pear", "seal-c", "positional", "positional+pear", "positional+seal-c", "pear+temperature"}
    lm = tiny_model("llama")
    handle = plant_position_channel(lm, 11, strength=2.0)
    try:
        for name, recipe in RECIPES.items():
            settings = with_overrides(CalibrationSettings(lengths=(6,), detect_batch=4, top_k=3),
                                      {"recipe": name, "steps": 3, "batch": 4, "n": 8, "positional_length": 32,
                                       "positional_candidates": 2, "positional_scales": [0.0, -1.0]})
            try:
                coeffs = run_recipe(lm, settings, progress=False)
            except PearError as exc:  # a random tiny model: no positional edit may lower its copy loss
                assert name == "positional" and "nothing to fold" in str(exc)
                continue
            assert bool(coeffs.heads) == (recipe.learned == "head")
            assert bool(coeffs.o_proj_channels) == (recipe.learned == "channel")
            assert bool(coeffs.q_temperatures) == recipe.temperature
            chosen = coeffs.calibration.get("positional", {}).get("chosen")
            assert bool(coeffs.qk_channels) == (recipe.positional and chosen is not None)
            if recipe.positional:
                assert coeffs.calibration["positional"]["detection"]["top"][0]["channel"] == 11
            assert coeffs.calibration["recipe"] == name and "held_out_proxy" in coeffs.metrics
            assert Coefficients.load(coeffs.save(tmp_path / f"{name}.json")).to_json() == coeffs.to_json()
    finally:
        handle.remove()


def test_recipe_options_reach_the_settings(capsys):
    from pear_edge.cli import build_parser, main

    args = build_parser().parse_args(["calibrate", "-o", "x.json", "--recipe", "positional+seal-c",
                                      "--positional-scales", "0.5,-1", "--positional-layers", "0-1,2",
                                      "--positional-channel", "4"])
    settings = CalibrationSettings.from_args(args, base=CalibrationSettings())
    assert settings.recipe == "positional+seal-c" and settings.positional_scales == (0.5, -1.0)
    assert settings.positional_layers == ((0, 1), (2, 2)) and settings.positional_channel == 4
    assert CalibrationSettings.from_args(build_parser().parse_args(["calibrate", "-o", "x.json"]),
                                         base=CalibrationSettings()).recipe == "pear"
    assert main(["calibrate", "--recipe", "seal-h", "-o", "x.json"]) == 2
    err = capsys.readouterr().err
    assert err.startswith("pear-edge: error:") and "invalid choice: 'seal-h'" in err and err.count("\n") == 1
    with pytest.raises(PearError, match="positional-layers"):
        with_overrides(CalibrationSettings(), {"positional_layers": [[3, 1]]})
    with pytest.raises(PearError, match="unknown recipe"):
        with_overrides(CalibrationSettings(), {"recipe": "nope"})
    variant = with_overrides(CalibrationSettings(), {"recipe": "seal-c", "positional_scales": [0, -1]})
    assert variant.positional_scales == (0.0, -1.0)  # lists from a variants file become tuples


def test_info_describes_every_edit_kind(tmp_path):
    from pear_edge.cli.info import describe

    lm = tiny_model("llama")
    coeffs = edits_of(lm, "v2")
    coeffs.calibration = {"recipe": "positional+seal-c"}
    text = describe(coeffs.save(tmp_path / "c.json"))
    assert text.startswith("PEAR coefficients v2") and "(recipe positional+seal-c)" in text
    assert "L 2 o_proj channel scales" in text and "q/k input channel 5 x -1 on layers 0..2" in text
    assert describe(edits_of(lm, "heads").save(tmp_path / "h.json")).startswith("PEAR coefficients v1")
    text = describe(edits_of(lm, "all").save(tmp_path / "a.json"))
    assert text.startswith("PEAR coefficients v3") and "3 attention temperatures" in text
    assert "L 0H2  attention temperature 0.5000" in text


def test_calibrate_and_fold_commands_carry_every_recipe(tmp_path, capsys):
    """`calibrate --recipe` through the CLI on a tiny model folder, then `fold`: the folded folder computes what
    the hooked coefficients compute."""
    from tiny import save_tiny_llama

    from pear_edge.cli import main
    from pear_edge.runtime.models import load_model

    folder = save_tiny_llama(tmp_path / "llama")
    common = ["--model", str(folder), "--proxy", "copy", "--method", "attribution", "--lengths", "6",
              "--detect-batch", "4", "-k", "3", "--steps", "2", "--batch", "4", "--n", "8", "--guard", "0",
              "--positional-length", "32", "--positional-layers", "0-2,1-2", "--positional-scales", "0,-1"]
    for recipe in ("seal-c", "positional+pear"):
        out = tmp_path / f"{recipe}.json"
        assert main(["-q", "calibrate", *common, "--recipe", recipe, "-o", str(out)]) == 0
        coeffs = Coefficients.load(out)
        assert coeffs.calibration["recipe"] == recipe and out.with_name(f"{recipe}.heads.json").is_file()
        # where the time went: recorded per phase and said on the `wrote` line
        cal = coeffs.calibration
        assert all(cal[k] >= 0 for k in ("proxy_seconds", "detect_seconds", "train_seconds"))
        assert 0 <= cal["cost"]["load_seconds"] <= cal["wall_seconds"]
        printed = capsys.readouterr()
        assert "; of which load " in printed.out
        # what was measured about the recipe on the default model is said after the run
        assert f"pear-edge: note: {recipe} on SmolLM2-135M" in printed.err
        assert bool(coeffs.o_proj_channels) == (recipe == "seal-c") and bool(coeffs.heads) == (recipe != "seal-c")
        if recipe.startswith("positional"):
            tried = coeffs.calibration["positional"]["tried"]
            assert len(tried) == 3 * 2 * 2 and {(t["first_layer"], t["last_layer"]) for t in tried} == {(0, 2), (1, 2)}
    capsys.readouterr()
    coeffs = Coefficients.load(tmp_path / "seal-c.json")
    assert main(["-q", "fold", "--model", str(folder), "--coefficients", str(tmp_path / "seal-c.json"),
                 "-o", str(tmp_path / "folded")]) == 0
    assert "folded o_proj channel scales on" in capsys.readouterr().out
    base, folded = load_model(str(folder)), load_model(str(tmp_path / "folded"))
    tokens = torch.randint(3, VOCAB, (1, 16), generator=torch.Generator().manual_seed(2))
    with torch.no_grad(), apply_coefficients(base.adapter, coeffs):
        hooked = base.model(input_ids=tokens).logits
    with torch.no_grad():
        assert (folded.model(input_ids=tokens).logits - hooked).abs().max() <= 1e-5


def test_positional_candidates_can_be_scored_on_a_validation_file(tmp_path):
    """--positional-validation: the answer loss on an MDQA JSONL, the gold first / middle / last of as many
    documents as its records hold."""
    from tiny import word_tokenizer

    from pear_edge.runtime.models import wrap_model
    from pear_edge.calibration.calibrate import positional_step
    from pear_edge.calibration.rag_proxy import ValidationFileProxy

    words = lambda i, n: " ".join(f"w{3 + (i * 7 + j) % 90}" for j in range(n))  # noqa: E731
    records = [{"question": words(i, 4), "answers": [words(i + 50, 2)],
                "ctxs": [{"title": words(i + k, 1), "text": words(i + 3 * k, 12), "isgold": k == 0} for k in range(10)]}
               for i in range(3)]
    data = tmp_path / "val.jsonl"
    data.write_text("".join(json.dumps(r) + "\n" for r in records))
    lm = wrap_model(tiny_model("llama").model, word_tokenizer("{% for m in messages %}{{ m['content'] }} {% endfor %}"))
    settings = with_overrides(CalibrationSettings(), {"positional_channel": 5, "positional_validation": str(data),
                                                      "positional_scales": [0.0, -1.0], "batch": 4})
    edits, record = positional_step(lm, settings, proxy=None, progress=False)
    assert record["scored_on"]["proxy"] == "validation-file" and record["scored_on"]["examples"] == 9
    assert record["scored_on"]["metric"] == "answer_loss" and record["detection"] == {"given": 5}
    assert len(record["tried"]) == 2 * 3 and len(edits) == (record["chosen"] is not None)
    assert record["scored_on"]["num_docs"] == 10 and record["scored_on"]["positions"] == [0, 4, 9]
    # a file made with five documents is scored with five, the gold first / middle / last
    data.write_text("".join(json.dumps({**r, "ctxs": r["ctxs"][:5]}) + "\n" for r in records))
    _, record = positional_step(lm, settings, proxy=None, progress=False)
    assert record["scored_on"]["num_docs"] == 5 and record["scored_on"]["positions"] == [0, 2, 4]
    assert record["scored_on"]["examples"] == 9
    with pytest.raises(PearError, match="--num-docs must be at least 1"):
        ValidationFileProxy(lm, str(data), num_docs=0)


def test_version_2_reader_fuzz():
    """Seeded mutations of a version-2 file (the v1 fuzz's mutators): each loads and is valid, or is refused
    with one PearError line."""
    import math
    import random

    from test_reliability import _structural, _textual

    lm = tiny_model("llama")
    good = edits_of(lm, "v2").to_json()
    rng = random.Random(16)
    outcomes = {"loaded": 0, "refused": 0}
    for i in range(300):
        text = _structural(json.loads(good), rng) if i % 2 else _textual(good, rng)
        try:
            coeffs = Coefficients.from_json(text, source="fuzz")
        except PearError as exc:
            assert "\n" not in str(exc)
            outcomes["refused"] += 1
            continue
        outcomes["loaded"] += 1
        assert not coeffs.is_empty()
        width = coeffs.model.num_heads * coeffs.model.head_dim
        assert all(len(c.scales) == width and all(math.isfinite(x) for x in c.scales) for c in coeffs.o_proj_channels)
        assert all(0 <= q.channel < coeffs.model.hidden_size and q.last_layer < coeffs.model.num_layers
                   for q in coeffs.qk_channels)
        Coefficients.from_json(coeffs.to_json())  # what loads, saves and loads again
    assert outcomes["refused"] > 100 and outcomes["loaded"] > 0, outcomes


# --------------------------------------------------------------------------- attention temperatures

def test_version_3_round_trip_and_strict_reader(tmp_path):
    """Temperatures make a version-3 file (version 2's keys plus q_temperatures); each is read strictly."""
    lm = tiny_model("llama")
    coeffs = edits_of(lm, "all")
    path = coeffs.save(tmp_path / "c.json")
    doc = json.loads(path.read_text())
    assert doc["version"] == 3 and list(doc) == ["format", "version", "model", "heads", "o_proj_channels",
                                                 "qk_channels", "q_temperatures", "calibration", "metrics"]
    assert doc["q_temperatures"][0] == {"layer": 0, "head": 1, "tau": 2.5}
    assert Coefficients.load(path) == coeffs and Coefficients.load(path).to_json() == coeffs.to_json()
    assert coeffs.edit_counts()["q_temperatures"] == 3 and coeffs.q_factors() == {0: {1: 2.5, 2: 0.5}, 2: {3: 1.75}}
    alone = edits_of(lm, "q_temperatures")
    assert alone.version == 3 and not alone.heads and Coefficients.from_json(alone.to_json()) == alone

    def refused(mutate, match):
        with pytest.raises(PearError, match=match):
            parse_document(mutate(json.loads(json.dumps(doc))), "f.json")

    def with_temperature(**fields):
        return lambda d: {**d, "q_temperatures": [{"layer": 0, "head": 1, "tau": 1.5, **fields}]}

    refused(with_temperature(tau=0), "above 0")
    refused(with_temperature(tau=-1.5), "above 0")
    refused(with_temperature(tau=10.5), "at most 10")
    refused(with_temperature(tau="2"), "tau must be a number")
    refused(with_temperature(tau=True), "tau must be a number")
    refused(with_temperature(tau=1e400), "must be finite")
    refused(with_temperature(head=4), "outside the model's 3 layers x 4 heads")
    refused(with_temperature(layer=3), "outside the model's 3 layers x 4 heads")
    refused(with_temperature(temperature=2), "unknown field")
    refused(lambda d: {**d, "q_temperatures": [{"layer": 0, "tau": 2}]}, "lacks the field 'head'")
    refused(lambda d: {**d, "q_temperatures": doc["q_temperatures"][:1] * 2}, "appears twice")
    refused(lambda d: {**d, "q_temperatures": {"layer": 0}}, "must be a list")
    refused(lambda d: {k: v for k, v in d.items() if k != "q_temperatures"}, "lacks the field 'q_temperatures'")
    refused(lambda d: {**d, "heads": [], "o_proj_channels": [], "qk_channels": [], "q_temperatures": []},
            "q_temperatures are all empty; there is nothing to apply")
    with pytest.raises(PearError, match="above 0"):
        Coefficients(lm.fingerprint(), [], q_temperatures=[QTemperature(0, 0, float("nan"))])


def test_a_temperature_multiplies_its_heads_attention_logits():
    """Under RoPE and GQA: with tau on head 1 of layer 0, that head's attention log-probabilities are tau times
    the original ones up to a constant per query (softmax(tau * logits)), and every other head is unchanged."""
    lm = tiny_model("llama")
    attention = lm.adapter.layers[0].self_attn
    with torch.no_grad():  # logits of a few units (a random tiny model's are ~0.01): softmax far from uniform
        attention.q_proj.weight.mul_(20)
        attention.k_proj.weight.mul_(20)
    tokens = torch.randint(3, VOCAB, (1, 12), generator=torch.Generator().manual_seed(3))
    tau = 2.5
    plain = lm.model(input_ids=tokens, output_attentions=True).attentions[0][0]           # (heads, q, k)
    coeffs = Coefficients(lm.fingerprint(), [], q_temperatures=[QTemperature(0, 1, tau)])
    with apply_coefficients(lm.adapter, coeffs):
        tempered = lm.model(input_ids=tokens, output_attentions=True).attentions[0][0]
    assert torch.equal(tempered[[0, 2, 3]], plain[[0, 2, 3]])  # head 0 shares head 1's keys (GQA): unchanged
    assert (tempered[1] - plain[1]).abs().max() > 0.05
    for q in range(1, tokens.shape[1]):
        shift = tempered[1, q, :q + 1].log() - tau * plain[1, q, :q + 1].log()
        assert shift.std() < 1e-4, q


def test_query_rows_of_every_layout_and_the_q_norm_field_is_true_to_the_models():
    from pear_edge.arch.registry import REGISTRY, check_q_temperatures, q_head_rows

    assert q_head_rows(None, 32, 4, 8, 2) == list(range(16, 24))
    assert q_head_rows("concat", 64, 4, 8, 3) == list(range(24, 32))        # [q (32) | k (16) | v (16)]
    assert q_head_rows("per_head", 96, 4, 8, 1) == list(range(24, 32))      # per head [q | k | v]
    with pytest.raises(PearError, match="expected 4 heads x 8"):
        q_head_rows(None, 48, 4, 8, 0)
    with pytest.raises(PearError, match="outside the 4 query heads"):
        q_head_rows(None, 32, 4, 8, 4)
    for arch in ARCHS:
        lm = tiny_model(arch)
        spec, block = lm.adapter.spec, lm.adapter.layers[0]
        q_norms = [n for n, _ in block.named_modules() if n.split(".")[-1] in ("q_norm", "q_layernorm")]
        assert q_norms == ([spec.q_norm] if spec.q_norm else []), arch
        if spec.q_norm:
            with pytest.raises(PearError, match=Q_NORM):
                check_q_temperatures(arch)
        else:
            module = lm.adapter.q_projection(0)   # every query row belongs to one head, and no key or value row
            rows = [r for h in range(lm.adapter.num_heads) for r in lm.adapter.q_head_rows(0, h)]
            assert len(set(rows)) == lm.adapter.num_heads * lm.adapter.head_dim
            assert module is lm.adapter.qk_targets(0)[0][0] and set(rows) <= set(lm.adapter.qk_targets(0)[0][1])
    assert {spec.model_types[0] for spec in REGISTRY if spec.q_norm} == {"qwen3", "gemma3_text"}


def test_temperatures_train_jointly_with_the_head_scales_and_are_refused_before_work_where_a_norm_follows():
    lm = tiny_model("llama")
    heads = [(0, 1, 0.0), (1, 2, 0.0), (2, 3, 0.0)]
    settings = TrainSettings(steps=15, batch=8, n=8, lr=0.05, constraint="none", pull=0.01)
    coeffs = train_coefficients(lm, heads, settings, progress=False, temperatures=True)
    assert [(t.layer, t.head) for t in coeffs.q_temperatures] == [(0, 1), (1, 2), (2, 3)]
    assert [(h.layer, h.head) for h in coeffs.heads] == [(0, 1), (1, 2), (2, 3)] and coeffs.version == 3
    assert all(0.1 <= t.tau <= 10 and t.tau != 1.0 for t in coeffs.q_temperatures)
    proxy = coeffs.metrics["held_out_proxy"]
    assert proxy["after"]["copy_loss"] < proxy["before"]["copy_loss"]
    again = train_coefficients(lm, heads, settings, progress=False, temperatures=True)
    assert again.q_temperatures == coeffs.q_temperatures and again.heads == coeffs.heads   # deterministic
    plain = train_coefficients(lm, heads, settings, progress=False)
    assert plain.q_temperatures == [] and plain.version == 1

    class Untouchable:  # the refusal comes before the proxy is built or read
        def __getattr__(self, name):
            raise AssertionError(f"the proxy was used ({name})")

    qwen3 = tiny_model("qwen3")
    with pytest.raises(PearError, match=Q_NORM):
        train_coefficients(qwen3, [(0, 1, 0.0)], settings, progress=False, proxy=Untouchable(), temperatures=True)
    with pytest.raises(PearError, match=Q_NORM):
        run_recipe(qwen3, with_overrides(CalibrationSettings(), {"recipe": "pear+temperature"}), progress=False,
                   proxy=Untouchable())


def test_calibrate_pear_temperature_writes_a_file_that_folds(tmp_path, capsys):
    """`calibrate --recipe pear+temperature` on a tiny model folder with query biases (qwen2), then `fold`
    (streamed): the folded folder computes what the hooked coefficients compute."""
    from tiny import save_tiny_llama

    from pear_edge.cli import main
    from pear_edge.runtime.models import load_model

    folder = save_tiny_llama(tmp_path / "qwen2", model_type="qwen2")
    out = tmp_path / "t.json"
    assert main(["-q", "calibrate", "--model", str(folder), "--recipe", "pear+temperature", "--proxy", "copy",
                 "--method", "attribution", "--lengths", "6", "--detect-batch", "4", "-k", "3", "--steps", "3",
                 "--batch", "4", "--n", "8", "--guard", "0", "-o", str(out)]) == 0
    coeffs = Coefficients.load(out)
    assert coeffs.calibration["recipe"] == "pear+temperature" and coeffs.version == 3
    assert len(coeffs.q_temperatures) == len(coeffs.heads) == 3
    assert {(t.layer, t.head) for t in coeffs.q_temperatures} == {(h.layer, h.head) for h in coeffs.heads}
    capsys.readouterr()
    assert main(["-q", "fold", "--model", str(folder), "--coefficients", str(out), "-o", str(tmp_path / "folded")]) == 0
    assert "attention temperatures" in capsys.readouterr().out
    base, folded = load_model(str(folder)), load_model(str(tmp_path / "folded"))
    tokens = torch.randint(3, VOCAB, (1, 16), generator=torch.Generator().manual_seed(2))
    with torch.no_grad(), apply_coefficients(base.adapter, coeffs):
        hooked = base.model(input_ids=tokens).logits
    with torch.no_grad():
        assert (folded.model(input_ids=tokens).logits - hooked).abs().max() <= 1e-5
        assert (base.model(input_ids=tokens).logits - hooked).abs().max() > 1e-6


def test_temperatures_on_a_model_with_a_norm_on_the_queries_are_one_error_line(tmp_path, capsys):
    """calibrate --recipe pear+temperature and fold of a temperatures file on qwen3: exit 2, one line, no file."""
    from tiny import save_tiny_llama

    from pear_edge.cli import main
    from pear_edge.runtime.models import load_model

    folder = save_tiny_llama(tmp_path / "qwen3", model_type="qwen3")
    capsys.readouterr()
    out = tmp_path / "t.json"
    assert main(["-q", "calibrate", "--model", str(folder), "--recipe", "pear+temperature", "--proxy", "copy",
                 "--steps", "1", "-o", str(out)]) == 2
    err = capsys.readouterr().err.strip().splitlines()
    assert err[-1].startswith("pear-edge: error: qwen3 normalises each head's queries") and not out.exists()
    coeffs = Coefficients(load_model(str(folder)).fingerprint(), [], q_temperatures=[QTemperature(0, 1, 1.5)])
    path = coeffs.save(tmp_path / "c.json")
    assert main(["-q", "fold", "--model", str(folder), "--coefficients", str(path), "-o", str(tmp_path / "f")]) == 2
    err = capsys.readouterr().err.strip().splitlines()
    assert len(err) == 1 and err[0].startswith("pear-edge: error: qwen3 normalises") and not (tmp_path / "f").exists()
