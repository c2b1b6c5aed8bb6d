//! The event envelope: CloudEvents 1.0 in Kafka binary mode, deterministic ids and pseudonymous keys.
//!
//! Guarantees:
//! - every doudi message carries `ce_id`, `ce_source`, `ce_type`, `ce_time`, `ce_specversion` (1.0),
//!   `ce_dataschema` and `content-type: application/json` headers; the value is the JSON data;
//! - `ce_id` is a UUID (v5) derived from the source, the source record's identity and the data's
//!   canonical JSON, so replaying the same input yields the same ids and consumers can drop
//!   duplicates; different content under the same identity gets a different id;
//! - the message key is the hex HMAC-SHA-256 of the normalised ID number under a configured secret:
//!   partitioning is per person and no ID number appears in a key.

use chrono::{DateTime, SecondsFormat, Utc};
use hmac::{KeyInit, Mac};
use rdkafka::message::{BorrowedHeaders, Header, Headers, OwnedHeaders};
use serde_json::Value;
use sha2::Sha256;

use crate::config::KeySettings;
use crate::idnum::IdNumber;

/// Namespace of doudi's v5 event ids.
const EVENT_NAMESPACE: uuid::Uuid = uuid::Uuid::from_u128(0x6b1d_0f2a_94c1_4b7e_9a53_2e1c_d0a8_7f41);
pub const SPEC_VERSION: &str = "1.0";
pub const CONTENT_TYPE: &str = "application/json";

/// The CloudEvents attributes of one message.
#[derive(Clone, Debug, PartialEq, Eq)]
pub struct Envelope {
    pub id: String,
    /// URI-reference of the producer, e.g. `doudi://connector/edu-student`.
    pub source: String,
    /// Reverse-DNS event type, e.g. `cn.gov.jl.doudi.dept.edu.student.v1`.
    pub kind: String,
    pub time: DateTime<Utc>,
    /// The schema `$id` of the data.
    pub dataschema: String,
}

#[derive(Debug, thiserror::Error, PartialEq, Eq)]
pub enum EnvelopeError {
    #[error("message lacks the `{0}` header")]
    Missing(&'static str),
    #[error("header `{0}` is not valid: {1}")]
    Invalid(&'static str, String),
}

/// The deterministic event id of a record: same source, identity and content, same id. The data is
/// hashed as [`event_id_for_payload`] hashes its serialisation, written straight into the hash
/// instead of into a string first.
pub fn event_id(source: &str, record_identity: &str, data: &Value) -> String {
    let mut hash = HashWriter(<Sha256 as sha2::Digest>::new());
    // Writing into a hash cannot fail, and a `Value` always serialises.
    let _ = serde_json::to_writer(&mut hash, data);
    id_from_digest(source, record_identity, &sha2::Digest::finalize(hash.0))
}

/// As [`event_id`], from the serialised data. serde_json writes object keys in sorted order (its
/// map is ordered), so the serialisation is canonical and equal data gives equal bytes.
pub fn event_id_for_payload(source: &str, record_identity: &str, payload: &[u8]) -> String {
    id_from_digest(source, record_identity, &<Sha256 as sha2::Digest>::digest(payload))
}

/// The v5 id of `<source>\n<identity>\n<lower-hex SHA-256 of the payload>`, built in one buffer.
fn id_from_digest(source: &str, record_identity: &str, digest: &[u8]) -> String {
    let mut name = Vec::with_capacity(source.len() + record_identity.len() + 2 + 2 * digest.len());
    name.extend_from_slice(source.as_bytes());
    name.push(b'\n');
    name.extend_from_slice(record_identity.as_bytes());
    name.push(b'\n');
    push_lower_hex(&mut name, digest);
    let id = uuid::Uuid::new_v5(&EVENT_NAMESPACE, &name);
    id.hyphenated().encode_lower(&mut uuid::Uuid::encode_buffer()).to_owned()
}

/// Serialised bytes fed to a SHA-256 as they are written.
struct HashWriter(Sha256);

impl std::io::Write for HashWriter {
    fn write(&mut self, buf: &[u8]) -> std::io::Result<usize> {
        sha2::Digest::update(&mut self.0, buf);
        Ok(buf.len())
    }

    fn flush(&mut self) -> std::io::Result<()> {
        Ok(())
    }
}

/// Appends `bytes` in lower-case hex (what `hex::encode` gives, without its per-character iterator).
fn push_lower_hex(out: &mut Vec<u8>, bytes: &[u8]) {
    let start = out.len();
    out.resize(start + 2 * bytes.len(), 0);
    // The slice is exactly twice the input's length, so this cannot fail.
    let _ = hex::encode_to_slice(bytes, &mut out[start..]);
}

/// `bytes` in lower-case hex.
pub fn lower_hex(bytes: &[u8]) -> String {
    let mut out = Vec::with_capacity(2 * bytes.len());
    push_lower_hex(&mut out, bytes);
    // Hex digits are ASCII.
    String::from_utf8(out).unwrap_or_default()
}

/// The CloudEvents `type` of a topic's events.
pub fn event_type(topic: &str) -> String {
    format!("cn.gov.jl.doudi.{topic}")
}

impl Envelope {
    /// An envelope for `data` on `topic`, from `source`, about the source record `record_identity`
    /// (e.g. `sha256-of-file:row-17`).
    pub fn new(source: &str, topic: &str, dataschema: &str, record_identity: &str, data: &Value, time: DateTime<Utc>) -> Self {
        Envelope {
            id: event_id(source, record_identity, data),
            source: source.into(),
            kind: event_type(topic),
            time,
            dataschema: dataschema.into(),
        }
    }

    /// Kafka headers in binary mode, plus any extra headers (e.g. provenance).
    pub fn to_headers(&self, extra: &[(&str, &str)]) -> OwnedHeaders {
        let time = self.time.to_rfc3339_opts(SecondsFormat::Millis, true);
        binary_mode_headers(&self.id, &self.source, &self.kind, &time, &self.dataschema, extra.iter().copied())
    }

    /// Reads a consumed message's envelope and JSON payload, or says why it carries none (a reason
    /// fit for a dead letter: it never quotes the message).
    pub fn of_message(m: &rdkafka::message::BorrowedMessage<'_>) -> Result<(Self, Value), &'static str> {
        use rdkafka::Message as _;
        let headers = m.headers().ok_or("the message has no CloudEvents headers")?;
        let envelope = Envelope::from_headers(headers).map_err(|_| "the message has no valid CloudEvents envelope")?;
        let payload = serde_json::from_slice(m.payload().ok_or("the message has no payload")?).map_err(|_| "the payload is not JSON")?;
        Ok((envelope, payload))
    }

    /// Reads the envelope back from a consumed message's headers.
    pub fn from_headers(headers: &BorrowedHeaders) -> Result<Self, EnvelopeError> {
        let get = |name: &'static str| -> Result<String, EnvelopeError> {
            let header = headers.iter().find(|h| h.key == name).ok_or(EnvelopeError::Missing(name))?;
            let value = header.value.ok_or(EnvelopeError::Missing(name))?;
            String::from_utf8(value.to_vec()).map_err(|_| EnvelopeError::Invalid(name, "not UTF-8".into()))
        };
        let version = get("ce_specversion")?;
        if version != SPEC_VERSION {
            return Err(EnvelopeError::Invalid("ce_specversion", format!("`{version}`, expected 1.0")));
        }
        let time = get("ce_time")?;
        let time = DateTime::parse_from_rfc3339(&time).map_err(|e| EnvelopeError::Invalid("ce_time", e.to_string()))?.with_timezone(&Utc);
        Ok(Envelope { id: get("ce_id")?, source: get("ce_source")?, kind: get("ce_type")?, time, dataschema: get("ce_dataschema")? })
    }
}

/// Kafka headers from name/value pairs, in order.
pub fn headers<'a>(pairs: impl IntoIterator<Item = (&'a str, &'a str)>) -> OwnedHeaders {
    let pairs = pairs.into_iter();
    let capacity = pairs.size_hint().0.max(1);
    pairs.fold(OwnedHeaders::new_with_capacity(capacity), |headers, (key, value)| headers.insert(Header { key, value: Some(value) }))
}

/// The CloudEvents binary-mode headers (`time` already in RFC 3339), then `extra` ones.
pub fn binary_mode_headers<'a>(
    id: &'a str,
    source: &'a str,
    kind: &'a str,
    time: &'a str,
    dataschema: &'a str,
    extra: impl IntoIterator<Item = (&'a str, &'a str)>,
) -> OwnedHeaders {
    headers(
        [
            ("ce_specversion", SPEC_VERSION),
            ("ce_id", id),
            ("ce_source", source),
            ("ce_type", kind),
            ("ce_time", time),
            ("ce_dataschema", dataschema),
            ("content-type", CONTENT_TYPE),
        ]
        .into_iter()
        .chain(extra),
    )
}

/// Derives pseudonymous message keys from ID numbers.
#[derive(Clone)]
pub struct KeyDeriver {
    mac: hmac::Hmac<Sha256>,
}

impl std::fmt::Debug for KeyDeriver {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        f.write_str("KeyDeriver(<secret>)")
    }
}

impl KeyDeriver {
    /// From configuration; [`crate::config::Settings::check`] has already refused the development
    /// secret in production and secrets shorter than 16 bytes.
    pub fn new(keys: &KeySettings) -> Self {
        Self::from_secret(keys.hmac_secret.as_bytes())
    }

    pub fn from_secret(secret: &[u8]) -> Self {
        // HMAC accepts keys of any length; this cannot fail.
        let mac = <hmac::Hmac<Sha256> as KeyInit>::new_from_slice(secret)
            .unwrap_or_else(|_| <hmac::Hmac<Sha256> as KeyInit>::new(&Default::default()));
        KeyDeriver { mac }
    }

    /// The hex HMAC-SHA-256 of the normalised ID number.
    pub fn key(&self, id: &IdNumber) -> String {
        let mut mac = self.mac.clone();
        mac.update(id.as_str().as_bytes());
        lower_hex(&mac.finalize().into_bytes())
    }
}

#[cfg(test)]
mod tests {
    use super::*;
    use serde_json::json;

    #[test]
    fn event_ids_are_deterministic_and_content_sensitive() {
        let data = json!({"id_number": "220102195003070015", "event": "death", "date": "2019-12-20"});
        let a = event_id("doudi://connector/vital", "abc:row-3", &data);
        assert_eq!(
            a,
            event_id(
                "doudi://connector/vital",
                "abc:row-3",
                &json!({"date": "2019-12-20", "event": "death", "id_number": "220102195003070015"})
            )
        );
        assert_ne!(a, event_id("doudi://connector/vital", "abc:row-4", &data));
        assert_ne!(a, event_id("doudi://connector/other", "abc:row-3", &data));
        assert_ne!(a, event_id("doudi://connector/vital", "abc:row-3", &json!({"event": "death_revoked"})));
        assert_eq!(uuid::Uuid::parse_str(&a).map(|u| u.get_version_num()), Ok(5));
        assert_eq!(a, event_id_for_payload("doudi://connector/vital", "abc:row-3", serde_json::to_string(&data).expect("json").as_bytes()));
    }

    #[test]
    fn event_ids_keep_their_construction() {
        // Ids already published must not change with the code: the v5 name is the source, the
        // record's identity and the payload's lower-hex SHA-256, one per line.
        let payload = br#"{"event":"death","id_number":"220102195003070015"}"#;
        let digest = hex::encode(<Sha256 as sha2::Digest>::digest(payload));
        let name = format!("doudi://connector/vital\nabc:row-3\n{digest}");
        let expected = uuid::Uuid::new_v5(&EVENT_NAMESPACE, name.as_bytes()).to_string();
        assert_eq!(event_id_for_payload("doudi://connector/vital", "abc:row-3", payload), expected);
        // The same data as a value, hashed as it is serialised.
        let data = json!({"id_number": "220102195003070015", "event": "death"});
        assert_eq!(event_id("doudi://connector/vital", "abc:row-3", &data), expected);
        assert_eq!(lower_hex(&[0x00, 0x0f, 0xa0, 0xff]), "000fa0ff");
    }

    #[test]
    fn keys_are_hmac_and_never_the_id() {
        let id = IdNumber::parse("11010519491231002X").expect("valid");
        let deriver = KeyDeriver::from_secret(b"0123456789abcdef");
        let key = deriver.key(&id);
        assert_eq!(key.len(), 64);
        assert!(!key.contains("110105"));
        assert_eq!(key, deriver.key(&IdNumber::parse("11010519491231002x").expect("valid")), "keyed on the normalised form");
        assert_ne!(key, KeyDeriver::from_secret(b"another-secret-16").key(&id));
        // RFC 4231-style check of the construction with a known vector.
        let known = KeyDeriver::from_secret(b"key");
        let mut mac = known.mac.clone();
        mac.update(b"The quick brown fox jumps over the lazy dog");
        assert_eq!(hex::encode(mac.finalize().into_bytes()), "f7bc83f430538424b13298e6aa6fb143ef4d59a14946175997479dbc2d1a3cd8");
        assert_eq!(format!("{deriver:?}"), "KeyDeriver(<secret>)");
    }

    #[test]
    fn headers_round_trip() {
        let data = json!({"a": 1});
        let time = DateTime::parse_from_rfc3339("2020-01-15T08:00:00.123Z").expect("time").with_timezone(&Utc);
        let env = Envelope::new(
            "doudi://test",
            "dept.edu.student.v1",
            "https://schemas.doudi.jl.gov.cn/dept.edu.student.v1.json",
            "r1",
            &data,
            time,
        );
        let headers = env.to_headers(&[("source_row", "7")]);
        assert_eq!(headers.count(), 8);
        let keys: Vec<&str> = headers.iter().map(|h| h.key).collect();
        for k in ["ce_specversion", "ce_id", "ce_source", "ce_type", "ce_time", "ce_dataschema", "content-type", "source_row"] {
            assert!(keys.contains(&k), "{k}");
        }
        assert_eq!(env.kind, "cn.gov.jl.doudi.dept.edu.student.v1");
    }
}
