//! The `estuary-testserver` command line: `init`, `run`, `clients`, `client`, `events`, and
//! the LwM2M operations `read`, `write`, `exec`, `create`, `delete`, `discover`, `attr`,
//! `observe`, `cancel-observe` (one control API request each). `main.rs` only calls [`main`]. `run` is [`TestServer::start`] plus waiting for
//! SIGINT/SIGTERM; the others are clients of the control API. JSON is printed compact, one
//! document per line, so scripts can grep it (pipe it to `jq` to read it).

use std::path::PathBuf;
use std::time::Duration;

use clap::{Parser, Subcommand};
use serde_json::Value as Json;

use crate::http::{self, percent_encode};
use crate::init::{self, InitOptions};
use crate::render::{tree_lines, ReadAnswer};
use crate::run::{ClientInfo, TestServer, TestServerConfig, DEFAULT_READ_TIMEOUT};

/// Where `clients` and `read` find the control API unless told otherwise.
pub const DEFAULT_CONTROL: &str = "127.0.0.1:8080";

#[derive(Debug, Parser)]
#[command(
    name = "estuary-testserver",
    version,
    about = "Estuary's LwM2M test server (LwM2M Server now; Bootstrap and EST-coaps to come)"
)]
pub struct Cli {
    #[command(subcommand)]
    pub command: Command,
}

#[derive(Debug, Subcommand)]
pub enum Command {
    /// Make a state directory: config.toml and per-endpoint credentials.
    Init {
        #[arg(long)]
        dir: PathBuf,
        /// A device endpoint name; repeat for more devices.
        #[arg(long = "endpoint", value_name = "NAME")]
        endpoints: Vec<String>,
        /// Overwrite an existing config.toml and regenerate the named endpoints' credentials.
        #[arg(long)]
        force: bool,
    },
    /// Serve the LwM2M server and the control API of a state directory until SIGINT/SIGTERM.
    Run {
        #[arg(long)]
        dir: PathBuf,
        /// Control API address (default: 127.0.0.1 and ports.control of config.toml).
        #[arg(long, value_name = "ADDR")]
        control: Option<std::net::SocketAddr>,
        /// Append every event as a JSON line to this file.
        #[arg(long, value_name = "FILE")]
        events: Option<PathBuf>,
        /// LwM2M CoAP port, overriding ports.lwm2m_coap of config.toml (0 = any free port).
        #[arg(long, value_name = "PORT")]
        lwm2m_port: Option<u16>,
        /// Validity of the certificates EST issues: a number with s, m, h, d or y.
        #[arg(long, value_name = "DURATION", default_value = "30d", value_parser = parse_validity)]
        cert_validity: std::time::Duration,
        /// Faults for tests: drop=PERCENT (lose that share of received datagrams on every
        /// port), or make the EST CA misbehave: est-503[=SECONDS], est-delay[=SECONDS],
        /// est-wrong-key, est-expired, est-truncated (repeatable).
        #[arg(long, value_name = "NAME", value_parser = parse_fault)]
        fault: Vec<Fault>,
    },
    /// List the registered clients.
    Clients {
        #[arg(long, value_name = "ADDR", default_value = DEFAULT_CONTROL)]
        control: String,
        /// Print the control API's JSON instead of a table.
        #[arg(long)]
        json: bool,
    },
    /// Print one registered client as JSON (exit code 1 if it is not registered).
    Client {
        ep: String,
        #[arg(long, value_name = "ADDR", default_value = DEFAULT_CONTROL)]
        control: String,
    },
    /// Print the recent events as JSON lines.
    Events {
        #[arg(long, value_name = "ADDR", default_value = DEFAULT_CONTROL)]
        control: String,
    },
    /// Read PATH (e.g. /3/0/0) from the client registered as EP: prints a plain value as is
    /// (text, or base64 for opaque) and a structured answer (TLV, SenML, CBOR) as JSON.
    Read {
        ep: String,
        path: String,
        /// Content format to ask for: text, tlv, opaque, senml-json, senml-cbor, lwm2m-cbor.
        #[arg(long)]
        format: Option<String>,
        #[arg(long, value_name = "ADDR", default_value = DEFAULT_CONTROL)]
        control: String,
        /// Print the control API's whole JSON answer.
        #[arg(long)]
        json: bool,
        /// Print a TLV answer as `PATH = VALUE` lines instead of JSON.
        #[arg(long, conflicts_with = "json")]
        lines: bool,
        /// Give up after this many seconds (default: when the CoAP exchange fails, ≤ 100 s).
        #[arg(long, value_name = "SECONDS")]
        timeout: Option<u64>,
    },
    /// Write VALUE to PATH. For a resource VALUE is JSON (`1.5`, `true`, `"text"`, `[1,5]`,
    /// `{"base64":"AQI="}`) or else taken as a string; for an instance it is a JSON object
    /// of resources, `{"5700":1.5,"5701":"Cel"}` (replaces the instance unless --partial).
    Write {
        ep: String,
        path: String,
        value: String,
        /// Content format to send: text, tlv, opaque, senml-json, senml-cbor, lwm2m-cbor.
        #[arg(long)]
        format: Option<String>,
        /// Partial update of an instance (POST) instead of replacing it (PUT).
        #[arg(long)]
        partial: bool,
        /// Send VALUE's bytes as the payload as they are.
        #[arg(long)]
        raw: bool,
        #[command(flatten)]
        common: OpArgs,
    },
    /// Execute PATH, with optional arguments (e.g. `0='x',1`).
    Exec {
        ep: String,
        path: String,
        args: Option<String>,
        #[command(flatten)]
        common: OpArgs,
    },
    /// Create an instance of the object at PATH with VALUE, a JSON object of resources.
    Create {
        ep: String,
        path: String,
        value: String,
        /// The new instance's ID (the client picks one if left out; TLV only).
        #[arg(long)]
        id: Option<u16>,
        #[arg(long)]
        format: Option<String>,
        #[command(flatten)]
        common: OpArgs,
    },
    /// Delete the instance at PATH.
    Delete {
        ep: String,
        path: String,
        #[command(flatten)]
        common: OpArgs,
    },
    /// Discover PATH: its resources and attributes as link format.
    Discover {
        ep: String,
        path: String,
        #[command(flatten)]
        common: OpArgs,
    },
    /// Write-Attributes: `attr EP PATH pmin=5 pmax=30 gt=20.5`; `NAME=` removes one.
    Attr {
        ep: String,
        path: String,
        #[arg(required = true, value_name = "NAME=VALUE")]
        attributes: Vec<String>,
        #[command(flatten)]
        common: OpArgs,
    },
    /// Observe PATH: prints the first value; notifications appear in `events`, or here with
    /// --follow.
    Observe {
        ep: String,
        path: String,
        #[arg(long)]
        format: Option<String>,
        /// Print the notifications (JSON lines) for this many seconds, then cancel.
        #[arg(long, value_name = "SECONDS")]
        follow: Option<u64>,
        #[command(flatten)]
        common: OpArgs,
    },
    /// Stop observing PATH.
    CancelObserve {
        ep: String,
        path: String,
        #[command(flatten)]
        common: OpArgs,
    },
}

/// Options every LwM2M operation command takes.
#[derive(Debug, clap::Args)]
pub struct OpArgs {
    #[arg(long, value_name = "ADDR", default_value = DEFAULT_CONTROL)]
    pub control: String,
    /// Print the control API's whole JSON answer.
    #[arg(long)]
    pub json: bool,
    /// Print a tree, typed values or links as `PATH = VALUE` lines.
    #[arg(long, conflicts_with = "json")]
    pub lines: bool,
    /// Give up after this many seconds (default: when the CoAP exchange fails, ≤ 100 s).
    #[arg(long, value_name = "SECONDS")]
    pub timeout: Option<u64>,
}

impl OpArgs {
    fn output(&self) -> ReadOutput {
        match (self.json, self.lines) {
            (true, _) => ReadOutput::Json,
            (_, true) => ReadOutput::Lines,
            _ => ReadOutput::Value,
        }
    }
}

/// Runs the command line; returns the process exit code.
pub fn main() -> i32 {
    env_logger::Builder::from_env(env_logger::Env::default().default_filter_or("warn")).init();
    let cli = Cli::parse();
    match run_command(cli.command) {
        Ok(()) => 0,
        Err(msg) => {
            eprintln!("estuary-testserver: {msg}");
            1
        }
    }
}

fn run_command(cmd: Command) -> Result<(), String> {
    match cmd {
        Command::Init {
            dir,
            endpoints,
            force,
        } => {
            let r = init::init(&InitOptions {
                dir,
                endpoints,
                force,
            })
            .map_err(|e| e.to_string())?;
            print!("{}", init::summary(&r));
            Ok(())
        }
        Command::Run {
            dir,
            control,
            events,
            lwm2m_port,
            cert_validity,
            fault,
        } => run(dir, control, events, lwm2m_port, cert_validity, fault),
        Command::Clients { control, json } => clients(&control, json),
        Command::Client { ep, control } => {
            let (status, v, body) = get_json(
                &control,
                &format!("/api/clients/{}", percent_encode(&ep)),
                Duration::from_secs(10),
            )?;
            if status != 200 {
                return Err(api_error(status, &v));
            }
            println!("{}", body.trim_end());
            Ok(())
        }
        Command::Events { control } => {
            let r = http::get(&control, "/api/events", Duration::from_secs(10))
                .map_err(|e| e.to_string())?;
            if r.status != 200 {
                return Err(format!("HTTP {}", r.status));
            }
            print!("{}", r.body);
            Ok(())
        }
        Command::Read {
            ep,
            path,
            format,
            control,
            json,
            lines,
            timeout,
        } => {
            let output = match (json, lines) {
                (true, _) => ReadOutput::Json,
                (_, true) => ReadOutput::Lines,
                _ => ReadOutput::Value,
            };
            read(&ep, &path, format.as_deref(), &control, output, timeout)
        }
        other => operation(other),
    }
}

/// One LwM2M operation through the control API: what to send where.
#[derive(Debug, PartialEq, Eq)]
pub struct ApiCall {
    pub method: &'static str,
    /// Request target with its query.
    pub target: String,
    pub body: Vec<u8>,
    /// The operation's name in messages.
    pub what: &'static str,
}

fn lwm2m_path(path: &str) -> String {
    if path.starts_with('/') {
        path.to_string()
    } else {
        format!("/{path}")
    }
}

fn target(ep: &str, path: &str, suffix: &str, query: &[String]) -> String {
    format!(
        "/api/clients/{}{}{suffix}{}{}",
        percent_encode(ep),
        lwm2m_path(path).trim_end_matches('/'),
        if query.is_empty() { "" } else { "?" },
        query.join("&")
    )
}

/// A command-line VALUE as JSON: JSON if it parses, else the text as a string.
fn value_json(v: &str) -> Json {
    serde_json::from_str(v).unwrap_or_else(|_| Json::String(v.to_string()))
}

/// The control API request of an operation command (not `read`, which has its own path).
pub fn api_call(cmd: &Command) -> Result<(ApiCall, &OpArgs), String> {
    let mut query = Vec::new();
    let fmt = |q: &mut Vec<String>, f: &Option<String>| {
        if let Some(f) = f {
            q.push(format!("format={}", percent_encode(f)));
        }
    };
    let (call, common) = match cmd {
        Command::Write {
            ep,
            path,
            value,
            format,
            partial,
            raw,
            common,
        } => {
            fmt(&mut query, format);
            let depth = lwm2m_path(path)
                .split('/')
                .filter(|s| !s.is_empty())
                .count();
            let body = if *raw {
                query.push("raw=1".into());
                value.as_bytes().to_vec()
            } else if depth >= 3 {
                serde_json::json!({ "value": value_json(value) })
                    .to_string()
                    .into_bytes()
            } else {
                let res = value_json(value);
                if !res.is_object() {
                    return Err("an instance's VALUE is a JSON object of resources".into());
                }
                serde_json::json!({ "resources": res })
                    .to_string()
                    .into_bytes()
            };
            let method = if *partial { "POST" } else { "PUT" };
            if *partial && depth != 2 {
                return Err("--partial is for instances (/O/I)".into());
            }
            (
                ApiCall {
                    method,
                    target: String::new(),
                    body,
                    what: "write",
                },
                (ep, path, "", common),
            )
        }
        Command::Exec {
            ep,
            path,
            args,
            common,
        } => {
            let body = args.clone().unwrap_or_default().into_bytes();
            (
                ApiCall {
                    method: "POST",
                    target: String::new(),
                    body,
                    what: "exec",
                },
                (ep, path, "", common),
            )
        }
        Command::Create {
            ep,
            path,
            value,
            id,
            format,
            common,
        } => {
            fmt(&mut query, format);
            let res = value_json(value);
            if !res.is_object() {
                return Err("VALUE is a JSON object of resources".into());
            }
            let mut doc = serde_json::json!({ "resources": res });
            if let Some(id) = id {
                doc["id"] = Json::from(*id);
            }
            let body = doc.to_string().into_bytes();
            (
                ApiCall {
                    method: "POST",
                    target: String::new(),
                    body,
                    what: "create",
                },
                (ep, path, "", common),
            )
        }
        Command::Delete { ep, path, common } => (
            ApiCall {
                method: "DELETE",
                target: String::new(),
                body: Vec::new(),
                what: "delete",
            },
            (ep, path, "", common),
        ),
        Command::Discover { ep, path, common } => {
            query.push("discover=1".into());
            (
                ApiCall {
                    method: "GET",
                    target: String::new(),
                    body: Vec::new(),
                    what: "discover",
                },
                (ep, path, "", common),
            )
        }
        Command::Attr {
            ep,
            path,
            attributes,
            common,
        } => {
            for a in attributes {
                let (k, v) = a.split_once('=').unwrap_or((a, ""));
                query.push(format!("{}={}", percent_encode(k), percent_encode(v)));
            }
            (
                ApiCall {
                    method: "PUT",
                    target: String::new(),
                    body: Vec::new(),
                    what: "attr",
                },
                (ep, path, "/attributes", common),
            )
        }
        Command::Observe {
            ep,
            path,
            format,
            common,
            ..
        } => {
            fmt(&mut query, format);
            (
                ApiCall {
                    method: "POST",
                    target: String::new(),
                    body: Vec::new(),
                    what: "observe",
                },
                (ep, path, "/observe", common),
            )
        }
        Command::CancelObserve { ep, path, common } => (
            ApiCall {
                method: "DELETE",
                target: String::new(),
                body: Vec::new(),
                what: "cancel-observe",
            },
            (ep, path, "/observe", common),
        ),
        other => return Err(format!("not an operation command: {other:?}")),
    };
    let (ep, path, suffix, common) = common;
    if let Some(t) = common.timeout {
        query.push(format!("timeout={t}"));
    }
    Ok((
        ApiCall {
            target: target(ep, path, suffix, &query),
            ..call
        },
        common,
    ))
}

fn operation(cmd: Command) -> Result<(), String> {
    let (call, common) = api_call(&cmd)?;
    let follow = match &cmd {
        Command::Observe {
            ep,
            path,
            follow: Some(secs),
            ..
        } => Some((ep.clone(), lwm2m_path(path), Duration::from_secs(*secs))),
        _ => None,
    };
    let wait = common
        .timeout
        .map_or(DEFAULT_READ_TIMEOUT, Duration::from_secs)
        + Duration::from_secs(10);
    let r = http::request(&common.control, call.method, &call.target, &call.body, wait)
        .map_err(|e| e.to_string())?;
    let v: Json = serde_json::from_str(&r.body)
        .map_err(|_| format!("the control API answered HTTP {} with non-JSON", r.status))?;
    let what = call.what;
    if r.status != 200 {
        return Err(format!("{what}: {}", api_error(r.status, &v)));
    }
    if common.json || what == "cancel-observe" {
        println!("{}", r.body.trim_end());
        return Ok(());
    }
    let a: ReadAnswer = serde_json::from_value(v.clone())
        .map_err(|e| format!("unexpected answer from the control API: {e}"))?;
    if !a.code.starts_with("2.") {
        let diag = a.value.as_ref().map_or(String::new(), |d| format!(" {d}"));
        return Err(format!("{what}: {}{diag}", a.code));
    }
    if let Some(op) = v.get("op") {
        println!("op={op} {}", a.code);
    }
    print_answer(&a, common.output(), true);
    if let Some((ep, path, secs)) = follow {
        follow_notifications(&common.control, &ep, &path, secs)?;
        let cancel = Command::CancelObserve {
            ep,
            path,
            common: OpArgs {
                control: common.control.clone(),
                json: true,
                lines: false,
                timeout: None,
            },
        };
        operation(cancel)?;
    }
    Ok(())
}

/// How often `observe --follow` looks at the event log.
const FOLLOW_POLL: Duration = Duration::from_millis(250);

/// Prints the notification events of `ep` and `path` that appear within `secs`.
fn follow_notifications(control: &str, ep: &str, path: &str, secs: Duration) -> Result<(), String> {
    let end = std::time::Instant::now() + secs;
    // Events already in the ring are from before this observation.
    let mut seen: std::collections::HashSet<String> =
        http::get(control, "/api/events", Duration::from_secs(10))
            .map_err(|e| e.to_string())?
            .body
            .lines()
            .map(str::to_string)
            .collect();
    while std::time::Instant::now() < end {
        std::thread::sleep(
            FOLLOW_POLL.min(end.saturating_duration_since(std::time::Instant::now())),
        );
        let r = http::get(control, "/api/events", Duration::from_secs(10))
            .map_err(|e| e.to_string())?;
        for line in r.body.lines() {
            if !seen.insert(line.to_string()) {
                continue;
            }
            let Ok(v) = serde_json::from_str::<Json>(line) else {
                continue;
            };
            if v["event"] == "notification" && v["endpoint"] == ep && v["path"] == path {
                println!("{line}");
            }
        }
    }
    Ok(())
}

/// Prints a successful answer: values as lines or JSON, a plain value as is, else (with
/// `code_if_empty`) the code.
fn print_answer(a: &ReadAnswer, output: ReadOutput, code_if_empty: bool) {
    let structured = a.is_tree() || a.entries.is_some() || a.links.is_some();
    match output {
        ReadOutput::Json => println!("{}", a.to_json()),
        ReadOutput::Lines if structured => {
            for l in tree_lines(a) {
                println!("{l}");
            }
        }
        _ if structured => println!("{}", a.to_json()),
        _ => match &a.value {
            Some(value) => println!("{value}"),
            None if code_if_empty => println!("{}", a.code),
            None => {}
        },
    }
}

/// `--cert-validity`: "120s", "30m", "12h", "30d", "1y".
fn parse_validity(s: &str) -> Result<std::time::Duration, String> {
    let (num, unit) = s.split_at(s.trim_end_matches(|c: char| c.is_ascii_alphabetic()).len());
    let n: u64 = num
        .parse()
        .map_err(|_| format!("{s:?}: expected a number and a unit (s, m, h, d, y)"))?;
    let secs = match unit {
        "s" => 1,
        "m" => 60,
        "h" => 3600,
        "d" => 86_400,
        "y" => 365 * 86_400,
        _ => return Err(format!("{s:?}: the unit must be s, m, h, d or y")),
    };
    if n == 0 {
        return Err("the validity must be more than zero".into());
    }
    n.checked_mul(secs)
        .map(std::time::Duration::from_secs)
        .ok_or_else(|| format!("{s:?}: too long"))
}

/// A `--fault` switch: the EST CA's, or loss on every port.
#[derive(Clone, Debug, PartialEq)]
pub enum Fault {
    Est(crate::est_server::EstFault),
    /// `drop=PERCENT`: that share of received datagrams is dropped.
    Drop(u8),
}

/// `--fault`: `drop=PERCENT` or one of the EST CA's fault names.
fn parse_fault(s: &str) -> Result<Fault, String> {
    if let Some(p) = s.strip_prefix("drop=") {
        return match p.trim_end_matches('%').parse::<u8>() {
            Ok(n) if n <= 100 => Ok(Fault::Drop(n)),
            _ => Err(format!("--fault {s:?}: drop takes a percentage 0..=100")),
        };
    }
    crate::est_server::EstFault::parse(s)
        .map(Fault::Est)
        .ok_or_else(|| {
            format!(
                "unknown fault {s:?} (drop=PERCENT, est-503[=SECONDS], est-delay[=SECONDS], est-wrong-key, est-expired, est-truncated)"
            )
        })
}

fn run(
    dir: PathBuf,
    control: Option<std::net::SocketAddr>,
    events: Option<PathBuf>,
    lwm2m_port: Option<u16>,
    cert_validity: std::time::Duration,
    faults: Vec<Fault>,
) -> Result<(), String> {
    let mut config = init::load_config(&dir).map_err(|e| e.to_string())?;
    if let Some(p) = lwm2m_port {
        config.ports.lwm2m_coap = p;
    }
    let mut cfg = TestServerConfig::from_config(&config);
    if control.is_some() {
        cfg.control_addr = control;
    }
    cfg.events_file = events.clone();
    cfg.cert_validity = cert_validity;
    for f in faults {
        match f {
            Fault::Est(e) => cfg.est_faults.push(e),
            Fault::Drop(p) => cfg.drop_percent = p,
        }
    }
    // Signals are caught before any thread starts, so none of them dies of SIGINT.
    let signals = signal::Termination::install().map_err(|e| format!("signal handlers: {e}"))?;
    let handle = TestServer::start(cfg).map_err(|e| e.to_string())?;
    println!(
        "listening lwm2m={} control={}{}{}{}{}",
        handle.lwm2m_uri(),
        handle
            .control_addr()
            .map_or("none".to_string(), |a| format!("http://{a}")),
        events.map_or(String::new(), |e| format!(" events={}", e.display())),
        handle
            .bootstrap_uri()
            .map_or(String::new(), |u| format!(" bootstrap={u}")),
        handle
            .bootstrap_coaps_uri()
            .map_or(String::new(), |u| format!(" bootstrap_coaps={u}")),
        handle
            .lwm2m_coaps_uri()
            .map_or(String::new(), |u| format!(" coaps={u}"))
    );
    let endpoints: Vec<&String> = config.endpoints.keys().collect();
    if !endpoints.is_empty() {
        println!(
            "configured endpoints: {}",
            endpoints
                .iter()
                .map(|s| s.as_str())
                .collect::<Vec<_>>()
                .join(" ")
        );
    }
    loop {
        if let Some(sig) = signals.wait(Duration::from_secs(1)) {
            println!("stopping ({sig})");
            handle.stop();
            return Ok(());
        }
        if !handle.is_running() {
            return Err("the LwM2M server thread stopped unexpectedly".into());
        }
    }
}

/// GET and parse; also returns the body as sent (a `Json` map would print its keys sorted).
fn get_json(control: &str, target: &str, timeout: Duration) -> Result<(u16, Json, String), String> {
    let r = http::get(control, target, timeout).map_err(|e| e.to_string())?;
    let v: Json = serde_json::from_str(&r.body)
        .map_err(|_| format!("the control API answered HTTP {} with non-JSON", r.status))?;
    Ok((r.status, v, r.body))
}

fn api_error(status: u16, v: &Json) -> String {
    match v.get("error").and_then(Json::as_str) {
        Some(e) => format!("{e} (HTTP {status})"),
        None => format!("HTTP {status}"),
    }
}

fn clients(control: &str, json: bool) -> Result<(), String> {
    let (status, v, body) = get_json(control, "/api/clients", Duration::from_secs(10))?;
    if status != 200 {
        return Err(api_error(status, &v));
    }
    if json {
        println!("{}", body.trim_end());
        return Ok(());
    }
    let list: Vec<ClientInfo> = serde_json::from_value(v)
        .map_err(|e| format!("unexpected answer from the control API: {e}"))?;
    print!("{}", clients_table(&list));
    Ok(())
}

/// The `clients` table: one row per client, columns aligned.
pub fn clients_table(list: &[ClientInfo]) -> String {
    let header = [
        "ENDPOINT",
        "LOCATION",
        "LIFETIME",
        "LWM2M",
        "BINDING",
        "PEER",
        "LAST UPDATE",
        "OBJECTS",
    ];
    let mut rows: Vec<Vec<String>> = vec![header.iter().map(|s| s.to_string()).collect()];
    for c in list {
        rows.push(vec![
            c.endpoint.clone(),
            c.location.clone(),
            c.lifetime.to_string(),
            c.lwm2m_version.clone(),
            c.binding.clone(),
            c.peer.clone(),
            c.last_update.clone(),
            c.object_links
                .iter()
                .map(|l| format!("<{l}>"))
                .collect::<Vec<_>>()
                .join(","),
        ]);
    }
    let widths: Vec<usize> = (0..header.len())
        .map(|i| rows.iter().map(|r| r[i].chars().count()).max().unwrap_or(0))
        .collect();
    let mut out = String::new();
    for r in &rows {
        let line: Vec<String> = r
            .iter()
            .zip(&widths)
            .map(|(c, w)| format!("{c:<w$}"))
            .collect();
        out.push_str(line.join("  ").trim_end());
        out.push('\n');
    }
    if list.is_empty() {
        out.push_str("(no clients registered)\n");
    }
    out
}

/// What `read` prints on success.
#[derive(Copy, Clone, Debug, PartialEq, Eq)]
enum ReadOutput {
    /// A plain value as is; a TLV tree as compact JSON.
    Value,
    /// The whole answer as compact JSON.
    Json,
    /// A TLV tree as `PATH = VALUE` lines.
    Lines,
}

fn read(
    ep: &str,
    path: &str,
    format: Option<&str>,
    control: &str,
    output: ReadOutput,
    timeout: Option<u64>,
) -> Result<(), String> {
    let lwm2m_path = if path.starts_with('/') {
        path.to_string()
    } else {
        format!("/{path}")
    };
    let mut query = Vec::new();
    if let Some(f) = format {
        query.push(format!("format={}", percent_encode(f)));
    }
    if let Some(t) = timeout {
        query.push(format!("timeout={t}"));
    }
    let target = format!(
        "/api/clients/{}{}{}{}",
        percent_encode(ep),
        lwm2m_path,
        if query.is_empty() { "" } else { "?" },
        query.join("&")
    );
    // The control API bounds the wait itself; give it time to say so.
    let wait = timeout.map_or(DEFAULT_READ_TIMEOUT, Duration::from_secs) + Duration::from_secs(10);
    let (status, v, _) = get_json(control, &target, wait)?;
    if status != 200 {
        return Err(format!("read {ep} {lwm2m_path}: {}", api_error(status, &v)));
    }
    let a: ReadAnswer = serde_json::from_value(v)
        .map_err(|e| format!("unexpected answer from the control API: {e}"))?;
    if output == ReadOutput::Json {
        println!("{}", a.to_json());
    }
    if !a.code.starts_with("2.") {
        let diag = a.value.as_ref().map_or(String::new(), |d| format!(" {d}"));
        return Err(format!("read {ep} {lwm2m_path}: {}{diag}", a.code));
    }
    if let Some(e) = &a.error {
        return Err(format!("read {ep} {lwm2m_path}: {e}"));
    }
    match output {
        ReadOutput::Json => {}
        // The plain value as is, so scripts can compare it.
        _ => print_answer(&a, output, false),
    }
    Ok(())
}

/// SIGINT/SIGTERM through a self-pipe: the handler writes the signal number (the only
/// async-signal-safe thing it needs), `wait` polls the pipe.
mod signal {
    use std::io;
    use std::sync::atomic::{AtomicI32, Ordering};
    use std::time::Duration;

    static PIPE_WRITE: AtomicI32 = AtomicI32::new(-1);

    extern "C" fn on_signal(sig: libc::c_int) {
        let fd = PIPE_WRITE.load(Ordering::Relaxed);
        if fd >= 0 {
            let b = sig as u8;
            // SAFETY: write(2) is async-signal-safe; the buffer is a local byte.
            unsafe {
                libc::write(fd, (&b as *const u8).cast(), 1);
            }
        }
    }

    pub struct Termination {
        read_fd: libc::c_int,
    }

    impl Termination {
        pub fn install() -> io::Result<Termination> {
            let mut fds = [0 as libc::c_int; 2];
            // SAFETY: fds has room for the two descriptors pipe(2) writes.
            if unsafe { libc::pipe(fds.as_mut_ptr()) } != 0 {
                return Err(io::Error::last_os_error());
            }
            for fd in fds {
                // SAFETY: plain fcntl(2) on descriptors we own.
                unsafe {
                    let fl = libc::fcntl(fd, libc::F_GETFL);
                    libc::fcntl(fd, libc::F_SETFL, fl | libc::O_NONBLOCK);
                    libc::fcntl(fd, libc::F_SETFD, libc::FD_CLOEXEC);
                }
            }
            PIPE_WRITE.store(fds[1], Ordering::Relaxed);
            for sig in [libc::SIGINT, libc::SIGTERM] {
                // SAFETY: a zeroed sigaction with a valid handler and an empty mask.
                unsafe {
                    let mut sa: libc::sigaction = std::mem::zeroed();
                    sa.sa_sigaction = on_signal as *const () as libc::sighandler_t;
                    libc::sigemptyset(&mut sa.sa_mask);
                    sa.sa_flags = libc::SA_RESTART;
                    if libc::sigaction(sig, &sa, std::ptr::null_mut()) != 0 {
                        return Err(io::Error::last_os_error());
                    }
                }
            }
            Ok(Termination { read_fd: fds[0] })
        }

        /// Waits up to `timeout` for a signal; its name if one came.
        pub fn wait(&self, timeout: Duration) -> Option<&'static str> {
            let mut pfd = libc::pollfd {
                fd: self.read_fd,
                events: libc::POLLIN,
                revents: 0,
            };
            let ms = libc::c_int::try_from(timeout.as_millis()).unwrap_or(libc::c_int::MAX);
            // SAFETY: one valid pollfd.
            let n = unsafe { libc::poll(&mut pfd, 1, ms) };
            if n <= 0 {
                return None;
            }
            let mut b = 0u8;
            // SAFETY: reading one byte into a local from our non-blocking pipe.
            let r = unsafe { libc::read(self.read_fd, (&mut b as *mut u8).cast(), 1) };
            if r != 1 {
                return None;
            }
            Some(if i32::from(b) == libc::SIGINT {
                "SIGINT"
            } else {
                "SIGTERM"
            })
        }
    }
}

#[cfg(test)]
mod tests {
    use super::*;
    use clap::CommandFactory;

    #[test]
    fn cli_definition_is_consistent() {
        Cli::command().debug_assert();
    }

    #[test]
    fn parses_the_documented_command_lines() {
        let c = Cli::try_parse_from([
            "estuary-testserver",
            "init",
            "--dir",
            "/tmp/x",
            "--endpoint",
            "a",
            "--endpoint",
            "b",
        ])
        .unwrap();
        assert!(
            matches!(c.command, Command::Init { ref endpoints, force: false, .. } if endpoints == &["a", "b"])
        );
        let c = Cli::try_parse_from([
            "estuary-testserver",
            "read",
            "dev1",
            "/3/0/0",
            "--format",
            "text",
            "--control",
            "127.0.0.1:9",
        ])
        .unwrap();
        match c.command {
            Command::Read {
                ep,
                path,
                format,
                control,
                ..
            } => {
                assert_eq!((ep.as_str(), path.as_str()), ("dev1", "/3/0/0"));
                assert_eq!(format.as_deref(), Some("text"));
                assert_eq!(control, "127.0.0.1:9");
            }
            other => panic!("{other:?}"),
        }
        let c = Cli::try_parse_from(["estuary-testserver", "clients"]).unwrap();
        assert!(
            matches!(c.command, Command::Clients { ref control, json: false } if control == DEFAULT_CONTROL)
        );
        assert!(Cli::try_parse_from(["estuary-testserver", "run"]).is_err());
    }

    fn call(args: &[&str]) -> ApiCall {
        let mut argv = vec!["estuary-testserver"];
        argv.extend_from_slice(args);
        let c = Cli::try_parse_from(argv).unwrap();
        api_call(&c.command).unwrap().0
    }

    #[test]
    fn operation_commands_become_control_requests() {
        let c = call(&[
            "write",
            "dev 1",
            "/3303/0/5700",
            "21.5",
            "--format",
            "senml-json",
        ]);
        assert_eq!(
            (c.method, c.target.as_str()),
            ("PUT", "/api/clients/dev%201/3303/0/5700?format=senml-json")
        );
        assert_eq!(c.body, br#"{"value":21.5}"#);
        let c = call(&["write", "d", "1/0/7", "UQ"]);
        assert_eq!(c.body, br#"{"value":"UQ"}"#);
        let c = call(&["write", "d", "/3303/0", r#"{"5700":1.5}"#, "--partial"]);
        assert_eq!(
            (c.method, c.body.as_slice()),
            ("POST", &br#"{"resources":{"5700":1.5}}"#[..])
        );
        let c = call(&["write", "d", "/5/0/0", "abc", "--raw", "--format", "opaque"]);
        assert_eq!(c.target, "/api/clients/d/5/0/0?format=opaque&raw=1");
        assert_eq!(c.body, b"abc");
        let c = call(&["exec", "d", "/3/0/4"]);
        assert_eq!(
            (c.method, c.target.as_str(), c.body.len()),
            ("POST", "/api/clients/d/3/0/4", 0)
        );
        let c = call(&["exec", "d", "/3/0/4", "0='x'", "--timeout", "5"]);
        assert_eq!(
            (c.target.as_str(), c.body.as_slice()),
            ("/api/clients/d/3/0/4?timeout=5", &b"0='x'"[..])
        );
        let c = call(&["create", "d", "/3303", r#"{"5700":20}"#, "--id", "2"]);
        let body: Json = serde_json::from_slice(&c.body).unwrap();
        assert_eq!(
            body,
            serde_json::json!({"id": 2, "resources": {"5700": 20}})
        );
        let c = call(&["delete", "d", "/3303/2"]);
        assert_eq!(
            (c.method, c.target.as_str()),
            ("DELETE", "/api/clients/d/3303/2")
        );
        let c = call(&["discover", "d", "/3/0"]);
        assert_eq!(
            (c.method, c.target.as_str()),
            ("GET", "/api/clients/d/3/0?discover=1")
        );
        let c = call(&["attr", "d", "/3/0/9", "pmin=5", "pmax=30", "gt="]);
        assert_eq!(
            (c.method, c.target.as_str()),
            ("PUT", "/api/clients/d/3/0/9/attributes?pmin=5&pmax=30&gt=")
        );
        let c = call(&["observe", "d", "/3/0/9", "--format", "tlv"]);
        assert_eq!(
            (c.method, c.target.as_str()),
            ("POST", "/api/clients/d/3/0/9/observe?format=tlv")
        );
        let c = call(&["observe", "d", "3/0/9", "--follow", "5"]);
        assert_eq!(c.target, "/api/clients/d/3/0/9/observe");
        let c = call(&["cancel-observe", "d", "/3/0/9"]);
        assert_eq!(
            (c.method, c.target.as_str()),
            ("DELETE", "/api/clients/d/3/0/9/observe")
        );
        // Refused before anything is sent.
        let parse = |args: &[&str]| {
            let mut argv = vec!["estuary-testserver"];
            argv.extend_from_slice(args);
            Cli::try_parse_from(argv)
        };
        assert!(parse(&["attr", "d", "/3/0/9"]).is_err());
        assert!(parse(&["observe", "d", "/3/0/9", "--json", "--lines"]).is_err());
        let bad = parse(&["write", "d", "/3303/0", "1"]).unwrap();
        assert!(api_call(&bad.command).is_err());
        let bad = parse(&["write", "d", "/3303/0/1", "1", "--partial"]).unwrap();
        assert!(api_call(&bad.command).is_err());
        let bad = parse(&["clients"]).unwrap();
        assert!(api_call(&bad.command).is_err());
    }

    #[test]
    fn cert_validity_and_fault_flags() {
        use std::time::Duration;
        assert_eq!(parse_validity("120s"), Ok(Duration::from_secs(120)));
        assert_eq!(parse_validity("30d"), Ok(Duration::from_secs(30 * 86_400)));
        assert_eq!(parse_validity("1y"), Ok(Duration::from_secs(365 * 86_400)));
        for bad in ["", "30", "d", "0s", "5w", "-1d", "99999999999999999y"] {
            assert!(parse_validity(bad).is_err(), "{bad:?}");
        }
        assert!(parse_fault("est-503").is_ok());
        assert!(parse_fault("est-delay=3").is_ok());
        assert!(parse_fault("est-nonsense").is_err());
        assert_eq!(parse_fault("drop=30"), Ok(Fault::Drop(30)));
        assert_eq!(parse_fault("drop=100%"), Ok(Fault::Drop(100)));
        for bad in ["drop=101", "drop=", "drop=-1", "drop=x"] {
            assert!(parse_fault(bad).is_err(), "{bad:?}");
        }
        let run = Cli::try_parse_from([
            "estuary-testserver",
            "run",
            "--dir",
            "/x",
            "--cert-validity",
            "120s",
            "--fault",
            "est-expired",
        ])
        .unwrap();
        assert!(matches!(
            run.command,
            Command::Run { cert_validity, ref fault, .. }
                if cert_validity == Duration::from_secs(120) && fault.len() == 1
        ));
    }

    #[test]
    fn table_aligns_columns() {
        let c = ClientInfo {
            endpoint: "dev1".into(),
            location: "/rd/1".into(),
            lifetime: 60,
            lwm2m_version: "1.1".into(),
            binding: "U".into(),
            object_links: vec!["/1/0".into(), "/3/0".into()],
            peer: "127.0.0.1:5555".into(),
            security_mode: "nosec".into(),
            certificate_subject: None,
            certificate_not_after: None,
            registered_at: "2026-01-01T00:00:00.000Z".into(),
            last_update: "2026-01-01T00:00:00.000Z".into(),
        };
        let t = clients_table(&[c]);
        let lines: Vec<&str> = t.lines().collect();
        assert_eq!(lines.len(), 2);
        assert!(lines[0].starts_with("ENDPOINT  LOCATION  LIFETIME"), "{t}");
        assert!(
            lines[1].starts_with("dev1      /rd/1     60        1.1"),
            "{t}"
        );
        assert!(lines[1].ends_with("</1/0>,</3/0>"), "{t}");
        assert!(clients_table(&[]).contains("no clients registered"));
    }
}
