//! Unsigned LEB128 varints and zigzag encoding, as used inside record
//! batches (record lengths, deltas, keys, values, headers). Frames and
//! request bodies use fixed-width little-endian integers, not varints.

use bytes::BufMut;

/// Longest encoding of a `u64` varint: ceil(64 / 7) bytes.
pub const MAX_VARINT_LEN: usize = 10;

/// Number of bytes `value` takes as a varint.
#[inline]
pub fn varint_len(value: u64) -> usize {
    // 1 byte for 0..=127, then one more per 7 significant bits.
    let bits = 64 - (value | 1).leading_zeros() as usize;
    bits.div_ceil(7)
}

/// Appends `value` as a varint.
#[inline]
pub fn put_varint(buf: &mut impl BufMut, mut value: u64) {
    while value >= 0x80 {
        buf.put_u8((value as u8) | 0x80);
        value >>= 7;
    }
    buf.put_u8(value as u8);
}

/// Decodes a varint from the front of `buf`, returning the value and the
/// number of bytes consumed, or `None` if `buf` ends early or the encoding is
/// longer than a `u64` allows.
#[inline]
pub fn get_varint(buf: &[u8]) -> Option<(u64, usize)> {
    // Fast path: most lengths in a batch are below 128.
    match buf.first() {
        Some(&b) if b < 0x80 => return Some((u64::from(b), 1)),
        None => return None,
        _ => {}
    }
    let mut value: u64 = 0;
    for (i, &byte) in buf.iter().take(MAX_VARINT_LEN).enumerate() {
        let low = u64::from(byte & 0x7f);
        if i == MAX_VARINT_LEN - 1 && byte > 1 {
            // The tenth byte may only carry the 64th bit.
            return None;
        }
        value |= low << (7 * i);
        if byte < 0x80 {
            return Some((value, i + 1));
        }
    }
    None
}

/// Maps signed to unsigned so that small magnitudes stay short.
#[inline]
pub fn zigzag_encode(value: i64) -> u64 {
    ((value << 1) ^ (value >> 63)) as u64
}

/// Inverse of [`zigzag_encode`].
#[inline]
pub fn zigzag_decode(value: u64) -> i64 {
    ((value >> 1) as i64) ^ -((value & 1) as i64)
}

#[cfg(test)]
mod tests {
    use super::*;
    use proptest::prelude::*;

    proptest! {
        #[test]
        fn varint_round_trips(value: u64) {
            let mut buf = Vec::new();
            put_varint(&mut buf, value);
            prop_assert_eq!(buf.len(), varint_len(value));
            prop_assert_eq!(get_varint(&buf), Some((value, buf.len())));
            // Any strict prefix is incomplete.
            prop_assert_eq!(get_varint(&buf[..buf.len() - 1]), None);
        }

        #[test]
        fn zigzag_round_trips(value: i64) {
            prop_assert_eq!(zigzag_decode(zigzag_encode(value)), value);
        }
    }

    #[test]
    fn overlong_varint_is_rejected() {
        assert_eq!(get_varint(&[0xff; 11]), None);
        // Ten bytes whose last carries more than the 64th bit.
        let mut bytes = [0xffu8; 10];
        bytes[9] = 0x02;
        assert_eq!(get_varint(&bytes), None);
        bytes[9] = 0x01;
        assert_eq!(get_varint(&bytes), Some((u64::MAX, 10)));
    }
}
