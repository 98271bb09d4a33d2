//! A read-only look at DTLS 1.2 records (RFC 6347 section 4.1) as they pass the session: the
//! plaintext alerts and hellos of epoch 0, which mbedtls consumes without telling us what they
//! said.
//!
//! mbedtls does all the real record processing; this module only reads headers so that a
//! failed handshake can name the alert the peer sent (unknown PSK identity, bad record MAC,
//! unknown CA, ...) and a finished one can say whether it resumed a session (the server echoed
//! the session ID the client offered, RFC 5246 section 7.4.1.3 and RFC 5077 section 3.4). It
//! never decrypts anything and never fails: whatever does not parse is simply not reported.

/// DTLS record content types.
pub(super) const ALERT: u8 = 21;
const HANDSHAKE: u8 = 22;
const CHANGE_CIPHER_SPEC: u8 = 20;
const APPLICATION_DATA: u8 = 23;

const RECORD_HEADER_LEN: usize = 13;
const HANDSHAKE_HEADER_LEN: usize = 12;
/// The largest record body RFC 6347 allows (2^14 plus expansion).
const MAX_RECORD_BODY: usize = 16384 + 2048;

/// Handshake message types we look into.
const CLIENT_HELLO: u8 = 1;
const SERVER_HELLO: u8 = 2;

/// One record of a datagram: its header fields and body.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub(super) struct Record<'a> {
    pub(super) content_type: u8,
    pub(super) epoch: u16,
    pub(super) body: &'a [u8],
}

/// The well-formed records at the start of `datagram`, stopping at the first header that is
/// not a DTLS 1.x record or a body that runs past the end.
pub(super) fn records(datagram: &[u8]) -> Vec<Record<'_>> {
    split(datagram).0
}

/// How many leading bytes of `datagram` are whole, well-formed records. mbedtls 2.28 must
/// only ever see those: bytes after the last whole record that are too few for a header make
/// it fail with an internal error, killing the session.
pub(super) fn well_formed_len(datagram: &[u8]) -> usize {
    split(datagram).1
}

fn split(datagram: &[u8]) -> (Vec<Record<'_>>, usize) {
    let mut out = Vec::new();
    let mut rest = datagram;
    while rest.len() >= RECORD_HEADER_LEN {
        let content_type = rest[0];
        let version_ok = rest[1] == 0xFE && (rest[2] == 0xFD || rest[2] == 0xFF);
        let type_ok = matches!(
            content_type,
            CHANGE_CIPHER_SPEC | ALERT | HANDSHAKE | APPLICATION_DATA
        );
        let epoch = u16::from_be_bytes([rest[3], rest[4]]);
        let len = usize::from(u16::from_be_bytes([rest[11], rest[12]]));
        if !version_ok || !type_ok || len > MAX_RECORD_BODY || rest.len() < RECORD_HEADER_LEN + len
        {
            break;
        }
        out.push(Record {
            content_type,
            epoch,
            body: &rest[RECORD_HEADER_LEN..RECORD_HEADER_LEN + len],
        });
        rest = &rest[RECORD_HEADER_LEN + len..];
    }
    (out, datagram.len() - rest.len())
}

/// What the epoch-0 records of a datagram said, as far as the session cares.
#[derive(Debug, Default, Clone, PartialEq, Eq)]
pub(super) struct Plaintext {
    /// The last plaintext alert: (level, description).
    pub(super) alert: Option<(u8, u8)>,
    /// The session ID of a ClientHello, if the datagram held one.
    pub(super) client_hello_session_id: Option<Vec<u8>>,
    /// The session ID of a ServerHello, if the datagram held one.
    pub(super) server_hello_session_id: Option<Vec<u8>>,
}

/// Reads the plaintext (epoch 0) alerts and hellos of a datagram.
pub(super) fn inspect(datagram: &[u8]) -> Plaintext {
    let mut seen = Plaintext::default();
    for record in records(datagram).iter().filter(|r| r.epoch == 0) {
        match record.content_type {
            ALERT if record.body.len() == 2 => {
                seen.alert = Some((record.body[0], record.body[1]));
            }
            HANDSHAKE => inspect_handshake(record.body, &mut seen),
            _ => {}
        }
    }
    seen
}

fn inspect_handshake(mut body: &[u8], seen: &mut Plaintext) {
    while body.len() >= HANDSHAKE_HEADER_LEN {
        let msg_type = body[0];
        let fragment_offset = u32::from_be_bytes([0, body[6], body[7], body[8]]);
        let fragment_len = u32::from_be_bytes([0, body[9], body[10], body[11]]) as usize;
        let Some(fragment) = body.get(HANDSHAKE_HEADER_LEN..HANDSHAKE_HEADER_LEN + fragment_len)
        else {
            return;
        };
        if fragment_offset == 0 {
            // ClientHello and ServerHello both start with version(2) random(32) and then the
            // session ID as a length-prefixed vector of at most 32 bytes.
            let session_id = fragment.get(34).and_then(|&n| {
                let n = usize::from(n);
                (n <= 32).then(|| fragment.get(35..35 + n)).flatten()
            });
            match (msg_type, session_id) {
                (CLIENT_HELLO, Some(id)) => seen.client_hello_session_id = Some(id.to_vec()),
                (SERVER_HELLO, Some(id)) => seen.server_hello_session_id = Some(id.to_vec()),
                _ => {}
            }
        }
        body = &body[HANDSHAKE_HEADER_LEN + fragment_len..];
    }
}

/// The TLS alert description's name (RFC 5246 section 7.2, RFC 4279 for 115).
pub(super) fn alert_name(description: u8) -> &'static str {
    match description {
        0 => "close_notify",
        10 => "unexpected_message",
        20 => "bad_record_mac",
        22 => "record_overflow",
        30 => "decompression_failure",
        40 => "handshake_failure",
        42 => "bad_certificate",
        43 => "unsupported_certificate",
        44 => "certificate_revoked",
        45 => "certificate_expired",
        46 => "certificate_unknown",
        47 => "illegal_parameter",
        48 => "unknown_ca",
        49 => "access_denied",
        50 => "decode_error",
        51 => "decrypt_error",
        70 => "protocol_version",
        71 => "insufficient_security",
        80 => "internal_error",
        90 => "user_canceled",
        100 => "no_renegotiation",
        110 => "unsupported_extension",
        112 => "unrecognized_name",
        115 => "unknown_psk_identity",
        _ => "unassigned",
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    fn record(content_type: u8, epoch: u16, body: &[u8]) -> Vec<u8> {
        let mut r = vec![content_type, 0xFE, 0xFD];
        r.extend_from_slice(&epoch.to_be_bytes());
        r.extend_from_slice(&[0, 0, 0, 0, 0, 1]);
        r.extend_from_slice(&(body.len() as u16).to_be_bytes());
        r.extend_from_slice(body);
        r
    }

    fn hello(msg_type: u8, session_id: &[u8]) -> Vec<u8> {
        let mut body = vec![0xFE, 0xFD];
        body.extend_from_slice(&[7; 32]);
        body.push(session_id.len() as u8);
        body.extend_from_slice(session_id);
        body.extend_from_slice(&[0, 2, 0xC0, 0xA8, 1, 0]);
        let len = (body.len() as u32).to_be_bytes();
        let mut msg = vec![msg_type, len[1], len[2], len[3], 0, 0, 0, 0, 0];
        msg.extend_from_slice(&len[1..]);
        msg.extend_from_slice(&body);
        msg
    }

    #[test]
    fn reads_alerts_and_hello_session_ids_of_epoch_zero_only() {
        let mut datagram = record(HANDSHAKE, 0, &hello(SERVER_HELLO, &[1, 2, 3]));
        datagram.extend(record(ALERT, 0, &[2, 115]));
        datagram.extend(record(ALERT, 1, &[2, 20])); // encrypted epoch: not ours to read
        let seen = inspect(&datagram);
        assert_eq!(seen.alert, Some((2, 115)));
        assert_eq!(seen.server_hello_session_id, Some(vec![1, 2, 3]));
        assert_eq!(seen.client_hello_session_id, None);
        assert_eq!(alert_name(115), "unknown_psk_identity");

        let ch = record(HANDSHAKE, 0, &hello(CLIENT_HELLO, &[]));
        assert_eq!(inspect(&ch).client_hello_session_id, Some(vec![]));
    }

    #[test]
    fn stops_at_garbage_and_never_panics() {
        let good = record(APPLICATION_DATA, 1, &[9; 20]);
        let mut datagram = good.clone();
        datagram.extend_from_slice(&[0x17, 0xFE, 0xFD, 0, 1]); // truncated header
        assert_eq!(records(&datagram).len(), 1);
        assert_eq!(well_formed_len(&datagram), good.len());
        for cut in 0..good.len() {
            assert!(records(&good[..cut]).is_empty());
            let _ = inspect(&good[..cut]);
        }
        let mut wrong_version = good.clone();
        wrong_version[1] = 3;
        assert!(records(&wrong_version).is_empty());
        // A handshake record whose fragment length lies.
        let mut hs = hello(CLIENT_HELLO, &[5; 32]);
        hs[11] = 0xFF;
        assert_eq!(inspect(&record(HANDSHAKE, 0, &hs)), Plaintext::default());
        // A session ID length over 32 is not a session ID.
        let mut long = hello(SERVER_HELLO, &[]);
        long[HANDSHAKE_HEADER_LEN + 34] = 40;
        assert_eq!(
            inspect(&record(HANDSHAKE, 0, &long)).server_hello_session_id,
            None
        );
    }
}
