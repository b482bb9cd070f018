//! Durations written as strings: `"500ms"`, `"2s"`, `"1m30s"`, `"1.5h"`.
//!
//! A duration is one or more `<number><unit>` parts added together; the number may have a
//! fraction; the units are `ms`, `s`, `m` and `h`. `"0"` alone is zero. Nothing else is
//! accepted (no spaces, no bare numbers), so that `"2"` cannot be read as two seconds by one
//! reader and two milliseconds by another.
//!
//! A duration is at most [`MAX`] (365 days): every timer of the proxy adds a duration to
//! the clock, and a value that checks must never overflow it at run time.

use std::time::Duration;

/// The longest duration a config may give: 365 days.
pub(crate) const MAX: Duration = Duration::from_secs(365 * 24 * 3600);

const UNITS: [(&str, u128); 4] = [
    ("ms", 1_000_000),
    ("s", 1_000_000_000),
    ("m", 60_000_000_000),
    ("h", 3_600_000_000_000),
];

/// Parses a duration; the error is a sentence for the user.
pub(super) fn parse_duration(text: &str) -> Result<Duration, String> {
    let invalid = || {
        format!("invalid duration {text:?} (expected a number and a unit: ms, s, m or h, as in \"500ms\", \"2s\", \"1m30s\")")
    };
    if text == "0" {
        return Ok(Duration::ZERO);
    }
    if text.is_empty() {
        return Err(invalid());
    }
    let mut rest = text;
    let mut nanos: u128 = 0;
    while !rest.is_empty() {
        let int_len = rest.find(|c: char| !c.is_ascii_digit()).unwrap_or(rest.len());
        let (int, after) = rest.split_at(int_len);
        let (frac, after) = match after.strip_prefix('.') {
            Some(after) => {
                let len = after.find(|c: char| !c.is_ascii_digit()).unwrap_or(after.len());
                if len == 0 {
                    return Err(invalid());
                }
                after.split_at(len)
            }
            None => ("", after),
        };
        if int.is_empty() && frac.is_empty() {
            return Err(invalid());
        }
        let unit_len = after.find(|c: char| !c.is_ascii_alphabetic()).unwrap_or(after.len());
        let (unit, after) = after.split_at(unit_len);
        let scale = UNITS
            .iter()
            .find(|(name, _)| *name == unit)
            .map(|(_, scale)| *scale)
            .ok_or_else(invalid)?;
        let too_large = || format!("duration {text:?} is too large (at most 365 days, \"8760h\")");
        let int: u128 = if int.is_empty() {
            0
        } else {
            int.parse().map_err(|_| too_large())?
        };
        // The fraction is cut to nanoseconds: enough for any timeout.
        let frac_nanos = frac.chars().take(18).fold((0u128, scale), |(acc, place), digit| {
            let place = place / 10;
            (acc + u128::from(digit.to_digit(10).unwrap_or(0)) * place, place)
        });
        nanos = int
            .checked_mul(scale)
            .and_then(|n| n.checked_add(frac_nanos.0))
            .and_then(|n| n.checked_add(nanos))
            .ok_or_else(too_large)?;
        rest = after;
    }
    let too_long = || format!("duration {text:?} is too large (at most 365 days, \"8760h\")");
    let secs = u64::try_from(nanos / 1_000_000_000).map_err(|_| too_long())?;
    // The remainder is below 10^9, so it fits.
    let d = Duration::new(secs, (nanos % 1_000_000_000) as u32);
    if d > MAX {
        return Err(too_long());
    }
    Ok(d)
}
