//! A share between 0 and 1 (a sampling ratio), checked once and kept as a threshold on a
//! uniform `u64`: the trace sampler draws from the trace id, the mirror at random.

use crate::invalid::Invalid;

/// A checked ratio as a threshold: a draw under it is in the share.
#[derive(Debug, Clone, Copy)]
pub struct Share(u64);

impl Share {
    /// Checks `ratio` (config key `key`) and keeps its threshold.
    pub fn compile(ratio: f64, key: &str) -> Result<Self, Invalid> {
        let ratio = check_ratio(ratio, key)?;
        Ok(Share(if ratio >= 1.0 {
            u64::MAX
        } else {
            (ratio * u64::MAX as f64) as u64
        }))
    }

    /// Whether `draw` (uniform over `u64`) falls in the share; 0 and 1 are exact.
    pub fn admits(&self, draw: u64) -> bool {
        match self.0 {
            0 => false,
            u64::MAX => true,
            t => draw < t,
        }
    }

    /// A random draw.
    pub fn sample(&self) -> bool {
        self.admits(fastrand::u64(..))
    }
}

/// `ratio` when it lies between 0 and 1, else the config error naming `key`.
pub fn check_ratio(ratio: f64, key: &str) -> Result<f64, Invalid> {
    if (0.0..=1.0).contains(&ratio) {
        Ok(ratio)
    } else {
        Err(Invalid::new(key, format!("{ratio} is not between 0 and 1")))
    }
}
