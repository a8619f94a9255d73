//! MLflow's run search grammar: `clause AND clause ...` where a clause is
//! `entity.key comparator value`, e.g. `metrics.auc > 0.7 AND
//! params.model = 'gbdt' AND tags.\`team name\` LIKE 'fraud%'`. Parsed into
//! [`Clause`]s that [`crate::tracking`] turns into SQL; a syntax error says
//! what was expected and at which character.

use std::fmt;

#[derive(Clone, Debug, PartialEq)]
pub enum Entity {
    Metric,
    Param,
    Tag,
    Attribute,
    Dataset,
}

#[derive(Clone, Copy, Debug, PartialEq, Eq)]
pub enum Comparator {
    Eq,
    Ne,
    Gt,
    Ge,
    Lt,
    Le,
    Like,
    ILike,
    In,
    NotIn,
    IsNull,
    IsNotNull,
}

impl Comparator {
    pub fn sql(self) -> &'static str {
        match self {
            Comparator::Eq => "=",
            Comparator::Ne => "<>",
            Comparator::Gt => ">",
            Comparator::Ge => ">=",
            Comparator::Lt => "<",
            Comparator::Le => "<=",
            Comparator::Like | Comparator::ILike => "LIKE",
            Comparator::In => "IN",
            Comparator::NotIn => "NOT IN",
            Comparator::IsNull => "IS NULL",
            Comparator::IsNotNull => "IS NOT NULL",
        }
    }

    fn is_numeric(self) -> bool {
        matches!(
            self,
            Comparator::Eq
                | Comparator::Ne
                | Comparator::Gt
                | Comparator::Ge
                | Comparator::Lt
                | Comparator::Le
        )
    }
}

#[derive(Clone, Debug, PartialEq)]
pub enum Value {
    Number(f64),
    Text(String),
    List(Vec<String>),
    None,
}

#[derive(Clone, Debug, PartialEq)]
pub struct Clause {
    pub entity: Entity,
    pub key: String,
    pub comparator: Comparator,
    pub value: Value,
}

impl fmt::Display for Clause {
    /// The clause as a filter that parses back to it: keys in backticks,
    /// text in single quotes (a quote doubled, a backslash escaped).
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        let entity = match self.entity {
            Entity::Metric => "metrics",
            Entity::Param => "params",
            Entity::Tag => "tags",
            Entity::Attribute => "attributes",
            Entity::Dataset => "datasets",
        };
        let quote = |s: &str, q: char| {
            let escaped = s.replace('\\', "\\\\").replace(q, &format!("{q}{q}"));
            format!("{q}{escaped}{q}")
        };
        let comparator = match self.comparator {
            Comparator::Ne => "!=",
            Comparator::ILike => "ILIKE",
            other => other.sql(),
        };
        write!(f, "{entity}.{} {comparator}", quote(&self.key, '`'))?;
        match &self.value {
            Value::Number(n) => write!(f, " {n}"),
            Value::Text(t) => write!(f, " {}", quote(t, '\'')),
            Value::List(items) => {
                let items: Vec<String> = items.iter().map(|i| quote(i, '\'')).collect();
                write!(f, " ({})", items.join(", "))
            }
            Value::None => Ok(()),
        }
    }
}

/// A whole filter: its clauses joined by AND.
pub fn print(clauses: &[Clause]) -> String {
    clauses
        .iter()
        .map(ToString::to_string)
        .collect::<Vec<_>>()
        .join(" AND ")
}

/// A filter or order-by the grammar does not accept.
#[derive(Clone, Debug, PartialEq)]
pub struct FilterError {
    pub input: String,
    /// 0-based character position of the problem.
    pub position: usize,
    pub message: String,
}

impl fmt::Display for FilterError {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        write!(
            f,
            "invalid filter {:?} at position {}: {}",
            self.input, self.position, self.message
        )
    }
}

impl std::error::Error for FilterError {}

/// Attributes a run can be searched and sorted by, and whether they are numbers.
const ATTRIBUTES: &[(&str, bool)] = &[
    ("run_id", false),
    ("run_name", false),
    ("status", false),
    ("user_id", false),
    ("artifact_uri", false),
    ("start_time", true),
    ("end_time", true),
    ("created", true),
];

/// What experiments can be searched by.
const EXPERIMENT_ATTRIBUTES: &[(&str, bool)] = &[
    ("name", false),
    ("creation_time", true),
    ("last_update_time", true),
];

/// What logged models can be searched by.
const LOGGED_MODEL_ATTRIBUTES: &[(&str, bool)] = &[
    ("name", false),
    ("model_id", false),
    ("source_run_id", false),
    ("status", false),
    ("model_type", false),
    ("creation_timestamp", true),
    ("last_updated_timestamp", true),
];

/// What registered models and model versions can be searched by.
const REGISTRY_ATTRIBUTES: &[(&str, bool)] = &[
    ("name", false),
    ("run_id", false),
    ("source", false),
    ("source_path", false),
    ("model_id", false),
    ("version_number", true),
];

pub fn attribute_is_numeric(name: &str) -> Option<bool> {
    lookup(ATTRIBUTES, name)
}

fn lookup(table: &[(&str, bool)], name: &str) -> Option<bool> {
    table
        .iter()
        .find(|(n, _)| *n == name)
        .map(|(_, numeric)| *numeric)
}

#[derive(Clone, Debug, PartialEq)]
enum Token {
    Ident(String),
    Quoted(String),
    Number(f64),
    Op(&'static str),
    LParen,
    RParen,
    Comma,
    Dot,
}

struct Lexer<'a> {
    input: &'a str,
    chars: Vec<(usize, char)>,
    i: usize,
}

impl<'a> Lexer<'a> {
    fn new(input: &'a str) -> Self {
        Lexer {
            input,
            chars: input.char_indices().collect(),
            i: 0,
        }
    }

    fn error(&self, position: usize, message: impl Into<String>) -> FilterError {
        FilterError {
            input: self.input.to_string(),
            position,
            message: message.into(),
        }
    }

    /// Tokens with the character position each starts at.
    fn tokens(mut self) -> Result<Vec<(usize, Token)>, FilterError> {
        let mut out = Vec::new();
        while self.i < self.chars.len() {
            let (_, c) = self.chars[self.i];
            let at = self.i;
            if c.is_whitespace() {
                self.i += 1;
                continue;
            }
            let token = match c {
                '(' => {
                    self.i += 1;
                    Token::LParen
                }
                ')' => {
                    self.i += 1;
                    Token::RParen
                }
                ',' => {
                    self.i += 1;
                    Token::Comma
                }
                '.' if !self.peek_is_digit(1) => {
                    self.i += 1;
                    Token::Dot
                }
                '\'' | '"' | '`' => Token::Quoted(self.quoted(c)?),
                '=' | '!' | '<' | '>' => self.operator()?,
                c if c.is_ascii_digit() || c == '-' || c == '+' || c == '.' => self.number()?,
                c if c.is_alphanumeric() || c == '_' => {
                    let start = self.i;
                    while self.i < self.chars.len()
                        && (self.chars[self.i].1.is_alphanumeric()
                            || matches!(self.chars[self.i].1, '_' | '-' | ':' | '/' | '.'))
                    {
                        self.i += 1;
                    }
                    Token::Ident(self.chars[start..self.i].iter().map(|(_, c)| c).collect())
                }
                other => return Err(self.error(at, format!("unexpected character '{other}'"))),
            };
            out.push((at, token));
        }
        Ok(out)
    }

    fn peek_is_digit(&self, ahead: usize) -> bool {
        self.chars
            .get(self.i + ahead)
            .is_some_and(|(_, c)| c.is_ascii_digit())
    }

    fn quoted(&mut self, quote: char) -> Result<String, FilterError> {
        let start = self.i;
        self.i += 1;
        let mut text = String::new();
        while self.i < self.chars.len() {
            let c = self.chars[self.i].1;
            self.i += 1;
            if c == quote {
                // A doubled quote stands for the quote itself.
                if self.chars.get(self.i).is_some_and(|(_, n)| *n == quote) {
                    text.push(quote);
                    self.i += 1;
                    continue;
                }
                return Ok(text);
            }
            if c == '\\' {
                if let Some((_, n)) = self.chars.get(self.i) {
                    text.push(*n);
                    self.i += 1;
                    continue;
                }
            }
            text.push(c);
        }
        Err(self.error(start, format!("unterminated {quote}-quoted string")))
    }

    fn operator(&mut self) -> Result<Token, FilterError> {
        let at = self.i;
        let two: String = self.chars[self.i..(self.i + 2).min(self.chars.len())]
            .iter()
            .map(|(_, c)| c)
            .collect();
        for op in ["!=", ">=", "<=", "<>", "=="] {
            if two == op {
                self.i += 2;
                return Ok(Token::Op(match op {
                    "<>" => "!=",
                    "==" => "=",
                    other => other,
                }));
            }
        }
        let c = self.chars[self.i].1;
        self.i += 1;
        Ok(Token::Op(match c {
            '=' => "=",
            '<' => "<",
            '>' => ">",
            _ => return Err(self.error(at, "expected a comparison operator after '!'")),
        }))
    }

    fn number(&mut self) -> Result<Token, FilterError> {
        let start = self.i;
        while self.i < self.chars.len()
            && (self.chars[self.i].1.is_ascii_alphanumeric()
                || matches!(self.chars[self.i].1, '.' | '-' | '+'))
        {
            self.i += 1;
        }
        let text: String = self.chars[start..self.i].iter().map(|(_, c)| c).collect();
        text.parse::<f64>()
            .map(Token::Number)
            .map_err(|_| self.error(start, format!("'{text}' is not a number")))
    }
}

struct Parser {
    input: String,
    tokens: Vec<(usize, Token)>,
    i: usize,
    attributes: &'static [(&'static str, bool)],
}

impl Parser {
    fn at(&self) -> usize {
        self.tokens
            .get(self.i)
            .map_or(self.input.chars().count(), |(p, _)| *p)
    }

    fn error(&self, message: impl Into<String>) -> FilterError {
        FilterError {
            input: self.input.clone(),
            position: self.at(),
            message: message.into(),
        }
    }

    fn next(&mut self) -> Option<Token> {
        let t = self.tokens.get(self.i).map(|(_, t)| t.clone());
        self.i += 1;
        t
    }

    fn peek(&self) -> Option<&Token> {
        self.tokens.get(self.i).map(|(_, t)| t)
    }

    fn keyword(&self, word: &str) -> bool {
        matches!(self.peek(), Some(Token::Ident(w)) if w.eq_ignore_ascii_case(word))
    }

    /// `entity.key`, or a bare attribute name.
    fn identifier(&mut self) -> Result<(Entity, String), FilterError> {
        let start = self.i;
        let first = match self.next() {
            Some(Token::Ident(w)) => w,
            Some(Token::Quoted(w)) => w,
            _ => {
                self.i = start;
                return Err(self.error(
                    "expected an identifier such as metrics.auc, params.lr, tags.team or attributes.status",
                ));
            }
        };
        // Identifiers may carry their dot inside the word (metrics.auc).
        let (prefix, rest) = match first.split_once('.') {
            Some((p, r)) => (p.to_string(), Some(r.to_string())),
            None => (first.clone(), None),
        };
        let entity = match prefix.to_ascii_lowercase().as_str() {
            "metric" | "metrics" => Some(Entity::Metric),
            "param" | "params" | "parameter" | "parameters" => Some(Entity::Param),
            "tag" | "tags" => Some(Entity::Tag),
            "attribute" | "attributes" | "attr" | "run" => Some(Entity::Attribute),
            "dataset" | "datasets" => Some(Entity::Dataset),
            _ => None,
        };
        let Some(entity) = entity else {
            if rest.is_none() && lookup(self.attributes, &first).is_some() {
                return Ok((Entity::Attribute, first));
            }
            self.i = start;
            return Err(self.error(format!(
                "'{first}' is not a known entity; use metrics., params., tags., attributes. or datasets."
            )));
        };
        let key = match rest {
            Some(k) if !k.is_empty() => k,
            _ => {
                if rest.is_none() {
                    if self.peek() != Some(&Token::Dot) {
                        return Err(self.error(format!("expected '.' after '{prefix}'")));
                    }
                    self.i += 1;
                }
                match self.next() {
                    Some(Token::Ident(k)) | Some(Token::Quoted(k)) => k,
                    _ => {
                        self.i -= 1;
                        return Err(self.error(format!("expected a key after '{prefix}.'")));
                    }
                }
            }
        };
        if entity == Entity::Attribute && lookup(self.attributes, &key).is_none() {
            self.i -= 1;
            return Err(self.error(format!(
                "'{key}' is not an attribute here; use one of {}",
                self.attributes
                    .iter()
                    .map(|(n, _)| *n)
                    .collect::<Vec<_>>()
                    .join(", ")
            )));
        }
        if entity == Entity::Dataset && !matches!(key.as_str(), "name" | "digest" | "context") {
            self.i -= 1;
            return Err(self.error(format!(
                "'{key}' is not a dataset field; use name, digest or context"
            )));
        }
        Ok((entity, key))
    }

    fn comparator(&mut self) -> Result<Comparator, FilterError> {
        let c = match self.peek() {
            Some(Token::Op(op)) => match *op {
                "=" => Comparator::Eq,
                "!=" => Comparator::Ne,
                ">" => Comparator::Gt,
                ">=" => Comparator::Ge,
                "<" => Comparator::Lt,
                "<=" => Comparator::Le,
                _ => unreachable!("the lexer makes only these operators"),
            },
            Some(Token::Ident(w)) => match w.to_ascii_uppercase().as_str() {
                "LIKE" => Comparator::Like,
                "ILIKE" => Comparator::ILike,
                "IN" => Comparator::In,
                "NOT" => {
                    self.i += 1;
                    if !self.keyword("IN") {
                        return Err(self.error("expected IN after NOT"));
                    }
                    Comparator::NotIn
                }
                "IS" => {
                    self.i += 1;
                    let not = self.keyword("NOT");
                    if not {
                        self.i += 1;
                    }
                    if !self.keyword("NULL") {
                        return Err(self.error("expected NULL or NOT NULL after IS"));
                    }
                    if not {
                        Comparator::IsNotNull
                    } else {
                        Comparator::IsNull
                    }
                }
                _ => return Err(self.error(
                    "expected a comparator: =, !=, >, >=, <, <=, LIKE, ILIKE, IN, NOT IN, IS NULL",
                )),
            },
            _ => {
                return Err(self.error(
                    "expected a comparator: =, !=, >, >=, <, <=, LIKE, ILIKE, IN, NOT IN, IS NULL",
                ))
            }
        };
        self.i += 1;
        Ok(c)
    }

    fn value(&mut self, entity: &Entity, key: &str, c: Comparator) -> Result<Value, FilterError> {
        if matches!(c, Comparator::IsNull | Comparator::IsNotNull) {
            return Ok(Value::None);
        }
        let numeric = match entity {
            Entity::Metric => true,
            Entity::Attribute => lookup(self.attributes, key).unwrap_or(false),
            _ => false,
        };
        if matches!(c, Comparator::In | Comparator::NotIn) {
            if self.next() != Some(Token::LParen) {
                self.i -= 1;
                return Err(self.error("expected '(' to start the list after IN"));
            }
            let mut items = Vec::new();
            loop {
                match self.next() {
                    Some(Token::Quoted(s)) => items.push(s),
                    _ => {
                        self.i -= 1;
                        return Err(self.error("expected a quoted string in the IN list"));
                    }
                }
                match self.next() {
                    Some(Token::Comma) => continue,
                    Some(Token::RParen) => break,
                    _ => {
                        self.i -= 1;
                        return Err(self.error("expected ',' or ')' in the IN list"));
                    }
                }
            }
            return Ok(Value::List(items));
        }
        match (self.next(), numeric) {
            (Some(Token::Number(n)), true) if c.is_numeric() => Ok(Value::Number(n)),
            (Some(Token::Quoted(s)), false) => Ok(Value::Text(s)),
            (Some(Token::Quoted(s)), true) if *entity == Entity::Attribute => {
                s.parse::<f64>().map(Value::Number).map_err(|_| {
                    self.i -= 1;
                    self.error(format!("attributes.{key} is compared with a number"))
                })
            }
            (_, true) => {
                self.i -= 1;
                Err(self.error(if c.is_numeric() {
                    "expected a number".to_string()
                } else {
                    format!("{} cannot compare numbers", c.sql())
                }))
            }
            (_, false) => {
                self.i -= 1;
                Err(self.error("expected a quoted string, e.g. 'value'"))
            }
        }
    }
}

/// Parses a run search filter; an empty filter matches every run.
pub fn parse(filter: &str) -> Result<Vec<Clause>, FilterError> {
    parse_over(filter, ATTRIBUTES)
}

/// Parses an experiment search filter: `name LIKE 'fraud-%'`,
/// `tags.team = 'risk'`, `creation_time > 1700000000000`.
pub fn parse_experiment_filter(filter: &str) -> Result<Vec<Clause>, FilterError> {
    parse_over(filter, EXPERIMENT_ATTRIBUTES)
}

/// Parses a logged-model search filter: `name = 'model'`,
/// `source_run_id = '...'`, `tags.stage = 'prod'`.
pub fn parse_logged_model_filter(filter: &str) -> Result<Vec<Clause>, FilterError> {
    parse_over(filter, LOGGED_MODEL_ATTRIBUTES)
}

/// Parses a registry search filter: `name = 'fraud'`, `run_id = '...'`,
/// `tags.owner = 'risk'`.
pub fn parse_registry_filter(filter: &str) -> Result<Vec<Clause>, FilterError> {
    parse_over(filter, REGISTRY_ATTRIBUTES)
}

fn parse_over(
    filter: &str,
    attributes: &'static [(&'static str, bool)],
) -> Result<Vec<Clause>, FilterError> {
    let tokens = Lexer::new(filter).tokens()?;
    let mut p = Parser {
        input: filter.to_string(),
        tokens,
        i: 0,
        attributes,
    };
    let mut clauses = Vec::new();
    if p.peek().is_none() {
        return Ok(clauses);
    }
    loop {
        let (entity, key) = p.identifier()?;
        let comparator = p.comparator()?;
        if entity == Entity::Metric
            && !comparator.is_numeric()
            && !matches!(comparator, Comparator::IsNull | Comparator::IsNotNull)
        {
            p.i -= 1;
            return Err(p.error(format!(
                "metrics are compared with =, !=, >, >=, <, <=, not {}",
                comparator.sql()
            )));
        }
        let value = p.value(&entity, &key, comparator)?;
        clauses.push(Clause {
            entity,
            key,
            comparator,
            value,
        });
        match p.peek() {
            None => return Ok(clauses),
            Some(Token::Ident(w)) if w.eq_ignore_ascii_case("AND") => p.i += 1,
            Some(Token::Ident(w)) if w.eq_ignore_ascii_case("OR") => {
                return Err(p.error("OR is not supported; combine clauses with AND"))
            }
            _ => return Err(p.error("expected AND or the end of the filter")),
        }
    }
}

/// One `order_by` entry: `metrics.auc DESC`, `params.lr`, `attributes.start_time ASC`.
#[derive(Clone, Debug, PartialEq)]
pub struct OrderBy {
    pub entity: Entity,
    pub key: String,
    pub ascending: bool,
}

pub fn parse_order_by(text: &str) -> Result<OrderBy, FilterError> {
    let tokens = Lexer::new(text).tokens()?;
    let mut p = Parser {
        input: text.to_string(),
        tokens,
        i: 0,
        attributes: ATTRIBUTES,
    };
    let (entity, key) = p.identifier()?;
    let ascending = match p.next() {
        None => true,
        Some(Token::Ident(w)) if w.eq_ignore_ascii_case("ASC") => true,
        Some(Token::Ident(w)) if w.eq_ignore_ascii_case("DESC") => false,
        _ => {
            p.i -= 1;
            return Err(p.error("expected ASC or DESC"));
        }
    };
    if p.peek().is_some() {
        return Err(p.error("unexpected text after the sort direction"));
    }
    if entity == Entity::Dataset {
        return Err(FilterError {
            input: text.to_string(),
            position: 0,
            message: "runs cannot be ordered by datasets".into(),
        });
    }
    Ok(OrderBy {
        entity,
        key,
        ascending,
    })
}

#[cfg(test)]
mod properties {
    use proptest::prelude::*;

    use super::*;

    fn text() -> impl Strategy<Value = String> {
        // Quotes, backslashes, operators and keywords inside: what breaks a
        // naive printer.
        prop_oneof![
            "[a-z_]{1,8}",
            "\\PC{1,12}",
            prop::sample::select(vec!["it's", "a\\b", "`x`", "AND", "a' OR '1'='1", "%_"])
                .prop_map(str::to_string),
        ]
    }

    fn clause() -> impl Strategy<Value = Clause> {
        let numeric = prop::sample::select(vec![
            Comparator::Eq,
            Comparator::Ne,
            Comparator::Gt,
            Comparator::Ge,
            Comparator::Lt,
            Comparator::Le,
        ]);
        let textual = prop::sample::select(vec![
            Comparator::Eq,
            Comparator::Ne,
            Comparator::Like,
            Comparator::ILike,
        ]);
        let finite = (-1e12f64..1e12).prop_filter("finite", |n| n.is_finite());
        prop_oneof![
            (text(), numeric.clone(), finite.clone()).prop_map(|(key, comparator, n)| Clause {
                entity: Entity::Metric,
                key,
                comparator,
                value: Value::Number(n),
            }),
            (
                prop::sample::select(vec![Entity::Param, Entity::Tag]),
                text(),
                textual.clone(),
                text()
            )
                .prop_map(|(entity, key, comparator, t)| Clause {
                    entity,
                    key,
                    comparator,
                    value: Value::Text(t),
                }),
            (
                prop::sample::select(vec![Entity::Param, Entity::Tag]),
                text(),
                prop::bool::ANY,
                prop::collection::vec(text(), 1..4)
            )
                .prop_map(|(entity, key, not, items)| Clause {
                    entity,
                    key,
                    comparator: if not {
                        Comparator::NotIn
                    } else {
                        Comparator::In
                    },
                    value: Value::List(items),
                }),
            (text(), prop::bool::ANY).prop_map(|(key, not)| Clause {
                entity: Entity::Tag,
                key,
                comparator: if not {
                    Comparator::IsNotNull
                } else {
                    Comparator::IsNull
                },
                value: Value::None,
            }),
            (
                prop::sample::select(vec!["start_time", "end_time"]),
                numeric,
                finite
            )
                .prop_map(|(key, comparator, n)| Clause {
                    entity: Entity::Attribute,
                    key: key.into(),
                    comparator,
                    value: Value::Number(n),
                }),
            (
                prop::sample::select(vec!["run_name", "status", "user_id"]),
                textual.clone(),
                text()
            )
                .prop_map(|(key, comparator, t)| Clause {
                    entity: Entity::Attribute,
                    key: key.into(),
                    comparator,
                    value: Value::Text(t),
                }),
            (
                prop::sample::select(vec!["name", "digest", "context"]),
                textual,
                text()
            )
                .prop_map(|(key, comparator, t)| Clause {
                    entity: Entity::Dataset,
                    key: key.into(),
                    comparator,
                    value: Value::Text(t),
                }),
        ]
    }

    proptest! {
        #![proptest_config(ProptestConfig::with_cases(500))]

        /// Printing clauses and parsing the text gives the same clauses.
        #[test]
        fn print_then_parse_is_the_identity(clauses in prop::collection::vec(clause(), 1..5)) {
            let text = print(&clauses);
            let parsed = parse(&text).map_err(|e| TestCaseError::fail(format!("{text}: {e}")))?;
            prop_assert_eq!(parsed, clauses, "{}", text);
        }

        /// Whatever the text, parsing gives clauses or an error with a
        /// position inside it, never a panic.
        #[test]
        fn any_text_parses_or_says_where(text in "\\PC{0,80}") {
            if let Err(e) = parse(&text) {
                prop_assert!(e.position <= text.chars().count());
            }
        }
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn parses_the_forms_mlflow_users_write() {
        let c =
            parse("metrics.auc > 0.7 and params.model = 'gbdt' AND tags.`team name` LIKE 'fr%'")
                .unwrap();
        assert_eq!(c.len(), 3);
        assert_eq!(c[0].entity, Entity::Metric);
        assert_eq!(c[0].value, Value::Number(0.7));
        assert_eq!(c[1].key, "model");
        assert_eq!(c[2].key, "team name");
        assert_eq!(c[2].comparator, Comparator::Like);
        let c = parse("attributes.status IN ('FINISHED', 'FAILED') AND attribute.start_time >= 5")
            .unwrap();
        assert_eq!(
            c[0].value,
            Value::List(vec!["FINISHED".into(), "FAILED".into()])
        );
        assert_eq!(c[1].value, Value::Number(5.0));
        let c = parse(
            "params.\"a b\" != 'x' AND tags.mlflow.runName IS NOT NULL AND metrics.loss <= -1e-3",
        )
        .unwrap();
        assert_eq!(c[1].key, "mlflow.runName");
        assert_eq!(c[1].comparator, Comparator::IsNotNull);
        assert_eq!(c[2].value, Value::Number(-1e-3));
        assert!(parse("").unwrap().is_empty());
        assert!(parse("   ").unwrap().is_empty());
    }

    #[test]
    fn errors_point_at_the_problem() {
        let e = parse("metrics.acc >> 0.5").unwrap_err();
        assert_eq!(e.position, 13, "{e}");
        let e = parse("metrics.acc > 0.5 AND").unwrap_err();
        assert_eq!(e.position, 21, "{e}");
        let e = parse("foo.bar = 'x'").unwrap_err();
        assert_eq!(e.position, 0, "{e}");
        assert!(e.message.contains("not a known entity"), "{e}");
        let e = parse("metrics.acc LIKE 'x'").unwrap_err();
        assert!(e.message.contains("metrics are compared"), "{e}");
        let e = parse("params.p = 3").unwrap_err();
        assert_eq!(e.position, 11, "{e}");
        let e = parse("params.p = 'unterminated").unwrap_err();
        assert_eq!(e.position, 11, "{e}");
        let e = parse("metrics.a > 1 OR metrics.b > 2").unwrap_err();
        assert!(e.message.contains("OR is not supported"), "{e}");
        assert!(e.to_string().contains("position 14"), "{e}");
    }

    #[test]
    fn order_by() {
        assert_eq!(
            parse_order_by("metrics.acc DESC").unwrap(),
            OrderBy {
                entity: Entity::Metric,
                key: "acc".into(),
                ascending: false
            }
        );
        assert!(parse_order_by("start_time").unwrap().ascending);
        assert!(parse_order_by("metrics.acc SIDEWAYS").is_err());
    }
}
