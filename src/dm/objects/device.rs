//! The Device object (/3, single instance 0): identity strings the firmware provides,
//! Reboot, Error Code and Supported Binding and Modes.

use crate::dm::object::{DmError, Object, Operations as Op, ResourceDef, ResourceValue};
use crate::dm::value::{Value, ValueKind as K};

/// The Device object.
#[derive(Clone, Debug)]
pub struct DeviceObject {
    pub manufacturer: String,
    pub model_number: String,
    pub serial_number: String,
    pub firmware_version: String,
    /// Error Code (/3/0/11); 0 means "no error".
    pub error_codes: Vec<i64>,
    pub supported_binding: String,
    reboot_requested: bool,
}

impl Default for DeviceObject {
    fn default() -> Self {
        DeviceObject {
            manufacturer: String::new(),
            model_number: String::new(),
            serial_number: String::new(),
            firmware_version: String::new(),
            error_codes: vec![0],
            supported_binding: "U".to_string(),
            reboot_requested: false,
        }
    }
}

impl DeviceObject {
    /// True once after Reboot (/3/0/4) was executed.
    pub fn take_reboot_request(&mut self) -> bool {
        core::mem::take(&mut self.reboot_requested)
    }
}

const RESOURCES: &[ResourceDef] = &[
    ResourceDef::single(0, K::String, Op::Read),
    ResourceDef::single(1, K::String, Op::Read),
    ResourceDef::single(2, K::String, Op::Read),
    ResourceDef::single(3, K::String, Op::Read),
    ResourceDef::executable(4),
    ResourceDef::multiple(11, K::Integer, Op::Read),
    ResourceDef::single(16, K::String, Op::Read),
];

impl Object for DeviceObject {
    fn oid(&self) -> u16 {
        crate::dm::oid::DEVICE
    }

    fn instances(&self) -> Vec<u16> {
        vec![0]
    }

    fn resources(&self, iid: u16) -> Result<Vec<ResourceDef>, DmError> {
        if iid != 0 {
            return Err(DmError::NotFound);
        }
        Ok(RESOURCES.to_vec())
    }

    fn read(&self, iid: u16, rid: u16) -> Result<ResourceValue, DmError> {
        if iid != 0 {
            return Err(DmError::NotFound);
        }
        let s = |v: &String| Ok(ResourceValue::Single(Value::String(v.clone())));
        match rid {
            0 => s(&self.manufacturer),
            1 => s(&self.model_number),
            2 => s(&self.serial_number),
            3 => s(&self.firmware_version),
            11 => Ok(ResourceValue::Multiple(
                self.error_codes
                    .iter()
                    .enumerate()
                    .map(|(i, c)| (i as u16, Value::Integer(*c)))
                    .collect(),
            )),
            16 => s(&self.supported_binding),
            _ => Err(DmError::NotFound),
        }
    }

    fn execute(&mut self, iid: u16, rid: u16, _args: &[u8]) -> Result<(), DmError> {
        match (iid, rid) {
            (0, 4) => {
                self.reboot_requested = true;
                Ok(())
            }
            _ => Err(DmError::MethodNotAllowed),
        }
    }
}
