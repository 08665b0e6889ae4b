"""Generate text from a checkpoint, streamed to stdout token by token.

  stagegpt sample --ckpt runs/shakespeare --prompt "ROMEO:" --max-new-tokens 300
  stagegpt sample --ckpt ckpt/gpt2 --prompt-file story.txt --temperature 0.8 --top-k 200
  stagegpt sample --ckpt runs/shakespeare --temperature 0        # greedy

Each sample prints the prompt, then the new text as it is produced. An empty prompt starts
from the tokenizer's start token (<|endoftext|> for GPT-2 and BPE tokenizers, a newline for
a char tokenizer), which is not printed. A prompt longer than the model's context window is
cropped to its last block_size tokens, and the window rolls forward as the text grows.
A sample ends early at the tokenizer's end-of-text token.
"""

from __future__ import annotations

import argparse
import sys

import torch

from stagegpt.errors import StagegptError
from stagegpt.fileio import read_text_stream
from stagegpt.generation import check_sampling_args, nth_seed, stream

HELP = "generate text from a checkpoint, streamed as it is produced"
SEPARATOR = "---"
MAX_SAMPLES = 10_000


def add_arguments(parser: argparse.ArgumentParser) -> None:
    parser.add_argument("--ckpt", required=True, metavar="DIR",
                        help="checkpoint dir, or a run dir (its newest checkpoint)")
    prompt = parser.add_mutually_exclusive_group()
    prompt.add_argument("--prompt", default="", metavar="TEXT",
                        help="text to continue (default: empty, start from the start token)")
    prompt.add_argument("--prompt-file", metavar="F", help="read the prompt from this file")
    parser.add_argument("--max-new-tokens", type=int, default=200, metavar="N",
                        help="tokens to generate per sample (default: 200)")
    parser.add_argument("--temperature", type=float, default=1.0, metavar="T",
                        help="divide the logits by T; 0 is greedy (default: 1.0)")
    parser.add_argument("--top-k", type=int, default=None, metavar="K",
                        help="sample among the K most likely tokens only")
    parser.add_argument("--top-p", type=float, default=None, metavar="P",
                        help="sample from the smallest set of tokens whose probability reaches P")
    parser.add_argument("--seed", type=int, default=None, metavar="S",
                        help="seed the sampler; sample i uses S + i, mod 2**64 (default: "
                             "unseeded)")
    parser.add_argument("--num-samples", type=int, default=1, metavar="N",
                        help=f"samples to draw, separated by a '{SEPARATOR}' line (default: 1)")
    parser.add_argument("--chat", "--instruct", dest="chat", action="store_true",
                        help="the prompt is a user message: apply the checkpoint's chat "
                             "template and stop at its end marker (docs/finetune.md)")
    parser.add_argument("--no-cache", action="store_true",
                        help="recompute the whole context every step instead of using a KV cache")
    parser.add_argument("--dtype", choices=["float32", "bfloat16"], default="float32",
                        help="weights to sample with: bfloat16 halves the bytes read per "
                             "token (faster on most CPUs; docs/sampling.md has the measured "
                             "speed and loss) (default: float32)")
    parser.add_argument("--no-fast", action="store_true",
                        help="decode through the plain model only (stagegpt.fast off; the same "
                             "tokens, slower)")


def run(args: argparse.Namespace) -> int:
    check_sampling_args(args.max_new_tokens, args.temperature, args.top_k, args.top_p,
                        args.seed)
    if not 1 <= args.num_samples <= MAX_SAMPLES:
        raise StagegptError(f"--num-samples must be from 1 to {MAX_SAMPLES:,}, got "
                            f"{args.num_samples}")
    prompt = _read_prompt(args)
    if args.chat:
        from stagegpt.cli.chat import sample_with_template

        plain_only = [flag for flag, given in (("--dtype", args.dtype != "float32"),
                                               ("--no-cache", args.no_cache),
                                               ("--no-fast", args.no_fast)) if given]
        if plain_only:
            raise StagegptError(f"{', '.join(plain_only)} apply to plain sampling; --chat "
                                "samples the fine-tuned model as `stagegpt chat` does, in "
                                "fp32 with its cache")
        return sample_with_template(args, prompt)

    from stagegpt.interop import load_checkpoint

    ckpt = load_checkpoint(args.ckpt, dtype=args.dtype)
    tokenizer = ckpt.tokenizer
    if tokenizer is None:
        raise StagegptError(f"checkpoint {args.ckpt} has no tokenizer, so its text cannot be "
                            "encoded; sample from a checkpoint saved with its tokenizer")
    ids = tokenizer.encode(prompt) or [tokenizer.start_id]  # empty: the start token
    block_size = ckpt.model.config.block_size
    if len(ids) > block_size:
        print(f"stagegpt sample: note: the prompt's {len(ids)} tokens are cropped to the "
              f"model's context window, the last {block_size}", file=sys.stderr)
    idx = torch.tensor([ids], dtype=torch.long)
    stop_ids = () if tokenizer.eot_id is None else (tokenizer.eot_id,)

    out = sys.stdout
    for i in range(args.num_samples):
        if i:
            out.write(f"{SEPARATOR}\n")
        out.write(prompt)
        out.flush()
        text = tokenizer.stream_decoder()  # holds back a character split across tokens
        seed = nth_seed(args.seed, i)
        for column in stream(ckpt.model, idx, args.max_new_tokens, args.temperature,
                             args.top_k, args.top_p, seed, stop_ids, not args.no_cache,
                             fast=not args.no_fast):
            token = int(column[0, 0])
            if token not in stop_ids:
                out.write(text.push([token]))
                out.flush()
        out.write(text.flush() + "\n")
        out.flush()
    return 0


def _read_prompt(args: argparse.Namespace) -> str:
    if args.prompt_file is None:
        return args.prompt
    return read_text_stream(args.prompt_file, "prompt file")
