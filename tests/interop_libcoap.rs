//! Interop with an independent DTLS/CoAP implementation, Debian's libcoap (OpenSSL build):
//! `coap-client-openssl` registers with our test server over coaps, and our client completes
//! DTLS with `coap-server-openssl` and gets a CoAP answer through it — each in PSK and
//! certificate mode. The tools come from `libcoap3-bin` (scripts/lib/setup.sh installs it;
//! this test tries `apt-get install` itself when it runs as root). Only if they cannot be
//! installed does the test skip, loudly. 127.0.0.1 only; every process is bounded in time.

use std::net::{SocketAddr, UdpSocket};
use std::path::{Path, PathBuf};
use std::process::{Child, Command, Stdio};
use std::sync::mpsc;
use std::time::{Duration, SystemTime, UNIX_EPOCH};

use estuary::crypto::{Drbg, SecretBytes};
use estuary::dm::objects::{SecurityInstance, ServerInstance};
use estuary::io::Driver;
use estuary::time::UtcTime;
use estuary::{Client, ClientConfig, Event, SeededRng};
use estuary_testserver::init::{self, InitOptions};
use estuary_testserver::pki::TestPki;
use estuary_testserver::{TestServer, TestServerConfig};

const CLIENT_TOOL: &str = "coap-client-openssl";
const SERVER_TOOL: &str = "coap-server-openssl";
/// An ASCII key, since libcoap's `-k` takes the key as text.
const PSK_KEY: &[u8] = b"interop-secret-1";

fn on_path(tool: &str) -> bool {
    Command::new("sh")
        .args(["-c", &format!("command -v {tool}")])
        .stdout(Stdio::null())
        .status()
        .is_ok_and(|s| s.success())
}

/// True when libcoap's tools are there, installing them if this process may.
fn libcoap_available() -> bool {
    if on_path(CLIENT_TOOL) && on_path(SERVER_TOOL) {
        return true;
    }
    let root = Command::new("id")
        .arg("-u")
        .output()
        .is_ok_and(|o| o.stdout.starts_with(b"0"));
    if root {
        let _ = Command::new("apt-get")
            .args([
                "install",
                "-y",
                "-qq",
                "--no-install-recommends",
                "libcoap3-bin",
            ])
            .env("DEBIAN_FRONTEND", "noninteractive")
            .stdout(Stdio::null())
            .status();
    }
    if on_path(CLIENT_TOOL) && on_path(SERVER_TOOL) {
        return true;
    }
    eprintln!(
        "\n########################################################################\n\
         SKIPPING libcoap interop: {CLIENT_TOOL} / {SERVER_TOOL} are not installed and\n\
         could not be installed (apt-get install libcoap3-bin, as root).\n\
         ########################################################################\n"
    );
    false
}

/// Kills the child when dropped, so no test leaves a process behind.
struct Reaped(Child);

impl Drop for Reaped {
    fn drop(&mut self) {
        let _ = self.0.kill();
        let _ = self.0.wait();
    }
}

/// Runs a short-lived tool with a hard time limit; returns (exit success, stdout+stderr).
fn run_bounded(cmd: &mut Command, limit: Duration) -> (bool, String) {
    let mut child = Reaped(
        cmd.stdout(Stdio::piped())
            .stderr(Stdio::piped())
            .spawn()
            .expect("spawn libcoap tool"),
    );
    let start = std::time::Instant::now();
    loop {
        if let Some(status) = child.0.try_wait().unwrap() {
            let out = child.0.wait_with_output_ref();
            return (status.success(), out);
        }
        if start.elapsed() > limit {
            return (false, format!("timed out after {limit:?}"));
        }
        std::thread::sleep(Duration::from_millis(50));
    }
}

trait OutputRef {
    fn wait_with_output_ref(&mut self) -> String;
}

impl OutputRef for Child {
    fn wait_with_output_ref(&mut self) -> String {
        use std::io::Read;
        let mut s = String::new();
        if let Some(o) = self.stdout.as_mut() {
            let _ = o.read_to_string(&mut s);
        }
        if let Some(e) = self.stderr.as_mut() {
            let _ = e.read_to_string(&mut s);
        }
        s
    }
}

/// A scratch directory removed when dropped.
struct Scratch(PathBuf);

impl Scratch {
    fn new(name: &str) -> Scratch {
        let p = std::env::temp_dir().join(format!("estuary-{name}-{}", std::process::id()));
        let _ = std::fs::remove_dir_all(&p);
        std::fs::create_dir_all(&p).unwrap();
        Scratch(p)
    }

    fn path(&self) -> &Path {
        &self.0
    }
}

impl Drop for Scratch {
    fn drop(&mut self) {
        let _ = std::fs::remove_dir_all(&self.0);
    }
}

fn utc_now() -> UtcTime {
    let s = SystemTime::now()
        .duration_since(UNIX_EPOCH)
        .map_or(0, |d| d.as_secs() as i64);
    UtcTime::from_unix_seconds(s)
}

#[test]
fn libcoap_client_registers_with_our_server_over_psk_and_certificates() {
    if !libcoap_available() {
        return;
    }
    let tmp = Scratch::new("libcoap-client");
    let dir = tmp.path().join("state");
    init::init(&InitOptions {
        dir: dir.clone(),
        endpoints: vec!["libcoap-cert".into()],
        force: false,
    })
    .unwrap();
    let mut listener = init::load_secure_listener(&dir).unwrap().unwrap();
    listener
        .psk
        .push((b"libcoap-psk".to_vec(), SecretBytes::new(PSK_KEY.to_vec())));
    let lo = "127.0.0.1:0".parse::<SocketAddr>().unwrap();
    let server = TestServer::start(TestServerConfig {
        lwm2m_addr: lo,
        control_addr: None,
        echo_events: false,
        coaps: Some((lo, listener)),
        ..TestServerConfig::default()
    })
    .unwrap();
    let coaps = server.lwm2m_coaps_addr().unwrap();
    let uri = |ep: &str| format!("coaps://{coaps}/rd?ep={ep}&lt=60&lwm2m=1.1&b=U");

    // PSK.
    let (ok, out) = run_bounded(
        Command::new(CLIENT_TOOL)
            .args([
                "-m",
                "post",
                "-t",
                "40",
                "-e",
                "</3/0>",
                "-B",
                "10",
                "-u",
                "libcoap-psk",
                "-k",
            ])
            .arg(std::str::from_utf8(PSK_KEY).unwrap())
            .arg(uri("libcoap-psk")),
        Duration::from_secs(20),
    );
    assert!(ok, "{CLIENT_TOOL} (PSK) failed: {out}");
    assert!(
        server
            .wait_for_event("registered", "libcoap-psk", Duration::from_secs(5))
            .is_some(),
        "no registration from libcoap over PSK: {out}"
    );

    // Certificates: the device files `init` wrote, the root CA to check our server.
    let ep_dir = dir.join("endpoints/libcoap-cert");
    let (ok, out) = run_bounded(
        Command::new(CLIENT_TOOL)
            .args(["-m", "post", "-t", "40", "-e", "</3/0>", "-B", "10", "-c"])
            .arg(ep_dir.join("factory-cert.pem"))
            .arg("-j")
            .arg(ep_dir.join("factory-key.pem"))
            .arg("-C")
            .arg(ep_dir.join("trust-anchor.pem"))
            .arg(uri("libcoap-cert")),
        Duration::from_secs(20),
    );
    assert!(ok, "{CLIENT_TOOL} (certificate) failed: {out}");
    assert!(
        server
            .wait_for_event("registered", "libcoap-cert", Duration::from_secs(5))
            .is_some(),
        "no registration from libcoap over certificates: {out}"
    );
    let clients = server.clients();
    let mode = |ep: &str| {
        clients
            .iter()
            .find(|c| c.endpoint == ep)
            .map(|c| c.security_mode.clone())
    };
    assert_eq!(mode("libcoap-psk").as_deref(), Some("psk"));
    assert_eq!(mode("libcoap-cert").as_deref(), Some("certificate"));
}

/// A UDP port `p` with `p + 1` free too (libcoap serves DTLS on port + 1).
fn free_port_pair() -> u16 {
    for _ in 0..50 {
        let a = UdpSocket::bind("127.0.0.1:0").unwrap();
        let p = a.local_addr().unwrap().port();
        if p < 65535 && UdpSocket::bind(("127.0.0.1", p + 1)).is_ok() {
            return p;
        }
    }
    panic!("no free port pair on 127.0.0.1");
}

fn write_pem(dir: &Path, name: &str, pem: &[u8]) -> PathBuf {
    let p = dir.join(name);
    std::fs::write(&p, pem).unwrap();
    p
}

/// Runs our client against `uri` until it reports a registration outcome (or `limit`).
fn run_our_client(security: SecurityInstance, limit: Duration) -> Vec<Event> {
    let mut client = Client::new(
        ClientConfig::new("estuary-interop"),
        Box::new(SeededRng::new(5)),
    )
    .unwrap();
    let dm = client.data_model_mut();
    dm.security.insert(0, security).unwrap();
    dm.server.insert(0, ServerInstance::new(1, 60)).unwrap();
    let mut driver = Driver::with_client(client, 0).unwrap();
    let (tx, rx) = mpsc::channel();
    let stop = driver.interrupt_handle();
    let timer = driver.interrupt_handle();
    driver.set_event_handler(Some(Box::new(move |e: &Event| {
        let _ = tx.send(e.clone());
        if matches!(
            e,
            Event::Registered { .. }
                | Event::RegistrationFailed { .. }
                | Event::SecureConnectionFailed { .. }
        ) {
            stop.interrupt();
        }
    })));
    std::thread::spawn(move || {
        std::thread::sleep(limit);
        timer.interrupt();
    });
    driver.run(Duration::from_millis(200)).unwrap();
    rx.try_iter().collect()
}

#[test]
fn our_client_completes_dtls_with_libcoap_server_over_psk_and_certificates() {
    if !libcoap_available() {
        return;
    }
    let tmp = Scratch::new("libcoap-server");
    let now = utc_now();
    let mut rng = Drbg::from_seed(77);
    let pki = TestPki::generate(
        &mut rng,
        UtcTime::from_unix_seconds(now.unix_seconds() - 3600),
        UtcTime::from_unix_seconds(now.unix_seconds() + 86_400),
    )
    .unwrap();
    let device = pki
        .issue_client(
            "estuary-interop",
            UtcTime::from_unix_seconds(now.unix_seconds() - 3600),
            UtcTime::from_unix_seconds(now.unix_seconds() + 86_400),
            &mut rng,
        )
        .unwrap();
    let d = tmp.path();
    let server_cert = write_pem(d, "server.pem", pki.server_cert.to_pem().as_bytes());
    let server_key = write_pem(d, "server-key.pem", pki.server_key.to_pem().expose());
    let ca = write_pem(d, "ca.pem", pki.ca.certificate().to_pem().as_bytes());

    let port = free_port_pair();
    let _server = Reaped(
        Command::new(SERVER_TOOL)
            .args(["-A", "127.0.0.1", "-p", &port.to_string(), "-k"])
            .arg(std::str::from_utf8(PSK_KEY).unwrap())
            .arg("-c")
            .arg(&server_cert)
            .arg("-j")
            .arg(&server_key)
            .arg("-C")
            .arg(&ca)
            .stdout(Stdio::null())
            .stderr(Stdio::null())
            .spawn()
            .expect("spawn coap-server-openssl"),
    );
    // Give it a moment to bind; the client's handshake retransmits anyway.
    std::thread::sleep(Duration::from_millis(300));
    let uri = format!("coaps://127.0.0.1:{}", port + 1);

    let check = |events: &[Event], mode: &str| {
        assert!(
            events
                .iter()
                .any(|e| matches!(e, Event::SecureConnectionEstablished { .. })),
            "{mode}: no DTLS session with libcoap: {events:?}"
        );
        // libcoap is no LwM2M server: it answers the Register with an error code, which
        // proves the CoAP exchange went through the DTLS session both ways.
        assert!(
            events.iter().any(|e| matches!(
                e,
                Event::RegistrationFailed { reason, .. } if reason.contains("answered Register with")
            )),
            "{mode}: no CoAP answer through DTLS: {events:?}"
        );
    };
    let psk = SecurityInstance::psk(&uri, 1, b"estuary-interop", PSK_KEY);
    check(&run_our_client(psk, Duration::from_secs(20)), "PSK");

    let cert = SecurityInstance::certificate(
        &uri,
        1,
        device.cert.der(),
        device.key.to_der().expose(),
        pki.server_cert.der(),
    );
    check(
        &run_our_client(cert, Duration::from_secs(20)),
        "certificate",
    );
}
