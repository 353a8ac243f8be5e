"""What this machine computes fast, detected at run time, so that no ``auto`` setting depends on
the machine a developer happened to use.

On x86 CPUs bfloat16 matrix products are fast only with AMX tiles (Sapphire Rapids and later:
several times fp32's speed) or AVX-512 BF16 (about fp32's speed); elsewhere (AVX2 only) torch
computes them in software: a 1369 x 1024 x 4096 bf16 matmul measured 32 s there against 0.08 s
in fp32, and the 4-block ViT-L benchmark ran 5x slower. float16 on a CPU is fast only with AMX-FP16.
"""
from __future__ import annotations

import platform


def _probe(name: str) -> bool:
    probe = getattr(__import__("torch").cpu, name, None)  # private in torch 2.x; absent = not supported
    try:
        return bool(probe()) if probe is not None else False
    except Exception:  # pragma: no cover - a torch build without the probe's backend
        return False


def cpu_has_amx() -> bool:
    """AMX tiles: bfloat16 matmuls 6-7x faster than fp32 (measured on this project's machines)."""
    return _probe("_is_amx_tile_supported")


def cpu_has_avx512_bf16() -> bool:
    return _probe("_is_avx512_bf16_supported")


def cpu_bf16_is_fast() -> bool:
    """bfloat16 matmuls run in hardware: AMX or AVX-512 BF16."""
    return cpu_has_amx() or cpu_has_avx512_bf16()


def cpu_fp16_is_fast() -> bool:
    return _probe("_is_amx_fp16_supported")


def cpu_name() -> str:
    """The CPU's model name (Linux: /proc/cpuinfo), for benchmark records."""
    try:
        with open("/proc/cpuinfo") as f:
            for line in f:
                if line.startswith("model name"):
                    return line.split(":", 1)[1].strip()
    except OSError:
        pass
    return platform.processor() or platform.machine()


def cpu_summary() -> dict:
    """The CPU and the bf16 / fp16 features that decide the ``auto`` precisions."""
    return {"name": cpu_name(), "amx": cpu_has_amx(), "avx512_bf16": cpu_has_avx512_bf16(),
            "amx_fp16": cpu_fp16_is_fast()}
