//! The Go standard-library parsers Consul's HTTP layer relies on, reproduced so
//! that the emulator accepts and rejects exactly what an agent does:
//! `time.ParseDuration` (`?wait=`, check `TTL`/`Interval`), `strconv.ParseBool`
//! (`?passing=`, `?enable=`), `strconv.ParseUint` (`?index=`) and
//! `url.ParseQuery` (every query string).

use std::time::Duration;

/// `time.ParseDuration`: a signed sequence of decimal numbers, each with an
/// optional fraction and a unit (`ns`, `us`, `µs`, `μs`, `ms`, `s`, `m`, `h`).
/// `"0"` needs no unit. Returns nanoseconds (signed).
pub(crate) fn parse_go_duration(s: &str) -> Option<i128> {
    let (neg, mut rest) = match s.as_bytes().first() {
        Some(b'-') => (true, &s[1..]),
        Some(b'+') => (false, &s[1..]),
        _ => (false, s),
    };
    if rest == "0" {
        return Some(0);
    }
    if rest.is_empty() {
        return None;
    }
    let mut total: i128 = 0;
    while !rest.is_empty() {
        // The number: digits, optionally a '.' and more digits; at least one digit overall.
        let int_len = rest.bytes().take_while(u8::is_ascii_digit).count();
        let int_part = &rest[..int_len];
        rest = &rest[int_len..];
        let mut frac_part = "";
        if let Some(after_dot) = rest.strip_prefix('.') {
            let frac_len = after_dot.bytes().take_while(u8::is_ascii_digit).count();
            frac_part = &after_dot[..frac_len];
            rest = &after_dot[frac_len..];
        }
        if int_part.is_empty() && frac_part.is_empty() {
            return None;
        }
        let unit_len = rest
            .find(|c: char| c == '.' || c.is_ascii_digit())
            .unwrap_or(rest.len());
        let unit = &rest[..unit_len];
        rest = &rest[unit_len..];
        let scale: i128 = match unit {
            "ns" => 1,
            "us" | "\u{b5}s" | "\u{3bc}s" => 1_000,
            "ms" => 1_000_000,
            "s" => 1_000_000_000,
            "m" => 60 * 1_000_000_000,
            "h" => 3_600 * 1_000_000_000,
            _ => return None,
        };
        let int_val: i128 = if int_part.is_empty() { 0 } else { int_part.parse().ok()? };
        let mut value = int_val.checked_mul(scale)?;
        let mut frac_scale = scale;
        for digit in frac_part.bytes() {
            frac_scale /= 10;
            if frac_scale == 0 {
                break;
            }
            value += i128::from(digit - b'0') * frac_scale;
        }
        total = total.checked_add(value)?;
        if total > i128::from(i64::MAX) {
            return None;
        }
    }
    Some(if neg { -total } else { total })
}

/// A non-negative Go duration as a [`Duration`]; negative values clamp to zero.
pub(crate) fn nanos_to_duration(nanos: i128) -> Duration {
    if nanos <= 0 {
        Duration::ZERO
    } else {
        Duration::from_nanos(u64::try_from(nanos).unwrap_or(u64::MAX))
    }
}

/// `strconv.ParseBool`.
pub(crate) fn parse_go_bool(s: &str) -> Option<bool> {
    match s {
        "1" | "t" | "T" | "TRUE" | "true" | "True" => Some(true),
        "0" | "f" | "F" | "FALSE" | "false" | "False" => Some(false),
        _ => None,
    }
}

/// `strconv.ParseUint(s, 10, 64)`: ASCII digits only, no sign, no overflow.
pub(crate) fn parse_go_uint(s: &str) -> Option<u64> {
    if s.is_empty() || !s.bytes().all(|b| b.is_ascii_digit()) {
        return None;
    }
    s.parse().ok()
}

/// `url.QueryUnescape`: `+` is a space, `%XX` a byte; a malformed escape is an error.
pub(crate) fn query_unescape(s: &str) -> Option<String> {
    unescape(s, true)
}

/// `url.PathUnescape` semantics for the request path (no `+` rule).
pub(crate) fn path_unescape(s: &str) -> Option<String> {
    unescape(s, false)
}

fn unescape(s: &str, plus_is_space: bool) -> Option<String> {
    let bytes = s.as_bytes();
    let mut out = Vec::with_capacity(bytes.len());
    let mut i = 0;
    while i < bytes.len() {
        match bytes[i] {
            b'%' => {
                let hex = bytes.get(i + 1..i + 3)?;
                let hi = (hex[0] as char).to_digit(16)?;
                let lo = (hex[1] as char).to_digit(16)?;
                out.push(u8::try_from(hi * 16 + lo).ok()?);
                i += 3;
            }
            b'+' if plus_is_space => {
                out.push(b' ');
                i += 1;
            }
            b => {
                out.push(b);
                i += 1;
            }
        }
    }
    // Go strings may hold any bytes; we only need text, so decode lossily.
    Some(String::from_utf8_lossy(&out).into_owned())
}

/// `url.ParseQuery`: pairs split on `&`, a `;` anywhere is an error (Go 1.17+),
/// a key without `=` has the empty value. Order is kept.
pub(crate) fn parse_go_query(raw: &str) -> Result<Vec<(String, String)>, String> {
    let mut pairs = Vec::new();
    for part in raw.split('&') {
        if part.is_empty() {
            continue;
        }
        if part.contains(';') {
            return Err("invalid semicolon separator in query".to_owned());
        }
        let (k, v) = part.split_once('=').unwrap_or((part, ""));
        let key = query_unescape(k).ok_or_else(|| format!("invalid URL escape in {k:?}"))?;
        let value = query_unescape(v).ok_or_else(|| format!("invalid URL escape in {v:?}"))?;
        pairs.push((key, value));
    }
    Ok(pairs)
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn durations_follow_go() {
        assert_eq!(parse_go_duration("30s"), Some(30_000_000_000));
        assert_eq!(parse_go_duration("1m30s"), Some(90_000_000_000));
        assert_eq!(parse_go_duration("500ms"), Some(500_000_000));
        assert_eq!(parse_go_duration("1.5h"), Some(5_400_000_000_000));
        assert_eq!(parse_go_duration(".5s"), Some(500_000_000));
        assert_eq!(parse_go_duration("0"), Some(0));
        assert_eq!(parse_go_duration("-2s"), Some(-2_000_000_000));
        assert_eq!(parse_go_duration("10\u{b5}s"), Some(10_000));
        for bad in ["", "10", "s", "1x", "1.s.", "-", "."] {
            assert_eq!(parse_go_duration(bad), None, "{bad}");
        }
    }

    #[test]
    fn bools_and_uints_follow_go() {
        assert_eq!(parse_go_bool("T"), Some(true));
        assert_eq!(parse_go_bool("False"), Some(false));
        assert_eq!(parse_go_bool("yes"), None);
        assert_eq!(parse_go_uint("42"), Some(42));
        assert_eq!(parse_go_uint("+1"), None);
        assert_eq!(parse_go_uint("-1"), None);
        assert_eq!(parse_go_uint("18446744073709551616"), None);
    }

    #[test]
    fn query_follows_go() {
        let q = parse_go_query("tag=a&tag=b+c&passing&filter=%22x%22%20in%20Service.Tags").unwrap();
        assert_eq!(
            q,
            vec![
                ("tag".into(), "a".into()),
                ("tag".into(), "b c".into()),
                ("passing".into(), String::new()),
                ("filter".into(), "\"x\" in Service.Tags".into()),
            ]
        );
        assert!(parse_go_query("a=1;b=2").is_err());
        assert!(parse_go_query("a=%zz").is_err());
    }
}
