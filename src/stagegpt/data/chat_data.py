"""Instruction data: chatterbot-corpus conversations, and questions made from the plays.

chatterbot: the English YAML files of the `chatterbot-corpus` wheel (BSD license;
`chatterbot_corpus/data/english/*.yml`, 21 topics): each conversation is a list of lines
spoken in turn, read as user, assistant, user, ... (a last unanswered line is dropped),
cut to the whole turns that fit `max_chars` characters (300 by default; a conversation
whose first turn is longer is left out).
The same opening line often has several replies ("How are you?" -> "Good.", "Fine."), so
conversations are split by their opening line: all replies to one opening go to one
split, `val_fraction` and `test_fraction` of the openings chosen with the seed.

shakespeare: three kinds of question per play, on passages cut as for the genre data
but shorter (at most `max_chars` = 120 characters, so that question, passage and answer
fit a 256-character context), split by whole plays exactly as the genre data is
(`stagegpt.data.genre`):

    speaker    "Who speaks these lines: A, B, C or D?" + passage -> the speaker
               (the choices: the speaker and three others of the same play, sorted)
    play       "Which play is this from: A, B, C or D?" + passage -> the title
               (the choices: the play and three others of the same split, sorted)
    continue   "Continue this speech by ROMEO:" + its first 1-3 lines -> the next line
               (lines and answer together at most `max_chars`)

The choices make exact-match accuracy meaningful on held-out plays (chance is 1 in 4).
Each record carries "kind" and "answer"; at most `per_play` records of each kind come
from one play, chosen with the seed.
"""

from __future__ import annotations

import random
from pathlib import Path
from typing import Any

from stagegpt.data.finetune_prepare import prepare_finetune, split_by_key
from stagegpt.data.genre import PLAYS, play_splits, play_texts
from stagegpt.data.plays import Speech, passages, speeches
from stagegpt.data.registry import cached_members, fetch_from_wheel
from stagegpt.errors import StagegptError

CHATTERBOT = ("chatterbot-corpus", "1.3.3")
CHATTERBOT_DIR = "chatterbot_corpus/data/english/"
MAX_YAML_BYTES = 1 << 20


def _english_yaml(name: str) -> bool:
    return name.startswith(CHATTERBOT_DIR) and name.endswith((".yml", ".yaml"))


def chatterbot_files() -> dict[str, bytes]:
    """{file name: bytes} of the English YAML files, fetched once and cached."""
    return cached_members(f"chatterbot-corpus-{CHATTERBOT[1]}", lambda: fetch_from_wheel(
        *CHATTERBOT, _english_yaml, "the chatterbot English conversations"), "chatterbot")


def read_conversations(data: bytes, name: str) -> list[list[str]]:
    """The conversations of one chatterbot YAML file, each a list of non-empty lines."""
    import yaml

    if len(data) > MAX_YAML_BYTES:
        raise StagegptError(f"{name} is {len(data):,} bytes, too big for a chatterbot file")
    try:
        doc = yaml.safe_load(data.decode("utf-8"))
    except (UnicodeDecodeError, yaml.YAMLError) as err:
        reason = " ".join(str(err).split())[:120]
        raise StagegptError(f"{name} is not a UTF-8 YAML file ({reason})") from None
    conversations = doc.get("conversations") if isinstance(doc, dict) else None
    if not isinstance(conversations, list):
        raise StagegptError(f"{name} has no list of \"conversations\"")
    found = []
    for conversation in conversations:
        if not isinstance(conversation, list):
            continue
        lines = [" ".join(str(x).split()) for x in conversation
                 if isinstance(x, str | int | float) and not isinstance(x, bool)]
        found.append([line for line in lines if line])
    return [c[: len(c) // 2 * 2] for c in found if len(c) >= 2]


def as_messages(lines: list[str]) -> dict[str, Any]:
    roles = ("user", "assistant")
    return {"messages": [{"role": roles[i % 2], "content": line} for i, line in enumerate(lines)]}


def fit_turns(lines: list[str], max_chars: int) -> list[str]:
    """The longest run of whole (user, assistant) turns from the start within `max_chars`."""
    total, kept = 0, []
    for i in range(0, len(lines) - 1, 2):
        total += len(lines[i]) + len(lines[i + 1])
        if total > max_chars:
            break
        kept += lines[i:i + 2]
    return kept


def chatterbot_records(files: dict[str, bytes], seed: int = 0, val_fraction: float = 0.1,
                       test_fraction: float = 0.1, max_chars: int = 300
                       ) -> dict[str, list[dict]]:
    """Conversations cut to whole turns within `max_chars` (dropped if the first turn is
    longer), split by opening line."""
    items = [(conv[0].lower(), as_messages(fitted)) for name, data in sorted(files.items())
             for conv in read_conversations(data, name) if (fitted := fit_turns(conv, max_chars))]
    return split_by_key(items, seed, val_fraction, test_fraction)


def _choices(answer: str, others: list[str], rng: random.Random) -> str:
    """"A, B, C or D": `answer` and three of `others`, sorted."""
    picked = sorted([answer, *rng.sample(sorted(set(others) - {answer}), 3)])
    return f"{', '.join(picked[:-1])} or {picked[-1]}"


def _record(kind: str, question: str, answer: str) -> dict[str, Any]:
    return {"messages": [{"role": "user", "content": question},
                         {"role": "assistant", "content": answer}],
            "kind": kind, "answer": answer}


def _continuation(speech: Speech, max_chars: int) -> tuple[str, str] | None:
    """(the speech's first 1-3 lines, the line after them), at most `max_chars` together."""
    for k in range(min(3, len(speech.lines) - 1), 0, -1):
        context, nxt = "\n".join(speech.lines[:k]), speech.lines[k]
        if len(context) + len(nxt) <= max_chars:
            return context, nxt
    return None


def play_questions(play: str, split_titles: list[str], rng: random.Random, per_play: int,
                   max_chars: int, min_chars: int, texts: dict[str, str]) -> list[dict]:
    """Up to `per_play` records of each kind from one play."""
    said = speeches(texts[play])
    counts: dict[str, int] = {}
    for speech in said:
        counts[speech.speaker] = counts.get(speech.speaker, 0) + 1
    regulars = [name for name, n in counts.items() if n >= 5]
    title = PLAYS[play][0]
    records = []
    quoted = [(s, p) for s in said for p in passages(s, 4, max_chars, min_chars)[:1]]
    for speech, passage in rng.sample(quoted, min(per_play, len(quoted))):
        if speech.speaker in regulars and len(regulars) >= 4:
            records.append(_record("speaker", f"Who speaks these lines: "
                                   f"{_choices(speech.speaker, regulars, rng)}?\n\n{passage}",
                                   speech.speaker))
    for _, passage in rng.sample(quoted, min(per_play, len(quoted))):
        records.append(_record("play", f"Which play is this from: "
                               f"{_choices(title, split_titles, rng)}?\n\n{passage}", title))
    continued = [(s, c) for s in said if len(s.lines) >= 2
                 and (c := _continuation(s, max_chars)) is not None]
    for speech, (context, nxt) in rng.sample(continued, min(per_play, len(continued))):
        records.append(_record("continue", f"Continue this speech by {speech.speaker}:\n\n"
                               f"{context}", nxt))
    return records


def _check_play_args(per_play: int, max_chars: int, min_chars: int) -> None:
    if per_play < 1:
        raise StagegptError(f"per_play must be at least 1, got {per_play}", "per_play")
    if not 1 <= min_chars <= max_chars:
        raise StagegptError(f"min_chars must be from 1 to `max_chars` ({max_chars}), got "
                            f"{min_chars}", "min_chars", mentions=("max_chars",))


def shakespeare_chat_records(texts: dict[str, str], seed: int = 0, per_play: int = 50,
                             max_chars: int = 120, min_chars: int = 30
                             ) -> dict[str, list[dict]]:
    _check_play_args(per_play, max_chars, min_chars)
    rng = random.Random(seed)
    splits = {}
    for split, plays in play_splits().items():
        titles = [PLAYS[p][0] for p in plays]
        records = [r for play in plays for r in play_questions(
            play, titles, rng, per_play, max_chars, min_chars, texts)]
        rng.shuffle(records)
        splits[split] = records
    return splits


def prepare_chat(out: str | Path, source: str, tokenizer: str, seed: int = 0,
                 val_fraction: float | None = None, test_fraction: float | None = None,
                 per_play: int = 50,
                 max_chars: int | None = None, min_chars: int = 30,
                 unknown_chars: str | None = None,
                 overwrite: bool = False, progress: bool = True,
                 settings: dict[str, Any] | None = None) -> dict[str, Any]:
    """An instruct dir from chatterbot-corpus or the plays (module docstring); its meta.
    `max_chars` defaults to 300 for chatterbot, 120 for shakespeare; the fractions (0.1
    each by default) split chatterbot only, so shakespeare refuses any given."""
    meta: dict[str, Any] = {"task": "instruct", "source": source, "settings": settings or {}}
    if max_chars is not None and max_chars < 1:
        raise StagegptError(f"max_chars must be at least 1, got {max_chars}", "max_chars")
    if source == "chatterbot":
        val_fraction = 0.1 if val_fraction is None else val_fraction
        test_fraction = 0.1 if test_fraction is None else test_fraction
        split_by_key([], seed, val_fraction, test_fraction)  # checks the fractions first
        splits = chatterbot_records(chatterbot_files(), seed, val_fraction, test_fraction,
                                    max_chars or 300)
    elif source == "shakespeare":
        for name, value in (("val_fraction", val_fraction), ("test_fraction", test_fraction)):
            if value is not None:
                raise StagegptError(f"{name} splits chatterbot's conversations; the "
                                    "shakespeare records are split by play, so leave it out",
                                    name)
        _check_play_args(per_play, max_chars or 120, min_chars)
        splits = shakespeare_chat_records(play_texts(), seed, per_play, max_chars or 120,
                                          min_chars)
        meta["documents"] = play_splits()
    else:
        raise StagegptError(f"source must be chatterbot or shakespeare, not {source!r}",
                            "source")
    return prepare_finetune(out, meta, splits, tokenizer, unknown_chars, overwrite, progress)
