//! Placement constraints: `node.labels.region==eu`, `node.hostname != a`,
//! `node.labels.zone in (a, b)`, `node.labels.gpu exists`.
//!
//! Parsed and validated when a task is submitted; the placement engine
//! evaluates them against node attributes with [`Constraint::matches`].

use std::fmt;

/// How a constraint compares a node attribute.
#[derive(Debug, Clone, PartialEq, Eq)]
pub enum Operator {
    Equal(String),
    NotEqual(String),
    In(Vec<String>),
    NotIn(Vec<String>),
    Exists,
    NotExists,
}

/// One parsed constraint on a node attribute.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct Constraint {
    /// `node.id`, `node.hostname`, `node.pool` or `node.labels.KEY`.
    pub attribute: String,
    pub operator: Operator,
}

/// Why a constraint expression could not be parsed.
#[derive(Debug, Clone, PartialEq, Eq, thiserror::Error)]
pub enum ConstraintError {
    #[error("empty constraint")]
    Empty,
    #[error("unknown attribute `{0}`; use node.id, node.hostname, node.pool or node.labels.KEY")]
    UnknownAttribute(String),
    #[error("no operator in `{0}`; use ==, !=, in (...), not in (...), exists or not exists")]
    NoOperator(String),
    #[error("missing value after `{0}`")]
    MissingValue(String),
    #[error("invalid value `{0}`: use letters, digits and . _ - / :")]
    InvalidValue(String),
}

const ATTRIBUTES: [&str; 3] = ["node.id", "node.hostname", "node.pool"];

impl Constraint {
    /// Parses one expression.
    pub fn parse(input: &str) -> Result<Constraint, ConstraintError> {
        let text = input.trim();
        if text.is_empty() {
            return Err(ConstraintError::Empty);
        }
        for (symbol, is_equal) in [("==", true), ("!=", false)] {
            if let Some((attribute, value)) = text.split_once(symbol) {
                let attribute = parse_attribute(attribute)?;
                let value = parse_value(value, symbol)?;
                let operator = if is_equal { Operator::Equal(value) } else { Operator::NotEqual(value) };
                return Ok(Constraint { attribute, operator });
            }
        }
        let mut words = text.splitn(2, char::is_whitespace);
        let attribute = parse_attribute(words.next().unwrap_or_default())?;
        let rest = words.next().unwrap_or_default().trim();
        let operator = if rest == "exists" {
            Operator::Exists
        } else if rest == "not exists" || rest.split_whitespace().eq(["not", "exists"]) {
            Operator::NotExists
        } else if let Some(list) = rest.strip_prefix("not in") {
            Operator::NotIn(parse_list(list, "not in")?)
        } else if let Some(list) = rest.strip_prefix("in") {
            Operator::In(parse_list(list, "in")?)
        } else {
            return Err(ConstraintError::NoOperator(text.to_string()));
        };
        Ok(Constraint { attribute, operator })
    }

    /// Whether a node satisfies the constraint; `lookup` gives the node's
    /// value of an attribute, `None` when it has none.
    pub fn matches<'a>(&self, lookup: impl Fn(&str) -> Option<&'a str>) -> bool {
        let value = lookup(&self.attribute);
        match &self.operator {
            Operator::Equal(want) => value == Some(want.as_str()),
            Operator::NotEqual(want) => value != Some(want.as_str()),
            Operator::In(list) => value.is_some_and(|v| list.iter().any(|w| w == v)),
            Operator::NotIn(list) => !value.is_some_and(|v| list.iter().any(|w| w == v)),
            Operator::Exists => value.is_some(),
            Operator::NotExists => value.is_none(),
        }
    }
}

impl fmt::Display for Constraint {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        let a = &self.attribute;
        match &self.operator {
            Operator::Equal(v) => write!(f, "{a}=={v}"),
            Operator::NotEqual(v) => write!(f, "{a}!={v}"),
            Operator::In(l) => write!(f, "{a} in ({})", l.join(", ")),
            Operator::NotIn(l) => write!(f, "{a} not in ({})", l.join(", ")),
            Operator::Exists => write!(f, "{a} exists"),
            Operator::NotExists => write!(f, "{a} not exists"),
        }
    }
}

fn parse_attribute(raw: &str) -> Result<String, ConstraintError> {
    let attribute = raw.trim();
    if attribute.is_empty() {
        return Err(ConstraintError::Empty);
    }
    let known = ATTRIBUTES.contains(&attribute)
        || attribute.strip_prefix("node.labels.").is_some_and(|key| !key.is_empty() && key.chars().all(is_value_char));
    if known {
        Ok(attribute.to_string())
    } else {
        Err(ConstraintError::UnknownAttribute(attribute.to_string()))
    }
}

fn is_value_char(c: char) -> bool {
    c.is_ascii_alphanumeric() || matches!(c, '.' | '_' | '-' | '/' | ':')
}

fn parse_value(raw: &str, after: &str) -> Result<String, ConstraintError> {
    let value = raw.trim().trim_matches('"');
    if value.is_empty() {
        return Err(ConstraintError::MissingValue(after.to_string()));
    }
    if !value.chars().all(is_value_char) {
        return Err(ConstraintError::InvalidValue(value.to_string()));
    }
    Ok(value.to_string())
}

fn parse_list(raw: &str, after: &str) -> Result<Vec<String>, ConstraintError> {
    let inner = raw.trim();
    let inner = inner.strip_prefix('(').and_then(|s| s.strip_suffix(')')).unwrap_or(inner);
    let values: Vec<String> = inner.split(',').map(|v| parse_value(v, after)).collect::<Result<_, _>>()?;
    Ok(values)
}

#[cfg(test)]
mod tests {
    use super::*;

    fn labels<'a>(pairs: &'a [(&'a str, &'a str)]) -> impl Fn(&str) -> Option<&'a str> + 'a {
        move |attr| pairs.iter().find(|(k, _)| *k == attr).map(|(_, v)| *v)
    }

    #[test]
    fn parses_every_operator() {
        let c = Constraint::parse("node.labels.region==eu").unwrap();
        assert_eq!(c.operator, Operator::Equal("eu".into()));
        assert_eq!(Constraint::parse(" node.hostname != a ").unwrap().operator, Operator::NotEqual("a".into()));
        assert_eq!(Constraint::parse("node.labels.zone in (a, b)").unwrap().operator, Operator::In(vec!["a".into(), "b".into()]));
        assert_eq!(Constraint::parse("node.labels.zone not in (c)").unwrap().operator, Operator::NotIn(vec!["c".into()]));
        assert_eq!(Constraint::parse("node.labels.gpu exists").unwrap().operator, Operator::Exists);
        assert_eq!(Constraint::parse("node.labels.gpu not exists").unwrap().operator, Operator::NotExists);
    }

    #[test]
    fn rejects_bad_expressions() {
        assert_eq!(Constraint::parse(""), Err(ConstraintError::Empty));
        assert!(matches!(Constraint::parse("region==eu"), Err(ConstraintError::UnknownAttribute(_))));
        assert!(matches!(Constraint::parse("node.labels.region"), Err(ConstraintError::NoOperator(_))));
        assert!(matches!(Constraint::parse("node.labels.region=="), Err(ConstraintError::MissingValue(_))));
        assert!(matches!(Constraint::parse("node.labels.region==e u"), Err(ConstraintError::InvalidValue(_))));
        assert!(matches!(Constraint::parse("node.labels.zone in ()"), Err(ConstraintError::MissingValue(_))));
    }

    #[test]
    fn evaluates_against_node_attributes() {
        let node = [("node.labels.region", "eu"), ("node.hostname", "h1")];
        assert!(Constraint::parse("node.labels.region==eu").unwrap().matches(labels(&node)));
        assert!(!Constraint::parse("node.labels.region!=eu").unwrap().matches(labels(&node)));
        assert!(Constraint::parse("node.labels.region in (us, eu)").unwrap().matches(labels(&node)));
        assert!(Constraint::parse("node.labels.zone not in (a)").unwrap().matches(labels(&node)));
        assert!(!Constraint::parse("node.labels.gpu exists").unwrap().matches(labels(&node)));
        assert!(Constraint::parse("node.hostname==h1").unwrap().matches(labels(&node)));
    }

    #[test]
    fn display_round_trips() {
        for text in ["node.labels.a==b", "node.pool!=x", "node.labels.z in (a, b)", "node.id exists"] {
            let c = Constraint::parse(text).unwrap();
            assert_eq!(Constraint::parse(&c.to_string()).unwrap(), c);
        }
    }
}
