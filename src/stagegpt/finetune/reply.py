"""A reply to a prompt under a template: streamed as text, stopped at the end marker."""

from __future__ import annotations

from collections.abc import Iterator
from contextlib import closing

import torch

from stagegpt.finetune.templates import ReplyEnd, Template
from stagegpt.generation import stream
from stagegpt.model import LanguageModel


def stream_reply(model: LanguageModel, tokenizer, template: Template, prompt_ids: list[int],
                 max_new_tokens: int, temperature: float = 0.0, top_k: int | None = None,
                 top_p: float | None = None, seed: int | None = None) -> Iterator[str]:
    """Yield the reply's text as it is sampled, without the end marker. A prompt longer
    than the context keeps its last block_size tokens (the oldest turns go first)."""
    ids = prompt_ids[-model.config.block_size:]
    stop_ids = () if template.end_id is None else (template.end_id,)
    text, end = tokenizer.stream_decoder(), ReplyEnd(template)
    columns = stream(model, torch.tensor([ids]), max_new_tokens, temperature, top_k, top_p,
                     seed, stop_ids)
    with closing(columns):
        for column in columns:
            token = int(column[0, 0])
            if token in stop_ids:
                break
            shown = end.push(text.push([token]))
            if shown:
                yield shown
            if end.done:
                return
    tail = end.push(text.flush())
    if not end.done:
        tail += end.flush()
    if tail:
        yield tail


def reply(model: LanguageModel, tokenizer, template: Template, prompt_ids: list[int],
          max_new_tokens: int) -> str:
    """The greedy reply, as one string."""
    return "".join(stream_reply(model, tokenizer, template, prompt_ids, max_new_tokens))
