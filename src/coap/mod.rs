//! CoAP (RFC 7252) for both ends of an LwM2M conversation: message helpers over `coap-lite`,
//! transmission parameters, the deduplication cache, block-wise transfers (RFC 7959), and
//! [`Endpoint`] — the per-peer exchange layer that owns message IDs, tokens, retransmission,
//! piggybacked and separate responses, RST, Observe tokens and block-wise exchanges.
//!
//! Encoding and decoding of packets is `coap-lite`'s; everything with state or time is ours.
//! This layer knows nothing of sockets or LwM2M semantics.

pub mod block;
pub mod dedup;
pub mod endpoint;
pub mod params;

pub use coap_lite::{CoapOption, MessageClass, MessageType, Packet, RequestType, ResponseType};
pub use endpoint::{Endpoint, EndpointEvent, ExchangeError, InboundRequest, RequestHandle};
pub use params::TxParams;

/// Content-Format numbers used by LwM2M and EST (IANA CoAP Content-Formats registry).
pub mod content_format {
    pub const TEXT_PLAIN: u16 = 0;
    pub const LINK_FORMAT: u16 = 40;
    pub const OCTET_STREAM: u16 = 42;
    pub const SENML_JSON: u16 = 110;
    pub const SENML_CBOR: u16 = 112;
    pub const PKCS7_CERTS_ONLY: u16 = 281;
    pub const PKCS10: u16 = 286;
    pub const PKIX_CERT: u16 = 287;
    pub const LWM2M_TLV: u16 = 11542;
    pub const LWM2M_JSON: u16 = 11543;
    pub const LWM2M_CBOR: u16 = 11544;
}

/// Response codes as raw `class << 5 | detail` bytes, so every code is expressible.
pub mod code {
    pub const EMPTY: u8 = 0x00;
    pub const GET: u8 = 0x01;
    pub const POST: u8 = 0x02;
    pub const PUT: u8 = 0x03;
    pub const DELETE: u8 = 0x04;
    pub const CREATED: u8 = 0x41;
    pub const DELETED: u8 = 0x42;
    pub const CHANGED: u8 = 0x44;
    pub const CONTENT: u8 = 0x45;
    pub const CONTINUE: u8 = 0x5F;
    pub const BAD_REQUEST: u8 = 0x80;
    pub const UNAUTHORIZED: u8 = 0x81;
    pub const BAD_OPTION: u8 = 0x82;
    pub const FORBIDDEN: u8 = 0x83;
    pub const NOT_FOUND: u8 = 0x84;
    pub const METHOD_NOT_ALLOWED: u8 = 0x85;
    pub const NOT_ACCEPTABLE: u8 = 0x86;
    pub const REQUEST_ENTITY_INCOMPLETE: u8 = 0x88;
    pub const PRECONDITION_FAILED: u8 = 0x8C;
    pub const REQUEST_ENTITY_TOO_LARGE: u8 = 0x8D;
    pub const UNSUPPORTED_CONTENT_FORMAT: u8 = 0x8F;
    pub const INTERNAL_SERVER_ERROR: u8 = 0xA0;
    pub const NOT_IMPLEMENTED: u8 = 0xA1;
    pub const SERVICE_UNAVAILABLE: u8 = 0xA3;

    /// "2.05"-style text for logs.
    pub fn to_string(code: u8) -> String {
        format!("{}.{:02}", code >> 5, code & 0x1F)
    }

    pub fn is_success(code: u8) -> bool {
        code >> 5 == 2
    }
}

/// The raw code byte of a packet.
pub fn raw_code(p: &Packet) -> u8 {
    p.header.code.into()
}

/// Sets a packet's code from a raw byte.
pub fn set_raw_code(p: &mut Packet, code: u8) {
    p.header.code = MessageClass::from(code);
}

/// Encodes an unsigned option value in the minimal number of bytes (RFC 7252 §3.2).
pub fn encode_uint(v: u32) -> Vec<u8> {
    let bytes = v.to_be_bytes();
    let skip = bytes.iter().take_while(|b| **b == 0).count();
    bytes[skip..].to_vec()
}

/// Decodes an unsigned option value; `None` if longer than four bytes.
pub fn decode_uint(b: &[u8]) -> Option<u32> {
    if b.len() > 4 {
        return None;
    }
    Some(b.iter().fold(0u32, |acc, x| (acc << 8) | u32::from(*x)))
}

/// The first value of an unsigned option, if present and well formed.
pub fn uint_option(p: &Packet, opt: CoapOption) -> Option<u32> {
    p.get_first_option(opt).and_then(|v| decode_uint(v))
}

pub fn set_uint_option(p: &mut Packet, opt: CoapOption, v: u32) {
    p.clear_option(opt);
    p.add_option(opt, encode_uint(v));
}

/// Content-Format of a packet as its registry number.
pub fn content_format_of(p: &Packet) -> Option<u16> {
    uint_option(p, CoapOption::ContentFormat).and_then(|v| u16::try_from(v).ok())
}

pub fn set_content_format(p: &mut Packet, cf: u16) {
    set_uint_option(p, CoapOption::ContentFormat, u32::from(cf));
}

/// Accept option as a registry number.
pub fn accept_of(p: &Packet) -> Option<u16> {
    uint_option(p, CoapOption::Accept).and_then(|v| u16::try_from(v).ok())
}

/// Uri-Path segments; `None` if a segment is not UTF-8.
pub fn uri_path(p: &Packet) -> Option<Vec<String>> {
    option_strings(p, CoapOption::UriPath)
}

/// Uri-Query items; `None` if one is not UTF-8.
pub fn uri_query(p: &Packet) -> Option<Vec<String>> {
    option_strings(p, CoapOption::UriQuery)
}

/// Location-Path segments; `None` if one is not UTF-8.
pub fn location_path(p: &Packet) -> Option<Vec<String>> {
    option_strings(p, CoapOption::LocationPath)
}

fn option_strings(p: &Packet, opt: CoapOption) -> Option<Vec<String>> {
    match p.get_option(opt) {
        None => Some(Vec::new()),
        Some(list) => list
            .iter()
            .map(|v| String::from_utf8(v.clone()).ok())
            .collect(),
    }
}

/// Sets Uri-Path from a slash-separated path ("/rd/abc" or "rd/abc").
pub fn set_uri_path(p: &mut Packet, path: &str) {
    p.clear_option(CoapOption::UriPath);
    for seg in path.split('/').filter(|s| !s.is_empty()) {
        p.add_option(CoapOption::UriPath, seg.as_bytes().to_vec());
    }
}

pub fn add_uri_query(p: &mut Packet, q: &str) {
    p.add_option(CoapOption::UriQuery, q.as_bytes().to_vec());
}

/// A new request packet with the given method code and path (type, MID and token are set
/// by the endpoint that sends it).
pub fn new_request(method: u8, path: &str) -> Packet {
    let mut p = Packet::new();
    set_raw_code(&mut p, method);
    set_uri_path(&mut p, path);
    p
}

/// An empty message (ACK, RST or ping) with the given type and message ID; note that
/// `Packet::new()` alone would carry the GET code.
pub fn empty_message(ty: MessageType, mid: u16) -> Packet {
    let mut p = Packet::new();
    set_raw_code(&mut p, code::EMPTY);
    p.header.set_type(ty);
    p.header.message_id = mid;
    p
}

/// A new response packet with the given code (type, MID and token are set by the endpoint).
pub fn new_response(code: u8) -> Packet {
    let mut p = Packet::new();
    set_raw_code(&mut p, code);
    p
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn uint_options_are_minimal_and_round_trip() {
        assert_eq!(encode_uint(0), Vec::<u8>::new());
        assert_eq!(encode_uint(11542), vec![0x2D, 0x16]);
        for v in [0u32, 1, 255, 256, 65535, 65536, u32::MAX] {
            assert_eq!(decode_uint(&encode_uint(v)), Some(v));
        }
        assert_eq!(decode_uint(&[1, 2, 3, 4, 5]), None);
    }

    #[test]
    fn content_format_uses_wire_numbers() {
        let mut p = new_response(code::CONTENT);
        set_content_format(&mut p, content_format::LWM2M_TLV);
        let bytes = p.to_bytes().unwrap();
        let q = Packet::from_bytes(&bytes).unwrap();
        assert_eq!(content_format_of(&q), Some(11542));
        assert_eq!(code::to_string(raw_code(&q)), "2.05");
    }

    #[test]
    fn path_and_query_round_trip() {
        let mut p = new_request(code::POST, "/rd");
        add_uri_query(&mut p, "ep=dev1");
        add_uri_query(&mut p, "lt=60");
        let q = Packet::from_bytes(&p.to_bytes().unwrap()).unwrap();
        assert_eq!(uri_path(&q).unwrap(), vec!["rd"]);
        assert_eq!(uri_query(&q).unwrap(), vec!["ep=dev1", "lt=60"]);
    }
}
