//! Control-channel framing over a byte stream: whole `baton_shared::control` messages in and out.
//!
//! Decoding and limits live in `baton_shared::control`; this module only reads until a frame is
//! complete and writes encoded frames. It never interprets a message.

use std::io;

use baton_shared::control::{decode_frame, encode_frame, Message};
use tokio::io::{AsyncRead, AsyncReadExt, AsyncWrite, AsyncWriteExt};

/// Read size for control frames.
const READ_CHUNK_BYTES: usize = 64 * 1024;

/// Reads messages from one side of a control connection.
#[derive(Debug)]
pub struct FrameReader<R> {
    inner: R,
    buf: Vec<u8>,
}

impl<R: AsyncRead + Unpin> FrameReader<R> {
    pub fn new(inner: R) -> Self {
        Self { inner, buf: Vec::with_capacity(READ_CHUNK_BYTES) }
    }

    /// The next message; `Ok(None)` when the peer closed cleanly between frames.
    pub async fn next(&mut self) -> io::Result<Option<Message>> {
        loop {
            match decode_frame(&self.buf) {
                Ok(Some((msg, used))) => {
                    self.buf.drain(..used);
                    return Ok(Some(msg));
                }
                Ok(None) => {}
                Err(e) => return Err(io::Error::new(io::ErrorKind::InvalidData, e)),
            }
            let start = self.buf.len();
            self.buf.resize(start + READ_CHUNK_BYTES, 0);
            let n = self.inner.read(&mut self.buf[start..]).await;
            let n = match n {
                Ok(n) => n,
                Err(e) => {
                    self.buf.truncate(start);
                    return Err(e);
                }
            };
            self.buf.truncate(start + n);
            if n == 0 {
                return if start == 0 {
                    Ok(None)
                } else {
                    Err(io::Error::new(io::ErrorKind::UnexpectedEof, "control connection closed inside a frame"))
                };
            }
        }
    }
}

/// Writes one message as a frame.
pub async fn write_message<W: AsyncWrite + Unpin>(w: &mut W, msg: &Message) -> io::Result<()> {
    let mut out = Vec::new();
    encode_frame(msg, &mut out);
    w.write_all(&out).await?;
    w.flush().await
}
