//! The production seed of the message-ID/token generator, from the operating system.
//! (Key material does not come from here: the DTLS `crypto::Drbg` seeds itself from the OS.)

use std::fs::File;
use std::io::{self, Read};

/// Eight bytes from `/dev/urandom`.
pub(crate) fn os_seed() -> io::Result<u64> {
    let mut b = [0u8; 8];
    File::open("/dev/urandom")?.read_exact(&mut b)?;
    Ok(u64::from_le_bytes(b))
}

#[cfg(test)]
mod tests {
    #[test]
    fn two_seeds_differ() {
        assert_ne!(super::os_seed().unwrap(), super::os_seed().unwrap());
    }
}
