"""The playground's model work, as iterators of events the worker runs one step at a time.

    generation_events  "prompt" (the prompt's tokens), then one "token" per sampled token:
                       its text, id, probability and the top-5 alternatives, all read from
                       the distribution the token was drawn from; then "done"
    attention_events   one "attention": a head's weights over the tokens, from the
                       model's own forward pass (hooks on its attention softmax)

Generation goes through the public `stream`, so a seeded request streams exactly the ids
`generate` returns for the same seed.
"""

from __future__ import annotations

from collections.abc import Iterator
from contextlib import closing
from typing import Any

import torch

from stagegpt.generation import sampling_probs, stream
from stagegpt.play.catalog import ServedModel
from stagegpt.play.requests import AttentionRequest, GenerateRequest, prompt_ids
from stagegpt.tools.attention_maps import attention_maps

TOP = 5  # alternatives shown per token
DIGITS = 6  # decimals of the probabilities and weights sent


def token_text(tokenizer: Any, token: int) -> str:
    """One token's own text (a character split across tokens shows as U+FFFD)."""
    return tokenizer.decode_bytes([token]).decode("utf-8", errors="replace")


def generation_events(served: ServedModel, request: GenerateRequest) -> Iterator[dict]:
    tokenizer = served.tokenizer
    ids = prompt_ids(served, request.prompt)
    yield {"event": "prompt", "stage": served.stage,
           "tokens": [{"id": i, "text": token_text(tokenizer, i)} for i in ids]}
    drawn_from: list[torch.Tensor] = []  # the distribution of the token being sampled

    def keep_probs(logits: torch.Tensor) -> None:  # logits (1, V)
        drawn_from.append(sampling_probs(logits, request.temperature, request.top_k,
                                         request.top_p)[0])  # (V,)

    stop_ids = () if tokenizer.eot_id is None else (tokenizer.eot_id,)
    columns = stream(served.model, torch.tensor([ids]), request.max_new_tokens,
                     request.temperature, request.top_k, request.top_p, request.seed,
                     stop_ids, on_logits=keep_probs)
    with closing(columns):
        for column in columns:
            yield token_event(tokenizer, int(column[0, 0]), drawn_from.pop())
    yield {"event": "done", "stage": served.stage}


def token_event(tokenizer: Any, token: int, probs: torch.Tensor) -> dict:
    """A sampled token with its probability and the TOP most likely tokens of `probs` (V,)."""
    top_probs, top_ids = torch.topk(probs, min(TOP, probs.numel()))
    return {"event": "token", "id": token, "text": token_text(tokenizer, token),
            "prob": round(float(probs[token]), DIGITS),
            "top": [{"id": int(i), "text": token_text(tokenizer, int(i)),
                     "prob": round(float(p), DIGITS)} for p, i in zip(top_probs, top_ids,
                                                                       strict=True)]}


def attention_events(served: ServedModel, request: AttentionRequest) -> Iterator[dict]:
    head = attention_maps(served.model, torch.tensor([request.ids]), request.layer,
                          request.head)[0, 0]  # (T, T): row = query, column = key
    yield {"event": "attention", "stage": served.stage, "layer": request.layer,
           "head": request.head,
           "tokens": [{"id": i, "text": token_text(served.tokenizer, i)} for i in request.ids],
           "weights": [[round(w, DIGITS) for w in row] for row in head.tolist()]}
