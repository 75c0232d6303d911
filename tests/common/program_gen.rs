//! The random-program generator of the property tests: well-formed, well-typed tpc programs
//! (a mesh of none, one or two axes; three parameters of random dtypes and shapes, some dims
//! split, closed or fused, some parameters partial; then up to eleven ops on earlier values), as
//! a proptest strategy of their text. `tests/roundtrip.rs` runs them through the parser, the
//! passes, the CPU ranks, the host programs and the emulated CUDA C.

use proptest::prelude::*;

/// One parameter's text and its shape, as dim expressions.
#[derive(Clone, Debug)]
struct Param {
    text: String,
    shape: Vec<String>,
}

fn dim() -> impl Strategy<Value = String> {
    prop_oneof![
        Just("2".to_string()),
        Just("4".to_string()),
        Just("8".to_string()),
        Just("B".to_string()),
        Just("S".to_string()),
        Just("S*2".to_string()),
        Just("3*E".to_string()),
    ]
}

/// A dim entry with an optional sharding on the axes `axes`.
fn dim_entry(d: String, axes: Vec<&'static str>) -> impl Strategy<Value = String> {
    let n = axes.len();
    (0..4usize, 0..n.max(1), any::<bool>()).prop_map(move |(kind, axis, closed)| {
        let bang = if closed { "!" } else { "" };
        match kind {
            1 if n > 0 => format!("{d}@{}{bang}", axes[axis]),
            2 if n > 0 && d == "8" => format!("(2, 4@{}){bang}", axes[axis]),
            3 => format!("{d}{bang}"),
            _ => d.clone(),
        }
    })
}

fn param(index: usize, axes: Vec<&'static str>) -> impl Strategy<Value = Param> {
    let dtypes = prop_oneof![Just("f32"), Just("bf16"), Just("f16")];
    (dtypes, prop::collection::vec(dim(), 1..4), any::<bool>()).prop_flat_map(
        move |(dt, shape, dotted)| {
            let entries: Vec<_> = shape
                .iter()
                .map(|d| dim_entry(d.clone(), axes.clone()))
                .collect();
            let name = if dotted {
                format!("h.{index}.w")
            } else {
                format!("p{index}")
            };
            let shape2 = shape.clone();
            let partial_axes = axes.clone();
            (entries, any::<bool>()).prop_map(move |(entries, partial)| {
                // A dim cannot use an axis twice: keep the first use of each axis.
                let mut used = Vec::new();
                let entries: Vec<String> = entries
                    .into_iter()
                    .zip(&shape2)
                    .map(|(e, d)| {
                        match partial_axes.iter().find(|a| e.contains(&format!("@{a}"))) {
                            Some(a) if used.contains(a) => d.clone(),
                            Some(a) => {
                                used.push(*a);
                                e
                            }
                            None => e,
                        }
                    })
                    .collect();
                let free = partial_axes.iter().find(|a| !used.contains(a));
                let partial = match free {
                    Some(a) if partial => format!(" partial({a})"),
                    _ => String::new(),
                };
                Param {
                    text: format!("%{name}: {dt}[{}]{partial}", entries.join(", ")),
                    shape: shape2.clone(),
                }
            })
        },
    )
}

/// The name of a value: plain or dotted like a checkpoint's.
fn vname(i: usize) -> String {
    if i.is_multiple_of(3) {
        format!("v{i}.out")
    } else {
        format!("v{i}")
    }
}

/// A random program: a mesh, parameters, then ops on earlier values, each kept well-typed.
pub fn program() -> impl Strategy<Value = String> {
    let meshes = prop_oneof![
        Just((String::new(), vec![])),
        Just(("mesh tp\n".to_string(), vec!["tp"])),
        Just(("mesh dp = 2, tp\n".to_string(), vec!["dp", "tp"])),
    ];
    meshes
        .prop_flat_map(|(mesh, axes)| {
            let params = (0..3usize)
                .map(|i| param(i, axes.clone()))
                .collect::<Vec<_>>();
            let ops = prop::collection::vec((0..9usize, any::<usize>(), any::<bool>()), 1..12);
            (Just(mesh), params, ops)
        })
        .prop_map(|(mesh, params, ops)| {
            let mut values: Vec<(String, Vec<String>, bool)> = params
                .iter()
                .map(|p| {
                    (
                        p.text.split(':').next().unwrap_or("%p").to_string(),
                        p.shape.clone(),
                        false,
                    )
                })
                .collect();
            let mut body = String::new();
            for (i, (kind, pick, annotate)) in ops.into_iter().enumerate() {
                let (src, shape, is_f32) = values[pick % values.len()].clone();
                let rank = shape.len();
                let name = format!("%{}", vname(i));
                let (line, out_shape, out_f32) = match kind {
                    0 => (format!("exp({src})"), shape.clone(), is_f32),
                    1 => (
                        format!("gelu({src}) {{approximate = tanh}}"),
                        shape.clone(),
                        is_f32,
                    ),
                    2 => (
                        format!("softmax({src}) {{dim = {}}}", pick % rank),
                        shape.clone(),
                        is_f32,
                    ),
                    3 if rank >= 2 => {
                        let mut s = shape[..rank - 2].to_vec();
                        s.push(format!("{}*{}", shape[rank - 2], shape[rank - 1]));
                        (
                            format!("reshape({src}) {{shape = [{}]}}", s.join(", ")),
                            s,
                            is_f32,
                        )
                    }
                    4 if rank >= 2 => {
                        let perm: Vec<String> = (0..rank).rev().map(|d| d.to_string()).collect();
                        let s: Vec<String> = shape.iter().rev().cloned().collect();
                        (
                            format!("permute({src}) {{dims = [{}]}}", perm.join(", ")),
                            s,
                            is_f32,
                        )
                    }
                    5 if rank >= 2 => {
                        let s = shape[1..].to_vec();
                        (format!("sum({src}) {{dims = [0]}}"), s, is_f32)
                    }
                    6 => (format!("cast({src}) {{dtype = f32}}"), shape.clone(), true),
                    7 => (
                        format!("dropout({src}) {{p = 0.25, seed = {}}}", pick % 100),
                        shape.clone(),
                        is_f32,
                    ),
                    _ => (format!("mul({src}, {src})"), shape.clone(), is_f32),
                };
                let ty = if annotate && out_f32 {
                    format!(" : f32[{}]", out_shape.join(", "))
                } else {
                    String::new()
                };
                body.push_str(&format!("  {name} = {line}{ty}\n"));
                values.push((name, out_shape, out_f32));
            }
            let last = values.last().map(|v| v.0.clone()).unwrap_or_default();
            let params: Vec<String> = params.iter().map(|p| p.text.clone()).collect();
            format!(
                "{mesh}func @f({}) {{\n{body}  return {last}\n}}\n",
                params.join(", ")
            )
        })
}
