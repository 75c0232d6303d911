//! The parser: tokens to a `Graph`, collecting every error with its span. A statement with an
//! error poisons its value (so its uses report nothing more) and parsing resumes on the next
//! line; a graph is returned only when there are no errors.

use super::attrs::{build_op, Attr};
use super::lexer::{lex_with_comments, Comment, Tok, Token};
use crate::diag::{Diagnostic, SourceFile};
use crate::dim::Dim;
use crate::dtype::DType;
use crate::graph::{Graph, ValueId};
use crate::infer::MAX_ELEMENTS;
use crate::mesh::{Mesh, MeshAxis};
use crate::ops::Broadcast;
use crate::ops::{all_op_names, AttrValue};
use crate::span::Span;
use crate::types::{DimSharding, Factor, Partial, ReduceOp, Sharding, TensorType};

/// At most this many diagnostics are reported; past it the parser stops.
const MAX_DIAGNOSTICS: usize = 100;
/// Nesting limit for attribute lists.
const MAX_DEPTH: usize = 64;

/// A reported error; the diagnostic is already recorded.
struct Reported;

type PResult<T> = Result<T, Reported>;

enum Entry {
    Defined(ValueId),
    /// Its statement had an error: uses of it stay silent.
    Poisoned,
}

struct Parser<'s> {
    src: &'s str,
    toks: Vec<Token>,
    pos: usize,
    /// Inside brackets, newlines are not statement ends.
    bracket_depth: usize,
    diags: Vec<Diagnostic>,
    // Looked up, never iterated in an order that matters (hints take the closest by distance,
    // then by name).
    names: std::collections::HashMap<String, (Entry, Span)>,
    comments: Vec<Comment>,
    /// The function body's closing `}`.
    close_span: Span,
}

/// Parses and verifies a program. Returns every diagnostic when there is any error.
pub fn parse(file: &SourceFile) -> Result<Graph, Vec<Diagnostic>> {
    let (toks, comments) = lex_with_comments(&file.text);
    let mut p = Parser {
        src: &file.text,
        toks,
        comments,
        close_span: Span::DUMMY,
        pos: 0,
        bracket_depth: 0,
        diags: Vec::new(),
        names: std::collections::HashMap::new(),
    };
    let mut graph = p.file();
    if let Some(g) = graph.as_mut() {
        attach_comments(g, &p.comments, p.src, p.close_span);
    }
    match graph {
        Some(g) if p.diags.is_empty() => {
            let diags = crate::verify::verify(&g);
            if diags.is_empty() {
                Ok(g)
            } else {
                Err(diags)
            }
        }
        _ => {
            if p.diags.is_empty() {
                p.diags.push(Diagnostic::error(
                    "the program is incomplete",
                    Span::new(p.src.len(), p.src.len()),
                    "here",
                ));
            }
            p.diags.truncate(MAX_DIAGNOSTICS);
            Err(p.diags)
        }
    }
}

/// Gives each comment a place the printer writes it: above the statement it precedes, at the end
/// of the statement's line it trails, or in the header for comments before or inside the signature.
fn attach_comments(g: &mut Graph, comments: &[Comment], src: &str, close: Span) {
    let line = |offset: u32| {
        src.as_bytes()[..(offset as usize).min(src.len())]
            .iter()
            .filter(|&&b| b == b'\n')
            .count()
    };
    let statements: Vec<(Span, ValueId)> = g
        .values()
        .iter()
        .copied()
        .filter(|&v| {
            !matches!(
                g.op(v),
                crate::ops::Op::Param { .. }
                    | crate::ops::Op::Broadcast(Broadcast { implicit: true, .. })
            )
        })
        .map(|v| (g.node(v).span, v))
        .collect();
    let body_start = g.span.end;
    let mut c = crate::graph::Comments::default();
    for com in comments {
        let text = com.text.clone();
        if com.span.start < body_start {
            c.header.push(text);
        } else if !com.own_line {
            let l = line(com.span.start);
            if let Some(&(_, v)) = statements.iter().find(|(s, _)| line(s.end) == l) {
                c.trailing.insert(v, text);
            } else if line(g.return_span.end) == l && c.trailing_return.is_none() {
                c.trailing_return = Some(text);
            } else {
                c.before_close.push(text);
            }
        } else if let Some(&(_, v)) = statements.iter().find(|(s, _)| s.start > com.span.start) {
            c.before.entry(v).or_default().push(text);
        } else if g.return_span.start > com.span.start {
            c.before_return.push(text);
        } else {
            let _ = close;
            c.before_close.push(text);
        }
    }
    g.comments = c;
}

/// Edit distance counting a swap of neighbours as one edit (optimal string alignment), for
/// "did you mean" hints: `gleu` is one edit from `gelu`.
fn distance(a: &str, b: &str) -> usize {
    let a: Vec<char> = a.chars().collect();
    let b: Vec<char> = b.chars().collect();
    let mut d = vec![vec![0usize; b.len() + 1]; a.len() + 1];
    for (i, row) in d.iter_mut().enumerate() {
        row[0] = i;
    }
    for (j, cell) in d[0].iter_mut().enumerate() {
        *cell = j;
    }
    for i in 1..=a.len() {
        for j in 1..=b.len() {
            let cost = usize::from(a[i - 1] != b[j - 1]);
            let mut best = (d[i - 1][j] + 1)
                .min(d[i][j - 1] + 1)
                .min(d[i - 1][j - 1] + cost);
            if i > 1 && j > 1 && a[i - 1] == b[j - 2] && a[i - 2] == b[j - 1] {
                best = best.min(d[i - 2][j - 2] + 1);
            }
            d[i][j] = best;
        }
    }
    d[a.len()][b.len()]
}

fn closest<'a>(word: &str, candidates: impl Iterator<Item = &'a str>) -> Option<&'a str> {
    let len = word.chars().count();
    let limit = (len / 3).max(1);
    // Names whose lengths differ by more than the limit cannot be close: skipping them keeps a
    // hint cheap in a program of many thousands of values.
    candidates
        .filter(|c| c.len().abs_diff(len) <= limit)
        .map(|c| (distance(word, c), c))
        .filter(|(d, _)| *d <= limit)
        .min()
        .map(|(_, c)| c)
}

impl<'s> Parser<'s> {
    // ---- token access ----

    fn peek_tok(&self) -> &Token {
        let mut i = self.pos;
        while self.bracket_depth > 0 && self.toks[i].tok == Tok::Newline {
            i += 1;
        }
        &self.toks[i]
    }

    fn peek(&self) -> &Tok {
        &self.peek_tok().tok
    }

    fn span(&self) -> Span {
        self.peek_tok().span
    }

    fn bump(&mut self) -> Token {
        while self.bracket_depth > 0 && self.toks[self.pos].tok == Tok::Newline {
            self.pos += 1;
        }
        let t = self.toks[self.pos].clone();
        if t.tok != Tok::Eof {
            self.pos += 1;
        }
        t
    }

    fn prev_end(&self) -> Span {
        let i = self.pos.saturating_sub(1);
        let s = self.toks[i].span;
        Span {
            start: s.end,
            end: s.end,
        }
    }

    fn at(&self, t: &Tok) -> bool {
        self.peek() == t
    }

    fn eat(&mut self, t: &Tok) -> bool {
        if self.at(t) {
            self.bump();
            true
        } else {
            false
        }
    }

    fn error(&mut self, d: Diagnostic) -> Reported {
        if self.diags.len() < MAX_DIAGNOSTICS {
            self.diags.push(d);
        }
        Reported
    }

    fn expected(&mut self, what: &str) -> Reported {
        let t = self.peek_tok().clone();
        let d = Diagnostic::error(
            format!("expected {what}, found {}", t.tok.describe()),
            t.span,
            format!("expected {what}"),
        );
        let d = match t.tok {
            Tok::Invalid(c) if !c.is_ascii() || c.is_ascii_control() => d.with_help(
                "tpc programs are ASCII text: names, numbers and the punctuation in docs/ir.md",
            ),
            _ => d,
        };
        self.error(d)
    }

    fn expect(&mut self, t: Tok, what: &str) -> PResult<Span> {
        if self.at(&t) {
            Ok(self.bump().span)
        } else {
            Err(self.expected(what))
        }
    }

    fn ident(&mut self, what: &str) -> PResult<(String, Span)> {
        match self.peek().clone() {
            Tok::Ident(s) => Ok((s, self.bump().span)),
            _ => Err(self.expected(what)),
        }
    }

    fn skip_newlines(&mut self) {
        while self.toks[self.pos].tok == Tok::Newline {
            self.pos += 1;
        }
    }

    /// Skips to the start of the next line (error recovery).
    fn recover(&mut self) {
        self.bracket_depth = 0;
        while !matches!(self.toks[self.pos].tok, Tok::Newline | Tok::Eof) {
            self.pos += 1;
        }
    }

    fn open(&mut self, t: Tok, what: &str) -> PResult<Span> {
        let s = self.expect(t, what)?;
        self.bracket_depth += 1;
        Ok(s)
    }

    fn close(&mut self, t: Tok, what: &str) -> PResult<Span> {
        let s = self.expect(t, what);
        self.bracket_depth = self.bracket_depth.saturating_sub(1);
        s
    }

    // ---- file structure ----

    fn file(&mut self) -> Option<Graph> {
        self.skip_newlines();
        let mesh = if matches!(self.peek(), Tok::Ident(s) if s == "mesh") {
            match self.mesh() {
                Ok(m) => m,
                Err(Reported) => {
                    self.recover();
                    Mesh::default()
                }
            }
        } else {
            Mesh::default()
        };
        self.skip_newlines();
        if self.at(&Tok::Eof) {
            let end = Span::new(self.src.len(), self.src.len());
            self.error(
                Diagnostic::error("the file has no function", end, "expected `func @name(…) { … }`")
                    .with_help("a program is one function, like `func @f(%x: f32[4]) -> f32[4] { … }` with one op per line"),
            );
            return None;
        }
        let g = self.func(mesh);
        self.skip_newlines();
        if g.is_some() && !self.at(&Tok::Eof) {
            let s = self.span();
            self.error(
                Diagnostic::error(
                    "unexpected text after the function",
                    s,
                    "expected the end of the file",
                )
                .with_help("a file holds one function"),
            );
        }
        g
    }

    fn mesh(&mut self) -> PResult<Mesh> {
        let start = self.bump().span;
        let mut axes: Vec<MeshAxis> = Vec::new();
        loop {
            let (name, span) = self.ident("a mesh axis name")?;
            let mut size = None;
            let mut full = span;
            if self.eat(&Tok::Equals) {
                let (n, s) = self.int("the axis size")?;
                size = Some(n);
                full = span.to(s);
            }
            axes.push(MeshAxis {
                name,
                size,
                span: full,
            });
            if !self.eat(&Tok::Comma) {
                break;
            }
        }
        if !matches!(self.peek(), Tok::Newline | Tok::Eof) {
            return Err(self.expected("`,` or the end of the line"));
        }
        Ok(Mesh {
            span: start.to(self.prev_end()),
            axes,
        })
    }

    fn int(&mut self, what: &str) -> PResult<(i64, Span)> {
        let t = self.peek_tok().clone();
        match t.tok {
            Tok::Int(n) => {
                self.bump();
                Ok((n, t.span))
            }
            Tok::BigInt => {
                self.bump();
                Err(self.error(
                    Diagnostic::error("number too large", t.span, "does not fit in 64 bits")
                        .with_help("extents lie between 0 and 2^40"),
                ))
            }
            _ => Err(self.expected(what)),
        }
    }

    fn func(&mut self, mesh: Mesh) -> Option<Graph> {
        let header_start = self.span();
        match self.peek() {
            Tok::Ident(s) if s == "func" => {
                self.bump();
            }
            _ => {
                self.expected("`func`");
                return None;
            }
        }
        let name = (|| {
            self.expect(Tok::At, "`@` and the function's name")?;
            self.ident("the function's name")
        })();
        let Ok((name, _)) = name else { return None };
        let mut g = Graph::new(name, mesh);
        if self.header(&mut g).is_err() {
            return None;
        }
        g.span = header_start.to(self.prev_end());
        if self.body(&mut g).is_err() {
            return None;
        }
        Some(g)
    }

    fn header(&mut self, g: &mut Graph) -> PResult<()> {
        self.open(Tok::LParen, "`(` and the parameters")?;
        if !self.at(&Tok::RParen) {
            loop {
                let t = self.peek_tok().clone();
                let Tok::Value(name) = t.tok else {
                    return Err(self.expected("a parameter like `%x: f32[4]`"));
                };
                self.bump();
                self.expect(Tok::Colon, "`:` and the parameter's type")?;
                let ty = self.ty(g)?;
                let span = t.span.to(self.prev_end());
                if let Some((_, first)) = self.names.get(&name) {
                    let first = *first;
                    self.error(
                        Diagnostic::error(
                            format!("parameter `%{name}` is declared twice"),
                            t.span,
                            "declared again here",
                        )
                        .with_secondary(first, "first declared here"),
                    );
                } else {
                    let v = g.add_param(name.clone(), ty, span);
                    self.names.insert(name, (Entry::Defined(v), t.span));
                }
                if !self.eat(&Tok::Comma) {
                    break;
                }
            }
        }
        self.close(Tok::RParen, "`,` or `)` after the parameter")?;
        if self.eat(&Tok::Arrow) {
            if self.at(&Tok::LParen) {
                self.open(Tok::LParen, "`(`")?;
                loop {
                    let s = self.span();
                    let ty = self.ty(g)?;
                    g.result_types.push((ty, s.to(self.prev_end())));
                    if !self.eat(&Tok::Comma) {
                        break;
                    }
                }
                self.close(Tok::RParen, "`,` or `)` after the result type")?;
            } else {
                let s = self.span();
                let ty = self.ty(g)?;
                g.result_types.push((ty, s.to(self.prev_end())));
            }
        }
        Ok(())
    }

    fn body(&mut self, g: &mut Graph) -> PResult<()> {
        if !self.at(&Tok::LBrace) {
            return Err(self.expected("`{` and the function's body"));
        }
        let open = self.bump().span;
        let mut returned = false;
        loop {
            self.skip_newlines();
            if self.diags.len() >= MAX_DIAGNOSTICS {
                return Err(Reported);
            }
            match self.peek().clone() {
                Tok::RBrace => {
                    let close = self.bump().span;
                    self.close_span = close;
                    if !returned {
                        self.error(
                            Diagnostic::error(
                                format!("`@{}` has no `return`", g.name),
                                close,
                                "the body ends here",
                            )
                            .with_help("end the body with `return %value`"),
                        );
                    }
                    return Ok(());
                }
                Tok::Eof => {
                    let end = self.span();
                    return Err(self.error(
                        Diagnostic::error("the function's body is not closed", end, "expected `}`")
                            .with_secondary(open, "the body opens here"),
                    ));
                }
                Tok::Ident(s) if s == "return" => {
                    if returned {
                        let s = self.span();
                        self.error(Diagnostic::error(
                            "a second `return`",
                            s,
                            "the function already returned",
                        ));
                        self.recover();
                        continue;
                    }
                    returned = true;
                    if self.ret(g).is_err() {
                        self.recover();
                    }
                }
                Tok::Value(_) | Tok::Ident(_) if !matches!(self.peek(), Tok::Ident(s) if s != "_") =>
                {
                    if returned {
                        let s = self.span();
                        self.error(
                            Diagnostic::error("statement after `return`", s, "unreachable")
                                .with_help("`return` ends the function"),
                        );
                        self.recover();
                        continue;
                    }
                    if self.stmt(g).is_err() {
                        self.recover();
                    }
                }
                _ => {
                    self.expected("a statement like `%y = exp(%x)`, `return`, or `}`");
                    self.recover();
                }
            }
            if !matches!(
                self.toks[self.pos].tok,
                Tok::Newline | Tok::Eof | Tok::RBrace
            ) {
                self.expected("the end of the line");
                self.recover();
            }
        }
    }

    fn ret(&mut self, g: &mut Graph) -> PResult<()> {
        let start = self.bump().span;
        let mut outs = Vec::new();
        let mut spans = Vec::new();
        let mut poisoned = false;
        loop {
            let t = self.peek_tok().clone();
            let Tok::Value(name) = t.tok else {
                return Err(self.expected("a value to return, like `%y`"));
            };
            self.bump();
            match self.lookup(&name, t.span) {
                Ok(Some(v)) => {
                    outs.push(v);
                    spans.push(t.span);
                }
                Ok(None) => poisoned = true,
                Err(r) => return Err(r),
            }
            if !self.eat(&Tok::Comma) {
                break;
            }
        }
        g.return_span = start.to(self.prev_end());
        if poisoned {
            return Ok(());
        }
        if !g.result_types.is_empty() {
            if g.result_types.len() != outs.len() {
                let (_, decl) = g.result_types[0];
                let decl = g.result_types.iter().fold(decl, |s, (_, t)| s.to(*t));
                self.error(
                    Diagnostic::error(
                        format!(
                            "`@{}` declares {} result(s) but returns {}",
                            g.name,
                            g.result_types.len(),
                            outs.len()
                        ),
                        g.return_span,
                        "returned here",
                    )
                    .with_secondary(decl, "declared here"),
                );
            } else {
                for ((v, s), (decl, dspan)) in outs.iter().zip(&spans).zip(g.result_types.clone()) {
                    let ty = g.ty(*v).clone();
                    if !ty.same_value_type(&decl) {
                        self.error(
                            Diagnostic::error(
                                format!(
                                    "`%{}` is {}{}, but the function declares the result {}{}",
                                    g.name(*v),
                                    ty.dtype,
                                    ty.shape_string(),
                                    decl.dtype,
                                    decl.shape_string()
                                ),
                                *s,
                                "returned here",
                            )
                            .with_secondary(dspan, "declared here"),
                        );
                    }
                }
            }
        }
        g.set_outputs(outs);
        Ok(())
    }

    /// The value a name refers to: `Ok(None)` for a poisoned one (stay silent).
    fn lookup(&mut self, name: &str, span: Span) -> PResult<Option<ValueId>> {
        match self.names.get(name) {
            Some((Entry::Defined(v), _)) => Ok(Some(*v)),
            Some((Entry::Poisoned, _)) => Ok(None),
            None => {
                if let Some(later) = self.later_definition(name) {
                    let d = Diagnostic::error(
                        format!("`%{name}` is used before it is defined"),
                        span,
                        "used here",
                    )
                    .with_secondary(later, "defined later here")
                    .with_help("statements run in order: move the definition above its first use");
                    return Err(self.error(d));
                }
                let mut d = Diagnostic::error(
                    format!("unknown value `%{name}`"),
                    span,
                    "not defined before this use",
                );
                if let Some(c) = closest(name, self.names.keys().map(String::as_str)) {
                    d = d.with_help(format!("did you mean `%{c}`?"));
                } else {
                    d = d.with_help("values are defined by parameters or by earlier statements");
                }
                Err(self.error(d))
            }
        }
    }

    /// The span of a statement further on that defines `%name` (`%name = …`), if any.
    fn later_definition(&self, name: &str) -> Option<Span> {
        self.toks
            .get(self.pos..)?
            .windows(2)
            .find(|w| matches!(&w[0].tok, Tok::Value(n) if n == name) && w[1].tok == Tok::Equals)
            .map(|w| w[0].span)
    }

    fn stmt(&mut self, g: &mut Graph) -> PResult<()> {
        // The names the statement defines: `%y`, or `%a, _, %c` for an op with several results.
        let mut names: Vec<Option<(String, Span)>> = Vec::new();
        loop {
            let t = self.bump();
            match t.tok {
                Tok::Value(name) => names.push(Some((name, t.span))),
                Tok::Ident(s) if s == "_" => names.push(None),
                _ => return Err(self.expected("a value name (or `_` for an unused result)")),
            }
            if !self.eat(&Tok::Comma) {
                break;
            }
        }
        // From here on an error poisons the names, so their uses stay silent.
        let result = self.stmt_rest(g, &names);
        for (k, (name, name_span)) in names
            .iter()
            .enumerate()
            .filter_map(|(k, n)| n.clone().map(|n| (k, n)))
        {
            let entry = match &result {
                Ok(vs) => match vs.get(k).copied().flatten() {
                    Some(v) => Entry::Defined(v),
                    None => Entry::Poisoned,
                },
                Err(Reported) => Entry::Poisoned,
            };
            if let Some((_, first)) = self.names.get(&name) {
                let first = *first;
                self.error(
                    Diagnostic::error(
                        format!("`%{name}` is defined twice"),
                        name_span,
                        "defined again here",
                    )
                    .with_secondary(first, "first defined here")
                    .with_help("every value needs its own name (SSA)"),
                );
            } else {
                self.names.insert(name, (entry, name_span));
            }
        }
        result.map(|_| ())
    }

    /// The declared types after `:`: one type, or `(t, …)` with one per named result.
    fn declared_types(&mut self, g: &Graph, named: usize) -> PResult<Vec<(TensorType, Span)>> {
        if named == 1 && !self.at(&Tok::LParen) {
            let s = self.span();
            return Ok(vec![(self.ty(g)?, s.to(self.prev_end()))]);
        }
        self.open(Tok::LParen, "`(` and a type per named result")?;
        let mut out = Vec::new();
        loop {
            let s = self.span();
            out.push((self.ty(g)?, s.to(self.prev_end())));
            if !self.eat(&Tok::Comma) {
                break;
            }
        }
        self.close(Tok::RParen, "`,` or `)` after the type")?;
        if out.len() != named {
            let s = out[0].1.to(out[out.len() - 1].1);
            return Err(self.error(Diagnostic::error(
                format!(
                    "{} types are declared for {named} named result{}",
                    out.len(),
                    if named == 1 { "" } else { "s" }
                ),
                s,
                "one type per named result",
            )));
        }
        Ok(out)
    }

    /// The rest of a statement after its names; the value of each name (`None` where the
    /// statement failed quietly because an operand was poisoned).
    fn stmt_rest(
        &mut self,
        g: &mut Graph,
        names: &[Option<(String, Span)>],
    ) -> PResult<Vec<Option<ValueId>>> {
        let first_span = names
            .iter()
            .flatten()
            .map(|(_, s)| *s)
            .next()
            .unwrap_or_else(|| self.prev_end());
        let named = names.iter().flatten().count();
        if named == 0 {
            return Err(self.error(
                Diagnostic::error("a statement that names no result", first_span, "all `_`")
                    .with_help("name at least one result: `%a, _ = split(…)`"),
            ));
        }
        self.expect(Tok::Equals, "`=`")?;
        let (op_name, op_span) = self.ident("an op name")?;
        self.open(Tok::LParen, "`(` and the operands")?;
        let mut operands: Vec<Option<ValueId>> = Vec::new();
        let mut operand_spans = Vec::new();
        let mut lookup_failed = false;
        if !self.at(&Tok::RParen) {
            loop {
                let t = self.peek_tok().clone();
                let Tok::Value(o) = t.tok else {
                    return Err(self.expected("an operand like `%x`"));
                };
                self.bump();
                match self.lookup(&o, t.span) {
                    Ok(v) => operands.push(v),
                    Err(Reported) => lookup_failed = true,
                }
                operand_spans.push(t.span);
                if !self.eat(&Tok::Comma) {
                    break;
                }
            }
        }
        self.close(Tok::RParen, "`,` or `)` after the operand")?;
        let attrs = if self.at(&Tok::LBrace) {
            self.attrs()?
        } else {
            Vec::new()
        };
        let declared = if self.eat(&Tok::Colon) {
            Some(self.declared_types(g, named)?)
        } else {
            None
        };
        let span = first_span.to(self.prev_end());
        if lookup_failed {
            return Err(Reported);
        }
        let Some(operands) = operands.into_iter().collect::<Option<Vec<ValueId>>>() else {
            return Ok(vec![None; names.len()]);
        };
        let tys: Vec<TensorType> = operands.iter().map(|&o| g.ty(o).clone()).collect();
        let ty_refs: Vec<&TensorType> = tys.iter().collect();
        let op = match build_op(&op_name, op_span, &attrs, &ty_refs) {
            None => {
                let mut d =
                    Diagnostic::error(format!("unknown op `{op_name}`"), op_span, "no such op");
                d = match closest(&op_name, all_op_names().into_iter()) {
                    Some(c) => d.with_help(format!("did you mean `{c}`?")),
                    None => d.with_help("docs/ir.md lists every op"),
                };
                return Err(self.error(d));
            }
            Some(Err(e)) => {
                let mut d = Diagnostic::error(e.message, e.span, e.label);
                if let Some(h) = e.help {
                    d = d.with_help(h);
                }
                return Err(self.error(d));
            }
            Some(Ok(op)) => op,
        };
        let value_names: Vec<Option<String>> = names
            .iter()
            .map(|n| n.as_ref().map(|(n, _)| n.clone()))
            .collect();
        let values = match g.add_op_results(&value_names, op, &operands, span) {
            Ok(v) => v,
            Err(e) => {
                let (at, label) = match e.operand.and_then(|i| operand_spans.get(i)) {
                    Some(s) => (*s, "this operand".to_string()),
                    None => (op_span, format!("in this `{op_name}`")),
                };
                let mut d = Diagnostic::error(e.message, at, label);
                if let Some(h) = e.hint {
                    d = d.with_help(h);
                }
                return Err(self.error(d));
            }
        };
        let named_values = names
            .iter()
            .zip(&values)
            .filter_map(|(n, v)| Some((n.as_ref()?.0.clone(), (*v)?)));
        for ((name, v), (decl, dspan)) in named_values.zip(declared.into_iter().flatten()) {
            let got = g.ty(v).clone();
            if !got.same_value_type(&decl) {
                return Err(self.error(
                    Diagnostic::error(
                        format!(
                            "`%{name}` is declared {}{} but `{op_name}` gives {}{}",
                            decl.dtype,
                            decl.shape_string(),
                            got.dtype,
                            got.shape_string()
                        ),
                        dspan,
                        "declared type",
                    )
                    .with_help(format!(
                        "write `: {}{}` (a sharding may be added to it)",
                        got.dtype,
                        got.shape_string()
                    )),
                ));
            }
            let node = g.node_mut(v);
            node.ty.sharding = decl.sharding;
            node.explicit_type = true;
        }
        Ok(values)
    }

    // ---- attributes ----

    fn attrs(&mut self) -> PResult<Vec<Attr>> {
        self.open(Tok::LBrace, "`{`")?;
        let mut out = Vec::new();
        if !self.at(&Tok::RBrace) {
            loop {
                let (name, name_span) = self.ident("an attribute name")?;
                self.expect(Tok::Equals, "`=` and the attribute's value")?;
                let start = self.span();
                let value = self.attr_value(0)?;
                out.push(Attr {
                    name,
                    name_span,
                    value,
                    value_span: start.to(self.prev_end()),
                });
                if !self.eat(&Tok::Comma) {
                    break;
                }
            }
        }
        self.close(Tok::RBrace, "`,` or `}` after the attribute")?;
        Ok(out)
    }

    fn attr_value(&mut self, depth: usize) -> PResult<AttrValue> {
        if depth > MAX_DEPTH {
            let s = self.span();
            return Err(self.error(Diagnostic::error(
                "attribute lists nest too deeply",
                s,
                "here",
            )));
        }
        match self.peek().clone() {
            Tok::LBracket => {
                self.open(Tok::LBracket, "`[`")?;
                let mut items = Vec::new();
                if !self.at(&Tok::RBracket) {
                    loop {
                        items.push(self.attr_value(depth + 1)?);
                        if !self.eat(&Tok::Comma) {
                            break;
                        }
                    }
                }
                self.close(Tok::RBracket, "`,` or `]` in the list")?;
                Ok(AttrValue::List(items))
            }
            Tok::Float(x) => {
                self.bump();
                Ok(AttrValue::Float(x))
            }
            Tok::Minus
                if matches!(
                    self.toks.get(self.pos + 1).map(|t| &t.tok),
                    Some(Tok::Float(_)) | Some(Tok::Ident(_))
                ) =>
            {
                self.bump();
                match self.bump().tok {
                    Tok::Float(x) => Ok(AttrValue::Float(-x)),
                    Tok::Ident(s) if s == "inf" => Ok(AttrValue::Float(f64::NEG_INFINITY)),
                    _ => Err(self.error(Diagnostic::error(
                        "expected a number after `-`",
                        self.prev_end(),
                        "here",
                    ))),
                }
            }
            Tok::Ident(s) if s == "true" || s == "false" => {
                self.bump();
                Ok(AttrValue::Bool(s == "true"))
            }
            Tok::Ident(s)
                if !matches!(
                    self.toks.get(self.pos + 1).map(|t| &t.tok),
                    Some(Tok::Star | Tok::Slash | Tok::Plus | Tok::Minus)
                ) =>
            {
                self.bump();
                Ok(AttrValue::Ident(s))
            }
            Tok::Int(_) | Tok::BigInt | Tok::Ident(_) | Tok::Minus => {
                let d = self.dim_expr()?;
                Ok(match d.as_const() {
                    Some(n) => AttrValue::Int(n),
                    None => AttrValue::Dim(d),
                })
            }
            _ => Err(self.expected(
                "an attribute value (a number, `true`/`false`, a name, a dim, or a list)",
            )),
        }
    }

    // ---- types ----

    fn ty(&mut self, g: &Graph) -> PResult<TensorType> {
        let (dname, dspan) = self.ident("a dtype (f32, bf16, f16, i64, bool)")?;
        let Some(dtype) = DType::from_name(&dname) else {
            let mut d = Diagnostic::error(format!("unknown dtype `{dname}`"), dspan, "not a dtype");
            let names = DType::ALL.map(|d| d.name());
            d = match closest(&dname, names.into_iter()) {
                Some(c) => d.with_help(format!(
                    "did you mean `{c}`? The dtypes are f32, bf16, f16, i64, bool"
                )),
                None => d.with_help("the dtypes are f32, bf16, f16, i64, bool"),
            };
            return Err(self.error(d));
        };
        self.open(Tok::LBracket, "`[` and the shape")?;
        let mut shape = Vec::new();
        let mut dims = Vec::new();
        if !self.at(&Tok::RBracket) {
            loop {
                let (extent, ds) = self.dim_entry()?;
                shape.push(extent);
                dims.push(ds);
                if !self.eat(&Tok::Comma) {
                    break;
                }
            }
        }
        self.close(Tok::RBracket, "`,` or `]` in the shape")?;
        let mut partial = Vec::new();
        while let Tok::Ident(word) = self.peek().clone() {
            let op = match word.as_str() {
                "partial" | "partial.sum" => ReduceOp::Sum,
                "partial.max" => ReduceOp::Max,
                "partial.min" => ReduceOp::Min,
                _ => break,
            };
            self.bump();
            self.open(Tok::LParen, "`(` and the mesh axes")?;
            loop {
                let (axis, _) = self.ident("a mesh axis")?;
                partial.push(Partial { axis, op });
                if !self.eat(&Tok::Comma) {
                    break;
                }
            }
            self.close(Tok::RParen, "`,` or `)` after the axis")?;
        }
        let _ = g;
        Ok(TensorType {
            dtype,
            shape,
            sharding: Sharding { dims, partial },
        })
    }

    /// One entry of a shape: `768`, `3072@tp`, `768!`, `(3, 16@tp, 48)`.
    fn dim_entry(&mut self) -> PResult<(Dim, DimSharding)> {
        let start = self.span();
        let mut ds = DimSharding::default();
        let extent = if self.at(&Tok::LParen) {
            self.open(Tok::LParen, "`(`")?;
            let mut product = Dim::constant(1);
            loop {
                let (f, _) = self.factor()?;
                product = product.mul(&f.extent).map_err(|e| {
                    let s = start.to(self.prev_end());
                    self.error(Diagnostic::error(format!("factors: {e}"), s, "here"))
                })?;
                ds.factors.push(f);
                if !self.eat(&Tok::Comma) {
                    break;
                }
            }
            self.close(Tok::RParen, "`,` or `)` after the factor")?;
            product
        } else {
            let (f, _) = self.factor()?;
            let e = f.extent.clone();
            if !f.axes.is_empty() {
                ds.factors.push(f);
            }
            e
        };
        if self.eat(&Tok::Bang) {
            ds.closed = true;
        }
        let span = start.to(self.prev_end());
        if let Some(n) = extent.as_const() {
            if !(0..=MAX_ELEMENTS).contains(&n) {
                return Err(self.error(
                    Diagnostic::error(
                        format!("extent {n} is out of range"),
                        span,
                        "extent out of range",
                    )
                    .with_help("extents lie between 0 and 2^40 (1099511627776)"),
                ));
            }
        }
        Ok((extent, ds))
    }

    fn factor(&mut self) -> PResult<(Factor, Span)> {
        let start = self.span();
        let extent = self.dim_expr()?;
        let mut axes = Vec::new();
        while self.eat(&Tok::At) {
            let (a, _) = self.ident("a mesh axis after `@`")?;
            axes.push(a);
        }
        Ok((Factor { extent, axes }, start.to(self.prev_end())))
    }

    fn dim_expr(&mut self) -> PResult<Dim> {
        let start = self.span();
        let mut acc = self.dim_term()?;
        loop {
            let neg = match self.peek() {
                Tok::Plus => false,
                Tok::Minus => true,
                _ => return Ok(acc),
            };
            self.bump();
            let rhs = self.dim_term()?;
            let r = if neg { acc.sub(&rhs) } else { acc.add(&rhs) };
            acc = r.map_err(|e| {
                let s = start.to(self.prev_end());
                self.error(Diagnostic::error(format!("bad dim: {e}"), s, "here"))
            })?;
        }
    }

    fn dim_term(&mut self) -> PResult<Dim> {
        let start = self.span();
        let mut acc = self.dim_atom()?;
        loop {
            let div = match self.peek() {
                Tok::Star => false,
                Tok::Slash => true,
                _ => return Ok(acc),
            };
            self.bump();
            let rhs = self.dim_atom()?;
            let r = if div { acc.div(&rhs) } else { acc.mul(&rhs) };
            acc = r.map_err(|e| {
                let s = start.to(self.prev_end());
                self.error(Diagnostic::error(format!("bad dim: {e}"), s, "here"))
            })?;
        }
    }

    fn dim_atom(&mut self) -> PResult<Dim> {
        let t = self.peek_tok().clone();
        match t.tok {
            Tok::Int(n) => {
                self.bump();
                Ok(Dim::constant(n))
            }
            Tok::Minus => {
                // Signs are counted in a loop, not by recursion, so `- - - … 1` cannot overflow
                // the stack however long it is.
                let mut negative = false;
                while self.at(&Tok::Minus) {
                    self.bump();
                    negative = !negative;
                }
                let atom = self.dim_atom()?;
                Ok(if negative { atom.neg() } else { atom })
            }
            Tok::BigInt => {
                self.bump();
                Err(self.error(
                    Diagnostic::error("number too large", t.span, "does not fit in 64 bits")
                        .with_help("extents lie between 0 and 2^40 (1099511627776)"),
                ))
            }
            Tok::Ident(s) if s.chars().all(|c| c.is_ascii_alphanumeric() || c == '_') => {
                self.bump();
                Ok(Dim::symbol(&s))
            }
            _ => Err(self.expected("a dim (a number or a symbol like `B`)")),
        }
    }
}
