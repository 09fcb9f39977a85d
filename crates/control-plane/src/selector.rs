//! Label and field selectors as Kubernetes reads them (`labelSelector`, `fieldSelector` on
//! lists and watches), over the stored JSON form of an object.
//!
//! Labels: `key=value`, `key==value`, `key!=value`, `key in (a,b)`, `key notin (a,b)`, `key`
//! and `!key`, joined by commas; `!=` and `notin` also match objects without the label. Fields:
//! `field=value`, `field==value`, `field!=value` joined by commas, with `\,` `\=` `\\` escapes
//! (what kubectl writes); the fields are `metadata.name` and `metadata.namespace` for every
//! kind, and for Events those `kubectl describe` finds them by (`involvedObject.*`) plus
//! `reason`, `type` and `source`. Any other field is refused as Kubernetes refuses it.

use serde_json::Value;
use tandem_objects::Kind;

/// A selector that cannot be read, or names a field this kind cannot be selected by.
#[derive(Debug, Clone, PartialEq, Eq, thiserror::Error)]
pub enum SelectorError {
    #[error("unable to parse requirement: {0}")]
    Label(String),
    #[error("invalid selector: '{0}'; can't understand '{1}'")]
    Field(String, String),
    #[error("field label not supported: {0}")]
    UnsupportedField(String),
}

#[derive(Debug, Clone, PartialEq, Eq)]
enum LabelRequirement {
    Equals(String, String),
    NotEquals(String, String),
    In(String, Vec<String>),
    NotIn(String, Vec<String>),
    Exists(String),
    DoesNotExist(String),
}

impl LabelRequirement {
    fn matches(&self, labels: &Value) -> bool {
        let value = |key: &str| labels.get(key).and_then(Value::as_str);
        match self {
            LabelRequirement::Equals(key, wanted) => value(key) == Some(wanted.as_str()),
            LabelRequirement::NotEquals(key, unwanted) => value(key) != Some(unwanted.as_str()),
            LabelRequirement::In(key, set) => {
                value(key).is_some_and(|v| set.iter().any(|s| s == v))
            }
            LabelRequirement::NotIn(key, set) => {
                value(key).is_none_or(|v| set.iter().all(|s| s != v))
            }
            LabelRequirement::Exists(key) => value(key).is_some(),
            LabelRequirement::DoesNotExist(key) => value(key).is_none(),
        }
    }
}

/// A parsed `labelSelector`; the empty one matches everything.
#[derive(Debug, Clone, Default, PartialEq, Eq)]
pub struct LabelSelector(Vec<LabelRequirement>);

impl LabelSelector {
    pub fn parse(text: &str) -> Result<LabelSelector, SelectorError> {
        split_top_level(text)
            .into_iter()
            .map(str::trim)
            .filter(|part| !part.is_empty())
            .map(requirement)
            .collect::<Result<_, _>>()
            .map(LabelSelector)
    }

    /// Whether the object (its stored JSON) has the labels asked for.
    pub fn matches(&self, object: &Value) -> bool {
        let labels = &object["metadata"]["labels"];
        self.0.iter().all(|requirement| requirement.matches(labels))
    }
}

/// Splits at the commas outside parentheses: `a in (x,y),b` is two requirements.
fn split_top_level(text: &str) -> Vec<&str> {
    let mut parts = Vec::new();
    let (mut depth, mut start) = (0usize, 0);
    for (at, c) in text.char_indices() {
        match c {
            '(' => depth += 1,
            ')' => depth = depth.saturating_sub(1),
            ',' if depth == 0 => {
                parts.push(&text[start..at]);
                start = at + 1;
            }
            _ => {}
        }
    }
    parts.push(&text[start..]);
    parts
}

fn requirement(part: &str) -> Result<LabelRequirement, SelectorError> {
    let bad = || SelectorError::Label(part.to_string());
    let key = |key: &str| -> Result<String, SelectorError> {
        let key = key.trim();
        let valid = !key.is_empty()
            && key
                .chars()
                .all(|c| c.is_ascii_alphanumeric() || "-_./".contains(c));
        if valid {
            Ok(key.to_string())
        } else {
            Err(bad())
        }
    };
    let value = |value: &str| -> Result<String, SelectorError> {
        let value = value.trim();
        let valid = value
            .chars()
            .all(|c| c.is_ascii_alphanumeric() || "-_.".contains(c));
        if valid {
            Ok(value.to_string())
        } else {
            Err(bad())
        }
    };
    if let Some(rest) = part.strip_prefix('!') {
        return Ok(LabelRequirement::DoesNotExist(key(rest)?));
    }
    if let Some(open) = part.find('(') {
        let close = part.strip_suffix(')').ok_or_else(bad)?;
        let set = close[open + 1..]
            .split(',')
            .map(value)
            .collect::<Result<Vec<_>, _>>()?;
        let head = part[..open].trim_end();
        if let Some(name) = head.strip_suffix("notin") {
            return Ok(LabelRequirement::NotIn(key(name)?, set));
        }
        if let Some(name) = head.strip_suffix("in") {
            if name.ends_with(char::is_whitespace) {
                return Ok(LabelRequirement::In(key(name)?, set));
            }
        }
        return Err(bad());
    }
    if let Some((name, wanted)) = part.split_once("!=") {
        return Ok(LabelRequirement::NotEquals(key(name)?, value(wanted)?));
    }
    if let Some((name, wanted)) = part.split_once("==").or_else(|| part.split_once('=')) {
        return Ok(LabelRequirement::Equals(key(name)?, value(wanted)?));
    }
    Ok(LabelRequirement::Exists(key(part)?))
}

/// A field of an object that can be selected on, and where its value is in the JSON form.
fn field_path(kind: Kind, field: &str) -> Option<&'static [&'static str]> {
    let common: Option<&'static [&'static str]> = match field {
        "metadata.name" => Some(&["metadata", "name"]),
        "metadata.namespace" => Some(&["metadata", "namespace"]),
        _ => None,
    };
    if common.is_some() || kind != Kind::Event {
        return common;
    }
    Some(match field {
        "involvedObject.kind" => &["involvedObject", "kind"],
        "involvedObject.namespace" => &["involvedObject", "namespace"],
        "involvedObject.name" => &["involvedObject", "name"],
        "involvedObject.uid" => &["involvedObject", "uid"],
        "involvedObject.apiVersion" => &["involvedObject", "apiVersion"],
        "involvedObject.resourceVersion" => &["involvedObject", "resourceVersion"],
        "involvedObject.fieldPath" => &["involvedObject", "fieldPath"],
        "reason" => &["reason"],
        "type" => &["type"],
        "source" => &["source", "component"],
        _ => return None,
    })
}

#[derive(Debug, Clone, PartialEq, Eq)]
struct FieldRequirement {
    path: &'static [&'static str],
    value: String,
    equal: bool,
}

/// A parsed `fieldSelector` for one kind; the empty one matches everything.
#[derive(Debug, Clone, Default, PartialEq, Eq)]
pub struct FieldSelector(Vec<FieldRequirement>);

impl FieldSelector {
    pub fn parse(kind: Kind, text: &str) -> Result<FieldSelector, SelectorError> {
        let mut requirements = Vec::new();
        for part in split_unescaped(text, ',') {
            if part.is_empty() {
                continue;
            }
            let (field, value, equal) =
                if let Some((field, value)) = split_once_unescaped(&part, "!=") {
                    (field, value, false)
                } else if let Some((field, value)) = split_once_unescaped(&part, "==") {
                    (field, value, true)
                } else if let Some((field, value)) = split_once_unescaped(&part, "=") {
                    (field, value, true)
                } else {
                    return Err(SelectorError::Field(text.to_string(), part));
                };
            let field = field.trim();
            let path = field_path(kind, field)
                .ok_or_else(|| SelectorError::UnsupportedField(field.into()))?;
            requirements.push(FieldRequirement {
                path,
                value: unescape(value),
                equal,
            });
        }
        Ok(FieldSelector(requirements))
    }

    pub fn matches(&self, object: &Value) -> bool {
        self.0.iter().all(|requirement| {
            let value = requirement
                .path
                .iter()
                .fold(object, |value, step| &value[*step]);
            let value = value.as_str().unwrap_or_default();
            (value == requirement.value) == requirement.equal
        })
    }
}

/// Splits at `separator` where it is not escaped by a backslash; escapes are kept.
fn split_unescaped(text: &str, separator: char) -> Vec<String> {
    let mut parts = vec![String::new()];
    let mut escaped = false;
    for c in text.chars() {
        let current = parts.last_mut().expect("never empty");
        if escaped {
            current.push(c);
            escaped = false;
        } else if c == '\\' {
            current.push(c);
            escaped = true;
        } else if c == separator {
            parts.push(String::new());
        } else {
            current.push(c);
        }
    }
    parts
}

/// The text before and after the first unescaped `operator`.
fn split_once_unescaped<'a>(text: &'a str, operator: &str) -> Option<(&'a str, &'a str)> {
    let mut escaped = false;
    for (at, c) in text.char_indices() {
        if escaped {
            escaped = false;
        } else if c == '\\' {
            escaped = true;
        } else if text[at..].starts_with(operator) {
            return Some((&text[..at], &text[at + operator.len()..]));
        }
    }
    None
}

fn unescape(text: &str) -> String {
    let mut out = String::with_capacity(text.len());
    let mut chars = text.chars();
    while let Some(c) = chars.next() {
        match c {
            '\\' => out.extend(chars.next()),
            c => out.push(c),
        }
    }
    out
}

#[cfg(test)]
mod tests {
    use serde_json::json;

    use super::*;

    fn labeled(labels: Value) -> Value {
        json!({"metadata": {"name": "a", "namespace": "openebs", "labels": labels}})
    }

    #[test]
    fn label_selectors_of_every_form() {
        let object = labeled(json!({"app": "db", "tier": "gold"}));
        let bare = json!({"metadata": {"name": "b"}});
        let table: &[(&str, bool, bool)] = &[
            ("", true, true),
            ("app=db", true, false),
            ("app==db", true, false),
            ("app=web", false, false),
            ("app!=web", true, true),
            ("app in (db, web)", true, false),
            ("app notin (web)", true, true),
            ("app notin (db)", false, true),
            ("tier", true, false),
            ("!tier", false, true),
            ("app=db,tier=gold", true, false),
            ("app in (db,web),tier", true, false),
            ("app=db,tier=silver", false, false),
        ];
        for (text, on_object, on_bare) in table {
            let selector = LabelSelector::parse(text).expect(text);
            assert_eq!(selector.matches(&object), *on_object, "{text} on labeled");
            assert_eq!(selector.matches(&bare), *on_bare, "{text} on bare");
        }
        for bad in ["app=db=x", "app in db", "=x", "app in (a,b", "a b=c"] {
            assert!(LabelSelector::parse(bad).is_err(), "{bad}");
        }
    }

    #[test]
    fn field_selectors_as_kubectl_describe_writes_them() {
        let event = json!({
            "metadata": {"name": "pvc-1.abc", "namespace": "openebs"},
            "involvedObject": {"kind": "CStorVolumeConfig", "name": "pvc-1", "namespace": "openebs", "uid": "u-1"},
            "reason": "Synced",
            "type": "Normal",
        });
        let described = "involvedObject.kind=CStorVolumeConfig,involvedObject.name=pvc-1,\
                         involvedObject.namespace=openebs,involvedObject.uid=u-1";
        let selector = FieldSelector::parse(Kind::Event, described).unwrap();
        assert!(selector.matches(&event));
        let other = FieldSelector::parse(Kind::Event, "involvedObject.uid=u-2").unwrap();
        assert!(!other.matches(&event));
        let negated = FieldSelector::parse(Kind::Event, "type!=Warning,reason==Synced").unwrap();
        assert!(negated.matches(&event));
        let escaped = FieldSelector::parse(Kind::Event, r"metadata.name=pvc-1.abc\,x").unwrap();
        assert!(!escaped.matches(&event));
        assert_eq!(escaped.0[0].value, "pvc-1.abc,x");
    }

    #[test]
    fn unsupported_fields_are_refused_as_kubernetes_does() {
        let named = FieldSelector::parse(Kind::CStorVolumeConfig, "metadata.name=pvc-1").unwrap();
        assert!(named.matches(&json!({"metadata": {"name": "pvc-1"}})));
        assert!(!named.matches(&json!({"metadata": {"name": "pvc-2"}})));
        assert_eq!(
            FieldSelector::parse(Kind::CStorVolumeConfig, "status.phase=Bound")
                .unwrap_err()
                .to_string(),
            "field label not supported: status.phase"
        );
        assert_eq!(
            FieldSelector::parse(Kind::CStorVolumeConfig, "involvedObject.name=x")
                .unwrap_err()
                .to_string(),
            "field label not supported: involvedObject.name"
        );
        assert!(FieldSelector::parse(Kind::Event, "reason").is_err());
    }
}
