"""Template families: the templates a proxy samples from, one per example, so coefficients do not hang on one
prompt. A family file (`prompt_templates/families/NAME.json`, or any JSON file) is either

    {"name": ..., "presets": [preset names]}          exactly those templates, in that order; or
    {"name": ..., "parts": {field: [values], ...}}     every combination of the parts, one list per content
                                                       field of a template (pear_edge.data.templates)

and `exclude` holds templates out of it (leave-one-template-out): every member that shares a distinctive
part with an excluded template (its instruction, document header, question or answer cue; compared without
case and spacing) is dropped, not just the exact template.
"""
from __future__ import annotations

import hashlib
import itertools
import json
import random
from dataclasses import dataclass
from pathlib import Path
from typing import Any, Sequence

from pear_edge.base.errors import PearError
from pear_edge.data.templates import (CONTENT_FIELDS, PRESETS_DIR, Template, check_field, load_template, preset,
                                      read_json, resolve_template, template_hash, template_record)

FAMILIES_DIR = PRESETS_DIR / "families"
DEFAULT_FAMILY = "litm"  # what the cloze proxy samples from when given no --template or --template-family
DISTINCTIVE = ("instruction", "document", "question", "answer")  # what holding a template out removes
MAX_MEMBERS = 100_000


@dataclass(frozen=True)
class Family:
    """Templates sampled one per example. `name` None: a single template (`--template`), recorded as it."""
    name: str | None
    members: tuple[Template, ...]
    excluded: tuple[str, ...] = ()

    def sample(self, rng: random.Random) -> Template:
        return rng.choice(self.members)


def single(template: Template) -> Family:
    return Family(None, (template,))


def family_names() -> list[str]:
    return sorted(p.stem for p in FAMILIES_DIR.glob("*.json"))


def composed(name: str, parts: dict[str, list[str]]) -> tuple[Template, ...]:
    """Every combination of `parts` in field order, named NAME#i."""
    lists = [parts[f] for f in CONTENT_FIELDS]
    return tuple(Template(name=f"{name}#{i}", **dict(zip(CONTENT_FIELDS, values)))
                 for i, values in enumerate(itertools.product(*lists)))


def parse_family(doc: Any, where: str, default_name: str) -> Family:
    """A family from its JSON object, strictly: one PearError naming the field at fault."""
    if not isinstance(doc, dict):
        raise PearError(f"{where}: a template family is a JSON object, not {type(doc).__name__}")
    unknown = sorted(set(doc) - {"name", "source", "notes", "presets", "parts"})
    if unknown:
        raise PearError(f"{where}: unknown field {unknown[0]!r} (fields: name, source, notes, presets or parts)")
    if ("presets" in doc) == ("parts" in doc):
        raise PearError(f"{where}: give exactly one of 'presets' and 'parts'")
    name = doc.get("name", default_name)
    if not isinstance(name, str) or not name.strip() or "\n" in name:
        raise PearError(f"{where}: field 'name' must be one non-empty line")
    if "presets" in doc:
        names = doc["presets"]
        if not isinstance(names, list) or not names or not all(isinstance(n, str) for n in names):
            raise PearError(f"{where}: field 'presets' must be a non-empty list of preset names")
        return Family(name, tuple(preset(n) for n in names))
    parts = doc["parts"]
    if not isinstance(parts, dict):
        raise PearError(f"{where}: field 'parts' must be an object {{field: [values]}}")
    unknown = sorted(set(parts) - set(CONTENT_FIELDS))
    missing = [f for f in CONTENT_FIELDS if f not in parts]
    if unknown or missing:
        bad = f"unknown part {unknown[0]!r}" if unknown else f"missing part {missing[0]!r}"
        raise PearError(f"{where}: field 'parts': {bad} (parts: {', '.join(CONTENT_FIELDS)})")
    for field, values in parts.items():
        if not isinstance(values, list) or not values:
            raise PearError(f"{where}: part {field!r} must be a non-empty list")
        for value in values:
            check_field(field, value, f"{where}: part {field!r}")
    size = 1
    for values in parts.values():
        size *= len(values)
    if size > MAX_MEMBERS:
        raise PearError(f"{where}: {size} combinations of parts; at most {MAX_MEMBERS}")
    return Family(name, composed(name, parts))


def load_family(spec: str) -> Family:
    """`--template-family NAME|FILE`: a family JSON file, or a shipped family when no file of that name exists."""
    path = Path(spec)
    if path.exists():
        return parse_family(read_json(path, "template family"), f"template family {spec}", path.stem)
    if spec in family_names():
        path = FAMILIES_DIR / f"{spec}.json"
        return parse_family(read_json(path, "template family"), f"template family {path.name}", spec)
    raise PearError(f"template family {spec!r} is neither a file nor a shipped family "
                    f"(families: {', '.join(family_names())})")


def normal(text: str) -> str:
    return " ".join(text.split()).casefold()


def held_out_parts(templates: Sequence[Template]) -> dict[str, set[str]]:
    """{field: normalised values} of the distinctive parts of `templates` (empty parts are not distinctive)."""
    return {f: {normal(getattr(t, f)) for t in templates if normal(getattr(t, f))} for f in DISTINCTIVE}


def shares_a_part(template: Template, parts: dict[str, set[str]]) -> bool:
    return any(normal(getattr(template, f)) in parts[f] for f in DISTINCTIVE)


def exclude(family: Family, specs: Sequence[str]) -> Family:
    """`family` without every member that shares a distinctive part with the templates `specs` (names or files)."""
    if not specs:
        return family
    held = [load_template(s) for s in specs]
    parts = held_out_parts(held)
    kept = tuple(t for t in family.members if not shares_a_part(t, parts))
    names = tuple(t.name for t in held)
    if not kept:
        raise PearError(f"--exclude-template {', '.join(names)} leaves no template in the {family.name} family")
    return Family(family.name, kept, family.excluded + names)


def family_hash(family: Family) -> str:
    return hashlib.sha256(json.dumps([template_hash(t) for t in family.members]).encode("utf-8")).hexdigest()


def family_record(family: Family) -> dict:
    """calibration.template: one template's record (template_record), or for a family its name, what was held
    out, how many templates it held and each field's distinct values: which templates were in it."""
    if family.name is None:
        return template_record(family.members[0])
    parts = {f: sorted({getattr(t, f) for t in family.members}) for f in CONTENT_FIELDS}
    return {"family": family.name, "name": family.name, "excluded": list(family.excluded),
            "templates": len(family.members), "sha256": family_hash(family), "parts": parts}


def proxy_family(template: str | None, family: str | None, excluded: Sequence[str], default: str | None) -> Family:
    """What a proxy prompts with: `template` alone (a file or preset), else `family` (or `default`) without
    the `excluded` templates' parts, else the default template."""
    if template or not (family or default):
        return single(resolve_template(template))
    return exclude(load_family(family or default), excluded)
