"""Throughput accounting: the peak FLOP/s that MFU is measured against."""

from __future__ import annotations

import statistics
import time

import torch

# Dense bf16 tensor-core peaks (no sparsity), per GPU.
GPU_PEAK_FLOPS = {"H100": 989e12, "H200": 989e12, "A100": 312e12, "L4": 121e12, "A10G": 70e12}


def measure_matmul_flops(m: int, k: int, n: int, device: torch.device, dtype: torch.dtype = torch.float32,
                         repeats: int = 7) -> float:
    """Median FLOP/s of an (m x k) @ (k x n) matmul: the practical peak at a model's own GEMM shape."""
    a = torch.randn(m, k, device=device, dtype=dtype)
    b = torch.randn(k, n, device=device, dtype=dtype)
    timings = []
    for _ in range(repeats + 1):  # the first run warms up
        if device.type == "cuda":
            torch.cuda.synchronize(device)
        start = time.perf_counter()
        a @ b
        if device.type == "cuda":
            torch.cuda.synchronize(device)
        timings.append(time.perf_counter() - start)
    return 2 * m * k * n / statistics.median(timings[1:])


def peak_flops(configured: float | None, device: torch.device,
               gemm_shape: tuple[int, int, int]) -> tuple[float, str]:
    """(peak FLOP/s per worker, where it came from): configured, a known GPU, or measured on this CPU."""
    if configured:
        return configured, "configured"
    if device.type == "cuda":
        name = torch.cuda.get_device_name(device)
        for key, value in GPU_PEAK_FLOPS.items():
            if key in name:
                return value, f"{key} bf16 dense peak"
    return measure_matmul_flops(*gemm_shape, device=device), f"measured fp32 matmul {gemm_shape}"
