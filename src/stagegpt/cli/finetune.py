"""Fine-tune a pretrained checkpoint: a classifier, or an instruction follower; fully,
partly or with LoRA.

  stagegpt finetune --task classify --base runs/char5 --data data/genre --out runs/genre
  stagegpt finetune --task classify --base runs/char5 --data data/genre --out runs/genre-all \\
      --train all
  stagegpt finetune --task instruct --base runs/char5 --data data/chat --out runs/chat \\
      --lora-rank 8 --lora-alpha 16 --lora-targets c_attn,c_proj,c_fc

--train: head (classify's default: only the new head learns), last-block (plus the last
transformer block and the final norm), all (every weight; instruct's default). With
--lora-rank the base stays frozen and only the adapters (and a classifier's head) learn.
Checkpoints, metrics and --resume work as in `stagegpt train`; at the end OUT/results.json
holds val/test accuracy, confusion tables and the majority baseline (classify) or the
reply-token val loss and exact-match accuracy before and after (instruct).
Training defaults differ from `train`'s: --max-steps 300, --warmup-steps 20,
--batch-size 16, --eval-every 50, --ckpt-every 100, and --lr 1e-3 for head and LoRA runs,
3e-4 when base weights learn. Batches are padded (one record per row), not packed.
"""

from __future__ import annotations

import argparse

from stagegpt.cli.train import TRAIN_FLAGS
from stagegpt.errors import StagegptError
from stagegpt.train.config import TrainConfig, replace_known

HELP = "fine-tune a checkpoint into a classifier or instruction follower (full or LoRA)"
FLAGS = {"rank": "--lora-rank", "alpha": "--lora-alpha", "targets": "--lora-targets",
         "out_dir": "--out", "data_dir": "--data"}
FINETUNE_DEFAULTS = {"max_steps": 300, "warmup_steps": 20, "batch_size": 16,
                     "eval_every": 50, "ckpt_every": 100, "eval_batches": 10}

TRAIN_HELP = {"max_steps": "optimizer steps", "batch_size": "records per batch",
              "lr": "peak learning rate (the minimum is a tenth)",
              "warmup_steps": "linear warmup steps", "eval_every": "steps between val passes",
              "eval_batches": "val batches per pass", "ckpt_every": "steps between checkpoints",
              "seed": "seed for the head's and adapters' init, data order and dropout",
              "weight_decay": "AdamW decay on matrices", "grad_clip": "clip the gradient norm",
              "max_seconds": "also stop after this much training"}


def add_arguments(parser: argparse.ArgumentParser) -> None:
    parser.add_argument("--task", required=True, choices=["classify", "instruct"],
                        help="classify: a new head labels each text (data from prepare genre, "
                             "r8, labels); instruct: replies under a chat template (data from "
                             "prepare chat, instruct)")
    parser.add_argument("--base", required=True, metavar="CKPT",
                        help="the pretrained checkpoint (or run dir, or Hugging Face GPT-2 or "
                             "Llama dir)")
    parser.add_argument("--data", required=True, metavar="DIR",
                        help="a fine-tuning data dir (stagegpt prepare genre|r8|labels|chat|"
                             "instruct ... --tokenizer from:BASE)")
    parser.add_argument("--out", required=True, metavar="OUT", help="run dir to write")
    parser.add_argument("--train", choices=["head", "last-block", "all"],
                        help="which weights learn (default: head for classify, all for "
                             "instruct)")
    parser.add_argument("--truncate", action="store_true",
                        help="classify: cut texts longer than the context to their first "
                             "block_size tokens (default: refuse them)")
    parser.add_argument("--resume", action="store_true",
                        help="continue the run in --out from its newest checkpoint")
    parser.add_argument("--no-progress", action="store_true", help="hide the progress bar")
    lora = parser.add_argument_group("LoRA (adapters on a frozen base)")
    lora.add_argument("--lora-rank", type=int, metavar="R", help="rank r of the adapters")
    lora.add_argument("--lora-alpha", type=float, metavar="A",
                      help="scale: updates are multiplied by A / r (default: 2 r)")
    lora.add_argument("--lora-targets", metavar="NAMES",
                      help="comma-separated linear layers to adapt: c_attn, c_proj, c_fc, "
                           "c_gate (default: c_attn,c_proj,c_fc)")
    group = parser.add_argument_group("training (as in stagegpt train)")
    for name, what in TRAIN_HELP.items():
        kind = float if name in ("lr", "weight_decay", "grad_clip", "max_seconds") else int
        default = FINETUNE_DEFAULTS.get(name, getattr(TrainConfig(), name))
        if name == "lr":
            default = "1e-3 for head and LoRA runs, 3e-4 when base weights learn"
        group.add_argument("--" + name.replace("_", "-"), type=kind,
                           help=f"{what} (default: {default})")
    group.add_argument("--device", choices=["cpu", "cuda", "mps", "auto"],
                       help="where to train (default: cpu; auto picks cuda, then mps, then cpu)")


def lora_from_args(args: argparse.Namespace):
    from stagegpt.finetune import LoRAConfig

    if args.lora_rank is None:
        if args.lora_alpha is not None or args.lora_targets is not None:
            raise StagegptError("--lora-alpha and --lora-targets need --lora-rank")
        return None
    alpha = args.lora_alpha if args.lora_alpha is not None else 2.0 * args.lora_rank
    targets = ("c_attn", "c_proj", "c_fc") if args.lora_targets is None else tuple(
        t.strip() for t in args.lora_targets.split(",") if t.strip())
    return LoRAConfig(args.lora_rank, alpha, targets)


def train_config_from_args(args: argparse.Namespace, learns_base: bool) -> TrainConfig:
    values = {**FINETUNE_DEFAULTS, "lr": 3e-4 if learns_base else 1e-3, "min_lr": 0.0}
    values |= {k: getattr(args, k) for k in TRAIN_FLAGS if getattr(args, k, None) is not None}
    values["min_lr"] = values["lr"] / 10
    return replace_known(TrainConfig(), values)


def run(args: argparse.Namespace) -> int:
    from stagegpt.finetune import FinetuneSettings, finetune
    from stagegpt.finetune.classify import format_confusion

    settings = FinetuneSettings(args.task, args.train, lora_from_args(args), args.truncate)
    config = train_config_from_args(args, settings.mode in ("last-block", "all"))
    results = finetune(args.base, args.data, args.out, settings, config, args.resume,
                       progress=not args.no_progress)
    if results["interrupted"]:
        return 130
    print(f"{settings.task} ({settings.mode}): {results['trainable_params']:,} trainable of "
          f"{results['total_params']:,} parameters; {results['steps']} steps, "
          f"{results['step_time_s'] or 0:.3f} s/step, peak memory {results['peak_rss_mb']:,.0f} MB")
    if settings.task == "classify":
        for split in ("val", "test"):
            if results[f"{split}_accuracy"] is not None:
                print(f"{split} accuracy {results[f'{split}_accuracy']:.3f} (majority baseline "
                      f"{results[f'{split}_majority_baseline']:.3f}, "
                      f"{results[f'{split}_records']} records)")
        if results["test_accuracy"] is not None:
            print(format_confusion(results["test_confusion"]))
    else:
        print(f"val loss on reply tokens {results['val_loss']:.4f} (base "
              f"{results['base_val_loss']:.4f})")
        for split in ("val", "test"):
            if f"{split}_exact_match" in results:
                print(f"{split} exact match {results[f'{split}_exact_match']:.3f} (before "
                      f"{results[f'{split}_exact_match_before']:.3f}, "
                      f"{results[f'{split}_exact_match_records']} records)")
    print(f"-> {args.out}/results.json")
    return 0


