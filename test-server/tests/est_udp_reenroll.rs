//! EST re-enrollment over real UDP on 127.0.0.1: the built `estuary-testserver` binary (`init`,
//! then `run --cert-validity 20s --events FILE` on ephemeral loopback ports) and an in-process
//! `estuary::io::Driver` client holding only its factory credentials. The client bootstraps
//! over DTLS with the factory certificate, enrolls (/est/sen) for its mode-4 account,
//! registers, and re-enrolls (/est/sren) as each 20-second certificate nears expiry,
//! registering again with each new certificate. Asserted from the server's events file and
//! the client's state; bounded to ~60 s wall time.

use std::io::{BufRead, BufReader};
use std::path::Path;
use std::process::{Child, Command, Stdio};
use std::sync::mpsc;
use std::sync::{Arc, Mutex};
use std::time::{Duration, Instant};

use estuary::crypto::{Certificate, KeyPair};
use estuary::dm::objects::{SecurityInstance, SecurityMode};
use estuary::io::Driver;
use estuary::{Client, ClientConfig, Event, SeededRng};

const BIN: &str = env!("CARGO_BIN_EXE_estuary-testserver");
const EP: &str = "est-udp-dev";
const LIMIT: Duration = Duration::from_secs(60);

/// The `run` process, killed when dropped.
struct Server(Child);

impl Drop for Server {
    fn drop(&mut self) {
        let _ = self.0.kill();
        let _ = self.0.wait();
    }
}

/// Starts `run` and returns it with the `bootstrap_coaps=` URI, `control=` address and
/// `coaps=` (management) URI of its first stdout line.
fn start_server(dir: &Path, events: &Path) -> (Server, String, String, String) {
    let mut child = Command::new(BIN)
        .args(["run", "--dir"])
        .arg(dir)
        .args([
            "--lwm2m-port",
            "0",
            "--control",
            "127.0.0.1:0",
            "--cert-validity",
            "20s",
            "--events",
        ])
        .arg(events)
        .stdout(Stdio::piped())
        .stderr(Stdio::null())
        .spawn()
        .unwrap();
    let out = child.stdout.take().unwrap();
    let server = Server(child);
    let (tx, rx) = mpsc::channel();
    std::thread::spawn(move || {
        for l in BufReader::new(out).lines().map_while(Result::ok) {
            if tx.send(l).is_err() {
                return;
            }
        }
    });
    let first = rx
        .recv_timeout(Duration::from_secs(20))
        .expect("the server's listening line");
    assert!(first.starts_with("listening "), "{first}");
    let field = |name: &str| {
        first
            .split_whitespace()
            .find_map(|w| w.strip_prefix(name))
            .unwrap_or_else(|| panic!("no {name} in {first}"))
            .to_string()
    };
    let bs = field("bootstrap_coaps=");
    let control = field("control=http://");
    let coaps = field("coaps=");
    assert!(bs.starts_with("coaps://127.0.0.1:"), "{bs}");
    (server, bs, control, coaps)
}

/// `init` for EP with its management account in EST mode; returns the state directory.
fn init_est_endpoint(tmp: &Path) -> std::path::PathBuf {
    let dir = tmp.join("state");
    let init = Command::new(BIN)
        .args(["init", "--dir"])
        .arg(&dir)
        .args(["--endpoint", EP])
        .output()
        .unwrap();
    assert!(init.status.success(), "{init:?}");
    let cfg_path = dir.join("config.toml");
    let cfg = std::fs::read_to_string(&cfg_path).unwrap();
    assert!(cfg.contains("security_mode = \"nosec\""), "{cfg}");
    std::fs::write(
        &cfg_path,
        cfg.replace("security_mode = \"nosec\"", "security_mode = \"est\""),
    )
    .unwrap();
    dir
}

/// The events file as JSON values, in order.
fn read_events(path: &Path) -> Vec<serde_json::Value> {
    std::fs::read_to_string(path)
        .unwrap_or_default()
        .lines()
        .filter_map(|l| serde_json::from_str(l).ok())
        .filter(|v: &serde_json::Value| v["ep"] == EP)
        .collect()
}

fn name(v: &serde_json::Value) -> &str {
    v["event"].as_str().unwrap_or("")
}

fn is_reenrolled(v: &serde_json::Value) -> bool {
    name(v) == "enrolled" && v["reenroll"] == true
}

/// Done when two re-enrollments each have a later Register.
fn done(events: &[serde_json::Value]) -> bool {
    let renewals: Vec<usize> = (0..events.len())
        .filter(|&i| is_reenrolled(&events[i]))
        .collect();
    renewals.len() >= 2
        && events[renewals[1]..]
            .iter()
            .any(|v| name(v) == "registered")
}

#[test]
fn client_enrolls_then_reenrolls_twice_over_real_udp() {
    let started = Instant::now();
    let tmp = tempfile::tempdir().unwrap();
    // The management account of this endpoint is mode 4 (EST).
    let dir = init_est_endpoint(tmp.path());
    let events_path = tmp.path().join("events.jsonl");
    let (_server, bs_uri, control, _) = start_server(&dir, &events_path);

    // The client: its factory certificate and key, and the server's certificate pinned.
    let creds = dir.join("endpoints").join(EP);
    let read = |f: &str| std::fs::read(creds.join(f)).unwrap();
    let factory = Certificate::from_pem(&read("factory-cert.pem")).unwrap();
    let key = KeyPair::from_der_or_pem(&read("factory-key.pem")).unwrap();
    let server_cert = Certificate::from_pem(&read("server-cert.pem")).unwrap();
    let mut bs = SecurityInstance::certificate(
        &bs_uri,
        1,
        factory.der(),
        key.to_der().expose(),
        server_cert.der(),
    );
    assert_eq!(bs.security_mode, SecurityMode::Certificate);
    bs.bootstrap_server = true;
    bs.ssid = None;
    let mut client = Client::new(ClientConfig::new(EP), Box::new(SeededRng::new(21))).unwrap();
    client.data_model_mut().security.insert(0, bs).unwrap();
    let mut driver = Driver::with_client(client, 0).unwrap();
    let seen: Arc<Mutex<Vec<Event>>> = Arc::default();
    let sink = seen.clone();
    driver.set_event_handler(Some(Box::new(move |e: &Event| {
        sink.lock().unwrap().push(e.clone());
    })));
    let stop = driver.interrupt_handle();
    let (done_tx, done_rx) = mpsc::channel();
    let runner = std::thread::spawn(move || {
        driver.run(Duration::from_millis(200)).unwrap();
        let st = driver.client().est_state().clone();
        let _ = done_tx.send(());
        driver.shutdown(Duration::from_secs(3));
        st
    });

    let mut events = Vec::new();
    while started.elapsed() < LIMIT {
        std::thread::sleep(Duration::from_millis(250));
        events = read_events(&events_path);
        if done(&events) {
            break;
        }
    }
    // While it runs, the server lists the client as registered in mode "est".
    let info = Command::new(BIN)
        .args(["client", EP, "--control", &control])
        .output()
        .unwrap();
    let info = String::from_utf8_lossy(&info.stdout).into_owned();
    stop.interrupt();
    done_rx.recv_timeout(Duration::from_secs(10)).unwrap();
    let state = runner.join().unwrap();
    let names: Vec<&str> = events.iter().map(name).collect();
    assert!(done(&events), "events: {names:?}");

    // In order: bootstrap, /crts, /sen, Register, then each /sren followed by a Register.
    let pos = |f: &dyn Fn(&serde_json::Value) -> bool| events.iter().position(f);
    let finished = pos(&|v| name(v) == "bootstrap_finished").expect("bootstrap_finished");
    let cacerts = pos(&|v| name(v) == "cacerts").expect("cacerts");
    let sen = pos(&|v| name(v) == "enrolled" && v["reenroll"] == false).expect("enrolled");
    let registered = pos(&|v| name(v) == "registered").expect("registered");
    assert!(
        finished < cacerts && cacerts < sen && sen < registered,
        "{names:?}"
    );
    let renewals: Vec<usize> = (0..events.len())
        .filter(|&i| is_reenrolled(&events[i]))
        .collect();
    assert!(renewals.len() >= 2, "{names:?}");
    assert!(renewals[0] > registered);
    let mut serials = vec![events[sen]["serial"].as_str().unwrap().to_string()];
    for (k, &i) in renewals.iter().enumerate() {
        let next = renewals.get(k + 1).copied().unwrap_or(events.len());
        assert!(
            events[i..next].iter().any(|v| name(v) == "registered"),
            "a Register after re-enrollment {k}: {names:?}"
        );
        serials.push(events[i]["serial"].as_str().unwrap().to_string());
    }
    serials.dedup();
    assert_eq!(
        serials.len(),
        renewals.len() + 1,
        "a new certificate each time"
    );
    // Exactly one bootstrap and one /sen: renewals never fell back.
    assert_eq!(
        names.iter().filter(|n| **n == "bootstrap_finished").count(),
        1
    );
    assert_eq!(
        events
            .iter()
            .filter(|v| name(v) == "enrolled" && v["reenroll"] == false)
            .count(),
        1
    );
    assert!(!names.contains(&"est_refused"), "{names:?}");

    // The client holds the newest certificate the CA issued (or one issued just after the
    // file was read), and saw the same story.
    let cert = state.certificate.as_ref().expect("enrolled");
    assert!(cert.matches_key(state.key.as_ref().unwrap()));
    let client_events = seen.lock().unwrap().clone();
    let client_renewals = client_events
        .iter()
        .filter(|e| {
            matches!(
                e,
                Event::EstEnrolled {
                    reenrollment: true,
                    ..
                }
            )
        })
        .count();
    assert!(client_renewals >= 2, "{client_events:?}");
    assert!(!client_events
        .iter()
        .any(|e| matches!(e, Event::EstFailed { .. })));
    assert!(
        serials.contains(&cert.serial_hex()) || client_renewals > renewals.len(),
        "client serial {} not among {serials:?}",
        cert.serial_hex()
    );
    assert!(info.contains("\"security_mode\":\"est\""), "{info}");
    assert!(started.elapsed() < LIMIT + Duration::from_secs(20));
    eprintln!(
        "real UDP: {} re-enrollments, {} registrations, {} events in {:?}",
        renewals.len(),
        names.iter().filter(|n| **n == "registered").count(),
        events.len(),
        started.elapsed()
    );
}

#[test]
fn an_est_endpoint_registering_with_its_factory_certificate_is_refused() {
    let started = Instant::now();
    let tmp = tempfile::tempdir().unwrap();
    let dir = init_est_endpoint(tmp.path());
    let events_path = tmp.path().join("events.jsonl");
    let (_server, _, _, coaps_uri) = start_server(&dir, &events_path);

    // Straight to the management server in Certificate mode with the factory certificate,
    // skipping bootstrap and EST: the DTLS handshake succeeds (the factory CA is trusted),
    // the Register does not.
    let creds = dir.join("endpoints").join(EP);
    let read = |f: &str| std::fs::read(creds.join(f)).unwrap();
    let factory = Certificate::from_pem(&read("factory-cert.pem")).unwrap();
    let key = KeyPair::from_der_or_pem(&read("factory-key.pem")).unwrap();
    let server_cert = Certificate::from_pem(&read("server-cert.pem")).unwrap();
    let sec = SecurityInstance::certificate(
        &coaps_uri,
        1,
        factory.der(),
        key.to_der().expose(),
        server_cert.der(),
    );
    let mut client = Client::new(ClientConfig::new(EP), Box::new(SeededRng::new(22))).unwrap();
    client.data_model_mut().security.insert(0, sec).unwrap();
    client
        .data_model_mut()
        .server
        .insert(0, estuary::dm::objects::ServerInstance::new(1, 300))
        .unwrap();
    let mut driver = Driver::with_client(client, 0).unwrap();
    let stop = driver.interrupt_handle();
    let runner = std::thread::spawn(move || {
        driver.run(Duration::from_millis(200)).unwrap();
        let registered = driver.client().is_registered();
        driver.shutdown(Duration::from_secs(1));
        registered
    });
    let mut events = Vec::new();
    while started.elapsed() < Duration::from_secs(20) {
        std::thread::sleep(Duration::from_millis(200));
        events = read_events(&events_path);
        if events.iter().any(|v| name(v) == "register_refused") {
            break;
        }
    }
    stop.interrupt();
    let registered = runner.join().unwrap();
    let names: Vec<&str> = events.iter().map(name).collect();
    let refused = events
        .iter()
        .find(|v| name(v) == "register_refused")
        .unwrap_or_else(|| panic!("no register_refused: {names:?}"));
    let reason = refused["reason"].as_str().unwrap();
    assert!(
        reason.contains("certificate") && reason.contains("est"),
        "{reason}"
    );
    assert!(!names.contains(&"registered"), "{names:?}");
    assert!(!registered);
}
