//! Persistence across a "reboot" (SPEC 5): a client bootstraps and enrolls, is persisted at
//! day 3, and a fresh client restored from that snapshot registers with its EST certificate
//! at once (no Bootstrap-Request), keeps the management server's attributes, and re-enrolls
//! at the originally scheduled time. Also: the EST state cannot be persisted while an EST
//! exchange (/crts, /sen, /sren) is in flight.

mod common;
use common::rig::*;

use estuary::persist::{snapshot, Part, PersistError, Snapshot};
use estuary_testserver::lwm2m_server::{OpMethod, OpRequest};

const DAY: u64 = 86_400;

fn thirty_day_rig() -> Rig {
    // A one-day registration lifetime keeps Updates out of the way.
    rig_with_lifetime(
        Setup::PskToEst,
        Duration::from_secs(30 * DAY),
        ReenrollConfig::default(),
        DAY as u32,
    )
}

fn write_attributes(r: &mut Rig, path: &str, query: &[&str]) {
    let mut req = OpRequest::get(path);
    req.method = OpMethod::Put;
    req.query = query.iter().map(|s| s.to_string()).collect();
    r.lw.request(r.now, EP, req).unwrap();
    let before = r.lw_events.len();
    r.run_until(r.elapsed() + Duration::from_secs(30), |r| {
        r.lw_events[before..]
            .iter()
            .any(|(_, e)| matches!(e, ServerEvent::OpFinished { .. }))
    });
    let done = r.lw_events[before..].iter().find_map(|(_, e)| match e {
        ServerEvent::OpFinished { result, .. } => Some(result.clone()),
        _ => None,
    });
    assert!(matches!(done, Some(Ok(_))), "Write-Attributes: {done:?}");
}

#[test]
fn restored_client_registers_without_bootstrap_and_reenrolls_on_the_original_schedule() {
    let mut r = thirty_day_rig();
    start(&mut r);
    r.run_until(Duration::from_secs(120), Rig::registered);
    assert!(r.registered(), "{:?}", r.events);
    write_attributes(&mut r, "/3/0", &["pmin=10", "pmax=600"]);
    write_attributes(&mut r, "/3/0/9", &["gt=50"]);
    assert_eq!(r.client.attribute_storage().count(), 1);

    // Day 3: persist everything, note the schedule, and "reboot".
    r.run_until(Duration::from_secs(3 * DAY), |_| false);
    assert!(!r.client.est_in_progress());
    let due = r.client.next_reenrollment().expect("scheduled");
    let provisioned = r.client.est_state().provisioned_at.unwrap();
    let bytes = Snapshot::encode(&r.client).unwrap();
    assert_eq!(r.bootstrap_requests(), 1);
    let (regs_before, est_before) = (r.registrations(), r.est_events().len());

    let mut cfg = ClientConfig::new(EP);
    cfg.est_reenroll = ReenrollConfig::default();
    let mut fresh = Client::new(cfg, Box::new(SeededRng::new(1234))).unwrap();
    Snapshot::restore(&mut fresh, &bytes).unwrap();
    assert_eq!(Snapshot::encode(&fresh).unwrap(), bytes, "restored exactly");
    assert_eq!(fresh.next_reenrollment(), Some(due));
    r.client = fresh;
    let restarted_at = r.elapsed();
    start(&mut r);
    r.run_until(restarted_at + Duration::from_secs(120), |r| {
        r.registrations() > regs_before
    });
    assert_eq!(r.registrations(), regs_before + 1, "{:?}", r.events);
    assert_eq!(
        r.bootstrap_requests(),
        1,
        "no Bootstrap-Request after restore"
    );
    assert_eq!(r.est_events().len(), est_before, "no EST exchange at start");
    // The DTLS session that carried the Register authenticated with the EST certificate
    // (mode 4 has no other credential), and the attributes survived.
    assert!(r.events.iter().any(|(t, e)| *t >= restarted_at
        && matches!(e, Event::SecureConnectionEstablished { ssid: 7, .. })));
    let cert = r.client.est_state().certificate.clone().unwrap();
    let auth = r
        .lw_side
        .listener
        .as_ref()
        .unwrap()
        .peer_auth(client_addr(ConnectionId(7)));
    assert!(
        matches!(&auth, Some(estuary_testserver::coaps::PeerAuth::Certificate { subject, not_after })
            if subject.contains("CN=dev1") && *not_after == cert.not_after().unix_seconds()),
        "the management server saw {auth:?}"
    );
    assert_eq!(r.client.attribute_storage().count(), 1);

    // Re-enrollment at the originally scheduled moment (27 days after provisioning).
    let due_at = Duration::from_millis((due.unix_millis() - EPOCH.unix_millis()) as u64);
    assert_eq!(
        due.unix_millis() - provisioned.unix_millis(),
        27 * DAY as i64 * 1000
    );
    r.run_until(due_at + Duration::from_secs(60), |_| false);
    let sren: Vec<_> = r
        .est_events()
        .into_iter()
        .skip(est_before)
        .filter(|e| matches!(e, EstEvent::Enrolled { reenroll: true, .. }))
        .collect();
    assert_eq!(sren.len(), 1, "{:?}", r.est_events());
    let renewed = r.client.est_state().provisioned_at.unwrap();
    let late = renewed.unix_millis() - due.unix_millis();
    assert!(
        (0..1000).contains(&late),
        "re-enrolled {late} ms after the schedule"
    );
    assert_eq!(r.bootstrap_requests(), 1);
    eprintln!(
        "restored at day 3, registered without bootstrap, /sren {late} ms after the schedule \
         (day {:.3})",
        due_at.as_secs_f64() / DAY as f64
    );
}

fn collect(r: &mut Rig) {
    let t = r.elapsed();
    while let Some(e) = r.client.poll_event() {
        r.events.push((t, e));
    }
    while let Some(e) = r.bs.poll_event() {
        r.bs_events.push((t, e));
    }
    while let Some(e) = r.lw.poll_event() {
        r.lw_events.push((t, e));
    }
}

/// As `Rig::pump`, but checks `stop` before each datagram reaches the client and returns
/// true, leaving the rest queued, as soon as it holds: a server's answer can be held back
/// while the exchange it answers is in flight.
fn pump_until(r: &mut Rig, stop: &dyn Fn(&Rig) -> bool) -> bool {
    loop {
        let mut moved = false;
        while let Some(t) = r.client.poll_transmit() {
            moved = true;
            let from = client_addr(t.conn);
            let (side, bootstrap) = if t.conn == ConnectionId::BOOTSTRAP {
                (&mut r.bs_side, true)
            } else {
                (&mut r.lw_side, false)
            };
            for d in side.inbound(r.now, from, &t.data) {
                if bootstrap {
                    if let Some(auth) = r
                        .bs_side
                        .listener
                        .as_ref()
                        .and_then(|l| l.est_peer_auth(from))
                    {
                        r.bs.set_peer_auth(from, auth);
                    }
                    r.bs.handle_datagram(r.now, from, &d);
                } else {
                    r.lw.handle_datagram(r.now, from, &d);
                }
            }
        }
        while let Some((peer, d)) = r.bs.poll_transmit() {
            moved = true;
            r.bs_side.listener.as_mut().unwrap().send(r.now, peer, &d);
        }
        while let Some((peer, d)) = r.lw.poll_transmit() {
            moved = true;
            r.lw_side.listener.as_mut().unwrap().send(r.now, peer, &d);
        }
        collect(r);
        loop {
            if stop(r) {
                return true;
            }
            let bs = r.bs_side.listener.as_mut().unwrap().poll_transmit();
            let next = match bs {
                Some((_, d)) => Some((ConnectionId::BOOTSTRAP, d)),
                None => r
                    .lw_side
                    .listener
                    .as_mut()
                    .unwrap()
                    .poll_transmit()
                    .map(|(peer, d)| (conn_of(peer), d)),
            };
            let Some((conn, d)) = next else { break };
            moved = true;
            r.client.handle_datagram(r.now, conn, &d);
            collect(r);
        }
        if !moved {
            return false;
        }
    }
}

/// Runs the virtual clock (as `Rig::run_until`) until `stop` holds, checked before every
/// datagram the client would receive; panics if it never does before `limit`.
fn run_until_in_flight(r: &mut Rig, limit: Duration, stop: impl Fn(&Rig) -> bool) {
    while r.elapsed() < limit {
        if pump_until(r, &stop) {
            return;
        }
        let next = [
            r.client.poll_timeout(),
            r.bs.poll_timeout(),
            r.lw.poll_timeout(),
            r.bs_side.listener.as_ref().and_then(|l| l.poll_timeout()),
            r.lw_side.listener.as_ref().and_then(|l| l.poll_timeout()),
        ]
        .into_iter()
        .flatten()
        .min()
        .map_or(r.start + limit, |n| n.min(r.start + limit))
        .max(r.now.mono + Duration::from_millis(1));
        r.now = r.now.advanced(next.saturating_duration_since(r.now.mono));
        r.client.handle_timeout(r.now);
        r.bs.handle_timeout(r.now);
        r.lw.handle_timeout(r.now);
        for l in [&mut r.bs_side.listener, &mut r.lw_side.listener]
            .into_iter()
            .flatten()
        {
            l.handle_timeout(r.now);
        }
    }
    panic!("not reached by {limit:?}; events {:?}", r.events);
}

fn assert_not_persistable(r: &Rig, what: &str) {
    assert!(r.client.est_in_progress(), "{what}: EST in flight");
    assert_eq!(
        snapshot::persist_part(&r.client, Part::Est),
        Err(PersistError::EstBusy),
        "{what}"
    );
    assert_eq!(
        Snapshot::encode(&r.client),
        Err(PersistError::EstBusy),
        "{what}"
    );
    // The other parts can still be written.
    for part in [Part::Security, Part::Server, Part::Attributes] {
        assert!(snapshot::persist_part(&r.client, part).is_ok(), "{what}");
    }
}

fn enrolled_events(r: &Rig, reenroll: bool) -> usize {
    r.est_events()
        .iter()
        .filter(|e| matches!(e, EstEvent::Enrolled { reenroll: x, .. } if x == &reenroll))
        .count()
}

#[test]
fn est_state_cannot_be_persisted_during_any_est_exchange() {
    let mut r = thirty_day_rig();
    start(&mut r);
    // /est/crts: the EST CA has answered, the answer has not reached the client yet.
    run_until_in_flight(&mut r, Duration::from_secs(120), |r| {
        r.est_events()
            .iter()
            .any(|e| matches!(e, EstEvent::CaCerts { .. }))
            && r.client.est_state().cacerts.is_empty()
    });
    assert_not_persistable(&r, "/est/crts");
    // /est/sen: issued by the CA, not yet installed.
    run_until_in_flight(&mut r, Duration::from_secs(120), |r| {
        enrolled_events(r, false) == 1 && !r.client.est_state().is_enrolled()
    });
    assert_not_persistable(&r, "/est/sen");
    r.run_until(Duration::from_secs(600), Rig::registered);
    assert!(r.registered());
    assert!(!r.client.est_in_progress());
    let enrolled = Snapshot::encode(&r.client).unwrap();

    // /est/sren at day 27: renewed by the CA, not yet installed.
    let provisioned = r.client.est_state().provisioned_at;
    let due = r.client.next_reenrollment().unwrap();
    let due_at = Duration::from_millis((due.unix_millis() - EPOCH.unix_millis()) as u64);
    run_until_in_flight(&mut r, due_at + Duration::from_secs(60), |r| {
        enrolled_events(r, true) == 1 && r.client.est_state().provisioned_at == provisioned
    });
    assert!(r.elapsed() >= due_at);
    assert_not_persistable(&r, "/est/sren");
    r.run_until(due_at + Duration::from_secs(120), |r| {
        !r.client.est_in_progress()
    });
    assert_ne!(r.client.est_state().provisioned_at, provisioned);
    let renewed = Snapshot::encode(&r.client).unwrap();
    assert_ne!(
        renewed, enrolled,
        "the renewed state persists once the exchange ended"
    );
}
