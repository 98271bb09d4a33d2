//! Shared by the integration tests: a real `estuary::Client` on a real UDP socket on
//! 127.0.0.1, pumped by its own thread (recv with a timeout -> handle_datagram /
//! handle_timeout -> poll_transmit -> send), and a deadline that bounds a whole test.

#![allow(dead_code)]

use std::net::{SocketAddr, UdpSocket};
use std::sync::atomic::{AtomicU8, Ordering};
use std::sync::mpsc::{self, Receiver};
use std::sync::Arc;
use std::thread::JoinHandle;
use std::time::{Duration, Instant as StdInstant, SystemTime, UNIX_EPOCH};

use estuary::dm::objects::{SecurityInstance, ServerInstance};
use estuary::time::{Instant, Now, UtcTime};
use estuary::{Client, ClientConfig, Event, SeededRng};

pub const MANUFACTURER: &str = "Estuary Labs";

/// A bound on a whole test: every wait takes what is left, and fails the test when nothing is.
pub struct Deadline(StdInstant);

impl Deadline {
    pub fn after(d: Duration) -> Deadline {
        Deadline(StdInstant::now() + d)
    }

    /// Time left, at most `cap`; panics once the deadline has passed.
    pub fn left(&self, cap: Duration) -> Duration {
        let left = self.0.saturating_duration_since(StdInstant::now());
        assert!(!left.is_zero(), "test deadline exceeded");
        left.min(cap)
    }

    pub fn passed(&self) -> bool {
        StdInstant::now() >= self.0
    }
}

const RUN: u8 = 0;
const SHUTDOWN: u8 = 1;
const KILL: u8 = 2;

/// A client on its own thread.
pub struct UdpClient {
    pub addr: SocketAddr,
    mode: Arc<AtomicU8>,
    events: Receiver<Event>,
    seen: Vec<Event>,
    thread: Option<JoinHandle<bool>>,
}

impl UdpClient {
    /// Starts registering `ep` at `server` with `lifetime` seconds.
    pub fn spawn(ep: &str, server: SocketAddr, lifetime: i64, limit: Duration) -> UdpClient {
        Self::spawn_with(ClientConfig::new(ep), Vec::new(), server, lifetime, limit)
    }

    /// As [`UdpClient::spawn`], with a configuration of the test's and its own objects.
    #[allow(dead_code)] // not every test binary that includes this module uses it
    pub fn spawn_with(
        cfg: ClientConfig,
        objects: Vec<Box<dyn estuary::dm::Object>>,
        server: SocketAddr,
        lifetime: i64,
        limit: Duration,
    ) -> UdpClient {
        let sock = UdpSocket::bind("127.0.0.1:0").unwrap();
        sock.connect(server).unwrap();
        let addr = sock.local_addr().unwrap();
        let mut client = Client::new(cfg, Box::new(SeededRng::new(42))).unwrap();
        for o in objects {
            client.register_object(o).unwrap();
        }
        let dm = client.data_model_mut();
        dm.security
            .insert(0, SecurityInstance::nosec(&format!("coap://{server}"), 1))
            .unwrap();
        dm.server
            .insert(0, ServerInstance::new(1, lifetime))
            .unwrap();
        dm.device.manufacturer = MANUFACTURER.into();
        dm.device.model_number = "udp-test".into();
        let mode = Arc::new(AtomicU8::new(RUN));
        let (tx, events) = mpsc::channel();
        let m = mode.clone();
        let thread = std::thread::spawn(move || {
            let origin = StdInstant::now();
            let now = || {
                let utc = SystemTime::now().duration_since(UNIX_EPOCH).unwrap();
                Now::new(
                    Instant::from_millis(origin.elapsed().as_millis() as u64),
                    UtcTime::from_unix_millis(utc.as_millis() as i64),
                )
            };
            client.start(now()).unwrap();
            let conn = client.connections()[0];
            let mut buf = vec![0u8; 65_535];
            let mut shutting_down = false;
            while origin.elapsed() < limit {
                while let Some(t) = client.poll_transmit() {
                    let _ = sock.send(&t.data);
                }
                while let Some(ev) = client.poll_event() {
                    let _ = tx.send(ev);
                }
                match m.load(Ordering::SeqCst) {
                    KILL => return true,
                    SHUTDOWN if !shutting_down => {
                        shutting_down = true;
                        client.shutdown(now());
                        continue;
                    }
                    _ => {}
                }
                if shutting_down && client.is_shut_down() {
                    return true;
                }
                let n = now();
                let wait = client
                    .poll_timeout()
                    .map_or(Duration::from_millis(50), |t| {
                        Duration::from_millis(t.as_millis().saturating_sub(n.mono.as_millis()))
                    })
                    .clamp(Duration::from_millis(1), Duration::from_millis(50));
                sock.set_read_timeout(Some(wait)).unwrap();
                if let Ok(len) = sock.recv(&mut buf) {
                    client.handle_datagram(now(), conn, &buf[..len]);
                }
                let n = now();
                if client.poll_timeout().is_some_and(|t| t <= n.mono) {
                    client.handle_timeout(n);
                }
            }
            false
        });
        UdpClient {
            addr,
            mode,
            events,
            seen: Vec::new(),
            thread: Some(thread),
        }
    }

    /// Waits for a client event matching `pred`.
    pub fn wait_event(
        &mut self,
        d: &Deadline,
        cap: Duration,
        pred: impl Fn(&Event) -> bool,
    ) -> bool {
        let end = StdInstant::now() + d.left(cap);
        loop {
            if self.seen.iter().any(&pred) {
                return true;
            }
            let left = end.saturating_duration_since(StdInstant::now());
            match self.events.recv_timeout(left) {
                Ok(ev) => self.seen.push(ev),
                Err(_) => return false,
            }
        }
    }

    /// De-registers and waits for the thread to end; true if it de-registered in time.
    pub fn shutdown(mut self) -> bool {
        self.mode.store(SHUTDOWN, Ordering::SeqCst);
        self.thread.take().unwrap().join().unwrap()
    }

    /// Stops answering at once, without de-registering (a device that went silent).
    pub fn kill(mut self) {
        self.mode.store(KILL, Ordering::SeqCst);
        let _ = self.thread.take().unwrap().join();
    }
}

impl Drop for UdpClient {
    fn drop(&mut self) {
        if let Some(t) = self.thread.take() {
            self.mode.store(KILL, Ordering::SeqCst);
            let _ = t.join();
        }
    }
}
