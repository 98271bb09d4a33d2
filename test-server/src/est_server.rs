//! The test server's EST-coaps CA (RFC 9148), served on the bootstrap endpoint:
//! `/.well-known/core` with the `ace.est.*` resource types, `/est/crts`, `/est/sen` and
//! `/est/sren`. Sans-IO: it maps a request plus who the DTLS layer says the peer is
//! ([`PeerAuth`]) to a response, and can be told to misbehave ([`EstFault`]) for tests.

use core::time::Duration;
use std::collections::HashSet;

use log::{info, warn};

use estuary::coap::{self, code, content_format, CoapOption};
use estuary::crypto::{
    build_certs_only, Certificate, CertificateIssuer, CertificateProfile, CertificateTemplate, Csr,
    Drbg, KeyPair, TrustStore,
};
use estuary::time::UtcTime;

/// Who the peer is, as its DTLS session authenticated it.
#[derive(Clone, Debug, PartialEq, Eq)]
pub enum PeerAuth {
    /// Plain CoAP.
    None,
    /// A PSK session with this identity.
    Psk(Vec<u8>),
    /// A certificate session; the certificate was verified by the handshake.
    Certificate(Box<Certificate>),
}

/// Ways the CA can misbehave, switched on by `run --fault NAME`.
#[derive(Clone, Debug, PartialEq, Eq, Hash)]
pub enum EstFault {
    /// Answer each enrollment first with 5.03 and this Max-Age, then for real.
    ServiceUnavailable { max_age: u32 },
    /// Issue the certificate for a key other than the one in the CSR.
    WrongKey,
    /// Issue a certificate that expired an hour ago.
    Expired,
    /// Cut the certificate body in half.
    Truncated,
    /// Acknowledge each enrollment with an empty ACK and send the response this many
    /// seconds later as a separate confirmable response (RFC 7252 §5.2.2).
    Delayed { secs: u32 },
}

/// Delay of `est-delay` without a value: long enough to be a separate response, well inside
/// the client's EXCHANGE_LIFETIME (247 s) wait for it.
pub const DEFAULT_DELAY_SECS: u32 = 5;

impl EstFault {
    /// Parses a `--fault` name: `est-503[=SECONDS]`, `est-delay[=SECONDS]`, `est-wrong-key`,
    /// `est-expired`, `est-truncated`.
    pub fn parse(s: &str) -> Option<EstFault> {
        let (name, arg) = match s.split_once('=') {
            Some((n, a)) => (n, Some(a)),
            None => (s, None),
        };
        Some(match (name, arg) {
            ("est-503", None) => EstFault::ServiceUnavailable { max_age: 2 },
            ("est-503", Some(a)) => EstFault::ServiceUnavailable {
                max_age: a.parse().ok()?,
            },
            ("est-delay", None) => EstFault::Delayed {
                secs: DEFAULT_DELAY_SECS,
            },
            ("est-delay", Some(a)) => EstFault::Delayed {
                secs: a.parse().ok()?,
            },
            ("est-wrong-key", None) => EstFault::WrongKey,
            ("est-expired", None) => EstFault::Expired,
            ("est-truncated", None) => EstFault::Truncated,
            _ => return None,
        })
    }
}

/// What the CA did, for the event log.
#[derive(Clone, Debug, PartialEq, Eq)]
pub enum EstEvent {
    CaCerts {
        format: u16,
    },
    Enrolled {
        subject: String,
        serial: String,
        not_after: UtcTime,
        reenroll: bool,
    },
    Refused {
        operation: &'static str,
        reason: String,
    },
}

/// The EST CA.
pub struct EstCa {
    issuer: CertificateIssuer,
    /// CAs whose certificates may authenticate `/est/sen` (the factory CA).
    factory: TrustStore,
    validity: Duration,
    rng: Drbg,
    /// Refuse EST over sessions not authenticated by a certificate (RFC 9148 requires one).
    pub require_certificate: bool,
    faults: Vec<EstFault>,
    /// The operations ("sen", "sren") the faults apply to; empty: both.
    fault_operations: Vec<&'static str>,
    /// The last CSR received (DER), as the client sent it.
    last_csr: Option<Vec<u8>>,
    /// Peers (by CSR subject and operation) already told 5.03 once.
    delayed: HashSet<(String, &'static str)>,
}

impl EstCa {
    pub fn new(
        issuer: CertificateIssuer,
        factory: TrustStore,
        validity: Duration,
        rng: Drbg,
    ) -> Self {
        EstCa {
            issuer,
            factory,
            validity,
            rng,
            require_certificate: true,
            faults: Vec::new(),
            fault_operations: Vec::new(),
            last_csr: None,
            delayed: HashSet::new(),
        }
    }

    pub fn set_faults(&mut self, faults: Vec<EstFault>) {
        self.faults = faults;
    }

    /// Limits the faults to some operations (`"sen"`, `"sren"`); an empty list means all.
    pub fn set_fault_operations(&mut self, operations: &[&'static str]) {
        self.fault_operations = operations.to_vec();
    }

    /// The faults that apply to `operation`.
    fn faults_for(&self, operation: &str) -> &[EstFault] {
        if self.fault_operations.is_empty() || self.fault_operations.contains(&operation) {
            &self.faults
        } else {
            &[]
        }
    }

    pub fn set_validity(&mut self, validity: Duration) {
        self.validity = validity;
    }

    pub fn ca_certificate(&self) -> &Certificate {
        self.issuer.certificate()
    }

    /// How long to hold back the answer to `req` (the `est-delay` fault): `Some` for
    /// confirmable enrollment requests (`/est/sen`, `/est/sren`, like the other faults),
    /// which the caller acknowledges at once with an empty ACK and answers through
    /// [`EstCa::handle`] once the delay has passed.
    pub fn response_delay(&self, req: &coap::Packet, confirmable: bool) -> Option<Duration> {
        let path = coap::uri_path(req).unwrap_or_default();
        let operation = match path
            .iter()
            .map(String::as_str)
            .collect::<Vec<_>>()
            .as_slice()
        {
            ["est", "sen"] => "sen",
            ["est", "sren"] => "sren",
            _ => return None,
        };
        if !confirmable {
            return None;
        }
        self.faults_for(operation).iter().find_map(|f| match f {
            EstFault::Delayed { secs } => Some(Duration::from_secs(u64::from(*secs))),
            _ => None,
        })
    }

    /// The body of the last `/sen` or `/sren` request with Content-Format 286, for checking
    /// what a client sends.
    pub fn last_csr(&self) -> Option<&[u8]> {
        self.last_csr.as_deref()
    }

    /// True when `path` (the request's Uri-Path segments) is one of ours.
    pub fn serves(path: &[String]) -> bool {
        matches!(path.first().map(String::as_str), Some("est")) || path == [".well-known", "core"]
    }

    /// Answers one EST request at `now`.
    pub fn handle(
        &mut self,
        now: UtcTime,
        req: &coap::Packet,
        auth: &PeerAuth,
    ) -> (coap::Packet, Option<EstEvent>) {
        let path = coap::uri_path(req).unwrap_or_default();
        let method = coap::raw_code(req);
        match (
            method,
            path.iter()
                .map(String::as_str)
                .collect::<Vec<_>>()
                .as_slice(),
        ) {
            (code::GET, [".well-known", "core"]) => (self.discovery(req), None),
            (code::GET, ["est", "crts"]) => self.cacerts(req),
            (code::POST, ["est", "sen"]) => self.enroll(now, req, auth, false),
            (code::POST, ["est", "sren"]) => self.enroll(now, req, auth, true),
            (_, ["est", "crts" | "sen" | "sren"]) => {
                (coap::new_response(code::METHOD_NOT_ALLOWED), None)
            }
            _ => (coap::new_response(code::NOT_FOUND), None),
        }
    }

    fn discovery(&self, req: &coap::Packet) -> coap::Packet {
        let filter = coap::uri_query(req)
            .unwrap_or_default()
            .into_iter()
            .find_map(|q| q.strip_prefix("rt=").map(str::to_string));
        let links = [
            ("/est/crts", "ace.est.crts"),
            ("/est/sen", "ace.est.sen"),
            ("/est/sren", "ace.est.sren"),
        ];
        let body = links
            .iter()
            .filter(|(_, rt)| match &filter {
                Some(f) => match f.strip_suffix('*') {
                    Some(prefix) => rt.starts_with(prefix),
                    None => rt == f,
                },
                None => true,
            })
            .map(|(p, rt)| format!("<{p}>;rt=\"{rt}\";ct=\"281 287\""))
            .collect::<Vec<_>>()
            .join(",");
        let mut r = coap::new_response(code::CONTENT);
        coap::set_content_format(&mut r, content_format::LINK_FORMAT);
        r.payload = body.into_bytes();
        r
    }

    fn cacerts(&self, req: &coap::Packet) -> (coap::Packet, Option<EstEvent>) {
        let format = match coap::accept_of(req) {
            None | Some(content_format::PKCS7_CERTS_ONLY) => content_format::PKCS7_CERTS_ONLY,
            Some(content_format::PKIX_CERT) => content_format::PKIX_CERT,
            Some(_) => return (coap::new_response(code::NOT_ACCEPTABLE), None),
        };
        let ca = self.issuer.certificate();
        let mut r = coap::new_response(code::CONTENT);
        coap::set_content_format(&mut r, format);
        r.payload = if format == content_format::PKIX_CERT {
            ca.der().to_vec()
        } else {
            build_certs_only(std::slice::from_ref(ca))
        };
        (r, Some(EstEvent::CaCerts { format }))
    }

    fn refuse(operation: &'static str, rc: u8, reason: String) -> (coap::Packet, Option<EstEvent>) {
        warn!("EST /{operation} refused: {reason}");
        (
            coap::new_response(rc),
            Some(EstEvent::Refused { operation, reason }),
        )
    }

    fn enroll(
        &mut self,
        now: UtcTime,
        req: &coap::Packet,
        auth: &PeerAuth,
        reenroll: bool,
    ) -> (coap::Packet, Option<EstEvent>) {
        let op = if reenroll { "sren" } else { "sen" };
        if coap::content_format_of(req) != Some(content_format::PKCS10) {
            return Self::refuse(
                op,
                code::UNSUPPORTED_CONTENT_FORMAT,
                "CSR is not Content-Format 286".into(),
            );
        }
        self.last_csr = Some(req.payload.clone());
        let format = match coap::accept_of(req) {
            None | Some(content_format::PKIX_CERT) => content_format::PKIX_CERT,
            Some(content_format::PKCS7_CERTS_ONLY) => content_format::PKCS7_CERTS_ONLY,
            Some(_) => return Self::refuse(op, code::NOT_ACCEPTABLE, "unsupported Accept".into()),
        };
        let csr = match Csr::parse(&req.payload) {
            Ok(c) => c,
            Err(e) => return Self::refuse(op, code::BAD_REQUEST, format!("bad CSR: {e}")),
        };
        if let Err(reason) = self.authorize(now, &csr, auth, reenroll) {
            return Self::refuse(op, code::FORBIDDEN, reason);
        }
        let subject = csr.subject().to_string();
        let faults = self.faults_for(op).to_vec();
        if let Some(EstFault::ServiceUnavailable { max_age }) = faults
            .iter()
            .find(|f| matches!(f, EstFault::ServiceUnavailable { .. }))
            .cloned()
        {
            if self.delayed.insert((subject.clone(), op)) {
                info!("EST /{op} for {subject}: answering 5.03 (fault), Max-Age {max_age}");
                let mut r = coap::new_response(code::SERVICE_UNAVAILABLE);
                coap::set_uint_option(&mut r, CoapOption::MaxAge, max_age);
                return (r, None);
            }
        }
        self.delayed.remove(&(subject.clone(), op));
        let cert = match self.issue(now, &csr, &faults) {
            Ok(c) => c,
            Err(e) => {
                return Self::refuse(
                    op,
                    code::INTERNAL_SERVER_ERROR,
                    format!("issuing failed: {e}"),
                )
            }
        };
        let mut r = coap::new_response(code::CREATED);
        coap::set_content_format(&mut r, format);
        r.payload = if format == content_format::PKIX_CERT {
            cert.der().to_vec()
        } else {
            build_certs_only(&[cert.clone(), self.issuer.certificate().clone()])
        };
        if faults.contains(&EstFault::Truncated) {
            r.payload.truncate(r.payload.len() / 2);
        }
        info!(
            "EST /{op}: issued {} serial={} notAfter={}",
            cert.subject(),
            cert.serial_hex(),
            cert.not_after().unix_seconds()
        );
        let ev = EstEvent::Enrolled {
            subject,
            serial: cert.serial_hex(),
            not_after: cert.not_after(),
            reenroll,
        };
        (r, Some(ev))
    }

    /// `/sen` needs a factory (or earlier EST) certificate naming the same CN as the CSR;
    /// `/sren` needs a certificate from this CA with the CSR's exact subject.
    fn authorize(
        &self,
        now: UtcTime,
        csr: &Csr,
        auth: &PeerAuth,
        reenroll: bool,
    ) -> Result<(), String> {
        let cert = match auth {
            PeerAuth::Certificate(c) => c,
            PeerAuth::Psk(_) | PeerAuth::None if !self.require_certificate && !reenroll => {
                return Ok(())
            }
            _ => return Err("EST needs a certificate-authenticated DTLS session".into()),
        };
        let mut own = TrustStore::new();
        own.add(self.issuer.certificate().clone());
        let ours = own.verify_chain(std::slice::from_ref(cert), now).is_ok();
        if reenroll {
            if !ours {
                return Err(format!("{} was not issued by this EST CA", cert.subject()));
            }
            if cert.subject() != csr.subject() {
                return Err(format!(
                    "CSR subject {} differs from the certificate's {}",
                    csr.subject(),
                    cert.subject()
                ));
            }
            return Ok(());
        }
        let factory = !self.factory.is_empty()
            && self
                .factory
                .verify_chain(std::slice::from_ref(cert), now)
                .is_ok();
        if !factory && !ours {
            return Err(format!("{} is not a factory certificate", cert.subject()));
        }
        if cert.subject_common_name() != csr.subject_common_name() {
            return Err(format!(
                "CSR names {:?}, the device is {:?}",
                csr.subject_common_name(),
                cert.subject_common_name()
            ));
        }
        Ok(())
    }

    fn issue(
        &mut self,
        now: UtcTime,
        csr: &Csr,
        faults: &[EstFault],
    ) -> Result<Certificate, estuary::crypto::CryptoError> {
        let expired = faults.contains(&EstFault::Expired);
        let (not_before, not_after) = if expired {
            (
                UtcTime::from_unix_seconds(now.unix_seconds() - 7200),
                UtcTime::from_unix_seconds(now.unix_seconds() - 3600),
            )
        } else {
            (now, now + self.validity)
        };
        let template = CertificateTemplate {
            subject: csr.subject().to_string(),
            serial: CertificateTemplate::random_serial(&mut self.rng)?,
            not_before,
            not_after,
            profile: CertificateProfile::Client,
        };
        let wrong;
        let public_key = if faults.contains(&EstFault::WrongKey) {
            wrong = KeyPair::generate(&mut self.rng)?;
            wrong.public_key_der()
        } else {
            csr.public_key_der()
        };
        self.issuer.issue(public_key, &template, &mut self.rng)
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    const T0: i64 = 1_700_000_000;

    fn now() -> UtcTime {
        UtcTime::from_unix_seconds(T0)
    }

    struct Pki {
        rng: Drbg,
        est: EstCa,
        factory_ca: CertificateIssuer,
        device_key: KeyPair,
        factory_cert: Certificate,
    }

    fn issue(ca: &CertificateIssuer, key: &KeyPair, subject: &str, rng: &mut Drbg) -> Certificate {
        let t = CertificateTemplate {
            subject: subject.into(),
            serial: CertificateTemplate::random_serial(rng).unwrap(),
            not_before: UtcTime::from_unix_seconds(T0 - 100),
            not_after: UtcTime::from_unix_seconds(T0 + 100_000),
            profile: CertificateProfile::Client,
        };
        ca.issue(key.public_key_der(), &t, rng).unwrap()
    }

    fn pki() -> Pki {
        let mut rng = Drbg::from_seed(11);
        let mk_ca = |name: &str, rng: &mut Drbg| {
            let k = KeyPair::generate(rng).unwrap();
            CertificateIssuer::new_root_ca(
                k,
                name,
                UtcTime::from_unix_seconds(T0 - 1000),
                UtcTime::from_unix_seconds(T0 + 10_000_000),
                rng,
            )
            .unwrap()
        };
        let est_ca = mk_ca("CN=EST CA", &mut rng);
        let factory_ca = mk_ca("CN=Factory CA", &mut rng);
        let device_key = KeyPair::generate(&mut rng).unwrap();
        let factory_cert = issue(&factory_ca, &device_key, "CN=dev1", &mut rng);
        let mut factory = TrustStore::new();
        factory.add(factory_ca.certificate().clone());
        let est = EstCa::new(
            est_ca,
            factory,
            Duration::from_secs(120),
            Drbg::from_seed(12),
        );
        Pki {
            rng,
            est,
            factory_ca,
            device_key,
            factory_cert,
        }
    }

    fn csr_request(
        path: &str,
        key: &KeyPair,
        subject: &str,
        rng: &mut Drbg,
        accept: Option<u16>,
    ) -> coap::Packet {
        let mut r = coap::new_request(code::POST, path);
        coap::set_content_format(&mut r, content_format::PKCS10);
        if let Some(a) = accept {
            coap::set_uint_option(&mut r, CoapOption::Accept, u32::from(a));
        }
        r.payload = Csr::build(key, subject, rng).unwrap();
        r
    }

    #[test]
    fn discovery_lists_est_resources_and_filters_by_rt() {
        let mut p = pki();
        let mut req = coap::new_request(code::GET, "/.well-known/core");
        coap::add_uri_query(&mut req, "rt=ace.est*");
        let (r, _) = p.est.handle(now(), &req, &PeerAuth::None);
        let body = String::from_utf8(r.payload).unwrap();
        assert!(body.contains("</est/sen>;rt=\"ace.est.sen\""), "{body}");
        assert_eq!(body.matches('<').count(), 3);
        let mut req = coap::new_request(code::GET, "/.well-known/core");
        coap::add_uri_query(&mut req, "rt=ace.est.crts");
        let (r, _) = p.est.handle(now(), &req, &PeerAuth::None);
        assert_eq!(r.payload, b"</est/crts>;rt=\"ace.est.crts\";ct=\"281 287\"");
    }

    #[test]
    fn crts_by_accept() {
        let mut p = pki();
        let ca_der = p.est.ca_certificate().der().to_vec();
        let mut req = coap::new_request(code::GET, "/est/crts");
        coap::set_uint_option(&mut req, CoapOption::Accept, 287);
        let (r, _) = p.est.handle(now(), &req, &PeerAuth::None);
        assert_eq!(coap::content_format_of(&r), Some(287));
        assert_eq!(r.payload, ca_der);
        coap::set_uint_option(&mut req, CoapOption::Accept, 281);
        let (r, ev) = p.est.handle(now(), &req, &PeerAuth::None);
        assert_eq!(ev, Some(EstEvent::CaCerts { format: 281 }));
        let certs = estuary::crypto::parse_certs_only(&r.payload).unwrap();
        assert_eq!(certs[0].der(), &ca_der[..]);
        coap::set_uint_option(&mut req, CoapOption::Accept, 0);
        assert_eq!(
            coap::raw_code(&p.est.handle(now(), &req, &PeerAuth::None).0),
            code::NOT_ACCEPTABLE
        );
    }

    #[test]
    fn sen_with_factory_certificate_then_sren_with_the_est_certificate() {
        let mut p = pki();
        let key = p.device_key.clone();
        let req = csr_request("/est/sen", &key, "CN=dev1", &mut p.rng, Some(281));
        let auth = PeerAuth::Certificate(Box::new(p.factory_cert.clone()));
        let (r, ev) = p.est.handle(now(), &req, &auth);
        assert_eq!(coap::raw_code(&r), code::CREATED, "{ev:?}");
        let certs = estuary::crypto::parse_certs_only(&r.payload).unwrap();
        let leaf = certs.iter().find(|c| c.matches_key(&key)).unwrap().clone();
        assert_eq!(leaf.not_after().unix_seconds() - T0, 120);
        assert!(matches!(
            ev,
            Some(EstEvent::Enrolled {
                reenroll: false,
                ..
            })
        ));

        // Re-enroll over a session authenticated by that certificate.
        let req = csr_request("/est/sren", &key, "CN=dev1", &mut p.rng, None);
        let (r, ev) = p
            .est
            .handle(now(), &req, &PeerAuth::Certificate(Box::new(leaf.clone())));
        assert_eq!(coap::raw_code(&r), code::CREATED, "{ev:?}");
        assert_eq!(coap::content_format_of(&r), Some(287));
        // The factory certificate cannot re-enroll, nor may a CSR change the subject.
        let (r, _) = p.est.handle(now(), &req, &auth);
        assert_eq!(coap::raw_code(&r), code::FORBIDDEN);
        let req = csr_request("/est/sren", &key, "CN=dev2", &mut p.rng, None);
        let (r, ev) = p
            .est
            .handle(now(), &req, &PeerAuth::Certificate(Box::new(leaf)));
        assert_eq!(coap::raw_code(&r), code::FORBIDDEN);
        assert!(matches!(
            ev,
            Some(EstEvent::Refused {
                operation: "sren",
                ..
            })
        ));
    }

    #[test]
    fn sen_refusals() {
        let mut p = pki();
        let key = p.device_key.clone();
        let req = csr_request("/est/sen", &key, "CN=dev1", &mut p.rng, None);
        // No certificate session.
        for auth in [PeerAuth::None, PeerAuth::Psk(b"dev1".to_vec())] {
            assert_eq!(
                coap::raw_code(&p.est.handle(now(), &req, &auth).0),
                code::FORBIDDEN
            );
        }
        // A certificate from an unknown CA.
        let rogue_ca = CertificateIssuer::new_root_ca(
            KeyPair::generate(&mut p.rng).unwrap(),
            "CN=Rogue",
            UtcTime::from_unix_seconds(T0 - 10),
            UtcTime::from_unix_seconds(T0 + 1000),
            &mut p.rng,
        )
        .unwrap();
        let rogue = issue(&rogue_ca, &key, "CN=dev1", &mut p.rng);
        assert_eq!(
            coap::raw_code(
                &p.est
                    .handle(now(), &req, &PeerAuth::Certificate(Box::new(rogue)))
                    .0
            ),
            code::FORBIDDEN
        );
        // A factory certificate for another device.
        let other = issue(&p.factory_ca, &key, "CN=dev9", &mut p.rng);
        assert_eq!(
            coap::raw_code(
                &p.est
                    .handle(now(), &req, &PeerAuth::Certificate(Box::new(other)))
                    .0
            ),
            code::FORBIDDEN
        );
        // Wrong content format and a broken CSR.
        let auth = PeerAuth::Certificate(Box::new(p.factory_cert.clone()));
        let mut bad = req.clone();
        coap::set_content_format(&mut bad, 0);
        assert_eq!(
            coap::raw_code(&p.est.handle(now(), &bad, &auth).0),
            code::UNSUPPORTED_CONTENT_FORMAT
        );
        let mut bad = req.clone();
        bad.payload.truncate(20);
        assert_eq!(
            coap::raw_code(&p.est.handle(now(), &bad, &auth).0),
            code::BAD_REQUEST
        );
        // Without the certificate requirement, plain sessions may enroll.
        p.est.require_certificate = false;
        assert_eq!(
            coap::raw_code(&p.est.handle(now(), &req, &PeerAuth::None).0),
            code::CREATED
        );
    }

    #[test]
    fn faults() {
        let mut p = pki();
        let key = p.device_key.clone();
        let auth = PeerAuth::Certificate(Box::new(p.factory_cert.clone()));
        let req = csr_request("/est/sen", &key, "CN=dev1", &mut p.rng, None);

        p.est
            .set_faults(vec![EstFault::parse("est-503=5").unwrap()]);
        let (r, _) = p.est.handle(now(), &req, &auth);
        assert_eq!(coap::raw_code(&r), code::SERVICE_UNAVAILABLE);
        assert_eq!(coap::uint_option(&r, CoapOption::MaxAge), Some(5));
        assert_eq!(
            coap::raw_code(&p.est.handle(now(), &req, &auth).0),
            code::CREATED
        );

        p.est.set_faults(vec![EstFault::WrongKey]);
        let (r, _) = p.est.handle(now(), &req, &auth);
        let c = Certificate::from_der(&r.payload).unwrap();
        assert!(!c.matches_key(&key));

        p.est.set_faults(vec![EstFault::Expired]);
        let (r, _) = p.est.handle(now(), &req, &auth);
        assert!(!Certificate::from_der(&r.payload)
            .unwrap()
            .is_valid_at(now()));

        p.est.set_faults(vec![EstFault::Truncated]);
        let (r, _) = p.est.handle(now(), &req, &auth);
        assert!(Certificate::from_der(&r.payload).is_err());

        assert_eq!(
            EstFault::parse("est-503"),
            Some(EstFault::ServiceUnavailable { max_age: 2 })
        );
        assert_eq!(
            EstFault::parse("est-delay"),
            Some(EstFault::Delayed {
                secs: DEFAULT_DELAY_SECS
            })
        );
        assert_eq!(
            EstFault::parse("est-delay=30"),
            Some(EstFault::Delayed { secs: 30 })
        );
        p.est.set_faults(vec![EstFault::Delayed { secs: 3 }]);
        assert_eq!(
            p.est.response_delay(&req, true),
            Some(Duration::from_secs(3))
        );
        assert_eq!(p.est.response_delay(&req, false), None, "NON: no empty ACK");
        let bs = coap::new_request(code::POST, "/bs");
        assert_eq!(p.est.response_delay(&bs, true), None);
        let crts = coap::new_request(code::GET, "/est/crts");
        assert_eq!(p.est.response_delay(&crts, true), None);
        let sren = csr_request("/est/sren", &key, "CN=dev1", &mut p.rng, None);
        p.est.set_fault_operations(&["sren"]);
        assert_eq!(p.est.response_delay(&req, true), None, "/sen spared");
        assert!(p.est.response_delay(&sren, true).is_some());
        p.est.set_faults(vec![EstFault::WrongKey]);
        let (r, _) = p.est.handle(now(), &req, &auth);
        assert!(Certificate::from_der(&r.payload).unwrap().matches_key(&key));
        p.est.set_fault_operations(&[]);
        p.est.set_faults(Vec::new());
        assert_eq!(p.est.response_delay(&req, true), None);
        assert_eq!(EstFault::parse("nope"), None);
        assert_eq!(EstFault::parse("est-503=x"), None);
    }
}
