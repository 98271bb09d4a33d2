//! Bad input from the network (SPEC §10): a registered client is fed thousands of seeded
//! random datagrams, mutations of real messages and every truncation of real messages, as if
//! they came from its server. Nothing may panic, the registration state must not change, no
//! event may surface, and what the client sends back is limited to what RFC 7252 allows for
//! the input:
//!
//! - input that does not parse as CoAP version 1, is larger than `in_buffer_size`, is an ACK
//!   or RST (no exchange of the client is open), or is a NON empty message: no reaction;
//! - a CON empty message (CoAP ping): exactly one RST with its message ID;
//! - any other CON message: exactly one reaction carrying its message ID, either an ACK with
//!   a response code (a piggybacked answer, 4.xx for garbage, or 2.05 when the garbage
//!   happens to be a valid Read) or an RST (an unmatched response), or the cached reaction
//!   to an earlier message with the same ID (duplicate detection is by message ID);
//! - any other NON message: at most one reaction, a NON response or a cached one.
//!
//! Never a request and never a CON message (no Register, Update or De-register).

use std::time::Duration;

use estuary::coap::{self, code, content_format, MessageClass, MessageType, Packet, TxParams};
use estuary::rng::{RandomSource, SeededRng};
use estuary::{ClientConfig, Event};
use estuary_testserver::sim::{CaptureKind, Direction, Sim, SimConfig};
use estuary_testserver::ServerEvent;

const UP: Direction = Direction::ClientToServer;
const DOWN: Direction = Direction::ServerToClient;
const EP: &str = "sim-client";

/// A registered client, and the real datagrams seen while registering, reading and updating
/// (both directions: the client's own messages make good hostile input too).
fn registered_with_traffic() -> (Sim, Vec<Vec<u8>>) {
    let mut sim = Sim::new(SimConfig::new(99).with_lifetime(300));
    sim.client_mut().data_model_mut().device.manufacturer = "Estuary Labs".into();
    sim.start().unwrap();
    assert!(sim.run_until_registered(Duration::from_secs(10)));
    for (path, accept) in [
        ("/3/0/0", None),
        ("/3/0", Some(content_format::LWM2M_TLV)),
        ("/1/0", None),
        ("/0", None),
        ("/3/0/99", None),
    ] {
        let op = sim.read(path, accept).unwrap();
        assert!(sim.run_until_op(op, Duration::from_secs(10)).is_some());
    }
    // Past the first Update (sent MAX_TRANSMIT_WAIT = 93 s before the 300 s lifetime ends).
    sim.run_for(Duration::from_secs(210));
    let updates = sim
        .server_events()
        .iter()
        .filter(|e| matches!(e.event, ServerEvent::Updated { .. }))
        .count();
    assert_eq!(updates, 1);
    let real: Vec<Vec<u8>> = sim
        .capture()
        .iter()
        .filter(|c| c.kind == CaptureKind::Sent)
        .map(|c| c.data.clone())
        .collect();
    // Register + answer, 5 Reads + answers, Update + answer.
    assert_eq!(real.len(), 14);
    (sim, real)
}

fn random_bytes(rng: &mut SeededRng, max_len: u32) -> Vec<u8> {
    let n = (rng.next_u32() % (max_len + 1)) as usize;
    let mut b = vec![0u8; n];
    rng.fill_bytes(&mut b);
    b
}

/// Random bytes behind a plausible CoAP header: version 1, any type, token length 0..=8, and
/// a code from the ones that lead somewhere (empty, methods, responses) or a random one.
fn coap_shaped(rng: &mut SeededRng) -> Vec<u8> {
    const CODES: [u8; 9] = [0x00, 0x01, 0x02, 0x03, 0x04, 0x44, 0x45, 0x84, 0xA0];
    let ty = (rng.next_u32() % 4) as u8;
    let tkl = (rng.next_u32() % 9) as u8;
    let code = if rng.next_u32() % 4 == 0 {
        rng.next_u32() as u8
    } else {
        CODES[(rng.next_u32() as usize) % CODES.len()]
    };
    let mut b = vec![0x40 | (ty << 4) | tkl, code];
    b.extend(random_bytes(rng, 80));
    b
}

/// A real message with 1 to 4 bytes replaced, sometimes also cut short.
fn mutated(rng: &mut SeededRng, real: &[Vec<u8>]) -> Vec<u8> {
    let mut b = real[(rng.next_u32() as usize) % real.len()].clone();
    for _ in 0..=rng.next_u32() % 4 {
        if b.is_empty() {
            break;
        }
        let i = (rng.next_u32() as usize) % b.len();
        b[i] = rng.next_u32() as u8;
    }
    if rng.next_u32() % 4 == 0 && !b.is_empty() {
        b.truncate((rng.next_u32() as usize) % b.len());
    }
    b
}

/// Checks the client's reaction to one datagram against the rules in the module comment.
fn check_reaction(input: &[u8], out: &[Vec<u8>]) -> Result<(), String> {
    let parsed = Packet::from_bytes(input)
        .ok()
        .filter(|p| p.header.get_version() == 1);
    let Some(p) = parsed else {
        return match out.len() {
            0 => Ok(()),
            n => Err(format!("{n} datagrams in reaction to unparseable input")),
        };
    };
    // Over the in-buffer, only a request gets an answer (4.13 with the Block1 size we take,
    // RFC 7959 §2.9.3, or the cached answer to an earlier copy of it); the rest nothing.
    if input.len() > ClientConfig::DEFAULT_IN_BUFFER_SIZE
        && !matches!(p.header.code, MessageClass::Request(_))
    {
        return match out.len() {
            0 => Ok(()),
            n => Err(format!(
                "{n} datagrams in reaction to an oversized non-request"
            )),
        };
    }
    let mid = p.header.message_id;
    let ty = p.header.get_type();
    let expected = match (ty, p.header.code) {
        (MessageType::Acknowledgement | MessageType::Reset, _) => 0..=0,
        (MessageType::NonConfirmable, MessageClass::Empty) => 0..=0,
        (MessageType::Confirmable, _) => 1..=1,
        (MessageType::NonConfirmable, _) => 0..=1,
    };
    if !expected.contains(&out.len()) {
        return Err(format!(
            "{} datagrams in reaction to {ty:?} {}, expected {expected:?}",
            out.len(),
            code::to_string(coap::raw_code(&p))
        ));
    }
    for d in out {
        let r = Packet::from_bytes(d).map_err(|e| format!("client sent malformed CoAP: {e:?}"))?;
        let rty = r.header.get_type();
        match r.header.code {
            MessageClass::Empty | MessageClass::Response(_) => {}
            other => return Err(format!("client sent {other:?}")),
        }
        match rty {
            MessageType::Confirmable => return Err("client sent a CON message".into()),
            MessageType::Acknowledgement | MessageType::Reset if r.header.message_id != mid => {
                return Err(format!(
                    "{rty:?} with mid {} for input mid {mid}",
                    r.header.message_id
                ))
            }
            _ => {}
        }
        if ty == MessageType::Confirmable
            && p.header.code == MessageClass::Empty
            && rty != MessageType::Reset
        {
            return Err(format!("ping answered with {rty:?}"));
        }
        if rty == MessageType::Reset && r.header.code != MessageClass::Empty {
            return Err("RST with a code".into());
        }
    }
    Ok(())
}

#[test]
fn hostile_datagrams_change_nothing_and_get_only_allowed_answers() {
    let (mut sim, real) = registered_with_traffic();
    let state = sim.client().registration_state(1).cloned();
    assert!(matches!(
        state,
        Some(estuary::lwm2m::RegistrationState::Registered { .. })
    ));
    let location = sim.server().registration(EP).unwrap().location.clone();
    let events_before = sim.client_events().len();
    let t0 = sim.now();

    let mut inputs: Vec<(&str, Vec<u8>)> = Vec::new();
    for m in &real {
        for len in 0..m.len() {
            inputs.push(("truncation", m[..len].to_vec()));
        }
        inputs.push(("real", m.clone()));
        let mut big = m.clone();
        big.resize(ClientConfig::DEFAULT_IN_BUFFER_SIZE + 1, 0xFF);
        inputs.push(("oversized", big));
    }
    let mut rng = SeededRng::new(0xBAD_1D1E);
    for _ in 0..3000 {
        inputs.push(("random", random_bytes(&mut rng, 96)));
        inputs.push(("coap-shaped", coap_shaped(&mut rng)));
        inputs.push(("mutated", mutated(&mut rng, &real)));
    }

    let mut reactions = [0usize; 3];
    let mut answered_2xx = 0;
    for (i, (kind, input)) in inputs.iter().enumerate() {
        let mark = sim.capture().len();
        sim.inject(DOWN, input);
        let out: Vec<Vec<u8>> = sim.capture()[mark..]
            .iter()
            .filter(|c| c.dir == UP && c.kind == CaptureKind::Sent)
            .map(|c| c.data.clone())
            .collect();
        if let Err(e) = check_reaction(input, &out) {
            panic!("input #{i} ({kind}, {input:02x?}): {e}");
        }
        reactions[out.len().min(2)] += 1;
        answered_2xx += out
            .iter()
            .filter(|d| Packet::from_bytes(d).is_ok_and(|r| code::is_success(coap::raw_code(&r))))
            .count();
        // No state change and no event, after every single datagram.
        assert_eq!(
            sim.client().registration_state(1).cloned(),
            state,
            "input #{i} ({kind})"
        );
        assert_eq!(
            sim.client_events().len(),
            events_before,
            "input #{i} ({kind})"
        );
        assert!(sim.client().poll_timeout() >= Some(t0.mono));
    }
    eprintln!(
        "{} hostile datagrams: {} without reaction, {} with one ({} of them 2.xx answers to \
         inputs that were valid requests)",
        inputs.len(),
        reactions[0],
        reactions[1],
        answered_2xx
    );
    assert_eq!(sim.now(), t0, "injection takes no virtual time");
    assert_eq!(reactions[2], 0);

    // The client still works: a Read is answered and the registration carries on through
    // the next Updates with the same location.
    // Garbage "from the server" used message IDs the server will use later, and the client
    // rightly treats a reuse within EXCHANGE_LIFETIME as a duplicate (RFC 7252 §4.5): it would
    // answer the server's next Read from its cache. So the client is checked after that
    // lifetime; its first Update falls inside it and must go through regardless.
    sim.run_for(TxParams::default().exchange_lifetime());
    let op = sim.read("/3/0/0", None).unwrap();
    let r = sim
        .run_until_op(op, Duration::from_secs(10))
        .expect("Read finished")
        .expect("Read answered");
    assert_eq!(
        (r.code.as_str(), r.payload.as_slice()),
        ("2.05", &b"Estuary Labs"[..])
    );
    let updates_before = sim
        .server_events()
        .iter()
        .filter(|e| matches!(e.event, ServerEvent::Updated { .. }))
        .count();
    sim.run_for(Duration::from_secs(600));
    // Nothing but Updates (and the Read's result) on the server since the barrage.
    let server_events: Vec<_> = sim
        .server_events()
        .iter()
        .filter(|e| e.at >= t0.mono)
        .map(|e| &e.event)
        .collect();
    assert!(
        server_events.iter().all(|e| matches!(
            e,
            ServerEvent::Updated { .. } | ServerEvent::OpFinished { .. }
        )),
        "{server_events:?}"
    );
    let updates_after = server_events
        .iter()
        .filter(|e| matches!(e, ServerEvent::Updated { .. }))
        .count();
    assert!(updates_after >= updates_before + 2);
    assert_eq!(sim.server().registration(EP).unwrap().location, location);
    assert!(sim
        .client_events()
        .iter()
        .skip(events_before)
        .all(|e| e.event == Event::RegistrationUpdated { ssid: 1 }));
}
