//! `estuary-testserver init`: makes a state directory — `config.toml`, and per endpoint a
//! folder with the credentials that device needs — and says what the device needs to be
//! pointed at the server. Also loads a state directory's configuration for `run`.
//!
//! Layout (names chosen so a reader needs no manual):
//! ```text
//! DIR/config.toml                     ports, bind address, one section per endpoint
//! DIR/README.txt                      this layout
//! DIR/endpoints/NAME/psk-identity.txt PSK identity (exact bytes, no newline)
//! DIR/endpoints/NAME/psk-key.hex      PSK key, 16 random bytes as hex (mode 0600)
//! DIR/endpoints/NAME/README.txt       what each file is for, and what comes later
//! DIR/endpoints/NAME/factory-cert.pem the device's certificate (issued by the factory CA)
//! DIR/endpoints/NAME/factory-key.pem  its private key (mode 0600)
//! DIR/endpoints/NAME/server-cert.pem  the server's DTLS certificate (pin it: usage 3)
//! DIR/endpoints/NAME/trust-anchor.pem the root CA that issued it (usage 2)
//! DIR/ca/root-ca-{cert,key}.pem       root CA: issues the server certificate (EST later)
//! DIR/ca/factory-ca-{cert,key}.pem    factory CA: issues device certificates
//! DIR/server-{cert,key}.pem           the server's DTLS certificate (SAN localhost,
//!                                     127.0.0.1, ::1) and key
//! ```
//! The coaps listener accepts every endpoint's PSK (one key per identity) and client
//! certificates that chain to the factory or root CA ([`load_secure_listener`]).

use std::fs::{self, File, OpenOptions};
use std::io::{self, Read, Write};
use std::os::unix::fs::{OpenOptionsExt, PermissionsExt};
use std::path::{Path, PathBuf};

use estuary::crypto::{
    Certificate, CertificateIssuer, CryptoError, Drbg, KeyPair, SecretBytes, TrustStore,
};
use estuary::time::UtcTime;

use crate::coaps::SecureListenerConfig;
use crate::config::{validate_endpoint_name, Config, ConfigError, CONFIG_FILE};
use crate::pki::{self, TestPki};

/// Bytes of a generated PSK key.
pub const PSK_KEY_LEN: usize = 16;

pub const PSK_IDENTITY_FILE: &str = "psk-identity.txt";
pub const PSK_KEY_FILE: &str = "psk-key.hex";
pub const README_FILE: &str = "README.txt";
pub const FACTORY_CERT_FILE: &str = "factory-cert.pem";
pub const FACTORY_KEY_FILE: &str = "factory-key.pem";
pub const SERVER_CERT_FILE: &str = "server-cert.pem";
/// The Bootstrap + EST server's certificate (the same server certificate: /0/x/4 of the
/// bootstrap account with Certificate Usage 3).
pub const BOOTSTRAP_SERVER_CERT_FILE: &str = "bootstrap-server-cert.pem";
pub const SERVER_KEY_FILE: &str = "server-key.pem";
pub const TRUST_ANCHOR_FILE: &str = "trust-anchor.pem";
pub const CA_DIR: &str = "ca";
pub const ROOT_CA_CERT_FILE: &str = "root-ca-cert.pem";
pub const ROOT_CA_KEY_FILE: &str = "root-ca-key.pem";
pub const FACTORY_CA_CERT_FILE: &str = "factory-ca-cert.pem";
pub const FACTORY_CA_KEY_FILE: &str = "factory-ca-key.pem";
/// Subject of the factory CA.
pub const FACTORY_CA_SUBJECT: &str = "CN=Estuary Test Factory CA,O=Estuary";
/// Validity of everything `init` issues, from a day before `init` ran.
const VALIDITY_DAYS: i64 = 10 * 365;

/// Why `init` or loading a state directory failed.
#[derive(Debug, thiserror::Error)]
pub enum InitError {
    #[error("{0} already exists; use --force to overwrite it (and regenerate the named endpoints' credentials)")]
    AlreadyInitialised(PathBuf),
    #[error("{0}")]
    BadEndpoint(String),
    #[error("endpoint {0:?} given twice")]
    DuplicateEndpoint(String),
    #[error("{path}: {source}")]
    Io {
        path: PathBuf,
        #[source]
        source: io::Error,
    },
    #[error("{what}: {source}")]
    Crypto {
        what: String,
        #[source]
        source: CryptoError,
    },
    #[error("{}: {source}", path.display())]
    Config {
        path: PathBuf,
        #[source]
        source: ConfigError,
    },
}

fn io_err(path: &Path) -> impl FnOnce(io::Error) -> InitError + '_ {
    move |source| InitError::Io {
        path: path.to_path_buf(),
        source,
    }
}

/// What `init` was asked to do.
#[derive(Clone, Debug, Default, PartialEq, Eq)]
pub struct InitOptions {
    pub dir: PathBuf,
    pub endpoints: Vec<String>,
    /// Overwrite an existing `config.toml` and the named endpoints' credentials.
    pub force: bool,
}

/// One endpoint's generated credentials.
#[derive(Clone, Debug, PartialEq, Eq)]
pub struct EndpointFiles {
    pub name: String,
    pub dir: PathBuf,
    pub psk_identity: String,
    pub psk_key_hex: String,
}

/// What `init` made.
#[derive(Clone, Debug, PartialEq, Eq)]
pub struct InitReport {
    pub dir: PathBuf,
    pub config_path: PathBuf,
    pub config: Config,
    pub endpoints: Vec<EndpointFiles>,
}

/// Creates (or with `force`, rewrites) a state directory.
pub fn init(opts: &InitOptions) -> Result<InitReport, InitError> {
    for (i, name) in opts.endpoints.iter().enumerate() {
        validate_endpoint_name(name).map_err(InitError::BadEndpoint)?;
        if opts.endpoints[..i].contains(name) {
            return Err(InitError::DuplicateEndpoint(name.clone()));
        }
    }
    let dir = &opts.dir;
    let config_path = dir.join(CONFIG_FILE);
    if config_path.exists() && !opts.force {
        return Err(InitError::AlreadyInitialised(config_path));
    }
    fs::create_dir_all(dir).map_err(io_err(dir))?;
    let dir = fs::canonicalize(dir).map_err(io_err(dir))?;
    let config_path = dir.join(CONFIG_FILE);

    let mut config = Config::with_endpoints(&opts.endpoints);
    let uri = lwm2m_uri(&config);
    let mut rng = Drbg::from_os_entropy().map_err(crypto("seeding the random generator"))?;
    let authorities = write_authorities(&dir, &mut rng)?;
    let mut endpoints = Vec::new();
    for name in &opts.endpoints {
        endpoints.push(write_endpoint(&dir, name, &uri)?);
        write_endpoint_certificates(
            &dir.join("endpoints").join(name),
            name,
            &authorities,
            &mut rng,
        )?;
    }
    config.state_dir = Some(dir.clone());
    write_file(&dir.join(README_FILE), ROOT_README.as_bytes(), 0o644)?;
    // The config last and atomically: its presence means "initialised".
    let tmp = dir.join(format!(".{CONFIG_FILE}.tmp"));
    write_file(&tmp, config.to_commented_toml().as_bytes(), 0o644)?;
    fs::rename(&tmp, &config_path).map_err(io_err(&config_path))?;
    Ok(InitReport {
        dir,
        config_path,
        config,
        endpoints,
    })
}

fn write_endpoint(dir: &Path, name: &str, lwm2m_uri: &str) -> Result<EndpointFiles, InitError> {
    let ep_dir = dir.join("endpoints").join(name);
    fs::create_dir_all(&ep_dir).map_err(io_err(&ep_dir))?;
    fs::set_permissions(&ep_dir, fs::Permissions::from_mode(0o700)).map_err(io_err(&ep_dir))?;
    let mut key = [0u8; PSK_KEY_LEN];
    File::open("/dev/urandom")
        .and_then(|mut f| f.read_exact(&mut key))
        .map_err(io_err(Path::new("/dev/urandom")))?;
    let psk_key_hex = hex(&key);
    let psk_identity = name.to_string();
    write_file(
        &ep_dir.join(PSK_IDENTITY_FILE),
        psk_identity.as_bytes(),
        0o644,
    )?;
    write_file(
        &ep_dir.join(PSK_KEY_FILE),
        format!("{psk_key_hex}\n").as_bytes(),
        0o600,
    )?;
    write_file(
        &ep_dir.join(README_FILE),
        endpoint_readme(name, lwm2m_uri).as_bytes(),
        0o644,
    )?;
    Ok(EndpointFiles {
        name: name.to_string(),
        dir: ep_dir,
        psk_identity,
        psk_key_hex,
    })
}

fn crypto(what: &str) -> impl FnOnce(CryptoError) -> InitError + '_ {
    move |source| InitError::Crypto {
        what: what.to_string(),
        source,
    }
}

/// The CAs and the server certificate of a state directory.
pub struct Authorities {
    pub pki: TestPki,
    pub factory_ca: CertificateIssuer,
}

fn validity() -> (UtcTime, UtcTime) {
    let now = std::time::SystemTime::now()
        .duration_since(std::time::UNIX_EPOCH)
        .map_or(0, |d| d.as_secs() as i64);
    (
        UtcTime::from_unix_seconds(now - 86_400),
        UtcTime::from_unix_seconds(now + VALIDITY_DAYS * 86_400),
    )
}

/// Creates the root CA, the factory CA and the server certificate, or keeps the ones a
/// previous `init` made (so devices provisioned earlier stay valid).
fn write_authorities(dir: &Path, rng: &mut Drbg) -> Result<Authorities, InitError> {
    if let Ok(existing) = load_authorities(dir) {
        return Ok(existing);
    }
    let (from, to) = validity();
    let pki = TestPki::generate(rng, from, to).map_err(crypto("creating the root CA"))?;
    let factory_key = KeyPair::generate(rng).map_err(crypto("creating the factory CA key"))?;
    let factory_ca = CertificateIssuer::new_root_ca(factory_key, FACTORY_CA_SUBJECT, from, to, rng)
        .map_err(crypto("creating the factory CA"))?;
    let ca_dir = dir.join(CA_DIR);
    fs::create_dir_all(&ca_dir).map_err(io_err(&ca_dir))?;
    fs::set_permissions(&ca_dir, fs::Permissions::from_mode(0o700)).map_err(io_err(&ca_dir))?;
    let root = &pki.ca;
    write_file(
        &ca_dir.join(ROOT_CA_CERT_FILE),
        root.certificate().to_pem().as_bytes(),
        0o644,
    )?;
    write_file(
        &ca_dir.join(ROOT_CA_KEY_FILE),
        root.key().to_pem().expose(),
        0o600,
    )?;
    write_file(
        &ca_dir.join(FACTORY_CA_CERT_FILE),
        factory_ca.certificate().to_pem().as_bytes(),
        0o644,
    )?;
    write_file(
        &ca_dir.join(FACTORY_CA_KEY_FILE),
        factory_ca.key().to_pem().expose(),
        0o600,
    )?;
    write_file(
        &dir.join(SERVER_CERT_FILE),
        pki.server_cert.to_pem().as_bytes(),
        0o644,
    )?;
    write_file(
        &dir.join(SERVER_KEY_FILE),
        pki.server_key.to_pem().expose(),
        0o600,
    )?;
    Ok(Authorities { pki, factory_ca })
}

fn read(path: &Path) -> Result<Vec<u8>, InitError> {
    fs::read(path).map_err(io_err(path))
}

fn read_cert(path: &Path) -> Result<Certificate, InitError> {
    let bytes = read(path)?;
    Certificate::from_pem(&bytes).map_err(crypto(&path.display().to_string()))
}

fn read_key(path: &Path) -> Result<KeyPair, InitError> {
    let bytes = SecretBytes::new(read(path)?);
    KeyPair::from_der_or_pem(bytes.expose()).map_err(crypto(&path.display().to_string()))
}

/// The CAs and server credentials of a state directory.
pub fn load_authorities(dir: &Path) -> Result<Authorities, InitError> {
    let ca_dir = dir.join(CA_DIR);
    let issuer = |cert: &str, key: &str| -> Result<CertificateIssuer, InitError> {
        CertificateIssuer::new(read_key(&ca_dir.join(key))?, read_cert(&ca_dir.join(cert))?)
            .map_err(crypto(cert))
    };
    let root = issuer(ROOT_CA_CERT_FILE, ROOT_CA_KEY_FILE)?;
    let factory_ca = issuer(FACTORY_CA_CERT_FILE, FACTORY_CA_KEY_FILE)?;
    let server_cert = read_cert(&dir.join(SERVER_CERT_FILE))?;
    let server_key = read_key(&dir.join(SERVER_KEY_FILE))?;
    Ok(Authorities {
        pki: TestPki::from_parts(root, server_cert, server_key),
        factory_ca,
    })
}

fn write_endpoint_certificates(
    ep_dir: &Path,
    name: &str,
    auth: &Authorities,
    rng: &mut Drbg,
) -> Result<(), InitError> {
    let (from, to) = validity();
    let device = pki::issue(
        &auth.factory_ca,
        &format!("CN={name}"),
        estuary::crypto::CertificateProfile::Client,
        from,
        to,
        rng,
    )
    .map_err(crypto("issuing the device certificate"))?;
    write_file(
        &ep_dir.join(FACTORY_CERT_FILE),
        device.cert.to_pem().as_bytes(),
        0o644,
    )?;
    write_file(
        &ep_dir.join(FACTORY_KEY_FILE),
        device.key.to_pem().expose(),
        0o600,
    )?;
    write_file(
        &ep_dir.join(SERVER_CERT_FILE),
        auth.pki.server_cert.to_pem().as_bytes(),
        0o644,
    )?;
    write_file(
        &ep_dir.join(BOOTSTRAP_SERVER_CERT_FILE),
        auth.pki.server_cert.to_pem().as_bytes(),
        0o644,
    )?;
    write_file(
        &ep_dir.join(TRUST_ANCHOR_FILE),
        auth.pki.ca.certificate().to_pem().as_bytes(),
        0o644,
    )
}

/// The coaps listener's credentials from a state directory: every endpoint folder's PSK,
/// and the server certificate with the factory and root CAs for client certificates.
/// `Ok(None)` for a directory without any credentials.
pub fn load_secure_listener(dir: &Path) -> Result<Option<SecureListenerConfig>, InitError> {
    let mut psk = Vec::new();
    let eps = dir.join("endpoints");
    if let Ok(entries) = fs::read_dir(&eps) {
        for e in entries.flatten() {
            let d = e.path();
            let (id, key) = (d.join(PSK_IDENTITY_FILE), d.join(PSK_KEY_FILE));
            if !id.exists() || !key.exists() {
                continue;
            }
            let identity = read(&id)?;
            let hex_key = String::from_utf8_lossy(&read(&key)?).trim().to_string();
            let key_bytes = unhex(&hex_key).ok_or_else(|| {
                InitError::BadEndpoint(format!("{}: not a hex key", key.display()))
            })?;
            psk.push((identity, SecretBytes::new(key_bytes)));
        }
    }
    let certificate = match load_authorities(dir) {
        Ok(a) => {
            let mut cas = TrustStore::new();
            cas.add(a.factory_ca.certificate().clone());
            cas.add(a.pki.ca.certificate().clone());
            Some((a.pki.server_chain(), a.pki.server_key.clone(), cas))
        }
        Err(_) if !dir.join(CA_DIR).exists() => None,
        Err(e) => return Err(e),
    };
    if psk.is_empty() && certificate.is_none() {
        return Ok(None);
    }
    Ok(Some(SecureListenerConfig {
        psk,
        certificate,
        timers: None,
    }))
}

/// Bytes from hex text.
pub fn unhex(s: &str) -> Option<Vec<u8>> {
    if s.len() % 2 != 0 {
        return None;
    }
    (0..s.len())
        .step_by(2)
        .map(|i| u8::from_str_radix(s.get(i..i + 2)?, 16).ok())
        .collect()
}

/// Writes a whole file with `mode`, also when it already exists with another mode.
fn write_file(path: &Path, data: &[u8], mode: u32) -> Result<(), InitError> {
    let mut f = OpenOptions::new()
        .write(true)
        .create(true)
        .truncate(true)
        .mode(mode)
        .open(path)
        .map_err(io_err(path))?;
    f.set_permissions(fs::Permissions::from_mode(mode))
        .map_err(io_err(path))?;
    f.write_all(data).map_err(io_err(path))?;
    f.sync_all().map_err(io_err(path))
}

/// Lower-case hex.
pub fn hex(b: &[u8]) -> String {
    b.iter().map(|x| format!("{x:02x}")).collect()
}

/// Reads and validates `DIR/config.toml`.
pub fn load_config(dir: &Path) -> Result<Config, InitError> {
    let path = dir.join(CONFIG_FILE);
    let text = fs::read_to_string(&path).map_err(io_err(&path))?;
    let mut config = Config::parse(&text).map_err(|source| InitError::Config { path, source })?;
    config.state_dir = Some(fs::canonicalize(dir).unwrap_or_else(|_| dir.to_path_buf()));
    Ok(config)
}

/// `bind` as the host part of a URI.
fn uri_host(c: &Config) -> String {
    let host = c.server.bind;
    if host.is_ipv6() {
        format!("[{host}]")
    } else {
        host.to_string()
    }
}

/// The `coap://` URI devices register at.
pub fn lwm2m_uri(c: &Config) -> String {
    format!("coap://{}:{}", uri_host(c), c.ports.lwm2m_coap)
}

/// What `init` prints: where things are and what the device needs.
pub fn summary(r: &InitReport) -> String {
    let c = &r.config;
    let host = uri_host(c);
    let lwm2m_uri = lwm2m_uri(c);
    let coaps_uri = format!("coaps://{host}:{}", c.ports.lwm2m_coaps);
    let mut s = format!(
        "state directory: {}\n\
         config:          {}\n\
         \n\
         LwM2M server:    {lwm2m_uri}   (served by `run`)\n\
         LwM2M over DTLS: {coaps_uri}   (PSK or certificates; served by `run`)\n\
         control API:     http://{host}:{}\n\
         Bootstrap:       coap://{host}:{}   (served by `run`)\n\
         Bootstrap + EST: coaps://{host}:{}  (EST-coaps needs a certificate session)\n",
        r.dir.display(),
        r.config_path.display(),
        c.ports.control,
        c.ports.bootstrap_coap,
        c.ports.bootstrap_coaps,
    );
    if r.endpoints.is_empty() {
        s.push_str("\nno endpoints given (add them with --endpoint NAME); any endpoint name may register\n");
    }
    for ep in &r.endpoints {
        s.push_str(&format!(
            "\nendpoint {name}: {dir}\n\
             \x20 {PSK_IDENTITY_FILE}  {id}\n\
             \x20 {PSK_KEY_FILE}       {key}\n\
             \x20 NoSec:        examples-c/01-basic -e {name} -u {lwm2m_uri}\n\
             \x20 PSK:          examples-c/01-basic -e {name} -u {coaps_uri} -i {id} -k {key}\n\
             \x20 certificate:  examples-c/01-basic -e {name} -u {coaps_uri} \\\n\
             \x20                 -C {d}/{FACTORY_CERT_FILE} -K {d}/{FACTORY_KEY_FILE} -S {d}/{SERVER_CERT_FILE}\n\
             \x20 EST:          set security_mode = \"est\" for it in config.toml, then\n\
             \x20               examples-c/03-est {name} -c {d}\n",
            d = ep.dir.display(),
            name = ep.name,
            dir = ep.dir.display(),
            id = ep.psk_identity,
            key = ep.psk_key_hex,
        ));
    }
    s.push_str(&format!(
        "\nstart the server:   estuary-testserver run --dir {}\n\
         list clients:       estuary-testserver clients --control 127.0.0.1:{}\n",
        r.dir.display(),
        c.ports.control
    ));
    s
}

const ROOT_README: &str = "\
This is an estuary-testserver state directory, made by `estuary-testserver init`.

config.toml        where the server listens (bind address and ports) and one section per
                   device endpoint. `estuary-testserver run --dir THIS_DIR` reads it.
endpoints/NAME/    everything device NAME needs; see the README.txt in each.

ca/                the root CA (issues the server certificate, and EST certificates later)
                   and the factory CA (issues device certificates); keys are mode 0600
server-cert.pem    the server's DTLS certificate (subjectAltName localhost, 127.0.0.1, ::1)
server-key.pem     its private key
";

fn endpoint_readme(name: &str, lwm2m_uri: &str) -> String {
    format!(
        "\
Credentials for device endpoint \"{name}\", made by `estuary-testserver init`.

psk-identity.txt   PSK identity for PSK mode (exact bytes, no trailing newline).
psk-key.hex        PSK key: {PSK_KEY_LEN} random bytes as hex. Secret (mode 0600).
                   Example: -i \"$(cat psk-identity.txt)\" -k \"$(cat psk-key.hex)\"
                   (NoSec: examples-c/01-basic -e {name} -u {lwm2m_uri})
factory-cert.pem   the device's certificate (CN={name}, from the factory CA): Certificate
factory-key.pem    mode's /0/x/3 and its private key /0/x/5 (secret, mode 0600)
server-cert.pem    the LwM2M server's certificate: /0/x/4 with Certificate Usage 3
trust-anchor.pem   the root CA that issued it: /0/x/4 with Certificate Usage 2

bootstrap-server-cert.pem  the Bootstrap + EST server's certificate: the bootstrap
                   account's /0/x/4 (examples-c/03-est {name} -c THIS_DIR uses it)
"
    )
}

#[cfg(test)]
mod tests {
    use super::*;

    fn tmp() -> tempfile::TempDir {
        tempfile::tempdir().unwrap()
    }

    #[test]
    fn makes_the_layout_with_random_keys() {
        let t = tmp();
        let dir = t.path().join("state");
        let r = init(&InitOptions {
            dir: dir.clone(),
            endpoints: vec!["dev1".into(), "dev2".into()],
            force: false,
        })
        .unwrap();
        assert_eq!(load_config(&dir).unwrap(), r.config);
        assert_eq!(r.config.endpoints.len(), 2);
        for ep in &r.endpoints {
            let d = dir.join("endpoints").join(&ep.name);
            assert_eq!(
                fs::read_to_string(d.join(PSK_IDENTITY_FILE)).unwrap(),
                ep.name
            );
            let key = fs::read_to_string(d.join(PSK_KEY_FILE)).unwrap();
            assert_eq!(key.trim(), ep.psk_key_hex);
            assert_eq!(ep.psk_key_hex.len(), 2 * PSK_KEY_LEN);
            assert!(ep.psk_key_hex.bytes().all(|b| b.is_ascii_hexdigit()));
            let mode = fs::metadata(d.join(PSK_KEY_FILE))
                .unwrap()
                .permissions()
                .mode();
            assert_eq!(mode & 0o777, 0o600);
            assert!(fs::read_to_string(d.join(README_FILE))
                .unwrap()
                .contains("factory-cert.pem"));
        }
        assert_ne!(r.endpoints[0].psk_key_hex, r.endpoints[1].psk_key_hex);
        let s = summary(&r);
        assert!(s.contains("coap://127.0.0.1:5683"), "{s}");
        assert!(
            s.contains("examples-c/01-basic -e dev1 -u coap://127.0.0.1:5683"),
            "{s}"
        );
    }

    #[test]
    fn makes_certificates_that_openssl_verifies_and_the_listener_loads() {
        let t = tmp();
        let dir = t.path().join("state");
        init(&InitOptions {
            dir: dir.clone(),
            endpoints: vec!["dev1".into()],
            force: false,
        })
        .unwrap();
        let ep = dir.join("endpoints/dev1");
        for (key, mode) in [
            (ep.join(FACTORY_KEY_FILE), 0o600),
            (dir.join(SERVER_KEY_FILE), 0o600),
            (dir.join(CA_DIR).join(ROOT_CA_KEY_FILE), 0o600),
        ] {
            let m = fs::metadata(&key).unwrap().permissions().mode();
            assert_eq!(m & 0o777, mode, "{}", key.display());
        }
        let server = read_cert(&ep.join(SERVER_CERT_FILE)).unwrap();
        assert!(server.matches_name("localhost") && server.matches_name("127.0.0.1"));
        let bootstrap = read_cert(&ep.join(BOOTSTRAP_SERVER_CERT_FILE)).unwrap();
        assert_eq!(bootstrap.der(), server.der());
        let device = read_cert(&ep.join(FACTORY_CERT_FILE)).unwrap();
        assert_eq!(device.subject(), "CN=dev1");
        assert!(device.matches_key(&read_key(&ep.join(FACTORY_KEY_FILE)).unwrap()));
        // An independent verifier accepts what we issued.
        let verify = |ca: &Path, cert: &Path| {
            std::process::Command::new("openssl")
                .arg("verify")
                .arg("-CAfile")
                .arg(ca)
                .arg(cert)
                .output()
        };
        if let Ok(out) = verify(&ep.join(TRUST_ANCHOR_FILE), &ep.join(SERVER_CERT_FILE)) {
            assert!(out.status.success(), "{out:?}");
            let factory_ca = dir.join(CA_DIR).join(FACTORY_CA_CERT_FILE);
            let out = verify(&factory_ca, &ep.join(FACTORY_CERT_FILE)).unwrap();
            assert!(out.status.success(), "{out:?}");
            let out = verify(&ep.join(TRUST_ANCHOR_FILE), &ep.join(FACTORY_CERT_FILE)).unwrap();
            assert!(
                !out.status.success(),
                "the root CA must not vouch for device certificates"
            );
        }
        let listener = load_secure_listener(&dir).unwrap().unwrap();
        assert_eq!(listener.psk.len(), 1);
        assert_eq!(listener.psk[0].0, b"dev1");
        let (chain, _, cas) = listener.certificate.unwrap();
        assert_eq!(chain[0], server);
        assert_eq!(cas.len(), 2);

        // A second init with --force keeps the CAs, so earlier devices stay valid.
        init(&InitOptions {
            dir: dir.clone(),
            endpoints: vec!["dev2".into()],
            force: true,
        })
        .unwrap();
        assert_eq!(read_cert(&dir.join(SERVER_CERT_FILE)).unwrap(), server);
    }

    #[test]
    fn refuses_to_overwrite_without_force() {
        let t = tmp();
        let opts = InitOptions {
            dir: t.path().to_path_buf(),
            endpoints: vec!["a".into()],
            force: false,
        };
        let first = init(&opts).unwrap();
        let err = init(&opts).unwrap_err();
        assert!(matches!(err, InitError::AlreadyInitialised(_)), "{err}");
        // Nothing was touched by the refused run.
        let key = fs::read_to_string(t.path().join("endpoints/a/psk-key.hex")).unwrap();
        assert_eq!(key.trim(), first.endpoints[0].psk_key_hex);

        let again = init(&InitOptions {
            force: true,
            endpoints: vec!["b".into()],
            ..opts
        })
        .unwrap();
        assert_eq!(again.config.endpoints.keys().collect::<Vec<_>>(), vec!["b"]);
    }

    #[test]
    fn bad_and_duplicate_names_are_refused_before_writing() {
        let t = tmp();
        let dir = t.path().join("s");
        for eps in [vec!["ok", "bad/name"], vec!["x", "x"]] {
            let e = init(&InitOptions {
                dir: dir.clone(),
                endpoints: eps.iter().map(|s| s.to_string()).collect(),
                force: false,
            });
            assert!(e.is_err());
            assert!(!dir.exists());
        }
    }

    #[test]
    fn hex_is_lower_case() {
        assert_eq!(hex(&[0x00, 0xAB, 0x7f]), "00ab7f");
    }
}
