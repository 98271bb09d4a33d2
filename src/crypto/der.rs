//! A small, bounds-checked DER reader and writer for the structures mbedtls does not expose:
//! PKCS#7 SignedData, the signed part of a CSR, names, and the few X.509 extensions we read
//! or write (subjectAltName, basicConstraints, key identifiers, extendedKeyUsage).
//!
//! The reader never panics and never allocates: every length is checked against the bytes
//! left. Only low tag numbers (< 31) and definite lengths of up to four octets are accepted,
//! which covers everything X.509, PKCS#10 and CMS use. It is not a general ASN.1 library.

use super::CryptoError;

pub(crate) const SEQUENCE: u8 = 0x30;
pub(crate) const SET: u8 = 0x31;
pub(crate) const INTEGER: u8 = 0x02;
pub(crate) const BIT_STRING: u8 = 0x03;
pub(crate) const OCTET_STRING: u8 = 0x04;
pub(crate) const BOOLEAN: u8 = 0x01;
pub(crate) const OID: u8 = 0x06;
pub(crate) const UTF8_STRING: u8 = 0x0C;
pub(crate) const PRINTABLE_STRING: u8 = 0x13;
pub(crate) const T61_STRING: u8 = 0x14;
pub(crate) const IA5_STRING: u8 = 0x16;
pub(crate) const BMP_STRING: u8 = 0x1E;

/// Context-specific constructed tag `[n]`.
pub(crate) const fn context(n: u8) -> u8 {
    0xA0 | n
}

/// Object identifier contents (without tag and length) for the OIDs we match or write.
pub(crate) mod oid {
    pub(crate) const COMMON_NAME: &[u8] = &[0x55, 0x04, 0x03];
    pub(crate) const SUBJECT_KEY_ID: &[u8] = &[0x55, 0x1D, 0x0E];
    pub(crate) const SUBJECT_ALT_NAME: &[u8] = &[0x55, 0x1D, 0x11];
    pub(crate) const BASIC_CONSTRAINTS: &[u8] = &[0x55, 0x1D, 0x13];
    pub(crate) const AUTHORITY_KEY_ID: &[u8] = &[0x55, 0x1D, 0x23];
    pub(crate) const EXT_KEY_USAGE: &[u8] = &[0x55, 0x1D, 0x25];
    pub(crate) const KP_SERVER_AUTH: &[u8] = &[0x2B, 0x06, 0x01, 0x05, 0x05, 0x07, 0x03, 0x01];
    pub(crate) const KP_CLIENT_AUTH: &[u8] = &[0x2B, 0x06, 0x01, 0x05, 0x05, 0x07, 0x03, 0x02];
    pub(crate) const PKCS7_DATA: &[u8] = &[0x2A, 0x86, 0x48, 0x86, 0xF7, 0x0D, 0x01, 0x07, 0x01];
    pub(crate) const PKCS7_SIGNED_DATA: &[u8] =
        &[0x2A, 0x86, 0x48, 0x86, 0xF7, 0x0D, 0x01, 0x07, 0x02];
    pub(crate) const ECDSA_SHA256: &[u8] = &[0x2A, 0x86, 0x48, 0xCE, 0x3D, 0x04, 0x03, 0x02];
    pub(crate) const ECDSA_SHA384: &[u8] = &[0x2A, 0x86, 0x48, 0xCE, 0x3D, 0x04, 0x03, 0x03];
    pub(crate) const ECDSA_SHA512: &[u8] = &[0x2A, 0x86, 0x48, 0xCE, 0x3D, 0x04, 0x03, 0x04];
    pub(crate) const RSA_SHA256: &[u8] = &[0x2A, 0x86, 0x48, 0x86, 0xF7, 0x0D, 0x01, 0x01, 0x0B];
    pub(crate) const RSA_SHA384: &[u8] = &[0x2A, 0x86, 0x48, 0x86, 0xF7, 0x0D, 0x01, 0x01, 0x0C];
    pub(crate) const RSA_SHA512: &[u8] = &[0x2A, 0x86, 0x48, 0x86, 0xF7, 0x0D, 0x01, 0x01, 0x0D];
}

/// Why a DER walk stopped.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub(crate) struct DerError(pub(crate) &'static str);

impl DerError {
    /// Names the structure that was being read, for the error the caller sees.
    pub(crate) fn ctx(self, what: &'static str) -> CryptoError {
        CryptoError::malformed(what, self.0)
    }
}

pub(crate) type DerResult<T> = Result<T, DerError>;

/// One tag-length-value element.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub(crate) struct Tlv<'a> {
    pub(crate) tag: u8,
    /// The contents octets.
    pub(crate) value: &'a [u8],
    /// The whole element, header included (what a signature covers).
    pub(crate) raw: &'a [u8],
}

impl<'a> Tlv<'a> {
    /// A reader over this element's contents.
    pub(crate) fn reader(&self) -> Reader<'a> {
        Reader::new(self.value)
    }
}

/// Reads consecutive elements from a byte slice.
#[derive(Debug, Clone)]
pub(crate) struct Reader<'a> {
    data: &'a [u8],
}

impl<'a> Reader<'a> {
    pub(crate) fn new(data: &'a [u8]) -> Self {
        Reader { data }
    }

    pub(crate) fn is_empty(&self) -> bool {
        self.data.is_empty()
    }

    pub(crate) fn peek_tag(&self) -> Option<u8> {
        self.data.first().copied()
    }

    /// The next element, whatever its tag.
    pub(crate) fn read(&mut self) -> DerResult<Tlv<'a>> {
        let data = self.data;
        let (&tag, rest) = data
            .split_first()
            .ok_or(DerError("unexpected end of data"))?;
        if tag & 0x1F == 0x1F {
            return Err(DerError("high tag numbers are not supported"));
        }
        let (&first, mut rest) = rest.split_first().ok_or(DerError("missing length"))?;
        let len = if first < 0x80 {
            usize::from(first)
        } else if first == 0x80 {
            return Err(DerError("indefinite length is not DER"));
        } else {
            let n = usize::from(first & 0x7F);
            if n > 4 || rest.len() < n {
                return Err(DerError("length field too long or truncated"));
            }
            let (len_bytes, after) = rest.split_at(n);
            rest = after;
            len_bytes
                .iter()
                .fold(0usize, |acc, &b| (acc << 8) | usize::from(b))
        };
        if len > rest.len() {
            return Err(DerError("length exceeds the data"));
        }
        let header_len = data.len() - rest.len();
        let (value, after) = rest.split_at(len);
        let (raw, _) = data.split_at(header_len + len);
        self.data = after;
        Ok(Tlv { tag, value, raw })
    }

    /// The next element, which must have tag `tag`.
    pub(crate) fn expect(&mut self, tag: u8) -> DerResult<Tlv<'a>> {
        let tlv = self.read()?;
        if tlv.tag != tag {
            return Err(DerError("unexpected tag"));
        }
        Ok(tlv)
    }

    /// The next element if it has tag `tag`, otherwise nothing is consumed.
    pub(crate) fn optional(&mut self, tag: u8) -> DerResult<Option<Tlv<'a>>> {
        if self.peek_tag() == Some(tag) {
            self.expect(tag).map(Some)
        } else {
            Ok(None)
        }
    }

    /// Fails if anything is left.
    pub(crate) fn finish(&self) -> DerResult<()> {
        if self.data.is_empty() {
            Ok(())
        } else {
            Err(DerError("trailing data"))
        }
    }
}

/// `data` must be exactly one element with tag `tag`.
pub(crate) fn single(data: &[u8], tag: u8) -> DerResult<Tlv<'_>> {
    let mut r = Reader::new(data);
    let tlv = r.expect(tag)?;
    r.finish()?;
    Ok(tlv)
}

/// The contents of a BIT STRING with no unused bits (keys, signatures).
pub(crate) fn bit_string_bytes<'a>(tlv: &Tlv<'a>) -> DerResult<&'a [u8]> {
    match tlv.value.split_first() {
        Some((0, bytes)) if tlv.tag == BIT_STRING => Ok(bytes),
        _ => Err(DerError("expected a BIT STRING of whole octets")),
    }
}

/// Decodes a directory string (the value of a name attribute) to UTF-8.
pub(crate) fn directory_string(tlv: &Tlv<'_>) -> DerResult<String> {
    match tlv.tag {
        UTF8_STRING | PRINTABLE_STRING | IA5_STRING => core::str::from_utf8(tlv.value)
            .map(str::to_string)
            .map_err(|_| DerError("invalid UTF-8 in a string")),
        // T.61 in practice carries Latin-1.
        T61_STRING => Ok(tlv.value.iter().map(|&b| char::from(b)).collect()),
        BMP_STRING => {
            if tlv.value.len() % 2 != 0 {
                return Err(DerError("odd-length BMPString"));
            }
            let units = tlv
                .value
                .chunks_exact(2)
                .map(|c| u16::from_be_bytes([c[0], c[1]]));
            char::decode_utf16(units)
                .collect::<Result<String, _>>()
                .map_err(|_| DerError("invalid BMPString"))
        }
        _ => Err(DerError("unsupported string type")),
    }
}

// ---- writing ----

/// Appends a DER length.
pub(crate) fn write_len(out: &mut Vec<u8>, len: usize) {
    if len < 0x80 {
        out.push(len as u8);
    } else {
        let bytes = len.to_be_bytes();
        let skip = bytes.iter().take_while(|&&b| b == 0).count();
        out.push(0x80 | (bytes.len() - skip) as u8);
        out.extend_from_slice(&bytes[skip..]);
    }
}

/// One element with the given tag and contents.
pub(crate) fn tlv(tag: u8, value: &[u8]) -> Vec<u8> {
    let mut out = Vec::with_capacity(value.len() + 6);
    out.push(tag);
    write_len(&mut out, value.len());
    out.extend_from_slice(value);
    out
}

/// A constructed element whose contents are `parts` concatenated.
pub(crate) fn constructed(tag: u8, parts: &[&[u8]]) -> Vec<u8> {
    tlv(tag, &parts.concat())
}

pub(crate) fn sequence(parts: &[&[u8]]) -> Vec<u8> {
    constructed(SEQUENCE, parts)
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn reads_short_and_long_lengths() {
        let long = tlv(OCTET_STRING, &[7u8; 300]);
        assert_eq!(&long[..4], &[0x04, 0x82, 0x01, 0x2C]);
        let t = single(&long, OCTET_STRING).unwrap();
        assert_eq!(t.value.len(), 300);
        assert_eq!(t.raw, &long[..]);

        let seq = sequence(&[&tlv(INTEGER, &[1]), &tlv(BOOLEAN, &[0xFF])]);
        let mut r = single(&seq, SEQUENCE).unwrap().reader();
        assert_eq!(r.expect(INTEGER).unwrap().value, &[1]);
        assert_eq!(r.optional(INTEGER).unwrap(), None);
        assert!(r.optional(BOOLEAN).unwrap().is_some());
        r.finish().unwrap();
    }

    #[test]
    fn rejects_bad_encodings_without_panicking() {
        for bad in [
            &[][..],
            &[0x30],
            &[0x30, 0x80, 0x00, 0x00],
            &[0x30, 0x85, 1, 1, 1, 1, 1],
            &[0x30, 0x82, 0x01],
            &[0x30, 0x03, 0x01],
            &[0x1F, 0x01, 0x00],
            &[0x30, 0x84, 0xFF, 0xFF, 0xFF, 0xFF],
        ] {
            assert!(Reader::new(bad).read().is_err(), "{bad:?}");
        }
        assert_eq!(
            single(&[0x05, 0x00, 0x00], 0x05),
            Err(DerError("trailing data"))
        );
        assert!(bit_string_bytes(&single(&[0x03, 0x02, 0x01, 0xFF], BIT_STRING).unwrap()).is_err());
    }

    #[test]
    fn decodes_directory_strings() {
        let bmp = single(&[BMP_STRING, 4, 0, b'h', 0, b'i'], BMP_STRING).unwrap();
        assert_eq!(directory_string(&bmp).unwrap(), "hi");
        let t61 = single(&[T61_STRING, 1, 0xE9], T61_STRING).unwrap();
        assert_eq!(directory_string(&t61).unwrap(), "é");
        let bad = single(&[UTF8_STRING, 1, 0xFF], UTF8_STRING).unwrap();
        assert!(directory_string(&bad).is_err());
    }
}
