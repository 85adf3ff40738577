//! Streaming body encoders: gzip on a reused deflate state (`gzip.rs`), the `zstd` and
//! `brotli` crates' for zstd and br.
//!
//! Pingora 0.9's brotli `Compressor` only flushes at the end of the body and never writes the
//! stream's last block, so strict decoders reject what it produces; here the writer is
//! finished (`into_inner`) when the body ends. Both zstd and brotli are sized to the body when
//! its length is known (zstd's pledged size, brotli's window): a 10 KB answer then sets up
//! kilobytes of tables instead of megabytes, which costs more than compressing it.

use super::Coding;
use bytes::Bytes;
use std::io::Write;

/// brotli's largest window (2^19 bytes, as Pingora uses) and internal buffer.
const BROTLI_WINDOW_BITS: u32 = 19;
const BROTLI_MIN_WINDOW_BITS: u32 = 10;
const BROTLI_BUFFER: usize = 4096;

type ZstdContext = zstd::stream::raw::Encoder<'static>;
type ZstdWriter = zstd::stream::zio::Writer<Vec<u8>, ZstdContext>;

thread_local! {
    /// Contexts of this thread's finished zstd answers (see `spare.rs`).
    static ZSTD_SPARE: std::cell::RefCell<Vec<ZstdContext>> =
        const { std::cell::RefCell::new(Vec::new()) };
}

/// A zstd writer at `level`, told the body's `length` when known, on a spare context if the
/// thread has one.
fn zstd_writer(level: u32, length: Option<u64>) -> std::io::Result<ZstdWriter> {
    use zstd::stream::raw::{CParameter, Operation};
    let mut context = match super::spare::take(&ZSTD_SPARE, |_| true) {
        Some(mut spare) => {
            spare.reinit()?;
            spare
        }
        None => ZstdContext::new(level as i32)?,
    };
    context.set_parameter(CParameter::CompressionLevel(level as i32))?;
    context.set_pledged_src_size(length)?;
    Ok(ZstdWriter::new(Vec::new(), context))
}

/// Finishes a zstd body and hands its context back to the thread's spares.
fn zstd_finish(mut w: ZstdWriter) -> std::io::Result<Vec<u8>> {
    w.finish()?;
    let (out, context) = w.into_inner();
    super::spare::give_back(&ZSTD_SPARE, context);
    Ok(out)
}

enum Encoder {
    Gzip(Box<super::gzip::GzipStream>),
    /// `None` once finished.
    Zstd(Option<Box<ZstdWriter>>),
    /// `None` once finished.
    Brotli(Option<Box<brotli::CompressorWriter<Vec<u8>>>>),
}

impl Encoder {
    /// `length`: the body's, when the upstream said.
    fn new(coding: Coding, level: u32, length: Option<u64>) -> Option<Self> {
        match coding {
            Coding::Gzip => Some(Encoder::Gzip(Box::new(super::gzip::GzipStream::new(level)))),
            Coding::Zstd => zstd_writer(level, length)
                .ok()
                .map(|w| Encoder::Zstd(Some(Box::new(w)))),
            Coding::Brotli => {
                // The smallest window holding the whole body (brotli's floor is 2^10).
                let bits = length.map_or(BROTLI_WINDOW_BITS, |n| {
                    (u64::BITS - n.max(1).leading_zeros())
                        .clamp(BROTLI_MIN_WINDOW_BITS, BROTLI_WINDOW_BITS)
                });
                Some(Encoder::Brotli(Some(Box::new(
                    brotli::CompressorWriter::new(Vec::new(), BROTLI_BUFFER, level, bits),
                ))))
            }
        }
    }

    /// What `input` (and, at the `end`, the rest) compresses to so far.
    fn encode(&mut self, input: &[u8], end: bool) -> Result<Bytes, String> {
        match self {
            Encoder::Gzip(g) => g.encode(input, end).map(Bytes::from),
            Encoder::Zstd(slot) => {
                let w = slot.as_mut().ok_or("zstd stream already finished")?;
                w.write_all(input).map_err(|e| e.to_string())?;
                if end {
                    let w = slot.take().ok_or("zstd stream already finished")?;
                    return zstd_finish(*w).map(Bytes::from).map_err(|e| e.to_string());
                }
                Ok(std::mem::take(w.writer_mut()).into())
            }
            Encoder::Brotli(slot) => {
                let w = slot.as_mut().ok_or("brotli stream already finished")?;
                w.write_all(input).map_err(|e| e.to_string())?;
                if end {
                    let w = slot.take().ok_or("brotli stream already finished")?;
                    return Ok(w.into_inner().into());
                }
                Ok(std::mem::take(w.get_mut()).into())
            }
        }
    }
}

/// Per-request compression state (compression stage): the body encoder, when the response is
/// being compressed.
#[derive(Default)]
pub struct ResponseEncoding {
    encoder: Option<Encoder>,
    /// The encoder failed mid-body: the rest is dropped, so the client's decoder sees a
    /// truncated stream rather than compressed and plain bytes mixed.
    failed: bool,
}

impl ResponseEncoding {
    /// An encoder for `coding` at `level` (inactive if the coding has none).
    pub(super) fn new(coding: Coding, level: u32, length: Option<u64>) -> Self {
        ResponseEncoding {
            encoder: Encoder::new(coding, level, length),
            failed: false,
        }
    }

    /// Whether the response body is being compressed.
    pub fn is_active(&self) -> bool {
        self.encoder.is_some()
    }

    /// Replaces a body chunk with its compressed form (possibly nothing yet: the encoder
    /// keeps what it cannot emit until more comes, never the whole body).
    pub fn on_body(&mut self, body: &mut Option<Bytes>, end: bool) {
        if self.failed {
            *body = None;
            return;
        }
        let Some(encoder) = self.encoder.as_mut() else {
            return;
        };
        let input = body.take().unwrap_or_default();
        match encoder.encode(&input, end) {
            // An empty chunk would end an HTTP/1.1 chunked body early: send nothing instead.
            Ok(out) if out.is_empty() => {}
            Ok(out) => *body = Some(out),
            Err(e) => {
                // Writing into memory does not fail; if it ever does, the body cannot be
                // finished correctly, so no more of it is sent.
                log::warn!("response compression failed: {e}");
                self.encoder = None;
                self.failed = true;
            }
        }
    }
}
