#!/usr/bin/env python3
"""Writes crates/domain/tests/fixtures/cotrain/trajectory.safetensors: 5 steps of iDAT co-training run by an
independent PyTorch + timm implementation of the official loop, for crates/domain/tests/domain/cotrain_trajectory.rs
(committed; tests never run this).

How it was made:
    /work/venv/bin/python scripts/cotrain_trajectory_fixture.py crates/domain/tests/fixtures/cotrain
(torch 2.15, timm 1.0.31, CPU, float64 arithmetic, stored as float32.)

The loop is the one of github JCruan519/iDAT `train_onlinekd.py` (`train_one_epoch`) in the form
the method describes (docs/checked.md says where the release differs):
  - student (larger ViT) and teacher (smaller ViT): timm `VisionTransformer` (class token, token
    pooling) whose blocks end with the official `gist_seq_Adapter` (`x = block(x);
    x = linear2(GELU(linear1(x))) + x`, hidden 4), named here `blocks.{i}.adapter.fc{1,2}`
    as in idat-pipe; only the adapters and the head are trainable;
  - loss = CE(z_s, y) + CE(z_t, y) + D with D = `F.mse_loss(z_s, z_t)` (`mse`) or
    `F.kl_div(F.softmax(z_s/5).log(), F.softmax(z_t/5), reduction='batchmean')` (`kl`), the
    teacher's logits NOT detached, weight 1;
  - one backward of the total, then one `torch.optim.AdamW` step per model, weight decay on
    parameters with ndim >= 2 only (the official `param_groups_weight_decay`);
  - learning rate from timm's `CosineLRScheduler` built as timm's `create_scheduler` builds it
    (t_initial = epochs, warm-up from warmup_lr over warmup_epochs, cycle_limit 1, per epoch),
    stepped with `step(epoch + 1)` after every epoch; cool-down epochs at min_lr after the cycle.
One batch of BATCH images is the whole training split, so an epoch is one step and the learning
rate changes at every step: warm-up (2 epochs), cosine (2 more), cool-down (1).
Dropout and drop path are 0 (their random masks cannot be shared between the two programs).

The backbones are random (LayerNorm weights 1 + N(0, 0.1²), other tensors N(0, 0.05²)), so are
the adapters (weights N(0, 0.2²), biases N(0, 0.02²)) and heads (N(0, 0.5²), N(0, 0.1²)): larger
than timm's init so that the logits of the two models differ and D weighs in the update. The
arithmetic runs in float64, so the stored trajectory is the exact one up to float64 rounding and
the Rust test measures idat-pipe's float32 error alone (`--dtype float32` gives PyTorch's own
float32 run, for comparison).

Contents (float32 unless said otherwise; metadata holds the configs as JSON):
  image  u8 [B, S, S, 3] (HWC, as idat-pipe's decoded split), label i64 [B]
  init.{student,teacher}.<timm name>      every tensor of both models before training
  {mse,kl}.lr                             f64 [steps], the learning rate of each step
  {mse,kl}.loss                           f64 [steps, 4]: CE_s, CE_t, D, total
  {mse,kl}.step{k}.{student,teacher}.<n>  every trainable tensor after step k (1-based)
metadata: student, teacher (idat-pipe VitConfig), optim (OptimConfig), distill.mse,
distill.kl (DistillConfig), adapter (AdapterConfig), dtype.
"""
import argparse
import json
import math
import os

import torch
import torch.nn as nn
import torch.nn.functional as F
from safetensors.torch import save_file
from timm.models.vision_transformer import VisionTransformer
from timm.scheduler.cosine_lr import CosineLRScheduler

BATCH = 8
CLASSES = 5
COMMON = dict(img_size=16, patch_size=4, in_chans=3, num_classes=CLASSES, mlp_ratio=4.0,
              qkv_bias=True, drop_rate=0.0, attn_drop_rate=0.0, drop_path_rate=0.0)
STUDENT = dict(COMMON, embed_dim=32, depth=2, num_heads=4)
TEACHER = dict(COMMON, embed_dim=16, depth=2, num_heads=2)
HIDDEN = 4
# idat-pipe OptimConfig fields. total epochs = epochs + cooldown_epochs = 5, one step each.
OPTIM = dict(lr=1e-2, weight_decay=0.05, epochs=4, cooldown_epochs=1, warmup_epochs=2,
             warmup_lr=1e-4, min_lr=1e-3, per_step_schedule=False, batch_size=BATCH,
             beta1=0.9, beta2=0.999, eps=1e-8, precision="f32")
DISTILL = {
    "mse": dict(kind="mse", weight=1.0, temperature=5.0, t2_factor=False, detach_teacher=False,
                direction="small_to_large"),
    "kl": dict(kind="kl", weight=1.0, temperature=5.0, t2_factor=False, detach_teacher=False,
               direction="small_to_large"),
}
TEMPERATURE = 5.0


class SeqAdapter(nn.Module):
    """The official `gist_seq_Adapter` (iDAT models/vision_transformer.py): fc2(GELU(fc1(x))) + x."""

    def __init__(self, dim, hidden):
        super().__init__()
        self.fc1 = nn.Linear(dim, hidden)
        self.fc2 = nn.Linear(hidden, dim)

    def forward(self, x):
        return self.fc2(F.gelu(self.fc1(x))) + x


class AdaptedBlock(nn.Module):
    """`x = block(x); x = adapter(x)`: the official Block.forward for `gist_seq_adapter`."""

    def __init__(self, block, dim, hidden):
        super().__init__()
        self.block = block
        self.adapter = SeqAdapter(dim, hidden)

    def forward(self, x):
        return self.adapter(self.block(x))


def build(cfg, seed):
    """A timm ViT with a random backbone and timm-initialised adapters and head."""
    torch.manual_seed(seed)
    m = VisionTransformer(class_token=True, global_pool="token", **cfg)
    with torch.no_grad():
        for name, p in m.named_parameters():
            if "norm" in name and name.endswith("weight"):
                p.copy_(1.0 + 0.1 * torch.randn_like(p))
            else:
                p.copy_(0.05 * torch.randn_like(p))
    m.blocks = nn.Sequential(*[AdaptedBlock(b, cfg["embed_dim"], HIDDEN) for b in m.blocks])
    with torch.no_grad():
        # Random trainable tensors, larger than timm's init (trunc-normal 0.02, zero bias) so
        # that the two models' logits differ clearly and D carries a gradient well above
        # float32 rounding (with timm's init D is ~1e-4 of the loss).
        for mod in [b.adapter.fc1 for b in m.blocks] + [b.adapter.fc2 for b in m.blocks]:
            mod.weight.copy_(0.2 * torch.randn_like(mod.weight))
            mod.bias.copy_(0.02 * torch.randn_like(mod.bias))
        m.head.weight.copy_(0.5 * torch.randn_like(m.head.weight))
        m.head.bias.copy_(0.1 * torch.randn_like(m.head.bias))
    for name, p in m.named_parameters():
        p.requires_grad = ".adapter." in name or name.startswith("head.")
    return m


def timm_name(k):
    """AdaptedBlock nests the timm block: blocks.i.block.X -> blocks.i.X."""
    return k.replace(".block.", ".")


def trainable(m):
    return {timm_name(k): p for k, p in m.named_parameters() if p.requires_grad}


def adamw(m):
    """torch AdamW over the trainable tensors, decay on ndim >= 2 only (official param groups)."""
    decay, no_decay = [], []
    for k, p in m.named_parameters():
        if not p.requires_grad:
            continue
        (no_decay if p.ndim <= 1 or k.endswith(".bias") else decay).append(p)
    groups = [{"params": no_decay, "weight_decay": 0.0},
              {"params": decay, "weight_decay": OPTIM["weight_decay"]}]
    return torch.optim.AdamW(groups, lr=OPTIM["lr"], betas=(OPTIM["beta1"], OPTIM["beta2"]),
                             eps=OPTIM["eps"], foreach=False)


def scheduler(opt):
    """timm create_scheduler(args, opt) for `--sched cosine` (t_in_epochs, cycle_limit 1)."""
    return CosineLRScheduler(opt, t_initial=OPTIM["epochs"], lr_min=OPTIM["min_lr"],
                             warmup_lr_init=OPTIM["warmup_lr"], warmup_t=OPTIM["warmup_epochs"],
                             cycle_limit=1, t_in_epochs=True)


def distill(kind, zs, zt):
    if kind == "mse":
        return F.mse_loss(zs, zt)
    return F.kl_div(F.softmax(zs / TEMPERATURE, dim=-1).log(),
                    F.softmax(zt / TEMPERATURE, dim=-1), reduction="batchmean")


def run(kind, init_s, init_t, x, y, dtype, out):
    student, teacher = build(STUDENT, 0), build(TEACHER, 0)
    student.load_state_dict(init_s)
    teacher.load_state_dict(init_t)
    student, teacher = student.to(dtype).train(), teacher.to(dtype).train()
    opt_s, opt_t = adamw(student), adamw(teacher)
    sched_s, sched_t = scheduler(opt_s), scheduler(opt_t)
    total_epochs = OPTIM["epochs"] + OPTIM["cooldown_epochs"]
    lrs, losses = [], []
    step = 0
    for epoch in range(total_epochs):
        # one batch per epoch: the whole split
        zs, zt = student(x), teacher(x)
        ce_s, ce_t = F.cross_entropy(zs, y), F.cross_entropy(zt, y)
        d = distill(kind, zs, zt)
        loss = ce_s + ce_t + d
        opt_s.zero_grad()
        opt_t.zero_grad()
        loss.backward()
        lr_s = opt_s.param_groups[0]["lr"]
        assert lr_s == opt_t.param_groups[0]["lr"]
        opt_s.step()
        opt_t.step()
        step += 1
        lrs.append(lr_s)
        losses.append([ce_s.item(), ce_t.item(), d.item(), loss.item()])
        for who, m in (("student", student), ("teacher", teacher)):
            for k, p in trainable(m).items():
                out[f"{kind}.step{step}.{who}.{k}"] = p.detach().float().contiguous().clone()
        sched_s.step(epoch + 1)
        sched_t.step(epoch + 1)
    out[f"{kind}.lr"] = torch.tensor(lrs, dtype=torch.float64)
    out[f"{kind}.loss"] = torch.tensor(losses, dtype=torch.float64)
    print(kind, "lr", ["%.6g" % v for v in lrs])
    for row in losses:
        print(kind, "CE_s %.6f CE_t %.6f D %.6f total %.6f" % tuple(row))


def main():
    ap = argparse.ArgumentParser(description=__doc__.split("\n")[0])
    ap.add_argument("out", nargs="?", default="crates/domain/tests/fixtures/cotrain")
    ap.add_argument("--dtype", choices=["float64", "float32"], default="float64")
    args = ap.parse_args()
    dtype = getattr(torch, args.dtype)
    torch.use_deterministic_algorithms(True)

    student, teacher = build(STUDENT, 1), build(TEACHER, 2)
    init_s = {k: v.detach().clone() for k, v in student.state_dict().items()}
    init_t = {k: v.detach().clone() for k, v in teacher.state_dict().items()}
    g = torch.Generator().manual_seed(3)
    size = COMMON["img_size"]
    image = torch.randint(0, 256, (BATCH, size, size, 3), generator=g, dtype=torch.uint8)
    label = torch.tensor([i % CLASSES for i in range(BATCH)], dtype=torch.int64)
    label = label[torch.randperm(BATCH, generator=g)]
    # idat-pipe's Normalize (mean = std = 0.5): (v / 255 - 0.5) / 0.5, HWC -> CHW.
    x = ((image.to(dtype) / 255.0 - 0.5) / 0.5).permute(0, 3, 1, 2).contiguous()

    out = {"image": image, "label": label}
    for who, sd in (("student", init_s), ("teacher", init_t)):
        for k, v in sd.items():
            out[f"init.{who}.{timm_name(k)}"] = v.float().contiguous()
    for kind in ("mse", "kl"):
        run(kind, init_s, init_t, x, label, dtype, out)

    meta = {
        "student": json.dumps(STUDENT),
        "teacher": json.dumps(TEACHER),
        "optim": json.dumps(OPTIM),
        "distill.mse": json.dumps(DISTILL["mse"]),
        "distill.kl": json.dumps(DISTILL["kl"]),
        "adapter": json.dumps({"method": "seq_adapter", "hidden": HIDDEN}),
        "dtype": args.dtype,
        "made_with": f"torch {torch.__version__}, timm {__import__('timm').__version__}",
    }
    os.makedirs(args.out, exist_ok=True)
    path = os.path.join(args.out, "trajectory.safetensors")
    save_file(out, path, metadata=meta)
    print("wrote", path, os.path.getsize(path), "bytes")


if __name__ == "__main__":
    main()
