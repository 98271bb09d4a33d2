//! The std edge: [`Driver`] runs a sans-IO [`Client`] on real UDP sockets and real clocks.
//!
//! It owns one connected UDP socket per [`ConnectionId`] (opened on the first datagram to
//! send, host resolved with the system resolver), reads the monotonic and wall clocks,
//! seeds the client's random generators (message IDs, DTLS) from the OS, and runs the event
//! loop: `poll(2)` on the sockets plus a self-pipe for [`InterruptHandle`], bounded by the
//! client's next deadline, then datagrams in, timers, datagrams out, events to the application.
//! For firmware with its own loop it also offers the pieces separately ([`Driver::sockets`],
//! [`Driver::serve_fd`], [`Driver::next_wait`], [`Driver::run_due`]).
//!
//! Protocol decisions stay in the core; this module makes none. Unix only (`poll`, pipes).

mod clock;
mod entropy;
mod udp;
mod wake;

#[cfg(test)]
mod tests;

use std::collections::BTreeMap;
use std::io;
use std::net::UdpSocket;
use std::os::fd::{AsRawFd, RawFd};
use std::time::Duration;

use log::{debug, info, warn};

use crate::client::{Client, ClientConfig, ConnectionId, Event, Transmit};
use crate::crypto::Drbg;
use crate::error::Error;
use crate::rng::SeededRng;

use clock::Clock;
use wake::Wake;

pub use wake::InterruptHandle;

/// At most this many datagrams are read from one socket per wake-up, so one busy peer
/// cannot starve the others or the timers.
const MAX_DATAGRAMS_PER_WAKE: usize = 64;

/// The largest UDP payload there can be.
const MAX_DATAGRAM: usize = 65_535;

/// What the driver needs besides the client's own configuration.
#[derive(Clone, Debug, PartialEq)]
pub struct DriverConfig {
    pub client: ClientConfig,
    /// Local UDP port for the first socket opened; 0 = an ephemeral port.
    pub udp_listen_port: u16,
    /// Seed of the message-ID/token generator, for reproducible runs; `None` = from the OS.
    pub prng_seed: Option<u64>,
}

impl DriverConfig {
    pub fn new(endpoint_name: &str) -> Self {
        DriverConfig {
            client: ClientConfig::new(endpoint_name),
            udp_listen_port: 0,
            prng_seed: None,
        }
    }
}

/// Datagram counters, for tests and diagnostics.
#[derive(Copy, Clone, Debug, Default, PartialEq, Eq)]
pub struct DriverStats {
    pub datagrams_in: u64,
    pub datagrams_out: u64,
    /// Received datagrams larger than any DTLS record or CoAP message we take, dropped
    /// unread (smaller ones over `in_buffer_size` are the client's to refuse).
    pub oversize_dropped: u64,
    /// Datagrams that could not be sent (no socket, send error); retransmission covers them.
    pub send_failures: u64,
}

/// Receives every [`Event`] the client reports, on the thread running the driver.
pub type EventHandler = Box<dyn FnMut(&Event) + Send>;

/// A [`Client`] on real sockets and clocks.
pub struct Driver {
    client: Client,
    clock: Clock,
    sockets: BTreeMap<ConnectionId, UdpSocket>,
    listen_port: u16,
    /// The connection whose socket holds `listen_port`, if any.
    listen_port_holder: Option<ConnectionId>,
    wake: Wake,
    /// One byte more than the largest datagram we take (a maximal DTLS record, or
    /// in_buffer_size if larger; at most 64 KiB), so an oversize datagram is recognised, not
    /// truncated.
    in_buf: Vec<u8>,
    on_event: Option<EventHandler>,
    started: bool,
    stats: DriverStats,
}

impl Driver {
    /// A driver with a new client; fails on an invalid client configuration or when the
    /// OS gives no entropy or no pipe.
    pub fn new(cfg: DriverConfig) -> Result<Driver, Error> {
        let seed = match cfg.prng_seed {
            Some(s) => s,
            None => entropy::os_seed()
                .map_err(|e| Error::Io(format!("reading a random seed from the OS: {e}")))?,
        };
        let mut client = Client::new(cfg.client, Box::new(SeededRng::new(seed)))?;
        // DTLS keys and nonces come from a CTR-DRBG seeded by the OS, never from the
        // message-ID generator; a fixed prng_seed (tests) makes them reproducible too.
        let drbg = match cfg.prng_seed {
            Some(s) => Drbg::from_seed(s),
            None => Drbg::from_os_entropy()
                .map_err(|e| Error::Io(format!("seeding the DTLS random generator: {e}")))?,
        };
        client.set_dtls_rng(drbg);
        Self::with_client(client, cfg.udp_listen_port)
    }

    /// A driver around an existing client (its random source already chosen).
    pub fn with_client(client: Client, udp_listen_port: u16) -> Result<Driver, Error> {
        let wake = Wake::new().map_err(|e| Error::Io(format!("creating the wake-up pipe: {e}")))?;
        // No UDP datagram is larger than 65535 bytes, whatever the configuration says; a
        // DTLS record may be larger than the CoAP message it carries (in_buffer_size).
        let in_buf = vec![
            0u8;
            client
                .config()
                .in_buffer_size
                .clamp(crate::client::MAX_DTLS_DATAGRAM, MAX_DATAGRAM)
                + 1
        ];
        Ok(Driver {
            client,
            clock: Clock::new(),
            sockets: BTreeMap::new(),
            listen_port: udp_listen_port,
            listen_port_holder: None,
            wake,
            in_buf,
            on_event: None,
            started: false,
            stats: DriverStats::default(),
        })
    }

    pub fn client(&self) -> &Client {
        &self.client
    }

    /// The client, e.g. to install objects before the first [`Driver::run`].
    pub fn client_mut(&mut self) -> &mut Client {
        &mut self.client
    }

    /// Replaces the event handler (`None` = events are only logged).
    pub fn set_event_handler(&mut self, handler: Option<EventHandler>) {
        self.on_event = handler;
    }

    /// A handle that stops [`Driver::run`] from another thread or a signal handler.
    pub fn interrupt_handle(&self) -> InterruptHandle {
        self.wake.handle()
    }

    pub fn is_started(&self) -> bool {
        self.started
    }

    pub fn stats(&self) -> DriverStats {
        self.stats
    }

    /// Starts the client (opens its sessions and sends the first Registers). Called by
    /// [`Driver::run`] and [`Driver::run_due`]; calling it again does nothing.
    pub fn start(&mut self) -> Result<(), Error> {
        if !self.started {
            self.client.start(self.clock.now())?;
            self.started = true;
            self.flush();
        }
        Ok(())
    }

    /// Runs the event loop until interrupted through an [`InterruptHandle`]; each wait
    /// lasts at most `max_wait`. Returns `Ok` when interrupted (at once if an interrupt
    /// arrived while the loop was not running), an error if the client cannot start or
    /// `poll(2)` fails.
    pub fn run(&mut self, max_wait: Duration) -> Result<(), Error> {
        self.start()?;
        loop {
            if self.wake.take_interrupt() {
                debug!("event loop interrupted");
                return Ok(());
            }
            let wait = self.next_wait().map_or(max_wait, |w| w.min(max_wait));
            self.wait_and_serve(wait)
                .map_err(|e| Error::Io(format!("poll: {e}")))?;
            self.run_due()?;
        }
    }

    /// De-registers from every server, serving the network until every De-register is
    /// answered or given up, or `timeout` has passed — whichever comes first. Best effort:
    /// returns true if the client finished cleanly, false on timeout or I/O error.
    pub fn shutdown(&mut self, timeout: Duration) -> bool {
        let deadline = std::time::Instant::now() + timeout;
        self.client.shutdown(self.clock.now());
        self.flush();
        while !self.client.is_shut_down() {
            let left = deadline.saturating_duration_since(std::time::Instant::now());
            if left.is_zero() {
                warn!(
                    "de-registration did not finish within {} ms; closing anyway",
                    timeout.as_millis()
                );
                return false;
            }
            let wait = self.next_wait().map_or(left, |w| w.min(left));
            if let Err(e) = self.wait_and_serve(wait) {
                warn!("poll failed during shutdown ({e}); closing anyway");
                return false;
            }
            let now = self.clock.now();
            self.client.handle_timeout(now);
            self.flush();
        }
        self.sockets.clear();
        self.listen_port_holder = None;
        true
    }

    /// Starts a bootstrap now (Bootstrap-Request to the Bootstrap-Server account).
    pub fn schedule_bootstrap_request(&mut self) -> Result<(), Error> {
        self.client.schedule_bootstrap_request(self.clock.now())?;
        self.flush();
        Ok(())
    }

    /// Sends a Registration Update to `ssid` (every server when `None`) now.
    pub fn schedule_registration_update(&mut self, ssid: Option<u16>) -> Result<(), Error> {
        self.client
            .schedule_registration_update(self.clock.now(), ssid)?;
        self.flush();
        Ok(())
    }

    /// Announces a changed value to observers ([`Client::notify_changed`]) and sends what
    /// follows. Used by the C API's estuary_notify_changed().
    pub fn notify_changed(&mut self, path: &crate::dm::Path) {
        self.client.notify_changed(self.clock.now(), path);
        self.flush();
    }

    /// The sockets to wait on for reading (poll-style use). Empty before the first
    /// datagram was sent; call again after each [`Driver::run_due`] / [`Driver::serve_fd`]
    /// since connections open and close.
    pub fn sockets(&self) -> Vec<RawFd> {
        self.sockets.values().map(|s| s.as_raw_fd()).collect()
    }

    /// Reads what arrived on `fd` (one of [`Driver::sockets`]) and sends what follows.
    pub fn serve_fd(&mut self, fd: RawFd) -> Result<(), Error> {
        let conn = self
            .sockets
            .iter()
            .find(|(_, s)| s.as_raw_fd() == fd)
            .map(|(c, _)| *c)
            .ok_or_else(|| Error::InvalidArgument(format!("fd {fd} is not an Estuary socket")))?;
        self.serve_conn(conn);
        self.flush();
        Ok(())
    }

    /// How long until [`Driver::run_due`] has work; `None` = nothing scheduled.
    pub fn next_wait(&self) -> Option<Duration> {
        self.client.poll_timeout().map(|t| self.clock.until(t))
    }

    /// Starts the client if needed, runs the timers that are due, sends what they
    /// produced and dispatches events.
    pub fn run_due(&mut self) -> Result<(), Error> {
        self.start()?;
        let now = self.clock.now();
        if self.client.poll_timeout().is_some_and(|t| t <= now.mono) {
            self.client.handle_timeout(now);
        }
        self.flush();
        Ok(())
    }

    /// One `poll(2)` over the wake-up pipe and the sockets, then reads what arrived.
    fn wait_and_serve(&mut self, wait: Duration) -> io::Result<()> {
        let conns: Vec<ConnectionId> = self.sockets.keys().copied().collect();
        let mut fds = Vec::with_capacity(conns.len() + 1);
        fds.push(pollfd(self.wake.read_fd()));
        fds.extend(self.sockets.values().map(|s| pollfd(s.as_raw_fd())));
        udp::poll(&mut fds, wait)?;
        if fds[0].revents != 0 {
            self.wake.drain();
        }
        for (conn, fd) in conns.iter().zip(&fds[1..]) {
            if fd.revents != 0 {
                self.serve_conn(*conn);
            }
        }
        self.flush();
        Ok(())
    }

    /// Feeds the client what is queued on `conn`'s socket.
    fn serve_conn(&mut self, conn: ConnectionId) {
        let now = self.clock.now();
        // The client bounds CoAP messages by in_buffer_size itself (after DTLS, and with a
        // 4.13 for requests); here only what no DTLS record or CoAP message can be is cut.
        let limit = crate::client::max_datagram(self.client.config());
        for _ in 0..MAX_DATAGRAMS_PER_WAKE {
            let Some(sock) = self.sockets.get(&conn) else {
                return;
            };
            match sock.recv(&mut self.in_buf) {
                Ok(n) if n > limit => {
                    self.stats.oversize_dropped += 1;
                    debug!("{conn:?}: dropping a datagram larger than {limit} bytes");
                }
                Ok(n) => {
                    self.stats.datagrams_in += 1;
                    self.client.handle_datagram(now, conn, &self.in_buf[..n]);
                }
                Err(e) if e.kind() == io::ErrorKind::WouldBlock => return,
                Err(e) if e.kind() == io::ErrorKind::Interrupted => {}
                // ICMP port unreachable for an earlier datagram; the exchange layer retries.
                Err(e) if e.kind() == io::ErrorKind::ConnectionRefused => {
                    debug!("{conn:?}: server port unreachable");
                }
                Err(e) => {
                    warn!("{conn:?}: receive failed: {e}");
                    return;
                }
            }
        }
    }

    /// Sends every queued datagram and dispatches every queued event.
    fn flush(&mut self) {
        while let Some(t) = self.client.poll_transmit() {
            self.send(t);
        }
        while let Some(ev) = self.client.poll_event() {
            match &ev {
                Event::ConnectionClosed { conn } => {
                    self.sockets.remove(conn);
                    if self.listen_port_holder == Some(*conn) {
                        self.listen_port_holder = None;
                    }
                }
                Event::RebootRequested => info!("the server asked for a reboot"),
                _ => {}
            }
            if let Some(h) = self.on_event.as_mut() {
                h(&ev);
            }
        }
    }

    fn send(&mut self, t: Transmit) {
        if !self.sockets.contains_key(&t.conn) && !self.open(t.conn) {
            self.stats.send_failures += 1;
            return;
        }
        let Some(sock) = self.sockets.get(&t.conn) else {
            return;
        };
        match sock.send(&t.data) {
            Ok(_) => self.stats.datagrams_out += 1,
            Err(e) => {
                self.stats.send_failures += 1;
                debug!("{:?}: send failed: {e}", t.conn);
            }
        }
    }

    /// Opens the socket of `conn`; logs and returns false when that is impossible.
    fn open(&mut self, conn: ConnectionId) -> bool {
        let Some(uri) = self.client.connection_uri(conn).cloned() else {
            debug!("{conn:?}: datagram for a connection without a server URI");
            return false;
        };
        let port = if self.listen_port != 0 && self.listen_port_holder.is_none() {
            self.listen_port
        } else {
            0
        };
        match udp::connect(&uri, port) {
            Ok(s) => {
                debug!(
                    "{conn:?}: UDP socket {} -> {uri}",
                    s.local_addr().map(|a| a.to_string()).unwrap_or_default()
                );
                if port != 0 {
                    self.listen_port_holder = Some(conn);
                }
                self.sockets.insert(conn, s);
                true
            }
            Err(e) => {
                warn!("cannot open a UDP socket to {uri}: {e}");
                false
            }
        }
    }
}

fn pollfd(fd: RawFd) -> libc::pollfd {
    libc::pollfd {
        fd,
        events: libc::POLLIN,
        revents: 0,
    }
}
