//! The EST-coaps exchanges of the client: `GET /est/crts`, `POST /est/sen` and
//! `POST /est/sren`, one at a time over the bootstrap server's CoAP endpoint.
//!
//! Delayed answers are the endpoint's job (empty ACK, then a separate response); this module
//! handles the EST-level delay, 5.03 Service Unavailable with Max-Age ("ask again later"),
//! by resending the identical request after Max-Age, a bounded number of times. Block-wise
//! transfer of large chains and CSRs is also below us, in the endpoint.

use core::time::Duration;

use log::{debug, info, warn};

use crate::coap::{self, code, content_format, CoapOption, Endpoint, ExchangeError, RequestHandle};
use crate::crypto::{Certificate, KeyPair, TrustStore};
use crate::time::{Instant, UtcTime};

use super::payload::{accept_enrolled, certificates, Enrolled};

/// The EST operations the client performs.
#[derive(Copy, Clone, Debug, PartialEq, Eq)]
pub enum EstOperation {
    /// Fetch the CA certificates.
    CaCerts,
    /// Simple enroll with a new key.
    Enroll,
    /// Simple re-enroll, authenticated by the current certificate.
    Reenroll,
}

impl EstOperation {
    fn resource(self) -> &'static str {
        match self {
            EstOperation::CaCerts => "crts",
            EstOperation::Enroll => "sen",
            EstOperation::Reenroll => "sren",
        }
    }
}

/// How an exchange ended.
#[derive(Clone, Debug)]
pub enum EstOutcome {
    CaCerts(Vec<Certificate>),
    Enrolled(Box<Enrolled>),
    Failed {
        operation: EstOperation,
        reason: String,
    },
}

/// 5.03 answers honoured per exchange before giving up, so a server that always says
/// "later" cannot keep us waiting forever.
const MAX_SERVICE_UNAVAILABLE: u32 = 8;
/// Wait when a 5.03 carries no Max-Age (CoAP's default Max-Age, RFC 7252 §5.10.5).
const DEFAULT_MAX_AGE: Duration = Duration::from_secs(60);

#[derive(Debug)]
enum State {
    Idle,
    InFlight {
        op: EstOperation,
        handle: RequestHandle,
        request: coap::Packet,
        retries: u32,
    },
    /// Told to come back later (5.03 + Max-Age).
    Waiting {
        op: EstOperation,
        until: Instant,
        request: coap::Packet,
        retries: u32,
    },
}

/// One EST exchange at a time over a given endpoint.
#[derive(Debug)]
pub struct EstClient {
    prefix: String,
    state: State,
}

impl EstClient {
    /// An EST client using the path prefix `prefix` ("/est" unless discovery said otherwise).
    pub fn new(prefix: &str) -> Self {
        EstClient {
            prefix: prefix.trim_end_matches('/').to_string(),
            state: State::Idle,
        }
    }

    /// True while an exchange is under way (the EST state must not be persisted then).
    pub fn in_progress(&self) -> bool {
        !matches!(self.state, State::Idle)
    }

    /// The operation under way, if any.
    pub fn operation(&self) -> Option<EstOperation> {
        match &self.state {
            State::Idle => None,
            State::InFlight { op, .. } | State::Waiting { op, .. } => Some(*op),
        }
    }

    /// Sends `GET /est/crts`, asking for a PKCS#7 bundle.
    pub fn request_cacerts(&mut self, now: Instant, ep: &mut Endpoint) -> Option<EstOutcome> {
        let mut req = coap::new_request(code::GET, &format!("{}/crts", self.prefix));
        coap::set_uint_option(
            &mut req,
            CoapOption::Accept,
            u32::from(content_format::PKCS7_CERTS_ONLY),
        );
        self.send(now, ep, EstOperation::CaCerts, req, 0)
    }

    /// Sends `POST /est/sen` or `/est/sren` with a PKCS#10 CSR (DER), asking for a single
    /// DER certificate (a PKCS#7 answer is accepted too).
    pub fn request_enrollment(
        &mut self,
        now: Instant,
        ep: &mut Endpoint,
        op: EstOperation,
        csr_der: Vec<u8>,
    ) -> Option<EstOutcome> {
        debug_assert!(op != EstOperation::CaCerts);
        let mut req = coap::new_request(code::POST, &format!("{}/{}", self.prefix, op.resource()));
        coap::set_content_format(&mut req, content_format::PKCS10);
        coap::set_uint_option(
            &mut req,
            CoapOption::Accept,
            u32::from(content_format::PKIX_CERT),
        );
        req.payload = csr_der;
        self.send(now, ep, op, req, 0)
    }

    fn send(
        &mut self,
        now: Instant,
        ep: &mut Endpoint,
        op: EstOperation,
        request: coap::Packet,
        retries: u32,
    ) -> Option<EstOutcome> {
        match ep.send_request(now, request.clone(), true) {
            Ok(handle) => {
                debug!("EST {} sent", op.resource());
                self.state = State::InFlight {
                    op,
                    handle,
                    request,
                    retries,
                };
                None
            }
            Err(e) => self.fail(op, format!("request could not be sent: {e}")),
        }
    }

    fn fail(&mut self, operation: EstOperation, reason: String) -> Option<EstOutcome> {
        warn!("EST /{} failed: {reason}", operation.resource());
        self.state = State::Idle;
        Some(EstOutcome::Failed { operation, reason })
    }

    /// Resends a request that was told to wait, once its Max-Age has passed.
    pub fn on_timeout(&mut self, now: Instant, ep: &mut Endpoint) -> Option<EstOutcome> {
        if let State::Waiting { until, .. } = &self.state {
            if *until <= now {
                let State::Waiting {
                    op,
                    request,
                    retries,
                    ..
                } = core::mem::replace(&mut self.state, State::Idle)
                else {
                    unreachable!()
                };
                return self.send(now, ep, op, request, retries);
            }
        }
        None
    }

    /// When [`EstClient::on_timeout`] is next needed.
    pub fn poll_timeout(&self) -> Option<Instant> {
        match &self.state {
            State::Waiting { until, .. } => Some(*until),
            _ => None,
        }
    }

    /// The endpoint reported that the exchange `handle` failed.
    pub fn on_failure(
        &mut self,
        handle: RequestHandle,
        error: ExchangeError,
    ) -> Option<EstOutcome> {
        match &self.state {
            State::InFlight { op, handle: h, .. } if *h == handle => {
                let op = *op;
                self.fail(op, error.to_string())
            }
            _ => None,
        }
    }

    /// The response to `handle` arrived. Enrollment answers are checked against `key` (our
    /// key pair), `now_utc` and `trust` before they are reported as enrolled.
    pub fn on_response(
        &mut self,
        now: Instant,
        now_utc: UtcTime,
        handle: RequestHandle,
        packet: &coap::Packet,
        key: Option<&KeyPair>,
        trust: &TrustStore,
    ) -> Option<EstOutcome> {
        let State::InFlight {
            op,
            handle: h,
            retries,
            ..
        } = &self.state
        else {
            return None;
        };
        if *h != handle {
            return None;
        }
        let (op, retries) = (*op, *retries);
        let rc = coap::raw_code(packet);
        if rc == code::SERVICE_UNAVAILABLE {
            if retries >= MAX_SERVICE_UNAVAILABLE {
                return self.fail(
                    op,
                    format!("server still unavailable after {retries} waits"),
                );
            }
            let wait = coap::uint_option(packet, CoapOption::MaxAge)
                .map(|s| Duration::from_secs(u64::from(s)))
                .unwrap_or(DEFAULT_MAX_AGE);
            info!(
                "EST /{}: 5.03, asking again in {}s",
                op.resource(),
                wait.as_secs()
            );
            let State::InFlight { request, .. } = core::mem::replace(&mut self.state, State::Idle)
            else {
                unreachable!()
            };
            self.state = State::Waiting {
                op,
                until: now + wait,
                request,
                retries: retries + 1,
            };
            return None;
        }
        let expected = if op == EstOperation::Enroll || op == EstOperation::Reenroll {
            // RFC 9148 answers a simple (re-)enroll with 2.01 Created; 2.04/2.05 are accepted
            // too since servers differ.
            matches!(rc, code::CREATED | code::CHANGED | code::CONTENT)
        } else {
            rc == code::CONTENT
        };
        if !expected {
            return self.fail(op, format!("server answered {}", code::to_string(rc)));
        }
        let certs = match certificates(coap::content_format_of(packet), &packet.payload) {
            Ok(c) => c,
            Err(e) => return self.fail(op, e.to_string()),
        };
        self.state = State::Idle;
        match op {
            EstOperation::CaCerts => {
                info!("EST /crts: {} CA certificate(s)", certs.len());
                Some(EstOutcome::CaCerts(certs))
            }
            EstOperation::Enroll | EstOperation::Reenroll => {
                let Some(key) = key else {
                    return self.fail(op, "no key pair for the enrollment".into());
                };
                match accept_enrolled(certs, key, now_utc, trust) {
                    Ok(e) => {
                        info!(
                            "EST /{}: enrolled {} (serial {}, notAfter {})",
                            op.resource(),
                            e.certificate.subject(),
                            e.certificate.serial_hex(),
                            e.certificate.not_after().unix_seconds()
                        );
                        Some(EstOutcome::Enrolled(Box::new(e)))
                    }
                    Err(err) => self.fail(op, err.to_string()),
                }
            }
        }
    }

    /// Abandons the exchange under way (the connection is going away).
    pub fn cancel(&mut self, now: Instant, ep: &mut Endpoint) {
        if let State::InFlight { handle, .. } = self.state {
            ep.cancel(now, handle);
        }
        self.state = State::Idle;
    }
}

#[cfg(test)]
mod tests {
    use super::*;
    use crate::coap::{EndpointEvent, TxParams};
    use crate::crypto::{CertificateIssuer, CertificateProfile, CertificateTemplate, Csr, Drbg};
    use crate::rng::SeededRng;

    const T0: i64 = 1_700_000_000;

    struct Rig {
        client: Endpoint,
        server: Endpoint,
        est: EstClient,
        rng: Drbg,
        ca: CertificateIssuer,
        key: KeyPair,
        trust: TrustStore,
    }

    fn rig() -> Rig {
        let mut r = SeededRng::new(3);
        let mut rng = Drbg::from_seed(7);
        let ca_key = KeyPair::generate(&mut rng).unwrap();
        let ca = CertificateIssuer::new_root_ca(
            ca_key,
            "CN=EST CA",
            UtcTime::from_unix_seconds(T0 - 10),
            UtcTime::from_unix_seconds(T0 + 100_000),
            &mut rng,
        )
        .unwrap();
        let key = KeyPair::generate(&mut rng).unwrap();
        let mut trust = TrustStore::new();
        trust.add(ca.certificate().clone());
        Rig {
            client: Endpoint::new(TxParams::default(), 4096, 4096, &mut r),
            server: Endpoint::new(TxParams::default(), 4096, 4096, &mut r),
            est: EstClient::new("/est"),
            rng,
            ca,
            key,
            trust,
        }
    }

    impl Rig {
        /// Delivers the client's request; returns it as the server saw it.
        fn deliver(&mut self, now: Instant) -> crate::coap::InboundRequest {
            while let Some(d) = self.client.poll_transmit() {
                self.server.handle_datagram(now, &d).unwrap();
            }
            match self.server.poll_event() {
                Some(EndpointEvent::Request(r)) => r,
                other => panic!("expected a request, got {other:?}"),
            }
        }

        fn answer(
            &mut self,
            now: Instant,
            req: &crate::coap::InboundRequest,
            resp: coap::Packet,
        ) -> Option<EstOutcome> {
            self.server.respond(now, req, resp);
            while let Some(d) = self.server.poll_transmit() {
                self.client.handle_datagram(now, &d).unwrap();
            }
            let mut out = None;
            while let Some(ev) = self.client.poll_event() {
                match ev {
                    EndpointEvent::Response { handle, packet } => {
                        out = out.or(self.est.on_response(
                            now,
                            UtcTime::from_unix_seconds(T0),
                            handle,
                            &packet,
                            Some(&self.key),
                            &self.trust,
                        ))
                    }
                    EndpointEvent::Failed { handle, error } => {
                        out = out.or(self.est.on_failure(handle, error))
                    }
                    _ => {}
                }
            }
            out
        }

        fn issue_for(&mut self, csr_der: &[u8]) -> Certificate {
            let csr = Csr::parse(csr_der).unwrap();
            let template = CertificateTemplate {
                subject: csr.subject().to_string(),
                serial: CertificateTemplate::random_serial(&mut self.rng).unwrap(),
                not_before: UtcTime::from_unix_seconds(T0 - 1),
                not_after: UtcTime::from_unix_seconds(T0 + 3600),
                profile: CertificateProfile::Client,
            };
            self.ca
                .issue(csr.public_key_der(), &template, &mut self.rng)
                .unwrap()
        }

        fn csr(&mut self) -> Vec<u8> {
            Csr::build(&self.key, "CN=dev1", &mut self.rng).unwrap()
        }
    }

    fn cert_response(c: &Certificate) -> coap::Packet {
        let mut r = coap::new_response(code::CREATED);
        coap::set_content_format(&mut r, content_format::PKIX_CERT);
        r.payload = c.der().to_vec();
        r
    }

    #[test]
    fn enroll_sends_csr_with_formats_and_accepts_our_certificate() {
        let mut r = rig();
        let t = Instant::from_millis(0);
        let csr = r.csr();
        assert!(r
            .est
            .request_enrollment(t, &mut r.client, EstOperation::Enroll, csr.clone())
            .is_none());
        assert!(r.est.in_progress());
        let req = r.deliver(t);
        assert_eq!(coap::raw_code(&req.packet), code::POST);
        assert_eq!(coap::uri_path(&req.packet).unwrap(), vec!["est", "sen"]);
        assert_eq!(coap::content_format_of(&req.packet), Some(286));
        assert_eq!(coap::accept_of(&req.packet), Some(287));
        assert_eq!(req.packet.payload, csr);
        let cert = r.issue_for(&csr);
        match r.answer(t, &req, cert_response(&cert)) {
            Some(EstOutcome::Enrolled(e)) => assert_eq!(e.certificate.der(), cert.der()),
            other => panic!("{other:?}"),
        }
        assert!(!r.est.in_progress());
    }

    #[test]
    fn service_unavailable_waits_max_age_and_resends_the_same_request() {
        let mut r = rig();
        let t0 = Instant::from_millis(0);
        let csr = r.csr();
        r.est
            .request_enrollment(t0, &mut r.client, EstOperation::Reenroll, csr.clone());
        let req = r.deliver(t0);
        assert_eq!(coap::uri_path(&req.packet).unwrap(), vec!["est", "sren"]);
        let mut later = coap::new_response(code::SERVICE_UNAVAILABLE);
        coap::set_uint_option(&mut later, CoapOption::MaxAge, 7);
        assert!(r.answer(t0, &req, later).is_none());
        assert!(r.est.in_progress(), "waiting still counts as in progress");
        assert_eq!(r.est.poll_timeout(), Some(Instant::from_millis(7_000)));
        assert!(r
            .est
            .on_timeout(Instant::from_millis(6_999), &mut r.client)
            .is_none());
        assert!(r.client.poll_transmit().is_none());
        r.est.on_timeout(Instant::from_millis(7_000), &mut r.client);
        let again = r.deliver(Instant::from_millis(7_000));
        assert_eq!(again.packet.payload, csr);
        assert_eq!(coap::uri_path(&again.packet).unwrap(), vec!["est", "sren"]);
        let cert = r.issue_for(&csr);
        assert!(matches!(
            r.answer(Instant::from_millis(7_000), &again, cert_response(&cert)),
            Some(EstOutcome::Enrolled(_))
        ));
    }

    #[test]
    fn endless_service_unavailable_gives_up() {
        let mut r = rig();
        let mut t = Instant::from_millis(0);
        r.est.request_cacerts(t, &mut r.client);
        let mut outcome = None;
        for _ in 0..=MAX_SERVICE_UNAVAILABLE {
            let req = r.deliver(t);
            outcome = r.answer(t, &req, coap::new_response(code::SERVICE_UNAVAILABLE));
            if outcome.is_some() {
                break;
            }
            t = r.est.poll_timeout().unwrap();
            assert_eq!(t.as_millis() % 60_000, 0, "default Max-Age is 60 s");
            r.est.on_timeout(t, &mut r.client);
        }
        assert!(matches!(
            outcome,
            Some(EstOutcome::Failed { operation: EstOperation::CaCerts, ref reason })
                if reason.contains("unavailable")
        ));
        assert!(!r.est.in_progress());
    }

    #[test]
    fn wrong_key_bad_codes_and_bodies_fail_clearly() {
        let mut r = rig();
        let t = Instant::from_millis(0);
        // A certificate for someone else's key.
        let other = KeyPair::generate(&mut r.rng).unwrap();
        let other_csr = Csr::build(&other, "CN=dev1", &mut r.rng).unwrap();
        let wrong = r.issue_for(&other_csr);
        let csr = r.csr();
        r.est
            .request_enrollment(t, &mut r.client, EstOperation::Enroll, csr);
        let req = r.deliver(t);
        assert!(matches!(
            r.answer(t, &req, cert_response(&wrong)),
            Some(EstOutcome::Failed { ref reason, .. }) if reason.contains("matches our key")
        ));
        // 4.03.
        let csr = r.csr();
        r.est
            .request_enrollment(t, &mut r.client, EstOperation::Enroll, csr);
        let req = r.deliver(t);
        assert!(matches!(
            r.answer(t, &req, coap::new_response(code::FORBIDDEN)),
            Some(EstOutcome::Failed { ref reason, .. }) if reason.contains("4.03")
        ));
        // A truncated body.
        let csr = r.csr();
        r.est
            .request_enrollment(t, &mut r.client, EstOperation::Enroll, csr.clone());
        let req = r.deliver(t);
        let cert = r.issue_for(&csr);
        let mut resp = cert_response(&cert);
        resp.payload.truncate(resp.payload.len() / 2);
        assert!(matches!(
            r.answer(t, &req, resp),
            Some(EstOutcome::Failed { ref reason, .. }) if reason.contains("malformed")
        ));
    }

    #[test]
    fn cacerts_returns_the_bundle() {
        let mut r = rig();
        let t = Instant::from_millis(0);
        r.est.request_cacerts(t, &mut r.client);
        let req = r.deliver(t);
        assert_eq!(coap::uri_path(&req.packet).unwrap(), vec!["est", "crts"]);
        assert_eq!(coap::accept_of(&req.packet), Some(281));
        let mut resp = coap::new_response(code::CONTENT);
        coap::set_content_format(&mut resp, content_format::PKCS7_CERTS_ONLY);
        resp.payload = crate::crypto::build_certs_only(&[r.ca.certificate().clone()]);
        match r.answer(t, &req, resp) {
            Some(EstOutcome::CaCerts(c)) => {
                assert_eq!(c.len(), 1);
                assert_eq!(c[0].der(), r.ca.certificate().der());
            }
            other => panic!("{other:?}"),
        }
    }
}
