//! Prints a Llama stack (Hugging Face's `LlamaModel`: RMSNorm, rotary embeddings, grouped-query
//! attention, SwiGLU MLP) in tpc's IR, with the checkpoint's parameter names.
//!
//! cargo run --release --example gen_llama -- --layers 80 --heads 64 --kv-heads 8 --embed 8192
//!     --ffn 28672 [--vocab 32000] [--tp 8] [--split-kv | --replicate-kv] [--no-annotations]
//!
//! Defaults: one Llama-2-7B layer (32 heads, 32 kv heads, embedding 4096, MLP 11008), no
//! vocabulary (hidden states in, hidden states out). The k/v projections are annotated as split
//! by kv heads when there are at least `--tp` of them (default 8, the devices the program is
//! meant for; a split over more devices than kv heads is refused), otherwise left open so that
//! each rank computes all kv heads; `--split-kv` and `--replicate-kv` force either.

use std::process::ExitCode;

use tpc::gen::{llama_stack, Annotate, Llama};

const USAGE: &str = "usage: gen_llama [--layers L] [--heads H] [--kv-heads KV] [--embed E] \
                     [--ffn F] [--vocab V] [--tp N] [--split-kv | --replicate-kv] \
                     [--no-annotations]";

fn main() -> ExitCode {
    let mut config = Llama::default();
    let mut annotate = Annotate::Megatron;
    let mut tp = 8usize;
    let mut split_kv: Option<bool> = None;
    let mut args = std::env::args().skip(1);
    while let Some(flag) = args.next() {
        if flag == "--no-annotations" {
            annotate = Annotate::None;
            continue;
        }
        if flag == "--replicate-kv" || flag == "--split-kv" {
            split_kv = Some(flag == "--split-kv");
            continue;
        }
        if flag == "-h" || flag == "--help" {
            println!("{USAGE}");
            return ExitCode::SUCCESS;
        }
        let slot = match flag.as_str() {
            "--layers" => &mut config.layers,
            "--heads" => &mut config.heads,
            "--kv-heads" => &mut config.kv_heads,
            "--embed" => &mut config.embed,
            "--ffn" => &mut config.ffn,
            "--tp" => &mut tp,
            "--vocab" => {
                let mut v = 0;
                if !number(&flag, args.next(), &mut v) {
                    return ExitCode::from(1);
                }
                config.vocab = Some(v);
                continue;
            }
            other => {
                eprintln!("error: unknown option `{other}`\n{USAGE}");
                return ExitCode::from(1);
            }
        };
        if !number(&flag, args.next(), slot) {
            return ExitCode::from(1);
        }
    }
    config.split_kv = split_kv.unwrap_or(config.kv_heads >= tp);
    if let Err(e) = config.check() {
        eprintln!("error: {e}");
        return ExitCode::from(1);
    }
    print!("{}", llama_stack(&config, annotate));
    ExitCode::SUCCESS
}

/// Parses `value` into `slot`; says what is wrong and returns false if it is not a number.
fn number(flag: &str, value: Option<String>, slot: &mut usize) -> bool {
    match value.and_then(|v| v.parse().ok()) {
        Some(v) => {
            *slot = v;
            true
        }
        None => {
            eprintln!("error: {flag} needs a whole number\n{USAGE}");
            false
        }
    }
}
