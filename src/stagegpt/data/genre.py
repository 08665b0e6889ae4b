"""Genre classification data: passages of Shakespeare's plays labelled by the play's genre.

The genre of each play follows the First Folio (1623), whose catalogue divides the plays
into Comedies, Histories and Tragedies, with the late romances as the conventional modern
fourth group (Edward Dowden's grouping of 1875): Pericles (left out of the Folio),
Cymbeline (a tragedy there), The Winter's Tale and The Tempest (comedies there) are
"romance" here, for their shared late-play pattern of loss, wandering and reunion.
Troilus and Cressida, printed between the histories and the tragedies and titled
"The Tragedie of Troylus and Cressida", counts as a tragedy. Sonnets and poems are not
plays and are left out: 37 plays in all.

Splits are by whole plays, fixed, one play of each genre in val and in test, so test
passages come from plays the classifier never saw. The test plays are, where the genre
allows, plays the `full` Shakespeare pretraining corpus holds out as well (Twelfth
Night, Coriolanus, Pericles; no history is held out there, so test takes Richard II).
A passage is as `stagegpt.data.plays.passages` cuts it (speaker names are not part of it);
a text repeated in the plays is kept once (test first, then val, then train). With
`balance` each split keeps as many passages of each genre as its rarest genre has,
chosen with the seed.
"""

from __future__ import annotations

import random
from pathlib import Path
from typing import Any

from stagegpt.data.corpora import shakespeare_texts
from stagegpt.data.finetune_prepare import prepare_finetune
from stagegpt.data.plays import passages, speeches
from stagegpt.errors import StagegptError

GENRES = ("comedy", "history", "tragedy", "romance")
# file name in the `shakespeare` package -> (title, genre)
PLAYS = {
    "alls_well_that_ends_well": ("All's Well That Ends Well", "comedy"),
    "as_you_like_it": ("As You Like It", "comedy"),
    "comedy_of_errors": ("The Comedy of Errors", "comedy"),
    "loves_labours_lost": ("Love's Labour's Lost", "comedy"),
    "measure_for_measure": ("Measure for Measure", "comedy"),
    "merchant_of_venice": ("The Merchant of Venice", "comedy"),
    "merry_wives_of_windsor": ("The Merry Wives of Windsor", "comedy"),
    "midsummer_nights_dream": ("A Midsummer Night's Dream", "comedy"),
    "much_ado_about_nothing": ("Much Ado About Nothing", "comedy"),
    "taming_of_the_shrew": ("The Taming of the Shrew", "comedy"),
    "twelfth_night": ("Twelfth Night", "comedy"),
    "two_gentlemen_of_verona": ("The Two Gentlemen of Verona", "comedy"),
    "john": ("King John", "history"),
    "richard_ii": ("Richard II", "history"),
    "henry_iv_part_1": ("Henry IV, Part 1", "history"),
    "henry_iv_part_2": ("Henry IV, Part 2", "history"),
    "henry_v": ("Henry V", "history"),
    "henry_vi_part_1": ("Henry VI, Part 1", "history"),
    "henry_vi_part_2": ("Henry VI, Part 2", "history"),
    "henry_vi_part_3": ("Henry VI, Part 3", "history"),
    "richard_iii": ("Richard III", "history"),
    "henry_viii": ("Henry VIII", "history"),
    "antony_and_cleopatra": ("Antony and Cleopatra", "tragedy"),
    "coriolanus": ("Coriolanus", "tragedy"),
    "hamlet": ("Hamlet", "tragedy"),
    "julius_caesar": ("Julius Caesar", "tragedy"),
    "lear": ("King Lear", "tragedy"),
    "macbeth": ("Macbeth", "tragedy"),
    "othello": ("Othello", "tragedy"),
    "romeo_and_juliet": ("Romeo and Juliet", "tragedy"),
    "timon_of_athens": ("Timon of Athens", "tragedy"),
    "tragedy_of_titus_andronicus": ("Titus Andronicus", "tragedy"),
    "troilus_and_cressida": ("Troilus and Cressida", "tragedy"),
    "cymbeline": ("Cymbeline", "romance"),
    "pericles": ("Pericles", "romance"),
    "tempest": ("The Tempest", "romance"),
    "winters_tale": ("The Winter's Tale", "romance"),
}
VAL_PLAYS = ("much_ado_about_nothing", "john", "timon_of_athens", "winters_tale")
TEST_PLAYS = ("twelfth_night", "richard_ii", "coriolanus", "pericles")


def play_splits() -> dict[str, list[str]]:
    """{"train", "val", "test"}: play names, each play in exactly one split."""
    held_out = set(VAL_PLAYS) | set(TEST_PLAYS)
    return {"train": [p for p in PLAYS if p not in held_out], "val": list(VAL_PLAYS),
            "test": list(TEST_PLAYS)}


def play_texts() -> dict[str, str]:
    """{play name: text} of the 37 plays, fetched once and cached."""
    texts = shakespeare_texts()
    missing = sorted(set(PLAYS) - set(texts))
    if missing:
        raise StagegptError(f"the Shakespeare texts lack {', '.join(missing)}; delete the "
                            "cache and fetch them again")
    return {name: texts[name] for name in PLAYS}


def balance_labels(records: list[dict], rng: random.Random) -> list[dict]:
    """As many records of each label as the rarest label has (chosen by `rng`), in order."""
    by_label: dict[str, list[int]] = {}
    for i, record in enumerate(records):
        by_label.setdefault(record["label"], []).append(i)
    smallest = min(map(len, by_label.values()))
    keep = {i for idx in by_label.values() for i in rng.sample(idx, smallest)}
    return [r for i, r in enumerate(records) if i in keep]


def check_passage_args(max_lines: int, max_chars: int, min_chars: int) -> None:
    if max_chars < 1:
        raise StagegptError(f"max_chars must be at least 1, got {max_chars}", "max_chars")
    if not 1 <= min_chars <= max_chars:
        raise StagegptError(f"min_chars must be from 1 to `max_chars` ({max_chars}), got "
                            f"{min_chars}", "min_chars", mentions=("max_chars",))
    if max_lines < 1:
        raise StagegptError(f"max_lines must be at least 1, got {max_lines}", "max_lines")


def genre_records(texts: dict[str, str], seed: int = 0, balance: bool = True,
                  max_lines: int = 4, max_chars: int = 200, min_chars: int = 40
                  ) -> dict[str, list[dict[str, str]]]:
    """{split: [{"text": passage, "label": genre}, ...]}, shuffled with `seed`."""
    check_passage_args(max_lines, max_chars, min_chars)
    rng = random.Random(seed)
    seen: set[str] = set()
    splits = {}
    for split in ("test", "val", "train"):
        records = []
        for play in play_splits()[split]:
            for speech in speeches(texts[play]):
                for passage in passages(speech, max_lines, max_chars, min_chars):
                    if passage not in seen:
                        seen.add(passage)
                        records.append({"text": passage, "label": PLAYS[play][1]})
        rng.shuffle(records)
        splits[split] = balance_labels(records, rng) if balance and records else records
    return {split: splits[split] for split in ("train", "val", "test")}


def prepare_genre(out: str | Path, tokenizer: str, seed: int = 0, balance: bool = True,
                  max_lines: int = 4, max_chars: int = 200, min_chars: int = 40,
                  unknown_chars: str | None = None, overwrite: bool = False,
                  progress: bool = True, settings: dict[str, Any] | None = None
                  ) -> dict[str, Any]:
    """The genre classification dir in `out` (see the module docstring); returns its meta."""
    check_passage_args(max_lines, max_chars, min_chars)
    splits = genre_records(play_texts(), seed, balance, max_lines, max_chars, min_chars)
    meta = {"task": "classify", "source": "genre", "labels": list(GENRES),
            "documents": play_splits(), "settings": settings or {}}
    return prepare_finetune(out, meta, splits, tokenizer, unknown_chars, overwrite, progress)
