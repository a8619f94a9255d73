//! The catalogue of built-in operations (`uses: weir/<name>`): what each one
//! is called, which inputs it requires and which outputs it produces. The
//! implementations live in `weir-engine`; the spec validator only needs this.

use std::fmt;

#[derive(Clone, Copy, Debug, PartialEq, Eq, serde::Serialize, serde::Deserialize)]
#[serde(rename_all = "kebab-case")]
pub enum BuiltinOp {
    Ingest,
    Validate,
    Join,
    Split,
    TrainLinear,
    TrainGbdt,
    TrainMlp,
    Evaluate,
    Register,
}

impl BuiltinOp {
    pub const ALL: [BuiltinOp; 9] = [
        BuiltinOp::Ingest,
        BuiltinOp::Validate,
        BuiltinOp::Join,
        BuiltinOp::Split,
        BuiltinOp::TrainLinear,
        BuiltinOp::TrainGbdt,
        BuiltinOp::TrainMlp,
        BuiltinOp::Evaluate,
        BuiltinOp::Register,
    ];

    pub fn name(self) -> &'static str {
        match self {
            BuiltinOp::Ingest => "weir/ingest",
            BuiltinOp::Validate => "weir/validate",
            BuiltinOp::Join => "weir/join",
            BuiltinOp::Split => "weir/split",
            BuiltinOp::TrainLinear => "weir/train-linear",
            BuiltinOp::TrainGbdt => "weir/train-gbdt",
            BuiltinOp::TrainMlp => "weir/train-mlp",
            BuiltinOp::Evaluate => "weir/evaluate",
            BuiltinOp::Register => "weir/register",
        }
    }

    pub fn from_name(name: &str) -> Option<Self> {
        Self::ALL.into_iter().find(|op| op.name() == name)
    }

    /// Inputs the op cannot run without.
    pub fn required_inputs(self) -> &'static [&'static str] {
        match self {
            BuiltinOp::Ingest => &[],
            BuiltinOp::Validate => &["table"],
            BuiltinOp::Join => &["left", "right"],
            BuiltinOp::Split => &["table"],
            BuiltinOp::TrainLinear | BuiltinOp::TrainGbdt | BuiltinOp::TrainMlp => &["train"],
            BuiltinOp::Evaluate => &["model", "table"],
            BuiltinOp::Register => &["model"],
        }
    }

    /// Inputs the op understands, required or optional.
    pub fn known_inputs(self) -> &'static [&'static str] {
        match self {
            BuiltinOp::TrainLinear | BuiltinOp::TrainGbdt | BuiltinOp::TrainMlp => {
                &["train", "valid"]
            }
            // `table`: the test set gates score the champion on.
            BuiltinOp::Register => &["model", "metrics", "table"],
            // `reference`: the table `references:` rules look values up in.
            BuiltinOp::Validate => &["table", "reference"],
            other => other.required_inputs(),
        }
    }

    /// Whether the op trains a model (and so may carry a `tune:` block).
    pub fn trains(self) -> bool {
        matches!(
            self,
            BuiltinOp::TrainLinear | BuiltinOp::TrainGbdt | BuiltinOp::TrainMlp
        )
    }

    pub fn outputs(self) -> &'static [&'static str] {
        match self {
            BuiltinOp::Ingest => &["table"],
            BuiltinOp::Validate => &["table", "report"],
            BuiltinOp::Join => &["table"],
            BuiltinOp::Split => &["train", "valid", "test"],
            BuiltinOp::TrainLinear | BuiltinOp::TrainGbdt | BuiltinOp::TrainMlp => &["model"],
            BuiltinOp::Evaluate => &["metrics", "predictions"],
            BuiltinOp::Register => &[],
        }
    }
}

impl fmt::Display for BuiltinOp {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        f.write_str(self.name())
    }
}
