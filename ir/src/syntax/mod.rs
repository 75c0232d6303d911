//! The text form: lexer, parser (with diagnostics) and printer.

pub(crate) mod attrs;
mod lexer;
mod parser;
mod printer;

pub use parser::parse;
pub use printer::{print, type_string, PrintMode};
