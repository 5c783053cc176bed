"""The one timing helper (pear_edge.runtime.timing) and the timed llama.cpp answer built on it, with stand-ins."""
from __future__ import annotations

import time

import torch

from pear_edge.runtime.llamacpp import timed_answer
from pear_edge.runtime.timing import Stopwatch, Timing


def test_stopwatch_reduces_ticks_to_a_timing():
    watch = Stopwatch()
    time.sleep(0.01)
    watch.tick()
    time.sleep(0.01)
    watch.tick()
    watch.stop()
    t = watch.timing(prompt_tokens=7, output_tokens=2)
    assert 0.01 <= t.first_token_s < t.seconds
    assert (t.prompt_tokens, t.output_tokens) == (7, 2)
    assert t.describe().startswith("2 tokens in ") and "tok/s" in t.describe()
    assert Timing(0, 0, 0.0, 0.0).tokens_per_second() == 0.0
    empty = Stopwatch()
    empty.stop()
    assert empty.first_token_s == empty.seconds  # nothing produced: the whole run


def test_logits_processor_ticks_once_per_decoding_step():
    watch = Stopwatch()
    processors = watch.logits_processor()
    scores = torch.zeros(1, 5)
    for _ in range(3):
        assert torch.equal(processors(torch.zeros(1, 2, dtype=torch.long), scores), scores)
    assert len(watch.ticks) == 3


class StandInLlama:
    """What timed_answer needs of llama_cpp.Llama: a streamed chat completion or plain completion (the request
    is kept), tokenize, n_tokens."""

    n_tokens = 12

    def __init__(self):
        self.requests = []

    def create_chat_completion(self, messages, max_tokens, temperature, top_k, stream):
        self.requests.append(("chat", messages))
        for piece in (" Par", "is ", None):
            yield {"choices": [{"delta": {"content": piece} if piece else {}}]}

    def create_completion(self, prompt, max_tokens, temperature, top_k, stop, stream):
        self.requests.append(("completion", prompt, stop))
        for piece in (" Par", "is ", ""):
            yield {"choices": [{"text": piece}]}

    def tokenize(self, data: bytes, add_bos: bool, special: bool) -> list[int]:
        return list(range(len(data.split())))


def test_timed_answer_strips_the_answer_and_counts_prompt_and_output_tokens():
    seen, llm = [], StandInLlama()
    text, timing = timed_answer(llm, "capital?", "chat", 8, on_piece=seen.append)
    assert text == "Paris" and seen == [" Par", "is "]
    assert llm.requests == [("chat", [{"role": "user", "content": "capital?"}])]
    assert (timing.prompt_tokens, timing.output_tokens) == (11, 1)  # one "word" answered, 12 evaluated
    text, _ = timed_answer(StandInLlama(), "", "chat", 8, deadline=time.monotonic() - 1)  # stops after one piece
    assert text == "Par"


def test_timed_answer_in_the_completion_format_sends_the_plain_prompt_with_a_newline_stop():
    llm = StandInLlama()
    text, timing = timed_answer(llm, "Question: capital?\nAnswer:", "completion", 8)
    assert text == "Paris" and timing.output_tokens == 1
    assert llm.requests == [("completion", "Question: capital?\nAnswer:", ["\n"])]
    timed_answer(llm, "Name a colour.", "completion", 8)  # text without a cue gets "Answer:"
    assert llm.requests[-1][1] == "Name a colour.\nAnswer:"
