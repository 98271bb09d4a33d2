//! Shared fixture of the data-model simulator tests: a Temperature object (3303) whose
//! state the test reads and changes directly, and helpers to send one server request.

#![allow(dead_code)]

use std::collections::BTreeMap;
use std::sync::{Arc, Mutex};
use std::time::Duration;

use estuary::dm::{DmError, Object, Operations, ResourceDef, ResourceValue, Value, ValueKind};
use estuary_testserver::lwm2m_server::{OpMethod, OpRequest, OpResult};
use estuary_testserver::sim::{Sim, SimConfig};

pub const EP: &str = "sim-client";
pub const TEMP: u16 = 3303;

/// One Temperature instance.
#[derive(Clone, Debug, PartialEq)]
pub struct Temp {
    pub value: f64,
    pub units: String,
    pub app_type: Option<String>,
    /// A multiple resource (5900, our own) to exercise resource instances.
    pub limits: Vec<(u16, i64)>,
}

impl Temp {
    pub fn new(value: f64) -> Self {
        Temp {
            value,
            units: "Cel".into(),
            app_type: None,
            limits: vec![(0, -10), (1, 40)],
        }
    }
}

#[derive(Debug, Default)]
pub struct State {
    pub instances: BTreeMap<u16, Temp>,
    pub executed: Vec<Vec<u8>>,
    pub rollbacks: usize,
}

pub type Shared = Arc<Mutex<State>>;

/// The object the client holds; it shares its state with the test.
pub struct TempObject(pub Shared);

const DEFS: &[ResourceDef] = &[
    ResourceDef::single(5700, ValueKind::Float, Operations::Read),
    ResourceDef::single(5701, ValueKind::String, Operations::ReadWrite),
    ResourceDef::executable(5605),
    ResourceDef::single(5750, ValueKind::String, Operations::ReadWrite),
    ResourceDef::multiple(5900, ValueKind::Integer, Operations::ReadWrite),
];

impl Object for TempObject {
    fn oid(&self) -> u16 {
        TEMP
    }

    fn instances(&self) -> Vec<u16> {
        self.0.lock().unwrap().instances.keys().copied().collect()
    }

    fn resources(&self, iid: u16) -> Result<Vec<ResourceDef>, DmError> {
        if !self.0.lock().unwrap().instances.contains_key(&iid) {
            return Err(DmError::NotFound);
        }
        Ok(DEFS.to_vec())
    }

    fn read(&self, iid: u16, rid: u16) -> Result<ResourceValue, DmError> {
        let st = self.0.lock().unwrap();
        let t = st.instances.get(&iid).ok_or(DmError::NotFound)?;
        Ok(match rid {
            5700 => ResourceValue::Single(Value::Float(t.value)),
            5701 => ResourceValue::Single(Value::String(t.units.clone())),
            5750 => {
                ResourceValue::Single(Value::String(t.app_type.clone().ok_or(DmError::NotFound)?))
            }
            5900 => ResourceValue::Multiple(
                t.limits
                    .iter()
                    .map(|(ri, v)| (*ri, Value::Integer(*v)))
                    .collect(),
            ),
            _ => return Err(DmError::NotFound),
        })
    }

    fn write(&mut self, iid: u16, rid: u16, value: ResourceValue) -> Result<(), DmError> {
        let mut st = self.0.lock().unwrap();
        let t = st.instances.get_mut(&iid).ok_or(DmError::NotFound)?;
        match (rid, value) {
            // The handler refuses this unit with 4.03, to test code mapping and rollback.
            (5701, ResourceValue::Single(Value::String(u))) if u == "bad" => {
                Err(DmError::Code(0x83))
            }
            (5701, ResourceValue::Single(Value::String(u))) => {
                t.units = u;
                Ok(())
            }
            (5750, ResourceValue::Single(Value::String(a))) => {
                t.app_type = Some(a);
                Ok(())
            }
            (5900, ResourceValue::Multiple(vs)) => {
                let mut out = Vec::new();
                for (ri, v) in vs {
                    let Value::Integer(x) = v else {
                        return Err(DmError::BadRequest);
                    };
                    out.push((ri, x));
                }
                t.limits = out;
                Ok(())
            }
            _ => Err(DmError::BadRequest),
        }
    }

    fn execute(&mut self, iid: u16, rid: u16, args: &[u8]) -> Result<(), DmError> {
        let mut st = self.0.lock().unwrap();
        if rid != 5605 || !st.instances.contains_key(&iid) {
            return Err(DmError::NotFound);
        }
        st.executed.push(args.to_vec());
        Ok(())
    }

    fn create_instance(&mut self, iid: u16) -> Result<(), DmError> {
        let mut st = self.0.lock().unwrap();
        st.instances.insert(iid, Temp::new(0.0));
        Ok(())
    }

    fn delete_instance(&mut self, iid: u16) -> Result<(), DmError> {
        let mut st = self.0.lock().unwrap();
        st.instances
            .remove(&iid)
            .map(|_| ())
            .ok_or(DmError::NotFound)
    }

    fn reset_instance(&mut self, iid: u16) -> Result<(), DmError> {
        let mut st = self.0.lock().unwrap();
        let t = st.instances.get_mut(&iid).ok_or(DmError::NotFound)?;
        t.app_type = None;
        t.limits.clear();
        Ok(())
    }

    fn transaction_rollback(&mut self) {
        self.0.lock().unwrap().rollbacks += 1;
    }
}

/// A registered simulation whose client holds a Temperature object with instance 0.
pub fn setup(seed: u64) -> (Sim, Shared) {
    setup_with(SimConfig::new(seed))
}

/// [`setup`] with a given simulator configuration (e.g. a lossy link).
pub fn setup_with(cfg: SimConfig) -> (Sim, Shared) {
    let shared: Shared = Arc::default();
    shared.lock().unwrap().instances.insert(0, Temp::new(21.5));
    let mut sim = Sim::new(cfg);
    sim.client_mut()
        .register_object(Box::new(TempObject(shared.clone())))
        .unwrap();
    sim.start().unwrap();
    assert!(sim.run_until_registered(Duration::from_secs(600)));
    (sim, shared)
}

/// Sends one request and runs until its answer; panics if none comes.
pub fn op(sim: &mut Sim, req: OpRequest) -> OpResult {
    let now = sim.now();
    let id = sim.server_mut().request(now, EP, req).unwrap();
    match sim.run_until_op(id, Duration::from_secs(60)) {
        Some(Ok(r)) => r,
        other => panic!("no answer: {other:?}"),
    }
}

pub fn get(path: &str, accept: Option<u16>) -> OpRequest {
    OpRequest {
        accept,
        ..OpRequest::get(path)
    }
}

pub fn body(method: OpMethod, path: &str, cf: u16, payload: &[u8]) -> OpRequest {
    OpRequest::with_body(method, path, cf, payload.to_vec())
}

pub fn attrs(path: &str, query: &[&str]) -> OpRequest {
    OpRequest {
        method: OpMethod::Put,
        query: query.iter().map(|s| s.to_string()).collect(),
        ..OpRequest::get(path)
    }
}
