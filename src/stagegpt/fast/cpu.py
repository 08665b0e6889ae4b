"""What this CPU is, for the fast layer's choices (and for a fair benchmark report).

Which product is fastest depends on the CPU, measured on the machines stagegpt is
developed on (2-core cloud VMs, torch 2.13.0, 2 threads):

- AMD with AVX-512 (EPYC, Zen 4): oneDNN's fp32 products of training ~2x MKL's (MKL
  runs its AVX2 code there); MKL's matrix-vector products (decoding) use one thread;
  bf16 products native.
- AMD without AVX-512 (EPYC, Zen 3): MKL's fp32 products win (173 vs 127 GFLOP/s);
  matrix-vector products as above; bf16 products emulated (`SLOW_BF16` below).
- Intel with AVX-512 (Xeon): MKL wins (oneDNN's conversions made a step 1.4-1.6x
  slower), its matrix-vector products are threaded; bf16 products native.

so `stagegpt.fast.onednn` routes training products through oneDNN only on AMD CPUs with
AVX-512, `stagegpt.fast.decode` keeps its weight copies on AMD CPUs, and training or
sampling in bf16 says once (`note_if_slow_bf16`) where the CPU has no native bf16 products.
"""

from __future__ import annotations

import functools
import platform
import sys
from pathlib import Path

import torch


def cpuinfo(field: str) -> str:
    """A field of the first CPU in Linux's /proc/cpuinfo ("vendor_id", "model name"), or ""."""
    try:
        for line in Path("/proc/cpuinfo").read_text(errors="replace").splitlines():
            if line.startswith(field):
                return line.partition(":")[2].strip()
    except OSError:
        pass
    return ""


def vendor() -> str:
    """The CPU's vendor id ("GenuineIntel", "AuthenticAMD"), or ""."""
    return cpuinfo("vendor_id")


@functools.cache
def amd_x86() -> bool:
    """An AMD x86-64 CPU, where MKL takes its generic code paths."""
    return platform.machine().lower() in ("x86_64", "amd64") and vendor() == "AuthenticAMD"


def avx512() -> bool:
    """PyTorch's kernels run their AVX-512 code here."""
    return torch.backends.cpu.get_cpu_capability().startswith("AVX512")


@functools.cache
def native_bf16() -> bool:
    """bf16 matrix products run in oneDNN's native kernels here (AVX-512 BF16 or AMX);
    elsewhere PyTorch emulates them (`SLOW_BF16`)."""
    try:
        return bool(torch.ops.mkldnn._is_mkldnn_bf16_supported())
    except (AttributeError, RuntimeError):
        return False


def bf16_is_slow(device: torch.device | str) -> bool:
    """bf16 matrix products on `device` would be emulated (a CPU without native ones)."""
    return torch.device(device).type == "cpu" and not native_bf16()


# What emulated bf16 costs here, by use (EPYC Zen 3, 2 threads, `seed` shape): a training
# step under autocast 33 s against 0.65 in fp32; a forward pass of 256 tokens with bf16
# weights 0.70 s against 0.15; decoding with bf16 weights 0.95-1.13x fp32's tokens/s
# (`benchmarks/decode.py --bf16`), matrix-vector products being bound by memory.
SLOW_BF16 = {
    "training": "a bf16 training step runs about 50 times slower than float32 here",
    "inference": "with bf16 weights a whole forward pass (eval) runs about 5 times slower "
                 "than float32 here, and sampling about as fast",
}


@functools.cache
def note_slow_bf16(use: str) -> None:
    """Say once per process and use ("training" or "inference"), on stderr, what bf16
    costs here (the user asked for it)."""
    print(f"note: this CPU has no native bf16 matrix products (AVX-512 BF16 or AMX), so "
          f"PyTorch emulates them: {SLOW_BF16[use]}; use float32 here", file=sys.stderr)


def note_if_slow_bf16(dtype: str, device: torch.device | str, use: str) -> None:
    """`note_slow_bf16(use)` if `dtype` ("float32" or "bfloat16") would be slow on `device`."""
    if dtype == "bfloat16" and bf16_is_slow(device):
        note_slow_bf16(use)
