"""Convert stage 5 and stage 9 checkpoints to and from Hugging Face GPT-2 / Llama dirs.

  stagegpt convert --from-hf gpt2/ --out ckpt/gpt2        Hugging Face GPT-2 -> stagegpt
  stagegpt convert --to-hf --ckpt runs/x --out hf/x       stagegpt stage 5 -> Hugging Face

Stage 9 works the same way with LlamaForCausalLM directories: --to-hf on a stage 9
checkpoint writes a Llama dir, and --from-hf reads one (its config.json says
model_type "llama") into stage 9.

A Hugging Face GPT-2 dir holds config.json and model.safetensors (or pytorch_model.bin,
read with torch.load(weights_only=True), so nothing in it can run code). --from-hf
attaches GPT-2's tokenizer, so the model must have GPT-2's vocabulary of 50,257 tokens
(or pass --no-tokenizer). --to-hf writes config.json and model.safetensors, which
transformers.GPT2LMHeadModel.from_pretrained(DIR) loads offline. Only stage 5 has GPT-2's
architecture; a stage 5 model trained with bias=False is written with zero biases (GPT-2
always has biases; zeros change no output). --out must not exist yet or be empty.
"""

from __future__ import annotations

import argparse
from pathlib import Path

from stagegpt.errors import StagegptError
from stagegpt.fileio import check_swappable
from stagegpt.model.config import GPT2_VOCAB

HELP = "convert stage 5 / stage 9 to and from Hugging Face GPT-2 / Llama directories"


def add_arguments(parser: argparse.ArgumentParser) -> None:
    direction = parser.add_mutually_exclusive_group(required=True)
    direction.add_argument("--from-hf", metavar="DIR",
                           help="import this Hugging Face GPT-2 or Llama dir (config.json + "
                                "weights) into stage 5 or stage 9")
    direction.add_argument("--to-hf", action="store_true",
                           help="export the stage 5 or stage 9 checkpoint given by --ckpt")
    parser.add_argument("--ckpt", metavar="DIR",
                        help="with --to-hf: the stagegpt checkpoint or run dir to export")
    parser.add_argument("--out", metavar="DIR", required=True,
                        help="directory to write (must not exist yet, or be empty)")
    parser.add_argument("--no-tokenizer", action="store_true",
                        help="with --from-hf: write the checkpoint without GPT-2's tokenizer")


def _check_out(out: Path) -> None:
    """Refuse to replace anything: the write swaps the whole directory in."""
    check_swappable(out)
    if out.exists() and (not out.is_dir() or any(out.iterdir())):
        raise StagegptError(f"--out {out} already exists and is not empty; choose a new path")


def run(args: argparse.Namespace) -> int:
    from stagegpt.fileio import read_json
    from stagegpt.finetune.checkpoint import HEAD_FILE
    from stagegpt.interop import gpt2 as hf
    from stagegpt.interop import llama, load_checkpoint
    from stagegpt.interop.loading import hf_loader
    from stagegpt.train.checkpoints import save_checkpoint

    out = Path(args.out)
    _check_out(out)
    if args.to_hf:
        if args.ckpt is None:
            raise StagegptError("--to-hf needs --ckpt DIR, the stage 5 or 9 checkpoint to export")
        if args.no_tokenizer:
            raise StagegptError("--no-tokenizer goes with --from-hf; --to-hf never writes a "
                                "tokenizer")
        checkpoint = load_checkpoint(args.ckpt)
        model = checkpoint.model
        if model.stage not in (5, 9):
            raise StagegptError(f"{args.ckpt} holds stage {model.stage}; only stage 5 (as "
                                "GPT-2) and stage 9 (as Llama) convert to Hugging Face")
        if (checkpoint.path / HEAD_FILE).exists():
            print(f"note: {checkpoint.path}'s classification head ({HEAD_FILE}) has no place "
                  "in a Hugging Face language model; exporting the language model alone")
        if model.stage == 9:
            llama.save_llama_dir(out, model)
            print(f"wrote Hugging Face Llama dir {out}: {model.num_params():,} parameters")
            return 0
        hf.save_hf_dir(out, model)
        note = "" if model.config.bias else " (bias=False: wrote zero biases)"
        print(f"wrote Hugging Face GPT-2 dir {out}: {model.num_params():,} parameters{note}")
        return 0
    if args.ckpt is not None:
        raise StagegptError("--ckpt goes with --to-hf; --from-hf takes the Hugging Face dir itself")
    config_path = Path(args.from_hf) / "config.json"
    model = hf_loader(read_json(config_path, "Hugging Face config"), config_path)(args.from_hf)
    tokenizer = None
    if not args.no_tokenizer:
        vocab = model.config.vocab_size
        if vocab != GPT2_VOCAB:
            raise StagegptError(
                f"{args.from_hf} has vocab_size {vocab}, not GPT-2's {GPT2_VOCAB}, so GPT-2's "
                "tokenizer does not fit it; pass --no-tokenizer to convert the weights alone"
            )
        try:
            tokenizer = hf.gpt2_tokenizer()
        except StagegptError as err:
            raise StagegptError(
                f"GPT-2's tokenizer is needed for --from-hf and could not be loaded ({err}); "
                "fix that, or pass --no-tokenizer"
            ) from None
    save_checkpoint(out, model, tokenizer, extra={"converted_from": str(args.from_hf)})
    what = "GPT-2 tokenizer" if tokenizer is not None else "no tokenizer"
    print(f"wrote stagegpt checkpoint {out}: stage {model.stage}, {model.num_params():,} "
          f"parameters, {what}")
    return 0
