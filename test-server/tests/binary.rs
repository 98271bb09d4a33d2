//! The built `estuary-testserver` binary: `init` makes the state directory and refuses to
//! overwrite it; `run` (ephemeral ports, read back from its first stdout line) serves
//! `clients`, `client`, `read` and `events` for a real client over UDP, writes the events
//! file and the readable lines, and stops with exit code 0 on SIGTERM and on SIGINT.
//! 127.0.0.1 only, bounded.

mod common;

use std::io::{BufRead, BufReader};
use std::path::Path;
use std::process::{Child, Command, Output, Stdio};
use std::sync::mpsc::{self, Receiver};
use std::time::Duration;

use common::{Deadline, UdpClient, MANUFACTURER};

const BIN: &str = env!("CARGO_BIN_EXE_estuary-testserver");

fn cli(args: &[&str]) -> Output {
    Command::new(BIN).args(args).output().unwrap()
}

fn stdout(o: &Output) -> String {
    String::from_utf8_lossy(&o.stdout).into_owned()
}

fn stderr(o: &Output) -> String {
    String::from_utf8_lossy(&o.stderr).into_owned()
}

/// A `run` process; killed if the test fails before it is stopped.
struct Server {
    child: Option<Child>,
    lines: Receiver<String>,
    seen: Vec<String>,
    lwm2m: String,
    control: String,
}

impl Server {
    fn start(dir: &Path, events: &Path, d: &Deadline) -> Server {
        let mut child = Command::new(BIN)
            .args(["run", "--dir"])
            .arg(dir)
            .args(["--lwm2m-port", "0", "--control", "127.0.0.1:0", "--events"])
            .arg(events)
            .stdout(Stdio::piped())
            .spawn()
            .unwrap();
        let out = child.stdout.take().unwrap();
        let (tx, lines) = mpsc::channel();
        std::thread::spawn(move || {
            for l in BufReader::new(out).lines().map_while(Result::ok) {
                if tx.send(l).is_err() {
                    return;
                }
            }
        });
        let mut s = Server {
            child: Some(child),
            lines,
            seen: Vec::new(),
            lwm2m: String::new(),
            control: String::new(),
        };
        let first = s
            .wait_line(d, |l| l.starts_with("listening "))
            .expect("listening line");
        for word in first.split_whitespace() {
            if let Some(u) = word.strip_prefix("lwm2m=coap://") {
                s.lwm2m = u.to_string();
            }
            if let Some(u) = word.strip_prefix("control=http://") {
                s.control = u.to_string();
            }
        }
        assert!(s.lwm2m.starts_with("127.0.0.1:"), "{first}");
        assert!(s.control.starts_with("127.0.0.1:"), "{first}");
        s
    }

    fn wait_line(&mut self, d: &Deadline, pred: impl Fn(&str) -> bool) -> Option<String> {
        let end = std::time::Instant::now() + d.left(Duration::from_secs(10));
        loop {
            if let Some(l) = self.seen.iter().find(|l| pred(l)) {
                return Some(l.clone());
            }
            let left = end.saturating_duration_since(std::time::Instant::now());
            self.seen.push(self.lines.recv_timeout(left).ok()?);
        }
    }

    /// Sends `sig` and returns the exit code, waiting at most 10 s.
    fn signal_and_wait(mut self, sig: libc::c_int, d: &Deadline) -> Option<i32> {
        let mut child = self.child.take().unwrap();
        let pid = libc::pid_t::try_from(child.id()).unwrap();
        // SAFETY: signalling the child this test started, by its pid.
        assert_eq!(unsafe { libc::kill(pid, sig) }, 0);
        let end = std::time::Instant::now() + d.left(Duration::from_secs(10));
        while std::time::Instant::now() < end {
            if let Some(status) = child.try_wait().unwrap() {
                return status.code();
            }
            std::thread::sleep(Duration::from_millis(20));
        }
        let _ = child.kill();
        let _ = child.wait();
        panic!("estuary-testserver run did not stop within 10 s of signal {sig}");
    }
}

impl Drop for Server {
    fn drop(&mut self) {
        if let Some(mut c) = self.child.take() {
            let _ = c.kill();
            let _ = c.wait();
        }
    }
}

fn wait_for_file_event(path: &Path, event: &str, ep: &str, d: &Deadline) -> bool {
    let end = std::time::Instant::now() + d.left(Duration::from_secs(10));
    let needle = (format!("\"event\":\"{event}\""), format!("\"ep\":\"{ep}\""));
    while std::time::Instant::now() < end {
        if let Ok(text) = std::fs::read_to_string(path) {
            if text
                .lines()
                .any(|l| l.contains(&needle.0) && l.contains(&needle.1))
            {
                return true;
            }
        }
        std::thread::sleep(Duration::from_millis(20));
    }
    false
}

#[test]
fn init_makes_the_state_directory_and_refuses_to_overwrite() {
    let tmp = tempfile::tempdir().unwrap();
    let dir = tmp.path().join("state");
    let dir_s = dir.to_str().unwrap();
    let o = cli(&[
        "init",
        "--dir",
        dir_s,
        "--endpoint",
        "dev1",
        "--endpoint",
        "dev2",
    ]);
    assert!(o.status.success(), "{}", stderr(&o));
    let out = stdout(&o);
    assert!(out.contains("coap://127.0.0.1:5683"), "{out}");
    assert!(
        out.contains("examples-c/01-basic -e dev1 -u coap://127.0.0.1:5683"),
        "{out}"
    );
    assert!(out.contains("examples-c/01-basic -e dev2 -u coap://127.0.0.1:5683"));
    let config = std::fs::read_to_string(dir.join("config.toml")).unwrap();
    assert!(config.contains("lwm2m_coap = 5683"), "{config}");
    assert!(config.contains("[endpoints.\"dev1\"]"), "{config}");
    for ep in ["dev1", "dev2"] {
        let e = dir.join("endpoints").join(ep);
        assert_eq!(
            std::fs::read_to_string(e.join("psk-identity.txt")).unwrap(),
            ep
        );
        let key = std::fs::read_to_string(e.join("psk-key.hex")).unwrap();
        assert_eq!(key.trim().len(), 32);
        assert!(key.trim().bytes().all(|b| b.is_ascii_hexdigit()));
        assert!(
            out.contains(key.trim()),
            "the key is printed for the device"
        );
        assert!(e.join("README.txt").exists());
    }
    assert!(dir.join("README.txt").exists());

    let again = cli(&["init", "--dir", dir_s, "--endpoint", "dev1"]);
    assert!(!again.status.success());
    assert!(stderr(&again).contains("--force"), "{}", stderr(&again));
    assert!(cli(&["init", "--dir", dir_s, "--force"]).status.success());
    assert!(
        !cli(&["init", "--dir", dir_s, "--force", "--endpoint", "a/b"])
            .status
            .success()
    );
}

#[test]
fn run_serves_clients_and_read_and_stops_on_sigterm() {
    let d = Deadline::after(Duration::from_secs(30));
    let tmp = tempfile::tempdir().unwrap();
    let dir = tmp.path().join("state");
    let events = tmp.path().join("events.jsonl");
    let ep = "bin-dev";
    let o = cli(&["init", "--dir", dir.to_str().unwrap(), "--endpoint", ep]);
    assert!(o.status.success(), "{}", stderr(&o));

    let mut server = Server::start(&dir, &events, &d);
    let control = server.control.clone();

    let o = cli(&["clients", "--control", &control]);
    assert!(o.status.success(), "{}", stderr(&o));
    assert!(stdout(&o).starts_with("ENDPOINT"), "{}", stdout(&o));
    assert!(stdout(&o).contains("(no clients registered)"));

    let client = UdpClient::spawn(
        ep,
        server.lwm2m.parse().unwrap(),
        60,
        Duration::from_secs(30),
    );
    assert!(wait_for_file_event(&events, "registered", ep, &d));
    let line = server
        .wait_line(&d, |l| l.starts_with(&format!("ep={ep} registered ")))
        .expect("readable registered line on stdout");
    assert!(
        line.contains(" location=/rd/") && line.contains(" lifetime=60 lwm2m=1.1"),
        "{line}"
    );

    let o = cli(&["clients", "--control", &control]);
    assert!(o.status.success(), "{}", stderr(&o));
    let row = stdout(&o)
        .lines()
        .find(|l| l.starts_with(ep))
        .map(str::to_string)
        .expect("a row for the client");
    assert!(row.contains(&client.addr.to_string()), "{row}");
    let o = cli(&["clients", "--control", &control, "--json"]);
    let v: serde_json::Value = serde_json::from_slice(&o.stdout).unwrap();
    assert_eq!(v[0]["endpoint"], ep);

    // `read` prints the plain value for text, so scripts can compare it.
    let o = cli(&[
        "read",
        ep,
        "/3/0/0",
        "--format",
        "text",
        "--control",
        &control,
    ]);
    assert!(o.status.success(), "{}", stderr(&o));
    assert_eq!(stdout(&o), format!("{MANUFACTURER}\n"));
    // TLV: the decoded tree as one line of JSON, or as `PATH = VALUE` lines.
    let o = cli(&["read", ep, "3/0", "--format", "tlv", "--control", &control]);
    assert!(o.status.success(), "{}", stderr(&o));
    assert_eq!(stdout(&o).lines().count(), 1, "{}", stdout(&o));
    assert!(
        stdout(&o).contains(&format!("\"id\":0,\"value\":\"{MANUFACTURER}\"")),
        "{}",
        stdout(&o)
    );
    let o = cli(&[
        "read",
        ep,
        "/3/0",
        "--format",
        "tlv",
        "--lines",
        "--control",
        &control,
    ]);
    assert!(o.status.success(), "{}", stderr(&o));
    assert!(
        stdout(&o).contains(&format!("/3/0/0 = {MANUFACTURER}\n")),
        "{}",
        stdout(&o)
    );
    let o = cli(&["read", ep, "/3/0/0", "--json", "--control", &control]);
    assert!(
        stdout(&o).starts_with("{\"code\":\"2.05\","),
        "{}",
        stdout(&o)
    );

    // `client` and `events`: compact JSON, greppable.
    let o = cli(&["client", ep, "--control", &control]);
    assert!(o.status.success(), "{}", stderr(&o));
    assert!(
        stdout(&o).starts_with(&format!("{{\"endpoint\":\"{ep}\"")),
        "{}",
        stdout(&o)
    );
    let o = cli(&["client", "nobody", "--control", &control]);
    assert!(!o.status.success());
    assert!(stderr(&o).contains("HTTP 404"), "{}", stderr(&o));
    let o = cli(&["events", "--control", &control]);
    assert!(o.status.success(), "{}", stderr(&o));
    assert!(stdout(&o)
        .lines()
        .any(|l| l.contains("\"event\":\"registered\"") && l.contains(ep)));
    server
        .wait_line(&d, |l| l == format!("ep={ep} read /3/0/0 -> 2.05"))
        .expect("readable read line");

    // Errors: non-zero exit and a message.
    let o = cli(&["read", "nobody", "/3/0/0", "--control", &control]);
    assert!(!o.status.success());
    assert!(
        stderr(&o).contains("no client registered"),
        "{}",
        stderr(&o)
    );
    let o = cli(&["read", ep, "/3/0/99", "--control", &control]);
    assert!(!o.status.success());
    assert!(stderr(&o).contains("4.04"), "{}", stderr(&o));
    let o = cli(&["read", ep, "/x", "--control", &control]);
    assert!(!o.status.success());
    assert!(stderr(&o).contains("HTTP 400"), "{}", stderr(&o));

    assert!(client.shutdown());
    assert!(wait_for_file_event(&events, "deregistered", ep, &d));
    server
        .wait_line(&d, |l| l == format!("ep={ep} deregistered"))
        .expect("readable deregistered line");

    assert_eq!(server.signal_and_wait(libc::SIGTERM, &d), Some(0));
    // Nothing listens any more.
    let o = cli(&["clients", "--control", &control]);
    assert!(!o.status.success());
    assert!(
        stderr(&o).contains("cannot reach the control API"),
        "{}",
        stderr(&o)
    );
}

#[test]
fn run_stops_on_sigint_and_refuses_a_bad_state_dir() {
    let d = Deadline::after(Duration::from_secs(20));
    let tmp = tempfile::tempdir().unwrap();
    let dir = tmp.path().join("state");
    assert!(cli(&["init", "--dir", dir.to_str().unwrap()])
        .status
        .success());
    let server = Server::start(&dir, &tmp.path().join("ev.jsonl"), &d);
    assert_eq!(server.signal_and_wait(libc::SIGINT, &d), Some(0));

    let o = cli(&["run", "--dir", tmp.path().join("missing").to_str().unwrap()]);
    assert!(!o.status.success());
    assert!(stderr(&o).contains("config.toml"), "{}", stderr(&o));
    std::fs::write(dir.join("config.toml"), "[ports]\nlwm2m_cop = 1\n").unwrap();
    let o = cli(&["run", "--dir", dir.to_str().unwrap()]);
    assert!(!o.status.success());
    assert!(stderr(&o).contains("unknown field"), "{}", stderr(&o));
}
