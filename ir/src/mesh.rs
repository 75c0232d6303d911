//! Device meshes: named axes whose sizes multiply to the device count.

use crate::span::Span;

#[derive(Clone, Debug, PartialEq, Eq)]
pub struct MeshAxis {
    pub name: String,
    /// `None` when the size comes from `--devices` (`mesh tp`).
    pub size: Option<i64>,
    pub span: Span,
}

/// The mesh a program is laid over. A program without a `mesh` line has no axes (one device).
#[derive(Clone, Debug, PartialEq, Eq, Default)]
pub struct Mesh {
    pub axes: Vec<MeshAxis>,
    /// Span of the whole `mesh …` line, for diagnostics.
    pub span: Span,
}

#[derive(Clone, Debug, PartialEq, Eq, thiserror::Error)]
pub enum MeshError {
    #[error("mesh axes {axes} need {need} devices, but --devices is {devices}")]
    Mismatch {
        axes: String,
        need: i64,
        devices: i64,
    },
    #[error(
        "mesh axes with fixed sizes need a multiple of {fixed} devices, but --devices is {devices}"
    )]
    NotMultiple { fixed: i64, devices: i64 },
    #[error("mesh axis `{0}` takes its size from --devices, so pass --devices")]
    NeedsDevices(String),
    #[error("only one mesh axis may take its size from --devices, but {0} do")]
    TwoOpenAxes(String),
}

impl Mesh {
    pub fn is_empty(&self) -> bool {
        self.axes.is_empty()
    }

    pub fn axis(&self, name: &str) -> Option<&MeshAxis> {
        self.axes.iter().find(|a| a.name == name)
    }

    /// Every axis with its size, given the device count (`None` when none was given).
    pub fn resolve(&self, devices: Option<i64>) -> Result<Vec<(String, i64)>, MeshError> {
        let open: Vec<&MeshAxis> = self.axes.iter().filter(|a| a.size.is_none()).collect();
        if open.len() > 1 {
            let names: Vec<&str> = open.iter().map(|a| a.name.as_str()).collect();
            return Err(MeshError::TwoOpenAxes(names.join(", ")));
        }
        let fixed: i64 = self.axes.iter().filter_map(|a| a.size).product();
        let open_size = match (open.first(), devices) {
            (Some(a), None) => return Err(MeshError::NeedsDevices(a.name.clone())),
            (Some(_), Some(d)) => {
                if d % fixed != 0 || d == 0 {
                    return Err(MeshError::NotMultiple { fixed, devices: d });
                }
                Some(d / fixed)
            }
            (None, Some(d)) if d != fixed => {
                let axes = self
                    .axes
                    .iter()
                    .map(|a| a.name.clone())
                    .collect::<Vec<_>>()
                    .join(" × ");
                return Err(MeshError::Mismatch {
                    axes,
                    need: fixed,
                    devices: d,
                });
            }
            (None, _) => None,
        };
        Ok(self
            .axes
            .iter()
            .map(|a| (a.name.clone(), a.size.or(open_size).unwrap_or(1)))
            .collect())
    }
}
