"""Prompt templates: how a conversation becomes one token sequence, and which of its
tokens the model learns to produce.

One template per tokenizer kind:

    gpt2, bpe:N   ### User:\\n{user}\\n\\n### Assistant:\\n{reply}<|endoftext|>
    char          USER:\\n{user}\\n\\nASSISTANT:\\n{reply}\\n\\n

GPT-2's and stagegpt's BPE vocabularies have one special token, <|endoftext|>, and no
room for more without growing the embedding (the base's shape is kept), so the role
markers are plain text and <|endoftext|> ends every reply: generation stops at that one
id. A char vocabulary has no special token at all: its markers are made of characters
the vocabulary has (checked), and a reply ends at a blank line, the way a speech ends in
the Shakespeare text; blank lines inside a reply are folded to one newline.

A system message, if any, comes first as "### System:\\n{text}\\n\\n" (char:
"SYSTEM:\\n{text}\\n\\n"). Each assistant turn - its reply and the end marker - is
trained on; everything else (system, user turns, role markers) is prompt, masked out.
"""

from __future__ import annotations

import re
from dataclasses import dataclass

from stagegpt.errors import StagegptError

IGNORE = -100  # a target that takes no part in the loss (F.cross_entropy's ignore_index)


@dataclass(frozen=True)
class Template:
    name: str
    system: str  # each holds {text}
    user: str  # the user's turn and the assistant's header: the prompt of a reply
    end_text: str  # the end marker after a reply, as text ("" when it is a special id)
    end_id: int | None  # the end marker as one special token, or None

    def to_dict(self) -> dict:
        return {"name": self.name}


def _char_template() -> Template:
    return Template("char", "SYSTEM:\n{text}\n\n", "USER:\n{text}\n\nASSISTANT:\n", "\n\n",
                    None)


def template_for(tokenizer) -> Template:
    """The template for `tokenizer`'s kind; a char vocabulary must hold its characters."""
    if tokenizer.eot_id is not None:
        return Template("special-end", "### System:\n{text}\n\n",
                        "### User:\n{text}\n\n### Assistant:\n", "", tokenizer.eot_id)
    template = _char_template()
    needed = set(template.system.format(text="") + template.user.format(text="")
                 + template.end_text)
    missing = sorted(needed - set(getattr(tokenizer, "chars", "")))
    if missing:
        raise StagegptError(f"the char vocabulary lacks {''.join(missing)!r}, which the chat "
                            "template's markers (USER:, ASSISTANT:, newlines) need; "
                            "fine-tune a base with a gpt2 or bpe tokenizer, or one whose "
                            "text has these characters")
    return template


def clean_reply(template: Template, text: str) -> str:
    """A reply as trained: with a text end marker, blank lines inside fold to one newline."""
    if template.end_text == "\n\n":
        return re.sub(r"\n{2,}", "\n", text).strip("\n")
    return text


def _turns(template: Template, messages: list[dict]) -> list[tuple[str, bool]]:
    """(text, is_reply) pieces; a reply's end marker is added by `encode_dialog`."""
    pieces = []
    for message in messages:
        role, text = message["role"], message["content"]
        if role == "system":
            pieces.append((template.system.format(text=text), False))
        elif role == "user":
            pieces.append((template.user.format(text=text), False))
        else:
            pieces.append((clean_reply(template, text) + template.end_text, True))
    return pieces


def encode_dialog(tokenizer, template: Template,
                  messages: list[dict]) -> tuple[list[int], list[bool]]:
    """Token ids of a whole conversation and, per id, whether it is a reply token (trained).

    Pieces are encoded one by one, so the boundary between prompt and reply is exact.
    """
    ids: list[int] = []
    is_reply: list[bool] = []
    for text, reply in _turns(template, messages):
        piece = tokenizer.encode(text) if text else []
        if reply and template.end_id is not None:
            piece = piece + [template.end_id]
        ids += piece
        is_reply += [reply] * len(piece)
    return ids, is_reply


def encode_prompt(tokenizer, template: Template, messages: list[dict]) -> list[int]:
    """The ids that ask for the next reply: the conversation so far, ending with a user
    turn (whose text already ends in the assistant's header)."""
    if not messages or messages[-1]["role"] != "user":
        raise StagegptError("a prompt must end with a user message")
    return encode_dialog(tokenizer, template, messages)[0]


def loss_targets(ids: list[int], is_reply: list[bool]) -> tuple[list[int], list[int]]:
    """Inputs ids[:-1] and targets ids[1:], a target IGNORE unless it is a reply token."""
    targets = [t if r else IGNORE for t, r in zip(ids[1:], is_reply[1:], strict=True)]
    return ids[:-1], targets


class ReplyEnd:
    """Streamed reply text in, text to show out, until the end marker: a text end marker
    is held back while it may still be arriving, and never shown."""

    def __init__(self, template: Template):
        self.end = template.end_text
        self.pending = ""
        self.done = False

    def push(self, text: str) -> str:
        if not self.end:
            return text
        self.pending += text
        cut = self.pending.find(self.end)
        if cut >= 0:
            self.done = True
            shown, self.pending = self.pending[:cut], ""
            return shown
        keep = next((k for k in range(len(self.end) - 1, 0, -1)
                     if self.pending.endswith(self.end[:k])), 0)
        shown = self.pending[:len(self.pending) - keep]
        self.pending = self.pending[len(shown):]
        return shown

    def flush(self) -> str:
        shown, self.pending = self.pending, ""
        return shown
