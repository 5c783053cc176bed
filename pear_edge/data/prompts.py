"""Prompt builders shared by the eval harness, the RAG demo and the RAG-shaped proxies, so all ask the model
the same way (a multi-document QA template, pear_edge.data.templates), and the one notion of prompt format (chat
template or plain completion) that turns their text into what a model reads."""
from __future__ import annotations

from typing import Sequence

from pear_edge.base.errors import PearError
from pear_edge.data.templates import DEFAULT_TEMPLATE, Document, Template, preset


def mdqa_prompt(question: str, documents: Sequence[Document], template: Template | None = None) -> str:
    """The multi-document QA prompt text: `template` (default: the default preset, lost-in-the-middle's)."""
    return (template or preset(DEFAULT_TEMPLATE)).render(question, documents)


def user_messages(prompt: str) -> list[dict[str, str]]:
    return [{"role": "user", "content": prompt}]


KV_INSTRUCTION = "Extract the value corresponding to the specified key in the JSON object below."


def kv_prompt(pairs: Sequence[tuple[str, str]], key: str) -> str:
    """Lost-in-the-middle key-value retrieval prompt: a JSON object, then the key to look up."""
    import json

    body = "{" + ", ".join(f"{json.dumps(k)}: {json.dumps(v)}" for k, v in pairs) + "}"
    return f"{KV_INSTRUCTION}\n\nJSON data:\n{body}\n\nKey: {json.dumps(key)}\nCorresponding value:"


# Prompt formats: how the user text (instruction, documents, question) reaches the model.
#   chat        one user message in the model's own chat template, generation prompt added (instruct models);
#   completion  no template: the text itself, ending in an answer cue, for base models without a template.
#               The answer follows the cue after ANSWER_SEPARATOR and ends at the first COMPLETION_STOPS
#               string (or end of sequence).
# "auto" picks chat when the model has a chat template (HF tokenizer, GGUF `tokenizer.chat_template`).
CHAT, COMPLETION, AUTO = "chat", "completion", "auto"
PROMPT_FORMATS = (CHAT, COMPLETION)
FORMAT_CHOICES = (AUTO, *PROMPT_FORMATS)
ANSWER_CUE = "Answer:"
ANSWER_SEPARATOR = " "
COMPLETION_STOPS = ("\n",)
GGUF_CHAT_TEMPLATE = "tokenizer.chat_template"
PROMPT_FORMAT_KEY = "prompt_format"  # coefficients: calibration.prompt_format, the format the proxy prompted in


def completion_prompt(text: str) -> str:
    """`text` as a plain completion prompt that ends in a cue. The prompts built here end in one already
    (a template's answer cue, which ends in ':'; kv_prompt: "Corresponding value:"); any other text gets
    "\\nAnswer:"."""
    body = text.rstrip()
    return body if body.endswith(":") else f"{body}\n{ANSWER_CUE}"


def end_answer(output: str, prompt_format: str) -> str:
    """A generated continuation as the answer: completion answers end at the first stop string; stripped."""
    if prompt_format == COMPLETION:
        for stop in COMPLETION_STOPS:
            output = output.split(stop, 1)[0]
    return output.strip()


def choose_format(requested: str, has_template: bool, what: str) -> str:
    """The prompt format to use: `requested` (auto | chat | completion), auto meaning chat exactly when the
    model has a chat template. Chat without a template is refused (PearError)."""
    if requested not in FORMAT_CHOICES:
        raise PearError(f"prompt format must be one of {', '.join(FORMAT_CHOICES)}, not {requested!r}")
    if requested == AUTO:
        return CHAT if has_template else COMPLETION
    if requested == CHAT and not has_template:
        raise PearError(f"{what} has no chat template; use --prompt-format completion (or auto)")
    return requested


def tokenizer_format(tokenizer, requested: str = AUTO, what: str = "the model") -> str:
    """choose_format for a Hugging Face tokenizer (its `chat_template`)."""
    return choose_format(requested, bool(getattr(tokenizer, "chat_template", None)), what)


def gguf_format(metadata: dict | None, requested: str = AUTO, what: str = "the GGUF") -> str:
    """choose_format for a GGUF, from its metadata (llama_cpp.Llama.metadata: `tokenizer.chat_template`)."""
    return choose_format(requested, bool((metadata or {}).get(GGUF_CHAT_TEMPLATE)), what)


def prompt_ids(tokenizer, text: str, prompt_format: str) -> list[int]:
    """Token ids of the prompt for `text`, up to where the answer starts. chat: the template rendered with
    the generation prompt, then tokenized without added special tokens (what apply_chat_template does);
    completion: completion_prompt(text) tokenized with the tokenizer's own special tokens (a BOS where the
    model wants one, as llama.cpp adds it)."""
    if prompt_format == CHAT:
        rendered = tokenizer.apply_chat_template(user_messages(text), add_generation_prompt=True, tokenize=False)
        return tokenizer(rendered, add_special_tokens=False)["input_ids"]
    ids = tokenizer(completion_prompt(text))["input_ids"]
    eos = getattr(tokenizer, "eos_token_id", None)
    return ids[:-1] if ids and eos is not None and ids[-1] == eos else ids  # a post-processor's EOS ends nothing


def answer_ids(tokenizer, answer: str, prompt_format: str) -> list[int]:
    """Token ids of a target answer as it follows the prompt: as is after a chat turn opens, after
    ANSWER_SEPARATOR in a completion (a base model continues "Answer:" with " Paris")."""
    text = answer if prompt_format == CHAT else ANSWER_SEPARATOR + answer
    return tokenizer(text, add_special_tokens=False)["input_ids"]


def recorded_format(calibration) -> str | None:
    """The prompt format a coefficients file's calibration record names (None: not recorded, e.g. the copy
    proxy, which has no prompt, or files written before formats existed)."""
    value = calibration.get(PROMPT_FORMAT_KEY) if isinstance(calibration, dict) else None
    return value if value in PROMPT_FORMATS else None


def format_mismatch(calibration, used: str, what: str) -> str | None:
    """A warning (without the `pear-edge: warning:` prefix) when coefficients were calibrated with prompts in
    another format than the one about to be used, else None."""
    recorded = recorded_format(calibration)
    if recorded is None or recorded == used:
        return None
    return (f"{what}: the coefficients were calibrated on {recorded} prompts, but this run prompts in the {used} "
            f"format; their effect was not measured for it (--prompt-format {recorded} to match)")
