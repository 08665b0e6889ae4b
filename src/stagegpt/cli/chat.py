"""Chat with an instruction-tuned checkpoint in the terminal.

  stagegpt chat --ckpt runs/chat
  printf 'Hello\nHow are you?\n/quit\n' | stagegpt chat --ckpt runs/chat --temperature 0

Each line you type is a user message; the reply streams as it is sampled and stops at the
template's end marker (see docs/finetune.md). The conversation so far is the prompt of
each reply; when it outgrows the context window the oldest turns are dropped.
Commands: /reset forgets the conversation, /quit (or end of input) leaves. When stdin is
not a terminal, lines are read from it without prompts, so a pipe can drive the loop.
"""

from __future__ import annotations

import argparse
import sys

from stagegpt.errors import StagegptError
from stagegpt.generation import check_sampling_args, nth_seed

HELP = "chat with an instruction-tuned checkpoint (streamed replies, /reset, /quit)"


def add_arguments(parser: argparse.ArgumentParser) -> None:
    parser.add_argument("--ckpt", required=True, metavar="DIR",
                        help="a `stagegpt finetune --task instruct` run (or merged checkpoint)")
    parser.add_argument("--system", metavar="TEXT", help="a system message to start with")
    add_sampling_arguments(parser)


def add_sampling_arguments(parser: argparse.ArgumentParser) -> None:
    parser.add_argument("--max-new-tokens", type=int, default=200, metavar="N",
                        help="longest reply in tokens (default: 200)")
    parser.add_argument("--temperature", type=float, default=0.8, metavar="T",
                        help="0 is greedy (default: 0.8)")
    parser.add_argument("--top-k", type=int, default=40, metavar="K",
                        help="sample among the K most likely tokens (default: 40)")
    parser.add_argument("--seed", type=int, default=None, metavar="S",
                        help="seed the sampler (reply i uses S + i, mod 2**64)")


MAX_MESSAGE_CHARS = 1 << 20  # far more than any context; a longer line is skipped, not kept


def read_message(interactive: bool) -> str | None:
    """The next line of input without its newline, None at the end of input. A line that
    is not UTF-8 text or is over MAX_MESSAGE_CHARS is refused (StagegptError) and skipped."""
    if interactive:
        try:
            line = input("you> ")
        except EOFError:
            return None
    else:
        line = sys.stdin.readline(MAX_MESSAGE_CHARS + 1)
        if not line:
            return None
        if len(line) > MAX_MESSAGE_CHARS and not line.endswith("\n"):
            while line and not line.endswith("\n"):  # read past the rest of it
                line = sys.stdin.readline(MAX_MESSAGE_CHARS)
            raise StagegptError(f"the message is over {MAX_MESSAGE_CHARS:,} characters, far "
                                "more than the model reads; send a shorter one")
    line = line.rstrip("\n")
    try:
        line.encode("utf-8")
    except UnicodeEncodeError:  # stdin's bytes that are not UTF-8, kept as lone surrogates
        raise StagegptError("the message is not UTF-8 text; send it as UTF-8") from None
    return line


def fit_history(tokenizer, template, history: list[dict], block_size: int) -> list[int]:
    """The prompt ids of `history` (ending with a user turn), dropping the oldest turns
    (never a system message) until it fits the context with room for a reply."""
    from stagegpt.finetune.templates import encode_prompt

    ids = encode_prompt(tokenizer, template, history)
    system = 1 if history[0]["role"] == "system" else 0
    while len(ids) > block_size * 3 // 4 and len(history) - system > 1:
        del history[system:system + 2]  # one user turn and its reply
        ids = encode_prompt(tokenizer, template, history)
    return ids


def check_system(tokenizer, system: str, block_size: int) -> None:
    """A system message stays in every prompt: it must encode, and leave half the context
    to the conversation."""
    try:
        tokens = len(tokenizer.encode(system))
    except StagegptError as err:
        raise StagegptError(f"system cannot be encoded: {err}", "system") from None
    if tokens > block_size // 2:
        raise StagegptError(f"system is {tokens} tokens, but the model's context of "
                            f"{block_size} must keep room for the conversation; shorten it "
                            f"to {block_size // 2} tokens or fewer", "system")


def run(args: argparse.Namespace) -> int:
    check_sampling_args(args.max_new_tokens, args.temperature, args.top_k, None, args.seed)
    from stagegpt.finetune.checkpoint import load_for_chat
    from stagegpt.finetune.reply import stream_reply
    from stagegpt.finetune.templates import template_for

    lm, tokenizer = load_for_chat(args.ckpt)
    template = template_for(tokenizer)
    if args.system:
        check_system(tokenizer, args.system, lm.config.block_size)
    interactive = sys.stdin.isatty()
    if hasattr(sys.stdin, "reconfigure"):  # bytes that are not UTF-8 reach read_message
        sys.stdin.reconfigure(errors="surrogateescape")
    start = [{"role": "system", "content": args.system}] if args.system else []
    history = list(start)
    if interactive:
        print("chat: type a message; /reset forgets the conversation, /quit leaves")
    turn = 0
    while True:
        try:
            line = read_message(interactive)
        except StagegptError as err:
            print(f"({err})", flush=True)
            continue
        if line is None or line.strip() == "/quit":
            break
        if line.strip() == "/reset":
            history = list(start)
            print("(conversation reset)", flush=True)
            continue
        if not line.strip():
            continue
        history.append({"role": "user", "content": line})
        try:
            ids = fit_history(tokenizer, template, history, lm.config.block_size)
        except StagegptError as err:  # e.g. a character a char vocabulary lacks
            history.pop()
            print(f"(cannot encode that message: {err})", flush=True)
            continue
        seed = nth_seed(args.seed, turn)
        print("bot> ", end="", flush=True)
        pieces = []
        for piece in stream_reply(lm, tokenizer, template, ids, args.max_new_tokens,
                                  args.temperature, args.top_k, None, seed):
            pieces.append(piece)
            print(piece, end="", flush=True)
        print(flush=True)
        history.append({"role": "assistant", "content": "".join(pieces)})
        turn += 1
    return 0


def sample_with_template(args: argparse.Namespace, prompt: str) -> int:
    """`stagegpt sample --chat|--instruct`: the prompt as one user message under the
    checkpoint's template; each sample stops at the end marker."""
    from stagegpt.finetune.checkpoint import load_for_chat
    from stagegpt.finetune.reply import stream_reply
    from stagegpt.finetune.templates import encode_prompt, template_for

    lm, tokenizer = load_for_chat(args.ckpt)
    template = template_for(tokenizer)
    ids = encode_prompt(tokenizer, template, [{"role": "user", "content": prompt}])
    for i in range(args.num_samples):
        if i:
            print("---")
        seed = nth_seed(args.seed, i)
        for piece in stream_reply(lm, tokenizer, template, ids, args.max_new_tokens,
                                  args.temperature, args.top_k, args.top_p, seed):
            print(piece, end="", flush=True)
        print(flush=True)
    return 0
