//! The control API's LwM2M operations against a real `estuary::Client` over loopback UDP:
//! Read in each format the client offers, Execute (Reboot reaches the client as an event),
//! the client's own error codes passed through as HTTP 200, and the API's 400/404/405/504.
//! Write, Create, Delete, Discover, Write-Attributes and Observe are in `control_dm.rs`.
//! Bounded to ~25 s.

mod common;

use std::time::Duration;

use common::{Deadline, UdpClient, MANUFACTURER};
use estuary::Event;
use estuary_testserver::http::{self, HttpResponse};
use estuary_testserver::{TestServer, TestServerConfig};
use serde_json::Value as Json;

fn call(addr: &str, method: &str, target: &str, body: &[u8], d: &Deadline) -> (u16, Json) {
    let HttpResponse { status, body } =
        http::request(addr, method, target, body, d.left(Duration::from_secs(15))).unwrap();
    let v = serde_json::from_str(&body).unwrap_or(Json::String(body));
    (status, v)
}

#[test]
fn read_and_execute_through_the_control_api() {
    let d = Deadline::after(Duration::from_secs(25));
    let server = TestServer::start(TestServerConfig {
        echo_events: false,
        seed: Some(11),
        ..TestServerConfig::default()
    })
    .unwrap();
    let control = server.control_addr().unwrap().to_string();
    let ep = "ops-dev";
    let mut client = UdpClient::spawn(ep, server.lwm2m_addr(), 60, Duration::from_secs(25));
    assert!(client.wait_event(&d, Duration::from_secs(10), |e| matches!(
        e,
        Event::Registered { .. }
    )));
    let api = |rest: &str| format!("/api/clients/{ep}{rest}");

    // Read: text, TLV (tree), and the default for a single resource.
    let (status, v) = call(&control, "GET", &api("/3/0/0?format=text"), b"", &d);
    assert_eq!(status, 200, "{v}");
    assert_eq!(
        (v["code"].as_str(), v["format"].as_str()),
        (Some("2.05"), Some("text"))
    );
    assert_eq!(v["value"], MANUFACTURER);
    let (status, v) = call(&control, "GET", &api("/3/0/1?format=tlv"), b"", &d);
    assert_eq!((status, v["format"].as_str()), (200, Some("tlv")), "{v}");
    assert_eq!(v["resources"][0]["path"], "/3/0/1");
    assert_eq!(v["resources"][0]["value"], "udp-test");
    let (_, v) = call(&control, "GET", &api("/3/0/1"), b"", &d);
    assert_eq!(v["value"], "udp-test");

    // Execute Reboot: 2.04, and the client reports it.
    let (status, v) = call(&control, "POST", &api("/3/0/4"), b"", &d);
    assert_eq!((status, v["code"].as_str()), (200, Some("2.04")), "{v}");
    assert!(client.wait_event(&d, Duration::from_secs(5), |e| matches!(
        e,
        Event::RebootRequested
    )));
    // Execute on a readable resource: the client's 4.05 comes back as HTTP 200.
    let (status, v) = call(&control, "POST", &api("/3/0/0"), b"", &d);
    assert_eq!((status, v["code"].as_str()), (200, Some("4.05")), "{v}");

    // The operations are in the event log with their codes.
    let HttpResponse { body, .. } =
        http::get(&control, "/api/events", d.left(Duration::from_secs(5))).unwrap();
    let ops: Vec<Json> = body
        .lines()
        .map(|l| serde_json::from_str::<Json>(l).unwrap())
        .filter(|l| l["event"] == "operation")
        .collect();
    let seen: Vec<(&str, &str, &str)> = ops
        .iter()
        .map(|l| {
            (
                l["op"].as_str().unwrap(),
                l["path"].as_str().unwrap(),
                l["code"].as_str().unwrap_or("-"),
            )
        })
        .collect();
    assert_eq!(
        seen,
        [("execute", "/3/0/4", "2.04"), ("execute", "/3/0/0", "4.05")]
    );

    // The API's own answers: nothing is sent to the client for these.
    assert_eq!(
        call(&control, "POST", "/api/clients/nobody/3/0/4", b"", &d).0,
        404
    );
    assert_eq!(
        call(
            &control,
            "PUT",
            "/api/clients/nobody/1/0/1",
            br#"{"value":1}"#,
            &d
        )
        .0,
        404
    );
    let (status, v) = call(&control, "PUT", &api("/1/0/1"), b"sixty", &d);
    assert_eq!(status, 400);
    assert!(v["error"].as_str().unwrap().contains("JSON"), "{v}");
    let (status, v) = call(&control, "PUT", &api("/1/0"), br#"{"value":1}"#, &d);
    assert_eq!(status, 400, "{v}");
    assert_eq!(
        call(&control, "DELETE", &api("/3/0/9/observe"), b"", &d).0,
        404
    );
    assert_eq!(
        call(&control, "PUT", &api("/3/0/9/attributes"), b"", &d).0,
        400
    );
    assert_eq!(call(&control, "PATCH", &api("/3/0/9"), b"", &d).0, 405);

    // A client that went silent: the API gives up after ?timeout= with 504.
    client.kill();
    let (status, v) = call(&control, "POST", &api("/3/0/4?timeout=1"), b"", &d);
    assert_eq!(status, 504, "{v}");
    server.stop();
}
