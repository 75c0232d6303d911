//! Building an `Op` from its text name, attributes and operand types: defaults, negative dims,
//! and errors for unknown, missing or ill-typed attributes.

use crate::dim::Dim;
use crate::dtype::DType;
use crate::ops::{AttrValue, Op};
use crate::span::Span;
use crate::types::TensorType;

/// An attribute as written: `name = value`.
#[derive(Clone, Debug)]
pub struct Attr {
    pub name: String,
    pub name_span: Span,
    pub value: AttrValue,
    pub value_span: Span,
}

/// Why an op could not be built; the span is the offending attribute (or the op name).
#[derive(Clone, Debug)]
pub struct AttrError {
    pub message: String,
    pub span: Span,
    pub label: String,
    pub help: Option<String>,
}

/// What an op's constructor reads its attributes through: typed getters that record which
/// attributes the op takes (so that an unknown one is an error naming the valid ones) and
/// errors located at the attribute.
pub struct AttrReader<'a> {
    op: &'static str,
    attrs: &'a [Attr],
    op_span: Span,
    allowed: Vec<&'static str>,
}

impl<'a> AttrReader<'a> {
    /// The op's name as written.
    pub(crate) fn op(&self) -> &'static str {
        self.op
    }

    /// The error for a name the constructor does not know (a registry entry without its op).
    pub(crate) fn unknown(&self) -> AttrError {
        self.err(
            self.op_span,
            format!("internal: no op `{}`", self.op),
            "here",
            None,
        )
    }

    pub(crate) fn err(
        &self,
        span: Span,
        message: String,
        label: &str,
        help: Option<String>,
    ) -> AttrError {
        AttrError {
            message,
            span,
            label: label.into(),
            help,
        }
    }

    pub(crate) fn get(&mut self, name: &'static str) -> Option<&'a Attr> {
        self.allowed.push(name);
        self.attrs.iter().find(|a| a.name == name)
    }

    /// An attribute that `default_attrs` gives a default, so it is always present.
    pub(crate) fn defaulted(&mut self, name: &'static str) -> Result<&'a Attr, AttrError> {
        self.get(name).ok_or_else(|| {
            self.err(
                self.op_span,
                format!("internal: `{name}` of `{}` has no default", self.op),
                "here",
                None,
            )
        })
    }

    pub(crate) fn required(
        &mut self,
        name: &'static str,
        example: &str,
    ) -> Result<&'a Attr, AttrError> {
        self.get(name).ok_or_else(|| {
            self.err(
                self.op_span,
                format!("`{}` needs the attribute `{name}`", self.op),
                "attribute missing",
                Some(format!("for example `{}(…) {{{example}}}`", self.op)),
            )
        })
    }

    pub(crate) fn kind_err(&self, a: &Attr, want: &str) -> AttrError {
        self.err(
            a.value_span,
            format!("`{}` must be {want}, not `{}`", a.name, a.value),
            &format!("expected {want}"),
            None,
        )
    }

    pub(crate) fn int(&self, a: &Attr) -> Result<i64, AttrError> {
        match &a.value {
            AttrValue::Int(i) => Ok(*i),
            _ => Err(self.kind_err(a, "an integer")),
        }
    }

    pub(crate) fn float(&self, a: &Attr) -> Result<f64, AttrError> {
        match &a.value {
            AttrValue::Int(i) => Ok(*i as f64),
            AttrValue::Float(x) => Ok(*x),
            AttrValue::Ident(s) if s == "inf" => Ok(f64::INFINITY),
            AttrValue::Ident(s) if s == "nan" => Ok(f64::NAN),
            _ => Err(self.kind_err(a, "a number")),
        }
    }

    pub(crate) fn bool(&self, a: &Attr) -> Result<bool, AttrError> {
        match &a.value {
            AttrValue::Bool(b) => Ok(*b),
            _ => Err(self.kind_err(a, "`true` or `false`")),
        }
    }

    pub(crate) fn seed(&self, a: &Attr) -> Result<u64, AttrError> {
        let i = self.int(a)?;
        u64::try_from(i).map_err(|_| self.kind_err(a, "a non-negative integer"))
    }

    pub(crate) fn dim_value(&self, a: &Attr, v: &AttrValue) -> Result<Dim, AttrError> {
        match v {
            AttrValue::Int(i) => Ok(Dim::constant(*i)),
            AttrValue::Dim(d) => Ok(d.clone()),
            AttrValue::Ident(s) if s.chars().all(|c| c.is_ascii_alphanumeric() || c == '_') => {
                Ok(Dim::symbol(s))
            }
            _ => Err(self.kind_err(a, "a dim (a number or an expression over symbols)")),
        }
    }

    pub(crate) fn shape(&self, a: &Attr) -> Result<Vec<Dim>, AttrError> {
        match &a.value {
            AttrValue::List(items) => items.iter().map(|v| self.dim_value(a, v)).collect(),
            _ => Err(self.kind_err(a, "a list of dims like `[B, S, 768]`")),
        }
    }

    pub(crate) fn dtype(&self, a: &Attr) -> Result<DType, AttrError> {
        match &a.value {
            AttrValue::Ident(s) => DType::from_name(s).ok_or_else(|| {
                self.err(
                    a.value_span,
                    format!("unknown dtype `{s}`"),
                    "not a dtype",
                    Some("the dtypes are f32, bf16, f16, i64, bool".into()),
                )
            }),
            _ => Err(self.kind_err(a, "a dtype")),
        }
    }

    /// A dim index, possibly negative, normalized against `rank`.
    pub(crate) fn axis(&self, a: &Attr, v: &AttrValue, rank: usize) -> Result<usize, AttrError> {
        let i = match v {
            AttrValue::Int(i) => *i,
            _ => return Err(self.kind_err(a, "a dim index")),
        };
        let r = rank as i64;
        if i < -r || i >= r {
            return Err(self.err(
                a.value_span,
                format!("dim {i} is out of range for an operand of rank {rank}"),
                "no such dim",
                Some(format!(
                    "dims of a rank-{rank} tensor are 0..{r} (or -{r}..-1 from the end)"
                )),
            ));
        }
        Ok(if i < 0 { (i + r) as usize } else { i as usize })
    }

    pub(crate) fn axes(&self, a: &Attr, rank: usize) -> Result<Vec<usize>, AttrError> {
        match &a.value {
            AttrValue::List(items) => items.iter().map(|v| self.axis(a, v, rank)).collect(),
            AttrValue::Int(_) => Ok(vec![self.axis(a, &a.value, rank)?]),
            _ => Err(self.kind_err(a, "a list of dim indices like `[0, 2]`")),
        }
    }

    /// Rejects attributes the op does not take, naming the ones it does.
    fn finish(&self) -> Result<(), AttrError> {
        for a in self.attrs {
            if !self.allowed.contains(&a.name.as_str()) {
                let help = if self.allowed.is_empty() {
                    format!("`{}` takes no attributes", self.op)
                } else {
                    let names: Vec<String> =
                        self.allowed.iter().map(|n| format!("`{n}`")).collect();
                    format!("`{}` takes {}", self.op, names.join(", "))
                };
                return Err(self.err(
                    a.name_span,
                    format!("`{}` has no attribute `{}`", self.op, a.name),
                    "unknown attribute",
                    Some(help),
                ));
            }
        }
        for (i, a) in self.attrs.iter().enumerate() {
            if let Some(b) = self.attrs[..i].iter().find(|b| b.name == a.name) {
                let _ = b;
                return Err(self.err(
                    a.name_span,
                    format!("attribute `{}` is given twice", a.name),
                    "given again here",
                    None,
                ));
            }
        }
        Ok(())
    }
}

/// The op named `name`, or `None` when no op has that name.
pub fn build_op(
    name: &str,
    op_span: Span,
    attrs: &[Attr],
    operands: &[&TensorType],
) -> Option<Result<Op, AttrError>> {
    let spec = crate::ops::spec(name)?;
    // The text's attributes, then the defaults of those it leaves out (one table, the op's, for
    // the decoder and the printer).
    let mut merged: Vec<Attr> = attrs.to_vec();
    for (n, value) in (spec.defaults)(operands) {
        if !attrs.iter().any(|a| a.name == n) {
            merged.push(Attr {
                name: n.to_string(),
                name_span: op_span,
                value,
                value_span: op_span,
            });
        }
    }
    let mut r = AttrReader {
        op: spec.name,
        attrs: &merged,
        op_span,
        allowed: Vec::new(),
    };
    Some((spec.parse)(&mut r, operands).and_then(|op| {
        r.finish()?;
        Ok(op)
    }))
}

/// The attributes an op takes by default, as `Op::attrs` would write them: the decoder fills
/// these in when the text leaves them out, and the printer leaves out the ones that match.
pub fn default_attrs(op: &str, operands: &[&TensorType]) -> Vec<(&'static str, AttrValue)> {
    crate::ops::spec(op)
        .map(|s| (s.defaults)(operands))
        .unwrap_or_default()
}
