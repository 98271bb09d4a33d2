//! Observations one server holds on this client (RFC 7641 with the LwM2M notification
//! attributes): which token watches which path, what was last reported and when, and when
//! the next notification is due under pmin / pmax / gt / lt / st.
//!
//! Pure bookkeeping on the virtual clock: reading values and sending messages is the
//! caller's ([`crate::lwm2m::server_dm`]).

use core::time::Duration;
use std::collections::VecDeque;

use super::attributes::Attributes;
use crate::coap::RequestHandle;
use crate::dm::{DmError, Path};
use crate::time::Instant;

/// Observe sequence numbers are 24-bit (RFC 7641 §3.4).
const SEQ_MASK: u32 = 0x00FF_FFFF;
/// Notifications remembered for matching a later RST or timeout to their observation.
const MAX_SENT: usize = 64;

/// A value as last reported: the encoded payload and, for numeric resources, the number.
#[derive(Clone, Debug, PartialEq)]
pub struct Reading {
    pub content_format: u16,
    pub payload: Vec<u8>,
    pub numeric: Option<f64>,
}

/// One observation.
#[derive(Clone, Debug)]
pub struct Observation {
    pub token: Vec<u8>,
    pub path: Path,
    pub accept: Option<u16>,
    last: Reading,
    last_sent: Instant,
    /// A change was announced below or above `path` and not yet reported or dismissed.
    changed: bool,
}

/// Reads and encodes a path with an observation's Accept.
pub type ReadFn<'a> = dyn FnMut(&Path, Option<u16>) -> Result<Reading, DmError> + 'a;

/// What is due for one observation now.
#[derive(Clone, Debug, PartialEq)]
pub struct Notification {
    pub token: Vec<u8>,
    pub observe: u32,
    /// The new reading, or the error that ends the observation (e.g. instance deleted).
    pub result: Result<Reading, DmError>,
}

/// The periods in force for an observation: attributes, else the Server object defaults.
#[derive(Copy, Clone, Debug, PartialEq)]
pub struct Periods {
    pub pmin: u32,
    /// None: no periodic notification.
    pub pmax: Option<u32>,
}

impl Periods {
    /// `attrs` over the server's default periods; a pmax below pmin is ignored (§5.1.2).
    pub fn of(attrs: &Attributes, default_pmin: Option<u32>, default_pmax: Option<u32>) -> Self {
        let pmin = attrs.pmin.or(default_pmin).unwrap_or(0);
        let pmax = attrs.pmax.or(default_pmax).filter(|m| *m > 0 && *m >= pmin);
        Periods { pmin, pmax }
    }
}

/// True if a change from `old` to `new` meets the value conditions: crossing gt or lt in
/// either direction, or moving by at least st.
pub fn meets_conditions(a: &Attributes, old: f64, new: f64) -> bool {
    let gt = a.gt.is_some_and(|g| (old > g) != (new > g));
    let lt = a.lt.is_some_and(|l| (old < l) != (new < l));
    let st = a.st.is_some_and(|s| (new - old).abs() >= s);
    gt || lt || st
}

fn secs(s: u32) -> Duration {
    Duration::from_secs(u64::from(s))
}

/// All observations of one server.
#[derive(Debug, Default)]
pub struct ObserveRegistry {
    observations: Vec<Observation>,
    sent: VecDeque<(RequestHandle, Vec<u8>)>,
    seq: u32,
}

impl ObserveRegistry {
    fn next_seq(&mut self) -> u32 {
        self.seq = (self.seq + 1) & SEQ_MASK;
        self.seq
    }

    /// Adds (or, for a known token, replaces) an observation whose first response carries
    /// `first`; returns the Observe number for that response.
    pub fn register(
        &mut self,
        now: Instant,
        token: Vec<u8>,
        path: Path,
        accept: Option<u16>,
        first: Reading,
    ) -> u32 {
        self.cancel_token(&token);
        self.observations.push(Observation {
            token,
            path,
            accept,
            last: first,
            last_sent: now,
            changed: false,
        });
        self.next_seq()
    }

    /// Ends the observation with `token` (GET with Observe=1, RST); true if there was one.
    pub fn cancel_token(&mut self, token: &[u8]) -> bool {
        let before = self.observations.len();
        self.observations.retain(|o| o.token != token);
        before != self.observations.len()
    }

    /// Ends every observation of `path` and below (its instance was deleted).
    pub fn cancel_under(&mut self, path: &Path) {
        self.observations.retain(|o| !path.contains(&o.path));
    }

    pub fn clear(&mut self) {
        self.observations.clear();
        self.sent.clear();
    }

    pub fn len(&self) -> usize {
        self.observations.len()
    }

    pub fn is_empty(&self) -> bool {
        self.observations.is_empty()
    }

    pub fn observations(&self) -> impl Iterator<Item = &Observation> {
        self.observations.iter()
    }

    /// Marks observations affected by a change at `path`: those on the path, above it
    /// (an instance or object observe sees its resources change) or below it.
    pub fn mark_changed(&mut self, path: &Path) {
        for o in &mut self.observations {
            if o.path.contains(path) || path.contains(&o.path) {
                o.changed = true;
            }
        }
    }

    /// Remembers the handle a notification went out with, for [`Self::on_failed`].
    pub fn sent(&mut self, handle: RequestHandle, token: Vec<u8>) {
        if self.sent.len() == MAX_SENT {
            self.sent.pop_front();
        }
        self.sent.push_back((handle, token));
    }

    /// True if `handle` is one of our notifications.
    pub fn owns(&self, handle: RequestHandle) -> bool {
        self.sent.iter().any(|(h, _)| *h == handle)
    }

    /// A notification was acknowledged.
    pub fn on_delivered(&mut self, handle: RequestHandle) {
        self.sent.retain(|(h, _)| *h != handle);
    }

    /// A notification was answered with RST or never acknowledged: the server has lost
    /// interest (RFC 7641 §3.6, §4.5), so the observation ends.
    pub fn on_failed(&mut self, handle: RequestHandle) -> bool {
        let Some(i) = self.sent.iter().position(|(h, _)| *h == handle) else {
            return false;
        };
        match self.sent.remove(i) {
            Some((_, token)) => self.cancel_token(&token),
            None => false,
        }
    }

    /// Decides which observations notify now. `periods` and `attrs` give the settings in
    /// force for a path; `read` reads and encodes a path with the observation's Accept.
    pub fn poll(
        &mut self,
        now: Instant,
        periods: &dyn Fn(&Path) -> (Periods, Attributes),
        read: &mut ReadFn<'_>,
    ) -> Vec<Notification> {
        let mut out = Vec::new();
        let mut ended = Vec::new();
        for idx in 0..self.observations.len() {
            let o = &self.observations[idx];
            let (p, attrs) = periods(&o.path);
            let since = now.saturating_duration_since(o.last_sent);
            let pmax_due = p.pmax.is_some_and(|m| since >= secs(m));
            let change_due = o.changed && since >= secs(p.pmin);
            if !(pmax_due || change_due) {
                continue;
            }
            let reading = read(&o.path, o.accept);
            let o = &mut self.observations[idx];
            match reading {
                Err(e) => {
                    ended.push(o.token.clone());
                    out.push(Notification {
                        token: o.token.clone(),
                        observe: 0,
                        result: Err(e),
                    });
                }
                Ok(r) => {
                    if !pmax_due {
                        let unchanged = r.payload == o.last.payload;
                        let filtered =
                            match (attrs.has_value_conditions(), o.last.numeric, r.numeric) {
                                (true, Some(old), Some(new)) => !meets_conditions(&attrs, old, new),
                                _ => false,
                            };
                        if unchanged || filtered {
                            o.changed = false;
                            continue;
                        }
                    }
                    o.changed = false;
                    o.last = r.clone();
                    o.last_sent = now;
                    out.push(Notification {
                        token: o.token.clone(),
                        observe: 0,
                        result: Ok(r),
                    });
                }
            }
        }
        for t in ended {
            self.cancel_token(&t);
        }
        for n in &mut out {
            n.observe = self.next_seq();
        }
        out
    }

    /// When [`Self::poll`] next has something to decide.
    pub fn next_deadline(
        &self,
        periods: &dyn Fn(&Path) -> (Periods, Attributes),
    ) -> Option<Instant> {
        self.observations
            .iter()
            .filter_map(|o| {
                let (p, _) = periods(&o.path);
                let by_pmax = p.pmax.map(|m| o.last_sent + secs(m));
                let by_change = o.changed.then(|| o.last_sent + secs(p.pmin));
                [by_pmax, by_change].into_iter().flatten().min()
            })
            .min()
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    fn reading(v: f64) -> Reading {
        Reading {
            content_format: 0,
            payload: v.to_string().into_bytes(),
            numeric: Some(v),
        }
    }

    fn at(s: u64) -> Instant {
        Instant::from_millis(s * 1000)
    }

    #[test]
    fn pmin_batches_changes_and_pmax_repeats_unchanged_values() {
        let mut reg = ObserveRegistry::default();
        let path = Path::resource(3303, 0, 5700);
        reg.register(at(0), vec![1], path, None, reading(0.0));
        let attrs = Attributes {
            pmin: Some(5),
            pmax: Some(30),
            ..Attributes::default()
        };
        let periods = |_: &Path| (Periods::of(&attrs, None, None), attrs);
        let mut value = 0.0;
        let mut sent_at = Vec::new();
        for s in 1..=20u64 {
            value += 1.0;
            reg.mark_changed(&path);
            let v = value;
            let n = reg.poll(at(s), &periods, &mut |_, _| Ok(reading(v)));
            if !n.is_empty() {
                sent_at.push(s);
            }
        }
        assert_eq!(sent_at, [5, 10, 15, 20]);
        // Unchanged from 20 s on: the next one is pmax later.
        assert_eq!(reg.next_deadline(&periods), Some(at(50)));
        let v = value;
        assert!(reg
            .poll(at(49), &periods, &mut |_, _| Ok(reading(v)))
            .is_empty());
        let n = reg.poll(at(50), &periods, &mut |_, _| Ok(reading(v)));
        assert_eq!(n.len(), 1);
        assert!(n[0].observe > 4);
    }

    #[test]
    fn value_conditions_and_cancellation() {
        let mut reg = ObserveRegistry::default();
        let path = Path::resource(3303, 0, 5700);
        reg.register(at(0), vec![7], path, None, reading(10.0));
        let attrs = Attributes {
            gt: Some(20.0),
            st: Some(15.0),
            ..Attributes::default()
        };
        let periods = |_: &Path| (Periods::of(&attrs, None, None), attrs);
        let step = |reg: &mut ObserveRegistry, s: u64, v: f64| {
            reg.mark_changed(&Path::instance(3303, 0));
            !reg.poll(at(s), &periods, &mut |_, _| Ok(reading(v)))
                .is_empty()
        };
        assert!(!step(&mut reg, 1, 15.0)); // below gt, moved 5 < st
        assert!(step(&mut reg, 2, 21.0)); // crossed gt
        assert!(!step(&mut reg, 3, 30.0)); // above gt, moved 9
        assert!(step(&mut reg, 4, 19.0)); // crossed back down
        assert!(step(&mut reg, 5, 35.0)); // crossed and moved 16
        reg.sent(RequestHandle(9), vec![7]);
        assert!(reg.owns(RequestHandle(9)));
        assert!(reg.on_failed(RequestHandle(9)));
        assert!(reg.is_empty());
        assert!(!reg.on_failed(RequestHandle(9)));
    }

    #[test]
    fn object_observes_see_changes_below_and_errors_end_them() {
        let mut reg = ObserveRegistry::default();
        reg.register(at(0), vec![1], Path::instance(3303, 0), None, reading(1.0));
        reg.register(
            at(0),
            vec![2],
            Path::resource(3303, 1, 5700),
            None,
            reading(1.0),
        );
        let periods = |_: &Path| {
            (
                Periods::of(&Attributes::default(), None, None),
                Attributes::default(),
            )
        };
        reg.mark_changed(&Path::resource(3303, 0, 5700));
        let n = reg.poll(at(1), &periods, &mut |_, _| Ok(reading(2.0)));
        assert_eq!(n.len(), 1);
        assert_eq!(n[0].token, vec![1]);
        reg.mark_changed(&Path::object(3303));
        let n = reg.poll(at(2), &periods, &mut |_, _| Err(DmError::NotFound));
        assert_eq!(n.len(), 2);
        assert!(reg.is_empty());
        assert_eq!(
            Periods::of(&Attributes::default(), Some(10), Some(5)).pmax,
            None
        );
    }
}
