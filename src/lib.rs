//! tpc: a tensor-parallel compiler.
//!
//! This crate is the embedding API; the `tpc` binary is a thin layer over it. A program comes in
//! as text (or as a [`Graph`] built in Rust), is parsed and verified, and can be run on the CPU
//! reference executor:
//!
//! ```
//! let src = "func @f(%x: f32[2, 3]) -> f32[2, 3] {\n  %y = exp(%x)\n  return %y\n}\n";
//! let graph = tpc::load("example.ir", src).expect("a valid program");
//! assert_eq!(graph.outputs().len(), 1);
//! ```

use std::collections::BTreeMap;

pub mod compile;
/// The embedding guide (docs/embedding.md); its examples run as doctests.
#[doc = include_str!("../docs/embedding.md")]
pub mod embedding_guide {}
pub mod gen;
pub mod local;
pub mod report;

pub use tpc_codegen as codegen;
pub use tpc_ir as ir;
pub use tpc_passes as passes;
pub use tpc_runtime as runtime;

pub use compile::{
    compile, compile_graph, run_cuda, run_emulated, run_on_cpu, Artifacts, CompileOptions,
};
pub use tpc_ir::{Diagnostic, Graph, SourceFile};

/// Errors of the tpc API.
#[derive(Debug, thiserror::Error)]
pub enum Error {
    /// The program has errors; each diagnostic is located in `file`.
    #[error("{} error(s) in {}", .diagnostics.len(), .file.name)]
    Program {
        file: SourceFile,
        diagnostics: Vec<Diagnostic>,
    },
    #[error(transparent)]
    Runtime(#[from] tpc_runtime::Error),
    #[error(transparent)]
    Mesh(#[from] tpc_ir::mesh::MeshError),
    #[error("{0}")]
    Usage(String),
    #[error(transparent)]
    Pass(#[from] tpc_passes::Error),
    #[error("cannot read {path}: {source}")]
    Read {
        path: String,
        source: std::io::Error,
    },
    #[error("cannot write {path}: {source}")]
    Write {
        path: String,
        source: std::io::Error,
    },
    #[error(transparent)]
    Codegen(tpc_codegen::Error),
}

impl Error {
    /// Writes the error to standard error, in colour when that is a terminal.
    pub fn eprint(&self) {
        use std::io::IsTerminal;
        use tpc_ir::diag::termcolor::{ColorChoice, StandardStream, WriteColor};
        let choice = if std::io::stderr().is_terminal() {
            ColorChoice::Auto
        } else {
            ColorChoice::Never
        };
        let mut stream = StandardStream::stderr(choice);
        match self {
            Error::Program { file, diagnostics } => {
                tpc_ir::diag::render_to(file, diagnostics, &mut stream)
            }
            other => {
                use std::io::Write;
                let _ = stream.set_color(tpc_ir::diag::termcolor::ColorSpec::new().set_bold(true));
                let _ = write!(stream, "error");
                let _ = stream.reset();
                let _ = writeln!(stream, ": {other}");
            }
        }
    }

    /// The error as a person should read it: diagnostics rendered with source lines and carets.
    pub fn render(&self) -> String {
        match self {
            Error::Program { file, diagnostics } => tpc_ir::diag::render(file, diagnostics),
            other => format!("error: {other}\n"),
        }
    }
}

pub type Result<T, E = Error> = std::result::Result<T, E>;

/// A pass error, with a graph left invalid by a pass shown as located diagnostics in `file`
/// (a bug in tpc, but one a person can then read and report), and an input that breaks the
/// invariants of the phase the pipeline starts at likewise (the program's error).
pub fn pass_error(e: tpc_passes::Error, file: &SourceFile) -> Error {
    match e {
        tpc_passes::Error::InvalidAfter { pass, diagnostics } => Error::Program {
            file: file.clone(),
            diagnostics: diagnostics
                .into_iter()
                .map(|mut d| {
                    d.message = format!("after pass `{pass}` (a bug in tpc): {}", d.message);
                    d
                })
                .collect(),
        },
        tpc_passes::Error::InvalidInput { phase, diagnostics } => Error::Program {
            file: file.clone(),
            diagnostics: diagnostics
                .into_iter()
                .map(|mut d| {
                    d.message = format!("at the {phase} phase: {}", d.message);
                    d
                })
                .collect(),
        },
        tpc_passes::Error::Refused { diagnostics } => Error::Program {
            file: file.clone(),
            diagnostics,
        },
        other => Error::Pass(other),
    }
}

/// `e` with a pass error's diagnostics located in `file` (see [`pass_error`]).
pub fn located(e: Error, file: &SourceFile) -> Error {
    match e {
        Error::Pass(p) => pass_error(p, file),
        other => other,
    }
}

/// Parses and verifies a program given as text; `name` is what diagnostics call the file.
pub fn load(name: &str, text: &str) -> Result<Graph> {
    let file = SourceFile::new(name, text);
    tpc_ir::parse(&file).map_err(|diagnostics| Error::Program { file, diagnostics })
}

/// The mesh's axis sizes on `devices` devices, after checking that every split the program
/// writes leaves no device idle. `file` is what the program was loaded from, for diagnostics.
pub fn resolve_devices(
    graph: &Graph,
    devices: i64,
    file: &SourceFile,
) -> Result<Vec<(String, i64)>> {
    if devices < 1 {
        return Err(Error::Usage(format!(
            "--devices must be 1 or more, got {devices}"
        )));
    }
    let sizes = graph
        .mesh
        .resolve(Some(devices))
        .map_err(|e| mesh_error(e, graph, file))?;
    let diagnostics = tpc_ir::verify::verify_splits(graph, &sizes);
    if !diagnostics.is_empty() {
        return Err(Error::Program {
            file: file.clone(),
            diagnostics,
        });
    }
    Ok(sizes)
}

/// An error unless every split the program writes gives every rank something at `bindings`
/// (`B@dp` at `B=2` over 4 devices leaves two ranks without rows), located at the annotation.
/// `sizes` are the mesh's axis sizes ([`resolve_devices`]).
pub fn check_bound_splits(
    graph: &Graph,
    sizes: &[(String, i64)],
    bindings: &BTreeMap<String, i64>,
    file: &SourceFile,
) -> Result<()> {
    let diagnostics = tpc_ir::verify::verify_bound_splits(graph, sizes, bindings);
    if diagnostics.is_empty() {
        return Ok(());
    }
    Err(Error::Program {
        file: file.clone(),
        diagnostics,
    })
}

/// A mesh that `--devices` cannot fill, located at the `mesh` line (when the program has one),
/// with the device counts that would do.
fn mesh_error(e: tpc_ir::mesh::MeshError, graph: &Graph, file: &SourceFile) -> Error {
    use tpc_ir::mesh::MeshError;
    if graph.mesh.span == tpc_ir::Span::DUMMY {
        return Error::Mesh(e);
    }
    let help = match &e {
        MeshError::Mismatch { need, .. } => {
            format!("pass --devices {need}, or change the axis sizes on the `mesh` line")
        }
        MeshError::NotMultiple { fixed, .. } => {
            format!(
                "pass a multiple of {fixed} devices ({fixed}, {}, ...)",
                2 * fixed
            )
        }
        MeshError::NeedsDevices(_) => "pass --devices N".to_string(),
        MeshError::TwoOpenAxes(_) => {
            "give every axis but one a size (`mesh dp = 2, tp`)".to_string()
        }
    };
    Error::Program {
        file: file.clone(),
        diagnostics: vec![Diagnostic::error(
            e.to_string(),
            graph.mesh.span,
            "the mesh is declared here",
        )
        .with_help(help)],
    }
}

/// Parses `B=2,S=128` (also `B=2 S=128`) into symbol bindings.
pub fn parse_bindings(text: &str) -> Result<BTreeMap<String, i64>> {
    let mut out = BTreeMap::new();
    for part in text
        .split([',', ' '])
        .map(str::trim)
        .filter(|p| !p.is_empty())
    {
        let (name, value) = part.split_once('=').ok_or_else(|| {
            Error::Usage(format!(
                "`{part}` is not a binding; write it as NAME=VALUE, like B=2"
            ))
        })?;
        let name = name.trim();
        let valid = name
            .chars()
            .next()
            .is_some_and(|c| c.is_ascii_alphabetic() || c == '_')
            && name.chars().all(|c| c.is_ascii_alphanumeric() || c == '_');
        if !valid {
            return Err(Error::Usage(format!(
                "`{name}` is not a symbol name (letters, digits, `_`)"
            )));
        }
        let value: i64 = value
            .trim()
            .parse()
            .ok()
            .filter(|v| *v >= 0)
            .ok_or_else(|| {
                Error::Usage(format!(
                    "`{}` in `{part}` is not a non-negative whole number",
                    value.trim()
                ))
            })?;
        if out.insert(name.to_string(), value).is_some() {
            return Err(Error::Usage(format!("symbol `{name}` is bound twice")));
        }
    }
    Ok(out)
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn bindings_parse_and_reject_garbage() {
        let b = parse_bindings("B=2,S=128").unwrap();
        assert_eq!(b.get("B"), Some(&2));
        assert_eq!(b.get("S"), Some(&128));
        assert!(parse_bindings("B").is_err());
        assert!(parse_bindings("B=-1").is_err());
        assert!(parse_bindings("B=2,B=3").is_err());
        assert!(parse_bindings("1B=2").is_err());
        assert!(parse_bindings("B=99999999999999999999999").is_err());
    }
}
