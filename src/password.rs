//! argon2id password hashes (PHC strings): made by `apigateway hash-password`, checked by the
//! login endpoint and by consumers' Basic credentials.

use argon2::{Argon2, PasswordHash, PasswordHasher, PasswordVerifier};

/// Hashes a password as argon2id (v19, m=19456 KiB, t=2, p=1: OWASP's baseline) with a random
/// salt from the OS, as a PHC string.
pub fn hash(password: &str) -> Result<String, String> {
    Argon2::default()
        .hash_password(password.as_bytes())
        .map(|h| h.to_string())
        .map_err(|e| e.to_string())
}

/// Whether `password` matches `hash` (never for a malformed hash). CPU-heavy by design: call
/// it off the event loop.
pub fn matches(hash: &str, password: &str) -> bool {
    PasswordHash::new(hash).is_ok_and(|h| {
        Argon2::default()
            .verify_password(password.as_bytes(), &h)
            .is_ok()
    })
}

/// Why `hash` is not a PHC string, if it is not (for config errors).
pub fn check_format(hash: &str) -> Result<(), String> {
    PasswordHash::new(hash)
        .map(|_| ())
        .map_err(|e| e.to_string())
}

/// The hash of a random password, checked for unknown users so that they cost the same argon2
/// work as a wrong password.
pub fn dummy() -> Result<String, String> {
    hash(&uuid::Uuid::new_v4().to_string())
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn a_hash_matches_its_password_only() {
        let h = hash("pa:ss wörd").unwrap();
        assert!(check_format(&h).is_ok());
        assert!(matches(&h, "pa:ss wörd"));
        assert!(!matches(&h, "pa:ss"));
        assert!(!matches("plain-text", "plain-text"));
        assert!(check_format("plain-text").is_err());
    }
}
