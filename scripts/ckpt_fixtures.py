#!/usr/bin/env python3
"""Writes the small committed fixtures used by crates/nn/tests/nn/numerics_*.rs.

Run with the project venv (torch, timm, numpy, safetensors):
    /work/venv/bin/python scripts/ckpt_fixtures.py

crates/nn/tests/fixtures/ckpt/
  tiny_vit.safetensors          random tiny timm ViT (dim 32, depth 2, heads 2, img 32, patch 8, 10 classes)
  tiny_vit_google.npz           the same weights as a vit_jax .npz (compressed), f32
  tiny_vit_opt_target_f16.npz   the same, float16, `opt/target/` prefix, plus an extra pre_logits/* pair
  tiny_vit_big_vision_f16.npz   the same, float16, big_vision layout (`params/`, scanned blocks)
  pos_embed_resampled.safetensors  timm resample_abs_pos_embed of the model's pos_embed to other grids
crates/nn/tests/fixtures/optim/
  adamw_torch.json              torch.optim.AdamW trajectories (float64)
  cosine_timm.json              learning rates used by timm's CosineLRScheduler in the timm training loop

The .npz files are produced by inverting timm's `_load_weights` mapping and are checked by loading
them back with timm's own `_load_weights` (the script fails if the round trip is not exact).
"""
import json
import os

import numpy as np
import torch
import timm
from safetensors.numpy import save_file as save_np
from safetensors.torch import save_file
from timm.layers import resample_abs_pos_embed
from timm.models.vision_transformer import VisionTransformer, _load_weights
from timm.scheduler import create_scheduler_v2

ROOT = os.path.join(os.path.dirname(os.path.abspath(__file__)), "..", "crates", "nn", "tests", "fixtures")
CKPT = os.path.join(ROOT, "ckpt")
OPTIM = os.path.join(ROOT, "optim")
DIM, DEPTH, HEADS, IMG, PATCH, CLASSES = 32, 2, 2, 32, 8, 10


def tiny_vit():
    return VisionTransformer(img_size=IMG, patch_size=PATCH, embed_dim=DIM, depth=DEPTH, num_heads=HEADS,
                             mlp_ratio=4.0, qkv_bias=True, num_classes=CLASSES)


def to_google(sd, prefix="", dtype=np.float32, big_vision=False):
    """Inverse of timm's _load_weights: timm state dict -> Google npz dict."""
    n = lambda t: t.detach().numpy().astype(dtype)
    dh = DIM // HEADS
    w = {
        "embedding/kernel": n(sd["patch_embed.proj.weight"].permute(2, 3, 1, 0)),
        "embedding/bias": n(sd["patch_embed.proj.bias"]),
        "cls": n(sd["cls_token"]),
        ("pos_embedding" if big_vision else "Transformer/posembed_input/pos_embedding"): n(sd["pos_embed"]),
        "Transformer/encoder_norm/scale": n(sd["norm.weight"]),
        "Transformer/encoder_norm/bias": n(sd["norm.bias"]),
        "head/kernel": n(sd["head.weight"].T),
        "head/bias": n(sd["head.bias"]),
    }
    mha, mlp, ln2 = ("MultiHeadDotProductAttention_0", "MlpBlock_0", "LayerNorm_1") if big_vision else \
        ("MultiHeadDotProductAttention_1", "MlpBlock_3", "LayerNorm_2")
    blocks = []
    for i in range(DEPTH):
        b = {}
        t = f"blocks.{i}."
        b["LayerNorm_0/scale"] = n(sd[t + "norm1.weight"])
        b["LayerNorm_0/bias"] = n(sd[t + "norm1.bias"])
        b[f"{ln2}/scale"] = n(sd[t + "norm2.weight"])
        b[f"{ln2}/bias"] = n(sd[t + "norm2.bias"])
        qw = sd[t + "attn.qkv.weight"].reshape(3, DIM, DIM)
        qb = sd[t + "attn.qkv.bias"].reshape(3, DIM)
        for j, name in enumerate(["query", "key", "value"]):
            b[f"{mha}/{name}/kernel"] = n(qw[j].T.reshape(DIM, HEADS, dh))
            b[f"{mha}/{name}/bias"] = n(qb[j].reshape(HEADS, dh))
        b[f"{mha}/out/kernel"] = n(sd[t + "attn.proj.weight"].reshape(DIM, HEADS, dh).permute(1, 2, 0))
        b[f"{mha}/out/bias"] = n(sd[t + "attn.proj.bias"])
        b[f"{mlp}/Dense_0/kernel"] = n(sd[t + "mlp.fc1.weight"].T)
        b[f"{mlp}/Dense_0/bias"] = n(sd[t + "mlp.fc1.bias"])
        b[f"{mlp}/Dense_1/kernel"] = n(sd[t + "mlp.fc2.weight"].T)
        b[f"{mlp}/Dense_1/bias"] = n(sd[t + "mlp.fc2.bias"])
        blocks.append(b)
    if big_vision:
        for k in blocks[0]:
            w[f"Transformer/encoderblock/{k}"] = np.stack([b[k] for b in blocks])
    else:
        for i, b in enumerate(blocks):
            for k, v in b.items():
                w[f"Transformer/encoderblock_{i}/{k}"] = v
    return {prefix + k: np.ascontiguousarray(v) for k, v in w.items()}


def check_with_timm(path, sd, atol):
    m = tiny_vit()
    _load_weights(m, path)
    got = m.state_dict()
    for k, v in sd.items():
        err = (got[k] - v).abs().max().item()
        assert err <= atol, f"{path}: {k} differs by {err}"


def checkpoints():
    torch.manual_seed(0)
    m = tiny_vit()
    with torch.no_grad():
        for p in m.parameters():  # no zero biases / unit scales: every mapping must be visible
            p.add_(torch.randn_like(p) * 0.1)
    sd = {k: v.detach().contiguous() for k, v in m.state_dict().items()}
    save_file(sd, os.path.join(CKPT, "tiny_vit.safetensors"))

    p = os.path.join(CKPT, "tiny_vit_google.npz")
    np.savez_compressed(p, **to_google(sd))
    check_with_timm(p, sd, 0.0)

    p = os.path.join(CKPT, "tiny_vit_opt_target_f16.npz")
    g = to_google(sd, prefix="opt/target/", dtype=np.float16)
    g["opt/target/pre_logits/kernel"] = np.zeros((DIM, DIM), np.float16)
    g["opt/target/pre_logits/bias"] = np.zeros((DIM,), np.float16)
    np.savez(p, **g)
    check_with_timm(p, sd, 1e-3)

    p = os.path.join(CKPT, "tiny_vit_big_vision_f16.npz")
    np.savez(p, **to_google(sd, prefix="params/", dtype=np.float16, big_vision=True))
    check_with_timm(p, sd, 1e-3)

    pe = sd["pos_embed"]
    out = {}
    for (h, w) in [(6, 6), (3, 3), (3, 5)]:
        for aa in [True, False]:
            r = resample_abs_pos_embed(pe, new_size=[h, w], num_prefix_tokens=1, interpolation="bicubic",
                                       antialias=aa)
            out[f"grid{h}x{w}_{'aa' if aa else 'noaa'}"] = r.contiguous()
    # timm's default (what load_backbone must reproduce): bicubic, antialias=True.
    d = resample_abs_pos_embed(pe, new_size=[6, 6], num_prefix_tokens=1)
    assert torch.equal(d, out["grid6x6_aa"])
    save_file(out, os.path.join(CKPT, "pos_embed_resampled.safetensors"))


def adamw():
    cases = []
    for cfg in [dict(lr_list=[1e-2, 5e-3, 2e-2, 1e-3, 1e-2], betas=(0.9, 0.999), eps=1e-8, wd=0.05),
                dict(lr_list=[0.1, 0.05, 0.2], betas=(0.8, 0.99), eps=1e-6, wd=0.3)]:
        g = torch.Generator().manual_seed(len(cases) + 1)
        w = torch.randn(3, 4, generator=g, dtype=torch.float64)
        b = torch.randn(4, generator=g, dtype=torch.float64)
        init = {"w": w.tolist(), "b": b.tolist()}
        w.requires_grad_(True)
        b.requires_grad_(True)
        opt = torch.optim.AdamW([{"params": [w], "weight_decay": cfg["wd"]},
                                 {"params": [b], "weight_decay": 0.0}],
                                lr=cfg["lr_list"][0], betas=cfg["betas"], eps=cfg["eps"])
        steps = []
        for lr in cfg["lr_list"]:
            gw = torch.randn(3, 4, generator=g, dtype=torch.float64)
            gb = torch.randn(4, generator=g, dtype=torch.float64)
            for group in opt.param_groups:
                group["lr"] = lr
            w.grad, b.grad = gw.clone(), gb.clone()
            opt.step()
            steps.append({"lr": lr, "grad_w": gw.tolist(), "grad_b": gb.tolist(),
                          "w": w.detach().tolist(), "b": b.detach().tolist()})
        st = opt.state
        cases.append({"beta1": cfg["betas"][0], "beta2": cfg["betas"][1], "eps": cfg["eps"],
                      "weight_decay": cfg["wd"], "init": init, "steps": steps,
                      "exp_avg_w": st[w]["exp_avg"].tolist(), "exp_avg_sq_w": st[w]["exp_avg_sq"].tolist(),
                      "exp_avg_b": st[b]["exp_avg"].tolist(), "exp_avg_sq_b": st[b]["exp_avg_sq"].tolist()})
    with open(os.path.join(OPTIM, "adamw_torch.json"), "w") as f:
        json.dump({"torch": torch.__version__, "cases": cases}, f, indent=1)


def cosine():
    cases = []
    for c in [dict(base_lr=1e-3, warmup_lr=1e-7, warmup_epochs=10, min_lr=1e-8, decay_epochs=100,
                   cooldown_epochs=10, per_step=False, steps_per_epoch=3),
              dict(base_lr=0.1, warmup_lr=1e-6, warmup_epochs=2, min_lr=1e-5, decay_epochs=5,
                   cooldown_epochs=2, per_step=True, steps_per_epoch=4),
              dict(base_lr=0.5, warmup_lr=0.0, warmup_epochs=0, min_lr=0.0, decay_epochs=4,
                   cooldown_epochs=1, per_step=False, steps_per_epoch=2)]:
        p = torch.nn.Parameter(torch.zeros(1))
        opt = torch.optim.AdamW([p], lr=c["base_lr"])
        sched, num_epochs = create_scheduler_v2(
            opt, sched="cosine", num_epochs=c["decay_epochs"], warmup_epochs=c["warmup_epochs"],
            cooldown_epochs=c["cooldown_epochs"], warmup_lr=c["warmup_lr"], min_lr=c["min_lr"],
            step_on_epochs=not c["per_step"], updates_per_epoch=c["steps_per_epoch"], warmup_prefix=False)
        lrs = []
        num_updates = 0
        for epoch in range(num_epochs):  # the timm train.py loop
            row = []
            for _ in range(c["steps_per_epoch"]):
                row.append(opt.param_groups[0]["lr"])
                num_updates += 1
                sched.step_update(num_updates=num_updates)
            sched.step(epoch + 1)
            lrs.append(row)
        cases.append({**c, "total_epochs": num_epochs, "lrs": lrs})
    with open(os.path.join(OPTIM, "cosine_timm.json"), "w") as f:
        json.dump({"timm": timm.__version__, "cases": cases}, f, indent=1)


if __name__ == "__main__":
    os.makedirs(CKPT, exist_ok=True)
    os.makedirs(OPTIM, exist_ok=True)
    checkpoints()
    adamw()
    cosine()
    print("fixtures written")
