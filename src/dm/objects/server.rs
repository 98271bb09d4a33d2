//! The Server object (/1): per-server registration parameters (lifetime, binding, default
//! observation periods).

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
        }
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
];

/// The Server object.
#[derive(Clone, Debug, Default)]
pub struct ServerObject {
    instances: BTreeMap<u16, ServerInstance>,
    update_triggers: Vec<u16>,
}

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
        let inst = self.instances.get(&iid).ok_or(DmError::NotFound)?;
        Ok(RESOURCES
            .iter()
            .copied()
            .filter(|d| match d.rid {
                2 => inst.default_min_period.is_some(),
                3 => inst.default_max_period.is_some(),
                5 => inst.disable_timeout.is_some(),
                _ => true,
            })
            .collect())
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
            _ => return Err(DmError::NotFound),
        };
        Ok(ResourceValue::Single(v))
    }

    fn execute(&mut self, iid: u16, rid: u16, _args: &[u8]) -> Result<(), DmError> {
        let ssid = self.instances.get(&iid).ok_or(DmError::NotFound)?.ssid;
        match rid {
            8 => {
                self.update_triggers.push(ssid);
                Ok(())
            }
            // Disable (4) arrives with the complete Server object (data-model issue).
            _ => Err(DmError::MethodNotAllowed),
        }
    }
}
