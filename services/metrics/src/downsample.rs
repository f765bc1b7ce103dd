//! Server-side downsampling of a scalar series, computed from its chunks.
//!
//! The bucketing is ClearML's (`_build_metric_interval`), made exact and
//! extended with the envelope:
//!
//! * only points with x in `[x_min, x_max]` count, single values
//!   (iteration -2^31) never do;
//! * when the series has fewer than `samples` points in the range (or
//!   `samples` is 0) every point is returned (`interval` 1);
//! * otherwise `interval = ceil((max_x - min_x + 1) / samples)`, a point
//!   falls in the bucket starting at `floor(x / interval) * interval`, empty
//!   buckets are omitted, and a bucket yields its lower bound, the mean of its
//!   values and their min, max and count.
//!
//! The computation works on chunk summaries first: a chunk whose x extent
//! lies inside the range and inside one bucket contributes its stored
//! aggregates without being read. Only chunks that straddle the range, a
//! bucket boundary, or hold a single value are decoded. [`run`] is therefore
//! a resumable step: it answers [`Step::Need`] with the chunks it must see
//! decoded, the caller fetches them, and calls it again with the larger
//! `decoded` map (at most three rounds).

use std::collections::{BTreeMap, HashMap};

use crate::chunk::{ChunkMeta, Point, Stats};

/// The iteration that marks a single value.
pub(crate) const SINGLE_VALUE_ITER: i64 = -2_147_483_648;

/// What x means.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub(crate) enum Axis {
    /// x is the iteration.
    Iteration,
    /// x is the timestamp in milliseconds.
    Timestamp,
}

/// How to reduce one series.
#[derive(Debug, Clone, Copy)]
pub(crate) struct SeriesQuery {
    pub(crate) axis: Axis,
    pub(crate) x_min: Option<i64>,
    pub(crate) x_max: Option<i64>,
    /// Maximum points; 0 returns every point.
    pub(crate) samples: u32,
}

/// One output point.
#[derive(Debug, Clone, Copy, PartialEq)]
pub(crate) struct Bucket {
    /// Lower bound of the bucket (the point's x when unbucketed).
    pub(crate) x: i64,
    /// Aggregates of the bucket's values.
    pub(crate) stats: Stats,
}

/// A reduced series.
#[derive(Debug, Clone, PartialEq)]
pub(crate) struct Downsampled {
    /// Bucket width; 1 when every point is returned.
    pub(crate) interval: i64,
    /// Points in the range before reduction.
    pub(crate) total: u64,
    /// The points, by x ascending.
    pub(crate) buckets: Vec<Bucket>,
}

/// The outcome of one round of [`run`].
#[derive(Debug)]
pub(crate) enum Step {
    /// Decode these chunks (by id) and call again.
    Need(Vec<i64>),
    /// The answer.
    Done(Downsampled),
}

impl Axis {
    fn of(self, p: &Point) -> i64 {
        match self {
            Axis::Iteration => p.iter,
            Axis::Timestamp => p.ts,
        }
    }

    fn extent(self, c: &ChunkMeta) -> (i64, i64) {
        match self {
            Axis::Iteration => (c.start_iter, c.end_iter),
            Axis::Timestamp => (c.min_ts, c.max_ts),
        }
    }
}

impl SeriesQuery {
    fn lo(&self) -> i64 {
        self.x_min.unwrap_or(i64::MIN)
    }

    fn hi(&self) -> i64 {
        self.x_max.unwrap_or(i64::MAX)
    }

    fn keeps(&self, p: &Point) -> bool {
        let x = self.axis.of(p);
        p.iter != SINGLE_VALUE_ITER && x >= self.lo() && x <= self.hi()
    }
}

/// Whether a chunk can be read through its summary alone for counting: it
/// lies inside the range and holds no single value.
fn inside(c: &ChunkMeta, q: &SeriesQuery) -> bool {
    let (lo, hi) = q.axis.extent(c);
    lo >= q.lo()
        && hi <= q.hi()
        && !(c.start_iter <= SINGLE_VALUE_ITER && SINGLE_VALUE_ITER <= c.end_iter)
}

fn outside(c: &ChunkMeta, q: &SeriesQuery) -> bool {
    let (lo, hi) = q.axis.extent(c);
    hi < q.lo() || lo > q.hi()
}

fn bucket_of(x: i64, interval: i64) -> i64 {
    let b = i128::from(x).div_euclid(i128::from(interval)) * i128::from(interval);
    i64::try_from(b).unwrap_or(i64::MIN)
}

/// The bucket width for a series of `total` points spanning `[min_x, max_x]`.
pub(crate) fn interval(min_x: i64, max_x: i64, samples: u32) -> i64 {
    let span = i128::from(max_x) - i128::from(min_x) + 1;
    let width = (span + i128::from(samples) - 1) / i128::from(samples.max(1));
    i64::try_from(width.max(1)).unwrap_or(i64::MAX)
}

/// One round of downsampling `chunks` (the series' chunks overlapping the
/// range, any order) with the chunks decoded so far.
pub(crate) fn run(
    chunks: &[ChunkMeta],
    decoded: &HashMap<i64, Vec<Point>>,
    q: &SeriesQuery,
) -> Step {
    let live: Vec<&ChunkMeta> = chunks.iter().filter(|c| !outside(c, q)).collect();
    let (whole, partial): (Vec<&ChunkMeta>, Vec<&ChunkMeta>) =
        live.iter().partition(|c| inside(c, q));
    let missing: Vec<i64> = partial
        .iter()
        .filter(|c| !decoded.contains_key(&c.id))
        .map(|c| c.id)
        .collect();
    if !missing.is_empty() {
        return Step::Need(missing);
    }

    // Points of the partial chunks that count, and the extent of the rest.
    let mut loose: Vec<Point> = partial
        .iter()
        .flat_map(|c| decoded[&c.id].iter().copied())
        .filter(|p| q.keeps(p))
        .collect();
    let mut total = loose.len() as u64;
    let mut min_x = i64::MAX;
    let mut max_x = i64::MIN;
    for p in &loose {
        let x = q.axis.of(p);
        min_x = min_x.min(x);
        max_x = max_x.max(x);
    }
    for c in &whole {
        total += c.stats.count;
        let (lo, hi) = q.axis.extent(c);
        min_x = min_x.min(lo);
        max_x = max_x.max(hi);
    }
    if total == 0 {
        return Step::Done(Downsampled {
            interval: 1,
            total: 0,
            buckets: Vec::new(),
        });
    }

    if q.samples == 0 || total < u64::from(q.samples) {
        let missing: Vec<i64> = whole
            .iter()
            .filter(|c| !decoded.contains_key(&c.id))
            .map(|c| c.id)
            .collect();
        if !missing.is_empty() {
            return Step::Need(missing);
        }
        loose.extend(whole.iter().flat_map(|c| decoded[&c.id].iter().copied()));
        loose.sort_by_key(|p| (q.axis.of(p), p.iter));
        let buckets = loose
            .iter()
            .map(|p| {
                let mut stats = Stats::EMPTY;
                stats.push(p.value);
                Bucket {
                    x: q.axis.of(p),
                    stats,
                }
            })
            .collect();
        return Step::Done(Downsampled {
            interval: 1,
            total,
            buckets,
        });
    }

    let width = interval(min_x, max_x, q.samples);
    let mut summarized = Vec::new();
    let mut to_decode = Vec::new();
    for c in &whole {
        let (lo, hi) = q.axis.extent(c);
        if bucket_of(lo, width) == bucket_of(hi, width) {
            summarized.push(*c);
        } else {
            to_decode.push(*c);
        }
    }
    let missing: Vec<i64> = to_decode
        .iter()
        .filter(|c| !decoded.contains_key(&c.id))
        .map(|c| c.id)
        .collect();
    if !missing.is_empty() {
        return Step::Need(missing);
    }
    let mut buckets: BTreeMap<i64, Stats> = BTreeMap::new();
    for c in summarized {
        let (lo, _) = q.axis.extent(c);
        buckets
            .entry(bucket_of(lo, width))
            .or_insert(Stats::EMPTY)
            .merge(&c.stats);
    }
    let points = to_decode
        .iter()
        .flat_map(|c| decoded[&c.id].iter())
        .chain(loose.iter());
    for p in points {
        buckets
            .entry(bucket_of(q.axis.of(p), width))
            .or_insert(Stats::EMPTY)
            .push(p.value);
    }
    Step::Done(Downsampled {
        interval: width,
        total,
        buckets: buckets
            .into_iter()
            .map(|(x, stats)| Bucket { x, stats })
            .collect(),
    })
}

/// Drives [`run`] to completion with a synchronous chunk reader.
#[cfg(test)]
pub(crate) fn run_with(
    chunks: &[ChunkMeta],
    q: &SeriesQuery,
    mut read: impl FnMut(i64) -> Vec<Point>,
) -> Downsampled {
    let mut decoded = HashMap::new();
    loop {
        match run(chunks, &decoded, q) {
            Step::Done(out) => return out,
            Step::Need(ids) => {
                for id in ids {
                    decoded.insert(id, read(id));
                }
            }
        }
    }
}

/// The ids of chunks that [`run`] asked for, without duplicates (used to
/// check how much a query decoded).
#[cfg(test)]
pub(crate) fn distinct(ids: &[i64]) -> usize {
    ids.iter().collect::<std::collections::HashSet<_>>().len()
}

#[cfg(test)]
mod tests {
    use super::*;
    use crate::chunk::{ChunkMeta, split};
    use proptest::prelude::*;

    /// The definition, applied to every point.
    fn reference(points: &[Point], q: &SeriesQuery) -> Downsampled {
        let mut kept: Vec<Point> = points.iter().copied().filter(|p| q.keeps(p)).collect();
        kept.sort_by_key(|p| (q.axis.of(p), p.iter));
        let total = kept.len() as u64;
        if total == 0 {
            return Downsampled {
                interval: 1,
                total,
                buckets: vec![],
            };
        }
        if q.samples == 0 || total < u64::from(q.samples) {
            let buckets = kept
                .iter()
                .map(|p| {
                    let mut stats = Stats::EMPTY;
                    stats.push(p.value);
                    Bucket {
                        x: q.axis.of(p),
                        stats,
                    }
                })
                .collect();
            return Downsampled {
                interval: 1,
                total,
                buckets,
            };
        }
        let min_x = kept.iter().map(|p| q.axis.of(p)).min().unwrap();
        let max_x = kept.iter().map(|p| q.axis.of(p)).max().unwrap();
        let span = i128::from(max_x) - i128::from(min_x) + 1;
        let width = ((span + i128::from(q.samples) - 1) / i128::from(q.samples)) as i64;
        let mut out: Vec<Bucket> = Vec::new();
        for p in &kept {
            let x = q.axis.of(p);
            let b = (x as i128).div_euclid(width as i128) * width as i128;
            let b = b as i64;
            match out.last_mut() {
                Some(last) if last.x == b => last.stats.push(p.value),
                _ => {
                    let mut stats = Stats::EMPTY;
                    stats.push(p.value);
                    out.push(Bucket { x: b, stats });
                }
            }
        }
        // Timestamps are not sorted by iteration: regroup.
        let mut merged: BTreeMap<i64, Stats> = BTreeMap::new();
        for b in out {
            merged.entry(b.x).or_insert(Stats::EMPTY).merge(&b.stats);
        }
        Downsampled {
            interval: width,
            total,
            buckets: merged
                .into_iter()
                .map(|(x, stats)| Bucket { x, stats })
                .collect(),
        }
    }

    fn close(a: f64, b: f64) -> bool {
        if a.is_nan() || b.is_nan() {
            return a.is_nan() && b.is_nan();
        }
        if a.is_infinite() || b.is_infinite() {
            return a == b;
        }
        (a - b).abs() <= 1e-9 * a.abs().max(b.abs()).max(1.0)
    }

    fn assert_same(got: &Downsampled, want: &Downsampled) {
        assert_eq!(got.interval, want.interval);
        assert_eq!(got.total, want.total);
        assert_eq!(got.buckets.len(), want.buckets.len());
        for (g, w) in got.buckets.iter().zip(&want.buckets) {
            assert_eq!(g.x, w.x);
            assert_eq!(g.stats.count, w.stats.count);
            assert_eq!(g.stats.nonnan, w.stats.nonnan);
            assert!(close(g.stats.min, w.stats.min), "{g:?} {w:?}");
            assert!(close(g.stats.max, w.stats.max), "{g:?} {w:?}");
            assert!(close(g.stats.mean(), w.stats.mean()), "{g:?} {w:?}");
        }
    }

    fn chunked(points: &[Point]) -> (Vec<ChunkMeta>, HashMap<i64, Vec<Point>>) {
        let mut metas = Vec::new();
        let mut store = HashMap::new();
        for (i, part) in split(points).enumerate() {
            let id = i as i64 + 1;
            metas.push(ChunkMeta::of(id, part));
            store.insert(id, part.to_vec());
        }
        (metas, store)
    }

    fn value() -> impl Strategy<Value = f64> {
        prop_oneof![
            20 => -1e6f64..1e6,
            1 => Just(f64::NAN),
            1 => Just(f64::INFINITY),
            1 => Just(f64::NEG_INFINITY),
        ]
    }

    fn series() -> impl Strategy<Value = Vec<Point>> {
        (
            -5000i64..5000,
            proptest::collection::vec((1i64..40, 0i64..5000, value()), 0..1500),
            any::<bool>(),
        )
            .prop_map(|(start, steps, with_single)| {
                let mut iter = start;
                let mut points: Vec<Point> = steps
                    .into_iter()
                    .map(|(step, ts, value)| {
                        iter += step;
                        Point {
                            iter,
                            ts: 1_000_000 + ts,
                            value,
                        }
                    })
                    .collect();
                if with_single {
                    points.insert(
                        0,
                        Point {
                            iter: SINGLE_VALUE_ITER,
                            ts: 1_000_000,
                            value: 42.0,
                        },
                    );
                }
                points
            })
    }

    proptest! {
        #![proptest_config(ProptestConfig::with_cases(200))]
        #[test]
        fn chunked_downsampling_matches_the_definition(
            points in series(),
            samples in prop_oneof![Just(0u32), 1u32..50, 50u32..2000],
            by_time in any::<bool>(),
            x_min in proptest::option::of(-6000i64..1_010_000),
            x_max in proptest::option::of(-6000i64..1_010_000),
        ) {
            let axis = if by_time { Axis::Timestamp } else { Axis::Iteration };
            let q = SeriesQuery { axis, x_min, x_max, samples };
            let (metas, store) = chunked(&points);
            let got = run_with(&metas, &q, |id| store[&id].clone());
            assert_same(&got, &reference(&points, &q));
        }
    }

    #[test]
    fn summaries_spare_most_decoding_of_a_long_series() {
        let points: Vec<Point> = (0..100_000)
            .map(|i| Point {
                iter: i,
                ts: i,
                value: (i % 7) as f64,
            })
            .collect();
        let (metas, store) = chunked(&points);
        let q = SeriesQuery {
            axis: Axis::Iteration,
            x_min: None,
            x_max: None,
            samples: 100,
        };
        let mut asked = Vec::new();
        let got = run_with(&metas, &q, |id| {
            asked.push(id);
            store[&id].clone()
        });
        assert_eq!(got.buckets.len(), 100);
        assert_eq!(got.interval, 1000);
        assert!(
            distinct(&asked) * 3 < metas.len(),
            "decoded {} of {} chunks",
            distinct(&asked),
            metas.len()
        );
        assert_same(&got, &reference(&points, &q));
    }

    #[test]
    fn interval_follows_clearml() {
        assert_eq!(interval(0, 999, 100), 10);
        assert_eq!(interval(0, 1000, 100), 11);
        assert_eq!(interval(5, 5, 10), 1);
        assert_eq!(interval(i64::MIN, i64::MAX, 1), i64::MAX);
    }
}
