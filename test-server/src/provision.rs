//! What the bootstrap server writes into each device, built from `config.toml` and the
//! state directory: a management account in the endpoint's `security_mode` pointing at this
//! server's LwM2M port (coap for NoSec, coaps otherwise), with the credentials `init` made
//! for it, and the Server instance with its SSID and lifetime.

use std::path::Path;

use estuary::crypto::{Certificate, KeyPair};
use estuary::dm::objects::SecurityMode;

use crate::bootstrap_server::{ProvisionedAccount, Provisioning};
use crate::config::{EndpointConfig, SecurityModeName};
use crate::init::{
    unhex, InitError, FACTORY_CERT_FILE, FACTORY_KEY_FILE, PSK_IDENTITY_FILE, PSK_KEY_FILE,
    SERVER_CERT_FILE,
};

/// Where the management server listens, as devices should be told.
#[derive(Clone, Debug, PartialEq, Eq)]
pub struct ManagementUris {
    pub coap: String,
    pub coaps: String,
}

fn read(path: &Path) -> Result<Vec<u8>, InitError> {
    std::fs::read(path).map_err(|source| InitError::Io {
        path: path.to_path_buf(),
        source,
    })
}

fn bad(path: &Path, what: &str) -> InitError {
    InitError::BadEndpoint(format!("{}: {what}", path.display()))
}

/// The account written for `name`, whose credentials are in `ep_dir` (`endpoints/NAME/`).
pub fn account_for(
    ep: &EndpointConfig,
    ep_dir: &Path,
    uris: &ManagementUris,
) -> Result<ProvisionedAccount, InitError> {
    let secure_uri = uris.coaps.clone();
    let mut a = ProvisionedAccount::nosec(&uris.coap, ep.ssid, ep.lifetime);
    let server_cert = || -> Result<Vec<u8>, InitError> {
        let path = ep_dir.join(SERVER_CERT_FILE);
        let pem = read(&path)?;
        Certificate::from_pem(&pem)
            .map(|c| c.der().to_vec())
            .map_err(|e| bad(&path, &e.to_string()))
    };
    match ep.security_mode {
        SecurityModeName::Nosec => {}
        SecurityModeName::Psk => {
            let id_path = ep_dir.join(PSK_IDENTITY_FILE);
            let key_path = ep_dir.join(PSK_KEY_FILE);
            a.server_uri = secure_uri;
            a.mode = SecurityMode::Psk;
            a.identity = read(&id_path)?;
            let hex = String::from_utf8_lossy(&read(&key_path)?)
                .trim()
                .to_string();
            a.secret_key = unhex(&hex).ok_or_else(|| bad(&key_path, "not a hex key"))?;
        }
        SecurityModeName::Certificate => {
            let cert_path = ep_dir.join(FACTORY_CERT_FILE);
            let key_path = ep_dir.join(FACTORY_KEY_FILE);
            a.server_uri = secure_uri;
            a.mode = SecurityMode::Certificate;
            a.identity = Certificate::from_pem(&read(&cert_path)?)
                .map_err(|e| bad(&cert_path, &e.to_string()))?
                .der()
                .to_vec();
            a.secret_key = KeyPair::from_der_or_pem(&read(&key_path)?)
                .map_err(|e| bad(&key_path, &e.to_string()))?
                .to_der()
                .expose()
                .to_vec();
            a.server_public_key = server_cert()?;
        }
        SecurityModeName::Est => {
            // Key and certificate come from EST; only the server's certificate is written.
            a.server_uri = secure_uri;
            a.mode = SecurityMode::CertificateWithEst;
            a.server_public_key = server_cert()?;
        }
    }
    Ok(a)
}

/// The provisioning of every endpoint in the configuration.
pub fn all(
    cfg: &crate::config::Config,
    uris: &ManagementUris,
) -> Result<Vec<(String, Provisioning)>, InitError> {
    let Some(dir) = cfg.state_dir.as_deref() else {
        return Ok(Vec::new());
    };
    cfg.endpoints
        .iter()
        .map(|(name, ep)| {
            let account = account_for(ep, &dir.join("endpoints").join(name), uris)?;
            Ok((name.clone(), Provisioning::accounts(&[account])))
        })
        .collect()
}

#[cfg(test)]
mod tests {
    use super::*;
    use crate::init::{init, load_config, InitOptions};

    #[test]
    fn every_mode_is_provisioned_from_the_state_directory() {
        let dir = tempfile::tempdir().unwrap();
        init(&InitOptions {
            dir: dir.path().to_path_buf(),
            endpoints: vec!["dev1".into()],
            force: false,
        })
        .unwrap();
        let cfg = load_config(dir.path()).unwrap();
        let ep_dir = dir.path().join("endpoints").join("dev1");
        let uris = ManagementUris {
            coap: "coap://127.0.0.1:5683".into(),
            coaps: "coaps://127.0.0.1:5684".into(),
        };
        let mut ep = cfg.endpoints["dev1"].clone();
        let a = account_for(&ep, &ep_dir, &uris).unwrap();
        assert_eq!(
            (a.mode, a.server_uri.as_str()),
            (SecurityMode::NoSec, "coap://127.0.0.1:5683")
        );
        assert_eq!((a.ssid, a.lifetime), (1, 300));

        ep.security_mode = SecurityModeName::Psk;
        let a = account_for(&ep, &ep_dir, &uris).unwrap();
        assert_eq!(a.server_uri, "coaps://127.0.0.1:5684");
        assert_eq!(a.identity, b"dev1");
        assert_eq!(a.secret_key.len(), crate::init::PSK_KEY_LEN);

        ep.security_mode = SecurityModeName::Certificate;
        let a = account_for(&ep, &ep_dir, &uris).unwrap();
        let cert = Certificate::from_der(&a.identity).unwrap();
        let key = KeyPair::from_der(&a.secret_key).unwrap();
        assert!(cert.matches_key(&key));
        assert!(Certificate::from_der(&a.server_public_key).is_ok());

        ep.security_mode = SecurityModeName::Est;
        let a = account_for(&ep, &ep_dir, &uris).unwrap();
        assert_eq!(a.mode, SecurityMode::CertificateWithEst);
        assert!(a.identity.is_empty() && a.secret_key.is_empty());
        assert!(!a.server_public_key.is_empty());

        let all = all(&cfg, &uris).unwrap();
        assert_eq!(all.len(), 1);
        assert_eq!(all[0].1.ops.len(), 4, "delete, two writes, finish");

        // Missing credentials are an error naming the file.
        std::fs::remove_file(ep_dir.join(PSK_KEY_FILE)).unwrap();
        ep.security_mode = SecurityModeName::Psk;
        let e = account_for(&ep, &ep_dir, &uris).unwrap_err().to_string();
        assert!(e.contains(PSK_KEY_FILE), "{e}");
    }
}
