//! [`Drbg`]: the random bit generator behind key generation, signatures, certificate serials
//! and (in `dtls/`) handshakes — mbedtls' CTR-DRBG (NIST SP 800-90A, AES-256).
//!
//! Production seeds it from the operating system ([`Drbg::from_os_entropy`]); tests and the
//! simulator seed it from a number or bytes ([`Drbg::from_seed`]) so that a run, including the
//! keys it generates, is reproducible. It does not provide the cheap non-cryptographic
//! generator used for CoAP message IDs (that is `crate::rng`).

use std::sync::Arc;

use mbedtls::rng::{CtrDrbg, OsEntropy, Random, RngCallback};

use super::{mbed, CryptoError};

/// A CTR-DRBG instance. Pass it as `&mut Drbg` wherever randomness is needed.
pub struct Drbg {
    rng: SharedRng,
}

impl Drbg {
    /// A generator seeded (and periodically reseeded) from the operating system's entropy.
    pub fn from_os_entropy() -> Result<Self, CryptoError> {
        let entropy = Arc::new(OsEntropy::new());
        let ctr = CtrDrbg::new(entropy, Some(b"estuary ctr-drbg"))
            .map_err(mbed("seeding CTR-DRBG from OS entropy"))?;
        Ok(Drbg {
            rng: SharedRng(Arc::new(ctr)),
        })
    }

    /// A deterministic generator for tests: the same seed always gives the same output.
    /// Never use it for real keys.
    pub fn from_seed(seed: u64) -> Self {
        Self::from_seed_bytes(&seed.to_le_bytes())
    }

    /// Like [`Drbg::from_seed`], with seed material of any length.
    pub fn from_seed_bytes(seed: &[u8]) -> Self {
        let mut stream = SeedStream::new(seed);
        let entropy = move |data: *mut u8, len: usize| -> i32 { stream.fill(data, len) };
        match CtrDrbg::with_mut_entropy(entropy, Some(b"estuary seeded ctr-drbg")) {
            Ok(ctr) => Drbg {
                rng: SharedRng(Arc::new(ctr)),
            },
            // Seeding only fails when the entropy callback fails, and ours cannot.
            Err(e) => unreachable!("seeding CTR-DRBG from a fixed seed failed: {e}"),
        }
    }

    /// Fills `buf` with random bytes.
    pub fn fill_bytes(&mut self, buf: &mut [u8]) -> Result<(), CryptoError> {
        // CTR-DRBG serves at most 1024 bytes per request.
        for chunk in buf.chunks_mut(1024) {
            self.rng
                .random(chunk)
                .map_err(mbed("drawing random bytes"))?;
        }
        Ok(())
    }

    /// The generator in the form mbedtls' functions take.
    pub(crate) fn mbedtls(&mut self) -> &mut SharedRng {
        &mut self.rng
    }

    /// A shared handle for mbedtls APIs that keep the generator (`ssl::Config::set_rng`).
    #[allow(dead_code)] // used by dtls/
    pub(crate) fn shared(&self) -> Arc<CtrDrbg> {
        Arc::clone(&self.rng.0)
    }
}

impl core::fmt::Debug for Drbg {
    fn fmt(&self, f: &mut core::fmt::Formatter<'_>) -> core::fmt::Result {
        f.write_str("Drbg { .. }")
    }
}

/// The CTR-DRBG behind an `Arc`, so `dtls/` can share it with an SSL config while key
/// generation still borrows it mutably through [`Drbg`]. CTR-DRBG locks internally.
pub(crate) struct SharedRng(Arc<CtrDrbg>);

impl RngCallback for SharedRng {
    unsafe extern "C" fn call(
        user_data: *mut core::ffi::c_void,
        data: *mut u8,
        len: usize,
    ) -> core::ffi::c_int {
        <CtrDrbg as RngCallback>::call(user_data, data, len)
    }

    fn data_ptr(&self) -> *mut core::ffi::c_void {
        self.0.data_ptr()
    }
}

/// Expands seed material into an endless byte stream: SHA-256(label ‖ counter ‖ seed) per
/// 32-byte block. Only the determinism matters here; CTR-DRBG does the rest.
struct SeedStream {
    seed: Vec<u8>,
    counter: u64,
    block: [u8; 32],
    used: usize,
}

impl SeedStream {
    fn new(seed: &[u8]) -> Self {
        SeedStream {
            seed: seed.to_vec(),
            counter: 0,
            block: [0; 32],
            used: 32,
        }
    }

    fn next_byte(&mut self) -> Option<u8> {
        if self.used == self.block.len() {
            let mut input = Vec::with_capacity(self.seed.len() + 24);
            input.extend_from_slice(b"estuary-seed");
            input.extend_from_slice(&self.counter.to_be_bytes());
            input.extend_from_slice(&self.seed);
            mbedtls::hash::Md::hash(mbedtls::hash::Type::Sha256, &input, &mut self.block).ok()?;
            self.counter += 1;
            self.used = 0;
        }
        let b = self.block[self.used];
        self.used += 1;
        Some(b)
    }

    /// The entropy callback: 0 on success, an mbedtls entropy error code otherwise.
    fn fill(&mut self, data: *mut u8, len: usize) -> i32 {
        const ENTROPY_SOURCE_FAILED: i32 = -0x003C;
        if data.is_null() {
            return ENTROPY_SOURCE_FAILED;
        }
        // SAFETY: mbedtls passes a writable buffer of `len` bytes.
        let out = unsafe { core::slice::from_raw_parts_mut(data, len) };
        for b in out {
            match self.next_byte() {
                Some(v) => *b = v,
                None => return ENTROPY_SOURCE_FAILED,
            }
        }
        0
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    fn draw(d: &mut Drbg, n: usize) -> Vec<u8> {
        let mut v = vec![0u8; n];
        d.fill_bytes(&mut v).unwrap();
        v
    }

    #[test]
    fn same_seed_same_bytes_different_seed_different_bytes() {
        let a = draw(&mut Drbg::from_seed(7), 3000);
        assert_eq!(a, draw(&mut Drbg::from_seed(7), 3000));
        assert_ne!(a, draw(&mut Drbg::from_seed(8), 3000));
        assert_ne!(a[..32], a[32..64]);
        assert_eq!(
            draw(&mut Drbg::from_seed_bytes(b"abc"), 64),
            draw(&mut Drbg::from_seed_bytes(b"abc"), 64)
        );
    }

    #[test]
    fn os_entropy_generators_differ() {
        let a = draw(&mut Drbg::from_os_entropy().unwrap(), 32);
        let b = draw(&mut Drbg::from_os_entropy().unwrap(), 32);
        assert_ne!(a, b);
    }
}
