//! Device-management operations end to end on the simulator: Read at every level with
//! Accept negotiation, Write replace and partial update (atomic), Execute with arguments,
//! Create, Delete, Discover with attributes, Write-Attributes, the Security object's 4.01
//! and the Server object (lifetime → Update, Disable → de-register and come back).

mod dm_fixture;

use std::time::Duration;

use dm_fixture::*;
use estuary::coap::content_format as cf;
use estuary::dm::tlv::{self, Tlv, TlvType};
use estuary::dm::Value;
use estuary::Event;
use estuary_testserver::lwm2m_server::{OpMethod, OpRequest};
use estuary_testserver::ServerEvent;

fn tlv_resources(items: &[(u16, Value)]) -> Vec<u8> {
    tlv::encode(
        &items
            .iter()
            .map(|(r, v)| Tlv::value(TlvType::Resource, *r, v))
            .collect::<Vec<_>>(),
    )
}

#[test]
fn read_at_every_level_with_accept_negotiation() {
    let (mut sim, _state) = setup(1);
    let r = op(&mut sim, get("/3303/0/5700", None));
    assert_eq!(
        (r.code.as_str(), r.content_format),
        ("2.05", Some(cf::TEXT_PLAIN))
    );
    assert_eq!(r.payload, b"21.5");

    let r = op(&mut sim, get("/3303/0/5900/1", None));
    assert_eq!(
        (r.code.as_str(), r.payload.as_slice()),
        ("2.05", &b"40"[..])
    );

    let r = op(&mut sim, get("/3303/0", None));
    assert_eq!(r.content_format, Some(cf::LWM2M_TLV));
    let items = tlv::decode(&r.payload).unwrap();
    assert_eq!(
        items.iter().map(|t| t.id).collect::<Vec<_>>(),
        [5700, 5701, 5900]
    );

    let r = op(&mut sim, get("/3303", None));
    let items = tlv::decode(&r.payload).unwrap();
    assert_eq!(items.len(), 1);
    assert_eq!(items[0].ty, TlvType::ObjectInstance);

    let r = op(&mut sim, get("/3303/0", Some(cf::SENML_JSON)));
    assert_eq!(
        (r.code.as_str(), r.content_format),
        ("2.05", Some(cf::SENML_JSON))
    );
    let text = String::from_utf8(r.payload).unwrap();
    assert!(text.contains("21.5") && text.contains("Cel"), "{text}");

    assert_eq!(op(&mut sim, get("/3303/0/5700", Some(9999))).code, "4.06");
    assert_eq!(
        op(&mut sim, get("/3303/0", Some(cf::TEXT_PLAIN))).code,
        "4.06"
    );
    assert_eq!(op(&mut sim, get("/3303/0/5605", None)).code, "4.05");
    assert_eq!(op(&mut sim, get("/3303/7", None)).code, "4.04");
    assert_eq!(op(&mut sim, get("/3303/0/5900/9", None)).code, "4.04");
    // The Security object is never shown to a management server.
    assert_eq!(op(&mut sim, get("/0/0", None)).code, "4.01");
    assert_eq!(op(&mut sim, get("/0", Some(cf::LINK_FORMAT))).code, "4.01");
    assert_eq!(
        op(
            &mut sim,
            body(OpMethod::Put, "/0/0/0", cf::TEXT_PLAIN, b"coap://x")
        )
        .code,
        "4.01"
    );
}

#[test]
fn write_replace_and_partial_update() {
    let (mut sim, state) = setup(2);
    let r = op(
        &mut sim,
        body(OpMethod::Put, "/3303/0/5701", cf::TEXT_PLAIN, b"Far"),
    );
    assert_eq!(r.code, "2.04");
    assert_eq!(state.lock().unwrap().instances[&0].units, "Far");

    // Partial update: only 5750 and one resource instance of 5900 change.
    let payload = tlv::encode(&[
        Tlv::value(TlvType::Resource, 5750, &Value::String("room".into())),
        Tlv::parent(
            TlvType::MultipleResource,
            5900,
            vec![Tlv::value(
                TlvType::ResourceInstance,
                1,
                &Value::Integer(35),
            )],
        ),
    ]);
    let r = op(
        &mut sim,
        body(OpMethod::Post, "/3303/0", cf::LWM2M_TLV, &payload),
    );
    assert_eq!(r.code, "2.04");
    {
        let st = state.lock().unwrap();
        let t = &st.instances[&0];
        assert_eq!(t.units, "Far");
        assert_eq!(t.app_type.as_deref(), Some("room"));
        assert_eq!(t.limits, [(0, -10), (1, 35)]);
    }

    // PUT on a resource instance merges into the multiple resource.
    let r = op(
        &mut sim,
        body(OpMethod::Put, "/3303/0/5900/2", cf::TEXT_PLAIN, b"99"),
    );
    assert_eq!(r.code, "2.04");
    assert_eq!(
        state.lock().unwrap().instances[&0].limits,
        [(0, -10), (1, 35), (2, 99)]
    );

    // Replace: what the request leaves out is gone.
    let payload = tlv_resources(&[(5701, Value::String("K".into()))]);
    let r = op(
        &mut sim,
        body(OpMethod::Put, "/3303/0", cf::LWM2M_TLV, &payload),
    );
    assert_eq!(r.code, "2.04");
    {
        let st = state.lock().unwrap();
        let t = &st.instances[&0];
        assert_eq!((t.units.as_str(), t.app_type.as_deref()), ("K", None));
        assert!(t.limits.is_empty());
    }

    // SenML JSON writes go through the content codecs.
    let senml = br#"[{"bn":"/3303/0/","n":"5701","vs":"Cel"}]"#;
    let r = op(
        &mut sim,
        body(OpMethod::Post, "/3303/0", cf::SENML_JSON, senml),
    );
    assert_eq!(r.code, "2.04");
    assert_eq!(state.lock().unwrap().instances[&0].units, "Cel");

    // Errors: unsupported format, malformed bodies, read-only and missing resources.
    let bad = [
        (body(OpMethod::Put, "/3303/0/5701", 9999, b"x"), "4.15"),
        (
            body(OpMethod::Put, "/3303/0", cf::LWM2M_TLV, &[0xC8, 0x01]),
            "4.00",
        ),
        (
            body(OpMethod::Put, "/3303/0/5701", cf::OCTET_STREAM, b"x"),
            "4.00",
        ),
        (
            body(OpMethod::Put, "/3303/0/5900/0", cf::TEXT_PLAIN, b"ten"),
            "4.00",
        ),
        (
            body(OpMethod::Put, "/3303/0/5700", cf::TEXT_PLAIN, b"1.0"),
            "4.05",
        ),
        (
            body(OpMethod::Put, "/3303/0/5555", cf::TEXT_PLAIN, b"1"),
            "4.04",
        ),
        (
            body(OpMethod::Put, "/3303/4/5701", cf::TEXT_PLAIN, b"1"),
            "4.04",
        ),
        (body(OpMethod::Put, "/3303", cf::LWM2M_TLV, b""), "4.05"),
    ];
    for (req, code) in bad {
        let path = req.path.clone();
        assert_eq!(op(&mut sim, req).code, code, "{path}");
    }
    assert_eq!(state.lock().unwrap().instances[&0].units, "Cel");
}

#[test]
fn failed_writes_leave_the_object_unchanged() {
    let (mut sim, state) = setup(3);
    let before = state.lock().unwrap().instances[&0].clone();
    // 5750 would be written before 5701 fails with the handler's own 4.03.
    let payload = tlv_resources(&[
        (5701, Value::String("bad".into())),
        (5750, Value::String("new".into())),
    ]);
    let r = op(
        &mut sim,
        body(OpMethod::Post, "/3303/0", cf::LWM2M_TLV, &payload),
    );
    assert_eq!(r.code, "4.03");
    assert_eq!(state.lock().unwrap().instances[&0], before);
    assert_eq!(state.lock().unwrap().rollbacks, 1);

    // Replace that fails half-way: the reset and the writes before the failure are undone.
    let payload = tlv_resources(&[
        (5750, Value::String("new".into())),
        (5701, Value::String("bad".into())),
    ]);
    let r = op(
        &mut sim,
        body(OpMethod::Put, "/3303/0", cf::LWM2M_TLV, &payload),
    );
    assert_eq!(r.code, "4.03");
    assert_eq!(state.lock().unwrap().instances[&0], before);

    // A read-only resource in a partial update refuses the whole request before any write.
    let payload = tlv_resources(&[
        (5750, Value::String("new".into())),
        (5700, Value::Float(1.0)),
    ]);
    let r = op(
        &mut sim,
        body(OpMethod::Post, "/3303/0", cf::LWM2M_TLV, &payload),
    );
    assert_eq!(r.code, "4.05");
    assert_eq!(state.lock().unwrap().instances[&0], before);
}

#[test]
fn execute_with_arguments() {
    let (mut sim, state) = setup(4);
    let exec = |args: &[u8]| body(OpMethod::Post, "/3303/0/5605", cf::TEXT_PLAIN, args);
    assert_eq!(op(&mut sim, exec(b"")).code, "2.04");
    assert_eq!(op(&mut sim, exec(b"0='reset all',1")).code, "2.04");
    for bad in [&b"x"[..], b"0=", b"0='open", b"1,", b"12"] {
        assert_eq!(op(&mut sim, exec(bad)).code, "4.00", "{bad:?}");
    }
    assert_eq!(
        state.lock().unwrap().executed,
        [b"".to_vec(), b"0='reset all',1".to_vec()]
    );
    assert_eq!(
        op(
            &mut sim,
            body(OpMethod::Post, "/3303/0/5701", cf::TEXT_PLAIN, b"")
        )
        .code,
        "4.05"
    );
    // Reboot on the Device object.
    op(
        &mut sim,
        body(OpMethod::Post, "/3/0/4", cf::TEXT_PLAIN, b""),
    );
    assert!(sim
        .client_events()
        .iter()
        .any(|e| e.event == Event::RebootRequested));
}

#[test]
fn create_and_delete_instances() {
    let (mut sim, state) = setup(5);
    // With the instance ID in an object-instance TLV.
    let payload = tlv::encode(&[Tlv::parent(
        TlvType::ObjectInstance,
        5,
        vec![Tlv::value(
            TlvType::Resource,
            5701,
            &Value::String("K".into()),
        )],
    )]);
    let r = op(
        &mut sim,
        body(OpMethod::Post, "/3303", cf::LWM2M_TLV, &payload),
    );
    assert_eq!(r.code, "2.01");
    assert_eq!(state.lock().unwrap().instances[&5].units, "K");
    // Without: the lowest free ID.
    let payload = tlv_resources(&[(5750, Value::String("x".into()))]);
    let r = op(
        &mut sim,
        body(OpMethod::Post, "/3303", cf::LWM2M_TLV, &payload),
    );
    assert_eq!(r.code, "2.01");
    assert_eq!(
        state.lock().unwrap().instances[&1].app_type.as_deref(),
        Some("x")
    );
    // An existing ID, a failing handler, and an object that cannot create.
    let payload = tlv::encode(&[Tlv::parent(TlvType::ObjectInstance, 5, vec![])]);
    assert_eq!(
        op(
            &mut sim,
            body(OpMethod::Post, "/3303", cf::LWM2M_TLV, &payload)
        )
        .code,
        "4.00"
    );
    let payload = tlv::encode(&[Tlv::parent(
        TlvType::ObjectInstance,
        9,
        vec![Tlv::value(
            TlvType::Resource,
            5701,
            &Value::String("bad".into()),
        )],
    )]);
    assert_eq!(
        op(
            &mut sim,
            body(OpMethod::Post, "/3303", cf::LWM2M_TLV, &payload)
        )
        .code,
        "4.03"
    );
    assert!(!state.lock().unwrap().instances.contains_key(&9));
    assert_eq!(
        op(&mut sim, body(OpMethod::Post, "/3", cf::LWM2M_TLV, b"")).code,
        "4.05"
    );
    // The new instances are announced in the next Update.
    sim.run_for(Duration::from_secs(1));
    let reg = sim.server().registration(EP).unwrap();
    assert!(
        reg.objects.iter().any(|o| o == "/3303/5"),
        "{:?}",
        reg.objects
    );

    let del = |p: &str| OpRequest {
        method: OpMethod::Delete,
        ..OpRequest::get(p)
    };
    assert_eq!(op(&mut sim, del("/3303/5")).code, "2.02");
    assert_eq!(op(&mut sim, del("/3303/5")).code, "4.04");
    assert_eq!(op(&mut sim, del("/3303")).code, "4.05");
    assert_eq!(op(&mut sim, del("/3/0")).code, "4.05");
    assert_eq!(
        state
            .lock()
            .unwrap()
            .instances
            .keys()
            .copied()
            .collect::<Vec<_>>(),
        [0, 1]
    );
}

#[test]
fn discover_and_write_attributes() {
    let (mut sim, _state) = setup(6);
    assert_eq!(op(&mut sim, attrs("/3303", &["pmax=60"])).code, "2.04");
    assert_eq!(
        op(
            &mut sim,
            attrs("/3303/0/5700", &["pmin=5", "gt=30", "lt=10"])
        )
        .code,
        "2.04"
    );
    let r = op(&mut sim, get("/3303/0", Some(cf::LINK_FORMAT)));
    assert_eq!(
        (r.code.as_str(), r.content_format),
        ("2.05", Some(cf::LINK_FORMAT))
    );
    let text = String::from_utf8(r.payload).unwrap();
    assert_eq!(
        text,
        "</3303/0>,</3303/0/5700>;pmin=5;gt=30;lt=10,</3303/0/5701>,</3303/0/5605>,\
         </3303/0/5750>,</3303/0/5900>;dim=2"
    );
    let r = op(&mut sim, get("/3303", Some(cf::LINK_FORMAT)));
    let text = String::from_utf8(r.payload).unwrap();
    assert!(text.starts_with("</3303>;pmax=60,</3303/0>,"), "{text}");
    let r = op(&mut sim, get("/3303/0/5900", Some(cf::LINK_FORMAT)));
    assert_eq!(
        String::from_utf8(r.payload).unwrap(),
        "</3303/0/5900>;dim=2,</3303/0/5900/0>,</3303/0/5900/1>"
    );
    // Refused: value conditions on a string, inconsistent values, unknown names and paths.
    for (path, q) in [
        ("/3303/0/5701", &["gt=1"][..]),
        ("/3303/0/5700", &["lt=40"][..]),
        ("/3303/0/5700", &["pmin=x"][..]),
        ("/3303/0/5700", &["color=red"][..]),
    ] {
        assert_eq!(op(&mut sim, attrs(path, q)).code, "4.00", "{path} {q:?}");
    }
    assert_eq!(op(&mut sim, attrs("/3303/8", &["pmin=1"])).code, "4.04");
    // The refused writes changed nothing.
    let r = op(&mut sim, get("/3303/0/5700", Some(cf::LINK_FORMAT)));
    assert_eq!(
        String::from_utf8(r.payload).unwrap(),
        "</3303/0/5700>;pmin=5;gt=30;lt=10"
    );
}

#[test]
fn server_object_lifetime_and_disable() {
    let (mut sim, _state) = setup(7);
    sim.take_server_events();
    let r = op(
        &mut sim,
        body(OpMethod::Put, "/1/0/1", cf::TEXT_PLAIN, b"120"),
    );
    assert_eq!(r.code, "2.04");
    sim.run_for(Duration::from_secs(2));
    assert_eq!(sim.server().registration(EP).unwrap().lifetime, 120);
    assert!(sim
        .server_events()
        .iter()
        .any(|e| matches!(&e.event, ServerEvent::Updated { .. })));
    assert_eq!(op(&mut sim, get("/1/0/1", None)).payload, b"120");
    assert_eq!(
        op(
            &mut sim,
            body(OpMethod::Put, "/1/0/1", cf::TEXT_PLAIN, b"0")
        )
        .code,
        "4.00"
    );
    assert_eq!(
        op(
            &mut sim,
            body(OpMethod::Put, "/1/0/0", cf::TEXT_PLAIN, b"5")
        )
        .code,
        "4.05"
    );

    // Disable for 20 s: de-register at once, register again after the timeout.
    assert_eq!(
        op(
            &mut sim,
            body(OpMethod::Put, "/1/0/5", cf::TEXT_PLAIN, b"20")
        )
        .code,
        "2.04"
    );
    sim.take_server_events();
    let t0 = sim.now().mono;
    assert_eq!(
        op(
            &mut sim,
            body(OpMethod::Post, "/1/0/4", cf::TEXT_PLAIN, b"")
        )
        .code,
        "2.04"
    );
    assert!(sim.run_until(
        |s| s.server().registration(EP).is_none(),
        Duration::from_secs(5)
    ));
    assert!(!sim.client().is_registered());
    assert!(sim.run_until(|s| s.client().is_registered(), Duration::from_secs(60)));
    let back = sim.now().mono.saturating_duration_since(t0);
    assert!(
        back >= Duration::from_secs(20) && back < Duration::from_secs(22),
        "re-registered after {back:?}"
    );
    let kinds: Vec<&str> = sim
        .server_events()
        .iter()
        .filter_map(|e| match &e.event {
            ServerEvent::Deregistered { .. } => Some("dereg"),
            ServerEvent::Registered { .. } => Some("reg"),
            _ => None,
        })
        .collect();
    assert_eq!(kinds, ["dereg", "reg"]);
}
