//! Decoding request bodies: JSON into a type, and on failure the path of
//! the field that was wrong (via `serde_path_to_error`), so the API can
//! answer 400 naming it. Pure, so it can be fuzzed on its own.

use serde::de::DeserializeOwned;

/// Why a body could not be decoded.
#[derive(Debug, Clone, PartialEq, Eq, thiserror::Error)]
#[error("{field}: {message}")]
pub struct DecodeError {
    /// The body is not JSON at all (as opposed to JSON with a wrong field).
    pub malformed: bool,
    /// The offending field's path, or `body`.
    pub field: String,
    pub message: String,
}

/// Turns a serde error at `path` into the field it is about: serde reports
/// a missing field at its parent, with the name in backticks.
fn field_of(path: &str, message: &str) -> String {
    let named = message.strip_prefix("missing field `").and_then(|rest| rest.split('`').next());
    match (path, named) {
        (".", Some(name)) | ("", Some(name)) => name.to_string(),
        (".", None) | ("", None) => "body".to_string(),
        (path, Some(name)) => format!("{path}.{name}"),
        (path, None) => path.to_string(),
    }
}

/// Serde's messages name Rust types ("expected struct TaskSpec"): say
/// what JSON was expected instead.
fn plain(message: &str) -> String {
    let mut out = message.to_string();
    while let Some(start) = out.find("struct ") {
        let end = out[start + 7..].find(|c: char| !(c.is_alphanumeric() || c == '_')).map_or(out.len(), |i| start + 7 + i);
        out.replace_range(start..end, "a JSON object");
    }
    out.replace("a sequence", "a JSON array").replace("a map", "a JSON object")
}

/// Decodes one JSON object (and nothing after it), naming the field on
/// failure. Every Shepherd request body is an object: an array or a bare
/// value is refused before serde could read it by position.
pub fn decode_json<T: DeserializeOwned>(bytes: &[u8]) -> Result<T, DecodeError> {
    match bytes.iter().find(|b| !b.is_ascii_whitespace()) {
        Some(b'{') => {}
        Some(_) => {
            return Err(DecodeError {
                malformed: false,
                field: "body".into(),
                message: "the request body must be a JSON object ({...})".into(),
            })
        }
        None => {
            return Err(DecodeError {
                malformed: true,
                field: "body".into(),
                message: "the request body is empty; send a JSON object".into(),
            })
        }
    }
    let mut deserializer = serde_json::Deserializer::from_slice(bytes);
    let value = serde_path_to_error::deserialize(crate::strict::Strict(&mut deserializer)).map_err(|e| {
        let message = plain(&e.inner().to_string());
        if e.inner().is_syntax() || e.inner().is_eof() {
            return DecodeError { malformed: true, field: "body".into(), message: format!("request body is not valid JSON: {message}") };
        }
        DecodeError { malformed: false, field: field_of(&e.path().to_string(), &message), message }
    })?;
    deserializer.end().map_err(|e| DecodeError {
        malformed: true,
        field: "body".into(),
        message: format!("trailing data after the JSON body: {e}"),
    })?;
    Ok(value)
}

#[cfg(test)]
mod tests {
    use super::*;
    use crate::TaskSpec;

    #[test]
    fn errors_name_the_field() {
        let e = decode_json::<TaskSpec>(br#"{"image": "x", "resources": {"cpu_millicores": "lots"}}"#).unwrap_err();
        assert_eq!(e.field, "resources.cpu_millicores");
        assert!(!e.malformed);
        let e = decode_json::<TaskSpec>(br#"{"image": 5}"#).unwrap_err();
        assert_eq!(e.field, "image");
        let e = decode_json::<TaskSpec>(b"{").unwrap_err();
        assert!(e.malformed);
        let e = decode_json::<TaskSpec>(br#"{"image": "x"} {}"#).unwrap_err();
        assert!(e.malformed);
    }

    #[test]
    fn only_objects_are_bodies_and_messages_name_no_rust_types() {
        let e = decode_json::<TaskSpec>(br#"["busybox"]"#).unwrap_err();
        assert_eq!((e.field.as_str(), e.message.as_str()), ("body", "the request body must be a JSON object ({...})"));
        assert!(decode_json::<TaskSpec>(b"  \"busybox\"").is_err());
        let e = decode_json::<TaskSpec>(br#"{"image": "x", "resources": [1]}"#).unwrap_err();
        assert_eq!(e.field, "resources");
        assert!(!e.message.contains("struct") && e.message.contains("a JSON object"), "{}", e.message);
    }
}
