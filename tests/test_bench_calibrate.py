"""The calibration benchmark: each run a fresh process, its own peak RSS and the held-out loss it reached."""
from __future__ import annotations

import dataclasses
import json

import pytest
from tiny import save_tiny_llama

import pear_edge.eval.lab.bench_calibrate as bc
from pear_edge.eval.lab.bench_calibrate import main

FAST = ("--proxy copy --method attribution --top-k 2 --lengths 6 --detect-batch 2 --n 6 --steps 2 --batch 2 "
        "--guard 0")


def test_bench_runs_each_recipe_in_its_own_process_and_reports_cost(tmp_path, capsys):
    model = save_tiny_llama(tmp_path / "tiny")
    out = tmp_path / "bench"
    assert main(["--model", str(model), "--run", f"plain={FAST}", "--run", f"micro={FAST} --micro-batch 1",
                 "--threads", "1", "-o", str(out)]) == 0
    rows = json.loads((out / "bench.json").read_text())
    assert [r["label"] for r in rows] == ["plain", "micro"]
    for r in rows:
        assert r["wall_seconds"] > 0 and 0.05 < r["peak_rss_gib"] < 8 and r["torch_threads"] == 1
        assert r["held_out"]["metric"] == "copy_loss" and r["steps"] == 2 and r["machine"]
        assert set(r["phases"]) == {"load", "proxy", "detect", "train"} and all(v >= 0 for v in r["phases"].values())
        assert (out / f"{r['label']}.json").is_file()
    # micro-batching changes memory, not the result
    assert rows[0]["held_out"]["after"] == pytest.approx(rows[1]["held_out"]["after"], abs=1e-4)
    table = capsys.readouterr().out
    assert "| plain" in table and "| micro" in table and "peak RSS" in table


def test_bench_refuses_a_bad_run_and_reports_a_failed_one(tmp_path, capsys):
    assert main(["--run", "no label", "-o", str(tmp_path / "a")]) == 2
    assert "pear-edge: error:" in capsys.readouterr().err
    model = save_tiny_llama(tmp_path / "tiny")
    assert main(["--model", str(model), "--run", "bad=--steps 0", "-o", str(tmp_path / "b")]) == 2
    assert "run 'bad' failed" in capsys.readouterr().err



def test_a_run_over_two_ranks_reports_its_ranks_and_the_same_coefficients(tmp_path, capsys):
    model = save_tiny_llama(tmp_path / "tiny")
    out = tmp_path / "bench"
    flags = FAST.replace("--n ", "--copy-length ")  # torchrun would read --n as one of its own options
    assert main(["--model", str(model), "--run", f"one={flags}", "--run", f"two={flags} --ranks 2", "-o", str(out)]) == 0
    rows = json.loads((out / "bench.json").read_text())
    assert [r["ranks"] for r in rows] == [1, 2] and rows[1]["flags"] == flags
    assert max(abs(a - b) for a, b in zip(rows[0]["values"], rows[1]["values"])) <= 1e-5
    assert "| two | " in capsys.readouterr().out
    assert bc.split_ranks(["--steps", "2", "--ranks", "3"]) == (3, ["--steps", "2"])
    for bad in (["--ranks"], ["--ranks", "x"], ["--ranks", "0"]):
        with pytest.raises(bc.PearError):
            bc.split_ranks(bad)


def test_scaling_cases_repeat_for_each_dtype_and_shapes_are_real_configs():
    cases = bc.scaling_cases(["a"], [16, 48], ("float32", "bfloat16"))
    assert [(c.length, c.batch, c.checkpoint, c.dtype) for c in cases] == [
        (16, 1, False, "float32"), (48, 1, False, "float32"), (48, 1, True, "float32"), (48, 4, False, "float32"),
        (48, 4, False, "float32"), (16, 1, False, "bfloat16"), (48, 1, False, "bfloat16"), (48, 1, True, "bfloat16")]
    assert all(bc.StepCase.parse(c.text()) == c for c in cases)
    with pytest.raises(bc.PearError, match="no shape"):
        bc.shape_model("no-such-shape", None)
    assert {p.stem for p in bc.SHAPES.glob("*.json")} >= {"llama-3.2-1b"}


def test_scaling_cases_cover_length_batch_and_checkpointing():
    cases = bc.scaling_cases(["a", "b"], [16, 48, 96])
    assert [(c.model, c.length, c.batch, c.micro, c.checkpoint) for c in cases] == [
        ("a", 16, 1, 1, False), ("a", 48, 1, 1, False), ("a", 96, 1, 1, False), ("a", 96, 1, 1, True),
        ("a", 48, 4, 1, False), ("a", 48, 4, 4, False),
        ("b", 16, 1, 1, False), ("b", 48, 1, 1, False), ("b", 96, 1, 1, False), ("b", 96, 1, 1, True)]
    assert all(bc.StepCase.parse(c.text()) == c for c in cases)


def test_scaling_steps_are_timed_in_a_fresh_process_and_fitted(tmp_path, monkeypatch):
    model = str(save_tiny_llama(tmp_path / "tiny"))
    # one case through a child process (its own peak RSS), the others in this one (child start-up is slow)
    child = bc.run_step(bc.StepCase(model, 16), threads=1)
    assert child["step_seconds"] > 0 and 0.05 < child["peak_rss_gib"] < 8 and child["torch_threads"] == 1
    assert child["heads"] == child["layers"] * 4 and child["params"] > child["params_non_embedding"] > 0
    rows = [child] + [{**dataclasses.asdict(c), **bc.time_step(c), "peak_rss_gib": 0.5}
                      for c in (bc.StepCase(model, 48), bc.StepCase(model, 48, checkpoint=True),
                                bc.StepCase(model, 48, 4, 1), bc.StepCase(model, 48, 4, 4))]
    assert all(r["step_seconds"] > 0 for r in rows)
    text = bc.scaling_markdown(rows, "test machine")
    assert text.count("\n| ") == 1 + len(rows) and "per 1k tokens" in text and "peak RSS" in text
    assert text.count("without embeddings): s per step") == 1  # one fit per model, from its batch-1 rows
    assert bc.fit_quadratic([1.0, 2.0, 3.0], [4.0, 9.0, 16.0]) == pytest.approx((1.0, 2.0, 1.0))
    assert bc.fit_quadratic([1.0, 2.0], [3.0, 5.0]) == pytest.approx((1.0, 2.0, 0.0))


@pytest.mark.parametrize("lengths", ["abc", "48,16", "4"])
def test_scaling_refuses_bad_lengths(tmp_path, capsys, lengths):
    assert main(["--scaling", "--lengths", lengths, "-o", str(tmp_path / "s")]) == 2
    assert "pear-edge: error:" in capsys.readouterr().err
    assert not (tmp_path / "s").exists()
