//! Device management through the control API against a real `estuary::Client` over loopback
//! UDP that carries an IPSO Temperature object (3303) of the test's own: Write and Read
//! back, Read in SenML JSON/CBOR and LwM2M CBOR, Create and Delete of instances, Discover,
//! Write-Attributes, and Observe with notifications as events until the observation is
//! cancelled. Bounded to ~30 s.

mod common;

use std::collections::BTreeMap;
use std::net::{SocketAddr, UdpSocket};
use std::sync::atomic::{AtomicBool, AtomicU64, AtomicUsize, Ordering};
use std::sync::Arc;
use std::thread::JoinHandle;
use std::time::{Duration, Instant as StdInstant, SystemTime, UNIX_EPOCH};

use common::Deadline;
use estuary::dm::objects::{SecurityInstance, ServerInstance};
use estuary::dm::{
    DmError, Object, Operations, Path, ResourceDef, ResourceValue, Value, ValueKind,
};
use estuary::time::{Instant, Now, UtcTime};
use estuary::{Client, ClientConfig, SeededRng};
use estuary_testserver::http::{self, HttpResponse};
use estuary_testserver::{TestServer, TestServerConfig};
use serde_json::Value as Json;

/// Sensor Value (5700, float, R; one sensor shared by every instance, its value set by the
/// "firmware" loop) and Application Type (5750, string, RW) per instance.
struct Temperature {
    sensor: Arc<AtomicU64>,
    instances: BTreeMap<u16, String>,
}

const DEFS: &[ResourceDef] = &[
    ResourceDef::single(5700, ValueKind::Float, Operations::Read),
    ResourceDef::single(5750, ValueKind::String, Operations::ReadWrite),
];

impl Object for Temperature {
    fn oid(&self) -> u16 {
        3303
    }

    fn instances(&self) -> Vec<u16> {
        self.instances.keys().copied().collect()
    }

    fn resources(&self, iid: u16) -> Result<Vec<ResourceDef>, DmError> {
        self.instances
            .get(&iid)
            .map(|_| DEFS.to_vec())
            .ok_or(DmError::NotFound)
    }

    fn read(&self, iid: u16, rid: u16) -> Result<ResourceValue, DmError> {
        let t = self.instances.get(&iid).ok_or(DmError::NotFound)?;
        match rid {
            5700 => Ok(ResourceValue::Single(Value::Float(f64::from_bits(
                self.sensor.load(Ordering::SeqCst),
            )))),
            5750 => Ok(ResourceValue::Single(Value::String(t.clone()))),
            _ => Err(DmError::NotFound),
        }
    }

    fn write(&mut self, iid: u16, rid: u16, value: ResourceValue) -> Result<(), DmError> {
        let inst = self.instances.get_mut(&iid).ok_or(DmError::NotFound)?;
        match (rid, value) {
            (5750, ResourceValue::Single(Value::String(s))) => *inst = s,
            (5750, _) => return Err(DmError::BadRequest),
            _ => return Err(DmError::NotFound),
        }
        Ok(())
    }

    fn create_instance(&mut self, iid: u16) -> Result<(), DmError> {
        self.instances.insert(iid, String::new());
        Ok(())
    }

    fn delete_instance(&mut self, iid: u16) -> Result<(), DmError> {
        self.instances
            .remove(&iid)
            .map(|_| ())
            .ok_or(DmError::NotFound)
    }
}

/// The client on its own thread; /3303/0/5700 rises by 0.5 every 300 ms and the change
/// is announced with `notify_changed`, as firmware would.
struct Device {
    stop: Arc<AtomicBool>,
    observations: Arc<AtomicUsize>,
    thread: Option<JoinHandle<()>>,
}

impl Device {
    fn spawn(ep: &str, server: SocketAddr, limit: Duration) -> Device {
        let sock = UdpSocket::bind("127.0.0.1:0").unwrap();
        sock.connect(server).unwrap();
        let mut client = Client::new(ClientConfig::new(ep), Box::new(SeededRng::new(5))).unwrap();
        let dm = client.data_model_mut();
        dm.security
            .insert(0, SecurityInstance::nosec(&format!("coap://{server}"), 1))
            .unwrap();
        dm.server.insert(0, ServerInstance::new(1, 60)).unwrap();
        let sensor = Arc::new(AtomicU64::new(20.0f64.to_bits()));
        let temp = Temperature {
            sensor: sensor.clone(),
            instances: BTreeMap::from([(0, "room".to_string())]),
        };
        client.register_object(Box::new(temp)).unwrap();
        let stop = Arc::new(AtomicBool::new(false));
        let observations = Arc::new(AtomicUsize::new(0));
        let (s, o) = (stop.clone(), observations.clone());
        let thread = std::thread::spawn(move || {
            let origin = StdInstant::now();
            let now = || {
                let utc = SystemTime::now().duration_since(UNIX_EPOCH).unwrap();
                Now::new(
                    Instant::from_millis(origin.elapsed().as_millis() as u64),
                    UtcTime::from_unix_millis(utc.as_millis() as i64),
                )
            };
            client.start(now()).unwrap();
            let conn = client.connections()[0];
            let sensor_path = Path::resource(3303, 0, 5700);
            let mut next_change = StdInstant::now();
            let mut buf = vec![0u8; 65_535];
            while origin.elapsed() < limit && !s.load(Ordering::SeqCst) {
                if StdInstant::now() >= next_change {
                    next_change += Duration::from_millis(300);
                    let v = f64::from_bits(sensor.load(Ordering::SeqCst)) + 0.5;
                    sensor.store(v.to_bits(), Ordering::SeqCst);
                    client.notify_changed(now(), &sensor_path);
                }
                while let Some(t) = client.poll_transmit() {
                    let _ = sock.send(&t.data);
                }
                while client.poll_event().is_some() {}
                o.store(client.observation_count(1), Ordering::SeqCst);
                sock.set_read_timeout(Some(Duration::from_millis(20)))
                    .unwrap();
                if let Ok(len) = sock.recv(&mut buf) {
                    client.handle_datagram(now(), conn, &buf[..len]);
                }
                let n = now();
                if client.poll_timeout().is_some_and(|t| t <= n.mono) {
                    client.handle_timeout(n);
                }
            }
        });
        Device {
            stop,
            observations,
            thread: Some(thread),
        }
    }
}

impl Drop for Device {
    fn drop(&mut self) {
        self.stop.store(true, Ordering::SeqCst);
        if let Some(t) = self.thread.take() {
            let _ = t.join();
        }
    }
}

fn call(addr: &str, method: &str, target: &str, body: &[u8], d: &Deadline) -> (u16, Json) {
    let HttpResponse { status, body } =
        http::request(addr, method, target, body, d.left(Duration::from_secs(15))).unwrap();
    let v = serde_json::from_str(&body).unwrap_or(Json::String(body));
    (status, v)
}

/// The notification events of `path` so far.
fn notifications(addr: &str, path: &str, d: &Deadline) -> Vec<Json> {
    let HttpResponse { body, .. } =
        http::get(addr, "/api/events", d.left(Duration::from_secs(5))).unwrap();
    body.lines()
        .map(|l| serde_json::from_str::<Json>(l).unwrap())
        .filter(|e| e["event"] == "notification" && e["path"] == path)
        .collect()
}

fn wait_until(d: &Deadline, cap: Duration, mut f: impl FnMut() -> bool) -> bool {
    let end = StdInstant::now() + d.left(cap);
    while StdInstant::now() < end {
        if f() {
            return true;
        }
        std::thread::sleep(Duration::from_millis(50));
    }
    f()
}

#[test]
fn write_create_delete_discover_attributes_observe() {
    let d = Deadline::after(Duration::from_secs(30));
    let server = TestServer::start(TestServerConfig {
        echo_events: false,
        seed: Some(17),
        ..TestServerConfig::default()
    })
    .unwrap();
    let c = server.control_addr().unwrap().to_string();
    let ep = "dm-dev";
    let device = Device::spawn(ep, server.lwm2m_addr(), Duration::from_secs(30));
    server
        .wait_for_event("registered", ep, d.left(Duration::from_secs(10)))
        .expect("registered");
    let api = |rest: &str| format!("/api/clients/{ep}{rest}");

    // Write a resource (text) and an instance (TLV, partial update), read them back.
    let (st, v) = call(
        &c,
        "PUT",
        &api("/3303/0/5750"),
        br#"{"value":"kitchen"}"#,
        &d,
    );
    assert_eq!((st, v["code"].as_str()), (200, Some("2.04")), "{v}");
    let (_, v) = call(&c, "GET", &api("/3303/0/5750"), b"", &d);
    assert_eq!(v["value"], "kitchen");
    let body = br#"{"resources":{"5750":"hall"}}"#;
    let (_, v) = call(&c, "POST", &api("/3303/0"), body, &d);
    assert_eq!(v["code"], "2.04", "{v}");
    let (_, v) = call(&c, "GET", &api("/3303/0?format=tlv"), b"", &d);
    let res = v["resources"].as_array().unwrap();
    assert!(
        res.iter()
            .any(|r| r["path"] == "/3303/0/5750" && r["value"] == "hall"),
        "{v}"
    );
    // A read-only resource refuses the Write: the client's code comes back.
    let (_, v) = call(&c, "PUT", &api("/3303/0/5700"), br#"{"value":1.5}"#, &d);
    assert_eq!(v["code"], "4.05", "{v}");
    // raw=1: the body is the payload as it is.
    let (_, v) = call(
        &c,
        "PUT",
        &api("/3303/0/5750?raw=1&format=text"),
        b"porch",
        &d,
    );
    assert_eq!(v["code"], "2.04", "{v}");
    let (_, v) = call(&c, "GET", &api("/3303/0/5750"), b"", &d);
    assert_eq!(v["value"], "porch");

    // Read the instance in each typed format: entries with their types.
    for f in ["senml-json", "senml-cbor", "lwm2m-cbor"] {
        let (_, v) = call(&c, "GET", &api(&format!("/3303/0?format={f}")), b"", &d);
        assert_eq!(
            (v["code"].as_str(), v["format"].as_str()),
            (Some("2.05"), Some(f)),
            "{v}"
        );
        let entries = v["entries"].as_array().unwrap();
        let app = entries
            .iter()
            .find(|e| e["path"] == "/3303/0/5750")
            .unwrap();
        assert_eq!(
            (app["type"].as_str(), app["value"].as_str()),
            (Some("string"), Some("porch"))
        );
        let sensor = entries
            .iter()
            .find(|e| e["path"] == "/3303/0/5700")
            .unwrap();
        assert_eq!(sensor["type"], "float", "{f}: {v}");
        assert!(sensor["value"].as_f64().unwrap() >= 20.0);
    }

    // Create instance 7 (TLV with its ID), read it, Delete it.
    let body = br#"{"id":7,"resources":{"5750":"garage"}}"#;
    let (_, v) = call(&c, "POST", &api("/3303"), body, &d);
    assert_eq!(v["code"], "2.01", "{v}");
    let (_, v) = call(&c, "GET", &api("/3303/7/5750"), b"", &d);
    assert_eq!(
        (v["code"].as_str(), v["value"].as_str()),
        (Some("2.05"), Some("garage"))
    );
    let (_, v) = call(&c, "DELETE", &api("/3303/7"), b"", &d);
    assert_eq!(v["code"], "2.02", "{v}");
    let (_, v) = call(&c, "GET", &api("/3303/7/5750"), b"", &d);
    assert_eq!(v["code"], "4.04", "{v}");

    // Write-Attributes, then Discover shows the resources and the attribute.
    let (_, v) = call(
        &c,
        "PUT",
        &api("/3303/0/5700/attributes?pmin=0&pmax=30"),
        b"",
        &d,
    );
    assert_eq!(v["code"], "2.04", "{v}");
    let (_, v) = call(&c, "GET", &api("/3303/0?discover=1"), b"", &d);
    assert_eq!(
        (v["code"].as_str(), v["format"].as_str()),
        (Some("2.05"), Some("link")),
        "{v}"
    );
    let links = v["links"].as_array().unwrap();
    let sensor = links
        .iter()
        .find(|l| l["target"] == "/3303/0/5700")
        .expect("5700 link");
    assert!(
        sensor["attributes"]
            .as_array()
            .unwrap()
            .iter()
            .any(|a| a == "pmax=30"),
        "{v}"
    );
    assert!(links.iter().any(|l| l["target"] == "/3303/0/5750"), "{v}");

    // Observe: the first value in the answer, then notifications with rising values as
    // events, until the observation is cancelled.
    let (st, v) = call(
        &c,
        "POST",
        &api("/3303/0/5700/observe?format=text"),
        b"",
        &d,
    );
    assert_eq!((st, v["code"].as_str()), (200, Some("2.05")), "{v}");
    assert!(v["op"].is_u64(), "{v}");
    let first: f64 = v["value"].as_str().unwrap().parse().unwrap();
    assert!(wait_until(&d, Duration::from_secs(10), || {
        notifications(&c, "/3303/0/5700", &d).len() >= 2
    }));
    let seen = notifications(&c, "/3303/0/5700", &d);
    let values: Vec<f64> = seen
        .iter()
        .map(|e| e["value"].as_str().unwrap().parse().unwrap())
        .collect();
    assert!(values.windows(2).all(|w| w[1] > w[0]), "{values:?}");
    assert!(values[0] > first, "{first} then {values:?}");
    for e in &seen {
        assert_eq!(
            (e["endpoint"].as_str(), e["code"].as_str()),
            (Some(ep), Some("2.05")),
            "{e}"
        );
        assert_eq!(e["format"], "text");
        assert!(e["observe"].is_u64());
    }
    assert_eq!(device.observations.load(Ordering::SeqCst), 1);

    let (st, v) = call(&c, "DELETE", &api("/3303/0/5700/observe"), b"", &d);
    assert_eq!((st, v["cancelled"].as_bool()), (200, Some(true)), "{v}");
    // The client's next notification is answered with RST and it drops the observation.
    assert!(wait_until(&d, Duration::from_secs(5), || {
        device.observations.load(Ordering::SeqCst) == 0
    }));
    let after = notifications(&c, "/3303/0/5700", &d).len();
    std::thread::sleep(Duration::from_millis(1000));
    assert_eq!(notifications(&c, "/3303/0/5700", &d).len(), after);
    assert_eq!(
        call(&c, "DELETE", &api("/3303/0/5700/observe"), b"", &d).0,
        404
    );

    drop(device);
    server.stop();
}
