//! API keys: stored as SHA-256 hashes, looked up by the hash of what a client presents, and
//! made by `apigateway consumer new-key`.
//!
//! A plain (unsalted, fast) hash is the right tool here, unlike for passwords: a key is 192
//! random bits, so no dictionary or brute force can invert its hash, and the gateway must
//! check one per request.

use crate::invalid::Invalid;
use sha2::{Digest, Sha256};
use std::collections::HashMap;
use subtle::ConstantTimeEq;

/// What every key made by `new-key` starts with, so leaked keys are recognisable to secret
/// scanners and people.
pub const KEY_PREFIX: &str = "agk_";

/// One stored key.
#[derive(Debug, Clone)]
pub struct StoredKey {
    digest: [u8; 32],
    pub consumer: usize,
    /// Seconds since the epoch from which the key is refused.
    pub expires_at: Option<u64>,
}

/// Every consumer's keys, bucketed by the first 8 bytes of their hash.
///
/// The bucket is found by a prefix of a digest, which a client cannot steer toward a stored
/// one, and the full digest is then compared in constant time, so how long a refusal takes
/// says nothing about how close a guess came.
#[derive(Debug, Default)]
pub struct KeyIndex {
    buckets: HashMap<u64, Vec<StoredKey>>,
}

impl KeyIndex {
    /// Adds a key given as `sha256:<64 hex>`; errors name `key` (the YAML key path).
    pub fn insert(
        &mut self,
        hash: &str,
        consumer: usize,
        expires_at: Option<u64>,
        key: &str,
    ) -> Result<(), Invalid> {
        let digest = parse_hash(hash).ok_or_else(|| {
            Invalid::new(
                key,
                "expected `sha256:` and 64 hex digits (as `apigateway consumer new-key` prints)",
            )
        })?;
        if self.find(&digest).is_some() {
            return Err(Invalid::new(key, "the same key hash is listed twice"));
        }
        self.buckets
            .entry(prefix(&digest))
            .or_default()
            .push(StoredKey {
                digest,
                consumer,
                expires_at,
            });
        Ok(())
    }

    /// The stored key a presented key hashes to.
    pub fn lookup(&self, presented: &str) -> Option<&StoredKey> {
        self.find(&Sha256::digest(presented.as_bytes()).into())
    }

    fn find(&self, digest: &[u8; 32]) -> Option<&StoredKey> {
        self.buckets
            .get(&prefix(digest))?
            .iter()
            .find(|k| bool::from(k.digest.ct_eq(digest)))
    }
}

fn prefix(digest: &[u8; 32]) -> u64 {
    u64::from_le_bytes(digest[..8].try_into().expect("8 bytes"))
}

fn parse_hash(text: &str) -> Option<[u8; 32]> {
    let digits = text.trim().strip_prefix("sha256:")?;
    let mut out = [0u8; 32];
    hex::decode_to_slice(digits, &mut out).ok()?;
    Some(out)
}

/// The stored form of a key: `sha256:` and its hex digest.
pub fn hash_line(key: &str) -> String {
    let digest = Sha256::digest(key.as_bytes());
    format!("sha256:{}", hex::encode(digest))
}

/// A fresh key: the prefix and 192 bits from the operating system's generator, base64url.
pub fn new_key() -> Result<String, String> {
    use base64::Engine;
    let mut bytes = [0u8; 24];
    getrandom::fill(&mut bytes).map_err(|e| format!("no randomness from the OS: {e}"))?;
    Ok(format!(
        "{KEY_PREFIX}{}",
        base64::engine::general_purpose::URL_SAFE_NO_PAD.encode(bytes)
    ))
}

/// Seconds since the epoch of `2027-12-03` (midnight UTC) or an RFC 3339 timestamp.
pub fn parse_instant(text: &str) -> Result<u64, String> {
    let text = text.trim();
    let full = if text.len() == 10 {
        format!("{text}T00:00:00Z")
    } else {
        text.to_string()
    };
    humantime::parse_rfc3339_weak(&full)
        .or_else(|_| humantime::parse_rfc3339(&full))
        .map_err(|_| format!("{text:?} is not a date (2027-12-03) or an RFC 3339 timestamp"))?
        .duration_since(std::time::UNIX_EPOCH)
        .map(|d| d.as_secs())
        .map_err(|_| format!("{text:?} is before 1970"))
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn keys_are_found_by_hash_only_and_duplicates_refused() {
        let mut index = KeyIndex::default();
        let key = new_key().unwrap();
        assert!(key.starts_with(KEY_PREFIX) && key.len() == KEY_PREFIX.len() + 32);
        assert_ne!(key, new_key().unwrap());
        index.insert(&hash_line(&key), 3, None, "k").unwrap();
        assert_eq!(index.lookup(&key).map(|k| k.consumer), Some(3));
        assert!(index.lookup("agk_wrong").is_none());
        let dup = index.insert(&hash_line(&key), 4, None, "consumers[1].api_keys[0].hash");
        assert_eq!(dup.unwrap_err().key, "consumers[1].api_keys[0].hash");
        for bad in ["sha256:12", "md5:00", &hash_line("x").replace('a', "g")] {
            if bad.contains('g') || !bad.starts_with("sha256:") || bad.len() < 71 {
                assert!(index.insert(bad, 0, None, "k").is_err(), "{bad}");
            }
        }
    }

    #[test]
    fn dates_and_timestamps_parse() {
        assert_eq!(parse_instant("1970-01-02").unwrap(), 86_400);
        assert_eq!(parse_instant("1970-01-01T00:01:00Z").unwrap(), 60);
        assert!(parse_instant("next tuesday").is_err());
    }
}
