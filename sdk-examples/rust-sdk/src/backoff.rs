//! How long a source waits before trying its server again: `base` doubling
//! per failure up to `cap`, each wait drawn between half and all of it, so
//! that many configurations that lost the same server do not all come back at
//! the same instant.

use std::time::Duration;

/// The wait after the `failures`-th failure in a row (1 for the first).
pub fn backoff(failures: u32, base: Duration, cap: Duration) -> Duration {
    let doublings = failures.clamp(1, 16) - 1;
    let full = base.saturating_mul(1u32 << doublings).min(cap.max(base));
    full.mul_f64(0.5 + fastrand::f64() / 2.0)
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn doubles_up_to_the_cap_with_jitter() {
        let (base, cap) = (Duration::from_millis(100), Duration::from_secs(1));
        for (failures, full) in [(1, 100), (2, 200), (4, 800), (5, 1000), (40, 1000)] {
            let w = backoff(failures, base, cap);
            let full = Duration::from_millis(full);
            assert!(w >= full / 2 && w <= full, "{failures}: {w:?}");
        }
        // A base above the cap is not cut below itself.
        assert!(backoff(1, cap * 2, cap) >= cap);
    }
}
