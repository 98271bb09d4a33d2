//! Observe on the simulator's virtual clock: pmin/pmax timing, gt/lt/st crossing rules,
//! cancellation by RST and by GET with Observe=1, object and instance observations, the
//! Server object's default periods and confirmable notifications.

mod dm_fixture;

use std::time::Duration;

use dm_fixture::*;
use estuary::coap::{self, code, content_format as cf, CoapOption, MessageType, Packet};
use estuary::dm::Path;
use estuary::time::Instant;
use estuary_testserver::lwm2m_server::{OpId, OpMethod, OpRequest};
use estuary_testserver::sim::{Direction, LinkConfig, Sim, SimConfig};
use estuary_testserver::ServerEvent;

const VALUE: &str = "/3303/0/5700";

fn observe(sim: &mut Sim, path: &str) -> OpId {
    let now = sim.now();
    let req = OpRequest {
        observe: Some(0),
        ..OpRequest::get(path)
    };
    let id = sim.server_mut().request(now, EP, req).unwrap();
    let r = sim
        .run_until_op(id, Duration::from_secs(10))
        .unwrap()
        .unwrap();
    assert_eq!(r.code, "2.05");
    id
}

/// Notifications of `op` so far: (time since `t0` in ms, payload).
fn notifications(sim: &Sim, op: OpId, t0: Instant) -> Vec<(u64, Vec<u8>)> {
    sim.server_events()
        .iter()
        .filter_map(|e| match &e.event {
            ServerEvent::Notification { op: o, result, .. } if *o == op => Some((
                e.at.saturating_duration_since(t0).as_millis() as u64,
                result.payload.clone(),
            )),
            _ => None,
        })
        .collect()
}

fn set_value(sim: &mut Sim, state: &Shared, iid: u16, v: f64) {
    state.lock().unwrap().instances.get_mut(&iid).unwrap().value = v;
    let now = sim.now();
    sim.client_mut()
        .notify_changed(now, &Path::resource(TEMP, iid, 5700));
}

fn secs(v: &[(u64, Vec<u8>)]) -> Vec<u64> {
    // Notifications arrive one link latency after the whole second they were sent at.
    v.iter().map(|(ms, _)| ms / 1000).collect()
}

#[test]
fn pmin_batches_changes_and_pmax_repeats_an_unchanged_value() {
    let (mut sim, state) = setup(11);
    assert_eq!(
        op(&mut sim, attrs(VALUE, &["pmin=5", "pmax=30"])).code,
        "2.04"
    );
    let t0 = sim.now().mono;
    let id = observe(&mut sim, VALUE);
    // Changing every second for 20 s: one notification every 5 s.
    for s in 1..=20 {
        sim.run_for(Duration::from_secs(1));
        assert!(sim.now().mono.saturating_duration_since(t0) >= Duration::from_secs(s));
        set_value(&mut sim, &state, 0, 20.0 + s as f64);
    }
    sim.run_for(Duration::from_millis(500));
    let n = notifications(&sim, id, t0);
    assert_eq!(secs(&n), [5, 10, 15, 20], "{n:?}");
    // Each carries the value current when pmin ran out (the change at 20 s came just after).
    assert_eq!(n[3].1, b"39.0");
    // The last change goes out at 25 s; unchanged from then on: every 30 s (pmax).
    sim.run_for(Duration::from_secs(61));
    let n = notifications(&sim, id, t0);
    assert_eq!(secs(&n), [5, 10, 15, 20, 25, 55], "{n:?}");
    assert_eq!(n[4].1, b"40.0");
    assert_eq!(n[5].1, b"40.0");
    assert_eq!(sim.client().observation_count(1), 1);
}

#[test]
fn gt_lt_and_st_only_notify_on_crossing_or_step() {
    let (mut sim, state) = setup(12);
    assert_eq!(
        op(&mut sim, attrs(VALUE, &["gt=30", "lt=10", "st=5"])).code,
        "2.04"
    );
    let t0 = sim.now().mono;
    let id = observe(&mut sim, VALUE); // value 21.5
                                       // (value, expected to notify)
    let steps = [
        (25.0, false), // inside the band, moved 3.5
        (31.0, true),  // crossed gt upwards
        (34.0, false), // still above, moved 3
        (29.0, true),  // crossed gt downwards
        (12.0, true),  // moved 17 >= st
        (9.0, true),   // crossed lt
        (9.5, false),
    ];
    let mut expected = 0;
    for (v, notify) in steps {
        set_value(&mut sim, &state, 0, v);
        sim.run_for(Duration::from_secs(1));
        expected += usize::from(notify);
        let n = notifications(&sim, id, t0);
        assert_eq!(n.len(), expected, "after {v}: {n:?}");
        if notify {
            assert_eq!(n.last().unwrap().1, format!("{v:.1}").into_bytes());
        }
    }
}

#[test]
fn reset_cancels_non_and_con_notifications() {
    for confirmable in [false, true] {
        let (mut sim, state) = setup(13);
        sim.client_mut().set_confirmable_notifications(confirmable);
        let t0 = sim.now().mono;
        let id = observe(&mut sim, VALUE);
        set_value(&mut sim, &state, 0, 1.0);
        sim.run_for(Duration::from_secs(1));
        assert_eq!(notifications(&sim, id, t0).len(), 1);
        // The notification went out as CON or NON as configured.
        let last_up = sim
            .delivered(Direction::ClientToServer)
            .filter_map(|c| Packet::from_bytes(&c.data).ok())
            .filter(|p| p.payload == b"1.0")
            .last()
            .unwrap();
        let want = if confirmable {
            MessageType::Confirmable
        } else {
            MessageType::NonConfirmable
        };
        assert_eq!(last_up.header.get_type(), want);

        let now = sim.now();
        sim.server_mut().cancel_observation(now, EP, id).unwrap();
        set_value(&mut sim, &state, 0, 2.0);
        sim.run_for(Duration::from_secs(1));
        // The server answered with RST and the client dropped the observation.
        assert_eq!(
            sim.client().observation_count(1),
            0,
            "confirmable={confirmable}"
        );
        assert!(sim
            .delivered(Direction::ServerToClient)
            .filter_map(|c| Packet::from_bytes(&c.data).ok())
            .any(|p| p.header.get_type() == MessageType::Reset));
        set_value(&mut sim, &state, 0, 3.0);
        sim.run_for(Duration::from_secs(5));
        assert_eq!(notifications(&sim, id, t0).len(), 1);
    }
}

#[test]
fn get_with_observe_1_cancels() {
    let (mut sim, state) = setup(14);
    let t0 = sim.now().mono;
    let id = observe(&mut sim, VALUE);
    assert_eq!(sim.client().observation_count(1), 1);
    // The deregistering GET must carry the observation's token: the client matches on it.
    // The test server sends a fresh token, so this GET leaves the observation alone...
    let r = op(
        &mut sim,
        OpRequest {
            observe: Some(1),
            ..OpRequest::get(VALUE)
        },
    );
    assert_eq!(
        (r.code.as_str(), r.payload.as_slice()),
        ("2.05", &b"21.5"[..])
    );
    assert_eq!(sim.client().observation_count(1), 1);
    set_value(&mut sim, &state, 0, 5.0);
    sim.run_for(Duration::from_secs(1));
    assert_eq!(notifications(&sim, id, t0).len(), 1);

    // ...while a GET with Observe=1 and the observation's token ends it (RFC 7641 §3.6).
    let token = sim
        .delivered(Direction::ServerToClient)
        .filter_map(|c| Packet::from_bytes(&c.data).ok())
        .find(|p| coap::uint_option(p, CoapOption::Observe) == Some(0))
        .map(|p| p.get_token().to_vec())
        .unwrap();
    let mut get = coap::new_request(code::GET, VALUE);
    coap::set_uint_option(&mut get, CoapOption::Observe, 1);
    get.header.set_type(MessageType::Confirmable);
    get.header.message_id = 0x7A7A;
    get.set_token(token.clone());
    sim.inject(Direction::ServerToClient, &get.to_bytes().unwrap());
    sim.run_for(Duration::from_secs(1));
    assert_eq!(sim.client().observation_count(1), 0);
    let answer = sim
        .delivered(Direction::ClientToServer)
        .filter_map(|c| Packet::from_bytes(&c.data).ok())
        .find(|p| p.header.message_id == 0x7A7A)
        .unwrap();
    assert_eq!(coap::raw_code(&answer), code::CONTENT);
    assert_eq!(coap::uint_option(&answer, CoapOption::Observe), None);
    set_value(&mut sim, &state, 0, 6.0);
    sim.run_for(Duration::from_secs(2));
    assert_eq!(notifications(&sim, id, t0).len(), 1);
}

#[test]
fn instance_and_object_observations_follow_changes_below() {
    let (mut sim, state) = setup(15);
    let t0 = sim.now().mono;
    let inst = observe(&mut sim, "/3303/0");
    let obj = observe(&mut sim, "/3303");
    set_value(&mut sim, &state, 0, 30.0);
    sim.run_for(Duration::from_secs(1));
    assert_eq!(notifications(&sim, inst, t0).len(), 1);
    assert_eq!(notifications(&sim, obj, t0).len(), 1);
    // A server Write is a change too.
    let r = op(
        &mut sim,
        body(OpMethod::Put, "/3303/0/5701", cf::TEXT_PLAIN, b"K"),
    );
    assert_eq!(r.code, "2.04");
    sim.run_for(Duration::from_secs(1));
    assert_eq!(notifications(&sim, inst, t0).len(), 2);
    // Deleting the instance ends the instance observation with 4.04.
    let del = OpRequest {
        method: OpMethod::Delete,
        ..OpRequest::get("/3303/0")
    };
    assert_eq!(op(&mut sim, del).code, "2.02");
    sim.run_for(Duration::from_secs(1));
    assert_eq!(sim.client().observation_count(1), 1);
    assert!(sim.server().observations().iter().all(|(o, _)| *o != inst));
}

#[test]
fn server_default_periods_apply_without_attributes() {
    let (mut sim, state) = setup(16);
    for (p, v) in [("/1/0/2", b"3"), ("/1/0/3", b"9")] {
        assert_eq!(
            op(&mut sim, body(OpMethod::Put, p, cf::TEXT_PLAIN, v)).code,
            "2.04"
        );
    }
    let t0 = sim.now().mono;
    let id = observe(&mut sim, VALUE);
    set_value(&mut sim, &state, 0, 1.0);
    sim.run_for(Duration::from_secs(10));
    // The change waits for pmin (3 s); then pmax (9 s) repeats it.
    assert_eq!(secs(&notifications(&sim, id, t0)), [3]);
    sim.run_for(Duration::from_secs(10));
    assert_eq!(secs(&notifications(&sim, id, t0)), [3, 12]);
    // Attributes override the defaults (a pmax below the default pmin would be ignored).
    assert_eq!(
        op(&mut sim, attrs(VALUE, &["pmin=1", "pmax=2"])).code,
        "2.04"
    );
    let before = notifications(&sim, id, t0).len();
    sim.run_for(Duration::from_secs(10));
    let after = notifications(&sim, id, t0).len();
    assert!((4..=6).contains(&(after - before)), "{before} → {after}");
}

#[test]
fn confirmable_notifications_survive_a_lossy_link_without_duplicates() {
    let link = LinkConfig::clean()
        .with_latency(Duration::from_millis(20))
        .with_loss(0.2)
        .with_duplication(0.2);
    let (mut sim, state) = setup_with(SimConfig::new(17).with_link(link));
    sim.client_mut().set_confirmable_notifications(true);
    let t0 = sim.now().mono;
    let now = sim.now();
    let req = OpRequest {
        observe: Some(0),
        ..OpRequest::get(VALUE)
    };
    let id = sim.server_mut().request(now, EP, req).unwrap();
    assert!(sim
        .run_until_op(id, Duration::from_secs(120))
        .unwrap()
        .is_ok());
    let changes = 20;
    for k in 1..=changes {
        set_value(&mut sim, &state, 0, f64::from(k));
        sim.run_for(Duration::from_secs(60));
    }
    let n = notifications(&sim, id, t0);
    let observes: Vec<u32> = sim
        .server_events()
        .iter()
        .filter_map(|e| match &e.event {
            ServerEvent::Notification { op, observe, .. } if *op == id => Some(*observe),
            _ => None,
        })
        .collect();
    // Every change arrives once (retransmitted as needed, copies dropped), in order.
    assert_eq!(n.len(), changes as usize, "{n:?}");
    assert!(observes.windows(2).all(|w| w[0] < w[1]), "{observes:?}");
    assert_eq!(n.last().unwrap().1, b"20.0");
    assert_eq!(sim.client().observation_count(1), 1);
    // The link did lose and copy datagrams in both directions.
    let (up, down) = (
        sim.stats(Direction::ClientToServer),
        sim.stats(Direction::ServerToClient),
    );
    assert!(
        up.lost > 0 && down.lost > 0 && up.duplicated > 0,
        "{up:?} {down:?}"
    );
}
