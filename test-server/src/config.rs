//! The state directory's `config.toml`: where the test server listens and which endpoints it
//! knows. Parsing, validation and the commented text `init` writes; nothing here opens a
//! socket or reads other files.
//!
//! ```toml
//! [server]
//! bind = "127.0.0.1"
//!
//! [ports]
//! lwm2m_coap = 5683
//! lwm2m_coaps = 5684
//! bootstrap_coap = 5693
//! bootstrap_coaps = 5694
//! control = 8080
//!
//! [endpoints.dev1]
//! security_mode = "nosec"
//! ```
//!
//! Every port is served; the coaps ports when the state directory holds credentials.
//! Each `[endpoints.NAME]` section says what bootstrap provisions for that device.

use std::collections::BTreeMap;
use std::fmt::Write as _;
use std::net::{IpAddr, Ipv4Addr, SocketAddr};

use serde::{Deserialize, Serialize};

/// File name of the configuration inside a state directory.
pub const CONFIG_FILE: &str = "config.toml";

pub const DEFAULT_LWM2M_COAP_PORT: u16 = 5683;
pub const DEFAULT_LWM2M_COAPS_PORT: u16 = 5684;
pub const DEFAULT_BOOTSTRAP_COAP_PORT: u16 = 5693;
pub const DEFAULT_BOOTSTRAP_COAPS_PORT: u16 = 5694;
pub const DEFAULT_CONTROL_PORT: u16 = 8080;

/// Why a configuration was refused.
#[derive(Debug, thiserror::Error)]
pub enum ConfigError {
    #[error("{CONFIG_FILE}: {0}")]
    Parse(#[from] toml::de::Error),
    #[error("{CONFIG_FILE}: {0}")]
    Invalid(String),
}

/// The whole `config.toml`.
#[derive(Clone, Debug, Default, PartialEq, Eq, Serialize, Deserialize)]
#[serde(deny_unknown_fields)]
pub struct Config {
    #[serde(default)]
    pub server: ServerSection,
    #[serde(default)]
    pub ports: Ports,
    /// One section per device, keyed by endpoint name.
    #[serde(default)]
    pub endpoints: BTreeMap<String, EndpointConfig>,
    /// The state directory this was loaded from (not part of the file): where `run` finds
    /// the DTLS credentials.
    #[serde(skip)]
    pub state_dir: Option<std::path::PathBuf>,
}

#[derive(Clone, Debug, PartialEq, Eq, Serialize, Deserialize)]
#[serde(deny_unknown_fields)]
pub struct ServerSection {
    /// Address every port binds to; loopback unless you know why not.
    #[serde(default = "default_bind")]
    pub bind: IpAddr,
}

impl Default for ServerSection {
    fn default() -> Self {
        ServerSection {
            bind: default_bind(),
        }
    }
}

fn default_bind() -> IpAddr {
    IpAddr::V4(Ipv4Addr::LOCALHOST)
}

/// Port numbers; 0 asks the OS for an ephemeral port (useful in tests, which then read the
/// actual ports from `run`'s first stdout line).
#[derive(Clone, Debug, PartialEq, Eq, Serialize, Deserialize)]
#[serde(deny_unknown_fields, default)]
pub struct Ports {
    /// LwM2M server over CoAP/UDP. Served.
    pub lwm2m_coap: u16,
    /// LwM2M server over CoAP/DTLS. Served when the state directory has credentials.
    pub lwm2m_coaps: u16,
    /// Bootstrap + EST server over CoAP/UDP.
    pub bootstrap_coap: u16,
    /// Bootstrap + EST-coaps over DTLS (with the state directory's credentials).
    pub bootstrap_coaps: u16,
    /// HTTP control API (TCP). Served; `run --control` overrides it.
    pub control: u16,
}

impl Default for Ports {
    fn default() -> Self {
        Ports {
            lwm2m_coap: DEFAULT_LWM2M_COAP_PORT,
            lwm2m_coaps: DEFAULT_LWM2M_COAPS_PORT,
            bootstrap_coap: DEFAULT_BOOTSTRAP_COAP_PORT,
            bootstrap_coaps: DEFAULT_BOOTSTRAP_COAPS_PORT,
            control: DEFAULT_CONTROL_PORT,
        }
    }
}

/// The security mode of the management account a device uses.
#[derive(Copy, Clone, Debug, Default, PartialEq, Eq, Serialize, Deserialize)]
#[serde(rename_all = "lowercase")]
pub enum SecurityModeName {
    #[default]
    Nosec,
    Psk,
    Certificate,
    Est,
}

impl SecurityModeName {
    pub fn as_str(self) -> &'static str {
        match self {
            SecurityModeName::Nosec => "nosec",
            SecurityModeName::Psk => "psk",
            SecurityModeName::Certificate => "certificate",
            SecurityModeName::Est => "est",
        }
    }
}

/// One device's section. Its credentials live in `endpoints/NAME/` next to the config.
#[derive(Clone, Debug, PartialEq, Eq, Serialize, Deserialize)]
#[serde(deny_unknown_fields)]
pub struct EndpointConfig {
    /// The management account bootstrap provisions. Registration is accepted on coap
    /// (NoSec) and on coaps (PSK or certificate) whatever this says.
    #[serde(default)]
    pub security_mode: SecurityModeName,
    /// Short Server ID of the provisioned management account.
    #[serde(default = "default_ssid")]
    pub ssid: u16,
    /// Registration lifetime (seconds) written into the provisioned Server instance.
    #[serde(default = "default_lifetime")]
    pub lifetime: u32,
}

impl Default for EndpointConfig {
    fn default() -> Self {
        EndpointConfig {
            security_mode: SecurityModeName::default(),
            ssid: default_ssid(),
            lifetime: default_lifetime(),
        }
    }
}

fn default_ssid() -> u16 {
    1
}

fn default_lifetime() -> u32 {
    300
}

impl Config {
    /// A configuration with the default ports and the given endpoints.
    pub fn with_endpoints<S: AsRef<str>>(names: &[S]) -> Config {
        Config {
            endpoints: names
                .iter()
                .map(|n| (n.as_ref().to_string(), EndpointConfig::default()))
                .collect(),
            ..Config::default()
        }
    }

    /// Parses and validates `config.toml` text.
    pub fn parse(text: &str) -> Result<Config, ConfigError> {
        let cfg: Config = toml::from_str(text)?;
        cfg.validate()?;
        Ok(cfg)
    }

    /// Checks what serde cannot: endpoint names usable as directory names and as `ep=`, and
    /// no port used twice.
    pub fn validate(&self) -> Result<(), ConfigError> {
        for (name, ep) in &self.endpoints {
            validate_endpoint_name(name).map_err(ConfigError::Invalid)?;
            if ep.ssid == 0 || ep.ssid == u16::MAX {
                return Err(ConfigError::Invalid(format!(
                    "endpoints.{name}.ssid must be in 1..=65534"
                )));
            }
            if ep.lifetime == 0 {
                return Err(ConfigError::Invalid(format!(
                    "endpoints.{name}.lifetime must be positive"
                )));
            }
        }
        let p = &self.ports;
        let named = [
            ("lwm2m_coap", p.lwm2m_coap),
            ("lwm2m_coaps", p.lwm2m_coaps),
            ("bootstrap_coap", p.bootstrap_coap),
            ("bootstrap_coaps", p.bootstrap_coaps),
            ("control", p.control),
        ];
        for (i, (a, pa)) in named.iter().enumerate() {
            for (b, pb) in &named[i + 1..] {
                // UDP and TCP could share a number, but one number per role keeps it simple.
                if *pa != 0 && pa == pb {
                    return Err(ConfigError::Invalid(format!(
                        "ports.{a} and ports.{b} are both {pa}"
                    )));
                }
            }
        }
        Ok(())
    }

    /// The LwM2M CoAP address to bind.
    pub fn lwm2m_coap_addr(&self) -> SocketAddr {
        SocketAddr::new(self.server.bind, self.ports.lwm2m_coap)
    }

    /// The LwM2M coaps address to bind.
    pub fn lwm2m_coaps_addr(&self) -> SocketAddr {
        SocketAddr::new(self.server.bind, self.ports.lwm2m_coaps)
    }

    /// The bootstrap (+ EST) CoAP address to bind.
    pub fn bootstrap_coap_addr(&self) -> SocketAddr {
        SocketAddr::new(self.server.bind, self.ports.bootstrap_coap)
    }

    /// The bootstrap + EST-coaps address to bind.
    pub fn bootstrap_coaps_addr(&self) -> SocketAddr {
        SocketAddr::new(self.server.bind, self.ports.bootstrap_coaps)
    }

    /// The control API address to bind.
    pub fn control_addr(&self) -> SocketAddr {
        SocketAddr::new(self.server.bind, self.ports.control)
    }

    /// The text `init` writes: the same content as `toml` would give, with comments saying
    /// what each value is for.
    pub fn to_commented_toml(&self) -> String {
        let p = &self.ports;
        let mut s = String::new();
        s.push_str(
            "# estuary-testserver configuration (written by `estuary-testserver init`).\n\
             # Port 0 asks the OS for a free port; `run` prints the ports it got.\n\n\
             [server]\n\
             # Address every port binds to. Keep it on loopback: this is a test server.\n",
        );
        let _ = writeln!(s, "bind = \"{}\"\n", self.server.bind);
        s.push_str("[ports]\n# LwM2M server, CoAP over UDP (served by `run`).\n");
        let _ = writeln!(s, "lwm2m_coap = {}", p.lwm2m_coap);
        s.push_str("# LwM2M server, CoAP over DTLS, PSK or certificates (served by `run`).\n");
        let _ = writeln!(s, "lwm2m_coaps = {}", p.lwm2m_coaps);
        s.push_str("# Bootstrap + EST server, CoAP over UDP (served by `run`).\n");
        let _ = writeln!(s, "bootstrap_coap = {}", p.bootstrap_coap);
        s.push_str("# Bootstrap + EST-coaps server over DTLS (served by `run`).\n");
        let _ = writeln!(s, "bootstrap_coaps = {}", p.bootstrap_coaps);
        s.push_str("# HTTP control API (TCP); `run --control ADDR` overrides it.\n");
        let _ = writeln!(s, "control = {}", p.control);
        for (name, ep) in &self.endpoints {
            // Endpoint names are validated printable ASCII without quotes or backslashes,
            // so a basic TOML string needs no escapes.
            let _ = writeln!(
                s,
                "\n# Credentials for this device are in endpoints/{name}/.\n\
                 [endpoints.\"{name}\"]\n\
                 # Management account bootstrap provisions: nosec, psk, certificate or est\n\
                 # (registration is accepted in any mode whatever this says).\n\
                 security_mode = \"{}\"\n\
                 # Short Server ID and registration lifetime (seconds) of that account.\n\
                 ssid = {}\n\
                 lifetime = {}",
                ep.security_mode.as_str(),
                ep.ssid,
                ep.lifetime
            );
        }
        s
    }
}

/// An endpoint name the client would accept (`ClientConfig` rules) that is also a safe
/// directory name.
pub fn validate_endpoint_name(name: &str) -> Result<(), String> {
    if name.is_empty() || name.len() > 255 {
        return Err(format!("endpoint name {name:?} must be 1 to 255 bytes"));
    }
    if !name
        .chars()
        .all(|c| c.is_ascii_graphic() && !"&?#/\"\\".contains(c))
    {
        return Err(format!(
            "endpoint name {name:?} must be printable ASCII without spaces or & ? # / \" \\"
        ));
    }
    if name == "." || name == ".." {
        return Err(format!(
            "endpoint name {name:?} is not a usable directory name"
        ));
    }
    Ok(())
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn empty_file_means_all_defaults() {
        let c = Config::parse("").unwrap();
        assert_eq!(c, Config::default());
        assert_eq!(c.lwm2m_coap_addr().to_string(), "127.0.0.1:5683");
        assert_eq!(c.control_addr().to_string(), "127.0.0.1:8080");
        assert_eq!(c.ports.lwm2m_coaps, 5684);
        assert_eq!(c.ports.bootstrap_coap, 5693);
        assert_eq!(c.ports.bootstrap_coaps, 5694);
    }

    #[test]
    fn commented_text_parses_back_to_the_same_config() {
        let mut c = Config::with_endpoints(&["dev1", "sensor-2"]);
        c.ports.lwm2m_coap = 0;
        c.endpoints.get_mut("sensor-2").unwrap().security_mode = SecurityModeName::Est;
        c.endpoints.get_mut("sensor-2").unwrap().ssid = 9;
        c.endpoints.get_mut("dev1").unwrap().lifetime = 60;
        let text = c.to_commented_toml();
        assert!(text.contains("[endpoints.\"dev1\"]"), "{text}");
        assert!(text.contains("\nlwm2m_coap = 0\n"), "{text}");
        assert_eq!(Config::parse(&text).unwrap(), c);
    }

    #[test]
    fn partial_sections_fill_in_defaults() {
        let c = Config::parse(
            "[ports]\nlwm2m_coap = 15683\n[server]\nbind = \"::1\"\n[endpoints.dev1]\n",
        )
        .unwrap();
        assert_eq!(c.lwm2m_coap_addr().to_string(), "[::1]:15683");
        assert_eq!(c.ports.control, 8080);
        assert_eq!(c.endpoints["dev1"].security_mode, SecurityModeName::Nosec);
    }

    #[test]
    fn typos_and_bad_values_are_refused_with_a_message() {
        for (text, needle) in [
            ("[ports]\nlwm2m_cop = 1\n", "unknown field"),
            ("[server]\nbind = \"localhost\"\n", "invalid"),
            ("[ports]\nlwm2m_coap = 70000\n", ""),
            ("[ports]\ncontrol = 5683\n", "both 5683"),
            ("[endpoints.\"a/b\"]\n", "endpoint name"),
            ("[endpoints.\"..\"]\n", "directory"),
            (
                "[endpoints.dev1]\nsecurity_mode = \"rpk\"\n",
                "unknown variant",
            ),
            ("not toml at all", ""),
            ("[endpoints.dev1]\nssid = 0\n", "ssid"),
            ("[endpoints.dev1]\nlifetime = 0\n", "lifetime"),
        ] {
            let e = Config::parse(text).expect_err(text).to_string();
            assert!(e.contains(needle), "{text:?} gave {e:?}");
            assert!(e.starts_with(CONFIG_FILE), "{e}");
        }
    }

    #[test]
    fn zero_ports_may_repeat() {
        let c = Config::parse("[ports]\nlwm2m_coap = 0\ncontrol = 0\n").unwrap();
        assert_eq!(c.ports.lwm2m_coap, 0);
    }

    #[test]
    fn endpoint_names() {
        assert!(validate_endpoint_name("dev-1_a.b").is_ok());
        for bad in ["", "a b", "a&b", "a?b", "a#b", "é", ".", "..", "a\\b"] {
            assert!(validate_endpoint_name(bad).is_err(), "{bad:?}");
        }
        assert!(validate_endpoint_name(&"x".repeat(256)).is_err());
    }
}
