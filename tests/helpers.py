"""Small things several test modules build (tests/ is on sys.path through conftest.py)."""

import time
from pathlib import Path

import torch

from stagegpt import build_model


def peaky_model(stage, config, seed=0):
    """A random model with large weights: sharp, varied greedy choices instead of one token
    repeated, so a wrong position, a stale cache entry or a changed product shows."""
    torch.manual_seed(seed)
    model = build_model(stage, config)
    with torch.no_grad():
        for p in model.parameters():
            if p.dim() >= 2:
                p.normal_(0.0, 1.0)
    return model.eval()


def last_step_both_ways(decoder, model, prompt):
    """The hidden states (fast, plain) of `prompt`'s last token, each after a prefill of the
    tokens before it: `decoder` against `model`'s own plain decoding path."""
    from stagegpt.generation.decoding import PlainDecoder

    T = prompt.size(1)
    states = []
    with torch.inference_mode():
        for steps in (decoder, PlainDecoder(model)):
            caches = model.make_kv_cache(prompt.size(0))
            steps.prefill(prompt[:, :T - 1], caches)
            states.append(steps.step(prompt[:, T - 1:], caches, T - 1))
    return tuple(states)


def wait_for(condition, process=None, timeout=60.0):
    """Poll `condition` until it holds; fail (killing `process`) if the process ends first
    or it never does."""
    deadline = time.monotonic() + timeout
    while not condition():
        ended = process is not None and process.poll() is not None
        if ended or time.monotonic() > deadline:
            said = "" if process is None else f"; the process said {process.stderr.read()!r}"
            if process is not None:
                process.kill()
            raise AssertionError(f"gave up waiting{said}")
        time.sleep(0.05)


def running(pid: int) -> bool:
    """Whether process `pid` exists and has not ended (a zombie has)."""
    try:
        return Path(f"/proc/{pid}/stat").read_text().rsplit(")", 1)[1].split()[0] != "Z"
    except OSError:
        return False
