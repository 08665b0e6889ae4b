"""Train one stage on a prepared data dir.

Settings come from a preset, then an optional TOML file ([model] and [train] tables),
then the flags given here. Checkpoints go to OUT/checkpoints/step_N (the newest two are
kept) and OUT/best; metrics to OUT/metrics.jsonl and a loss curve to OUT/loss.png.
Ctrl-C finishes the current step, saves a checkpoint and exits; rerun the same command
with --resume to continue exactly where it stopped.

Distributed: torchrun --nproc_per_node N -m stagegpt train ...  (--batch-size is per process)
"""

from __future__ import annotations

import argparse

from stagegpt.errors import StagegptError
from stagegpt.model.config import PRESETS, ModelConfig
from stagegpt.model.stages import STAGES
from stagegpt.train.config import TrainConfig, load_toml, replace_known

HELP = "train one stage (1-9) on a prepared data dir, with exact --resume"
# settings with no flag of their own, set in the --config file only
FLAGS = {"beta1": "beta1 (in the --config file's [train] table)",
         "beta2": "beta2 (in the --config file's [train] table)",
         "out_dir": "--out", "data_dir": "--data"}

MODEL_FLAGS = ("block_size", "n_layer", "n_head", "n_embd", "dropout", "n_kv_head",
               "rope_theta", "mlp_hidden")
DEFAULTS = TrainConfig()
TRAIN_FLAGS = ("max_steps", "batch_size", "grad_accum", "lr", "min_lr", "warmup_steps",
               "weight_decay", "grad_clip", "eval_every", "eval_batches", "ckpt_every", "seed",
               "device", "dtype", "max_seconds")


def add_model_arguments(parser: argparse.ArgumentParser) -> None:
    group = parser.add_argument_group("model")
    group.add_argument("--preset", choices=list(PRESETS), metavar="NAME",
                       help="model shape preset, one of: " + ", ".join(PRESETS) +
                            " (default: small, or the --config file's preset)")
    group.add_argument("--config", metavar="FILE.toml",
                       help="TOML file with [model] and [train] tables (and optionally "
                            "`preset` and `stage`); flags override it")
    preset = " (default: the preset's)"
    group.add_argument("--block-size", type=int, help="context length T" + preset)
    group.add_argument("--n-layer", type=int, help="transformer blocks (stages 4-9)" + preset)
    group.add_argument("--n-head", type=int, help="attention heads (stages 5-9)" + preset)
    group.add_argument("--n-embd", type=int, help="model width C" + preset)
    group.add_argument("--dropout", type=float, help="dropout probability (stages 5-9)" + preset)
    group.add_argument("--n-kv-head", type=int,
                       help="key/value heads of stage 9's grouped-query attention "
                            "(default: n_head / 2, two query heads per key/value head; "
                            "n_head when that is odd)")
    group.add_argument("--rope-theta", type=float,
                       help="base of stages 7-9's rotary frequencies (default: 10000)")
    group.add_argument("--mlp-hidden", type=int,
                       help="SwiGLU width of stages 8-9 (default: round(8 * n_embd / 3))")
    group.add_argument("--untied-head", dest="tie_head", action="store_false", default=None,
                       help="stage 9: a head of its own instead of the token embedding")


def add_train_arguments(parser: argparse.ArgumentParser) -> None:
    group = parser.add_argument_group("training (each default is TrainConfig's)")
    group.add_argument("--max-steps", type=int, help="optimizer steps (sets the lr schedule)")
    group.add_argument("--max-seconds", type=float,
                       help="also stop after this much training time, in all (a resumed run "
                            "counts its earlier sessions)")
    group.add_argument("--batch-size", type=int, help="windows per micro-batch (per process)")
    group.add_argument("--grad-accum", type=int, help="micro-batches per optimizer step")
    group.add_argument("--lr", type=float, help="peak learning rate, above 0 and at most 1")
    group.add_argument("--min-lr", type=float,
                       help="learning rate at the end of the cosine, at most --lr")
    group.add_argument("--warmup-steps", type=int, help="linear warmup steps")
    group.add_argument("--weight-decay", type=float,
                       help="AdamW decay on matrices (times --lr at most 1)")
    group.add_argument("--grad-clip", type=float, help="clip the gradient norm (0 = off)")
    group.add_argument("--eval-every", type=int, help="steps between validation passes")
    group.add_argument("--eval-batches", type=int, help="fixed validation batches per pass")
    group.add_argument("--ckpt-every", type=int, help="steps between checkpoints")
    group.add_argument("--seed", type=int, help="seed for init, data order and dropout")
    group.add_argument("--device", choices=["cpu", "cuda", "mps", "auto"])
    group.add_argument("--dtype", choices=["float32", "bfloat16"],
                       help="bfloat16 runs matmuls under autocast")
    group.add_argument("--compile", action="store_true", default=None,
                       help="torch.compile the model")
    group.add_argument("--no-fast", action="store_true",
                       help="train the plain model only (stagegpt.fast off: the same numbers, "
                            "slower)")
    for action in group._group_actions:
        name = action.dest
        if name in TRAIN_FLAGS and action.help is not None:
            action.help += f" (default: {getattr(DEFAULTS, name)})"
        elif name in TRAIN_FLAGS:
            action.help = f"default: {getattr(DEFAULTS, name)}"


def add_arguments(parser: argparse.ArgumentParser) -> None:
    parser.add_argument("--stage", type=int, required=True, choices=list(STAGES),
                        metavar="N", help="which stage to train, 1 to 9 (see `stagegpt "
                        "ladder --help` for what each adds); a --config file's `stage` must "
                        "agree")
    parser.add_argument("--data", required=True, help="data dir written by `stagegpt prepare`")
    parser.add_argument("--out", required=True, help="run dir for checkpoints and metrics")
    parser.add_argument("--resume", action="store_true",
                        help="continue the run in --out from its newest checkpoint")
    parser.add_argument("--no-progress", action="store_true", help="hide the progress bar")
    add_model_arguments(parser)
    add_train_arguments(parser)


def configs_from_args(args: argparse.Namespace,
                      one_budget: bool = False) -> tuple[ModelConfig, TrainConfig]:
    """preset -> TOML file -> flags, later ones winning. one_budget: refuse max_steps
    together with max_seconds, wherever each was set (the ladder's rule)."""
    toml = load_toml(args.config) if args.config else {}
    check_toml_stage(toml, getattr(args, "stage", None), args.config)
    model = ModelConfig.from_preset(args.preset or toml.get("preset", "small"))
    model = replace_known(model, toml.get("model", {}), f"[model] table ({args.config})")
    model = replace_known(model, {k: getattr(args, k) for k in (*MODEL_FLAGS, "tie_head")
                                  if getattr(args, k, None) is not None})
    flags = {k: getattr(args, k) for k in TRAIN_FLAGS if getattr(args, k, None) is not None}
    if getattr(args, "compile", None):
        flags["compile"] = True
    train_values = {**toml.get("train", {}), **flags}
    if one_budget and {"max_steps", "max_seconds"} <= set(train_values):
        raise StagegptError("give --max-steps or --max-seconds, not both (counting the "
                            "--config file's [train] table)")
    return model, replace_known(TrainConfig(), train_values, f"[train] table ({args.config})")


def check_toml_stage(toml: dict, stage: int | None, path: str | None) -> None:
    """A TOML `stage` must be the stage this command trains (the ladder takes --stages)."""
    if "stage" not in toml or toml["stage"] == stage:
        return
    if stage is None:
        raise StagegptError(f"config file {path} sets stage = {toml['stage']}, but the ladder "
                            "trains the stages of --stages; remove `stage` from the file")
    raise StagegptError(f"config file {path} sets stage = {toml['stage']} but --stage is "
                        f"{stage}; remove `stage` from the file or pass --stage "
                        f"{toml['stage']}")


def run(args: argparse.Namespace) -> int:
    from stagegpt.train.distributed import init_distributed, lost_a_peer, world_and_rank
    from stagegpt.train.trainer import Trainer

    model_config, train_config = configs_from_args(args)
    distributed = init_distributed()
    try:
        trainer = Trainer(args.stage, model_config, train_config, args.data, args.out,
                          resume=args.resume, progress=not args.no_progress,
                          fast=not args.no_fast)
        result = trainer.fit()
    except RuntimeError as err:
        if not (distributed and lost_a_peer(err)):
            raise
        world, rank = world_and_rank()
        raise StagegptError(f"process {rank} of {world} stopped: another process of this run "
                            "ended first (its own error, or torchrun's report, says why); fix "
                            "that and rerun (with `resume` if a checkpoint was saved)",
                            mentions=("resume",)) from None
    finally:
        if distributed:
            import torch.distributed as dist

            dist.destroy_process_group()
    if result.interrupted:
        return 130
    if trainer.rank == 0:
        print(f"stage {args.stage}: step {result.step}, train loss {_loss(result.train_loss)}, "
              f"val loss {_loss(result.val_loss)}, {result.tokens_per_sec:,.0f} tokens/s, "
              f"{result.elapsed:.1f} s -> {args.out}")
    return 0


def _loss(value: float | None) -> str:
    """A loss for the summary line: a finished run resumed without its metrics has none."""
    return "-" if value is None else f"{value:.4f}"
