//! The frame every persisted part is written in: a magic, the part it holds, a format
//! version, the CBOR payload's length, the payload, and a CRC-32 over all of it. Reading
//! checks each field before the payload is looked at, so a truncated, bit-flipped or
//! newer-format stream is refused with a precise error.

use super::PersistError;

/// "ESTY": Estuary persistence.
pub const MAGIC: [u8; 4] = *b"ESTY";
/// Bytes before the payload: magic, part, version, length.
pub const HEADER_LEN: usize = 4 + 1 + 2 + 4;
/// Bytes after the payload: the CRC.
pub const TRAILER_LEN: usize = 4;
/// Largest payload accepted, so a corrupt length cannot make us allocate gigabytes.
pub const MAX_PAYLOAD: usize = 1 << 20;

/// Which part a frame holds.
#[derive(Copy, Clone, Debug, PartialEq, Eq)]
pub enum Part {
    Security = 1,
    Server = 2,
    Attributes = 3,
    Est = 4,
}

impl Part {
    fn from_u8(v: u8) -> Option<Part> {
        Some(match v {
            1 => Part::Security,
            2 => Part::Server,
            3 => Part::Attributes,
            4 => Part::Est,
            _ => return None,
        })
    }
}

/// Wraps `payload` in a frame.
pub fn write(part: Part, version: u16, payload: &[u8]) -> Result<Vec<u8>, PersistError> {
    if payload.len() > MAX_PAYLOAD {
        return Err(PersistError::TooLarge(payload.len()));
    }
    let mut out = Vec::with_capacity(HEADER_LEN + payload.len() + TRAILER_LEN);
    out.extend_from_slice(&MAGIC);
    out.push(part as u8);
    out.extend_from_slice(&version.to_be_bytes());
    out.extend_from_slice(&(payload.len() as u32).to_be_bytes());
    out.extend_from_slice(payload);
    let crc = crc32fast::hash(&out);
    out.extend_from_slice(&crc.to_be_bytes());
    Ok(out)
}

/// Reads one frame of `part` from the start of `input`; returns its payload and the number
/// of bytes the frame took. Versions newer than `max_version` are refused.
pub fn read(
    input: &[u8],
    part: Part,
    max_version: u16,
) -> Result<(u16, &[u8], usize), PersistError> {
    if input.len() < HEADER_LEN {
        return Err(PersistError::Truncated);
    }
    if input[..4] != MAGIC {
        return Err(PersistError::BadMagic);
    }
    let found = Part::from_u8(input[4]).ok_or(PersistError::UnknownPart(input[4]))?;
    if found != part {
        return Err(PersistError::WrongPart {
            expected: part,
            found,
        });
    }
    let version = u16::from_be_bytes([input[5], input[6]]);
    let len = u32::from_be_bytes([input[7], input[8], input[9], input[10]]) as usize;
    if len > MAX_PAYLOAD {
        return Err(PersistError::TooLarge(len));
    }
    let total = HEADER_LEN + len + TRAILER_LEN;
    if input.len() < total {
        return Err(PersistError::Truncated);
    }
    let body_end = HEADER_LEN + len;
    let stored = u32::from_be_bytes([
        input[body_end],
        input[body_end + 1],
        input[body_end + 2],
        input[body_end + 3],
    ]);
    if crc32fast::hash(&input[..body_end]) != stored {
        return Err(PersistError::Checksum);
    }
    // Checked after the CRC, so a flipped version bit reads as corruption, not as "newer".
    if version > max_version {
        return Err(PersistError::NewerVersion {
            found: version,
            supported: max_version,
        });
    }
    if version == 0 {
        return Err(PersistError::Malformed("format version 0".into()));
    }
    Ok((version, &input[HEADER_LEN..body_end], total))
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn round_trip_and_layout() {
        let f = write(Part::Est, 1, b"abc").unwrap();
        assert_eq!(&f[..4], b"ESTY");
        assert_eq!(f[4], 4);
        assert_eq!(&f[5..7], &[0, 1]);
        assert_eq!(&f[7..11], &[0, 0, 0, 3]);
        assert_eq!(&f[11..14], b"abc");
        assert_eq!(f.len(), 18);
        let mut input = f.clone();
        input.extend_from_slice(b"next part");
        assert_eq!(read(&input, Part::Est, 1).unwrap(), (1, &b"abc"[..], 18));
    }

    #[test]
    fn every_truncation_and_bit_flip_is_refused() {
        let f = write(Part::Security, 1, b"some payload bytes").unwrap();
        for cut in 0..f.len() {
            assert!(read(&f[..cut], Part::Security, 1).is_err(), "cut {cut}");
        }
        for byte in 0..f.len() {
            for bit in 0..8 {
                let mut g = f.clone();
                g[byte] ^= 1 << bit;
                assert!(
                    read(&g, Part::Security, 1).is_err(),
                    "byte {byte} bit {bit}"
                );
            }
        }
    }

    #[test]
    fn newer_versions_and_other_parts_are_refused() {
        let f = write(Part::Server, 2, b"x").unwrap();
        assert_eq!(
            read(&f, Part::Server, 1),
            Err(PersistError::NewerVersion {
                found: 2,
                supported: 1
            })
        );
        assert_eq!(
            read(&f, Part::Security, 2),
            Err(PersistError::WrongPart {
                expected: Part::Security,
                found: Part::Server
            })
        );
        let mut huge = f.clone();
        huge[7] = 0xFF;
        assert!(matches!(
            read(&huge, Part::Server, 2),
            Err(PersistError::TooLarge(_))
        ));
    }
}
