//! The driver on real loopback UDP against a scripted CoAP peer.

use std::net::{SocketAddr, UdpSocket};
use std::sync::{Arc, Mutex};
use std::thread;
use std::time::{Duration, Instant as StdInstant};

use super::*;
use crate::coap::{self, code, MessageType, Packet};
use crate::dm::objects::{SecurityInstance, ServerInstance};

/// A UDP socket that plays the LwM2M server, one datagram at a time.
struct Peer {
    sock: UdpSocket,
}

impl Peer {
    fn new() -> Peer {
        let sock = UdpSocket::bind("127.0.0.1:0").unwrap();
        sock.set_read_timeout(Some(Duration::from_secs(5))).unwrap();
        Peer { sock }
    }

    fn uri(&self) -> String {
        format!(
            "coap://127.0.0.1:{}",
            self.sock.local_addr().unwrap().port()
        )
    }

    fn recv(&self) -> (Packet, Vec<u8>, SocketAddr) {
        let mut buf = [0u8; 2048];
        let (n, from) = self
            .sock
            .recv_from(&mut buf)
            .expect("no datagram from the client");
        let bytes = buf[..n].to_vec();
        (Packet::from_bytes(&bytes).unwrap(), bytes, from)
    }

    /// A piggybacked response to `req`.
    fn answer(&self, req: &Packet, to: SocketAddr, rc: u8, location: &[&str]) {
        let mut r = coap::new_response(rc);
        r.header.set_type(MessageType::Acknowledgement);
        r.header.message_id = req.header.message_id;
        r.set_token(req.get_token().to_vec());
        for seg in location {
            r.add_option(coap::CoapOption::LocationPath, seg.as_bytes().to_vec());
        }
        self.sock.send_to(&r.to_bytes().unwrap(), to).unwrap();
    }
}

fn config(seed: u64) -> DriverConfig {
    let mut cfg = DriverConfig::new("io-test");
    cfg.prng_seed = Some(seed);
    cfg
}

fn driver_for(peer: &Peer, cfg: DriverConfig) -> Driver {
    let mut d = Driver::new(cfg).unwrap();
    let dm = d.client_mut().data_model_mut();
    dm.security
        .insert(0, SecurityInstance::nosec(&peer.uri(), 1))
        .unwrap();
    dm.server.insert(0, ServerInstance::new(1, 60)).unwrap();
    d
}

fn recording(d: &mut Driver) -> Arc<Mutex<Vec<Event>>> {
    let events = Arc::new(Mutex::new(Vec::new()));
    let sink = Arc::clone(&events);
    d.set_event_handler(Some(Box::new(move |ev: &Event| {
        sink.lock().unwrap().push(ev.clone())
    })));
    events
}

/// Serves the Register on `peer` and returns the request.
fn accept_register(peer: &Peer) -> (Packet, SocketAddr) {
    let (req, _, from) = peer.recv();
    assert_eq!(coap::raw_code(&req), code::POST);
    assert_eq!(coap::uri_path(&req).unwrap(), vec!["rd"]);
    peer.answer(&req, from, code::CREATED, &["rd", "abc"]);
    (req, from)
}

#[test]
fn registers_runs_until_interrupted_and_deregisters_on_shutdown() {
    let peer = Peer::new();
    let mut d = driver_for(&peer, config(1));
    let events = recording(&mut d);
    let stop = d.interrupt_handle();
    let runner = thread::spawn(move || {
        let r = d.run(Duration::from_millis(200));
        (d, r)
    });

    let (req, from) = accept_register(&peer);
    assert!(coap::uri_query(&req)
        .unwrap()
        .contains(&"ep=io-test".to_string()));
    let t0 = StdInstant::now();
    while !events
        .lock()
        .unwrap()
        .iter()
        .any(|e| matches!(e, Event::Registered { ssid: 1, .. }))
    {
        assert!(t0.elapsed() < Duration::from_secs(5), "no Registered event");
        thread::sleep(Duration::from_millis(5));
    }
    stop.interrupt();
    let (mut d, r) = runner.join().unwrap();
    assert_eq!(r, Ok(()));
    assert!(d.client().is_registered());

    let peer_thread = thread::spawn(move || {
        let (req, _, from2) = peer.recv();
        assert_eq!(from2, from, "same socket for the whole session");
        assert_eq!(coap::raw_code(&req), code::DELETE);
        assert_eq!(coap::uri_path(&req).unwrap(), vec!["rd", "abc"]);
        peer.answer(&req, from2, code::DELETED, &[]);
    });
    let t0 = StdInstant::now();
    assert!(d.shutdown(Duration::from_secs(5)));
    assert!(t0.elapsed() < Duration::from_secs(2));
    peer_thread.join().unwrap();
    assert!(events
        .lock()
        .unwrap()
        .contains(&Event::Deregistered { ssid: 1 }));
    assert!(d.sockets().is_empty());
    assert_eq!(d.stats().datagrams_in, 2);
}

#[test]
fn shutdown_gives_up_after_the_timeout_when_the_server_is_silent() {
    let peer = Peer::new();
    let mut d = driver_for(&peer, config(2));
    d.run_due().unwrap();
    let (_, from) = accept_register(&peer);
    let t0 = StdInstant::now();
    while !d.client().is_registered() {
        assert!(t0.elapsed() < Duration::from_secs(5));
        let fds = d.sockets();
        for fd in fds {
            d.serve_fd(fd).unwrap();
        }
        thread::sleep(Duration::from_millis(5));
    }
    let t0 = StdInstant::now();
    assert!(!d.shutdown(Duration::from_millis(300)));
    let took = t0.elapsed();
    assert!(
        took >= Duration::from_millis(300) && took < Duration::from_secs(2),
        "{took:?}"
    );
    let (req, _, from2) = peer.recv();
    assert_eq!((coap::raw_code(&req), from2), (code::DELETE, from));
}

#[test]
fn an_interrupt_before_run_makes_run_return_at_once() {
    let peer = Peer::new();
    let mut d = driver_for(&peer, config(3));
    d.interrupt_handle().interrupt();
    let t0 = StdInstant::now();
    assert_eq!(d.run(Duration::from_secs(10)), Ok(()));
    assert!(t0.elapsed() < Duration::from_secs(1));
    assert!(
        d.is_started(),
        "run starts the client even when it returns at once"
    );
}

#[test]
fn run_without_a_server_account_is_a_configuration_error() {
    let mut d = Driver::new(config(4)).unwrap();
    assert!(matches!(
        d.run(Duration::from_millis(10)),
        Err(Error::Config(_))
    ));
}

#[test]
fn the_same_seed_gives_the_same_first_datagram() {
    let peer = Peer::new();
    let mut first = Vec::new();
    for seed in [5, 5, 6] {
        let mut d = driver_for(&peer, config(seed));
        d.run_due().unwrap();
        first.push(peer.recv().1);
    }
    assert_eq!(first[0], first[1]);
    assert_ne!(first[0], first[2]);
}

#[test]
fn the_first_socket_binds_udp_listen_port() {
    let peer = Peer::new();
    let port = UdpSocket::bind("127.0.0.1:0")
        .unwrap()
        .local_addr()
        .unwrap()
        .port();
    let mut cfg = config(7);
    cfg.udp_listen_port = port;
    let mut d = driver_for(&peer, cfg);
    d.run_due().unwrap();
    let (_, _, from) = peer.recv();
    assert_eq!(from.port(), port);
}

#[test]
fn oversize_datagrams_are_dropped_and_the_rest_is_fed() {
    let peer = Peer::new();
    let mut cfg = config(8);
    cfg.client.in_buffer_size = ClientConfig::MIN_BUFFER_SIZE;
    let mut d = driver_for(&peer, cfg);
    d.run_due().unwrap();
    let (_, _, from) = peer.recv();
    let fds = d.sockets();
    assert_eq!(fds.len(), 1);
    assert!(d.serve_fd(-1).is_err());

    // Larger than any DTLS record: dropped by the driver unread. Over in_buffer_size but
    // record-sized: handed to the client, which refuses what it cannot take.
    let huge = vec![0x40; crate::client::MAX_DTLS_DATAGRAM + 1];
    peer.sock.send_to(&huge, from).unwrap();
    peer.sock.send_to(&[0x40; 500], from).unwrap();
    peer.sock.send_to(&[0x40; 100], from).unwrap();
    let t0 = StdInstant::now();
    while d.stats().oversize_dropped + d.stats().datagrams_in < 3 {
        assert!(t0.elapsed() < Duration::from_secs(5));
        d.serve_fd(fds[0]).unwrap();
        thread::sleep(Duration::from_millis(2));
    }
    assert_eq!(d.stats().oversize_dropped, 1);
    assert_eq!(d.stats().datagrams_in, 2);
}

#[test]
fn an_unreachable_host_is_logged_and_retried_not_fatal() {
    let mut d = Driver::new(config(9)).unwrap();
    let dm = d.client_mut().data_model_mut();
    dm.security
        .insert(
            0,
            SecurityInstance::nosec("coap://no-such-host.invalid:5683", 1),
        )
        .unwrap();
    dm.server.insert(0, ServerInstance::new(1, 60)).unwrap();
    d.run_due().unwrap();
    assert_eq!(d.stats().send_failures, 1);
    assert!(d.sockets().is_empty());
    assert!(
        d.next_wait().is_some(),
        "the Register is still scheduled for retransmission"
    );
}
