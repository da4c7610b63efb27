//! Retry delay policy: exponential growth, a cap, four jitter modes, attempt and time budgets.
//!
//! `max_attempts` counts *retries* (re-attempts after a failure), so `delays()` yields exactly one delay
//! per allowed retry: `Backoff { initial: 0.2, factor: 2, jitter: None, max_attempts: Some(3) }` yields
//! 0.2, 0.4, 0.8 s. `deadline` bounds the sum of the delays (and, in the reconnect loop, the wall-clock
//! length of an outage).

use std::sync::atomic::{AtomicU64, Ordering};
use std::time::Duration;

#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum Jitter {
    /// delay = uniform(0, d)
    Full,
    /// delay = d/2 + uniform(0, d/2)
    Equal,
    /// delay = min(max_delay, uniform(initial, 3 * previous))
    Decorrelated,
    /// delay = d
    None,
}

impl Jitter {
    pub fn parse(s: &str) -> Result<Self, BackoffError> {
        match s {
            "full" => Ok(Jitter::Full),
            "equal" => Ok(Jitter::Equal),
            "decorrelated" => Ok(Jitter::Decorrelated),
            "none" => Ok(Jitter::None),
            other => Err(BackoffError(format!(
                "jitter must be one of 'full', 'equal', 'decorrelated', 'none', not {other:?}"
            ))),
        }
    }

    pub fn as_str(self) -> &'static str {
        match self {
            Jitter::Full => "full",
            Jitter::Equal => "equal",
            Jitter::Decorrelated => "decorrelated",
            Jitter::None => "none",
        }
    }
}

#[derive(Debug, Clone, PartialEq, thiserror::Error)]
#[error("{0}")]
pub struct BackoffError(pub String);

#[derive(Debug, Clone, PartialEq)]
pub struct Backoff {
    pub initial: f64,
    pub factor: f64,
    pub max_delay: f64,
    pub jitter: Jitter,
    pub max_attempts: Option<u32>,
    pub deadline: Option<f64>,
    pub seed: Option<u64>,
}

impl Default for Backoff {
    fn default() -> Self {
        Backoff {
            initial: 0.3,
            factor: 2.0,
            max_delay: 7.0,
            jitter: Jitter::Full,
            max_attempts: None,
            deadline: None,
            seed: None,
        }
    }
}

/// Largest delay or deadline accepted, in seconds (a day). Anything larger is a unit mistake.
pub const MAX_SECONDS: f64 = 86_400.0;

fn check_seconds(name: &str, v: f64, allow_zero: bool) -> Result<(), BackoffError> {
    if !v.is_finite() {
        return Err(BackoffError(format!("{name} must be a finite number of seconds, got {v}")));
    }
    if v < 0.0 || (!allow_zero && v == 0.0) {
        let bound = if allow_zero { ">= 0" } else { "> 0" };
        return Err(BackoffError(format!("{name} must be {bound} seconds, got {v}")));
    }
    if v > MAX_SECONDS {
        return Err(BackoffError(format!("{name} must be <= {MAX_SECONDS} seconds, got {v}")));
    }
    Ok(())
}

impl Backoff {
    /// Validate every field; the Python constructor and every Rust caller go through this.
    pub fn validate(&self) -> Result<(), BackoffError> {
        check_seconds("initial", self.initial, true)?;
        check_seconds("max_delay", self.max_delay, true)?;
        if !self.factor.is_finite() || self.factor < 1.0 {
            return Err(BackoffError(format!("factor must be a finite number >= 1, got {}", self.factor)));
        }
        if self.max_delay < self.initial {
            return Err(BackoffError(format!("max_delay ({}) must be >= initial ({})", self.max_delay, self.initial)));
        }
        if let Some(d) = self.deadline {
            check_seconds("deadline", d, false)?;
        }
        Ok(())
    }

    /// The delays for one retry episode: one per allowed retry, capped by `deadline` (sum of delays).
    pub fn delays(&self) -> Delays {
        Delays::new(self, self.max_attempts)
    }

    /// Like `delays()` but ignoring `max_attempts`; used by loops that count attempts themselves.
    pub fn delays_unbounded(&self) -> Delays {
        Delays::new(self, None)
    }

    pub fn deadline_duration(&self) -> Option<Duration> {
        self.deadline.map(Duration::from_secs_f64)
    }
}

/// SplitMix64: tiny, fast, good enough for jitter, and reproducible from a seed.
#[derive(Debug, Clone)]
pub struct Rng(u64);

static SEED_COUNTER: AtomicU64 = AtomicU64::new(0x9E37_79B9_7F4A_7C15);

impl Rng {
    pub fn new(seed: Option<u64>) -> Self {
        match seed {
            Some(s) => Rng(s),
            None => {
                let nanos = std::time::SystemTime::now()
                    .duration_since(std::time::UNIX_EPOCH)
                    .map(|d| d.as_nanos() as u64)
                    .unwrap_or(0);
                let bump = SEED_COUNTER.fetch_add(0x9E37_79B9_7F4A_7C15, Ordering::Relaxed);
                Rng(nanos ^ bump ^ (std::process::id() as u64).rotate_left(32))
            }
        }
    }

    pub fn next_u64(&mut self) -> u64 {
        self.0 = self.0.wrapping_add(0x9E37_79B9_7F4A_7C15);
        let mut z = self.0;
        z = (z ^ (z >> 30)).wrapping_mul(0xBF58_476D_1CE4_E5B9);
        z = (z ^ (z >> 27)).wrapping_mul(0x94D0_49BB_1331_11EB);
        z ^ (z >> 31)
    }

    /// Uniform in [0, 1).
    pub fn next_f64(&mut self) -> f64 {
        (self.next_u64() >> 11) as f64 * (1.0 / (1u64 << 53) as f64)
    }

    pub fn uniform(&mut self, lo: f64, hi: f64) -> f64 {
        lo + (hi - lo) * self.next_f64()
    }
}

/// Iterator of retry delays. Finite when the policy has `max_attempts` or `deadline`.
#[derive(Debug, Clone)]
pub struct Delays {
    policy: Backoff,
    limit: Option<u32>,
    rng: Rng,
    n: u32,
    prev: f64,
    total: f64,
}

impl Delays {
    fn new(policy: &Backoff, limit: Option<u32>) -> Self {
        Delays { policy: policy.clone(), limit, rng: Rng::new(policy.seed), n: 0, prev: policy.initial, total: 0.0 }
    }

    /// How many delays have been produced so far.
    pub fn produced(&self) -> u32 {
        self.n
    }

    fn raw(&self, n: u32) -> f64 {
        // exponent capped so factor^n cannot overflow to inf for long-running loops.
        let exp = self.policy.factor.powi(n.min(1024) as i32);
        let d = self.policy.initial * exp;
        if d.is_finite() {
            d.min(self.policy.max_delay)
        } else {
            self.policy.max_delay
        }
    }
}

impl Iterator for Delays {
    type Item = Duration;

    fn next(&mut self) -> Option<Duration> {
        if let Some(limit) = self.limit {
            if self.n >= limit {
                return None;
            }
        }
        let p = &self.policy;
        let base = self.raw(self.n);
        let secs = match p.jitter {
            Jitter::None => base,
            Jitter::Full => self.rng.uniform(0.0, base),
            Jitter::Equal => base / 2.0 + self.rng.uniform(0.0, base / 2.0),
            Jitter::Decorrelated => {
                let hi = (self.prev * 3.0).max(p.initial);
                self.rng.uniform(p.initial, hi).min(p.max_delay)
            }
        };
        if let Some(deadline) = p.deadline {
            if self.total + secs > deadline {
                return None;
            }
        }
        self.prev = secs;
        self.total += secs;
        self.n += 1;
        Some(Duration::from_secs_f64(secs.max(0.0)))
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    fn secs(b: &Backoff) -> Vec<f64> {
        b.delays().map(|d| (d.as_secs_f64() * 1e6).round() / 1e6).collect()
    }

    #[test]
    fn no_jitter_is_exponential_and_capped() {
        let b = Backoff {
            initial: 0.2,
            factor: 2.0,
            max_delay: 1.0,
            jitter: Jitter::None,
            max_attempts: Some(5),
            ..Default::default()
        };
        assert_eq!(secs(&b), vec![0.2, 0.4, 0.8, 1.0, 1.0]);
    }

    #[test]
    fn max_attempts_counts_retries() {
        let b =
            Backoff { initial: 0.2, factor: 2.0, jitter: Jitter::None, max_attempts: Some(3), ..Default::default() };
        assert_eq!(secs(&b), vec![0.2, 0.4, 0.8]);
        let zero = Backoff { max_attempts: Some(0), ..Default::default() };
        assert_eq!(zero.delays().count(), 0);
    }

    #[test]
    fn deadline_caps_the_sum() {
        let b = Backoff {
            initial: 1.0,
            factor: 2.0,
            max_delay: 100.0,
            jitter: Jitter::None,
            deadline: Some(7.5),
            ..Default::default()
        };
        // 1 + 2 + 4 = 7 <= 7.5, the next (8) would exceed it.
        assert_eq!(secs(&b), vec![1.0, 2.0, 4.0]);
    }

    #[test]
    fn jitter_bounds_hold() {
        for (j, lo_frac) in [(Jitter::Full, 0.0), (Jitter::Equal, 0.5)] {
            let b = Backoff {
                initial: 0.5,
                factor: 2.0,
                max_delay: 4.0,
                jitter: j,
                max_attempts: Some(2000),
                seed: Some(7),
                ..Default::default()
            };
            let mut d = b.delays();
            for n in 0..2000u32 {
                let base = (0.5 * 2f64.powi(n.min(30) as i32)).min(4.0);
                let v = d.next().unwrap().as_secs_f64();
                assert!(v >= base * lo_frac - 1e-9 && v <= base + 1e-9, "{j:?} n={n} v={v} base={base}");
            }
        }
        let b = Backoff {
            initial: 0.1,
            factor: 2.0,
            max_delay: 3.0,
            jitter: Jitter::Decorrelated,
            max_attempts: Some(500),
            seed: Some(1),
            ..Default::default()
        };
        assert!(b.delays().all(|d| d.as_secs_f64() >= 0.1 - 1e-9 && d.as_secs_f64() <= 3.0 + 1e-9));
    }

    #[test]
    fn seed_makes_it_reproducible_and_unseeded_differs() {
        let b = Backoff { max_attempts: Some(20), seed: Some(42), ..Default::default() };
        assert_eq!(secs(&b), secs(&b));
        let u = Backoff { max_attempts: Some(20), ..Default::default() };
        assert_ne!(secs(&u), secs(&u));
    }

    #[test]
    fn full_jitter_mean_is_about_half() {
        let b = Backoff {
            initial: 1.0,
            factor: 1.0,
            max_delay: 1.0,
            jitter: Jitter::Full,
            max_attempts: Some(20_000),
            seed: Some(3),
            ..Default::default()
        };
        let mean: f64 = b.delays().map(|d| d.as_secs_f64()).sum::<f64>() / 20_000.0;
        assert!((mean - 0.5).abs() < 0.02, "mean {mean}");
    }

    #[test]
    fn validation_rejects_nonsense() {
        let bad = [
            Backoff { initial: -1.0, ..Default::default() },
            Backoff { initial: f64::NAN, ..Default::default() },
            Backoff { factor: 0.5, ..Default::default() },
            Backoff { factor: f64::INFINITY, ..Default::default() },
            Backoff { initial: 5.0, max_delay: 1.0, ..Default::default() },
            Backoff { deadline: Some(0.0), ..Default::default() },
            Backoff { max_delay: 1e9, ..Default::default() },
        ];
        for b in bad {
            assert!(b.validate().is_err(), "{b:?} should be rejected");
        }
        assert!(Backoff::default().validate().is_ok());
        assert!(Jitter::parse("bogus").is_err());
        assert_eq!(Jitter::parse("equal").unwrap(), Jitter::Equal);
    }

    #[test]
    fn huge_attempt_counts_do_not_overflow() {
        let b = Backoff { initial: 1.0, factor: 10.0, max_delay: 5.0, jitter: Jitter::None, ..Default::default() };
        let mut d = b.delays_unbounded();
        let last = d.nth(5000).unwrap();
        assert_eq!(last, Duration::from_secs(5));
    }
}
