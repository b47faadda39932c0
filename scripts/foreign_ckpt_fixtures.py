#!/usr/bin/env python3
"""Writes the committed fixtures of the checkpoint layouts users hold besides timm's
(tests/cli/checkpoint_hints.rs, crates/nn/tests/nn/numerics_checkpoint.rs), with the real libraries.

Run with a venv holding torch, timm, transformers and safetensors:
    python3 -m venv /work/venv-ckpt && /work/venv-ckpt/bin/pip install torch timm transformers safetensors
    /work/venv-ckpt/bin/python scripts/foreign_ckpt_fixtures.py

crates/nn/tests/fixtures/ckpt/
  hf_vit/model.safetensors, config.json
        transformers.ViTModel (hidden 32, 2 layers, 2 heads, MLP 128, image 32, patch 8,
        layer_norm_eps 1e-12 as google/vit-*), random weights rounded to float16, written by
        save_pretrained (float16) with its config.json
  hf_vit_io.safetensors
        input [2, 3, 32, 32]; `timm`: the CLS features after the final norm of a timm
        VisionTransformer holding the same weights (converted here, eps 1e-6); `hf`: transformers'
        last_hidden_state[:, 0] (eps 1e-12); `hf_eps6`: the same with layer_norm_eps 1e-6
  hf_vit_layouts.json
        for each other layout transformers writes, the name each tensor of hf_vit/model.safetensors
        gets there (matched by value), plus the names it adds: ViTForImageClassification
        (original names), and both models in transformers 5's own names
        (save_pretrained(save_original_format=False), = model.state_dict())
  hf_vit_sharded/model.safetensors.index.json + model-0000i-of-0000n.safetensors
        a smaller ViTModel (hidden 8, 1 layer, 2 heads, MLP 32, image 16, patch 8) written by
        save_pretrained(max_shard_size=...) into several shards
  hf_vit_sharded_timm.safetensors
        the same weights under timm names (the timm model's state_dict; checked equal in output)
  torch_zip.pth, torch_legacy.pth, torchscript.pt
        a tiny state dict written by torch.save (zip, and _use_new_zipfile_serialization=False) and
        a scripted nn.Linear written by torch.jit.save
  torch_convert.txt
        the two conversion snippets the loader's refusal prints (TORCH_TO_SAFETENSORS,
        TORCHSCRIPT_TO_SAFETENSORS in crates/nn/src/checkpoint/foreign.rs), after this
        script ran each on the files above (and on a DeiT/timm-style training checkpoint with
        optimizer state and an argparse Namespace) and checked the tensors they wrote
"""
import argparse
import json
import os
import shutil
import subprocess
import sys
import tempfile

import torch
from safetensors import safe_open
from safetensors.torch import load_file, save_file
from timm.models.vision_transformer import VisionTransformer
from transformers import ViTConfig, ViTForImageClassification, ViTModel

CKPT = os.path.join(os.path.dirname(os.path.abspath(__file__)), "..", "crates", "nn", "tests", "fixtures", "ckpt")

# Must equal the constants of crates/nn/src/checkpoint/foreign.rs (the Rust test compares).
TORCH_TO_SAFETENSORS = (
    "import sys, argparse, torch; "
    "from safetensors.torch import save_file; "
    "torch.serialization.add_safe_globals([argparse.Namespace]); "
    "sd = torch.load(sys.argv[1], map_location='cpu', weights_only=True); "
    "sd = sd.get('state_dict', sd.get('model', sd)); "
    "save_file({k: v.contiguous().clone() for k, v in sd.items() if isinstance(v, torch.Tensor)}, sys.argv[2])"
)
TORCHSCRIPT_TO_SAFETENSORS = (
    "import sys, torch; "
    "from safetensors.torch import save_file; "
    "sd = torch.jit.load(sys.argv[1], map_location='cpu').state_dict(); "
    "save_file({k: v.contiguous().clone() for k, v in sd.items()}, sys.argv[2])"
)


def hf_config(hidden, layers, heads, mlp, image, patch, eps=1e-12, **kw):
    return ViTConfig(hidden_size=hidden, num_hidden_layers=layers, num_attention_heads=heads,
                     intermediate_size=mlp, image_size=image, patch_size=patch, layer_norm_eps=eps,
                     hidden_act="gelu", qkv_bias=True, hidden_dropout_prob=0.0,
                     attention_probs_dropout_prob=0.0, **kw)


def randomised(model, seed):
    """Random weights (no zero biases or unit scales), rounded to float16 so that the f16 file
    holds them exactly."""
    g = torch.Generator().manual_seed(seed)
    with torch.no_grad():
        for p in model.parameters():
            p.copy_((p + torch.randn(p.shape, generator=g) * 0.1).half().float())
    return model.eval()


def to_timm(sd, depth, root=""):
    """transformers ViT names (original spelling) -> timm names (independent of the Rust code)."""
    t = {
        "cls_token": sd[root + "embeddings.cls_token"],
        "pos_embed": sd[root + "embeddings.position_embeddings"],
        "patch_embed.proj.weight": sd[root + "embeddings.patch_embeddings.projection.weight"],
        "patch_embed.proj.bias": sd[root + "embeddings.patch_embeddings.projection.bias"],
        "norm.weight": sd[root + "layernorm.weight"],
        "norm.bias": sd[root + "layernorm.bias"],
    }
    for i in range(depth):
        h, b = f"{root}encoder.layer.{i}.", f"blocks.{i}."
        for p in ["weight", "bias"]:
            t[b + "norm1." + p] = sd[h + "layernorm_before." + p]
            t[b + "norm2." + p] = sd[h + "layernorm_after." + p]
            t[b + "attn.qkv." + p] = torch.cat([sd[h + f"attention.attention.{x}.{p}"]
                                                for x in ["query", "key", "value"]])
            t[b + "attn.proj." + p] = sd[h + "attention.output.dense." + p]
            t[b + "mlp.fc1." + p] = sd[h + "intermediate.dense." + p]
            t[b + "mlp.fc2." + p] = sd[h + "output.dense." + p]
    return {k: v.detach().clone().contiguous() for k, v in t.items()}


def timm_vit(hidden, depth, heads, mlp, image, patch):
    return VisionTransformer(img_size=image, patch_size=patch, embed_dim=hidden, depth=depth,
                             num_heads=heads, mlp_ratio=mlp / hidden, qkv_bias=True, num_classes=0).eval()


def saved_names(path):
    with safe_open(path, "pt") as f:
        return {k: f.get_tensor(k) for k in f.keys()}


def layouts(base_dir, model, cfg):
    """For each other layout, the name each tensor of the saved ViTModel gets there."""
    base = saved_names(os.path.join(base_dir, "model.safetensors"))
    cls = ViTForImageClassification(ViTConfig(**{**cfg.to_dict(), "num_labels": 5,
                                                  "id2label": {i: str(i) for i in range(5)},
                                                  "label2id": {str(i): i for i in range(5)}}))
    missing, unexpected = cls.vit.load_state_dict(model.state_dict(), strict=False)
    assert not missing and set(unexpected) <= {"pooler.dense.weight", "pooler.dense.bias"}, (missing, unexpected)
    cls.eval()
    out = {}
    with tempfile.TemporaryDirectory() as tmp:
        for name, m, original in [("vit_for_image_classification", cls, True),
                                  ("vit_model_v5", model, False),
                                  ("vit_for_image_classification_v5", cls, False)]:
            d = os.path.join(tmp, name)
            m.save_pretrained(d, save_original_format=original)
            got = saved_names(os.path.join(d, "model.safetensors"))
            if not original:
                assert set(got) == set(m.state_dict()), f"{name}: the file holds the in-memory names"
            rename, added = {}, []
            for k, v in got.items():
                src = [b for b, bv in base.items() if bv.shape == v.shape and torch.equal(bv, v)]
                if len(src) == 1:
                    rename[src[0]] = k
                else:
                    assert not src, f"{name}: {k} matches several tensors"
                    added.append(k)
            assert set(added) <= {"classifier.weight", "classifier.bias"}, (name, added)
            out[name] = {"rename": dict(sorted(rename.items())), "added": sorted(added)}
    return out


def hf_vit():
    dims = dict(hidden=32, layers=2, heads=2, mlp=128, image=32, patch=8)
    cfg = hf_config(**dims)
    torch.manual_seed(0)
    model = randomised(ViTModel(cfg), 1)
    d = os.path.join(CKPT, "hf_vit")
    shutil.rmtree(d, ignore_errors=True)
    model.half().save_pretrained(d)
    model.float()
    sd = saved_names(os.path.join(d, "model.safetensors"))
    assert all(v.dtype == torch.float16 for v in sd.values())
    assert "pooler.dense.weight" in sd and "encoder.layer.0.attention.attention.query.weight" in sd

    vit = timm_vit(32, 2, 2, 128, 32, 8)
    missing, unexpected = vit.load_state_dict(to_timm({k: v.float() for k, v in sd.items()}, 2), strict=False)
    assert not missing and not unexpected, (missing, unexpected)
    x = torch.randn(2, 3, 32, 32, generator=torch.Generator().manual_seed(2))
    with torch.no_grad():
        timm_feat = vit.forward_head(vit.forward_features(x), pre_logits=True)
        hf_feat = model(pixel_values=x).last_hidden_state[:, 0]
        m6 = ViTModel(hf_config(**dims, eps=1e-6))
        m6.load_state_dict(model.state_dict())
        hf6 = m6.eval()(pixel_values=x).last_hidden_state[:, 0]
    rel = lambda a, b: ((a - b).abs().max() / b.abs().max()).item()
    print(f"hf_vit: timm vs transformers (eps 1e-6 both): {rel(timm_feat, hf6):.2e}; "
          f"eps 1e-6 vs 1e-12: {rel(hf6, hf_feat):.2e}")
    assert rel(timm_feat, hf6) < 1e-5, "the conversion is wrong"
    save_file({"input": x.contiguous(), "timm": timm_feat.contiguous(), "hf": hf_feat.contiguous(),
               "hf_eps6": hf6.contiguous()}, os.path.join(CKPT, "hf_vit_io.safetensors"))
    with open(os.path.join(CKPT, "hf_vit_layouts.json"), "w") as f:
        json.dump({"transformers": __import__("transformers").__version__, **layouts(d, model, cfg)},
                  f, indent=1)
        f.write("\n")


def hf_vit_sharded():
    dims = dict(hidden=8, layers=1, heads=2, mlp=32, image=16, patch=8)
    torch.manual_seed(3)
    model = randomised(ViTModel(hf_config(**dims)), 4)
    d = os.path.join(CKPT, "hf_vit_sharded")
    shutil.rmtree(d, ignore_errors=True)
    model.save_pretrained(d, max_shard_size=4000)
    os.remove(os.path.join(d, "config.json"))  # not needed: eps is covered by hf_vit
    with open(os.path.join(d, "model.safetensors.index.json")) as f:
        index = json.load(f)
    shards = sorted(set(index["weight_map"].values()))
    assert len(shards) >= 2, shards
    sd = {}
    for s in shards:
        sd.update(load_file(os.path.join(d, s)))
    t = to_timm(sd, 1)
    vit = timm_vit(8, 1, 2, 32, 16, 8)
    vit.load_state_dict(t, strict=True)
    x = torch.randn(1, 3, 16, 16)
    with torch.no_grad():
        a = vit.forward_head(vit.forward_features(x), pre_logits=True)
        m6 = ViTModel(hf_config(**dims, eps=1e-6))
        m6.load_state_dict(model.state_dict())
        b = m6.eval()(pixel_values=x).last_hidden_state[:, 0]
    assert ((a - b).abs().max() / b.abs().max()).item() < 1e-5
    save_file(t, os.path.join(CKPT, "hf_vit_sharded_timm.safetensors"))
    print(f"hf_vit_sharded: {len(shards)} shards")


def run_snippet(snippet, src, dst):
    subprocess.run([sys.executable, "-c", snippet, src, dst], check=True)
    return load_file(dst)


def torch_files():
    sd = {"w": torch.arange(6, dtype=torch.float32).reshape(2, 3), "b": torch.tensor([0.5, -1.0])}
    zp, lp = os.path.join(CKPT, "torch_zip.pth"), os.path.join(CKPT, "torch_legacy.pth")
    torch.save(sd, zp)
    torch.save(sd, lp, _use_new_zipfile_serialization=False)
    ts = os.path.join(CKPT, "torchscript.pt")
    torch.manual_seed(5)
    torch.jit.save(torch.jit.script(torch.nn.Linear(2, 2)), ts)
    with tempfile.TemporaryDirectory() as tmp:
        out = os.path.join(tmp, "out.safetensors")
        for p in [zp, lp]:
            got = run_snippet(TORCH_TO_SAFETENSORS, p, out)
            assert got.keys() == sd.keys() and all(torch.equal(got[k], sd[k]) for k in sd), p
        # A training checkpoint as DeiT/MAE write it: weights under `model` (DDP names),
        # optimizer state, an epoch and the argparse Namespace of the run.
        train = os.path.join(tmp, "checkpoint.pth")
        torch.save({"model": {f"module.{k}": v for k, v in sd.items()},
                    "optimizer": {"state": {}, "param_groups": [{"lr": 0.1}]}, "epoch": 3,
                    "args": argparse.Namespace(lr=0.1, model="vit_base_patch16_224")}, train)
        got = run_snippet(TORCH_TO_SAFETENSORS, train, out)
        assert sorted(got) == ["module.b", "module.w"], sorted(got)
        # timm's train.py: `state_dict` next to `state_dict_ema`, `arch` and `args`.
        torch.save({"epoch": 1, "arch": "vit", "state_dict": sd, "state_dict_ema": sd,
                    "args": argparse.Namespace(lr=0.1)}, train)
        assert sorted(run_snippet(TORCH_TO_SAFETENSORS, train, out)) == ["b", "w"]
        got = run_snippet(TORCHSCRIPT_TO_SAFETENSORS, ts, out)
        assert sorted(got) == ["bias", "weight"], sorted(got)
    with open(os.path.join(CKPT, "torch_convert.txt"), "w") as f:
        f.write(TORCH_TO_SAFETENSORS + "\n" + TORCHSCRIPT_TO_SAFETENSORS + "\n")
    print("torch files: " + ", ".join(f"{os.path.basename(p)} {os.path.getsize(p)} B" for p in [zp, lp, ts]))


if __name__ == "__main__":
    os.makedirs(CKPT, exist_ok=True)
    hf_vit()
    hf_vit_sharded()
    torch_files()
    print("fixtures written")
