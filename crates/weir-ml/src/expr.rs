//! Derived feature columns: arithmetic over numeric input columns, such as
//! `distance / air_time * 60` or `log1p(distance)`. The model file keeps the
//! expression's text and serving parses it again, so training and serving
//! evaluate the same tree in the same order.
//!
//! A missing input (NaN) makes the result missing, and so does an undefined
//! result (division by zero, log of a negative number); the feature's impute
//! value then fills it like any other missing number.

use serde::{Deserialize, Deserializer, Serialize, Serializer};

#[derive(Clone, Copy, Debug, PartialEq)]
enum Op {
    Add,
    Sub,
    Mul,
    Div,
    Pow,
}

#[derive(Clone, Copy, Debug, PartialEq)]
enum Func {
    Log,
    Log1p,
    Exp,
    Sqrt,
    Abs,
    Min,
    Max,
}

impl Func {
    fn parse(name: &str) -> Option<(Func, usize)> {
        Some(match name {
            "log" => (Func::Log, 1),
            "log1p" => (Func::Log1p, 1),
            "exp" => (Func::Exp, 1),
            "sqrt" => (Func::Sqrt, 1),
            "abs" => (Func::Abs, 1),
            "min" => (Func::Min, 2),
            "max" => (Func::Max, 2),
            _ => return None,
        })
    }
}

#[derive(Clone, Debug, PartialEq)]
enum Node {
    Num(f64),
    Col(String),
    Neg(Box<Node>),
    Bin(Op, Box<Node>, Box<Node>),
    Call(Func, Vec<Node>),
}

/// A parsed expression and the input columns it reads.
#[derive(Clone, Debug, PartialEq)]
pub struct Expr {
    text: String,
    root: Node,
    columns: Vec<String>,
}

impl Expr {
    /// Parses `text`; the error names the character position that is wrong.
    pub fn parse(text: &str) -> Result<Expr, String> {
        let mut p = Parser {
            chars: text.char_indices().collect(),
            pos: 0,
        };
        let root = p.sum()?;
        p.skip_space();
        if let Some(&(at, c)) = p.chars.get(p.pos) {
            return Err(format!("unexpected '{c}' at position {}", at + 1));
        }
        let mut columns = Vec::new();
        collect_columns(&root, &mut columns);
        Ok(Expr {
            text: text.to_string(),
            root,
            columns,
        })
    }

    pub fn text(&self) -> &str {
        &self.text
    }

    /// The input columns the expression reads, in order of first use.
    pub fn columns(&self) -> &[String] {
        &self.columns
    }

    /// Evaluates over `rows` rows; `column` returns an input's values.
    /// Non-finite results come back as NaN (missing).
    pub fn eval<'a>(&self, rows: usize, column: &dyn Fn(&str) -> &'a [f64]) -> Vec<f64> {
        let mut out = eval(&self.root, rows, column);
        for v in &mut out {
            if !v.is_finite() {
                *v = f64::NAN;
            }
        }
        out
    }
}

fn collect_columns(node: &Node, out: &mut Vec<String>) {
    match node {
        Node::Num(_) => {}
        Node::Col(c) => {
            if !out.contains(c) {
                out.push(c.clone());
            }
        }
        Node::Neg(a) => collect_columns(a, out),
        Node::Bin(_, a, b) => {
            collect_columns(a, out);
            collect_columns(b, out);
        }
        Node::Call(_, args) => args.iter().for_each(|a| collect_columns(a, out)),
    }
}

fn eval<'a>(node: &Node, rows: usize, column: &dyn Fn(&str) -> &'a [f64]) -> Vec<f64> {
    match node {
        Node::Num(v) => vec![*v; rows],
        Node::Col(c) => column(c).to_vec(),
        Node::Neg(a) => eval(a, rows, column).into_iter().map(|v| -v).collect(),
        Node::Bin(op, a, b) => {
            let mut left = eval(a, rows, column);
            let right = eval(b, rows, column);
            for (l, r) in left.iter_mut().zip(right) {
                *l = match op {
                    Op::Add => *l + r,
                    Op::Sub => *l - r,
                    Op::Mul => *l * r,
                    Op::Div => *l / r,
                    Op::Pow => l.powf(r),
                };
            }
            left
        }
        Node::Call(f, args) => {
            let mut first = eval(&args[0], rows, column);
            match f {
                Func::Min | Func::Max => {
                    let second = eval(&args[1], rows, column);
                    for (a, b) in first.iter_mut().zip(second) {
                        // NaN stays missing rather than losing to the other side.
                        *a = if a.is_nan() || b.is_nan() {
                            f64::NAN
                        } else if *f == Func::Min {
                            a.min(b)
                        } else {
                            a.max(b)
                        };
                    }
                }
                _ => {
                    for v in &mut first {
                        *v = match f {
                            Func::Log => v.ln(),
                            Func::Log1p => v.ln_1p(),
                            Func::Exp => v.exp(),
                            Func::Sqrt => v.sqrt(),
                            _ => v.abs(),
                        };
                    }
                }
            }
            first
        }
    }
}

struct Parser {
    chars: Vec<(usize, char)>,
    pos: usize,
}

impl Parser {
    fn skip_space(&mut self) {
        while self
            .chars
            .get(self.pos)
            .is_some_and(|(_, c)| c.is_whitespace())
        {
            self.pos += 1;
        }
    }

    fn peek(&mut self) -> Option<char> {
        self.skip_space();
        self.chars.get(self.pos).map(|&(_, c)| c)
    }

    fn position(&self) -> usize {
        self.chars
            .get(self.pos)
            .map_or_else(|| self.chars.last().map_or(0, |(i, _)| i + 1), |&(i, _)| i)
            + 1
    }

    fn expected(&mut self, what: &str) -> String {
        match self.peek() {
            Some(c) => format!(
                "expected {what} at position {}, found '{c}'",
                self.position()
            ),
            None => format!("expected {what} at the end"),
        }
    }

    fn sum(&mut self) -> Result<Node, String> {
        let mut left = self.product()?;
        loop {
            let op = match self.peek() {
                Some('+') => Op::Add,
                Some('-') => Op::Sub,
                _ => return Ok(left),
            };
            self.pos += 1;
            left = Node::Bin(op, Box::new(left), Box::new(self.product()?));
        }
    }

    fn product(&mut self) -> Result<Node, String> {
        let mut left = self.unary()?;
        loop {
            let op = match self.peek() {
                Some('*') => Op::Mul,
                Some('/') => Op::Div,
                _ => return Ok(left),
            };
            self.pos += 1;
            left = Node::Bin(op, Box::new(left), Box::new(self.unary()?));
        }
    }

    fn unary(&mut self) -> Result<Node, String> {
        if self.peek() == Some('-') {
            self.pos += 1;
            return Ok(Node::Neg(Box::new(self.unary()?)));
        }
        let base = self.atom()?;
        if self.peek() == Some('^') {
            self.pos += 1;
            // Right-associative, and binds tighter than a leading minus: -x^2 = -(x^2).
            return Ok(Node::Bin(Op::Pow, Box::new(base), Box::new(self.unary()?)));
        }
        Ok(base)
    }

    fn atom(&mut self) -> Result<Node, String> {
        match self.peek() {
            Some('(') => {
                self.pos += 1;
                let inner = self.sum()?;
                self.close(')')?;
                Ok(inner)
            }
            Some('`') => {
                self.pos += 1;
                let start = self.pos;
                while self.chars.get(self.pos).is_some_and(|(_, c)| *c != '`') {
                    self.pos += 1;
                }
                if self.pos >= self.chars.len() {
                    return Err("a `quoted column name` is not closed".into());
                }
                let name: String = self.chars[start..self.pos].iter().map(|(_, c)| c).collect();
                self.pos += 1;
                Ok(Node::Col(name))
            }
            Some(c) if c.is_ascii_digit() || c == '.' => {
                let at = self.position();
                let start = self.pos;
                while self.chars.get(self.pos).is_some_and(|&(_, c)| {
                    c.is_ascii_alphanumeric()
                        || c == '.'
                        || ((c == '-' || c == '+')
                            && matches!(self.chars.get(self.pos - 1), Some((_, 'e' | 'E'))))
                }) {
                    self.pos += 1;
                }
                let text: String = self.chars[start..self.pos].iter().map(|(_, c)| c).collect();
                text.parse::<f64>()
                    .map(Node::Num)
                    .map_err(|_| format!("'{text}' at position {at} is not a number"))
            }
            Some(c) if c.is_alphabetic() || c == '_' => {
                let at = self.position();
                let start = self.pos;
                while self
                    .chars
                    .get(self.pos)
                    .is_some_and(|(_, c)| c.is_alphanumeric() || *c == '_')
                {
                    self.pos += 1;
                }
                let name: String = self.chars[start..self.pos].iter().map(|(_, c)| c).collect();
                if self.peek() != Some('(') {
                    return Ok(Node::Col(name));
                }
                let Some((func, arity)) = Func::parse(&name) else {
                    return Err(format!(
                        "unknown function '{name}' at position {at}; known: log, log1p, exp, sqrt, abs, min, max"
                    ));
                };
                self.pos += 1;
                let mut args = vec![self.sum()?];
                while self.peek() == Some(',') {
                    self.pos += 1;
                    args.push(self.sum()?);
                }
                self.close(')')?;
                if args.len() != arity {
                    return Err(format!(
                        "{name}() at position {at} takes {arity} argument{}, got {}",
                        if arity == 1 { "" } else { "s" },
                        args.len()
                    ));
                }
                Ok(Node::Call(func, args))
            }
            _ => Err(self.expected("a number, a column or '('")),
        }
    }

    fn close(&mut self, c: char) -> Result<(), String> {
        if self.peek() == Some(c) {
            self.pos += 1;
            Ok(())
        } else {
            Err(self.expected(&format!("'{c}'")))
        }
    }
}

impl Serialize for Expr {
    fn serialize<S: Serializer>(&self, s: S) -> Result<S::Ok, S::Error> {
        s.serialize_str(&self.text)
    }
}

impl<'de> Deserialize<'de> for Expr {
    fn deserialize<D: Deserializer<'de>>(d: D) -> Result<Self, D::Error> {
        let text = String::deserialize(d)?;
        Expr::parse(&text).map_err(serde::de::Error::custom)
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    fn eval1(text: &str, x: f64, y: f64) -> f64 {
        let (xs, ys) = ([x], [y]);
        let e = Expr::parse(text).unwrap();
        e.eval(1, &|c| match c {
            "x" => &xs[..],
            _ => &ys[..],
        })[0]
    }

    #[test]
    fn precedence_and_functions() {
        assert_eq!(eval1("x + y * 2", 1.0, 3.0), 7.0);
        assert_eq!(eval1("(x + y) * 2", 1.0, 3.0), 8.0);
        assert_eq!(eval1("-x^2", 3.0, 0.0), -9.0);
        assert_eq!(eval1("2^3^2", 0.0, 0.0), 512.0);
        assert_eq!(eval1("x - y - 1", 10.0, 3.0), 6.0);
        assert_eq!(eval1("max(x, y) / min(x, y)", 2.0, 8.0), 4.0);
        assert_eq!(eval1("log1p(x) + sqrt(y) + abs(-1.5e1)", 0.0, 4.0), 17.0);
        assert!(eval1("x / y", 1.0, 0.0).is_nan());
        assert!(eval1("log(x)", -1.0, 0.0).is_nan());
        assert!(eval1("max(x, y)", f64::NAN, 1.0).is_nan());
        let e = Expr::parse("a * `b c` + a").unwrap();
        assert_eq!(e.columns(), ["a", "b c"]);
    }

    #[test]
    fn errors_point_at_the_position() {
        let err = |t: &str| Expr::parse(t).unwrap_err();
        assert_eq!(
            err("x + * y"),
            "expected a number, a column or '(' at position 5, found '*'"
        );
        assert_eq!(err("(x + y"), "expected ')' at the end");
        assert_eq!(err("x y"), "unexpected 'y' at position 3");
        assert!(err("foo(x)").starts_with("unknown function 'foo' at position 1"));
        assert_eq!(
            err("max(x)"),
            "max() at position 1 takes 2 arguments, got 1"
        );
        assert_eq!(err("1.2.3"), "'1.2.3' at position 1 is not a number");
    }

    #[test]
    fn round_trips_through_its_text() {
        let e = Expr::parse("distance / air_time * 60").unwrap();
        let json = serde_json::to_string(&e).unwrap();
        assert_eq!(json, "\"distance / air_time * 60\"");
        let back: Expr = serde_json::from_str(&json).unwrap();
        assert_eq!(back, e);
    }
}
