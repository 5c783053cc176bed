"""The calibration benchmark: each run a fresh process, its own peak RSS and the held-out loss it reached."""
from __future__ import annotations

import json

import pytest
from tiny import save_tiny_llama

from pear_edge.eval.bench_calibrate import main

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
