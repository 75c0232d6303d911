//! The `tpc` command-line tool.

mod cli;
mod commands;

use std::process::ExitCode;

use clap::Parser;

#[global_allocator]
static ALLOCATOR: mimalloc::MiMalloc = mimalloc::MiMalloc;

fn main() -> ExitCode {
    let args = cli::Cli::parse();
    let result = match args.command {
        cli::Command::Check(a) => commands::check(a),
        cli::Command::Fmt(a) => commands::fmt(a),
        cli::Command::Compile(a) => commands::compile(a),
        cli::Command::Run(a) => commands::run(a),
    };
    match result {
        Ok(code) => code,
        Err(e) => {
            e.eprint();
            ExitCode::from(1)
        }
    }
}
