//! Ring hash: consistent hashing of a request key onto a ring of virtual
//! nodes.

use http::HeaderName;

use crate::{Candidate, PickRequest, Picker, Policy, policy::Scope};

/// Consistent hashing (gRFC A42, Envoy's `RING_HASH`): a request carrying a
/// [`HashKey`] (or, with [`hash_header`](Self::hash_header), the named
/// request header, gRFC A76) goes to the endpoint that owns the key's point
/// on a ring of virtual nodes, so every client process with the same
/// endpoints sends a key to the same instance, and a change of the set moves
/// only the keys of the endpoints that came or went. A request without a key
/// goes to a random READY endpoint.
///
/// **The ring spans every known endpoint, whatever its state** (a policy of
/// [`Scope::All`]): a key's owner does not depend on which connections
/// happen to be up, so a fresh client's first call for a key reaches the
/// same instance as every later one. A pick, as A42 says:
/// - the owner is READY: it gets the request;
/// - the owner is IDLE or CONNECTING: the request waits for it (bounded by
///   its deadline and [`Builder::sticky_wait`](crate::Builder::sticky_wait),
///   5 s by default; then it goes on as for a failed owner);
/// - the owner is in TRANSIENT_FAILURE, or READY but excluded (suspected
///   frozen, ejected, not serving): the request goes to the next endpoint
///   clockwise that is READY, and the key comes back when its owner recovers;
/// - no endpoint READY or connecting: the request waits for one, or fails
///   fast if so configured, as under every policy.
///
/// **The ring, exactly** (so that any implementation can reproduce it):
/// - The hash is XXH64 with seed 0 (the one grpc-go's `ring_hash` uses).
/// - Each endpoint is named by its instance id, or its address
///   (`host:port`) when it has none; it gets `v` virtual nodes at
///   `XXH64("<name>_<i>")` for `i` in `0..v`.
/// - `v` is the same for every endpoint: with `n` endpoints and
///   `m` = [`min_ring_size`](Self::min_ring_size), `v = ceil(m / (2^(b-1) +
///   1))` where `b = ceil(log2 n)` (for `n = 1`, `v = m`). So the ring has at
///   least `m` nodes, and `v` changes only when `n` crosses a power of two:
///   between such counts (3 and 4, 9 and 16, …) adding an endpoint moves keys
///   only to it, and removing it gives them back exactly.
/// - Nodes are sorted by hash (ties: by name, then address); a key's point is
///   `XXH64(key)`, and its endpoint the first node at or after the point,
///   wrapping around.
///
/// The ring is built in the balancer's owner task each time endpoints are
/// added or removed, never on the request path (a change of state rebuilds
/// nothing); a pick looks the key's top bits up in a table of bucket starts
/// and searches only its bucket (about one node).
///
/// ```
/// use etcdlb_balancer::{HashKeyExt, RingHash};
///
/// let builder = etcdlb_balancer::Balancer::builder().policy(RingHash::new().min_ring_size(4096));
/// let request = tonic::Request::new(()).hash_key("player-42");
///
/// // Or key by a request header that the callers send anyway:
/// let by_header = RingHash::new().hash_header("x-player-id")?;
/// let mut request = tonic::Request::new(());
/// request.metadata_mut().insert("x-player-id", "player-42".parse()?);
/// # Ok::<(), Box<dyn std::error::Error>>(())
/// ```
#[derive(Clone, Debug, PartialEq, Eq)]
pub struct RingHash {
    min_ring_size: usize,
    hash_header: Option<HeaderName>,
}

/// The largest ring, in nodes (A42's upper bound on `max_ring_size`).
const MAX_RING_SIZE: usize = 1 << 23;

impl RingHash {
    /// A ring of at least 1024 nodes (A42's default minimum).
    pub fn new() -> Self {
        Self {
            min_ring_size: 1024,
            hash_header: None,
        }
    }

    /// Also take the key from the request header `name` (gRFC A76's
    /// `request_hash_header`, e.g. `x-player-id`): a request with no
    /// [`HashKey`] extension is routed by `XXH64` of that header's value
    /// (several values: joined with `,`), so it goes where
    /// `HashKey::new(value)` goes. A [`HashKey`] extension wins over the
    /// header; a request with neither goes to a random READY endpoint.
    ///
    /// # Errors
    /// `name` is not a valid header name (or is a pseudo-header).
    pub fn hash_header(mut self, name: &str) -> Result<Self, http::header::InvalidHeaderName> {
        self.hash_header = Some(HeaderName::from_bytes(name.as_bytes())?);
        Ok(self)
    }

    /// The header keys are taken from, if any.
    pub fn header(&self) -> Option<&HeaderName> {
        self.hash_header.as_ref()
    }

    /// The fewest nodes on the ring (1 to 8 388 608). More nodes spread keys
    /// more evenly, at the cost of memory and build time; a pick's cost
    /// grows with the logarithm.
    pub fn min_ring_size(mut self, nodes: usize) -> Self {
        self.min_ring_size = nodes.clamp(1, MAX_RING_SIZE);
        self
    }

    /// Virtual nodes per endpoint with `n` endpoints (see the type's docs).
    pub fn nodes_per_endpoint(&self, n: usize) -> usize {
        if n <= 1 {
            return self.min_ring_size;
        }
        let band = usize::BITS - (n - 1).leading_zeros(); // ceil(log2 n)
        let smallest_in_band = (1usize << (band - 1)) + 1;
        self.min_ring_size.div_ceil(smallest_in_band).max(1)
    }
}

impl Default for RingHash {
    fn default() -> Self {
        Self::new()
    }
}

impl Policy for RingHash {
    fn scope(&self) -> Scope {
        Scope::All
    }

    fn build(&self, ready: &[Candidate]) -> Box<dyn Picker> {
        let per_endpoint = self.nodes_per_endpoint(ready.len());
        let names: Vec<&str> = ready
            .iter()
            .map(|e| e.endpoint().instance_id().unwrap_or(e.endpoint().addr()))
            .collect();
        let mut nodes: Vec<(u64, u32)> = Vec::with_capacity(ready.len() * per_endpoint);
        let mut label = String::new();
        for (index, name) in names.iter().enumerate() {
            let index = u32::try_from(index).unwrap_or(u32::MAX);
            for i in 0..per_endpoint {
                label.clear();
                label.push_str(name);
                label.push('_');
                push_decimal(&mut label, i);
                nodes.push((xxh64(label.as_bytes(), 0), index));
            }
        }
        nodes.sort_unstable_by(|a, b| {
            a.0.cmp(&b.0).then_with(|| {
                let (x, y) = (&ready[a.1 as usize], &ready[b.1 as usize]);
                names[a.1 as usize]
                    .cmp(names[b.1 as usize])
                    .then_with(|| x.endpoint().addr().cmp(y.endpoint().addr()))
            })
        });
        let mut picker = RingPicker::new(nodes);
        picker.header = self.hash_header.clone();
        Box::new(picker)
    }

    fn name(&self) -> &str {
        "ring-hash"
    }
}

fn push_decimal(s: &mut String, n: usize) {
    use std::fmt::Write as _;
    let _ = write!(s, "{n}");
}

struct RingPicker {
    /// Node hashes, ascending; searched on every pick.
    hashes: Vec<u64>,
    /// The index in `ready` owning each node.
    owners: Vec<u32>,
    /// `starts[b]`: the first node whose hash, shifted right by `shift`, is
    /// at least `b` (`2^(64 - shift) + 1` entries). A key's node lies in
    /// `starts[b]..=starts[b + 1]` for its bucket `b`, so a pick searches a
    /// bucket of about one node instead of the whole ring.
    starts: Vec<u32>,
    shift: u32,
    /// The request header keys come from when there is no `HashKey`.
    header: Option<HeaderName>,
}

/// Most bucket bits: a table of at most 65 537 entries (256 KiB).
const MAX_BUCKET_BITS: u32 = 16;

impl RingPicker {
    /// The picker over `nodes`, sorted by hash.
    fn new(nodes: Vec<(u64, u32)>) -> Self {
        let (hashes, owners): (Vec<u64>, Vec<u32>) = nodes.into_iter().unzip();
        // About one node per bucket; at least one bit, so the shift is < 64.
        let bits = (usize::BITS - hashes.len().saturating_sub(1).leading_zeros())
            .clamp(1, MAX_BUCKET_BITS);
        let shift = u64::BITS - bits;
        let mut starts = Vec::with_capacity((1 << bits) + 1);
        let mut node = 0;
        for bucket in 0..=(1u64 << bits) {
            while node < hashes.len() && hashes[node] >> shift < bucket {
                node += 1;
            }
            starts.push(u32::try_from(node).unwrap_or(u32::MAX));
        }
        Self {
            hashes,
            owners,
            starts,
            shift,
            header: None,
        }
    }

    /// The key's hash: the `HashKey` extension's, else the header's.
    fn key(&self, request: &PickRequest<'_>) -> Option<u64> {
        if let Some(key) = request.extensions().get::<HashKey>() {
            return Some(key.0);
        }
        let name = self.header.as_ref()?;
        let mut values = request.headers().get_all(name).iter();
        let first = values.next()?;
        match values.next() {
            None => Some(xxh64(first.as_bytes(), 0)),
            Some(second) => {
                let mut joined = first.as_bytes().to_vec();
                for value in std::iter::once(second).chain(values) {
                    joined.push(b',');
                    joined.extend_from_slice(value.as_bytes());
                }
                Some(xxh64(&joined, 0))
            }
        }
    }

    /// The first node at or after `point` (`hashes.len()` if none: wrap).
    fn node_at(&self, point: u64) -> usize {
        let bucket = (point >> self.shift) as usize;
        let (lo, hi) = (
            self.starts[bucket] as usize,
            self.starts[bucket + 1] as usize,
        );
        lo + self.hashes[lo..hi].partition_point(|&h| h < point)
    }
}

impl Picker for RingPicker {
    fn pick(&self, request: &PickRequest<'_>, known: &[Candidate]) -> Option<usize> {
        if known.is_empty() || self.hashes.is_empty() {
            return None;
        }
        let Some(point) = self.key(request) else {
            return random_ready(known);
        };
        let start = self.node_at(point) % self.hashes.len();
        let owner = self.owners[start] as usize;
        let candidate = known.get(owner)?;
        if candidate.is_ready() {
            return Some(owner);
        }
        let may_wait = !request.connecting_wait_over();
        if candidate.is_connecting() && may_wait {
            return Some(owner);
        }
        // The owner failed (or is excluded, or kept us waiting too long):
        // the next READY endpoint clockwise. Failing that, one connecting.
        let mut connecting = None;
        let nodes = self.owners.len();
        for k in 1..nodes {
            let next = self.owners[(start + k) % nodes] as usize;
            if next == owner {
                continue;
            }
            let candidate = &known[next];
            if candidate.is_ready() {
                return Some(next);
            }
            if connecting.is_none() && may_wait && candidate.is_connecting() {
                connecting = Some(next);
            }
        }
        connecting
    }
}

/// A READY candidate chosen at random (a request with no key), else one
/// connecting, else none.
fn random_ready(known: &[Candidate]) -> Option<usize> {
    let n = known.len();
    let start = fastrand::usize(..n);
    let mut connecting = None;
    for k in 0..n {
        let i = (start + k) % n;
        if known[i].is_ready() {
            return Some(i);
        }
        if connecting.is_none() && known[i].is_connecting() {
            connecting = Some(i);
        }
    }
    connecting
}

/// The key a [`RingHash`] balancer hashes, as a request extension; holds
/// the key's XXH64 (seed 0), computed once when made.
///
/// Set it with [`HashKeyExt::hash_key`] on a `tonic::Request`, or insert it
/// in an `http::Request`'s extensions. Other policies ignore it.
///
/// ```
/// use etcdlb_balancer::HashKey;
///
/// assert_eq!(HashKey::new("abc").hash(), 0x44bc2cf5ad770999);
/// assert_eq!(HashKey::new(b"abc"), HashKey::from_hash(0x44bc2cf5ad770999));
/// ```
#[derive(Clone, Copy, Debug, PartialEq, Eq, Hash)]
pub struct HashKey(u64);

impl HashKey {
    /// The key `key` (any bytes: a user id, a session, a room).
    pub fn new(key: impl AsRef<[u8]>) -> Self {
        Self(xxh64(key.as_ref(), 0))
    }

    /// A key whose hash the caller computed already (with XXH64, seed 0, to
    /// agree with other clients).
    pub fn from_hash(hash: u64) -> Self {
        Self(hash)
    }

    /// The key's point on the ring.
    pub fn hash(&self) -> u64 {
        self.0
    }
}

/// Adds a [`HashKey`] to a `tonic::Request`.
pub trait HashKeyExt: Sized {
    /// Routes this request by `key` under [`RingHash`].
    fn hash_key(self, key: impl AsRef<[u8]>) -> Self;
}

impl<T> HashKeyExt for tonic::Request<T> {
    fn hash_key(mut self, key: impl AsRef<[u8]>) -> Self {
        self.extensions_mut().insert(HashKey::new(key));
        self
    }
}

const P1: u64 = 0x9E37_79B1_85EB_CA87;
const P2: u64 = 0xC2B2_AE3D_27D4_EB4F;
const P3: u64 = 0x1656_67B1_9E37_79F9;
const P4: u64 = 0x85EB_CA77_C2B2_AE63;
const P5: u64 = 0x27D4_EB2F_1656_67C5;

fn round(acc: u64, input: u64) -> u64 {
    acc.wrapping_add(input.wrapping_mul(P2))
        .rotate_left(31)
        .wrapping_mul(P1)
}

fn merge(acc: u64, value: u64) -> u64 {
    (acc ^ round(0, value)).wrapping_mul(P1).wrapping_add(P4)
}

fn read_u64(b: &[u8]) -> u64 {
    let mut word = [0u8; 8];
    word.copy_from_slice(&b[..8]);
    u64::from_le_bytes(word)
}

fn read_u32(b: &[u8]) -> u64 {
    let mut word = [0u8; 4];
    word.copy_from_slice(&b[..4]);
    u64::from(u32::from_le_bytes(word))
}

/// XXH64 of `input` with `seed`, as specified by xxHash (Yann Collet).
pub(crate) fn xxh64(input: &[u8], seed: u64) -> u64 {
    let mut rest = input;
    let mut h = if input.len() >= 32 {
        let mut v = [
            seed.wrapping_add(P1).wrapping_add(P2),
            seed.wrapping_add(P2),
            seed,
            seed.wrapping_sub(P1),
        ];
        while rest.len() >= 32 {
            for (lane, chunk) in v.iter_mut().zip(rest[..32].chunks_exact(8)) {
                *lane = round(*lane, read_u64(chunk));
            }
            rest = &rest[32..];
        }
        let mut h = v[0]
            .rotate_left(1)
            .wrapping_add(v[1].rotate_left(7))
            .wrapping_add(v[2].rotate_left(12))
            .wrapping_add(v[3].rotate_left(18));
        for lane in v {
            h = merge(h, lane);
        }
        h
    } else {
        seed.wrapping_add(P5)
    };
    h = h.wrapping_add(input.len() as u64);
    while rest.len() >= 8 {
        h ^= round(0, read_u64(rest));
        h = h.rotate_left(27).wrapping_mul(P1).wrapping_add(P4);
        rest = &rest[8..];
    }
    if rest.len() >= 4 {
        h ^= read_u32(rest).wrapping_mul(P1);
        h = h.rotate_left(23).wrapping_mul(P2).wrapping_add(P3);
        rest = &rest[4..];
    }
    for &byte in rest {
        h ^= u64::from(byte).wrapping_mul(P5);
        h = h.rotate_left(11).wrapping_mul(P1);
    }
    h ^= h >> 33;
    h = h.wrapping_mul(P2);
    h ^= h >> 29;
    h = h.wrapping_mul(P3);
    h ^ (h >> 32)
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn the_bucket_table_finds_the_node_a_full_search_finds() {
        for len in [1usize, 2, 3, 1000, 2048, 5000] {
            let mut nodes: Vec<(u64, u32)> = (0..len)
                .map(|i| (xxh64(format!("n_{i}").as_bytes(), 0), i as u32))
                .collect();
            if len == 3 {
                // Extremes and a tie.
                nodes = vec![(0, 0), (u64::MAX, 1), (u64::MAX, 2)];
            }
            nodes.sort_unstable();
            let picker = RingPicker::new(nodes);
            let mut points: Vec<u64> = (0..2000)
                .map(|i| xxh64(format!("key-{i}").as_bytes(), 0))
                .collect();
            points.extend([0, 1, u64::MAX - 1, u64::MAX]);
            points.extend(picker.hashes.iter().copied());
            for point in points {
                assert_eq!(
                    picker.node_at(point),
                    picker.hashes.partition_point(|&h| h < point),
                    "{len} nodes, point {point:#x}"
                );
            }
        }
    }

    #[test]
    fn xxh64_matches_the_reference() {
        // From Go's github.com/cespare/xxhash (what grpc-go's ring_hash uses)
        // on the same inputs.
        let cases = [
            ("", 0xef46db3751d8e999),
            ("a", 0xd24ec4f1a98c6e5b),
            ("abc", 0x44bc2cf5ad770999),
            ("1_0", 0x11eb90a1ae538bb4),
            ("127.0.0.1:50051_999", 0x02b9bb2067512282),
            ("abcdefgh", 0x3ad351775b4634b7),
            ("abcdefghijkl", 0x4b09b7d3a233d4b3),
            ("0123456789abcdefghijklmnopqrstuvwxyz", 0x69196c1b3af0bff9),
            (
                "The quick brown fox jumps over the lazy dog, twice: the quick brown fox.",
                0x05ddddec682d9f58,
            ),
        ];
        for (input, expected) in cases {
            assert_eq!(xxh64(input.as_bytes(), 0), expected, "{input:?}");
        }
    }

    #[test]
    fn nodes_per_endpoint_change_only_across_powers_of_two() {
        let ring = RingHash::new();
        assert_eq!(ring.nodes_per_endpoint(1), 1024);
        assert_eq!(ring.nodes_per_endpoint(2), 512);
        assert_eq!(ring.nodes_per_endpoint(3), ring.nodes_per_endpoint(4));
        assert_eq!(ring.nodes_per_endpoint(9), ring.nodes_per_endpoint(16));
        assert_ne!(ring.nodes_per_endpoint(4), ring.nodes_per_endpoint(5));
        for n in 1..=20_000 {
            let v = ring.nodes_per_endpoint(n);
            assert!(v * n >= 1024, "{n} endpoints × {v} nodes");
        }
        assert_eq!(ring.nodes_per_endpoint(10_000), 1);
    }
}
