//! The client-to-server byte stream, frame by frame: the connection
//! preface, then frames whose HEADERS/CONTINUATION payloads are collected
//! into header blocks and walked with [`crate::hpack`]. Everything else is
//! skipped by length, without looking at it.
//!
//! The scanner works in place on a buffer it does not own and reports how
//! much of it is final; the bytes of a header block still being received
//! stay with the caller until the block ends (see `AuthorityFix`).

use crate::{
    Mode,
    hpack::{self, Table},
    rule::Verdict,
};

const PREFACE: &[u8; 24] = b"PRI * HTTP/2.0\r\n\r\nSM\r\n\r\n";

const HEADERS: u8 = 0x1;
const PUSH_PROMISE: u8 = 0x5;
const CONTINUATION: u8 = 0x9;
const END_HEADERS: u8 = 0x4;
const PADDED: u8 = 0x8;
const PRIORITY: u8 = 0x20;

#[derive(Clone, Copy, Debug)]
enum St {
    Preface(u8),
    Head {
        buf: [u8; 9],
        n: u8,
    },
    /// Payload bytes of a frame we do not look into.
    Skip(u32),
    /// HEADERS with PADDED: the pad length byte; `rest` counts it.
    PadLen {
        rest: u32,
        priority: bool,
    },
    /// HEADERS with PRIORITY: the 5 priority bytes.
    Priority {
        left: u8,
        frag: u32,
        pad: u32,
    },
    /// Header block fragment bytes, then padding.
    Fragment {
        left: u32,
        pad: u32,
    },
    Padding(u32),
    /// Gave up: everything passes untouched from here on.
    Off,
}

/// A header block being received.
#[derive(Debug)]
struct Block {
    /// Where in the current buffer it starts (the first payload byte of
    /// its HEADERS frame); bytes from here on are not final.
    start: usize,
    /// Fragment ranges, relative to `start`.
    fragments: Vec<(usize, usize)>,
    stream: u32,
    /// Whether the frame being received ends the block.
    end_headers: bool,
}

/// What a scanner has seen so far, for logs and tests.
#[derive(Clone, Copy, Debug, Default, PartialEq, Eq)]
pub struct Stats {
    /// `:authority` values rewritten.
    pub rewritten: u64,
    /// Refused `:authority` values let through unchanged (observe mode, or
    /// no same-length replacement), which h2 rejects.
    pub refused: u64,
    /// Header blocks walked.
    pub blocks: u64,
    /// Whether the scanner gave up and passes everything through.
    pub passthrough: bool,
    /// Most bytes held back at once (an incomplete header block).
    pub held_peak: usize,
}

/// Limits, from [`crate::Config`].
#[derive(Clone, Copy, Debug)]
pub(crate) struct Limits {
    pub(crate) max_block: usize,
    pub(crate) max_authority: usize,
}

#[derive(Debug)]
pub(crate) struct Scanner {
    st: St,
    block: Option<Block>,
    table: Table,
    mode: Mode,
    limits: Limits,
    stats: Stats,
    warned: bool,
    scratch: Vec<u8>,
    gathered: Vec<u8>,
    fixes: Vec<(usize, bool, usize, Vec<u8>)>,
    peer: Option<std::net::SocketAddr>,
}

impl Scanner {
    pub(crate) fn new(
        mode: Mode,
        limits: Limits,
        table_limit: usize,
        peer: Option<std::net::SocketAddr>,
    ) -> Self {
        Self {
            st: St::Preface(0),
            block: None,
            table: Table::new(table_limit),
            mode,
            limits,
            stats: Stats::default(),
            warned: false,
            scratch: Vec::new(),
            gathered: Vec::new(),
            fixes: Vec::new(),
            peer,
        }
    }

    pub(crate) fn stats(&self) -> Stats {
        self.stats
    }

    /// The caller holds `n` bytes back.
    pub(crate) fn note_held(&mut self, n: usize) {
        self.stats.held_peak = self.stats.held_peak.max(n);
    }

    /// The caller moved or dropped the first `n` bytes of the buffer.
    pub(crate) fn shift(&mut self, n: usize) {
        if let Some(b) = &mut self.block {
            b.start -= n;
        }
    }

    /// Stops looking at the stream: what is held is released unchanged.
    pub(crate) fn give_up(&mut self, why: &str) {
        if !matches!(self.st, St::Off) {
            tracing::debug!(peer = ?self.peer, why, "authority-fix: passing the connection through untouched");
        }
        self.st = St::Off;
        self.block = None;
        self.stats.passthrough = true;
    }

    /// Scans `buf[from..]` (bytes before `from` were scanned before) and
    /// returns how many leading bytes of `buf` are final: everything, or
    /// up to the start of a header block not yet complete.
    pub(crate) fn scan(&mut self, buf: &mut [u8], from: usize) -> usize {
        let mut pos = from;
        while pos < buf.len() {
            pos = match self.st {
                St::Off => buf.len(),
                St::Preface(n) => {
                    let n = usize::from(n);
                    let take = (PREFACE.len() - n).min(buf.len() - pos);
                    if buf[pos..pos + take] != PREFACE[n..n + take] {
                        self.give_up("no HTTP/2 connection preface");
                        return buf.len();
                    }
                    let n = n + take;
                    self.st = if n == PREFACE.len() {
                        St::Head { buf: [0; 9], n: 0 }
                    } else {
                        St::Preface(n as u8)
                    };
                    pos + take
                }
                St::Head { buf: mut head, n } => {
                    let n = usize::from(n);
                    let take = (9 - n).min(buf.len() - pos);
                    head[n..n + take].copy_from_slice(&buf[pos..pos + take]);
                    let n = n + take;
                    if n == 9 {
                        self.frame_header(head, pos + take, buf);
                    } else {
                        self.st = St::Head {
                            buf: head,
                            n: n as u8,
                        };
                    }
                    pos + take
                }
                St::Skip(left) => {
                    let take = (left as usize).min(buf.len() - pos);
                    let left = left - take as u32;
                    self.st = if left == 0 {
                        St::Head { buf: [0; 9], n: 0 }
                    } else {
                        St::Skip(left)
                    };
                    pos + take
                }
                St::PadLen { rest, priority } => {
                    let pad = u32::from(buf[pos]);
                    let rest = rest - 1;
                    let need = pad + if priority { 5 } else { 0 };
                    if need > rest {
                        self.give_up("HEADERS padding longer than the frame");
                        return buf.len();
                    }
                    self.st = if priority {
                        St::Priority {
                            left: 5,
                            frag: rest - need,
                            pad,
                        }
                    } else {
                        St::Fragment {
                            left: rest - pad,
                            pad,
                        }
                    };
                    let next = pos + 1;
                    self.after_payload_part(buf);
                    next
                }
                St::Priority { left, frag, pad } => {
                    let take = usize::from(left).min(buf.len() - pos);
                    let left = left - take as u8;
                    self.st = if left == 0 {
                        St::Fragment { left: frag, pad }
                    } else {
                        St::Priority { left, frag, pad }
                    };
                    let next = pos + take;
                    self.after_payload_part(buf);
                    next
                }
                St::Fragment { left, pad } => {
                    let take = (left as usize).min(buf.len() - pos);
                    if let Some(b) = &mut self.block {
                        let (s, e) = (pos - b.start, pos + take - b.start);
                        match b.fragments.last_mut() {
                            Some(last) if last.1 == s => last.1 = e,
                            _ => b.fragments.push((s, e)),
                        }
                    }
                    self.st = St::Fragment {
                        left: left - take as u32,
                        pad,
                    };
                    let next = pos + take;
                    self.after_payload_part(buf);
                    next
                }
                St::Padding(left) => {
                    let take = (left as usize).min(buf.len() - pos);
                    self.st = St::Padding(left - take as u32);
                    let next = pos + take;
                    self.after_payload_part(buf);
                    next
                }
            };
            if let Some(b) = &self.block
                && pos - b.start > self.limits.max_block
            {
                self.give_up("header block larger than the limit");
                return buf.len();
            }
        }
        match &self.block {
            Some(b) => b.start,
            None => buf.len(),
        }
    }

    /// A complete frame header; `payload` is where its payload starts.
    fn frame_header(&mut self, h: [u8; 9], payload: usize, buf: &mut [u8]) {
        let len = u32::from_be_bytes([0, h[0], h[1], h[2]]);
        let (ty, flags) = (h[3], h[4]);
        let stream = u32::from_be_bytes([h[5], h[6], h[7], h[8]]) & 0x7fff_ffff;
        let end_headers = flags & END_HEADERS != 0;
        if let Some(b) = &mut self.block {
            if ty != CONTINUATION || stream != b.stream {
                // RFC 9113 §6.10: only CONTINUATION of the same stream may
                // follow; h2 treats anything else as a connection error.
                self.give_up("a header block interrupted by another frame");
                return;
            }
            b.end_headers = end_headers;
            self.st = St::Fragment { left: len, pad: 0 };
            self.after_payload_part(buf);
            return;
        }
        match ty {
            HEADERS if stream != 0 => {
                self.block = Some(Block {
                    start: payload,
                    fragments: Vec::new(),
                    stream,
                    end_headers,
                });
                let padded = flags & PADDED != 0;
                let priority = flags & PRIORITY != 0;
                self.st = if padded {
                    if len == 0 {
                        self.give_up("padded HEADERS without a pad length");
                        return;
                    }
                    St::PadLen {
                        rest: len,
                        priority,
                    }
                } else if priority {
                    if len < 5 {
                        self.give_up("HEADERS shorter than its priority fields");
                        return;
                    }
                    St::Priority {
                        left: 5,
                        frag: len - 5,
                        pad: 0,
                    }
                } else {
                    St::Fragment { left: len, pad: 0 }
                };
                self.after_payload_part(buf);
            }
            HEADERS | CONTINUATION | PUSH_PROMISE => {
                self.give_up("a frame h2 refuses from a client");
            }
            _ => {
                self.st = if len == 0 {
                    St::Head { buf: [0; 9], n: 0 }
                } else {
                    St::Skip(len)
                };
            }
        }
    }

    /// Moves from an exhausted payload part to the next one; at the end of
    /// a frame that ends a header block, walks the block.
    fn after_payload_part(&mut self, buf: &mut [u8]) {
        match self.st {
            St::Priority { left: 0, frag, pad } => self.st = St::Fragment { left: frag, pad },
            St::Fragment { left: 0, pad } if pad > 0 => self.st = St::Padding(pad),
            _ => {}
        }
        let frame_done = matches!(self.st, St::Fragment { left: 0, pad: 0 } | St::Padding(0));
        if !frame_done {
            return;
        }
        self.st = St::Head { buf: [0; 9], n: 0 };
        if self.block.as_ref().is_some_and(|b| b.end_headers) {
            let block = self.block.take().expect("checked above");
            self.finish_block(&block, buf);
        }
    }

    /// Walks a complete header block and applies the fixes in place.
    fn finish_block(&mut self, block: &Block, buf: &mut [u8]) {
        self.stats.blocks += 1;
        let base = block.start;
        let single = block.fragments.len() <= 1;
        let mut gathered = std::mem::take(&mut self.gathered);
        let bytes: &[u8] = if single {
            match block.fragments.first() {
                Some(&(s, e)) => &buf[base + s..base + e],
                None => &[],
            }
        } else {
            gathered.clear();
            for &(s, e) in &block.fragments {
                gathered.extend_from_slice(&buf[base + s..base + e]);
            }
            &gathered
        };
        let mut fixes = std::mem::take(&mut self.fixes);
        fixes.clear();
        let mode = self.mode;
        let mut refused: Vec<Vec<u8>> = Vec::new();
        let mut rewritten: Option<(Vec<u8>, Vec<u8>)> = None;
        let walked = hpack::walk_block(
            &mut self.table,
            bytes,
            self.limits.max_authority,
            &mut self.scratch,
            |found| {
                let len = found.len;
                match (found.verdict, mode) {
                    (Verdict::Valid, _) => {}
                    (Verdict::Fixed(fixed), Mode::Fix) => {
                        if rewritten.is_none() {
                            rewritten = Some((found.value.clone(), fixed.clone()));
                        }
                        fixes.push((found.offset, found.huffman, len, fixed));
                    }
                    (Verdict::Fixed(_) | Verdict::Unfixable, _) => refused.push(found.value),
                }
            },
        );
        if let Err(e) = walked {
            self.gathered = gathered;
            self.fixes = fixes;
            self.give_up(match e {
                hpack::HpackError::Truncated => "header block ends inside a field",
                hpack::HpackError::Integer => "HPACK integer out of range",
                hpack::HpackError::Index => "HPACK index out of range",
                hpack::HpackError::Huffman => "bad Huffman string",
                hpack::HpackError::TableSize => "dynamic table size above the limit",
            });
            return;
        }
        let mut encoded = Vec::new();
        for (offset, huffman, len, fixed) in &fixes {
            if !hpack::encode_fixed(fixed, *huffman, *len, &mut encoded) {
                continue;
            }
            // Map block offsets back to buffer positions, across fragments.
            let mut written = 0;
            let mut block_pos = 0;
            for &(s, e) in &block.fragments {
                let frag_len = e - s;
                let lo = (*offset).max(block_pos);
                let hi = (*offset + *len).min(block_pos + frag_len);
                if lo < hi {
                    let dst = base + s + (lo - block_pos);
                    buf[dst..dst + (hi - lo)]
                        .copy_from_slice(&encoded[written..written + (hi - lo)]);
                    written += hi - lo;
                }
                block_pos += frag_len;
            }
            self.stats.rewritten += 1;
        }
        if let Some((from, to)) = rewritten
            && self.stats.rewritten == 1
        {
            tracing::debug!(
                peer = ?self.peer,
                from = %String::from_utf8_lossy(&from),
                to = %String::from_utf8_lossy(&to),
                "authority-fix: rewrote :authority (same length) so that h2 accepts it"
            );
        }
        for value in refused {
            self.stats.refused += 1;
            if !self.warned {
                self.warned = true;
                let value = String::from_utf8_lossy(&value);
                match self.mode {
                    Mode::Observe => tracing::warn!(
                        peer = ?self.peer,
                        authority = %value,
                        "rejecting requests of this connection: their :authority {value:?} is not a valid \
                         RFC 3986 authority, so h2 resets them with PROTOCOL_ERROR. grpc-go sends its \
                         target's endpoint there; fix it on the Go side with grpc.WithAuthority(\"<host>\") \
                         (e.g. grpc.WithAuthority(\"game\")), or run the server without --strict-authority"
                    ),
                    Mode::Fix => tracing::warn!(
                        peer = ?self.peer,
                        authority = %value,
                        "cannot rewrite :authority {value:?} to a valid one of the same length; h2 resets \
                         its requests with PROTOCOL_ERROR. Fix it on the client side, e.g. grpc-go's \
                         grpc.WithAuthority(\"<host>\")"
                    ),
                }
            }
        }
        self.gathered = gathered;
        self.fixes = fixes;
    }
}
