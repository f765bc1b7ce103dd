//! The binary form of a scalar chunk: up to [`CHUNK_TARGET`] points of one
//! series, sorted by iteration, in one blob.
//!
//! Layout (all integers little-endian, varints LEB128):
//!
//! ```text
//! u8      format version (1)
//! varint  n, the number of points
//! n ×     iteration: the first zigzag-encoded, then zigzag deltas
//! n ×     timestamp (ms): the first zigzag-encoded, then zigzag deltas
//! n × 8   value: the IEEE 754 bits of the double, so NaN payloads and
//!         infinities come back bit for bit
//! ```
//!
//! Iterations usually step by one and timestamps by a few milliseconds, so
//! both take one or two bytes a point: a point costs about 10 bytes instead
//! of the 24 of its fixed-width form.

/// Preferred number of points of a chunk. Small enough that a chunk usually
/// falls inside one bucket of a 1000-point downsampled view of a long series
/// (so its summary can stand in for it), large enough that a billion points
/// are a few million rows.
pub(crate) const CHUNK_TARGET: usize = 256;

/// Appends of fewer points than this are merged into the series' last
/// chunk while it has room, so one-point-per-flush writers still fill
/// chunks; larger appends get chunks of their own (no read-modify-write on
/// the bulk path).
pub(crate) const CHUNK_MERGE_BELOW: usize = CHUNK_TARGET / 4;

const FORMAT_V1: u8 = 1;

/// One scalar value of a series.
#[derive(Debug, Clone, Copy, PartialEq)]
pub(crate) struct Point {
    /// The iteration (unique within a series).
    pub(crate) iter: i64,
    /// Milliseconds since the Unix epoch.
    pub(crate) ts: i64,
    /// The value, possibly NaN or infinite.
    pub(crate) value: f64,
}

/// Aggregates of a run of points. NaN values count in `count` only; `min`,
/// `max` and `sum` leave them out (NaN when no other value exists).
#[derive(Debug, Clone, Copy, PartialEq)]
pub(crate) struct Stats {
    pub(crate) count: u64,
    pub(crate) nonnan: u64,
    pub(crate) sum: f64,
    pub(crate) min: f64,
    pub(crate) max: f64,
}

impl Stats {
    pub(crate) const EMPTY: Stats = Stats {
        count: 0,
        nonnan: 0,
        sum: 0.0,
        min: f64::NAN,
        max: f64::NAN,
    };

    /// Adds one value.
    pub(crate) fn push(&mut self, value: f64) {
        self.count += 1;
        if value.is_nan() {
            return;
        }
        self.nonnan += 1;
        self.sum += value;
        if self.min.is_nan() || value < self.min {
            self.min = value;
        }
        if self.max.is_nan() || value > self.max {
            self.max = value;
        }
    }

    /// Adds the aggregates of another run.
    pub(crate) fn merge(&mut self, other: &Stats) {
        self.count += other.count;
        self.nonnan += other.nonnan;
        if other.nonnan > 0 {
            self.sum += other.sum;
        }
        if !other.min.is_nan() && (self.min.is_nan() || other.min < self.min) {
            self.min = other.min;
        }
        if !other.max.is_nan() && (self.max.is_nan() || other.max > self.max) {
            self.max = other.max;
        }
    }

    /// Mean of the non-NaN values; NaN when there is none.
    pub(crate) fn mean(&self) -> f64 {
        if self.nonnan == 0 {
            f64::NAN
        } else {
            self.sum / self.nonnan as f64
        }
    }
}

/// The summary stored beside a chunk's blob.
#[derive(Debug, Clone, Copy, PartialEq)]
pub(crate) struct ChunkMeta {
    /// Row id of the chunk.
    pub(crate) id: i64,
    /// Lowest iteration in the chunk.
    pub(crate) start_iter: i64,
    /// Highest iteration in the chunk.
    pub(crate) end_iter: i64,
    /// Smallest timestamp in the chunk.
    pub(crate) min_ts: i64,
    /// Largest timestamp in the chunk.
    pub(crate) max_ts: i64,
    /// Aggregates of its values.
    pub(crate) stats: Stats,
}

impl ChunkMeta {
    /// The summary of `points` (sorted by iteration, not empty).
    pub(crate) fn of(id: i64, points: &[Point]) -> ChunkMeta {
        let mut stats = Stats::EMPTY;
        let mut min_ts = i64::MAX;
        let mut max_ts = i64::MIN;
        for p in points {
            stats.push(p.value);
            min_ts = min_ts.min(p.ts);
            max_ts = max_ts.max(p.ts);
        }
        ChunkMeta {
            id,
            start_iter: points.first().map_or(0, |p| p.iter),
            end_iter: points.last().map_or(0, |p| p.iter),
            min_ts,
            max_ts,
            stats,
        }
    }
}

/// Bytes of a packed [`ChunkMeta`].
pub(crate) const META_BYTES: usize = 64;

impl ChunkMeta {
    /// The packed form stored beside the blob (little-endian; values as IEEE
    /// bits, so NaN and infinities survive on every engine).
    pub(crate) fn to_bytes(self) -> Vec<u8> {
        let mut out = Vec::with_capacity(META_BYTES);
        for v in [self.start_iter, self.end_iter, self.min_ts, self.max_ts] {
            out.extend_from_slice(&v.to_le_bytes());
        }
        out.extend_from_slice(&(self.stats.count as u32).to_le_bytes());
        out.extend_from_slice(&(self.stats.nonnan as u32).to_le_bytes());
        for v in [self.stats.sum, self.stats.min, self.stats.max] {
            out.extend_from_slice(&v.to_bits().to_le_bytes());
        }
        out
    }

    /// Unpacks [`ChunkMeta::to_bytes`]; the id is the chunk's start
    /// iteration (its key within the series).
    pub(crate) fn from_bytes(b: &[u8]) -> Result<ChunkMeta, CorruptChunk> {
        if b.len() != META_BYTES {
            return Err(CorruptChunk("chunk summary size"));
        }
        let i = |k: usize| {
            let mut a = [0u8; 8];
            a.copy_from_slice(&b[k..k + 8]);
            i64::from_le_bytes(a)
        };
        let u = |k: usize| {
            let mut a = [0u8; 4];
            a.copy_from_slice(&b[k..k + 4]);
            u64::from(u32::from_le_bytes(a))
        };
        let f = |k: usize| f64::from_bits(i(k) as u64);
        Ok(ChunkMeta {
            id: i(0),
            start_iter: i(0),
            end_iter: i(8),
            min_ts: i(16),
            max_ts: i(24),
            stats: Stats {
                count: u(32),
                nonnan: u(36),
                sum: f(40),
                min: f(48),
                max: f(56),
            },
        })
    }
}

/// A blob that does not decode: a bug or a damaged database.
#[derive(Debug, thiserror::Error)]
#[error("corrupt scalar chunk: {0}")]
pub(crate) struct CorruptChunk(&'static str);

fn zigzag(v: i64) -> u64 {
    ((v << 1) ^ (v >> 63)) as u64
}

fn unzigzag(v: u64) -> i64 {
    ((v >> 1) as i64) ^ -((v & 1) as i64)
}

fn put_varint(out: &mut Vec<u8>, mut v: u64) {
    while v >= 0x80 {
        out.push((v as u8) | 0x80);
        v >>= 7;
    }
    out.push(v as u8);
}

fn get_varint(data: &[u8], pos: &mut usize) -> Result<u64, CorruptChunk> {
    let mut v = 0u64;
    let mut shift = 0;
    loop {
        let byte = *data.get(*pos).ok_or(CorruptChunk("truncated varint"))?;
        *pos += 1;
        if shift >= 64 {
            return Err(CorruptChunk("varint too long"));
        }
        v |= u64::from(byte & 0x7f) << shift;
        if byte & 0x80 == 0 {
            return Ok(v);
        }
        shift += 7;
    }
}

/// Encodes `points` (sorted by iteration) into a chunk blob.
pub(crate) fn encode(points: &[Point]) -> Vec<u8> {
    let mut out = Vec::with_capacity(4 + points.len() * 12);
    out.push(FORMAT_V1);
    put_varint(&mut out, points.len() as u64);
    let mut prev = 0i64;
    for p in points {
        put_varint(&mut out, zigzag(p.iter.wrapping_sub(prev)));
        prev = p.iter;
    }
    prev = 0;
    for p in points {
        put_varint(&mut out, zigzag(p.ts.wrapping_sub(prev)));
        prev = p.ts;
    }
    for p in points {
        out.extend_from_slice(&p.value.to_bits().to_le_bytes());
    }
    out
}

/// Decodes a chunk blob, appending its points to `out`.
pub(crate) fn decode_into(data: &[u8], out: &mut Vec<Point>) -> Result<(), CorruptChunk> {
    if data.first() != Some(&FORMAT_V1) {
        return Err(CorruptChunk("unknown format"));
    }
    let mut pos = 1;
    let n = usize::try_from(get_varint(data, &mut pos)?).map_err(|_| CorruptChunk("count"))?;
    if n > data.len() {
        return Err(CorruptChunk("count larger than blob"));
    }
    let base = out.len();
    out.reserve(n);
    let mut prev = 0i64;
    for _ in 0..n {
        prev = prev.wrapping_add(unzigzag(get_varint(data, &mut pos)?));
        out.push(Point {
            iter: prev,
            ts: 0,
            value: 0.0,
        });
    }
    prev = 0;
    for p in &mut out[base..] {
        prev = prev.wrapping_add(unzigzag(get_varint(data, &mut pos)?));
        p.ts = prev;
    }
    let values = data
        .get(pos..pos + 8 * n)
        .ok_or(CorruptChunk("truncated values"))?;
    for (p, bytes) in out[base..].iter_mut().zip(values.chunks_exact(8)) {
        let mut b = [0u8; 8];
        b.copy_from_slice(bytes);
        p.value = f64::from_bits(u64::from_le_bytes(b));
    }
    Ok(())
}

/// Decodes a chunk blob.
pub(crate) fn decode(data: &[u8]) -> Result<Vec<Point>, CorruptChunk> {
    let mut out = Vec::new();
    decode_into(data, &mut out)?;
    Ok(out)
}

/// Splits `points` into runs of at most [`CHUNK_TARGET`] points of nearly
/// equal size.
pub(crate) fn split(points: &[Point]) -> impl Iterator<Item = &[Point]> {
    let pieces = points.len().div_ceil(CHUNK_TARGET).max(1);
    let size = points.len().div_ceil(pieces).max(1);
    points.chunks(size)
}

#[cfg(test)]
mod tests {
    use super::*;
    use proptest::prelude::*;

    proptest! {
        #[test]
        fn round_trips_bit_for_bit(raw in proptest::collection::vec((any::<i64>(), any::<i64>(), any::<u64>()), 0..300)) {
            let mut points: Vec<Point> = raw
                .iter()
                .map(|&(iter, ts, bits)| Point { iter, ts, value: f64::from_bits(bits) })
                .collect();
            points.sort_by_key(|p| p.iter);
            let back = decode(&encode(&points)).unwrap();
            prop_assert_eq!(back.len(), points.len());
            for (a, b) in back.iter().zip(&points) {
                prop_assert_eq!(a.iter, b.iter);
                prop_assert_eq!(a.ts, b.ts);
                prop_assert_eq!(a.value.to_bits(), b.value.to_bits());
            }
        }
    }

    #[test]
    fn summaries_pack_bit_for_bit() {
        let points = [
            Point {
                iter: -5,
                ts: 9,
                value: f64::NAN,
            },
            Point {
                iter: 7,
                ts: -3,
                value: f64::NEG_INFINITY,
            },
            Point {
                iter: 8,
                ts: 4,
                value: 2.5,
            },
        ];
        let meta = ChunkMeta::of(-5, &points);
        let back = ChunkMeta::from_bytes(&meta.to_bytes()).unwrap();
        assert_eq!(back.to_bytes(), meta.to_bytes());
        assert_eq!((back.id, back.start_iter, back.end_iter), (-5, -5, 8));
        assert_eq!((back.min_ts, back.max_ts), (-3, 9));
        assert_eq!(back.stats.min, f64::NEG_INFINITY);
        assert!(ChunkMeta::from_bytes(&[0; 3]).is_err());
    }

    #[test]
    fn consecutive_points_are_compact() {
        let points: Vec<Point> = (0..256)
            .map(|i| Point {
                iter: 1000 + i,
                ts: 1_700_000_000_000 + i * 7,
                value: i as f64,
            })
            .collect();
        let blob = encode(&points);
        assert!(blob.len() < 256 * 11, "{} bytes", blob.len());
    }

    #[test]
    fn garbage_is_an_error_not_a_panic() {
        assert!(decode(&[]).is_err());
        assert!(decode(&[1, 0xff]).is_err());
        assert!(decode(&[1, 3, 1, 1]).is_err());
        assert!(decode(&[2, 0]).is_err());
    }

    #[test]
    fn stats_leave_nan_out_and_keep_infinities() {
        let mut s = Stats::EMPTY;
        for v in [f64::NAN, 1.0, f64::INFINITY, -2.0] {
            s.push(v);
        }
        assert_eq!(s.count, 4);
        assert_eq!(s.nonnan, 3);
        assert_eq!(s.min, -2.0);
        assert_eq!(s.max, f64::INFINITY);
        assert_eq!(s.mean(), f64::INFINITY);
        let mut only_nan = Stats::EMPTY;
        only_nan.push(f64::NAN);
        assert!(only_nan.min.is_nan() && only_nan.mean().is_nan());
    }

    #[test]
    fn split_keeps_order_and_bounds() {
        let points: Vec<Point> = (0..1000)
            .map(|i| Point {
                iter: i,
                ts: 0,
                value: 0.0,
            })
            .collect();
        let parts: Vec<_> = split(&points).collect();
        assert_eq!(parts.len(), 4);
        assert!(parts.iter().all(|p| p.len() <= CHUNK_TARGET));
        assert_eq!(parts.iter().map(|p| p.len()).sum::<usize>(), 1000);
    }
}
