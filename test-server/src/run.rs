//! The running test server: the sans-IO [`Lwm2mServer`] on a real UDP socket and the real
//! clocks, the HTTP control API beside it, and events to [`EventLog`].
//!
//! One thread owns the socket and the server core. It sleeps in `recv_from` until the core's
//! next deadline (at most [`MAX_IDLE_WAIT`]); the control API and [`TestServerHandle`] talk
//! to it through a channel and wake it with an empty datagram from a private loopback socket,
//! so a request is picked up at once without polling. The binary (`main.rs`) is a thin
//! wrapper around [`TestServer::start`]; integration tests use it in-process.
//!
//! With credentials (a state directory's, or given in [`TestServerConfig::coaps`]) the LwM2M
//! coaps port is served too: a reader thread hands its datagrams to the server thread through
//! the same channel, and the [`SecureListener`] there keeps one DTLS session per peer in front
//! of the plaintext server core. The bootstrap/EST ports are reserved for when they land.

use std::collections::HashMap;
use std::io;
use std::net::{IpAddr, Ipv4Addr, Ipv6Addr, SocketAddr, UdpSocket};
use std::path::PathBuf;
use std::sync::atomic::{AtomicBool, Ordering};
use std::sync::mpsc::{self, Receiver, RecvTimeoutError, Sender, TryRecvError};
use std::sync::Arc;
use std::thread::JoinHandle;
use std::time::{Duration, SystemTime, UNIX_EPOCH};

use estuary::coap::TxParams;
use estuary::rng::{RandomSource, SeededRng};
use estuary::time::{Instant, Now, UtcTime};
use log::{debug, info, warn};
use serde::{Deserialize, Serialize};

use crate::bootstrap_server::{BootstrapEvent, BootstrapServer};
use crate::coaps::{SecureEvent, SecureListener, SecureListenerConfig};
use crate::config::Config;
use crate::events::{rfc3339, EventKind, EventLog, EventRecord, DEFAULT_RING_CAPACITY};
use crate::lwm2m_server::{Lwm2mServer, OpError, OpId, OpRequest, OpResult, ServerEvent};

/// The longest the server thread sleeps without looking at its channel (a safety net; every
/// command also wakes it).
pub const MAX_IDLE_WAIT: Duration = Duration::from_secs(1);

/// How long a Read waits for the client by default: longer than CoAP's MAX_TRANSMIT_WAIT
/// (93 s with the RFC's parameters), so the exchange's own timeout normally ends it first.
pub const DEFAULT_READ_TIMEOUT: Duration = Duration::from_secs(100);

/// The largest UDP payload there can be.
const MAX_DATAGRAM: usize = 65_535;

/// How to start a [`TestServer`].
#[derive(Clone, Debug)]
pub struct TestServerConfig {
    /// LwM2M server over CoAP/UDP; port 0 = an ephemeral port.
    pub lwm2m_addr: SocketAddr,
    /// HTTP control API; `None` = none, port 0 = an ephemeral port.
    pub control_addr: Option<SocketAddr>,
    /// File the JSON event lines are appended to.
    pub events_file: Option<PathBuf>,
    /// Print the readable event lines on stdout.
    pub echo_events: bool,
    /// Events kept in memory for `GET /api/events` and [`TestServerHandle::events`].
    pub event_capacity: usize,
    /// CoAP transmission parameters of the server's requests (Reads).
    pub tx_params: TxParams,
    /// Upper bound on the wait for a Read's answer.
    pub read_timeout: Duration,
    /// Seed of message IDs and tokens; `None` = from the OS.
    pub seed: Option<u64>,
    /// LwM2M server over CoAP/DTLS (port 0 = ephemeral) and its credentials; `None` = no
    /// coaps port.
    pub coaps: Option<(SocketAddr, SecureListenerConfig)>,
    /// Bootstrap server over plain CoAP (port 0 = ephemeral) and the configuration whose
    /// `[endpoints.NAME]` it provisions; `None` = no bootstrap port.
    pub bootstrap: Option<(SocketAddr, Config)>,
    /// Bootstrap + EST over CoAP/DTLS (port 0 = ephemeral) and its credentials; `None` = no
    /// bootstrap coaps port.
    pub bootstrap_coaps: Option<(SocketAddr, SecureListenerConfig)>,
    /// Validity of the certificates the EST CA issues (`run --cert-validity`).
    pub cert_validity: Duration,
    /// How the EST CA misbehaves (`run --fault`).
    pub est_faults: Vec<crate::est_server::EstFault>,
    /// Share of received datagrams dropped on every port, in percent (`run --fault
    /// drop=PERCENT`), to watch a client retransmit; seeded by `seed`.
    pub drop_percent: u8,
}

/// Certificates EST issues are valid this long unless `run --cert-validity` says otherwise.
pub const DEFAULT_CERT_VALIDITY: Duration = Duration::from_secs(30 * 24 * 3600);

impl Default for TestServerConfig {
    /// Loopback, ephemeral ports, control API on, no events file.
    fn default() -> Self {
        let lo = IpAddr::V4(Ipv4Addr::LOCALHOST);
        TestServerConfig {
            lwm2m_addr: SocketAddr::new(lo, 0),
            control_addr: Some(SocketAddr::new(lo, 0)),
            events_file: None,
            echo_events: true,
            event_capacity: DEFAULT_RING_CAPACITY,
            tx_params: TxParams::default(),
            read_timeout: DEFAULT_READ_TIMEOUT,
            seed: None,
            coaps: None,
            bootstrap: None,
            bootstrap_coaps: None,
            cert_validity: DEFAULT_CERT_VALIDITY,
            est_faults: Vec::new(),
            drop_percent: 0,
        }
    }
}

impl TestServerConfig {
    /// The addresses of a state directory's `config.toml`, and the coaps listener with the
    /// directory's credentials when it has any (a directory whose credentials cannot be read
    /// is served without coaps, with a warning). With `lwm2m_coap = 0` and the default coaps
    /// port, coaps also takes an ephemeral port ([`TestServerHandle::lwm2m_coaps_addr`]).
    pub fn from_config(cfg: &Config) -> Self {
        let loaded = cfg
            .state_dir
            .as_deref()
            .map(crate::init::load_secure_listener);
        let mut bootstrap_coaps = None;
        let coaps = match loaded {
            Some(Ok(Some(listener))) => {
                let mut bs_addr = cfg.bootstrap_coaps_addr();
                if cfg.ports.lwm2m_coap == 0
                    && cfg.ports.bootstrap_coaps == crate::config::DEFAULT_BOOTSTRAP_COAPS_PORT
                {
                    bs_addr.set_port(0);
                }
                bootstrap_coaps = Some((bs_addr, listener.clone()));
                let mut addr = cfg.lwm2m_coaps_addr();
                // An ephemeral coap port (tests, `run --lwm2m-port 0`) with the default coaps
                // port: make coaps ephemeral too, so parallel servers do not collide on it.
                if cfg.ports.lwm2m_coap == 0
                    && cfg.ports.lwm2m_coaps == crate::config::DEFAULT_LWM2M_COAPS_PORT
                {
                    addr.set_port(0);
                }
                Some((addr, listener))
            }
            Some(Err(e)) => {
                warn!("no coaps listener: the state directory's credentials: {e}");
                None
            }
            _ => None,
        };
        let mut bootstrap_addr = cfg.bootstrap_coap_addr();
        // Same rule as coaps: an ephemeral LwM2M port makes the default bootstrap port ephemeral.
        if cfg.ports.lwm2m_coap == 0
            && cfg.ports.bootstrap_coap == crate::config::DEFAULT_BOOTSTRAP_COAP_PORT
        {
            bootstrap_addr.set_port(0);
        }
        TestServerConfig {
            lwm2m_addr: cfg.lwm2m_coap_addr(),
            control_addr: Some(cfg.control_addr()),
            coaps,
            bootstrap: Some((bootstrap_addr, cfg.clone())),
            bootstrap_coaps,
            ..TestServerConfig::default()
        }
    }
}

/// Why the server did not start.
#[derive(Debug, thiserror::Error)]
pub enum StartError {
    #[error("binding the LwM2M CoAP port {addr}: {source}")]
    BindLwm2m {
        addr: SocketAddr,
        #[source]
        source: io::Error,
    },
    #[error("binding the LwM2M coaps port {addr}: {source}")]
    BindCoaps {
        addr: SocketAddr,
        #[source]
        source: io::Error,
    },
    #[error("setting up DTLS: {0}")]
    Dtls(String),
    #[error("binding the bootstrap CoAP port {addr}: {source}")]
    BindBootstrap {
        addr: SocketAddr,
        #[source]
        source: io::Error,
    },
    #[error("bootstrap provisioning from the state directory: {0}")]
    Provisioning(String),
    #[error("binding the control API on {addr}: {source}")]
    BindControl {
        addr: SocketAddr,
        #[source]
        source: io::Error,
    },
    #[error("opening the events file: {0}")]
    EventsFile(#[source] io::Error),
    #[error("{0}")]
    Io(#[from] io::Error),
}

/// A registered client as the control API shows it.
#[derive(Clone, Debug, PartialEq, Eq, Serialize, Deserialize)]
pub struct ClientInfo {
    pub endpoint: String,
    pub location: String,
    pub lifetime: u32,
    pub lwm2m_version: String,
    pub binding: String,
    /// Object links of the registration, e.g. ["/1/0", "/3/0"].
    pub object_links: Vec<String>,
    pub peer: String,
    /// "nosec", "psk", "certificate" (factory) or "est" (issued by the EST CA): how the
    /// peer authenticated.
    pub security_mode: String,
    /// The client certificate's subject, for certificate and est modes.
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub certificate_subject: Option<String>,
    /// The client certificate's notAfter (RFC 3339), for certificate and est modes.
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub certificate_not_after: Option<String>,
    /// RFC 3339.
    pub registered_at: String,
    /// RFC 3339; the Register time until the first Update.
    pub last_update: String,
}

/// Why a Read through the control channel gave no answer from the client.
#[derive(Clone, Debug, PartialEq, Eq, thiserror::Error)]
pub enum ReadError {
    #[error("no client registered as {0:?}")]
    UnknownEndpoint(String),
    #[error("invalid LwM2M path {0:?}")]
    BadPath(String),
    #[error("the request could not be sent: {0}")]
    Send(String),
    /// The CoAP exchange failed (no answer within the retransmission window, RST).
    #[error("{0}")]
    Exchange(String),
    #[error("no answer within {0:?}")]
    TimedOut(Duration),
    #[error("the server is stopping")]
    Stopped,
    #[error("no observation of {0}")]
    NotObserved(String),
}

fn read_error(e: OpError) -> ReadError {
    match e {
        OpError::UnknownEndpoint(ep) => ReadError::UnknownEndpoint(ep),
        OpError::BadPath(p) => ReadError::BadPath(p),
        OpError::Send(s) => ReadError::Send(s),
        other => ReadError::Send(other.to_string()),
    }
}

enum Command {
    Clients(Sender<Vec<ClientInfo>>),
    Read {
        ep: String,
        path: String,
        accept: Option<u16>,
        reply: Sender<Result<OpResult, ReadError>>,
    },
    /// A datagram the coaps reader thread received.
    Coaps(SocketAddr, Vec<u8>),
    /// A datagram the bootstrap reader thread received.
    Bootstrap(SocketAddr, Vec<u8>),
    /// A datagram the bootstrap coaps reader thread received.
    BootstrapCoaps(SocketAddr, Vec<u8>),
    /// Any LwM2M operation (the control API's Write, Execute, Observe, ...); `op` names it
    /// for the event log. The reply is the first answer, for an Observe its first value.
    Request {
        ep: String,
        op: String,
        req: OpRequest,
        reply: Sender<Result<(OpId, OpResult), ReadError>>,
    },
    /// Stops the newest observation of `path` at `ep`.
    CancelObservation {
        ep: String,
        path: String,
        reply: Sender<Result<OpId, ReadError>>,
    },
    Stop,
}

/// Talks to the server thread; cheap to clone, usable from any thread.
#[derive(Clone)]
pub struct ServerCtl {
    tx: Sender<Command>,
    waker: Arc<UdpSocket>,
    wake_to: SocketAddr,
    read_timeout: Duration,
}

impl ServerCtl {
    fn send(&self, cmd: Command) -> bool {
        if self.tx.send(cmd).is_err() {
            return false;
        }
        // An empty datagram wakes the server thread from recv_from; if it is lost the
        // thread still looks at the channel within MAX_IDLE_WAIT.
        if let Err(e) = self.waker.send_to(&[], self.wake_to) {
            debug!("waking the server thread: {e}");
        }
        true
    }

    /// All registered clients; empty if the server has stopped.
    pub fn clients(&self) -> Vec<ClientInfo> {
        let (reply, rx) = mpsc::channel();
        if !self.send(Command::Clients(reply)) {
            return Vec::new();
        }
        rx.recv_timeout(Duration::from_secs(10)).unwrap_or_default()
    }

    /// The client registered as `ep`.
    pub fn client(&self, ep: &str) -> Option<ClientInfo> {
        self.clients().into_iter().find(|c| c.endpoint == ep)
    }

    /// Reads `path` (e.g. "/3/0/0") from `ep` with an optional Accept content format and
    /// waits for the answer, at most `timeout` (or the configured read timeout).
    pub fn read(
        &self,
        ep: &str,
        path: &str,
        accept: Option<u16>,
        timeout: Option<Duration>,
    ) -> Result<OpResult, ReadError> {
        let (reply, rx) = mpsc::channel();
        let cmd = Command::Read {
            ep: ep.to_string(),
            path: path.to_string(),
            accept,
            reply,
        };
        self.ask(cmd, &rx, timeout.unwrap_or(self.read_timeout))
    }

    /// Sends any LwM2M operation to `ep` and waits for its (first) answer, at most `timeout`
    /// (or the configured read timeout). `op` names the operation in the event log.
    pub fn request(
        &self,
        ep: &str,
        op: &str,
        req: OpRequest,
        timeout: Option<Duration>,
    ) -> Result<(OpId, OpResult), ReadError> {
        let (reply, rx) = mpsc::channel();
        let cmd = Command::Request {
            ep: ep.to_string(),
            op: op.to_string(),
            req,
            reply,
        };
        self.ask(cmd, &rx, timeout.unwrap_or(self.read_timeout))
    }

    /// Sends `cmd` to the server thread and waits at most `limit` for its answer on `rx`.
    fn ask<T>(
        &self,
        cmd: Command,
        rx: &mpsc::Receiver<Result<T, ReadError>>,
        limit: Duration,
    ) -> Result<T, ReadError> {
        if !self.send(cmd) {
            return Err(ReadError::Stopped);
        }
        match rx.recv_timeout(limit) {
            Ok(r) => r,
            Err(RecvTimeoutError::Timeout) => Err(ReadError::TimedOut(limit)),
            Err(RecvTimeoutError::Disconnected) => Err(ReadError::Stopped),
        }
    }

    /// Stops observing `path` at `ep` (the client's next notification is answered with
    /// RST); gives the observation's [`OpId`].
    pub fn cancel_observation(&self, ep: &str, path: &str) -> Result<OpId, ReadError> {
        let (reply, rx) = mpsc::channel();
        let cmd = Command::CancelObservation {
            ep: ep.to_string(),
            path: path.to_string(),
            reply,
        };
        if !self.send(cmd) {
            return Err(ReadError::Stopped);
        }
        rx.recv_timeout(Duration::from_secs(10))
            .unwrap_or(Err(ReadError::Stopped))
    }
}

/// The real clocks: `std::time::Instant` since start as the core's monotonic milliseconds,
/// `SystemTime` as UTC.
struct Clock {
    origin: std::time::Instant,
}

impl Clock {
    fn now(&self) -> Now {
        let mono = u64::try_from(self.origin.elapsed().as_millis()).unwrap_or(u64::MAX);
        Now::new(Instant::from_millis(mono), utc_now())
    }

    /// Time until `deadline`, rounded up to whole milliseconds so a wait never ends just
    /// before it (which would spin).
    fn until(&self, deadline: Instant) -> Duration {
        Duration::from_millis(deadline.as_millis()).saturating_sub(self.origin.elapsed())
            + Duration::from_millis(1)
    }
}

fn utc_now() -> UtcTime {
    match SystemTime::now().duration_since(UNIX_EPOCH) {
        Ok(d) => UtcTime::from_unix_millis(i64::try_from(d.as_millis()).unwrap_or(i64::MAX)),
        Err(_) => UtcTime::from_unix_millis(0),
    }
}

fn os_seed() -> io::Result<u64> {
    use std::io::Read;
    let mut b = [0u8; 8];
    std::fs::File::open("/dev/urandom")?.read_exact(&mut b)?;
    Ok(u64::from_le_bytes(b))
}

fn loopback_like(ip: IpAddr) -> IpAddr {
    match ip {
        IpAddr::V4(v4) if v4.is_unspecified() => IpAddr::V4(Ipv4Addr::LOCALHOST),
        IpAddr::V6(v6) if v6.is_unspecified() => IpAddr::V6(Ipv6Addr::LOCALHOST),
        other => other,
    }
}

/// A pending Read: who waits for it, and what to log.
struct PendingRead {
    reply: Sender<Result<OpResult, ReadError>>,
    ep: String,
    path: String,
}

/// A pending operation of the control API.
struct PendingRequest {
    reply: Sender<Result<(OpId, OpResult), ReadError>>,
    ep: String,
    op: String,
    path: String,
    /// The request registers an observation (GET with Observe=0).
    observe: bool,
}

/// Everything the server thread owns.
struct Lwm2mLoop {
    socket: UdpSocket,
    /// The coaps socket (for sending; a reader thread receives) and its DTLS sessions.
    coaps: Option<(UdpSocket, SecureListener)>,
    /// The plain bootstrap socket (for sending; a reader thread receives) and its server.
    bootstrap: Option<(UdpSocket, BootstrapServer)>,
    /// The bootstrap coaps socket (for sending) and its DTLS sessions.
    bootstrap_coaps: Option<(UdpSocket, SecureListener)>,
    waker_addr: SocketAddr,
    server: Lwm2mServer,
    clock: Clock,
    rx: Receiver<Command>,
    events: Arc<EventLog>,
    pending: HashMap<OpId, PendingRead>,
    requests: HashMap<OpId, PendingRequest>,
    /// Accepted observations: endpoint and path, for notification events and cancelling.
    observations: HashMap<OpId, (String, String)>,
    /// `--fault drop=PERCENT`: the share of received datagrams dropped, and its dice.
    drop_percent: u8,
    loss: SeededRng,
    dropped: u64,
}

impl Lwm2mLoop {
    /// True when `--fault drop` loses this received datagram.
    fn lose(&mut self, peer: SocketAddr) -> bool {
        if self.drop_percent == 0 || (self.loss.next_u32() % 100) >= u32::from(self.drop_percent) {
            return false;
        }
        self.dropped += 1;
        debug!(
            "--fault drop: datagram from {peer} dropped ({} so far)",
            self.dropped
        );
        true
    }

    fn run(mut self) {
        let mut buf = vec![0u8; MAX_DATAGRAM];
        loop {
            loop {
                match self.rx.try_recv() {
                    Ok(Command::Stop) | Err(TryRecvError::Disconnected) => return,
                    Ok(cmd) => self.command(cmd),
                    Err(TryRecvError::Empty) => break,
                }
            }
            let now = self.clock.now();
            if self.server.poll_timeout().is_some_and(|t| t <= now.mono) {
                self.server.handle_timeout(now);
            }
            if let Some((_, secure)) = self.coaps.as_mut() {
                if secure.poll_timeout().is_some_and(|t| t <= now.mono) {
                    secure.handle_timeout(now);
                }
            }
            if let Some((_, bs)) = self.bootstrap.as_mut() {
                if bs.poll_timeout().is_some_and(|t| t <= now.mono) {
                    bs.handle_timeout(now);
                }
            }
            if let Some((_, secure)) = self.bootstrap_coaps.as_mut() {
                if secure.poll_timeout().is_some_and(|t| t <= now.mono) {
                    secure.handle_timeout(now);
                }
            }
            self.flush(now);
            let next = [
                self.server.poll_timeout(),
                self.coaps.as_ref().and_then(|(_, s)| s.poll_timeout()),
                self.bootstrap.as_ref().and_then(|(_, b)| b.poll_timeout()),
                self.bootstrap_coaps
                    .as_ref()
                    .and_then(|(_, s)| s.poll_timeout()),
            ]
            .into_iter()
            .flatten()
            .min();
            let wait = next
                .map_or(MAX_IDLE_WAIT, |t| self.clock.until(t))
                .clamp(Duration::from_millis(1), MAX_IDLE_WAIT);
            if let Err(e) = self.socket.set_read_timeout(Some(wait)) {
                warn!("setting the socket timeout: {e}");
            }
            match self.socket.recv_from(&mut buf) {
                Ok((_, src)) if src == self.waker_addr => {}
                Ok((_, src)) if self.lose(src) => {}
                Ok((n, src)) => {
                    let now = self.clock.now();
                    self.server.set_peer_auth(src, "nosec");
                    self.server.handle_datagram(now, src, &buf[..n]);
                    self.flush(now);
                }
                Err(e)
                    if matches!(
                        e.kind(),
                        io::ErrorKind::WouldBlock | io::ErrorKind::TimedOut
                    ) => {}
                Err(e) => {
                    // E.g. ICMP errors reported on the socket; never spin on a broken one.
                    debug!("recv_from: {e}");
                    std::thread::sleep(Duration::from_millis(10));
                }
            }
        }
    }

    fn command(&mut self, cmd: Command) {
        match cmd {
            Command::Clients(reply) => {
                let secure = self.coaps.as_ref().map(|(_, s)| s);
                let list = self
                    .server
                    .registrations()
                    .map(|r| client_info(r, secure))
                    .collect();
                let _ = reply.send(list);
            }
            Command::Read {
                ep,
                path,
                accept,
                reply,
            } => {
                let now = self.clock.now();
                match self.server.read(now, &ep, &path, accept) {
                    Ok(op) => {
                        self.pending.insert(op, PendingRead { reply, ep, path });
                        self.flush(now);
                    }
                    Err(e) => {
                        let _ = reply.send(Err(read_error(e)));
                    }
                }
            }
            Command::Bootstrap(peer, data) => {
                if self.lose(peer) {
                    return;
                }
                let now = self.clock.now();
                if let Some((_, bs)) = self.bootstrap.as_mut() {
                    // A plain datagram: whatever DTLS identity this address had is gone.
                    bs.set_peer_auth(peer, crate::est_server::PeerAuth::None);
                    bs.handle_datagram(now, peer, &data);
                }
                self.flush(now);
            }
            Command::BootstrapCoaps(peer, data) => {
                if self.lose(peer) {
                    return;
                }
                let now = self.clock.now();
                if let (Some((_, secure)), Some((_, bs))) =
                    (self.bootstrap_coaps.as_mut(), self.bootstrap.as_mut())
                {
                    for coap in secure.handle_datagram(now, peer, &data) {
                        if let Some(auth) = secure.est_peer_auth(peer) {
                            bs.set_peer_auth(peer, auth);
                        }
                        bs.handle_datagram(now, peer, &coap);
                    }
                }
                self.flush(now);
            }
            Command::Coaps(peer, data) => {
                if self.lose(peer) {
                    return;
                }
                let now = self.clock.now();
                if let Some((_, secure)) = self.coaps.as_mut() {
                    for coap in secure.handle_datagram(now, peer, &data) {
                        let mode = secure.peer_auth(peer).map_or("nosec", |a| a.mode());
                        self.server.set_peer_auth(peer, mode);
                        self.server.handle_datagram(now, peer, &coap);
                    }
                }
                self.flush(now);
            }
            Command::Request { ep, op, req, reply } => {
                let now = self.clock.now();
                let path = req.path.clone();
                let observe = req.observe == Some(0);
                match self.server.request(now, &ep, req) {
                    Ok(id) => {
                        let p = PendingRequest {
                            reply,
                            ep,
                            op,
                            path,
                            observe,
                        };
                        self.requests.insert(id, p);
                        self.flush(now);
                    }
                    Err(e) => {
                        let _ = reply.send(Err(read_error(e)));
                    }
                }
            }
            Command::CancelObservation { ep, path, reply } => {
                let now = self.clock.now();
                let newest = self
                    .observations
                    .iter()
                    .filter(|(_, (e, p))| *e == ep && *p == path)
                    .map(|(op, _)| *op)
                    .max();
                let result = match newest {
                    None => Err(ReadError::NotObserved(path)),
                    Some(op) => {
                        self.observations.remove(&op);
                        match self.server.cancel_observation(now, &ep, op) {
                            Ok(()) => Ok(op),
                            Err(OpError::UnknownObservation(_)) => {
                                Err(ReadError::NotObserved(path))
                            }
                            Err(e) => Err(read_error(e)),
                        }
                    }
                };
                let _ = reply.send(result);
                self.flush(now);
            }
            Command::Stop => {}
        }
    }

    /// Sends what the core queued and turns its events into log lines and replies.
    fn flush(&mut self, now: Now) {
        self.flush_bootstrap();
        while let Some((peer, data)) = self.server.poll_transmit() {
            if let Some((_, secure)) = self.coaps.as_mut().filter(|(_, s)| s.has_peer(peer)) {
                secure.send(now, peer, &data);
                continue;
            }
            if let Err(e) = self.socket.send_to(&data, peer) {
                // Retransmission covers a lost datagram.
                debug!("send_to {peer}: {e}");
            }
        }
        if let Some((socket, secure)) = self.coaps.as_mut() {
            while let Some((peer, data)) = secure.poll_transmit() {
                if let Err(e) = socket.send_to(&data, peer) {
                    debug!("coaps send_to {peer}: {e}");
                }
            }
            while let Some(ev) = secure.poll_event() {
                match ev {
                    SecureEvent::Established {
                        peer,
                        auth,
                        cipher_suite,
                    } => info!("coaps {peer}: DTLS established ({cipher_suite}) as {auth:?}"),
                    SecureEvent::HandshakeFailed { peer, reason } => {
                        warn!("coaps {peer}: DTLS handshake refused: {reason}")
                    }
                }
            }
        }
        while let Some(ev) = self.server.poll_event() {
            let kind = match ev {
                ServerEvent::Registered {
                    endpoint,
                    location,
                    lifetime,
                    peer,
                } => {
                    // A new registration starts a new session: earlier observations are gone.
                    self.observations.retain(|_, (ep, _)| *ep != endpoint);
                    let reg = self.server.registrations().find(|r| r.location == location);
                    EventKind::Registered {
                        ep: endpoint,
                        location,
                        lifetime,
                        lwm2m: reg.map_or("?".into(), |r| r.lwm2m_version.clone()),
                        binding: reg.map_or("?".into(), |r| r.binding.clone()),
                        peer: peer.to_string(),
                    }
                }
                ServerEvent::Updated { endpoint } => EventKind::Updated { ep: endpoint },
                ServerEvent::Deregistered { endpoint } => {
                    self.observations.retain(|_, (ep, _)| *ep != endpoint);
                    EventKind::Deregistered { ep: endpoint }
                }
                ServerEvent::Expired { endpoint } => {
                    self.observations.retain(|_, (ep, _)| *ep != endpoint);
                    EventKind::Expired { ep: endpoint }
                }
                ServerEvent::RegisterRefused { endpoint, reason } => EventKind::RegisterRefused {
                    ep: endpoint,
                    reason,
                },
                ServerEvent::OpFinished { op, result, .. } if self.requests.contains_key(&op) => {
                    let Some(p) = self.requests.remove(&op) else {
                        continue;
                    };
                    // Only an observation the client accepted (the core decides: 2.05 with an
                    // Observe option) is remembered for events and cancelling.
                    if p.observe && self.server.observations().iter().any(|(o, _)| *o == op) {
                        self.observations.insert(op, (p.ep.clone(), p.path.clone()));
                    }
                    let (code, error) = match &result {
                        Ok(r) => (Some(r.code.clone()), None),
                        Err(e) => (None, Some(e.clone())),
                    };
                    // The waiter may have given up; nothing to do then.
                    let _ = p
                        .reply
                        .send(result.map(|r| (op, r)).map_err(ReadError::Exchange));
                    EventKind::Operation {
                        ep: p.ep,
                        op: p.op,
                        path: p.path,
                        code,
                        error,
                    }
                }
                ServerEvent::OpFinished {
                    op,
                    endpoint,
                    result,
                } => {
                    let pending = self.pending.remove(&op);
                    let path = pending.as_ref().map_or("?".into(), |p| p.path.clone());
                    let ep = pending.as_ref().map_or(endpoint, |p| p.ep.clone());
                    let (code, error) = match &result {
                        Ok(r) => (Some(r.code.clone()), None),
                        Err(e) => (None, Some(e.clone())),
                    };
                    if let Some(p) = pending {
                        // The waiter may have given up; nothing to do then.
                        let _ = p.reply.send(result.map_err(ReadError::Exchange));
                    }
                    EventKind::Read {
                        ep,
                        path,
                        code,
                        error,
                    }
                }
                ServerEvent::Notification {
                    op,
                    observe,
                    result,
                    ..
                } => {
                    // Notifications of a cancelled observation are not shown.
                    let Some((ep, path)) = self.observations.get(&op).cloned() else {
                        continue;
                    };
                    let p = estuary::dm::Path::parse(&path).unwrap_or_default();
                    EventKind::Notification {
                        answer: crate::render::read_answer(&p, &result),
                        ep,
                        path,
                        observe,
                    }
                }
            };
            self.events.record(now.utc, kind);
        }
    }
}

fn client_info(
    r: &crate::lwm2m_server::Registration,
    secure: Option<&SecureListener>,
) -> ClientInfo {
    let auth = secure.and_then(|s| s.peer_auth(r.peer));
    let (certificate_subject, certificate_not_after) = match &auth {
        Some(
            crate::coaps::PeerAuth::Certificate { subject, not_after }
            | crate::coaps::PeerAuth::Est { subject, not_after },
        ) => (
            Some(subject.clone()),
            Some(rfc3339(UtcTime::from_unix_seconds(*not_after))),
        ),
        _ => (None, None),
    };
    ClientInfo {
        endpoint: r.endpoint.clone(),
        location: r.location.clone(),
        lifetime: r.lifetime,
        lwm2m_version: r.lwm2m_version.clone(),
        binding: r.binding.clone(),
        object_links: r.objects.clone(),
        peer: r.peer.to_string(),
        security_mode: auth.as_ref().map_or("nosec", |a| a.mode()).into(),
        certificate_subject,
        certificate_not_after,
        registered_at: rfc3339(r.registered_at),
        last_update: rfc3339(r.last_update),
    }
}

impl Lwm2mLoop {
    /// Sends the bootstrap server's datagrams and logs its events.
    fn flush_bootstrap(&mut self) {
        let Some((socket, bs)) = self.bootstrap.as_mut() else {
            return;
        };
        let now = self.clock.now();
        while let Some((peer, data)) = bs.poll_transmit() {
            if let Some((_, secure)) = self
                .bootstrap_coaps
                .as_mut()
                .filter(|(_, s)| s.has_peer(peer))
            {
                secure.send(now, peer, &data);
                continue;
            }
            if let Err(e) = socket.send_to(&data, peer) {
                debug!("bootstrap send_to {peer}: {e}");
            }
        }
        if let Some((socket, secure)) = self.bootstrap_coaps.as_mut() {
            while let Some((peer, data)) = secure.poll_transmit() {
                if let Err(e) = socket.send_to(&data, peer) {
                    debug!("bootstrap coaps send_to {peer}: {e}");
                }
            }
            while let Some(ev) = secure.poll_event() {
                match ev {
                    SecureEvent::Established { peer, auth, .. } => {
                        info!("bootstrap coaps {peer}: DTLS established as {auth:?}")
                    }
                    SecureEvent::HandshakeFailed { peer, reason } => {
                        warn!("bootstrap coaps {peer}: DTLS handshake refused: {reason}")
                    }
                }
            }
        }
        while let Some(ev) = bs.poll_event() {
            let kind = bootstrap_event_kind(ev);
            self.events.record(utc_now(), kind);
        }
    }
}

/// The EST CA of a state directory: the root CA issues, the factory CA vouches for /sen.
fn est_ca(
    dir: &std::path::Path,
    validity: Duration,
    seed: Option<u64>,
) -> Result<crate::est_server::EstCa, StartError> {
    let auth = crate::init::load_authorities(dir)
        .map_err(|e| StartError::Provisioning(format!("the EST CA: {e}")))?;
    let mut factory = estuary::crypto::TrustStore::new();
    factory.add(auth.factory_ca.certificate().clone());
    let rng = match seed {
        Some(s) => estuary::crypto::Drbg::from_seed(s.rotate_left(41)),
        None => {
            estuary::crypto::Drbg::from_os_entropy().map_err(|e| StartError::Dtls(e.to_string()))?
        }
    };
    Ok(crate::est_server::EstCa::new(
        auth.pki.ca,
        factory,
        validity,
        rng,
    ))
}

/// The event-log entry of a bootstrap server event.
fn bootstrap_event_kind(ev: BootstrapEvent) -> EventKind {
    use crate::est_server::EstEvent;
    match ev {
        BootstrapEvent::Requested { endpoint, peer } => EventKind::BootstrapRequested {
            ep: endpoint,
            peer: peer.to_string(),
        },
        BootstrapEvent::Step {
            endpoint, op, code, ..
        } => EventKind::BootstrapStep {
            ep: endpoint,
            op,
            code,
        },
        BootstrapEvent::Finished { endpoint } => EventKind::BootstrapFinished { ep: endpoint },
        BootstrapEvent::Failed { endpoint, reason } => EventKind::BootstrapFailed {
            ep: endpoint,
            reason,
        },
        BootstrapEvent::Est { endpoint, event } => match event {
            EstEvent::CaCerts { .. } => EventKind::Cacerts { ep: endpoint },
            EstEvent::Enrolled {
                subject,
                serial,
                not_after,
                reenroll,
            } => EventKind::Enrolled {
                ep: endpoint,
                subject,
                serial,
                not_after: crate::events::rfc3339(not_after),
                reenroll,
            },
            EstEvent::Refused { operation, reason } => EventKind::EstRefused {
                ep: endpoint,
                operation: operation.to_string(),
                reason,
            },
        },
    }
}

/// Receives on the coaps socket and hands datagrams to the server thread, until `stop` is
/// set or the server thread is gone.
fn coaps_reader_loop(socket: UdpSocket, ctl: ServerCtl, stop: Arc<AtomicBool>) {
    reader_loop(socket, ctl, stop, Command::Coaps)
}

/// Receives on `socket` and hands each datagram to the server thread as `wrap(src, data)`.
fn reader_loop(
    socket: UdpSocket,
    ctl: ServerCtl,
    stop: Arc<AtomicBool>,
    wrap: fn(SocketAddr, Vec<u8>) -> Command,
) {
    let mut buf = vec![0u8; MAX_DATAGRAM];
    if let Err(e) = socket.set_read_timeout(Some(MAX_IDLE_WAIT)) {
        warn!("coaps socket timeout: {e}");
    }
    while !stop.load(Ordering::Acquire) {
        match socket.recv_from(&mut buf) {
            Ok((n, src)) => {
                if !ctl.send(wrap(src, buf[..n].to_vec())) {
                    return;
                }
            }
            Err(e)
                if matches!(
                    e.kind(),
                    io::ErrorKind::WouldBlock | io::ErrorKind::TimedOut
                ) => {}
            Err(e) => {
                debug!("coaps recv_from: {e}");
                std::thread::sleep(Duration::from_millis(10));
            }
        }
    }
}

/// Starts test servers.
pub struct TestServer;

impl TestServer {
    /// Binds the sockets and starts the server thread and (if configured) the control API.
    /// Returns once both are accepting.
    pub fn start(cfg: TestServerConfig) -> Result<TestServerHandle, StartError> {
        let socket = UdpSocket::bind(cfg.lwm2m_addr).map_err(|source| StartError::BindLwm2m {
            addr: cfg.lwm2m_addr,
            source,
        })?;
        let lwm2m_addr = socket.local_addr()?;
        let wake_to = SocketAddr::new(loopback_like(lwm2m_addr.ip()), lwm2m_addr.port());
        let waker = UdpSocket::bind(SocketAddr::new(wake_to.ip(), 0))?;
        let waker_addr = waker.local_addr()?;
        let events = Arc::new(
            EventLog::new(
                cfg.event_capacity,
                cfg.events_file.as_deref(),
                cfg.echo_events,
            )
            .map_err(StartError::EventsFile)?,
        );
        let seed = match cfg.seed {
            Some(s) => s,
            None => os_seed()?,
        };
        let (tx, rx) = mpsc::channel();
        let ctl = ServerCtl {
            tx,
            waker: Arc::new(waker),
            wake_to,
            read_timeout: cfg.read_timeout,
        };
        // Bind the control API before starting anything, so a failure leaves no thread.
        let control = match cfg.control_addr {
            Some(addr) => Some(
                crate::control::ControlServer::bind(addr, ctl.clone(), events.clone())
                    .map_err(|source| StartError::BindControl { addr, source })?,
            ),
            None => None,
        };
        // The coaps socket: a reader thread receives, the server thread sends and decrypts.
        let mut coaps_addr = None;
        let mut coaps_reader = None;
        let mut coaps = match cfg.coaps {
            Some((addr, listener_cfg)) => {
                let sock = UdpSocket::bind(addr)
                    .map_err(|source| StartError::BindCoaps { addr, source })?;
                coaps_addr = Some(sock.local_addr()?);
                let rng = match cfg.seed {
                    Some(s) => estuary::crypto::Drbg::from_seed(s),
                    None => estuary::crypto::Drbg::from_os_entropy()
                        .map_err(|e| StartError::Dtls(e.to_string()))?,
                };
                let listener = SecureListener::new(listener_cfg, &rng)
                    .map_err(|e| StartError::Dtls(e.to_string()))?;
                let reader = sock.try_clone()?;
                let stop = Arc::new(AtomicBool::new(false));
                let (ctl2, stop2) = (ctl.clone(), stop.clone());
                let thread = std::thread::Builder::new()
                    .name("coaps-reader".into())
                    .spawn(move || coaps_reader_loop(reader, ctl2, stop2))?;
                coaps_reader = Some((stop, thread));
                Some((sock, listener))
            }
            None => None,
        };
        // The bootstrap socket, provisioned with the management addresses as actually bound.
        let mut bootstrap_addr = None;
        let mut bootstrap_reader = None;
        let mut bootstrap_coaps_reader = None;
        // Endpoints provisioned in EST mode register only with a certificate from the EST CA.
        let est_endpoints: Vec<String> = cfg.bootstrap.as_ref().map_or(Vec::new(), |(_, c)| {
            c.endpoints
                .iter()
                .filter(|(_, ep)| ep.security_mode == crate::config::SecurityModeName::Est)
                .map(|(name, _)| name.clone())
                .collect()
        });
        let bootstrap = match cfg.bootstrap {
            Some((addr, config)) => {
                let sock = UdpSocket::bind(addr)
                    .map_err(|source| StartError::BindBootstrap { addr, source })?;
                bootstrap_addr = Some(sock.local_addr()?);
                let shown = |a: SocketAddr| SocketAddr::new(loopback_like(a.ip()), a.port());
                let uris = crate::provision::ManagementUris {
                    coap: format!("coap://{}", shown(lwm2m_addr)),
                    coaps: coaps_addr.map_or(String::new(), |a| format!("coaps://{}", shown(a))),
                };
                let mut server = BootstrapServer::new(cfg.tx_params, seed.rotate_left(17));
                for (ep, p) in crate::provision::all(&config, &uris)
                    .map_err(|e| StartError::Provisioning(e.to_string()))?
                {
                    server.provision(&ep, p);
                }
                if let Some(dir) = config.state_dir.as_deref() {
                    let mut est = est_ca(dir, cfg.cert_validity, cfg.seed)?;
                    if let Some((_, listener)) = coaps.as_mut() {
                        listener.set_est_issuer(est.ca_certificate().subject());
                    }
                    est.set_faults(cfg.est_faults.clone());
                    server.set_est(est);
                }
                let reader = sock.try_clone()?;
                let stop = Arc::new(AtomicBool::new(false));
                let (ctl2, stop2) = (ctl.clone(), stop.clone());
                let thread = std::thread::Builder::new()
                    .name("bootstrap-reader".into())
                    .spawn(move || reader_loop(reader, ctl2, stop2, Command::Bootstrap))?;
                bootstrap_reader = Some((stop, thread));
                Some((sock, server))
            }
            None => None,
        };
        let mut bootstrap_coaps_addr = None;
        let bootstrap_coaps = match cfg.bootstrap_coaps.filter(|_| bootstrap.is_some()) {
            Some((addr, listener_cfg)) => {
                let sock = UdpSocket::bind(addr)
                    .map_err(|source| StartError::BindBootstrap { addr, source })?;
                bootstrap_coaps_addr = Some(sock.local_addr()?);
                let rng = match cfg.seed {
                    Some(s) => estuary::crypto::Drbg::from_seed(s.rotate_left(29)),
                    None => estuary::crypto::Drbg::from_os_entropy()
                        .map_err(|e| StartError::Dtls(e.to_string()))?,
                };
                let listener = SecureListener::new(listener_cfg, &rng)
                    .map_err(|e| StartError::Dtls(e.to_string()))?;
                let reader = sock.try_clone()?;
                let stop = Arc::new(AtomicBool::new(false));
                let (ctl2, stop2) = (ctl.clone(), stop.clone());
                let thread = std::thread::Builder::new()
                    .name("bootstrap-coaps-reader".into())
                    .spawn(move || reader_loop(reader, ctl2, stop2, Command::BootstrapCoaps))?;
                bootstrap_coaps_reader = Some((stop, thread));
                Some((sock, listener))
            }
            None => None,
        };
        let mut server = Lwm2mServer::new(cfg.tx_params, seed);
        for ep in &est_endpoints {
            server.require_authentication(ep, "est");
        }
        let lp = Lwm2mLoop {
            socket,
            coaps,
            bootstrap,
            bootstrap_coaps,
            waker_addr,
            server,
            clock: Clock {
                origin: std::time::Instant::now(),
            },
            rx,
            events: events.clone(),
            pending: HashMap::new(),
            requests: HashMap::new(),
            observations: HashMap::new(),
            drop_percent: cfg.drop_percent.min(100),
            loss: SeededRng::new(seed.rotate_left(41)),
            dropped: 0,
        };
        let lwm2m_thread = std::thread::Builder::new()
            .name("lwm2m-server".into())
            .spawn(move || lp.run())?;
        let (control_addr, control) = match control {
            Some(c) => (Some(c.local_addr()), Some(c.spawn()?)),
            None => (None, None),
        };
        info!(
            "LwM2M server on coap://{lwm2m_addr}{}{}",
            coaps_addr.map_or(String::new(), |a| format!(" and coaps://{a}")),
            control_addr.map_or(String::new(), |a| format!(", control API on http://{a}"))
        );
        Ok(TestServerHandle {
            lwm2m_addr,
            coaps_addr,
            coaps_reader,
            bootstrap_addr,
            bootstrap_reader,
            bootstrap_coaps_addr,
            bootstrap_coaps_reader,
            control_addr,
            events,
            ctl,
            lwm2m_thread: Some(lwm2m_thread),
            control,
        })
    }
}

/// A running test server; stops when dropped.
pub struct TestServerHandle {
    lwm2m_addr: SocketAddr,
    coaps_addr: Option<SocketAddr>,
    coaps_reader: Option<(Arc<AtomicBool>, JoinHandle<()>)>,
    bootstrap_addr: Option<SocketAddr>,
    bootstrap_reader: Option<(Arc<AtomicBool>, JoinHandle<()>)>,
    bootstrap_coaps_addr: Option<SocketAddr>,
    bootstrap_coaps_reader: Option<(Arc<AtomicBool>, JoinHandle<()>)>,
    control_addr: Option<SocketAddr>,
    events: Arc<EventLog>,
    ctl: ServerCtl,
    lwm2m_thread: Option<JoinHandle<()>>,
    control: Option<crate::control::RunningControl>,
}

impl TestServerHandle {
    /// Where the LwM2M server listens (the actual port if 0 was asked for).
    pub fn lwm2m_addr(&self) -> SocketAddr {
        self.lwm2m_addr
    }

    /// The `coap://` URI devices register at.
    pub fn lwm2m_uri(&self) -> String {
        format!("coap://{}", self.lwm2m_addr)
    }

    /// Where the LwM2M coaps port listens, if it is served.
    pub fn lwm2m_coaps_addr(&self) -> Option<SocketAddr> {
        self.coaps_addr
    }

    /// The `coaps://` URI devices register at with PSK or certificates, if served.
    pub fn lwm2m_coaps_uri(&self) -> Option<String> {
        self.coaps_addr.map(|a| format!("coaps://{a}"))
    }

    /// Where the bootstrap server listens over plain CoAP, if it is served.
    pub fn bootstrap_addr(&self) -> Option<SocketAddr> {
        self.bootstrap_addr
    }

    /// The `coap://` URI of the bootstrap server, if served.
    pub fn bootstrap_uri(&self) -> Option<String> {
        self.bootstrap_addr.map(|a| format!("coap://{a}"))
    }

    /// Where bootstrap + EST listen over DTLS, if served.
    pub fn bootstrap_coaps_addr(&self) -> Option<SocketAddr> {
        self.bootstrap_coaps_addr
    }

    /// The `coaps://` URI of bootstrap + EST, if served.
    pub fn bootstrap_coaps_uri(&self) -> Option<String> {
        self.bootstrap_coaps_addr.map(|a| format!("coaps://{a}"))
    }

    /// Where the control API listens, if it runs.
    pub fn control_addr(&self) -> Option<SocketAddr> {
        self.control_addr
    }

    /// The events so far (the in-memory ring), oldest first.
    pub fn events(&self) -> Vec<EventRecord> {
        self.events.snapshot()
    }

    /// The event sink, e.g. to wait for an event.
    pub fn event_log(&self) -> &Arc<EventLog> {
        &self.events
    }

    /// Waits up to `timeout` for an event `name` ("registered", ...) of endpoint `ep`.
    pub fn wait_for_event(&self, name: &str, ep: &str, timeout: Duration) -> Option<EventRecord> {
        self.events.wait_for(timeout, |r| {
            r.kind.name() == name && r.kind.endpoint() == ep
        })
    }

    /// A handle for talking to the server thread (the same one the control API uses).
    pub fn ctl(&self) -> &ServerCtl {
        &self.ctl
    }

    pub fn clients(&self) -> Vec<ClientInfo> {
        self.ctl.clients()
    }

    pub fn read(&self, ep: &str, path: &str, accept: Option<u16>) -> Result<OpResult, ReadError> {
        self.ctl.read(ep, path, accept, None)
    }

    /// True while the server thread runs.
    pub fn is_running(&self) -> bool {
        self.lwm2m_thread.as_ref().is_some_and(|t| !t.is_finished())
    }

    /// Stops the control API and the server thread and waits for them.
    pub fn stop(mut self) {
        self.shutdown();
    }

    fn shutdown(&mut self) {
        if let Some(c) = self.control.take() {
            c.stop();
        }
        if let Some(t) = self.lwm2m_thread.take() {
            self.ctl.send(Command::Stop);
            if t.join().is_err() {
                warn!("the LwM2M server thread panicked");
            }
        }
        for (stop, t) in [
            self.coaps_reader.take(),
            self.bootstrap_reader.take(),
            self.bootstrap_coaps_reader.take(),
        ]
        .into_iter()
        .flatten()
        {
            stop.store(true, Ordering::Release);
            if t.join().is_err() {
                warn!("a reader thread panicked");
            }
        }
    }
}

impl Drop for TestServerHandle {
    fn drop(&mut self) {
        self.shutdown();
    }
}
