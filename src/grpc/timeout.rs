//! The `grpc-timeout` header: up to 8 digits and a unit (`H`, `M`, `S`, `m`, `u`, `n`).

use std::time::Duration;

/// Reads a `grpc-timeout` value; `None` when it breaks the syntax.
pub(super) fn parse(value: &[u8]) -> Option<Duration> {
    let (unit, digits) = value.split_last()?;
    if digits.is_empty() || digits.len() > 8 || !digits.iter().all(u8::is_ascii_digit) {
        return None;
    }
    // At most 8 digits: always fits.
    let n: u64 = std::str::from_utf8(digits).ok()?.parse().ok()?;
    Some(match unit {
        b'H' => Duration::from_secs(n * 3600),
        b'M' => Duration::from_secs(n * 60),
        b'S' => Duration::from_secs(n),
        b'm' => Duration::from_millis(n),
        b'u' => Duration::from_micros(n),
        b'n' => Duration::from_nanos(n),
        _ => return None,
    })
}

/// Writes a deadline as `grpc-timeout`, in the finest unit whose value fits 8 digits
/// (rounded up, so the upstream never gets less time than is left).
pub(super) fn format(left: Duration) -> String {
    const MAX: u128 = 99_999_999;
    let units: [(u128, char); 5] = [
        (1_000, 'u'),
        (1_000_000, 'm'),
        (1_000_000_000, 'S'),
        (60_000_000_000, 'M'),
        (3_600_000_000_000, 'H'),
    ];
    let nanos = left.as_nanos().max(1);
    for (per, unit) in units {
        let n = nanos.div_ceil(per);
        if n <= MAX {
            return format!("{n}{unit}");
        }
    }
    format!("{MAX}H")
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn reads_every_unit() {
        assert_eq!(parse(b"1H"), Some(Duration::from_secs(3600)));
        assert_eq!(parse(b"2M"), Some(Duration::from_secs(120)));
        assert_eq!(parse(b"3S"), Some(Duration::from_secs(3)));
        assert_eq!(parse(b"250m"), Some(Duration::from_millis(250)));
        assert_eq!(parse(b"99999999u"), Some(Duration::from_micros(99_999_999)));
        assert_eq!(parse(b"5n"), Some(Duration::from_nanos(5)));
    }

    #[test]
    fn refuses_what_breaks_the_syntax() {
        for bad in [
            &b""[..],
            b"S",
            b"10",
            b"10s",
            b"123456789S",
            b"-1S",
            b" 1S",
            b"1.5S",
            b"1 S",
        ] {
            assert_eq!(parse(bad), None, "{:?}", String::from_utf8_lossy(bad));
        }
    }

    #[test]
    fn writes_the_finest_unit_that_fits_rounding_up() {
        assert_eq!(format(Duration::from_millis(250)), "250000u");
        assert_eq!(format(Duration::from_nanos(1)), "1u");
        assert_eq!(format(Duration::from_secs(1000)), "1000000m");
        assert_eq!(format(Duration::from_secs(200_000)), "200000S");
        assert_eq!(format(Duration::ZERO), "1u");
        for d in [Duration::from_nanos(1_234_567), Duration::from_secs(12_345)] {
            assert!(parse(format(d).as_bytes()).unwrap() >= d);
        }
    }
}
