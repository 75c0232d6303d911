//! Prints an L-layer GPT-2 stack in tpc's IR.
//!
//! cargo run --release --example gen_gpt -- --layers 96 --heads 16 --embed 768 [--no-annotations]

use std::process::ExitCode;

use tpc::gen::{gpt_stack, Annotate};

fn main() -> ExitCode {
    let mut layers = 1usize;
    let mut heads = 16usize;
    let mut embed = 768usize;
    let mut annotate = Annotate::Megatron;
    let mut args = std::env::args().skip(1);
    while let Some(flag) = args.next() {
        let mut value = |name: &str| -> Option<usize> {
            let v = args.next().and_then(|v| v.parse().ok());
            if v.is_none() {
                eprintln!("error: {name} needs a whole number");
            }
            v
        };
        match flag.as_str() {
            "--layers" => match value("--layers") {
                Some(v) => layers = v,
                None => return ExitCode::from(1),
            },
            "--heads" => match value("--heads") {
                Some(v) if v > 0 => heads = v,
                _ => return ExitCode::from(1),
            },
            "--embed" => match value("--embed") {
                Some(v) => embed = v,
                None => return ExitCode::from(1),
            },
            "--no-annotations" => annotate = Annotate::None,
            other => {
                eprintln!("error: unknown option `{other}`\nusage: gen_gpt --layers L --heads H --embed E [--no-annotations]");
                return ExitCode::from(1);
            }
        }
    }
    if !embed.is_multiple_of(heads) {
        eprintln!("error: --embed {embed} is not a multiple of --heads {heads}");
        return ExitCode::from(1);
    }
    print!("{}", gpt_stack(layers, heads, embed, annotate));
    ExitCode::SUCCESS
}
