//! What a certificate says of itself: its names, issuer and validity, read from the leaf.

use std::time::{Duration, SystemTime, UNIX_EPOCH};

use x509_parser::certificate::X509Certificate;
use x509_parser::extensions::GeneralName;
use x509_parser::prelude::FromDer;

use crate::store::CertInfo;

/// The fields of a leaf certificate that the store uses.
#[derive(Debug, Clone)]
pub(crate) struct Leaf {
    /// DNS subject alternative names, lower case, in the certificate's order.
    pub(crate) dns_names: Vec<String>,
    /// The subject's common name, if any.
    pub(crate) common_name: Option<String>,
    /// The issuer's distinguished name.
    pub(crate) issuer: String,
    pub(crate) not_before: SystemTime,
    pub(crate) not_after: SystemTime,
}

impl Leaf {
    /// Parses a DER certificate; the error says what is wrong, without naming the source.
    pub(crate) fn parse(der: &[u8]) -> Result<Self, String> {
        let (_, cert) = X509Certificate::from_der(der).map_err(|e| format!("cannot parse the certificate: {e}"))?;
        let mut dns_names = Vec::new();
        match cert.subject_alternative_name() {
            Ok(Some(san)) => {
                for name in &san.value.general_names {
                    if let GeneralName::DNSName(n) = name {
                        let n = n.trim_end_matches('.').to_ascii_lowercase();
                        if !n.is_empty() && !dns_names.contains(&n) {
                            dns_names.push(n);
                        }
                    }
                }
            }
            Ok(None) => {}
            Err(e) => return Err(format!("cannot read the subject alternative names: {e}")),
        }
        let common_name = cert
            .subject()
            .iter_common_name()
            .next()
            .and_then(|cn| cn.as_str().ok())
            .map(str::to_owned);
        let validity = cert.validity();
        Ok(Self {
            dns_names,
            common_name,
            issuer: cert.issuer().to_string(),
            not_before: from_unix(validity.not_before.timestamp()),
            not_after: from_unix(validity.not_after.timestamp()),
        })
    }

    /// The names the certificate speaks for: its DNS subject alternative names, else its
    /// common name (lower case), else none.
    pub(crate) fn names(&self) -> Vec<String> {
        if !self.dns_names.is_empty() {
            return self.dns_names.clone();
        }
        self.common_name
            .iter()
            .map(|cn| cn.trim_end_matches('.').to_ascii_lowercase())
            .filter(|cn| !cn.is_empty())
            .collect()
    }
}

/// Seconds since the Unix epoch (negative before it) as a `SystemTime`.
fn from_unix(secs: i64) -> SystemTime {
    if secs >= 0 {
        UNIX_EPOCH + Duration::from_secs(secs.unsigned_abs())
    } else {
        UNIX_EPOCH - Duration::from_secs(secs.unsigned_abs())
    }
}

impl CertInfo {
    /// Days from `now` to the end of validity, with fractions: negative once expired.
    ///
    /// ```
    /// # use std::time::{Duration, SystemTime};
    /// # fn check(info: &lb_tls::CertInfo) {
    /// let left = info.days_left(SystemTime::now());
    /// if left < 14.0 {
    ///     eprintln!("{:?} expires in {left:.1} days", info.names);
    /// }
    /// # }
    /// ```
    pub fn days_left(&self, now: SystemTime) -> f64 {
        const DAY: f64 = 86_400.0;
        match self.not_after.duration_since(now) {
            Ok(left) => left.as_secs_f64() / DAY,
            Err(past) => -past.duration().as_secs_f64() / DAY,
        }
    }
}
