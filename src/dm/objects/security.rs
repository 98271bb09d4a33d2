//! The Security object (/0): server URIs, security modes and credentials. Readable by the
//! bootstrap server only; the client reads it to know whom to talk to and how.

use std::collections::BTreeMap;

use super::{free_iid, InstanceError};
use crate::dm::object::{DmError, Object, Operations as Op, ResourceDef, ResourceValue};
use crate::dm::value::{Value, ValueKind as K};

/// Security Mode (/0/x/2).
#[derive(Copy, Clone, Debug, PartialEq, Eq)]
pub enum SecurityMode {
    Psk,
    Rpk,
    Certificate,
    NoSec,
    CertificateWithEst,
}

impl SecurityMode {
    pub fn from_i64(v: i64) -> Option<Self> {
        Some(match v {
            0 => SecurityMode::Psk,
            1 => SecurityMode::Rpk,
            2 => SecurityMode::Certificate,
            3 => SecurityMode::NoSec,
            4 => SecurityMode::CertificateWithEst,
            _ => return None,
        })
    }

    pub fn as_i64(self) -> i64 {
        match self {
            SecurityMode::Psk => 0,
            SecurityMode::Rpk => 1,
            SecurityMode::Certificate => 2,
            SecurityMode::NoSec => 3,
            SecurityMode::CertificateWithEst => 4,
        }
    }
}

/// One Security instance.
#[derive(Clone, Debug, PartialEq)]
pub struct SecurityInstance {
    pub server_uri: String,
    pub bootstrap_server: bool,
    pub security_mode: SecurityMode,
    pub public_cert_or_psk_identity: Vec<u8>,
    pub server_public_key: Vec<u8>,
    pub private_cert_or_psk_key: Vec<u8>,
    /// Short Server ID; absent for the bootstrap account.
    pub ssid: Option<u16>,
    pub client_holdoff_time: Option<i64>,
    pub bootstrap_server_account_timeout: Option<i64>,
    /// Server Name Indication (/0/x/14): the name the server certificate must carry and the
    /// SNI sent; the URI host when absent.
    pub server_name_indication: Option<String>,
    /// Certificate Usage (/0/x/15, RFC 6698 values 0-3): how /0/x/4 constrains the server
    /// certificate; 3 (domain-issued certificate) when absent.
    pub certificate_usage: Option<u8>,
}

impl SecurityInstance {
    /// A NoSec management-server account.
    pub fn nosec(uri: &str, ssid: u16) -> Self {
        SecurityInstance {
            server_uri: uri.to_string(),
            bootstrap_server: false,
            security_mode: SecurityMode::NoSec,
            public_cert_or_psk_identity: Vec::new(),
            server_public_key: Vec::new(),
            private_cert_or_psk_key: Vec::new(),
            ssid: Some(ssid),
            client_holdoff_time: None,
            bootstrap_server_account_timeout: None,
            server_name_indication: None,
            certificate_usage: None,
        }
    }

    /// A PSK management-server account (mode 0).
    pub fn psk(uri: &str, ssid: u16, identity: &[u8], key: &[u8]) -> Self {
        SecurityInstance {
            security_mode: SecurityMode::Psk,
            public_cert_or_psk_identity: identity.to_vec(),
            private_cert_or_psk_key: key.to_vec(),
            ..SecurityInstance::nosec(uri, ssid)
        }
    }

    /// A Certificate management-server account (mode 2): our certificate and private key
    /// (DER or PEM) and the server's certificate or trust anchor, per `certificate_usage`.
    pub fn certificate(
        uri: &str,
        ssid: u16,
        own_cert: &[u8],
        own_key: &[u8],
        server_cert: &[u8],
    ) -> Self {
        SecurityInstance {
            security_mode: SecurityMode::Certificate,
            public_cert_or_psk_identity: own_cert.to_vec(),
            private_cert_or_psk_key: own_key.to_vec(),
            server_public_key: server_cert.to_vec(),
            ..SecurityInstance::nosec(uri, ssid)
        }
    }

    /// An instance with nothing set yet, which a Bootstrap-Write fills resource by resource.
    pub fn blank() -> Self {
        SecurityInstance {
            ssid: None,
            ..SecurityInstance::nosec("", 0)
        }
    }

    /// Sets one resource from a Bootstrap-Write; says why a value is refused.
    pub fn set_resource(&mut self, rid: u16, v: Value) -> Result<(), &'static str> {
        let int = |v: &Value| match v {
            Value::Integer(x) => Ok(*x),
            _ => Err("expected an integer"),
        };
        match (rid, v) {
            (0, Value::String(s)) => self.server_uri = s,
            (1, Value::Boolean(b)) => self.bootstrap_server = b,
            (2, v) => {
                self.security_mode =
                    SecurityMode::from_i64(int(&v)?).ok_or("Security Mode must be 0 to 4")?
            }
            (3, Value::Opaque(b)) => self.public_cert_or_psk_identity = b,
            (4, Value::Opaque(b)) => self.server_public_key = b,
            (5, Value::Opaque(b)) => self.private_cert_or_psk_key = b,
            (10, v) => {
                let s = int(&v)?;
                if !(1..=65534).contains(&s) {
                    return Err("Short Server ID must be in 1..=65534");
                }
                self.ssid = Some(s as u16)
            }
            (11 | 12, v) => {
                let t = int(&v)?;
                if t < 0 {
                    return Err("a time must not be negative");
                }
                if rid == 11 {
                    self.client_holdoff_time = Some(t)
                } else {
                    self.bootstrap_server_account_timeout = Some(t)
                }
            }
            (14, Value::String(s)) => self.server_name_indication = Some(s),
            (15, v) => {
                let u = int(&v)?;
                if !(0..=3).contains(&u) {
                    return Err("Certificate Usage must be 0 to 3");
                }
                self.certificate_usage = Some(u as u8)
            }
            (0..=5 | 14, _) => return Err("value of the wrong type"),
            _ => return Err("resource not supported"),
        }
        Ok(())
    }

    fn validate(&self) -> Result<(), InstanceError> {
        if crate::lwm2m::uri::ServerUri::parse(&self.server_uri).is_err() {
            return Err(InstanceError::Invalid(
                "server URI is not a coap:// or coaps:// URI",
            ));
        }
        if self.certificate_usage.is_some_and(|u| u > 3) {
            return Err(InstanceError::Invalid(
                "Certificate Usage (/0/x/15) must be 0 to 3",
            ));
        }
        if !self.bootstrap_server && self.ssid.is_none_or(|s| s == 0 || s == u16::MAX) {
            return Err(InstanceError::Invalid(
                "a management account needs an SSID in 1..=65534",
            ));
        }
        Ok(())
    }
}

const RESOURCES: &[ResourceDef] = &[
    ResourceDef::single(0, K::String, Op::ReadWrite),
    ResourceDef::single(1, K::Boolean, Op::ReadWrite),
    ResourceDef::single(2, K::Integer, Op::ReadWrite),
    ResourceDef::single(3, K::Opaque, Op::ReadWrite),
    ResourceDef::single(4, K::Opaque, Op::ReadWrite),
    ResourceDef::single(5, K::Opaque, Op::ReadWrite),
    ResourceDef::single(10, K::Integer, Op::ReadWrite),
    ResourceDef::single(11, K::Integer, Op::ReadWrite),
    ResourceDef::single(12, K::Integer, Op::ReadWrite),
    ResourceDef::single(14, K::String, Op::ReadWrite),
    ResourceDef::single(15, K::Integer, Op::ReadWrite),
];

/// The Security object.
#[derive(Clone, Debug, Default)]
pub struct SecurityObject {
    instances: BTreeMap<u16, SecurityInstance>,
}

impl SecurityObject {
    /// Adds an instance at `iid`, or at the lowest free ID when `None`; returns the ID.
    pub fn insert(&mut self, iid: u16, inst: SecurityInstance) -> Result<u16, InstanceError> {
        self.insert_at(Some(iid), inst)
    }

    pub fn insert_at(
        &mut self,
        iid: Option<u16>,
        inst: SecurityInstance,
    ) -> Result<u16, InstanceError> {
        inst.validate()?;
        let iid = match iid {
            Some(i) if i == u16::MAX => {
                return Err(InstanceError::Invalid("instance ID 65535 is reserved"))
            }
            Some(i) => i,
            None => free_iid(self.instances.keys().copied()).ok_or(InstanceError::Full)?,
        };
        if self.instances.contains_key(&iid) {
            return Err(InstanceError::IdTaken(iid));
        }
        if let Some(ssid) = inst.ssid.filter(|_| !inst.bootstrap_server) {
            if self
                .instances
                .values()
                .any(|i| !i.bootstrap_server && i.ssid == Some(ssid))
            {
                return Err(InstanceError::SsidTaken(ssid));
            }
        }
        if inst.bootstrap_server && self.instances.values().any(|i| i.bootstrap_server) {
            return Err(InstanceError::Invalid(
                "only one bootstrap account is allowed",
            ));
        }
        self.instances.insert(iid, inst);
        Ok(iid)
    }

    pub fn purge(&mut self) {
        self.instances.clear();
    }

    /// Removes one instance; whether it existed.
    pub fn remove(&mut self, iid: u16) -> bool {
        self.instances.remove(&iid).is_some()
    }

    /// Puts `inst` at `iid`, replacing what was there, with the checks of [`Self::insert`]
    /// against the other instances.
    pub fn replace(&mut self, iid: u16, inst: SecurityInstance) -> Result<(), InstanceError> {
        let old = self.instances.remove(&iid);
        match self.insert(iid, inst) {
            Ok(_) => Ok(()),
            Err(e) => {
                if let Some(old) = old {
                    self.instances.insert(iid, old);
                }
                Err(e)
            }
        }
    }

    /// The declared type of resource `rid`, if the object has it.
    pub fn resource_kind(rid: u16) -> Option<K> {
        RESOURCES.iter().find(|d| d.rid == rid).map(|d| d.kind)
    }

    pub fn get(&self, iid: u16) -> Option<&SecurityInstance> {
        self.instances.get(&iid)
    }

    pub fn iter(&self) -> impl Iterator<Item = (u16, &SecurityInstance)> {
        self.instances.iter().map(|(k, v)| (*k, v))
    }

    /// The management-server accounts (not the bootstrap one).
    pub fn management_accounts(&self) -> impl Iterator<Item = (u16, &SecurityInstance)> {
        self.iter().filter(|(_, i)| !i.bootstrap_server)
    }
}

impl Object for SecurityObject {
    fn oid(&self) -> u16 {
        crate::dm::oid::SECURITY
    }

    fn instances(&self) -> Vec<u16> {
        self.instances.keys().copied().collect()
    }

    fn resources(&self, iid: u16) -> Result<Vec<ResourceDef>, DmError> {
        let inst = self.instances.get(&iid).ok_or(DmError::NotFound)?;
        Ok(RESOURCES
            .iter()
            .copied()
            .filter(|d| match d.rid {
                10 => inst.ssid.is_some(),
                11 => inst.client_holdoff_time.is_some(),
                12 => inst.bootstrap_server_account_timeout.is_some(),
                14 => inst.server_name_indication.is_some(),
                15 => inst.certificate_usage.is_some(),
                _ => true,
            })
            .collect())
    }

    fn read(&self, iid: u16, rid: u16) -> Result<ResourceValue, DmError> {
        let i = self.instances.get(&iid).ok_or(DmError::NotFound)?;
        let v = match rid {
            0 => Value::String(i.server_uri.clone()),
            1 => Value::Boolean(i.bootstrap_server),
            2 => Value::Integer(i.security_mode.as_i64()),
            3 => Value::Opaque(i.public_cert_or_psk_identity.clone()),
            4 => Value::Opaque(i.server_public_key.clone()),
            5 => Value::Opaque(i.private_cert_or_psk_key.clone()),
            10 => Value::Integer(i64::from(i.ssid.ok_or(DmError::NotFound)?)),
            11 => Value::Integer(i.client_holdoff_time.ok_or(DmError::NotFound)?),
            12 => Value::Integer(
                i.bootstrap_server_account_timeout
                    .ok_or(DmError::NotFound)?,
            ),
            14 => Value::String(i.server_name_indication.clone().ok_or(DmError::NotFound)?),
            15 => Value::Integer(i64::from(i.certificate_usage.ok_or(DmError::NotFound)?)),
            _ => return Err(DmError::NotFound),
        };
        Ok(ResourceValue::Single(v))
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn ssid_collisions_and_bad_uris_are_refused() {
        let mut o = SecurityObject::default();
        o.insert(0, SecurityInstance::nosec("coap://127.0.0.1:5683", 1))
            .unwrap();
        assert_eq!(
            o.insert(1, SecurityInstance::nosec("coap://127.0.0.1:5684", 1)),
            Err(InstanceError::SsidTaken(1))
        );
        assert!(o.insert(2, SecurityInstance::nosec("http://x", 2)).is_err());
        assert_eq!(
            o.insert_at(None, SecurityInstance::nosec("coap://h", 3)),
            Ok(1)
        );
        assert_eq!(o.instances(), vec![0, 1]);
    }
}
