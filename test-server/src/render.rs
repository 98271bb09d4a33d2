//! Answers of the client (Read, Observe, notifications, any other operation) as JSON for
//! the control API, and back as text for the command line. Every content format is shown:
//!
//! - text/plain: `"value"` as the string (hex if not printable), opaque: base64;
//! - TLV: a tree (below). The server does not know resource types, so a TLV value is shown
//!   as a string when its bytes are printable UTF-8 and as hex otherwise, with `"int"` added
//!   when its length (1, 2, 4 or 8 bytes) would make it a TLV integer; every node carries
//!   its full path;
//! - SenML JSON/CBOR and LwM2M CBOR, which carry their types: `"entries"`, a list of
//!   `{"path","type","value"}` (opaque as base64, object links as "OID:IID");
//! - link format (Discover): `"links"`, a list of `{"target","attributes"}`.
//!
//! ```json
//! {"code":"2.05","content_format":11542,"resources":[
//!   {"id":0,"value":"Estuary Labs","encoding":"utf8","path":"/3/0/0"},
//!   {"id":11,"path":"/3/0/11","instances":[
//!     {"id":0,"value":"00","encoding":"hex","int":0,"path":"/3/0/11/0"}]}]}
//! ```

use estuary::coap::content_format;
use estuary::dm::content::base64::{self, Alphabet};
use estuary::dm::content::{self, Entry};
use estuary::dm::link;
use estuary::dm::tlv::{self, Tlv, TlvBody, TlvType};
use estuary::dm::{Path, Value};
use serde::{Deserialize, Serialize};
use serde_json::Value as Json;

use crate::init::hex;
use crate::lwm2m_server::OpResult;

/// The answer to a Read as the control API gives it. Typed (rather than a JSON map) so the
/// keys come out in this order: `{"code":"2.05","content_format":0,"value":"..."}`.
#[derive(Clone, Debug, Default, PartialEq, Eq, Serialize, Deserialize)]
pub struct ReadAnswer {
    /// The client's CoAP response code, e.g. "2.05" or "4.04".
    pub code: String,
    pub content_format: Option<u16>,
    /// The content format's `format=` name ("text", "tlv", ...), when it has one.
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub format: Option<String>,
    /// A plain (non-TLV) payload: the string if printable UTF-8, else hex; opaque as base64.
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub value: Option<String>,
    /// "utf8", "hex" or "base64", with `value`.
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub encoding: Option<String>,
    /// Set when a TLV payload did not decode (`value` then holds it as hex).
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub error: Option<String>,
    /// A TLV answer's object instances (a read of /O).
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub object_instances: Option<Vec<Node>>,
    /// A TLV answer's resources (a read of /O/I or /O/I/R).
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub resources: Option<Vec<Node>>,
    /// A TLV answer's resource instances (a read of /O/I/R/RI).
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub resource_instances: Option<Vec<Node>>,
    /// The values of a SenML JSON/CBOR or LwM2M CBOR answer.
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub entries: Option<Vec<RenderedEntry>>,
    /// The links of a link-format answer (Discover).
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub links: Option<Vec<RenderedLink>>,
}

/// One value of a typed format: `{"path":"/3303/0/5700","type":"float","value":21.5}`.
#[derive(Clone, Debug, PartialEq, Eq, Serialize, Deserialize)]
pub struct RenderedEntry {
    pub path: String,
    #[serde(rename = "type")]
    pub kind: String,
    pub value: Json,
}

/// One link of a link-format answer: `{"target":"/3/0/1","attributes":["pmin=5"]}`.
#[derive(Clone, Debug, PartialEq, Eq, Serialize, Deserialize)]
pub struct RenderedLink {
    pub target: String,
    pub attributes: Vec<String>,
}

/// One TLV element. A leaf is `{"id","value","encoding"[,"int"],"path"}`, a container
/// `{"id","path","resources"|"instances"}`: id and value first, as people read them.
#[derive(Clone, Debug, Default, PartialEq, Eq, Serialize, Deserialize)]
pub struct Node {
    pub id: u16,
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub value: Option<String>,
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub encoding: Option<String>,
    /// The value read as a big-endian signed integer, when its length is 1, 2, 4 or 8.
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub int: Option<i64>,
    /// The full data-model path, e.g. "/3/0/11/0".
    pub path: String,
    /// An object instance's resources.
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub resources: Option<Vec<Node>>,
    /// A multiple resource's instances.
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub instances: Option<Vec<Node>>,
}

impl ReadAnswer {
    /// True for a TLV answer that decoded into a tree.
    pub fn is_tree(&self) -> bool {
        self.object_instances.is_some()
            || self.resources.is_some()
            || self.resource_instances.is_some()
    }

    pub fn to_json(&self) -> String {
        // Strings, integers and options always serialise.
        serde_json::to_string(self).unwrap_or_default()
    }
}

/// True for bytes that are UTF-8 text without control characters (tab and newlines allowed).
fn printable(b: &[u8]) -> Option<&str> {
    let s = std::str::from_utf8(b).ok()?;
    s.chars()
        .all(|c| !c.is_control() || matches!(c, '\t' | '\n' | '\r'))
        .then_some(s)
}

/// `value` and `encoding`: the string if printable UTF-8, else hex.
fn text_value(b: &[u8]) -> (String, String) {
    match printable(b) {
        Some(s) => (s.to_string(), "utf8".into()),
        None => (hex(b), "hex".into()),
    }
}

/// The bytes as a TLV integer, when their length allows.
fn int_value(b: &[u8]) -> Option<i64> {
    match b.len() {
        1 => Some(i64::from(i8::from_be_bytes([b[0]]))),
        2 => Some(i64::from(i16::from_be_bytes([b[0], b[1]]))),
        4 => Some(i64::from(i32::from_be_bytes([b[0], b[1], b[2], b[3]]))),
        8 => b.try_into().ok().map(i64::from_be_bytes),
        _ => None,
    }
}

/// How deep an element of this type sits: /O/I is 2, /O/I/R is 3, /O/I/R/RI is 4.
fn depth_of(ty: TlvType) -> usize {
    match ty {
        TlvType::ObjectInstance => 2,
        TlvType::Resource | TlvType::MultipleResource => 3,
        TlvType::ResourceInstance => 4,
    }
}

fn path_text(ids: &[u16]) -> String {
    ids.iter().map(|i| format!("/{i}")).collect()
}

fn ids_of(p: &Path) -> Vec<u16> {
    [p.oid(), p.iid(), p.rid(), p.riid()]
        .into_iter()
        .flatten()
        .collect()
}

fn node(t: &Tlv, parent: &[u16]) -> Node {
    let mut ids = parent.to_vec();
    ids.push(t.id);
    let mut n = Node {
        id: t.id,
        path: path_text(&ids),
        ..Node::default()
    };
    match &t.body {
        TlvBody::Value(b) => {
            let (value, encoding) = text_value(b);
            n.value = Some(value);
            n.encoding = Some(encoding);
            n.int = int_value(b);
        }
        TlvBody::Children(children) => {
            let list = Some(children.iter().map(|c| node(c, &ids)).collect());
            match t.ty {
                TlvType::ObjectInstance => n.resources = list,
                _ => n.instances = list,
            }
        }
    }
    n
}

/// The decoded TLV tree of a read of `path`, sorted into `a` by the top-level elements'
/// types.
fn tlv_tree(path: &Path, items: &[Tlv], a: &mut ReadAnswer) {
    let base = ids_of(path);
    let pick = |types: &[TlvType]| -> Option<Vec<Node>> {
        let list: Vec<Node> = items
            .iter()
            .filter(|t| types.contains(&t.ty))
            .map(|t| {
                // The element's parent is the read path cut to the element's level.
                node(t, &base[..base.len().min(depth_of(t.ty) - 1)])
            })
            .collect();
        (!list.is_empty()).then_some(list)
    };
    a.object_instances = pick(&[TlvType::ObjectInstance]);
    a.resources = pick(&[TlvType::Resource, TlvType::MultipleResource]);
    a.resource_instances = pick(&[TlvType::ResourceInstance]);
}

/// The `format=` name of a Content-Format number.
pub fn format_name(cf: u16) -> Option<&'static str> {
    Some(match cf {
        content_format::TEXT_PLAIN => "text",
        content_format::LWM2M_TLV => "tlv",
        content_format::OCTET_STREAM => "opaque",
        content_format::LINK_FORMAT => "link",
        content_format::SENML_JSON => "senml-json",
        content_format::SENML_CBOR => "senml-cbor",
        content_format::LWM2M_CBOR => "lwm2m-cbor",
        _ => return None,
    })
}

/// A typed value as JSON, with its type's name.
pub fn value_json(v: &Value) -> (&'static str, Json) {
    match v {
        Value::String(s) => ("string", Json::from(s.as_str())),
        Value::Corelnk(s) => ("corelnk", Json::from(s.as_str())),
        Value::Integer(i) => ("integer", Json::from(*i)),
        Value::Time(t) => ("time", Json::from(*t)),
        Value::Unsigned(u) => ("unsigned", Json::from(*u)),
        // Non-finite floats have no JSON number; the codecs never produce them.
        Value::Float(f) => (
            "float",
            serde_json::Number::from_f64(*f).map_or(Json::Null, Json::Number),
        ),
        Value::Boolean(b) => ("boolean", Json::from(*b)),
        Value::Opaque(b) => ("opaque", Json::from(base64::encode(b, Alphabet::Standard))),
        Value::Objlnk(o, i) => ("objlnk", Json::from(format!("{o}:{i}"))),
    }
}

fn rendered(entries: &[Entry]) -> Vec<RenderedEntry> {
    entries
        .iter()
        .map(|e| {
            let (kind, value) = value_json(&e.value);
            RenderedEntry {
                path: e.path.to_string(),
                kind: kind.into(),
                value,
            }
        })
        .collect()
}

/// The control API's answer to a Read (or any other operation) of `path`.
pub fn read_answer(path: &Path, r: &OpResult) -> ReadAnswer {
    let mut a = ReadAnswer {
        code: r.code.clone(),
        content_format: r.content_format,
        format: r.content_format.and_then(format_name).map(Into::into),
        ..ReadAnswer::default()
    };
    let raw_hex = |a: &mut ReadAnswer| {
        a.value = Some(hex(&r.payload));
        a.encoding = Some("hex".into());
    };
    match r.content_format {
        Some(content_format::LWM2M_TLV) => match tlv::decode(&r.payload) {
            Ok(items) => tlv_tree(path, &items, &mut a),
            Err(e) => {
                a.error = Some(format!("undecodable TLV: {e}"));
                raw_hex(&mut a);
            }
        },
        Some(content_format::OCTET_STREAM) => {
            a.value = Some(base64::encode(&r.payload, Alphabet::Standard));
            a.encoding = Some("base64".into());
        }
        Some(
            cf @ (content_format::SENML_JSON
            | content_format::SENML_CBOR
            | content_format::LWM2M_CBOR),
        ) => match content::decode(cf, path, &r.payload, &|_| None) {
            Ok(entries) => a.entries = Some(rendered(&entries)),
            Err(e) => {
                a.error = Some(format!(
                    "undecodable {}: {e}",
                    format_name(cf).unwrap_or("?")
                ));
                raw_hex(&mut a);
            }
        },
        Some(content_format::LINK_FORMAT) => {
            match std::str::from_utf8(&r.payload).ok().and_then(link::parse) {
                Some(links) => {
                    a.links = Some(
                        links
                            .into_iter()
                            .map(|l| RenderedLink {
                                target: l.target,
                                attributes: l.attributes,
                            })
                            .collect(),
                    )
                }
                None => {
                    a.error = Some("undecodable link format".into());
                    raw_hex(&mut a);
                }
            }
        }
        _ if r.payload.is_empty() => {}
        // text/plain, error diagnostics, and formats not decoded here (SenML, CBOR, link).
        _ => {
            let (value, encoding) = text_value(&r.payload);
            a.value = Some(value);
            a.encoding = Some(encoding);
        }
    }
    a
}

/// Lines `PATH = VALUE` for the leaves of a TLV tree, the entries of a typed format and the
/// links of a Discover (the CLI's `--lines`); TLV hex values are written `0x..` with their
/// integer reading, as are printable values of one or two bytes.
pub fn tree_lines(a: &ReadAnswer) -> Vec<String> {
    fn walk(n: &Node, out: &mut Vec<String>) {
        if let Some(value) = &n.value {
            let path = &n.path;
            let line = match (n.encoding.as_deref(), n.int) {
                (Some("hex"), Some(i)) => format!("{path} = 0x{value} (int {i})"),
                (Some("hex"), None) => format!("{path} = 0x{value}"),
                // A printable 1- or 2-byte value may well be a small integer ("A" = 65);
                // longer printable values are almost always text.
                (_, Some(i)) if value.len() <= 2 => format!("{path} = {value} (int {i})"),
                _ => format!("{path} = {value}"),
            };
            out.push(line);
        }
        for c in n.resources.iter().chain(&n.instances).flatten() {
            walk(c, out);
        }
    }
    let mut out = Vec::new();
    for n in a
        .object_instances
        .iter()
        .chain(&a.resources)
        .chain(&a.resource_instances)
        .flatten()
    {
        walk(n, &mut out);
    }
    for e in a.entries.iter().flatten() {
        let v = match &e.value {
            Json::String(s) => s.clone(),
            other => other.to_string(),
        };
        out.push(format!("{} = {v}", e.path));
    }
    for l in a.links.iter().flatten() {
        let mut line = format!("<{}>", l.target);
        for attr in &l.attributes {
            line.push(';');
            line.push_str(attr);
        }
        out.push(line);
    }
    out
}

#[cfg(test)]
mod tests {
    use super::*;
    use serde_json::{json, Value as Json};

    fn ok(cf: u16, payload: Vec<u8>) -> OpResult {
        OpResult {
            code: "2.05".into(),
            content_format: Some(cf),
            payload,
        }
    }

    fn json_of(path: &str, r: &OpResult) -> (ReadAnswer, Json) {
        let a = read_answer(&Path::parse(path).unwrap(), r);
        let j: Json = serde_json::from_str(&a.to_json()).unwrap();
        // What the API sends parses back to the same answer.
        assert_eq!(serde_json::from_str::<ReadAnswer>(&a.to_json()).unwrap(), a);
        (a, j)
    }

    fn device_instance() -> Vec<Tlv> {
        vec![
            Tlv::value(TlvType::Resource, 0, &Value::String("Estuary Labs".into())),
            Tlv::parent(
                TlvType::MultipleResource,
                11,
                vec![Tlv::value(TlvType::ResourceInstance, 0, &Value::Integer(0))],
            ),
        ]
    }

    #[test]
    fn tlv_instance_read_becomes_a_tree() {
        let r = ok(content_format::LWM2M_TLV, tlv::encode(&device_instance()));
        let (a, j) = json_of("/3/0", &r);
        assert_eq!(
            j,
            json!({
                "code": "2.05", "content_format": 11542, "format": "tlv",
                "resources": [
                    {"id": 0, "path": "/3/0/0", "value": "Estuary Labs", "encoding": "utf8"},
                    {"id": 11, "path": "/3/0/11", "instances": [
                        {"id": 0, "path": "/3/0/11/0", "value": "00", "encoding": "hex", "int": 0}
                    ]}
                ]
            })
        );
        assert!(a.is_tree());
        assert_eq!(
            tree_lines(&a),
            ["/3/0/0 = Estuary Labs", "/3/0/11/0 = 0x00 (int 0)"]
        );
        let short = tlv::encode(&[
            Tlv::value(TlvType::Resource, 1, &Value::Integer(65)),
            Tlv::value(TlvType::Resource, 2, &Value::String("0001".into())),
        ]);
        let (a, _) = json_of("/3/0", &ok(content_format::LWM2M_TLV, short));
        assert_eq!(tree_lines(&a), ["/3/0/1 = A (int 65)", "/3/0/2 = 0001"]);
    }

    #[test]
    fn compact_json_reads_id_then_value() {
        let r = ok(content_format::LWM2M_TLV, tlv::encode(&device_instance()));
        let text = read_answer(&Path::parse("/3/0").unwrap(), &r).to_json();
        assert!(
            text.starts_with(r#"{"code":"2.05","content_format":11542,"format":"tlv","resources":[{"id":0,"value":"Estuary Labs","encoding":"utf8","path":"/3/0/0"},{"id":11,"path":"/3/0/11","instances":[{"id":0,"value":"00","#),
            "{text}"
        );
        let t = ok(content_format::TEXT_PLAIN, b"x".to_vec());
        assert_eq!(
            read_answer(&Path::parse("/3/0/0").unwrap(), &t).to_json(),
            r#"{"code":"2.05","content_format":0,"format":"text","value":"x","encoding":"utf8"}"#
        );
    }

    #[test]
    fn tlv_object_and_resource_reads_get_their_paths_right() {
        let obj = tlv::encode(&[Tlv::parent(TlvType::ObjectInstance, 0, device_instance())]);
        let (_, j) = json_of("/3", &ok(content_format::LWM2M_TLV, obj));
        assert_eq!(j["object_instances"][0]["path"], "/3/0");
        assert_eq!(
            j["object_instances"][0]["resources"][1]["instances"][0]["path"],
            "/3/0/11/0"
        );

        // A resource read answers with the resource itself: its path is the read path.
        let res = tlv::encode(&[Tlv::value(TlvType::Resource, 1, &Value::Integer(-2))]);
        let (_, j) = json_of("/3/0/1", &ok(content_format::LWM2M_TLV, res));
        assert_eq!(
            j["resources"][0],
            json!({"id": 1, "path": "/3/0/1", "value": "fe", "encoding": "hex", "int": -2})
        );
        let ri = tlv::encode(&[Tlv::value(
            TlvType::ResourceInstance,
            0,
            &Value::Integer(300),
        )]);
        let (_, j) = json_of("/3/0/11/0", &ok(content_format::LWM2M_TLV, ri));
        assert_eq!(j["resource_instances"][0]["path"], "/3/0/11/0");
        assert_eq!(j["resource_instances"][0]["int"], 300);
    }

    #[test]
    fn printable_four_bytes_are_both_string_and_int() {
        assert_eq!(text_value(b"Estu"), ("Estu".into(), "utf8".into()));
        assert_eq!(
            int_value(b"Estu"),
            Some(i64::from(i32::from_be_bytes(*b"Estu")))
        );
        assert_eq!(
            text_value(&[0xff, 0xfe, 0xfd]),
            ("fffefd".into(), "hex".into())
        );
        assert_eq!(int_value(&[0xff, 0xfe, 0xfd]), None);
        assert_eq!(int_value(&[0xff; 8]), Some(-1));
        assert_eq!(text_value(&[]), (String::new(), "utf8".into()));
        assert_eq!(text_value(b"a\tb\n").1, "utf8");
        assert_eq!(text_value(b"a\x07").1, "hex");
    }

    #[test]
    fn text_opaque_errors_and_garbage() {
        let (_, j) = json_of(
            "/3/0/0",
            &ok(content_format::TEXT_PLAIN, b"Estuary Labs".to_vec()),
        );
        assert_eq!(
            j,
            json!({"code": "2.05", "content_format": 0, "format": "text", "value": "Estuary Labs", "encoding": "utf8"})
        );
        let (_, j) = json_of("/3/0/0", &ok(content_format::OCTET_STREAM, vec![1, 2]));
        assert_eq!(j["value"], "AQI=");
        assert_eq!(j["encoding"], "base64");
        let not_found = OpResult {
            code: "4.04".into(),
            content_format: None,
            payload: Vec::new(),
        };
        let (_, j) = json_of("/3/0/0", &not_found);
        assert_eq!(j, json!({"code": "4.04", "content_format": null}));
        // Truncated TLV: an error and the raw bytes, never a panic.
        let (a, j) = json_of(
            "/3/0/0",
            &ok(content_format::LWM2M_TLV, vec![0xC8, 0x00, 0x14, b'a']),
        );
        assert!(j["error"].as_str().unwrap().contains("TLV"), "{j}");
        assert_eq!(j["value"], "c8001461");
        assert!(!a.is_tree() && tree_lines(&a).is_empty());
    }

    #[test]
    fn typed_formats_become_entries() {
        use estuary::dm::content::encode;
        let base = Path::parse("/3303/0").unwrap();
        let entries = vec![
            Entry::new(Path::parse("/3303/0/5700").unwrap(), Value::Float(21.5)),
            Entry::new(
                Path::parse("/3303/0/5701").unwrap(),
                Value::String("Cel".into()),
            ),
            Entry::new(
                Path::parse("/3303/0/5750").unwrap(),
                Value::Opaque(vec![1, 2]),
            ),
            Entry::new(Path::parse("/3303/0/5800/1").unwrap(), Value::Objlnk(3, 0)),
            Entry::new(Path::parse("/3303/0/5850").unwrap(), Value::Boolean(true)),
        ];
        for cf in [
            content_format::SENML_JSON,
            content_format::SENML_CBOR,
            content_format::LWM2M_CBOR,
        ] {
            let (a, j) = json_of("/3303/0", &ok(cf, encode(cf, &base, &entries).unwrap()));
            assert_eq!(j["format"], format_name(cf).unwrap());
            // LwM2M CBOR writes an object link as text: without the resource's type it
            // reads back as a string.
            let link_type = if cf == content_format::LWM2M_CBOR {
                "string"
            } else {
                "objlnk"
            };
            assert_eq!(
                j["entries"],
                json!([
                    {"path": "/3303/0/5700", "type": "float", "value": 21.5},
                    {"path": "/3303/0/5701", "type": "string", "value": "Cel"},
                    {"path": "/3303/0/5750", "type": "opaque", "value": "AQI="},
                    {"path": "/3303/0/5800/1", "type": link_type, "value": "3:0"},
                    {"path": "/3303/0/5850", "type": "boolean", "value": true},
                ]),
                "cf {cf}"
            );
            assert_eq!(tree_lines(&a)[0], "/3303/0/5700 = 21.5");
            assert_eq!(tree_lines(&a)[1], "/3303/0/5701 = Cel");
        }
        // Garbage in a typed format: an error and the raw bytes.
        let (_, j) = json_of("/3303/0", &ok(content_format::SENML_JSON, b"[{".to_vec()));
        assert!(j["error"].as_str().unwrap().contains("senml-json"), "{j}");
        assert_eq!(j["value"], "5b7b");
    }

    #[test]
    fn discover_becomes_links() {
        let body = b"</3/0>;pmin=10,</3/0/0>,</3/0/11>;dim=1".to_vec();
        let (a, j) = json_of("/3/0", &ok(content_format::LINK_FORMAT, body));
        assert_eq!(
            j["links"],
            json!([
                {"target": "/3/0", "attributes": ["pmin=10"]},
                {"target": "/3/0/0", "attributes": []},
                {"target": "/3/0/11", "attributes": ["dim=1"]},
            ])
        );
        assert_eq!(
            tree_lines(&a),
            ["</3/0>;pmin=10", "</3/0/0>", "</3/0/11>;dim=1"]
        );
        let (_, j) = json_of("/3/0", &ok(content_format::LINK_FORMAT, b"3/0".to_vec()));
        assert!(j["error"].is_string());
    }
}
