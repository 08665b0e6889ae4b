"""The `stagegpt` command. Each verb lives in a module of `stagegpt.cli` (see VERBS).

A verb module defines HELP (one line), `add_arguments(parser)` and `run(args) -> int`, and
may define FLAGS, a map from the library's parameter names to its flags where they are not
simply `--name-with-dashes`. Every flag or argument naming a file, a dir or a preset
(PATH_AND_NAME_DESTS) refuses an empty value, which would otherwise mean the current dir
or a default; --threads takes 1 to MAX_THREADS. User errors (`StagegptError`, named by
flag) and failed file operations (`OSError`: a full disk, a read-only or forbidden path)
become one line on stderr and exit code 2; `--debug` shows the traceback instead. Ctrl-C
and SIGTERM end a verb with code 130 (a trainer first finishes its step and saves; `play`,
which serves until stopped, exits 0).
"""

from __future__ import annotations

import argparse
import contextlib
import errno
import importlib
import os
import signal
import sys

from stagegpt import __version__
from stagegpt.errors import StagegptError
from stagegpt.train.signals import signals_to

# verb -> module in stagegpt.cli (`inspect_cmd`: no module may be named like the stdlib's)
VERBS = {"prepare": "prepare", "train": "train", "sample": "sample", "ladder": "ladder",
         "inspect": "inspect_cmd", "attention": "attention", "convert": "convert",
         "eval": "eval_cmd", "bench": "bench", "finetune": "finetune",
         "classify": "classify", "chat": "chat", "merge": "merge", "play": "play"}


def _available_verbs() -> dict[str, object]:
    modules = {}
    for verb, name in VERBS.items():
        modules[verb] = importlib.import_module(f"stagegpt.cli.{name}")
    return modules


# verbs that take --threads (bench sets its own)
THREADED = ("train", "sample", "ladder", "inspect", "attention", "convert", "eval",
            "finetune", "classify", "chat", "merge", "play")
MAX_THREADS = 1024  # far past any CPU's cores; torch/OpenMP fail or crash on huge counts

# arguments that name a file, a dir or a preset, in any verb (or `prepare`'s sources)
PATH_AND_NAME_DESTS = ("data", "out", "config", "ckpt", "preset", "prompt_file", "from_hf",
                       "json", "base", "text_file", "ladder", "gpt2_ranks", "file", "paths",
                       "tokenizer")


def non_empty(value: str) -> str:
    """argparse type of a path or name: an empty one is refused, not taken as '.' or a
    default."""
    if not value:
        raise argparse.ArgumentTypeError("must not be empty; give a path or a name")
    return value


def threads_problem(threads: int) -> str | None:
    """Why `threads` cannot be torch's thread count, or None if it can."""
    if not 1 <= threads <= MAX_THREADS:
        return f"--threads must be from 1 to {MAX_THREADS}, got {threads}"
    return None


def refuse_empty_paths(parser: argparse.ArgumentParser) -> None:
    """Give every path or name argument of `parser` (and its sub-verbs) the non_empty type."""
    for action in parser._actions:
        if isinstance(action, argparse._SubParsersAction):
            for sub in action.choices.values():
                refuse_empty_paths(sub)
        elif action.dest in PATH_AND_NAME_DESTS and action.type is None and (
                action.choices is None):
            action.type = non_empty


class OneLineParser(argparse.ArgumentParser):
    """argparse that reports a bad flag in one line (and exit code 2) instead of usage + error."""

    def error(self, message: str) -> None:
        self.exit(2, f"{self.prog}: error: {message} (see {self.prog} --help)\n")


def build_parser() -> argparse.ArgumentParser:
    parser = OneLineParser(
        prog="stagegpt",
        description="Build, train, sample and inspect a GPT-style decoder in nine stages.",
    )
    parser.add_argument("--debug", action="store_true",
                        help="show full tracebacks instead of one-line errors")
    parser.add_argument("--version", action="version", version=f"stagegpt {__version__}")
    verbs = parser.add_subparsers(dest="verb", metavar="VERB", parser_class=OneLineParser)
    for verb, module in _available_verbs().items():
        sub = verbs.add_parser(verb, help=module.HELP, description=module.__doc__,
                               formatter_class=argparse.RawDescriptionHelpFormatter)
        sub.add_argument("--debug", action="store_true", default=argparse.SUPPRESS,
                         help="show full tracebacks instead of one-line errors")
        if verb in THREADED:
            sub.add_argument("--threads", type=int, metavar="N",
                             help=f"CPU threads for torch, 1 to {MAX_THREADS} (default: "
                                  "torch's choice, all cores); on a machine shared with other "
                                  "jobs 1 is often much faster")
        module.add_arguments(sub)
        refuse_empty_paths(sub)
        sub.set_defaults(run=module.run, flags=getattr(module, "FLAGS", {}))
    return parser


OS_ADVICE = {
    errno.ENOSPC: "free some disk space or choose an output path on another disk",
    errno.EDQUOT: "free some space within your quota or choose another output path",
    errno.EROFS: "the file system is read-only; choose an output path on a writable disk",
    errno.EACCES: "check the path's permissions or choose another path",
    errno.EPERM: "check the path's permissions or choose another path",
}


def describe_os_error(err: OSError) -> str:
    """An OSError as one line: what failed, on which path, and what to do."""
    reason = err.strerror or str(err) or type(err).__name__
    paths = list(dict.fromkeys(p for p in (err.filename, err.filename2) if p is not None))
    where = f" ({' -> '.join(map(str, paths))})" if paths else ""
    advice = OS_ADVICE.get(err.errno, "check the path and try again")
    return " ".join(f"{reason}{where}; {advice}".split())


def _out_of_memory(err: BaseException) -> bool:
    """An allocator's failure (Python's, or PyTorch's RuntimeError that says so)."""
    text = str(err).lower()
    return isinstance(err, MemoryError) or "can't allocate memory" in text or (
        "out of memory" in text)


def _first_line(err: BaseException) -> str:
    lines = str(err).strip().splitlines()
    return " ".join(lines[0].split())[:120] if lines else type(err).__name__


def main(argv: list[str] | None = None) -> int:
    parser = build_parser()
    args = parser.parse_args(argv)
    if args.verb is None:  # `stagegpt` alone: what it can do
        parser.print_help()
        return 0
    if getattr(args, "threads", None) is not None and args.verb in THREADED:
        problem = threads_problem(args.threads)
        if problem is not None:
            print(f"stagegpt {args.verb}: error: {problem}", file=sys.stderr)
            return 2
        import torch

        torch.set_num_threads(args.threads)
    if args.verb in (*THREADED, "bench"):  # the verbs that run a model
        from stagegpt.fast import configure_process

        configure_process()
    try:
        with signals_to(signal.default_int_handler, (signal.SIGTERM,)):  # stops as Ctrl-C does
            return int(args.run(args) or 0)
    except StagegptError as err:
        if args.debug:
            raise
        print(f"stagegpt {args.verb}: error: {err.for_flags(args.flags)}", file=sys.stderr)
        return 2
    except BrokenPipeError:  # `stagegpt sample ... | head`: the reader left, nothing is wrong
        with contextlib.suppress(OSError, ValueError):
            os.dup2(os.open(os.devnull, os.O_WRONLY), sys.stdout.fileno())
        return 0
    except OSError as err:
        if args.debug:
            raise
        print(f"stagegpt {args.verb}: error: {describe_os_error(err)}", file=sys.stderr)
        return 2
    except (MemoryError, RuntimeError) as err:
        if args.debug or not _out_of_memory(err):
            raise
        print(f"stagegpt {args.verb}: error: out of memory ({_first_line(err)}); use a smaller "
              "model, batch or input, or a machine with more memory", file=sys.stderr)
        return 2
    except KeyboardInterrupt:
        print(f"stagegpt {args.verb}: interrupted", file=sys.stderr)
        return 130


if __name__ == "__main__":
    sys.exit(main())
