//! The operation commands of the `estuary-testserver` binary against an in-process test
//! server and a real `estuary::Client` over loopback: what they print and their exit codes.
//! Bounded to ~25 s.

mod common;

use std::process::{Command, Output};
use std::time::Duration;

use common::{Deadline, UdpClient, MANUFACTURER};
use estuary::Event;
use estuary_testserver::{TestServer, TestServerConfig};

fn cli(control: &str, args: &[&str]) -> Output {
    Command::new(env!("CARGO_BIN_EXE_estuary-testserver"))
        .args(args)
        .args(["--control", control])
        .output()
        .unwrap()
}

fn text(b: &[u8]) -> String {
    String::from_utf8_lossy(b).into_owned()
}

#[test]
fn operation_commands_print_answers_and_fail_on_errors() {
    let d = Deadline::after(Duration::from_secs(25));
    let server = TestServer::start(TestServerConfig {
        echo_events: false,
        seed: Some(13),
        ..TestServerConfig::default()
    })
    .unwrap();
    let control = server.control_addr().unwrap().to_string();
    let ep = "cli-dev";
    let mut client = UdpClient::spawn(ep, server.lwm2m_addr(), 60, Duration::from_secs(25));
    assert!(client.wait_event(&d, Duration::from_secs(10), |e| matches!(
        e,
        Event::Registered { .. }
    )));

    // exec prints the code of an answer without payload.
    let o = cli(&control, &["exec", ep, "/3/0/4"]);
    assert!(o.status.success(), "{}", text(&o.stderr));
    assert_eq!(text(&o.stdout), "2.04\n");
    assert!(client.wait_event(&d, Duration::from_secs(5), |e| matches!(
        e,
        Event::RebootRequested
    )));
    // The client's error code makes the command fail with it.
    let o = cli(&control, &["exec", ep, "3/0/0"]);
    assert_eq!(o.status.code(), Some(1));
    assert!(
        text(&o.stderr).contains("exec: 4.05"),
        "{}",
        text(&o.stderr)
    );

    // read --lines over TLV, and --json.
    let o = cli(
        &control,
        &["read", ep, "/3/0/0", "--format", "tlv", "--lines"],
    );
    assert!(o.status.success(), "{}", text(&o.stderr));
    assert_eq!(text(&o.stdout), format!("/3/0/0 = {MANUFACTURER}\n"));
    let o = cli(&control, &["read", ep, "/3/0/0", "--json"]);
    let v: serde_json::Value = serde_json::from_slice(&o.stdout).unwrap();
    assert_eq!(
        (v["code"].as_str(), v["format"].as_str()),
        (Some("2.05"), Some("text"))
    );

    // API errors: unknown endpoint, no observation, malformed VALUE for an instance.
    let o = cli(&control, &["write", "nobody", "/1/0/1", "60"]);
    assert_eq!(o.status.code(), Some(1));
    assert!(text(&o.stderr).contains("HTTP 404"), "{}", text(&o.stderr));
    let o = cli(&control, &["cancel-observe", ep, "/3/0/0"]);
    assert_eq!(o.status.code(), Some(1));
    assert!(
        text(&o.stderr).contains("no observation"),
        "{}",
        text(&o.stderr)
    );
    let o = cli(&control, &["write", ep, "/1/0", "60"]);
    assert_eq!(o.status.code(), Some(1));
    assert!(
        text(&o.stderr).contains("JSON object"),
        "{}",
        text(&o.stderr)
    );

    assert!(client.shutdown(), "client did not de-register in time");
    server.stop();
}
