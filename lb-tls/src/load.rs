//! Reading certificates from their sources: PEM files, a directory, an environment variable.

use std::io;
use std::path::{Path, PathBuf};
use std::sync::Arc;

use rustls::pki_types::{CertificateDer, PrivateKeyDer};
use rustls::sign::CertifiedKey;
use rustls_pemfile::Item;

use crate::info::Leaf;
use crate::store::{CertSource, Error};

/// A certificate read from a source, with what the store needs to place it.
#[derive(Debug)]
pub(crate) struct Loaded {
    pub(crate) key: Arc<CertifiedKey>,
    pub(crate) leaf: Leaf,
    /// A file path, `env:VAR`, or the source given to `set_managed`.
    pub(crate) source: String,
    /// Configured server names (normalised); empty: served for its own names.
    pub(crate) names: Vec<String>,
    /// The default certificate (served when no name matches).
    pub(crate) default: bool,
}

/// Reads every source, in order; the first error stops and is returned.
///
/// The default is the first `Files`/`Env` source without names, else the first
/// certificate (by file name) of the first directory.
pub(crate) fn load_sources(sources: &[CertSource]) -> Result<Vec<Loaded>, Error> {
    let mut out = Vec::new();
    let mut explicit_default = false;
    let mut first_from_dir = None;
    for source in sources {
        match source {
            CertSource::Files { cert, key, names } => {
                let cert_label = cert.display().to_string();
                let key_label = key.display().to_string();
                let names = normalise_names(&cert_label, names)?;
                let chain_pem = read(cert)?;
                let key_pem = if key == cert { chain_pem.clone() } else { read(key)? };
                let (ck, leaf) = parse_pair(&chain_pem, &key_pem, &cert_label, &key_label)?;
                let default = names.is_empty() && !explicit_default;
                explicit_default |= default;
                out.push(Loaded {
                    key: ck,
                    leaf,
                    source: cert_label,
                    names,
                    default,
                });
            }
            CertSource::Env { var, names } => {
                let label = format!("env:{var}");
                let names = normalise_names(&label, names)?;
                let pem = match std::env::var(var) {
                    Ok(v) if !v.trim().is_empty() => v,
                    Ok(_) => return Err(Error::Load(format!("{label}: the variable is empty"))),
                    Err(std::env::VarError::NotPresent) => {
                        return Err(Error::Load(format!("{label}: the variable is not set")))
                    }
                    Err(std::env::VarError::NotUnicode(_)) => {
                        return Err(Error::Load(format!("{label}: the variable is not valid UTF-8")))
                    }
                };
                // tutum/haproxy's SSL_CERT convention: the PEM on one line, with `\n` escapes.
                let pem = pem.replace("\\n", "\n");
                let (ck, leaf) = parse_pair(pem.as_bytes(), pem.as_bytes(), &label, &label)?;
                let default = names.is_empty() && !explicit_default;
                explicit_default |= default;
                out.push(Loaded {
                    key: ck,
                    leaf,
                    source: label,
                    names,
                    default,
                });
            }
            CertSource::Dir(dir) => {
                for (cert, key) in scan_dir(dir)? {
                    let cert_label = cert.display().to_string();
                    let key_label = key.display().to_string();
                    let chain_pem = read(&cert)?;
                    let key_pem = if key == cert { chain_pem.clone() } else { read(&key)? };
                    let (ck, leaf) = parse_pair(&chain_pem, &key_pem, &cert_label, &key_label)?;
                    first_from_dir.get_or_insert(out.len());
                    out.push(Loaded {
                        key: ck,
                        leaf,
                        source: cert_label,
                        names: Vec::new(),
                        default: false,
                    });
                }
            }
        }
    }
    if !explicit_default {
        if let Some(i) = first_from_dir {
            out[i].default = true;
        }
    }
    Ok(out)
}

/// The certificate files of a directory, sorted by file name, each with its key file
/// (itself when the key is in the same file).
///
/// `NAME.pem`, `NAME.crt` and `NAME.cert` are certificates; their key is `NAME.key` when
/// that exists, else in the same file. Hidden files, sub-directories, `NAME.key` files
/// and anything else are skipped.
fn scan_dir(dir: &Path) -> Result<Vec<(PathBuf, PathBuf)>, Error> {
    let unreadable = |e: io::Error| Error::Load(format!("{}: cannot read the directory: {e}", dir.display()));
    let mut names = Vec::new();
    for entry in std::fs::read_dir(dir).map_err(unreadable)? {
        let entry = entry.map_err(unreadable)?;
        let path = entry.path();
        let Some(name) = entry.file_name().to_str().map(str::to_owned) else {
            tracing::debug!(file = %path.display(), "skipped: the file name is not UTF-8");
            continue;
        };
        if name.starts_with('.') {
            continue;
        }
        // Follows symbolic links (a Kubernetes secret volume is made of them).
        match std::fs::metadata(&path) {
            Ok(meta) if meta.is_file() => names.push(name),
            Ok(_) => tracing::debug!(file = %path.display(), "skipped: not a file"),
            Err(e) => return Err(Error::Load(format!("{}: cannot read: {e}", path.display()))),
        }
    }
    names.sort();
    let mut out = Vec::new();
    for name in &names {
        let path = dir.join(name);
        let (stem, ext) = match name.rsplit_once('.') {
            Some((stem, ext)) if !stem.is_empty() => (stem, ext.to_ascii_lowercase()),
            _ => {
                tracing::debug!(file = %path.display(), "skipped: neither a .pem, .crt nor .cert file");
                continue;
            }
        };
        match ext.as_str() {
            "pem" | "crt" | "cert" => {
                let key_name = format!("{stem}.key");
                let key = if names.binary_search(&key_name).is_ok() {
                    dir.join(key_name)
                } else {
                    path.clone()
                };
                out.push((path, key));
            }
            "key" => {
                let has_cert = ["pem", "crt", "cert"]
                    .iter()
                    .any(|ext| names.binary_search(&format!("{stem}.{ext}")).is_ok());
                if !has_cert {
                    tracing::debug!(file = %path.display(), "skipped: a key without a NAME.pem, .crt or .cert");
                }
            }
            _ => tracing::debug!(file = %path.display(), "skipped: neither a .pem, .crt nor .cert file"),
        }
    }
    Ok(out)
}

fn read(path: &Path) -> Result<Vec<u8>, Error> {
    std::fs::read(path).map_err(|e| Error::Load(format!("{}: cannot read: {e}", path.display())))
}

/// Validates and normalises configured server names: lower case, no trailing dot, a `*`
/// only as a whole first label (`*.example.com`).
fn normalise_names(label: &str, names: &[String]) -> Result<Vec<String>, Error> {
    let mut out = Vec::with_capacity(names.len());
    for raw in names {
        let name = raw.trim().trim_end_matches('.').to_ascii_lowercase();
        let bare = name.strip_prefix("*.").unwrap_or(&name);
        if bare.is_empty() || bare.contains('*') || bare.starts_with('.') || bare.contains("..") {
            return Err(Error::Load(format!(
                "{label}: invalid server name {raw:?} (expected a name, or *.suffix)"
            )));
        }
        if !out.contains(&name) {
            out.push(name);
        }
    }
    Ok(out)
}

/// Parses a PEM chain and a PEM private key into a signing certificate, checking that the
/// key belongs to the leaf. `chain_label`/`key_label` name them in errors (the same label
/// when both come from one file or variable).
pub(crate) fn parse_pair(
    chain_pem: &[u8],
    key_pem: &[u8],
    chain_label: &str,
    key_label: &str,
) -> Result<(Arc<CertifiedKey>, Leaf), Error> {
    let chain: Vec<CertificateDer<'static>> = pem_items(chain_pem, chain_label)?
        .into_iter()
        .filter_map(|item| match item {
            Item::X509Certificate(der) => Some(der),
            _ => None,
        })
        .collect();
    if chain.is_empty() {
        return Err(Error::Load(format!("{chain_label}: no PEM certificate")));
    }
    let mut keys: Vec<PrivateKeyDer<'static>> = pem_items(key_pem, key_label)?
        .into_iter()
        .filter_map(|item| match item {
            Item::Pkcs1Key(k) => Some(k.into()),
            Item::Pkcs8Key(k) => Some(k.into()),
            Item::Sec1Key(k) => Some(k.into()),
            _ => None,
        })
        .collect();
    let key = match keys.len() {
        1 => keys.remove(0),
        0 if contains(key_pem, b"-----BEGIN ENCRYPTED PRIVATE KEY-----") => {
            return Err(Error::Load(format!(
                "{key_label}: the private key is encrypted (an unencrypted key is needed)"
            )))
        }
        0 => return Err(Error::Load(format!("{key_label}: no PEM private key"))),
        n => return Err(Error::Load(format!("{key_label}: {n} private keys (expected one)"))),
    };
    let leaf = Leaf::parse(&chain[0]).map_err(|e| Error::Load(format!("{chain_label}: {e}")))?;
    let signing = rustls::crypto::ring::sign::any_supported_type(&key)
        .map_err(|e| Error::Load(format!("{key_label}: unsupported private key type ({e})")))?;
    let ck = CertifiedKey::new(chain, signing);
    match ck.keys_match() {
        Ok(()) | Err(rustls::Error::InconsistentKeys(rustls::InconsistentKeys::Unknown)) => {}
        Err(_) if chain_label == key_label => {
            return Err(Error::Load(format!(
                "{key_label}: the private key does not match the certificate"
            )))
        }
        Err(_) => {
            return Err(Error::Load(format!(
                "{key_label}: the private key does not match the certificate in {chain_label}"
            )))
        }
    }
    Ok((Arc::new(ck), leaf))
}

fn pem_items(pem: &[u8], label: &str) -> Result<Vec<Item>, Error> {
    rustls_pemfile::read_all(&mut &pem[..])
        .collect::<Result<Vec<_>, _>>()
        .map_err(|e| Error::Load(format!("{label}: invalid PEM: {e}")))
}

fn contains(haystack: &[u8], needle: &[u8]) -> bool {
    haystack.windows(needle.len()).any(|w| w == needle)
}
