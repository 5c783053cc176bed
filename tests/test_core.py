"""Calibration core on tiny config-built models of every registry architecture."""
from __future__ import annotations

import dataclasses

import json
import math

import pytest
import torch
from tiny import TINY_CONFIGS, VOCAB, tiny_model

from pear_edge.calibration.calibrate import CalibrationSettings, calibrate
from pear_edge.edits.coefficients import Coefficients, HeadCoefficient
from pear_edge.calibration.detect import HeadScores, _capture_head_outputs, _margin, _replace_head, detect
from pear_edge.base.errors import PearError
from pear_edge.edits.fold import fold_coefficients
from pear_edge.edits.heads import edit_heads, scale_heads
from pear_edge.calibration.proxy import ProxyVocab, copy_logits_targets, proxy_batch
from pear_edge.arch.registry import REGISTRY, spec_for, supported_model_types
from pear_edge.calibration.train import TrainSettings, train_coefficients

ARCHS = sorted(TINY_CONFIGS)


def test_registry_covers_rope_learned_and_alibi_families():
    # rope (llama ... gpt_neox), learned positions (gpt2, opt) and ALiBi (bloom)
    for required in ("llama", "mistral", "qwen2", "gemma3_text", "phi3", "gpt2", "opt", "bloom", "gpt_neox"):
        assert required in supported_model_types()


def test_tiny_models_cover_every_registry_entry():
    """Every entry is exercised by the per-architecture tests below (ARCHS = the tiny configs)."""
    uncovered = [spec.model_types for spec in REGISTRY if not set(spec.model_types) & set(TINY_CONFIGS)]
    assert not uncovered, f"tests/tiny.py has no tiny config for {uncovered}"
    assert set(TINY_CONFIGS) <= set(supported_model_types())


def test_registry_entries_are_keyword_data_with_caveats_for_the_user():
    from dataclasses import fields

    from pear_edge.arch.registry import ArchSpec, caveat_note, model_type_for_gguf_arch

    with pytest.raises(TypeError):
        ArchSpec(("llama",), ("model.layers",), "self_attn.o_proj", 1, "llama")  # positional rows are refused
    assert {f.name for f in fields(ArchSpec)} == {"model_types", "layers", "o_proj", "qk_proj", "qkv_fused",
                                                   "in_features_dim", "gguf_arch", "q_norm", "caveat"}
    assert "post-attention RMSNorm" in caveat_note("gemma3_text") and caveat_note("gemma3_text").startswith(
        "pear-edge: note: gemma3_text: ")
    assert caveat_note("llama") is None and caveat_note("mamba") is None
    assert model_type_for_gguf_arch("gemma3") == "gemma3_text" and model_type_for_gguf_arch("gptneox") == "gpt_neox"


def test_unsupported_model_type_lists_supported():
    with pytest.raises(PearError, match="supported: .*llama"):
        spec_for("mamba")


@pytest.mark.parametrize("arch", ARCHS)
def test_adapter_layout(arch):
    lm = tiny_model(arch)
    assert (lm.adapter.num_heads, lm.adapter.head_dim) == (4, 8)
    assert lm.adapter.num_layers == TINY_CONFIGS[arch].get("num_hidden_layers", TINY_CONFIGS[arch].get("n_layer"))


def _random_coefficients(lm, seed=1) -> Coefficients:
    gen = torch.Generator().manual_seed(seed)
    heads = [(0, 1), (0, 3), (lm.adapter.num_layers - 1, 2)]
    values = (torch.rand(len(heads), generator=gen) * 1.5 - 0.25).tolist()
    return Coefficients(lm.fingerprint(), [HeadCoefficient(l, h, c) for (l, h), c in zip(heads, values)])


@pytest.mark.parametrize("arch", ARCHS)
def test_fold_matches_hooked_and_touches_only_selected_columns(arch):
    lm = tiny_model(arch)
    coeffs = _random_coefficients(lm)
    tokens = torch.randint(3, VOCAB, (2, 24), generator=torch.Generator().manual_seed(0))
    before = {k: v.clone() for k, v in lm.model.state_dict().items()}
    with scale_heads(lm.adapter, coeffs.as_dict()):
        hooked = lm.model(input_ids=tokens).logits
    plain = lm.model(input_ids=tokens).logits
    fold_coefficients(lm.model, lm.adapter, coeffs)
    folded = lm.model(input_ids=tokens).logits
    assert (hooked - folded).abs().max() <= 1e-5
    assert (hooked - plain).abs().max() > 1e-4  # the coefficients did something

    after = lm.model.state_dict()
    o_proj_names = {n + ".weight" for n, m in lm.model.named_modules() if any(m is o for o in lm.adapter.o_projs)}
    for name, tensor in after.items():
        if name not in o_proj_names:
            assert torch.equal(tensor, before[name]), f"{name} changed"
    selected = coeffs.as_dict()
    for layer, o_proj in enumerate(lm.adapter.o_projs):
        name = next(n for n in o_proj_names if lm.model.get_parameter(n) is o_proj.weight)
        for head in range(lm.adapter.num_heads):
            old = lm.adapter.head_columns(before[name], head)
            new = lm.adapter.head_columns(o_proj.weight, head)
            if (layer, head) in selected:
                assert torch.allclose(new, old * selected[(layer, head)], atol=0, rtol=1e-6)
            else:
                assert torch.equal(new, old)


@pytest.mark.parametrize("arch", ["llama", "gpt2"])
def test_hooks_leave_model_untouched(arch):
    lm = tiny_model(arch)
    tokens = torch.randint(3, VOCAB, (1, 10))
    ref = lm.model(input_ids=tokens).logits
    with pytest.raises(RuntimeError):
        with scale_heads(lm.adapter, {(0, 0): 0.0}):
            raise RuntimeError("boom")
    assert all(not o._forward_pre_hooks for o in lm.adapter.o_projs)
    assert torch.equal(lm.model(input_ids=tokens).logits, ref)
    with scale_heads(lm.adapter, {(0, 0): 1.0, (1, 2): 1.0}):
        assert torch.allclose(lm.model(input_ids=tokens).logits, ref, atol=1e-6)


def test_proxy_batch_repeats_and_excludes_special_tokens():
    lm = tiny_model("llama")
    vocab = ProxyVocab.from_model(lm)
    assert not set(vocab.ids.tolist()) & {0, 1, 2}
    tokens = proxy_batch(vocab, 30, 64, torch.Generator().manual_seed(0))
    assert tokens.shape == (64, 60)
    assert torch.equal(tokens[:, :30], tokens[:, 30:])
    assert tokens.min() >= 3
    again = proxy_batch(vocab, 30, 64, torch.Generator().manual_seed(0))
    assert torch.equal(tokens, again)
    logits = torch.zeros(64, 60, VOCAB)
    pred, target = copy_logits_targets(logits, tokens)
    assert pred.shape[1] == target.shape[1] == 29  # copy targets n+1 .. 2n-1
    assert torch.equal(target, tokens[:, 31:])


@pytest.mark.parametrize("arch", ARCHS)
def test_exact_detection_equals_brute_force_mean_ablation(arch):
    """The cached, head-batched implementation equals one full forward per ablated head."""
    lm = tiny_model(arch)
    scores = detect(lm, "exact", (6,), batch=4, progress=False)
    tokens = proxy_batch(ProxyVocab.from_model(lm), 6, 4, torch.Generator().manual_seed(0))
    inputs, where = tokens[:, :-1], slice(-1, None)
    targets = tokens[:, 1:][:, where]
    captured, logits = _capture_head_outputs(lm.model, lm.adapter, inputs, where)
    clean = _margin(logits[:, where], targets).mean()
    for layer in range(lm.adapter.num_layers):
        for head in range(lm.adapter.num_heads):
            with edit_heads(lm.adapter, {layer: _replace_head(head, captured[layer].mean(0), where)}):
                out = lm.model(input_ids=inputs).logits
            expected = _margin(out[:, where], targets).mean() - clean
            assert abs(float(expected) - float(scores.scores[layer, head])) < 1e-6


@pytest.mark.parametrize("positions", ["last", "copy"])
def test_attribution_tracks_exact_scores(positions):
    lm = tiny_model("llama")
    exact = detect(lm, "exact", (8, 12), batch=8, positions=positions, progress=False).scores.flatten()
    approx = detect(lm, "attribution", (8, 12), batch=8, positions=positions, progress=False).scores.flatten()
    assert torch.corrcoef(torch.stack([exact, approx]))[0, 1] > 0.9


def test_head_scores_roundtrip_and_heatmap(tmp_path):
    lm = tiny_model("llama")
    scores = detect(lm, "attribution", (6,), batch=4, progress=False)
    written = scores.save(tmp_path / "heads.json", top_k=3)
    assert written[1].read_bytes()[:8] == b"\x89PNG\r\n\x1a\n"
    loaded = HeadScores.load(tmp_path / "heads.json")
    assert torch.allclose(loaded.scores, scores.scores, atol=1e-6)
    assert loaded.top(3) == [(l, h, pytest.approx(s, abs=1e-6)) for l, h, s in scores.top(3)]
    assert len({l for l, _, _ in scores.top(4, max_per_layer=2)}) >= 2


def test_heatmap_labels_name_the_method_that_made_the_scores():
    from pear_edge.calibration.detect import heatmap_title, score_meaning

    lm = tiny_model("llama")
    gradient = detect(lm, "gradient", (6,), batch=4, progress=False, gradient_batches=1)
    exact = detect(lm, "exact", (6,), batch=4, progress=False)
    assert "gradient" in heatmap_title(gradient) and "copy proxy" in heatmap_title(gradient)
    assert "ablated" not in score_meaning(gradient.settings) and "d(proxy loss)" in score_meaning(gradient.settings)
    assert "exact" in heatmap_title(exact) and "mean-ablated" in score_meaning(exact.settings)


def test_training_is_deterministic_constrained_and_lowers_loss():
    lm = tiny_model("llama")
    heads = detect(lm, "exact", (8,), batch=8, progress=False).top(4)
    settings = TrainSettings(steps=25, batch=8, n=8, lr=0.05, constraint="unit")
    a = train_coefficients(lm, heads, settings, progress=False)
    b = train_coefficients(lm, heads, settings, progress=False)
    assert [h.coefficient for h in a.heads] == [h.coefficient for h in b.heads]
    assert all(0.0 <= h.coefficient <= 1.0 for h in a.heads)
    proxy = a.metrics["held_out_proxy"]
    assert proxy["after"]["copy_loss"] <= proxy["before"]["copy_loss"]
    free = train_coefficients(lm, heads, TrainSettings(steps=25, batch=8, n=8, lr=0.05, constraint="none"),
                              progress=False)
    # The unit constraint was active (some heads sit on its bound 1.0), and without it those heads go past it.
    assert [(h.layer, h.head) for h in free.heads] == [(h.layer, h.head) for h in a.heads]
    pinned = [i for i, h in enumerate(a.heads) if h.coefficient == 1.0]
    assert pinned, "the constrained run never reached its bound; this test no longer tells the two apart"
    assert all(free.heads[i].coefficient > 1.0 for i in pinned)


@pytest.mark.parametrize("arch", ["llama", "gemma3_text", "gpt2"])
def test_checkpointed_and_micro_batched_training_give_the_same_coefficients(arch):
    from pear_edge.calibration.train import checkpointed_layers

    lm = tiny_model(arch)
    heads = [(layer, head, 0.0) for layer in range(lm.adapter.num_layers) for head in range(lm.adapter.num_heads)]
    plain = TrainSettings(steps=4, batch=4, n=8, lr=0.05, constraint="none", pull=0.1, guard=0.0)
    a = train_coefficients(lm, heads, plain, progress=False)
    b = train_coefficients(lm, heads, dataclasses.replace(plain, checkpoint=True), progress=False)
    c = train_coefficients(lm, heads, dataclasses.replace(plain, micro_batch=1), progress=False)
    assert [h.coefficient for h in a.heads] == pytest.approx([h.coefficient for h in b.heads], abs=1e-6)
    assert [h.coefficient for h in a.heads] == pytest.approx([h.coefficient for h in c.heads], abs=1e-5)
    assert a.calibration["loss_curve"] == pytest.approx(c.calibration["loss_curve"], abs=1e-4)
    assert all("forward" not in vars(layer) for layer in lm.adapter.layers)  # the class's forward again
    with checkpointed_layers(lm.adapter.layers):
        assert all("forward" in vars(layer) for layer in lm.adapter.layers)
        with torch.no_grad():  # inference inside the block runs the layers as they are
            lm.model(input_ids=torch.tensor([[3, 4, 5]]), use_cache=False)


def test_coefficients_roundtrip_and_validation(tmp_path):
    lm = tiny_model("llama")
    coeffs = _random_coefficients(lm)
    coeffs.calibration = {"steps": 3}
    path = coeffs.save(tmp_path / "c.json")
    again = Coefficients.load(path)
    assert again.as_dict() == coeffs.as_dict() and again.model == coeffs.model
    doc = json.loads(path.read_text())
    doc["heads"][0]["coefficient"] = float("nan")
    with pytest.raises(PearError, match="NaN"):
        Coefficients.from_json(json.dumps(doc))
    doc["heads"][0]["coefficient"] = 0.5
    doc["heads"][0]["layer"] = 99
    with pytest.raises(PearError, match="outside"):
        Coefficients.from_json(json.dumps(doc))
    with pytest.raises(PearError, match="version"):
        Coefficients.from_json(json.dumps({**doc, "version": 99}))
    with pytest.raises(PearError):
        Coefficients.from_json("{not json")


def test_a_loaded_model_is_folded_once_and_its_fingerprint_follows_the_fold():
    from pear_edge.edits.fold import fold_model

    lm = tiny_model("llama")
    coeffs = _random_coefficients(lm)
    assert fold_model(lm, coeffs) == "exact"
    folded_weights = {k: v.clone() for k, v in lm.model.state_dict().items()}
    with pytest.raises(PearError, match="already has 3 head scales folded in"):
        fold_model(lm, coeffs)
    assert all(torch.equal(v, folded_weights[k]) for k, v in lm.model.state_dict().items())  # not folded twice
    # The cached fingerprint was dropped: the folded weights no longer pass as the base model "exactly".
    assert lm.fingerprint().weights_sha256 != coeffs.model.weights_sha256
    try:
        match = coeffs.model.check_matches(lm.fingerprint())
    except PearError:
        match = "refused"
    assert match != "exact"


def test_fingerprint_refuses_other_models_and_accepts_requantized_weights():
    a, b = tiny_model("llama", seed=0), tiny_model("llama", seed=1)
    fa = a.fingerprint()
    assert fa.check_matches(a.fingerprint()) == "exact"
    with pytest.raises(PearError, match="other weights"):
        fa.check_matches(b.fingerprint())
    with pytest.raises(PearError, match="layers/heads"):
        fa.check_matches(tiny_model("gpt2").fingerprint())
    # Same weights plus quantization-sized noise: accepted as the same model.
    with torch.no_grad():
        for p in a.model.parameters():
            p.add_(torch.randn_like(p) * p.abs().mean() * 0.05)
    from pear_edge.runtime.models import fingerprint

    assert fa.check_matches(fingerprint(a.model, a.adapter)) == "compatible"


def test_calibrate_api_on_tiny_model():
    lm = tiny_model("qwen2")
    settings = CalibrationSettings(lengths=(6, 8), detect_batch=4, top_k=3,
                                   train=TrainSettings(steps=3, batch=4, n=8))
    coeffs = calibrate(lm, settings, progress=False)
    assert len(coeffs.heads) == 3
    assert all(math.isfinite(h.coefficient) for h in coeffs.heads)
    assert coeffs.calibration["top_k"] == 3 and coeffs.calibration["detection"]["method"] == settings.method


def test_budget_takes_fewer_larger_steps_and_the_user_flags_win(capsys):
    from pear_edge.calibration.calibrate import BUDGETS, DEFAULTS, with_budget
    from pear_edge.cli import build_parser, main

    assert BUDGETS["fast"].steps == pytest.approx(1 / 3) and BUDGETS["fast"].per_step == 1
    fast = with_budget(DEFAULTS, "fast")
    assert fast.budget == "fast" and fast.train.steps == round(DEFAULTS.train.steps / 3) == 10
    assert fast.train.lr == pytest.approx(DEFAULTS.train.lr * 3) and fast.gradient_batches == 1
    assert fast.train.proxy == DEFAULTS.train.proxy and fast.train.guard == DEFAULTS.train.guard  # same meaning
    assert (fast.train.batch, fast.train.guard_batch) == (DEFAULTS.train.batch, DEFAULTS.train.guard_batch)
    # lean: 60 % of the steps, the same path (steps x lr), half the prompts and guard windows per step
    lean = with_budget(DEFAULTS, "lean")
    assert (lean.train.steps, lean.train.lr, lean.train.batch, lean.train.guard_batch) == (18, 0.0417, 2, 2)
    assert lean.train.guard == DEFAULTS.train.guard and lean.train.pull == DEFAULTS.train.pull
    assert with_budget(DEFAULTS, "full") == dataclasses.replace(DEFAULTS, budget="full")
    parse = build_parser().parse_args
    given = CalibrationSettings.from_args(parse(["calibrate", "-o", "x.json", "--budget", "fast", "--steps", "4"]))
    assert given.budget == "fast" and given.train.steps == 4 and given.train.lr == fast.train.lr
    assert CalibrationSettings.from_args(parse(["calibrate", "-o", "x.json"])).budget == "full"
    # the CLI: a model calibrates at the full budget unless --budget says otherwise
    from pear_edge.calibration.calibrate import profile_for
    from pear_edge.cli.commands import _settings

    assert _settings(parse(["calibrate", "-o", "x.json"])) == with_budget(DEFAULTS, "full") == profile_for("default")
    assert _settings(parse(["calibrate", "--budget", "lean", "-o", "x.json"])) == lean
    assert _settings(parse(["calibrate", "--model", "gemma3-270m", "-o", "x.json"])).budget == "full"
    assert profile_for("default") == DEFAULTS and DEFAULTS.train.steps == 30
    assert main(["calibrate", "--budget", "slow", "-o", "x.json"]) == 2
    assert capsys.readouterr().err.startswith("pear-edge: error:")


def test_every_command_prints_its_help(capsys):
    """--help of every command and sub-command formats (argparse %-formats help texts, some of which are data
    with a literal '%', e.g. the lean budget's "60 % of the steps")."""
    import argparse

    from pear_edge.cli import build_parser, main

    def commands(parser, prefix=()):
        for action in parser._actions:
            if isinstance(action, argparse._SubParsersAction):
                for name, sub in action.choices.items():
                    yield (*prefix, name)
                    yield from commands(sub, (*prefix, name))

    found = list(commands(build_parser()))
    assert ("calibrate",) in found and ("rag", "calibrate") in found and ("eval", "tradeoff") in found
    for argv in found:
        assert main([*argv, "--help"]) == 0, argv  # main turns --help's SystemExit(0) into 0
        assert capsys.readouterr().out.startswith("usage: "), argv
    assert main(["calibrate", "--help"]) == 0
    assert "lean = 60 % of the steps" in " ".join(capsys.readouterr().out.split())


def test_a_fast_calibration_says_what_its_budget_cost(capsys):
    from types import SimpleNamespace

    from pear_edge import results
    from pear_edge.calibration.calibrate import BUDGETS
    from pear_edge.cli.commands import _print_summary
    from pear_edge.data.textqa import GOLD_SLOTS

    notes = results.measured()["notes"]
    assert set(notes["budget"]) < set(BUDGETS) and "full" not in notes["budget"]
    assert set(notes["gold"]) < set(GOLD_SLOTS) and "uniform" not in notes["gold"]
    model = SimpleNamespace(weights_sha256="0" * 64)  # a model nothing was measured on: the proxy's note
    _print_summary(SimpleNamespace(model=model, calibration={"train": {"proxy": "copy"}, "budget": "fast"},
                                   metrics={}, summary=str))
    err = capsys.readouterr().err.splitlines()
    assert len(err) == 2 and all(line.startswith("pear-edge: note: ") for line in err)
    assert err[1] == f"pear-edge: note: {results.note('budget', 'fast')}"
    _print_summary(SimpleNamespace(model=model, calibration={"train": {"proxy": "copy"}, "budget": "full"},
                                   metrics={}, summary=str))
    assert len(capsys.readouterr().err.splitlines()) == 1
    _print_summary(SimpleNamespace(model=model, calibration={"train": {"proxy": "cloze", "gold": "middle"},
                                                             "budget": "full"}, metrics={}, summary=str))
    err = capsys.readouterr().err.splitlines()
    assert len(err) == 2 and err[1] == f"pear-edge: note: {results.note('gold', 'middle')}"
