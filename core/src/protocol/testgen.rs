//! Random message values for the property tests, driven by a seed that proptest chooses.

use bytes::Bytes;

/// A small deterministic generator (SplitMix64): one seed, one message.
pub(crate) struct Gen {
    state: u64,
}

impl Gen {
    pub(crate) fn new(seed: u64) -> Gen {
        Gen { state: seed }
    }

    pub(crate) fn u64(&mut self) -> u64 {
        self.state = self.state.wrapping_add(0x9e37_79b9_7f4a_7c15);
        let mut z = self.state;
        z = (z ^ (z >> 30)).wrapping_mul(0xbf58_476d_1ce4_e5b9);
        z = (z ^ (z >> 27)).wrapping_mul(0x94d0_49bb_1331_11eb);
        z ^ (z >> 31)
    }

    pub(crate) fn one_in(&mut self, n: u64) -> bool {
        self.u64() % n == 0
    }

    /// Mostly small values, sometimes the extremes: edges are where codecs break.
    fn edgy(&mut self) -> u64 {
        match self.u64() % 8 {
            0 => 0,
            1 => u64::MAX,
            2 => 1 << (self.u64() % 64),
            3 => self.u64() % 300,
            _ => self.u64(),
        }
    }

    pub(crate) fn bool(&mut self) -> bool {
        self.one_in(2)
    }
    pub(crate) fn i8(&mut self) -> i8 {
        self.edgy() as i8
    }
    pub(crate) fn i16(&mut self) -> i16 {
        self.edgy() as i16
    }
    pub(crate) fn i32(&mut self) -> i32 {
        self.edgy() as i32
    }
    pub(crate) fn i64(&mut self) -> i64 {
        self.edgy() as i64
    }
    #[allow(dead_code)] // for schemas with u16 fields
    pub(crate) fn u16(&mut self) -> u16 {
        self.edgy() as u16
    }
    #[allow(dead_code)] // for schemas with f64 fields
    pub(crate) fn f64(&mut self) -> f64 {
        // Finite values only: NaN is not equal to itself.
        (self.u64() % 1_000_000) as f64 / 8.0
    }
    pub(crate) fn uuid(&mut self) -> super::wire::Uuid {
        let mut id = [0u8; 16];
        id[..8].copy_from_slice(&self.u64().to_be_bytes());
        id[8..].copy_from_slice(&self.u64().to_be_bytes());
        super::wire::Uuid(id)
    }
    pub(crate) fn count(&mut self) -> usize {
        (self.u64() % 4) as usize
    }
    pub(crate) fn string(&mut self) -> String {
        const ALPHABET: &[u8] = b"abcdefghijklmnopqrstuvwxyz0123456789._-";
        let len = (self.u64() % 12) as usize;
        let mut s: String = (0..len)
            .map(|_| ALPHABET[(self.u64() % ALPHABET.len() as u64) as usize] as char)
            .collect();
        if self.one_in(10) {
            s.push('é');
        }
        s
    }
    pub(crate) fn bytes(&mut self) -> Bytes {
        let len = (self.u64() % 24) as usize;
        (0..len)
            .map(|_| self.u64() as u8)
            .collect::<Vec<u8>>()
            .into()
    }
    /// A tag no schema uses, so it stays unknown on both sides of a round trip.
    pub(crate) fn unknown_tag(&mut self) -> u32 {
        20 + (self.u64() % 10) as u32
    }
}
