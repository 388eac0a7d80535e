//! HPACK's static Huffman code (RFC 7541, Appendix B).
//!
//! The code is canonical: codes are handed out in order of (length,
//! symbol), so the 257 code lengths determine every code. Only the lengths
//! are written down; codes and decoding tables are computed at compile time.

/// Code length in bits of each symbol; 256 is EOS.
#[rustfmt::skip]
pub(crate) const CODE_LENGTHS: [u8; 257] = [
    13, 23, 28, 28, 28, 28, 28, 28, 28, 24, 30, 28, 28, 30, 28, 28,
    28, 28, 28, 28, 28, 28, 30, 28, 28, 28, 28, 28, 28, 28, 28, 28,
     6, 10, 10, 12, 13,  6,  8, 11, 10, 10,  8, 11,  8,  6,  6,  6,
     5,  5,  5,  6,  6,  6,  6,  6,  6,  6,  7,  8, 15,  6, 12, 10,
    13,  6,  7,  7,  7,  7,  7,  7,  7,  7,  7,  7,  7,  7,  7,  7,
     7,  7,  7,  7,  7,  7,  7,  7,  8,  7,  8, 13, 19, 13, 14,  6,
    15,  5,  6,  5,  6,  5,  6,  6,  6,  5,  7,  7,  6,  6,  6,  5,
     6,  7,  6,  5,  5,  6,  7,  7,  7,  7,  7, 15, 11, 14, 13, 28,
    20, 22, 20, 20, 22, 22, 22, 23, 22, 23, 23, 23, 23, 23, 24, 23,
    24, 24, 22, 23, 24, 23, 23, 23, 23, 21, 22, 23, 22, 23, 23, 24,
    22, 21, 20, 22, 22, 23, 23, 21, 23, 22, 22, 24, 21, 22, 23, 23,
    21, 21, 22, 21, 23, 22, 23, 23, 20, 22, 22, 22, 23, 22, 22, 23,
    26, 26, 20, 19, 22, 23, 22, 25, 26, 26, 26, 27, 27, 26, 24, 25,
    19, 21, 26, 27, 27, 26, 27, 24, 21, 21, 26, 26, 28, 27, 27, 27,
    20, 24, 20, 21, 22, 21, 21, 23, 22, 22, 25, 25, 24, 24, 26, 23,
    26, 27, 26, 26, 27, 27, 27, 27, 27, 28, 27, 27, 27, 27, 27, 26,
    30,
];

const EOS: u16 = 256;
const MAX_LEN: usize = 30;

/// Canonical codes, right-aligned in a `u32`.
pub(crate) const CODES: [u32; 257] = {
    let mut codes = [0u32; 257];
    let mut next = 0u32;
    let mut len = 1;
    while len <= MAX_LEN {
        let mut s = 0;
        while s < 257 {
            if CODE_LENGTHS[s] as usize == len {
                codes[s] = next;
                next += 1;
            }
            s += 1;
        }
        next <<= 1;
        len += 1;
    }
    codes
};

/// For each length: the first code of that length, how many codes have it,
/// and where its symbols start in [`SORTED`].
struct Canon {
    first: [u32; MAX_LEN + 1],
    count: [u32; MAX_LEN + 1],
    offset: [u16; MAX_LEN + 1],
    sorted: [u16; 257],
}

const CANON: Canon = {
    let mut c = Canon {
        first: [0; MAX_LEN + 1],
        count: [0; MAX_LEN + 1],
        offset: [0; MAX_LEN + 1],
        sorted: [0; 257],
    };
    let mut n = 0usize;
    let mut len = 1;
    while len <= MAX_LEN {
        c.offset[len] = n as u16;
        let mut s = 0;
        while s < 257 {
            if CODE_LENGTHS[s] as usize == len {
                if c.count[len] == 0 {
                    c.first[len] = CODES[s];
                }
                c.count[len] += 1;
                c.sorted[n] = s as u16;
                n += 1;
            }
            s += 1;
        }
        len += 1;
    }
    c
};

/// Why a Huffman string does not decode.
#[derive(Clone, Copy, Debug, PartialEq, Eq)]
pub(crate) enum HuffmanError {
    /// The EOS symbol appeared in the data.
    Eos,
    /// More than 7 bits of padding, or padding that is not all ones.
    Padding,
}

/// Decodes `data`, handing each symbol to `sink`.
pub(crate) fn decode(data: &[u8], mut sink: impl FnMut(u8)) -> Result<(), HuffmanError> {
    let mut code = 0u32;
    let mut len = 0usize;
    for &byte in data {
        for shift in (0..8).rev() {
            code = (code << 1) | u32::from((byte >> shift) & 1);
            len += 1;
            let idx = code.wrapping_sub(CANON.first[len]);
            if CANON.count[len] != 0 && code >= CANON.first[len] && idx < CANON.count[len] {
                let sym = CANON.sorted[usize::from(CANON.offset[len]) + idx as usize];
                if sym == EOS {
                    return Err(HuffmanError::Eos);
                }
                // Symbols other than EOS are bytes.
                sink(sym as u8);
                code = 0;
                len = 0;
            } else if len == MAX_LEN {
                // Every 30-bit pattern is a code (EOS is the all-ones one),
                // so this is unreachable; stay total anyway.
                return Err(HuffmanError::Padding);
            }
        }
    }
    // What is left must be a prefix of EOS (all ones), shorter than a byte.
    if len > 7 || code != (1u32 << len) - 1 {
        return Err(HuffmanError::Padding);
    }
    Ok(())
}

/// The encoded length in bytes of `value`.
pub(crate) fn encoded_len(value: &[u8]) -> usize {
    let bits: usize = value
        .iter()
        .map(|&b| usize::from(CODE_LENGTHS[usize::from(b)]))
        .sum();
    bits.div_ceil(8)
}

/// Encodes `value` into `out`, which must be exactly
/// [`encoded_len`]`(value)` bytes; the last byte is padded with ones.
/// Returns false (and leaves `out` alone) when the length is wrong.
pub(crate) fn encode_into(value: &[u8], out: &mut [u8]) -> bool {
    if out.len() != encoded_len(value) {
        return false;
    }
    let mut acc = 0u64;
    let mut bits = 0u32;
    let mut i = 0;
    for &b in value {
        let len = u32::from(CODE_LENGTHS[usize::from(b)]);
        acc = (acc << len) | u64::from(CODES[usize::from(b)]);
        bits += len;
        while bits >= 8 {
            bits -= 8;
            out[i] = (acc >> bits) as u8;
            i += 1;
        }
        acc &= (1u64 << bits) - 1;
    }
    if bits > 0 {
        let pad = 8 - bits;
        out[i] = ((acc << pad) | ((1u64 << pad) - 1)) as u8;
    }
    true
}

/// Huffman-encodes `value` (for tests and encoders).
#[cfg(test)]
pub(crate) fn encode(value: &[u8]) -> Vec<u8> {
    let mut out = vec![0; encoded_len(value)];
    encode_into(value, &mut out);
    out
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn canonical_codes_match_known_ones() {
        assert_eq!(CODES[256], 0x3fff_ffff, "EOS is 30 ones");
        assert_eq!(CODES[usize::from(b'0')], 0x0);
        assert_eq!(CODES[usize::from(b' ')], 0x14);
        assert_eq!(CODES[usize::from(b'/')], 0x18);
        assert_eq!(CODES[usize::from(b'%')], 0x15);
        assert_eq!(CODES[usize::from(b'a')], 0x3);
        assert_eq!(CODES[0], 0x1ff8);
        assert_eq!(CODES[255], 0x3ff_ffee);
    }

    #[test]
    fn rfc_7541_c_4_1_www_example_com() {
        let encoded = encode(b"www.example.com");
        assert_eq!(
            encoded,
            [
                0xf1, 0xe3, 0xc2, 0xe5, 0xf2, 0x3a, 0x6b, 0xa0, 0xab, 0x90, 0xf4, 0xff
            ]
        );
        let mut out = Vec::new();
        decode(&encoded, |b| out.push(b)).unwrap();
        assert_eq!(out, b"www.example.com");
    }

    #[test]
    fn every_byte_round_trips() {
        let all: Vec<u8> = (0..=255).collect();
        let mut out = Vec::new();
        decode(&encode(&all), |b| out.push(b)).unwrap();
        assert_eq!(out, all);
    }

    #[test]
    fn bad_padding_and_eos_are_errors() {
        // 'a' (00011) followed by three zero bits: padding must be ones.
        assert_eq!(decode(&[0b0001_1000], |_| {}), Err(HuffmanError::Padding));
        // Eight ones is more than 7 bits of padding.
        assert_eq!(decode(&[0xff], |_| {}), Err(HuffmanError::Padding));
        assert_eq!(
            decode(&[0xff, 0xff, 0xff, 0xff], |_| {}),
            Err(HuffmanError::Eos)
        );
    }
}
