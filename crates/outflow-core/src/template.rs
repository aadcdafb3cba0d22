//! Destination templates such as `outbox.event.{aggregate_type}`.
//!
//! A template is parsed once, when the configuration is read; rendering walks the
//! parsed parts and never looks at the template text again.

use std::fmt;
use std::str::FromStr;

use crate::Envelope;

/// A field a template may substitute.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum Field {
    /// `{aggregate_type}`
    AggregateType,
    /// `{aggregate_id}`
    AggregateId,
    /// `{event_type}`
    EventType,
    /// `{collection}`
    Collection,
    /// `{pipeline}`
    Pipeline,
    /// `{op}`
    Op,
}

const FIELDS: [(&str, Field); 6] = [
    ("aggregate_type", Field::AggregateType),
    ("aggregate_id", Field::AggregateId),
    ("event_type", Field::EventType),
    ("collection", Field::Collection),
    ("pipeline", Field::Pipeline),
    ("op", Field::Op),
];

impl Field {
    fn value(self, event: &Envelope) -> &str {
        match self {
            Field::AggregateType => &event.aggregate_type,
            Field::AggregateId => &event.aggregate_id,
            Field::EventType => &event.event_type,
            Field::Collection => &event.source.collection,
            Field::Pipeline => &event.source.pipeline,
            Field::Op => event.op.as_str(),
        }
    }
}

#[derive(Debug, Clone, PartialEq, Eq)]
enum Part {
    Text(String),
    Field(Field),
}

/// A parsed destination template.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct Template {
    source: String,
    parts: Vec<Part>,
}

/// A template that cannot be parsed.
#[derive(Debug, Clone, PartialEq, Eq, thiserror::Error)]
pub enum TemplateError {
    /// A placeholder names no known field.
    #[error(
        "unknown placeholder {{{0}}}; use one of {{aggregate_type}}, {{aggregate_id}}, \
         {{event_type}}, {{collection}}, {{pipeline}}, {{op}}"
    )]
    UnknownField(String),
    /// A `{` has no matching `}`.
    #[error("unclosed '{{' at byte {0}; write '{{{{' for a literal brace")]
    Unclosed(usize),
    /// A `}` has no matching `{`.
    #[error("unmatched '}}' at byte {0}; write '}}}}' for a literal brace")]
    Unmatched(usize),
}

impl Template {
    /// Parses a template. `{{` and `}}` stand for literal braces.
    pub fn parse(text: &str) -> Result<Self, TemplateError> {
        let mut parts = Vec::new();
        let mut literal = String::new();
        let bytes = text.as_bytes();
        let mut i = 0;
        while i < bytes.len() {
            match bytes[i] {
                b'{' if bytes.get(i + 1) == Some(&b'{') => {
                    literal.push('{');
                    i += 2;
                }
                b'}' if bytes.get(i + 1) == Some(&b'}') => {
                    literal.push('}');
                    i += 2;
                }
                b'{' => {
                    let end = text[i..].find('}').ok_or(TemplateError::Unclosed(i))? + i;
                    let name = &text[i + 1..end];
                    let field = FIELDS
                        .iter()
                        .find(|(n, _)| *n == name)
                        .map(|(_, f)| *f)
                        .ok_or_else(|| TemplateError::UnknownField(name.to_string()))?;
                    if !literal.is_empty() {
                        parts.push(Part::Text(std::mem::take(&mut literal)));
                    }
                    parts.push(Part::Field(field));
                    i = end + 1;
                }
                b'}' => return Err(TemplateError::Unmatched(i)),
                _ => {
                    let next = text[i..].find(['{', '}']).map_or(text.len(), |n| n + i);
                    literal.push_str(&text[i..next]);
                    i = next;
                }
            }
        }
        if !literal.is_empty() {
            parts.push(Part::Text(literal));
        }
        Ok(Template {
            source: text.to_string(),
            parts,
        })
    }

    /// The template as written.
    pub fn as_str(&self) -> &str {
        &self.source
    }

    /// Whether the template substitutes nothing.
    pub fn is_constant(&self) -> bool {
        self.parts.iter().all(|p| matches!(p, Part::Text(_)))
    }

    /// The fields this template substitutes.
    pub fn fields(&self) -> impl Iterator<Item = Field> + '_ {
        self.parts.iter().filter_map(|p| match p {
            Part::Field(f) => Some(*f),
            Part::Text(_) => None,
        })
    }

    /// Renders the template for an event into `out` (cleared first).
    pub fn render_into(&self, event: &Envelope, out: &mut String) {
        out.clear();
        for part in &self.parts {
            match part {
                Part::Text(text) => out.push_str(text),
                Part::Field(field) => out.push_str(field.value(event)),
            }
        }
    }

    /// Renders the template for an event.
    pub fn render(&self, event: &Envelope) -> String {
        let mut out = String::with_capacity(self.source.len() + 16);
        self.render_into(event, &mut out);
        out
    }

    /// The template with every placeholder replaced by `*`, for deriving a wildcard
    /// subscription (NATS stream subjects, for example).
    pub fn wildcard(&self, wildcard: &str) -> String {
        let mut out = String::new();
        for part in &self.parts {
            match part {
                Part::Text(text) => out.push_str(text),
                Part::Field(_) => out.push_str(wildcard),
            }
        }
        out
    }
}

impl FromStr for Template {
    type Err = TemplateError;

    fn from_str(s: &str) -> Result<Self, Self::Err> {
        Template::parse(s)
    }
}

impl fmt::Display for Template {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        f.write_str(&self.source)
    }
}

impl<'de> serde::Deserialize<'de> for Template {
    fn deserialize<D: serde::Deserializer<'de>>(deserializer: D) -> Result<Self, D::Error> {
        let text = String::deserialize(deserializer)?;
        Template::parse(&text).map_err(serde::de::Error::custom)
    }
}

impl serde::Serialize for Template {
    fn serialize<S: serde::Serializer>(&self, serializer: S) -> Result<S::Ok, S::Error> {
        serializer.serialize_str(&self.source)
    }
}

#[cfg(test)]
mod tests {
    use super::*;
    use crate::{Op, SourceInfo};

    fn event() -> Envelope {
        Envelope {
            id: "1".into(),
            op: Op::Update,
            aggregate_type: "order".into(),
            aggregate_id: "42".into(),
            event_type: "OrderPaid".into(),
            payload: serde_json::Value::Null.into(),
            key: None,
            before: None,
            after: None,
            headers: Default::default(),
            source: SourceInfo {
                pipeline: "shop".into(),
                collection: "public.outbox".into(),
                ..Default::default()
            },
        }
    }

    #[test]
    fn renders_every_field() {
        let t = Template::parse(
            "{pipeline}.{collection}.{aggregate_type}.{aggregate_id}.{event_type}.{op}",
        )
        .unwrap();
        assert_eq!(
            t.render(&event()),
            "shop.public.outbox.order.42.OrderPaid.update"
        );
        assert!(!t.is_constant());
        assert_eq!(t.fields().count(), 6);
    }

    #[test]
    fn literal_braces_and_constants() {
        let t = Template::parse("a{{b}}c").unwrap();
        assert_eq!(t.render(&event()), "a{b}c");
        assert!(t.is_constant());
        let t = Template::parse("outbox.event.{aggregate_type}").unwrap();
        assert_eq!(t.wildcard("*"), "outbox.event.*");
        assert_eq!(t.to_string(), "outbox.event.{aggregate_type}");
    }

    #[test]
    fn errors_name_the_problem() {
        let err = Template::parse("outbox.{aggregate}").unwrap_err();
        assert_eq!(err, TemplateError::UnknownField("aggregate".into()));
        assert!(err
            .to_string()
            .starts_with("unknown placeholder {aggregate}; use one of"));
        assert_eq!(
            Template::parse("a.{op").unwrap_err(),
            TemplateError::Unclosed(2)
        );
        assert_eq!(
            Template::parse("a}").unwrap_err(),
            TemplateError::Unmatched(1)
        );
    }

    #[test]
    fn render_into_reuses_the_buffer() {
        let t = Template::parse("x.{aggregate_id}").unwrap();
        let mut buf = String::from("garbage");
        t.render_into(&event(), &mut buf);
        assert_eq!(buf, "x.42");
    }
}
