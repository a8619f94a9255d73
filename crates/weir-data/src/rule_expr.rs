//! Row conditions for `weir/validate`'s `expr:` rules, such as
//! `arr_time >= dep_time or arr_time is null`: comparisons between columns,
//! numbers and 'text', arithmetic (+ - * /), `and`, `or`, `not`,
//! `is [not] null` and parentheses, with SQL's three-valued logic (a
//! comparison with a null is unknown). A row passes only when the condition
//! is true, so a rule says how nulls count by saying `is null`.

use arrow::array::{Array, ArrayRef, BooleanArray};
use arrow::datatypes::DataType;
use arrow::record_batch::RecordBatch;
use arrow::util::display::{ArrayFormatter, FormatOptions};

#[derive(Clone, Debug, PartialEq)]
enum Node {
    Num(f64),
    Text(String),
    Col(String),
    Neg(Box<Node>),
    Arith(char, Box<Node>, Box<Node>),
    Cmp(&'static str, Box<Node>, Box<Node>),
    And(Box<Node>, Box<Node>),
    Or(Box<Node>, Box<Node>),
    Not(Box<Node>),
    IsNull(Box<Node>, bool),
}

#[derive(Clone, Debug, PartialEq)]
enum Token {
    Num(f64),
    Text(String),
    Ident(String),
    Sym(&'static str),
}

fn tokens(text: &str) -> Result<Vec<Token>, String> {
    let chars: Vec<char> = text.chars().collect();
    let mut out = Vec::new();
    let mut i = 0;
    while i < chars.len() {
        let c = chars[i];
        if c.is_whitespace() {
            i += 1;
        } else if c.is_ascii_digit()
            || (c == '.' && chars.get(i + 1).is_some_and(char::is_ascii_digit))
        {
            let start = i;
            while i < chars.len() && (chars[i].is_ascii_alphanumeric() || chars[i] == '.') {
                i += 1;
            }
            let word: String = chars[start..i].iter().collect();
            out.push(Token::Num(
                word.parse()
                    .map_err(|_| format!("'{word}' is not a number"))?,
            ));
        } else if c.is_alphabetic() || c == '_' {
            let start = i;
            while i < chars.len()
                && (chars[i].is_alphanumeric() || chars[i] == '_' || chars[i] == '.')
            {
                i += 1;
            }
            out.push(Token::Ident(chars[start..i].iter().collect()));
        } else if c == '\'' {
            let mut value = String::new();
            i += 1;
            loop {
                match chars.get(i) {
                    None => return Err("a text value has no closing quote".into()),
                    // '' inside quotes is one quote, as in SQL.
                    Some('\'') if chars.get(i + 1) == Some(&'\'') => {
                        value.push('\'');
                        i += 2;
                    }
                    Some('\'') => {
                        i += 1;
                        break;
                    }
                    Some(ch) => {
                        value.push(*ch);
                        i += 1;
                    }
                }
            }
            out.push(Token::Text(value));
        } else {
            let two: String = chars[i..(i + 2).min(chars.len())].iter().collect();
            let sym = ["<=", ">=", "!=", "<>", "=="]
                .into_iter()
                .find(|s| *s == two)
                .or_else(|| {
                    ["<", ">", "=", "+", "-", "*", "/", "(", ")"]
                        .into_iter()
                        .find(|s| s.starts_with(c))
                })
                .ok_or_else(|| format!("unexpected '{c}'"))?;
            i += sym.len();
            out.push(Token::Sym(sym));
        }
    }
    Ok(out)
}

struct Parser {
    tokens: Vec<Token>,
    at: usize,
}

impl Parser {
    fn peek_word(&self, word: &str) -> bool {
        matches!(self.tokens.get(self.at), Some(Token::Ident(w)) if w.eq_ignore_ascii_case(word))
    }

    fn peek_sym(&self) -> Option<&'static str> {
        match self.tokens.get(self.at) {
            Some(Token::Sym(s)) => Some(s),
            _ => None,
        }
    }

    fn or(&mut self) -> Result<Node, String> {
        let mut left = self.and()?;
        while self.peek_word("or") {
            self.at += 1;
            left = Node::Or(Box::new(left), Box::new(self.and()?));
        }
        Ok(left)
    }

    fn and(&mut self) -> Result<Node, String> {
        let mut left = self.not()?;
        while self.peek_word("and") {
            self.at += 1;
            left = Node::And(Box::new(left), Box::new(self.not()?));
        }
        Ok(left)
    }

    fn not(&mut self) -> Result<Node, String> {
        if self.peek_word("not") {
            self.at += 1;
            return Ok(Node::Not(Box::new(self.not()?)));
        }
        self.comparison()
    }

    fn comparison(&mut self) -> Result<Node, String> {
        let left = self.sum()?;
        if self.peek_word("is") {
            self.at += 1;
            let negated = self.peek_word("not");
            if negated {
                self.at += 1;
            }
            if !self.peek_word("null") {
                return Err("`is` must be followed by `null` or `not null`".into());
            }
            self.at += 1;
            return Ok(Node::IsNull(Box::new(left), negated));
        }
        let op = match self.peek_sym() {
            Some("=" | "==") => "=",
            Some("!=" | "<>") => "!=",
            Some(s @ ("<" | "<=" | ">" | ">=")) => s,
            _ => return Ok(left),
        };
        self.at += 1;
        Ok(Node::Cmp(op, Box::new(left), Box::new(self.sum()?)))
    }

    fn sum(&mut self) -> Result<Node, String> {
        let mut left = self.product()?;
        while let Some(op @ ("+" | "-")) = self.peek_sym() {
            self.at += 1;
            let right = self.product()?;
            left = Node::Arith(
                op.chars().next().expect("one char"),
                Box::new(left),
                Box::new(right),
            );
        }
        Ok(left)
    }

    fn product(&mut self) -> Result<Node, String> {
        let mut left = self.unary()?;
        while let Some(op @ ("*" | "/")) = self.peek_sym() {
            self.at += 1;
            let right = self.unary()?;
            left = Node::Arith(
                op.chars().next().expect("one char"),
                Box::new(left),
                Box::new(right),
            );
        }
        Ok(left)
    }

    fn unary(&mut self) -> Result<Node, String> {
        if self.peek_sym() == Some("-") {
            self.at += 1;
            return Ok(Node::Neg(Box::new(self.unary()?)));
        }
        let token = self.tokens.get(self.at).cloned();
        self.at += 1;
        match token {
            Some(Token::Num(n)) => Ok(Node::Num(n)),
            Some(Token::Text(t)) => Ok(Node::Text(t)),
            Some(Token::Ident(word))
                if ["and", "or", "not", "is", "null"]
                    .iter()
                    .any(|k| word.eq_ignore_ascii_case(k)) =>
            {
                Err(format!("expected a column or a value, found `{word}`"))
            }
            Some(Token::Ident(name)) => Ok(Node::Col(name)),
            Some(Token::Sym("(")) => {
                let inner = self.or()?;
                if self.peek_sym() != Some(")") {
                    return Err("a `(` is not closed".into());
                }
                self.at += 1;
                Ok(inner)
            }
            Some(Token::Sym(s)) => Err(format!("expected a column or a value, found `{s}`")),
            None => Err("the condition ends too early".into()),
        }
    }
}

/// A parsed row condition.
#[derive(Clone, Debug)]
pub struct Condition {
    root: Node,
}

#[derive(Clone, Debug, PartialEq)]
enum Value {
    Null,
    Num(f64),
    Text(String),
    Bool(bool),
}

impl Condition {
    pub fn parse(text: &str) -> Result<Condition, String> {
        let mut parser = Parser {
            tokens: tokens(text)?,
            at: 0,
        };
        let root = parser.or()?;
        if parser.at < parser.tokens.len() {
            return Err(format!(
                "unexpected {:?} after the condition",
                parser.tokens[parser.at]
            ));
        }
        Ok(Condition { root })
    }

    /// The columns the condition reads.
    pub fn columns(&self) -> Vec<String> {
        fn walk(node: &Node, out: &mut Vec<String>) {
            match node {
                Node::Col(c) if !out.contains(c) => out.push(c.clone()),
                Node::Neg(a) | Node::Not(a) | Node::IsNull(a, _) => walk(a, out),
                Node::Arith(_, a, b) | Node::Cmp(_, a, b) | Node::And(a, b) | Node::Or(a, b) => {
                    walk(a, out);
                    walk(b, out);
                }
                _ => {}
            }
        }
        let mut out = Vec::new();
        walk(&self.root, &mut out);
        out
    }

    /// The rows of `batch` for which the condition is not true (false or
    /// unknown). Every column it reads must exist (see [`Condition::columns`]).
    pub fn failing_rows(&self, batch: &RecordBatch) -> Result<Vec<usize>, String> {
        let columns: Vec<(String, Column)> = self
            .columns()
            .into_iter()
            .map(|name| {
                let array = batch
                    .column_by_name(&name)
                    .ok_or_else(|| format!("unknown column '{name}'"))?;
                Ok((name, Column::new(array)?))
            })
            .collect::<Result<_, String>>()?;
        let mut failing = Vec::new();
        for row in 0..batch.num_rows() {
            let get = |name: &str| -> Value {
                columns
                    .iter()
                    .find(|(n, _)| n == name)
                    .map_or(Value::Null, |(_, c)| c.value(row))
            };
            match eval(&self.root, &get)? {
                Value::Bool(true) => {}
                Value::Bool(false) | Value::Null => failing.push(row),
                other => return Err(format!("the condition gives {other:?}, not true or false")),
            }
        }
        Ok(failing)
    }
}

/// A column read as condition values: numbers (timestamps and dates as
/// their stored integers), booleans, or text.
enum Column<'a> {
    Num(arrow::array::Float64Array),
    Bool(&'a BooleanArray),
    Text(ArrayFormatter<'a>, &'a ArrayRef),
}

impl<'a> Column<'a> {
    fn new(array: &'a ArrayRef) -> Result<Column<'a>, String> {
        let t = array.data_type();
        if t.is_numeric() || t.is_temporal() {
            let ints = match t.is_temporal() {
                true => arrow::compute::cast(array, &DataType::Int64).map_err(|e| e.to_string())?,
                false => array.clone(),
            };
            let numbers =
                arrow::compute::cast(&ints, &DataType::Float64).map_err(|e| e.to_string())?;
            return Ok(Column::Num(
                numbers
                    .as_any()
                    .downcast_ref::<arrow::array::Float64Array>()
                    .expect("f64")
                    .clone(),
            ));
        }
        if let Some(b) = array.as_any().downcast_ref::<BooleanArray>() {
            return Ok(Column::Bool(b));
        }
        let formatter = ArrayFormatter::try_new(array.as_ref(), &FormatOptions::default())
            .map_err(|e| e.to_string())?;
        Ok(Column::Text(formatter, array))
    }

    fn value(&self, row: usize) -> Value {
        match self {
            Column::Num(a) if a.is_valid(row) => Value::Num(a.value(row)),
            Column::Bool(a) if a.is_valid(row) => Value::Bool(a.value(row)),
            Column::Text(f, a) if a.is_valid(row) => Value::Text(f.value(row).to_string()),
            _ => Value::Null,
        }
    }
}

fn eval(node: &Node, get: &dyn Fn(&str) -> Value) -> Result<Value, String> {
    Ok(match node {
        Node::Num(n) => Value::Num(*n),
        Node::Text(t) => Value::Text(t.clone()),
        Node::Col(c) => get(c),
        Node::Neg(a) => match eval(a, get)? {
            Value::Num(n) => Value::Num(-n),
            Value::Null => Value::Null,
            other => return Err(format!("cannot negate {other:?}")),
        },
        Node::Arith(op, a, b) => match (eval(a, get)?, eval(b, get)?) {
            (Value::Num(x), Value::Num(y)) => Value::Num(match op {
                '+' => x + y,
                '-' => x - y,
                '*' => x * y,
                _ => x / y,
            }),
            (Value::Null, _) | (_, Value::Null) => Value::Null,
            (x, y) => {
                return Err(format!(
                    "cannot compute {x:?} {op} {y:?}: arithmetic needs numbers"
                ))
            }
        },
        Node::Cmp(op, a, b) => {
            let ordering = match (eval(a, get)?, eval(b, get)?) {
                (Value::Null, _) | (_, Value::Null) => return Ok(Value::Null),
                (Value::Num(x), Value::Num(y)) => x.partial_cmp(&y),
                (Value::Text(x), Value::Text(y)) => Some(x.cmp(&y)),
                (Value::Bool(x), Value::Bool(y)) => Some(x.cmp(&y)),
                (x, y) => return Err(format!("cannot compare {x:?} with {y:?}")),
            };
            let Some(o) = ordering else {
                return Ok(Value::Null);
            };
            Value::Bool(match *op {
                "=" => o.is_eq(),
                "!=" => o.is_ne(),
                "<" => o.is_lt(),
                "<=" => o.is_le(),
                ">" => o.is_gt(),
                _ => o.is_ge(),
            })
        }
        Node::And(a, b) => match (truth(eval(a, get)?)?, truth(eval(b, get)?)?) {
            (Some(false), _) | (_, Some(false)) => Value::Bool(false),
            (Some(true), Some(true)) => Value::Bool(true),
            _ => Value::Null,
        },
        Node::Or(a, b) => match (truth(eval(a, get)?)?, truth(eval(b, get)?)?) {
            (Some(true), _) | (_, Some(true)) => Value::Bool(true),
            (Some(false), Some(false)) => Value::Bool(false),
            _ => Value::Null,
        },
        Node::Not(a) => match truth(eval(a, get)?)? {
            Some(v) => Value::Bool(!v),
            None => Value::Null,
        },
        Node::IsNull(a, negated) => Value::Bool((eval(a, get)? == Value::Null) != *negated),
    })
}

fn truth(value: Value) -> Result<Option<bool>, String> {
    match value {
        Value::Bool(b) => Ok(Some(b)),
        Value::Null => Ok(None),
        other => Err(format!(
            "{other:?} is not true or false; compare it with something"
        )),
    }
}

#[cfg(test)]
mod tests {
    use super::*;
    use arrow::array::{Int64Array, StringArray};
    use std::sync::Arc;

    fn batch() -> RecordBatch {
        RecordBatch::try_from_iter(vec![
            (
                "dep",
                Arc::new(Int64Array::from(vec![
                    Some(900),
                    Some(1000),
                    None,
                    Some(700),
                ])) as ArrayRef,
            ),
            (
                "arr",
                Arc::new(Int64Array::from(vec![
                    Some(1100),
                    Some(950),
                    Some(800),
                    None,
                ])) as ArrayRef,
            ),
            (
                "origin",
                Arc::new(StringArray::from(vec!["JFK", "LGA", "EWR", "JFK"])) as ArrayRef,
            ),
        ])
        .unwrap()
    }

    fn failing(text: &str) -> Vec<usize> {
        Condition::parse(text)
            .unwrap()
            .failing_rows(&batch())
            .unwrap()
    }

    #[test]
    fn conditions_follow_sql_logic_with_nulls_failing_unless_allowed() {
        assert_eq!(failing("arr >= dep"), [1, 2, 3]);
        assert_eq!(failing("arr >= dep or arr is null"), [1, 2]);
        assert_eq!(failing("arr >= dep or arr is null or dep is null"), [1]);
        assert_eq!(failing("arr - dep > 100 and origin = 'JFK'"), [1, 2, 3]);
        assert_eq!(failing("not (origin = 'JFK') or dep < 800"), [0]);
        assert_eq!(failing("origin != 'EWR' and (dep is not null)"), [2]);
        assert_eq!(failing("-dep < 0 OR dep IS NULL"), Vec::<usize>::new());
        let c = Condition::parse("arr / 2 >= dep * 0.5").unwrap();
        assert_eq!(c.columns(), ["arr", "dep"]);
    }

    #[test]
    fn malformed_conditions_say_what_is_wrong() {
        let err = |t: &str| Condition::parse(t).unwrap_err();
        assert_eq!(err("arr >= "), "the condition ends too early");
        assert_eq!(err("(arr > 1"), "a `(` is not closed");
        assert_eq!(
            err("arr is 3"),
            "`is` must be followed by `null` or `not null`"
        );
        assert!(err("origin = 'JFK").contains("no closing quote"));
        assert!(err("arr # 2").contains("unexpected '#'"));
        let wrong = Condition::parse("origin + 1 > 2")
            .unwrap()
            .failing_rows(&batch())
            .unwrap_err();
        assert!(wrong.contains("arithmetic needs numbers"), "{wrong}");
        let missing = Condition::parse("nope > 1")
            .unwrap()
            .failing_rows(&batch())
            .unwrap_err();
        assert_eq!(missing, "unknown column 'nope'");
    }
}
