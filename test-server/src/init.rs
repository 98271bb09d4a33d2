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
//! ```
//! Certificates (root CA, server certificate, factory credentials) join when DTLS and EST
//! land; the READMEs name them already.

use std::fs::{self, File, OpenOptions};
use std::io::{self, Read, Write};
use std::os::unix::fs::{OpenOptionsExt, PermissionsExt};
use std::path::{Path, PathBuf};

use crate::config::{validate_endpoint_name, Config, ConfigError, CONFIG_FILE};

/// Bytes of a generated PSK key.
pub const PSK_KEY_LEN: usize = 16;

pub const PSK_IDENTITY_FILE: &str = "psk-identity.txt";
pub const PSK_KEY_FILE: &str = "psk-key.hex";
pub const README_FILE: &str = "README.txt";

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

    let config = Config::with_endpoints(&opts.endpoints);
    let uri = lwm2m_uri(&config);
    let mut endpoints = Vec::new();
    for name in &opts.endpoints {
        endpoints.push(write_endpoint(&dir, name, &uri)?);
    }
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
    Config::parse(&text).map_err(|source| InitError::Config { path, source })
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
    let mut s = format!(
        "state directory: {}\n\
         config:          {}\n\
         \n\
         LwM2M server:    {lwm2m_uri}   (served by `run`)\n\
         control API:     http://{host}:{}\n\
         reserved for later issues (not served yet):\n\
         \x20 coaps://{host}:{}   LwM2M over DTLS\n\
         \x20 coap://{host}:{}    bootstrap + EST\n\
         \x20 coaps://{host}:{}   bootstrap + EST-coaps over DTLS\n",
        r.dir.display(),
        r.config_path.display(),
        c.ports.control,
        c.ports.lwm2m_coaps,
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
             \x20 {PSK_KEY_FILE}       {key}   (for PSK mode, once DTLS lands)\n\
             \x20 run the device:   examples-c/01-basic -e {name} -u {lwm2m_uri}\n",
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

Coming with later versions of the test server (DTLS, bootstrap, EST):
ca/                the root CA that issues EST certificates, and the factory CA
server-cert.pem    the server's certificate for DTLS
";

fn endpoint_readme(name: &str, lwm2m_uri: &str) -> String {
    format!(
        "\
Credentials for device endpoint \"{name}\", made by `estuary-testserver init`.

psk-identity.txt   PSK identity for PSK mode (exact bytes, no trailing newline).
psk-key.hex        PSK key: {PSK_KEY_LEN} random bytes as hex. Secret (mode 0600).
                   Example: -i \"$(cat psk-identity.txt)\" -k \"$(cat psk-key.hex)\"
                   (PSK mode is used once DTLS lands; NoSec works today:
                    examples-c/01-basic -e {name} -u {lwm2m_uri})

Files that will appear here when DTLS and EST land:
factory-cert.pem, factory-key.pem   the device's factory (IDevID) certificate and key, its
                                    bootstrap credentials
bootstrap-server-cert.pem           the bootstrap + EST server's certificate
server-cert.pem                     the LwM2M server's certificate
trust-anchor.pem                    the root CA that issues EST certificates
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
