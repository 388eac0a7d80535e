//! The [`Resolver`] builder and the task that follows etcd.

use std::{
    collections::HashMap,
    fmt,
    sync::{Arc, Mutex, Weak},
    time::Duration,
};

use etcd::Members;
use etcd::{Decoded, Entry, Secured, decode_value, describe, diagnose, key_prefix, shorten};
use etcd_client::{Client, ConnectOptions, EventType, GetOptions, KeyValue, WatchOptions};
use tokio::time::{Instant, timeout};
use tracing::{Instrument, debug, info, warn};

use crate::{
    Backoff,
    mux::{Mux, Watch},
    resolution::{Feed, Health, Resolution, Shared},
};

#[cfg(test)]
pub(crate) type Hook =
    Arc<dyn Fn(i64) -> futures::future::BoxFuture<'static, ()> + Send + Sync + 'static>;

/// Builds a [`Resolution`] of one discovery prefix.
///
/// Defaults, all in one place:
///
/// | setting | default |
/// |---|---|
/// | [`backoff`](Self::backoff) | 100 ms, x2, max 5 s, jitter 0.2 ([`Backoff::default`]) |
/// | [`page_size`](Self::page_size) | 1000 keys per get |
/// | [`request_timeout`](Self::request_timeout) | 5 s per get / watch creation |
/// | [`connect`](Self::connect) options | HTTP/2 keep-alive every 10 s, 5 s timeout; connect timeout 2 s |
///
/// The prefix is `discovery/<env>/<service>` (a trailing `/` is ignored); the
/// resolver reads exactly the keys under `<prefix>/`, so `discovery/dev/game`
/// does not see `discovery/dev/gameplay/…`.
///
/// **One watch per prefix.** A resolver and its clones (and the resolvers of
/// other prefixes made from it with [`for_prefix`](Self::for_prefix)) share
/// their etcd client and their watches: every [`resolve`](Self::resolve) of a
/// prefix that is already followed subscribes to the same list + watch
/// instead of opening another, so a thousand balancers of one service cost
/// etcd one watcher. The first resolution's settings (backoff, page size,
/// timeouts) are the watch's. Dropping the last resolution of a prefix ends
/// its watch.
///
/// **One watch stream per client.** The watches of all those prefixes
/// travel on one gRPC watch stream (as with Go's clientv3), on one etcd
/// member: a thousand services cost etcd one stream, not a thousand. When
/// that member dies or loses its leader, every watch moves to another
/// member at once, each from the last revision it applied.
#[derive(Clone)]
pub struct Resolver {
    pub(crate) client: Client,
    /// `<prefix>/`.
    pub(crate) key_prefix: String,
    /// What TLS was configured with, to explain connection errors.
    pub(crate) secured: Secured,
    backoff: Backoff,
    page_size: i64,
    request_timeout: Duration,
    /// The members of our own client (`None` for a caller's client): a
    /// member coming back ends an outage's backoff at once.
    pub(crate) members: Option<Members>,
    /// The prefixes followed through this client: shared by clones.
    feeds: Arc<Mutex<HashMap<String, Weak<Feed>>>>,
    /// The one watch stream of this client, carrying every prefix's watch.
    mux: Mux,
    lag_limit: usize,
    #[cfg(test)]
    pub(crate) before_watch: Option<Hook>,
}

impl fmt::Debug for Resolver {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        f.debug_struct("Resolver")
            .field("key_prefix", &self.key_prefix)
            .field("backoff", &self.backoff)
            .field("page_size", &self.page_size)
            .field("request_timeout", &self.request_timeout)
            .finish_non_exhaustive()
    }
}

impl Resolver {
    /// A resolver of `prefix` reading through `client`.
    ///
    /// A client without HTTP/2 keep-alive notices a silently dead etcd only
    /// when the OS does; [`connect`](Self::connect) sets it up.
    pub fn new(client: Client, prefix: impl Into<String>) -> Self {
        let prefix = prefix.into();
        Self {
            mux: Mux::new(client.clone()),
            client,
            key_prefix: key_prefix(&prefix),
            secured: Secured::default(),
            backoff: Backoff::default(),
            page_size: 1000,
            request_timeout: Duration::from_secs(5),
            members: None,
            feeds: Arc::default(),
            lag_limit: crate::LAG_LIMIT,
            #[cfg(test)]
            before_watch: None,
        }
    }

    /// A resolver of another prefix on the same etcd client, sharing its
    /// watches (see the type's docs) and settings.
    ///
    /// ```no_run
    /// # async fn run() -> Result<(), etcdlb_resolver::ConnectError> {
    /// let game = etcdlb_resolver::Resolver::builder("discovery/dev/game").connect().await?;
    /// let chat = game.for_prefix("discovery/dev/chat");
    /// let (games, chats) = (game.resolve(), chat.resolve()); // one client, two watches
    /// # drop((games, chats)); Ok(()) }
    /// ```
    pub fn for_prefix(&self, prefix: impl Into<String>) -> Self {
        let mut other = self.clone();
        other.key_prefix = key_prefix(&prefix.into());
        other
    }

    /// How many prefixes this resolver's client follows now (each one
    /// list + watch, whatever the number of resolutions of it).
    pub fn watched_prefixes(&self) -> usize {
        self.feeds
            .lock()
            .unwrap_or_else(|e| e.into_inner())
            .values()
            .filter(|f| f.strong_count() > 0)
            .count()
    }

    /// A resolver of `prefix` with its own client to `endpoints` (URLs such
    /// as `http://127.0.0.1:2379`). With `options` `None` the client gets
    /// HTTP/2 keep-alive (10 s, timeout 5 s) and a 2 s connect timeout.
    ///
    /// Connecting is lazy: etcd need not be up yet. Fails only on arguments
    /// etcd-client rejects (no endpoint, an invalid URL).
    pub async fn connect<E: AsRef<str>>(
        endpoints: &[E],
        options: Option<ConnectOptions>,
        prefix: impl Into<String>,
    ) -> Result<Self, etcd_client::Error> {
        let options = options.unwrap_or_else(|| {
            ConnectOptions::new()
                .with_keep_alive(Duration::from_secs(10), Duration::from_secs(5))
                .with_connect_timeout(Duration::from_secs(2))
        });
        let connected =
            etcd::connect(endpoints, None, Some(options), Duration::from_secs(2)).await?;
        let mut resolver = Self::new(connected.client, prefix);
        resolver.members = Some(connected.members);
        Ok(resolver)
    }

    /// How long to wait between attempts to reach etcd again.
    pub fn backoff(mut self, backoff: Backoff) -> Self {
        self.backoff = backoff;
        self
    }

    /// How many changes a resolution that does not keep up may leave
    /// unread, beyond the size of the set, before they are dropped and it
    /// gets the whole current set as one `Reset` instead: what bounds the
    /// memory the shared log of changes holds for a stalled consumer (one
    /// log per prefix, whatever the number of resolutions). Default
    /// [`LAG_LIMIT`](crate::LAG_LIMIT) (4 096); at least 1.
    pub fn lag_limit(mut self, keys: usize) -> Self {
        self.lag_limit = keys.max(1);
        self
    }

    /// How many keys one get returns when listing (at least 1). All pages of
    /// one list are read at the same revision.
    pub fn page_size(mut self, keys: usize) -> Self {
        self.page_size = i64::try_from(keys.max(1)).unwrap_or(i64::MAX);
        self
    }

    /// Limit on each get and on creating the watch; an etcd that does not
    /// answer in time counts as down.
    pub fn request_timeout(mut self, limit: Duration) -> Self {
        self.request_timeout = limit;
        self
    }

    /// The keys this resolver reads start with this (`<prefix>/`).
    pub fn key_prefix(&self) -> &str {
        &self.key_prefix
    }

    /// A [`Resolution`] of the prefix: the current set, then every change.
    ///
    /// The first resolution of a prefix starts the task that follows it: it
    /// lists the prefix, then watches it from the next revision; on a watch
    /// error or a lost connection it re-opens the watch from the last
    /// revision it applied (on another member, retrying with a backoff), and
    /// on a watch canceled for compaction it lists again and emits only what
    /// differs; meanwhile the last known set stays as it was. Later
    /// resolutions of the same prefix
    /// from this resolver or its clones join that task (the whole current
    /// set first, then the changes, with no gap and no duplicate).
    ///
    /// # Panics
    /// Outside a Tokio runtime.
    pub fn resolve(self) -> Resolution {
        let feeds = self.feeds.clone();
        let mut feeds = feeds.lock().unwrap_or_else(|e| e.into_inner());
        if let Some(feed) = feeds.get(&self.key_prefix).and_then(Weak::upgrade) {
            debug!(prefix = %self.key_prefix, "joining the watch of the prefix");
            return Resolution::subscribe(feed);
        }
        feeds.retain(|_, f| f.strong_count() > 0);
        let prefix = self.key_prefix.clone();
        let shared = Arc::new(Shared::new(prefix.clone(), self.lag_limit));
        let span = tracing::info_span!("resolver", prefix = %self.key_prefix);
        let task = tokio::spawn(self.run(shared.clone()).instrument(span));
        let feed = Arc::new(Feed::new(shared, task.abort_handle()));
        feeds.insert(prefix, Arc::downgrade(&feed));
        Resolution::subscribe(feed)
    }

    async fn run(mut self, shared: Arc<Shared>) {
        // Ends the stream if this task ever stops (it is aborted when the
        // stream is dropped; a panic would otherwise hang the consumer).
        struct CloseOnDrop(Arc<Shared>);
        impl Drop for CloseOnDrop {
            fn drop(&mut self) {
                self.0.close();
            }
        }
        let _close = CloseOnDrop(shared.clone());

        let started = Instant::now();
        let mut failures = 0u32;
        for reason in RELIST_REASONS {
            // Every reason shows 0 before the first relist.
            metrics::counter!("resolver.relists", "prefix" => self.key_prefix.trim_end_matches('/').to_owned(), "reason" => reason).absolute(0);
        }
        // Since when, and why, the set has not been followed.
        let mut outage: Option<(Instant, String)> = None;
        // The revision up to which every event was applied, when the last
        // watch broke in a way another member can resume.
        let mut resume: Option<i64> = None;
        loop {
            if let Some(revision) = resume {
                match self.rewatch(revision).await {
                    Ok(watch) => {
                        if let Some((since, reason)) = outage.take() {
                            info!(
                                %reason,
                                took_ms = since.elapsed().as_millis() as u64,
                                attempts = failures + 1,
                                revision,
                                "resolver re-opened its watch from the last revision seen"
                            );
                        }
                        failures = 0;
                        (resume, outage) = self.follow_until_lost(watch, revision, &shared).await;
                    }
                    Err(error) if error.relist => {
                        // Compacted meanwhile: list again (diffed, so the
                        // set stays exact).
                        debug!(%error, revision, "cannot resume the watch; listing again");
                        relisted(&self.key_prefix, "resume_failed");
                        resume = None;
                    }
                    Err(error) => {
                        // No member reachable, or none with a leader: the
                        // events after `revision` are still in etcd's
                        // history, so resume from there once one is back
                        // rather than list (which would lose the keys
                        // added and removed meanwhile).
                        self.back_off(&mut failures, error.message, &mut outage, &shared)
                            .await;
                    }
                }
                continue;
            }
            match self.sync(&shared).await {
                Ok((watch, revision, changed)) => {
                    let endpoints = shared.len();
                    match outage.take() {
                        Some((since, reason)) => info!(
                            %reason,
                            took_ms = since.elapsed().as_millis() as u64,
                            attempts = failures + 1,
                            changed,
                            endpoints,
                            revision,
                            "resolver recovered"
                        ),
                        None => info!(
                            took_ms = started.elapsed().as_millis() as u64,
                            endpoints, revision, "resolver listed the prefix and is watching it"
                        ),
                    }
                    failures = 0;
                    (resume, outage) = self.follow_until_lost(watch, revision, &shared).await;
                }
                Err(error) => {
                    self.back_off(&mut failures, error.message, &mut outage, &shared)
                        .await;
                }
            }
        }
    }

    /// After a failed attempt: marks the outage (health, logged once per
    /// outage) and waits out the backoff, cut short when no member was
    /// ready and one is again.
    async fn back_off(
        &self,
        failures: &mut u32,
        error: String,
        outage: &mut Option<(Instant, String)>,
        shared: &Shared,
    ) {
        let delay = self.backoff.delay(*failures);
        *failures = failures.saturating_add(1);
        if *failures == 1 {
            // Once per outage: with etcd down or no member that has a
            // leader, this repeats until it is back.
            warn!(
                %error,
                retry_in_ms = delay.as_millis() as u64,
                "resolver cannot list and watch etcd; keeping the last known set"
            );
        } else {
            debug!(%error, attempt = *failures, retry_in_ms = delay.as_millis() as u64, "resolver still cannot list and watch etcd");
        }
        shared.set_health(Health::Outage(error.clone()));
        if outage.is_none() {
            *outage = Some((Instant::now(), error));
        }
        let no_member_ready = self.members.as_ref().and_then(Members::ready) == Some(0);
        let wake = Instant::now() + delay;
        if etcd::retry_wait(self.members.as_ref(), wake, no_member_ready).await {
            debug!("an etcd member is ready again; trying now");
        }
    }

    /// Re-opens the watch of the prefix from `revision + 1`, after a broken
    /// stream.
    async fn rewatch(&mut self, revision: i64) -> Result<Watch, OpenError> {
        self.open_watch(revision, "re-opening the watch").await
    }

    /// Lists the prefix at one revision R and opens a watch from R + 1; only
    /// once both worked is the list applied (diffed against the current set).
    async fn sync(&mut self, shared: &Shared) -> Result<(Watch, i64, usize), OpenError> {
        let (fresh, revision) = self.list().await.map_err(OpenError::retry)?;

        #[cfg(test)]
        if let Some(hook) = &self.before_watch {
            hook(revision).await;
        }

        let watch = self.open_watch(revision, "creating the watch").await?;
        let changed = shared.reset(fresh);
        Ok((watch, revision, changed))
    }

    /// Adds a watch of the prefix from `revision + 1` to the client's watch
    /// stream and waits until etcd says it created it, so a watch etcd
    /// refused (e.g. the revision was compacted) is an error here and not a
    /// silent first message; `what` names the step in errors.
    async fn open_watch(&mut self, revision: i64, what: &str) -> Result<Watch, OpenError> {
        let options = WatchOptions::new()
            .with_prefix()
            .with_start_revision(revision + 1);
        let key = self.key_prefix.clone().into_bytes();
        let mut watch = self.mux.watch(key, options, self.request_timeout);
        match self
            .timed(what, watch.message())
            .await
            .map_err(OpenError::retry)?
        {
            None => Err(OpenError::retry(
                "watch dropped before it was created".into(),
            )),
            Some(resp) if resp.canceled() => Err(OpenError {
                message: cancel_reason(&resp),
                relist: resp.compact_revision() > 0,
            }),
            Some(resp) => match resp.header().map(|h| h.revision()) {
                // A new etcd (its data lost) would never send the events
                // after `revision`.
                Some(now) if now < revision => Err(OpenError {
                    message: format!("etcd's revision went back from {revision} to {now}"),
                    relist: true,
                }),
                _ => Ok(watch),
            },
        }
    }

    /// Reads the whole prefix, page by page, all pages at the revision of the
    /// first one.
    async fn list(&mut self) -> Result<(HashMap<String, Entry>, i64), String> {
        let end = prefix_end(self.key_prefix.as_bytes());
        let mut start = self.key_prefix.as_bytes().to_vec();
        let mut revision = 0;
        let mut set = HashMap::new();
        loop {
            let mut options = GetOptions::new()
                .with_range(end.clone())
                .with_limit(self.page_size);
            if revision > 0 {
                options = options.with_revision(revision);
            }
            let mut client = self.client.clone();
            let resp = self
                .timed("listing", client.get(start.clone(), Some(options)))
                .await?;
            if revision == 0 {
                revision = resp
                    .header()
                    .map(|h| h.revision())
                    .ok_or("etcd sent a get response without a header")?;
            }
            for kv in resp.kvs() {
                if let Some((key, Some(entry))) = self.decode(kv, "list") {
                    set.insert(key, entry);
                }
            }
            match resp.kvs().last() {
                Some(last) if resp.more() => {
                    start = last.key().to_vec();
                    start.push(0);
                }
                _ => break,
            }
        }
        Ok((set, revision))
    }

    /// Applies watch events until the watch stops; returns why it stopped
    /// and, when another member can resume it (the stream broke, or etcd
    /// canceled it for lack of a leader), the revision up to which every
    /// event was applied. A compacted watch cannot be resumed: list again.
    /// Follows the watch (health `Following`) until it is lost, logs the
    /// loss and counts a relist when it cannot be resumed; returns the
    /// revision to resume from (`None`: list again) and the outage that
    /// starts.
    async fn follow_until_lost(
        &self,
        watch: Watch,
        revision: i64,
        shared: &Shared,
    ) -> (Option<i64>, Option<(Instant, String)>) {
        shared.set_health(Health::Following);
        let (reason, next) = self.follow(watch, revision, shared).await;
        log_loss(&reason, next);
        if next.is_none() {
            relisted(&self.key_prefix, relist_reason(&reason));
        }
        (next, Some((Instant::now(), reason)))
    }

    async fn follow(
        &self,
        mut watch: Watch,
        mut revision: i64,
        shared: &Shared,
    ) -> (String, Option<i64>) {
        loop {
            match watch.message().await {
                Ok(Some(resp)) => {
                    if resp.canceled() {
                        let resumable = resp.compact_revision() <= 0;
                        return (cancel_reason(&resp), resumable.then_some(revision));
                    }
                    if let Some(last) = resp.events().last().and_then(|e| e.kv()) {
                        revision = revision.max(last.mod_revision());
                    }
                    shared.apply(resp.events().iter().filter_map(|event| {
                        let kv = event.kv()?;
                        match event.event_type() {
                            EventType::Put => self.decode(kv, "put"),
                            EventType::Delete => {
                                Some((String::from_utf8(kv.key().to_vec()).ok()?, None))
                            }
                        }
                    }));
                }
                Ok(None) => {
                    return (
                        "watch dropped from the shared stream: it fell behind".into(),
                        Some(revision),
                    );
                }
                Err(e) => {
                    return (
                        format!("watch stream error: {}", describe(&e)),
                        Some(revision),
                    );
                }
            }
        }
    }

    /// The key and what its value says: `Some(entry)` for an endpoint, `None`
    /// for no endpoint (a delete op or a malformed value, logged). `None`
    /// overall for a key that cannot be a change key (not UTF-8).
    fn decode(&self, kv: &KeyValue, source: &str) -> Option<(String, Option<Entry>)> {
        let Ok(key) = kv.key_str() else {
            warn!(key = ?String::from_utf8_lossy(kv.key()), "ignoring a key that is not UTF-8");
            return None;
        };
        let entry = match decode_value(kv.value()) {
            Ok(Decoded::Endpoint(entry)) => Some(entry),
            Ok(Decoded::Delete) => {
                debug!(key, source, "value says Op 1 (delete): no endpoint");
                None
            }
            Err(error) => {
                warn!(
                    key,
                    %error,
                    value = ?shorten(&String::from_utf8_lossy(kv.value())),
                    revision = kv.mod_revision(),
                    "ignoring a malformed endpoint value"
                );
                None
            }
        };
        Some((key.to_string(), entry))
    }

    async fn timed<T>(
        &self,
        what: &str,
        fut: impl Future<Output = Result<T, etcd_client::Error>>,
    ) -> Result<T, String> {
        match timeout(self.request_timeout, fut).await {
            Ok(Ok(v)) => Ok(v),
            Ok(Err(e)) => Err(match diagnose(&describe(&e), self.secured) {
                Some(d) => format!("{what}: {e}: {}", d.hint),
                None => format!("{what}: {e}"),
            }),
            Err(_) => Err(format!(
                "{what}: etcd did not answer within {:?}",
                self.request_timeout
            )),
        }
    }
}

/// Why a watch could not be opened.
#[derive(Debug)]
struct OpenError {
    message: String,
    /// etcd no longer has the events after the revision asked for
    /// (compacted): only listing again can catch up.
    relist: bool,
}

impl OpenError {
    /// A failure that another attempt may not have (no member, no leader).
    fn retry(message: String) -> Self {
        Self {
            message,
            relist: false,
        }
    }
}

impl fmt::Display for OpenError {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        f.write_str(&self.message)
    }
}

fn log_loss(reason: &str, resume: Option<i64>) {
    match resume {
        // A member died or lost its leader: routine in a cluster.
        Some(revision) => {
            info!(%reason, revision, "resolver lost its watch; re-opening it on another member")
        }
        None => warn!(%reason, "resolver lost its watch, listing again"),
    }
}

fn cancel_reason(resp: &etcd_client::WatchResponse) -> String {
    if resp.compact_revision() > 0 {
        format!(
            "watch canceled: its start revision was compacted (compact revision {})",
            resp.compact_revision()
        )
    } else {
        format!("watch canceled by etcd: {:?}", resp.cancel_reason())
    }
}

/// The first key after every key starting with `prefix`.
fn prefix_end(prefix: &[u8]) -> Vec<u8> {
    let mut end = prefix.to_vec();
    while let Some(last) = end.pop() {
        if last < 0xff {
            end.push(last + 1);
            return end;
        }
    }
    // All 0xff: to the end of the keyspace.
    vec![0]
}

/// `resolver.relists{prefix, reason}` (see `docs/metrics.md`).
fn relisted(key_prefix: &str, reason: &'static str) {
    let prefix = key_prefix.trim_end_matches('/').to_owned();
    metrics::counter!("resolver.relists", "prefix" => prefix, "reason" => reason).increment(1);
}

const RELIST_REASONS: [&str; 5] = [
    "compacted",
    "canceled",
    "stream_ended",
    "stream_error",
    "resume_failed",
];

/// The reason label of a relist, from why the watch stopped.
fn relist_reason(why: &str) -> &'static str {
    if why.contains("compacted") {
        "compacted"
    } else if why.starts_with("watch canceled") {
        "canceled"
    } else if why.starts_with("watch stream ended") {
        "stream_ended"
    } else {
        "stream_error"
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn prefix_end_is_the_next_key_after_the_slash() {
        assert_eq!(prefix_end(b"discovery/dev/game/"), b"discovery/dev/game0");
        assert_eq!(prefix_end(b"a\xff"), b"b");
        assert_eq!(prefix_end(b"\xff"), b"\0");
    }

    /// Whether the range the resolver lists and watches,
    /// `[key_prefix, prefix_end(key_prefix))`, holds `key`.
    fn in_range(key_prefix: &str, key: &[u8]) -> bool {
        let end = prefix_end(key_prefix.as_bytes());
        key >= key_prefix.as_bytes() && (end == [0] || key < end.as_slice())
    }

    mod properties {
        use super::*;
        use proptest::prelude::*;

        fn config() -> ProptestConfig {
            ProptestConfig {
                cases: 256,
                failure_persistence: None,
                ..ProptestConfig::default()
            }
        }

        /// Prefixes as users write them, trailing slashes included, with
        /// some bytes near the ends of the byte range.
        fn prefix() -> impl Strategy<Value = String> {
            "[a-z\\-_./\u{7f}\u{ff}\u{10ffff}]{1,24}"
        }

        proptest! {
            #![proptest_config(config())]

            #[test]
            fn the_watched_range_holds_exactly_the_keys_under_prefix_slash(
                prefix in prefix(),
                key in proptest::collection::vec(any::<u8>(), 0..40),
            ) {
                let kp = key_prefix(&prefix);
                prop_assert!(kp.ends_with('/') && !kp.ends_with("//"), "{kp:?}");
                prop_assert_eq!(in_range(&kp, &key), key.starts_with(kp.as_bytes()));
            }

            #[test]
            fn keys_under_the_prefix_are_in_and_siblings_are_out(
                prefix in prefix(),
                rest in proptest::collection::vec(any::<u8>(), 0..40),
                sibling in "[a-z0-9\\-_.]{1,8}",
            ) {
                let kp = key_prefix(&prefix);
                let base = kp.trim_end_matches('/');
                let mut under = kp.as_bytes().to_vec();
                under.extend_from_slice(&rest);
                prop_assert!(in_range(&kp, &under));
                // `discovery/dev/game` must not see `discovery/dev/gameplay/…`,
                // nor the bare prefix key itself.
                let longer = format!("{base}{sibling}/{}", String::from_utf8_lossy(&rest));
                prop_assert!(!in_range(&kp, longer.as_bytes()), "{longer:?}");
                prop_assert!(!in_range(&kp, base.as_bytes()));
            }

            #[test]
            fn trailing_slashes_do_not_change_the_prefix(
                prefix in prefix(),
                slashes in 0..4usize,
            ) {
                let with = format!("{prefix}{}", "/".repeat(slashes));
                prop_assert_eq!(key_prefix(&with), key_prefix(&prefix));
            }
        }
    }
}
