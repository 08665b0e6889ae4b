"""What a fine-tuning run reports in OUT/results.json, and `finetune()`, the Python API.

classify: accuracy and a confusion table on the val and test splits, next to the
majority-class baseline (always answering the most common training label).
instruct: the loss on reply tokens over the whole val split and, for records that carry
an exact "answer", the share of greedy replies equal to it, before and after tuning.
"""

from __future__ import annotations

import copy
import math
import resource
import sys
from pathlib import Path
from typing import Any

import torch
import torch.nn.functional as F

from stagegpt.fileio import write_json
from stagegpt.finetune.classify import majority_baseline, pad_batch, predict, scores
from stagegpt.finetune.lora import merge_lora, trainable_count
from stagegpt.finetune.reply import reply
from stagegpt.finetune.templates import IGNORE, encode_prompt
from stagegpt.finetune.trainer import FinetuneSettings, FinetuneTrainer
from stagegpt.model import LanguageModel
from stagegpt.model.layers import eval_mode
from stagegpt.train.config import TrainConfig

MAX_EXACT_MATCH = 200  # records per split scored by generation (each a greedy decode)


def classify_results(trainer: FinetuneTrainer) -> dict[str, Any]:
    labels, pad = trainer.labels, trainer.tokenizer.start_id
    train_labels = [label for _, label in trainer.encoded["train"]]
    out: dict[str, Any] = {"labels": labels}
    for split in ("val", "test"):
        items = trainer.encoded[split]
        truth = [label for _, label in items]
        probs = predict(trainer.model, [ids for ids, _ in items], pad, trainer.tc.batch_size)
        split_scores = scores(probs.argmax(-1).tolist(), truth, labels)
        majority, baseline = majority_baseline(train_labels, truth, labels)
        out[f"{split}_accuracy"] = split_scores["accuracy"]
        out[f"{split}_confusion"] = split_scores["confusion"]
        out[f"{split}_records"] = split_scores["n"]
        out[f"{split}_majority_baseline"] = baseline
        out["majority_label"] = majority
    out["majority_baseline"] = out["test_majority_baseline"]
    if out["test_records"] == 0:  # no test split: the baseline of what was measured
        out["majority_baseline"] = out["val_majority_baseline"]
    return out


@torch.no_grad()
def reply_loss(lm: LanguageModel, items: list[tuple], pad: int, batch_size: int) -> float:
    """Mean cross-entropy per reply token over `items` (inputs, targets)."""
    total, count = 0.0, 0
    with eval_mode(lm):
        for start in range(0, len(items), batch_size):
            chunk = items[start:start + batch_size]
            x, _ = pad_batch([x for x, _ in chunk], pad)
            y, _ = pad_batch([y for _, y in chunk], IGNORE)
            device = next(lm.parameters()).device
            logits, _ = lm(x.to(device))  # (B, T, V)
            total += F.cross_entropy(logits.flatten(0, 1).float(), y.to(device).flatten(),
                                     reduction="sum").item()
            count += int((y != IGNORE).sum())
    return total / count if count else math.nan


def exact_match(lm: LanguageModel, trainer: FinetuneTrainer, records: list[dict]) -> dict:
    """Greedy replies to the records that carry an "answer", compared with it exactly
    (surrounding whitespace ignored)."""
    scored = [r for r in records if isinstance(r.get("answer"), str)][:MAX_EXACT_MATCH]
    if not scored:
        return {"exact_match": None, "exact_match_records": 0}
    tok, template = trainer.tokenizer, trainer.template
    hits = 0
    for record in scored:
        prompt = encode_prompt(tok, template, record["messages"][:-1])
        budget = len(tok.encode(record["answer"])) + 8
        hits += reply(lm, tok, template, prompt, budget).strip() == record["answer"].strip()
    return {"exact_match": hits / len(scored), "exact_match_records": len(scored)}


def instruct_results(trainer: FinetuneTrainer) -> dict[str, Any]:
    pad = trainer.tokenizer.start_id
    tuned = merge_lora(copy.deepcopy(trainer.lm)).eval()  # plain layers decode fastest
    out: dict[str, Any] = {"val_loss": reply_loss(tuned, trainer.encoded["val"], pad,
                                                  trainer.tc.batch_size),
                           "base_val_loss": reply_loss(trainer.base.model, trainer.encoded["val"],
                                                       pad, trainer.tc.batch_size)}
    for split in ("val", "test"):
        after = exact_match(tuned, trainer, trainer.records[split])
        if after["exact_match_records"]:
            before = exact_match(trainer.base.model, trainer, trainer.records[split])
            out[f"{split}_exact_match"] = after["exact_match"]
            out[f"{split}_exact_match_before"] = before["exact_match"]
            out[f"{split}_exact_match_records"] = after["exact_match_records"]
    return out


def peak_rss_mb() -> float:
    """This process's peak resident memory (ru_maxrss: KiB on Linux, bytes on macOS)."""
    peak = resource.getrusage(resource.RUSAGE_SELF).ru_maxrss
    return peak / (1 << 20) if sys.platform == "darwin" else peak / 1024


def finetune(base: str | Path, data_dir: str | Path, out_dir: str | Path,
             settings: FinetuneSettings, train_config: TrainConfig | None = None,
             resume: bool = False, progress: bool = True, on_step=None) -> dict[str, Any]:
    """Fine-tune `base` on `data_dir` into `out_dir`; return (and write) results.json."""
    trainer = FinetuneTrainer(base, data_dir, out_dir,
                              TrainConfig() if train_config is None else train_config,
                              settings, resume, progress, on_step)
    result = trainer.fit()
    model = trainer.model
    total = sum(p.numel() for p in {id(p): p for p in model.parameters()}.values())
    results: dict[str, Any] = {
        "task": settings.task, "train": settings.mode, "base": str(trainer.base_dir),
        "data": str(Path(data_dir)), "steps": result.step, "interrupted": result.interrupted,
        "final_train_loss": result.train_loss, "final_val_loss_fixed_batches": result.val_loss,
        "trainable_params": trainable_count(model), "total_params": total,
        "step_time_s": result.elapsed / result.step if result.step else None,
        "peak_rss_mb": round(peak_rss_mb(), 1),
        "lora": settings.lora.to_dict() if settings.lora else None,
    }
    if settings.task == "classify":
        results.update(classify_results(trainer))
    else:
        results.update(instruct_results(trainer))
    write_json(Path(out_dir) / "results.json", results)
    return results
