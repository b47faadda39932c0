#!/usr/bin/env python3
"""The PyTorch + timm reference for `idat-pipe bench`: the same training steps, timed the same way.

- idat: ViT-S teacher + ViT-B student (timm, random init, backbones frozen), iDAT `seq_adapter`
  (after every block: x + fc2(GELU(fc1(x))), hidden 4) + a new head trainable in each; loss
  CE_s + CE_t + MSE(z_s, z_t) (teacher not detached), one backward, one AdamW step per model
  (weight decay 0.05 on rank >= 2 parameters, like idat-pipe's AdamW).
- at: the student alone (CE, backward, AdamW).
Each mode runs in its own child process so the peak RSS (ru_maxrss) is per mode, as idat-pipe's VmHWM.

    /work/venv/bin/python benches/pytorch_step.py --threads 2 --steps 3 --warmup 1 --batch 8
    # small row (the demo's student/teacher):
    /work/venv/bin/python benches/pytorch_step.py --threads 2 --batch 64 --steps 10 --warmup 2 \
        --model-s '{"img_size":32,"patch_size":8,"embed_dim":48,"depth":4,"num_heads":3}' \
        --model-b '{"img_size":32,"patch_size":8,"embed_dim":96,"depth":4,"num_heads":4}'
    # bf16 mixed precision: --dtype bf16 = torch.autocast(bfloat16) on CPU or CUDA (on CPU
    # oneDNN runs the bf16 matmuls; fast only where the CPU has AVX512-BF16 / AMX)
    # GPU: --device cuda [--dtype bf16]  (peak = torch.cuda.max_memory_allocated)
Prints a Markdown table (or --json lines).
"""
import argparse
import json
import os
import resource
import statistics
import subprocess
import sys
import time


def parse_model(spec):
    if spec.strip().startswith("{"):
        d = json.loads(spec)
        d.pop("num_classes", None)
        d.pop("in_chans", None)
        return d
    return spec


def build(spec, classes, seed, device):
    import torch
    import torch.nn as nn
    import torch.nn.functional as F
    import timm
    from timm.models.vision_transformer import VisionTransformer

    torch.manual_seed(seed)
    if isinstance(spec, str):
        m = timm.create_model(spec, pretrained=False, num_classes=classes)
    else:
        m = VisionTransformer(num_classes=classes, class_token=True, global_pool="token",
                              qkv_bias=True, mlp_ratio=4.0, **spec)
    for p in m.parameters():
        p.requires_grad_(False)

    class Adapter(nn.Module):
        def __init__(self, dim, hidden=4):
            super().__init__()
            self.fc1 = nn.Linear(dim, hidden)
            self.fc2 = nn.Linear(hidden, dim)

        def forward(self, x):
            return x + self.fc2(F.gelu(self.fc1(x)))

    class Adapted(nn.Module):
        def __init__(self, block, dim):
            super().__init__()
            self.block = block
            self.adapter = Adapter(dim)

        def forward(self, x):
            return self.adapter(self.block(x))

    m.blocks = nn.Sequential(*[Adapted(b, m.embed_dim) for b in m.blocks])
    for p in m.head.parameters():
        p.requires_grad_(True)
    m = m.to(device).train()
    params = [p for p in m.parameters() if p.requires_grad]
    groups = [
        {"params": [p for p in params if p.ndim >= 2], "weight_decay": 0.05},
        {"params": [p for p in params if p.ndim < 2], "weight_decay": 0.0},
    ]
    opt = torch.optim.AdamW(groups, lr=1e-3)
    return m, opt, sum(p.numel() for p in params)


def run_one(a):
    import torch
    import torch.nn.functional as F

    torch.set_num_threads(a.threads)
    dev = torch.device(a.device)
    cuda = dev.type == "cuda"

    def used():  # driver view, as `idat-pipe bench`: total - free on the device
        free, total = torch.cuda.mem_get_info(dev)
        return total - free

    if cuda:
        torch.zeros(1, device=dev)  # create the context before the baseline
        mem_base = used()
    small, large = parse_model(a.model_s), parse_model(a.model_b)
    student, opt_s, n_s = build(large, a.classes, 1, dev)
    teacher, opt_t, n_t = (build(small, a.classes, 2, dev) if a.mode == "idat" else (None, None, 0))
    img = large["img_size"] if isinstance(large, dict) else student.patch_embed.img_size[0]
    g = torch.Generator().manual_seed(0)
    x = torch.randn(a.batch, 3, img, img, generator=g).to(dev)
    y = (torch.arange(a.batch) % a.classes).to(dev)
    use_bf16 = a.dtype == "bf16"
    if cuda:
        torch.cuda.reset_peak_memory_stats(dev)
        mem_peak = used()
    times = []
    for step in range(a.warmup + a.steps):
        t0 = time.perf_counter()
        with torch.autocast(device_type=dev.type, dtype=torch.bfloat16, enabled=use_bf16):
            zs = student(x)
            loss = F.cross_entropy(zs.float(), y)
            if teacher is not None:
                zt = teacher(x)
                loss = loss + F.cross_entropy(zt.float(), y) + F.mse_loss(zs.float(), zt.float())
        opt_s.zero_grad(set_to_none=True)
        if opt_t is not None:
            opt_t.zero_grad(set_to_none=True)
        loss.backward()
        opt_s.step()
        if opt_t is not None:
            opt_t.step()
        loss.item()  # synchronises the device
        if cuda:
            mem_peak = max(mem_peak, used())
        if step >= a.warmup:
            times.append((time.perf_counter() - t0) * 1e3)
    med = statistics.median_low(times)
    rep = {
        "impl": "pytorch",
        "kind": a.mode,
        "device": a.device,
        "dtype": a.dtype,
        "threads": torch.get_num_threads(),
        "batch": a.batch,
        "img_size": img,
        "steps": a.steps,
        "median_ms": med,
        "min_ms": min(times),
        "images_per_s": a.batch * 1e3 / med,
        # ru_maxrss is KiB on Linux
        "peak_rss_mib": resource.getrusage(resource.RUSAGE_SELF).ru_maxrss / 1024,
        "peak_gpu_mib": torch.cuda.max_memory_allocated(dev) / 2**20 if cuda else None,
        # the same measure as idat-pipe's device_mem_mib (allocator cache included)
        "device_mem_mib": (mem_peak - mem_base) / 2**20 if cuda else None,
        "trainable": n_s + n_t,
        "torch": torch.__version__,
        # the CPU kernels' instruction set (e.g. AVX2, AVX512) and oneDNN's bf16 support
        "cpu_capability": torch.backends.cpu.get_cpu_capability(),
        "mkldnn_bf16": bool(torch.ops.mkldnn._is_mkldnn_bf16_supported()),
    }
    print(json.dumps(rep), flush=True)


def main():
    p = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    p.add_argument("--mode", default="all", choices=["all", "idat", "at"])
    p.add_argument("--device", default="cpu")
    p.add_argument("--dtype", default="f32", choices=["f32", "bf16"])
    p.add_argument("--steps", type=int, default=3)
    p.add_argument("--warmup", type=int, default=1)
    p.add_argument("--batch", type=int, default=8)
    p.add_argument("--model-s", default="vit_small_patch16_224")
    p.add_argument("--model-b", default="vit_base_patch16_224")
    p.add_argument("--classes", type=int, default=100)
    p.add_argument("--threads", type=int, default=os.cpu_count())
    p.add_argument("--json", action="store_true")
    a = p.parse_args()
    if a.steps < 1 or a.batch < 1:
        sys.exit("--steps and --batch must be at least 1")
    if a.mode != "all":
        run_one(a)
        return
    reps = []
    for mode in ["idat", "at"]:
        args = [sys.executable, os.path.abspath(__file__), "--mode", mode]
        for k in ["device", "dtype", "steps", "warmup", "batch", "model_s", "model_b", "classes", "threads"]:
            args += ["--" + k.replace("_", "-"), str(getattr(a, k))]
        out = subprocess.run(args, check=True, stdout=subprocess.PIPE, text=True).stdout
        reps.append(json.loads([l for l in out.splitlines() if l.startswith("{")][-1]))
    if a.json:
        for r in reps:
            print(json.dumps(r))
        return
    print(f"models: small {a.model_s} / large {a.model_b}, {a.classes} classes, "
          f"warmup {a.warmup} + {a.steps} timed steps, torch {reps[0]['torch']}")
    print("| step | device | dtype | threads | batch | median step | images/s | peak RSS | peak GPU alloc |")
    print("|---|---|---|---|---|---|---|---|---|")
    for r in reps:
        name = "iDAT (S teacher + B student)" if r["kind"] == "idat" else "AT (B alone)"
        gpu = f"{r['peak_gpu_mib']:.0f} MiB" if r["peak_gpu_mib"] is not None else "n/a"
        print(f"| {name} | {r['device']} | {r['dtype']} | {r['threads']} | {r['batch']} | "
              f"{r['median_ms']:.1f} ms (min {r['min_ms']:.1f}) | {r['images_per_s']:.2f} | "
              f"{r['peak_rss_mib']:.0f} MiB | {gpu} |")


if __name__ == "__main__":
    main()
