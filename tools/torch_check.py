#!/usr/bin/env python3
"""Compares `tpc run` with PyTorch on the examples, in bf16 and f32.

For each example, draws inputs with torch, writes them to a safetensors file, runs
`tpc run --inputs … --outputs …`, computes the same program with torch.nn.functional (dropout
masks drawn with tpc's Philox keyed by the global element index, which is what the IR specifies),
and prints the largest absolute and relative differences. Exits 1 beyond the tolerance.

Needs torch, numpy and safetensors (`pip install torch numpy safetensors`); not part of CI,
which cannot install torch in its time budget.

usage: tools/torch_check.py [path/to/tpc]   (default target/release/tpc)
"""

import math
import os
import subprocess
import sys
import tempfile

import numpy as np
import torch
import torch.nn.functional as F
from safetensors.torch import load_file, save_file

M0, M1, W0, W1 = 0xD2511F53, 0xCD9E8D57, 0x9E3779B9, 0xBB67AE85
MASK = 0xFFFFFFFF


def philox_uniform(seed, n):
    """uniform(seed, i) for i in 0..n, as docs/ir.md defines it."""
    idx = np.arange(n, dtype=np.uint64)
    c0 = idx & MASK
    c1 = idx >> np.uint64(32)
    c2 = np.zeros_like(c0)
    c3 = np.zeros_like(c0)
    k0, k1 = seed & MASK, (seed >> 32) & MASK
    for r in range(10):
        if r > 0:
            k0 = (k0 + W0) & MASK
            k1 = (k1 + W1) & MASK
        p0 = np.uint64(M0) * c0
        p1 = np.uint64(M1) * c2
        hi0, lo0 = p0 >> np.uint64(32), p0 & np.uint64(MASK)
        hi1, lo1 = p1 >> np.uint64(32), p1 & np.uint64(MASK)
        c0, c1, c2, c3 = hi1 ^ c1 ^ np.uint64(k0), lo1, hi0 ^ c3 ^ np.uint64(k1), lo0
    return (c0 >> np.uint64(8)).astype(np.float64) * 2.0**-24


def dropout(x, p, seed):
    u = torch.from_numpy(philox_uniform(seed, x.numel()).astype(np.float32)).reshape(x.shape)
    # As torch's native dropout: the keep mask in x's dtype, divided by 1-p, times x.
    noise = (u < (1.0 - p)).to(x.dtype)
    noise.div_(1.0 - p)
    return x * noise


def mlp(t):
    h = F.linear(t["x"], t["w0"], t["b0"])
    a = F.gelu(h, approximate="tanh")
    y = F.linear(a, t["w1"], t["b1"])
    return {"o": dropout(y, 0.1, 7)}


def attention(x, w, b, wo, bo, layout_5d):
    B, S, _ = x.shape
    qkv = F.linear(x, w, b).reshape(B, S, 3, 16, 48)
    q, k, v = (qkv[:, :, i] for i in range(3))
    q, k, v = (z.permute(0, 2, 1, 3) for z in (q, k, v))
    ctx = F.scaled_dot_product_attention(q, k, v, is_causal=True)
    ctx = ctx.permute(0, 2, 1, 3).reshape(B, S, 768)
    return F.linear(ctx, wo, bo)


def attention_glm(t):
    return {"y": attention(t["x"], t["wqkv"], t["bqkv"], t["wo"], t["bo"], False)}


def block(t):
    x = t["x"]
    ln1 = F.layer_norm(x, (768,), t["ln_1.weight"], t["ln_1.bias"], 1e-5)
    a = attention(ln1, t["attn.c_attn.weight"], t["attn.c_attn.bias"], t["attn.c_proj.weight"],
                  t["attn.c_proj.bias"], True)
    r1 = x + dropout(a, 0.1, 11)
    ln2 = F.layer_norm(r1, (768,), t["ln_2.weight"], t["ln_2.bias"], 1e-5)
    h = F.gelu(F.linear(ln2, t["mlp.c_fc.weight"], t["mlp.c_fc.bias"]), approximate="tanh")
    m = F.linear(h, t["mlp.c_proj.weight"], t["mlp.c_proj.bias"])
    return {"out": r1 + dropout(m, 0.1, 12)}


B, S = 2, 16
SHAPES = {
    "mlp": {"x": (B, S, 768), "w0": (3072, 768), "b0": (3072,), "w1": (768, 3072), "b1": (768,)},
    "attention_glm": {"x": (B, S, 768), "wqkv": (2304, 768), "bqkv": (2304,), "wo": (768, 768),
                      "bo": (768,)},
    "block": {"x": (B, S, 768), "ln_1.weight": (768,), "ln_1.bias": (768,),
              "attn.c_attn.weight": (2304, 768), "attn.c_attn.bias": (2304,),
              "attn.c_proj.weight": (768, 768), "attn.c_proj.bias": (768,),
              "ln_2.weight": (768,), "ln_2.bias": (768,),
              "mlp.c_fc.weight": (3072, 768), "mlp.c_fc.bias": (3072,),
              "mlp.c_proj.weight": (768, 3072), "mlp.c_proj.bias": (768,)},
}
MODELS = {"mlp": mlp, "attention_glm": attention_glm, "block": block}
# Largest difference allowed, relative to the output's largest magnitude: a few ulps of the dtype,
# since tpc and torch sum GEMMs in different orders before rounding.
TOL = {"bf16": 2.0**-6, "f32": 1e-5}


def main():
    tpc = sys.argv[1] if len(sys.argv) > 1 else "target/release/tpc"
    root = os.path.dirname(os.path.dirname(os.path.abspath(__file__)))
    failed = False
    torch.manual_seed(0)
    with tempfile.TemporaryDirectory() as tmp:
        for name, model in MODELS.items():
            for dtype_name, dtype in (("bf16", torch.bfloat16), ("f32", torch.float32)):
                text = open(os.path.join(root, "examples", name + ".ir")).read()
                prog = os.path.join(tmp, f"{name}_{dtype_name}.ir")
                open(prog, "w").write(text.replace("bf16", dtype_name))
                inputs = {}
                for k, shape in SHAPES[name].items():
                    scale = 1.0 / math.sqrt(shape[-1]) if len(shape) >= 2 and k != "x" else 1.0
                    if k.endswith("ln_1.weight") or k.endswith("ln_2.weight"):
                        inputs[k] = (1.0 + 0.1 * torch.randn(shape)).to(dtype)
                    else:
                        inputs[k] = (torch.randn(shape) * scale).to(dtype)
                inp = os.path.join(tmp, "in.safetensors")
                out = os.path.join(tmp, "out.safetensors")
                save_file(inputs, inp)
                run = subprocess.run([tpc, "run", prog, "--inputs", inp, "--outputs", out],
                                     capture_output=True, text=True)
                if run.returncode != 0:
                    print(f"{name} {dtype_name}: tpc failed:\n{run.stderr}")
                    failed = True
                    continue
                got = load_file(out)
                want = model(inputs)
                for k, w in want.items():
                    g = got[k]
                    assert g.dtype == w.dtype and g.shape == w.shape, (k, g.dtype, w.dtype, g.shape, w.shape)
                    diff = (g.float() - w.float()).abs()
                    peak = w.float().abs().max().item()
                    rel = diff.max().item() / max(peak, 1e-30)
                    ulps = (diff > 0).float().mean().item()
                    ok = rel <= TOL[dtype_name]
                    failed |= not ok
                    print(f"{name:14} {dtype_name:5} %{k}: max|diff| {diff.max().item():.3e}  "
                          f"max|ref| {peak:.3e}  rel {rel:.2e}  differing {ulps * 100:.2f}%  "
                          f"{'ok' if ok else 'FAIL'}")
    sys.exit(1 if failed else 0)


if __name__ == "__main__":
    main()
