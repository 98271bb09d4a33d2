//! PEM (RFC 7468) decoding and encoding for certificates, keys and CSRs.
//!
//! Decoding finds every `-----BEGIN X-----` … `-----END X-----` block in a text, ignoring
//! anything between blocks (as `openssl x509 -text` output has), and rejects legacy encrypted
//! blocks (headers such as `Proc-Type:`). It does not interpret the DER inside.

use super::CryptoError;

/// One decoded PEM block.
pub(crate) struct PemBlock {
    pub(crate) label: String,
    pub(crate) der: Vec<u8>,
}

impl Drop for PemBlock {
    // Blocks may hold private keys.
    fn drop(&mut self) {
        mbedtls::zeroize(&mut self.der);
    }
}

/// All PEM blocks in `text`, in order. An input with no block at all is an error.
pub(crate) fn decode_all(text: &[u8]) -> Result<Vec<PemBlock>, CryptoError> {
    let err = |reason: &str| CryptoError::malformed("PEM", reason);
    // Comments around blocks may be in any encoding; the blocks themselves are ASCII.
    let text = String::from_utf8_lossy(text);
    let mut blocks = Vec::new();
    let mut lines = text.lines().map(str::trim);
    while let Some(line) = lines.next() {
        let Some(label) = line
            .strip_prefix("-----BEGIN ")
            .and_then(|l| l.strip_suffix("-----"))
        else {
            continue;
        };
        let end = format!("-----END {label}-----");
        let mut body = Vec::new();
        let mut closed = false;
        for line in lines.by_ref() {
            if line == end {
                closed = true;
                break;
            }
            if line.starts_with("-----") {
                return Err(err("mismatched BEGIN/END lines"));
            }
            if line.contains(':') {
                return Err(err("encrypted or header-carrying PEM is not supported"));
            }
            body.extend_from_slice(line.as_bytes());
        }
        if !closed {
            return Err(err("missing END line"));
        }
        let der = base64_decode(&body);
        // The base64 text of a key is as secret as the key.
        mbedtls::zeroize(&mut body);
        let der = der.ok_or_else(|| err("invalid base64"))?;
        blocks.push(PemBlock {
            label: label.to_string(),
            der,
        });
    }
    if blocks.is_empty() {
        return Err(err("no PEM block found"));
    }
    Ok(blocks)
}

/// `der` as a PEM block with 64-column base64 lines and a trailing newline.
pub(crate) fn encode(label: &str, der: &[u8]) -> String {
    let b64 = base64_encode(der);
    let mut out = String::with_capacity(b64.len() + b64.len() / 64 + 2 * label.len() + 40);
    out.push_str("-----BEGIN ");
    out.push_str(label);
    out.push_str("-----\n");
    for chunk in b64.as_bytes().chunks(64) {
        // base64 output is ASCII, so every chunk is valid UTF-8.
        out.push_str(core::str::from_utf8(chunk).unwrap_or_default());
        out.push('\n');
    }
    out.push_str("-----END ");
    out.push_str(label);
    out.push_str("-----\n");
    out
}

const ALPHABET: &[u8; 64] = b"ABCDEFGHIJKLMNOPQRSTUVWXYZabcdefghijklmnopqrstuvwxyz0123456789+/";

fn base64_encode(data: &[u8]) -> String {
    let mut out = String::with_capacity(data.len().div_ceil(3) * 4);
    for chunk in data.chunks(3) {
        let b = [
            chunk[0],
            *chunk.get(1).unwrap_or(&0),
            *chunk.get(2).unwrap_or(&0),
        ];
        let n = (u32::from(b[0]) << 16) | (u32::from(b[1]) << 8) | u32::from(b[2]);
        for i in 0..4 {
            if i <= chunk.len() {
                out.push(char::from(ALPHABET[((n >> (18 - 6 * i)) & 0x3F) as usize]));
            } else {
                out.push('=');
            }
        }
    }
    out
}

/// Standard base64 with padding; whitespace must already be removed. `None` if invalid.
fn base64_decode(text: &[u8]) -> Option<Vec<u8>> {
    if text.len() % 4 != 0 {
        return None;
    }
    let value = |c: u8| -> Option<u32> {
        Some(match c {
            b'A'..=b'Z' => c - b'A',
            b'a'..=b'z' => c - b'a' + 26,
            b'0'..=b'9' => c - b'0' + 52,
            b'+' => 62,
            b'/' => 63,
            _ => return None,
        } as u32)
    };
    let mut out = Vec::with_capacity(text.len() / 4 * 3);
    let quads = text.len() / 4;
    for (i, q) in text.chunks_exact(4).enumerate() {
        let pad = q.iter().rev().take_while(|&&c| c == b'=').count();
        if pad > 2 || (pad > 0 && i + 1 != quads) {
            return None;
        }
        let mut n = 0u32;
        for &c in &q[..4 - pad] {
            n = (n << 6) | value(c)?;
        }
        n <<= 6 * pad as u32;
        let bytes = n.to_be_bytes();
        out.extend_from_slice(&bytes[1..4 - pad]);
    }
    Some(out)
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn base64_round_trips_every_length() {
        let data: Vec<u8> = (0..=255u8).collect();
        for n in 0..data.len() {
            let enc = base64_encode(&data[..n]);
            assert_eq!(base64_decode(enc.as_bytes()).unwrap(), &data[..n]);
        }
        assert_eq!(base64_encode(b"foob"), "Zm9vYg==");
        assert!(base64_decode(b"Zm9v!g==").is_none());
        assert!(base64_decode(b"Zg==Zm9v").is_none());
        assert!(base64_decode(b"Zm9").is_none());
    }

    #[test]
    fn decodes_several_blocks_and_ignores_text_between() {
        let text = format!(
            "Certificate:\n  stuff\n{}junk\n{}",
            encode("CERTIFICATE", b"one"),
            encode("EC PRIVATE KEY", &[9u8; 100])
        );
        let blocks = decode_all(text.as_bytes()).unwrap();
        assert_eq!(blocks.len(), 2);
        assert_eq!(blocks[0].label, "CERTIFICATE");
        assert_eq!(blocks[0].der, b"one");
        assert_eq!(blocks[1].der, vec![9u8; 100]);
    }

    #[test]
    fn rejects_broken_pem() {
        for bad in [
            "",
            "no pem here",
            "-----BEGIN CERTIFICATE-----\nAAAA\n",
            "-----BEGIN CERTIFICATE-----\nAAAA\n-----END KEY-----\n",
            "-----BEGIN RSA PRIVATE KEY-----\nProc-Type: 4,ENCRYPTED\n\nAAAA\n-----END RSA PRIVATE KEY-----\n",
            "-----BEGIN CERTIFICATE-----\nA*AA\n-----END CERTIFICATE-----\n",
        ] {
            assert!(decode_all(bad.as_bytes()).is_err(), "{bad:?}");
        }
    }
}
