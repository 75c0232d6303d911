//! Program generators for tests and benchmarks.

use std::fmt::Write;

/// How a generated stack is annotated.
#[derive(Clone, Copy, Debug, PartialEq, Eq)]
pub enum Annotate {
    /// Megatron tensor parallelism: heads and MLP hidden features split over `tp`.
    Megatron,
    /// No sharding annotations at all.
    None,
}

/// An L-layer GPT-2 stack (nanoGPT's blocks: pre-norm, causal attention with a fused QKV in
/// q…, k…, v… order, GELU MLP, residual dropout) as IR text, with checkpoint-style names
/// (`h.3.attn.c_attn.weight`). `embed` must be a multiple of `heads`.
pub fn gpt_stack(layers: usize, heads: usize, embed: usize, annotate: Annotate) -> String {
    let hd = embed / heads.max(1);
    let split = |s: &str| {
        if annotate == Annotate::Megatron {
            s.to_string()
        } else {
            s.replace("@tp", "")
        }
    };
    let mut params = vec![format!("%x: bf16[B, S, {embed}]")];
    for l in 0..layers {
        let p = format!("h.{l}");
        params.push(format!("%{p}.ln_1.weight: bf16[{embed}]"));
        params.push(format!("%{p}.ln_1.bias: bf16[{embed}]"));
        params.push(split(&format!(
            "%{p}.attn.c_attn.weight: bf16[(3, {heads}@tp, {hd}), {embed}]"
        )));
        params.push(split(&format!(
            "%{p}.attn.c_attn.bias: bf16[(3, {heads}@tp, {hd})]"
        )));
        params.push(split(&format!(
            "%{p}.attn.c_proj.weight: bf16[{embed}, ({heads}@tp, {hd})]"
        )));
        params.push(format!("%{p}.attn.c_proj.bias: bf16[{embed}]"));
        params.push(format!("%{p}.ln_2.weight: bf16[{embed}]"));
        params.push(format!("%{p}.ln_2.bias: bf16[{embed}]"));
        params.push(split(&format!(
            "%{p}.mlp.c_fc.weight: bf16[{}@tp, {embed}]",
            4 * embed
        )));
        params.push(split(&format!(
            "%{p}.mlp.c_fc.bias: bf16[{}@tp]",
            4 * embed
        )));
        params.push(split(&format!(
            "%{p}.mlp.c_proj.weight: bf16[{embed}, {}@tp]",
            4 * embed
        )));
        params.push(format!("%{p}.mlp.c_proj.bias: bf16[{embed}]"));
    }
    let mut out = String::new();
    let _ = writeln!(
        out,
        "# A {layers}-layer GPT-2 stack: {heads} heads of {hd}, embedding {embed}."
    );
    let _ = writeln!(out, "mesh tp\n");
    let indent = " ".repeat("func @gpt(".len());
    let _ = writeln!(
        out,
        "func @gpt({}) -> bf16[B, S, {embed}] {{",
        params.join(&format!(",\n{indent}"))
    );
    let mut x = "x".to_string();
    for l in 0..layers {
        let p = format!("h.{l}");
        let seed = 2 * l as u64;
        let lines = [
            format!("%{p}.ln1 = layer_norm(%{x}, %{p}.ln_1.weight, %{p}.ln_1.bias)"),
            format!("%{p}.qkv = linear(%{p}.ln1, %{p}.attn.c_attn.weight, %{p}.attn.c_attn.bias)"),
            format!("%{p}.qkv.heads = reshape(%{p}.qkv) {{shape = [B, S, 3, {heads}, {hd}]}}"),
            format!("%{p}.q.0 = slice(%{p}.qkv.heads) {{dim = 2, end = 1}}"),
            format!("%{p}.k.0 = slice(%{p}.qkv.heads) {{dim = 2, start = 1, end = 2}}"),
            format!("%{p}.v.0 = slice(%{p}.qkv.heads) {{dim = 2, start = 2, end = 3}}"),
            format!("%{p}.q = permute(%{p}.q.0) {{dims = [0, 2, 3, 1, 4]}}"),
            format!("%{p}.k = permute(%{p}.k.0) {{dims = [0, 2, 3, 1, 4]}}"),
            format!("%{p}.v = permute(%{p}.v.0) {{dims = [0, 2, 3, 1, 4]}}"),
            format!("%{p}.ctx = sdpa(%{p}.q, %{p}.k, %{p}.v) {{causal = true}}"),
            format!("%{p}.ctx.t = permute(%{p}.ctx) {{dims = [0, 3, 1, 2, 4]}}"),
            format!("%{p}.ctx.flat = reshape(%{p}.ctx.t) {{shape = [B, S, {embed}]}}"),
            format!("%{p}.attn.out = linear(%{p}.ctx.flat, %{p}.attn.c_proj.weight, %{p}.attn.c_proj.bias)"),
            format!("%{p}.attn.drop = dropout(%{p}.attn.out) {{p = 0.1, seed = {seed}}}"),
            format!("%{p}.r1 = add(%{x}, %{p}.attn.drop)"),
            format!("%{p}.ln2 = layer_norm(%{p}.r1, %{p}.ln_2.weight, %{p}.ln_2.bias)"),
            format!("%{p}.h = linear(%{p}.ln2, %{p}.mlp.c_fc.weight, %{p}.mlp.c_fc.bias)"),
            format!("%{p}.a = gelu(%{p}.h) {{approximate = tanh}}"),
            format!("%{p}.m = linear(%{p}.a, %{p}.mlp.c_proj.weight, %{p}.mlp.c_proj.bias)"),
            format!("%{p}.m.drop = dropout(%{p}.m) {{p = 0.1, seed = {}}}", seed + 1),
            format!("%{p}.out = add(%{p}.r1, %{p}.m.drop)"),
        ];
        for line in lines {
            let _ = writeln!(out, "  {line}");
        }
        x = format!("{p}.out");
    }
    let _ = writeln!(out, "  return %{x}\n}}");
    out
}
