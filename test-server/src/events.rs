//! What the test server tells people and tests about what happened: every event becomes one
//! readable line per endpoint on stdout (`ep=dev1 registered location=/rd/1 ...`), one JSON
//! line appended to the `--events` file (flushed per line, so tests can tail it), and an entry
//! in a bounded in-memory ring served by `GET /api/events`.
//!
//! It does not decide what an event is; `run.rs` turns server-core events into [`EventKind`]s.

use std::collections::VecDeque;
use std::fs::{File, OpenOptions};
use std::io::{self, Write};
use std::path::Path;
use std::sync::{Condvar, Mutex, MutexGuard};
use std::time::{Duration, Instant as StdInstant};

use estuary::time::UtcTime;
use serde::{Deserialize, Serialize};

use crate::render::{tree_lines, ReadAnswer};

/// Events kept in memory for `GET /api/events` when not told otherwise.
pub const DEFAULT_RING_CAPACITY: usize = 1000;

/// What happened, with the fields of its JSON line (after `ts` and `event`).
#[derive(Clone, Debug, PartialEq, Eq, Serialize, Deserialize)]
#[serde(tag = "event", rename_all = "snake_case")]
pub enum EventKind {
    Registered {
        ep: String,
        location: String,
        lifetime: u32,
        lwm2m: String,
        binding: String,
        peer: String,
    },
    Updated {
        ep: String,
    },
    Deregistered {
        ep: String,
    },
    /// The lifetime ran out without an Update.
    Expired {
        ep: String,
    },
    /// A Register refused with 4.03 (the peer did not authenticate as the endpoint must).
    RegisterRefused {
        ep: String,
        reason: String,
    },
    /// A Read the server sent finished: `code` when the client answered, `error` when the
    /// exchange failed (timeout, RST).
    Read {
        ep: String,
        path: String,
        #[serde(default, skip_serializing_if = "Option::is_none")]
        code: Option<String>,
        #[serde(default, skip_serializing_if = "Option::is_none")]
        error: Option<String>,
    },
    /// Any other operation sent through the control API finished: `op` is the LwM2M
    /// operation ("write", "execute", "create", "delete", "discover", "write-attributes",
    /// "observe", "cancel-observe").
    Operation {
        ep: String,
        op: String,
        path: String,
        #[serde(default, skip_serializing_if = "Option::is_none")]
        code: Option<String>,
        #[serde(default, skip_serializing_if = "Option::is_none")]
        error: Option<String>,
    },
    /// A notification of an observation, rendered as a Read answer is
    /// (`"code"`, `"format"`, `"value"` or a tree or `"entries"`).
    Notification {
        #[serde(rename = "endpoint")]
        ep: String,
        path: String,
        observe: u32,
        #[serde(flatten)]
        answer: ReadAnswer,
    },
    /// A client sent a Bootstrap-Request.
    BootstrapRequested {
        ep: String,
        peer: String,
    },
    /// One bootstrap operation was answered: `op` is e.g. "write /0/1".
    BootstrapStep {
        ep: String,
        op: String,
        code: String,
    },
    BootstrapFinished {
        ep: String,
    },
    BootstrapFailed {
        ep: String,
        reason: String,
    },
    /// The EST CA issued a certificate (`reenroll` for /sren).
    Enrolled {
        ep: String,
        subject: String,
        serial: String,
        not_after: String,
        reenroll: bool,
    },
    /// The EST CA sent its CA certificates.
    Cacerts {
        ep: String,
    },
    /// The EST CA refused a request.
    EstRefused {
        ep: String,
        operation: String,
        reason: String,
    },
}

impl EventKind {
    /// The endpoint the event is about.
    pub fn endpoint(&self) -> &str {
        match self {
            EventKind::Registered { ep, .. }
            | EventKind::Updated { ep }
            | EventKind::Deregistered { ep }
            | EventKind::Expired { ep }
            | EventKind::RegisterRefused { ep, .. }
            | EventKind::Read { ep, .. }
            | EventKind::Operation { ep, .. }
            | EventKind::Notification { ep, .. }
            | EventKind::BootstrapRequested { ep, .. }
            | EventKind::BootstrapStep { ep, .. }
            | EventKind::BootstrapFinished { ep }
            | EventKind::BootstrapFailed { ep, .. }
            | EventKind::Enrolled { ep, .. }
            | EventKind::Cacerts { ep }
            | EventKind::EstRefused { ep, .. } => ep,
        }
    }

    /// The `event` field: "registered", "read", ...
    pub fn name(&self) -> &'static str {
        match self {
            EventKind::Registered { .. } => "registered",
            EventKind::Updated { .. } => "updated",
            EventKind::Deregistered { .. } => "deregistered",
            EventKind::Expired { .. } => "expired",
            EventKind::RegisterRefused { .. } => "register_refused",
            EventKind::Read { .. } => "read",
            EventKind::Operation { .. } => "operation",
            EventKind::Notification { .. } => "notification",
            EventKind::BootstrapRequested { .. } => "bootstrap_requested",
            EventKind::BootstrapStep { .. } => "bootstrap_step",
            EventKind::BootstrapFinished { .. } => "bootstrap_finished",
            EventKind::BootstrapFailed { .. } => "bootstrap_failed",
            EventKind::Enrolled { .. } => "enrolled",
            EventKind::Cacerts { .. } => "cacerts",
            EventKind::EstRefused { .. } => "est_refused",
        }
    }

    /// The readable stdout line, e.g. `ep=dev1 read /3/0/0 -> 2.05`.
    pub fn log_line(&self) -> String {
        let ep = shown(self.endpoint());
        match self {
            EventKind::Registered {
                location,
                lifetime,
                lwm2m,
                binding,
                peer,
                ..
            } => format!(
                "ep={ep} registered location={location} lifetime={lifetime} lwm2m={lwm2m} \
                 binding={binding} peer={peer}"
            ),
            EventKind::Updated { .. } => format!("ep={ep} updated"),
            EventKind::Deregistered { .. } => format!("ep={ep} deregistered"),
            EventKind::Expired { .. } => format!("ep={ep} expired"),
            EventKind::RegisterRefused { reason, .. } => {
                format!("ep={ep} register refused reason={reason:?}")
            }
            EventKind::Read {
                path, code, error, ..
            } => match (code, error) {
                (Some(code), _) => format!("ep={ep} read {path} -> {code}"),
                (None, Some(e)) => format!("ep={ep} read {path} failed: {e}"),
                (None, None) => format!("ep={ep} read {path} failed"),
            },
            EventKind::Operation {
                op,
                path,
                code,
                error,
                ..
            } => match (code, error) {
                (Some(code), _) => format!("ep={ep} {op} {path} -> {code}"),
                (None, Some(e)) => format!("ep={ep} {op} {path} failed: {e}"),
                (None, None) => format!("ep={ep} {op} {path} failed"),
            },
            EventKind::Notification {
                path,
                observe,
                answer,
                ..
            } => {
                let mut line = format!(
                    "ep={ep} notification {path} observe={observe} {}",
                    answer.code
                );
                let values = tree_lines(answer);
                if let Some(v) = &answer.value {
                    line.push_str(&format!(" value={v:?}"));
                } else if !values.is_empty() {
                    line.push_str(&format!(" [{}]", values.join(", ")));
                }
                line
            }
            EventKind::BootstrapRequested { peer, .. } => {
                format!("ep={ep} bootstrap requested peer={peer}")
            }
            EventKind::BootstrapStep { op, code, .. } => format!("ep={ep} bootstrap {op} {code}"),
            EventKind::BootstrapFinished { .. } => format!("ep={ep} bootstrap finished"),
            EventKind::BootstrapFailed { reason, .. } => {
                format!("ep={ep} bootstrap failed reason={reason:?}")
            }
            EventKind::Enrolled {
                serial,
                not_after,
                reenroll,
                ..
            } => format!(
                "ep={ep} {} serial={serial} notAfter={not_after}",
                if *reenroll { "re-enrolled" } else { "enrolled" }
            ),
            EventKind::Cacerts { .. } => format!("ep={ep} cacerts"),
            EventKind::EstRefused {
                operation, reason, ..
            } => format!("ep={ep} est refused {operation} reason={reason:?}"),
        }
    }
}

/// Endpoint names come from the network: quote the ones that would break a `key=value` line.
fn shown(ep: &str) -> String {
    if !ep.is_empty() && ep.chars().all(|c| c.is_ascii_graphic() && c != '"') {
        ep.to_string()
    } else {
        format!("{ep:?}")
    }
}

/// One event with its wall-clock time; serialises as the JSON line
/// `{"ts":"2026-01-01T00:00:00.000Z","event":"registered","ep":"dev1",...}`.
#[derive(Clone, Debug, PartialEq, Eq, Serialize, Deserialize)]
pub struct EventRecord {
    /// RFC 3339, UTC, milliseconds.
    pub ts: String,
    #[serde(flatten)]
    pub kind: EventKind,
}

impl EventRecord {
    pub fn to_json_line(&self) -> String {
        // A struct of strings and integers always serialises.
        serde_json::to_string(self).unwrap_or_default()
    }
}

/// RFC 3339 in UTC with milliseconds, e.g. "2026-01-01T00:00:00.000Z".
pub fn rfc3339(t: UtcTime) -> String {
    match chrono::DateTime::<chrono::Utc>::from_timestamp_millis(t.unix_millis()) {
        Some(dt) => dt.to_rfc3339_opts(chrono::SecondsFormat::Millis, true),
        None => format!("@{}ms", t.unix_millis()),
    }
}

struct Inner {
    ring: VecDeque<EventRecord>,
    file: Option<File>,
}

/// The event sink shared by the server loop (which records) and the control API and tests
/// (which read).
pub struct EventLog {
    inner: Mutex<Inner>,
    changed: Condvar,
    capacity: usize,
    echo: bool,
}

impl EventLog {
    /// `file` is opened for appending (created if missing); `echo` prints the readable line
    /// on stdout.
    pub fn new(capacity: usize, file: Option<&Path>, echo: bool) -> io::Result<EventLog> {
        let file = match file {
            Some(p) => Some(OpenOptions::new().create(true).append(true).open(p)?),
            None => None,
        };
        Ok(EventLog {
            inner: Mutex::new(Inner {
                ring: VecDeque::new(),
                file,
            }),
            changed: Condvar::new(),
            capacity: capacity.max(1),
            echo,
        })
    }

    fn lock(&self) -> MutexGuard<'_, Inner> {
        // A panic elsewhere while holding the lock leaves a consistent ring; keep going.
        self.inner.lock().unwrap_or_else(|p| p.into_inner())
    }

    /// Records an event: stdout line, file line, ring entry.
    pub fn record(&self, at: UtcTime, kind: EventKind) -> EventRecord {
        let rec = EventRecord {
            ts: rfc3339(at),
            kind,
        };
        let mut inner = self.lock();
        if self.echo {
            // Never panic on a closed stdout (println! would).
            let mut out = io::stdout().lock();
            let _ = writeln!(out, "{}", rec.kind.log_line());
            let _ = out.flush();
        }
        if let Some(f) = inner.file.as_mut() {
            // One write per line on an O_APPEND file: a reader never sees half a line
            // followed by another event.
            let line = format!("{}\n", rec.to_json_line());
            if let Err(e) = f.write_all(line.as_bytes()).and_then(|()| f.flush()) {
                log::warn!("writing the events file: {e}");
            }
        }
        if inner.ring.len() == self.capacity {
            inner.ring.pop_front();
        }
        inner.ring.push_back(rec.clone());
        drop(inner);
        self.changed.notify_all();
        rec
    }

    /// The events in the ring, oldest first.
    pub fn snapshot(&self) -> Vec<EventRecord> {
        self.lock().ring.iter().cloned().collect()
    }

    /// The ring as JSON lines, each ending in "\n".
    pub fn json_lines(&self) -> String {
        self.lock()
            .ring
            .iter()
            .map(|r| r.to_json_line() + "\n")
            .collect()
    }

    /// Waits up to `timeout` for an event in the ring that satisfies `pred` (also one
    /// recorded before the call), for tests.
    pub fn wait_for(
        &self,
        timeout: Duration,
        mut pred: impl FnMut(&EventRecord) -> bool,
    ) -> Option<EventRecord> {
        let deadline = StdInstant::now() + timeout;
        let mut inner = self.lock();
        loop {
            if let Some(r) = inner.ring.iter().find(|r| pred(r)) {
                return Some(r.clone());
            }
            let left = deadline.saturating_duration_since(StdInstant::now());
            if left.is_zero() {
                return None;
            }
            inner = self
                .changed
                .wait_timeout(inner, left)
                .unwrap_or_else(|p| p.into_inner())
                .0;
        }
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    fn registered() -> EventKind {
        EventKind::Registered {
            ep: "dev1".into(),
            location: "/rd/1".into(),
            lifetime: 60,
            lwm2m: "1.1".into(),
            binding: "U".into(),
            peer: "127.0.0.1:5555".into(),
        }
    }

    #[test]
    fn log_lines() {
        assert_eq!(
            registered().log_line(),
            "ep=dev1 registered location=/rd/1 lifetime=60 lwm2m=1.1 binding=U peer=127.0.0.1:5555"
        );
        assert_eq!(
            EventKind::Updated { ep: "dev1".into() }.log_line(),
            "ep=dev1 updated"
        );
        assert_eq!(
            EventKind::Deregistered { ep: "dev1".into() }.log_line(),
            "ep=dev1 deregistered"
        );
        assert_eq!(
            EventKind::Expired { ep: "dev1".into() }.log_line(),
            "ep=dev1 expired"
        );
        let read = |code: Option<&str>, error: Option<&str>| EventKind::Read {
            ep: "dev1".into(),
            path: "/3/0/0".into(),
            code: code.map(Into::into),
            error: error.map(Into::into),
        };
        assert_eq!(
            read(Some("2.05"), None).log_line(),
            "ep=dev1 read /3/0/0 -> 2.05"
        );
        assert_eq!(
            read(None, Some("timeout")).log_line(),
            "ep=dev1 read /3/0/0 failed: timeout"
        );
        assert_eq!(
            EventKind::Updated { ep: "a b".into() }.log_line(),
            "ep=\"a b\" updated"
        );
    }

    #[test]
    fn json_line_shape_and_round_trip() {
        let rec = EventRecord {
            ts: rfc3339(UtcTime::from_unix_millis(1_767_225_600_123)),
            kind: registered(),
        };
        let line = rec.to_json_line();
        assert!(
            line.starts_with(
                r#"{"ts":"2026-01-01T00:00:00.123Z","event":"registered","ep":"dev1","location":"/rd/1","lifetime":60,"#
            ),
            "{line}"
        );
        assert_eq!(serde_json::from_str::<EventRecord>(&line).unwrap(), rec);
        let read = EventRecord {
            ts: rec.ts.clone(),
            kind: EventKind::Read {
                ep: "d".into(),
                path: "/3/0/0".into(),
                code: Some("2.05".into()),
                error: None,
            },
        };
        let line = read.to_json_line();
        assert!(!line.contains("error"), "{line}");
        assert_eq!(serde_json::from_str::<EventRecord>(&line).unwrap(), read);
    }

    #[test]
    fn notification_and_operation_events() {
        use crate::lwm2m_server::OpResult;
        use estuary::dm::Path;
        let answer = crate::render::read_answer(
            &Path::parse("/3303/0/5700").unwrap(),
            &OpResult {
                code: "2.05".into(),
                content_format: Some(0),
                payload: b"21.5".to_vec(),
            },
        );
        let rec = EventRecord {
            ts: rfc3339(UtcTime::from_unix_millis(0)),
            kind: EventKind::Notification {
                ep: "dev1".into(),
                path: "/3303/0/5700".into(),
                observe: 3,
                answer,
            },
        };
        let line = rec.to_json_line();
        assert_eq!(
            line,
            r#"{"ts":"1970-01-01T00:00:00.000Z","event":"notification","endpoint":"dev1","path":"/3303/0/5700","observe":3,"code":"2.05","content_format":0,"format":"text","value":"21.5","encoding":"utf8"}"#
        );
        assert_eq!(serde_json::from_str::<EventRecord>(&line).unwrap(), rec);
        assert_eq!(rec.kind.endpoint(), "dev1");
        assert_eq!(
            rec.kind.log_line(),
            r#"ep=dev1 notification /3303/0/5700 observe=3 2.05 value="21.5""#
        );
        let op = EventKind::Operation {
            ep: "dev1".into(),
            op: "execute".into(),
            path: "/3/0/4".into(),
            code: Some("2.04".into()),
            error: None,
        };
        assert_eq!(op.log_line(), "ep=dev1 execute /3/0/4 -> 2.04");
        assert_eq!(op.name(), "operation");
    }

    #[test]
    fn ring_is_bounded_and_file_gets_every_line() {
        let dir = tempfile::tempdir().unwrap();
        let path = dir.path().join("events.jsonl");
        let log = EventLog::new(3, Some(&path), false).unwrap();
        for i in 0..5 {
            log.record(
                UtcTime::from_unix_seconds(i),
                EventKind::Updated {
                    ep: format!("e{i}"),
                },
            );
        }
        let eps: Vec<String> = log
            .snapshot()
            .iter()
            .map(|r| r.kind.endpoint().to_string())
            .collect();
        assert_eq!(eps, ["e2", "e3", "e4"]);
        assert_eq!(log.json_lines().lines().count(), 3);
        let file = std::fs::read_to_string(&path).unwrap();
        assert_eq!(file.lines().count(), 5);
        assert!(file.lines().all(|l| l.contains("\"event\":\"updated\"")));
        assert!(log
            .wait_for(Duration::from_millis(1), |r| r.kind.endpoint() == "e4")
            .is_some());
        assert!(log
            .wait_for(Duration::from_millis(1), |r| r.kind.endpoint() == "e0")
            .is_none());
    }

    #[test]
    fn rfc3339_formats() {
        assert_eq!(
            rfc3339(UtcTime::from_unix_millis(0)),
            "1970-01-01T00:00:00.000Z"
        );
        assert_eq!(
            rfc3339(UtcTime::from_unix_millis(i64::MAX)),
            format!("@{}ms", i64::MAX)
        );
    }
}
