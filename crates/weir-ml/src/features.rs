//! Feature transforms fitted on training data and saved inside the model.
//!
//! Every feature is one transform: where its values come from (an input
//! column, or an expression over input columns), how missing values are
//! filled (mean, median, most frequent, or a constant, learned on the
//! training rows) and how it is encoded (standardized, min-max scaled, as is,
//! bucketized, one-hot, frequency, or date-time parts). The defaults are
//! median + standardize for numbers, one-hot for text and booleans, and
//! hour / weekday / month for timestamps. Serving applies exactly the saved
//! transforms, through the same [`FeaturePipeline::encode`].

use std::collections::{BTreeMap, HashMap};

use arrow::array::{Array, Float64Array, Int64Array, StringArray};
use arrow::datatypes::{DataType, TimeUnit};
use arrow::record_batch::RecordBatch;
use chrono::{DateTime, Datelike, NaiveDate, NaiveDateTime, Timelike};
use serde::{Deserialize, Serialize};
use serde_json::Value;

use crate::expr::Expr;
use crate::{MlError, Result};

/// Raw input columns, before transforms. Missing numbers are NaN; date-times
/// are seconds since the Unix epoch.
#[derive(Clone, Debug, PartialEq)]
pub enum Column {
    Numeric(Vec<f64>),
    Text(Vec<Option<String>>),
}

impl Column {
    pub fn len(&self) -> usize {
        match self {
            Column::Numeric(v) => v.len(),
            Column::Text(v) => v.len(),
        }
    }

    pub fn is_empty(&self) -> bool {
        self.len() == 0
    }
}

/// Input columns in the order of the model's inputs.
#[derive(Clone, Debug, PartialEq)]
pub struct Frame {
    pub rows: usize,
    pub columns: Vec<Column>,
}

#[derive(Clone, Copy, Debug, PartialEq, Eq, Serialize, Deserialize)]
#[serde(rename_all = "lowercase")]
pub enum InputKind {
    Numeric,
    Text,
    /// A timestamp, date, or date-time text; read as epoch seconds.
    Datetime,
}

impl InputKind {
    fn describe(self) -> &'static str {
        match self {
            InputKind::Numeric => "numeric",
            InputKind::Text => "text",
            InputKind::Datetime => "date-time",
        }
    }
}

/// One input the model expects: its signature entry.
#[derive(Clone, Debug, PartialEq, Eq, Serialize, Deserialize)]
pub struct InputSpec {
    pub name: String,
    pub kind: InputKind,
}

/// What to do with a category the training data did not have.
#[derive(Clone, Copy, Debug, Default, PartialEq, Eq, Serialize, Deserialize)]
#[serde(rename_all = "snake_case")]
pub enum Unknown {
    /// Encode as all zeros.
    #[default]
    Ignore,
    /// Refuse the row, naming the category.
    Error,
    /// One extra indicator shared by rare and unseen categories.
    Other,
}

#[derive(Clone, Copy, Debug, PartialEq, Eq, Serialize, Deserialize)]
#[serde(rename_all = "snake_case")]
pub enum DatePart {
    Hour,
    Weekday,
    Month,
    Day,
}

impl DatePart {
    fn width(self) -> usize {
        match self {
            DatePart::Hour => 24,
            DatePart::Weekday => 7,
            DatePart::Month => 12,
            DatePart::Day => 31,
        }
    }

    fn index(self, t: &NaiveDateTime) -> usize {
        match self {
            DatePart::Hour => t.hour() as usize,
            DatePart::Weekday => t.weekday().num_days_from_monday() as usize,
            DatePart::Month => t.month0() as usize,
            DatePart::Day => t.day0() as usize,
        }
    }
}

/// How one feature's values become model inputs, with what was learned.
#[derive(Clone, Debug, PartialEq, Serialize, Deserialize)]
#[serde(tag = "transform", rename_all = "snake_case")]
pub enum Encoder {
    Standardize {
        impute: f64,
        mean: f64,
        scale: f64,
    },
    MinMax {
        impute: f64,
        min: f64,
        range: f64,
    },
    /// The number as is (after imputing).
    Number {
        impute: f64,
    },
    /// One indicator per interval between `edges`: x < e0, e0 <= x < e1, ...
    Bucketize {
        impute: f64,
        edges: Vec<f64>,
    },
    OneHot {
        categories: Vec<String>,
        #[serde(default, skip_serializing_if = "Option::is_none")]
        impute: Option<String>,
        #[serde(default)]
        unknown: Unknown,
    },
    /// The category's share of the training rows; unseen categories get 0.
    Frequency {
        categories: Vec<String>,
        frequencies: Vec<f64>,
        #[serde(default, skip_serializing_if = "Option::is_none")]
        impute: Option<String>,
    },
    /// One-hot over each part's full range (hour 0-23, month 1-12, ...);
    /// a missing date-time sets no indicator.
    Datetime {
        parts: Vec<DatePart>,
    },
}

impl Encoder {
    fn width(&self) -> usize {
        match self {
            Encoder::Standardize { .. }
            | Encoder::MinMax { .. }
            | Encoder::Number { .. }
            | Encoder::Frequency { .. } => 1,
            Encoder::Bucketize { edges, .. } => edges.len() + 1,
            Encoder::OneHot {
                categories,
                unknown,
                ..
            } => categories.len() + usize::from(*unknown == Unknown::Other),
            Encoder::Datetime { parts } => parts.iter().map(|p| p.width()).sum(),
        }
    }

    /// Entries each row has in the design: one, or one per date part.
    fn slots(&self) -> usize {
        match self {
            Encoder::Datetime { parts } => parts.len(),
            _ => 1,
        }
    }

    fn kind(&self) -> InputKind {
        match self {
            Encoder::OneHot { .. } | Encoder::Frequency { .. } => InputKind::Text,
            Encoder::Datetime { .. } => InputKind::Datetime,
            _ => InputKind::Numeric,
        }
    }
}

/// One feature: its name, where its values come from, and its encoder.
#[derive(Clone, Debug, PartialEq, Serialize, Deserialize)]
pub struct FeatureTransform {
    pub name: String,
    /// Computed from input columns instead of read as one.
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub derive: Option<Expr>,
    #[serde(flatten)]
    pub encoder: Encoder,
}

impl FeatureTransform {
    pub fn name(&self) -> &str {
        &self.name
    }
}

/// Per-column options under `with.transforms`.
#[derive(Clone, Debug, Default, Deserialize)]
#[serde(deny_unknown_fields)]
pub struct ColumnSpec {
    /// `mean`, `median`, `most_frequent`, or `{constant: value}`.
    #[serde(default)]
    pub impute: Option<Value>,
    #[serde(default)]
    pub scale: Option<Scale>,
    #[serde(default)]
    pub encode: Option<Encode>,
    /// Edges `[a, b, ...]`, or `{quantiles: n}` learned from training data.
    #[serde(default)]
    pub bucketize: Option<Value>,
    #[serde(default)]
    pub datetime: Option<Vec<DatePart>>,
    #[serde(default)]
    pub max_categories: Option<usize>,
    #[serde(default)]
    pub unknown: Option<Unknown>,
}

#[derive(Clone, Copy, Debug, PartialEq, Eq, Deserialize)]
#[serde(rename_all = "snake_case")]
pub enum Scale {
    Standardize,
    #[serde(alias = "min_max")]
    Minmax,
    None,
}

#[derive(Clone, Copy, Debug, PartialEq, Eq, Deserialize)]
#[serde(rename_all = "snake_case")]
pub enum Encode {
    #[serde(alias = "one_hot")]
    Onehot,
    Frequency,
}

/// The feature options of a trainer's `with:` block, borrowed.
pub struct FeatureSpec<'a> {
    /// Columns to use; empty means every column but the target and `exclude`.
    pub features: &'a [String],
    pub exclude: &'a [String],
    /// Numeric columns to one-hot encode.
    pub categorical: &'a [String],
    /// New features computed from input columns: name -> expression.
    pub derive: &'a BTreeMap<String, String>,
    pub transforms: &'a BTreeMap<String, ColumnSpec>,
    pub max_categories: usize,
    /// The target's column, never a feature.
    pub target: &'a str,
}

/// The feature columns `spec` selects on `batch`: the listed ones (or all
/// but the target and `exclude`), then the derived ones.
pub(crate) fn select_features(batch: &RecordBatch, spec: &FeatureSpec) -> Result<Vec<String>> {
    for name in spec.exclude {
        weir_data::column(batch, name, "with.exclude")?;
    }
    let mut names: Vec<String> = if spec.features.is_empty() {
        batch
            .schema()
            .fields()
            .iter()
            .map(|f| f.name().clone())
            .filter(|n| n != spec.target && !spec.exclude.contains(n))
            .collect()
    } else {
        if let Some(both) = spec.features.iter().find(|f| spec.exclude.contains(f)) {
            return Err(MlError::invalid(
                "with.exclude",
                format!("'{both}' is also listed in with.features"),
            ));
        }
        spec.features.to_vec()
    };
    for name in spec.derive.keys() {
        if !names.contains(name) {
            names.push(name.clone());
        }
    }
    if names.is_empty() {
        return Err(MlError::invalid(
            "with.features",
            "no feature columns are left; list some, or exclude fewer",
        ));
    }
    if names.iter().any(|n| n == spec.target) {
        return Err(MlError::invalid(
            "with.features",
            format!(
                "'{}' is the target; it cannot also be a feature",
                spec.target
            ),
        ));
    }
    Ok(names)
}

#[derive(Clone, Debug, PartialEq, Serialize, Deserialize)]
pub struct FeaturePipeline {
    pub transforms: Vec<FeatureTransform>,
}

/// Encoded rows: every row has the same number of `(index, value)` entries,
/// so rows are fixed-stride slices of `index` and `value`.
pub struct Design {
    pub rows: usize,
    pub stride: usize,
    pub width: usize,
    pub index: Vec<u32>,
    pub value: Vec<f64>,
}

impl Design {
    pub fn row(&self, r: usize) -> (&[u32], &[f64]) {
        let s = r * self.stride;
        (
            &self.index[s..s + self.stride],
            &self.value[s..s + self.stride],
        )
    }
}

impl FeaturePipeline {
    /// Fits a transform for every feature `spec` selects, on `batch`.
    pub fn fit(batch: &RecordBatch, spec: &FeatureSpec) -> Result<Self> {
        let names = select_features(batch, spec)?;
        for c in spec.categorical {
            if !names.contains(c) {
                return Err(MlError::invalid(
                    "with.categorical",
                    format!("'{c}' is not a feature"),
                ));
            }
        }
        for c in spec.transforms.keys() {
            if !names.contains(c) {
                return Err(MlError::invalid(
                    format!("with.transforms.{c}"),
                    format!("'{c}' is not a feature; features: {}", names.join(", ")),
                ));
            }
        }
        let mut transforms = Vec::with_capacity(names.len());
        for name in &names {
            let column_spec = spec.transforms.get(name).cloned().unwrap_or_default();
            let t = match spec.derive.get(name) {
                Some(text) => {
                    let field = format!("with.derive.{name}");
                    let expr = Expr::parse(text).map_err(|m| MlError::invalid(&field, m))?;
                    let mut inputs = Vec::new();
                    for c in expr.columns() {
                        if spec.derive.contains_key(c) {
                            return Err(MlError::invalid(
                                &field,
                                format!("'{c}' is itself derived; write its expression out"),
                            ));
                        }
                        let col = weir_data::column(batch, c, &field)?;
                        inputs.push(numeric_values(col.as_ref()).map_err(|_| {
                            MlError::invalid(
                                &field,
                                format!("'{c}' is a {} column, not a number", col.data_type()),
                            )
                        })?);
                    }
                    let values = expr.eval(batch.num_rows(), &|c| {
                        let i = expr.columns().iter().position(|x| x == c).expect("read");
                        &inputs[i]
                    });
                    let encoder = fit_numeric(name, &values, &column_spec)?;
                    FeatureTransform {
                        name: name.clone(),
                        derive: Some(expr),
                        encoder,
                    }
                }
                None => {
                    let col = weir_data::column(batch, name, "with.features")?;
                    FeatureTransform {
                        name: name.clone(),
                        derive: None,
                        encoder: fit_column(name, col.as_ref(), &column_spec, spec)?,
                    }
                }
            };
            transforms.push(t);
        }
        let pipeline = FeaturePipeline { transforms };
        // A column read two ways (as a category and inside an expression)
        // would need two signature entries under one name.
        let mut kinds: HashMap<String, InputKind> = HashMap::new();
        for input in pipeline.raw_inputs() {
            if let Some(k) = kinds.insert(input.name.clone(), input.kind) {
                if k != input.kind {
                    return Err(MlError::invalid(
                        format!("with.transforms.{}", input.name),
                        format!(
                            "'{}' is read both as {} and as {} values; derive a copy under another name",
                            input.name,
                            k.describe(),
                            input.kind.describe()
                        ),
                    ));
                }
            }
        }
        Ok(pipeline)
    }

    pub fn width(&self) -> usize {
        self.transforms.iter().map(|t| t.encoder.width()).sum()
    }

    /// Refuses a pipeline whose parts disagree. Training never makes one; a
    /// damaged or hand-edited model file can, and encoding it would index
    /// out of bounds.
    pub(crate) fn check(&self) -> std::result::Result<(), String> {
        let inputs = self.inputs();
        let text = |kind: InputKind| kind == InputKind::Text;
        for t in &self.transforms {
            if let Encoder::Frequency {
                categories,
                frequencies,
                ..
            } = &t.encoder
            {
                if categories.len() != frequencies.len() {
                    return Err(format!(
                        "feature '{}' has {} categories but {} frequencies",
                        t.name,
                        categories.len(),
                        frequencies.len()
                    ));
                }
            }
            let reads: Vec<(String, InputKind)> = match &t.derive {
                Some(expr) => expr
                    .columns()
                    .iter()
                    .map(|c| (c.clone(), InputKind::Numeric))
                    .collect(),
                None => vec![(t.name.clone(), t.encoder.kind())],
            };
            for (name, kind) in reads {
                let input = inputs.iter().find(|i| i.name == name);
                if input.is_some_and(|i| text(i.kind) != text(kind)) {
                    return Err(format!(
                        "column '{name}' is read both as text and as a number"
                    ));
                }
            }
        }
        Ok(())
    }

    fn raw_inputs(&self) -> Vec<InputSpec> {
        let mut out = Vec::new();
        for t in &self.transforms {
            match &t.derive {
                Some(expr) => out.extend(expr.columns().iter().map(|c| InputSpec {
                    name: c.clone(),
                    kind: InputKind::Numeric,
                })),
                None => out.push(InputSpec {
                    name: t.name.clone(),
                    kind: t.encoder.kind(),
                }),
            }
        }
        out
    }

    /// The model's signature: every input column it reads, once, in order.
    pub fn inputs(&self) -> Vec<InputSpec> {
        let mut out: Vec<InputSpec> = Vec::new();
        for input in self.raw_inputs() {
            if !out.iter().any(|o| o.name == input.name) {
                out.push(input);
            }
        }
        out
    }

    /// Reads the model's input columns out of a batch.
    pub fn frame(&self, batch: &RecordBatch) -> Result<Frame> {
        let inputs = self.inputs();
        read_frame(
            batch,
            inputs.iter().map(|i| (i.name.as_str(), i.kind)),
            "model input",
        )
    }

    pub fn encode(&self, frame: &Frame) -> Result<Design> {
        let inputs = self.inputs();
        if frame.columns.len() != inputs.len() {
            return Err(MlError::invalid(
                "inputs",
                format!(
                    "expected {} columns, got {}",
                    inputs.len(),
                    frame.columns.len()
                ),
            ));
        }
        let mut by_name: HashMap<&str, &Column> = HashMap::new();
        for (spec, col) in inputs.iter().zip(&frame.columns) {
            if col.len() != frame.rows {
                return Err(MlError::Input {
                    input: spec.name.clone(),
                    message: format!("has {} values, expected {}", col.len(), frame.rows),
                });
            }
            let matches = matches!(
                (spec.kind, col),
                (InputKind::Text, Column::Text(_))
                    | (InputKind::Numeric | InputKind::Datetime, Column::Numeric(_))
            );
            if !matches {
                return Err(MlError::Input {
                    input: spec.name.clone(),
                    message: format!("expected {} values", spec.kind.describe()),
                });
            }
            by_name.insert(spec.name.as_str(), col);
        }
        let numbers = |name: &str| match by_name[name] {
            Column::Numeric(v) => v.as_slice(),
            Column::Text(_) => unreachable!("kinds checked above"),
        };
        let stride: usize = self.transforms.iter().map(|t| t.encoder.slots()).sum();
        let mut design = Design {
            rows: frame.rows,
            stride,
            width: self.width(),
            index: vec![0u32; frame.rows * stride],
            value: vec![0f64; frame.rows * stride],
        };
        let (mut slot, mut offset) = (0usize, 0u32);
        for t in &self.transforms {
            let mut put = |r: usize, k: usize, i: u32, v: f64| {
                let at = r * stride + slot + k;
                design.index[at] = offset + i;
                design.value[at] = v;
            };
            let derived;
            let values: Option<&[f64]> = match (&t.derive, t.encoder.kind()) {
                (Some(expr), _) => {
                    derived = expr.eval(frame.rows, &numbers);
                    Some(&derived)
                }
                (None, InputKind::Text) => None,
                (None, _) => Some(numbers(&t.name)),
            };
            let texts = || match by_name[t.name.as_str()] {
                Column::Text(v) => v.as_slice(),
                Column::Numeric(_) => unreachable!("kinds checked above"),
            };
            let fill = |x: f64, impute: f64| if x.is_finite() { x } else { impute };
            match &t.encoder {
                Encoder::Standardize {
                    impute,
                    mean,
                    scale,
                } => {
                    for (r, x) in values.expect("numeric").iter().enumerate() {
                        put(r, 0, 0, (fill(*x, *impute) - mean) / scale);
                    }
                }
                Encoder::MinMax { impute, min, range } => {
                    for (r, x) in values.expect("numeric").iter().enumerate() {
                        put(r, 0, 0, (fill(*x, *impute) - min) / range);
                    }
                }
                Encoder::Number { impute } => {
                    for (r, x) in values.expect("numeric").iter().enumerate() {
                        put(r, 0, 0, fill(*x, *impute));
                    }
                }
                Encoder::Bucketize { impute, edges } => {
                    for (r, x) in values.expect("numeric").iter().enumerate() {
                        let x = fill(*x, *impute);
                        put(r, 0, edges.partition_point(|e| *e <= x) as u32, 1.0);
                    }
                }
                Encoder::OneHot {
                    categories,
                    impute,
                    unknown,
                } => {
                    let lookup = category_index(categories);
                    let other = categories.len() as u32;
                    for (r, x) in texts().iter().enumerate() {
                        let Some(x) = x.as_deref().or(impute.as_deref()) else {
                            // Missing: no indicator is set.
                            put(r, 0, 0, 0.0);
                            continue;
                        };
                        match (lookup.get(x), unknown) {
                            (Some(&i), _) => put(r, 0, i, 1.0),
                            (None, Unknown::Ignore) => put(r, 0, 0, 0.0),
                            (None, Unknown::Other) => put(r, 0, other, 1.0),
                            (None, Unknown::Error) => {
                                return Err(MlError::Input {
                                    input: t.name.clone(),
                                    message: format!(
                                        "row {r}: category '{x}' was not seen in training \
                                         (the model was trained with unknown: error)"
                                    ),
                                })
                            }
                        }
                    }
                }
                Encoder::Frequency {
                    categories,
                    frequencies,
                    impute,
                } => {
                    let lookup = category_index(categories);
                    for (r, x) in texts().iter().enumerate() {
                        let f = x
                            .as_deref()
                            .or(impute.as_deref())
                            .and_then(|x| lookup.get(x))
                            .map_or(0.0, |&i| frequencies[i as usize]);
                        put(r, 0, 0, f);
                    }
                }
                Encoder::Datetime { parts } => {
                    for (r, x) in values.expect("numeric").iter().enumerate() {
                        let at = datetime_of(*x);
                        let mut part_offset = 0u32;
                        for (k, part) in parts.iter().enumerate() {
                            match &at {
                                Some(t) => put(r, k, part_offset + part.index(t) as u32, 1.0),
                                None => put(r, k, part_offset, 0.0),
                            }
                            part_offset += part.width() as u32;
                        }
                    }
                }
            }
            slot += t.encoder.slots();
            offset += t.encoder.width() as u32;
        }
        Ok(design)
    }
}

fn category_index(categories: &[String]) -> HashMap<&str, u32> {
    categories
        .iter()
        .enumerate()
        .map(|(i, c)| (c.as_str(), i as u32))
        .collect()
}

fn datetime_of(seconds: f64) -> Option<NaiveDateTime> {
    if !seconds.is_finite() {
        return None;
    }
    DateTime::from_timestamp(seconds.floor() as i64, 0).map(|t| t.naive_utc())
}

/// Seconds since the epoch of an RFC 3339 date-time, `YYYY-MM-DD HH:MM[:SS]`
/// (or with a `T`), or `YYYY-MM-DD`. Texts without an offset are read as UTC.
pub fn parse_datetime(text: &str) -> Option<f64> {
    let text = text.trim();
    if let Ok(t) = DateTime::parse_from_rfc3339(text) {
        return Some(t.timestamp() as f64);
    }
    for format in [
        "%Y-%m-%dT%H:%M:%S%.f",
        "%Y-%m-%d %H:%M:%S%.f",
        "%Y-%m-%dT%H:%M",
        "%Y-%m-%d %H:%M",
    ] {
        if let Ok(t) = NaiveDateTime::parse_from_str(text, format) {
            return Some(t.and_utc().timestamp() as f64);
        }
    }
    NaiveDate::parse_from_str(text, "%Y-%m-%d")
        .ok()
        .map(|d| d.and_time(Default::default()).and_utc().timestamp() as f64)
}

fn is_temporal(t: &DataType) -> bool {
    matches!(
        t,
        DataType::Timestamp(_, _) | DataType::Date32 | DataType::Date64
    )
}

fn fit_column(
    name: &str,
    col: &dyn Array,
    column: &ColumnSpec,
    spec: &FeatureSpec,
) -> Result<Encoder> {
    let field = format!("with.transforms.{name}");
    if column.datetime.is_some() || (is_temporal(col.data_type()) && column.encode.is_none()) {
        if column.impute.is_some()
            || column.scale.is_some()
            || column.bucketize.is_some()
            || column.encode.is_some()
        {
            return Err(MlError::invalid(
                &field,
                "datetime parts take no impute, scale, bucketize or encode",
            ));
        }
        let parts = column.datetime.clone().unwrap_or(vec![
            DatePart::Hour,
            DatePart::Weekday,
            DatePart::Month,
        ]);
        if parts.is_empty() {
            return Err(MlError::invalid(
                format!("{field}.datetime"),
                "list at least one of hour, weekday, month, day",
            ));
        }
        let values = datetime_values(col)
            .map_err(|e| MlError::invalid(format!("{field}.datetime"), e.to_string()))?;
        if values.iter().all(|v| v.is_nan()) {
            return Err(empty_column(name));
        }
        return Ok(Encoder::Datetime { parts });
    }
    let categorical = column.encode.is_some()
        || spec.categorical.iter().any(|c| c == name)
        || !col.data_type().is_numeric();
    if categorical {
        if column.scale.is_some() || column.bucketize.is_some() {
            return Err(MlError::invalid(
                &field,
                format!("scale and bucketize apply to numbers; '{name}' is encoded as categories"),
            ));
        }
        return fit_categories(name, &text_values(col)?, column, spec.max_categories);
    }
    fit_numeric(name, &numeric_values(col)?, column)
}

fn empty_column(name: &str) -> MlError {
    MlError::invalid(
        format!("with.features.{name}"),
        "the column is empty or all null in the training data",
    )
}

fn fit_numeric(name: &str, values: &[f64], column: &ColumnSpec) -> Result<Encoder> {
    let field = format!("with.transforms.{name}");
    if column.unknown.is_some() || column.max_categories.is_some() {
        return Err(MlError::invalid(
            &field,
            "unknown and max_categories apply to categories; add encode: onehot",
        ));
    }
    let mut present: Vec<f64> = values.iter().copied().filter(|v| v.is_finite()).collect();
    if present.is_empty() {
        return Err(empty_column(name));
    }
    present.sort_by(|a, b| a.total_cmp(b));
    let impute = match &column.impute {
        None => present[present.len() / 2],
        Some(Value::String(s)) if s == "median" => present[present.len() / 2],
        Some(Value::String(s)) if s == "mean" => present.iter().sum::<f64>() / present.len() as f64,
        Some(Value::String(s)) if s == "most_frequent" => most_frequent_sorted(&present),
        Some(Value::Object(o)) if o.len() == 1 && o.contains_key("constant") => {
            match o["constant"].as_f64() {
                Some(v) => v,
                None => {
                    return Err(MlError::invalid(
                        format!("{field}.impute.constant"),
                        format!("'{name}' is numeric; the constant must be a number"),
                    ))
                }
            }
        }
        Some(other) => return Err(bad_impute(&field, other)),
    };
    let filled: Vec<f64> = values
        .iter()
        .map(|v| if v.is_finite() { *v } else { impute })
        .collect();
    if let Some(buckets) = &column.bucketize {
        if column.scale.is_some() {
            return Err(MlError::invalid(
                &field,
                "bucketize replaces scaling; give one of them",
            ));
        }
        let edges = bucket_edges(&format!("{field}.bucketize"), buckets, &filled)?;
        return Ok(Encoder::Bucketize { impute, edges });
    }
    let n = filled.len() as f64;
    Ok(match column.scale.unwrap_or(Scale::Standardize) {
        Scale::Standardize => {
            let mean = filled.iter().sum::<f64>() / n;
            let var = filled.iter().map(|v| (v - mean).powi(2)).sum::<f64>() / n;
            let scale = if var > 0.0 { var.sqrt() } else { 1.0 };
            Encoder::Standardize {
                impute,
                mean,
                scale,
            }
        }
        Scale::Minmax => {
            let min = filled.iter().copied().fold(f64::INFINITY, f64::min);
            let max = filled.iter().copied().fold(f64::NEG_INFINITY, f64::max);
            let range = if max > min { max - min } else { 1.0 };
            Encoder::MinMax { impute, min, range }
        }
        Scale::None => Encoder::Number { impute },
    })
}

fn bad_impute(field: &str, got: &Value) -> MlError {
    MlError::invalid(
        format!("{field}.impute"),
        format!("expected mean, median, most_frequent or {{constant: value}}, got {got}"),
    )
}

/// The smallest of the most frequent values of a sorted slice.
fn most_frequent_sorted(sorted: &[f64]) -> f64 {
    let (mut best, mut best_count) = (sorted[0], 0);
    let mut i = 0;
    while i < sorted.len() {
        let j = sorted[i..].partition_point(|v| *v == sorted[i]) + i;
        if j - i > best_count {
            (best, best_count) = (sorted[i], j - i);
        }
        i = j;
    }
    best
}

fn bucket_edges(field: &str, spec: &Value, filled: &[f64]) -> Result<Vec<f64>> {
    let edges = match spec {
        Value::Array(items) => {
            let edges: Vec<f64> = items
                .iter()
                .map(|v| v.as_f64())
                .collect::<Option<_>>()
                .ok_or_else(|| MlError::invalid(field, "edges must be numbers"))?;
            if edges.is_empty() || edges.windows(2).any(|w| w[0] >= w[1]) {
                return Err(MlError::invalid(
                    field,
                    "give at least one edge, in increasing order",
                ));
            }
            edges
        }
        Value::Object(o) if o.len() == 1 && o.contains_key("quantiles") => {
            let n = o["quantiles"]
                .as_u64()
                .filter(|n| (2..=1000).contains(n))
                .ok_or_else(|| {
                    MlError::invalid(
                        format!("{field}.quantiles"),
                        "must be a whole number from 2 to 1000",
                    )
                })? as usize;
            let mut sorted = filled.to_vec();
            sorted.sort_by(|a, b| a.total_cmp(b));
            let mut edges: Vec<f64> = (1..n)
                .map(|i| sorted[(i * sorted.len() / n).min(sorted.len() - 1)])
                .collect();
            edges.dedup();
            // An edge at the minimum would leave its lower bucket empty.
            edges.retain(|e| *e > sorted[0]);
            if edges.is_empty() {
                return Err(MlError::invalid(
                    field,
                    "the column is constant in the training data; there is nothing to bucketize",
                ));
            }
            edges
        }
        other => {
            return Err(MlError::invalid(
                field,
                format!("expected a list of edges or {{quantiles: n}}, got {other}"),
            ))
        }
    };
    Ok(edges)
}

fn fit_categories(
    name: &str,
    text: &[Option<String>],
    column: &ColumnSpec,
    default_max: usize,
) -> Result<Encoder> {
    let field = format!("with.transforms.{name}");
    let mut counts: HashMap<&str, usize> = HashMap::new();
    for v in text.iter().flatten() {
        *counts.entry(v).or_default() += 1;
    }
    if counts.is_empty() {
        return Err(empty_column(name));
    }
    let mut by_count: Vec<(&str, usize)> = counts.into_iter().collect();
    by_count.sort_by(|a, b| b.1.cmp(&a.1).then(a.0.cmp(b.0)));
    let impute = match &column.impute {
        None => None,
        Some(Value::String(s)) if s == "most_frequent" => Some(by_count[0].0.to_string()),
        Some(Value::Object(o)) if o.len() == 1 && o.contains_key("constant") => {
            Some(match &o["constant"] {
                Value::String(s) => s.clone(),
                other => other.to_string(),
            })
        }
        Some(Value::String(s)) if s == "mean" || s == "median" => {
            return Err(MlError::invalid(
                format!("{field}.impute"),
                format!(
                    "'{name}' is encoded as categories; use most_frequent or {{constant: value}}"
                ),
            ))
        }
        Some(other) => return Err(bad_impute(&field, other)),
    };
    if let Some(v) = &impute {
        // Imputed rows count toward the category they are filled with.
        let missing = text.iter().filter(|v| v.is_none()).count();
        match by_count.iter_mut().find(|(c, _)| c == v) {
            Some(entry) => entry.1 += missing,
            None if missing > 0 => by_count.push((v.as_str(), missing)),
            None => {}
        }
        by_count.sort_by(|a, b| b.1.cmp(&a.1).then(a.0.cmp(b.0)));
    }
    let unknown = column.unknown.unwrap_or_default();
    match column.encode {
        Some(Encode::Frequency) => {
            if column.unknown.is_some() {
                return Err(MlError::invalid(
                    format!("{field}.unknown"),
                    "frequency encoding gives unseen categories 0; unknown applies to onehot",
                ));
            }
            by_count.truncate(column.max_categories.unwrap_or(usize::MAX));
            let n = text.len() as f64;
            Ok(Encoder::Frequency {
                categories: by_count.iter().map(|(c, _)| c.to_string()).collect(),
                frequencies: by_count.iter().map(|(_, k)| *k as f64 / n).collect(),
                impute,
            })
        }
        _ => {
            let max = column.max_categories.unwrap_or(default_max);
            if max == 0 {
                return Err(MlError::invalid(
                    format!("{field}.max_categories"),
                    "must be at least 1",
                ));
            }
            if unknown == Unknown::Error && by_count.len() > max {
                return Err(MlError::invalid(
                    format!("{field}.unknown"),
                    format!(
                        "'{name}' has {} categories, more than max_categories ({max}); \
                         raise max_categories or use unknown: other",
                        by_count.len()
                    ),
                ));
            }
            by_count.truncate(max);
            Ok(Encoder::OneHot {
                categories: by_count.into_iter().map(|(c, _)| c.to_string()).collect(),
                impute,
                unknown,
            })
        }
    }
}

/// The named columns of a batch, read as numbers, texts or date-times;
/// `what` says in errors where the names came from.
pub(crate) fn read_frame<'a>(
    batch: &RecordBatch,
    inputs: impl Iterator<Item = (&'a str, InputKind)>,
    what: &str,
) -> Result<Frame> {
    let mut columns = Vec::new();
    for (name, kind) in inputs {
        let col = weir_data::column(batch, name, what)?;
        columns.push(match kind {
            InputKind::Numeric => Column::Numeric(numeric_values(col.as_ref())?),
            InputKind::Text => Column::Text(text_values(col.as_ref())?),
            InputKind::Datetime => Column::Numeric(datetime_values(col.as_ref())?),
        });
    }
    Ok(Frame {
        rows: batch.num_rows(),
        columns,
    })
}

pub(crate) fn numeric_values(col: &dyn Array) -> Result<Vec<f64>> {
    let cast = match col.data_type() {
        DataType::Boolean => arrow::compute::cast(
            &arrow::compute::cast(col, &DataType::Int8)?,
            &DataType::Float64,
        )?,
        t if t.is_numeric() => arrow::compute::cast(col, &DataType::Float64)?,
        t => {
            return Err(MlError::invalid(
                "features",
                format!("a {t} column cannot be used as a number"),
            ))
        }
    };
    let f = cast.as_any().downcast_ref::<Float64Array>().expect("f64");
    Ok((0..f.len())
        .map(|i| if f.is_null(i) { f64::NAN } else { f.value(i) })
        .collect())
}

/// Seconds since the epoch, NaN for missing.
pub(crate) fn datetime_values(col: &dyn Array) -> Result<Vec<f64>> {
    let per_second: Option<i64> = match col.data_type() {
        DataType::Timestamp(TimeUnit::Second, _) => Some(1),
        DataType::Timestamp(TimeUnit::Millisecond, _) | DataType::Date64 => Some(1_000),
        DataType::Timestamp(TimeUnit::Microsecond, _) => Some(1_000_000),
        DataType::Timestamp(TimeUnit::Nanosecond, _) => Some(1_000_000_000),
        DataType::Date32 => None,
        DataType::Utf8 | DataType::LargeUtf8 | DataType::Utf8View => {
            let texts = text_values(col)?;
            return texts
                .iter()
                .enumerate()
                .map(|(r, t)| match t {
                    None => Ok(f64::NAN),
                    Some(s) => parse_datetime(s).ok_or_else(|| {
                        MlError::invalid(
                            "features",
                            format!("row {r}: '{s}' is not a date-time (use RFC 3339 or YYYY-MM-DD HH:MM:SS)"),
                        )
                    }),
                })
                .collect();
        }
        t if t.is_numeric() => return numeric_values(col),
        t => {
            return Err(MlError::invalid(
                "features",
                format!("a {t} column cannot be read as a date-time"),
            ))
        }
    };
    let ints = arrow::compute::cast(col, &DataType::Int64)?;
    let ints = ints.as_any().downcast_ref::<Int64Array>().expect("i64");
    Ok((0..ints.len())
        .map(|i| {
            if ints.is_null(i) {
                return f64::NAN;
            }
            let v = ints.value(i);
            match per_second {
                Some(k) => v.div_euclid(k) as f64,
                None => v as f64 * 86_400.0,
            }
        })
        .collect())
}

pub(crate) fn text_values(col: &dyn Array) -> Result<Vec<Option<String>>> {
    let cast = arrow::compute::cast(col, &DataType::Utf8)?;
    let s = cast.as_any().downcast_ref::<StringArray>().expect("utf8");
    Ok(s.iter().map(|v| v.map(str::to_string)).collect())
}

#[cfg(test)]
mod tests {
    use super::*;
    use arrow::array::{ArrayRef, BooleanArray, TimestampMillisecondArray};
    use std::sync::Arc;

    fn batch() -> RecordBatch {
        RecordBatch::try_from_iter(vec![
            (
                "x",
                Arc::new(Float64Array::from(vec![
                    Some(1.0),
                    Some(2.0),
                    None,
                    Some(2.0),
                    Some(10.0),
                ])) as ArrayRef,
            ),
            (
                "c",
                Arc::new(StringArray::from(vec![
                    Some("a"),
                    Some("b"),
                    Some("a"),
                    None,
                    Some("c"),
                ])) as ArrayRef,
            ),
            (
                // 2013-01-01 05:00 (Tue), 2013-06-15 23:30 (Sat), missing, ...
                "t",
                Arc::new(TimestampMillisecondArray::from(vec![
                    Some(1_357_016_400_000),
                    Some(1_371_339_000_000),
                    None,
                    Some(1_357_016_400_000),
                    Some(1_357_016_400_000),
                ])) as ArrayRef,
            ),
            (
                "flag",
                Arc::new(BooleanArray::from(vec![true, false, true, true, false])) as ArrayRef,
            ),
            (
                "y",
                Arc::new(Float64Array::from(vec![0.0, 1.0, 0.0, 1.0, 1.0])) as ArrayRef,
            ),
        ])
        .unwrap()
    }

    fn fit(yaml: &str) -> Result<FeaturePipeline> {
        #[derive(Deserialize)]
        struct Spec {
            #[serde(default)]
            features: Vec<String>,
            #[serde(default)]
            exclude: Vec<String>,
            #[serde(default)]
            categorical: Vec<String>,
            #[serde(default)]
            derive: BTreeMap<String, String>,
            #[serde(default)]
            transforms: BTreeMap<String, ColumnSpec>,
        }
        let s: Spec = serde_saphyr::from_str(yaml).unwrap();
        FeaturePipeline::fit(
            &batch(),
            &FeatureSpec {
                features: &s.features,
                exclude: &s.exclude,
                categorical: &s.categorical,
                derive: &s.derive,
                transforms: &s.transforms,
                max_categories: 100,
                target: "y",
            },
        )
    }

    /// Each row's encoded features as (index, value) pairs, zeros dropped.
    fn rows(p: &FeaturePipeline, batch: &RecordBatch) -> Vec<Vec<(u32, f64)>> {
        let d = p.encode(&p.frame(batch).unwrap()).unwrap();
        (0..d.rows)
            .map(|r| {
                let (i, v) = d.row(r);
                i.iter()
                    .zip(v)
                    .filter(|(_, v)| **v != 0.0)
                    .map(|(i, v)| (*i, *v))
                    .collect()
            })
            .collect()
    }

    fn encoder(p: &FeaturePipeline, name: &str) -> Encoder {
        p.transforms
            .iter()
            .find(|t| t.name == name)
            .unwrap()
            .encoder
            .clone()
    }

    #[test]
    fn defaults_select_every_column_but_the_target() {
        let p = fit("{}").unwrap();
        let names: Vec<&str> = p.transforms.iter().map(|t| t.name()).collect();
        assert_eq!(names, ["x", "c", "t", "flag"]);
        assert!(matches!(encoder(&p, "x"), Encoder::Standardize { impute, .. } if impute == 2.0));
        assert!(
            matches!(encoder(&p, "c"), Encoder::OneHot { ref categories, .. } if categories == &["a", "b", "c"])
        );
        assert_eq!(
            encoder(&p, "t"),
            Encoder::Datetime {
                parts: vec![DatePart::Hour, DatePart::Weekday, DatePart::Month]
            }
        );
        assert!(
            matches!(encoder(&p, "flag"), Encoder::OneHot { ref categories, .. } if categories == &["true", "false"])
        );
        let p = fit("{ exclude: [t, flag] }").unwrap();
        assert_eq!(p.transforms.len(), 2);
        let err = fit("{ exclude: [nope] }").unwrap_err().to_string();
        assert!(err.contains("unknown column 'nope'"), "{err}");
        let err = fit("{ features: [x, y] }").unwrap_err().to_string();
        assert!(err.contains("'y' is the target"), "{err}");
    }

    #[test]
    fn imputation_strategies() {
        let impute = |how: &str| match encoder(
            &fit(&format!(
                "{{ features: [x], transforms: {{ x: {{ impute: {how}, scale: none }} }} }}"
            ))
            .unwrap(),
            "x",
        ) {
            Encoder::Number { impute } => impute,
            other => panic!("{other:?}"),
        };
        assert_eq!(impute("mean"), 3.75);
        assert_eq!(impute("median"), 2.0);
        assert_eq!(impute("most_frequent"), 2.0);
        assert_eq!(impute("{constant: -1}"), -1.0);
        let err = fit("{ features: [x], transforms: { x: { impute: mode } } }")
            .unwrap_err()
            .to_string();
        assert!(
            err.starts_with("with.transforms.x.impute: expected mean, median, most_frequent"),
            "{err}"
        );
        let p = fit("{ features: [c], transforms: { c: { impute: most_frequent } } }").unwrap();
        assert_eq!(rows(&p, &batch())[3], [(0, 1.0)], "missing becomes 'a'");
        let p = fit("{ features: [c], transforms: { c: { impute: {constant: z} } } }").unwrap();
        assert!(
            matches!(encoder(&p, "c"), Encoder::OneHot { ref categories, .. } if categories.contains(&"z".to_string()))
        );
        let err = fit("{ features: [c], transforms: { c: { impute: mean } } }")
            .unwrap_err()
            .to_string();
        assert!(err.contains("use most_frequent"), "{err}");
    }

    #[test]
    fn scaling_and_buckets() {
        let p = fit("{ features: [x], transforms: { x: { scale: minmax } } }").unwrap();
        let v: Vec<f64> = rows(&p, &batch())
            .iter()
            .map(|r| r.first().map_or(0.0, |e| e.1))
            .collect();
        assert_eq!(v, [0.0, 1.0 / 9.0, 1.0 / 9.0, 1.0 / 9.0, 1.0]);
        let p = fit("{ features: [x], transforms: { x: { bucketize: [2, 5] } } }").unwrap();
        let idx: Vec<u32> = rows(&p, &batch()).iter().map(|r| r[0].0).collect();
        assert_eq!(idx, [0, 1, 1, 1, 2]);
        assert_eq!(p.width(), 3);
        let p = fit("{ features: [x], transforms: { x: { bucketize: {quantiles: 4} } } }").unwrap();
        assert!(
            matches!(encoder(&p, "x"), Encoder::Bucketize { ref edges, .. } if edges == &[2.0])
        );
        for (spec, says) in [
            ("{ bucketize: [5, 2] }", "increasing order"),
            ("{ bucketize: {quantiles: 1} }", "from 2 to 1000"),
            ("{ bucketize: [1], scale: minmax }", "give one of them"),
            ("{ unknown: error }", "add encode: onehot"),
        ] {
            let err = fit(&format!("{{ features: [x], transforms: {{ x: {spec} }} }}"))
                .unwrap_err()
                .to_string();
            assert!(err.contains(says), "{spec}: {err}");
            assert!(err.starts_with("with.transforms.x"), "{err}");
        }
    }

    #[test]
    fn categories_and_unknown_values() {
        let mut serve = batch();
        let unseen = StringArray::from(vec![Some("a"), Some("zz"), None, Some("b"), Some("c")]);
        serve = RecordBatch::try_new(serve.schema(), {
            let mut cols = serve.columns().to_vec();
            cols[1] = Arc::new(unseen);
            cols
        })
        .unwrap();
        let p = fit("{ features: [c] }").unwrap();
        assert_eq!(rows(&p, &serve)[1], [], "ignore: all zeros");
        let p = fit("{ features: [c], transforms: { c: { max_categories: 1, unknown: other } } }")
            .unwrap();
        assert_eq!(p.width(), 2);
        let r = rows(&p, &serve);
        assert_eq!(
            (r[0].clone(), r[1].clone(), r[3].clone()),
            (vec![(0, 1.0)], vec![(1, 1.0)], vec![(1, 1.0)])
        );
        let p = fit("{ features: [c], transforms: { c: { unknown: error } } }").unwrap();
        let err = p
            .encode(&p.frame(&serve).unwrap())
            .err()
            .unwrap()
            .to_string();
        assert_eq!(
            err,
            "input 'c': row 1: category 'zz' was not seen in training (the model was trained with unknown: error)"
        );
        let err =
            fit("{ features: [c], transforms: { c: { max_categories: 2, unknown: error } } }")
                .unwrap_err()
                .to_string();
        assert!(
            err.contains("has 3 categories, more than max_categories (2)"),
            "{err}"
        );
        let p = fit("{ features: [c], transforms: { c: { encode: frequency } } }").unwrap();
        let f: Vec<f64> = rows(&p, &serve)
            .iter()
            .map(|r| r.first().map_or(0.0, |e| e.1))
            .collect();
        assert_eq!(f, [0.4, 0.0, 0.0, 0.2, 0.2]);
        // A numeric column listed as categorical is one-hot over its values.
        let p = fit("{ features: [x], categorical: [x] }").unwrap();
        assert!(
            matches!(encoder(&p, "x"), Encoder::OneHot { ref categories, .. } if categories == &["2.0", "1.0", "10.0"])
        );
    }

    #[test]
    fn datetime_parts_from_timestamps_and_texts() {
        let p =
            fit("{ features: [t], transforms: { t: { datetime: [hour, weekday, month, day] } } }")
                .unwrap();
        assert_eq!(p.width(), 24 + 7 + 12 + 31);
        let r = rows(&p, &batch());
        // 05:00, Tuesday (1), January (0), day 1 (0)
        assert_eq!(r[0], [(5, 1.0), (24 + 1, 1.0), (31, 1.0), (43, 1.0)]);
        // 23:30, Saturday (5), June (5), day 15 (14)
        assert_eq!(
            r[1],
            [(23, 1.0), (24 + 5, 1.0), (31 + 5, 1.0), (43 + 14, 1.0)]
        );
        assert_eq!(r[2], [], "missing sets nothing");
        assert_eq!(p.inputs()[0].kind, InputKind::Datetime);
        // The same instants as texts (how a client sends them) encode the same.
        let texts = RecordBatch::try_from_iter(vec![(
            "t",
            Arc::new(StringArray::from(vec![
                Some("2013-01-01T05:00:00"),
                Some("2013-06-15 23:30:00"),
                None,
                Some("2013-01-01T05:00:00Z"),
                Some("2013-01-01 05:00"),
            ])) as ArrayRef,
        )])
        .unwrap();
        assert_eq!(rows(&p, &texts), r);
        let bad = RecordBatch::try_from_iter(vec![(
            "t",
            Arc::new(StringArray::from(vec!["yesterday"])) as ArrayRef,
        )])
        .unwrap();
        let err = p.frame(&bad).unwrap_err().to_string();
        assert!(err.contains("'yesterday' is not a date-time"), "{err}");
        let err = fit("{ features: [t], transforms: { t: { datetime: [hour], scale: minmax } } }")
            .unwrap_err()
            .to_string();
        assert!(err.contains("datetime parts take no"), "{err}");
    }

    #[test]
    fn derived_columns_read_their_inputs() {
        let p = fit("{ features: [c], derive: { double: 'x * 2 + flag' }, transforms: { double: { scale: none } } }")
            .unwrap();
        let names: Vec<String> = p.inputs().into_iter().map(|i| i.name).collect();
        assert_eq!(names, ["c", "x", "flag"]);
        // x missing in row 2: the derived value is missing, then imputed
        // (the upper median of 3, 4, 5, 20).
        let v: Vec<f64> = rows(&p, &batch())
            .iter()
            .map(|r| r.last().unwrap().1)
            .collect();
        assert_eq!(v, [3.0, 4.0, 5.0, 5.0, 20.0]);
        for (derive, says) in [
            (
                "'x * '",
                "with.derive.d: expected a number, a column or '(' at the end",
            ),
            ("'nope + 1'", "unknown column 'nope'"),
            ("'c + 1'", "'c' is a Utf8 column, not a number"),
        ] {
            let err = fit(&format!("{{ features: [x], derive: {{ d: {derive} }} }}"))
                .unwrap_err()
                .to_string();
            assert!(err.contains(says), "{derive}: {err}");
        }
        let err = fit("{ features: [c], categorical: [c], derive: { d: 'c2' } }")
            .unwrap_err()
            .to_string();
        assert!(err.contains("unknown column 'c2'"), "{err}");
    }

    #[test]
    fn an_all_null_feature_is_named() {
        let b = RecordBatch::try_from_iter(vec![
            (
                "e",
                Arc::new(Float64Array::from(vec![None, None])) as ArrayRef,
            ),
            (
                "y",
                Arc::new(Float64Array::from(vec![0.0, 1.0])) as ArrayRef,
            ),
        ])
        .unwrap();
        let spec = FeatureSpec {
            features: &[],
            exclude: &[],
            categorical: &[],
            derive: &BTreeMap::new(),
            transforms: &BTreeMap::new(),
            max_categories: 10,
            target: "y",
        };
        let err = FeaturePipeline::fit(&b, &spec).unwrap_err().to_string();
        assert_eq!(
            err,
            "with.features.e: the column is empty or all null in the training data"
        );
    }

    #[test]
    fn models_written_before_these_transforms_still_load() {
        let old = r#"{"transforms":[
            {"transform":"standardize","name":"x","impute":2.0,"mean":1.0,"scale":2.0},
            {"transform":"one_hot","name":"c","categories":["a","b"]}]}"#;
        let p: FeaturePipeline = serde_json::from_str(old).unwrap();
        assert_eq!(p.width(), 3);
        assert_eq!(
            encoder(&p, "c"),
            Encoder::OneHot {
                categories: vec!["a".into(), "b".into()],
                impute: None,
                unknown: Unknown::Ignore
            }
        );
        let again: FeaturePipeline =
            serde_json::from_slice(&serde_json::to_vec(&p).unwrap()).unwrap();
        assert_eq!(again, p);
    }
}
