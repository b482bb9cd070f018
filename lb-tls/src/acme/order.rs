//! One order with instant-acme: the account, the challenges, the CSR, the certificate.

use std::sync::Arc;
use std::time::Duration;

use instant_acme::{
    Account, AccountBuilder, AuthorizationStatus, ChallengeType, Identifier, NewAccount, NewOrder, Order, OrderStatus,
    RetryPolicy,
};
use rustls::pki_types::{PrivateKeyDer, PrivatePkcs8KeyDer};
use rustls::sign::CertifiedKey;

use super::{storage, ChallengeKind, Http01Responder, Inner};
use crate::CertStore;

/// The account, loaded or created once and shared by the orders.
#[derive(Default)]
pub(super) struct Accounts {
    current: tokio::sync::Mutex<Option<Current>>,
}

struct Current {
    account: Account,
    /// Bumped with each account, so that concurrent orders replace a refused one once.
    generation: u64,
}

impl std::fmt::Debug for Accounts {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        f.debug_struct("Accounts").finish_non_exhaustive()
    }
}

/// An account to order with.
struct InUse {
    account: Account,
    generation: u64,
    /// Created for this order (so a refusal is not the account's fault).
    fresh: bool,
}

impl Accounts {
    /// The current account; loaded from storage or created if there is none yet, or
    /// replaced by a new one if `replace` names the current generation.
    async fn get(&self, inner: &Inner, replace: Option<u64>) -> Result<InUse, String> {
        let mut current = self.current.lock().await;
        if let Some(c) = &*current {
            if replace != Some(c.generation) {
                return Ok(InUse {
                    account: c.account.clone(),
                    generation: c.generation,
                    fresh: false,
                });
            }
        }
        let generation = current.as_ref().map_or(0, |c| c.generation) + 1;
        let cfg = &inner.cfg;
        if replace.is_none() {
            if let Some(credentials) = storage::read_account(&cfg.storage, &cfg.directory) {
                let account = builder(inner)?
                    .from_credentials(credentials)
                    .await
                    .map_err(|e| format!("cannot restore the stored ACME account: {e}"))?;
                *current = Some(Current {
                    account: account.clone(),
                    generation,
                });
                return Ok(InUse {
                    account,
                    generation,
                    fresh: false,
                });
            }
        }
        let contact = cfg.email.as_ref().map(|e| format!("mailto:{e}"));
        let contacts: Vec<&str> = contact.iter().map(String::as_str).collect();
        let new = NewAccount {
            contact: &contacts,
            terms_of_service_agreed: true,
            only_return_existing: false,
        };
        let (account, credentials) = builder(inner)?
            .create(&new, cfg.directory.clone(), None)
            .await
            .map_err(|e| format!("cannot create an ACME account: {e}"))?;
        tracing::info!(directory = %cfg.directory, id = %account.id(), "ACME: new account");
        if let Err(error) = storage::write_account(&cfg.storage, &cfg.directory, credentials) {
            tracing::warn!(%error, "ACME storage: cannot store the account (it is used anyway)");
        }
        *current = Some(Current {
            account: account.clone(),
            generation,
        });
        Ok(InUse {
            account,
            generation,
            fresh: true,
        })
    }
}

fn builder(inner: &Inner) -> Result<AccountBuilder, String> {
    match &inner.cfg.directory_ca {
        Some(ca) => Account::builder_with_root(ca),
        None => Account::builder(),
    }
    .map_err(|e| format!("cannot set up the ACME HTTPS client: {e}"))
}

/// Orders a certificate for `name` and returns its PEM chain and PEM private key.
pub(super) async fn order(inner: &Inner, name: &str) -> Result<(String, String), String> {
    let identifiers = [Identifier::Dns(name.to_owned())];
    let in_use = inner.accounts.get(inner, None).await?;
    let mut order = match in_use.account.new_order(&NewOrder::new(&identifiers)).await {
        Ok(order) => order,
        // The directory refused the stored account (it forgot it: a test server restarted,
        // the account was deactivated...): a new account, once.
        Err(e @ instant_acme::Error::Api(_)) if !in_use.fresh => {
            tracing::warn!(name = %name, error = %e, "ACME: the directory refused an order from the stored account; creating a new account");
            let in_use = inner.accounts.get(inner, Some(in_use.generation)).await?;
            in_use
                .account
                .new_order(&NewOrder::new(&identifiers))
                .await
                .map_err(|e| format!("new order: {e}"))?
        }
        Err(e) => return Err(format!("new order: {e}")),
    };

    let published = answer_challenges(&mut order, inner, name).await?;
    let retry = RetryPolicy::new()
        .initial_delay(Duration::from_millis(250))
        .backoff(1.5)
        .timeout(inner.cfg.order_timeout);
    let status = order
        .poll_ready(&retry)
        .await
        .map_err(|e| format!("waiting for the validation: {e}"))?;
    drop(published);
    if status != OrderStatus::Ready {
        return Err(format!("the order is {status:?}: {}", failure_detail(&mut order).await));
    }

    let key = rcgen::KeyPair::generate().map_err(|e| format!("cannot generate a key: {e}"))?;
    let mut params =
        rcgen::CertificateParams::new(vec![name.to_owned()]).map_err(|e| format!("cannot make a CSR: {e}"))?;
    params.distinguished_name = rcgen::DistinguishedName::new();
    let csr = params
        .serialize_request(&key)
        .map_err(|e| format!("cannot make a CSR: {e}"))?;
    order
        .finalize_csr(csr.der())
        .await
        .map_err(|e| format!("finalize: {e}"))?;
    let chain = order
        .poll_certificate(&retry)
        .await
        .map_err(|e| format!("waiting for the certificate: {e}"))?;
    Ok((chain, key.serialize_pem()))
}

/// Challenge answers published for an order, withdrawn when dropped.
struct Published<'a> {
    http01: &'a Http01Responder,
    store: &'a CertStore,
    tokens: Vec<String>,
    alpn_names: Vec<String>,
}

impl Drop for Published<'_> {
    fn drop(&mut self) {
        for token in &self.tokens {
            self.http01.withdraw(token);
        }
        for name in &self.alpn_names {
            self.store.set_challenge(name, None);
        }
    }
}

/// For each pending authorization, publishes the answer to the preferred challenge the
/// directory offers and then tells the directory it is ready.
async fn answer_challenges<'a>(order: &mut Order, inner: &'a Inner, name: &str) -> Result<Published<'a>, String> {
    let mut published = Published {
        http01: &inner.http01,
        store: &inner.store,
        tokens: Vec::new(),
        alpn_names: Vec::new(),
    };
    let mut authorizations = order.authorizations();
    while let Some(authz) = authorizations.next().await {
        let mut authz = authz.map_err(|e| format!("authorization: {e}"))?;
        match authz.status {
            AuthorizationStatus::Pending => {}
            // Reused from an earlier order.
            AuthorizationStatus::Valid => continue,
            status => return Err(format!("the authorization is {status:?}")),
        }
        let offered: Vec<ChallengeType> = authz.challenges.iter().map(|c| c.r#type.clone()).collect();
        let Some(kind) = inner
            .cfg
            .challenges
            .iter()
            .copied()
            .find(|k| offered.contains(&challenge_type(*k)))
        else {
            return Err(format!(
                "the directory offers none of the configured challenges ({:?}), only {offered:?}",
                inner.cfg.challenges
            ));
        };
        let mut challenge = authz
            .challenge(challenge_type(kind))
            .ok_or("the offered challenge vanished")?;
        let key_authorization = challenge.key_authorization();
        match kind {
            ChallengeKind::Http01 => {
                inner.http01.publish(&challenge.token, key_authorization.as_str());
                published.tokens.push(challenge.token.clone());
            }
            ChallengeKind::TlsAlpn01 => {
                let key = alpn_certificate(name, key_authorization.digest().as_ref())?;
                inner.store.set_challenge(name, Some(key));
                published.alpn_names.push(name.to_owned());
            }
        }
        challenge
            .set_ready()
            .await
            .map_err(|e| format!("challenge {kind:?}: {e}"))?;
    }
    Ok(published)
}

fn challenge_type(kind: ChallengeKind) -> ChallengeType {
    match kind {
        ChallengeKind::Http01 => ChallengeType::Http01,
        ChallengeKind::TlsAlpn01 => ChallengeType::TlsAlpn01,
    }
}

/// The tls-alpn-01 answer (RFC 8737 3): a self-signed certificate for `name` with the
/// critical acmeIdentifier extension holding the SHA-256 digest of the key authorization.
fn alpn_certificate(name: &str, digest: &[u8]) -> Result<Arc<CertifiedKey>, String> {
    let failed = |e: rcgen::Error| format!("cannot make the tls-alpn-01 certificate: {e}");
    let key = rcgen::KeyPair::generate().map_err(failed)?;
    let mut params = rcgen::CertificateParams::new(vec![name.to_owned()]).map_err(failed)?;
    params.custom_extensions = vec![rcgen::CustomExtension::new_acme_identifier(digest)];
    let cert = params.self_signed(&key).map_err(failed)?;
    let der = PrivateKeyDer::Pkcs8(PrivatePkcs8KeyDer::from(key.serialize_der()));
    let signer = rustls::crypto::ring::sign::any_supported_type(&der)
        .map_err(|e| format!("cannot use the tls-alpn-01 key: {e}"))?;
    Ok(Arc::new(CertifiedKey::new(vec![cert.der().clone()], signer)))
}

/// Why an order became invalid: the errors of its challenges and of the order itself.
async fn failure_detail(order: &mut Order) -> String {
    let mut details = Vec::new();
    let mut authorizations = order.authorizations();
    while let Some(Ok(mut authz)) = authorizations.next().await {
        if let Ok(state) = authz.refresh().await {
            for challenge in &state.challenges {
                if let Some(error) = &challenge.error {
                    details.push(format!("{:?}: {error}", challenge.r#type));
                }
            }
        }
    }
    if let Some(error) = &order.state().error {
        details.push(error.to_string());
    }
    if details.is_empty() {
        "no reason given".to_owned()
    } else {
        details.join("; ")
    }
}
