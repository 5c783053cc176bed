"""`eval --answers-cache DIR`: a warm cache answers nothing and the report is the uncached run's (results.json but
for each answer's timing, report.md, the plot); a new PEAR model answers only the PEAR side; a changed model,
prompt format, thread count or prompt misses; a corrupt file is one warning and rewritten; shards use and fill
the cache; a bad DIR is one error line."""
from __future__ import annotations

import dataclasses
import json
import shutil
from pathlib import Path

import pytest
from test_eval_shards import without_timing
from test_recipes import edits_of
from tiny import save_tiny_llama, word_tokenizer

from pear_edge.base.atomic import MARKER
from pear_edge.base.inputs import content_sha256
from pear_edge.cli import main
from pear_edge.edits.coefficients import HeadCoefficient
from pear_edge.eval import answers
from pear_edge.eval.answers import (CachedBackend, Side, ask_key, load_side, parse_side, save_side, side_key,
                                    side_path, thread_setting)
from pear_edge.eval.backends import Backend, TorchBackend
from pear_edge.runtime.models import load_model


@pytest.fixture(scope="module")
def tiny(tmp_path_factory) -> dict[str, Path]:
    root = tmp_path_factory.mktemp("answers")
    folder = save_tiny_llama(root / "hf")
    word_tokenizer(chat_template="{% for m in messages %}{{ m['content'] }}{% endfor %}").save_pretrained(folder)
    coefficients = edits_of(load_model(str(folder)), "heads")
    other = dataclasses.replace(coefficients, heads=[HeadCoefficient(0, 2, 1.5)])
    return {"model": folder, "c": coefficients.save(root / "c.json"), "c2": other.save(root / "c2.json")}


def eval_args(model: Path, coefficients: Path) -> list[str]:
    return ["-q", "eval", "--task", "counterfactual", "--count", "3", "--num-docs", "4", "--max-tokens", "3",
            "--model", str(model), "--coefficients", str(coefficients)]


@pytest.fixture
def calls(monkeypatch) -> list[str]:
    """The mode (plain, hooked) of every answer a torch backend gives."""
    made: list[str] = []
    generate = TorchBackend.generate

    def counted(self, prompt, max_tokens=32):
        made.append(self.mode)
        return generate(self, prompt, max_tokens)

    monkeypatch.setattr(TorchBackend, "generate", counted)
    return made


def results(folder: Path) -> dict:
    return without_timing(json.loads((folder / "results.json").read_text()))


def cache_files(cache: Path) -> list[Path]:
    return sorted(cache.glob("*.json"))


def test_a_warm_cache_answers_nothing_and_reports_what_an_uncached_run_does(tmp_path, tiny, calls, monkeypatch,
                                                                              capsys):
    args, cache = eval_args(tiny["model"], tiny["c"]), tmp_path / "cache"
    assert main([*args, "-o", str(tmp_path / "plain")]) == 0
    calls.clear()
    assert main([*args, "--answers-cache", str(cache), "-o", str(tmp_path / "cold")]) == 0
    assert len(calls) == 18 and len(cache_files(cache)) == 2 and (cache / MARKER).is_file()
    capsys.readouterr()

    def never(*_, **__):
        raise AssertionError("a backend was opened although every answer was cached")

    monkeypatch.setattr(TorchBackend, "__init__", never)
    assert main([*args, "--answers-cache", str(cache), "-o", str(tmp_path / "warm")]) == 0
    err = capsys.readouterr().err
    assert err.count("9 answer(s) reused, 0 new") == 2 and "warning" not in err
    plain = results(tmp_path / "plain")
    assert results(tmp_path / "cold") == plain == results(tmp_path / "warm")
    for name in ("report.md", "accuracy_by_position.png"):
        assert (tmp_path / "warm" / name).read_bytes() == (tmp_path / "plain" / name).read_bytes()
    assert all(i["timing"] is None for s in ("base", "pear")
               for i in json.loads((tmp_path / "warm" / "results.json").read_text())["runs"][0][s]["items"])


def test_a_new_pear_model_answers_only_the_pear_side(tmp_path, tiny, calls, capsys):
    cache = ["--answers-cache", str(tmp_path / "cache")]
    assert main([*eval_args(tiny["model"], tiny["c"]), *cache, "-o", str(tmp_path / "a")]) == 0
    calls.clear()
    capsys.readouterr()
    assert main([*eval_args(tiny["model"], tiny["c2"]), *cache, "-o", str(tmp_path / "b")]) == 0
    assert calls == ["hooked"] * 9
    err = capsys.readouterr().err
    assert "base: 9 answer(s) reused, 0 new" in err and "pear: 0 answer(s) reused, 9 new" in err
    assert main([*eval_args(tiny["model"], tiny["c2"]), "-o", str(tmp_path / "uncached")]) == 0
    assert results(tmp_path / "b") == results(tmp_path / "uncached")


def test_a_changed_model_prompt_format_or_prompt_answers_afresh(tmp_path, tiny, calls):
    model = Path(shutil.copytree(tiny["model"], tmp_path / "hf"))
    args, cache = eval_args(model, tiny["c"]), ["--answers-cache", str(tmp_path / "cache")]
    assert main([*args, *cache, "-o", str(tmp_path / "a")]) == 0
    for i, changed in enumerate((["--prompt-format", "chat"], ["--max-tokens", "2"],
                                 ["--template", "litm-plain"], ["--split", "validation"])):
        calls.clear()
        assert main([*args, *changed, *cache, "-o", str(tmp_path / f"changed{i}")]) == 0
        assert calls == ["plain"] * 9 + ["hooked"] * 9, changed
    config = model / "generation_config.json"
    config.write_text(config.read_text() + "\n")  # the same weights, another file: another model
    calls.clear()
    assert main([*args, *cache, "-o", str(tmp_path / "b")]) == 0
    assert calls == ["plain"] * 9 + ["hooked"] * 9
    assert results(tmp_path / "a")["runs"] == results(tmp_path / "b")["runs"]


def test_a_corrupt_cache_file_is_one_warning_and_rewritten(tmp_path, tiny, calls, capsys):
    args, cache = eval_args(tiny["model"], tiny["c"]), tmp_path / "cache"
    assert main([*args, "--answers-cache", str(cache), "-o", str(tmp_path / "a")]) == 0
    broken, intact = cache_files(cache)
    intact_text = intact.read_text()
    for garbage in ("{not json", json.dumps({**json.loads(intact_text), "format": "other"}), "\0\1"):
        broken.write_text(garbage)
        calls.clear()
        capsys.readouterr()
        assert main([*args, "--answers-cache", str(cache), "-o", str(tmp_path / "b")]) == 0
        warnings = [line for line in capsys.readouterr().err.splitlines() if "warning" in line]
        assert len(warnings) == 1 and warnings[0].startswith("pear-edge: warning:") and str(broken) in warnings[0]
        assert len(calls) == 9  # the broken side answered again, the other reused
        assert json.loads(broken.read_text())["answers"] and intact.read_text() == intact_text
        assert results(tmp_path / "b") == results(tmp_path / "a")


def test_shards_use_and_fill_the_cache(tmp_path, tiny, calls, monkeypatch):
    args, cache = eval_args(tiny["model"], tiny["c"]), ["--answers-cache", str(tmp_path / "cache")]
    for i in (1, 2):
        assert main([*args, *cache, "--shard", f"{i}/2", "-o", str(tmp_path / f"s{i}")]) == 0
    assert len(calls) == 18
    monkeypatch.setattr(TorchBackend, "__init__", lambda *_, **__: pytest.fail("answered again"))
    assert main([*args, *cache, "-o", str(tmp_path / "whole")]) == 0
    assert main([*args, *cache, "--shard", "1/3", "-o", str(tmp_path / "s1of3")]) == 0
    assert main(["eval", "merge", str(tmp_path / "s1"), str(tmp_path / "s2"), "-o", str(tmp_path / "merged")]) == 0
    assert results(tmp_path / "whole") == results(tmp_path / "merged")


@pytest.mark.parametrize("answered", [4, 11])  # stopped in the base side; in the PEAR side, base done
def test_an_interrupted_run_keeps_what_it_answered(tmp_path, tiny, calls, monkeypatch, capsys, answered):
    args, cache = [*eval_args(tiny["model"], tiny["c"]), "--answers-cache", str(tmp_path / "cache")], tmp_path / "cache"
    generate = TorchBackend.generate

    def stopped(self, prompt, max_tokens=32):
        if len(calls) == answered:
            raise KeyboardInterrupt  # what a signal raises in pear-edge (Interrupted)
        return generate(self, prompt, max_tokens)

    monkeypatch.setattr(TorchBackend, "generate", stopped)
    assert main([*args, "-o", str(tmp_path / "a")]) == 130
    err = capsys.readouterr().err
    assert "interrupted (SIGINT)" in err and not (tmp_path / "a").exists()
    notes = [line.rsplit(": ", 1)[-1] for line in err.splitlines() if "answers cache" in line]
    assert notes == (["0 answer(s) reused, 4 new"] if answered == 4 else
                     ["0 answer(s) reused, 9 new", "0 answer(s) reused, 2 new"])  # the finished base said once
    assert sorted(len(json.loads(f.read_text())["answers"]) for f in cache_files(cache)) == \
        ([4] if answered == 4 else [2, 9])
    monkeypatch.setattr(TorchBackend, "generate", generate)
    calls.clear()
    assert main([*args, "-o", str(tmp_path / "b")]) == 0
    assert len(calls) == 18 - answered  # only what the first run did not answer
    assert main([*eval_args(tiny["model"], tiny["c"]), "-o", str(tmp_path / "uncached")]) == 0
    assert results(tmp_path / "b") == results(tmp_path / "uncached")


def test_a_side_keeps_its_answers_while_it_answers(tmp_path, tiny, calls, monkeypatch):
    """What a killed process (no clean-up) leaves: the answers kept up to the last KEEP_EVERY_S."""
    monkeypatch.setattr(answers, "KEEP_EVERY_S", 0.0)
    cache, seen = tmp_path / "cache", []
    generate = TorchBackend.generate

    def snapshot(self, prompt, max_tokens=32):
        seen.append({f.name: len(json.loads(f.read_text())["answers"]) for f in cache_files(cache)})
        return generate(self, prompt, max_tokens)

    monkeypatch.setattr(TorchBackend, "generate", snapshot)
    assert main([*eval_args(tiny["model"], tiny["c"]), "--answers-cache", str(cache), "-o", str(tmp_path / "a")]) == 0
    assert [sum(s.values()) for s in seen] == list(range(18))  # every answer on disk before the next is asked


def test_a_cached_backend_keeps_only_after_new_answers():
    kept: list[int] = []
    backend = CachedBackend(Echo, Side(key()), keep=lambda side: kept.append(len(side.answers)), keep_every_s=0)
    backend.generate("abc", 8), backend.generate("abc", 8), backend.nll("xy")
    assert kept == [1, 2] and (backend.reused, backend.answered) == (1, 2)
    slow = CachedBackend(Echo, Side(key()), keep=lambda side: kept.append(-1), keep_every_s=3600)
    slow.generate("abc", 8)
    assert kept == [1, 2]


@pytest.mark.parametrize("what", ["file", "foreign folder"])
def test_a_bad_cache_folder_is_one_error_line(tmp_path, tiny, capsys, what):
    bad = tmp_path / "bad"
    if what == "file":
        bad.write_text("mine\n")
    else:
        bad.mkdir()
        (bad / "notes.txt").write_text("mine\n")
    before = {p: p.read_bytes() for p in tmp_path.rglob("*") if p.is_file()}
    capsys.readouterr()
    assert main([*eval_args(tiny["model"], tiny["c"]), "--answers-cache", str(bad), "-o", str(tmp_path / "o")]) == 2
    err = capsys.readouterr().err.strip().splitlines()
    assert len(err) == 1 and err[0].startswith("pear-edge: error:"), err
    assert {p: p.read_bytes() for p in tmp_path.rglob("*") if p.is_file()} == before


class Echo(Backend):
    """Answers each prompt with itself reversed; counts what it was asked."""

    kind = "llamacpp"

    def __init__(self, source: str = "echo.gguf"):
        super().__init__(Path(source).name, source)
        self.asked: list[str] = []

    def generate(self, prompt, max_tokens=32):
        self.asked.append(prompt)
        return prompt[::-1][:max_tokens]

    def nll(self, text):
        self.asked.append(text)
        return float(len(text)), 2


def key(**changes) -> dict:
    base = dict(kind="llamacpp", model="m.gguf", model_sha256="a" * 64, prompt_format="auto",
                threads=thread_setting(None, 4), runtime={"llama-cpp-python": "0.3"})
    return side_key(**{**base, **changes})


def test_every_part_of_the_key_names_another_file(tmp_path):
    paths = {side_path(tmp_path, key(**c)) for c in ({}, {"model_sha256": "b" * 64}, {"prompt_format": "chat"},
                                                      {"threads": thread_setting(None, 8)}, {"threads": 4},
                                                      {"runtime": {"llama-cpp-python": "0.4"}}, {"model": "n.gguf"},
                                                      {"kind": "onnx"}, {"coefficients_sha256": "c" * 64},
                                                      {"mode": "folded"})}
    assert len(paths) == 10
    assert len({ask_key("generate", 32, "q"), ask_key("generate", 16, "q"), ask_key("generate", 32, "q "),
                ask_key("nll", "q"), ask_key("generate_batch", 32, 4, "q")}) == 5


def test_a_cached_backend_opens_the_real_one_only_for_what_it_lacks(tmp_path):
    opened: list[Echo] = []

    def opener():
        opened.append(Echo())
        return opened[-1]

    first = CachedBackend(opener, load_side(tmp_path, key()))
    assert (first.generate("abc", 8), first.nll("xyz")) == ("cba", (3.0, 2))
    assert first.name == "echo.gguf" and first.calibration_record() == {}
    save_side(tmp_path, first.side)
    again = CachedBackend(opener, load_side(tmp_path, key()))
    assert (again.generate("abc", 8), again.nll("xyz"), again.describe()) == ("cba", (3.0, 2), first.describe())
    assert len(opened) == 1 and again.last_timing is None and (again.reused, again.answered) == (2, 0)
    assert again.generate("abc", 2) == "cb" and again.generate("abd", 8) == "dba"
    assert len(opened) == 2 and opened[1].asked == ["abc", "abd"]
    save_side(tmp_path, again.side)  # merged into what the file held
    assert len(parse_side(side_path(tmp_path, key()), key()).answers) == 4
    other = Side(key(model_sha256="b" * 64))
    side_path(tmp_path, other.key).write_text(side_path(tmp_path, key()).read_text())  # another side's file
    assert load_side(tmp_path, other.key, warn=False).answers == {}


def test_content_sha256_follows_every_file_of_a_folder(tmp_path):
    folder = tmp_path / "m"
    (folder / "sub").mkdir(parents=True)
    (folder / "a.json").write_text("{}")
    (folder / "sub" / "b.bin").write_bytes(b"\0\1")
    first = content_sha256(folder)
    (folder / "sub" / "b.bin").write_bytes(b"\0\2")
    second = content_sha256(folder)
    (folder / "sub" / "b.bin").rename(folder / "b.bin")
    assert len({first, second, content_sha256(folder)}) == 3
    assert content_sha256(folder / "a.json") == "44136fa355b3678a1146ad16f7e8649e94fb4fc21fe77e8310c060f61caaff8a"


def test_gguf_pairs_are_keyed_by_what_the_files_hold(tmp_path, monkeypatch):
    """base.gguf against two PEAR files: the second run opens only the new PEAR file; new bytes under the old
    base path are another model (llama.cpp stands in: check_backend_input reads the real tiny GGUFs)."""
    from gguf import GGMLQuantizationType as T
    from gguf_tiny import write_tiny_gguf

    from pear_edge.eval import backends

    base, pear, pear2 = (write_tiny_gguf(tmp_path / f"{name}.gguf", T.Q8_0, seed=seed)
                         for seed, name in enumerate(("base", "pear", "pear2")))
    opened: list[str] = []

    def open_echo(spec, kind=None, **_):
        opened.append(Path(spec).name)
        return Echo(spec)

    monkeypatch.setattr(backends, "open_backend", open_echo)

    def run(pear_file: Path, out: str) -> dict:
        assert main(["-q", "eval", "--task", "kv", "--count", "2", "--base", str(base), "--pear", str(pear_file),
                     "--answers-cache", str(tmp_path / "cache"), "-o", str(tmp_path / out)]) == 0
        return results(tmp_path / out)

    first = run(pear, "a")
    assert opened == ["base.gguf", "pear.gguf"]
    assert run(pear2, "b")["runs"][0]["base"] == first["runs"][0]["base"] and opened[2:] == ["pear2.gguf"]
    write_tiny_gguf(base, T.Q8_0, seed=3)
    run(pear2, "c")
    assert opened[3:] == ["base.gguf"]


def test_one_base_against_two_pear_models_names_each_run_by_both(tmp_path, tiny):
    first, second = tmp_path / "first", tmp_path / "second"
    shutil.copytree(tiny["model"], first)
    shutil.copytree(tiny["model"], second)
    base = str(tiny["model"])
    args = ["-q", "eval", "--task", "counterfactual", "--count", "2", "--num-docs", "4", "--max-tokens", "2",
            "--backend", "torch", "--base", base, "--pear", str(first), "--base", base, "--pear", str(second),
            "--answers-cache", str(tmp_path / "cache"), "-o", str(tmp_path / "out")]
    assert main(args) == 0
    labels = [r["label"] for r in json.loads((tmp_path / "out" / "results.json").read_text())["runs"]]
    name = tiny["model"].name
    assert labels == [f"torch:{name} vs first", f"torch:{name} vs second"]
    assert f"### torch:{name} vs second" in (tmp_path / "out" / "report.md").read_text()
