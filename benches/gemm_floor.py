#!/usr/bin/env python3
"""The GEMM peak of this machine and the time floors of the full-size training steps.

Rates (median of 5 after 2 warm-up, --threads threads): an f32 3072^3 product through
numpy's bundled OpenBLAS (it honours OPENBLAS_CORETYPE like the system one) and through
PyTorch (MKL), and a bf16 1024^3 one through PyTorch (oneDNN; median of 3). FLOPs of one step as idat-pipe runs
it: forward, plus the input-gradient (dL/dx) backward of blocks 1.. (nothing trainable comes
before the first block's adapter, so block 0 has no backward; no frozen weight gradients),
with the last block on the class token's row after its qkv projection and the attention
probabilities kept for the backward. The floor is FLOPs / peak rate.

    /work/venv/bin/python benches/gemm_floor.py --threads 2
"""
import argparse
import os
import statistics
import time


def rate(f, flop, reps=5):
    for _ in range(2):
        f()
    t = []
    for _ in range(reps):
        t0 = time.perf_counter()
        f()
        t.append(time.perf_counter() - t0)
    return flop / statistics.median(t) / 1e9


def vit_flops(d, depth, batch, n=197, patches=196, patch_k=768):
    """Forward + dL/dx backward GEMM FLOPs of one ViT (embed dim d) at batch `batch`."""
    m = batch * n
    fwd = 2 * batch * patches * patch_k * d  # patch embedding (no backward)
    bwd = 0
    for i in range(depth):
        last = i == depth - 1
        mq = batch if last else m  # rows after the attention
        rows = 1 if last else n  # query rows per sample
        f = 2 * m * d * 3 * d  # qkv
        f += 2 * 2 * batch * rows * n * d  # q k^T, P v
        f += 2 * mq * d * d + 2 * 2 * mq * d * 4 * d  # proj, fc1, fc2
        b = 2 * m * d * 3 * d + 4 * 2 * batch * rows * n * d + 2 * mq * d * d + 2 * 2 * mq * d * 4 * d
        fwd += f
        if i > 0:
            bwd += b
    return fwd + bwd


def main():
    p = argparse.ArgumentParser()
    p.add_argument("--threads", type=int, default=2)
    p.add_argument("--size", type=int, default=3072)
    # Smaller: without AVX512-BF16 oneDNN's bf16 product can be ~100x slower than f32.
    p.add_argument("--bf16-size", type=int, default=1024)
    a = p.parse_args()
    os.environ.setdefault("OPENBLAS_NUM_THREADS", str(a.threads))
    import numpy as np
    import torch

    torch.set_num_threads(a.threads)
    s = a.size
    flop = 2 * s**3
    x = np.random.rand(s, s).astype(np.float32)
    y = np.random.rand(s, s).astype(np.float32)
    r_np = rate(lambda: x @ y, flop)
    tx, ty = torch.from_numpy(x), torch.from_numpy(y)
    r_t32 = rate(lambda: tx @ ty, flop)
    b = a.bf16_size
    bx, by = tx[:b, :b].bfloat16(), ty[:b, :b].bfloat16()
    r_t16 = rate(lambda: bx @ by, 2 * b**3, reps=3)
    cfg = np.show_config(mode="dicts")["Build Dependencies"]["blas"]
    print(f"OPENBLAS_CORETYPE={os.environ.get('OPENBLAS_CORETYPE', '(unset)')}, threads {a.threads}, "
          f"{s}^3: numpy f32 ({cfg.get('name')} {cfg.get('version')}) {r_np:.0f} GFLOP/s, "
          f"torch f32 {r_t32:.0f} GFLOP/s, torch bf16 ({b}^3) {r_t16:.1f} GFLOP/s "
          f"(torch CPU capability {torch.backends.cpu.get_cpu_capability()}, "
          f"oneDNN bf16 {torch.ops.mkldnn._is_mkldnn_bf16_supported()})")
    at = vit_flops(768, 12, 8)
    idat = at + vit_flops(384, 12, 8)
    peak32 = max(r_np, r_t32)
    for name, fl in [("AT (ViT-B/16, batch 8)", at), ("iDAT (+ ViT-S/16)", idat)]:
        print(f"{name}: {fl / 1e9:.0f} GFLOP; f32 floor at {peak32:.0f} GFLOP/s: "
              f"{fl / peak32 / 1e6:.0f} ms; bf16 floor at {r_t16:.0f} GFLOP/s: {fl / r_t16 / 1e6:.0f} ms")


if __name__ == "__main__":
    main()
