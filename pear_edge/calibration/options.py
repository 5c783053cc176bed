"""Calibration settings as command-line options: one help table, flags generated from it.

Each row names a field of `CalibrationSettings` or `TrainSettings`; the flag is the field name with dashes
(`top_k` -> `--top-k`), its type comes from the table, its default from the model's profile (a flag not
given leaves the profile's value). `calibrate.with_overrides` applies what was given, the same way for the
CLI, the variants files and the Python API.
"""
from __future__ import annotations

import argparse
from dataclasses import dataclass

from pear_edge.base.errors import PearError
from pear_edge.data.prompts import FORMAT_CHOICES
from pear_edge.data.template_family import family_names, load_family
from pear_edge.data.templates import load_template, preset_names
from pear_edge.calibration.recipes import BUDGETS, RECIPES, budget_help, recipe_help
from pear_edge.data.textqa import GOLD_SLOTS


def on_off(text: str) -> bool:
    """'on' / 'off' (also yes/no, true/false, 1/0) -> bool: the one parser of switches given a value."""
    value = {"on": True, "yes": True, "true": True, "1": True, "off": False, "no": False, "false": False, "0": False}
    if text.lower() not in value:
        raise argparse.ArgumentTypeError(f"expected on or off, got {text!r}")
    return value[text.lower()]


def int_list(text: str) -> tuple[int, ...]:
    """'15,25,50' -> (15, 25, 50): the one parser of integer lists on the command line."""
    try:
        return tuple(int(x) for x in text.split(",") if x.strip())
    except ValueError:
        raise argparse.ArgumentTypeError(f"expected comma-separated integers, got {text!r}") from None


def float_list(text: str) -> tuple[float, ...]:
    """'0.5,0,-0.5' -> (0.5, 0.0, -0.5): the one parser of number lists on the command line."""
    try:
        return tuple(float(x) for x in text.split(",") if x.strip())
    except ValueError:
        raise argparse.ArgumentTypeError(f"expected comma-separated numbers, got {text!r}") from None


def range_list(text: str) -> tuple[tuple[int, int], ...]:
    """'10-25,0-29' -> ((10, 25), (0, 29)): inclusive layer ranges FIRST-LAST (a single N means N-N)."""
    out = []
    for part in (p.strip() for p in text.split(",")):
        if not part:
            continue
        first, _, last = part.partition("-")
        try:
            out.append((int(first), int(last or first)))
        except ValueError:
            raise argparse.ArgumentTypeError(f"expected comma-separated layer ranges FIRST-LAST, "
                                             f"got {text!r}") from None
    return tuple(out)


def doc_range(text: str) -> tuple[int, int]:
    """'5' -> (5, 5), '3-20' -> (3, 20): documents per prompt, one count or an inclusive range LO-HI."""
    first, _, last = text.strip().partition("-")
    try:
        low, high = int(first), int(last or first)
    except ValueError:
        raise argparse.ArgumentTypeError(f"expected a document count N or a range LO-HI, got {text!r}") from None
    if not 1 <= low <= high:
        raise argparse.ArgumentTypeError(f"expected N or LO-HI with 1 <= LO <= HI, got {text!r}")
    return low, high


def template_spec(text: str) -> str:
    """A `--template FILE|NAME` that loads (pear_edge.data.templates), kept as given: the one parser of templates
    on the command line."""
    try:
        load_template(text)
    except PearError as exc:
        raise argparse.ArgumentTypeError(str(exc)) from None
    return text


def family_spec(text: str) -> str:
    """A `--template-family NAME|FILE` that loads (pear_edge.data.template_family), kept as given."""
    try:
        load_family(text)
    except PearError as exc:
        raise argparse.ArgumentTypeError(str(exc)) from None
    return text


@dataclass(frozen=True)
class Option:
    field: str
    group: str  # recipe | proxy | detection | training
    help: str
    type: type | None = None
    choices: tuple[str, ...] | None = None
    short: str | None = None
    alias: str | None = None  # a second long flag
    action: str | None = None  # "append": a repeatable flag, its values a list

    @property
    def flag(self) -> str:
        return "--" + self.field.replace("_", "-")


OPTIONS: tuple[Option, ...] = (
    Option("recipe", "recipe", "which foldable edits to make: " + recipe_help(), choices=tuple(RECIPES)),
    Option("positional_channel", "recipe", "positional recipes: scale this hidden channel (default: detect it)", int),
    Option("positional_candidates", "recipe", "positional recipes: detected channels to try", int),
    Option("positional_scales", "recipe", "positional recipes: scales to try, e.g. 0.5,0,-0.5,-1 (a list that "
           "starts with a minus: --positional-scales=-1,-0.5)", float_list),
    Option("positional_layers", "recipe", "positional recipes: layer ranges to try, e.g. 10-25,0-29 (default: all "
           "layers, the middle-to-late block, the second half)", range_list),
    Option("positional_length", "recipe", "positional recipes: tokens per random sequence for detection", int),
    Option("positional_validation", "recipe", "positional recipes: score the candidates by answer loss on this "
           "MDQA JSONL (`pear-edge eval make-data --half validation`) instead of held-out proxy batches", str),
    Option("proxy", "proxy", "proxy task: copy = random tokens repeated (paper); mdqa = multi-document QA about "
           "invented facts, loss on the answer; passage = the same prompts, loss on copying the gold passage; "
           "cloze = questions generated from real text (--corpus) with topical distractors, loss on the answer "
           "(used by --method gradient and by training)", choices=("copy", "mdqa", "passage", "cloze")),
    Option("corpus", "proxy", "cloze proxy text (implies --proxy cloze): 'builtin' (FOLDOC + Jargon File, "
           "installed by setup), a folder of .txt/.md documents, or a `pear-edge rag index` .db: calibrate on "
           "your own material", str),
    Option("prompt_format", "proxy", "how the mdqa/passage/cloze proxies prompt the model: chat = its chat "
           "template; completion = the plain text ending in its answer cue (base models); auto = chat when the "
           "model has a chat template, else completion (recorded in the coefficients as "
           "calibration.prompt_format)", choices=FORMAT_CHOICES),
    Option("template", "proxy", "mdqa/passage/cloze proxies: prompt with this template, a JSON file or a preset ("
           + ", ".join(preset_names()) + "; docs/calibration.md \"Templates\"); recorded in the coefficients, and "
           "eval and rag warn when they prompt with another", template_spec),
    Option("template_family", "proxy", "cloze proxy: sample each prompt's template from this family (" +
           ", ".join(family_names()) + ", or a family JSON file; default: litm, lost-in-the-middle's two wordings)",
           family_spec),
    Option("exclude_template", "proxy", "cloze proxy: hold this template (file or preset) out of the family: "
           "every family template sharing its instruction, document header or cues is dropped (repeatable)",
           template_spec, action="append"),
    Option("num_docs", "proxy", "documents per proxy prompt: N, or a range LO-HI sampled per prompt (cloze; "
           "default: 3-10, mdqa/passage: 10)", doc_range),
    Option("gold", "proxy", "cloze proxy: where the gold document goes: uniform over the slots, or middle = "
           "never the first or the last of 3+ documents", choices=GOLD_SLOTS),
    Option("method", "detection", "exact mean-ablation (paper), one-pass attribution of it (fast, for large "
           "models), or the gradient of the proxy loss with respect to each head's scale",
           choices=("exact", "attribution", "gradient")),
    Option("gradient_batches", "detection", "proxy batches averaged by --method gradient when heads are "
           "selected (-k > 0 or --max-per-layer); with every head trained the first training step scores them",
           int),
    Option("lengths", "detection", "copy-proxy lengths n to average over, e.g. 15,25,50", int_list),
    Option("positions", "detection", "ablate at the last predicting position (paper) or at every copy position",
           choices=("last", "copy")),
    Option("detect_batch", "detection", "sequences per length", int),
    Option("top_k", "training", "number of heads to train (0 = all)", int, short="-k"),
    Option("select", "training", "train the top-K by score (suppressors, paper) or by |score| (also heads to "
           "strengthen)", choices=("score", "abs")),
    Option("max_per_layer", "training", "cap on heads per layer", int),
    Option("budget", "training", "how much training: " + budget_help() + " (default: full; their "
           "measured cost in gain: docs/results.md); flags given beside it win", choices=tuple(BUDGETS)),
    Option("steps", "training", "optimizer steps", int),
    Option("batch", "training", "sequences per step", int),
    Option("n", "training", "copy-proxy length for training (under torchrun write --copy-length: torchrun reads "
           "--n as an abbreviation of its own options)", int, alias="--copy-length"),
    Option("lr", "training", "AdamW learning rate", float),
    Option("constraint", "training", "none = paper; le1 = only weaken; unit = clamp to [0, 1]",
           choices=("none", "le1", "unit")),
    Option("pull", "training", "L2 pull of the coefficients towards 1 (0 = off)", float),
    Option("guard", "training", "weight of the language-model loss on natural text, a leash on perplexity "
           "(0 = off)", float),
    Option("guard_batch", "training", "natural-text windows (256 tokens each) the guard reads per step", int),
    Option("micro_batch", "training", "backpropagate this many prompts at a time (0 = the whole batch): the "
           "same gradient with one micro-batch's activation memory", int),
    Option("checkpoint", "training", "on = recompute each decoder layer in the backward pass: activation "
           "memory of one layer instead of all, about one more forward of time", on_off),
    Option("pool", "training", "training prompts the mdqa/passage/cloze proxies draw from", int),
)
GROUP_TITLES = {"recipe": "recipe", "proxy": "proxy task", "detection": "detection", "training": "training"}


def add_options(p: argparse.ArgumentParser, groups: tuple[str, ...], skip: tuple[str, ...] = ()) -> None:
    """Flags for the OPTIONS of `groups`; an option not given is absent from the namespace (profile wins)."""
    for group in groups:
        g = p.add_argument_group(GROUP_TITLES[group], "defaults: the model's calibration profile "
                                                      "(pear-edge profiles)")
        for o in OPTIONS:
            if o.group != group or o.field in skip:
                continue
            flags = tuple(f for f in (o.short, o.flag, o.alias) if f)
            g.add_argument(*flags, dest=o.field, type=o.type, choices=o.choices, default=argparse.SUPPRESS,
                           action=o.action, help=o.help.replace("%", "%%"))  # argparse %-formats help; texts are data


def given(args: argparse.Namespace) -> dict:
    """The OPTIONS fields given on the command line."""
    return {o.field: getattr(args, o.field) for o in OPTIONS if hasattr(args, o.field)}
