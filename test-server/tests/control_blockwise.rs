//! Block-wise transfer on real UDP through the test server (issue 4): the control API writes
//! a 3 KiB and a 5 KiB opaque resource to a real `estuary::Client` and reads them back. The
//! client's out-buffer is 1024 bytes, so its answers to the reads go out as Block2; the
//! server's datagrams are at most 4096 bytes, so the 5 KiB write arrives as Block1.

mod common;

use std::time::Duration;

use common::{Deadline, UdpClient};
use estuary::dm::{DmError, Object, Operations, ResourceDef, ResourceValue, Value, ValueKind};
use estuary::{ClientConfig, Event};
use estuary_testserver::http::{self, HttpResponse};
use estuary_testserver::{TestServer, TestServerConfig};
use serde_json::Value as Json;

/// Binary App Data Container (19): /19/0/0 is opaque and writable.
struct Blob(Vec<u8>);

const DEFS: &[ResourceDef] = &[ResourceDef::single(
    0,
    ValueKind::Opaque,
    Operations::ReadWrite,
)];

impl Object for Blob {
    fn oid(&self) -> u16 {
        19
    }
    fn instances(&self) -> Vec<u16> {
        vec![0]
    }
    fn resources(&self, iid: u16) -> Result<Vec<ResourceDef>, DmError> {
        (iid == 0).then(|| DEFS.to_vec()).ok_or(DmError::NotFound)
    }
    fn read(&self, iid: u16, rid: u16) -> Result<ResourceValue, DmError> {
        match (iid, rid) {
            (0, 0) => Ok(ResourceValue::Single(Value::Opaque(self.0.clone()))),
            _ => Err(DmError::NotFound),
        }
    }
    fn write(&mut self, iid: u16, rid: u16, value: ResourceValue) -> Result<(), DmError> {
        match (iid, rid, value) {
            (0, 0, ResourceValue::Single(Value::Opaque(b))) => {
                self.0 = b;
                Ok(())
            }
            _ => Err(DmError::BadRequest),
        }
    }
}

fn body(seed: u32, len: usize) -> Vec<u8> {
    let mut x = seed;
    (0..len)
        .map(|_| {
            x ^= x << 13;
            x ^= x >> 17;
            x ^= x << 5;
            x as u8
        })
        .collect()
}

fn base64(data: &[u8]) -> String {
    const A: &[u8; 64] = b"ABCDEFGHIJKLMNOPQRSTUVWXYZabcdefghijklmnopqrstuvwxyz0123456789+/";
    let mut out = String::new();
    for c in data.chunks(3) {
        let n = (u32::from(c[0]) << 16)
            | (u32::from(*c.get(1).unwrap_or(&0)) << 8)
            | u32::from(*c.get(2).unwrap_or(&0));
        for i in 0..4 {
            if i <= c.len() {
                out.push(A[(n >> (18 - 6 * i) & 63) as usize] as char);
            } else {
                out.push('=');
            }
        }
    }
    out
}

#[test]
fn opaque_write_and_read_back_block_wise_over_udp() {
    let d = Deadline::after(Duration::from_secs(40));
    let server = TestServer::start(TestServerConfig {
        echo_events: false,
        ..TestServerConfig::default()
    })
    .unwrap();
    let control = server.control_addr().unwrap().to_string();
    let mut cfg = ClientConfig::new("blob-dev");
    cfg.out_buffer_size = 1024;
    let mut dev = UdpClient::spawn_with(
        cfg,
        vec![Box::new(Blob(Vec::new()))],
        server.lwm2m_addr(),
        60,
        Duration::from_secs(40),
    );
    assert!(dev.wait_event(&d, Duration::from_secs(10), |e| matches!(
        e,
        Event::Registered { .. }
    )));
    for (seed, len) in [(7u32, 3 * 1024), (9, 5 * 1024)] {
        let data = body(seed, len);
        let HttpResponse { status, body: resp } = http::request(
            &control,
            "PUT",
            "/api/clients/blob-dev/19/0/0?format=opaque&raw=1",
            &data,
            d.left(Duration::from_secs(15)),
        )
        .unwrap();
        assert_eq!(status, 200, "{resp}");
        let v: Json = serde_json::from_str(&resp).unwrap();
        assert_eq!(v["code"], "2.04", "{resp}");
        let HttpResponse { status, body: resp } = http::get(
            &control,
            "/api/clients/blob-dev/19/0/0?format=opaque",
            d.left(Duration::from_secs(15)),
        )
        .unwrap();
        assert_eq!(status, 200, "{resp}");
        let v: Json = serde_json::from_str(&resp).unwrap();
        assert_eq!(v["code"], "2.05", "{resp}");
        assert_eq!(
            v["value"].as_str(),
            Some(base64(&data).as_str()),
            "{len} bytes read back differ"
        );
        eprintln!("{len}-byte opaque resource written and read back through the test server");
    }
    assert!(dev.shutdown());
}
