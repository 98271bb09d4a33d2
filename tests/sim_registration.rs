//! Registration flows through the simulator (`estuary_testserver::sim`): Register over clean
//! and lossy links, Update before expiry, duplicate suppression, De-register on shutdown and
//! Reads through the server. Every check is on an observable outcome: the server's table,
//! events with their virtual times, and the datagrams on the wire.
//!
//! `lifetime_counts_from_the_*` and `update_lands_before_expiry_lifetime_60_lossy` fail
//! until `ServerSession` counts a lifetime from when Register/Update was sent rather than
//! from when its answer arrived (see those tests' comment).

use std::sync::atomic::{AtomicUsize, Ordering};
use std::sync::Arc;
use std::time::Duration;

use estuary::coap::{self, code, content_format, MessageType, Packet, TxParams};
use estuary::dm::tlv::{self, TlvBody, TlvType};
use estuary::dm::{DmError, Object, Operations, ResourceDef, ResourceValue, Value, ValueKind};
use estuary::time::Instant;
use estuary::Event;
use estuary_testserver::sim::{Direction, LinkConfig, Sim, SimConfig, Timed};
use estuary_testserver::ServerEvent;

const UP: Direction = Direction::ClientToServer;
const DOWN: Direction = Direction::ServerToClient;
const EP: &str = "sim-client";

/// The client's first registration retry comes this long after a failed attempt and the wait
/// doubles per further failure (the default Communication Retry Timer, /1/x/18).
const RETRY_BASE: Duration = Duration::from_secs(60);

/// 30 % loss each way, 10 % duplication, 30 % of datagrams delayed by up to 2.5 s (longer
/// than the first retransmission timeout, so originals and retransmissions cross).
fn lossy_30() -> LinkConfig {
    LinkConfig::clean()
        .with_latency(Duration::from_millis(20))
        .with_loss(0.3)
        .with_duplication(0.1)
        .with_reordering(0.3, Duration::from_millis(2500))
}

fn parse(d: &[u8]) -> Packet {
    Packet::from_bytes(d).expect("the cores only send well-formed CoAP")
}

fn started(cfg: SimConfig) -> Sim {
    let mut sim = Sim::new(cfg);
    sim.start().expect("client starts");
    sim
}

fn registered(cfg: SimConfig) -> Sim {
    let mut sim = started(cfg);
    assert!(sim.run_until_registered(Duration::from_secs(600)));
    sim
}

/// The server's Registered / Updated / Expired / Deregistered events for `EP`, with times.
fn registration_events(sim: &Sim) -> Vec<Timed<ServerEvent>> {
    sim.server_events()
        .iter()
        .filter(|e| match &e.event {
            ServerEvent::Registered { endpoint, .. }
            | ServerEvent::Updated { endpoint }
            | ServerEvent::Expired { endpoint }
            | ServerEvent::Deregistered { endpoint } => endpoint == EP,
            ServerEvent::OpFinished { .. }
            | ServerEvent::Notification { .. }
            | ServerEvent::RegisterRefused { .. } => false,
        })
        .cloned()
        .collect()
}

// ---- 1. Registration over clean and lossy links ----------------------------------------

struct RegistrationFigures {
    time: Duration,
    attempts: usize,
    client_datagrams: usize,
}

/// Registers and checks the server's table, the client's events and the datagram counts.
fn check_registration(seed: u64, link: LinkConfig, bound: Duration) -> RegistrationFigures {
    let lifetime = 300;
    let mut sim = started(SimConfig::new(seed).with_link(link).with_lifetime(lifetime));
    assert!(
        sim.run_until_registered(bound),
        "seed {seed}: not registered within {bound:?}"
    );
    let time = sim.elapsed();

    // The server's table: right lifetime, objects listed, never the Security object.
    let reg = sim
        .server()
        .registration(EP)
        .unwrap_or_else(|| panic!("seed {seed}: server has no registration"))
        .clone();
    assert_eq!(reg.lifetime, lifetime as u32, "seed {seed}");
    assert_eq!(reg.lwm2m_version, "1.1");
    assert_eq!(reg.peer, sim.client_addr());
    for must in ["/1/0", "/3/0"] {
        assert!(reg.objects.iter().any(|o| o == must), "{:?}", reg.objects);
    }
    assert!(
        reg.objects
            .iter()
            .all(|o| o != "/0" && !o.starts_with("/0/")),
        "seed {seed}: Security object advertised: {:?}",
        reg.objects
    );
    let location = sim.client_events().iter().find_map(|e| match &e.event {
        Event::Registered { location, .. } => Some(location.clone()),
        _ => None,
    });
    assert_eq!(
        location.as_deref(),
        Some(reg.location.as_str()),
        "seed {seed}"
    );

    // Everything the client sent was a Register; per Register exchange (one message ID)
    // RFC 7252 allows at most MAX_RETRANSMIT + 1 transmissions.
    let max_tx = TxParams::default().max_transmissions() as usize;
    let mut per_mid: std::collections::BTreeMap<u16, usize> = Default::default();
    for c in sim.sent(UP) {
        let p = parse(&c.data);
        assert_eq!(p.header.get_type(), MessageType::Confirmable);
        assert_eq!(coap::raw_code(&p), code::POST);
        assert_eq!(coap::uri_path(&p).unwrap(), vec!["rd"]);
        *per_mid.entry(p.header.message_id).or_default() += 1;
    }
    let attempts = per_mid.len();
    let client_datagrams = sim.stats(UP).sent as usize;
    assert!(
        per_mid.values().all(|n| *n <= max_tx),
        "seed {seed}: {per_mid:?}"
    );
    assert!(client_datagrams <= max_tx * attempts);
    // Every failed attempt was reported once, and only failed ones.
    let failures = sim
        .client_events()
        .iter()
        .filter(|e| matches!(e.event, Event::RegistrationFailed { .. }))
        .count();
    assert_eq!(failures, attempts - 1, "seed {seed}");
    // The server only answers: one piggybacked ACK per Register copy it received at most.
    for c in sim.sent(DOWN) {
        assert_eq!(
            parse(&c.data).header.get_type(),
            MessageType::Acknowledgement
        );
    }
    assert!(sim.stats(DOWN).sent <= sim.stats(UP).delivered);
    RegistrationFigures {
        time,
        attempts,
        client_datagrams,
    }
}

#[test]
fn registration_completes_over_a_clean_link_for_50_seeds() {
    for seed in 0..50 {
        let f = check_registration(seed, LinkConfig::clean(), Duration::from_secs(1));
        // One Register, one response, one round trip of 2 × 10 ms.
        assert_eq!(f.attempts, 1);
        assert_eq!(f.client_datagrams, 1);
        assert_eq!(f.time, Duration::from_millis(20));
    }
}

#[test]
fn registration_completes_over_30_percent_loss_for_50_seeds() {
    // The bound. One transmission of Register gets its answer back with probability
    // ≥ 0.7 × 0.7 = 0.49 (duplication only helps), so a Register exchange (5 transmissions)
    // fails with probability ≤ 0.51^5 ≈ 3.5 %, and needing more than 4 attempts has
    // probability ≈ 1.5e-6 per seed. We therefore allow 4 attempts: three that fail, each
    // after at most MAX_TRANSMIT_WAIT (93 s), separated by the back-off 60 s, 120 s, 240 s,
    // then one that succeeds at the latest with its last transmission, MAX_TRANSMIT_SPAN
    // (45 s) after it started, plus one round trip at the worst link delay:
    //   3 × 93 + (60 + 120 + 240) + 45 + 2 × 2.52 ≈ 749 s.
    let p = TxParams::default();
    let link = lossy_30();
    let backoff = RETRY_BASE + RETRY_BASE * 2 + RETRY_BASE * 4;
    let bound =
        p.max_transmit_wait() * 3 + backoff + p.max_transmit_span() + link.max_one_way_delay() * 2;
    let mut worst = Duration::ZERO;
    let mut most_attempts = 0;
    let mut most_datagrams = 0;
    let mut retried = 0;
    for seed in 0..50 {
        let f = check_registration(seed, link.clone(), bound);
        assert!(f.attempts <= 4, "seed {seed}: {} attempts", f.attempts);
        assert!(f.client_datagrams <= 4 * p.max_transmissions() as usize);
        worst = worst.max(f.time);
        most_attempts = most_attempts.max(f.attempts);
        most_datagrams = most_datagrams.max(f.client_datagrams);
        retried += usize::from(f.attempts > 1);
    }
    eprintln!(
        "lossy registration over 50 seeds: worst {worst:?} (bound {bound:?}), \
         most attempts {most_attempts}, most client datagrams {most_datagrams}, \
         seeds needing a retry {retried}"
    );
}

// ---- 2. Update before expiry ------------------------------------------------------------

/// 10 % loss each way, 5 % duplication, 20 % delayed by up to 1 s.
///
/// Why gentler than the 30 % of the registration test: an Update is sent MAX_TRANSMIT_WAIT
/// (93 s) before expiry for long lifetimes but only lifetime / 2 = 30 s before it for a 60 s
/// lifetime, while its fifth transmission leaves up to MAX_TRANSMIT_SPAN = 45 s after the
/// first. So with lifetime 60 an Update whose first four requests are all lost lands late
/// whatever the client does (probability loss^4: 0.8 % per Update at 30 %, 1e-4 at 10 %),
/// and one whose five round trips all fail lapses the registration (excused below). At 10 %
/// neither happens in these seeds; anything that does fail here is the client's timing.
fn lossy_10() -> LinkConfig {
    LinkConfig::clean()
        .with_latency(Duration::from_millis(20))
        .with_loss(0.1)
        .with_duplication(0.05)
        .with_reordering(0.2, Duration::from_secs(1))
}

struct UpdateFigures {
    updates: usize,
    /// The smallest time left before the server-side expiry when an Update arrived.
    min_slack: Duration,
    /// Update exchanges that failed because every transmission or its answer was lost.
    exhausted: usize,
}

/// Times at which the client gave up an Update after its last transmission: the one case in
/// which the registration may lapse (the link lost MAX_RETRANSMIT + 1 round trips in a row).
fn exhausted_updates(sim: &Sim, seed: u64) -> Vec<Instant> {
    let max_tx = TxParams::default().max_transmissions() as usize;
    let fails: Vec<Instant> = sim
        .client_events()
        .iter()
        .filter(|e| {
            matches!(&e.event, Event::RegistrationFailed { reason, .. } if reason.starts_with("Update"))
        })
        .map(|e| e.at)
        .collect();
    for at in &fails {
        // The Update given up on is the last one sent before the failure; it must have been
        // sent max_transmissions times.
        let updates: Vec<(Instant, u16)> = sim
            .sent(UP)
            .filter(|c| c.at <= *at)
            .map(|c| (c.at, parse(&c.data)))
            .filter(|(_, p)| coap::uri_path(p).is_some_and(|path| path.len() == 2))
            .map(|(t, p)| (t, p.header.message_id))
            .collect();
        let last_mid = updates.last().expect("an Update was sent").1;
        let n = updates.iter().filter(|(_, m)| *m == last_mid).count();
        assert_eq!(
            n, max_tx,
            "seed {seed}: Update given up after {n} transmissions"
        );
    }
    fails
}

/// Runs `lifetimes` lifetimes after registering and checks every Update against the
/// deadline the server holds: the previous Register/Update arrival plus the lifetime.
/// A lapse (Expired, or a new Register) is accepted only after an Update whose every
/// transmission went unanswered, as no client can keep a registration over such a link.
fn check_updates(seed: u64, lifetime: u32, lifetimes: u32, link: LinkConfig) -> UpdateFigures {
    let mut sim = registered(
        SimConfig::new(seed)
            .with_link(link)
            .with_lifetime(i64::from(lifetime)),
    );
    let lt = Duration::from_secs(u64::from(lifetime));
    sim.run_for(lt * lifetimes);
    let exhausted = exhausted_updates(&sim, seed);
    let excused = |since: Instant| exhausted.iter().any(|t| *t > since);
    let mut prev: Option<Instant> = None;
    let mut updates = 0;
    let mut min_slack = lt;
    for e in registration_events(&sim) {
        match &e.event {
            ServerEvent::Registered { lifetime: l, .. } => {
                assert_eq!(*l, lifetime);
                if let Some(p) = prev {
                    assert!(excused(p), "seed {seed}: registered again at {:?}", e.at);
                }
                prev = Some(e.at);
            }
            ServerEvent::Updated { .. } => {
                let p = prev.expect("Update after Register");
                let deadline = p + lt;
                assert!(
                    e.at < deadline,
                    "seed {seed} lifetime {lifetime}: Update arrived at +{:?}, deadline +{:?}",
                    sim.since_start(e.at),
                    sim.since_start(deadline)
                );
                min_slack = min_slack.min(deadline.saturating_duration_since(e.at));
                updates += 1;
                prev = Some(e.at);
            }
            ServerEvent::Expired { .. } => {
                let p = prev.expect("Expired after Register");
                assert!(
                    excused(p),
                    "seed {seed} lifetime {lifetime}: registration expired at +{:?} \
                     though no Update was lost entirely",
                    sim.since_start(e.at)
                );
            }
            other => panic!("seed {seed} lifetime {lifetime}: unexpected {other:?}"),
        }
    }
    // Still registered at the end (unless the last exchange was lost entirely), and Updates
    // really happened.
    let last = prev.expect("registered");
    assert!(sim.now().mono < last + lt || excused(last), "seed {seed}");
    assert!(
        (updates + exhausted.len()) as u32 >= lifetimes - 1,
        "seed {seed}: {updates} updates"
    );
    UpdateFigures {
        updates,
        min_slack,
        exhausted: exhausted.len(),
    }
}

fn check_updates_over_seeds(lifetime: u32, lifetimes: u32, link: LinkConfig, seeds: u64) {
    let mut min_slack = Duration::MAX;
    let mut total = 0;
    let mut exhausted = 0;
    for seed in 0..seeds {
        let f = check_updates(seed, lifetime, lifetimes, link.clone());
        min_slack = min_slack.min(f.min_slack);
        total += f.updates;
        exhausted += f.exhausted;
    }
    eprintln!(
        "lifetime {lifetime}s × {lifetimes}, {seeds} seeds: {total} Updates, \
         smallest slack before expiry {min_slack:?}, Updates lost entirely {exhausted}"
    );
}

#[test]
fn update_lands_before_expiry_lifetime_60_clean() {
    check_updates_over_seeds(60, 20, LinkConfig::clean(), 10);
}

#[test]
fn update_lands_before_expiry_lifetime_86400_clean() {
    check_updates_over_seeds(86400, 4, LinkConfig::clean(), 10);
}

#[test]
fn update_lands_before_expiry_lifetime_60_lossy() {
    check_updates_over_seeds(60, 20, lossy_10(), 20);
}

#[test]
fn update_lands_before_expiry_lifetime_86400_lossy() {
    check_updates_over_seeds(86400, 4, lossy_10(), 20);
}

/// The server starts a lifetime when it *receives* Register or Update. When the answer is lost
/// and only a later retransmission is answered (from the server's duplicate cache), the
/// client learns of success up to MAX_TRANSMIT_SPAN after the server started counting; so the
/// client must count the lifetime from when it *sent* the request, the latest moment that is
/// certainly no later than the server's start.
///
/// Here the link loses the answers to the first four transmissions of one exchange (every
/// request arrives; the server answers the retransmissions from its cache), then the run goes
/// on for a few lifetimes on a clean link.
fn lifetime_counts_from_the_request(drop_answers_of: &str) {
    let lifetime = 60;
    let lt = Duration::from_secs(lifetime);
    let mut sim = Sim::new(SimConfig::new(5).with_lifetime(lifetime as i64));
    let answers = TxParams::default().max_retransmit as usize;
    let first_update = drop_answers_of == "Update";
    if !first_update {
        sim.drop_next(DOWN, answers);
    }
    sim.start().unwrap();
    assert!(sim.run_until_registered(Duration::from_secs(60)));
    if first_update {
        sim.drop_next(DOWN, answers);
    }
    sim.run_for(lt * 4);
    let mut prev = None;
    for e in registration_events(&sim) {
        match e.event {
            ServerEvent::Registered { .. } if prev.is_none() => prev = Some(e.at),
            ServerEvent::Updated { .. } => {
                let deadline = prev.expect("registered") + lt;
                assert!(
                    e.at < deadline,
                    "answers to the first {answers} {drop_answers_of} transmissions lost: \
                     the next Update arrived at +{:?}, after the server's expiry at +{:?}",
                    sim.since_start(e.at),
                    sim.since_start(deadline)
                );
                prev = Some(e.at);
            }
            ServerEvent::Expired { .. } => panic!(
                "answers to the first {answers} {drop_answers_of} transmissions lost: the \
                 server's registration expired at +{:?} before the next Update arrived",
                sim.since_start(e.at)
            ),
            other => panic!("{drop_answers_of}: unexpected {other:?}"),
        }
    }
    assert!(sim.stats(DOWN).filtered as usize == answers);
}

#[test]
fn lifetime_counts_from_the_register_request_not_its_late_answer() {
    lifetime_counts_from_the_request("Register");
}

#[test]
fn lifetime_counts_from_the_update_request_not_its_late_answer() {
    lifetime_counts_from_the_request("Update");
}

// ---- 3. A duplicated request runs once and is answered twice --------------------------

/// A vendor object whose single resource counts how often it was read.
struct ReadCounter {
    reads: Arc<AtomicUsize>,
}

const COUNTER_OID: u16 = 33000;

impl Object for ReadCounter {
    fn oid(&self) -> u16 {
        COUNTER_OID
    }

    fn instances(&self) -> Vec<u16> {
        vec![0]
    }

    fn resources(&self, iid: u16) -> Result<Vec<ResourceDef>, DmError> {
        match iid {
            0 => Ok(vec![ResourceDef::single(
                0,
                ValueKind::Integer,
                Operations::Read,
            )]),
            _ => Err(DmError::NotFound),
        }
    }

    fn read(&self, iid: u16, rid: u16) -> Result<ResourceValue, DmError> {
        if (iid, rid) != (0, 0) {
            return Err(DmError::NotFound);
        }
        let n = self.reads.fetch_add(1, Ordering::SeqCst) + 1;
        Ok(ResourceValue::Single(Value::Integer(n as i64)))
    }
}

#[test]
fn duplicated_request_runs_once_and_is_answered_twice_identically() {
    // The copy arrives together with the original, after the answer went out, and a minute
    // later (well within EXCHANGE_LIFETIME, so the duplicate cache still holds the answer).
    for gap in [
        Duration::ZERO,
        Duration::from_millis(500),
        Duration::from_secs(60),
    ] {
        let reads = Arc::new(AtomicUsize::new(0));
        let mut sim = Sim::new(SimConfig::new(11));
        sim.client_mut()
            .register_object(Box::new(ReadCounter {
                reads: reads.clone(),
            }))
            .unwrap();
        sim.start().unwrap();
        assert!(sim.run_until_registered(Duration::from_secs(10)));
        let objects = &sim.server().registration(EP).unwrap().objects;
        assert!(objects.iter().any(|o| o == "/33000/0"), "{objects:?}");
        let events_before = sim.client_events().len();

        sim.clear_capture();
        sim.duplicate_next(DOWN, gap);
        let op = sim.read("/33000/0/0", None).unwrap();
        let result = sim.run_until_op(op, Duration::from_secs(10));
        sim.run_for(gap + Duration::from_secs(1));

        let result = result.expect("Read finished").expect("Read answered");
        assert_eq!(result.code, "2.05");
        assert_eq!(result.payload, b"1");
        assert_eq!(reads.load(Ordering::SeqCst), 1, "gap {gap:?}: read twice");

        let requests: Vec<_> = sim.delivered(DOWN).map(|c| c.data.clone()).collect();
        assert_eq!(requests.len(), 2);
        assert_eq!(requests[0], requests[1]);
        let req = parse(&requests[0]);
        let answers: Vec<_> = sim.sent(UP).map(|c| c.data.clone()).collect();
        assert_eq!(answers.len(), 2, "gap {gap:?}");
        assert_eq!(answers[0], answers[1], "gap {gap:?}: answers differ");
        let ans = parse(&answers[0]);
        assert_eq!(ans.header.get_type(), MessageType::Acknowledgement);
        assert_eq!(ans.header.message_id, req.header.message_id);
        assert_eq!(ans.get_token(), req.get_token());
        assert_eq!(coap::raw_code(&ans), code::CONTENT);
        assert_eq!(ans.payload, b"1");

        // The server saw one result; the client reported nothing.
        let finished = sim
            .server_events()
            .iter()
            .filter(|e| matches!(e.event, ServerEvent::OpFinished { .. }))
            .count();
        assert_eq!(finished, 1);
        assert_eq!(sim.client_events().len(), events_before);
    }
}

// ---- 4. De-register on shutdown ----------------------------------------------------------

/// Shuts the client down and checks what the server and the wire show; returns how many
/// De-register transmissions the client made and whether the server got one.
fn check_shutdown(seed: u64, link: LinkConfig) -> (usize, bool) {
    let mut sim = registered(SimConfig::new(seed).with_link(link.clone()));
    let location = sim.server().registration(EP).unwrap().location.clone();
    sim.clear_capture();
    sim.shutdown_client();
    let p = TxParams::default();
    // Answered, or given up after the last transmission's wait.
    let limit = p.max_transmit_wait() + link.max_one_way_delay() * 2;
    assert!(
        sim.run_until(|s| s.client().is_shut_down(), limit),
        "seed {seed}: not shut down within {limit:?}"
    );
    let mut deletes = std::collections::BTreeSet::new();
    let mut sent = 0;
    for c in sim.sent(UP) {
        let pk = parse(&c.data);
        assert_eq!(coap::raw_code(&pk), code::DELETE);
        assert_eq!(pk.header.get_type(), MessageType::Confirmable);
        assert_eq!(
            format!("/{}", coap::uri_path(&pk).unwrap().join("/")),
            location
        );
        deletes.insert(pk.header.message_id);
        sent += 1;
    }
    assert_eq!(deletes.len(), 1, "seed {seed}: one De-register exchange");
    assert!(sent <= p.max_transmissions() as usize);
    assert!(sim
        .client_events()
        .iter()
        .any(|e| e.event == Event::Deregistered { ssid: 1 }));
    // Let any late copies arrive, then check the server's table.
    sim.run_for(link.max_one_way_delay() * 2);
    let deregistered = sim
        .server_events()
        .iter()
        .any(|e| matches!(&e.event, ServerEvent::Deregistered { endpoint } if endpoint == EP));
    if deregistered {
        assert!(sim.server().registration(EP).is_none());
    } else {
        // Only possible when every transmission of the De-register was lost.
        assert_eq!(
            sent,
            p.max_transmissions() as usize,
            "seed {seed}: server kept the registration"
        );
    }
    // A shut-down client sends nothing more, ever.
    let before = sim.stats(UP).sent;
    sim.run_for(Duration::from_secs(3 * 86400));
    assert_eq!(sim.stats(UP).sent, before);
    (sent, deregistered)
}

#[test]
fn deregisters_on_shutdown_over_a_clean_link() {
    for seed in 0..10 {
        assert_eq!(check_shutdown(seed, LinkConfig::clean()), (1, true));
    }
}

#[test]
fn deregisters_on_shutdown_over_a_lossy_link() {
    let mut most = 0;
    let mut kept = 0;
    for seed in 0..30 {
        let (sent, deregistered) = check_shutdown(seed, lossy_30());
        most = most.max(sent);
        kept += usize::from(!deregistered);
    }
    eprintln!(
        "lossy shutdown over 30 seeds: at most {most} De-register transmissions, \
         {kept} seeds where every one was lost"
    );
}

// ---- 5. Reads through the server ---------------------------------------------------------

#[test]
fn reads_through_the_server() {
    let mut sim = Sim::new(SimConfig::new(21));
    {
        let dev = &mut sim.client_mut().data_model_mut().device;
        dev.manufacturer = "Estuary Labs".into();
        dev.model_number = "E1".into();
        dev.serial_number = "SN-0001".into();
        dev.firmware_version = "0.1.0".into();
    }
    sim.start().unwrap();
    assert!(sim.run_until_registered(Duration::from_secs(10)));
    let mut read = |path: &str, accept: Option<u16>| {
        let op = sim.read(path, accept).unwrap();
        sim.run_until_op(op, Duration::from_secs(10))
            .expect("Read finished")
            .expect("Read answered")
    };

    for accept in [None, Some(content_format::TEXT_PLAIN)] {
        let r = read("/3/0/0", accept);
        assert_eq!(r.code, "2.05");
        assert_eq!(r.content_format, Some(content_format::TEXT_PLAIN));
        assert_eq!(r.payload, b"Estuary Labs");
    }

    let r = read("/3/0", Some(content_format::LWM2M_TLV));
    assert_eq!(r.code, "2.05");
    assert_eq!(r.content_format, Some(content_format::LWM2M_TLV));
    let items = tlv::decode(&r.payload).expect("TLV decodes");
    let string = |id: u16| {
        items
            .iter()
            .find(|t| t.id == id && t.ty == TlvType::Resource)
            .map(|t| t.body.clone())
    };
    for (id, want) in [
        (0, "Estuary Labs"),
        (1, "E1"),
        (2, "SN-0001"),
        (3, "0.1.0"),
        (16, "U"),
    ] {
        assert_eq!(string(id), Some(TlvBody::Value(want.as_bytes().to_vec())));
    }
    let error_codes = items
        .iter()
        .find(|t| t.id == 11)
        .expect("Error Code present");
    assert_eq!(error_codes.ty, TlvType::MultipleResource);
    let TlvBody::Children(ci) = &error_codes.body else {
        panic!("Error Code is a multiple resource")
    };
    assert_eq!(ci.len(), 1);
    assert_eq!(
        tlv::decode_value(
            ValueKind::Integer,
            match &ci[0].body {
                TlvBody::Value(v) => v,
                TlvBody::Children(_) => panic!("resource instance has a value"),
            }
        ),
        Ok(Value::Integer(0))
    );
    // Reboot (4) is executable and never read.
    assert!(items.iter().all(|t| t.id != 4));
    let ids: Vec<u16> = items.iter().map(|t| t.id).collect();
    assert_eq!(ids, vec![0, 1, 2, 3, 11, 16]);

    for missing in ["/3/0/99", "/3/7", "/3/7/0", "/4242", "/4242/0/0"] {
        assert_eq!(read(missing, None).code, "4.04", "{missing}");
    }
    for secret in ["/0", "/0/0", "/0/0/0"] {
        let r = read(secret, None);
        assert_eq!(r.code, "4.01", "{secret}");
        assert!(r.payload.is_empty());
    }
}
