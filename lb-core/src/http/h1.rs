//! The HTTP/1.1 client side of one endpoint connection, driven by the request's own task.
//!
//! hyper's `client::conn::http1` runs each connection as a task of its own: a request is
//! sent to it over a channel, the response comes back over a oneshot and its body over
//! another channel, so every request costs two task hops. Here the request's future
//! writes the request and parses the answer itself ([`Exchange::poll_head`]), and the
//! response body reads the socket itself ([`Exchange::poll_body`]): no task, no
//! channel, as HAProxy and nginx serve both sides of a request in one pass.
//!
//! Messages follow RFC 9112: the request is framed by its body's exact length
//! (`Content-Length`) or chunked; the response by section 6.3's rules (no body for
//! `HEAD`, 1xx, 204 and 304; `Transfer-Encoding` before `Content-Length`, and both make
//! the connection unfit for reuse; otherwise until the connection closes). Interim 1xx
//! answers are skipped, a `101 Switching Protocols` hands the connection over
//! ([`Upgraded`]).
//!
//! An idle connection is its transport only ([`Io`]): the buffers live in the
//! exchange, so a pooled connection holds none.

use std::io;
use std::pin::Pin;
use std::task::{ready, Context, Poll};

use bytes::{Buf, BufMut, Bytes, BytesMut};
use http::header::{HeaderMap, HeaderName, HeaderValue, CONTENT_LENGTH, TRANSFER_ENCODING};
use http::{Method, Request, StatusCode, Version};
use http_body::{Body as _, Frame};
use tokio::io::{AsyncRead, AsyncWrite, ReadBuf};
use tokio::net::TcpStream;

use super::forward::connection_lists;
use super::Body;

/// Responses with more header fields are refused.
pub(super) const MAX_HEADERS: usize = 100;
/// A response head longer than this is refused (hyper's default buffer limit).
const MAX_HEAD: usize = 8192 + 4096 * 100;
/// A chunk size line longer than this is refused.
const MAX_CHUNK_LINE: usize = 4096;
/// Response trailers longer than this are refused.
const MAX_TRAILERS: usize = 16 * 1024;
/// The first read of an exchange asks for this much room.
pub(super) const READ_SIZE: usize = 8 * 1024;
/// The first read of an answer (or, in the server, of a request head) goes to a buffer
/// of this size on the stack and is copied out at its exact length: most heads (and
/// small bodies) fit, and no 8 KiB buffer is held for a few hundred bytes.
pub(super) const FIRST_READ: usize = 4096;
/// Reads of a long body grow up to this.
pub(super) const READ_SIZE_MAX: usize = 64 * 1024;
/// A request body is gathered up to this much before it is written.
pub(super) const WRITE_HIGH: usize = 64 * 1024;

/// An endpoint connection's transport.
pub(super) enum Io {
    Tcp(TcpStream),
    #[cfg(feature = "tls")]
    Tls(Box<tokio_rustls::client::TlsStream<TcpStream>>),
}

impl Io {
    /// Whether an idle connection can take a request: nothing has arrived on it (the
    /// endpoint closing it, or bytes no request asked for). Costs no system call unless
    /// the socket reported it readable.
    pub(super) fn is_reusable(&mut self) -> bool {
        let mut cx = Context::from_waker(futures_util::task::noop_waker_ref());
        let mut byte = [0u8; 1];
        let mut buf = ReadBuf::new(&mut byte);
        matches!(Pin::new(self).poll_read(&mut cx, &mut buf), Poll::Pending)
    }
}

impl AsyncRead for Io {
    #[inline]
    fn poll_read(self: Pin<&mut Self>, cx: &mut Context<'_>, buf: &mut ReadBuf<'_>) -> Poll<io::Result<()>> {
        match self.get_mut() {
            Io::Tcp(s) => Pin::new(s).poll_read(cx, buf),
            #[cfg(feature = "tls")]
            Io::Tls(s) => Pin::new(s.as_mut()).poll_read(cx, buf),
        }
    }
}

impl AsyncWrite for Io {
    #[inline]
    fn poll_write(self: Pin<&mut Self>, cx: &mut Context<'_>, buf: &[u8]) -> Poll<io::Result<usize>> {
        match self.get_mut() {
            Io::Tcp(s) => Pin::new(s).poll_write(cx, buf),
            #[cfg(feature = "tls")]
            Io::Tls(s) => Pin::new(s.as_mut()).poll_write(cx, buf),
        }
    }

    #[inline]
    fn poll_flush(self: Pin<&mut Self>, cx: &mut Context<'_>) -> Poll<io::Result<()>> {
        match self.get_mut() {
            Io::Tcp(s) => Pin::new(s).poll_flush(cx),
            #[cfg(feature = "tls")]
            Io::Tls(s) => Pin::new(s.as_mut()).poll_flush(cx),
        }
    }

    fn poll_shutdown(self: Pin<&mut Self>, cx: &mut Context<'_>) -> Poll<io::Result<()>> {
        match self.get_mut() {
            Io::Tcp(s) => Pin::new(s).poll_shutdown(cx),
            #[cfg(feature = "tls")]
            Io::Tls(s) => Pin::new(s.as_mut()).poll_shutdown(cx),
        }
    }
}

/// How a received body (a response's here, a request's in the server) is delimited.
#[derive(Clone, Copy, Debug, PartialEq, Eq)]
pub(super) enum Framing {
    /// This many bytes are left.
    Length(u64),
    Chunked(Chunk),
    /// Until the connection closes.
    Eof,
}

/// How a body is sent (a request's here, a response's in the server).
#[derive(Clone, Copy, Debug, PartialEq, Eq)]
pub(super) enum Sending {
    /// This many bytes are left to send.
    Length(u64),
    Chunked,
    /// As it comes, ended by closing the connection (a response to HTTP/1.0).
    Raw,
}

/// Where a chunked body's decoder is.
#[derive(Clone, Copy, Debug, PartialEq, Eq)]
pub(super) enum Chunk {
    /// Before a chunk size line.
    Size,
    /// Inside a chunk's data: this many bytes are left.
    Data(u64),
    /// After a chunk's data, before its CRLF.
    DataEnd,
    /// After the last chunk: trailer fields, then an empty line.
    Trailers,
}

/// Why an exchange failed.
#[derive(Debug)]
pub(super) enum Failure {
    /// The pooled connection was found closed before any of the answer came, and the
    /// request may be sent again, as it is, on a new connection.
    Stale(Replay),
    /// The request never left (it failed to write at all on a new connection).
    NotSent(io::Error),
    /// The exchange broke.
    Broken(crate::BoxError),
}

/// A request to send again on a new connection: its bytes, whether it is `HEAD`, and
/// whether it lets the connection be kept.
#[derive(Debug)]
pub(super) struct Replay {
    bytes: Bytes,
    head_request: bool,
    keep_alive: bool,
}

/// A response head, read.
pub(super) struct Head {
    pub(super) status: StatusCode,
    pub(super) version: Version,
    pub(super) headers: HeaderMap,
}

/// One request and its response on one connection, from the first byte written to the
/// last byte read.
pub(super) struct Exchange {
    io: Io,
    /// The request's bytes not yet written (from `written`).
    wbuf: BytesMut,
    written: usize,
    /// `wbuf` holds the whole request from its first byte (nothing of it was dropped
    /// after writing), so it can be sent again.
    whole: bool,
    /// The request body still to be written; `None` once it ended.
    body: Option<Body>,
    send: Option<Sending>,
    /// Everything is written and flushed (or writing failed and stopped).
    sent: bool,
    /// The whole request is in `wbuf` (its body ended).
    complete: bool,
    /// Some of the request left: a write succeeded.
    any_written: bool,
    /// Writing failed; kept while an answer the endpoint sent early may still be read.
    write_error: Option<io::Error>,
    /// The request body failed or broke its framing.
    body_failed: bool,
    rbuf: BytesMut,
    read_size: usize,
    /// Some of the answer has arrived.
    answered: bool,
    head_request: bool,
    connect_request: bool,
    idempotent: bool,
    /// The connection came from the pool.
    reused: bool,
    /// Neither side asked to close after this exchange.
    keep_alive: bool,
    /// The response body's framing, once the head is read.
    recv: Framing,
    /// The response body ended.
    done: bool,
}

impl Exchange {
    /// Starts an exchange: the request's head (and as much of its body as is ready) will
    /// go out in one write. `req` must be in origin form with a `Host` header.
    pub(super) fn start(io: Io, req: Request<Body>, reused: bool) -> Box<Self> {
        let (parts, body) = req.into_parts();
        let hint = body.size_hint();
        let declared = content_length(&parts.headers).ok().flatten();
        let (framing, body) = if body.is_end_stream() {
            (None, None)
        } else {
            let framing = match hint.exact().or(declared) {
                Some(n) => Sending::Length(n),
                None => Sending::Chunked,
            };
            (Some(framing), Some(body))
        };
        let mut wbuf = BytesMut::with_capacity(256 + 32 * parts.headers.len());
        put_head(&mut wbuf, &parts, framing, declared.is_some());
        let mut exchange = Exchange::new(io, wbuf, body, framing, reused);
        exchange.keep_alive = !connection_lists(&parts.headers, "close");
        exchange.head_request = parts.method == Method::HEAD;
        exchange.connect_request = parts.method == Method::CONNECT;
        exchange.idempotent = parts.method.is_idempotent();
        exchange
    }

    /// Sends again, on a new connection, a request a stale pooled connection took.
    pub(super) fn replay(io: Io, replay: Replay) -> Box<Self> {
        let mut exchange = Exchange::new(io, BytesMut::from(&replay.bytes[..]), None, None, false);
        exchange.head_request = replay.head_request;
        exchange.keep_alive = replay.keep_alive;
        exchange
    }

    /// An exchange about to write `wbuf` and then `body`, for an idempotent request
    /// other than `HEAD` or `CONNECT` that lets the connection be kept.
    fn new(io: Io, wbuf: BytesMut, body: Option<Body>, send: Option<Sending>, reused: bool) -> Box<Self> {
        Box::new(Exchange {
            io,
            wbuf,
            written: 0,
            whole: true,
            complete: body.is_none(),
            body,
            send,
            sent: false,
            any_written: false,
            write_error: None,
            body_failed: false,
            rbuf: BytesMut::new(),
            read_size: READ_SIZE,
            answered: false,
            head_request: false,
            connect_request: false,
            idempotent: true,
            reused,
            keep_alive: true,
            recv: Framing::Length(0),
            done: false,
        })
    }

    /// Writes what can be written: the pending bytes, then as much of the body as is
    /// ready. Ready once everything is written and flushed.
    fn poll_send(&mut self, cx: &mut Context<'_>) -> Poll<io::Result<()>> {
        loop {
            // Gather what the body has ready, so the head and a small body go out in
            // one write.
            let mut body_pending = false;
            while let Some(body) = self.body.as_mut() {
                if self.wbuf.len() - self.written >= WRITE_HIGH {
                    break;
                }
                match Pin::new(body).poll_frame(cx) {
                    Poll::Pending => {
                        body_pending = true;
                        break;
                    }
                    Poll::Ready(frame) => {
                        if let Err(e) = self.put_body(frame) {
                            // The request's own fault: never a reason to send it again
                            // or to blame the connection.
                            self.body = None;
                            self.body_failed = true;
                            return Poll::Ready(Err(e));
                        }
                    }
                }
            }
            while self.written < self.wbuf.len() {
                let n = ready!(Pin::new(&mut self.io).poll_write(cx, &self.wbuf[self.written..]))?;
                if n == 0 {
                    return Poll::Ready(Err(io::ErrorKind::WriteZero.into()));
                }
                self.written += n;
                self.any_written = true;
            }
            if self.body.is_none() {
                ready!(Pin::new(&mut self.io).poll_flush(cx))?;
                return Poll::Ready(Ok(()));
            }
            // Written out with more to come: the room is reused, and the request can no
            // longer be sent again from it.
            self.wbuf.clear();
            self.written = 0;
            self.whole = false;
            if body_pending {
                // What a TLS stream still holds goes out now, not with the next frame.
                if let Poll::Ready(Err(e)) = Pin::new(&mut self.io).poll_flush(cx) {
                    return Poll::Ready(Err(e));
                }
                return Poll::Pending;
            }
        }
    }

    /// Adds one frame of the request body (or its end) to the pending bytes.
    fn put_body(&mut self, frame: Option<Result<Frame<Bytes>, crate::BoxError>>) -> io::Result<()> {
        if put_frame(&mut self.wbuf, &mut self.send, frame)? {
            self.body = None;
            self.complete = true;
        }
        Ok(())
    }

    /// Reads more of the answer into the read buffer; `Ok(0)` at the end of the stream.
    fn poll_fill(&mut self, cx: &mut Context<'_>) -> Poll<io::Result<usize>> {
        if !self.answered && self.rbuf.is_empty() {
            let first = ready!(poll_read_small(&mut self.io, cx))?;
            self.answered = !first.is_empty();
            let n = first.len();
            self.rbuf = first;
            return Poll::Ready(Ok(n));
        }
        if self.rbuf.capacity() - self.rbuf.len() < self.read_size / 2 {
            self.rbuf.reserve(self.read_size);
        }
        let n = ready!(tokio_util::io::poll_read_buf(
            Pin::new(&mut self.io),
            cx,
            &mut self.rbuf
        ))?;
        if n > 0 {
            self.answered = true;
            if n >= self.read_size && self.read_size < READ_SIZE_MAX {
                self.read_size *= 2;
            }
        }
        Poll::Ready(Ok(n))
    }

    /// Writes what can be written. A failed write stops the sending and is kept: the
    /// endpoint may have answered early (a 413 to an upload it refused), and that answer
    /// is read first. A failure of the request's own body ends the exchange at once.
    fn drive_send(&mut self, cx: &mut Context<'_>) -> Result<(), io::Error> {
        if self.sent {
            return Ok(());
        }
        match self.poll_send(cx) {
            Poll::Ready(Ok(())) => self.sent = true,
            Poll::Ready(Err(e)) if self.body_failed => return Err(e),
            Poll::Ready(Err(e)) => {
                self.sent = true;
                self.keep_alive = false;
                self.body = None;
                self.write_error = Some(e);
            }
            Poll::Pending => {}
        }
        Ok(())
    }

    /// The error to report when the answer cannot be read: the failed write's, if one
    /// failed first.
    fn read_failure(&mut self, e: io::Error) -> io::Error {
        self.write_error.take().unwrap_or(e)
    }

    /// Drives the exchange until the final response head is read (1xx answers other than
    /// 101 are passed over).
    pub(super) fn poll_head(&mut self, cx: &mut Context<'_>) -> Poll<Result<Head, Failure>> {
        loop {
            if let Err(e) = self.drive_send(cx) {
                return Poll::Ready(Err(self.failed(e)));
            }
            if !self.rbuf.is_empty() {
                match self.parse_head() {
                    Ok(Some(head))
                        if head.status.is_informational() && head.status != StatusCode::SWITCHING_PROTOCOLS =>
                    {
                        continue
                    }
                    Ok(Some(head)) => return Poll::Ready(Ok(head)),
                    Ok(None) => {}
                    Err(e) => return Poll::Ready(Err(Failure::Broken(e.into()))),
                }
            }
            match ready!(self.poll_fill(cx)) {
                Ok(0) => {
                    let e = io::Error::new(
                        io::ErrorKind::UnexpectedEof,
                        "the endpoint closed the connection before answering",
                    );
                    let e = self.read_failure(e);
                    return Poll::Ready(Err(self.failed(e)));
                }
                Ok(_) => {}
                Err(e) => {
                    let e = self.read_failure(e);
                    return Poll::Ready(Err(self.failed(e)));
                }
            }
        }
    }

    /// What a failure before the head means: a stale pooled connection whose request can
    /// go again, a request that never left, or a broken exchange.
    fn failed(&mut self, e: io::Error) -> Failure {
        if self.body_failed {
            return Failure::Broken(e.into());
        }
        if self.reused && !self.answered && self.whole && self.complete && !self.connect_request {
            // The endpoint closed the idle connection as the request went out. Sent
            // again only if it cannot have been acted on twice: an idempotent method,
            // or nothing of it left.
            if self.idempotent || !self.any_written {
                return Failure::Stale(Replay {
                    bytes: std::mem::take(&mut self.wbuf).freeze(),
                    head_request: self.head_request,
                    keep_alive: self.keep_alive,
                });
            }
        }
        if !self.reused && !self.answered && !self.any_written {
            return Failure::NotSent(e);
        }
        Failure::Broken(e.into())
    }

    /// Parses a response head at the start of the read buffer, taking it out.
    fn parse_head(&mut self) -> Result<Option<Head>, io::Error> {
        // Offsets of each field's name and value, so the head can be split off after
        // parsing and the values share its bytes.
        let mut spans = [Span::default(); MAX_HEADERS];
        let mut fields = [httparse::EMPTY_HEADER; MAX_HEADERS];
        let mut rsp = httparse::Response::new(&mut fields);
        let base = self.rbuf.as_ptr() as usize;
        let len = match rsp.parse(&self.rbuf) {
            Ok(httparse::Status::Complete(len)) if len > MAX_HEAD => {
                return Err(invalid(format!("response head longer than {MAX_HEAD} bytes")))
            }
            Ok(httparse::Status::Complete(len)) => len,
            Ok(httparse::Status::Partial) if self.rbuf.len() > MAX_HEAD => {
                return Err(invalid(format!("response head longer than {MAX_HEAD} bytes")))
            }
            Ok(httparse::Status::Partial) => return Ok(None),
            Err(e) => return Err(invalid(format!("malformed response head: {e}"))),
        };
        let code = rsp.code.unwrap_or_default();
        let status = StatusCode::from_u16(code).map_err(|_| invalid(format!("invalid status {code}")))?;
        let version = if rsp.version == Some(0) {
            Version::HTTP_10
        } else {
            Version::HTTP_11
        };
        let n = field_spans(base, rsp.headers, &mut spans);
        let head = self.rbuf.split_to(len).freeze();
        let headers = header_map(&head, &spans[..n], 0)?;
        Ok(Some(Head {
            status,
            version,
            headers,
        }))
    }

    /// Decides how the response body is delimited, and whether the connection can serve
    /// another request after it.
    pub(super) fn expect_body(&mut self, head: &mut Head) -> Result<(), io::Error> {
        let status = head.status;
        self.keep_alive &= match head.version {
            Version::HTTP_10 => connection_lists(&head.headers, "keep-alive"),
            _ => !connection_lists(&head.headers, "close"),
        };
        self.recv = if self.head_request
            || status.is_informational()
            || status == StatusCode::NO_CONTENT
            || status == StatusCode::NOT_MODIFIED
            || (self.connect_request && status.is_success())
        {
            Framing::Length(0)
        } else if head.headers.contains_key(TRANSFER_ENCODING) {
            // RFC 9112 6.1: chunked must be last; an HTTP/1.0 message with it is faulty;
            // with Content-Length too, the length is dropped and the connection is not
            // reused.
            if head.version == Version::HTTP_10 {
                return Err(invalid("Transfer-Encoding in an HTTP/1.0 response".into()));
            }
            if head.headers.remove(CONTENT_LENGTH).is_some() {
                self.keep_alive = false;
            }
            if chunked_last(&head.headers) {
                Framing::Chunked(Chunk::Size)
            } else {
                Framing::Eof
            }
        } else {
            match content_length(&head.headers) {
                Ok(Some(n)) => Framing::Length(n),
                Ok(None) => Framing::Eof,
                Err(()) => return Err(invalid("invalid Content-Length in the response".into())),
            }
        };
        if self.recv == Framing::Eof {
            self.keep_alive = false;
        }
        if status == StatusCode::SWITCHING_PROTOCOLS || (self.connect_request && status.is_success()) {
            self.keep_alive = false;
        }
        self.done = self.recv == Framing::Length(0);
        Ok(())
    }

    /// The whole body, when it is already in the read buffer and nothing more is to be
    /// written: the exchange is over as soon as the head is read.
    pub(super) fn take_whole_body(&mut self) -> Option<Bytes> {
        match self.recv {
            Framing::Length(n) if n > 0 && self.sent && self.rbuf.len() as u64 >= n => {
                self.recv = Framing::Length(0);
                self.done = true;
                Some(self.rbuf.split_to(n as usize).freeze())
            }
            _ => None,
        }
    }

    /// Whether everything of the request was written (an upgrade needs it so).
    pub(super) fn is_sent(&self) -> bool {
        self.sent && self.write_error.is_none()
    }

    /// Past the head, the request can no longer be sent again: its bytes are let go.
    pub(super) fn drop_replay(&mut self) {
        if self.sent {
            self.wbuf = BytesMut::new();
        }
    }

    /// Whether a response hands the connection over: a `CONNECT` answered 2xx.
    pub(super) fn is_tunnel(&self, status: StatusCode) -> bool {
        self.connect_request && status.is_success()
    }

    /// Whether the response body has ended.
    pub(super) fn is_done(&self) -> bool {
        self.done
    }

    /// What is left of the response body, when it is known.
    pub(super) fn remaining(&self) -> Option<u64> {
        match self.recv {
            Framing::Length(n) => Some(n),
            _ => None,
        }
    }

    /// The connection, if it can take another request: the response ended, the request
    /// was all written, neither side asked to close and nothing unasked-for arrived.
    pub(super) fn into_reusable(self) -> Option<Io> {
        let clean = self.sent && self.write_error.is_none();
        (self.done && clean && self.keep_alive && self.rbuf.is_empty()).then_some(self.io)
    }

    /// The connection with the bytes read past the head, after a 101.
    pub(super) fn into_upgraded(self) -> Upgraded {
        Upgraded {
            io: self.io,
            read: self.rbuf.freeze(),
        }
    }

    /// The next frame of the response body.
    pub(super) fn poll_body(&mut self, cx: &mut Context<'_>) -> Poll<Option<Result<Frame<Bytes>, io::Error>>> {
        loop {
            if self.done {
                return Poll::Ready(None);
            }
            self.drive_send(cx)?;
            if let Some(frame) = self.decode()? {
                return Poll::Ready(Some(Ok(frame)));
            }
            if self.done {
                return Poll::Ready(None);
            }
            match ready!(self.poll_fill(cx)) {
                Ok(0) if self.recv == Framing::Eof => {
                    self.done = true;
                    return Poll::Ready(None);
                }
                Ok(0) => {
                    let e = io::Error::new(
                        io::ErrorKind::UnexpectedEof,
                        "the endpoint closed the connection before the end of the body",
                    );
                    return Poll::Ready(Some(Err(self.read_failure(e))));
                }
                Ok(_) => {}
                Err(e) => return Poll::Ready(Some(Err(self.read_failure(e)))),
            }
        }
    }

    /// Takes the next frame out of the read buffer, if one is there.
    fn decode(&mut self) -> io::Result<Option<Frame<Bytes>>> {
        let frame = decode(&mut self.recv, &mut self.rbuf);
        self.done = self.recv == Framing::Length(0);
        frame
    }
}

/// Takes the next frame of a body framed by `recv` out of `rbuf`, if one is there. The
/// body has ended when `recv` is `Length(0)`.
pub(super) fn decode(recv: &mut Framing, rbuf: &mut BytesMut) -> io::Result<Option<Frame<Bytes>>> {
    loop {
        match recv {
            Framing::Length(0) => {
                return Ok(None);
            }
            Framing::Length(left) => {
                if rbuf.is_empty() {
                    return Ok(None);
                }
                let n = (*left).min(rbuf.len() as u64);
                *left -= n;
                return Ok(Some(Frame::data(rbuf.split_to(n as usize).freeze())));
            }
            Framing::Eof => {
                if rbuf.is_empty() {
                    return Ok(None);
                }
                return Ok(Some(Frame::data(rbuf.split().freeze())));
            }
            Framing::Chunked(Chunk::Size) => {
                let Some(end) = find_crlf(rbuf) else {
                    return too_long(rbuf.len(), MAX_CHUNK_LINE, "chunk size line");
                };
                let size = chunk_size(&rbuf[..end])?;
                rbuf.advance(end + 2);
                *recv = Framing::Chunked(if size == 0 { Chunk::Trailers } else { Chunk::Data(size) });
            }
            Framing::Chunked(Chunk::Data(left)) => {
                if rbuf.is_empty() {
                    return Ok(None);
                }
                let n = (*left).min(rbuf.len() as u64);
                *left -= n;
                if *left == 0 {
                    *recv = Framing::Chunked(Chunk::DataEnd);
                }
                return Ok(Some(Frame::data(rbuf.split_to(n as usize).freeze())));
            }
            Framing::Chunked(Chunk::DataEnd) => {
                if rbuf.len() < 2 {
                    return Ok(None);
                }
                if &rbuf[..2] != b"\r\n" {
                    return Err(invalid("a chunk's data is not followed by CRLF".into()));
                }
                rbuf.advance(2);
                *recv = Framing::Chunked(Chunk::Size);
            }
            Framing::Chunked(Chunk::Trailers) => {
                if rbuf.starts_with(b"\r\n") {
                    rbuf.advance(2);
                    *recv = Framing::Length(0);
                    continue;
                }
                let Some(end) = rbuf.windows(4).position(|w| w == b"\r\n\r\n") else {
                    return too_long(rbuf.len(), MAX_TRAILERS, "trailers");
                };
                let block = rbuf.split_to(end + 4).freeze();
                *recv = Framing::Length(0);
                let trailers = parse_trailers(&block)?;
                return Ok(Some(Frame::trailers(trailers)));
            }
        }
    }
}

/// Where one header field's name and value lie in a head: offsets and lengths.
#[derive(Clone, Copy, Default)]
pub(super) struct Span(u32, u32, u32, u32);

/// Notes where httparse found each field in the buffer that starts at `base`, so the
/// head can be split off after parsing and the values share its bytes. Returns how many.
pub(super) fn field_spans(base: usize, fields: &[httparse::Header<'_>], spans: &mut [Span]) -> usize {
    for (span, field) in spans.iter_mut().zip(fields) {
        let name = field.name.as_ptr() as usize - base;
        let value = field.value.as_ptr() as usize - base;
        *span = Span(
            name as u32,
            field.name.len() as u32,
            value as u32,
            field.value.len() as u32,
        );
    }
    fields.len()
}

/// The fields of `head` at `spans`, as a map whose values share the head's bytes, with
/// room for `spare` more.
pub(super) fn header_map(head: &Bytes, spans: &[Span], spare: usize) -> io::Result<HeaderMap> {
    let mut headers = HeaderMap::with_capacity(spans.len() + spare);
    for &Span(name, name_len, value, value_len) in spans {
        let name = HeaderName::from_bytes(&head[name as usize..(name + name_len) as usize])
            .map_err(|_| invalid("invalid header name".into()))?;
        let value = HeaderValue::from_maybe_shared(head.slice(value as usize..(value + value_len) as usize))
            .map_err(|_| invalid(format!("invalid value of the header {name}")))?;
        headers.append(name, value);
    }
    Ok(headers)
}

/// Reads once into a buffer on the stack ([`FIRST_READ`]) and returns what came, in a
/// buffer of exactly its size (empty at the end of the stream).
pub(super) fn poll_read_small<R: AsyncRead + Unpin + ?Sized>(
    io: &mut R,
    cx: &mut Context<'_>,
) -> Poll<io::Result<BytesMut>> {
    // Not zeroed: the transport only writes into it (4 KiB of memset per read showed
    // in the profile).
    let mut first = [std::mem::MaybeUninit::<u8>::uninit(); FIRST_READ];
    let mut buf = ReadBuf::uninit(&mut first);
    ready!(Pin::new(io).poll_read(cx, &mut buf))?;
    Poll::Ready(Ok(BytesMut::from(buf.filled())))
}

/// Whether the last transfer coding is `chunked` (RFC 9112 6.1: only then does it frame
/// the message).
pub(super) fn chunked_last(headers: &HeaderMap) -> bool {
    headers
        .get_all(TRANSFER_ENCODING)
        .iter()
        .next_back()
        .and_then(|v| v.as_bytes().rsplit(|&b| b == b',').next())
        .is_some_and(|t| t.trim_ascii().eq_ignore_ascii_case(b"chunked"))
}

/// `Ok(None)`: more bytes are needed, unless there are too many already.
pub(super) fn too_long<T>(have: usize, max: usize, what: &str) -> io::Result<Option<T>> {
    if have > max {
        return Err(invalid(format!("{what} longer than {max} bytes")));
    }
    Ok(None)
}

pub(super) fn invalid(msg: String) -> io::Error {
    io::Error::new(io::ErrorKind::InvalidData, msg)
}

pub(super) fn find_crlf(buf: &[u8]) -> Option<usize> {
    buf.windows(2).position(|w| w == b"\r\n")
}

/// A chunk size line's size: hex digits (leading zeros allowed), then optional
/// whitespace and extensions, which may hold no control character but a tab.
pub(super) fn chunk_size(line: &[u8]) -> io::Result<u64> {
    let bad = || invalid("malformed chunk size".into());
    let digits = line.iter().take_while(|b| b.is_ascii_hexdigit()).count();
    let (hex, rest) = line.split_at(digits);
    let (space, ext) = rest.split_at(rest.iter().position(|&b| b == b';').unwrap_or(rest.len()));
    let significant = &hex[hex.iter().take_while(|&&b| b == b'0').count()..];
    if digits == 0
        || significant.len() > 15
        || !space.iter().all(|&b| b == b' ' || b == b'\t')
        || ext.iter().any(|&b| (b.is_ascii_control() && b != b'\t') || b == 0x7f)
    {
        return Err(bad());
    }
    Ok(significant.iter().fold(0u64, |n, &d| {
        n * 16 + u64::from(char::from(d).to_digit(16).expect("a hex digit"))
    }))
}

pub(super) fn parse_trailers(block: &[u8]) -> io::Result<HeaderMap> {
    let mut fields = [httparse::EMPTY_HEADER; MAX_HEADERS];
    let parsed = match httparse::parse_headers(block, &mut fields) {
        Ok(httparse::Status::Complete((_, fields))) => fields,
        _ => return Err(invalid("malformed response trailers".into())),
    };
    let mut map = HeaderMap::with_capacity(parsed.len());
    for f in parsed {
        let name = HeaderName::from_bytes(f.name.as_bytes()).map_err(|_| invalid("invalid trailer name".into()))?;
        let value = HeaderValue::from_bytes(f.value).map_err(|_| invalid("invalid trailer value".into()))?;
        map.append(name, value);
    }
    Ok(map)
}

/// The value of `Content-Length`: `Ok(None)` without one, `Err` if it is not one
/// number (repeated values must agree, RFC 9110 8.6).
pub(super) fn content_length(headers: &HeaderMap) -> Result<Option<u64>, ()> {
    let mut found = None;
    for v in headers.get_all(CONTENT_LENGTH) {
        for part in v.as_bytes().split(|&b| b == b',') {
            let part = part.trim_ascii();
            if part.is_empty() || part.len() > 19 || !part.iter().all(u8::is_ascii_digit) {
                return Err(());
            }
            let n = part.iter().fold(0u64, |n, &d| n * 10 + u64::from(d - b'0'));
            if found.is_some_and(|f| f != n) {
                return Err(());
            }
            found = Some(n);
        }
    }
    Ok(found)
}

/// The request line and fields. The body's framing replaces any `Content-Length` and
/// `Transfer-Encoding` the request carried.
fn put_head(dst: &mut BytesMut, parts: &http::request::Parts, framing: Option<Sending>, had_length: bool) {
    dst.extend_from_slice(parts.method.as_str().as_bytes());
    dst.put_u8(b' ');
    match parts.uri.path_and_query() {
        _ if parts.method == Method::CONNECT => {
            dst.extend_from_slice(parts.uri.authority().map_or("", |a| a.as_str()).as_bytes())
        }
        Some(pq) => dst.extend_from_slice(pq.as_str().as_bytes()),
        None => dst.put_u8(b'/'),
    }
    dst.extend_from_slice(b" HTTP/1.1\r\n");
    for (name, value) in &parts.headers {
        if name == CONTENT_LENGTH || name == TRANSFER_ENCODING {
            continue;
        }
        put_field(dst, name, value);
    }
    match framing {
        Some(Sending::Length(n)) => put_length(dst, n),
        Some(Sending::Chunked) => dst.extend_from_slice(b"transfer-encoding: chunked\r\n"),
        Some(Sending::Raw) => {}
        // No body: a length of 0 where the method expects a body, or the request said so.
        None if had_length || matches!(parts.method, Method::POST | Method::PUT | Method::PATCH) => put_length(dst, 0),
        None => {}
    }
    dst.extend_from_slice(b"\r\n");
}

pub(super) fn put_field(dst: &mut BytesMut, name: &HeaderName, value: &HeaderValue) {
    dst.extend_from_slice(name.as_str().as_bytes());
    dst.extend_from_slice(b": ");
    dst.extend_from_slice(value.as_bytes());
    dst.extend_from_slice(b"\r\n");
}

pub(super) fn put_fields(dst: &mut BytesMut, fields: &HeaderMap) {
    for (name, value) in fields {
        put_field(dst, name, value);
    }
}

/// Adds one frame of a body being sent (or its end, `None`) to `dst`, framed by `send`
/// (`None`: no body is expected). `Ok(true)` when the body has ended.
pub(super) fn put_frame(
    dst: &mut BytesMut,
    send: &mut Option<Sending>,
    frame: Option<Result<Frame<Bytes>, crate::BoxError>>,
) -> io::Result<bool> {
    let chunked = *send == Some(Sending::Chunked);
    match frame {
        None => match *send {
            Some(Sending::Length(0) | Sending::Raw) | None => Ok(true),
            Some(Sending::Length(n)) => Err(invalid(format!("the body ended {n} bytes short of its length"))),
            Some(Sending::Chunked) => {
                dst.extend_from_slice(b"0\r\n\r\n");
                Ok(true)
            }
        },
        Some(Err(e)) => Err(io::Error::other(e)),
        Some(Ok(frame)) => match frame.into_data() {
            Ok(data) if data.is_empty() => Ok(false),
            Ok(data) => {
                if let Some(Sending::Length(left)) = send {
                    if data.len() as u64 > *left {
                        return Err(invalid("the body is longer than its length".into()));
                    }
                    *left -= data.len() as u64;
                }
                if chunked {
                    put_hex(dst, data.len());
                    dst.extend_from_slice(b"\r\n");
                    dst.extend_from_slice(&data);
                    dst.extend_from_slice(b"\r\n");
                } else {
                    dst.extend_from_slice(&data);
                }
                Ok(false)
            }
            // Trailers end the body; only a chunked body can carry them.
            Err(frame) => match (chunked, frame.into_trailers()) {
                (true, Ok(trailers)) => {
                    dst.extend_from_slice(b"0\r\n");
                    put_fields(dst, &trailers);
                    dst.extend_from_slice(b"\r\n");
                    Ok(true)
                }
                _ => Ok(false),
            },
        },
    }
}

pub(super) fn put_length(dst: &mut BytesMut, n: u64) {
    dst.extend_from_slice(b"content-length: ");
    let mut digits = [0u8; 20];
    let mut i = digits.len();
    let mut n = n;
    loop {
        i -= 1;
        digits[i] = b'0' + (n % 10) as u8;
        n /= 10;
        if n == 0 {
            break;
        }
    }
    dst.extend_from_slice(&digits[i..]);
    dst.extend_from_slice(b"\r\n");
}

pub(super) fn put_hex(dst: &mut BytesMut, n: usize) {
    const HEX: &[u8; 16] = b"0123456789abcdef";
    let mut digits = [0u8; 16];
    let mut i = digits.len();
    let mut n = n;
    loop {
        i -= 1;
        digits[i] = HEX[n & 15];
        n >>= 4;
        if n == 0 {
            break;
        }
    }
    dst.extend_from_slice(&digits[i..]);
}

/// An endpoint connection handed over by `101 Switching Protocols` (or a `CONNECT`
/// answered 2xx): the bytes the endpoint sent past its answer, then the connection
/// itself. Take it from the response with [`upgrade::take`](super::upgrade::take).
pub struct Upgraded {
    io: Io,
    read: Bytes,
}

impl std::fmt::Debug for Upgraded {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        f.debug_struct("Upgraded")
            .field("buffered", &self.read.len())
            .finish_non_exhaustive()
    }
}

impl AsyncRead for Upgraded {
    fn poll_read(self: Pin<&mut Self>, cx: &mut Context<'_>, buf: &mut ReadBuf<'_>) -> Poll<io::Result<()>> {
        let this = self.get_mut();
        if !this.read.is_empty() {
            let n = this.read.len().min(buf.remaining());
            buf.put_slice(&this.read.split_to(n));
            return Poll::Ready(Ok(()));
        }
        Pin::new(&mut this.io).poll_read(cx, buf)
    }
}

impl AsyncWrite for Upgraded {
    fn poll_write(self: Pin<&mut Self>, cx: &mut Context<'_>, buf: &[u8]) -> Poll<io::Result<usize>> {
        Pin::new(&mut self.get_mut().io).poll_write(cx, buf)
    }

    fn poll_flush(self: Pin<&mut Self>, cx: &mut Context<'_>) -> Poll<io::Result<()>> {
        Pin::new(&mut self.get_mut().io).poll_flush(cx)
    }

    fn poll_shutdown(self: Pin<&mut Self>, cx: &mut Context<'_>) -> Poll<io::Result<()>> {
        Pin::new(&mut self.get_mut().io).poll_shutdown(cx)
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn chunk_sizes() {
        assert_eq!(chunk_size(b"1a").unwrap(), 26);
        assert_eq!(chunk_size(b"0005").unwrap(), 5);
        assert_eq!(chunk_size(b"000000000000000000000010").unwrap(), 16);
        assert_eq!(chunk_size(b"5 ;name=value").unwrap(), 5);
        assert_eq!(chunk_size(b"fffffffffffffff").unwrap(), 0xfff_ffff_ffff_ffff);
        for bad in [
            &b""[..],
            b"g",
            b";x",
            b"5 x",
            b"1000000000000000",
            b"5;a\nb",
            b"5;\x7f",
            b"5\r",
        ] {
            assert!(chunk_size(bad).is_err(), "{:?}", String::from_utf8_lossy(bad));
        }
    }

    #[test]
    fn content_lengths() {
        let map = |values: &[&'static str]| {
            let mut h = HeaderMap::new();
            for v in values {
                h.append(CONTENT_LENGTH, HeaderValue::from_static(v));
            }
            h
        };
        assert_eq!(content_length(&map(&[])), Ok(None));
        assert_eq!(content_length(&map(&["42"])), Ok(Some(42)));
        assert_eq!(content_length(&map(&["7, 7", "7"])), Ok(Some(7)));
        assert_eq!(content_length(&map(&["7", "8"])), Err(()));
        assert_eq!(content_length(&map(&["-1"])), Err(()));
        assert_eq!(content_length(&map(&["+1"])), Err(()));
        assert_eq!(content_length(&map(&[""])), Err(()));
        assert_eq!(content_length(&map(&["99999999999999999999"])), Err(()));
    }
}
