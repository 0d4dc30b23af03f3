//! Rate limits and quotas: what one session, one client IP and this node may do per second, so a flood from
//! one client is refused (`rate_limited`, with when to retry) while everyone else is served.
//!
//! Each limit is a GCRA limiter from `governor` whose burst is one second's worth: per session (upstream frames
//! and bytes), per client IP (new sessions), and one for the node (channels created, checked by the store, which
//! alone knows when a channel is new). A refusal is counted ([`Limits::refusals`]) and logged only in a summary
//! line, at most every [`REPORT_EVERY`]. The keyed limiters forget every key that has been idle long enough to
//! be full again; that housekeeping runs on the calls themselves (at most every [`REPORT_EVERY`]), so no task is
//! needed, `Limits::new` works outside a runtime, and the keys kept are only those used in the last seconds.

use std::fmt;
use std::net::{IpAddr, SocketAddr};
use std::num::NonZeroU32;
use std::sync::atomic::{AtomicU64, Ordering};
use std::sync::{Arc, Mutex};
use std::time::Duration;

use governor::clock::{Clock, DefaultClock, Reference};
use governor::middleware::NoOpMiddleware;
use governor::state::keyed::DashMapStateStore;
use governor::state::{InMemoryState, NotKeyed};
use governor::{NotUntil, Quota, RateLimiter};

use crate::model::SessionId;

/// How often keyed limiters are pruned and refusals are summed up in the log (when they moved).
pub const REPORT_EVERY: Duration = Duration::from_secs(10);

/// The limits, per second unless said otherwise; 0 turns a limit off.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct LimitSettings {
    /// Upstream frames one session may send per second (burst: the same number).
    pub frames_per_second: u32,
    /// Upstream bytes one session may send per second.
    pub bytes_per_second: u32,
    /// New sessions one client IP may create per second.
    pub sessions_per_ip_per_second: u32,
    /// Channels this node may create per second (a subscribe or publish to a channel with no log yet).
    pub channels_per_second: u32,
    /// Channels the sessions of one client IP may make this node create per second, so that one address
    /// cannot spend the node's whole `channels_per_second`.
    pub channels_per_ip_per_second: u32,
    /// TCP connections one client address may hold open at once (idle keep-alive ones included); a trusted
    /// proxy's are not capped.
    pub connections_per_ip: u32,
    /// Proxies whose `X-Forwarded-For` names the client (addresses or ranges); from anyone else it is ignored.
    pub trusted_proxies: Vec<ProxyRange>,
    /// The embedded store's most channels.
    pub max_channels: usize,
    /// The embedded store's most bytes of message data.
    pub max_bytes: usize,
}

impl Default for LimitSettings {
    fn default() -> Self {
        LimitSettings {
            frames_per_second: 100,
            bytes_per_second: 1 << 20,
            sessions_per_ip_per_second: 20,
            channels_per_second: 1000,
            channels_per_ip_per_second: 20,
            connections_per_ip: 1000,
            trusted_proxies: Vec::new(),
            max_channels: 100_000,
            max_bytes: 256 << 20,
        }
    }
}

impl LimitSettings {
    /// Every limit off: what a store built without settings (`MemoryStore::new`) runs with.
    pub fn off() -> Self {
        LimitSettings {
            frames_per_second: 0,
            bytes_per_second: 0,
            sessions_per_ip_per_second: 0,
            channels_per_second: 0,
            channels_per_ip_per_second: 0,
            connections_per_ip: 0,
            trusted_proxies: Vec::new(),
            max_channels: 0,
            max_bytes: 0,
        }
    }
}

/// A trusted proxy: one address (`10.0.0.7`) or a range of them (`10.0.0.0/8`, `fd00::/8`), as a Kubernetes
/// ingress controller's pods come and go within the pod network.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub struct ProxyRange(ipnet::IpNet);

impl ProxyRange {
    pub fn contains(&self, ip: IpAddr) -> bool {
        // ipnet compares against the range's network and broadcast, so host bits written in it do not matter.
        self.0.contains(&ip.to_canonical())
    }
}

impl From<IpAddr> for ProxyRange {
    fn from(ip: IpAddr) -> Self {
        ProxyRange(ipnet::IpNet::from(ip.to_canonical()))
    }
}

impl std::str::FromStr for ProxyRange {
    type Err = String;

    fn from_str(text: &str) -> Result<Self, String> {
        let text = text.trim();
        match text.parse::<IpAddr>() {
            Ok(ip) => Ok(ip.into()),
            Err(_) => text
                .parse::<ipnet::IpNet>()
                .map(ProxyRange)
                .map_err(|_| format!("`{text}` is neither an address nor a range like 10.0.0.0/8")),
        }
    }
}

impl<'de> serde::Deserialize<'de> for ProxyRange {
    fn deserialize<D: serde::Deserializer<'de>>(deserializer: D) -> Result<Self, D::Error> {
        String::deserialize(deserializer)?.parse().map_err(serde::de::Error::custom)
    }
}

/// Over a limit: retry after this long.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub struct RetryAfter(pub Duration);

/// Requests refused since the node started, per reason.
#[derive(Debug, Clone, Copy, Default, PartialEq, Eq)]
pub struct Refusals {
    /// Over a session's upstream frames per second.
    pub frames: u64,
    /// Over a session's upstream bytes per second.
    pub bytes: u64,
    /// Over a client IP's new sessions per second.
    pub sessions: u64,
    /// Over the node's channels created per second.
    pub channels: u64,
    /// A new channel while the embedded store holds `max_channels`.
    pub max_channels: u64,
    /// A TCP connection over the node's cap.
    pub connections: u64,
    /// A TCP connection over its client address's `connections_per_ip`.
    pub connections_per_ip: u64,
}

#[derive(Debug, Clone, Copy)]
enum Reason {
    Frames,
    Bytes,
    Sessions,
    Channels,
    MaxChannels,
    Connections,
    ConnectionsPerIp,
}

#[derive(Default)]
struct Counters([AtomicU64; 7]);

impl Counters {
    fn add(&self, reason: Reason) {
        self.0[reason as usize].fetch_add(1, Ordering::Relaxed);
    }

    fn get(&self) -> Refusals {
        let [frames, bytes, sessions, channels, max_channels, connections, connections_per_ip] =
            self.0.each_ref().map(|c| c.load(Ordering::Relaxed));
        Refusals { frames, bytes, sessions, channels, max_channels, connections, connections_per_ip }
    }
}

type Keyed<K, C> = RateLimiter<K, DashMapStateStore<K>, C, NoOpMiddleware<<C as Clock>::Instant>>;
type Direct<C> = RateLimiter<NotKeyed, InMemoryState, C, NoOpMiddleware<<C as Clock>::Instant>>;

struct Inner<C: Clock> {
    settings: LimitSettings,
    clock: C,
    started: C::Instant,
    frames: Option<Keyed<SessionId, C>>,
    bytes: Option<Keyed<SessionId, C>>,
    sessions: Option<Keyed<IpAddr, C>>,
    channels: Option<Direct<C>>,
    channels_per_ip: Option<Keyed<IpAddr, C>>,
    refused: Counters,
    /// When (ns after `started`) the next housekeeping is due.
    housekeeping_at: AtomicU64,
    /// The counts the last summary line told.
    reported: Mutex<Refusals>,
}

/// The node's limiters; clones share them (the gateway and the store hold the same).
pub struct Limits<C: Clock = DefaultClock>(Arc<Inner<C>>);

impl<C: Clock> Clone for Limits<C> {
    fn clone(&self) -> Self {
        Limits(self.0.clone())
    }
}

impl<C: Clock> fmt::Debug for Limits<C> {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        f.debug_struct("Limits").field("settings", &self.0.settings).finish_non_exhaustive()
    }
}

impl Limits {
    pub fn new(settings: &LimitSettings) -> Self {
        Limits::with_clock(settings, DefaultClock::default())
    }
}

impl<C: Clock + Clone> Limits<C> {
    /// The limiters on `clock` (a fake one in tests).
    pub fn with_clock(settings: &LimitSettings, clock: C) -> Self {
        let quota = |n: u32| NonZeroU32::new(n).map(Quota::per_second);
        let keyed = |n: u32| quota(n).map(|q| RateLimiter::dashmap_with_clock(q, clock.clone()));
        Limits(Arc::new(Inner {
            frames: keyed(settings.frames_per_second),
            bytes: keyed(settings.bytes_per_second),
            sessions: quota(settings.sessions_per_ip_per_second)
                .map(|q| RateLimiter::dashmap_with_clock(q, clock.clone())),
            channels: quota(settings.channels_per_second).map(|q| RateLimiter::direct_with_clock(q, clock.clone())),
            channels_per_ip: quota(settings.channels_per_ip_per_second)
                .map(|q| RateLimiter::dashmap_with_clock(q, clock.clone())),
            settings: settings.clone(),
            started: clock.now(),
            clock,
            refused: Counters::default(),
            housekeeping_at: AtomicU64::new(REPORT_EVERY.as_nanos() as u64),
            reported: Mutex::default(),
        }))
    }
}

impl<C: Clock> Limits<C> {
    pub fn settings(&self) -> &LimitSettings {
        &self.0.settings
    }

    /// The client's address: the peer's, or, when the peer is a trusted proxy, the right-most `X-Forwarded-For`
    /// entry that is not itself a trusted proxy.
    ///
    /// Right-most, because each proxy appends the address it was connected from: the entries a trusted proxy
    /// added are true, and everything to their left was sent by the client, who can write anything there. An
    /// entry that does not parse as an address ends the search (what lies left of it cannot be trusted either),
    /// and the peer is used, as it is when every entry is a trusted proxy. From an untrusted peer the header is
    /// ignored, so nobody picks their own rate-limit bucket.
    pub fn client_ip(&self, peer: Option<IpAddr>, forwarded_for: Option<&str>) -> Option<IpAddr> {
        let peer = peer.map(|ip| ip.to_canonical());
        let trusted = |ip: &IpAddr| self.is_trusted_proxy(*ip);
        let (Some(proxy), Some(header)) = (peer, forwarded_for) else { return peer };
        if !trusted(&proxy) {
            return peer;
        }
        for entry in header.rsplit(',') {
            match parse_forwarded(entry) {
                Some(ip) if trusted(&ip) => continue,
                Some(ip) => return Some(ip),
                None => break,
            }
        }
        peer
    }

    /// Whether `ip` is one of the trusted proxies.
    pub fn is_trusted_proxy(&self, ip: IpAddr) -> bool {
        let ip = ip.to_canonical();
        self.0.settings.trusted_proxies.iter().any(|p| p.contains(ip))
    }

    /// Counts a TCP connection refused over the node's cap, or (`per_ip`) over its address's.
    pub fn refused_connection(&self, per_ip: bool) {
        self.0.refused.add(if per_ip { Reason::ConnectionsPerIp } else { Reason::Connections });
        self.housekeeping();
    }

    /// A new session from `ip` (a client whose address is unknown is not limited: there is no bucket to put
    /// it in that would not also hold everyone else).
    pub fn new_session(&self, ip: Option<IpAddr>) -> Result<(), RetryAfter> {
        self.housekeeping();
        match (&self.0.sessions, ip) {
            (Some(limiter), Some(ip)) => self.take(limiter.check_key(&ip), Reason::Sessions),
            _ => Ok(()),
        }
    }

    /// `frames` upstream frames of `bytes` in all from `session`. More than a second's worth at once costs a
    /// whole second (it is never refused outright: the frame size limit is another setting's job).
    pub fn upstream(&self, session: &SessionId, frames: u32, bytes: usize) -> Result<(), RetryAfter> {
        self.housekeeping();
        let settings = &self.0.settings;
        if let Some(limiter) = &self.0.frames {
            self.take_n(limiter, session, frames, settings.frames_per_second, Reason::Frames)?;
        }
        if let Some(limiter) = &self.0.bytes {
            let bytes = u32::try_from(bytes).unwrap_or(u32::MAX);
            self.take_n(limiter, session, bytes, settings.bytes_per_second, Reason::Bytes)?;
        }
        Ok(())
    }

    /// A channel is about to be created on this node for a client at `ip`: within its IP's share first, then
    /// within the node's.
    pub fn new_channel(&self, ip: Option<IpAddr>) -> Result<(), RetryAfter> {
        self.housekeeping();
        if let (Some(limiter), Some(ip)) = (&self.0.channels_per_ip, ip) {
            self.take(limiter.check_key(&ip), Reason::Channels)?;
        }
        match &self.0.channels {
            Some(limiter) => self.take(limiter.check(), Reason::Channels),
            None => Ok(()),
        }
    }

    /// Whether channels created per second are limited at all.
    pub fn limits_channels(&self) -> bool {
        self.0.channels.is_some() || self.0.channels_per_ip.is_some()
    }

    /// Counts a channel refused because the embedded store holds `max_channels`.
    pub fn refused_full(&self) {
        self.0.refused.add(Reason::MaxChannels);
        self.housekeeping();
    }

    /// The requests refused since the node started, per reason.
    pub fn refusals(&self) -> Refusals {
        self.0.refused.get()
    }

    fn take(&self, decision: Result<(), NotUntil<C::Instant>>, reason: Reason) -> Result<(), RetryAfter> {
        decision.map_err(|not_until| {
            self.0.refused.add(reason);
            RetryAfter(not_until.wait_time_from(self.0.clock.now()))
        })
    }

    /// Takes `n` cells, at most the burst (`per_second`), which `check_key_n` would refuse forever.
    fn take_n(
        &self,
        limiter: &Keyed<SessionId, C>,
        key: &SessionId,
        n: u32,
        per_second: u32,
        reason: Reason,
    ) -> Result<(), RetryAfter> {
        let Some(n) = NonZeroU32::new(n.min(per_second)) else { return Ok(()) };
        match limiter.check_key_n(key, n) {
            Ok(decision) => self.take(decision, reason),
            Err(_) => Ok(()),
        }
    }

    /// Every [`REPORT_EVERY`]: forget idle keys, and log a summary of refusals when they moved.
    fn housekeeping(&self) {
        let now = self.0.clock.now().duration_since(self.0.started).as_u64();
        let due = self.0.housekeeping_at.load(Ordering::Relaxed);
        let next = now + REPORT_EVERY.as_nanos() as u64;
        if now < due
            || self.0.housekeeping_at.compare_exchange(due, next, Ordering::Relaxed, Ordering::Relaxed).is_err()
        {
            return;
        }
        for limiter in [&self.0.frames, &self.0.bytes].into_iter().flatten() {
            limiter.retain_recent();
            limiter.shrink_to_fit();
        }
        for limiter in [&self.0.sessions, &self.0.channels_per_ip].into_iter().flatten() {
            limiter.retain_recent();
            limiter.shrink_to_fit();
        }
        let counts = self.refusals();
        let mut reported = self.0.reported.lock().unwrap_or_else(|e| e.into_inner());
        if counts != *reported {
            tracing::warn!(
                frames = counts.frames - reported.frames,
                bytes = counts.bytes - reported.bytes,
                sessions = counts.sessions - reported.sessions,
                channels = counts.channels - reported.channels,
                max_channels = counts.max_channels - reported.max_channels,
                connections = counts.connections - reported.connections,
                connections_per_ip = counts.connections_per_ip - reported.connections_per_ip,
                "requests refused over rate limits and quotas since the last report"
            );
            *reported = counts;
        }
    }

    /// How many keys the keyed limiters hold now (frames, bytes, sessions).
    #[cfg(test)]
    fn keys(&self) -> (usize, usize, usize) {
        let len = |l: &Option<Keyed<SessionId, C>>| l.as_ref().map_or(0, |l| l.len());
        (len(&self.0.frames), len(&self.0.bytes), self.0.sessions.as_ref().map_or(0, |l| l.len()))
    }
}

/// One `X-Forwarded-For` entry: an address, possibly with a port (`203.0.113.7:4711`, `[2001:db8::1]:443`).
fn parse_forwarded(entry: &str) -> Option<IpAddr> {
    let entry = entry.trim();
    let ip = entry.parse::<IpAddr>().or_else(|_| entry.parse::<SocketAddr>().map(|s| s.ip())).ok()?;
    Some(ip.to_canonical())
}

#[cfg(test)]
mod tests {
    use governor::clock::FakeRelativeClock;

    use super::*;

    fn ip(text: &str) -> IpAddr {
        text.parse().unwrap()
    }

    fn behind(proxies: &[&str]) -> Limits {
        let trusted_proxies = proxies.iter().map(|p| p.parse().unwrap()).collect();
        Limits::new(&LimitSettings { trusted_proxies, ..Default::default() })
    }

    #[test]
    fn client_ip_takes_the_right_most_untrusted_forwarded_entry_from_a_trusted_proxy() {
        let limits = behind(&["10.0.0.1", "10.0.0.2"]);
        let proxy = Some(ip("10.0.0.1"));
        let cases: &[(&str, Option<IpAddr>, Option<&str>, &str)] = &[
            ("no header", proxy, None, "10.0.0.1"),
            ("one hop", proxy, Some("203.0.113.7"), "203.0.113.7"),
            ("a forged entry left of the real one", proxy, Some("1.1.1.1, 203.0.113.7"), "203.0.113.7"),
            ("trusted hops are skipped", proxy, Some("203.0.113.7, 10.0.0.2"), "203.0.113.7"),
            ("ports are dropped", proxy, Some("203.0.113.7:4711"), "203.0.113.7"),
            ("IPv6 with a port", proxy, Some("[2001:db8::1]:443"), "2001:db8::1"),
            ("IPv4-mapped IPv6", proxy, Some("::ffff:203.0.113.7"), "203.0.113.7"),
            ("garbage left of the real entry", proxy, Some("unknown, 203.0.113.7"), "203.0.113.7"),
            ("garbage where the proxy wrote", proxy, Some("203.0.113.7, unknown"), "10.0.0.1"),
            ("only garbage", proxy, Some(" ,;;, "), "10.0.0.1"),
            ("only trusted hops", proxy, Some("10.0.0.2"), "10.0.0.1"),
            ("a spoofed header from an untrusted peer", Some(ip("198.51.100.9")), Some("10.0.0.1"), "198.51.100.9"),
            ("a mapped trusted peer", Some(ip("::ffff:10.0.0.1")), Some("203.0.113.7"), "203.0.113.7"),
        ];
        for (name, peer, header, expected) in cases {
            assert_eq!(limits.client_ip(*peer, *header), Some(ip(expected)), "{name}");
        }
        assert_eq!(limits.client_ip(None, Some("203.0.113.7")), None, "no peer, no address");
        let direct = behind(&[]);
        assert_eq!(direct.client_ip(Some(ip("127.0.0.1")), Some("203.0.113.7")), Some(ip("127.0.0.1")));
    }

    #[test]
    fn trusted_proxies_may_be_ranges() {
        let limits = behind(&["10.0.0.0/8", "fd00::/8", "192.0.2.7"]);
        let cases = [
            ("in the v4 range", "10.42.3.9", true),
            ("mapped into v6", "::ffff:10.1.1.1", true),
            ("in the v6 range", "fd12::5", true),
            ("one address", "192.0.2.7", true),
            ("outside", "11.0.0.1", false),
            ("next to the address", "192.0.2.8", false),
        ];
        for (name, peer, trusted) in cases {
            assert_eq!(limits.is_trusted_proxy(ip(peer)), trusted, "{name}");
        }
        assert_eq!(limits.client_ip(Some(ip("10.9.9.9")), Some("203.0.113.7")), Some(ip("203.0.113.7")));
        assert!("10.0.0.0/33".parse::<ProxyRange>().is_err() && "example.com".parse::<ProxyRange>().is_err());
    }

    fn fake(settings: LimitSettings) -> (Limits<FakeRelativeClock>, FakeRelativeClock) {
        let clock = FakeRelativeClock::default();
        (Limits::with_clock(&settings, clock.clone()), clock)
    }

    #[test]
    fn each_session_has_its_own_second_of_frames_and_bytes() {
        let settings = LimitSettings { frames_per_second: 10, bytes_per_second: 1000, ..Default::default() };
        let (limits, clock) = fake(settings);
        let (a, b) = (SessionId::random(), SessionId::random());
        for _ in 0..10 {
            assert_eq!(limits.upstream(&a, 1, 10), Ok(()));
        }
        let RetryAfter(wait) = limits.upstream(&a, 1, 10).unwrap_err();
        assert_eq!(wait, Duration::from_millis(100), "one frame's worth of a second");
        assert_eq!(limits.upstream(&b, 1, 10), Ok(()), "another session is not touched");
        clock.advance(Duration::from_millis(100));
        assert_eq!(limits.upstream(&a, 1, 10), Ok(()));
        // Bytes: a frame over the whole second's budget costs the second, and is not refused forever.
        assert_eq!(limits.upstream(&b, 1, 5000), Ok(()));
        assert!(limits.upstream(&b, 1, 100).is_err());
        clock.advance(Duration::from_secs(1));
        assert_eq!(limits.upstream(&b, 1, 100), Ok(()));
        assert_eq!(limits.refusals(), Refusals { frames: 1, bytes: 1, ..Default::default() });
    }

    #[test]
    fn each_ip_may_open_its_sessions_per_second_and_unknown_addresses_are_not_limited() {
        let (limits, _clock) = fake(LimitSettings { sessions_per_ip_per_second: 2, ..Default::default() });
        let (a, b) = (Some(ip("127.0.0.1")), Some(ip("127.0.0.2")));
        assert!(limits.new_session(a).is_ok() && limits.new_session(a).is_ok());
        assert_eq!(limits.new_session(a), Err(RetryAfter(Duration::from_millis(500))));
        assert!(limits.new_session(b).is_ok());
        assert!((0..10).all(|_| limits.new_session(None).is_ok()));
        assert_eq!(limits.refusals().sessions, 1);
    }

    #[test]
    fn one_ip_cannot_spend_the_nodes_channels_per_second() {
        let settings = LimitSettings { channels_per_second: 10, channels_per_ip_per_second: 3, ..Default::default() };
        let (limits, _clock) = fake(settings);
        let (greedy, other) = (Some(ip("10.0.0.1")), Some(ip("10.0.0.2")));
        assert!((0..3).all(|_| limits.new_channel(greedy).is_ok()));
        assert!((0..100).all(|_| limits.new_channel(greedy).is_err()), "the greedy IP is held to its share");
        assert!((0..3).all(|_| limits.new_channel(other).is_ok()), "and the node still creates for others");
    }

    #[test]
    fn the_node_creates_its_channels_per_second_and_zero_turns_a_limit_off() {
        let settings = LimitSettings { channels_per_second: 3, channels_per_ip_per_second: 0, ..Default::default() };
        let (limits, clock) = fake(settings);
        assert!((0..3).all(|_| limits.new_channel(None).is_ok()));
        assert!(limits.new_channel(None).is_err());
        clock.advance(Duration::from_secs(1));
        assert!(limits.new_channel(None).is_ok());
        let (off, _) = fake(LimitSettings::off());
        let id = SessionId::random();
        assert!((0..10_000)
            .all(|_| off.new_channel(Some(ip("127.0.0.1"))).is_ok() && off.upstream(&id, 100, 1 << 30).is_ok()));
        assert!((0..1000).all(|_| off.new_session(Some(ip("127.0.0.1"))).is_ok()));
        assert_eq!(off.refusals(), Refusals::default());
    }

    #[test]
    fn keyed_limiters_forget_idle_keys() {
        let (limits, clock) = fake(LimitSettings::default());
        for i in 0..1000u32 {
            limits.upstream(&SessionId::random(), 1, 100).unwrap();
            limits.new_session(Some(IpAddr::from(i.to_be_bytes()))).unwrap();
        }
        assert_eq!(limits.keys(), (1000, 1000, 1000));
        let busy = SessionId::random();
        clock.advance(REPORT_EVERY);
        limits.upstream(&busy, 100, 1 << 20).unwrap();
        assert_eq!(limits.keys(), (1, 1, 0), "only the session used within its last second is kept");
    }
}
