//! The test server in-process on ephemeral loopback ports, with a real `estuary::Client`
//! over real UDP: registration shows in `GET /api/clients`, a Read through the control API
//! returns the manufacturer string (text and TLV), bad requests get 4xx JSON errors, a
//! silent client gives 504, and De-register lands in the events file. Bounded to ~20 s.

mod common;

use std::io::{Read, Write};
use std::net::TcpStream;
use std::time::Duration;

use common::{Deadline, UdpClient, MANUFACTURER};
use estuary::Event;
use estuary_testserver::http::{self, HttpResponse};
use estuary_testserver::{EventKind, TestServer, TestServerConfig};
use serde_json::Value as Json;

fn get(addr: &str, target: &str, d: &Deadline) -> (u16, Json) {
    let HttpResponse { status, body } =
        http::get(addr, target, d.left(Duration::from_secs(15))).unwrap();
    let v = serde_json::from_str(&body).unwrap_or(Json::String(body));
    (status, v)
}

fn request(addr: &str, method: &str, target: &str, d: &Deadline) -> u16 {
    http::request(addr, method, target, b"x", d.left(Duration::from_secs(5)))
        .unwrap()
        .status
}

#[test]
fn register_read_deregister_through_the_control_api() {
    let d = Deadline::after(Duration::from_secs(20));
    let tmp = tempfile::tempdir().unwrap();
    let events_file = tmp.path().join("events.jsonl");
    let server = TestServer::start(TestServerConfig {
        events_file: Some(events_file.clone()),
        // The file carries the events; keep the test output clean.
        echo_events: false,
        seed: Some(7),
        ..TestServerConfig::default()
    })
    .unwrap();
    assert!(server.lwm2m_addr().ip().is_loopback());
    assert_ne!(server.lwm2m_addr().port(), 0);
    let control = server.control_addr().unwrap().to_string();

    // No clients yet.
    assert_eq!(
        get(&control, "/api/clients", &d),
        (200, Json::Array(vec![]))
    );

    let ep = "inproc-dev";
    let mut client = UdpClient::spawn(ep, server.lwm2m_addr(), 60, Duration::from_secs(20));
    assert!(client.wait_event(&d, Duration::from_secs(10), |e| matches!(
        e,
        Event::Registered { .. }
    )));
    let reg = server
        .wait_for_event("registered", ep, d.left(Duration::from_secs(5)))
        .expect("registered event");
    match &reg.kind {
        EventKind::Registered {
            location,
            lifetime,
            lwm2m,
            peer,
            ..
        } => {
            assert!(location.starts_with("/rd/"), "{location}");
            assert_eq!(*lifetime, 60);
            assert_eq!(lwm2m, "1.1");
            assert_eq!(peer, &client.addr.to_string());
        }
        other => panic!("{other:?}"),
    }

    // GET /api/clients and /api/clients/{ep}.
    let (status, list) = get(&control, "/api/clients", &d);
    assert_eq!(status, 200);
    let list = list.as_array().unwrap();
    assert_eq!(list.len(), 1, "{list:?}");
    let c = &list[0];
    assert_eq!(c["endpoint"], ep);
    assert_eq!(c["lifetime"], 60);
    assert_eq!(c["lwm2m_version"], "1.1");
    assert_eq!(c["binding"], "U");
    assert_eq!(c["peer"], client.addr.to_string());
    assert_eq!(c["security_mode"], "nosec");
    assert!(c["object_links"]
        .as_array()
        .unwrap()
        .contains(&Json::from("/3/0")));
    for k in ["registered_at", "last_update"] {
        let ts = c[k].as_str().unwrap();
        assert!(ts.ends_with('Z') && ts.len() == 24, "{k}={ts}");
    }
    assert_eq!(
        get(&control, &format!("/api/clients/{ep}"), &d),
        (200, c.clone())
    );
    let (status, err) = get(&control, "/api/clients/nobody", &d);
    assert_eq!(status, 404);
    assert!(err["error"].as_str().unwrap().contains("nobody"));

    // Read /3/0/0 as text: the manufacturer string.
    let (status, v) = get(
        &control,
        &format!("/api/clients/{ep}/3/0/0?format=text"),
        &d,
    );
    assert_eq!(status, 200, "{v}");
    assert_eq!(v["code"], "2.05");
    assert_eq!(v["content_format"], 0);
    assert_eq!(v["value"], MANUFACTURER);

    // Read /3/0 as TLV: a tree with the same string at /3/0/0.
    let (status, v) = get(&control, &format!("/api/clients/{ep}/3/0?format=tlv"), &d);
    assert_eq!(status, 200, "{v}");
    assert_eq!(v["content_format"], 11542);
    let res = v["resources"].as_array().unwrap();
    let manu = res.iter().find(|r| r["id"] == 0).unwrap();
    assert_eq!(manu["path"], "/3/0/0");
    assert_eq!(manu["value"], MANUFACTURER);
    assert!(res
        .iter()
        .any(|r| r["id"] == 11 && r["instances"].is_array()));

    // Through the handle, without HTTP.
    let r = server.read(ep, "/3/0/1", Some(0)).unwrap();
    assert_eq!(
        (r.code.as_str(), r.payload.as_slice()),
        ("2.05", &b"udp-test"[..])
    );

    // The client's own answer to a missing resource, and the API's errors.
    let (status, v) = get(&control, &format!("/api/clients/{ep}/3/0/99"), &d);
    assert_eq!((status, v["code"].as_str()), (200, Some("4.04")), "{v}");
    assert_eq!(get(&control, "/api/clients/nobody/3/0/0", &d).0, 404);
    assert_eq!(get(&control, &format!("/api/clients/{ep}/abc"), &d).0, 400);
    assert_eq!(
        get(&control, &format!("/api/clients/{ep}/3/0/0?format=xml"), &d).0,
        400
    );
    assert_eq!(get(&control, "/nope", &d).0, 404);
    assert_eq!(request(&control, "POST", "/api/clients", &d), 405);
    assert_eq!(
        request(&control, "PUT", &format!("/api/clients/{ep}/3/0/0"), &d),
        400
    );
    // Not HTTP at all: whatever tiny_http says, the API keeps answering afterwards.
    {
        let mut s = TcpStream::connect(&control).unwrap();
        s.set_read_timeout(Some(Duration::from_secs(5))).unwrap();
        s.write_all(b"\x00\x01GARBAGE \xff\r\n\r\n").unwrap();
        let mut sink = Vec::new();
        let _ = s.read_to_end(&mut sink);
    }
    assert_eq!(get(&control, "/api/clients", &d).0, 200);

    // GET /api/events: JSON lines, with the registration and the reads.
    let HttpResponse { status, body } =
        http::get(&control, "/api/events", d.left(Duration::from_secs(5))).unwrap();
    assert_eq!(status, 200);
    let lines: Vec<Json> = body
        .lines()
        .map(|l| serde_json::from_str(l).unwrap())
        .collect();
    assert!(lines
        .iter()
        .any(|l| l["event"] == "registered" && l["ep"] == ep));
    assert!(lines
        .iter()
        .any(|l| l["event"] == "read" && l["path"] == "/3/0/0" && l["code"] == "2.05"));

    // De-register: the event reaches the file, and the client list is empty again.
    assert!(client.shutdown(), "client did not de-register in time");
    server
        .wait_for_event("deregistered", ep, d.left(Duration::from_secs(5)))
        .expect("deregistered event");
    let file = std::fs::read_to_string(&events_file).unwrap();
    let file_events: Vec<Json> = file
        .lines()
        .map(|l| serde_json::from_str(l).unwrap())
        .collect();
    let names: Vec<&str> = file_events
        .iter()
        .filter(|e| e["ep"] == ep)
        .map(|e| e["event"].as_str().unwrap())
        .collect();
    assert_eq!(names.first(), Some(&"registered"), "{names:?}");
    assert_eq!(names.last(), Some(&"deregistered"), "{names:?}");
    assert!(file_events.iter().all(|e| e["ts"].as_str().is_some()));
    assert_eq!(
        get(&control, "/api/clients", &d),
        (200, Json::Array(vec![]))
    );
    server.stop();
}

#[test]
fn a_silent_client_gives_504_within_the_asked_timeout() {
    let d = Deadline::after(Duration::from_secs(20));
    let server = TestServer::start(TestServerConfig {
        echo_events: false,
        ..TestServerConfig::default()
    })
    .unwrap();
    let control = server.control_addr().unwrap().to_string();
    let ep = "silent-dev";
    let mut client = UdpClient::spawn(ep, server.lwm2m_addr(), 60, Duration::from_secs(20));
    assert!(client.wait_event(&d, Duration::from_secs(10), |e| matches!(
        e,
        Event::Registered { .. }
    )));
    client.kill();
    let started = std::time::Instant::now();
    let (status, v) = get(&control, &format!("/api/clients/{ep}/3/0/0?timeout=1"), &d);
    assert_eq!(status, 504, "{v}");
    assert!(v["error"].as_str().unwrap().contains("no answer"), "{v}");
    assert!(started.elapsed() < Duration::from_secs(5));
    // The server keeps serving other requests and stops promptly with a Read in flight.
    assert_eq!(get(&control, "/api/clients", &d).0, 200);
    let stopping = std::time::Instant::now();
    server.stop();
    assert!(stopping.elapsed() < Duration::from_secs(3));
}

/// `--fault drop=PERCENT`: at 100 % no Register ever arrives; at 50 % (seeded) the client's
/// retransmissions get one through.
#[test]
fn drop_fault_loses_that_share_of_datagrams() {
    let start = |percent: u8| {
        TestServer::start(TestServerConfig {
            echo_events: false,
            seed: Some(11),
            drop_percent: percent,
            ..TestServerConfig::default()
        })
        .unwrap()
    };
    let d = Deadline::after(Duration::from_secs(70));
    let all = start(100);
    let mut client = UdpClient::spawn("drop-all", all.lwm2m_addr(), 60, Duration::from_secs(10));
    assert!(!client.wait_event(&d, Duration::from_secs(5), |e| matches!(
        e,
        Event::Registered { .. }
    )));
    assert!(all.clients().iter().all(|c| c.endpoint != "drop-all"));
    client.kill();

    let half = start(50);
    let mut client = UdpClient::spawn("drop-half", half.lwm2m_addr(), 60, Duration::from_secs(60));
    assert!(client.wait_event(&d, Duration::from_secs(60), |e| matches!(
        e,
        Event::Registered { .. }
    )));
    client.kill();
}
