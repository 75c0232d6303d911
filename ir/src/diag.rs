//! Diagnostics with byte spans, rendered like rustc's (file:line:col, the source line, a caret,
//! a label, a help line) by codespan-reporting.

use codespan_reporting::diagnostic::{Diagnostic as CsDiagnostic, Label};
use codespan_reporting::files::SimpleFile;
use codespan_reporting::term;
/// Re-exported so that callers can render to a colour terminal without naming codespan.
pub use codespan_reporting::term::termcolor;

use crate::span::Span;

#[derive(Clone, Copy, Debug, PartialEq, Eq)]
pub enum Severity {
    Error,
    Warning,
}

/// One located message: a primary span with its label, optional secondary spans, a hint.
#[derive(Clone, Debug, PartialEq, Eq)]
pub struct Diagnostic {
    pub severity: Severity,
    pub message: String,
    pub span: Span,
    pub label: String,
    pub secondary: Vec<(Span, String)>,
    pub help: Option<String>,
}

impl Diagnostic {
    pub fn error(message: impl Into<String>, span: Span, label: impl Into<String>) -> Diagnostic {
        Diagnostic {
            severity: Severity::Error,
            message: message.into(),
            span,
            label: label.into(),
            secondary: Vec::new(),
            help: None,
        }
    }

    pub fn warning(message: impl Into<String>, span: Span, label: impl Into<String>) -> Diagnostic {
        Diagnostic {
            severity: Severity::Warning,
            ..Diagnostic::error(message, span, label)
        }
    }

    pub fn with_help(mut self, help: impl Into<String>) -> Diagnostic {
        self.help = Some(help.into());
        self
    }

    pub fn with_secondary(mut self, span: Span, label: impl Into<String>) -> Diagnostic {
        self.secondary.push((span, label.into()));
        self
    }

    pub fn is_error(&self) -> bool {
        self.severity == Severity::Error
    }
}

/// Source text with the name it is reported under (`examples/mlp.ir`, `<stdin>`).
#[derive(Clone, Debug)]
pub struct SourceFile {
    pub name: String,
    pub text: String,
}

impl SourceFile {
    pub fn new(name: impl Into<String>, text: impl Into<String>) -> SourceFile {
        SourceFile {
            name: name.into(),
            text: text.into(),
        }
    }
}

fn clamp(span: Span, len: usize) -> std::ops::Range<usize> {
    let start = (span.start as usize).min(len);
    let end = (span.end as usize).clamp(start, len);
    start..end
}

/// Renders diagnostics as plain text (no colour), in the order given.
pub fn render(file: &SourceFile, diags: &[Diagnostic]) -> String {
    let mut buf = termcolor::Buffer::no_color();
    render_to(file, diags, &mut buf);
    String::from_utf8_lossy(buf.as_slice()).into_owned()
}

/// Renders diagnostics to a terminal-aware writer (colour where the writer supports it).
pub fn render_to(file: &SourceFile, diags: &[Diagnostic], out: &mut dyn termcolor::WriteColor) {
    let files = SimpleFile::new(file.name.as_str(), file.text.as_str());
    // ASCII drawing (`-->`, `|`, `^`) reads like rustc's and survives any terminal or log.
    let config = term::Config {
        chars: term::Chars::ascii(),
        ..term::Config::default()
    };
    let len = file.text.len();
    for d in diags {
        let base = match d.severity {
            Severity::Error => CsDiagnostic::error(),
            Severity::Warning => CsDiagnostic::warning(),
        };
        let mut labels = vec![Label::primary((), clamp(d.span, len)).with_message(&d.label)];
        for (s, l) in &d.secondary {
            labels.push(Label::secondary((), clamp(*s, len)).with_message(l));
        }
        let mut cs = base.with_message(&d.message).with_labels(labels);
        if let Some(h) = &d.help {
            cs = cs.with_notes(vec![format!("help: {h}")]);
        }
        // Writing to an in-memory buffer or a terminal; a failed write leaves nothing to report to.
        let _ = term::emit_to_write_style(out, &config, &files, &cs);
    }
}
