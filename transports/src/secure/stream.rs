//! The encrypted byte stream after the handshake.
//!
//! Writes are buffered into frames of up to [`MAX_PLAINTEXT`] bytes and sealed when the
//! buffer fills or on flush; reads decrypt whole frames. Memory is bounded: at most one
//! frame of read buffer, one of decrypted plaintext, one of pending plaintext and one sealed
//! frame (plus a rekey marker) waiting for the socket — all grown on demand, so an idle
//! connection with small messages holds far less.
//!
//! **Rekey.** Each direction rekeys on its own. After `max_frames` frames or `max_age`,
//! whichever comes first, the sender emits a frame with an empty plaintext (the only way an
//! empty frame is ever sent) and then applies Noise `Rekey()` to its sending key. A receiver
//! that decrypts an empty frame applies `Rekey()` to its receiving key. Nonces continue.

use std::io;
use std::pin::Pin;
use std::sync::Arc;
use std::task::{ready, Context, Poll};
use std::time::{Duration, Instant};

use futures::io::{AsyncRead, AsyncWrite};
use snow::TransportState;

use super::frame::{self, Peek, HEADER_LEN, MAX_FRAME_LEN, MAX_PLAINTEXT, TAG_LEN};
use super::stats::SecurityStats;

/// When a sender replaces its key.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub struct RekeyPolicy {
    pub max_frames: u64,
    pub max_age: Duration,
}

impl Default for RekeyPolicy {
    fn default() -> Self {
        RekeyPolicy {
            max_frames: 1 << 16,
            max_age: Duration::from_secs(3600),
        }
    }
}

impl RekeyPolicy {
    pub fn due(&self, frames: u64, age: Duration) -> bool {
        frames >= self.max_frames || age >= self.max_age
    }
}

/// Smallest read buffer: enough for many small frames per read call.
const READ_CHUNK: usize = 8 * 1024;

/// A secured connection: `AsyncRead + AsyncWrite` over any byte stream `S`.
pub struct XkStream<S> {
    io: S,
    session: TransportState,
    rekey: RekeyPolicy,
    stats: Arc<SecurityStats>,
    // Ciphertext read from `io`; `rbuf[rstart..rend]` is not yet consumed.
    rbuf: Vec<u8>,
    rstart: usize,
    rend: usize,
    // Decrypted plaintext not yet handed out: `plain[ppos..plen]`.
    plain: Vec<u8>,
    ppos: usize,
    plen: usize,
    // Plaintext accepted from the writer, not yet sealed.
    wplain: Vec<u8>,
    // Sealed frames, `wframe[wpos..]` not yet written to `io`.
    wframe: Vec<u8>,
    wpos: usize,
    sent_since_rekey: u64,
    last_rekey: Instant,
}

impl<S> std::fmt::Debug for XkStream<S> {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        f.debug_struct("XkStream")
            .field("sent_since_rekey", &self.sent_since_rekey)
            .finish_non_exhaustive()
    }
}

fn invalid(error: impl Into<Box<dyn std::error::Error + Send + Sync>>) -> io::Error {
    io::Error::new(io::ErrorKind::InvalidData, error)
}

/// Counts why a stream ended on a bad frame, then builds the error that ends it.
fn refuse(stats: &SecurityStats, reason: &'static str, error: impl std::fmt::Display) -> io::Error {
    stats.count_stream_error(reason);
    invalid(format!("{reason}: {error}"))
}

impl<S> XkStream<S> {
    pub fn new(
        io: S,
        session: TransportState,
        rekey: RekeyPolicy,
        stats: Arc<SecurityStats>,
    ) -> Self {
        Self::with_pending(io, session, rekey, stats, Vec::new())
    }

    /// Like [`Self::new`], with ciphertext already read from `io` (after the handshake).
    pub fn with_pending(
        io: S,
        session: TransportState,
        rekey: RekeyPolicy,
        stats: Arc<SecurityStats>,
        pending: Vec<u8>,
    ) -> Self {
        let rend = pending.len();
        XkStream {
            io,
            session,
            rekey,
            stats,
            rbuf: pending,
            rstart: 0,
            rend,
            plain: Vec::new(),
            ppos: 0,
            plen: 0,
            wplain: Vec::new(),
            wframe: Vec::new(),
            wpos: 0,
            sent_since_rekey: 0,
            last_rekey: Instant::now(),
        }
    }

    /// The underlying connection. Bytes written here bypass the encryption and will make
    /// the remote drop the connection; for tests and diagnostics.
    pub fn get_mut(&mut self) -> &mut S {
        &mut self.io
    }

    /// Seals `plain` as one frame onto the outgoing buffer, rekeying after it when due.
    fn seal(&mut self, plain: &[u8]) -> io::Result<()> {
        self.seal_frame(plain)?;
        self.sent_since_rekey += 1;
        if self
            .rekey
            .due(self.sent_since_rekey, self.last_rekey.elapsed())
        {
            self.seal_frame(&[])?;
            self.session.rekey_outgoing();
            self.sent_since_rekey = 0;
            self.last_rekey = Instant::now();
            self.stats.count_rekey_sent();
        }
        Ok(())
    }

    fn seal_frame(&mut self, plain: &[u8]) -> io::Result<()> {
        let start = self.wframe.len();
        let len = plain.len() + TAG_LEN;
        let header = frame::header(len).map_err(invalid)?;
        self.wframe.resize(start + HEADER_LEN + len, 0);
        self.wframe[start..start + HEADER_LEN].copy_from_slice(&header);
        self.session
            .write_message(plain, &mut self.wframe[start + HEADER_LEN..])
            .map_err(|e| io::Error::other(format!("encrypt: {e}")))?;
        Ok(())
    }
}

impl<S: AsyncWrite + Unpin> XkStream<S> {
    /// Writes out every sealed frame.
    fn poll_write_sealed(&mut self, cx: &mut Context<'_>) -> Poll<io::Result<()>> {
        while self.wpos < self.wframe.len() {
            let n = ready!(Pin::new(&mut self.io).poll_write(cx, &self.wframe[self.wpos..]))?;
            if n == 0 {
                return Poll::Ready(Err(io::ErrorKind::WriteZero.into()));
            }
            self.wpos += n;
        }
        self.wframe.clear();
        self.wpos = 0;
        Poll::Ready(Ok(()))
    }
}

impl<S: AsyncRead + Unpin> AsyncRead for XkStream<S> {
    fn poll_read(
        self: Pin<&mut Self>,
        cx: &mut Context<'_>,
        out: &mut [u8],
    ) -> Poll<io::Result<usize>> {
        let this = self.get_mut();
        loop {
            if this.ppos < this.plen {
                let n = out.len().min(this.plen - this.ppos);
                out[..n].copy_from_slice(&this.plain[this.ppos..this.ppos + n]);
                this.ppos += n;
                return Poll::Ready(Ok(n));
            }
            if out.is_empty() {
                return Poll::Ready(Ok(0));
            }
            let peeked = frame::peek(&this.rbuf[this.rstart..this.rend], TAG_LEN)
                .map_err(|e| refuse(&this.stats, "bad_frame", e))?;
            match peeked {
                Peek::Frame { body } => {
                    let ciphertext = &this.rbuf[this.rstart + body.start..this.rstart + body.end];
                    this.rstart += body.end;
                    let plain_len = ciphertext.len() - TAG_LEN;
                    if plain_len == 0 {
                        this.session
                            .read_message(ciphertext, &mut [])
                            .map_err(|e| refuse(&this.stats, "decrypt_failed", e))?;
                        this.session.rekey_incoming();
                        this.stats.count_rekey_received();
                        continue;
                    }
                    if out.len() >= plain_len {
                        // Decrypt straight into the caller's buffer.
                        let n = this
                            .session
                            .read_message(ciphertext, out)
                            .map_err(|e| refuse(&this.stats, "decrypt_failed", e))?;
                        return Poll::Ready(Ok(n));
                    }
                    if this.plain.len() < plain_len {
                        this.plain.resize(plain_len, 0);
                    }
                    this.plen = this
                        .session
                        .read_message(ciphertext, &mut this.plain)
                        .map_err(|e| refuse(&this.stats, "decrypt_failed", e))?;
                    this.ppos = 0;
                }
                Peek::Incomplete { need } => {
                    if this.rstart == this.rend {
                        this.rstart = 0;
                        this.rend = 0;
                    }
                    if this.rstart + need > this.rbuf.len() {
                        this.rbuf.copy_within(this.rstart..this.rend, 0);
                        this.rend -= this.rstart;
                        this.rstart = 0;
                        if need > this.rbuf.len() {
                            let size = need.clamp(READ_CHUNK, HEADER_LEN + MAX_FRAME_LEN);
                            this.rbuf.resize(size, 0);
                        }
                    }
                    let n =
                        ready!(Pin::new(&mut this.io).poll_read(cx, &mut this.rbuf[this.rend..]))?;
                    if n == 0 {
                        if this.rstart == this.rend {
                            return Poll::Ready(Ok(0));
                        }
                        this.stats.count_stream_error("truncated");
                        return Poll::Ready(Err(io::Error::new(
                            io::ErrorKind::UnexpectedEof,
                            "connection closed in the middle of a frame",
                        )));
                    }
                    this.rend += n;
                }
            }
        }
    }
}

impl<S: AsyncWrite + Unpin> AsyncWrite for XkStream<S> {
    fn poll_write(
        self: Pin<&mut Self>,
        cx: &mut Context<'_>,
        buf: &[u8],
    ) -> Poll<io::Result<usize>> {
        let this = self.get_mut();
        if buf.is_empty() {
            return Poll::Ready(Ok(0));
        }
        if !this.wframe.is_empty() {
            match this.poll_write_sealed(cx) {
                Poll::Ready(result) => result?,
                // The socket is busy: keep accepting plaintext while there is room.
                Poll::Pending if this.wplain.len() >= MAX_PLAINTEXT => return Poll::Pending,
                Poll::Pending => {}
            }
        }
        if this.wframe.is_empty() {
            if this.wplain.len() >= MAX_PLAINTEXT {
                let full = std::mem::take(&mut this.wplain);
                this.seal(&full)?;
                this.wplain = full;
                this.wplain.clear();
            } else if this.wplain.is_empty() && buf.len() >= MAX_PLAINTEXT {
                // A whole frame's worth: seal it straight from the caller's buffer.
                this.seal(&buf[..MAX_PLAINTEXT])?;
                let _ = this.poll_write_sealed(cx)?;
                return Poll::Ready(Ok(MAX_PLAINTEXT));
            }
        }
        // Non-zero: the buffer was either sealed above or the socket is pending with room left.
        let n = buf.len().min(MAX_PLAINTEXT - this.wplain.len());
        this.wplain.extend_from_slice(&buf[..n]);
        Poll::Ready(Ok(n))
    }

    fn poll_flush(self: Pin<&mut Self>, cx: &mut Context<'_>) -> Poll<io::Result<()>> {
        let this = self.get_mut();
        loop {
            ready!(this.poll_write_sealed(cx))?;
            if this.wplain.is_empty() {
                break;
            }
            let pending = std::mem::take(&mut this.wplain);
            this.seal(&pending)?;
            this.wplain = pending;
            this.wplain.clear();
        }
        Pin::new(&mut this.io).poll_flush(cx)
    }

    fn poll_close(mut self: Pin<&mut Self>, cx: &mut Context<'_>) -> Poll<io::Result<()>> {
        ready!(self.as_mut().poll_flush(cx))?;
        Pin::new(&mut self.get_mut().io).poll_close(cx)
    }
}

#[cfg(test)]
mod tests {
    use super::*;
    use crate::secure::handshake::{Initiator, Responder};
    use crate::secure::keys::LocalKeys;
    use crate::secure::AdmissionPolicy;
    use futures::executor::block_on;
    use futures::io::{AsyncReadExt, AsyncWriteExt, Cursor};
    use libp2p::identity::Keypair;

    /// Both ends of an open-mesh handshake: (initiator's session, responder's session).
    fn sessions() -> (TransportState, TransportState) {
        let a = LocalKeys::from_identity(&Keypair::generate_ed25519()).unwrap();
        let b = LocalKeys::from_identity(&Keypair::generate_ed25519()).unwrap();
        let open = AdmissionPolicy::open();
        let (initiator, msg1) = Initiator::start(&a, b.peer_id()).unwrap();
        let mut responder = Responder::new(&b).unwrap();
        let msg2 = responder.on_opening(&msg1, &open).unwrap();
        let (awaiting, msg3) = initiator.on_responder_hello(&msg2, &a, &open, 0).unwrap();
        let (at_b, verdict) = responder.on_initiator_hello(&msg3, &open, 0).unwrap();
        let at_a = awaiting.on_verdict(&verdict).unwrap();
        (at_a.session, at_b.session)
    }

    /// What a receiver makes of `wire` after one good frame: the error kind and counters.
    fn read_after_good_frame(garbage: &[u8]) -> (io::ErrorKind, Vec<(String, u64)>) {
        let (a, b) = sessions();
        let mut out = XkStream::new(
            Cursor::new(Vec::new()),
            a,
            RekeyPolicy::default(),
            Arc::default(),
        );
        block_on(async {
            out.write_all(b"ok").await.unwrap();
            out.flush().await.unwrap();
        });
        let mut wire = out.get_mut().get_ref().clone();
        wire.extend_from_slice(garbage);
        let stats = Arc::new(SecurityStats::default());
        let mut input = XkStream::new(Cursor::new(wire), b, RekeyPolicy::default(), stats.clone());
        let mut buf = Vec::new();
        let error = block_on(input.read_to_end(&mut buf)).unwrap_err();
        assert_eq!(buf, b"ok");
        (
            error.kind(),
            stats.snapshot().stream_errors.into_iter().collect(),
        )
    }

    #[test]
    fn a_bad_frame_after_admission_ends_the_stream_and_is_counted() {
        let count = |reason: &str| vec![(reason.to_owned(), 1)];
        assert_eq!(
            read_after_good_frame(&[0, 3, 1, 2, 3]),
            (io::ErrorKind::InvalidData, count("bad_frame"))
        );
        assert_eq!(
            read_after_good_frame(&[[0, 20].as_slice(), &[0x5a; 20]].concat()),
            (io::ErrorKind::InvalidData, count("decrypt_failed"))
        );
        assert_eq!(
            read_after_good_frame(&[0, 40, 1, 2]),
            (io::ErrorKind::UnexpectedEof, count("truncated"))
        );
    }

    #[test]
    fn rekey_is_due_on_either_budget() {
        let policy = RekeyPolicy {
            max_frames: 10,
            max_age: Duration::from_secs(60),
        };
        assert!(!policy.due(9, Duration::from_secs(59)));
        assert!(policy.due(10, Duration::ZERO));
        assert!(policy.due(0, Duration::from_secs(60)));
    }
}
