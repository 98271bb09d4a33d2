//! The client's handling of Bootstrap-Server requests (`estuary::lwm2m::bootstrap_ops`),
//! driven with the test server's own payloads.

use estuary::coap::{self, code, content_format as cf, CoapOption, InboundRequest};
use estuary::dm::objects::{SecurityInstance, SecurityMode, ServerInstance};
use estuary::dm::ops::{self, Requester};
use estuary::dm::{DataModel, Path};
use estuary::lwm2m::bootstrap_ops::{bootstrap_discover, handle_bootstrap_request, BootstrapReply};
use estuary_testserver::bootstrap_server::ProvisionedAccount;

mod dm_fixture;

const BS_URI: &str = "coap://127.0.0.1:5693";

fn req(method: u8, path: &str, format: Option<u16>, payload: &[u8]) -> InboundRequest {
    let mut packet = coap::new_request(method, path);
    if let Some(f) = format {
        coap::set_content_format(&mut packet, f);
    }
    packet.payload = payload.to_vec();
    InboundRequest {
        mid: 1,
        token: vec![1],
        confirmable: true,
        packet,
    }
}

fn send(dm: &mut DataModel, r: InboundRequest) -> BootstrapReply {
    handle_bootstrap_request(dm, &r)
}

fn code_of(r: &BootstrapReply) -> u8 {
    coap::raw_code(&r.response)
}

/// A client holding only its bootstrap account, plus a stale management account.
fn client() -> DataModel {
    let mut dm = DataModel::new();
    let bs = SecurityInstance {
        bootstrap_server: true,
        ssid: None,
        ..SecurityInstance::nosec(BS_URI, 1)
    };
    dm.security.insert(0, bs).unwrap();
    dm.security
        .insert(5, SecurityInstance::nosec("coap://127.0.0.1:6000", 7))
        .unwrap();
    dm.server.insert(3, ServerInstance::new(7, 60)).unwrap();
    dm
}

/// The test server's sequence: Delete "/", Write /0/x, Write /1/y, Finish.
fn provision(dm: &mut DataModel, a: &ProvisionedAccount) -> Vec<u8> {
    let mut codes = vec![code_of(&send(dm, req(code::DELETE, "/", None, &[])))];
    let sec = format!("/0/{}", a.security_iid);
    let srv = format!("/1/{}", a.server_iid);
    codes.push(code_of(&send(
        dm,
        req(code::PUT, &sec, Some(cf::LWM2M_TLV), &a.security_tlv()),
    )));
    codes.push(code_of(&send(
        dm,
        req(code::PUT, &srv, Some(cf::LWM2M_TLV), &a.server_tlv()),
    )));
    let fin = send(dm, req(code::POST, "/bs", None, &[]));
    assert_eq!(fin.finish, Some(code_of(&fin) == code::CHANGED));
    codes.push(code_of(&fin));
    codes
}

fn account(
    uri: &str,
    mode: SecurityMode,
    id: &[u8],
    key: &[u8],
    server: &[u8],
) -> ProvisionedAccount {
    ProvisionedAccount {
        mode,
        identity: id.to_vec(),
        secret_key: key.to_vec(),
        server_public_key: server.to_vec(),
        ..ProvisionedAccount::nosec(uri, 101, 300)
    }
}

const OK_SEQUENCE: [u8; 4] = [code::DELETED, code::CHANGED, code::CHANGED, code::CHANGED];

#[test]
fn test_server_sequence_builds_each_mode() {
    let cases = [
        account("coap://127.0.0.1:5683", SecurityMode::NoSec, b"", b"", b""),
        account(
            "coaps://127.0.0.1:5684",
            SecurityMode::Psk,
            b"dev1",
            b"secret-key",
            b"",
        ),
        account(
            "coaps://127.0.0.1:5684",
            SecurityMode::Certificate,
            b"client-cert-der",
            b"client-key-der",
            b"server-cert-der",
        ),
        account(
            "coaps://127.0.0.1:5684",
            SecurityMode::CertificateWithEst,
            b"",
            b"",
            b"ta",
        ),
    ];
    for a in &cases {
        let mut dm = client();
        assert_eq!(provision(&mut dm, a), OK_SEQUENCE, "{:?}", a.mode);
        let sec = dm.security.get(1).expect("/0/1");
        assert_eq!(sec.server_uri, a.server_uri);
        assert_eq!(sec.security_mode, a.mode);
        assert_eq!(sec.ssid, Some(101));
        assert_eq!(sec.public_cert_or_psk_identity, a.identity);
        assert_eq!(sec.private_cert_or_psk_key, a.secret_key);
        assert_eq!(sec.server_public_key, a.server_public_key);
        let srv = dm.server.get(0).expect("/1/0");
        assert_eq!(
            (srv.ssid, srv.lifetime, srv.binding.as_str()),
            (101, 300, "U")
        );
        // The stale account and its Server instance went with Delete "/".
        assert!(dm.security.get(5).is_none());
        assert_eq!(dm.server.iter().count(), 1);
        assert!(dm.security.get(0).unwrap().bootstrap_server);
    }
}

#[test]
fn delete_keeps_bootstrap_account_and_device() {
    let mut dm = client();
    assert_eq!(
        code_of(&send(&mut dm, req(code::DELETE, "/", None, &[]))),
        code::DELETED
    );
    assert_eq!(
        dm.security.iter().map(|(i, _)| i).collect::<Vec<_>>(),
        vec![0]
    );
    assert_eq!(dm.server.iter().count(), 0);
    assert_eq!(dm.object(3).unwrap().instances(), vec![0]);
    for p in ["/0/0", "/3/0"] {
        assert_eq!(
            code_of(&send(&mut dm, req(code::DELETE, p, None, &[]))),
            code::BAD_REQUEST,
            "{p}"
        );
    }
    assert_eq!(
        code_of(&send(&mut dm, req(code::DELETE, "/1/4", None, &[]))),
        code::NOT_FOUND
    );
    // A path that does not parse is refused rather than read as "/".
    let mut dm = client();
    let mut bad = req(code::DELETE, "/", None, &[]);
    bad.packet.add_option(CoapOption::UriPath, vec![0xff]);
    assert_eq!(code_of(&send(&mut dm, bad)), code::BAD_REQUEST);
    let bad = req(code::DELETE, "/0/x", None, &[]);
    assert_eq!(code_of(&send(&mut dm, bad)), code::BAD_REQUEST);
    assert_eq!(dm.security.iter().count(), 2);
    let mut dm = client();
    assert_eq!(
        code_of(&send(&mut dm, req(code::DELETE, "/0", None, &[]))),
        code::DELETED
    );
    assert_eq!(
        dm.security.iter().map(|(i, _)| i).collect::<Vec<_>>(),
        vec![0]
    );
    assert_eq!(dm.server.iter().count(), 1);
    assert_eq!(
        code_of(&send(&mut dm, req(code::DELETE, "/1/3", None, &[]))),
        code::DELETED
    );
    assert_eq!(dm.server.iter().count(), 0);
}

#[test]
fn inconsistent_configurations_are_refused_at_finish() {
    let nosec = account("coap://127.0.0.1:5683", SecurityMode::NoSec, b"", b"", b"");
    // Security without Server.
    let mut dm = client();
    send(&mut dm, req(code::DELETE, "/", None, &[]));
    send(
        &mut dm,
        req(
            code::PUT,
            "/0/1",
            Some(cf::LWM2M_TLV),
            &nosec.security_tlv(),
        ),
    );
    let fin = send(&mut dm, req(code::POST, "/bs", None, &[]));
    assert_eq!(
        (code_of(&fin), fin.finish),
        (code::NOT_ACCEPTABLE, Some(false))
    );
    // PSK mode without a key.
    let psk = account(
        "coaps://127.0.0.1:5684",
        SecurityMode::Psk,
        b"dev1",
        b"",
        b"",
    );
    let mut dm = client();
    assert_eq!(provision(&mut dm, &psk)[3], code::NOT_ACCEPTABLE);
    // Mode and scheme disagree.
    let bad = account(
        "coap://127.0.0.1:5684",
        SecurityMode::Psk,
        b"dev1",
        b"k",
        b"",
    );
    let mut dm = client();
    assert_eq!(provision(&mut dm, &bad)[3], code::NOT_ACCEPTABLE);
    // Server instance whose SSID no Security instance carries.
    let mut dm = client();
    send(&mut dm, req(code::DELETE, "/0", None, &[]));
    let fin = send(&mut dm, req(code::POST, "/bs", None, &[]));
    assert_eq!(
        (code_of(&fin), fin.finish),
        (code::NOT_ACCEPTABLE, Some(false))
    );
}

/// What a bootstrap server can observe of the data model, plus the Security instances.
fn snapshot(dm: &DataModel) -> (String, Vec<u8>, Vec<(u16, SecurityInstance)>) {
    let disc = bootstrap_discover(dm, &Path::ROOT).unwrap();
    let (_, servers) = ops::read(dm, &Path::object(1), None, Requester::Bootstrap).unwrap();
    let sec = dm.security.iter().map(|(i, s)| (i, s.clone())).collect();
    (disc, servers, sec)
}

#[test]
fn bad_writes_change_nothing() {
    let a = account("coap://127.0.0.1:5683", SecurityMode::NoSec, b"", b"", b"");
    let mut dm = client();
    assert_eq!(provision(&mut dm, &a), OK_SEQUENCE);
    let before = snapshot(&dm);
    let mut truncated = a.security_tlv();
    truncated.truncate(truncated.len() - 1);
    let other = ProvisionedAccount {
        security_iid: 2,
        ..account("coap://127.0.0.1:5685", SecurityMode::NoSec, b"", b"", b"")
    };
    let big = vec![0u8; 70 * 1024];
    let cases: Vec<(&str, Option<u16>, Vec<u8>, u8)> = vec![
        (
            "/0/1/2",
            Some(cf::TEXT_PLAIN),
            b"yes".to_vec(),
            code::BAD_REQUEST,
        ),
        (
            "/0/1/2",
            Some(cf::TEXT_PLAIN),
            b"9".to_vec(),
            code::BAD_REQUEST,
        ),
        (
            "/0/1/1",
            Some(cf::TEXT_PLAIN),
            b"maybe".to_vec(),
            code::BAD_REQUEST,
        ),
        (
            "/1/0/7",
            Some(cf::TEXT_PLAIN),
            b"X".to_vec(),
            code::BAD_REQUEST,
        ),
        (
            "/4242/0",
            Some(cf::LWM2M_TLV),
            a.server_tlv(),
            code::NOT_FOUND,
        ),
        ("/0/1/3", Some(cf::OCTET_STREAM), big, code::BAD_REQUEST),
        (
            "/0/1/0",
            Some(cf::TEXT_PLAIN),
            b"http://x".to_vec(),
            code::BAD_REQUEST,
        ),
        (
            "/0/1/10",
            Some(cf::TEXT_PLAIN),
            b"70000".to_vec(),
            code::BAD_REQUEST,
        ),
        (
            "/0/1/10",
            Some(cf::TEXT_PLAIN),
            b"0".to_vec(),
            code::BAD_REQUEST,
        ),
        (
            "/1/0/0",
            Some(cf::TEXT_PLAIN),
            b"65535".to_vec(),
            code::BAD_REQUEST,
        ),
        ("/0/1", Some(cf::LWM2M_TLV), truncated, code::BAD_REQUEST),
        (
            "/0/1",
            Some(9999),
            a.security_tlv(),
            code::UNSUPPORTED_CONTENT_FORMAT,
        ),
        ("/0/1", None, a.security_tlv(), code::BAD_REQUEST),
        // A second account with the SSID the first one has.
        (
            "/0/2",
            Some(cf::LWM2M_TLV),
            other.security_tlv(),
            code::BAD_REQUEST,
        ),
        (
            "/1/1",
            Some(cf::LWM2M_TLV),
            a.server_tlv(),
            code::BAD_REQUEST,
        ),
        (
            "/0/1",
            Some(cf::SENML_JSON),
            br#"[{"n":"/0/1/10","vs":"x"}]"#.to_vec(),
            code::BAD_REQUEST,
        ),
        (
            "/1/0",
            Some(cf::SENML_JSON),
            br#"[{"n":"/1/0/1","v":60},{"n":"/1/0/6","v":1}]"#.to_vec(),
            code::BAD_REQUEST,
        ),
        // A new Server instance without a lifetime.
        (
            "/1/1/0",
            Some(cf::TEXT_PLAIN),
            b"102".to_vec(),
            code::BAD_REQUEST,
        ),
    ];
    for (path, format, payload, want) in cases {
        let r = send(&mut dm, req(code::PUT, path, format, &payload));
        assert_eq!(code_of(&r), want, "{path}");
        assert!(r.changed.is_empty());
        assert_eq!(snapshot(&dm), before, "{path} left changes behind");
    }
}

#[test]
fn object_level_write_is_all_or_nothing() {
    use estuary::dm::tlv::{self, Tlv, TlvType};
    let a = account("coap://127.0.0.1:5683", SecurityMode::NoSec, b"", b"", b"");
    let mut dm = client();
    send(&mut dm, req(code::DELETE, "/", None, &[]));
    let before = snapshot(&dm);
    let inst =
        |iid, body: Vec<u8>| Tlv::parent(TlvType::ObjectInstance, iid, tlv::decode(&body).unwrap());
    let good = ProvisionedAccount {
        ssid: 102,
        ..a.clone()
    };
    let bad = ProvisionedAccount {
        ssid: 103,
        lifetime: 0,
        ..a.clone()
    };
    let payload = tlv::encode(&[inst(0, a.server_tlv()), inst(1, bad.server_tlv())]);
    let r = send(&mut dm, req(code::PUT, "/1", Some(cf::LWM2M_TLV), &payload));
    assert_eq!(code_of(&r), code::BAD_REQUEST);
    assert_eq!(snapshot(&dm), before);
    let payload = tlv::encode(&[inst(0, a.server_tlv()), inst(1, good.server_tlv())]);
    let r = send(&mut dm, req(code::PUT, "/1", Some(cf::LWM2M_TLV), &payload));
    assert_eq!(code_of(&r), code::CHANGED);
    assert_eq!(r.changed.len(), 8);
    let ssids: Vec<u16> = dm.server.iter().map(|(_, s)| s.ssid).collect();
    assert_eq!(ssids, vec![101, 102]);
    // A partial write to an existing instance keeps the other resources.
    let r = send(
        &mut dm,
        req(code::PUT, "/1/1/1", Some(cf::TEXT_PLAIN), b"900"),
    );
    assert_eq!(code_of(&r), code::CHANGED);
    assert_eq!(r.changed, vec![Path::resource(1, 1, 1)]);
    let s = dm.server.get(1).unwrap();
    assert_eq!((s.ssid, s.lifetime, s.binding.as_str()), (102, 900, "U"));
    // SenML JSON works as well as TLV.
    let senml = br#"[{"bn":"/1/1/","n":"2","v":5},{"n":"7","vs":"UQ"}]"#;
    let r = send(&mut dm, req(code::PUT, "/1/1", Some(cf::SENML_JSON), senml));
    assert_eq!(code_of(&r), code::CHANGED);
    let s = dm.server.get(1).unwrap();
    assert_eq!(
        (s.lifetime, s.default_min_period, s.binding.as_str()),
        (900, Some(5), "UQ")
    );
}

#[test]
fn bootstrap_read_and_discover() {
    let a = account("coap://127.0.0.1:5683", SecurityMode::NoSec, b"", b"", b"");
    let mut dm = client();
    assert_eq!(provision(&mut dm, &a), OK_SEQUENCE);
    let r = send(&mut dm, req(code::GET, "/1", None, &[]));
    assert_eq!(code_of(&r), code::CONTENT);
    assert_eq!(coap::content_format_of(&r.response), Some(cf::LWM2M_TLV));
    let tlvs = estuary::dm::tlv::decode(&r.response.payload).unwrap();
    assert_eq!(tlvs.len(), 1);
    assert_eq!(tlvs[0].id, 0);
    let r1 = send(&mut dm, req(code::GET, "/1/0", None, &[]));
    assert_eq!(code_of(&r1), code::CONTENT);
    for p in ["/0", "/0/1", "/3/0", "/1/0/1"] {
        assert_eq!(
            code_of(&send(&mut dm, req(code::GET, p, None, &[]))),
            code::BAD_REQUEST,
            "{p}"
        );
    }
    let want = "</>;lwm2m=1.1,</0/0>;uri=\"coap://127.0.0.1:5693\",\
                </0/1>;ssid=101;uri=\"coap://127.0.0.1:5683\",</1>;ver=1.1,</1/0>;ssid=101,</3/0>";
    let r = send(&mut dm, req(code::GET, "/", None, &[]));
    assert_eq!(code_of(&r), code::CONTENT);
    assert_eq!(coap::content_format_of(&r.response), Some(cf::LINK_FORMAT));
    assert_eq!(String::from_utf8(r.response.payload.clone()).unwrap(), want);
    let mut q = req(code::GET, "/1", None, &[]);
    q.packet
        .add_option(CoapOption::Accept, vec![cf::LINK_FORMAT as u8]);
    let r = send(&mut dm, q);
    assert_eq!(
        String::from_utf8(r.response.payload.clone()).unwrap(),
        "</1>;ver=1.1,</1/0>;ssid=101"
    );
    // Management servers still never see the Security object.
    assert!(ops::read(&dm, &Path::object(0), None, Requester::Management).is_err());
    // Methods the Bootstrap Interface does not have.
    assert_eq!(
        code_of(&send(&mut dm, req(code::POST, "/1/0", None, &[]))),
        code::METHOD_NOT_ALLOWED
    );
}

#[test]
fn other_objects_are_written_created_and_deleted() {
    use dm_fixture::{Temp, TempObject, TEMP};
    let shared: dm_fixture::Shared = Default::default();
    shared.lock().unwrap().instances.insert(0, Temp::new(20.0));
    let mut dm = client();
    dm.register(Box::new(TempObject(shared.clone())))
        .ok()
        .unwrap();
    // A write to a missing instance creates it; other resources keep their defaults.
    let r = send(
        &mut dm,
        req(code::PUT, "/3303/1/5701", Some(cf::TEXT_PLAIN), b"K"),
    );
    assert_eq!(code_of(&r), code::CHANGED);
    assert_eq!(r.changed, vec![Path::resource(TEMP, 1, 5701)]);
    assert_eq!(shared.lock().unwrap().instances[&1].units, "K");
    // A refused write to a missing instance does not leave it behind.
    let r = send(
        &mut dm,
        req(code::PUT, "/3303/2/5700", Some(cf::TEXT_PLAIN), b"1.5"),
    );
    assert_eq!(code_of(&r), code::METHOD_NOT_ALLOWED);
    assert!(!shared.lock().unwrap().instances.contains_key(&2));
    let disc = bootstrap_discover(&dm, &Path::object(TEMP)).unwrap();
    assert_eq!(disc, "</3303/0>,</3303/1>");
    assert_eq!(
        code_of(&send(&mut dm, req(code::DELETE, "/", None, &[]))),
        code::DELETED
    );
    assert!(shared.lock().unwrap().instances.is_empty());
    let disc = bootstrap_discover(&dm, &Path::ROOT).unwrap();
    assert_eq!(
        disc,
        "</>;lwm2m=1.1,</0/0>;uri=\"coap://127.0.0.1:5693\",</1>;ver=1.1,</3/0>,</3303>"
    );
}
