//! What a balancer reads from a request and when it counts the request as over: the
//! [`Protocol`] a [`Balancer`](crate::Balancer) speaks.
//!
//! A call asks the protocol three things: the request's hash key (for consistent
//! hashing), the endpoint it should avoid if another can take it (a retry's
//! [`Avoid`]), and, once the endpoint's response is in, how long the request's
//! [`InFlight`] guard lives. [`Plain`], the default, reads nothing and ends the request
//! with the response. [`KeyFn`] computes a key with a closure. `http::Http` (feature
//! `http`, what `Builder::http` sets) reads both from the request's extensions and keeps
//! the guard in the response body until the body ends.

use std::fmt;

use crate::endpoint::EndpointId;
use crate::load::InFlight;

/// How a [`Balancer`](crate::Balancer) reads requests of type `Req` and completes
/// responses of type `Rsp`.
///
/// One type parameter of the balancer, [`Plain`] unless set with
/// [`Builder::protocol`](crate::Builder::protocol) (or `Builder::http`): it is the
/// one thing about a request the balancer needs to know by type, because it decides
/// the type a call returns (an HTTP body that carries the guard). `docs/architecture.md`
/// says why it is a parameter of the balancer and not of the endpoint's service.
pub trait Protocol<Req, Rsp>: Clone {
    /// The response handed back to the caller.
    type Output;

    /// The request's hash key, for consistent hashing. `None` by default (a hashing
    /// policy then picks as weighted random does).
    #[inline]
    fn key(&self, req: &Req) -> Option<u64> {
        let _ = req;
        None
    }

    /// An endpoint this request should not go to if another can take it: the one a
    /// previous attempt failed on, for a retry (HAProxy's `redispatch`). `None` by
    /// default.
    #[inline]
    fn avoid<'r>(&self, req: &'r Req) -> Option<&'r EndpointId> {
        let _ = req;
        None
    }

    /// Takes the endpoint's response and the request's guard; returns the response,
    /// perhaps with the guard attached to it. The guard's outcome is recorded when it
    /// drops: call [`InFlight::succeed`] or [`InFlight::fail`] first (a guard dropped
    /// with neither is a cancellation).
    fn complete(&self, response: Rsp, guard: InFlight) -> Self::Output;
}

/// The default [`Protocol`]: no hash key, no endpoint to avoid, and the request is over
/// (a success) when the response arrives. tower's `load::CompleteOnResponse` does the
/// same for its load wrappers.
#[derive(Clone, Copy, Debug, Default)]
pub struct Plain;

impl<Req, Rsp> Protocol<Req, Rsp> for Plain {
    type Output = Rsp;

    #[inline]
    fn complete(&self, response: Rsp, mut guard: InFlight) -> Rsp {
        guard.succeed();
        drop(guard);
        response
    }
}

/// Asks that a retry go to another endpoint than this one (when another is eligible).
///
/// An `http::Request` carries it in its extensions (feature `http`: `http::Http` and
/// [`AvoidHint`] read it there); a request of another type names the endpoint to avoid
/// through its own [`AvoidHint`].
#[derive(Clone, Debug, PartialEq, Eq, Hash)]
pub struct Avoid(pub EndpointId);

/// A request's hash key, carried in `http::Request` extensions where a router put it
/// (feature `http`: `http::Http` reads it there).
#[derive(Clone, Copy, Debug, PartialEq, Eq, Hash)]
pub struct HashKey(pub u64);

/// A request that can name an endpoint to avoid, for a retry: what [`KeyFn`] reads
/// besides the key.
///
/// An `http::Request` names it with an [`Avoid`] in its extensions (feature `http`).
/// Requests of other types name none unless their type says otherwise: a request type
/// of your own implements it (`impl AvoidHint for MyRequest {}` for none); integers,
/// strings, byte vectors and `()` name none.
pub trait AvoidHint {
    /// The endpoint this request should not go to if another can take it.
    fn avoid_hint(&self) -> Option<&EndpointId> {
        None
    }
}

macro_rules! avoids_nothing {
    ($($t:ty),* $(,)?) => { $(impl AvoidHint for $t {})* };
}

avoids_nothing!(
    (),
    u8,
    u16,
    u32,
    u64,
    u128,
    usize,
    i8,
    i16,
    i32,
    i64,
    i128,
    isize,
    String,
    &str,
    Vec<u8>,
);

/// A [`Protocol`] whose hash key a closure computes. The endpoint to avoid (a retry's
/// [`Avoid`]) comes from the request ([`AvoidHint`]); the request is over when the
/// response arrives, as with [`Plain`].
///
/// ```
/// use lb_core::balance::{hash_key, Maglev};
/// use lb_core::{Balancer, KeyFn};
///
/// let builder = Balancer::builder(Maglev::new())
///     .protocol(KeyFn(|user: &String| Some(hash_key(user.as_bytes()))));
/// # let _ = builder;
/// ```
#[derive(Clone, Copy)]
pub struct KeyFn<F>(pub F);

impl<F> fmt::Debug for KeyFn<F> {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        f.write_str("KeyFn")
    }
}

impl<Req, Rsp, F> Protocol<Req, Rsp> for KeyFn<F>
where
    Req: AvoidHint,
    F: Fn(&Req) -> Option<u64> + Clone,
{
    type Output = Rsp;

    #[inline]
    fn key(&self, req: &Req) -> Option<u64> {
        (self.0)(req)
    }

    #[inline]
    fn avoid<'r>(&self, req: &'r Req) -> Option<&'r EndpointId> {
        req.avoid_hint()
    }

    #[inline]
    fn complete(&self, response: Rsp, guard: InFlight) -> Rsp {
        <Plain as Protocol<Req, Rsp>>::complete(&Plain, response, guard)
    }
}
