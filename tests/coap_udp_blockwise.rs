//! Block-wise over real UDP on 127.0.0.1: a client `Endpoint` writes a 3 KiB opaque body
//! (Block1) to a server `Endpoint` and reads it back (Block2). Bounded to a few seconds.

use std::net::UdpSocket;
use std::time::{Duration, Instant as WallInstant};

use estuary::coap::{
    self, code, new_request, new_response, raw_code, Endpoint, EndpointEvent, RequestHandle,
    TxParams,
};
use estuary::{Instant, SeededRng};

struct Side {
    ep: Endpoint,
    sock: UdpSocket,
    peer: std::net::SocketAddr,
}

impl Side {
    fn pump(&mut self, now: Instant) {
        while let Some(d) = self.ep.poll_transmit() {
            self.sock.send_to(&d, self.peer).expect("send on loopback");
        }
        let mut buf = [0u8; 2048];
        while let Ok((n, from)) = self.sock.recv_from(&mut buf) {
            if from == self.peer {
                let _ = self.ep.handle_datagram(now, &buf[..n]);
            }
        }
        self.ep.handle_timeout(now);
    }
}

#[test]
fn write_and_read_back_3_kib_over_loopback_udp() {
    let a = UdpSocket::bind("127.0.0.1:0").unwrap();
    let b = UdpSocket::bind("127.0.0.1:0").unwrap();
    a.set_nonblocking(true).unwrap();
    b.set_nonblocking(true).unwrap();
    let mut rng = SeededRng::new(42);
    let mut client = Side {
        ep: Endpoint::new(TxParams::default(), 1152, 4096, &mut rng),
        peer: b.local_addr().unwrap(),
        sock: a,
    };
    let mut server = Side {
        ep: Endpoint::new(TxParams::default(), 1152, 4096, &mut rng),
        peer: client.sock.local_addr().unwrap(),
        sock: b,
    };
    let data: Vec<u8> = (0..3072u32).map(|i| (i * 7 + i / 251) as u8).collect();
    let start = WallInstant::now();
    let now = || Instant::from_millis(start.elapsed().as_millis() as u64);

    let mut stored: Option<Vec<u8>> = None;
    let mut put = new_request(code::PUT, "/5/0/0");
    coap::set_content_format(&mut put, coap::content_format::OCTET_STREAM);
    put.payload = data.clone();
    let h_put = client.ep.send_request(now(), put, true).unwrap();
    let mut h_get: Option<RequestHandle> = None;
    let mut read_back = None;

    while read_back.is_none() {
        assert!(
            start.elapsed() < Duration::from_secs(10),
            "loopback transfer did not finish"
        );
        client.pump(now());
        server.pump(now());
        while let Some(ev) = server.ep.poll_event() {
            if let EndpointEvent::Request(req) = ev {
                let resp = match raw_code(&req.packet) {
                    code::PUT => {
                        stored = Some(req.packet.payload.clone());
                        new_response(code::CHANGED)
                    }
                    code::GET => {
                        let mut r = new_response(code::CONTENT);
                        r.payload = stored.clone().unwrap_or_default();
                        r
                    }
                    _ => new_response(code::METHOD_NOT_ALLOWED),
                };
                server.ep.respond(now(), &req, resp);
            }
        }
        while let Some(ev) = client.ep.poll_event() {
            match ev {
                EndpointEvent::Response { handle, packet } if handle == h_put => {
                    assert_eq!(raw_code(&packet), code::CHANGED);
                    let get = new_request(code::GET, "/5/0/0");
                    h_get = Some(client.ep.send_request(now(), get, true).unwrap());
                }
                EndpointEvent::Response { handle, packet } if Some(handle) == h_get => {
                    read_back = Some(packet.payload);
                }
                other => panic!("unexpected {other:?}"),
            }
        }
        std::thread::sleep(Duration::from_millis(1));
    }
    assert_eq!(stored.as_deref(), Some(&data[..]));
    assert_eq!(read_back.unwrap(), data);
    let s = client.ep.stats();
    eprintln!(
        "3 KiB write + read over UDP: client sent {} datagrams / {} bytes, received {} / {}",
        s.datagrams_sent, s.bytes_sent, s.datagrams_received, s.bytes_received
    );
    // 3 Block1 blocks + 3 Block2 requests, each answered once.
    assert_eq!(s.datagrams_sent, 6);
    assert_eq!(s.datagrams_received, 6);
}
