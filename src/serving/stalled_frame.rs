//! Closes a connection on which a frame began to arrive and stopped (a slowloris: a request
//! sent a byte at a time, or a connection opened and left silent). hyper's HTTP/2 server has
//! no header-read timeout, and a request only reaches tonic's per-request timeout once its
//! headers are whole, so the deadline is kept below both, on the bytes themselves.
//!
//! The guard follows the framing of what it reads without interpreting it: the HTTP/2 client
//! preface (24 bytes) and then frames (a 9-byte header whose first 3 bytes are the payload
//! length), or, when the first byte is a TLS handshake record, TLS records (a 5-byte header
//! whose last 2 bytes are the length). A frame that has begun must end within the timeout; an
//! idle connection between frames has no deadline (HTTP/2 keepalive reaps dead ones).
//!
//! A frame that trickles (it has been arriving for over [`TRICKLE_AFTER`] and a read brought
//! fewer than [`TRICKLE_BYTES`] of it) is read at most once per [`TRICKLE_PAUSE`]: each read
//! wakes the runtime that serves every connection, so a host trickling a byte at a time on
//! hundreds of connections would otherwise cost the others a wake-up per byte, in bursts. An
//! honest peer's frame arrives in segments of hundreds of bytes or more, and at once.

use std::future::Future;
use std::io;
use std::pin::Pin;
use std::task::{Context, Poll};
use std::time::Duration;

use tokio::io::{AsyncRead, AsyncWrite, ReadBuf};
use tokio::time::{Instant, Sleep};

/// How long a frame may take to arrive before a small read counts as trickling.
const TRICKLE_AFTER: Duration = Duration::from_millis(100);
/// A read that brings fewer bytes than this of a frame arriving for over [`TRICKLE_AFTER`]
/// counts as trickling.
const TRICKLE_BYTES: usize = 64;
/// The pause before reading a trickling connection again: its bytes wait in the socket.
pub const TRICKLE_PAUSE: Duration = Duration::from_secs(1);

/// The HTTP/2 connection preface a client sends first.
const HTTP2_PREFACE_BYTES: usize = 24;
/// An HTTP/2 frame header: 3 bytes of length, type, flags, 4 bytes of stream id.
const HTTP2_FRAME_HEADER_BYTES: usize = 9;
/// A TLS record header: type, 2 bytes of version, 2 bytes of length.
const TLS_RECORD_HEADER_BYTES: usize = 5;
/// The first byte of a TLS ClientHello record.
pub(super) const TLS_HANDSHAKE_RECORD: u8 = 0x16;

/// Which framing the connection speaks, known from its first byte.
#[derive(Clone, Copy, Debug, PartialEq, Eq)]
enum Framing {
    Unknown,
    Http2,
    Tls,
}

/// Where in the byte stream the reader is.
#[derive(Clone, Copy, Debug, PartialEq, Eq)]
enum Position {
    /// This many bytes of a unit (preface, header or payload) still to come; `header` says
    /// whether they are a header whose length is being read.
    Within { remaining: usize, header: bool },
}

/// Tracks frame boundaries in the bytes read so far.
#[derive(Debug)]
struct FrameTracker {
    framing: Framing,
    position: Position,
    header: [u8; HTTP2_FRAME_HEADER_BYTES],
    header_filled: usize,
    /// Whether the reader is exactly between two frames (nothing of a frame pending).
    between_frames: bool,
    /// How many units (the preface, frames, records) have arrived whole.
    units_done: u64,
}

impl FrameTracker {
    fn new() -> Self {
        FrameTracker {
            framing: Framing::Unknown,
            position: Position::Within {
                remaining: 0,
                header: false,
            },
            header: [0; HTTP2_FRAME_HEADER_BYTES],
            header_filled: 0,
            // A new connection must begin (and finish its preface) in time too.
            between_frames: false,
            units_done: 0,
        }
    }

    /// Feeds bytes just read; afterwards `between_frames` says whether a frame is pending.
    fn feed(&mut self, mut bytes: &[u8]) {
        while !bytes.is_empty() {
            if self.framing == Framing::Unknown {
                if bytes[0] == TLS_HANDSHAKE_RECORD {
                    self.framing = Framing::Tls;
                    self.start_header();
                } else {
                    self.framing = Framing::Http2;
                    self.position = Position::Within {
                        remaining: HTTP2_PREFACE_BYTES,
                        header: false,
                    };
                }
            }
            let Position::Within { remaining, header } = self.position;
            if remaining == 0 {
                self.start_header();
                continue;
            }
            let taken = remaining.min(bytes.len());
            if header {
                self.header[self.header_filled..self.header_filled + taken].copy_from_slice(&bytes[..taken]);
                self.header_filled += taken;
            }
            bytes = &bytes[taken..];
            self.between_frames = false;
            self.position = Position::Within {
                remaining: remaining - taken,
                header,
            };
            if remaining - taken == 0 {
                if header {
                    self.position = Position::Within {
                        remaining: self.payload_length(),
                        header: false,
                    };
                }
                if let Position::Within { remaining: 0, .. } = self.position {
                    self.between_frames = true;
                    self.units_done += 1;
                }
            }
        }
    }

    fn start_header(&mut self) {
        self.header_filled = 0;
        let length = match self.framing {
            Framing::Tls => TLS_RECORD_HEADER_BYTES,
            _ => HTTP2_FRAME_HEADER_BYTES,
        };
        self.position = Position::Within {
            remaining: length,
            header: true,
        };
    }

    fn payload_length(&self) -> usize {
        let h = &self.header;
        match self.framing {
            Framing::Tls => u16::from_be_bytes([h[3], h[4]]) as usize,
            _ => (usize::from(h[0]) << 16) | (usize::from(h[1]) << 8) | usize::from(h[2]),
        }
    }
}

/// An IO whose reads fail with `TimedOut` once a frame has been pending longer than the timeout.
/// `H` is held for as long as the connection lives (its place in a connection budget).
#[derive(Debug)]
pub struct StalledFrameGuard<T, H = ()> {
    inner: T,
    _held: H,
    tracker: FrameTracker,
    timeout: Duration,
    /// When the pending frame must be whole (it began `timeout` before); None between frames.
    deadline: Option<Pin<Box<Sleep>>>,
    /// Until when reads are paused, the pending frame trickling.
    paused: Option<Pin<Box<Sleep>>>,
}

impl<T> StalledFrameGuard<T> {
    /// Guards `inner`; its first bytes must arrive within `timeout` from now.
    pub fn new(inner: T, timeout: Duration) -> Self {
        Self::holding(inner, timeout, ())
    }
}

impl<T, H> StalledFrameGuard<T, H> {
    /// [`StalledFrameGuard::new`], holding `held` until the connection is dropped.
    pub fn holding(inner: T, timeout: Duration, held: H) -> Self {
        StalledFrameGuard {
            inner,
            _held: held,
            tracker: FrameTracker::new(),
            timeout,
            deadline: Some(Box::pin(tokio::time::sleep(timeout))),
            paused: None,
        }
    }

    /// The guarded IO.
    pub fn get_ref(&self) -> &T {
        &self.inner
    }
}

impl<T, H> StalledFrameGuard<T, H> {
    /// How long the pending frame has been arriving (zero between frames).
    fn pending_frame_age(&self) -> Duration {
        self.deadline.as_ref().map_or(Duration::ZERO, |deadline| {
            (Instant::now() + self.timeout).saturating_duration_since(deadline.deadline())
        })
    }

    /// Whether the pending frame's deadline has passed (registers `cx` for it otherwise).
    fn stalled(&mut self, cx: &mut Context<'_>) -> bool {
        self.deadline
            .as_mut()
            .is_some_and(|deadline| deadline.as_mut().poll(cx).is_ready())
    }
}

impl<T: AsyncRead + Unpin, H: Unpin> AsyncRead for StalledFrameGuard<T, H> {
    fn poll_read(mut self: Pin<&mut Self>, cx: &mut Context<'_>, buf: &mut ReadBuf<'_>) -> Poll<io::Result<()>> {
        let this = &mut *self;
        let stalled = || io::Error::new(io::ErrorKind::TimedOut, "a frame stalled: closing the connection");
        if let Some(paused) = this.paused.as_mut() {
            if paused.as_mut().poll(cx).is_pending() {
                // Not reading registers no wake-up for the bytes that arrive meanwhile.
                return if this.stalled(cx) {
                    Poll::Ready(Err(stalled()))
                } else {
                    Poll::Pending
                };
            }
            this.paused = None;
        }
        let before = buf.filled().len();
        match Pin::new(&mut this.inner).poll_read(cx, buf) {
            Poll::Ready(Ok(())) => {
                let read = buf.filled().len() - before;
                let was_between = this.tracker.between_frames;
                let units_before = this.tracker.units_done;
                this.tracker.feed(&buf.filled()[before..]);
                if this.tracker.between_frames {
                    this.deadline = None;
                } else if was_between || this.deadline.is_none() || this.tracker.units_done != units_before {
                    // A new frame began (perhaps right after the end of one, in this read): it has
                    // the whole timeout.
                    this.deadline = Some(Box::pin(tokio::time::sleep(this.timeout)));
                } else if read > 0 && read < TRICKLE_BYTES && this.pending_frame_age() > TRICKLE_AFTER {
                    this.paused = Some(Box::pin(tokio::time::sleep(TRICKLE_PAUSE)));
                }
                Poll::Ready(Ok(()))
            }
            Poll::Pending => {
                if this.stalled(cx) {
                    return Poll::Ready(Err(stalled()));
                }
                Poll::Pending
            }
            error => error,
        }
    }
}

impl<T: AsyncWrite + Unpin, H: Unpin> AsyncWrite for StalledFrameGuard<T, H> {
    fn poll_write(mut self: Pin<&mut Self>, cx: &mut Context<'_>, buf: &[u8]) -> Poll<io::Result<usize>> {
        Pin::new(&mut self.inner).poll_write(cx, buf)
    }

    fn poll_write_vectored(
        mut self: Pin<&mut Self>,
        cx: &mut Context<'_>,
        bufs: &[io::IoSlice<'_>],
    ) -> Poll<io::Result<usize>> {
        Pin::new(&mut self.inner).poll_write_vectored(cx, bufs)
    }

    fn is_write_vectored(&self) -> bool {
        self.inner.is_write_vectored()
    }

    fn poll_flush(mut self: Pin<&mut Self>, cx: &mut Context<'_>) -> Poll<io::Result<()>> {
        Pin::new(&mut self.inner).poll_flush(cx)
    }

    fn poll_shutdown(mut self: Pin<&mut Self>, cx: &mut Context<'_>) -> Poll<io::Result<()>> {
        Pin::new(&mut self.inner).poll_shutdown(cx)
    }
}

#[cfg(test)]
mod tests {
    use super::*;
    use tokio::io::{AsyncReadExt, AsyncWriteExt};

    fn frame(payload: usize) -> Vec<u8> {
        let mut bytes = vec![
            (payload >> 16) as u8,
            (payload >> 8) as u8,
            payload as u8,
            0,
            0,
            0,
            0,
            0,
            1,
        ];
        bytes.resize(HTTP2_FRAME_HEADER_BYTES + payload, 7);
        bytes
    }

    #[test]
    fn whole_frames_leave_the_reader_between_frames_in_any_split() {
        let mut stream = b"PRI * HTTP/2.0\r\n\r\nSM\r\n\r\n".to_vec();
        stream.extend(frame(0));
        stream.extend(frame(300));
        for split in 1..stream.len() {
            let mut tracker = FrameTracker::new();
            tracker.feed(&stream[..split]);
            assert!(!tracker.between_frames || split == 24 || split == 33, "split {split}");
            tracker.feed(&stream[split..]);
            assert!(tracker.between_frames, "split {split}");
        }
    }

    #[test]
    fn tls_records_are_followed_by_their_own_header() {
        let mut tracker = FrameTracker::new();
        tracker.feed(&[TLS_HANDSHAKE_RECORD, 3, 1, 0, 4, 1, 2, 3]);
        assert!(!tracker.between_frames);
        tracker.feed(&[4]);
        assert!(tracker.between_frames);
    }

    /// A guarded connection with `timeout`, and its peer's writing half, once the preface is read.
    async fn past_the_preface(
        timeout: Duration,
    ) -> (
        StalledFrameGuard<tokio::io::DuplexStream>,
        tokio::io::WriteHalf<tokio::io::DuplexStream>,
    ) {
        let (client, server) = tokio::io::duplex(1024);
        let mut guarded = StalledFrameGuard::new(server, timeout);
        let (_read, mut write) = tokio::io::split(client);
        write.write_all(b"PRI * HTTP/2.0\r\n\r\nSM\r\n\r\n").await.unwrap();
        let mut buf = [0u8; 64];
        assert_eq!(guarded.read(&mut buf).await.unwrap(), 24);
        (guarded, write)
    }

    #[tokio::test]
    async fn a_trickled_frame_is_cut_off_and_a_silent_idle_connection_between_frames_is_not() {
        // A short timeout, so that the test need not wait; an idle connection waits several.
        let timeout = Duration::from_millis(50);
        let (mut guarded, mut write) = past_the_preface(timeout).await;
        let mut buf = [0u8; 64];
        // Between frames there is no deadline at all.
        let idle = tokio::time::timeout(timeout * 5, guarded.read(&mut buf)).await;
        assert!(idle.is_err(), "an idle connection is left alone");
        // One byte of a frame header, then nothing.
        write.write_all(&[0]).await.unwrap();
        assert_eq!(guarded.read(&mut buf).await.unwrap(), 1);
        let error = guarded.read(&mut buf).await.unwrap_err();
        assert_eq!(error.kind(), io::ErrorKind::TimedOut);
    }

    #[tokio::test(start_paused = true)]
    async fn a_trickling_frame_is_read_once_a_pause_and_a_prompt_one_at_once() {
        let (mut guarded, mut write) = past_the_preface(Duration::from_secs(10)).await;
        let mut buf = [0u8; 256];
        // A frame whose bytes keep coming, each soon after the last, is read as they come.
        let header = frame(100);
        for byte in &header[..3] {
            write.write_all(&[*byte]).await.unwrap();
            let asked = Instant::now();
            assert_eq!(guarded.read(&mut buf).await.unwrap(), 1);
            assert_eq!(asked.elapsed(), Duration::ZERO, "read at once");
        }
        // Past TRICKLE_AFTER, a byte at a time is trickling: the next read waits for the pause.
        tokio::time::sleep(TRICKLE_AFTER * 2).await;
        write.write_all(&header[3..4]).await.unwrap();
        assert_eq!(guarded.read(&mut buf).await.unwrap(), 1);
        write.write_all(&header[4..6]).await.unwrap();
        let asked = Instant::now();
        assert_eq!(
            guarded.read(&mut buf).await.unwrap(),
            2,
            "what came meanwhile, in one read"
        );
        assert!(asked.elapsed() >= TRICKLE_PAUSE, "read after {:?}", asked.elapsed());
        // That read was small too: the rest of the frame waits for the next pause, and ends it.
        write.write_all(&header[6..]).await.unwrap();
        assert_eq!(guarded.read(&mut buf).await.unwrap(), header.len() - 6);
        // The next frame is read at once again.
        let asked = Instant::now();
        write.write_all(&frame(0)).await.unwrap();
        assert_eq!(guarded.read(&mut buf).await.unwrap(), HTTP2_FRAME_HEADER_BYTES);
        assert_eq!(
            asked.elapsed(),
            Duration::ZERO,
            "a frame that arrives whole is not paused"
        );
    }

    #[tokio::test(start_paused = true)]
    async fn a_trickling_frame_still_stalls_while_its_reads_are_paused() {
        let timeout = Duration::from_secs(3);
        let (mut guarded, mut write) = past_the_preface(timeout).await;
        let mut buf = [0u8; 64];
        let began = Instant::now();
        // A byte every half second: each read after the first pauses.
        let trickle = async {
            loop {
                write.write_all(&[0]).await.unwrap();
                match guarded.read(&mut buf).await {
                    Ok(n) => assert!(n >= 1),
                    Err(error) => break error,
                }
                tokio::time::sleep(TRICKLE_PAUSE / 2).await;
            }
        };
        let error = tokio::time::timeout(timeout * 10, trickle)
            .await
            .expect("the trickling frame is cut off");
        assert_eq!(error.kind(), io::ErrorKind::TimedOut);
        assert!(
            began.elapsed() <= timeout + TRICKLE_PAUSE,
            "cut off after {:?}",
            began.elapsed()
        );
    }

    #[tokio::test(start_paused = true)]
    async fn a_frame_that_begins_in_the_read_that_ends_the_last_one_has_a_deadline_of_its_own() {
        // An upload whose reads never end on a frame boundary: each read ends one frame and
        // begins the next. Each frame takes under the timeout; together they take far more.
        let timeout = Duration::from_secs(3);
        let (mut guarded, mut write) = past_the_preface(timeout).await;
        let mut buf = [0u8; 256];
        let frames: Vec<u8> = (0..20).flat_map(|_| frame(100)).collect();
        let mut sent = 0;
        while sent < frames.len() {
            // 50 bytes, then a frame's length at a time: every read ends 50 bytes into a frame.
            let chunk = &frames[sent..(sent + if sent == 0 { 50 } else { 109 }).min(frames.len())];
            sent += chunk.len();
            // The reader waits first (and checks the deadline), then the bytes come.
            let (read, ()) = tokio::join!(guarded.read(&mut buf), async {
                tokio::time::sleep(timeout / 2).await;
                write.write_all(chunk).await.unwrap();
            });
            read.expect("each frame arrived in time");
        }
    }
}
