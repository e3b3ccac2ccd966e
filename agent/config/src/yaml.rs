//! One YAML document as a tree that remembers the line of every value, so
//! that a problem found anywhere (a typed field, a cross-object check) can
//! be reported at its line; and that tree as JSON, for typed decoding with
//! field paths.
use std::collections::BTreeMap;

use serde::{
    Deserialize, Deserializer,
    de::{MapAccess, SeqAccess, Visitor},
};
use serde_saphyr::Spanned;

/// A YAML value with the 1-based line it starts on, and for a mapping's
/// value the line of its key (where a user looks for the field).
#[derive(Debug, Clone)]
pub struct Node {
    pub line: u64,
    pub key_line: Option<u64>,
    pub value: Value,
}

#[derive(Debug, Clone)]
pub enum Value {
    Null,
    Bool(bool),
    Int(i64),
    Uint(u64),
    Float(f64),
    Str(String),
    Seq(Vec<Node>),
    Map(BTreeMap<String, Node>),
}

/// Parses one document.
pub fn parse(doc: &str) -> Result<Node, serde_saphyr::Error> {
    let spanned: Spanned<Value> = serde_saphyr::from_str(doc)?;
    Ok(Node::from(spanned))
}

impl From<Spanned<Value>> for Node {
    fn from(s: Spanned<Value>) -> Self {
        Node {
            line: s.referenced.line(),
            key_line: None,
            value: s.value,
        }
    }
}

impl Node {
    /// The line of the deepest field present along `path` (its key's line):
    /// a missing field is reported where its parent is.
    pub fn line_of(&self, path: &str) -> u64 {
        let mut node = self;
        for step in steps(path) {
            let next = match (step, &node.value) {
                (Step::Key(k), Value::Map(m)) => m.get(k),
                (Step::Index(i), Value::Seq(s)) => s.get(i),
                _ => None,
            };
            match next {
                Some(n) => node = n,
                None => break,
            }
        }
        node.key_line.unwrap_or(node.line)
    }

    /// The objects of a Kubernetes `List` (`apiVersion: v1`, `kind: List`,
    /// `items`), or `None` when this is not one.
    pub fn list_items(&self) -> Option<Vec<Node>> {
        let Value::Map(fields) = &self.value else {
            return None;
        };
        let text = |key: &str| match fields.get(key).map(|n| &n.value) {
            Some(Value::Str(s)) => Some(s.as_str()),
            _ => None,
        };
        if text("apiVersion") != Some("v1") || text("kind") != Some("List") {
            return None;
        }
        match fields.get("items").map(|n| &n.value) {
            Some(Value::Seq(items)) => Some(items.clone()),
            _ => Some(Vec::new()),
        }
    }

    /// A tree for an object that came as JSON (from an API server): every
    /// value is on line 1, there being no file.
    pub fn from_json(json: &serde_json::Value) -> Node {
        use serde_json::Value as J;
        let value = match json {
            J::Null => Value::Null,
            J::Bool(b) => Value::Bool(*b),
            J::Number(n) => match (n.as_i64(), n.as_u64(), n.as_f64()) {
                (Some(i), _, _) => Value::Int(i),
                (None, Some(u), _) => Value::Uint(u),
                (_, _, f) => Value::Float(f.unwrap_or_default()),
            },
            J::String(s) => Value::Str(s.clone()),
            J::Array(items) => Value::Seq(items.iter().map(Node::from_json).collect()),
            J::Object(m) => Value::Map(
                m.iter()
                    .map(|(k, v)| (k.clone(), Node::from_json(v)))
                    .collect(),
            ),
        };
        Node {
            line: 1,
            key_line: None,
            value,
        }
    }

    /// The same tree as JSON (map keys stay strings).
    pub fn to_json(&self) -> serde_json::Value {
        use serde_json::Value as J;
        match &self.value {
            Value::Null => J::Null,
            Value::Bool(b) => J::Bool(*b),
            Value::Int(i) => J::from(*i),
            Value::Uint(u) => J::from(*u),
            Value::Float(f) => serde_json::Number::from_f64(*f).map_or(J::Null, J::Number),
            Value::Str(s) => J::String(s.clone()),
            Value::Seq(items) => J::Array(items.iter().map(Node::to_json).collect()),
            Value::Map(m) => J::Object(m.iter().map(|(k, v)| (k.clone(), v.to_json())).collect()),
        }
    }
}

enum Step<'a> {
    Key(&'a str),
    Index(usize),
}

/// `a.b[2].c` -> a, b, 2, c. Keys with dots (label keys) cannot be
/// addressed this way; their parent's line is used instead.
fn steps(path: &str) -> impl Iterator<Item = Step<'_>> {
    path.split('.').filter(|s| !s.is_empty()).flat_map(|part| {
        let (key, indices) = match part.find('[') {
            Some(i) => (&part[..i], &part[i..]),
            None => (part, ""),
        };
        let key = (!key.is_empty()).then_some(Step::Key(key));
        let indices = indices
            .split(['[', ']'])
            .filter_map(|i| i.parse().ok())
            .map(Step::Index);
        key.into_iter().chain(indices)
    })
}

impl<'de> Deserialize<'de> for Value {
    fn deserialize<D: Deserializer<'de>>(d: D) -> Result<Self, D::Error> {
        d.deserialize_any(ValueVisitor)
    }
}

struct ValueVisitor;

impl<'de> Visitor<'de> for ValueVisitor {
    type Value = Value;

    fn expecting(&self, f: &mut std::fmt::Formatter) -> std::fmt::Result {
        f.write_str("a YAML value")
    }
    fn visit_unit<E>(self) -> Result<Value, E> {
        Ok(Value::Null)
    }
    fn visit_none<E>(self) -> Result<Value, E> {
        Ok(Value::Null)
    }
    fn visit_some<D: Deserializer<'de>>(self, d: D) -> Result<Value, D::Error> {
        Value::deserialize(d)
    }
    fn visit_bool<E>(self, v: bool) -> Result<Value, E> {
        Ok(Value::Bool(v))
    }
    fn visit_i64<E>(self, v: i64) -> Result<Value, E> {
        Ok(Value::Int(v))
    }
    fn visit_u64<E>(self, v: u64) -> Result<Value, E> {
        Ok(Value::Uint(v))
    }
    fn visit_f64<E>(self, v: f64) -> Result<Value, E> {
        Ok(Value::Float(v))
    }
    fn visit_str<E>(self, v: &str) -> Result<Value, E> {
        Ok(Value::Str(v.to_string()))
    }
    fn visit_string<E>(self, v: String) -> Result<Value, E> {
        Ok(Value::Str(v))
    }
    fn visit_seq<A: SeqAccess<'de>>(self, mut seq: A) -> Result<Value, A::Error> {
        let mut items = Vec::new();
        while let Some(item) = seq.next_element::<Spanned<Value>>()? {
            items.push(Node::from(item));
        }
        Ok(Value::Seq(items))
    }
    fn visit_map<A: MapAccess<'de>>(self, mut map: A) -> Result<Value, A::Error> {
        let mut out = BTreeMap::new();
        while let Some(key) = map.next_key::<Spanned<KeyString>>()? {
            let mut value = Node::from(map.next_value::<Spanned<Value>>()?);
            value.key_line = Some(key.referenced.line());
            out.insert(key.value.0, value);
        }
        Ok(Value::Map(out))
    }
}

/// Map keys as text whatever their YAML type (`80:` is a number key in
/// YAML, a port name in portLevelMtls).
struct KeyString(String);

impl<'de> Deserialize<'de> for KeyString {
    fn deserialize<D: Deserializer<'de>>(d: D) -> Result<Self, D::Error> {
        match Value::deserialize(d)? {
            Value::Str(s) => Ok(KeyString(s)),
            Value::Int(i) => Ok(KeyString(i.to_string())),
            Value::Uint(u) => Ok(KeyString(u.to_string())),
            Value::Bool(b) => Ok(KeyString(b.to_string())),
            Value::Float(f) => Ok(KeyString(f.to_string())),
            Value::Null => Ok(KeyString(String::new())),
            Value::Seq(_) | Value::Map(_) => {
                Err(serde::de::Error::custom("a mapping key must be a scalar"))
            }
        }
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    const DOC: &str = "\
apiVersion: v1
kind: Service
metadata:
  name: reviews
spec:
  ports:
  - name: http
    port: 9080
  - name: grpc
    port: 9090
  selector:
    app: reviews
";

    #[test]
    fn every_value_knows_its_line() {
        let tree = parse(DOC).unwrap();
        assert_eq!(tree.line_of("spec.ports[1].port"), 10);
        assert_eq!(tree.line_of("spec.ports[0]"), 7);
        assert_eq!(tree.line_of("spec.selector.app"), 12);
        assert_eq!(tree.line_of("spec.missing.deeper"), 5, "falls back to spec");
        assert_eq!(tree.line_of("kind"), 2);
    }

    #[test]
    fn converts_to_json() {
        let json = parse(DOC).unwrap().to_json();
        assert_eq!(json["spec"]["ports"][1]["port"], 9090);
        assert_eq!(json["metadata"]["name"], "reviews");
    }

    #[test]
    fn number_keys_become_text() {
        let tree = parse("portLevelMtls:\n  8080:\n    mode: STRICT\n").unwrap();
        assert_eq!(tree.to_json()["portLevelMtls"]["8080"]["mode"], "STRICT");
    }
}
