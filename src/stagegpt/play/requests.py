"""Every field of a playground request, checked where it enters, before any tensor.

A request is a small JSON object; its field names are the library's parameter names, so
a bad value gets the library's own one-line message (`check_sampling_args` for the
sampling values), which the server returns with HTTP 400:

    POST /api/generate  {"stage": 5, "prompt": "ROMEO:", "max_new_tokens": 64,
                         "temperature": 1.0, "top_k": null, "top_p": null, "seed": 0}
    POST /api/attention {"stage": 5, "ids": [12, 5, 40], "layer": 0, "head": 1}
"""

from __future__ import annotations

import json
from dataclasses import dataclass, fields
from typing import Any

from stagegpt.errors import StagegptError
from stagegpt.fileio import JSON_ERRORS, json_problem
from stagegpt.generation import check_sampling_args
from stagegpt.play.catalog import ServedModel
from stagegpt.values import is_int

MAX_BODY_BYTES = 1 << 16
MAX_PLAY_TOKENS = 1024  # new tokens per request: a page of text, and a bounded worker turn


@dataclass
class GenerateRequest:
    stage: int
    prompt: str = ""
    max_new_tokens: int = 64
    temperature: float = 1.0
    top_k: int | None = None
    top_p: float | None = None
    seed: int | None = None


@dataclass
class AttentionRequest:
    stage: int
    ids: list[int]
    layer: int = 0
    head: int = 0


def parse_body(body: bytes) -> dict[str, Any]:
    """The request body as a JSON object, or a StagegptError saying what is wrong with it."""
    if len(body) > MAX_BODY_BYTES:
        raise StagegptError(f"request body is {len(body):,} bytes; the playground takes at "
                            f"most {MAX_BODY_BYTES:,}")
    try:
        text = body.decode("utf-8-sig")  # JSON may start with a byte order mark
    except UnicodeDecodeError:
        raise StagegptError("request body is not UTF-8 text; send JSON encoded as UTF-8") from None
    try:
        data = json.loads(text)
    except JSON_ERRORS as err:
        reason = json_problem(err)
        raise StagegptError(f"request body is not valid JSON ({reason})") from None
    if not isinstance(data, dict):
        raise StagegptError('request body must be a JSON object, like {"prompt": "Hello"}')
    return data


def _fields(kind: type, data: dict[str, Any], served: dict[int, ServedModel]) -> dict:
    known = [f.name for f in fields(kind)]
    unknown = sorted(set(data) - set(known))
    if unknown:
        raise StagegptError(f"unknown field {unknown[0]!r:.40}; the fields are "
                            f"{', '.join(known)}", unknown[0])
    stage = data.get("stage", next(iter(served)))
    if not is_int(stage) or stage not in served:
        choices = ", ".join(map(str, served))
        raise StagegptError(f"stage must be one of the stages served here ({choices}), got "
                            f"{stage!r:.40}", "stage")
    return {**data, "stage": stage}


def generate_request(data: dict[str, Any], served: dict[int, ServedModel]) -> GenerateRequest:
    """A checked generation request; the prompt must fit in the model's context."""
    request = GenerateRequest(**_fields(GenerateRequest, data, served))
    check_sampling_args(request.max_new_tokens, request.temperature, request.top_k,
                        request.top_p, request.seed)
    if request.max_new_tokens > MAX_PLAY_TOKENS:
        raise StagegptError(f"max_new_tokens must be at most {MAX_PLAY_TOKENS:,} in the "
                            f"playground, got {request.max_new_tokens:,}", "max_new_tokens")
    if not isinstance(request.prompt, str):
        raise StagegptError(f"prompt must be a string, got {type(request.prompt).__name__}",
                            "prompt")
    check_utf8(request.prompt, "prompt")
    prompt_ids(served[request.stage], request.prompt)  # fits, and encodes
    return request


def prompt_ids(served: ServedModel, prompt: str) -> list[int]:
    """The prompt's token ids (the start token for an empty prompt), at most block_size."""
    ids = served.tokenizer.encode(prompt) or [served.tokenizer.start_id]
    block_size = served.model.config.block_size
    if len(ids) > block_size:
        raise StagegptError(f"prompt is {len(ids)} tokens but stage {served.stage}'s context "
                            f"is {block_size}; shorten it", "prompt")
    return ids


def attention_request(data: dict[str, Any], served: dict[int, ServedModel]) -> AttentionRequest:
    """A checked attention request: token ids of this model, one layer and head of it."""
    request = AttentionRequest(**{"ids": None, **_fields(AttentionRequest, data, served)})
    config = served[request.stage].model.config
    n_layer, n_head = served[request.stage].attention_shape()
    if not n_layer:
        raise StagegptError(f"stage {request.stage} has no attention to show; pick a stage "
                            "from 3 up", "stage")
    ids = request.ids
    if not isinstance(ids, list) or not ids or not all(is_int(i) for i in ids):
        raise StagegptError("ids must be a non-empty list of token ids (integers)", "ids")
    if len(ids) > config.block_size:
        raise StagegptError(f"ids holds {len(ids)} tokens but stage {request.stage}'s context "
                            f"is {config.block_size}; send the last {config.block_size}", "ids")
    if not all(0 <= i < config.vocab_size for i in ids):
        raise StagegptError(f"ids must be token ids in [0, {config.vocab_size}) for stage "
                            f"{request.stage}", "ids")
    for name, count in (("layer", n_layer), ("head", n_head)):
        value = getattr(request, name)
        if not is_int(value) or not 0 <= value < count:
            raise StagegptError(f"{name} must be between 0 and {count - 1} for stage "
                                f"{request.stage}, got {value!r:.40}", name)
    return request


def check_utf8(text: str, name: str) -> None:
    """JSON can carry a lone surrogate ("\\ud800"), which no UTF-8 text holds."""
    try:
        text.encode("utf-8")
    except UnicodeEncodeError:
        raise StagegptError(f"{name} is not valid UTF-8 text (it holds a lone surrogate); "
                            "send real characters", name) from None
