//! The kernel enforcement point (feature `kernel`): the tc classifier in `bpf/l7_filter.c`,
//! shipped compiled inside this crate, loaded and managed with aya.
//!
//! ```no_run
//! use ebpf_l7_filter::{L7Filter, RuleSet};
//! use futures_util::StreamExt;
//!
//! # async fn run() -> Result<(), Box<dyn std::error::Error>> {
//! let rules = RuleSet::load("rules.yaml")?;
//! let mut filter = L7Filter::builder()
//!     .interface("eth0")
//!     .ports([8080])
//!     .rules(rules)
//!     .build()?;
//! let mut events = filter.events().expect("taken once");
//! while let Some(event) = events.next().await {
//!     println!("{event}");
//! }
//! # Ok(()) }
//! ```
//!
//! What happens on a deny: the kernel drops the segment that carries the request line,
//! marks the flow denied (later segments are dropped too) and writes an event; a thread
//! of this filter reads the event and destroys the server-side socket with netlink
//! `SOCK_DESTROY` (see `destroy.rs`), so the client sees a reset within milliseconds and the
//! application never reads the request. The netlink socket is opened in the network
//! namespace of the thread that calls [`L7FilterBuilder::build`], which must be the
//! namespace of the interface.
//!
//! Rules change live ([`L7Filter::set_rules`]): the new rule keys are written under the
//! other generation byte, the config flips to it in one map update, then the old keys are
//! removed; a packet sees either the old or the new rule set. The program is replaced with
//! [`L7Filter::replace_program`]: the new program is loaded against the same maps (pinned
//! under bpffs) and swapped into the TCX link in one operation, with no instant without a
//! filter.

use std::collections::HashMap;
use std::fmt;
use std::io;
use std::net::IpAddr;
use std::path::{Path, PathBuf};
use std::pin::Pin;
use std::sync::atomic::{AtomicBool, AtomicU64, Ordering};
use std::sync::{Arc, Mutex};
use std::task::{Context, Poll};
use std::thread::JoinHandle;
use std::time::{Duration, SystemTime};

use aya::maps::lpm_trie::{Key, LpmTrie};
use aya::maps::{Array, MapData, PerCpuArray, RingBuf};
use aya::programs::tc::{SchedClassifierLink, TcAttachType};
use aya::programs::{SchedClassifier, TestRun, TestRunOptions};
use aya::{Ebpf, EbpfLoader};

use crate::kernel::destroy::SocketDestroyer;
use crate::kernel::layout::{CONFIG_SIZE, RULE_KEY_DATA, RuleEntry};
use crate::{FilterError, Method, Reason, RuleSet, Verdict};

mod destroy;
pub(crate) mod layout;

/// The compiled classifier (`bpf/l7_filter.o`, built from `bpf/l7_filter.c` by
/// `cargo xtask ebpf-build`; CI fails when it is stale).
pub static PROGRAM_OBJECT: &[u8] = include_bytes!("../bpf/l7_filter.o");

const PROGRAM_NAME: &str = "l7_filter";
const MAP_NAMES: [&str; 7] = [
    "config",
    "rules",
    "rule_hits",
    "stats",
    "denied_flows",
    "events",
    "scratch",
];
const BPF_FS: &str = "/sys/fs/bpf";
const BPF_FS_MAGIC: i64 = 0xcafe_4a11;

/// Builds an [`L7Filter`]; see [`L7Filter::builder`].
#[derive(Debug, Default)]
#[must_use]
pub struct L7FilterBuilder {
    interface: Option<String>,
    ports: Vec<u16>,
    rules: Option<RuleSet>,
    pin_dir: Option<PathBuf>,
    event_capacity: Option<usize>,
    destroy_denied: Option<bool>,
    batch_wakeups: bool,
}

impl L7FilterBuilder {
    /// The interface to attach to at ingress (TCX). Without one the program is loaded but
    /// not attached (for [`L7Filter::test_run`]).
    pub fn interface(mut self, name: impl Into<String>) -> Self {
        self.interface = Some(name.into());
        self
    }

    /// The TCP destination ports filtered; other traffic passes untouched.
    pub fn ports(mut self, ports: impl IntoIterator<Item = u16>) -> Self {
        self.ports = ports.into_iter().collect();
        self
    }

    /// The rule set in force when the filter attaches (default: an empty set with
    /// `default: deny`, which refuses every request on the filtered ports).
    pub fn rules(mut self, rules: RuleSet) -> Self {
        self.rules = Some(rules);
        self
    }

    /// Pins the maps under this directory of a bpffs (created if missing) and keeps them
    /// when the filter is dropped, so another process (or the next run) finds them.
    /// Without it the maps are pinned in a private directory removed on drop.
    pub fn pin_dir(mut self, dir: impl Into<PathBuf>) -> Self {
        self.pin_dir = Some(dir.into());
        self
    }

    /// How many events wait for [`L7Filter::events`] before newer ones are dropped (and
    /// counted in [`Counters::events_dropped`]). Default 4096.
    pub fn event_capacity(mut self, capacity: usize) -> Self {
        self.event_capacity = Some(capacity);
        self
    }

    /// Submit events without waking the reader (`BPF_RB_NO_WAKEUP`); it polls every 50 ms
    /// instead. Cheaper per event under a flood of audit events (see docs/benchmarks.md),
    /// at the price of up to 50 ms more before a denied connection is reset.
    pub fn batch_event_wakeups(mut self) -> Self {
        self.batch_wakeups = true;
        self
    }

    /// Leave denied connections to time out instead of resetting them with
    /// `SOCK_DESTROY` (on by default: a denied client sees a reset within milliseconds).
    pub fn allow_hanging_denied_connections(mut self) -> Self {
        self.destroy_denied = Some(false);
        self
    }

    /// Loads the program, fills the maps, attaches it.
    ///
    /// # Errors
    ///
    /// [`FilterError::PermissionDenied`] without `CAP_BPF`/`CAP_NET_ADMIN`,
    /// [`FilterError::InterfaceNotFound`], [`FilterError::KernelFeature`] when the kernel
    /// lacks bpffs, TCX or a map type, [`FilterError::Kernel`] for other refusals (the
    /// verifier's log is included).
    pub fn build(self) -> Result<L7Filter, FilterError> {
        let rules = match self.rules {
            Some(r) => r,
            None => RuleSet::from_yaml("default: deny\nrules: []\n")?,
        };
        let ifindex = match &self.interface {
            Some(name) => Some(interface_index(name)?),
            None => None,
        };
        let (pin_dir, keep_pins) = match self.pin_dir {
            Some(dir) => (dir, true),
            None => (private_pin_dir()?, false),
        };
        ensure_bpffs(&pin_dir)?;
        let mut ebpf = load_object(PROGRAM_OBJECT, &pin_dir)?;
        let maps = Maps::take(&mut ebpf)?;
        let destroyer = if self.destroy_denied.unwrap_or(true) {
            Some(SocketDestroyer::open().map_err(|e| kernel_error("netlink SOCK_DIAG socket", e))?)
        } else {
            None
        };
        let mut filter = L7Filter {
            ebpf,
            link: None,
            maps: Arc::new(Mutex::new(maps)),
            interface: self.interface,
            pin_dir,
            keep_pins,
            ports: self.ports,
            generation: 0,
            batch_wakeups: self.batch_wakeups,
            installed: Vec::new(),
            events: None,
            shared: Arc::new(Shared::default()),
            reader: None,
        };
        filter.set_rules(&rules)?;
        filter.start_reader(destroyer, self.event_capacity.unwrap_or(4096))?;
        if let (Some(name), Some(_)) = (filter.interface.clone(), ifindex) {
            let program = program_mut(&mut filter.ebpf)?;
            let id = program
                .attach(&name, TcAttachType::Ingress)
                .map_err(|e| program_error("attach", e))?;
            filter.link = Some(
                program
                    .take_link(id)
                    .map_err(|e| program_error("attach", e))?,
            );
        }
        Ok(filter)
    }
}

/// The maps the filter writes and reads (taken out of the loaded object, shared across
/// program replacements through their pins).
struct Maps {
    config: Array<MapData, [u8; CONFIG_SIZE]>,
    rules: LpmTrie<MapData, [u8; RULE_KEY_DATA], [u8; 8]>,
    rule_hits: PerCpuArray<MapData, u64>,
    stats: PerCpuArray<MapData, u64>,
    events: Option<RingBuf<MapData>>,
}

impl Maps {
    fn take(ebpf: &mut Ebpf) -> Result<Maps, FilterError> {
        let mut take = |name: &str| {
            ebpf.take_map(name)
                .ok_or_else(|| FilterError::Kernel(format!("the object has no map {name}")))
        };
        let map_err = |e: aya::maps::MapError| FilterError::Kernel(e.to_string());
        Ok(Maps {
            config: Array::try_from(take("config")?).map_err(map_err)?,
            rules: LpmTrie::try_from(take("rules")?).map_err(map_err)?,
            rule_hits: PerCpuArray::try_from(take("rule_hits")?).map_err(map_err)?,
            stats: PerCpuArray::try_from(take("stats")?).map_err(map_err)?,
            events: Some(RingBuf::try_from(take("events")?).map_err(map_err)?),
        })
    }
}

#[derive(Debug, Default)]
struct Shared {
    stop: AtomicBool,
    dropped: AtomicU64,
    destroyed: AtomicU64,
    destroy_failed: AtomicU64,
}

/// The kernel filter, attached (or only loaded); detached when dropped.
pub struct L7Filter {
    // Field order matters on drop: the link detaches before the program is unloaded.
    link: Option<SchedClassifierLink>,
    ebpf: Ebpf,
    maps: Arc<Mutex<Maps>>,
    interface: Option<String>,
    pin_dir: PathBuf,
    keep_pins: bool,
    ports: Vec<u16>,
    generation: u8,
    batch_wakeups: bool,
    installed: Vec<RuleEntry>,
    events: Option<tokio::sync::mpsc::Receiver<KernelEvent>>,
    shared: Arc<Shared>,
    reader: Option<JoinHandle<()>>,
}

impl fmt::Debug for L7Filter {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        f.debug_struct("L7Filter")
            .field("interface", &self.interface)
            .field("ports", &self.ports)
            .field("pin_dir", &self.pin_dir)
            .field("generation", &self.generation)
            .finish_non_exhaustive()
    }
}

impl L7Filter {
    /// Starts a builder.
    pub fn builder() -> L7FilterBuilder {
        L7FilterBuilder::default()
    }

    /// The interface the filter is attached to.
    pub fn interface(&self) -> Option<&str> {
        self.interface.as_deref()
    }

    /// Replaces the rule set in force, atomically for packets (one config update flips
    /// from the old keys to the new ones).
    ///
    /// # Errors
    ///
    /// [`FilterError::Kernel`] when a map update fails (the old rules stay in force).
    pub fn set_rules(&mut self, rules: &RuleSet) -> Result<(), FilterError> {
        let next = self.generation ^ 1;
        let entries = layout::rule_entries(rules, next);
        let mut maps = self.lock_maps();
        for entry in &entries {
            maps.rules
                .insert(&Key::new(entry.prefix_bits, entry.data), entry.value(), 0)
                .map_err(|e| FilterError::Kernel(format!("writing rule {}: {e}", entry.rule_id)))?;
        }
        let flags = if self.batch_wakeups {
            layout::CFG_NO_WAKEUP
        } else {
            0
        };
        let config = layout::config_value(rules, next, &self.ports, flags);
        maps.config
            .set(0, config, 0)
            .map_err(|e| FilterError::Kernel(format!("writing the config: {e}")))?;
        for old in &self.installed {
            let _ = maps.rules.remove(&Key::new(old.prefix_bits, old.data));
        }
        drop(maps);
        self.installed = entries;
        self.generation = next;
        Ok(())
    }

    /// Changes the filtered ports (the rule set stays).
    ///
    /// # Errors
    ///
    /// [`FilterError::Kernel`] when the config update fails.
    pub fn set_ports(
        &mut self,
        rules: &RuleSet,
        ports: impl IntoIterator<Item = u16>,
    ) -> Result<(), FilterError> {
        self.ports = ports.into_iter().collect();
        self.set_rules(rules)
    }

    /// The audit events (deny, audit, refusals), once; `None` on later calls.
    pub fn events(&mut self) -> Option<KernelEvents> {
        self.events.take().map(|rx| KernelEvents { rx })
    }

    /// The kernel's counters, summed over CPUs, and the loader's.
    ///
    /// # Errors
    ///
    /// [`FilterError::Kernel`] when a map cannot be read.
    pub fn counters(&self) -> Result<Counters, FilterError> {
        let maps = self.lock_maps();
        let stat = |i: u32| -> Result<u64, FilterError> {
            let v = maps
                .stats
                .get(&i, 0)
                .map_err(|e| FilterError::Kernel(format!("reading stats: {e}")))?;
            Ok(v.iter().sum())
        };
        Ok(Counters {
            segments: stat(0)?,
            requests: stat(1)?,
            allowed: stat(2)?,
            denied: stat(3)?,
            audited: stat(4)?,
            refused: stat(5)?,
            flow_drops: stat(6)?,
            events_lost: stat(7)?,
            events_dropped: self.shared.dropped.load(Ordering::Relaxed),
            sockets_destroyed: self.shared.destroyed.load(Ordering::Relaxed),
            destroy_failures: self.shared.destroy_failed.load(Ordering::Relaxed),
        })
    }

    /// Hits per kernel rule id (index 0: the default verdict; index i: the rule at
    /// position i in the file).
    ///
    /// # Errors
    ///
    /// [`FilterError::Kernel`] when the map cannot be read.
    pub fn rule_hits(&self, rules: &RuleSet) -> Result<Vec<u64>, FilterError> {
        let maps = self.lock_maps();
        (0..=rules.rules().len())
            .map(|i| {
                let i = u32::try_from(i).unwrap_or(u32::MAX);
                maps.rule_hits
                    .get(&i, 0)
                    .map(|v| v.iter().sum())
                    .map_err(|e| FilterError::Kernel(format!("reading rule hits: {e}")))
            })
            .collect()
    }

    /// Loads the program again (this crate's object) against the same maps and swaps it
    /// into the attachment atomically: every packet meets either the old or the new
    /// program.
    ///
    /// # Errors
    ///
    /// Those of loading ([`L7FilterBuilder::build`]); the old program stays attached.
    pub fn replace_program(&mut self) -> Result<(), FilterError> {
        self.replace_program_with(PROGRAM_OBJECT)
    }

    /// [`L7Filter::replace_program`] with another build of `bpf/l7_filter.c` (same maps).
    ///
    /// # Errors
    ///
    /// Those of loading; the old program stays attached.
    pub fn replace_program_with(&mut self, object: &[u8]) -> Result<(), FilterError> {
        let mut ebpf = load_object(object, &self.pin_dir)?;
        if let Some(link) = self.link.take() {
            let program = program_mut(&mut ebpf)?;
            match program.attach_to_link(link) {
                Ok(id) => {
                    self.link = Some(
                        program
                            .take_link(id)
                            .map_err(|e| program_error("replace", e))?,
                    );
                }
                Err(e) => return Err(program_error("replace", e)),
            }
        }
        self.ebpf = ebpf;
        Ok(())
    }

    /// Runs the program once per `repeat` on `packet` (an Ethernet frame) with
    /// `BPF_PROG_TEST_RUN`; the maps are the live ones (flow state, counters, events).
    ///
    /// # Errors
    ///
    /// [`FilterError::Kernel`] when the kernel refuses the run.
    pub fn test_run(&self, packet: &[u8], repeat: u32) -> Result<TestRunOutcome, FilterError> {
        let program: &SchedClassifier = self
            .ebpf
            .program(PROGRAM_NAME)
            .ok_or_else(|| FilterError::Kernel("no program l7_filter".into()))?
            .try_into()
            .map_err(|e| program_error("test run", e))?;
        let result = program
            .test_run(TestRunOptions {
                data_in: Some(packet),
                repeat: repeat.max(1),
                ..Default::default()
            })
            .map_err(|e| program_error("test run", e))?;
        Ok(TestRunOutcome {
            passed: result.return_value != 2,
            duration: result.duration,
        })
    }

    fn lock_maps(&self) -> std::sync::MutexGuard<'_, Maps> {
        self.maps.lock().unwrap_or_else(|p| p.into_inner())
    }

    fn start_reader(
        &mut self,
        mut destroyer: Option<SocketDestroyer>,
        capacity: usize,
    ) -> Result<(), FilterError> {
        let mut ring = self
            .lock_maps()
            .events
            .take()
            .ok_or_else(|| FilterError::Kernel("events map already taken".into()))?;
        let (tx, rx) = tokio::sync::mpsc::channel(capacity.max(1));
        self.events = Some(rx);
        let shared = Arc::clone(&self.shared);
        let clock = MonotonicClock::now();
        let reader = std::thread::Builder::new()
            .name("l7-filter-events".into())
            .spawn(move || {
                use rustix::event::{PollFd, PollFlags, Timespec, poll};
                let timeout = Timespec {
                    tv_sec: 0,
                    tv_nsec: 50_000_000,
                };
                while !shared.stop.load(Ordering::Relaxed) {
                    let mut fds = [PollFd::new(&ring, PollFlags::IN)];
                    let _ = poll(&mut fds, Some(&timeout));
                    while let Some(item) = ring.next() {
                        let Some(raw) = layout::parse_event(&item) else {
                            continue;
                        };
                        drop(item);
                        let event = KernelEvent::from_raw(raw, &clock);
                        if let (Verdict::Deny, Some(d)) = (event.verdict, destroyer.as_mut()) {
                            let local = (event.destination, event.destination_port);
                            let remote = (event.source, event.source_port);
                            match d.destroy(local, remote) {
                                Ok(()) => &shared.destroyed,
                                Err(_) => &shared.destroy_failed,
                            }
                            .fetch_add(1, Ordering::Relaxed);
                        }
                        if tx.try_send(event).is_err() {
                            shared.dropped.fetch_add(1, Ordering::Relaxed);
                        }
                    }
                }
            })
            .map_err(|e| kernel_error("starting the event thread", e))?;
        self.reader = Some(reader);
        Ok(())
    }
}

impl Drop for L7Filter {
    fn drop(&mut self) {
        drop(self.link.take());
        self.shared.stop.store(true, Ordering::Relaxed);
        if let Some(reader) = self.reader.take() {
            let _ = reader.join();
        }
        if !self.keep_pins {
            for name in MAP_NAMES {
                let _ = std::fs::remove_file(self.pin_dir.join(name));
            }
            let _ = std::fs::remove_dir(&self.pin_dir);
        }
    }
}

/// The result of [`L7Filter::test_run`].
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub struct TestRunOutcome {
    /// Whether the program let the packet through (anything but `TC_ACT_SHOT`).
    pub passed: bool,
    /// The kernel's average time per run.
    pub duration: Duration,
}

/// Counters of the kernel program (summed over CPUs) and of the event reader.
#[derive(Debug, Clone, Copy, Default, PartialEq, Eq)]
#[non_exhaustive]
pub struct Counters {
    /// Segments with payload to a filtered port.
    pub segments: u64,
    /// Of which request starts.
    pub requests: u64,
    /// Requests allowed (including non-strict refusals whose floor was allow).
    pub allowed: u64,
    /// Requests denied.
    pub denied: u64,
    /// Requests let through and reported.
    pub audited: u64,
    /// split / overlong / non-canonical outcomes.
    pub refused: u64,
    /// Segments dropped because their connection was denied before.
    pub flow_drops: u64,
    /// Events the kernel could not write: the ring buffer was full.
    pub events_lost: u64,
    /// Events read but dropped: nobody consumed [`L7Filter::events`] fast enough.
    pub events_dropped: u64,
    /// Denied connections reset with `SOCK_DESTROY`.
    pub sockets_destroyed: u64,
    /// `SOCK_DESTROY` attempts that failed (the socket was gone already, or no privilege).
    pub destroy_failures: u64,
}

/// One event of the kernel program.
#[derive(Debug, Clone, PartialEq, Eq)]
#[non_exhaustive]
pub struct KernelEvent {
    /// When the kernel saw the segment.
    pub time: SystemTime,
    /// The client's address.
    pub source: IpAddr,
    /// The client's port.
    pub source_port: u16,
    /// The server's address.
    pub destination: IpAddr,
    /// The server's port.
    pub destination_port: u16,
    /// The method, when it is one of the nine known.
    pub method: Option<Method>,
    /// The method's text as sent (at most 16 bytes).
    pub method_text: Vec<u8>,
    /// The path (at most the first 64 bytes).
    pub path: Vec<u8>,
    /// The path's length as seen, which may exceed `path.len()`.
    pub path_len: usize,
    /// Allow (a non-strict refusal), deny or audit.
    pub verdict: Verdict,
    /// Why.
    pub reason: Reason,
    /// The rule's 1-based position in the file, 0 for the default or a refusal.
    pub rule_id: u32,
}

impl KernelEvent {
    fn from_raw(raw: layout::RawEvent, clock: &MonotonicClock) -> KernelEvent {
        let verdict = match raw.verdict {
            0 => Verdict::Allow,
            2 => Verdict::Audit,
            _ => Verdict::Deny,
        };
        let reason = match raw.reason {
            0 => Reason::Rule,
            1 => Reason::Default,
            2 => Reason::Split,
            3 => Reason::Overlong,
            4 => Reason::NonCanonical,
            _ => Reason::FlowDenied,
        };
        let method = Method::ALL.into_iter().find(|m| m.id() == raw.method);
        KernelEvent {
            time: clock.to_system_time(raw.time_ns),
            source: raw.source,
            source_port: raw.source_port,
            destination: raw.destination,
            destination_port: raw.destination_port,
            method,
            method_text: raw.method_text,
            path: raw.path,
            path_len: usize::from(raw.path_len),
            verdict,
            reason,
            rule_id: raw.rule_id,
        }
    }
}

impl fmt::Display for KernelEvent {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        let method = match self.method {
            Some(m) => m.as_str().to_owned(),
            None => String::from_utf8_lossy(&self.method_text).into_owned(),
        };
        write!(
            f,
            "{} {}:{} -> {}:{} {} {}{} rule={} reason={}",
            self.verdict,
            self.source,
            self.source_port,
            self.destination,
            self.destination_port,
            method,
            String::from_utf8_lossy(&self.path).escape_debug(),
            if self.path_len > self.path.len() {
                "…"
            } else {
                ""
            },
            self.rule_id,
            self.reason
        )
    }
}

/// The stream of [`KernelEvent`]s (a `futures` `Stream`).
#[derive(Debug)]
pub struct KernelEvents {
    rx: tokio::sync::mpsc::Receiver<KernelEvent>,
}

impl futures_util::Stream for KernelEvents {
    type Item = KernelEvent;

    fn poll_next(mut self: Pin<&mut Self>, cx: &mut Context<'_>) -> Poll<Option<KernelEvent>> {
        self.rx.poll_recv(cx)
    }
}

/// CLOCK_MONOTONIC (what `bpf_ktime_get_ns` reads) to wall-clock time.
struct MonotonicClock {
    wall: SystemTime,
    mono_ns: u64,
}

impl MonotonicClock {
    fn now() -> MonotonicClock {
        let t = rustix::time::clock_gettime(rustix::time::ClockId::Monotonic);
        let mono_ns = u64::try_from(t.tv_sec)
            .unwrap_or(0)
            .saturating_mul(1_000_000_000)
            .saturating_add(u64::try_from(t.tv_nsec).unwrap_or(0));
        MonotonicClock {
            wall: SystemTime::now(),
            mono_ns,
        }
    }

    fn to_system_time(&self, ns: u64) -> SystemTime {
        if ns >= self.mono_ns {
            self.wall + Duration::from_nanos(ns - self.mono_ns)
        } else {
            self.wall - Duration::from_nanos(self.mono_ns - ns)
        }
    }
}

fn program_mut(ebpf: &mut Ebpf) -> Result<&mut SchedClassifier, FilterError> {
    ebpf.program_mut(PROGRAM_NAME)
        .ok_or_else(|| FilterError::Kernel("the object has no program l7_filter".into()))?
        .try_into()
        .map_err(|e| program_error("load", e))
}

fn load_object(object: &[u8], pin_dir: &Path) -> Result<Ebpf, FilterError> {
    let paths: HashMap<&str, PathBuf> = MAP_NAMES
        .iter()
        .map(|name| (*name, pin_dir.join(name)))
        .collect();
    let mut loader = EbpfLoader::new();
    for (name, path) in &paths {
        loader.map_pin_path(name, path.as_path());
    }
    let mut ebpf = loader.load(object).map_err(|e| {
        let io = find_io_error(&e);
        match io.and_then(io::Error::raw_os_error) {
            Some(libc_eperm) if libc_eperm == 1 || libc_eperm == 13 => {
                FilterError::PermissionDenied(format!("loading the eBPF object: {e}"))
            }
            _ => FilterError::Kernel(format!("loading the eBPF object: {e}")),
        }
    })?;
    program_mut(&mut ebpf)?
        .load()
        .map_err(|e| program_error("load", e))?;
    Ok(ebpf)
}

fn find_io_error<'a>(e: &'a (dyn std::error::Error + 'static)) -> Option<&'a io::Error> {
    let mut current: Option<&(dyn std::error::Error + 'static)> = Some(e);
    while let Some(err) = current {
        if let Some(io) = err.downcast_ref::<io::Error>() {
            return Some(io);
        }
        current = err.source();
    }
    None
}

fn program_error(what: &str, e: aya::programs::ProgramError) -> FilterError {
    let os = find_io_error(&e).and_then(io::Error::raw_os_error);
    let mut text = format!("{what}: {e}");
    if let aya::programs::ProgramError::LoadError { verifier_log, .. } = &e {
        text.push_str(&format!("\nverifier log:\n{verifier_log}"));
    }
    match os {
        Some(1 | 13) => FilterError::PermissionDenied(text),
        Some(22 | 95) if what == "attach" => FilterError::KernelFeature(text),
        _ => FilterError::Kernel(text),
    }
}

fn kernel_error(what: &str, e: io::Error) -> FilterError {
    match e.raw_os_error() {
        Some(1 | 13) => FilterError::PermissionDenied(format!("{what}: {e}")),
        _ => FilterError::Kernel(format!("{what}: {e}")),
    }
}

fn interface_index(name: &str) -> Result<u32, FilterError> {
    let socket = rustix::net::socket(
        rustix::net::AddressFamily::INET,
        rustix::net::SocketType::DGRAM,
        None,
    )
    .map_err(|e| kernel_error("socket for the interface lookup", e.into()))?;
    rustix::net::netdevice::name_to_index(&socket, name)
        .map_err(|_| FilterError::InterfaceNotFound(name.to_owned()))
}

fn private_pin_dir() -> Result<PathBuf, FilterError> {
    static NEXT: AtomicU64 = AtomicU64::new(0);
    let n = NEXT.fetch_add(1, Ordering::Relaxed);
    Ok(Path::new(BPF_FS)
        .join("ztkit-l7")
        .join(format!("{}-{n}", std::process::id())))
}

fn ensure_bpffs(dir: &Path) -> Result<(), FilterError> {
    let root = Path::new(BPF_FS);
    let is_bpffs = || {
        rustix::fs::statfs(root)
            .map(|s| s.f_type == BPF_FS_MAGIC)
            .unwrap_or(false)
    };
    if dir.starts_with(root) && !is_bpffs() {
        // Not mounted here (e.g. under `ip netns exec`, which remounts /sys): mount it, as
        // systemd does at boot.
        let mounted =
            rustix::mount::mount("bpf", root, "bpf", rustix::mount::MountFlags::empty(), None);
        if mounted.is_err() || !is_bpffs() {
            return Err(FilterError::KernelFeature(format!(
                "no bpffs at {BPF_FS} and mounting one failed (mount -t bpf bpf {BPF_FS})"
            )));
        }
    }
    std::fs::create_dir_all(dir)
        .map_err(|e| kernel_error(&format!("creating {}", dir.display()), e))
}
