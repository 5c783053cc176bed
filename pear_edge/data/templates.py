"""Prompt templates as data: how one multi-document QA prompt is laid out (instruction, each document's
header, the separators, the question and its answer cue), read from a JSON file or a shipped preset
(`prompt_templates/*.json`), checked strictly, rendered to the text a prompt format (chat or completion)
turns into what the model reads, and recorded in a coefficients file so a run on another template warns.

A template file is one JSON object with exactly these fields (each a Python format string: literal braces
are written `{{` and `}}`; only the placeholders named below may appear):

    instruction         the task instruction ("" for none)
    document            one document: must hold {text}, may hold {index} (1-based) and {title}
    document_separator  between two documents
    question            must hold {question}
    answer              the answer cue: one line ending in ':' (a completion prompt ends in it)
    layout              the blocks in order with their separators: {instruction}, {documents}, {question}
                        and {answer} once each, ending in {answer}
    name, source, notes optional: what it is called (default: the file's stem), where it came from, how the
                        text was adapted
"""
from __future__ import annotations

import hashlib
import json
import string
from dataclasses import dataclass
from functools import lru_cache
from pathlib import Path
from typing import Any, Sequence

from pear_edge.base.errors import PearError
from pear_edge.base.inputs import read_text

PRESETS_DIR = Path(__file__).resolve().parent / "prompt_templates"
DEFAULT_TEMPLATE = "litm-short"  # lost-in-the-middle's prompt: what eval, rag and the mdqa proxies use
TEMPLATE_KEY = "template"  # coefficients: calibration.template, the template (or family) the proxy prompted with
MAX_TEMPLATE_BYTES = 1 << 20


@dataclass(frozen=True)
class Document:
    title: str
    text: str


# field -> (placeholders it must hold, placeholders it may hold); the content a template hash covers.
CONTENT_FIELDS: dict[str, tuple[tuple[str, ...], tuple[str, ...]]] = {
    "instruction": ((), ()),
    "document": (("text",), ("index", "title", "text")),
    "document_separator": ((), ()),
    "question": (("question",), ("question",)),
    "answer": ((), ()),
    "layout": (("instruction", "documents", "question", "answer"), ("instruction", "documents", "question", "answer")),
}
META_FIELDS = ("name", "source", "notes")


@dataclass(frozen=True)
class Template:
    """One multi-document QA prompt layout (see the module docstring); build it with parse_template."""
    name: str
    instruction: str
    document: str
    document_separator: str
    question: str
    answer: str
    layout: str
    source: str = ""
    notes: str = ""

    def render(self, question: str, documents: Sequence[Document]) -> str:
        """The prompt text for `question` over `documents`, ending in the answer cue."""
        docs = literal(self.document_separator).join(
            self.document.format(index=i, title=d.title, text=d.text) for i, d in enumerate(documents, 1))
        return self.layout.format(instruction=literal(self.instruction), documents=docs,
                                  question=self.question.format(question=question), answer=literal(self.answer))

    def content(self) -> dict[str, str]:
        return {name: getattr(self, name) for name in CONTENT_FIELDS}


def literal(text: str) -> str:
    """A placeholder-free format string as the text it stands for (`{{` -> `{`)."""
    return text.format()


def template_hash(template: Template) -> str:
    """sha256 of the template's content fields (not its name, source or notes)."""
    return hashlib.sha256(json.dumps(template.content(), sort_keys=True).encode("utf-8")).hexdigest()


# --------------------------------------------------------------------------- the strict reader

def placeholders(field: str, value: str, where: str) -> list[str]:
    """The placeholder names in `value` (field `field` of `where`), refusing broken braces, positional `{}`,
    conversions and format specs."""
    try:
        parsed = list(string.Formatter().parse(value))
    except ValueError as exc:
        raise PearError(f"{where}: field {field!r} is not a valid template ({exc}); write a literal brace as "
                        f"{{{{ or }}}}") from None
    names = []
    for _, name, spec, conversion in parsed:
        if name is None:
            continue
        if spec or conversion:
            raise PearError(f"{where}: field {field!r}: placeholder {{{name}}} may not have a conversion or "
                            f"format spec")
        names.append(name)
    return names


def check_field(field: str, value: Any, where: str) -> str:
    """`value` as field `field` of a template, or one PearError naming the field."""
    if not isinstance(value, str):
        raise PearError(f"{where}: field {field!r} must be a string, not {type(value).__name__}")
    if field in META_FIELDS:
        return value
    required, allowed = CONTENT_FIELDS[field]
    names = placeholders(field, value, where)
    unknown = [n for n in names if n not in allowed]
    if unknown:
        may = ", ".join(f"{{{a}}}" for a in allowed) or "none"
        raise PearError(f"{where}: field {field!r} has unknown placeholder {{{unknown[0]}}} (allowed: {may})")
    missing = [r for r in required if r not in names]
    if missing:
        raise PearError(f"{where}: field {field!r} must hold {{{missing[0]}}}")
    if field == "layout":
        twice = [n for n in allowed if names.count(n) > 1]
        if twice:
            raise PearError(f"{where}: field 'layout' holds {{{twice[0]}}} more than once")
        if not value.endswith("{answer}"):
            raise PearError(f"{where}: field 'layout' must end with {{answer}}: the answer cue comes last")
    if field == "answer" and (not value.endswith(":") or value != value.strip() or "\n" in value):
        raise PearError(f"{where}: field 'answer' must be one line ending in ':' without surrounding spaces "
                        f"(the cue a completion prompt ends in), not {value!r}")
    return value


def parse_template(doc: Any, where: str, default_name: str) -> Template:
    """A template from its JSON object, checked field by field: unknown and missing fields, wrong types,
    unknown or missing placeholders each give one PearError naming the field."""
    if not isinstance(doc, dict):
        raise PearError(f"{where}: a template is a JSON object, not {type(doc).__name__}")
    unknown = sorted(set(doc) - set(CONTENT_FIELDS) - set(META_FIELDS))
    if unknown:
        raise PearError(f"{where}: unknown field {unknown[0]!r} (fields: {', '.join([*CONTENT_FIELDS, *META_FIELDS])})")
    missing = [f for f in CONTENT_FIELDS if f not in doc]
    if missing:
        raise PearError(f"{where}: missing field {missing[0]!r}")
    values = {f: check_field(f, v, where) for f, v in doc.items()}
    name = values.pop("name", default_name)
    if not name.strip() or "\n" in name:
        raise PearError(f"{where}: field 'name' must be one non-empty line")
    return Template(name=name, **values)


def read_json(path: Path, what: str) -> Any:
    text = read_text(path, what, MAX_TEMPLATE_BYTES)
    try:
        return json.loads(text)
    except json.JSONDecodeError as exc:
        raise PearError(f"{what} {path}: not JSON ({exc.msg}, line {exc.lineno})") from None
    except RecursionError:
        raise PearError(f"{what} {path}: nested too deeply to read") from None


def preset_names() -> list[str]:
    return sorted(p.stem for p in PRESETS_DIR.glob("*.json"))


@lru_cache(maxsize=None)
def preset(name: str) -> Template:
    """A shipped template by name (prompt_templates/NAME.json)."""
    if name not in preset_names():
        raise PearError(f"no template preset {name!r}; presets: {', '.join(preset_names())}")
    path = PRESETS_DIR / f"{name}.json"
    return parse_template(read_json(path, "template"), f"template {path.name}", name)


def load_template(spec: str) -> Template:
    """`--template FILE|NAME`: a template JSON file, or a shipped preset when no file of that name exists."""
    path = Path(spec)
    if path.exists():
        return parse_template(read_json(path, "template"), f"template {spec}", path.stem)
    if spec in preset_names():
        return preset(spec)
    raise PearError(f"template {spec!r} is neither a file nor a preset (presets: {', '.join(preset_names())})")


def resolve_template(spec: str | None) -> Template:
    """load_template, with None meaning the default template."""
    return load_template(spec) if spec else preset(DEFAULT_TEMPLATE)


# --------------------------------------------------------------------------- the calibration record

def template_record(template: Template) -> dict:
    """calibration.template for coefficients calibrated on one template: its name, hash and content."""
    return {"name": template.name, "sha256": template_hash(template), **template.content()}


def recorded_template(calibration) -> dict | None:
    """The template record of a coefficients file's calibration (None: not recorded, e.g. the copy proxy
    or files written before templates were recorded)."""
    value = calibration.get(TEMPLATE_KEY) if isinstance(calibration, dict) else None
    return value if isinstance(value, dict) and isinstance(value.get("name"), str) else None


def template_mismatch(calibration, used: Template, what: str) -> str | None:
    """A warning (without the `pear-edge: warning:` prefix) when coefficients were calibrated on one template
    and this run prompts with another, else None. A family (the generic proxy) never mismatches: running on
    templates outside it is what it is for."""
    recorded = recorded_template(calibration)
    if recorded is None or "family" in recorded or recorded.get("sha256") == template_hash(used):
        return None
    name = recorded["name"]
    hint = f"--template {name}" if name in preset_names() else "the same --template"
    return (f"{what}: the coefficients were calibrated on the {name} template, but this run prompts with the "
            f"{used.name} template; their effect was not measured for it ({hint} to match)")
