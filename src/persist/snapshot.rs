//! Everything a client persists, as one unit: the Security and Server objects, attribute
//! storage and the EST state, written as the four parts one after the other (the order the
//! per-part C calls use, so a file holds the same bytes either way). [`Snapshot::apply`] is
//! all-or-nothing: every part is decoded and validated before anything is installed.

use super::attributes::{attributes_persist, attributes_restore, AttributeStorage};
use super::est::{est_persist, est_restore};
use super::objects::{security_persist, security_restore, server_persist, server_restore};
use super::{Part, PersistError};
use crate::dm::objects::{SecurityObject, ServerObject};
use crate::est::EstState;
use crate::Client;

/// The order parts are written and read in.
pub const PARTS: [Part; 4] = [Part::Security, Part::Server, Part::Attributes, Part::Est];

/// One part of `client` as it would be persisted now. The EST part is refused while an EST
/// exchange (or the bootstrap that leads to one) is in flight: that state cannot be rolled
/// back, so a copy taken mid-way could not be trusted.
pub fn persist_part(client: &Client, part: Part) -> Result<Vec<u8>, PersistError> {
    if part == Part::Est && client.est_in_progress() {
        return Err(PersistError::EstBusy);
    }
    encode_part(client, part)
}

/// One part of `client` encoded as it is now, busy or not (for `is_modified`).
pub fn encode_part(client: &Client, part: Part) -> Result<Vec<u8>, PersistError> {
    match part {
        Part::Security => security_persist(&client.data_model().security),
        Part::Server => server_persist(&client.data_model().server),
        Part::Attributes => attributes_persist(client.attribute_storage()),
        Part::Est => est_persist(client.est_state()),
    }
}

/// A decoded part, ready to be installed.
pub enum Decoded {
    Security(SecurityObject),
    Server(ServerObject),
    Attributes(AttributeStorage),
    /// Boxed: an EST state with its certificates is large.
    Est(Box<EstState>),
}

/// Decodes the `part` at the start of `input`; returns it and the bytes it took.
pub fn decode_part(input: &[u8], part: Part) -> Result<(Decoded, usize), PersistError> {
    Ok(match part {
        Part::Security => {
            let (o, n) = security_restore(input)?;
            (Decoded::Security(o), n)
        }
        Part::Server => {
            let (o, n) = server_restore(input)?;
            (Decoded::Server(o), n)
        }
        Part::Attributes => {
            let (o, n) = attributes_restore(input)?;
            (Decoded::Attributes(o), n)
        }
        Part::Est => {
            let (o, n) = est_restore(input)?;
            (Decoded::Est(Box::new(o)), n)
        }
    })
}

/// Refuses changes to a running client: restoring is for before [`Client::start`].
pub fn check_not_started(client: &Client) -> Result<(), PersistError> {
    if client.is_started() {
        return Err(PersistError::ClientStarted);
    }
    Ok(())
}

impl Decoded {
    /// Installs the part in `client` (which must not have started).
    pub fn install(self, client: &mut Client) {
        match self {
            Decoded::Security(o) => client.data_model_mut().security = o,
            Decoded::Server(o) => client.data_model_mut().server = o,
            Decoded::Attributes(a) => client.restore_attribute_storage(a),
            Decoded::Est(s) => client.restore_est_state(*s),
        }
    }
}

/// Every persisted part of a client, decoded.
pub struct Snapshot {
    parts: Vec<(Decoded, Vec<u8>)>,
}

impl Snapshot {
    /// The four parts of `client`, encoded (refused while EST is in flight).
    pub fn encode(client: &Client) -> Result<Vec<u8>, PersistError> {
        let mut out = Vec::new();
        for part in PARTS {
            out.extend(persist_part(client, part)?);
        }
        Ok(out)
    }

    /// Decodes all four parts; `input` must hold exactly them.
    pub fn decode(input: &[u8]) -> Result<Snapshot, PersistError> {
        let mut rest = input;
        let mut parts = Vec::with_capacity(PARTS.len());
        for part in PARTS {
            let (d, used) = decode_part(rest, part)?;
            parts.push((d, rest[..used].to_vec()));
            rest = &rest[used..];
        }
        if !rest.is_empty() {
            return Err(PersistError::malformed(format!(
                "{} bytes after the last part",
                rest.len()
            )));
        }
        Ok(Snapshot { parts })
    }

    /// The encoded bytes of each part, as decoded (for modification tracking).
    pub fn part_bytes(&self) -> impl Iterator<Item = (Part, &[u8])> {
        PARTS
            .iter()
            .zip(&self.parts)
            .map(|(p, (_, b))| (*p, b.as_slice()))
    }

    /// Installs every part in `client`; refused (with nothing changed) once it has started.
    pub fn apply(self, client: &mut Client) -> Result<(), PersistError> {
        check_not_started(client)?;
        for (d, _) in self.parts {
            d.install(client);
        }
        Ok(())
    }

    /// Decodes `input` and installs it in `client`: all or nothing.
    pub fn restore(client: &mut Client, input: &[u8]) -> Result<(), PersistError> {
        Snapshot::decode(input)?.apply(client)
    }
}

#[cfg(test)]
mod tests {
    use super::*;
    use crate::dm::objects::{SecurityInstance, ServerInstance};
    use crate::dm::Path;
    use crate::lwm2m::attributes::{AttributeStore, Attributes};
    use crate::rng::SeededRng;
    use crate::time::{Instant, Now, UtcTime};
    use crate::ClientConfig;

    fn client(name: &str) -> Client {
        Client::new(ClientConfig::new(name), Box::new(SeededRng::new(1))).unwrap()
    }

    fn full() -> Client {
        let mut c = client("full");
        let dm = c.data_model_mut();
        dm.security
            .insert(3, SecurityInstance::nosec("coap://127.0.0.1:5683", 7))
            .unwrap();
        dm.server.insert(0, ServerInstance::new(7, 60)).unwrap();
        let mut a = AttributeStore::default();
        a.set(
            Path::instance(3, 0),
            Attributes {
                pmin: Some(1),
                ..Default::default()
            },
        )
        .unwrap();
        c.restore_attribute_storage([(7, a)].into());
        c.restore_est_state(crate::persist::est::enrolled_for_tests(3));
        c
    }

    #[test]
    fn all_parts_round_trip_and_install_together() {
        let a = full();
        let bytes = Snapshot::encode(&a).unwrap();
        let snap = Snapshot::decode(&bytes).unwrap();
        let parts: Vec<Part> = snap.part_bytes().map(|(p, _)| p).collect();
        assert_eq!(parts, PARTS);
        let total: usize = snap.part_bytes().map(|(_, b)| b.len()).sum();
        assert_eq!(total, bytes.len());
        let mut b = client("b");
        snap.apply(&mut b).unwrap();
        assert_eq!(Snapshot::encode(&b).unwrap(), bytes);
        assert_eq!(b.attribute_storage().count(), 1);
        assert!(b.est_state().is_enrolled());
    }

    #[test]
    fn a_started_client_is_not_restored() {
        let bytes = Snapshot::encode(&full()).unwrap();
        let mut c = client("running");
        c.data_model_mut()
            .security
            .insert(0, SecurityInstance::nosec("coap://127.0.0.1:5683", 9))
            .unwrap();
        c.data_model_mut()
            .server
            .insert(0, ServerInstance::new(9, 60))
            .unwrap();
        c.start(Now::new(
            Instant::from_millis(0),
            UtcTime::from_unix_seconds(0),
        ))
        .unwrap();
        let before = Snapshot::encode(&c).unwrap();
        assert_eq!(
            Snapshot::restore(&mut c, &bytes),
            Err(PersistError::ClientStarted)
        );
        assert_eq!(Snapshot::encode(&c).unwrap(), before);
    }
}
