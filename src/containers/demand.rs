//! How many warm containers a pool key should hold, from the requests it saw.
//!
//! A key's target is the most requests that arrived in any `SPAN` of the last `WINDOW`,
//! kept between the key's configured minimum and the pool's maximum (a key configured
//! for none keeps none): a pool of that size serves the busiest few seconds of the last
//! minute warm even if no refill finished meanwhile, and it shrinks back to the minimum
//! a minute after the demand went away.
//! The numbers behind a target are kept so that `GET /pool` can say why.

use std::collections::VecDeque;
use std::time::{Duration, Instant};

use serde_json::{json, Value};

/// How far back requests count.
pub const WINDOW: Duration = Duration::from_secs(60);
/// The span whose busiest instance sets the target.
pub const SPAN: Duration = Duration::from_secs(5);
/// Most arrival times kept (more than any target needs to see: a span holding this many
/// is far over every maximum).
const MAX_SEEN: usize = 4096;

/// The fast requests one key saw in the last `WINDOW`.
#[derive(Debug, Default)]
pub struct Demand {
    seen: VecDeque<Instant>,
}

impl Demand {
    /// Counts a request that wanted a warm container at `at` (served or not).
    pub fn record(&mut self, at: Instant) {
        self.forget(at);
        if self.seen.len() == MAX_SEEN {
            self.seen.pop_front();
        }
        self.seen.push_back(at);
    }

    fn forget(&mut self, now: Instant) {
        while let Some(first) = self.seen.front() {
            if now.saturating_duration_since(*first) <= WINDOW {
                break;
            }
            self.seen.pop_front();
        }
    }

    /// The most requests within any `SPAN` of the last `WINDOW`.
    pub fn busiest(&mut self, now: Instant) -> usize {
        self.forget(now);
        let mut busiest = 0;
        let mut start = 0;
        for (end, at) in self.seen.iter().enumerate() {
            while at.saturating_duration_since(self.seen[start]) >= SPAN {
                start += 1;
            }
            busiest = busiest.max(end - start + 1);
        }
        busiest
    }

    /// Requests in the last `WINDOW`.
    pub fn recent(&mut self, now: Instant) -> usize {
        self.forget(now);
        self.seen.len()
    }
}

/// A key's target and the figures it came from.
#[derive(Debug, Clone, Copy, Default, PartialEq, Eq)]
pub struct Sizing {
    pub min: usize,
    /// The most warm containers of all keys together (`--pool-max`).
    pub max: usize,
    pub busiest: usize,
    pub recent: usize,
    /// What the key would keep alone: `busiest` between `min` and `max` (0 if `min`
    /// is 0).
    pub wanted: usize,
    /// What it keeps: `wanted`, less its cut of the room it shares (see `share`).
    pub target: usize,
}

impl Sizing {
    pub fn new(min: usize, max: usize, demand: &mut Demand, now: Instant) -> Sizing {
        let busiest = demand.busiest(now);
        let wanted = match min {
            // A key configured for none keeps none, however busy.
            0 => 0,
            _ => busiest.clamp(min, max.max(min)),
        };
        Sizing {
            min,
            max,
            busiest,
            recent: demand.recent(now),
            wanted,
            target: wanted,
        }
    }

    /// What it wants beyond its minimum.
    fn growth(&self) -> usize {
        self.wanted.saturating_sub(self.min)
    }

    /// Why the target is what it is, in words.
    pub fn why(&self) -> String {
        let (window, span) = (WINDOW.as_secs(), SPAN.as_secs());
        let seen = format!(
            "the busiest {span} s of the last {window} s had {} requests",
            self.busiest
        );
        if self.min == 0 {
            format!("{seen}; none are kept for this key (its size is 0)")
        } else if self.target < self.wanted {
            format!(
                "{seen}; {} are kept, sharing --pool-max {} with the other keys",
                self.target, self.max
            )
        } else if self.busiest <= self.min {
            format!("{seen}; the minimum is {}", self.min)
        } else if self.busiest >= self.max {
            format!("{seen}; the maximum is {} (--pool-max)", self.max)
        } else {
            format!("{seen}, so that many are kept warm")
        }
    }

    pub fn to_json(self) -> Value {
        json!({
            "min": self.min,
            "max": self.max,
            "why": self.why(),
            "demand": {
                "window_s": WINDOW.as_secs(),
                "span_s": SPAN.as_secs(),
                "busiest_span": self.busiest,
                "in_window": self.recent,
            },
        })
    }
}

/// Sets the targets of all keys so that together they keep at most `max` (or the sum
/// of their minimums, if that is more): every key keeps its minimum, and the room above
/// the minimums is shared in proportion to what each key wants beyond its own.
pub fn share<'a>(sizings: impl IntoIterator<Item = &'a mut Sizing>, max: usize) {
    let mut sizings: Vec<&mut Sizing> = sizings.into_iter().collect();
    let floor: usize = sizings.iter().map(|s| s.min).sum();
    let room = max.saturating_sub(floor);
    let growth: usize = sizings.iter().map(|s| s.growth()).sum();
    for sizing in &mut sizings {
        sizing.target = if growth <= room {
            sizing.wanted
        } else {
            sizing.wanted - sizing.growth() + sizing.growth() * room / growth
        };
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    fn demand_at(start: Instant, offsets_ms: &[u64]) -> Demand {
        let mut demand = Demand::default();
        for ms in offsets_ms {
            demand.record(start + Duration::from_millis(*ms));
        }
        demand
    }

    #[test]
    fn the_busiest_span_counts_requests_less_than_a_span_apart() {
        let start = Instant::now();
        // Two per second for 10 s: 10 in any 5 s.
        let offsets: Vec<u64> = (0..20).map(|i| i * 500).collect();
        let mut demand = demand_at(start, &offsets);
        let now = start + Duration::from_millis(9_500);
        assert_eq!(demand.busiest(now), 10);
        assert_eq!(demand.recent(now), 20);
        // A burst of 7 within a second among sparse requests.
        let mut demand = demand_at(
            start,
            &[
                0, 10_000, 20_000, 20_100, 20_200, 20_300, 20_400, 20_500, 20_600, 40_000,
            ],
        );
        assert_eq!(demand.busiest(start + Duration::from_secs(40)), 7);
    }

    #[test]
    fn requests_older_than_the_window_are_forgotten() {
        let start = Instant::now();
        let mut demand = demand_at(start, &[0, 100, 200]);
        assert_eq!(demand.busiest(start + WINDOW), 3);
        assert_eq!(
            demand.busiest(start + WINDOW + Duration::from_millis(150)),
            1
        );
        assert_eq!(demand.busiest(start + WINDOW * 2), 0);
        assert_eq!(demand.recent(start + WINDOW * 2), 0);
    }

    fn burst_offsets() -> Vec<u64> {
        (0..40).collect()
    }

    #[test]
    fn the_target_stays_between_the_minimum_and_the_maximum() {
        let start = Instant::now();
        let sizing = |offsets: &[u64], min, max| {
            let mut demand = demand_at(start, offsets);
            Sizing::new(min, max, &mut demand, start + Duration::from_secs(1))
        };
        let idle = sizing(&[], 4, 16);
        assert_eq!(idle.target, 4);
        assert!(idle.why().ends_with("the minimum is 4"), "{}", idle.why());
        let some = sizing(&[0, 100, 200, 300, 400, 500], 4, 16);
        assert_eq!(some.target, 6);
        assert!(
            some.why().contains("had 6 requests, so that many"),
            "{}",
            some.why()
        );
        let burst = sizing(&burst_offsets(), 4, 16);
        assert_eq!(burst.target, 16);
        assert!(
            burst.why().contains("maximum is 16 (--pool-max)"),
            "{}",
            burst.why()
        );
        // A key configured for none keeps none.
        let off = sizing(&burst_offsets(), 0, 16);
        assert_eq!(off.target, 0);
        assert!(off.why().ends_with("(its size is 0)"), "{}", off.why());
        // A minimum above the maximum wins: a key configured for N keeps N.
        assert_eq!(sizing(&[], 32, 16).target, 32);
    }

    #[test]
    fn keys_share_the_maximum_above_their_minimums() {
        let start = Instant::now();
        let now = start + Duration::from_secs(1);
        let sized =
            |offsets: &[u64], min| Sizing::new(min, 16, &mut demand_at(start, offsets), now);
        // Room for both: each keeps what it wants.
        let mut a = sized(&[0, 1, 2, 3, 4, 5], 4);
        let mut b = sized(&[0, 1, 2], 2);
        share([&mut a, &mut b], 16);
        assert_eq!((a.target, b.target), (6, 3));
        // Both busy: 4 + 2 kept, and the 10 above them shared 12 : 14 (what each
        // wants beyond its minimum), rounded down.
        let mut a = sized(&burst_offsets(), 4);
        let mut b = sized(&burst_offsets(), 2);
        share([&mut a, &mut b], 16);
        assert_eq!((a.target, b.target), (4 + 4, 2 + 5));
        assert!(
            a.why()
                .contains("8 are kept, sharing --pool-max 16 with the other keys"),
            "{}",
            a.why()
        );
        // Sixteen busy keys added by requests (2 each) keep their minimums: 32 in all,
        // never more.
        let mut keys: Vec<Sizing> = (0..16).map(|_| sized(&burst_offsets(), 2)).collect();
        share(keys.iter_mut(), 16);
        assert!(keys.iter().all(|key| key.target == 2));
        // A key of size 0 wants nothing and takes nothing.
        let mut off = sized(&burst_offsets(), 0);
        let mut on = sized(&burst_offsets(), 4);
        share([&mut off, &mut on], 16);
        assert_eq!((off.target, on.target), (0, 16));
    }

    #[test]
    fn arrival_times_kept_are_bounded() {
        let start = Instant::now();
        let mut demand = Demand::default();
        for i in 0..(MAX_SEEN as u32 + 100) {
            demand.record(start + Duration::from_micros(u64::from(i)));
        }
        assert_eq!(demand.recent(start + Duration::from_secs(1)), MAX_SEEN);
    }
}
