"""Prompt templates as data (pear_edge.data.templates, template_family): the strict reader, the shipped presets
(lost-in-the-middle's two byte for byte as before), the families the cloze proxy samples from and what holding
a template out removes, the calibration record and the warnings of eval and rag on another template, and the
command-line flags."""
from __future__ import annotations

import json
import random

import numpy as np
import pytest

from tiny import save_tiny_llama, tiny_model, word_tokenizer

from pear_edge.base.errors import PearError
from pear_edge.calibration.calibrate import CalibrationSettings, with_overrides
from pear_edge.calibration.rag_proxy import ClozeProxy
from pear_edge.cli import build_parser, main
from pear_edge.cli.info import describe_coefficients
from pear_edge.data import corpora
from pear_edge.data.prompts import completion_prompt, mdqa_prompt, prompt_ids, user_messages
from pear_edge.data.template_family import (DISTINCTIVE, exclude, family_hash, family_record, load_family,
                                            parse_family, proxy_family)
from pear_edge.data.templates import (Document, load_template, parse_template, preset, preset_names, template_hash,
                                      template_mismatch, template_record)
from pear_edge.edits.coefficients import Coefficients
from pear_edge.edits.describe import template_note
from pear_edge.rag import cli as rag_cli
from pear_edge.rag.answer import answer_prompt, warn_format
from pear_edge.rag.index import Hit
from pear_edge.runtime.models import wrap_model

DOCS = [Document("Salbe {x}", "Salbe Society built the Salbe tower."), Document("", "Dintor Niho\nwas a painter.")]
LITM = ("Write a high-quality answer for the given question using only the provided search results "
        "(some of which might be irrelevant).")
CHAT = "{% for m in messages %}<|user|>{{ m['content'] }}<|end|>{% endfor %}<|assistant|>"


def litm_prompt(instruction: str, question: str, documents) -> str:
    """The prompt pear-edge built before templates were data (its f-strings, kept here as the reference)."""
    docs = "\n".join(f"Document [{i}](Title: {d.title}) {d.text}" for i, d in enumerate(documents, 1))
    return f"{instruction}\n\n{docs}\n\nQuestion: {question}\nAnswer:"


def valid() -> dict:
    return json.loads(json.dumps({k: v for k, v in vars(preset("litm-short")).items()}))


# --------------------------------------------------------------------------- presets

def test_the_litm_presets_render_the_prompts_of_before_byte_for_byte():
    question = "Who built the {Salbe} tower?"
    assert preset("litm-short").render(question, DOCS) == litm_prompt(LITM + " Answer with a short phrase.",
                                                                      question, DOCS)
    assert preset("litm-plain").render(question, DOCS) == litm_prompt(LITM, question, DOCS)
    assert mdqa_prompt(question, DOCS) == preset("litm-short").render(question, DOCS)  # the default


@pytest.mark.parametrize("name", preset_names())
def test_every_preset_renders_in_both_formats_with_its_answer_cue_last(name):
    template = preset(name)
    assert template.source.startswith("https://") and template.name == name
    text = template.render("Who built the Salbe tower?", DOCS)
    assert text.endswith("\n" + template.answer) and template.answer.endswith(":")
    assert "Salbe Society built the Salbe tower." in text and "Who built the Salbe tower?" in text
    assert completion_prompt(text) == text  # the completion format sees its cue: nothing appended
    tok = word_tokenizer(CHAT)
    rendered = tok.apply_chat_template(user_messages(text), add_generation_prompt=True, tokenize=False)
    assert rendered == f"<|user|>{text}<|end|><|assistant|>"  # chat: the text as one user message
    assert prompt_ids(tok, text, "chat") and prompt_ids(word_tokenizer(), text, "completion")


def test_the_rag_prompt_follows_the_template():
    hits = [Hit(path="a.txt", number=0, text="Try handles exceptions.", score=0.9)]
    assert answer_prompt("What handles exceptions?", hits).endswith("Question: What handles exceptions?\nAnswer:")
    stuff = answer_prompt("What handles exceptions?", hits, preset("langchain-stuff"))
    assert stuff.startswith("Use the following pieces of context") and stuff.endswith("\nHelpful Answer:")


# --------------------------------------------------------------------------- the strict reader

@pytest.mark.parametrize("change, message", [
    ({"colour": "red"}, "unknown field 'colour'"),
    ({"document": None}, "field 'document' must be a string"),
    ({"document": "[{index}] {title}"}, "field 'document' must hold {text}"),
    ({"document": "{text} ({source})"}, "field 'document' has unknown placeholder {source} (allowed: {index}, "
                                        "{title}, {text})"),
    ({"document": "{text!r}"}, "field 'document': placeholder {text} may not have a conversion"),
    ({"document": "{text"}, "field 'document' is not a valid template"),
    ({"instruction": "Answer {question}."}, "field 'instruction' has unknown placeholder {question} (allowed: none)"),
    ({"question": "Q: {}"}, "field 'question' has unknown placeholder {}"),
    ({"question": "Q:"}, "field 'question' must hold {question}"),
    ({"answer": "Answer"}, "field 'answer' must be one line ending in ':'"),
    ({"answer": "Answer: "}, "field 'answer' must be one line ending in ':'"),
    ({"layout": "{instruction}\n{documents}\n{answer}\n{question}"}, "field 'layout' must end with {answer}"),
    ({"layout": "{instruction}\n{documents}\n{documents}\n{question}\n{answer}"}, "holds {documents} more than once"),
    ({"layout": "{documents}\n{question}\n{answer}"}, "field 'layout' must hold {instruction}"),
    ({"name": ""}, "field 'name' must be one non-empty line"),
])
def test_a_bad_template_file_is_one_error_naming_the_field(tmp_path, change, message):
    path = tmp_path / "mine.json"
    path.write_text(json.dumps({**valid(), **change}))
    with pytest.raises(PearError) as caught:
        load_template(str(path))
    assert message in str(caught.value) and "\n" not in str(caught.value)
    assert str(caught.value).startswith(f"template {path}: ")


def test_missing_fields_unreadable_files_and_unknown_names(tmp_path):
    doc = valid()
    del doc["layout"]
    with pytest.raises(PearError, match="missing field 'layout'"):
        parse_template(doc, "t", "t")
    for text, message in (("{", "not JSON"), ("[1]", "a template is a JSON object, not list")):
        (tmp_path / "bad.json").write_text(text)
        with pytest.raises(PearError, match=message):
            load_template(str(tmp_path / "bad.json"))
    with pytest.raises(PearError, match="'nope' is neither a file nor a preset \\(presets: haystack-rag, "):
        load_template("nope")


def test_a_template_file_loads_with_its_stem_as_name_and_literal_braces(tmp_path):
    doc = {**valid(), "instruction": "Answer in {{JSON}}."}
    del doc["name"], doc["source"], doc["notes"]
    (tmp_path / "braces.json").write_text(json.dumps(doc))
    template = load_template(str(tmp_path / "braces.json"))
    assert template.name == "braces" and template.render("q?", DOCS).startswith("Answer in {JSON}.\n\n")
    assert template_hash(template) != template_hash(preset("litm-short"))
    assert template_hash(parse_template(valid(), "t", "other")) == template_hash(preset("litm-short"))  # content only


# --------------------------------------------------------------------------- families

def test_the_generic_family_is_deterministic_and_shares_no_part_with_a_preset():
    generic = load_family("generic")
    assert family_hash(generic) == family_hash(load_family("generic")) and len(generic.members) > 1000
    draws = [[generic.sample(random.Random(7)).name for _ in range(3)] for _ in range(2)]
    assert draws[0] == draws[1]
    rng_a, rng_b = random.Random(3), random.Random(3)
    assert [generic.sample(rng_a) for _ in range(20)] == [generic.sample(rng_b) for _ in range(20)]
    for name in preset_names():  # every shipped preset is held out of it already
        assert exclude(generic, [name]).members == generic.members
    for member in generic.members[:: 997]:
        text = member.render("Who?", DOCS)
        assert text.endswith(member.answer) and completion_prompt(text) == text


def test_excluding_a_template_removes_its_parts_not_just_itself(tmp_path):
    generic = load_family("generic")
    parts = family_record(generic)["parts"]
    held = {**valid(), "name": "held", "instruction": parts["instruction"][0],
            "document": parts["document"][0].replace("\n", "  \n "),  # the same header, spaced differently
            "answer": parts["answer"][0].upper()}  # and the same cue in capitals
    (tmp_path / "held.json").write_text(json.dumps(held))
    kept = exclude(generic, [str(tmp_path / "held.json")])
    assert not any(m.instruction == held["instruction"] or m.document == parts["document"][0]
                   or m.answer == parts["answer"][0] for m in kept.members)
    n = {f: len(parts[f]) for f in parts}
    assert len(kept.members) == len(generic.members) * (n["instruction"] - 1) * (n["document"] - 1) * (
        n["answer"] - 1) // (n["instruction"] * n["document"] * n["answer"])
    record = family_record(kept)
    assert record["family"] == "generic" and record["excluded"] == ["held"]
    assert record["templates"] == len(kept.members) and held["instruction"] not in record["parts"]["instruction"]
    assert set(DISTINCTIVE) <= set(record["parts"])
    litm = load_family("litm")
    assert [m.name for m in litm.members] == ["litm-plain", "litm-short"]
    with pytest.raises(PearError, match="--exclude-template litm-short leaves no template in the litm family"):
        exclude(litm, ["litm-short"])  # the other shares its document header


def test_family_files_are_read_strictly():
    parts = {f: [v] for f, v in preset("litm-short").content().items()}
    assert len(parse_family({"parts": parts}, "f", "mine").members) == 1
    for doc, message in (({"presets": ["litm-short"], "parts": parts}, "exactly one of 'presets' and 'parts'"),
                         ({"presets": ["nope"]}, "no template preset 'nope'"),
                         ({"parts": {**parts, "colour": ["red"]}}, "unknown part 'colour'"),
                         ({"parts": {**parts, "document": ["{title}"]}}, "part 'document': field 'document' must "
                                                                        "hold {text}"),
                         ({"parts": {**parts, "answer": []}}, "part 'answer' must be a non-empty list"),
                         ({"presets": ["litm-short"], "size": 3}, "unknown field 'size'")):
        with pytest.raises(PearError, match=message):
            parse_family(doc, "f", "mine")
    with pytest.raises(PearError, match="neither a file nor a shipped family \\(families: generic, litm\\)"):
        load_family("nope")


def test_the_proxy_prompts_with_one_template_a_family_or_the_default():
    assert proxy_family("langchain-rag", None, (), "litm").members == (preset("langchain-rag"),)
    assert proxy_family(None, None, (), None).members == (preset("litm-short"),)
    assert proxy_family(None, None, (), "litm").name == "litm"
    assert proxy_family(None, "generic", (), "litm").name == "generic"


def test_the_cloze_proxy_samples_the_family_and_records_it(tmp_path, monkeypatch):
    for i in range(14):
        (tmp_path / f"machine{i}.txt").write_text(
            f"The Model {i} calculator was designed by Engineer{i} Smith{i} at the Bureau{i} Works. "
            f"It was first sold in {1900 + 3 * i} and weighed {10 + i} kilograms.")
    monkeypatch.setattr(corpora, "embed_passages", lambda passages: np.eye(len(passages)))
    lm = wrap_model(tiny_model("llama").model, word_tokenizer())
    default = ClozeProxy(lm, batch=2, pool=6, corpus=str(tmp_path), num_docs=(3, 3))
    assert default.template_record["family"] == "litm" and default.describe()["templates"] == "litm"
    generic = exclude(load_family("generic"), ["litm-short"])
    proxy = ClozeProxy(lm, batch=2, pool=6, corpus=str(tmp_path), templates=generic)
    assert proxy.template_record == family_record(generic)


# --------------------------------------------------------------------------- records and warnings

def test_a_mismatch_warns_once_a_family_never():
    short, stuff = preset("litm-short"), preset("langchain-stuff")
    record = {"template": template_record(stuff)}
    assert template_mismatch(record, stuff, "m") is None
    assert template_mismatch({}, short, "m") is None and template_mismatch({"template": "x"}, short, "m") is None
    message = template_mismatch(record, short, "pear.gguf")
    assert message == ("pear.gguf: the coefficients were calibrated on the langchain-stuff template, but this run "
                       "prompts with the litm-short template; their effect was not measured for it "
                       "(--template langchain-stuff to match)")
    assert template_mismatch({"template": family_record(load_family("generic"))}, short, "m") is None
    assert template_note(family_record(exclude(load_family("litm"), []))) == "template family litm"
    assert template_note(template_record(short)) == "template litm-short"


class StandInGGUF:
    def __init__(self, calibration):
        self.metadata = {"pear.coefficients": json.dumps({"calibration": calibration})}


def test_rag_warns_when_a_patched_gguf_was_calibrated_on_another_template(capsys):
    patched = StandInGGUF({"prompt_format": "completion", "template": template_record(preset("haystack-rag"))})
    warn_format("PEAR: x.gguf", patched, "completion")
    err = capsys.readouterr().err.splitlines()
    assert len(err) == 1 and err[0].startswith("pear-edge: warning: PEAR: x.gguf: the coefficients were calibrated "
                                               "on the haystack-rag template")
    warn_format("PEAR: x.gguf", patched, "completion", preset("haystack-rag"))
    assert capsys.readouterr().err == ""


def test_calibrate_records_the_template_and_eval_warns_on_another(tmp_path, capsys):
    folder = save_tiny_llama(tmp_path / "tiny")
    word_tokenizer(CHAT).save_pretrained(folder)  # chat: answers end at the end of the turn
    out = tmp_path / "c.json"
    assert main(["-q", "calibrate", "--model", str(folder), "--proxy", "mdqa", "--template", "langchain-stuff",
                 "--num-docs", "3", "--pool", "4", "--batch", "2", "--steps", "1", "--guard", "0",
                 "-o", str(out)]) == 0
    calibration = Coefficients.load(out).calibration
    assert calibration["template"] == template_record(preset("langchain-stuff"))
    assert "template langchain-stuff)" in describe_coefficients(Coefficients.load(out))
    assert calibration["train"]["template"] == "langchain-stuff" and calibration["train"]["num_docs"] == [3, 3]
    capsys.readouterr()
    argv = ["-q", "eval", "--task", "counterfactual", "--count", "1", "--num-docs", "3", "--positions", "0",
            "--max-tokens", "2", "--model", str(folder), "--coefficients", str(out)]
    assert main(argv + ["-o", str(tmp_path / "e1")]) == 0
    warnings = [line for line in capsys.readouterr().err.splitlines() if line.startswith("pear-edge: warning:")]
    assert len(warnings) == 1 and "calibrated on the langchain-stuff template" in warnings[0]
    assert main(argv + ["--template", "langchain-stuff", "-o", str(tmp_path / "e2")]) == 0
    assert "pear-edge: warning:" not in capsys.readouterr().err
    settings = json.loads((tmp_path / "e2" / "results.json").read_text())["settings"]
    assert settings["template"]["name"] == "langchain-stuff"


# --------------------------------------------------------------------------- the command line

def test_the_flags_parse_names_files_and_ranges(tmp_path):
    (tmp_path / "mine.json").write_text(json.dumps(valid()))
    args = build_parser().parse_args(["calibrate", "--proxy", "cloze", "--template-family", "generic",
                                      "--exclude-template", "litm-short", "--exclude-template",
                                      str(tmp_path / "mine.json"), "--num-docs", "3-20", "-o", "c.json"])
    train = CalibrationSettings.from_args(args).train
    assert train.template_family == "generic" and train.num_docs == (3, 20)
    assert train.exclude_template == ("litm-short", str(tmp_path / "mine.json"))
    args = build_parser().parse_args(["calibrate", "--template", str(tmp_path / "mine.json"), "--num-docs", "5",
                                      "-o", "c.json"])
    assert CalibrationSettings.from_args(args).train.num_docs == (5, 5)
    for argv in (["eval", "--template", "litm-plain"], ["rag", "ask", "q", "--db", "i.db", "--template",
                                                        str(tmp_path / "mine.json")]):
        assert build_parser().parse_args(argv).template == argv[-1]


@pytest.mark.parametrize("argv, message", [
    (["calibrate", "--template", "nope", "-o", "c.json"], "argument --template: template 'nope' is neither"),
    (["calibrate", "--template-family", "nope", "-o", "c.json"], "argument --template-family: template family"),
    (["calibrate", "--num-docs", "5-3", "-o", "c.json"], "argument --num-docs: expected N or LO-HI"),
    (["calibrate", "--num-docs", "many", "-o", "c.json"], "argument --num-docs: expected a document count"),
    (["eval", "--template", "BAD", "--task", "kv", "-o", "out"], "argument --template: "),
    (["rag", "ask", "q", "--db", "i.db", "--template", "BAD"], "argument --template: "),
    (["rag", "calibrate", "--db", "i.db", "--template", "BAD", "-o", "c.json"], "argument --template: "),
])
def test_bad_flag_values_are_one_error_line_and_exit_2(tmp_path, capsys, argv, message):
    (tmp_path / "bad.json").write_text(json.dumps({**valid(), "document": "{txt}"}))
    bad_file = "BAD" in argv
    assert main([str(tmp_path / "bad.json") if a == "BAD" else a for a in argv]) == 2
    err = capsys.readouterr().err
    assert err.count("\n") == 1 and err.startswith("pear-edge: error: ") and message in err
    assert not bad_file or "field 'document' has unknown placeholder {txt}" in err


@pytest.mark.parametrize("overrides, message", [
    ({"template": "litm-plain"}, "--template goes with the mdqa, passage and cloze proxies"),
    ({"proxy": "cloze", "template": "litm-plain", "template_family": "generic"}, "give one or the other"),
    ({"proxy": "mdqa", "template_family": "generic"}, "--template-family and --exclude-template go with the cloze"),
    ({"proxy": "mdqa", "num_docs": (3, 9)}, "--num-docs for the mdqa proxy is one number"),
    ({"proxy": "cloze", "num_docs": (0, 4)}, "--num-docs must be N or LO-HI with 1 <= LO <= HI"),
])
def test_settings_that_do_not_fit_the_proxy_are_refused(overrides, message):
    with pytest.raises(PearError, match=message):
        with_overrides(CalibrationSettings(), overrides)


def test_rag_calibrate_calibrates_with_the_template_rag_answers_with(monkeypatch):
    seen = []
    monkeypatch.setattr("pear_edge.cli.commands.cmd_calibrate", lambda args: seen.append(args) or 0)
    parser = build_parser()
    assert rag_cli.cmd_calibrate(parser.parse_args(["rag", "calibrate", "--db", "i.db", "-o", "c.json"])) == 0
    assert seen[-1].template == "litm-short" and seen[-1].corpus == "i.db"
    rag_cli.cmd_calibrate(parser.parse_args(["rag", "calibrate", "--db", "i.db", "--template", "haystack-rag",
                                             "-o", "c.json"]))
    assert seen[-1].template == "haystack-rag"
    rag_cli.cmd_calibrate(parser.parse_args(["rag", "calibrate", "--db", "i.db", "--template-family", "generic",
                                             "-o", "c.json"]))
    assert not hasattr(seen[-1], "template") and seen[-1].template_family == "generic"
