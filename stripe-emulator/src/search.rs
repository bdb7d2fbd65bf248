//! The subset of Stripe's search query language that customer search needs:
//! `email:'a@b.co' AND metadata['user_id']:'42'`, `-name:null`, `name~'ann'`, `created>=1700000000`.
//! Clauses are joined by spaces or `AND`, or all by `OR` (mixing is an error, as on Stripe).

use serde_json::Value;

#[derive(Debug, Clone, PartialEq)]
pub struct Query {
    clauses: Vec<Clause>,
    any: bool, // joined by OR
}

#[derive(Debug, Clone, PartialEq)]
struct Clause {
    negated: bool,
    field: Field,
    op: Op,
    value: Literal,
}

#[derive(Debug, Clone, PartialEq)]
enum Field {
    Top(String),
    Metadata(String),
}

#[derive(Debug, Clone, Copy, PartialEq)]
enum Op {
    Eq,
    Substring,
    Gt,
    Gte,
    Lt,
    Lte,
}

#[derive(Debug, Clone, PartialEq)]
enum Literal {
    Str(String),
    Num(i64),
    Null,
}

const MAX_CLAUSES: usize = 10;
const STRING_FIELDS: &[&str] = &["email", "name", "phone", "description"];

impl Query {
    pub fn parse(input: &str) -> Result<Query, String> {
        let mut p = Parser { s: input.as_bytes(), i: 0 };
        let mut clauses = vec![p.clause()?];
        let mut joiner: Option<&'static str> = None;
        loop {
            let had_space = p.skip_ws();
            if p.at_end() {
                break;
            }
            let word = if p.keyword("AND") {
                "AND"
            } else if p.keyword("OR") {
                "OR"
            } else if had_space {
                "AND"
            } else {
                return Err(p.error("expected a space, AND or OR between clauses"));
            };
            if joiner.is_some_and(|j| j != word) {
                return Err("Query cannot mix AND and OR; use one or the other.".into());
            }
            joiner = Some(word);
            p.skip_ws();
            clauses.push(p.clause()?);
        }
        if clauses.len() > MAX_CLAUSES {
            return Err(format!("Query can have at most {MAX_CLAUSES} clauses, but it has {}.", clauses.len()));
        }
        Ok(Query { clauses, any: joiner == Some("OR") })
    }

    pub fn matches(&self, object: &Value) -> bool {
        let hit = |c: &Clause| c.matches(object) != c.negated;
        if self.any { self.clauses.iter().any(hit) } else { self.clauses.iter().all(hit) }
    }
}

impl Clause {
    fn matches(&self, object: &Value) -> bool {
        let actual = match &self.field {
            Field::Top(name) => object.get(name),
            Field::Metadata(key) => object.get("metadata").and_then(|m| m.get(key)),
        }
        .filter(|v| !v.is_null());
        match (&self.value, actual) {
            (Literal::Null, actual) => actual.is_none(),
            (_, None) => false,
            (Literal::Str(want), Some(Value::String(have))) => {
                let (want, have) = (want.to_lowercase(), have.to_lowercase());
                match self.op {
                    Op::Eq => have == want,
                    Op::Substring => have.contains(&want),
                    _ => false,
                }
            }
            (Literal::Num(want), Some(have)) => {
                let Some(have) = have.as_i64() else {
                    return false;
                };
                match self.op {
                    Op::Eq => have == *want,
                    Op::Gt => have > *want,
                    Op::Gte => have >= *want,
                    Op::Lt => have < *want,
                    Op::Lte => have <= *want,
                    Op::Substring => false,
                }
            }
            _ => false,
        }
    }
}

struct Parser<'a> {
    s: &'a [u8],
    i: usize,
}

impl Parser<'_> {
    fn at_end(&self) -> bool {
        self.i >= self.s.len()
    }

    fn peek(&self) -> Option<u8> {
        self.s.get(self.i).copied()
    }

    fn error(&self, what: &str) -> String {
        format!("Invalid search query at position {}: {what}.", self.i)
    }

    fn skip_ws(&mut self) -> bool {
        let start = self.i;
        while self.peek().is_some_and(|b| b.is_ascii_whitespace()) {
            self.i += 1;
        }
        self.i > start
    }

    /// A whole word, case-insensitive, followed by whitespace.
    fn keyword(&mut self, word: &str) -> bool {
        let end = self.i + word.len();
        let followed_by_space = self.s.get(end).is_some_and(|b| b.is_ascii_whitespace());
        if end <= self.s.len() && self.s[self.i..end].eq_ignore_ascii_case(word.as_bytes()) && followed_by_space {
            self.i = end;
            true
        } else {
            false
        }
    }

    fn clause(&mut self) -> Result<Clause, String> {
        let negated = self.peek() == Some(b'-');
        if negated {
            self.i += 1;
        }
        let field = self.field()?;
        let op = self.op()?;
        let value = self.literal()?;
        let numeric_op = !matches!(op, Op::Eq | Op::Substring);
        match (&field, &value) {
            (Field::Top(f), Literal::Num(_)) if f == "created" => {}
            (Field::Top(f), Literal::Str(_) | Literal::Null) if f == "created" => {
                return Err("Field `created` takes a number, e.g. created>1700000000.".into());
            }
            (_, Literal::Num(_)) => {
                return Err(self.error("only `created` can be compared with a number"));
            }
            _ if numeric_op => return Err(self.error("comparison operators need a number")),
            _ => {}
        }
        if let (Op::Substring, Literal::Str(s)) = (op, &value) {
            if s.chars().count() < 3 {
                return Err("Substring queries (~) need at least 3 characters.".into());
            }
        }
        Ok(Clause { negated, field, op, value })
    }

    fn field(&mut self) -> Result<Field, String> {
        let start = self.i;
        while self.peek().is_some_and(|b| b.is_ascii_alphanumeric() || b == b'_') {
            self.i += 1;
        }
        let name = std::str::from_utf8(&self.s[start..self.i]).expect("ascii");
        if name == "metadata" {
            if self.peek() != Some(b'[') {
                return Err(self.error("expected metadata['key']"));
            }
            self.i += 1;
            let key = self.quoted()?;
            if self.peek() != Some(b']') {
                return Err(self.error("expected ]"));
            }
            self.i += 1;
            return Ok(Field::Metadata(key));
        }
        if name == "created" || STRING_FIELDS.contains(&name) {
            Ok(Field::Top(name.to_string()))
        } else if name.is_empty() {
            Err(self.error("expected a field name"))
        } else {
            Err(format!("Field `{name}` is an unsupported search field for customers."))
        }
    }

    fn op(&mut self) -> Result<Op, String> {
        let two = self.s.get(self.i..self.i + 2);
        let (op, len) = match (two, self.peek()) {
            (Some(b">="), _) => (Op::Gte, 2),
            (Some(b"<="), _) => (Op::Lte, 2),
            (_, Some(b':')) => (Op::Eq, 1),
            (_, Some(b'=')) => (Op::Eq, 1),
            (_, Some(b'~')) => (Op::Substring, 1),
            (_, Some(b'>')) => (Op::Gt, 1),
            (_, Some(b'<')) => (Op::Lt, 1),
            _ => return Err(self.error("expected one of : ~ > < >= <= =")),
        };
        self.i += len;
        Ok(op)
    }

    fn literal(&mut self) -> Result<Literal, String> {
        match self.peek() {
            Some(b'\'' | b'"') => Ok(Literal::Str(self.quoted()?)),
            Some(b) if b.is_ascii_digit() || b == b'-' => {
                let start = self.i;
                self.i += 1;
                while self.peek().is_some_and(|b| b.is_ascii_digit()) {
                    self.i += 1;
                }
                let text = std::str::from_utf8(&self.s[start..self.i]).expect("ascii");
                text.parse().map(Literal::Num).map_err(|_| self.error("invalid number"))
            }
            _ if self.keyword_at_boundary("null") => Ok(Literal::Null),
            _ => Err(self.error("expected a quoted value, a number or null")),
        }
    }

    fn keyword_at_boundary(&mut self, word: &str) -> bool {
        let end = self.i + word.len();
        let boundary = self.s.get(end).is_none_or(|b| b.is_ascii_whitespace());
        if end <= self.s.len() && &self.s[self.i..end] == word.as_bytes() && boundary {
            self.i = end;
            true
        } else {
            false
        }
    }

    /// `'it\'s'` or `"say \"hi\""`; a backslash escapes the next character.
    fn quoted(&mut self) -> Result<String, String> {
        let quote = match self.peek() {
            Some(q @ (b'\'' | b'"')) => q,
            _ => return Err(self.error("expected a quoted string")),
        };
        self.i += 1;
        let mut out = Vec::new();
        loop {
            match self.peek() {
                None => return Err(self.error("unterminated string")),
                Some(b'\\') if self.i + 1 < self.s.len() => {
                    out.push(self.s[self.i + 1]);
                    self.i += 2;
                }
                Some(b) if b == quote => {
                    self.i += 1;
                    break;
                }
                Some(b) => {
                    out.push(b);
                    self.i += 1;
                }
            }
        }
        String::from_utf8(out).map_err(|_| self.error("invalid UTF-8"))
    }
}

#[cfg(test)]
mod tests {
    use super::*;
    use serde_json::json;

    fn customer() -> Value {
        json!({"email": "Ann@Example.com", "name": "Ann Lee", "phone": null, "created": 1700000000,
               "metadata": {"user_id": "42", "plan": "pro"}})
    }

    fn m(q: &str) -> bool {
        Query::parse(q).unwrap_or_else(|e| panic!("{q}: {e}")).matches(&customer())
    }

    #[test]
    fn metadata_and_email() {
        assert!(m("metadata['user_id']:'42'"));
        assert!(m("metadata[\"user_id\"]:\"42\""));
        assert!(!m("metadata['user_id']:'4'"));
        assert!(m("email:'ann@example.com'"));
        assert!(m("metadata['user_id']:'42' AND email:'ann@example.com'"));
        assert!(m("metadata['user_id']:'42'   email:'ann@example.com'"));
        assert!(!m("metadata['user_id']:'42' and email:'bob@example.com'"));
        assert!(m("metadata['user_id']:'1' OR email:'ann@example.com'"));
    }

    #[test]
    fn negation_null_substring_numbers() {
        assert!(m("-metadata['user_id']:'7'"));
        assert!(m("phone:null"));
        assert!(m("-name:null"));
        assert!(m("metadata['missing']:null"));
        assert!(m("name~'lee'"));
        assert!(m("created>=1700000000 AND created<1700000001"));
        assert!(!m("created>1700000000"));
        assert!(m("metadata['a\\'b']:null"));
    }

    #[test]
    fn rejects_bad_queries() {
        for q in [
            "",
            "metadata['a']:'1' AND email:'x' OR name:'y'",
            "foo:'x'",
            "email:x",
            "email:'x'name:'y'",
            "metadata['a':'1'",
            "email:'unterminated",
            "name~'ab'",
            "created:'x'",
            "email>5",
        ] {
            assert!(Query::parse(q).is_err(), "{q} should be rejected");
        }
    }
}
