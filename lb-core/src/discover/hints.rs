//! The hint grammar shared by Docker labels and Consul tags: [`Hints::apply`].
//!
//! A source strips its own prefix (`lb.` for Docker labels, for instance) and hands each
//! remaining `key=value` pair to [`Hints::apply`], which checks the value and records it.
//! Keys that are not hints are left to the source (`Ok(false)`), so it can read its own
//! keys (`port`, `weight`, ...) and warn about the rest.
//!
//! | key | value |
//! |---|---|
//! | `host` | comma-separated host names, `example.com` or `*.example.com`; added to the list |
//! | `path_prefix` | a path starting with `/` |
//! | `balance` | a policy name, one of [`POLICY_NAMES`] |
//! | `hash_key` | `client_ip`, `path`, `header:NAME` or `cookie:NAME` |
//! | `health.path` | a path starting with `/` |
//! | `health.interval` | a duration above zero: `500ms`, `5s`, `1m`, `1h`, `1m30s`, `1.5s` |
//! | `tls.acme` | `true` or `false`: get a certificate for the hosts from ACME |
//! | `redirect_https` | `true` or `false`: redirect plain HTTP to HTTPS |
//!
//! Values are taken as written: surrounding spaces are an error, except around the
//! commas of a host list.

use std::time::Duration;

use super::catalog::{Hints, POLICY_NAMES};

/// A hint whose value does not parse.
#[derive(Debug, Clone, PartialEq, Eq, thiserror::Error)]
#[error("{key}={value:?}: {message}")]
pub struct HintError {
    /// The key (without prefix).
    pub key: String,
    /// The value as written.
    pub value: String,
    /// What is wrong.
    pub message: String,
}

impl Hints {
    /// Applies one `key=value` hint (key without the source's prefix: `host`,
    /// `path_prefix`, `balance`, `hash_key`, `health.path`, `health.interval`, `tls.acme`,
    /// `redirect_https`; see the
    /// module documentation for the values).
    ///
    /// `host` adds to the host list (without duplicates); every other key replaces its
    /// previous value. Returns `Ok(true)` when the hint was applied, `Ok(false)` for a key
    /// that is not a hint (nothing changes), and an error, leaving `self` unchanged, for a
    /// value that does not parse.
    ///
    /// # Examples
    ///
    /// ```
    /// use std::time::Duration;
    /// use lb_core::discover::catalog::Hints;
    ///
    /// let mut hints = Hints::default();
    /// assert_eq!(hints.apply("host", "Example.COM., *.api.example.com"), Ok(true));
    /// assert_eq!(hints.apply("health.interval", "500ms"), Ok(true));
    /// assert_eq!(hints.apply("port", "8080"), Ok(false));
    /// assert!(hints.apply("balance", "fastest").is_err());
    /// assert_eq!(hints.hosts, ["example.com", "*.api.example.com"]);
    /// assert_eq!(hints.health_interval, Some(Duration::from_millis(500)));
    /// ```
    pub fn apply(&mut self, key: &str, value: &str) -> Result<bool, HintError> {
        let error = |message: String| HintError {
            key: key.to_owned(),
            value: value.to_owned(),
            message,
        };
        match key {
            "host" => {
                for host in parse_hosts(value).map_err(error)? {
                    if !self.hosts.contains(&host) {
                        self.hosts.push(host);
                    }
                }
            }
            "path_prefix" => self.path_prefix = Some(parse_path(value).map_err(error)?),
            "balance" => self.balance = Some(parse_balance(value).map_err(error)?),
            "hash_key" => self.hash_key = Some(parse_hash_key(value).map_err(error)?),
            "health.path" => self.health_path = Some(parse_path(value).map_err(error)?),
            "health.interval" => self.health_interval = Some(parse_interval(value).map_err(error)?),
            "tls.acme" => self.tls_acme = parse_bool(value).map_err(error)?,
            "redirect_https" => self.redirect_https = Some(parse_bool(value).map_err(error)?),
            _ => return Ok(false),
        }
        Ok(true)
    }
}

/// `true` or `false`.
fn parse_bool(value: &str) -> Result<bool, String> {
    match value {
        "true" => Ok(true),
        "false" => Ok(false),
        _ => Err("expected true or false".to_owned()),
    }
}

/// A comma-separated list of host names, lowercased, without trailing dots, in order and
/// without duplicates.
fn parse_hosts(value: &str) -> Result<Vec<String>, String> {
    let mut hosts: Vec<String> = Vec::new();
    for item in value.split(',') {
        let host = parse_host(item.trim())?;
        if !hosts.contains(&host) {
            hosts.push(host);
        }
    }
    Ok(hosts)
}

/// `example.com` or `*.example.com`: dot-separated non-empty labels of ASCII letters,
/// digits and `-`, at most 253 characters, with one optional leading `*.`.
fn parse_host(item: &str) -> Result<String, String> {
    if item.is_empty() {
        return Err("empty host name (expected a comma-separated list, as in \"example.com,*.example.org\")".into());
    }
    let lower = item.to_ascii_lowercase();
    let name = lower.strip_suffix('.').unwrap_or(&lower);
    let bare = name.strip_prefix("*.").unwrap_or(name);
    if bare.contains(':') {
        return Err(format!("host {item:?} must not include a port"));
    }
    let valid = !bare.is_empty()
        && bare.len() <= 253
        && bare
            .split('.')
            .all(|label| !label.is_empty() && label.chars().all(|c| c.is_ascii_alphanumeric() || c == '-'));
    if valid {
        Ok(name.to_owned())
    } else {
        Err(format!(
            "invalid host {item:?} (expected a name of letters, digits, `-` and `.`, as in \"example.com\", \
             or a wildcard, as in \"*.example.com\")"
        ))
    }
}

/// A URL path: starts with `/`, no whitespace or control characters.
fn parse_path(value: &str) -> Result<String, String> {
    if !value.starts_with('/') {
        return Err("must start with `/`".into());
    }
    if value.chars().any(|c| c.is_whitespace() || c.is_control()) {
        return Err("must not contain whitespace or control characters".into());
    }
    Ok(value.to_owned())
}

/// One of [`POLICY_NAMES`].
fn parse_balance(value: &str) -> Result<String, String> {
    if POLICY_NAMES.contains(&value) {
        Ok(value.to_owned())
    } else {
        Err(format!("unknown policy (expected one of {})", POLICY_NAMES.join(", ")))
    }
}

/// `client_ip`, `path`, `header:NAME` or `cookie:NAME`, where NAME is an HTTP token.
fn parse_hash_key(value: &str) -> Result<String, String> {
    let name = match value {
        "client_ip" | "path" => return Ok(value.to_owned()),
        _ => value.strip_prefix("header:").or_else(|| value.strip_prefix("cookie:")),
    };
    match name {
        Some(name) if is_token(name) => Ok(value.to_owned()),
        Some(_) => Err("invalid header or cookie name (expected letters, digits and !#$%&'*+-.^_`|~)".into()),
        None => Err("expected client_ip, path, header:NAME or cookie:NAME".into()),
    }
}

/// An HTTP token (RFC 9110, section 5.6.2): header field names and cookie names.
fn is_token(name: &str) -> bool {
    !name.is_empty()
        && name
            .chars()
            .all(|c| c.is_ascii_alphanumeric() || "!#$%&'*+-.^_`|~".contains(c))
}

/// The units of a duration, longest first where one is a prefix of another, with their
/// length in nanoseconds.
const UNITS: [(&str, u128); 4] = [
    ("ms", 1_000_000),
    ("s", 1_000_000_000),
    ("m", 60_000_000_000),
    ("h", 3_600_000_000_000),
];

/// A duration above zero: one or more `<number><unit>` parts added together (`1m30s`),
/// where the number may have a fraction (`1.5s`, cut to nanoseconds) and the unit is `ms`,
/// `s`, `m` or `h`.
fn parse_interval(value: &str) -> Result<Duration, String> {
    let invalid = || {
        "invalid duration (expected a number and a unit: ms, s, m or h, as in \"500ms\", \"5s\", \"1m30s\")".to_owned()
    };
    let too_large = || "duration too large".to_owned();
    if value.is_empty() {
        return Err(invalid());
    }
    let mut rest = value;
    let mut nanos: u128 = 0;
    while !rest.is_empty() {
        let (int, after) = split_digits(rest);
        let (frac, after) = match after.strip_prefix('.') {
            Some(after) => match split_digits(after) {
                ("", _) => return Err(invalid()),
                parts => parts,
            },
            None => ("", after),
        };
        if int.is_empty() && frac.is_empty() {
            return Err(invalid());
        }
        let unit_len = after.find(|c: char| !c.is_ascii_alphabetic()).unwrap_or(after.len());
        let (unit, after) = after.split_at(unit_len);
        let scale = UNITS
            .iter()
            .find_map(|(name, scale)| (*name == unit).then_some(*scale))
            .ok_or_else(invalid)?;
        let int: u128 = if int.is_empty() {
            0
        } else {
            int.parse().map_err(|_| too_large())?
        };
        // Digit by digit, each place a tenth of the one before; beyond nanoseconds it is 0.
        let (frac_nanos, _) = frac.bytes().fold((0u128, scale), |(acc, place), digit| {
            let place = place / 10;
            (acc + u128::from(digit - b'0') * place, place)
        });
        nanos = int
            .checked_mul(scale)
            .and_then(|n| n.checked_add(frac_nanos))
            .and_then(|n| n.checked_add(nanos))
            .ok_or_else(too_large)?;
        rest = after;
    }
    if nanos == 0 {
        return Err("must be above zero".into());
    }
    let secs = u64::try_from(nanos / 1_000_000_000).map_err(|_| too_large())?;
    let subsec = u32::try_from(nanos % 1_000_000_000).map_err(|_| too_large())?;
    Ok(Duration::new(secs, subsec))
}

/// Splits `text` after its leading ASCII digits.
fn split_digits(text: &str) -> (&str, &str) {
    text.split_at(text.find(|c: char| !c.is_ascii_digit()).unwrap_or(text.len()))
}

#[cfg(test)]
mod tests {
    use super::*;

    fn applied(key: &str, value: &str) -> Hints {
        let mut hints = Hints::default();
        assert_eq!(hints.apply(key, value), Ok(true), "{key}={value}");
        hints
    }

    fn message(key: &str, value: &str) -> String {
        let mut hints = Hints::default();
        let err = hints.apply(key, value).expect_err(value);
        assert_eq!((err.key.as_str(), err.value.as_str()), (key, value));
        assert_eq!(hints, Hints::default(), "an error leaves the hints unchanged");
        err.message
    }

    #[test]
    fn unknown_keys_are_not_hints() {
        let mut hints = Hints::default();
        for key in ["port", "weight", "Host", "health", "health.timeout", ""] {
            assert_eq!(hints.apply(key, "x"), Ok(false), "{key}");
        }
        assert_eq!(hints, Hints::default());
    }

    #[test]
    fn tls_acme_and_redirect_https_take_true_or_false() {
        assert!(applied("tls.acme", "true").tls_acme);
        assert!(!applied("tls.acme", "false").tls_acme);
        assert_eq!(applied("redirect_https", "false").redirect_https, Some(false));
        assert_eq!(applied("redirect_https", "true").redirect_https, Some(true));
        for value in ["yes", "1", "True", " true", ""] {
            assert_eq!(message("tls.acme", value), "expected true or false");
            assert_eq!(message("redirect_https", value), "expected true or false");
        }
    }

    #[test]
    fn hosts_are_normalized_appended_and_deduplicated() {
        let mut hints = applied("host", "Example.COM.,*.Api.example.com , 10.0.0.1,example.com");
        assert_eq!(hints.hosts, ["example.com", "*.api.example.com", "10.0.0.1"]);
        assert_eq!(hints.apply("host", "other.org,EXAMPLE.com"), Ok(true));
        assert_eq!(
            hints.hosts,
            ["example.com", "*.api.example.com", "10.0.0.1", "other.org"]
        );
        assert_eq!(applied("host", "*.com").hosts, ["*.com"]);
        assert_eq!(applied("host", "a-b.c-d").hosts, ["a-b.c-d"]);
    }

    #[test]
    fn invalid_hosts_are_errors() {
        for value in [
            "",
            " ",
            "a.com,",
            ",a.com",
            "a.com,,b.com",
            "*",
            "*.",
            "a.*.com",
            "**.a.com",
            "*a.com",
            "a..com",
            ".a.com",
            "a.com..",
            "a_b.com",
            "a b.com",
            "é.com",
            "a/b",
        ] {
            let message = message("host", value);
            assert!(message.contains("host"), "{value:?}: {message}");
        }
        assert_eq!(
            message("host", "a.com:8080"),
            "host \"a.com:8080\" must not include a port"
        );
        assert_eq!(
            message("host", "a.com,x y"),
            "invalid host \"x y\" (expected a name of letters, digits, `-` and `.`, as in \"example.com\", \
             or a wildcard, as in \"*.example.com\")"
        );
        let longest = format!("a{}", ".a".repeat(126));
        assert_eq!(longest.len(), 253);
        assert_eq!(applied("host", &longest).hosts, [longest.as_str()]);
        assert!(message("host", &format!("b{longest}")).starts_with("invalid host"));
    }

    #[test]
    fn paths() {
        assert_eq!(
            applied("path_prefix", "/api/v1").path_prefix.as_deref(),
            Some("/api/v1")
        );
        assert_eq!(applied("path_prefix", "/").path_prefix.as_deref(), Some("/"));
        assert_eq!(
            applied("health.path", "/healthz?full=1").health_path.as_deref(),
            Some("/healthz?full=1")
        );
        for key in ["path_prefix", "health.path"] {
            assert_eq!(message(key, "api"), "must start with `/`");
            assert_eq!(message(key, ""), "must start with `/`");
            assert_eq!(message(key, " /api"), "must start with `/`");
            assert_eq!(
                message(key, "/a b"),
                "must not contain whitespace or control characters"
            );
            assert_eq!(
                message(key, "/a\t"),
                "must not contain whitespace or control characters"
            );
            assert_eq!(
                message(key, "/a\u{7f}"),
                "must not contain whitespace or control characters"
            );
        }
        let mut hints = applied("path_prefix", "/a");
        assert_eq!(hints.apply("path_prefix", "/b"), Ok(true));
        assert_eq!(hints.path_prefix.as_deref(), Some("/b"), "the last value wins");
    }

    #[test]
    fn balance() {
        for name in POLICY_NAMES {
            assert_eq!(applied("balance", name).balance.as_deref(), Some(name));
        }
        let expected =
            "unknown policy (expected one of round_robin, least_conn, p2c, peak_ewma, random, consistent_hash)";
        for value in ["", "Round_Robin", "roundrobin", " p2c"] {
            assert_eq!(message("balance", value), expected, "{value:?}");
        }
    }

    #[test]
    fn hash_key() {
        for value in [
            "client_ip",
            "path",
            "header:X-User-Id",
            "header:x_tenant.id",
            "cookie:SESSION",
            "cookie:a!b~c",
        ] {
            assert_eq!(applied("hash_key", value).hash_key.as_deref(), Some(value));
        }
        let bad_name = "invalid header or cookie name (expected letters, digits and !#$%&'*+-.^_`|~)";
        for value in [
            "header:",
            "cookie:",
            "header:X User",
            "header:a:b",
            "cookie:a=b",
            "header:é",
            "cookie:a;b",
        ] {
            assert_eq!(message("hash_key", value), bad_name, "{value:?}");
        }
        let bad = "expected client_ip, path, header:NAME or cookie:NAME";
        for value in ["", "ip", "Client_IP", "header", "query:x", " path"] {
            assert_eq!(message("hash_key", value), bad, "{value:?}");
        }
    }

    #[test]
    fn health_interval() {
        let ok = [
            ("500ms", Duration::from_millis(500)),
            ("5s", Duration::from_secs(5)),
            ("1m", Duration::from_secs(60)),
            ("1h", Duration::from_secs(3600)),
            ("1m30s", Duration::from_secs(90)),
            ("1h2m3s4ms", Duration::from_millis(3_723_004)),
            ("1.5s", Duration::from_millis(1500)),
            (".25m", Duration::from_secs(15)),
            ("0s1ms", Duration::from_millis(1)),
            ("1.0000000001s", Duration::from_secs(1)),
        ];
        for (value, expected) in ok {
            assert_eq!(
                applied("health.interval", value).health_interval,
                Some(expected),
                "{value}"
            );
        }
        let invalid =
            "invalid duration (expected a number and a unit: ms, s, m or h, as in \"500ms\", \"5s\", \"1m30s\")";
        for value in [
            "", "5", "s", "5 s", "5sec", "-1s", "1.s", "1..5s", "5S", "5s ", " 5s", "ms", "1d", "1s5",
        ] {
            assert_eq!(message("health.interval", value), invalid, "{value:?}");
        }
        for value in ["0s", "0ms", "0.0000000001s", "0h0m"] {
            assert_eq!(message("health.interval", value), "must be above zero", "{value:?}");
        }
        for value in ["99999999999999999999999999999999999999999h", "999999999999999999999h"] {
            assert_eq!(message("health.interval", value), "duration too large", "{value:?}");
        }
    }

    #[test]
    fn error_display_names_key_and_value() {
        let err = Hints::default().apply("balance", "fast").unwrap_err();
        assert_eq!(
            err.to_string(),
            "balance=\"fast\": unknown policy (expected one of round_robin, least_conn, p2c, peak_ewma, random, \
             consistent_hash)"
        );
    }
}
