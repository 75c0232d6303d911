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

/// The shape of a Llama stack ([`llama_stack`]): Hugging Face's `LlamaConfig` fields that decide
/// the program (`num_hidden_layers`, `num_attention_heads`, `num_key_value_heads`,
/// `hidden_size`, `intermediate_size`, `vocab_size`, `rms_norm_eps`).
#[derive(Clone, Copy, Debug, PartialEq)]
pub struct Llama {
    pub layers: usize,
    /// Query heads; `embed` must be a multiple, with an even head dim (`embed / heads`).
    pub heads: usize,
    /// Key/value heads (grouped-query attention); must divide `heads`. Equal to `heads` is
    /// plain multi-head attention.
    pub kv_heads: usize,
    pub embed: usize,
    /// The MLP's hidden features (`intermediate_size`).
    pub ffn: usize,
    /// With a vocabulary the program takes token ids and returns logits (`embed_tokens` and
    /// `lm_head`); without, it takes and returns hidden states `[B, S, embed]`.
    pub vocab: Option<usize>,
    /// Whether the key/value projections are annotated as split by kv heads (Megatron's
    /// column-parallel k/v). That needs at least as many kv heads as devices; with fewer (or
    /// `false`), the k/v weights are left open and the compiler chooses (typically each rank
    /// computes all kv heads, as vLLM replicates them, and keeps its query heads' share).
    pub split_kv: bool,
    pub eps: f64,
}

impl Llama {
    /// Llama-2-7B's shape (32 heads of 128, no grouping, FFN 11008), `layers` layers deep.
    pub fn llama2_7b(layers: usize) -> Llama {
        Llama {
            layers,
            heads: 32,
            kv_heads: 32,
            embed: 4096,
            ffn: 11008,
            vocab: None,
            split_kv: true,
            eps: 1e-5,
        }
    }

    /// Llama-2-70B's shape (64 heads of 128, 8 kv heads, FFN 28672), `layers` layers deep (the
    /// model has 80).
    pub fn llama2_70b(layers: usize) -> Llama {
        Llama {
            layers,
            heads: 64,
            kv_heads: 8,
            embed: 8192,
            ffn: 28672,
            vocab: None,
            split_kv: true,
            eps: 1e-5,
        }
    }

    /// The head dim, `embed / heads`.
    pub fn head_dim(&self) -> usize {
        self.embed / self.heads.max(1)
    }

    /// Why these sizes make no Llama, if they do not.
    pub fn check(&self) -> Result<(), String> {
        if self.heads == 0 || self.kv_heads == 0 {
            return Err("heads and kv heads must be 1 or more".into());
        }
        if !self.embed.is_multiple_of(self.heads) {
            return Err(format!(
                "embed {} is not a multiple of heads {}",
                self.embed, self.heads
            ));
        }
        if !self.head_dim().is_multiple_of(2) || self.head_dim() == 0 {
            return Err(format!(
                "the head dim {} must be even for rotary embeddings",
                self.head_dim()
            ));
        }
        if !self.heads.is_multiple_of(self.kv_heads) {
            return Err(format!(
                "heads {} is not a multiple of kv heads {}",
                self.heads, self.kv_heads
            ));
        }
        if self.ffn == 0 || self.vocab == Some(0) {
            return Err("ffn and vocab must be 1 or more".into());
        }
        Ok(())
    }
}

impl Default for Llama {
    /// One Llama-2-7B layer.
    fn default() -> Llama {
        Llama::llama2_7b(1)
    }
}

/// A Llama stack as Hugging Face's `LlamaModel` computes it, as IR text with the checkpoint's
/// names (`model.layers.3.self_attn.q_proj.weight`). Per layer: RMSNorm (`input_layernorm`),
/// q/k/v projections without bias, rotary embeddings (`q * cos + rotate_half(q) * sin`, with
/// `rotate_half` as slice, neg and concat), grouped-query attention (kv heads repeated to the
/// query heads by reshape and broadcast, as `repeat_kv`), causal `sdpa`, `o_proj`, a residual
/// add, `post_attention_layernorm`, the SwiGLU MLP (`down_proj(silu(gate_proj(x)) * up_proj(x))`)
/// and a residual add; then `model.norm`.
///
/// The rotary tables are parameters `%cos` and `%sin` of shape `[S, head_dim]` (what
/// `LlamaRotaryEmbedding` returns for positions `0..S`, one batch row). With `config.vocab` the
/// program takes `%input_ids: i64[B, S]` through `model.embed_tokens` and returns `lm_head`'s
/// logits; without, it takes and returns hidden states `%x: bf16[B, S, embed]`.
///
/// [`Annotate::Megatron`] splits the heads of q (and of k/v when `config.split_kv`), the MLP's
/// gate/up rows and `lm_head`'s rows (column-parallel), and the columns of `o_proj` and
/// `down_proj` (row-parallel). Check the sizes with [`Llama::check`] first; this does not.
pub fn llama_stack(config: &Llama, annotate: Annotate) -> String {
    let Llama {
        layers,
        heads,
        kv_heads,
        embed,
        ffn,
        vocab,
        split_kv,
        eps,
    } = *config;
    let hd = config.head_dim();
    let half = hd / 2;
    let rep = heads / kv_heads.max(1);
    let split = |s: String| {
        if annotate == Annotate::Megatron {
            s
        } else {
            s.replace("@tp", "")
        }
    };
    let kv_tp = if split_kv { "@tp" } else { "" };
    let mut params = Vec::new();
    match vocab {
        Some(v) => {
            params.push("%input_ids: i64[B, S]".to_string());
            params.push(format!("%model.embed_tokens.weight: bf16[{v}, {embed}]"));
        }
        None => params.push(format!("%x: bf16[B, S, {embed}]")),
    }
    params.push(format!("%cos: bf16[S, {hd}]"));
    params.push(format!("%sin: bf16[S, {hd}]"));
    for l in 0..layers {
        let p = format!("model.layers.{l}");
        params.push(format!("%{p}.input_layernorm.weight: bf16[{embed}]"));
        params.push(split(format!(
            "%{p}.self_attn.q_proj.weight: bf16[({heads}@tp, {hd}), {embed}]"
        )));
        for w in ["k_proj", "v_proj"] {
            params.push(split(format!(
                "%{p}.self_attn.{w}.weight: bf16[({kv_heads}{kv_tp}, {hd}), {embed}]"
            )));
        }
        params.push(split(format!(
            "%{p}.self_attn.o_proj.weight: bf16[{embed}, ({heads}@tp, {hd})]"
        )));
        params.push(format!(
            "%{p}.post_attention_layernorm.weight: bf16[{embed}]"
        ));
        params.push(split(format!(
            "%{p}.mlp.gate_proj.weight: bf16[{ffn}@tp, {embed}]"
        )));
        params.push(split(format!(
            "%{p}.mlp.up_proj.weight: bf16[{ffn}@tp, {embed}]"
        )));
        params.push(split(format!(
            "%{p}.mlp.down_proj.weight: bf16[{embed}, {ffn}@tp]"
        )));
    }
    params.push(format!("%model.norm.weight: bf16[{embed}]"));
    if let Some(v) = vocab {
        params.push(split(format!("%lm_head.weight: bf16[{v}@tp, {embed}]")));
    }

    let mut out = String::new();
    let _ = writeln!(
        out,
        "# A {layers}-layer Llama stack: {heads} query heads of {hd}, {kv_heads} kv heads, \
         embedding {embed}, MLP {ffn}{}.",
        vocab
            .map(|v| format!(", vocabulary {v}"))
            .unwrap_or_default()
    );
    let _ = writeln!(out, "mesh tp\n");
    let indent = " ".repeat("func @llama(".len());
    let result = match vocab {
        Some(v) => format!("bf16[B, S, {v}]"),
        None => format!("bf16[B, S, {embed}]"),
    };
    let _ = writeln!(
        out,
        "func @llama({}) -> {result} {{",
        params.join(&format!(",\n{indent}"))
    );
    let mut lines = Vec::new();
    let mut x = match vocab {
        Some(_) => {
            lines.push("%embeds = embedding(%input_ids, %model.embed_tokens.weight)".to_string());
            "embeds".to_string()
        }
        None => "x".to_string(),
    };
    for l in 0..layers {
        let p = format!("model.layers.{l}");
        let w = |name: &str| format!("%{p}.{name}.weight");
        lines.push(format!("# layer {l}"));
        lines.push(format!(
            "%{p}.ln1 = rms_norm(%{x}, {}) {{eps = {eps:e}}}",
            w("input_layernorm")
        ));
        for (t, n) in [("q", heads), ("k", kv_heads), ("v", kv_heads)] {
            lines.push(format!(
                "%{p}.{t} = linear(%{p}.ln1, {})",
                w(&format!("self_attn.{t}_proj"))
            ));
            lines.push(format!(
                "%{p}.{t}.heads = reshape(%{p}.{t}) {{shape = [B, S, {n}, {hd}]}}"
            ));
            lines.push(format!(
                "%{p}.{t}.t = permute(%{p}.{t}.heads) {{dims = [0, 2, 1, 3]}}"
            ));
        }
        // Rotary embeddings: x * cos + rotate_half(x) * sin, rotate_half(x) = [-x2, x1].
        for t in ["q", "k"] {
            lines.extend([
                format!("%{p}.{t}.x1 = slice(%{p}.{t}.t) {{dim = 3, end = {half}}}"),
                format!("%{p}.{t}.x2 = slice(%{p}.{t}.t) {{dim = 3, start = {half}, end = {hd}}}"),
                format!("%{p}.{t}.x2.neg = neg(%{p}.{t}.x2)"),
                format!("%{p}.{t}.rot = concat(%{p}.{t}.x2.neg, %{p}.{t}.x1) {{dim = 3}}"),
                format!("%{p}.{t}.cos = mul(%{p}.{t}.t, %cos)"),
                format!("%{p}.{t}.sin = mul(%{p}.{t}.rot, %sin)"),
                format!("%{p}.{t}.rope = add(%{p}.{t}.cos, %{p}.{t}.sin)"),
            ]);
        }
        // repeat_kv: [B, KV, S, hd] -> [B, KV, 1, S, hd] -> [B, KV, rep, S, hd] -> [B, H, S, hd].
        let (k, v) = if rep > 1 {
            for (t, src) in [("k", format!("{p}.k.rope")), ("v", format!("{p}.v.t"))] {
                lines.extend([
                    format!(
                        "%{p}.{t}.5d = reshape(%{src}) {{shape = [B, {kv_heads}, 1, S, {hd}]}}"
                    ),
                    format!(
                        "%{p}.{t}.rep = broadcast(%{p}.{t}.5d) {{shape = [B, {kv_heads}, {rep}, S, {hd}]}}"
                    ),
                    format!(
                        "%{p}.{t}.all = reshape(%{p}.{t}.rep) {{shape = [B, {heads}, S, {hd}]}}"
                    ),
                ]);
            }
            (format!("{p}.k.all"), format!("{p}.v.all"))
        } else {
            (format!("{p}.k.rope"), format!("{p}.v.t"))
        };
        lines.extend([
            format!("%{p}.ctx = sdpa(%{p}.q.rope, %{k}, %{v}) {{causal = true}}"),
            format!("%{p}.ctx.t = permute(%{p}.ctx) {{dims = [0, 2, 1, 3]}}"),
            format!("%{p}.ctx.flat = reshape(%{p}.ctx.t) {{shape = [B, S, {embed}]}}"),
            format!(
                "%{p}.attn.out = linear(%{p}.ctx.flat, {})",
                w("self_attn.o_proj")
            ),
            format!("%{p}.r1 = add(%{x}, %{p}.attn.out)"),
            format!(
                "%{p}.ln2 = rms_norm(%{p}.r1, {}) {{eps = {eps:e}}}",
                w("post_attention_layernorm")
            ),
            format!("%{p}.gate = linear(%{p}.ln2, {})", w("mlp.gate_proj")),
            format!("%{p}.up = linear(%{p}.ln2, {})", w("mlp.up_proj")),
            format!("%{p}.act = silu(%{p}.gate)"),
            format!("%{p}.h = mul(%{p}.act, %{p}.up)"),
            format!("%{p}.mlp.out = linear(%{p}.h, {})", w("mlp.down_proj")),
            format!("%{p}.out = add(%{p}.r1, %{p}.mlp.out)"),
        ]);
        x = format!("{p}.out");
    }
    lines.push(format!(
        "%norm = rms_norm(%{x}, %model.norm.weight) {{eps = {eps:e}}}"
    ));
    let ret = if vocab.is_some() {
        lines.push("%logits = linear(%norm, %lm_head.weight)".to_string());
        "logits"
    } else {
        "norm"
    };
    for line in lines {
        let _ = writeln!(out, "  {line}");
    }
    let _ = writeln!(out, "  return %{ret}\n}}");
    out
}
