//! The test server's plain bootstrap port in-process, over real UDP on 127.0.0.1: a state
//! directory from `init` with a NoSec and a PSK device, and a fake client (an
//! `estuary::coap::Endpoint` on its own socket) that sends Bootstrap-Request and answers every
//! operation. The server writes the Security and Server instances pointing at its own
//! management ports as bound, and logs each step and the finish. Bounded to ~20 s.

use std::net::{SocketAddr, UdpSocket};
use std::time::{Duration, Instant as StdInstant};

use estuary::coap::{self, code, Endpoint, EndpointEvent, TxParams};
use estuary::dm::tlv;
use estuary::time::Instant;
use estuary::SeededRng;
use estuary_testserver::config::SecurityModeName;
use estuary_testserver::events::{EventKind, EventRecord};
use estuary_testserver::init::{self, InitOptions};
use estuary_testserver::{TestServer, TestServerConfig};

/// What the fake client saw: method, path and payload of every request.
type Seen = Vec<(u8, String, Vec<u8>)>;

/// Sends POST /bs?ep=`ep` to `server` and answers every request with 2.02/2.04 until the
/// Bootstrap-Finish has been answered or `limit` passes.
fn bootstrap_once(ep: &str, server: SocketAddr, limit: Duration) -> Seen {
    let sock = UdpSocket::bind("127.0.0.1:0").unwrap();
    sock.connect(server).unwrap();
    sock.set_read_timeout(Some(Duration::from_millis(50)))
        .unwrap();
    let origin = StdInstant::now();
    let mono = || Instant::from_millis(origin.elapsed().as_millis() as u64);
    let mut rng = SeededRng::new(11);
    let mut endpoint = Endpoint::new(TxParams::default(), 4096, 4096, &mut rng);
    let mut req = coap::new_request(code::POST, "/bs");
    coap::add_uri_query(&mut req, &format!("ep={ep}"));
    endpoint.send_request(mono(), req, true).unwrap();
    let mut seen = Seen::new();
    let mut buf = [0u8; 4096];
    let mut finished_at = None;
    while origin.elapsed() < limit {
        while let Some(d) = endpoint.poll_transmit() {
            sock.send(&d).unwrap();
        }
        while let Some(ev) = endpoint.poll_event() {
            if let EndpointEvent::Request(r) = ev {
                let m = coap::raw_code(&r.packet);
                let path = format!(
                    "/{}",
                    coap::uri_path(&r.packet).unwrap_or_default().join("/")
                );
                let answer = if m == code::DELETE {
                    code::DELETED
                } else {
                    code::CHANGED
                };
                if path == "/bs" {
                    finished_at = Some(StdInstant::now());
                }
                seen.push((m, path, r.packet.payload.clone()));
                endpoint.respond(mono(), &r, coap::new_response(answer));
            }
        }
        while let Some(d) = endpoint.poll_transmit() {
            sock.send(&d).unwrap();
        }
        // Linger briefly after the finish so its answer is delivered (and re-sent if lost).
        if finished_at.is_some_and(|t| t.elapsed() > Duration::from_millis(300)) {
            break;
        }
        match sock.recv(&mut buf) {
            Ok(n) => {
                let _ = endpoint.handle_datagram(mono(), &buf[..n]);
            }
            Err(_) => endpoint.handle_timeout(mono()),
        }
    }
    seen
}

fn wait(server: &estuary_testserver::TestServerHandle, ep: &str, name: &str) -> EventRecord {
    server
        .wait_for_event(name, ep, Duration::from_secs(5))
        .unwrap_or_else(|| panic!("no {name} event for {ep}: {:?}", server.events()))
}

/// The bytes of resource `id` in a written instance.
fn resource(payload: &[u8], id: u16) -> Vec<u8> {
    let tlvs = tlv::decode(payload).unwrap();
    match &tlvs.iter().find(|t| t.id == id).unwrap().body {
        tlv::TlvBody::Value(v) => v.clone(),
        other => panic!("resource {id} is not a value: {other:?}"),
    }
}

/// The Security instance's server URI (resource 0) and mode (resource 2, one byte).
fn security_uri_and_mode(payload: &[u8]) -> (String, Vec<u8>) {
    (
        String::from_utf8(resource(payload, 0)).unwrap(),
        resource(payload, 2),
    )
}

#[test]
fn nosec_and_psk_devices_are_bootstrapped_over_the_plain_port() {
    let tmp = tempfile::tempdir().unwrap();
    let dir = tmp.path().join("state");
    init::init(&InitOptions {
        dir: dir.clone(),
        endpoints: vec!["dev1".into(), "dev2".into()],
        force: false,
    })
    .unwrap();
    let mut config = init::load_config(&dir).unwrap();
    config.ports.lwm2m_coap = 0;
    config.endpoints.get_mut("dev2").unwrap().security_mode = SecurityModeName::Psk;
    let mut cfg = TestServerConfig::from_config(&config);
    cfg.control_addr = None;
    cfg.echo_events = false;
    let server = TestServer::start(cfg).unwrap();
    let bs = server.bootstrap_addr().expect("a bootstrap port");
    assert_ne!(bs.port(), 0);
    assert_ne!(bs, server.lwm2m_addr());

    // NoSec: Delete /, Security /0/1 with the coap URI, Server /1/0, Finish.
    let seen = bootstrap_once("dev1", bs, Duration::from_secs(8));
    let ops: Vec<(u8, &str)> = seen.iter().map(|(m, p, _)| (*m, p.as_str())).collect();
    assert_eq!(
        ops,
        vec![
            (code::DELETE, "/"),
            (code::PUT, "/0/1"),
            (code::PUT, "/1/0"),
            (code::POST, "/bs"),
        ]
    );
    let (uri, mode) = security_uri_and_mode(&seen[1].2);
    assert_eq!(uri, server.lwm2m_uri());
    assert_eq!(mode, vec![3], "NoSec");
    let requested = wait(&server, "dev1", "bootstrap_requested");
    assert!(requested
        .kind
        .log_line()
        .starts_with("ep=dev1 bootstrap requested"));
    wait(&server, "dev1", "bootstrap_finished");
    let steps: Vec<String> = server
        .events()
        .iter()
        .filter(|r| matches!(&r.kind, EventKind::BootstrapStep { ep, .. } if ep == "dev1"))
        .map(|r| r.kind.log_line())
        .collect();
    assert!(
        steps.contains(&"ep=dev1 bootstrap write /0/1 2.04".to_string()),
        "{steps:?}"
    );

    // PSK: the Security instance points at the coaps port with mode PSK and dev2's identity.
    let seen = bootstrap_once("dev2", bs, Duration::from_secs(8));
    assert_eq!(seen.len(), 4, "{seen:?}");
    let (uri, mode) = security_uri_and_mode(&seen[1].2);
    assert_eq!(Some(uri), server.lwm2m_coaps_uri());
    assert_eq!(mode, vec![0], "PSK");
    let identity = std::fs::read(dir.join("endpoints/dev2/psk-identity.txt")).unwrap();
    assert_eq!(resource(&seen[1].2, 3), identity);
    wait(&server, "dev2", "bootstrap_finished");

    // An endpoint nobody configured is refused, and no run starts for it.
    let seen = bootstrap_once("stranger", bs, Duration::from_secs(2));
    assert!(seen.is_empty(), "{seen:?}");
    assert!(!server
        .events()
        .iter()
        .any(|r| r.kind.endpoint() == "stranger" && r.kind.name() == "bootstrap_finished"));
    server.stop();
}
