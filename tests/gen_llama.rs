//! The generated Llama stacks (`tpc::gen::llama_stack`): they parse and verify, name their
//! parameters as Hugging Face's checkpoints do, and a small one run sharded on 4 ranks (the
//! compiled host programs on CPU rank threads) equals the unsharded reference.

mod common;

use std::collections::BTreeMap;

use tpc::gen::{llama_stack, Annotate, Llama};
use tpc::ir::{print, PrintMode};

fn tiny(layers: usize, kv_heads: usize, split_kv: bool) -> Llama {
    Llama {
        layers,
        heads: 8,
        kv_heads,
        embed: 128,
        ffn: 256,
        vocab: None,
        split_kv,
        eps: 1e-5,
    }
}

fn load(text: &str) -> tpc::Graph {
    tpc::load("llama.ir", text).unwrap_or_else(|e| panic!("{text}\n{}", e.render()))
}

#[test]
fn llama_stacks_parse_verify_and_round_trip() {
    for (config, annotate) in [
        (tiny(2, 2, false), Annotate::Megatron),
        (tiny(1, 4, true), Annotate::Megatron),
        (tiny(1, 8, true), Annotate::Megatron),
        (
            Llama {
                vocab: Some(100),
                ..tiny(2, 2, false)
            },
            Annotate::None,
        ),
        (Llama::llama2_70b(2), Annotate::Megatron),
    ] {
        config.check().expect("valid sizes");
        let text = llama_stack(&config, annotate);
        let g = load(&text);
        let printed = print(&g, PrintMode::Source);
        assert_eq!(print(&load(&printed), PrintMode::Source), printed);
        for &v in g.values() {
            let tys: Vec<&tpc::ir::TensorType> =
                g.operands(v).into_iter().map(|o| g.ty(o)).collect();
            tpc::ir::check_rule(&tpc::ir::rule_of(&g, v), &tys, &g.ty(v).shape).expect("rule fits");
        }
        assert_eq!(text.contains("@tp"), annotate == Annotate::Megatron);
        let (_, s) = g
            .outputs()
            .first()
            .map(|&o| (o, g.ty(o)))
            .expect("one result");
        let last = match config.vocab {
            Some(v) => v.to_string(),
            None => config.embed.to_string(),
        };
        assert_eq!(s.shape_string(), format!("[B, S, {last}]"));
    }
}

#[test]
fn llama_parameters_have_hugging_face_names() {
    let config = Llama {
        vocab: Some(100),
        ..tiny(2, 2, true)
    };
    let g = load(&llama_stack(&config, Annotate::Megatron));
    let names: Vec<String> = g.params().iter().map(|&p| g.name(p).to_string()).collect();
    let mut want: Vec<String> = ["input_ids", "model.embed_tokens.weight", "cos", "sin"]
        .map(String::from)
        .to_vec();
    for l in 0..2 {
        for w in [
            "input_layernorm",
            "self_attn.q_proj",
            "self_attn.k_proj",
            "self_attn.v_proj",
            "self_attn.o_proj",
            "post_attention_layernorm",
            "mlp.gate_proj",
            "mlp.up_proj",
            "mlp.down_proj",
        ] {
            want.push(format!("model.layers.{l}.{w}.weight"));
        }
    }
    want.push("model.norm.weight".into());
    want.push("lm_head.weight".into());
    assert_eq!(names, want);
    // Megatron: column-parallel q/k/v (by heads), gate, up and lm_head; row-parallel o, down.
    let printed = print(&g, PrintMode::Source);
    let l0 = "%model.layers.0";
    for decl in [
        format!("{l0}.self_attn.q_proj.weight: bf16[(8@tp, 16), 128]"),
        format!("{l0}.self_attn.k_proj.weight: bf16[(2@tp, 16), 128]"),
        format!("{l0}.self_attn.v_proj.weight: bf16[(2@tp, 16), 128]"),
        format!("{l0}.self_attn.o_proj.weight: bf16[128, (8@tp, 16)]"),
        format!("{l0}.mlp.gate_proj.weight: bf16[256@tp, 128]"),
        format!("{l0}.mlp.up_proj.weight: bf16[256@tp, 128]"),
        format!("{l0}.mlp.down_proj.weight: bf16[128, 256@tp]"),
        format!("{l0}.input_layernorm.weight: bf16[128]"),
        "%lm_head.weight: bf16[100@tp, 128]".to_string(),
        "%cos: bf16[S, 16]".to_string(),
    ] {
        assert!(printed.contains(&decl), "no `{decl}` in\n{printed}");
    }
    // With the kv heads left to the compiler, their projections carry no annotation.
    let open = load(&llama_stack(&tiny(1, 2, false), Annotate::Megatron));
    assert!(print(&open, PrintMode::Source)
        .contains("%model.layers.0.self_attn.k_proj.weight: bf16[(2, 16), 128]"));
}

use common::relative_error as rel_err;

/// Two layers on 4 ranks, with the kv heads replicated (2 kv heads, fewer than the ranks) and
/// split (4 kv heads), and with the embedding and a vocabulary-parallel head: the compiled
/// host programs on CPU rank threads give the reference's result, within bf16's rounding of
/// partial sums (the CLI's `--check` tolerance), through exactly two allreduces per layer.
#[test]
fn small_llama_runs_sharded_on_4_ranks_as_the_reference() {
    let bindings: BTreeMap<String, i64> = tpc::parse_bindings("B=2,S=8").expect("bindings");
    for config in [
        tiny(2, 2, false),
        tiny(2, 4, true),
        Llama {
            vocab: Some(96),
            ..tiny(1, 8, true)
        },
    ] {
        let text = llama_stack(&config, Annotate::Megatron);
        let g = load(&text);
        let options = tpc::CompileOptions {
            devices: Some(4),
            bindings: bindings.clone(),
            ..tpc::CompileOptions::default()
        };
        let artifacts = tpc::compile("llama.ir", &text, &options)
            .unwrap_or_else(|e| panic!("{config:?}: {}", e.render()));
        let collectives: Vec<&str> = artifacts.report["collectives"]
            .as_array()
            .expect("collectives")
            .iter()
            .map(|c| c["kind"].as_str().expect("kind"))
            .filter(|&k| k != "shard")
            .collect();
        assert_eq!(
            collectives,
            vec!["allreduce"; 2 * config.layers],
            "{config:?}: {}",
            artifacts.report["collectives"]
        );
        let inputs = tpc::runtime::random_inputs(&g, &bindings, 5).expect("inputs");
        let want = tpc::runtime::run_reference(&g, &inputs, &bindings).expect("reference");
        let got = tpc::run_on_cpu(&artifacts, &inputs).expect("sharded run");
        assert_eq!(want.len(), 1);
        assert_eq!(got.len(), 1);
        let err = rel_err(&want[0], &got[0]);
        assert!(err <= 1.0 / 32.0, "{config:?}: relative error {err:e}");
        assert!(want[0].to_f32_vec().iter().all(|x| x.is_finite()));
    }
}
