//! `estuary-testserver` command line: `init` makes a state directory, `run` serves the LwM2M
//! server on loopback with the HTTP control API, `clients` and `read` are command-line
//! clients of that API. Bootstrap, DTLS and EST endpoints join as those issues land.

use std::collections::HashMap;
use std::io::{Read, Write};
use std::net::{SocketAddr, TcpStream, UdpSocket};
use std::path::{Path, PathBuf};
use std::sync::atomic::{AtomicBool, Ordering};
use std::sync::mpsc;
use std::time::{Duration, SystemTime, UNIX_EPOCH};

use clap::{Parser, Subcommand};
use estuary::time::{Instant, Now, UtcTime};
use estuary_testserver::lwm2m_server::format_from_name;
use estuary_testserver::{Lwm2mServer, OpId, ServerEvent};
use serde_json::json;

#[derive(Parser)]
#[command(name = "estuary-testserver", about = "Estuary's LwM2M test server")]
struct Cli {
    #[command(subcommand)]
    cmd: Cmd,
}

#[derive(Subcommand)]
enum Cmd {
    /// Create a state directory (config.toml, one folder per endpoint).
    Init {
        #[arg(long)]
        dir: PathBuf,
        #[arg(long = "endpoint")]
        endpoints: Vec<String>,
        #[arg(long)]
        force: bool,
    },
    /// Serve the LwM2M server and the control API on loopback.
    Run {
        #[arg(long)]
        dir: PathBuf,
        #[arg(long, default_value = "127.0.0.1:8080")]
        control: SocketAddr,
        #[arg(long)]
        events: Option<PathBuf>,
    },
    /// List registered clients.
    Clients {
        #[arg(long, default_value = "127.0.0.1:8080")]
        control: SocketAddr,
    },
    /// Show one registered client.
    Client {
        ep: String,
        #[arg(long, default_value = "127.0.0.1:8080")]
        control: SocketAddr,
    },
    /// Print the recent events as JSON lines.
    Events {
        #[arg(long, default_value = "127.0.0.1:8080")]
        control: SocketAddr,
    },
    /// Read a path from a registered client.
    Read {
        ep: String,
        path: String,
        #[arg(long, default_value = "text")]
        format: String,
        #[arg(long, default_value = "127.0.0.1:8080")]
        control: SocketAddr,
    },
}

const DEFAULT_LWM2M_PORT: u16 = 5683;

fn main() {
    env_logger::Builder::from_env(env_logger::Env::default().default_filter_or("warn")).init();
    let result = match Cli::parse().cmd {
        Cmd::Init {
            dir,
            endpoints,
            force,
        } => init(&dir, &endpoints, force),
        Cmd::Run {
            dir,
            control,
            events,
        } => run(&dir, control, events),
        Cmd::Clients { control } => http_get(control, "/api/clients").map(|b| println!("{b}")),
        Cmd::Client { ep, control } => {
            http_get(control, &format!("/api/clients/{ep}")).map(|b| println!("{b}"))
        }
        Cmd::Events { control } => http_get(control, "/api/events").map(|b| print!("{b}")),
        Cmd::Read {
            ep,
            path,
            format,
            control,
        } => read(control, &ep, &path, &format),
    };
    if let Err(e) = result {
        eprintln!("estuary-testserver: {e}");
        std::process::exit(1);
    }
}

fn init(dir: &Path, endpoints: &[String], force: bool) -> Result<(), String> {
    let cfg = dir.join("config.toml");
    if cfg.exists() && !force {
        return Err(format!(
            "{} exists (use --force to overwrite)",
            cfg.display()
        ));
    }
    std::fs::create_dir_all(dir).map_err(|e| e.to_string())?;
    let mut text =
        format!("# estuary-testserver state\n[ports]\nlwm2m_coap = {DEFAULT_LWM2M_PORT}\n");
    for ep in endpoints {
        text.push_str(&format!("\n[endpoints.{ep:?}]\n"));
        let folder = dir.join("endpoints").join(ep);
        std::fs::create_dir_all(&folder).map_err(|e| e.to_string())?;
        // PSK credentials for the plain examples, from the OS generator.
        let mut key = [0u8; 16];
        std::fs::File::open("/dev/urandom")
            .and_then(|mut f| f.read_exact(&mut key))
            .map_err(|e| format!("/dev/urandom: {e}"))?;
        std::fs::write(folder.join("psk-identity.txt"), format!("{ep}\n"))
            .map_err(|e| e.to_string())?;
        let hex: String = key.iter().map(|b| format!("{b:02x}")).collect();
        std::fs::write(folder.join("psk-key.hex"), format!("{hex}\n"))
            .map_err(|e| e.to_string())?;
    }
    std::fs::write(&cfg, text).map_err(|e| e.to_string())?;
    println!("state directory: {}", dir.display());
    for ep in endpoints {
        println!("  examples-c/01-basic -e {ep} -u coap://127.0.0.1:{DEFAULT_LWM2M_PORT}");
    }
    Ok(())
}

fn lwm2m_port(dir: &Path) -> Result<u16, String> {
    let text = std::fs::read_to_string(dir.join("config.toml"))
        .map_err(|e| format!("config.toml: {e}"))?;
    let value: toml::Value = text.parse().map_err(|e| format!("config.toml: {e}"))?;
    let port = value
        .get("ports")
        .and_then(|p| p.get("lwm2m_coap"))
        .and_then(|p| p.as_integer());
    port.and_then(|p| u16::try_from(p).ok())
        .ok_or_else(|| "config.toml: ports.lwm2m_coap missing or invalid".to_string())
}

static STOP: AtomicBool = AtomicBool::new(false);

extern "C" fn on_signal(_: libc::c_int) {
    STOP.store(true, Ordering::SeqCst);
}

enum Control {
    Clients(tiny_http::Request),
    Client(tiny_http::Request, String),
    Events(tiny_http::Request),
    Read(tiny_http::Request, String, String, Option<u16>),
}

fn run(dir: &Path, control: SocketAddr, events: Option<PathBuf>) -> Result<(), String> {
    let port = lwm2m_port(dir)?;
    let socket =
        UdpSocket::bind(("127.0.0.1", port)).map_err(|e| format!("bind UDP {port}: {e}"))?;
    socket
        .set_read_timeout(Some(Duration::from_millis(20)))
        .map_err(|e| e.to_string())?;
    let http =
        tiny_http::Server::http(control).map_err(|e| format!("control API {control}: {e}"))?;
    let mut events_file = match events {
        Some(p) => Some(std::fs::File::create(p).map_err(|e| e.to_string())?),
        None => None,
    };
    // SAFETY: the handler only stores to an atomic.
    unsafe {
        libc::signal(libc::SIGINT, on_signal as *const () as libc::sighandler_t);
        libc::signal(libc::SIGTERM, on_signal as *const () as libc::sighandler_t);
    }
    let (tx, rx) = mpsc::channel();
    std::thread::spawn(move || {
        for req in http.incoming_requests() {
            let url = req.url().to_string();
            let (path, query) = url.split_once('?').unwrap_or((&url, ""));
            let segs: Vec<&str> = path.trim_matches('/').split('/').collect();
            let msg = match segs.as_slice() {
                ["api", "clients"] => Control::Clients(req),
                ["api", "events"] => Control::Events(req),
                ["api", "clients", ep] => Control::Client(req, ep.to_string()),
                ["api", "clients", ep, rest @ ..] if !rest.is_empty() => {
                    let fmt = query.split('&').find_map(|q| q.strip_prefix("format="));
                    let cf = fmt.and_then(format_from_name);
                    Control::Read(req, ep.to_string(), format!("/{}", rest.join("/")), cf)
                }
                _ => {
                    let _ = req.respond(
                        tiny_http::Response::from_string("{\"error\":\"not found\"}")
                            .with_status_code(404),
                    );
                    continue;
                }
            };
            if tx.send(msg).is_err() {
                break;
            }
        }
    });
    let start = std::time::Instant::now();
    let now = || {
        let utc = SystemTime::now()
            .duration_since(UNIX_EPOCH)
            .map(|d| d.as_millis() as i64)
            .unwrap_or(0);
        Now::new(
            Instant::from_millis(start.elapsed().as_millis() as u64),
            UtcTime::from_unix_millis(utc),
        )
    };
    let mut server = Lwm2mServer::new(Default::default(), u64::from(std::process::id()));
    let mut pending: HashMap<OpId, tiny_http::Request> = HashMap::new();
    // The most recent events, for GET /api/events.
    let mut ring: std::collections::VecDeque<String> = std::collections::VecDeque::new();
    let mut buf = vec![0u8; 65536];
    println!("LwM2M server on coap://127.0.0.1:{port}, control API on http://{control}");
    while !STOP.load(Ordering::SeqCst) {
        if let Ok((n, peer)) = socket.recv_from(&mut buf) {
            server.handle_datagram(now(), peer, &buf[..n]);
        }
        server.handle_timeout(now());
        while let Ok(msg) = rx.try_recv() {
            match msg {
                Control::Clients(req) => {
                    let list: Vec<_> = server.registrations().map(registration_json).collect();
                    let _ = req.respond(tiny_http::Response::from_string(json!(list).to_string()));
                }
                Control::Client(req, ep) => {
                    let resp = match server.registration(&ep) {
                        Some(r) => {
                            tiny_http::Response::from_string(registration_json(r).to_string())
                        }
                        None => tiny_http::Response::from_string(
                            json!({"error": format!("no client {ep}")}).to_string(),
                        )
                        .with_status_code(404),
                    };
                    let _ = req.respond(resp);
                }
                Control::Events(req) => {
                    let body: String = ring.iter().map(|l| format!("{l}\n")).collect();
                    let _ = req.respond(tiny_http::Response::from_string(body));
                }
                Control::Read(req, ep, path, cf) => match server.read(now(), &ep, &path, cf) {
                    Ok(op) => {
                        pending.insert(op, req);
                    }
                    Err(e) => {
                        let body = json!({"error": e.to_string()}).to_string();
                        let _ = req
                            .respond(tiny_http::Response::from_string(body).with_status_code(404));
                    }
                },
            }
        }
        while let Some((peer, data)) = server.poll_transmit() {
            let _ = socket.send_to(&data, peer);
        }
        while let Some(ev) = server.poll_event() {
            let (line, mut event) = match &ev {
                ServerEvent::Registered {
                    endpoint,
                    location,
                    lifetime,
                    ..
                } => (
                    format!("ep={endpoint} registered location={location} lifetime={lifetime}"),
                    json!({"event": "registered", "ep": endpoint, "location": location, "lifetime": lifetime}),
                ),
                ServerEvent::Updated { endpoint } => (
                    format!("ep={endpoint} updated"),
                    json!({"event": "updated", "ep": endpoint}),
                ),
                ServerEvent::Deregistered { endpoint } => (
                    format!("ep={endpoint} deregistered"),
                    json!({"event": "deregistered", "ep": endpoint}),
                ),
                ServerEvent::Expired { endpoint } => (
                    format!("ep={endpoint} expired"),
                    json!({"event": "expired", "ep": endpoint}),
                ),
                ServerEvent::OpFinished {
                    op,
                    endpoint,
                    result,
                } => {
                    let body = match result {
                        Ok(r) => {
                            let mut b = json!({"code": r.code, "content_format": r.content_format,
                                               "hex": r.payload.iter().map(|b| format!("{b:02x}")).collect::<String>()});
                            if r.content_format == Some(estuary::coap::content_format::LWM2M_TLV) {
                                b["resources"] = match estuary::dm::tlv::decode(&r.payload) {
                                    Ok(items) => {
                                        json!(items.iter().map(tlv_json).collect::<Vec<_>>())
                                    }
                                    Err(e) => json!({"error": e.to_string()}),
                                };
                            } else {
                                b["value"] = json!(String::from_utf8_lossy(&r.payload));
                            }
                            b
                        }
                        Err(e) => json!({"error": e}),
                    };
                    if let Some(req) = pending.remove(op) {
                        let _ = req.respond(tiny_http::Response::from_string(body.to_string()));
                    }
                    (
                        format!("ep={endpoint} read -> {}", body["code"]),
                        json!({"event": "read", "ep": endpoint, "result": body}),
                    )
                }
            };
            println!("{line}");
            event["ts"] = json!(now().utc.unix_millis());
            let event = event.to_string();
            if let Some(f) = events_file.as_mut() {
                // Flushed per line so tests can follow the file.
                let _ = writeln!(f, "{event}");
                let _ = f.flush();
            }
            ring.push_back(event);
            if ring.len() > 1000 {
                ring.pop_front();
            }
        }
    }
    println!("stopped");
    Ok(())
}

fn registration_json(r: &estuary_testserver::Registration) -> serde_json::Value {
    json!({"endpoint": r.endpoint, "location": r.location, "lifetime": r.lifetime,
           "lwm2m": r.lwm2m_version, "binding": r.binding, "objects": r.objects,
           "peer": r.peer.to_string(), "registered_at_ms": r.registered_at.unix_millis(),
           "last_update_ms": r.last_update.unix_millis()})
}

/// A TLV element as JSON: the server does not know resource types, so a value is shown as
/// text when it is printable UTF-8, as hex always, and as an integer when its width allows.
fn tlv_json(t: &estuary::dm::tlv::Tlv) -> serde_json::Value {
    use estuary::dm::tlv::{decode_value, TlvBody};
    use estuary::dm::{Value, ValueKind};
    match &t.body {
        TlvBody::Children(c) => {
            json!({"id": t.id, "instances": c.iter().map(tlv_json).collect::<Vec<_>>()})
        }
        TlvBody::Value(b) => {
            let mut v = json!({"id": t.id, "hex": b.iter().map(|x| format!("{x:02x}")).collect::<String>()});
            if let Ok(s) = std::str::from_utf8(b) {
                if !s.chars().any(char::is_control) {
                    v["value"] = json!(s);
                }
            }
            if let Ok(Value::Integer(i)) = decode_value(ValueKind::Integer, b) {
                v["int"] = json!(i);
            }
            v
        }
    }
}

fn http_get(control: SocketAddr, path: &str) -> Result<String, String> {
    let mut s = TcpStream::connect_timeout(&control, Duration::from_secs(2))
        .map_err(|e| format!("control API {control}: {e}"))?;
    s.set_read_timeout(Some(Duration::from_secs(120)))
        .map_err(|e| e.to_string())?;
    write!(s, "GET {path} HTTP/1.0\r\nHost: {control}\r\n\r\n").map_err(|e| e.to_string())?;
    let mut resp = String::new();
    s.read_to_string(&mut resp).map_err(|e| e.to_string())?;
    let (head, body) = resp
        .split_once("\r\n\r\n")
        .ok_or("malformed HTTP response")?;
    if !head.starts_with("HTTP/1.1 200") && !head.starts_with("HTTP/1.0 200") {
        return Err(format!("{}: {body}", head.lines().next().unwrap_or("")));
    }
    Ok(body.to_string())
}

fn read(control: SocketAddr, ep: &str, path: &str, format: &str) -> Result<(), String> {
    format_from_name(format).ok_or_else(|| format!("unknown format {format}"))?;
    let body = http_get(control, &format!("/api/clients/{ep}{path}?format={format}"))?;
    let v: serde_json::Value = serde_json::from_str(&body).map_err(|e| e.to_string())?;
    if let Some(e) = v.get("error") {
        return Err(e.to_string());
    }
    if v["code"] != "2.05" {
        return Err(format!("read answered {}", v["code"]));
    }
    if format == "text" {
        println!("{}", v["value"].as_str().unwrap_or(""));
    } else {
        println!("{body}");
    }
    Ok(())
}
