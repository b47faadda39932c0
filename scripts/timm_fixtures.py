#!/usr/bin/env python3
"""Writes the ViT parity fixtures under crates/nn/tests/fixtures/timm/ (committed; tests never run this).

How they were made:
    python3 -m venv /work/venv && /work/venv/bin/pip install torch timm numpy safetensors
    /work/venv/bin/python scripts/timm_fixtures.py crates/nn/tests/fixtures/timm
(torch 2.15, timm 1.0.31, CPU, float32, deterministic seeds below.)

For each shape in SHAPES a timm `VisionTransformer` (class token, token pooling, LayerNorm eps
1e-6, exact GELU) is built, EVERY tensor is overwritten with random values (LayerNorm weights
1 + N(0, 0.1²), other tensors N(0, 0.05²)) so that no parameter is trivially 0 or 1, and:
  <name>.safetensors      all model tensors in timm naming (head included)
  <name>_io.safetensors   `input` [B,3,H,W], `features` (CLS after final norm), `logits`
  <name>.json             the VitConfig fields
`seq_grad` additionally wraps the blocks of shape `s1` with the official iDAT `seq_adapter`
(`gist_seq_Adapter`: x = block(x); x = linear2(GELU(linear1(x))) + x, hidden 4) — written
from the iDAT paper/code semantics, with adapter weights N(0, 0.2²) and biases N(0, 0.02²) —
and saves, in eval mode, the mean cross-entropy for `labels` and its gradient w.r.t. every
adapter tensor (`blocks.{i}.adapter.fc{1,2}.{weight,bias}`) and the head:
  seq_grad.safetensors    model + adapter tensors
  seq_grad_io.safetensors `input`, `labels` (int64), `logits`, `loss` [1], `grad.<name>`
"""
import json
import os
import sys

import torch
import torch.nn as nn
import torch.nn.functional as F
from safetensors.torch import save_file
from timm.models.vision_transformer import VisionTransformer

SHAPES = {
    # name: (VitConfig fields, batch)
    "s1": (dict(img_size=32, patch_size=8, num_classes=10, embed_dim=64, depth=2, num_heads=4,
                mlp_ratio=4.0, qkv_bias=True, drop_rate=0.0, attn_drop_rate=0.0, drop_path_rate=0.0), 3),
    "s2": (dict(img_size=24, patch_size=4, num_classes=5, embed_dim=48, depth=3, num_heads=3,
                mlp_ratio=2.0, qkv_bias=False, drop_rate=0.0, attn_drop_rate=0.0, drop_path_rate=0.0), 2),
    # drop path / dropout configured but evaluated in eval mode: must equal the plain model
    "s3": (dict(img_size=32, patch_size=8, num_classes=7, embed_dim=64, depth=2, num_heads=4,
                mlp_ratio=4.0, qkv_bias=True, drop_rate=0.1, attn_drop_rate=0.1, drop_path_rate=0.2), 2),
}


def build(cfg, seed):
    torch.manual_seed(seed)
    m = VisionTransformer(in_chans=3, class_token=True, global_pool="token", **cfg)
    with torch.no_grad():
        for name, p in m.named_parameters():
            if "norm" in name and name.endswith("weight"):
                p.copy_(1.0 + 0.1 * torch.randn_like(p))
            else:
                p.copy_(0.05 * torch.randn_like(p))
    return m.eval()


def state(m):
    return {k: v.detach().contiguous().clone() for k, v in m.state_dict().items()}


class SeqAdapter(nn.Module):
    """iDAT gist_seq_Adapter: returns linear2(GELU(linear1(x))) + x."""

    def __init__(self, dim, hidden=4):
        super().__init__()
        self.fc1 = nn.Linear(dim, hidden)
        self.fc2 = nn.Linear(hidden, dim)

    def forward(self, x):
        return self.fc2(F.gelu(self.fc1(x))) + x


class AdaptedBlock(nn.Module):
    def __init__(self, block, dim):
        super().__init__()
        self.block = block
        self.adapter = SeqAdapter(dim)

    def forward(self, x):
        return self.adapter(self.block(x))


def main(out):
    os.makedirs(out, exist_ok=True)
    for i, (name, (cfg, batch)) in enumerate(SHAPES.items()):
        m = build(cfg, 100 + i)
        torch.manual_seed(200 + i)
        x = torch.randn(batch, 3, cfg["img_size"], cfg["img_size"])
        with torch.no_grad():
            feats = m.forward_head(m.forward_features(x), pre_logits=True)
            logits = m(x)
        save_file(state(m), f"{out}/{name}.safetensors")
        save_file({"input": x, "features": feats.contiguous(), "logits": logits.contiguous()},
                  f"{out}/{name}_io.safetensors")
        with open(f"{out}/{name}.json", "w") as f:
            json.dump(dict(cfg, in_chans=3), f, indent=1)

    cfg, batch = SHAPES["s1"]
    m = build(cfg, 300)
    blocks = [AdaptedBlock(b, cfg["embed_dim"]) for b in m.blocks]
    torch.manual_seed(301)
    with torch.no_grad():
        for b in blocks:
            for pn, p in b.adapter.named_parameters():
                p.copy_((0.2 if pn.endswith("weight") else 0.02) * torch.randn_like(p))
    m.blocks = nn.Sequential(*blocks)
    m.eval()
    x = torch.randn(batch, 3, cfg["img_size"], cfg["img_size"])
    labels = torch.tensor([1, 7, 3][:batch], dtype=torch.int64)
    logits = m(x)
    loss = F.cross_entropy(logits, labels)
    loss.backward()
    tensors, io = {}, {"input": x, "labels": labels, "logits": logits.detach().contiguous(),
                       "loss": loss.detach().reshape(1)}
    for k, v in m.state_dict().items():
        # AdaptedBlock nests the timm block: blocks.i.block.X -> blocks.i.X
        tensors[k.replace(".block.", ".")] = v.detach().contiguous().clone()
    for k, p in m.named_parameters():
        k = k.replace(".block.", ".")
        if ".adapter." in k or k.startswith("head."):
            io[f"grad.{k}"] = p.grad.detach().contiguous().clone()
    save_file(tensors, f"{out}/seq_grad.safetensors")
    save_file(io, f"{out}/seq_grad_io.safetensors")
    with open(f"{out}/seq_grad.json", "w") as f:
        json.dump(dict(cfg, in_chans=3), f, indent=1)


if __name__ == "__main__":
    main(sys.argv[1] if len(sys.argv) > 1 else "crates/nn/tests/fixtures/timm")
