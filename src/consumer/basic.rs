//! Basic credentials (RFC 7617): parsing the header, argon2id verification off the event loop,
//! and a cache of verified pairs so argon2 runs once per pair per `cache_ttl`.

use base64::Engine;
use sha2::{Digest, Sha256};
use std::collections::HashMap;
use std::sync::Arc;
use std::time::{Duration, Instant};

/// A username and password from `Authorization: Basic …`.
pub struct BasicPair {
    pub username: String,
    pub password: String,
}

/// Why a `Basic` header cannot be read.
#[derive(Debug, PartialEq, Eq)]
pub struct Malformed;

impl BasicPair {
    /// Decodes the token after `Basic `: base64 of `user:password` in UTF-8 (the charset the
    /// gateway's challenge announces), split at the first colon, so a password may contain
    /// colons and a username may not.
    pub fn decode(token: &str) -> Result<BasicPair, Malformed> {
        let bytes = base64::engine::general_purpose::STANDARD
            .decode(token.trim())
            .map_err(|_| Malformed)?;
        let text = String::from_utf8(bytes).map_err(|_| Malformed)?;
        let (user, pass) = text.split_once(':').ok_or(Malformed)?;
        if user.is_empty() || text.chars().any(char::is_control) {
            return Err(Malformed);
        }
        Ok(BasicPair {
            username: user.to_string(),
            password: pass.to_string(),
        })
    }
}

/// One consumer's stored Basic credential.
#[derive(Debug)]
pub struct StoredPassword {
    pub consumer: usize,
    hash: Arc<str>,
}

/// Every consumer's Basic credentials and the cache of verified pairs.
pub struct BasicDirectory {
    by_username: HashMap<String, StoredPassword>,
    /// Verified pairs by a salted digest (the salt is per process, so the cache holds nothing
    /// a dump could be checked against offline), with when they were verified.
    verified: quick_cache::sync::Cache<[u8; 32], (usize, Instant)>,
    salt: [u8; 16],
    ttl: Duration,
    /// Checked when the username is unknown, so an unknown user takes as long as a wrong
    /// password.
    dummy_hash: Arc<str>,
}

impl BasicDirectory {
    pub fn new(cache_size: usize, ttl: Duration) -> Result<Self, String> {
        let mut salt = [0u8; 16];
        getrandom::fill(&mut salt).map_err(|e| format!("no randomness from the OS: {e}"))?;
        Ok(BasicDirectory {
            by_username: HashMap::new(),
            verified: quick_cache::sync::Cache::new(cache_size.max(1)),
            salt,
            ttl,
            dummy_hash: Arc::from(crate::password::dummy()?),
        })
    }

    /// Adds a credential; `false` if the username is taken. The hash was checked by the caller.
    pub fn insert(&mut self, username: &str, hash: &str, consumer: usize) -> bool {
        if self.by_username.contains_key(username) {
            return false;
        }
        self.by_username.insert(
            username.to_string(),
            StoredPassword {
                consumer,
                hash: Arc::from(hash),
            },
        );
        true
    }

    /// The consumer a pair verified as lately, if it is still in the cache.
    pub fn cached(&self, pair: &BasicPair) -> Option<usize> {
        let (consumer, at) = self.verified.get(&self.cache_key(pair))?;
        (at.elapsed() < self.ttl).then_some(consumer)
    }

    /// Runs argon2 for the pair on the blocking pool; the consumer when it matches.
    pub async fn verify(&self, pair: BasicPair) -> Option<usize> {
        let stored = self.by_username.get(&pair.username);
        let hash: Arc<str> = stored.map_or(self.dummy_hash.clone(), |s| s.hash.clone());
        let password = pair.password.clone();
        crate::metrics::password_check();
        let ok = tokio::task::spawn_blocking(move || crate::password::matches(&hash, &password))
            .await
            .unwrap_or(false);
        let consumer = stored.filter(|_| ok)?.consumer;
        self.verified
            .insert(self.cache_key(&pair), (consumer, Instant::now()));
        Some(consumer)
    }

    fn cache_key(&self, pair: &BasicPair) -> [u8; 32] {
        Sha256::new()
            .chain_update(self.salt)
            .chain_update(pair.username.as_bytes())
            .chain_update([0u8])
            .chain_update(pair.password.as_bytes())
            .finalize()
            .into()
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    fn encode(s: &str) -> String {
        base64::engine::general_purpose::STANDARD.encode(s)
    }

    #[test]
    fn pairs_split_at_the_first_colon_and_must_be_utf8() {
        let p = BasicPair::decode(&encode("ann:pa:ss")).unwrap();
        assert_eq!((p.username.as_str(), p.password.as_str()), ("ann", "pa:ss"));
        let p = BasicPair::decode(&encode("zoë:pässwörd")).unwrap();
        assert_eq!(
            (p.username.as_str(), p.password.as_str()),
            ("zoë", "pässwörd")
        );
        assert!(BasicPair::decode(&encode(":x")).is_err());
        assert!(BasicPair::decode(&encode("nocolon")).is_err());
        assert!(BasicPair::decode("%%%").is_err());
        let latin1 = base64::engine::general_purpose::STANDARD.encode([b'a', b':', 0xe9]);
        assert!(BasicPair::decode(&latin1).is_err());
    }
}
