//! Listener protection shared by the daemons: a bound on connections that have not
//! finished their TLS handshake (kept apart from established sessions, so idle sockets
//! cannot lock out a real client), and the process's file-descriptor limit.

use std::collections::BTreeMap;
use std::net::IpAddr;
use std::sync::{Arc, Mutex};

use tokio::sync::oneshot;

/// Connections in their TLS handshake. When the gate is full, a new connection evicts
/// the oldest pending handshake of the source that has the most of them (so one source
/// flooding evicts its own sockets first); a source over `per_source` evicts its own
/// oldest. A real client, whose handshake takes milliseconds, always gets through idle
/// sockets that never speak.
pub struct HandshakeGate {
    max: usize,
    per_source: usize,
    state: Mutex<GateState>,
}

#[derive(Default)]
struct GateState {
    next: u64,
    pending: BTreeMap<u64, (IpAddr, oneshot::Sender<()>)>,
}

/// A place in the gate; leaving it (drop) frees it. `evicted` resolves when a newer
/// connection took the place.
pub struct Ticket {
    gate: Arc<HandshakeGate>,
    id: u64,
    pub evicted: oneshot::Receiver<()>,
}

impl Drop for Ticket {
    fn drop(&mut self) {
        self.gate
            .state
            .lock()
            .unwrap_or_else(|p| p.into_inner())
            .pending
            .remove(&self.id);
    }
}

impl HandshakeGate {
    pub fn new(max: usize, per_source: usize) -> Arc<HandshakeGate> {
        Arc::new(HandshakeGate {
            max: max.max(1),
            per_source: per_source.max(1),
            state: Mutex::new(GateState::default()),
        })
    }

    /// Enters the gate; returns the ticket and whether another handshake was evicted.
    pub fn enter(self: &Arc<Self>, source: IpAddr) -> (Ticket, bool) {
        let source = canonical(source);
        let mut g = self.state.lock().unwrap_or_else(|p| p.into_inner());
        let mut evicted = false;
        let from_source = g.pending.values().filter(|(ip, _)| *ip == source).count();
        let victim_source = if from_source >= self.per_source {
            Some(source)
        } else if g.pending.len() >= self.max {
            // The source with the most pending handshakes.
            let mut counts: BTreeMap<IpAddr, usize> = BTreeMap::new();
            for (ip, _) in g.pending.values() {
                *counts.entry(*ip).or_default() += 1;
            }
            counts.into_iter().max_by_key(|(_, n)| *n).map(|(ip, _)| ip)
        } else {
            None
        };
        if let Some(v) = victim_source {
            let oldest = g
                .pending
                .iter()
                .find(|(_, (ip, _))| *ip == v)
                .map(|(id, _)| *id);
            if let Some(id) = oldest {
                if let Some((_, tx)) = g.pending.remove(&id) {
                    let _ = tx.send(());
                    evicted = true;
                }
            }
        }
        let id = g.next;
        g.next += 1;
        let (tx, rx) = oneshot::channel();
        g.pending.insert(id, (source, tx));
        (
            Ticket {
                gate: self.clone(),
                id,
                evicted: rx,
            },
            evicted,
        )
    }

    /// Handshakes pending now.
    pub fn pending(&self) -> usize {
        self.state
            .lock()
            .unwrap_or_else(|p| p.into_inner())
            .pending
            .len()
    }
}

/// IPv4-mapped IPv6 addresses as IPv4 (a dual-stack listener reports them so).
pub fn canonical(ip: IpAddr) -> IpAddr {
    match ip {
        IpAddr::V6(v6) => match v6.to_ipv4_mapped() {
            Some(v4) => IpAddr::V4(v4),
            None => IpAddr::V6(v6),
        },
        v4 => v4,
    }
}

/// Raises the soft limit of open files to the hard limit: a daemon that runs out of
/// descriptors stops answering everyone. Returns the new soft limit.
pub fn raise_nofile_limit() -> u64 {
    let mut r = libc::rlimit {
        rlim_cur: 0,
        rlim_max: 0,
    };
    // SAFETY: getrlimit writes into the struct we pass; RLIMIT_NOFILE is valid.
    if unsafe { libc::getrlimit(libc::RLIMIT_NOFILE, &mut r) } != 0 {
        return 0;
    }
    if r.rlim_cur < r.rlim_max {
        let want = libc::rlimit {
            rlim_cur: r.rlim_max,
            rlim_max: r.rlim_max,
        };
        // SAFETY: setrlimit reads the struct we pass; raising the soft limit up to the
        // hard limit needs no privilege.
        if unsafe { libc::setrlimit(libc::RLIMIT_NOFILE, &want) } == 0 {
            return want.rlim_cur;
        }
    }
    r.rlim_cur
}

#[cfg(test)]
mod tests {
    use super::*;

    #[tokio::test]
    async fn a_full_gate_evicts_the_oldest_of_the_biggest_source() {
        let g = HandshakeGate::new(4, 3);
        let a: IpAddr = "10.0.0.1".parse().expect("ip");
        let b: IpAddr = "10.0.0.2".parse().expect("ip");
        let (mut t1, e) = g.enter(a);
        assert!(!e);
        let (_t2, _) = g.enter(a);
        let (_t3, _) = g.enter(a);
        // a is at its per-source bound: its own oldest goes.
        let (_t4, e) = g.enter(a);
        assert!(e);
        assert!(t1.evicted.try_recv().is_ok());
        assert_eq!(g.pending(), 3);
        let (mut tb, e) = g.enter(b);
        assert!(!e);
        // Full (4): the newcomer evicts a's oldest, not b's.
        let (_tb2, e) = g.enter(b);
        assert!(e);
        assert!(tb.evicted.try_recv().is_err());
        assert_eq!(g.pending(), 4);
        drop(_tb2);
        assert_eq!(g.pending(), 3);
    }

    #[test]
    fn mapped_addresses_are_one_source() {
        let m: IpAddr = "::ffff:127.0.0.1".parse().expect("ip");
        assert_eq!(canonical(m), "127.0.0.1".parse::<IpAddr>().expect("ip"));
    }

    #[test]
    fn nofile_is_raised_to_the_hard_limit() {
        let n = raise_nofile_limit();
        assert!(n >= 1024, "{n}");
    }
}
