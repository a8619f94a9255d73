//! Search spaces. A parameter is written either as a call,
//! `loguniform(0.01, 0.3)`, `uniform(0, 1)`, `int(3, 10)`, `int(16, 1024, log)`,
//! `choice(gbdt, linear)`, or as a map with `type`, `low`, `high`, `log`,
//! `values` and `when: {param: value}` (sampled only when another parameter
//! took that value: a conditional space).

use std::collections::BTreeMap;
use std::fmt;

use serde::{Deserialize, Serialize};
use serde_json::Value;

use crate::{Result, TuneError};

#[derive(Clone, Debug, PartialEq, Serialize, Deserialize)]
#[serde(untagged)]
pub enum ParamValue {
    Int(i64),
    Float(f64),
    Bool(bool),
    Text(String),
}

impl ParamValue {
    pub fn as_f64(&self) -> Option<f64> {
        match self {
            ParamValue::Int(i) => Some(*i as f64),
            ParamValue::Float(f) => Some(*f),
            _ => None,
        }
    }

    pub fn to_json(&self) -> Value {
        serde_json::to_value(self).expect("a parameter value serializes")
    }

    fn from_json(v: &Value) -> Option<ParamValue> {
        match v {
            Value::Bool(b) => Some(ParamValue::Bool(*b)),
            Value::Number(n) => n
                .as_i64()
                .map(ParamValue::Int)
                .or_else(|| n.as_f64().map(ParamValue::Float)),
            Value::String(s) => Some(ParamValue::Text(s.clone())),
            _ => None,
        }
    }

    /// A choice's text form parsed the way YAML would read it.
    fn from_text(s: &str) -> ParamValue {
        let s = s.trim().trim_matches(|c| c == '"' || c == '\'');
        if let Ok(i) = s.parse::<i64>() {
            ParamValue::Int(i)
        } else if let Ok(f) = s.parse::<f64>() {
            ParamValue::Float(f)
        } else if let Ok(b) = s.parse::<bool>() {
            ParamValue::Bool(b)
        } else {
            ParamValue::Text(s.to_string())
        }
    }
}

impl fmt::Display for ParamValue {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        match self {
            ParamValue::Int(i) => write!(f, "{i}"),
            ParamValue::Float(x) => write!(f, "{x}"),
            ParamValue::Bool(b) => write!(f, "{b}"),
            ParamValue::Text(s) => f.write_str(s),
        }
    }
}

#[derive(Clone, Debug, PartialEq)]
pub enum Distribution {
    Float { low: f64, high: f64, log: bool },
    Int { low: i64, high: i64, log: bool },
    Choice(Vec<ParamValue>),
}

impl Distribution {
    /// The numeric range samplers work in (log-scaled when `log`; an
    /// integer range widened by half a step each side so rounding is fair).
    pub(crate) fn range(&self) -> Option<(f64, f64)> {
        match *self {
            Distribution::Float { low, high, log } => Some(if log {
                (low.ln(), high.ln())
            } else {
                (low, high)
            }),
            Distribution::Int { low, high, log } => Some(if log {
                ((low as f64 - 0.5).max(0.5).ln(), (high as f64 + 0.5).ln())
            } else {
                (low as f64 - 0.5, high as f64 + 0.5)
            }),
            Distribution::Choice(_) => None,
        }
    }

    /// A point of the internal range back to a value.
    pub(crate) fn value_at(&self, x: f64) -> ParamValue {
        match *self {
            Distribution::Float { low, high, log } => {
                let v = if log { x.exp() } else { x };
                ParamValue::Float(v.clamp(low, high))
            }
            Distribution::Int { low, high, log } => {
                let v = if log { x.exp() } else { x };
                ParamValue::Int((v.round() as i64).clamp(low, high))
            }
            Distribution::Choice(ref values) => values[(x as usize).min(values.len() - 1)].clone(),
        }
    }

    /// A value to its internal coordinate (a choice's index).
    pub(crate) fn coordinate(&self, v: &ParamValue) -> Option<f64> {
        match self {
            Distribution::Float { log, .. } | Distribution::Int { log, .. } => {
                let x = v.as_f64()?;
                Some(if *log { x.ln() } else { x })
            }
            Distribution::Choice(values) => values.iter().position(|c| c == v).map(|i| i as f64),
        }
    }
}

#[derive(Clone, Debug, PartialEq)]
pub struct Param {
    pub name: String,
    pub distribution: Distribution,
    /// Sampled only when this other parameter took this value.
    pub when: Option<(String, ParamValue)>,
}

#[derive(Clone, Debug, PartialEq)]
pub struct Space {
    /// Parents before the parameters that depend on them.
    pub params: Vec<Param>,
}

impl Space {
    /// Reads a `space:` map; `field` names it in errors (`tune.space`).
    pub fn parse(spec: &BTreeMap<String, Value>, field: &str) -> Result<Space> {
        if spec.is_empty() {
            return Err(TuneError::invalid(field, "list at least one parameter"));
        }
        let mut params = Vec::new();
        for (name, v) in spec {
            params.push(parse_param(name, v, &format!("{field}.{name}"))?);
        }
        // Order parents first; reject unknown parents and cycles.
        let mut ordered: Vec<Param> = Vec::new();
        while !params.is_empty() {
            let before = params.len();
            let mut i = 0;
            while i < params.len() {
                let ready = match &params[i].when {
                    None => true,
                    Some((parent, _)) => ordered.iter().any(|p| &p.name == parent),
                };
                if ready {
                    ordered.push(params.remove(i));
                } else {
                    i += 1;
                }
            }
            if params.len() == before {
                let p = &params[0];
                let (parent, _) = p.when.as_ref().expect("only conditional params wait");
                let message = if spec.contains_key(parent) {
                    format!("its condition on '{parent}' forms a cycle")
                } else {
                    format!("its condition names '{parent}', which is not in the space")
                };
                return Err(TuneError::invalid(
                    format!("{field}.{}.when", p.name),
                    message,
                ));
            }
        }
        Ok(Space { params: ordered })
    }

    /// Whether `param` is active given the values sampled so far.
    pub fn active(&self, param: &Param, chosen: &BTreeMap<String, ParamValue>) -> bool {
        match &param.when {
            None => true,
            Some((parent, value)) => chosen.get(parent) == Some(value),
        }
    }
}

fn parse_param(name: &str, v: &Value, field: &str) -> Result<Param> {
    let (kind, args, when): (String, Vec<Value>, Option<(String, ParamValue)>) = match v {
        Value::String(call) => {
            let (kind, args) = parse_call(call, field)?;
            (kind, args, None)
        }
        Value::Object(map) => {
            let kind = map
                .get("type")
                .and_then(Value::as_str)
                .ok_or_else(|| {
                    TuneError::invalid(
                        format!("{field}.type"),
                        "missing: one of uniform, loguniform, int, choice",
                    )
                })?
                .to_string();
            let args = match kind.as_str() {
                "choice" => match map.get("values") {
                    Some(Value::Array(items)) => items.clone(),
                    _ => {
                        return Err(TuneError::invalid(
                            format!("{field}.values"),
                            "a choice needs a list of values",
                        ))
                    }
                },
                _ => {
                    let mut args = vec![
                        map.get("low").cloned().unwrap_or(Value::Null),
                        map.get("high").cloned().unwrap_or(Value::Null),
                    ];
                    if map.get("log").and_then(Value::as_bool) == Some(true) {
                        args.push(Value::String("log".into()));
                    }
                    args
                }
            };
            let when = match map.get("when") {
                None => None,
                Some(Value::Object(cond)) if cond.len() == 1 => {
                    let (parent, value) = cond.iter().next().expect("one entry");
                    let value = ParamValue::from_json(value).ok_or_else(|| {
                        TuneError::invalid(format!("{field}.when"), "the value must be a scalar")
                    })?;
                    Some((parent.clone(), value))
                }
                Some(_) => {
                    return Err(TuneError::invalid(
                        format!("{field}.when"),
                        "write one condition, {param: value}",
                    ))
                }
            };
            (kind, args, when)
        }
        _ => {
            return Err(TuneError::invalid(
                field,
                "write a distribution such as loguniform(0.01, 0.3), or a map with type, low, high",
            ))
        }
    };
    let num = |i: usize, what: &str| -> Result<f64> {
        args.get(i)
            .and_then(|v| match v {
                Value::Number(n) => n.as_f64(),
                Value::String(s) => s.trim().parse().ok(),
                _ => None,
            })
            .ok_or_else(|| TuneError::invalid(field, format!("{kind} needs a numeric {what}")))
    };
    let log_flag = args
        .get(2)
        .is_some_and(|v| v.as_str().is_some_and(|s| s.trim() == "log"));
    let distribution = match kind.as_str() {
        "uniform" | "loguniform" | "float" => {
            let (low, high) = (num(0, "low")?, num(1, "high")?);
            let log = kind == "loguniform" || log_flag;
            check_bounds(field, low, high, log)?;
            Distribution::Float { low, high, log }
        }
        "int" | "randint" => {
            let (low, high) = (num(0, "low")?, num(1, "high")?);
            if low.fract() != 0.0 || high.fract() != 0.0 {
                return Err(TuneError::invalid(field, "int bounds must be integers"));
            }
            check_bounds(field, low, high, log_flag)?;
            Distribution::Int {
                low: low as i64,
                high: high as i64,
                log: log_flag,
            }
        }
        "choice" | "categorical" => {
            if args.is_empty() {
                return Err(TuneError::invalid(
                    field,
                    "a choice needs at least one value",
                ));
            }
            let mut values = Vec::new();
            for a in &args {
                let v = match a {
                    Value::String(s) => ParamValue::from_text(s),
                    other => ParamValue::from_json(other).ok_or_else(|| {
                        TuneError::invalid(field, "choice values must be scalars")
                    })?,
                };
                if values.contains(&v) {
                    return Err(TuneError::invalid(field, format!("'{v}' is listed twice")));
                }
                values.push(v);
            }
            Distribution::Choice(values)
        }
        other => {
            return Err(TuneError::invalid(
                field,
                format!("unknown distribution '{other}': use uniform, loguniform, int or choice"),
            ))
        }
    };
    Ok(Param {
        name: name.to_string(),
        distribution,
        when,
    })
}

fn check_bounds(field: &str, low: f64, high: f64, log: bool) -> Result<()> {
    if !low.is_finite() || !high.is_finite() {
        return Err(TuneError::invalid(field, "bounds must be finite numbers"));
    }
    if low > high {
        return Err(TuneError::invalid(
            field,
            format!("low ({low}) is greater than high ({high})"),
        ));
    }
    if log && low <= 0.0 {
        return Err(TuneError::invalid(
            field,
            format!("a log scale needs a positive low bound, got {low}"),
        ));
    }
    Ok(())
}

/// `name(a, b, ...)` into the name and its arguments as text values.
fn parse_call(call: &str, field: &str) -> Result<(String, Vec<Value>)> {
    let call = call.trim();
    let (kind, rest) = call.split_once('(').ok_or_else(|| {
        TuneError::invalid(
            field,
            format!("'{call}' is not a distribution: write e.g. loguniform(0.01, 0.3)"),
        )
    })?;
    let inner = rest.strip_suffix(')').ok_or_else(|| {
        TuneError::invalid(field, format!("'{call}': missing the closing parenthesis"))
    })?;
    let args = if inner.trim().is_empty() {
        Vec::new()
    } else {
        inner
            .split(',')
            .map(|a| Value::String(a.trim().to_string()))
            .collect()
    };
    Ok((kind.trim().to_string(), args))
}

#[cfg(test)]
mod tests {
    use super::*;

    fn space(yaml: &str) -> Result<Space> {
        let spec: BTreeMap<String, Value> = serde_saphyr::from_str(yaml).unwrap();
        Space::parse(&spec, "tune.space")
    }

    #[test]
    fn calls_and_maps_both_parse() {
        let s = space(
            "{ lr: 'loguniform(0.01, 0.3)', depth: 'int(3, 10)', booster: 'choice(gbdt, linear)', \
               leaves: { type: int, low: 8, high: 256, log: true, when: { booster: gbdt } } }",
        )
        .unwrap();
        let names: Vec<&str> = s.params.iter().map(|p| p.name.as_str()).collect();
        // The conditional parameter comes after its parent.
        let pos = |n: &str| names.iter().position(|x| *x == n).unwrap();
        assert!(pos("booster") < pos("leaves"));
        let lr = &s.params[pos("lr")].distribution;
        assert_eq!(
            *lr,
            Distribution::Float {
                low: 0.01,
                high: 0.3,
                log: true
            }
        );
        assert_eq!(
            s.params[pos("booster")].distribution,
            Distribution::Choice(vec![
                ParamValue::Text("gbdt".into()),
                ParamValue::Text("linear".into())
            ])
        );
    }

    #[test]
    fn invalid_spaces_name_the_field() {
        let err = |yaml: &str| space(yaml).unwrap_err().to_string();
        let e = err("{ lr: 'uniform(1, 0.5)' }");
        assert!(
            e.starts_with("tune.space.lr:") && e.contains("greater than high"),
            "{e}"
        );
        let e = err("{ lr: 'loguniform(0, 1)' }");
        assert!(
            e.contains("tune.space.lr") && e.contains("positive low"),
            "{e}"
        );
        let e = err("{ kind: 'choice()' }");
        assert!(
            e.contains("tune.space.kind") && e.contains("at least one value"),
            "{e}"
        );
        let e = err("{ kind: { type: choice, values: [] } }");
        assert!(
            e.contains("tune.space.kind") && e.contains("at least one value"),
            "{e}"
        );
        let e = err("{ x: 'normal(0, 1)' }");
        assert!(e.contains("unknown distribution 'normal'"), "{e}");
        let e = err("{ x: { type: int, low: 1, high: 4, when: { y: 1 } } }");
        assert!(e.contains("tune.space.x.when") && e.contains("'y'"), "{e}");
        assert!(err("{}").contains("at least one parameter"));
    }
}
