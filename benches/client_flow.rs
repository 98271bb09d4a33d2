//! Client-side costs of the Certificate-mode-with-EST flow on the simulator rig: heap (a
//! counting allocator that charges each block to the client or to the servers), datagrams
//! and bytes per LwM2M/EST exchange next to the bytes that must be carried, and how these
//! grow with object instances and with the length of the EST CA chain. Nothing here is
//! timed or asserted; `scripts/bench` runs it and puts the figures in a table.
//!
//!   client_flow [--json FILE]                      all measurements, text + JSON
//!   client_flow cpu [--instances N] [--chain N] [--reads N] [--out-buffer BYTES]
//!       one flow then N Reads of /3/0 and N notifications, for callgrind: phases are
//!       separated by calls of `bench_phase_mark`, client work is in `bench_client_*`.

mod support;

#[path = "../tests/common/mod.rs"]
#[allow(unused_imports)]
mod common;

use std::sync::{Arc, Mutex};
use std::time::Duration;

use common::rig::*;
use estuary::crypto::{CertificateProfile, CertificateTemplate, KeyPair};
use estuary::dm::{
    DmError, Object, Operations, Path, ResourceDef, ResourceValue, Value, ValueKind,
};
use estuary_testserver::lwm2m_server::OpRequest;
use serde_json::{json, Value as Json};
use support::alloc::{self, ClientScope, Counting, HeapStats};
use support::driver::{bench_client_notify_changed, bench_phase_mark, Driver, Phase, Traffic};

#[global_allocator]
static GLOBAL: Counting = Counting;

/// The custom object of the growth measurements (a private-range Object ID).
const BENCH_OID: u16 = 32769;
const CERT_VALIDITY: Duration = Duration::from_secs(30 * 86_400);

type Values = Arc<Mutex<Vec<f64>>>;

/// A sensor object with `n` instances: a value, its unit and a counter.
struct BenchObject(Values);

const DEFS: &[ResourceDef] = &[
    ResourceDef::single(0, ValueKind::Float, Operations::Read),
    ResourceDef::single(1, ValueKind::String, Operations::Read),
    ResourceDef::single(2, ValueKind::Integer, Operations::Read),
];

impl Object for BenchObject {
    fn oid(&self) -> u16 {
        BENCH_OID
    }

    fn instances(&self) -> Vec<u16> {
        (0..self.0.lock().unwrap().len() as u16).collect()
    }

    fn resources(&self, iid: u16) -> Result<Vec<ResourceDef>, DmError> {
        if usize::from(iid) >= self.0.lock().unwrap().len() {
            return Err(DmError::NotFound);
        }
        Ok(DEFS.to_vec())
    }

    fn read(&self, iid: u16, rid: u16) -> Result<ResourceValue, DmError> {
        let v = *self
            .0
            .lock()
            .unwrap()
            .get(usize::from(iid))
            .ok_or(DmError::NotFound)?;
        Ok(ResourceValue::Single(match rid {
            0 => Value::Float(v),
            1 => Value::String("Cel".into()),
            2 => Value::Integer(v as i64),
            _ => return Err(DmError::NotFound),
        }))
    }
}

/// One client through bootstrap, EST enrollment and registration.
struct Flow {
    d: Driver,
    values: Values,
    /// Client heap from construction to the first registration.
    heap: HeapStats,
    /// Allocations and bytes allocated during the flow.
    allocs: u64,
    alloc_bytes: u64,
}

/// An intermediate CA under `parent`.
fn intermediate(parent: &CertificateIssuer, n: usize, rng: &mut Drbg) -> CertificateIssuer {
    let key = KeyPair::generate(rng).unwrap();
    let template = CertificateTemplate {
        subject: format!("CN=Bench Intermediate CA {n}"),
        serial: CertificateTemplate::random_serial(rng).unwrap(),
        not_before: UtcTime::from_unix_seconds(EPOCH.unix_seconds() - 86_400),
        not_after: UtcTime::from_unix_seconds(EPOCH.unix_seconds() + 10 * 365 * 86_400),
        profile: CertificateProfile::Ca { path_len: None },
    };
    let cert = parent.issue(key.public_key_der(), &template, rng).unwrap();
    CertificateIssuer::new(key, cert).unwrap()
}

/// Sets up the rig (PSK bootstrap, Certificate mode with EST for the management account)
/// with `instances` instances of the bench object and an EST CA `chain` certificates deep,
/// and runs it to the first registration.
fn flow(instances: usize, chain: usize, lifetime: u32) -> Flow {
    try_flow(instances, chain, lifetime, None).unwrap_or_else(|e| panic!("{e}"))
}

/// [`flow`] with an optional `out_buffer_size`; an error when the client does not register.
fn try_flow(
    instances: usize,
    chain: usize,
    lifetime: u32,
    out_buffer: Option<usize>,
) -> Result<Flow, String> {
    let mut r = rig_with_lifetime(
        Setup::PskToEst,
        CERT_VALIDITY,
        ReenrollConfig::default(),
        lifetime,
    );
    let values: Values = Arc::new(Mutex::new((0..instances).map(|i| i as f64).collect()));
    let before = alloc::stats();
    alloc::reset_peak();
    {
        // The rig's client again, but built inside the client's accounting.
        let _s = ClientScope::enter();
        let mut cfg = ClientConfig::new(EP);
        cfg.est_reenroll = ReenrollConfig::default();
        if let Some(n) = out_buffer {
            cfg.out_buffer_size = n;
        }
        let mut client = Client::new(cfg, Box::new(SeededRng::new(3))).unwrap();
        let mut b = SecurityInstance::nosec(&format!("coaps://{BS_ADDR}"), 1);
        b.bootstrap_server = true;
        b.ssid = None;
        b.security_mode = SecurityMode::Psk;
        b.public_cert_or_psk_identity = EP.as_bytes().to_vec();
        b.private_cert_or_psk_key = PSK_KEY.to_vec();
        client.data_model_mut().security.insert(0, b).unwrap();
        client
            .register_object(Box::new(BenchObject(values.clone())))
            .unwrap();
        r.client = client;
    }
    let mut d = Driver::new(r);
    if chain > 1 {
        let mut rng = Drbg::from_seed(1000 + chain as u64);
        let mut cas = vec![d.r.pki.ca.certificate().clone()];
        let mut issuer = intermediate(&d.r.pki.ca, 1, &mut rng);
        cas.push(issuer.certificate().clone());
        for n in 2..chain {
            issuer = intermediate(&issuer, n, &mut rng);
            cas.push(issuer.certificate().clone());
        }
        let mut est = EstCa::new(issuer, TrustStore::new(), CERT_VALIDITY, Drbg::from_seed(9));
        est.require_certificate = false;
        d.r.bs.set_est(est);
        // The management server trusts every CA of the chain; /est/crts carries all of them,
        // the root first (the client takes the first as the anchor for /sren).
        let mut trust = TrustStore::new();
        for c in &cas {
            trust.add(c.clone());
        }
        let cfg = SecureListenerConfig {
            psk: vec![(EP.as_bytes().to_vec(), SecretBytes::new(PSK_KEY.to_vec()))],
            certificate: Some((d.r.pki.server_chain(), d.r.pki.server_key.clone(), trust)),
            timers: None,
        };
        d.r.lw_side.listener = Some(SecureListener::new(cfg, &Drbg::from_seed(78)).unwrap());
        d.cacerts_override = Some(cas);
    }
    d.start();
    if !d.run_until_registered(Duration::from_secs(600)) {
        let why = d.r.events.iter().rev().find_map(|(_, e)| match e {
            Event::RegistrationFailed { reason, .. } => Some(reason.clone()),
            _ => None,
        });
        return Err(format!(
            "{instances} instances, chain {chain}: no registration within 600 s of virtual \
             time (last failure: {})",
            why.as_deref().unwrap_or("none reported")
        ));
    }
    let cacerts = d.r.client.est_state().cacerts.len();
    if chain > 1 && cacerts != chain {
        return Err(format!(
            "chain {chain}: the client holds {cacerts} CA certificate(s) after /est/crts"
        ));
    }
    let after = alloc::stats();
    Ok(Flow {
        d,
        values,
        heap: after,
        allocs: after.allocs - before.allocs,
        alloc_bytes: after.bytes - before.bytes,
    })
}

fn registration_bytes(t: &std::collections::HashMap<Phase, Traffic>) -> u64 {
    t.get(&Phase::Register).map_or(0, Traffic::bytes)
}

fn flow_bytes(t: &std::collections::HashMap<Phase, Traffic>) -> u64 {
    [Phase::Bootstrap, Phase::EstEnroll, Phase::Register]
        .iter()
        .filter_map(|p| t.get(p))
        .map(Traffic::bytes)
        .sum()
}

/// Observes /32769/0/0 and has the value change `n` times, one virtual second apart.
fn notifications(f: &mut Flow, n: usize) -> usize {
    let req = OpRequest {
        observe: Some(0),
        ..OpRequest::get(&format!("/{BENCH_OID}/0/0"))
    };
    f.d.server_request(req);
    let path = Path::resource(BENCH_OID, 0, 0);
    let count = |r: &Rig| {
        r.lw_events
            .iter()
            .filter(|(_, e)| matches!(e, ServerEvent::Notification { .. }))
            .count()
    };
    let before = count(&f.d.r);
    for i in 0..n {
        let t = f.d.r.elapsed() + Duration::from_secs(1);
        f.d.run_until(t, |_| false);
        f.values.lock().unwrap()[0] = 100.0 + i as f64;
        let now = f.d.r.now;
        bench_client_notify_changed(&mut f.d.r.client, now, &path);
        f.d.pump();
    }
    let t = f.d.r.elapsed() + Duration::from_secs(2);
    f.d.run_until(t, |_| false);
    count(&f.d.r) - before
}

fn reads(f: &mut Flow, n: usize) {
    for _ in 0..n {
        f.d.server_request(OpRequest::get("/3/0"));
    }
}

/// For callgrind: flow | reads | notifications, each part ended by a mark.
fn cpu(instances: usize, chain: usize, n: usize, out_buffer: Option<usize>) {
    let mut f = try_flow(instances, chain, 86_400, out_buffer).unwrap_or_else(|e| panic!("{e}"));
    bench_phase_mark("flow");
    reads(&mut f, n);
    bench_phase_mark("reads");
    let got = notifications(&mut f, n);
    bench_phase_mark("notifications");
    println!("instances={instances} chain={chain} reads={n} notifications={got}");
}

fn traffic_json(t: &std::collections::HashMap<Phase, Traffic>) -> Json {
    Json::Array(
        Phase::ALL
            .iter()
            .filter_map(|p| t.get(p).map(|x| (p, x)))
            .map(|(p, x)| {
                json!({
                    "phase": format!("{p:?}"),
                    "label": p.label(),
                    "count": x.count,
                    "up_datagrams": x.up_datagrams,
                    "up_bytes": x.up_bytes,
                    "down_datagrams": x.down_datagrams,
                    "down_bytes": x.down_bytes,
                    "lower_bound": x.lower_bound,
                })
            })
            .collect(),
    )
}

fn all(json_out: Option<String>) {
    const N: usize = 100;
    // Memory: the flow, then steady state.
    let mut f = flow(1, 1, 86_400);
    let flow_heap = f.heap;
    let flow_allocs = f.allocs;
    let f_alloc_bytes = f.alloc_bytes;
    let flow_traffic = f.d.take_traffic();
    println!(
        "flow: client heap peak {} B, {} allocations, {} B live after registration",
        flow_heap.peak, flow_allocs, flow_heap.live
    );
    alloc::reset_peak();
    let s0 = alloc::stats();
    reads(&mut f, N);
    let s1 = alloc::stats();
    let read_traffic = f.d.take_traffic();
    // As many again: does the live heap keep growing or level off?
    reads(&mut f, N);
    let s1b = alloc::stats();
    f.d.take_traffic();
    println!(
        "live heap after {N} Reads {} B, after {} Reads {} B",
        s1.live,
        2 * N,
        s1b.live
    );
    alloc::reset_peak();
    let got = notifications(&mut f, N);
    let s2 = alloc::stats();
    let notify_traffic = f.d.take_traffic();
    println!(
        "{N} Reads of /3/0: peak {} B, {:.1} allocations/Read, live {} -> {} B",
        s1.peak,
        (s1.allocs - s0.allocs) as f64 / N as f64,
        s0.live,
        s1.live
    );
    println!(
        "{got} notifications: peak {} B, {:.1} allocations/notification, live -> {} B",
        s2.peak,
        (s2.allocs - s1b.allocs) as f64 / got.max(1) as f64,
        s2.live
    );
    let steady = json!({
        "reads": N,
        "read_peak": s1.peak,
        "read_allocs": s1.allocs - s0.allocs,
        "read_alloc_bytes": s1.bytes - s0.bytes,
        "live_before": s0.live,
        "live_after_reads": s1.live,
        "live_after_2x_reads": s1b.live,
        "notifications": got,
        "notify_peak": s2.peak,
        "notify_allocs": s2.allocs - s1b.allocs,
        "live_after_notifications": s2.live,
        "read_traffic": traffic_json(&read_traffic),
        "notify_traffic": traffic_json(&notify_traffic),
    });
    drop(f);

    // Wire over two months: lifetime 1 h (an Update every half hour), 30-day certificates
    // re-enrolled after 27 days.
    let days = 58;
    let mut w = flow(1, 1, 3600);
    w.d.run_until(Duration::from_secs(days * 86_400), |_| false);
    let long_traffic = w.d.take_traffic();
    let reenrollments = w.d.r.count(|e| {
        matches!(
            e,
            Event::EstEnrolled {
                reenrollment: true,
                ..
            }
        )
    });
    println!("{days} days: {reenrollments} re-enrollments");
    let mut combined = flow_traffic.clone();
    for (p, t) in long_traffic {
        let e = combined.entry(p).or_default();
        e.up_datagrams += t.up_datagrams;
        e.up_bytes += t.up_bytes;
        e.down_datagrams += t.down_datagrams;
        e.down_bytes += t.down_bytes;
        e.lower_bound += t.lower_bound;
        e.count += t.count;
    }
    // The long run's first flow is the same as the memory run's: count it once.
    for p in [Phase::Bootstrap, Phase::EstEnroll, Phase::Register] {
        if let Some(t) = flow_traffic.get(&p) {
            let e = combined.get_mut(&p).unwrap();
            e.up_datagrams -= t.up_datagrams;
            e.up_bytes -= t.up_bytes;
            e.down_datagrams -= t.down_datagrams;
            e.down_bytes -= t.down_bytes;
            e.lower_bound -= t.lower_bound;
            e.count -= t.count;
        }
    }
    for (p, t) in read_traffic.iter().chain(notify_traffic.iter()) {
        if matches!(p, Phase::Read | Phase::Notify) {
            combined.insert(*p, *t);
        }
    }
    drop(w);

    // Growth.
    let mut growth = Vec::new();
    let cases = [
        (1, 1, None),
        (10, 1, None),
        (100, 1, None),
        // The same with datagrams of at most 1024 bytes: the Register goes block-wise.
        (100, 1, Some(1024)),
        (1, 2, None),
        (1, 3, None),
    ];
    for (instances, chain, out_buffer) in cases {
        let mut g = match try_flow(instances, chain, 86_400, out_buffer) {
            Ok(g) => g,
            Err(e) => {
                println!("{e}");
                growth.push(json!({
                    "instances": instances,
                    "chain": chain,
                    "out_buffer": out_buffer,
                    "failed": e,
                }));
                continue;
            }
        };
        let t = g.d.take_traffic();
        let cacerts = g.d.r.client.est_state().cacerts.len();
        // A Read of the whole object: its size grows with the instances.
        g.d.server_request(OpRequest::get(&format!("/{BENCH_OID}")));
        let obj = g.d.take_traffic();
        let obj_read = obj.get(&Phase::Read).copied().unwrap_or_default();
        println!(
            "instances={instances} chain={chain}: heap peak {} B, {} allocations, live {} B, \
             flow {} B on the wire (registration {} B), Read /{BENCH_OID} {} B, {cacerts} CA certificate(s)",
            g.heap.peak,
            g.allocs,
            g.heap.live,
            flow_bytes(&t),
            registration_bytes(&t),
            obj_read.bytes()
        );
        growth.push(json!({
            "instances": instances,
            "chain": chain,
            "out_buffer": out_buffer,
            "cacerts": cacerts,
            "heap_peak": g.heap.peak,
            "allocs": g.allocs,
            "live": g.heap.live,
            "flow_bytes": flow_bytes(&t),
            "registration_bytes": registration_bytes(&t),
            "object_read_bytes": obj_read.bytes(),
        }));
    }

    let out = json!({
        "flow": {
            "heap_peak": flow_heap.peak,
            "allocs": flow_allocs,
            "alloc_bytes": f_alloc_bytes,
            "live_after": flow_heap.live,
        },
        "steady": steady,
        "wire_days": days,
        "wire": traffic_json(&combined),
        "growth": growth,
    });
    if let Some(path) = json_out {
        std::fs::write(&path, serde_json::to_string_pretty(&out).unwrap()).unwrap();
        println!("wrote {path}");
    }
}

fn main() {
    // `cargo bench` adds `--bench`.
    let args: Vec<String> = std::env::args()
        .skip(1)
        .filter(|a| a != "--bench")
        .collect();
    let value = |name: &str, default: usize| -> usize {
        args.iter()
            .position(|a| a == name)
            .and_then(|i| args.get(i + 1))
            .map_or(default, |v| v.parse().expect("a number"))
    };
    if args.first().map(String::as_str) == Some("cpu") {
        cpu(
            value("--instances", 1),
            value("--chain", 1),
            value("--reads", 20),
            Some(value("--out-buffer", 0)).filter(|&n| n > 0),
        );
    } else {
        let json_out = args
            .iter()
            .position(|a| a == "--json")
            .and_then(|i| args.get(i + 1))
            .cloned();
        all(json_out);
    }
}
