//! Which `:authority` values need fixing, and what they become.
//!
//! h2 hands `:authority` to `http::uri::Authority`, which refuses characters
//! RFC 3986 does not allow in an authority (`/`, `?`, `#` end it early; a
//! `%` outside the userinfo, spaces and controls are refused). grpc-go puts
//! its target's endpoint there (`discovery%2Fdev%2Fgame`, or
//! `discovery/dev/game` before 1.57). Each refused character is replaced by
//! an allowed one whose HPACK Huffman code has the same length, so a
//! Huffman-coded value re-encodes to exactly as many bytes as before and the
//! decoded length (what the dynamic table counts) is unchanged.

use crate::huffman::CODE_LENGTHS;

/// What to do with one `:authority` value.
#[derive(Clone, Debug, PartialEq, Eq)]
pub(crate) enum Verdict {
    /// Accepted as it is.
    Valid,
    /// Refused; this same-length value is accepted.
    Fixed(Vec<u8>),
    /// Refused, and no same-length replacement exists.
    Unfixable,
}

/// Whether h2 (through `http::uri::Authority`) accepts `value`.
pub(crate) fn is_valid(value: &[u8]) -> bool {
    http::uri::Authority::try_from(value).is_ok()
}

/// Characters `http` refuses anywhere in an authority, or that end it.
fn refused(b: u8) -> bool {
    !(b.is_ascii_alphanumeric() || b"-._~!$&'()*+,;=:@[]".contains(&b))
}

/// An allowed character with a Huffman code of `bits` bits. None of them
/// has a structural meaning in an authority (`:`, `@`, `[`, `]`).
fn replacement_with_code_length(bits: u8) -> Option<u8> {
    match bits {
        6 => Some(b'-'),  // for '/', '%', ' '
        8 => Some(b'*'),  // no refused character has 8 bits; for completeness
        10 => Some(b'!'), // for '"', '?'
        11 => Some(b'+'), // for '|'
        13 => Some(b'~'), // for NUL
        _ => None,        // '#', '>' (12), '^', '}' (14), '<', '`', '{' (15), ...
    }
}

/// Decides what `value` becomes. Raw and Huffman-coded values get the same
/// replacements, so the fix does not depend on the encoder's choice.
pub(crate) fn verdict(value: &[u8]) -> Verdict {
    if is_valid(value) {
        return Verdict::Valid;
    }
    let mut fixed = value.to_vec();
    for b in &mut fixed {
        if refused(*b) {
            match replacement_with_code_length(CODE_LENGTHS[usize::from(*b)]) {
                Some(r) => *b = r,
                None => return Verdict::Unfixable,
            }
        }
    }
    // Refused characters were not the only problem (e.g. two ports): leave
    // it to h2 to reject.
    if is_valid(&fixed) {
        Verdict::Fixed(fixed)
    } else {
        Verdict::Unfixable
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn grpc_go_authorities_are_fixed_to_the_same_length() {
        assert_eq!(
            verdict(b"discovery%2Fdev%2Fgame"),
            Verdict::Fixed(b"discovery-2Fdev-2Fgame".to_vec())
        );
        assert_eq!(
            verdict(b"discovery/dev/game"),
            Verdict::Fixed(b"discovery-dev-game".to_vec())
        );
    }

    #[test]
    fn valid_authorities_stay() {
        for v in [
            &b"game"[..],
            b"127.0.0.1:50051",
            b"[::1]:80",
            b"user%20x@host",
            b"a.b-c_d~",
        ] {
            assert_eq!(
                verdict(v),
                Verdict::Valid,
                "{:?}",
                String::from_utf8_lossy(v)
            );
        }
    }

    #[test]
    fn what_has_no_same_length_replacement_is_left_to_h2() {
        assert_eq!(verdict(b"a#b"), Verdict::Unfixable);
        assert_eq!(verdict(b"a:1:2"), Verdict::Unfixable);
        assert_eq!(verdict(b""), Verdict::Unfixable);
        assert_eq!(verdict("é".as_bytes()), Verdict::Unfixable);
    }

    #[test]
    fn replacements_keep_code_lengths_and_are_allowed() {
        for b in 0..=255u8 {
            if !refused(b) {
                continue;
            }
            if let Some(r) = replacement_with_code_length(CODE_LENGTHS[usize::from(b)]) {
                assert_eq!(CODE_LENGTHS[usize::from(r)], CODE_LENGTHS[usize::from(b)]);
                assert!(!refused(r));
                assert!(is_valid(&[b'x', r, b'y']), "{r}");
            }
        }
    }
}
