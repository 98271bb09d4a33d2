//! [`SecretBytes`]: owned bytes of private key material that are wiped when dropped and never
//! printed. It does not protect against copies the caller makes of the contents.

use core::fmt;

/// Private key material (DER or PEM bytes): zeroed on drop, redacted in `Debug`.
#[derive(Clone, PartialEq, Eq, Default)]
pub struct SecretBytes(Vec<u8>);

impl SecretBytes {
    /// Takes ownership of `bytes`; they are wiped when this value is dropped.
    pub fn new(bytes: Vec<u8>) -> Self {
        SecretBytes(bytes)
    }

    /// The secret bytes; copy them only into storage that is itself protected.
    pub fn expose(&self) -> &[u8] {
        &self.0
    }

    /// Number of bytes.
    pub fn len(&self) -> usize {
        self.0.len()
    }

    /// True if there are no bytes.
    pub fn is_empty(&self) -> bool {
        self.0.is_empty()
    }
}

impl From<Vec<u8>> for SecretBytes {
    fn from(v: Vec<u8>) -> Self {
        SecretBytes(v)
    }
}

impl From<String> for SecretBytes {
    fn from(s: String) -> Self {
        SecretBytes(s.into_bytes())
    }
}

impl Drop for SecretBytes {
    fn drop(&mut self) {
        // mbedtls_platform_zeroize is written so the compiler cannot elide it.
        mbedtls::zeroize(&mut self.0);
    }
}

impl fmt::Debug for SecretBytes {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        write!(f, "SecretBytes([REDACTED; {}])", self.0.len())
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn debug_never_shows_the_bytes() {
        let s = SecretBytes::new(vec![0xAB; 3]);
        assert_eq!(format!("{s:?}"), "SecretBytes([REDACTED; 3])");
        assert_eq!(s.expose(), &[0xAB; 3]);
    }
}
