//! Following a stream of gRPC messages (a flag byte, a 4-byte big-endian length, the
//! message) across body chunks, without buffering them.

use crate::errors::GatewayError;

/// Where the request stream stands between two chunks.
#[derive(Debug, Default)]
pub(super) struct MessageFrames {
    /// Bytes of the current 5-byte prefix read so far (0 between messages).
    prefix: [u8; 5],
    prefix_len: usize,
    /// Bytes of the current message still to come.
    left: u64,
}

impl MessageFrames {
    /// Walks one chunk: every message prefix in it is checked against `max`.
    pub(super) fn on_chunk(&mut self, mut chunk: &[u8], max: u64) -> Result<(), GatewayError> {
        while !chunk.is_empty() {
            if self.left > 0 {
                let take = chunk
                    .len()
                    .min(usize::try_from(self.left).unwrap_or(usize::MAX));
                self.left -= take as u64;
                chunk = &chunk[take..];
                continue;
            }
            let take = chunk.len().min(5 - self.prefix_len);
            self.prefix[self.prefix_len..self.prefix_len + take].copy_from_slice(&chunk[..take]);
            self.prefix_len += take;
            chunk = &chunk[take..];
            if self.prefix_len == 5 {
                self.prefix_len = 0;
                self.left = self.message_len(max)?;
            }
        }
        Ok(())
    }

    /// Checks a complete prefix: its flag (0 or 1, compressed) and its length.
    fn message_len(&self, max: u64) -> Result<u64, GatewayError> {
        if self.prefix[0] > 1 {
            return Err(GatewayError::GrpcMalformed(
                "a message prefix's flag byte is neither 0 nor 1",
            ));
        }
        let len = u64::from(u32::from_be_bytes([
            self.prefix[1],
            self.prefix[2],
            self.prefix[3],
            self.prefix[4],
        ]));
        if len > max {
            return Err(GatewayError::GrpcMessageTooLarge { limit: max });
        }
        Ok(len)
    }

    /// The stream ended: it must not end inside a message.
    pub(super) fn on_end(&self) -> Result<(), GatewayError> {
        if self.prefix_len > 0 || self.left > 0 {
            return Err(GatewayError::GrpcMalformed(
                "the request ended inside a message",
            ));
        }
        Ok(())
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    fn message(len: u32) -> Vec<u8> {
        let mut m = vec![0];
        m.extend_from_slice(&len.to_be_bytes());
        m.extend(std::iter::repeat_n(7, len as usize));
        m
    }

    #[test]
    fn follows_messages_split_anywhere() {
        let mut stream = message(3);
        stream.extend(message(0));
        stream.extend(message(300));
        for cut in 0..stream.len() {
            let mut f = MessageFrames::default();
            f.on_chunk(&stream[..cut], 300).unwrap();
            f.on_chunk(&stream[cut..], 300).unwrap();
            f.on_end().unwrap();
        }
        let mut f = MessageFrames::default();
        for b in &stream {
            f.on_chunk(std::slice::from_ref(b), 300).unwrap();
        }
        f.on_end().unwrap();
    }

    #[test]
    fn refuses_big_messages_bad_flags_and_cut_streams() {
        let mut f = MessageFrames::default();
        assert_eq!(
            f.on_chunk(&message(301)[..5], 300),
            Err(GatewayError::GrpcMessageTooLarge { limit: 300 })
        );
        let mut f = MessageFrames::default();
        assert!(matches!(
            f.on_chunk(&[2, 0, 0, 0, 0], 300),
            Err(GatewayError::GrpcMalformed(_))
        ));
        let mut f = MessageFrames::default();
        f.on_chunk(&message(10)[..9], 300).unwrap();
        assert!(matches!(f.on_end(), Err(GatewayError::GrpcMalformed(_))));
        let mut f = MessageFrames::default();
        f.on_chunk(&[0, 0], 300).unwrap();
        assert!(matches!(f.on_end(), Err(GatewayError::GrpcMalformed(_))));
    }
}
