//! Property tests on generated client streams: a preface, SETTINGS, and
//! header blocks encoded by a small HPACK encoder written here (every
//! representation, raw and Huffman strings, dynamic name and field
//! references, table size updates), split into HEADERS (with and without
//! padding and priority) and CONTINUATION frames, between DATA, PING and
//! WINDOW_UPDATE frames, and fed to the adapter in random read sizes.
//!
//! The output is decoded with an independent HPACK decoder (`fluke-hpack`).

use std::collections::VecDeque;

use etcdlb_authority_fix::{Config, Mode, huffman_encode, process};
use proptest::prelude::*;

const STATIC_NAMES: &[&str] = &[
    ":authority",
    ":method",
    ":method",
    ":path",
    ":path",
    ":scheme",
    ":scheme",
    ":status",
    ":status",
    ":status",
    ":status",
    ":status",
    ":status",
    ":status",
    "accept-charset",
    "accept-encoding",
    "accept-language",
    "accept-ranges",
    "accept",
    "access-control-allow-origin",
    "age",
    "allow",
    "authorization",
    "cache-control",
    "content-disposition",
    "content-encoding",
    "content-language",
    "content-length",
    "content-location",
    "content-range",
    "content-type",
    "cookie",
    "date",
    "etag",
    "expect",
    "expires",
    "from",
    "host",
    "if-match",
    "if-modified-since",
    "if-none-match",
    "if-range",
    "if-unmodified-since",
    "last-modified",
    "link",
    "location",
    "max-forwards",
    "proxy-authenticate",
    "proxy-authorization",
    "range",
    "referer",
    "refresh",
    "retry-after",
    "server",
    "set-cookie",
    "strict-transport-security",
    "transfer-encoding",
    "user-agent",
    "vary",
    "via",
    "www-authenticate",
];

const NAMES: &[&str] = &[
    ":authority",
    ":path",
    ":method",
    ":scheme",
    "content-type",
    "te",
    "grpc-timeout",
    "user-agent",
    "x-custom",
    "grpc-accept-encoding",
];

/// One header field and how to encode it.
#[derive(Clone, Debug)]
struct Field {
    name: usize,
    value: String,
    /// 0: indexed if possible, 1: literal with indexing, 2: without, 3: never.
    kind: u8,
    /// Refer to the name by index when possible.
    name_ref: bool,
    huffman_name: bool,
    huffman_value: bool,
}

#[derive(Clone, Debug)]
struct BlockPlan {
    size_update: Option<usize>,
    fields: Vec<Field>,
    /// Fragment sizes (the rest goes in the last fragment).
    splits: Vec<usize>,
    padding: Option<u8>,
    priority: bool,
    /// Frames before this block: 0 DATA, 1 PING, 2 WINDOW_UPDATE.
    before: Vec<(u8, usize)>,
}

/// The encoder's dynamic table (full entries, to find references).
struct Encoder {
    table: VecDeque<(String, String)>,
    size: usize,
    max: usize,
}

fn int(out: &mut Vec<u8>, first: u8, prefix: u32, mut v: usize) {
    let mask = (1usize << prefix) - 1;
    if v < mask {
        out.push(first | v as u8);
        return;
    }
    out.push(first | mask as u8);
    v -= mask;
    while v >= 128 {
        out.push((v % 128) as u8 | 0x80);
        v /= 128;
    }
    out.push(v as u8);
}

fn string(out: &mut Vec<u8>, s: &[u8], huffman: bool) {
    if huffman {
        let h = huffman_encode(s);
        int(out, 0x80, 7, h.len());
        out.extend_from_slice(&h);
    } else {
        int(out, 0, 7, s.len());
        out.extend_from_slice(s);
    }
}

impl Encoder {
    fn new() -> Self {
        Self {
            table: VecDeque::new(),
            size: 0,
            max: 4096,
        }
    }

    fn insert(&mut self, name: &str, value: &str) {
        let size = name.len() + value.len() + 32;
        if size > self.max {
            self.table.clear();
            self.size = 0;
            return;
        }
        while self.size + size > self.max {
            let (n, v) = self.table.pop_back().unwrap();
            self.size -= n.len() + v.len() + 32;
        }
        self.size += size;
        self.table.push_front((name.to_owned(), value.to_owned()));
    }

    fn resize(&mut self, max: usize) {
        self.max = max;
        while self.size > self.max {
            let (n, v) = self.table.pop_back().unwrap();
            self.size -= n.len() + v.len() + 32;
        }
    }

    fn name_index(&self, name: &str) -> Option<usize> {
        if let Some(i) = STATIC_NAMES.iter().position(|n| *n == name) {
            return Some(i + 1);
        }
        self.table
            .iter()
            .position(|(n, _)| n == name)
            .map(|i| i + 62)
    }

    fn field_index(&self, name: &str, value: &str) -> Option<usize> {
        self.table
            .iter()
            .position(|(n, v)| n == name && v == value)
            .map(|i| i + 62)
    }

    fn encode(&mut self, plan: &BlockPlan) -> Vec<u8> {
        let mut out = Vec::new();
        if let Some(max) = plan.size_update {
            int(&mut out, 0x20, 5, max);
            self.resize(max);
        }
        for f in &plan.fields {
            let name = NAMES[f.name];
            if f.kind == 0
                && let Some(i) = self.field_index(name, &f.value)
            {
                int(&mut out, 0x80, 7, i);
                continue;
            }
            let (first, prefix) = match f.kind {
                0 | 1 => (0x40, 6),
                2 => (0x00, 4),
                _ => (0x10, 4),
            };
            match self.name_index(name).filter(|_| f.name_ref) {
                Some(i) => int(&mut out, first, prefix, i),
                None => {
                    out.push(first);
                    string(&mut out, name.as_bytes(), f.huffman_name);
                }
            }
            string(&mut out, f.value.as_bytes(), f.huffman_value);
            if f.kind <= 1 {
                self.insert(name, &f.value);
            }
        }
        out
    }
}

fn frame(out: &mut Vec<u8>, ty: u8, flags: u8, stream: u32, payload: &[u8]) {
    let len = payload.len() as u32;
    out.extend_from_slice(&len.to_be_bytes()[1..]);
    out.push(ty);
    out.push(flags);
    out.extend_from_slice(&stream.to_be_bytes());
    out.extend_from_slice(payload);
}

/// A whole client stream, the header fields of each block, and where each
/// block's fragments are in the stream.
struct Stream {
    bytes: Vec<u8>,
    blocks: Vec<Vec<(String, String)>>,
    fragments: Vec<Vec<(usize, usize)>>,
}

fn build(plans: &[BlockPlan]) -> Stream {
    let mut enc = Encoder::new();
    let mut bytes = b"PRI * HTTP/2.0\r\n\r\nSM\r\n\r\n".to_vec();
    frame(&mut bytes, 0x4, 0, 0, &[0, 0x4, 0, 0x10, 0, 0]);
    let mut blocks = Vec::new();
    let mut fragments = Vec::new();
    for (i, plan) in plans.iter().enumerate() {
        let stream = 2 * i as u32 + 1;
        for &(kind, len) in &plan.before {
            match kind {
                0 => frame(&mut bytes, 0x0, 0, stream.max(2) - 1, &vec![0xab; len]),
                1 => frame(&mut bytes, 0x6, 0, 0, &[7; 8]),
                _ => frame(&mut bytes, 0x8, 0, 0, &(len as u32 + 1).to_be_bytes()),
            }
        }
        let block = enc.encode(plan);
        let mut cuts = Vec::new();
        let mut at = 0;
        for &s in &plan.splits {
            let end = (at + s).min(block.len());
            cuts.push((at, end));
            at = end;
        }
        cuts.push((at, block.len()));
        let mut frags = Vec::new();
        for (j, &(s, e)) in cuts.iter().enumerate() {
            let last = j + 1 == cuts.len();
            let end_headers = if last { 0x4 } else { 0 };
            let start = bytes.len() + 9;
            if j == 0 {
                let mut payload = Vec::new();
                let mut flags = end_headers | 0x1;
                if let Some(pad) = plan.padding {
                    flags |= 0x8;
                    payload.push(pad);
                }
                if plan.priority {
                    flags |= 0x20;
                    payload.extend_from_slice(&[0, 0, 0, 0, 15]);
                }
                let fs = start + payload.len();
                payload.extend_from_slice(&block[s..e]);
                payload.extend(std::iter::repeat_n(
                    0,
                    usize::from(plan.padding.unwrap_or(0)),
                ));
                frame(&mut bytes, 0x1, flags, stream, &payload);
                frags.push((fs, fs + (e - s)));
            } else {
                frame(&mut bytes, 0x9, end_headers, stream, &block[s..e]);
                frags.push((start, start + (e - s)));
            }
        }
        fragments.push(frags);
        blocks.push(
            plan.fields
                .iter()
                .map(|f| (NAMES[f.name].to_owned(), f.value.clone()))
                .collect(),
        );
    }
    Stream {
        bytes,
        blocks,
        fragments,
    }
}

/// Decodes every block of `out` (at the input's fragment positions: the
/// adapter never changes a length) with fluke-hpack.
fn decode_all(out: &[u8], s: &Stream) -> Vec<Vec<(String, String)>> {
    let mut dec = fluke_hpack::Decoder::new();
    s.fragments
        .iter()
        .map(|frags| {
            let block: Vec<u8> = frags
                .iter()
                .flat_map(|&(a, b)| out[a..b].to_vec())
                .collect();
            dec.decode(&block)
                .unwrap_or_else(|e| panic!("fluke-hpack cannot decode {block:02x?}: {e:?}"))
                .into_iter()
                .map(|(n, v)| (String::from_utf8(n).unwrap(), String::from_utf8(v).unwrap()))
                .collect()
        })
        .collect()
}

fn field(values: impl Strategy<Value = String>) -> impl Strategy<Value = Field> {
    (
        0..NAMES.len(),
        values,
        0..4u8,
        any::<bool>(),
        any::<bool>(),
        any::<bool>(),
    )
        .prop_map(
            |(name, value, kind, name_ref, huffman_name, huffman_value)| Field {
                name,
                value,
                kind,
                name_ref,
                huffman_name,
                huffman_value,
            },
        )
}

fn plan(values: impl Strategy<Value = String> + Clone) -> impl Strategy<Value = BlockPlan> {
    (
        proptest::option::weighted(
            0.15,
            prop_oneof![Just(0usize), Just(64), Just(256), Just(4096)],
        ),
        proptest::collection::vec(field(values), 0..10),
        proptest::collection::vec(1..40usize, 0..3),
        proptest::option::weighted(0.3, any::<u8>()),
        any::<bool>(),
        proptest::collection::vec((0..3u8, 0..300usize), 0..3),
    )
        .prop_map(
            |(size_update, fields, splits, padding, priority, before)| BlockPlan {
                // fluke-hpack refuses a block that is only a size update.
                size_update: size_update.filter(|_| !fields.is_empty()),
                fields,
                splits,
                padding,
                priority,
                before,
            },
        )
}

/// Values accepted by h2 (for `:authority` too).
fn valid_values() -> impl Strategy<Value = String> + Clone {
    prop_oneof![
        Just("game".to_owned()),
        Just("127.0.0.1:50051".to_owned()),
        "[a-z0-9.-]{1,20}",
        "[a-z]{1,8}\\.[a-z]{2,4}:[1-9][0-9]{0,3}",
    ]
}

/// Values grpc-go sends, and others with characters the adapter fixes.
fn refused_values() -> impl Strategy<Value = String> + Clone {
    prop_oneof![
        Just("discovery%2Fdev%2Fgame".to_owned()),
        Just("discovery/dev/game".to_owned()),
        "[a-z0-9./%? |\"-]{1,30}",
        valid_values(),
    ]
}

/// What the adapter should make of a value: refused characters replaced by
/// the allowed one of the same Huffman code length.
fn expected(value: &str) -> String {
    if http::uri::Authority::try_from(value).is_ok() {
        return value.to_owned();
    }
    value
        .chars()
        .map(|c| match c {
            '/' | '%' | ' ' => '-',
            '?' | '"' => '!',
            '|' => '+',
            c => c,
        })
        .collect()
}

fn config() -> ProptestConfig {
    ProptestConfig {
        cases: 128,
        failure_persistence: None,
        ..ProptestConfig::default()
    }
}

proptest! {
    #![proptest_config(config())]

    #[test]
    fn streams_that_need_no_fix_pass_byte_identical(
        plans in proptest::collection::vec(plan(valid_values()), 1..8),
        reads in proptest::collection::vec(1..200usize, 1..8),
    ) {
        let s = build(&plans);
        for mode in [Mode::Fix, Mode::Observe] {
            let (out, stats) = process(&s.bytes, &reads, Config::default().mode(mode));
            prop_assert_eq!(&out, &s.bytes);
            prop_assert!(!stats.passthrough, "gave up on a valid stream");
            prop_assert_eq!(stats.rewritten, 0);
            prop_assert_eq!(stats.refused, 0);
            prop_assert_eq!(stats.blocks, plans.len() as u64);
        }
        // The generator's blocks are what it means them to be.
        prop_assert_eq!(decode_all(&s.bytes, &s), s.blocks.clone());
    }

    #[test]
    fn fixed_streams_decode_to_the_fixed_authority_and_stay_in_step(
        plans in proptest::collection::vec(plan(refused_values()), 1..8),
        reads in proptest::collection::vec(1..200usize, 1..8),
    ) {
        let s = build(&plans);
        let (out, stats) = process(&s.bytes, &reads, Config::default());
        prop_assert!(!stats.passthrough);
        prop_assert_eq!(out.len(), s.bytes.len());
        let want: Vec<Vec<(String, String)>> = s.blocks.iter().map(|b| {
            b.iter().map(|(n, v)| {
                if n == ":authority" { (n.clone(), expected(v)) } else { (n.clone(), v.clone()) }
            }).collect()
        }).collect();
        prop_assert_eq!(decode_all(&out, &s), want);
        // Outside the header block fragments, not one byte changed.
        let mut inside = vec![false; out.len()];
        for frags in &s.fragments {
            for &(a, b) in frags {
                inside[a..b].iter_mut().for_each(|x| *x = true);
            }
        }
        for (i, (a, b)) in s.bytes.iter().zip(&out).enumerate() {
            prop_assert!(inside[i] || a == b, "byte {} changed outside a header block", i);
        }
        // Observe mode changes nothing.
        let (seen, _) = process(&s.bytes, &reads, Config::default().mode(Mode::Observe));
        prop_assert_eq!(seen, s.bytes.clone());
    }

    #[test]
    fn arbitrary_bytes_never_panic_and_keep_their_length(
        bytes in proptest::collection::vec(any::<u8>(), 0..600),
        preface in any::<bool>(),
        reads in proptest::collection::vec(1..64usize, 1..6),
    ) {
        let mut input = if preface { b"PRI * HTTP/2.0\r\n\r\nSM\r\n\r\n".to_vec() } else { Vec::new() };
        input.extend_from_slice(&bytes);
        let (out, stats) = process(&input, &reads, Config::default());
        prop_assert_eq!(out.len(), input.len());
        if stats.rewritten == 0 {
            prop_assert_eq!(out, input);
        }
    }

    #[test]
    fn mutated_streams_never_panic_and_keep_their_length(
        plans in proptest::collection::vec(plan(refused_values()), 1..5),
        flips in proptest::collection::vec((any::<usize>(), any::<u8>()), 1..6),
        cut in any::<usize>(),
        reads in proptest::collection::vec(1..100usize, 1..6),
    ) {
        let mut input = build(&plans).bytes;
        for (at, b) in flips {
            let i = at % input.len();
            input[i] = b;
        }
        input.truncate(cut % (input.len() + 1));
        let (out, stats) = process(&input, &reads, Config::default());
        prop_assert_eq!(out.len(), input.len());
        if stats.rewritten == 0 {
            prop_assert_eq!(out, input);
        }
    }
}

#[test]
fn continuation_flood_is_bounded_and_passed_through() {
    let mut input = b"PRI * HTTP/2.0\r\n\r\nSM\r\n\r\n".to_vec();
    frame(&mut input, 0x1, 0x1, 1, &[0x82]);
    for _ in 0..2000 {
        frame(&mut input, 0x9, 0, 1, &[0x84; 100]);
    }
    let config = Config::default();
    let (out, stats) = process(&input, &[4096], config);
    assert_eq!(out, input);
    assert!(stats.passthrough);
    assert!(
        stats.held_peak <= config.max_header_block + 4096,
        "held {} bytes",
        stats.held_peak
    );
}

#[test]
fn grpc_go_first_request_is_fixed_huffman_and_raw() {
    for huffman_value in [false, true] {
        let plans = vec![BlockPlan {
            size_update: None,
            fields: vec![Field {
                name: 0,
                value: "discovery%2Fdev%2Fgame".into(),
                kind: 1,
                name_ref: true,
                huffman_name: false,
                huffman_value,
            }],
            splits: vec![],
            padding: None,
            priority: false,
            before: vec![],
        }];
        let s = build(&plans);
        let (out, stats) = process(&s.bytes, &[], Config::default());
        assert_eq!(stats.rewritten, 1);
        assert_eq!(
            decode_all(&out, &s),
            vec![vec![(
                ":authority".to_owned(),
                "discovery-2Fdev-2Fgame".to_owned()
            )]]
        );
    }
}

#[test]
fn fuzz_seeds_are_fixed() {
    let dir = concat!(
        env!("CARGO_MANIFEST_DIR"),
        "/../../fuzz/seeds/authority_fix"
    );
    for name in ["grpc_go_raw", "grpc_go_huffman"] {
        let seed = std::fs::read(format!("{dir}/{name}")).expect("seed file");
        let input = &seed[1..];
        let (out, stats) = process(input, &[17], Config::default());
        assert_eq!(out.len(), input.len(), "{name}");
        assert_eq!(stats.blocks, 2, "{name}: {stats:?}");
        assert_eq!(stats.rewritten, 2, "{name}: {stats:?}");
        assert!(!stats.passthrough, "{name}");
    }
}
