"""Throughput accounting: the peak FLOP/s that MFU is measured against."""

from __future__ import annotations

import time

import torch

# Dense bf16 tensor-core peaks (no sparsity), per GPU.
GPU_PEAK_FLOPS = {"H100": 989e12, "H200": 989e12, "A100": 312e12, "L4": 121e12, "A10G": 70e12}


def time_matmuls(m: int, k: int, n: int, device: torch.device, dtype: torch.dtype = torch.float32,
                 min_seconds: float = 1.0, min_repeats: int = 10) -> list[float]:
    """Seconds of each of back-to-back (m x k) @ (k x n) matmuls, repeated for >= min_seconds and min_repeats."""
    a = torch.randn(m, k, device=device, dtype=dtype)
    b = torch.randn(k, n, device=device, dtype=dtype)
    c = a @ b  # warm up (thread pools, kernels); then into the same output: the GEMM, not the allocator
    times: list[float] = []
    while sum(times) < min_seconds or len(times) < min_repeats:
        if device.type == "cuda":
            torch.cuda.synchronize(device)
        start = time.perf_counter()
        torch.matmul(a, b, out=c)
        if device.type == "cuda":
            torch.cuda.synchronize(device)
        times.append(time.perf_counter() - start)
    return times


def measure_matmul_flops(m: int, k: int, n: int, device: torch.device, dtype: torch.dtype = torch.float32,
                         min_seconds: float = 1.0, min_repeats: int = 10) -> float:
    """Best FLOP/s of an (m x k) @ (k x n) matmul repeated for >= min_seconds: the practical peak at a
    model's own GEMM shape. The best, not the median: a busy neighbour can only make a run slower."""
    return 2 * m * k * n / min(time_matmuls(m, k, n, device, dtype, min_seconds, min_repeats))


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
