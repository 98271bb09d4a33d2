//! The Security (/0) and Server (/1) objects as persisted parts. Each instance is written as
//! `[iid, {resource id: value}]`; restoring builds complete new objects (with the same
//! validation as instances added through the API) before anything in memory is replaced.

use ciborium::Value;

use super::cbor::{self, Fields};
use super::frame::{self, Part};
use super::PersistError;
use crate::dm::objects::{
    SecurityInstance, SecurityMode, SecurityObject, ServerInstance, ServerObject,
};
use crate::dm::Value as DmValue;

/// Format versions written (and the newest read).
pub const SECURITY_VERSION: u16 = 1;
pub const SERVER_VERSION: u16 = 1;

fn opt(key: u64, v: Option<i64>) -> Option<(u64, Value)> {
    v.map(|v| (key, Value::from(v)))
}

/// The Security object as a part.
pub fn security_persist(obj: &SecurityObject) -> Result<Vec<u8>, PersistError> {
    let instances = obj
        .iter()
        .map(|(iid, i)| {
            let mut res = vec![
                (0, Value::Text(i.server_uri.clone())),
                (1, Value::Bool(i.bootstrap_server)),
                (2, Value::from(i.security_mode.as_i64())),
                (3, Value::Bytes(i.public_cert_or_psk_identity.clone())),
                (4, Value::Bytes(i.server_public_key.clone())),
                (5, Value::Bytes(i.private_cert_or_psk_key.clone())),
            ];
            res.extend(opt(10, i.ssid.map(i64::from)));
            res.extend(opt(11, i.client_holdoff_time));
            res.extend(opt(12, i.bootstrap_server_account_timeout));
            if let Some(sni) = &i.server_name_indication {
                res.push((14, Value::Text(sni.clone())));
            }
            res.extend(opt(15, i.certificate_usage.map(i64::from)));
            Value::Array(vec![Value::from(iid), cbor::map(res)])
        })
        .collect();
    frame::write(
        Part::Security,
        SECURITY_VERSION,
        &cbor::to_bytes(&Value::Array(instances)),
    )
}

fn instances(payload: &[u8]) -> Result<Vec<(u16, Value)>, PersistError> {
    let Value::Array(items) = cbor::from_bytes(payload)? else {
        return Err(PersistError::malformed("instances are not an array"));
    };
    items
        .into_iter()
        .map(|item| match item {
            Value::Array(mut pair) if pair.len() == 2 => {
                let res = pair.pop().expect("len 2");
                let iid = match pair.pop().expect("len 2") {
                    Value::Integer(i) => u16::try_from(i)
                        .map_err(|_| PersistError::malformed("instance ID out of range"))?,
                    _ => return Err(PersistError::malformed("instance ID is not an integer")),
                };
                Ok((iid, res))
            }
            _ => Err(PersistError::malformed("instance is not [iid, resources]")),
        })
        .collect()
}

/// Decodes a Security part into a new object. Returns the object and the bytes consumed.
pub fn security_restore(input: &[u8]) -> Result<(SecurityObject, usize), PersistError> {
    let (_version, payload, used) = frame::read(input, Part::Security, SECURITY_VERSION)?;
    let mut obj = SecurityObject::default();
    for (iid, res) in instances(payload)? {
        let f = Fields::of(&res, "Security instance")?;
        let mode = SecurityMode::from_i64(f.int(2)?)
            .ok_or_else(|| PersistError::malformed("unknown security mode"))?;
        let ssid = match f.opt_int(10)? {
            Some(s) => {
                Some(u16::try_from(s).map_err(|_| PersistError::malformed("SSID out of range"))?)
            }
            None => None,
        };
        let inst = SecurityInstance {
            server_uri: f.text(0)?,
            bootstrap_server: f.boolean(1)?,
            security_mode: mode,
            public_cert_or_psk_identity: f.bytes(3)?,
            server_public_key: f.bytes(4)?,
            private_cert_or_psk_key: f.bytes(5)?,
            ssid,
            client_holdoff_time: f.opt_int(11)?,
            bootstrap_server_account_timeout: f.opt_int(12)?,
            server_name_indication: match f.get(14) {
                Some(_) => Some(f.text(14)?),
                None => None,
            },
            certificate_usage: match f.opt_int(15)? {
                Some(u) => Some(
                    u8::try_from(u)
                        .map_err(|_| PersistError::malformed("certificate usage out of range"))?,
                ),
                None => None,
            },
        };
        obj.insert(iid, inst)
            .map_err(|e| PersistError::malformed(format!("/0/{iid}: {e}")))?;
    }
    Ok((obj, used))
}

/// The Server object as a part.
pub fn server_persist(obj: &ServerObject) -> Result<Vec<u8>, PersistError> {
    let instances = obj
        .iter()
        .map(|(iid, i)| {
            let mut res = vec![
                (0, Value::from(i.ssid)),
                (1, Value::from(i.lifetime)),
                (6, Value::Bool(i.notification_storing)),
                (7, Value::Text(i.binding.clone())),
            ];
            res.extend(opt(2, i.default_min_period));
            res.extend(opt(3, i.default_max_period));
            res.extend(opt(5, i.disable_timeout));
            res.extend(
                i.bootstrap_on_registration_failure
                    .map(|b| (16, Value::Bool(b))),
            );
            for (rid, n) in i.retry_resources() {
                res.extend(n.map(|n| (u64::from(rid), Value::from(n))));
            }
            Value::Array(vec![Value::from(iid), cbor::map(res)])
        })
        .collect();
    frame::write(
        Part::Server,
        SERVER_VERSION,
        &cbor::to_bytes(&Value::Array(instances)),
    )
}

/// Decodes a Server part into a new object. Returns the object and the bytes consumed.
pub fn server_restore(input: &[u8]) -> Result<(ServerObject, usize), PersistError> {
    let (_version, payload, used) = frame::read(input, Part::Server, SERVER_VERSION)?;
    let mut obj = ServerObject::default();
    for (iid, res) in instances(payload)? {
        let f = Fields::of(&res, "Server instance")?;
        let ssid =
            u16::try_from(f.int(0)?).map_err(|_| PersistError::malformed("SSID out of range"))?;
        let mut inst = ServerInstance::new(ssid, f.int(1)?);
        inst.default_min_period = f.opt_int(2)?;
        inst.default_max_period = f.opt_int(3)?;
        inst.disable_timeout = f.opt_int(5)?;
        inst.notification_storing = f.boolean(6)?;
        inst.binding = f.text(7)?;
        // The retry resources (16..20) go through the Bootstrap-Write checks, so a stream
        // cannot restore what a Bootstrap-Server could not have written.
        if let Some(v) = f.get(16) {
            let b = v
                .as_bool()
                .ok_or_else(|| PersistError::malformed("/1/x/16 is not a boolean"))?;
            inst.bootstrap_on_registration_failure = Some(b);
        }
        for rid in 17..=20u16 {
            if let Some(n) = f.opt_int(u64::from(rid))? {
                inst.set_resource(rid, DmValue::Integer(n))
                    .map_err(|e| PersistError::malformed(format!("/1/{iid}/{rid}: {e}")))?;
            }
        }
        obj.insert(iid, inst)
            .map_err(|e| PersistError::malformed(format!("/1/{iid}: {e}")))?;
    }
    Ok((obj, used))
}

#[cfg(test)]
mod tests {
    use super::*;

    fn security() -> SecurityObject {
        let mut o = SecurityObject::default();
        let mut bs = SecurityInstance::nosec("coaps://127.0.0.1:5694", 1);
        bs.bootstrap_server = true;
        bs.ssid = None;
        bs.security_mode = SecurityMode::Psk;
        bs.public_cert_or_psk_identity = b"dev1".to_vec();
        bs.private_cert_or_psk_key = vec![0xA5; 16];
        bs.client_holdoff_time = Some(3);
        o.insert(0, bs).unwrap();
        let mut m = SecurityInstance::nosec("coaps://127.0.0.1:5684", 7);
        m.security_mode = SecurityMode::CertificateWithEst;
        m.server_public_key = vec![1, 2, 3];
        m.server_name_indication = Some("mgmt.example".into());
        m.certificate_usage = Some(2);
        o.insert(4, m).unwrap();
        o
    }

    fn server() -> ServerObject {
        let mut o = ServerObject::default();
        let mut s = ServerInstance::new(7, 300);
        s.default_min_period = Some(5);
        s.default_max_period = Some(60);
        s.binding = "UQ".into();
        s.bootstrap_on_registration_failure = Some(false);
        s.communication_retry_count = Some(2);
        s.communication_retry_timer = Some(10);
        s.communication_sequence_delay_timer = Some(u64::from(u32::MAX));
        s.communication_sequence_retry_count = Some(3);
        o.insert(2, s).unwrap();
        o
    }

    fn same_security(a: &SecurityObject, b: &SecurityObject) -> bool {
        a.iter().collect::<Vec<_>>() == b.iter().collect::<Vec<_>>()
    }

    #[test]
    fn round_trips() {
        let s = security();
        let bytes = security_persist(&s).unwrap();
        let (back, used) = security_restore(&bytes).unwrap();
        assert_eq!(used, bytes.len());
        assert!(same_security(&s, &back));

        let v = server();
        let bytes = server_persist(&v).unwrap();
        let (back, _) = server_restore(&bytes).unwrap();
        assert_eq!(
            v.iter().collect::<Vec<_>>(),
            back.iter().collect::<Vec<_>>()
        );

        let empty = security_persist(&SecurityObject::default()).unwrap();
        assert_eq!(security_restore(&empty).unwrap().0.iter().count(), 0);
    }

    #[test]
    fn a_retry_count_a_bootstrap_server_could_not_write_is_refused() {
        let inst = cbor::map(vec![
            (0, Value::from(7)),
            (1, Value::from(300)),
            (6, Value::Bool(false)),
            (7, Value::Text("U".into())),
            (17, Value::from(0)),
        ]);
        let payload = cbor::to_bytes(&Value::Array(vec![Value::Array(vec![
            Value::from(0),
            inst,
        ])]));
        let bytes = frame::write(Part::Server, SERVER_VERSION, &payload).unwrap();
        let err = server_restore(&bytes).unwrap_err().to_string();
        assert!(err.contains("/1/0/17"), "{err}");
    }

    #[test]
    fn damaged_parts_are_refused() {
        let bytes = security_persist(&security()).unwrap();
        for cut in 0..bytes.len() {
            assert!(security_restore(&bytes[..cut]).is_err());
        }
        for i in 0..bytes.len() {
            let mut b = bytes.clone();
            b[i] ^= 0x10;
            assert!(security_restore(&b).is_err(), "byte {i}");
        }
        // Well-framed but semantically invalid: two management accounts with one SSID.
        let dup = Value::Array(
            [1u16, 2]
                .iter()
                .map(|iid| {
                    Value::Array(vec![
                        Value::from(*iid),
                        cbor::map(vec![
                            (0, Value::Text("coap://h".into())),
                            (1, Value::Bool(false)),
                            (2, Value::from(3)),
                            (3, Value::Bytes(vec![])),
                            (4, Value::Bytes(vec![])),
                            (5, Value::Bytes(vec![])),
                            (10, Value::from(9)),
                        ]),
                    ])
                })
                .collect(),
        );
        let f = frame::write(Part::Security, 1, &cbor::to_bytes(&dup)).unwrap();
        let e = security_restore(&f).unwrap_err();
        assert!(e.to_string().contains("/0/2"), "{e}");
        // A Server part where a Security one is expected.
        let srv = server_persist(&server()).unwrap();
        assert!(matches!(
            security_restore(&srv),
            Err(PersistError::WrongPart { .. })
        ));
    }
}
