//! gzip on a deflate state reused between answers of one thread.
//!
//! flate2's `GzEncoder` (what Pingora's gzip encoder wraps) cannot be reset, so each answer
//! allocated and cleared a fresh deflate state, which cost more than compressing a 10 KB body.
//! A raw `Compress` can be reset; the gzip framing around it (RFC 1952: a 10-byte header, then
//! CRC-32 and length) is written here.

use super::spare;
use flate2::{Compress, Compression, Crc, FlushCompress, Status};
use std::cell::RefCell;

/// RFC 1952 header: magic, deflate, no flags, no time, no extra flags, OS unknown.
const HEADER: [u8; 10] = [0x1f, 0x8b, 8, 0, 0, 0, 0, 0, 0, 0xff];
thread_local! {
    /// Spare deflate states of this thread, with their level.
    static SPARE: RefCell<Vec<(u32, Compress)>> = const { RefCell::new(Vec::new()) };
}

/// One answer's gzip stream.
pub struct GzipStream {
    deflate: Option<(u32, Compress)>,
    crc: Crc,
    started: bool,
}

impl GzipStream {
    pub fn new(level: u32) -> Self {
        let spare = spare::take(&SPARE, |(l, _)| *l == level);
        GzipStream {
            deflate: Some(
                spare.unwrap_or_else(|| (level, Compress::new(Compression::new(level), false))),
            ),
            crc: Crc::new(),
            started: false,
        }
    }

    /// The compressed form of `input` so far; at the `end`, the rest and the trailer (and the
    /// state goes back to the thread's spares).
    pub fn encode(&mut self, input: &[u8], end: bool) -> Result<Vec<u8>, String> {
        let (_, deflate) = self
            .deflate
            .as_mut()
            .ok_or("gzip stream already finished")?;
        let mut out = Vec::with_capacity(input.len() / 2 + 64);
        if !self.started {
            out.extend_from_slice(&HEADER);
            self.started = true;
        }
        self.crc.update(input);
        let mut rest = input;
        while !rest.is_empty() {
            out.reserve(rest.len() / 2 + 64);
            let before = deflate.total_in();
            deflate
                .compress_vec(rest, &mut out, FlushCompress::None)
                .map_err(|e| e.to_string())?;
            rest = &rest[(deflate.total_in() - before) as usize..];
        }
        if end {
            loop {
                out.reserve(1024);
                let status = deflate
                    .compress_vec(&[], &mut out, FlushCompress::Finish)
                    .map_err(|e| e.to_string())?;
                if status == Status::StreamEnd {
                    break;
                }
            }
            out.extend_from_slice(&self.crc.sum().to_le_bytes());
            out.extend_from_slice(&self.crc.amount().to_le_bytes());
            self.give_back();
        }
        Ok(out)
    }

    fn give_back(&mut self) {
        if let Some((level, mut deflate)) = self.deflate.take() {
            deflate.reset();
            spare::give_back(&SPARE, (level, deflate));
        }
    }
}
