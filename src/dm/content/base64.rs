//! Base64 (RFC 4648): the standard alphabet with padding for opaque values in text/plain
//! (LwM2M 1.1 §7.4.1), the URL-safe alphabet without padding for SenML JSON `vd`
//! (RFC 8428 §4.3). Decoding is strict about the alphabet and never panics.

const STANDARD: &[u8; 64] = b"ABCDEFGHIJKLMNOPQRSTUVWXYZabcdefghijklmnopqrstuvwxyz0123456789+/";
const URL_SAFE: &[u8; 64] = b"ABCDEFGHIJKLMNOPQRSTUVWXYZabcdefghijklmnopqrstuvwxyz0123456789-_";

/// Which alphabet and whether to pad.
#[derive(Copy, Clone, Debug, PartialEq, Eq)]
pub enum Alphabet {
    /// `+/` with `=` padding.
    Standard,
    /// `-_`, padding omitted.
    UrlSafe,
}

impl Alphabet {
    fn table(self) -> &'static [u8; 64] {
        match self {
            Alphabet::Standard => STANDARD,
            Alphabet::UrlSafe => URL_SAFE,
        }
    }
}

pub fn encode(data: &[u8], alphabet: Alphabet) -> String {
    let t = alphabet.table();
    let mut out = String::with_capacity(data.len().div_ceil(3) * 4);
    for chunk in data.chunks(3) {
        let b = [
            chunk[0],
            chunk.get(1).copied().unwrap_or(0),
            chunk.get(2).copied().unwrap_or(0),
        ];
        let n = (u32::from(b[0]) << 16) | (u32::from(b[1]) << 8) | u32::from(b[2]);
        let chars = chunk.len() + 1;
        for i in 0..4 {
            if i < chars {
                out.push(char::from(t[((n >> (18 - 6 * i)) & 0x3F) as usize]));
            } else if alphabet == Alphabet::Standard {
                out.push('=');
            }
        }
    }
    out
}

/// Decodes either alphabet's text; padding is optional but, when present, must be right.
pub fn decode(text: &str, alphabet: Alphabet) -> Option<Vec<u8>> {
    let t = alphabet.table();
    let bytes = text.as_bytes();
    let unpadded = text.trim_end_matches('=');
    let pad = bytes.len() - unpadded.len();
    if pad > 2 || (pad > 0 && bytes.len() % 4 != 0) || unpadded.len() % 4 == 1 {
        return None;
    }
    let mut out = Vec::with_capacity(unpadded.len() * 3 / 4);
    let mut acc: u32 = 0;
    let mut bits = 0u32;
    for c in unpadded.bytes() {
        let v = t.iter().position(|x| *x == c)? as u32;
        acc = (acc << 6) | v;
        bits += 6;
        if bits >= 8 {
            bits -= 8;
            out.push((acc >> bits) as u8);
            acc &= (1 << bits) - 1;
        }
    }
    // Leftover bits must be zero, or two encodings would decode to the same bytes.
    if acc != 0 {
        return None;
    }
    Some(out)
}

#[cfg(test)]
mod tests {
    use super::*;

    /// RFC 4648 §10 test vectors.
    #[test]
    fn rfc4648_vectors() {
        let v = [
            ("", ""),
            ("f", "Zg=="),
            ("fo", "Zm8="),
            ("foo", "Zm9v"),
            ("foob", "Zm9vYg=="),
            ("fooba", "Zm9vYmE="),
            ("foobar", "Zm9vYmFy"),
        ];
        for (plain, enc) in v {
            assert_eq!(encode(plain.as_bytes(), Alphabet::Standard), enc);
            assert_eq!(decode(enc, Alphabet::Standard).unwrap(), plain.as_bytes());
            let url = enc.trim_end_matches('=');
            assert_eq!(encode(plain.as_bytes(), Alphabet::UrlSafe), url);
            assert_eq!(decode(url, Alphabet::UrlSafe).unwrap(), plain.as_bytes());
        }
        assert_eq!(encode(&[0xFB, 0xFF], Alphabet::UrlSafe), "-_8");
        assert_eq!(encode(&[0xFB, 0xFF], Alphabet::Standard), "+/8=");
    }

    #[test]
    fn bad_text_is_refused() {
        for s in ["Z", "Zg=", "Zg===", "Z===", "Zh==", "Zm9v!", "Zg==Zg=="] {
            assert_eq!(decode(s, Alphabet::Standard), None, "{s}");
        }
        assert_eq!(decode("+/8=", Alphabet::UrlSafe), None);
    }
}
