//! The lexer: source text to tokens with byte spans. Never fails: bad characters become
//! `Token::Invalid` for the parser to report where they stand.

use crate::span::Span;

#[derive(Clone, Debug, PartialEq)]
pub enum Tok {
    /// `%name` (the name without `%`).
    Value(String),
    /// A bare word: keywords, op names, dtypes, symbols, mesh axes. May contain dots.
    Ident(String),
    Int(i64),
    /// An integer literal too large for i64.
    BigInt,
    Float(f64),
    LParen,
    RParen,
    LBracket,
    RBracket,
    LBrace,
    RBrace,
    Comma,
    Colon,
    Equals,
    At,
    Bang,
    Plus,
    Minus,
    Star,
    Slash,
    Arrow,
    Newline,
    Invalid(char),
    Eof,
}

impl Tok {
    /// How a diagnostic names the token.
    pub fn describe(&self) -> String {
        match self {
            Tok::Value(n) => format!("`%{n}`"),
            Tok::Ident(n) => format!("`{n}`"),
            Tok::Int(i) => format!("`{i}`"),
            Tok::BigInt => "a number".into(),
            Tok::Float(x) => format!("`{x}`"),
            Tok::LParen => "`(`".into(),
            Tok::RParen => "`)`".into(),
            Tok::LBracket => "`[`".into(),
            Tok::RBracket => "`]`".into(),
            Tok::LBrace => "`{`".into(),
            Tok::RBrace => "`}`".into(),
            Tok::Comma => "`,`".into(),
            Tok::Colon => "`:`".into(),
            Tok::Equals => "`=`".into(),
            Tok::At => "`@`".into(),
            Tok::Bang => "`!`".into(),
            Tok::Plus => "`+`".into(),
            Tok::Minus => "`-`".into(),
            Tok::Star => "`*`".into(),
            Tok::Slash => "`/`".into(),
            Tok::Arrow => "`->`".into(),
            Tok::Newline => "the end of the line".into(),
            Tok::Invalid(c) => format!("`{}`", c.escape_default()),
            Tok::Eof => "the end of the file".into(),
        }
    }
}

#[derive(Clone, Debug, PartialEq)]
pub struct Token {
    pub tok: Tok,
    pub span: Span,
}

fn is_name_char(c: char) -> bool {
    c.is_ascii_alphanumeric() || c == '_' || c == '.'
}

/// A `#` comment: its text after the `#`, and whether it stands on a line of its own.
#[derive(Clone, Debug, PartialEq)]
pub struct Comment {
    pub span: Span,
    pub text: String,
    pub own_line: bool,
}

/// Splits `src` into tokens (the last one is `Eof`) and comments.
pub fn lex_with_comments(src: &str) -> (Vec<Token>, Vec<Comment>) {
    let bytes = src.as_bytes();
    let mut out = Vec::new();
    let mut comments = Vec::new();
    let mut i = 0;
    let push = |out: &mut Vec<Token>, tok: Tok, s: usize, e: usize| {
        out.push(Token {
            tok,
            span: Span::new(s, e),
        })
    };
    while i < bytes.len() {
        let c = bytes[i] as char;
        let start = i;
        match c {
            '\n' => {
                push(&mut out, Tok::Newline, i, i + 1);
                i += 1;
            }
            ' ' | '\t' | '\r' => i += 1,
            '#' => {
                while i < bytes.len() && bytes[i] != b'\n' {
                    i += 1;
                }
                let own_line = src[..start]
                    .rsplit('\n')
                    .next()
                    .is_none_or(|before| before.trim().is_empty());
                comments.push(Comment {
                    span: Span::new(start, i),
                    text: src[start + 1..i].trim_end().to_string(),
                    own_line,
                });
            }
            '%' => {
                i += 1;
                while i < bytes.len() && is_name_char(bytes[i] as char) {
                    i += 1;
                }
                push(
                    &mut out,
                    Tok::Value(src[start + 1..i].to_string()),
                    start,
                    i,
                );
            }
            '0'..='9' => {
                while i < bytes.len() && bytes[i].is_ascii_digit() {
                    i += 1;
                }
                let mut is_float = false;
                if i + 1 < bytes.len() && bytes[i] == b'.' && bytes[i + 1].is_ascii_digit() {
                    is_float = true;
                    i += 1;
                    while i < bytes.len() && bytes[i].is_ascii_digit() {
                        i += 1;
                    }
                }
                if i < bytes.len() && (bytes[i] == b'e' || bytes[i] == b'E') {
                    let mut j = i + 1;
                    if j < bytes.len() && (bytes[j] == b'+' || bytes[j] == b'-') {
                        j += 1;
                    }
                    if j < bytes.len() && bytes[j].is_ascii_digit() {
                        is_float = true;
                        i = j;
                        while i < bytes.len() && bytes[i].is_ascii_digit() {
                            i += 1;
                        }
                    }
                }
                let text = &src[start..i];
                let tok = if is_float {
                    text.parse::<f64>()
                        .map(Tok::Float)
                        .unwrap_or(Tok::Invalid('.'))
                } else {
                    text.parse::<i64>().map(Tok::Int).unwrap_or(Tok::BigInt)
                };
                push(&mut out, tok, start, i);
            }
            c if c.is_ascii_alphabetic() || c == '_' => {
                while i < bytes.len() && is_name_char(bytes[i] as char) {
                    i += 1;
                }
                push(&mut out, Tok::Ident(src[start..i].to_string()), start, i);
            }
            '-' if bytes.get(i + 1) == Some(&b'>') => {
                push(&mut out, Tok::Arrow, i, i + 2);
                i += 2;
            }
            _ => {
                let tok = match c {
                    '(' => Tok::LParen,
                    ')' => Tok::RParen,
                    '[' => Tok::LBracket,
                    ']' => Tok::RBracket,
                    '{' => Tok::LBrace,
                    '}' => Tok::RBrace,
                    ',' => Tok::Comma,
                    ':' => Tok::Colon,
                    '=' => Tok::Equals,
                    '@' => Tok::At,
                    '!' => Tok::Bang,
                    '+' => Tok::Plus,
                    '-' => Tok::Minus,
                    '*' => Tok::Star,
                    '/' => Tok::Slash,
                    _ => {
                        // A whole (possibly multi-byte) character, so spans stay on char boundaries.
                        let ch = src[i..].chars().next().unwrap_or('\u{fffd}');
                        i += ch.len_utf8();
                        push(&mut out, Tok::Invalid(ch), start, i);
                        continue;
                    }
                };
                push(&mut out, tok, i, i + 1);
                i += 1;
            }
        }
    }
    push(&mut out, Tok::Eof, bytes.len(), bytes.len());
    (out, comments)
}

/// Splits `src` into tokens; the last one is `Eof`.
#[cfg(test)]
pub fn lex(src: &str) -> Vec<Token> {
    lex_with_comments(src).0
}

#[cfg(test)]
mod tests {
    use super::*;

    fn toks(s: &str) -> Vec<Tok> {
        lex(s).into_iter().map(|t| t.tok).collect()
    }

    #[test]
    fn lexes_names_numbers_and_punctuation() {
        assert_eq!(
            toks("%h.0.w = f(1e-5, 0.1, 7) -> # c\n"),
            vec![
                Tok::Value("h.0.w".into()),
                Tok::Equals,
                Tok::Ident("f".into()),
                Tok::LParen,
                Tok::Float(1e-5),
                Tok::Comma,
                Tok::Float(0.1),
                Tok::Comma,
                Tok::Int(7),
                Tok::RParen,
                Tok::Arrow,
                Tok::Newline,
                Tok::Eof
            ]
        );
        assert_eq!(toks("99999999999999999999"), vec![Tok::BigInt, Tok::Eof]);
        assert_eq!(toks("é"), vec![Tok::Invalid('é'), Tok::Eof]);
        assert_eq!(toks("partial.max(tp)")[0], Tok::Ident("partial.max".into()));
    }
}
