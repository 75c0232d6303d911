//! The [`Pass`] trait, the IR [`Phase`]s a pass moves a program through, and pass options.
//!
//! A pass declares its name, what it does, the phase it needs the graph in, the phase it leaves
//! the graph in, and its options (name, type, default, help). A pipeline string gives options
//! as MLIR does, in braces after the pass, separated by spaces (or commas):
//! `propagate-sharding{cost=bytes},reorder-sharded-axis{all-to-all=false}`.

use std::collections::BTreeMap;
use std::fmt;
use std::str::FromStr;

use tpc_ir::Graph;

use crate::lower_to_local::LocalProgram;
use crate::{Error, PassContext, Result};

/// The phases of a program, in the order the passes take it through them. Each has its own
/// invariants, which [`crate::verify_phase`] checks (docs/passes.md, "Phases").
#[derive(Clone, Copy, Debug, PartialEq, Eq, PartialOrd, Ord, Hash)]
pub enum Phase {
    /// The user's program: shardings are annotations, possibly incomplete (a program may write
    /// collectives: layout changes it asks for, which the passes keep).
    Global,
    /// Every value has its layout (after `propagate-sharding`): propagation would add nothing.
    Sharded,
    /// Every op other than a collective computes its result locally from its operands'
    /// layouts (after `insert-resharding`).
    Resharded,
    /// Lowered (after `lower-to-local`): every rank's pieces check against every op.
    Local,
}

impl Phase {
    /// Every phase, in order.
    pub const ALL: [Phase; 4] = [
        Phase::Global,
        Phase::Sharded,
        Phase::Resharded,
        Phase::Local,
    ];

    pub fn name(self) -> &'static str {
        match self {
            Phase::Global => "global",
            Phase::Sharded => "sharded",
            Phase::Resharded => "resharded",
            Phase::Local => "local",
        }
    }
}

impl fmt::Display for Phase {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        f.write_str(self.name())
    }
}

impl FromStr for Phase {
    type Err = Error;

    /// A phase by name (`resharded`); an unknown name is an error listing the phases.
    fn from_str(s: &str) -> Result<Phase> {
        Phase::ALL
            .into_iter()
            .find(|p| p.name() == s.trim())
            .ok_or_else(|| Error::UnknownPhase {
                name: s.trim().to_string(),
                valid: Phase::ALL.map(Phase::name).join(", "),
            })
    }
}

/// The type of a pass option.
#[derive(Clone, Copy, Debug, PartialEq, Eq)]
pub enum OptionKind {
    /// `true` or `false`; written alone (`{all-to-all}`), it is `true`.
    Bool,
    /// A non-negative whole number.
    Count,
    /// One of the names listed.
    Choice(&'static [&'static str]),
}

impl OptionKind {
    /// What a value of this kind looks like, for errors and help.
    pub fn expected(self) -> String {
        match self {
            OptionKind::Bool => "true or false".into(),
            OptionKind::Count => "a non-negative whole number".into(),
            OptionKind::Choice(names) => format!("one of {}", names.join(", ")),
        }
    }

    fn parse(self, text: &str) -> Option<OptionValue> {
        match self {
            OptionKind::Bool => match text {
                "true" => Some(OptionValue::Bool(true)),
                "false" => Some(OptionValue::Bool(false)),
                _ => None,
            },
            OptionKind::Count => text.parse().ok().map(OptionValue::Count),
            OptionKind::Choice(names) => names
                .iter()
                .find(|n| **n == text)
                .map(|n| OptionValue::Choice(n)),
        }
    }
}

/// One option a pass declares.
#[derive(Clone, Copy, Debug, PartialEq, Eq)]
pub struct OptionSpec {
    /// kebab-case, as the pipeline writes it.
    pub name: &'static str,
    pub kind: OptionKind,
    /// The value when the pipeline does not give one, as a pipeline would write it.
    pub default: &'static str,
    pub help: &'static str,
}

impl fmt::Display for OptionSpec {
    /// `cost=bytes (one of bytes): help`.
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        write!(
            f,
            "{}={} ({}): {}",
            self.name,
            self.default,
            self.kind.expected(),
            self.help
        )
    }
}

/// A parsed option value.
#[derive(Clone, Debug, PartialEq, Eq)]
pub enum OptionValue {
    Bool(bool),
    Count(usize),
    Choice(&'static str),
}

impl fmt::Display for OptionValue {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        match self {
            OptionValue::Bool(b) => write!(f, "{b}"),
            OptionValue::Count(n) => write!(f, "{n}"),
            OptionValue::Choice(c) => f.write_str(c),
        }
    }
}

/// A pass's options as the pipeline set them: every declared option, given or default.
#[derive(Clone, Debug, PartialEq, Eq)]
pub struct Options {
    pass: &'static str,
    values: BTreeMap<&'static str, OptionValue>,
}

impl Options {
    /// The options of `pass` from `given` (name and value as written, in order), checked
    /// against the pass's declarations: an unknown option, a repeated one or a bad value is an
    /// error naming the valid ones.
    pub fn parse(pass: &dyn Pass, given: &[(String, Option<String>)]) -> Result<Options> {
        let specs = pass.options();
        let mut values = BTreeMap::new();
        for spec in specs {
            let value = spec
                .kind
                .parse(spec.default)
                .ok_or_else(|| Error::BadOptionValue {
                    pass: pass.name().to_string(),
                    option: spec.name.to_string(),
                    value: spec.default.to_string(),
                    expected: spec.kind.expected(),
                })?;
            values.insert(spec.name, value);
        }
        let mut seen: Vec<&str> = Vec::new();
        for (name, text) in given {
            let spec =
                specs
                    .iter()
                    .find(|s| s.name == name)
                    .ok_or_else(|| Error::UnknownOption {
                        pass: pass.name().to_string(),
                        option: name.clone(),
                        valid: describe_options(specs),
                    })?;
            if seen.contains(&spec.name) {
                return Err(Error::Pipeline(format!(
                    "`{}` sets option `{name}` twice",
                    pass.name()
                )));
            }
            seen.push(spec.name);
            let value = match (text, spec.kind) {
                (None, OptionKind::Bool) => Some(OptionValue::Bool(true)),
                (None, _) => None,
                (Some(t), kind) => kind.parse(t),
            };
            let value = value.ok_or_else(|| Error::BadOptionValue {
                pass: pass.name().to_string(),
                option: name.clone(),
                value: text.clone().unwrap_or_default(),
                expected: spec.kind.expected(),
            })?;
            values.insert(spec.name, value);
        }
        Ok(Options {
            pass: pass.name(),
            values,
        })
    }

    fn get(&self, name: &str) -> Result<&OptionValue> {
        self.values.get(name).ok_or_else(|| Error::UnknownOption {
            pass: self.pass.to_string(),
            option: name.to_string(),
            valid: self.values.keys().copied().collect::<Vec<_>>().join(", "),
        })
    }

    fn mismatch(&self, name: &str, v: &OptionValue) -> Error {
        Error::BadOptionValue {
            pass: self.pass.to_string(),
            option: name.to_string(),
            value: v.to_string(),
            expected: "a value of the option's declared type".into(),
        }
    }

    /// The value of the bool option `name`.
    pub fn bool(&self, name: &str) -> Result<bool> {
        match self.get(name)? {
            OptionValue::Bool(b) => Ok(*b),
            v => Err(self.mismatch(name, v)),
        }
    }

    /// The value of the count option `name`.
    pub fn count(&self, name: &str) -> Result<usize> {
        match self.get(name)? {
            OptionValue::Count(n) => Ok(*n),
            v => Err(self.mismatch(name, v)),
        }
    }

    /// The value of the choice option `name`.
    pub fn choice(&self, name: &str) -> Result<&'static str> {
        match self.get(name)? {
            OptionValue::Choice(c) => Ok(c),
            v => Err(self.mismatch(name, v)),
        }
    }
}

/// The options of a pass, for an error: each with its default, type and help; or that it has
/// none.
pub(crate) fn describe_options(specs: &[OptionSpec]) -> String {
    if specs.is_empty() {
        return "it takes no options".into();
    }
    let list: Vec<String> = specs.iter().map(|s| s.to_string()).collect();
    format!("its options are: {}", list.join("; "))
}

/// What a pass run gives besides the rewritten graph.
#[derive(Clone, Debug, Default)]
pub struct Outcome {
    /// Whether the pass changed the graph.
    pub changed: bool,
    /// The program as one rank runs it, from `lower-to-local`.
    pub local: Option<LocalProgram>,
    /// What the pass did that a person may not expect (located warnings).
    pub warnings: Vec<tpc_ir::Diagnostic>,
}

impl Outcome {
    pub fn changed(changed: bool) -> Outcome {
        Outcome {
            changed,
            local: None,
            warnings: Vec::new(),
        }
    }
}

/// A pass: a named rewrite of a graph from one phase to another, with typed options. The
/// registry ([`crate::registry`]) holds one of each with default options; the pipeline parser
/// gives each its options through [`Pass::configure`].
pub trait Pass: fmt::Debug + Send + Sync {
    /// The kebab-case name pipelines use.
    fn name(&self) -> &'static str;
    /// One line on what it does.
    fn description(&self) -> &'static str;
    /// The earliest phase it can run at: running it on a graph in an earlier phase is an error.
    fn requires(&self) -> Phase;
    /// The phase it leaves the graph in; `None` keeps the phase the graph was in.
    fn produces(&self) -> Option<Phase>;
    /// Its options, each with its type, default and help.
    fn options(&self) -> &'static [OptionSpec] {
        &[]
    }
    /// Takes its options (every declared one, given or default).
    fn configure(&mut self, options: &Options) -> Result<()> {
        let _ = options;
        Ok(())
    }
    /// Runs on `g`, in a phase at or after [`Pass::requires`].
    fn run(&self, g: &mut Graph, cx: &PassContext) -> Result<Outcome>;
}
