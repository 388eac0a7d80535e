//! Just enough HPACK (RFC 7541) to find `:authority` in a header block:
//! representations, integers, string literals and a dynamic table that
//! tracks each entry's size and whether its name is `:authority` (values
//! are never kept).

use std::collections::VecDeque;

use crate::{
    huffman,
    rule::{self, Verdict},
};

/// Lengths of the names of the static table (RFC 7541, Appendix A),
/// index 1 to 61; index 1 is `:authority`.
const STATIC_NAME_LENGTHS: [u8; 61] = [
    10, // :authority
    7, 7, // :method
    5, 5, // :path
    7, 7, // :scheme
    7, 7, 7, 7, 7, 7, 7,  // :status
    14, // accept-charset
    15, // accept-encoding
    15, // accept-language
    13, // accept-ranges
    6,  // accept
    27, // access-control-allow-origin
    3,  // age
    5,  // allow
    13, // authorization
    13, // cache-control
    19, // content-disposition
    16, // content-encoding
    16, // content-language
    14, // content-length
    16, // content-location
    13, // content-range
    12, // content-type
    6,  // cookie
    4,  // date
    4,  // etag
    6,  // expect
    7,  // expires
    4,  // from
    4,  // host
    8,  // if-match
    17, // if-modified-since
    13, // if-none-match
    8,  // if-range
    19, // if-unmodified-since
    13, // last-modified
    4,  // link
    8,  // location
    12, // max-forwards
    18, // proxy-authenticate
    19, // proxy-authorization
    5,  // range
    7,  // referer
    7,  // refresh
    11, // retry-after
    6,  // server
    10, // set-cookie
    25, // strict-transport-security
    17, // transfer-encoding
    10, // user-agent
    4,  // vary
    3,  // via
    16, // www-authenticate
];

const AUTHORITY: &[u8] = b":authority";

/// RFC 7541 §4.1: an entry's size is its name and value lengths plus 32.
const ENTRY_OVERHEAD: usize = 32;

/// The dynamic table's initial maximum size (SETTINGS_HEADER_TABLE_SIZE's
/// default).
pub(crate) const DEFAULT_TABLE_SIZE: usize = 4096;

/// Why a header block could not be followed. The connection is then passed
/// through untouched; h2 decides what it makes of it.
#[derive(Clone, Copy, Debug, PartialEq, Eq)]
pub(crate) enum HpackError {
    /// The block ends inside a representation.
    Truncated,
    /// An integer does not fit the limits we keep.
    Integer,
    /// Index 0, or past the end of the tables.
    Index,
    /// A Huffman string that does not decode.
    Huffman,
    /// A table size update above the configured limit.
    TableSize,
}

#[derive(Clone, Copy, Debug)]
struct Entry {
    authority: bool,
    name_len: u32,
    size: u32,
}

/// The decoder's view of the dynamic table, names' lengths and sizes only.
#[derive(Debug)]
pub(crate) struct Table {
    entries: VecDeque<Entry>,
    size: usize,
    max: usize,
    limit: usize,
}

impl Table {
    /// A table of the default size that refuses updates above `limit`.
    pub(crate) fn new(limit: usize) -> Self {
        Self {
            entries: VecDeque::new(),
            size: 0,
            max: DEFAULT_TABLE_SIZE.min(limit),
            limit,
        }
    }

    /// `(is :authority, name length)` of the entry at `index`.
    fn name(&self, index: usize) -> Result<(bool, usize), HpackError> {
        match index {
            0 => Err(HpackError::Index),
            1..=61 => Ok((index == 1, usize::from(STATIC_NAME_LENGTHS[index - 1]))),
            _ => self
                .entries
                .get(index - 62)
                .map(|e| (e.authority, e.name_len as usize))
                .ok_or(HpackError::Index),
        }
    }

    fn insert(&mut self, authority: bool, name_len: usize, value_len: usize) {
        let size = name_len + value_len + ENTRY_OVERHEAD;
        if size > self.max {
            // RFC 7541 §4.4: an entry larger than the table empties it.
            self.entries.clear();
            self.size = 0;
            return;
        }
        while self.size + size > self.max {
            self.evict();
        }
        self.size += size;
        self.entries.push_front(Entry {
            authority,
            // Both below `max`, which is below `limit`, a usize from config;
            // they fit u32 because `limit` is capped in `Config`.
            name_len: name_len as u32,
            size: size as u32,
        });
    }

    fn evict(&mut self) {
        if let Some(e) = self.entries.pop_back() {
            self.size -= e.size as usize;
        }
    }

    fn resize(&mut self, max: usize) -> Result<(), HpackError> {
        if max > self.limit {
            return Err(HpackError::TableSize);
        }
        self.max = max;
        while self.size > self.max {
            self.evict();
        }
        Ok(())
    }

    /// Number of entries (for tests).
    #[cfg(test)]
    pub(crate) fn len(&self) -> usize {
        self.entries.len()
    }
}

/// One `:authority` value found in a block.
#[derive(Debug)]
pub(crate) struct Found {
    /// Offset in the block of the value's string bytes (after its length).
    pub(crate) offset: usize,
    /// How many string bytes there are.
    pub(crate) len: usize,
    /// Whether those bytes are Huffman-coded.
    pub(crate) huffman: bool,
    /// What to do with it.
    pub(crate) verdict: Verdict,
    /// The decoded value (at most the configured limit), for log lines.
    pub(crate) value: Vec<u8>,
}

/// Reads representations from a header block.
struct Reader<'a> {
    block: &'a [u8],
    pos: usize,
}

impl Reader<'_> {
    fn byte(&mut self) -> Result<u8, HpackError> {
        let b = *self.block.get(self.pos).ok_or(HpackError::Truncated)?;
        self.pos += 1;
        Ok(b)
    }

    /// RFC 7541 §5.1, with an `N`-bit prefix; values above 2^28 are refused
    /// (no length, index or size we accept comes near).
    fn integer(&mut self, prefix_bits: u32) -> Result<usize, HpackError> {
        let mask = (1u32 << prefix_bits) - 1;
        let mut value = u32::from(self.byte()?) & mask;
        if value < mask {
            return Ok(value as usize);
        }
        let mut shift = 0;
        loop {
            let b = self.byte()?;
            if shift > 21 {
                return Err(HpackError::Integer);
            }
            value += u32::from(b & 0x7f) << shift;
            shift += 7;
            if b & 0x80 == 0 {
                return Ok(value as usize);
            }
        }
    }

    /// A string literal: `(huffman, offset of its bytes, their length)`.
    fn string(&mut self) -> Result<(bool, usize, usize), HpackError> {
        let huffman = self.block.get(self.pos).ok_or(HpackError::Truncated)? & 0x80 != 0;
        let len = self.integer(7)?;
        let start = self.pos;
        if len > self.block.len() - start {
            return Err(HpackError::Truncated);
        }
        self.pos += len;
        Ok((huffman, start, len))
    }
}

/// Decoded length of a string, checking its Huffman code.
fn decoded_len(bytes: &[u8], huffman: bool) -> Result<usize, HpackError> {
    if !huffman {
        return Ok(bytes.len());
    }
    let mut n = 0;
    huffman::decode(bytes, |_| n += 1).map_err(|_| HpackError::Huffman)?;
    Ok(n)
}

/// Decodes a string into `out` (cleared first), up to `limit` bytes;
/// returns the decoded length (which may exceed what was kept).
fn decode_into(
    bytes: &[u8],
    huffman: bool,
    out: &mut Vec<u8>,
    limit: usize,
) -> Result<usize, HpackError> {
    out.clear();
    if !huffman {
        out.extend_from_slice(&bytes[..bytes.len().min(limit)]);
        return Ok(bytes.len());
    }
    let mut n = 0;
    huffman::decode(bytes, |b| {
        if n < limit {
            out.push(b);
        }
        n += 1;
    })
    .map_err(|_| HpackError::Huffman)?;
    Ok(n)
}

/// Whether a literal name is `:authority`, and its decoded length.
fn literal_name(bytes: &[u8], huffman: bool) -> Result<(bool, usize), HpackError> {
    if !huffman {
        return Ok((bytes == AUTHORITY, bytes.len()));
    }
    let mut n = 0;
    let mut same = true;
    huffman::decode(bytes, |b| {
        same &= AUTHORITY.get(n) == Some(&b);
        n += 1;
    })
    .map_err(|_| HpackError::Huffman)?;
    Ok((same && n == AUTHORITY.len(), n))
}

/// Walks one complete header block, updating `table` as the peer's decoder
/// will, and calls `found` for each `:authority` value carried as a literal.
/// `max_authority` bounds how much of a value is decoded and judged: longer
/// values are reported as [`Verdict::Valid`] (left alone).
pub(crate) fn walk_block(
    table: &mut Table,
    block: &[u8],
    max_authority: usize,
    scratch: &mut Vec<u8>,
    mut found: impl FnMut(Found),
) -> Result<(), HpackError> {
    let mut r = Reader { block, pos: 0 };
    while r.pos < block.len() {
        let first = block[r.pos];
        if first & 0x80 != 0 {
            // Indexed field: nothing is inserted. An :authority entry of the
            // dynamic table already holds whatever we let through.
            let index = r.integer(7)?;
            table.name(index)?;
            continue;
        }
        let (indexing, prefix) = match first {
            0x40..=0x7f => (true, 6),
            0x20..=0x3f => {
                let max = r.integer(5)?;
                table.resize(max)?;
                continue;
            }
            // Literal without indexing (0000) or never indexed (0001).
            _ => (false, 4),
        };
        let index = r.integer(prefix)?;
        let (authority, name_len) = if index == 0 {
            let (h, start, len) = r.string()?;
            literal_name(&block[start..start + len], h)?
        } else {
            table.name(index)?
        };
        let (h, start, len) = r.string()?;
        let bytes = &block[start..start + len];
        let value_len = if authority {
            let value_len = decode_into(bytes, h, scratch, max_authority)?;
            let verdict = if value_len > max_authority {
                Verdict::Valid
            } else {
                rule::verdict(scratch)
            };
            found(Found {
                offset: start,
                len,
                huffman: h,
                verdict,
                value: std::mem::take(scratch),
            });
            value_len
        } else if indexing {
            decoded_len(bytes, h)?
        } else {
            0
        };
        if indexing {
            table.insert(authority, name_len, value_len);
        }
    }
    Ok(())
}

/// Writes the replacement `fixed` over the `len` string bytes at `offset`
/// of a block seen through `write`: the same bytes for a raw string, the
/// same number of bytes re-encoded for a Huffman one. Returns false (and
/// writes nothing) when the encoding would not have the same length.
pub(crate) fn encode_fixed(fixed: &[u8], huffman: bool, len: usize, out: &mut Vec<u8>) -> bool {
    out.clear();
    if !huffman {
        if fixed.len() != len {
            return false;
        }
        out.extend_from_slice(fixed);
        return true;
    }
    out.resize(len, 0);
    huffman::encode_into(fixed, out)
}

#[cfg(test)]
mod tests {
    use super::*;

    fn walk(table: &mut Table, block: &[u8]) -> Result<Vec<Found>, HpackError> {
        let mut all = Vec::new();
        walk_block(table, block, 1024, &mut Vec::new(), |f| all.push(f))?;
        Ok(all)
    }

    #[test]
    fn rfc_7541_c_3_requests_without_huffman() {
        let mut t = Table::new(65536);
        // C.3.1: :method GET, :scheme http, :path /, :authority www.example.com
        let b1 = [
            0x82, 0x86, 0x84, 0x41, 0x0f, b'w', b'w', b'w', b'.', b'e', b'x', b'a', b'm', b'p',
            b'l', b'e', b'.', b'c', b'o', b'm',
        ];
        let f = walk(&mut t, &b1).unwrap();
        assert_eq!(f.len(), 1);
        assert_eq!(f[0].value, b"www.example.com");
        assert_eq!(f[0].verdict, Verdict::Valid);
        assert_eq!(t.size, 57);
        // C.3.2: ... :authority by dynamic index 62, cache-control: no-cache
        let b2 = [
            0x82, 0x86, 0x84, 0xbe, 0x58, 0x08, b'n', b'o', b'-', b'c', b'a', b'c', b'h', b'e',
        ];
        assert!(walk(&mut t, &b2).unwrap().is_empty());
        assert_eq!(t.size, 110);
        assert_eq!(t.len(), 2);
    }

    #[test]
    fn literal_with_dynamic_name_index_is_recognised() {
        let mut t = Table::new(65536);
        walk(&mut t, &[0x41, 0x04, b'g', b'a', b'm', b'e']).unwrap();
        // Literal without indexing, name = dynamic entry 62 (:authority).
        let f = walk(&mut t, &[0x0f, 0x2f, 0x03, b'a', b'/', b'b']).unwrap();
        assert_eq!(f.len(), 1);
        assert_eq!(f[0].verdict, Verdict::Fixed(b"a-b".to_vec()));
    }

    #[test]
    fn huffman_literal_name_authority_is_recognised() {
        let mut t = Table::new(65536);
        let name = huffman::encode(b":authority");
        let value = huffman::encode(b"discovery/dev/game");
        let mut block = vec![0x40, 0x80 | name.len() as u8];
        block.extend_from_slice(&name);
        block.push(0x80 | value.len() as u8);
        block.extend_from_slice(&value);
        let f = walk(&mut t, &block).unwrap();
        assert_eq!(f.len(), 1);
        assert!(f[0].huffman);
        assert_eq!(f[0].verdict, Verdict::Fixed(b"discovery-dev-game".to_vec()));
        assert_eq!(t.size, 10 + 18 + 32);
    }

    #[test]
    fn size_updates_evict_and_are_bounded() {
        let mut t = Table::new(8192);
        walk(&mut t, &[0x41, 0x01, b'x']).unwrap();
        assert_eq!(t.len(), 1);
        walk(&mut t, &[0x20]).unwrap();
        assert_eq!(t.len(), 0);
        // 0x3f 0xe1 0x3f = 31 + 0x61 + (0x3f << 7) = 8192: allowed.
        walk(&mut t, &[0x3f, 0xe1, 0x3f]).unwrap();
        assert_eq!(t.max, 8192);
        assert_eq!(
            walk(&mut t, &[0x3f, 0xe2, 0x3f]).unwrap_err(),
            HpackError::TableSize
        );
    }

    #[test]
    fn bad_blocks_are_errors_not_panics() {
        let mut t = Table::new(4096);
        assert_eq!(walk(&mut t, &[0x80]).unwrap_err(), HpackError::Index);
        assert_eq!(walk(&mut t, &[0xbe]).unwrap_err(), HpackError::Index);
        assert_eq!(
            walk(&mut t, &[0x41, 0x05, b'a']).unwrap_err(),
            HpackError::Truncated
        );
        assert_eq!(
            walk(&mut t, &[0x41, 0x7f]).unwrap_err(),
            HpackError::Truncated
        );
        assert_eq!(
            walk(&mut t, &[0x41, 0x7f, 0xff, 0xff, 0xff, 0xff, 0x7f]).unwrap_err(),
            HpackError::Integer
        );
        assert_eq!(
            walk(&mut t, &[0x41, 0x81, 0x00]).unwrap_err(),
            HpackError::Huffman
        );
    }
}
