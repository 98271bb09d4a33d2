//! The test server's coaps port in-process, over real UDP on 127.0.0.1: a state directory
//! from `init`, the listener loaded from it, and an `estuary` client (io driver) registering
//! with the PSK and then with the device certificate `init` wrote; the server lists each with
//! its security mode and reads /3/0/0 through the DTLS session. A wrong key is refused and
//! never registers. Bounded to ~30 s.

use std::sync::mpsc;
use std::time::Duration;

use estuary::dm::objects::{SecurityInstance, ServerInstance};
use estuary::io::Driver;
use estuary::{Client, ClientConfig, Event, SeededRng};
use estuary_testserver::init::{self, InitOptions};
use estuary_testserver::{TestServer, TestServerConfig};

/// Runs a client with `security` on its own thread until it registers or fails, then keeps
/// serving for `serve` so the server can read it. Returns its events.
fn client(ep: &str, security: SecurityInstance, serve: Duration) -> mpsc::Receiver<Event> {
    let (tx, rx) = mpsc::channel();
    let ep = ep.to_string();
    std::thread::spawn(move || {
        let mut c = Client::new(ClientConfig::new(&ep), Box::new(SeededRng::new(3))).unwrap();
        let dm = c.data_model_mut();
        dm.security.insert(0, security).unwrap();
        dm.server.insert(0, ServerInstance::new(1, 60)).unwrap();
        dm.device.manufacturer = "Estuary Labs".into();
        let mut driver = Driver::with_client(c, 0).unwrap();
        let stop = driver.interrupt_handle();
        driver.set_event_handler(Some(Box::new(move |e: &Event| {
            let _ = tx.send(e.clone());
        })));
        std::thread::spawn(move || {
            std::thread::sleep(serve);
            stop.interrupt();
        });
        let _ = driver.run(Duration::from_millis(100));
        driver.shutdown(Duration::from_secs(2));
    });
    rx
}

fn wait(rx: &mpsc::Receiver<Event>, limit: Duration, pred: impl Fn(&Event) -> bool) -> Vec<Event> {
    let end = std::time::Instant::now() + limit;
    let mut seen = Vec::new();
    while let Some(left) = end.checked_duration_since(std::time::Instant::now()) {
        match rx.recv_timeout(left) {
            Ok(e) => {
                let hit = pred(&e);
                seen.push(e);
                if hit {
                    break;
                }
            }
            Err(_) => break,
        }
    }
    seen
}

#[test]
fn psk_and_certificate_clients_register_over_coaps() {
    let tmp = tempfile::tempdir().unwrap();
    let dir = tmp.path().join("state");
    init::init(&InitOptions {
        dir: dir.clone(),
        endpoints: vec!["psk-dev".into(), "cert-dev".into()],
        force: false,
    })
    .unwrap();
    let listener = init::load_secure_listener(&dir).unwrap().unwrap();
    let lo = "127.0.0.1:0".parse().unwrap();
    let server = TestServer::start(TestServerConfig {
        lwm2m_addr: lo,
        control_addr: None,
        echo_events: false,
        coaps: Some((lo, listener)),
        ..TestServerConfig::default()
    })
    .unwrap();
    let uri = server.lwm2m_coaps_uri().unwrap();

    let psk_dir = dir.join("endpoints/psk-dev");
    let key = init::unhex(
        std::fs::read_to_string(psk_dir.join("psk-key.hex"))
            .unwrap()
            .trim(),
    )
    .unwrap();
    let psk = SecurityInstance::psk(&uri, 1, b"psk-dev", &key);
    let rx = client("psk-dev", psk, Duration::from_secs(8));
    let seen = wait(&rx, Duration::from_secs(10), |e| {
        matches!(e, Event::Registered { .. })
    });
    assert!(
        seen.iter()
            .any(|e| matches!(e, Event::SecureConnectionEstablished { .. })),
        "{seen:?}"
    );
    assert!(server
        .wait_for_event("registered", "psk-dev", Duration::from_secs(5))
        .is_some());
    let read = server.read("psk-dev", "/3/0/0", None).unwrap();
    assert_eq!(
        (read.code.as_str(), read.payload.as_slice()),
        ("2.05", &b"Estuary Labs"[..])
    );

    let cert_dir = dir.join("endpoints/cert-dev");
    let file = |n: &str| std::fs::read(cert_dir.join(n)).unwrap();
    let cert = SecurityInstance::certificate(
        &uri,
        1,
        &file("factory-cert.pem"),
        &file("factory-key.pem"),
        &file("server-cert.pem"),
    );
    let rx = client("cert-dev", cert, Duration::from_secs(8));
    wait(&rx, Duration::from_secs(10), |e| {
        matches!(e, Event::Registered { .. })
    });
    assert!(server
        .wait_for_event("registered", "cert-dev", Duration::from_secs(5))
        .is_some());
    let read = server.read("cert-dev", "/3/0/0", None).unwrap();
    assert_eq!(read.code, "2.05");

    let clients = server.clients();
    let mode = |ep: &str| {
        clients
            .iter()
            .find(|c| c.endpoint == ep)
            .map(|c| c.security_mode.clone())
    };
    assert_eq!(mode("psk-dev").as_deref(), Some("psk"));
    assert_eq!(mode("cert-dev").as_deref(), Some("certificate"));

    // A wrong key: the handshake is refused with the reason, and nothing registers.
    let wrong = SecurityInstance::psk(&uri, 1, b"psk-dev", &[0x55; 16]);
    let rx = client("psk-wrong", wrong, Duration::from_secs(5));
    let seen = wait(&rx, Duration::from_secs(6), |e| {
        matches!(e, Event::SecureConnectionFailed { .. })
    });
    assert!(
        seen.iter().any(|e| matches!(
            e,
            Event::SecureConnectionFailed { reason, .. } if reason.contains("pre-shared key mismatch")
        )),
        "{seen:?}"
    );
    assert!(server.clients().iter().all(|c| c.endpoint != "psk-wrong"));
}
