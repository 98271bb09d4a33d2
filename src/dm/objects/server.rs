//! The Server object (/1): per-server registration parameters (lifetime, binding, default
//! observation periods), and the Disable, Registration Update Trigger and Bootstrap-Request
//! Trigger executables, which the client picks up with
//! [`ServerObject::take_disable_requests`], [`ServerObject::take_update_triggers`] and
//! [`ServerObject::take_bootstrap_triggers`].

use std::collections::BTreeMap;

use super::{free_iid, InstanceError};
use crate::dm::object::{DmError, Object, Operations as Op, ResourceDef, ResourceValue};
use crate::dm::value::{Value, ValueKind as K};

/// One Server instance.
#[derive(Clone, Debug, PartialEq)]
pub struct ServerInstance {
    pub ssid: u16,
    /// Registration lifetime in seconds.
    pub lifetime: i64,
    pub default_min_period: Option<i64>,
    pub default_max_period: Option<i64>,
    pub disable_timeout: Option<i64>,
    pub notification_storing: bool,
    /// Binding, "U" for UDP.
    pub binding: String,
    /// /1/x/16 Bootstrap on Registration Failure (unset: true). Readable by management
    /// servers, written only by a Bootstrap-Server.
    pub bootstrap_on_registration_failure: Option<bool>,
    /// /1/x/17 Communication Retry Count (unset: 5; at least 1).
    pub communication_retry_count: Option<u64>,
    /// /1/x/18 Communication Retry Timer in seconds (unset: 60).
    pub communication_retry_timer: Option<u64>,
    /// /1/x/19 Communication Sequence Delay Timer in seconds (unset: 86400; `u32::MAX` and
    /// above: no further sequence).
    pub communication_sequence_delay_timer: Option<u64>,
    /// /1/x/20 Communication Sequence Retry Count (unset: 1; at least 1).
    pub communication_sequence_retry_count: Option<u64>,
}

impl ServerInstance {
    pub fn new(ssid: u16, lifetime: i64) -> Self {
        ServerInstance {
            ssid,
            lifetime,
            default_min_period: None,
            default_max_period: None,
            disable_timeout: None,
            notification_storing: false,
            binding: "U".to_string(),
            bootstrap_on_registration_failure: None,
            communication_retry_count: None,
            communication_retry_timer: None,
            communication_sequence_delay_timer: None,
            communication_sequence_retry_count: None,
        }
    }

    /// An instance with nothing set yet (SSID 0 and lifetime 0 fail validation until a
    /// Bootstrap-Write sets them).
    pub fn blank() -> Self {
        ServerInstance::new(0, 0)
    }

    /// Sets one resource from a Bootstrap-Write (which may also set the SSID, /1/x/0);
    /// says why a value is refused.
    pub fn set_resource(&mut self, rid: u16, v: Value) -> Result<(), &'static str> {
        let int = |v: &Value| match v {
            Value::Integer(x) => Ok(*x),
            _ => Err("expected an integer"),
        };
        match (rid, v) {
            (0, v) => {
                let s = int(&v)?;
                if !(1..=65534).contains(&s) {
                    return Err("Short Server ID must be in 1..=65534");
                }
                self.ssid = s as u16
            }
            (1, v) => {
                let lt = int(&v)?;
                if lt <= 0 || lt > i64::from(u32::MAX) {
                    return Err("lifetime must be in 1..=2^32-1");
                }
                self.lifetime = lt
            }
            (2 | 3 | 5, v) => {
                let p = int(&v)?;
                if p < 0 {
                    return Err("a period must not be negative");
                }
                match rid {
                    2 => self.default_min_period = Some(p),
                    3 => self.default_max_period = Some(p),
                    _ => self.disable_timeout = Some(p),
                }
            }
            (6, Value::Boolean(b)) => self.notification_storing = b,
            (7, Value::String(b)) => {
                if b.is_empty() || !b.chars().all(|c| "UTSNQ".contains(c)) {
                    return Err("binding must be made of U, T, S, N, Q");
                }
                self.binding = b
            }
            (16, Value::Boolean(b)) => self.bootstrap_on_registration_failure = Some(b),
            (17..=20, v) => self.set_retry_resource(rid, &v)?,
            (6 | 7 | 16, _) => return Err("value of the wrong type"),
            _ => return Err("resource not writable by a bootstrap server"),
        }
        Ok(())
    }

    /// The retry resources /1/x/17..20 with their IDs, as set (None: the default applies).
    pub fn retry_resources(&self) -> [(u16, Option<u64>); 4] {
        [
            (17, self.communication_retry_count),
            (18, self.communication_retry_timer),
            (19, self.communication_sequence_delay_timer),
            (20, self.communication_sequence_retry_count),
        ]
    }

    /// Sets one of the retry resources /1/x/17..20 (an unsigned integer; the counts must be
    /// at least 1).
    fn set_retry_resource(&mut self, rid: u16, v: &Value) -> Result<(), &'static str> {
        let n = match v {
            Value::Unsigned(n) => *n,
            Value::Integer(n) if *n >= 0 => *n as u64,
            Value::Integer(_) => return Err("a retry resource must not be negative"),
            _ => return Err("expected an unsigned integer"),
        };
        match rid {
            17 | 20 if n == 0 || n > u64::from(u32::MAX) => {
                return Err("a retry count must be in 1..=2^32-1")
            }
            17 => self.communication_retry_count = Some(n),
            18 => self.communication_retry_timer = Some(n),
            19 => self.communication_sequence_delay_timer = Some(n),
            20 => self.communication_sequence_retry_count = Some(n),
            _ => return Err("not a retry resource"),
        }
        Ok(())
    }

    fn validate(&self) -> Result<(), InstanceError> {
        if self.ssid == 0 || self.ssid == u16::MAX {
            return Err(InstanceError::Invalid("SSID must be in 1..=65534"));
        }
        if self.lifetime <= 0 {
            return Err(InstanceError::Invalid("lifetime must be positive"));
        }
        if self.binding.is_empty() || !self.binding.chars().all(|c| "UTSNQ".contains(c)) {
            return Err(InstanceError::Invalid(
                "binding must be made of U, T, S, N, Q",
            ));
        }
        Ok(())
    }
}

const RESOURCES: &[ResourceDef] = &[
    ResourceDef::single(0, K::Integer, Op::Read),
    ResourceDef::single(1, K::Integer, Op::ReadWrite),
    ResourceDef::single(2, K::Integer, Op::ReadWrite),
    ResourceDef::single(3, K::Integer, Op::ReadWrite),
    ResourceDef::executable(4),
    ResourceDef::single(5, K::Integer, Op::ReadWrite),
    ResourceDef::single(6, K::Boolean, Op::ReadWrite),
    ResourceDef::single(7, K::String, Op::ReadWrite),
    ResourceDef::executable(8),
    ResourceDef::executable(9),
    ResourceDef::single(16, K::Boolean, Op::Read),
    ResourceDef::single(17, K::Unsigned, Op::ReadWrite),
    ResourceDef::single(18, K::Unsigned, Op::ReadWrite),
    ResourceDef::single(19, K::Unsigned, Op::ReadWrite),
    ResourceDef::single(20, K::Unsigned, Op::ReadWrite),
];

/// The Server object.
#[derive(Clone, Debug, Default)]
pub struct ServerObject {
    instances: BTreeMap<u16, ServerInstance>,
    update_triggers: Vec<u16>,
    /// SSIDs of servers that executed the Bootstrap-Request Trigger (/1/x/9).
    bootstrap_triggers: Vec<u16>,
    /// Whether the client has a Bootstrap-Server account, so /1/x/9 can be honoured (the
    /// client keeps this up to date; the Security object is not visible from here).
    bootstrap_account_present: bool,
    /// (SSID, disable timeout in seconds) of executed Disables not yet acted on.
    disable_requests: Vec<(u16, u32)>,
}

/// Disable Timeout when /1/x/5 is not set (LwM2M 1.1 Appendix E.2: 86400 s).
pub const DEFAULT_DISABLE_TIMEOUT: u32 = 86400;

impl ServerObject {
    pub fn insert(&mut self, iid: u16, inst: ServerInstance) -> Result<u16, InstanceError> {
        self.insert_at(Some(iid), inst)
    }

    pub fn insert_at(
        &mut self,
        iid: Option<u16>,
        inst: ServerInstance,
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
        if self.instances.values().any(|i| i.ssid == inst.ssid) {
            return Err(InstanceError::SsidTaken(inst.ssid));
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

    pub fn get(&self, iid: u16) -> Option<&ServerInstance> {
        self.instances.get(&iid)
    }

    /// Puts `inst` at `iid`, replacing what was there, with the checks of [`Self::insert`]
    /// against the other instances.
    pub fn replace(&mut self, iid: u16, inst: ServerInstance) -> Result<(), InstanceError> {
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

    pub fn iter(&self) -> impl Iterator<Item = (u16, &ServerInstance)> {
        self.instances.iter().map(|(k, v)| (*k, v))
    }

    pub fn by_ssid(&self, ssid: u16) -> Option<&ServerInstance> {
        self.instances.values().find(|i| i.ssid == ssid)
    }

    /// SSIDs whose Registration Update Trigger was executed since the last call.
    pub fn take_update_triggers(&mut self) -> Vec<u16> {
        core::mem::take(&mut self.update_triggers)
    }

    /// SSIDs whose Bootstrap-Request Trigger was executed since the last call.
    pub fn take_bootstrap_triggers(&mut self) -> Vec<u16> {
        core::mem::take(&mut self.bootstrap_triggers)
    }

    /// Tells the object whether a Bootstrap-Server account exists: without one, executing
    /// /1/x/9 is refused with 4.05 (the request is well-formed, but the operation is not
    /// available on this device as configured) and nothing happens.
    pub fn set_bootstrap_account_present(&mut self, present: bool) {
        self.bootstrap_account_present = present;
    }

    /// Disables executed since the last call: (SSID, seconds to stay deregistered).
    pub fn take_disable_requests(&mut self) -> Vec<(u16, u32)> {
        core::mem::take(&mut self.disable_requests)
    }
}

impl Object for ServerObject {
    fn oid(&self) -> u16 {
        crate::dm::oid::SERVER
    }

    fn version(&self) -> &str {
        "1.1"
    }

    fn instances(&self) -> Vec<u16> {
        self.instances.keys().copied().collect()
    }

    fn resources(&self, iid: u16) -> Result<Vec<ResourceDef>, DmError> {
        self.instances.get(&iid).ok_or(DmError::NotFound)?;
        // Optional resources without a value are still listed: a server may write them.
        Ok(RESOURCES.to_vec())
    }

    fn read(&self, iid: u16, rid: u16) -> Result<ResourceValue, DmError> {
        let i = self.instances.get(&iid).ok_or(DmError::NotFound)?;
        let v = match rid {
            0 => Value::Integer(i64::from(i.ssid)),
            1 => Value::Integer(i.lifetime),
            2 => Value::Integer(i.default_min_period.ok_or(DmError::NotFound)?),
            3 => Value::Integer(i.default_max_period.ok_or(DmError::NotFound)?),
            5 => Value::Integer(i.disable_timeout.ok_or(DmError::NotFound)?),
            6 => Value::Boolean(i.notification_storing),
            7 => Value::String(i.binding.clone()),
            16 => Value::Boolean(
                i.bootstrap_on_registration_failure
                    .ok_or(DmError::NotFound)?,
            ),
            17 => Value::Unsigned(i.communication_retry_count.ok_or(DmError::NotFound)?),
            18 => Value::Unsigned(i.communication_retry_timer.ok_or(DmError::NotFound)?),
            19 => Value::Unsigned(
                i.communication_sequence_delay_timer
                    .ok_or(DmError::NotFound)?,
            ),
            20 => Value::Unsigned(
                i.communication_sequence_retry_count
                    .ok_or(DmError::NotFound)?,
            ),
            _ => return Err(DmError::NotFound),
        };
        Ok(ResourceValue::Single(v))
    }

    fn write(&mut self, iid: u16, rid: u16, value: ResourceValue) -> Result<(), DmError> {
        let inst = self.instances.get_mut(&iid).ok_or(DmError::NotFound)?;
        let ResourceValue::Single(v) = value else {
            return Err(DmError::BadRequest);
        };
        let period = |v: &Value| match v {
            Value::Integer(x) if *x >= 0 => Ok(*x),
            _ => Err(DmError::BadRequest),
        };
        match (rid, &v) {
            (1, Value::Integer(lt)) if *lt > 0 && *lt <= i64::from(u32::MAX) => inst.lifetime = *lt,
            (2, _) => inst.default_min_period = Some(period(&v)?),
            (3, _) => inst.default_max_period = Some(period(&v)?),
            (5, _) => inst.disable_timeout = Some(period(&v)?),
            (6, Value::Boolean(b)) => inst.notification_storing = *b,
            (7, Value::String(b)) if !b.is_empty() && b.chars().all(|c| "UTSNQ".contains(c)) => {
                inst.binding = b.clone()
            }
            (17..=20, _) => inst
                .set_retry_resource(rid, &v)
                .map_err(|_| DmError::BadRequest)?,
            (0 | 4 | 8 | 9 | 16, _) => return Err(DmError::MethodNotAllowed),
            (1 | 6 | 7, _) => return Err(DmError::BadRequest),
            _ => return Err(DmError::NotFound),
        }
        Ok(())
    }

    /// Write-replace of an instance: optional resources become unset; mandatory ones
    /// (lifetime, notification storing, binding) keep their values until overwritten.
    fn reset_instance(&mut self, iid: u16) -> Result<(), DmError> {
        let inst = self.instances.get_mut(&iid).ok_or(DmError::NotFound)?;
        inst.default_min_period = None;
        inst.default_max_period = None;
        inst.disable_timeout = None;
        inst.communication_retry_count = None;
        inst.communication_retry_timer = None;
        inst.communication_sequence_delay_timer = None;
        inst.communication_sequence_retry_count = None;
        Ok(())
    }

    fn execute(&mut self, iid: u16, rid: u16, _args: &[u8]) -> Result<(), DmError> {
        let inst = self.instances.get(&iid).ok_or(DmError::NotFound)?;
        let ssid = inst.ssid;
        match rid {
            4 => {
                let timeout = inst
                    .disable_timeout
                    .and_then(|t| u32::try_from(t).ok())
                    .unwrap_or(DEFAULT_DISABLE_TIMEOUT);
                self.disable_requests.push((ssid, timeout));
                Ok(())
            }
            8 => {
                self.update_triggers.push(ssid);
                Ok(())
            }
            9 if !self.bootstrap_account_present => {
                log::warn!("ssid={ssid}: Bootstrap-Request Trigger without a bootstrap account");
                Err(DmError::MethodNotAllowed)
            }
            9 => {
                self.bootstrap_triggers.push(ssid);
                Ok(())
            }
            _ => Err(DmError::MethodNotAllowed),
        }
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    fn object() -> ServerObject {
        let mut o = ServerObject::default();
        o.insert(0, ServerInstance::new(7, 60)).unwrap();
        o
    }

    #[test]
    fn retry_resources_read_write_and_validation() {
        let mut o = object();
        // Unset optional resources read as 4.04.
        assert_eq!(o.read(0, 17), Err(DmError::NotFound));
        let w = |v| ResourceValue::Single(v);
        o.write(0, 17, w(Value::Unsigned(2))).unwrap();
        o.write(0, 18, w(Value::Unsigned(10))).unwrap();
        o.write(0, 19, w(Value::Unsigned(60))).unwrap();
        o.write(0, 20, w(Value::Integer(3))).unwrap();
        assert_eq!(
            o.read(0, 17).unwrap(),
            ResourceValue::Single(Value::Unsigned(2))
        );
        assert_eq!(
            o.get(0).unwrap().communication_sequence_retry_count,
            Some(3)
        );
        // Counts of 0, negative values and wrong types are refused, and change nothing.
        let before = o.get(0).unwrap().clone();
        assert_eq!(
            o.write(0, 17, w(Value::Unsigned(0))),
            Err(DmError::BadRequest)
        );
        assert_eq!(
            o.write(0, 18, w(Value::Integer(-1))),
            Err(DmError::BadRequest)
        );
        assert_eq!(
            o.write(0, 19, w(Value::Boolean(true))),
            Err(DmError::BadRequest)
        );
        assert_eq!(o.get(0).unwrap(), &before);
        // /1/x/16 is for the Bootstrap-Server only.
        assert_eq!(
            o.write(0, 16, w(Value::Boolean(false))),
            Err(DmError::MethodNotAllowed)
        );
        let mut inst = before.clone();
        inst.set_resource(16, Value::Boolean(false)).unwrap();
        assert_eq!(inst.bootstrap_on_registration_failure, Some(false));
        assert!(inst.set_resource(20, Value::Unsigned(0)).is_err());
        assert!(inst.set_resource(16, Value::Integer(1)).is_err());
        // Write-replace unsets the optional retry resources.
        o.reset_instance(0).unwrap();
        assert_eq!(o.get(0).unwrap().communication_retry_count, None);
    }

    #[test]
    fn bootstrap_request_trigger_needs_a_bootstrap_account() {
        let mut o = object();
        assert_eq!(o.execute(0, 9, b""), Err(DmError::MethodNotAllowed));
        assert!(o.take_bootstrap_triggers().is_empty());
        o.set_bootstrap_account_present(true);
        o.execute(0, 9, b"").unwrap();
        assert_eq!(o.take_bootstrap_triggers(), vec![7]);
        assert!(o.take_bootstrap_triggers().is_empty());
    }
}
