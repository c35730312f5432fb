//! The handshakes in progress: caps per source address and per subnet, global caps, and
//! which pending handshake to shed so that a new one can be admitted.
//!
//! A pending handshake is first *awaiting its ClientHello* (a socket and a small task:
//! cheap), then *handshaking* (rustls state, the key exchange: dear). Each stage has its
//! global cap. Every accepted connection is admitted at once, never left in the kernel's
//! backlog: if admitting it would exceed a cap, the oldest pending handshake of the same
//! address, then of the same subnet, then of the stage is shed first.
//!
//! Which one is "oldest" favours real clients. A connection awaiting its ClientHello is
//! *new* until its task first ran, then *waiting* if the ClientHello was not there yet.
//! Waiting connections — idle ones, slowloris ones — are shed first, then new ones (whose
//! task may simply not have run yet while the accept loop was busy), and only then, within
//! an address or subnet, handshakes past their ClientHello. A real client sends its
//! ClientHello right after connecting, so its task finds it on its first run and moves it
//! to the handshaking stage, out of the flood's reach.

use std::collections::{BTreeMap, BTreeSet, HashMap};
use std::net::IpAddr;
use std::sync::atomic::Ordering;
use std::sync::{Arc, Mutex, MutexGuard, PoisonError};

use tokio::sync::oneshot;

use super::stats::Counters;

/// Why a pending handshake was shed.
#[derive(Clone, Copy, Debug, PartialEq, Eq)]
pub(super) enum Shed {
    /// Its source address was at the per-address cap.
    Address,
    /// Its /24 (IPv4) or /64 (IPv6) was at the per-subnet cap.
    Subnet,
    /// It was awaiting its ClientHello, and so were as many connections as allowed.
    AwaitingHello,
    /// It was handshaking, and so were as many connections as allowed.
    Handshaking,
    /// The process ran out of file descriptors while accepting.
    FdLimit,
}

impl Shed {
    pub(super) fn reason(self) -> &'static str {
        match self {
            Shed::Address => "shed: too many handshakes in progress from this address",
            Shed::Subnet => "shed: too many handshakes in progress from this subnet",
            Shed::AwaitingHello => {
                "shed: the limit of connections awaiting their ClientHello was reached"
            }
            Shed::Handshaking => "shed: the limit of handshakes in progress was reached",
            Shed::FdLimit => "shed: the process ran out of file descriptors",
        }
    }
}

/// The /24 of an IPv4 address or the /64 of an IPv6 one.
#[derive(Clone, Copy, Debug, PartialEq, Eq, Hash)]
enum Subnet {
    V4([u8; 3]),
    V6([u8; 8]),
}

impl Subnet {
    fn of(ip: IpAddr) -> Self {
        match ip {
            IpAddr::V4(v4) => {
                let [a, b, c, _] = v4.octets();
                Subnet::V4([a, b, c])
            }
            IpAddr::V6(v6) => {
                let o = v6.octets();
                Subnet::V6([o[0], o[1], o[2], o[3], o[4], o[5], o[6], o[7]])
            }
        }
    }
}

/// The caps, each at least 1.
#[derive(Clone, Copy, Debug)]
pub(super) struct Limits {
    /// Connections awaiting their ClientHello.
    pub(super) awaiting_hello: usize,
    /// Handshakes past their ClientHello.
    pub(super) handshaking: usize,
    pub(super) per_address: usize,
    pub(super) per_subnet: usize,
}

/// Where a pending handshake is.
#[derive(Clone, Copy, Debug, PartialEq, Eq)]
enum Stage {
    /// Accepted; its task has not looked at it yet.
    New,
    /// Its task found no complete ClientHello and is waiting for one.
    Waiting,
    /// Past its ClientHello.
    Handshaking,
}

/// The table of pending handshakes.
#[derive(Debug)]
pub(super) struct Pending {
    limits: Limits,
    counters: Arc<Counters>,
    table: Mutex<Table>,
}

#[derive(Debug, Default)]
struct Table {
    next_id: u64,
    /// Every pending handshake (ids only grow: ascending order is oldest first).
    entries: BTreeMap<u64, Entry>,
    /// The same ids by stage.
    new: BTreeSet<u64>,
    waiting: BTreeSet<u64>,
    handshaking: BTreeSet<u64>,
    by_address: HashMap<IpAddr, BTreeSet<u64>>,
    by_subnet: HashMap<Subnet, BTreeSet<u64>>,
}

#[derive(Debug)]
struct Entry {
    address: IpAddr,
    stage: Stage,
    shed: oneshot::Sender<Shed>,
}

/// A pending handshake's place in the table; leaves it when dropped.
#[derive(Debug)]
pub(super) struct Ticket {
    pending: Arc<Pending>,
    id: u64,
}

impl Ticket {
    /// Its task looked and found no complete ClientHello yet.
    pub(super) fn waiting(&self) {
        self.pending
            .lock()
            .advance(self.id, Stage::New, Stage::Waiting);
    }

    /// The ClientHello is complete: moves to the handshaking stage, shedding that stage's
    /// oldest if it is full.
    pub(super) fn hello_received(&self) {
        let pending = &self.pending;
        let mut table = pending.lock();
        let Some(entry) = table.entries.get(&self.id) else {
            return; // shed meanwhile
        };
        if entry.stage == Stage::Handshaking {
            return;
        }
        if table.handshaking.len() >= pending.limits.handshaking
            && let Some(victim) = table.handshaking.first().copied()
        {
            table.shed(victim, Shed::Handshaking, &pending.counters);
        }
        let from = table.entries.get(&self.id).map_or(Stage::New, |e| e.stage);
        table.advance(self.id, from, Stage::Handshaking);
    }

    /// Leaves the table; `false` if the handshake was shed meanwhile (it then counts as
    /// shed, whatever else became of it).
    pub(super) fn finish(self) -> bool {
        self.pending.lock().remove(self.id).is_some()
    }
}

impl Drop for Ticket {
    fn drop(&mut self) {
        self.pending.lock().remove(self.id);
    }
}

impl Pending {
    pub(super) fn new(limits: Limits, counters: Arc<Counters>) -> Self {
        Pending {
            limits,
            counters,
            table: Mutex::new(Table::default()),
        }
    }

    pub(super) fn limits(&self) -> Limits {
        self.limits
    }

    fn lock(&self) -> MutexGuard<'_, Table> {
        self.table.lock().unwrap_or_else(PoisonError::into_inner)
    }

    /// Admits a new connection from `ip`, shedding what the caps require. The receiver
    /// yields if this connection is shed in turn.
    pub(super) fn admit(self: &Arc<Self>, ip: IpAddr) -> (Ticket, oneshot::Receiver<Shed>) {
        let ip = ip.to_canonical();
        let subnet = Subnet::of(ip);
        let (tx, rx) = oneshot::channel();
        let mut table = self.lock();
        if let Some(group) = table.by_address.get(&ip)
            && group.len() >= self.limits.per_address
            && let Some(victim) = table.victim_in(group)
        {
            table.shed(victim, Shed::Address, &self.counters);
        }
        if let Some(group) = table.by_subnet.get(&subnet)
            && group.len() >= self.limits.per_subnet
            && let Some(victim) = table.victim_in(group)
        {
            table.shed(victim, Shed::Subnet, &self.counters);
        }
        if table.new.len() + table.waiting.len() >= self.limits.awaiting_hello
            && let Some(victim) = table.oldest_awaiting_hello()
        {
            table.shed(victim, Shed::AwaitingHello, &self.counters);
        }
        let id = table.next_id;
        table.next_id += 1;
        table.entries.insert(
            id,
            Entry {
                address: ip,
                stage: Stage::New,
                shed: tx,
            },
        );
        table.new.insert(id);
        table.by_address.entry(ip).or_default().insert(id);
        table.by_subnet.entry(subnet).or_default().insert(id);
        drop(table);
        let ticket = Ticket {
            pending: self.clone(),
            id,
        };
        (ticket, rx)
    }

    /// Sheds the oldest pending handshake (one awaiting its ClientHello if there is any)
    /// to free a file descriptor; `false` if there is none.
    pub(super) fn shed_oldest(&self, why: Shed) -> bool {
        let mut table = self.lock();
        match table
            .oldest_awaiting_hello()
            .or_else(|| table.handshaking.first().copied())
        {
            Some(victim) => {
                table.shed(victim, why, &self.counters);
                true
            }
            None => false,
        }
    }

    /// `(awaiting their ClientHello, handshaking)`.
    pub(super) fn counts(&self) -> (usize, usize) {
        let table = self.lock();
        (
            table.new.len() + table.waiting.len(),
            table.handshaking.len(),
        )
    }
}

impl Table {
    fn stage_set(&mut self, stage: Stage) -> &mut BTreeSet<u64> {
        match stage {
            Stage::New => &mut self.new,
            Stage::Waiting => &mut self.waiting,
            Stage::Handshaking => &mut self.handshaking,
        }
    }

    /// Moves `id` from stage `from` to `to`; nothing if it is not (or no longer) in `from`.
    fn advance(&mut self, id: u64, from: Stage, to: Stage) {
        let Some(entry) = self.entries.get_mut(&id) else {
            return;
        };
        if entry.stage != from {
            return;
        }
        entry.stage = to;
        self.stage_set(from).remove(&id);
        self.stage_set(to).insert(id);
    }

    /// The oldest waiting connection, else the oldest new one.
    fn oldest_awaiting_hello(&self) -> Option<u64> {
        self.waiting.first().or_else(|| self.new.first()).copied()
    }

    /// The same order within one source's handshakes (at most its cap of them), then the
    /// oldest handshaking one.
    fn victim_in(&self, group: &BTreeSet<u64>) -> Option<u64> {
        let in_stage = |stage: Stage| {
            group
                .iter()
                .find(|id| self.entries.get(id).is_some_and(|e| e.stage == stage))
        };
        in_stage(Stage::Waiting)
            .or_else(|| in_stage(Stage::New))
            .or_else(|| group.first())
            .copied()
    }

    fn shed(&mut self, id: u64, why: Shed, counters: &Counters) {
        if let Some(entry) = self.remove(id) {
            counters.shed(why).fetch_add(1, Ordering::Relaxed);
            // The task may be finishing on its own; then nobody listens, and that is fine.
            let _ = entry.shed.send(why);
        }
    }

    fn remove(&mut self, id: u64) -> Option<Entry> {
        let entry = self.entries.remove(&id)?;
        self.stage_set(entry.stage).remove(&id);
        let subnet = Subnet::of(entry.address);
        if let Some(group) = self.by_address.get_mut(&entry.address) {
            group.remove(&id);
            if group.is_empty() {
                self.by_address.remove(&entry.address);
            }
        }
        if let Some(group) = self.by_subnet.get_mut(&subnet) {
            group.remove(&id);
            if group.is_empty() {
                self.by_subnet.remove(&subnet);
            }
        }
        Some(entry)
    }
}

#[cfg(test)]
mod tests {
    use super::*;
    use std::net::Ipv6Addr;

    fn pending(
        awaiting_hello: usize,
        handshaking: usize,
        per_address: usize,
        per_subnet: usize,
    ) -> Arc<Pending> {
        Arc::new(Pending::new(
            Limits {
                awaiting_hello,
                handshaking,
                per_address,
                per_subnet,
            },
            Arc::default(),
        ))
    }

    fn ip(s: &str) -> IpAddr {
        s.parse().unwrap()
    }

    fn shed_now(rx: &mut oneshot::Receiver<Shed>) -> Option<Shed> {
        rx.try_recv().ok()
    }

    #[test]
    fn each_stage_sheds_its_own_oldest() {
        let p = pending(2, 2, 10, 10);
        let (a, mut a_rx) = p.admit(ip("10.0.0.1"));
        let (_b, mut b_rx) = p.admit(ip("10.0.1.1"));
        // `a` is oldest, but its handshake is under way: the silent ones go first.
        a.hello_received();
        let (_c, mut c_rx) = p.admit(ip("10.0.2.1"));
        let (_d, _) = p.admit(ip("10.0.3.1"));
        assert_eq!(shed_now(&mut b_rx), Some(Shed::AwaitingHello));
        assert_eq!(shed_now(&mut c_rx), None);
        let (_e, _) = p.admit(ip("10.0.4.1"));
        assert_eq!(shed_now(&mut c_rx), Some(Shed::AwaitingHello));
        assert_eq!(shed_now(&mut a_rx), None);
        assert_eq!(p.counts(), (2, 1));
        // A third handshake past its ClientHello sheds the oldest handshaking one.
        let (f, _) = p.admit(ip("10.0.5.1"));
        f.hello_received();
        assert_eq!(shed_now(&mut a_rx), None);
        let (g, _) = p.admit(ip("10.0.6.1"));
        g.hello_received();
        assert_eq!(shed_now(&mut a_rx), Some(Shed::Handshaking));
        assert_eq!(p.counters.shed_awaiting_hello.load(Ordering::Relaxed), 3);
        assert_eq!(p.counters.shed_handshaking.load(Ordering::Relaxed), 1);
        // A shed ticket's late ClientHello changes nothing; finishing says it was shed.
        a.hello_received();
        assert_eq!(p.counts().1, 2);
        assert!(!a.finish());
        assert!(f.finish());
    }

    #[test]
    fn connections_found_waiting_go_before_new_ones() {
        let p = pending(2, 10, 2, 10);
        // `a` is older, but its task has not run yet; `b`'s found no ClientHello.
        let (_a, mut a_rx) = p.admit(ip("10.0.0.1"));
        let (b, mut b_rx) = p.admit(ip("10.0.0.1"));
        b.waiting();
        let (_c, _) = p.admit(ip("10.0.0.9"));
        assert_eq!(shed_now(&mut b_rx), Some(Shed::AwaitingHello));
        assert_eq!(shed_now(&mut a_rx), None);
        // Within an address too.
        let p = pending(10, 10, 2, 10);
        let (_a, mut a_rx) = p.admit(ip("10.0.0.1"));
        let (d, mut d_rx) = p.admit(ip("10.0.0.1"));
        d.waiting();
        let (_e, _) = p.admit(ip("10.0.0.1"));
        assert_eq!(shed_now(&mut d_rx), Some(Shed::Address));
        assert_eq!(shed_now(&mut a_rx), None);
    }

    #[test]
    fn per_address_and_per_subnet_caps_shed_within_the_source() {
        let p = pending(100, 100, 2, 3);
        let (a1, mut a1_rx) = p.admit(ip("192.0.2.1"));
        let (_a2, mut a2_rx) = p.admit(ip("192.0.2.1"));
        let (_other, mut other_rx) = p.admit(ip("198.51.100.1"));
        // `a1` is handshaking: a third from the same address sheds the silent `a2`.
        a1.hello_received();
        let (_a3, mut a3_rx) = p.admit(ip("192.0.2.1"));
        assert_eq!(shed_now(&mut a2_rx), Some(Shed::Address));
        assert_eq!(shed_now(&mut a1_rx), None);
        // The /24 now holds a1, a3; a neighbour fills it, the next sheds a3 (silent).
        let (_n1, mut n1_rx) = p.admit(ip("192.0.2.200"));
        let (_n2, _) = p.admit(ip("192.0.2.201"));
        assert_eq!(shed_now(&mut a3_rx), Some(Shed::Subnet));
        assert_eq!(shed_now(&mut a1_rx), None);
        assert_eq!(shed_now(&mut n1_rx), None);
        assert_eq!(shed_now(&mut other_rx), None);
        assert_eq!(p.counters.shed_per_address.load(Ordering::Relaxed), 1);
        assert_eq!(p.counters.shed_per_subnet.load(Ordering::Relaxed), 1);
        // All handshaking: the oldest of the address goes.
        let p = pending(100, 100, 1, 100);
        let (b1, mut b1_rx) = p.admit(ip("192.0.2.9"));
        b1.hello_received();
        let _b2 = p.admit(ip("192.0.2.9"));
        assert_eq!(shed_now(&mut b1_rx), Some(Shed::Address));
    }

    #[test]
    fn ipv6_groups_by_64_and_mapped_ipv4_by_24() {
        assert_eq!(
            Subnet::of(ip("2001:db8:1:2:aaaa::1")),
            Subnet::of(ip("2001:db8:1:2:bbbb::9"))
        );
        assert_ne!(
            Subnet::of(ip("2001:db8:1:2::1")),
            Subnet::of(ip("2001:db8:1:3::1"))
        );
        let p = pending(100, 100, 1, 100);
        let mapped = IpAddr::V6(Ipv6Addr::from(0xffff_c000_0201_u128)); // ::ffff:192.0.2.1
        let (_a, mut a_rx) = p.admit(mapped);
        let (_b, _) = p.admit(ip("192.0.2.1"));
        assert_eq!(shed_now(&mut a_rx), Some(Shed::Address));
    }

    #[test]
    fn dropped_tickets_leave_no_trace() {
        let p = pending(2, 2, 1, 1);
        for i in 0..10 {
            let (t, _) = p.admit(ip("203.0.113.7"));
            if i % 2 == 0 {
                t.hello_received();
            }
            drop(t);
        }
        assert_eq!(p.counts(), (0, 0));
        let table = p.lock();
        assert!(table.entries.is_empty());
        assert!(table.by_address.is_empty() && table.by_subnet.is_empty());
        drop(table);
        assert!(!p.shed_oldest(Shed::FdLimit));
        let (_t, mut rx) = p.admit(ip("203.0.113.7"));
        assert!(p.shed_oldest(Shed::FdLimit));
        assert_eq!(shed_now(&mut rx), Some(Shed::FdLimit));
        assert_eq!(p.counters.shed_fd_limit.load(Ordering::Relaxed), 1);
    }
}
