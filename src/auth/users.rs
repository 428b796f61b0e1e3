//! Users' names and password hashes: salted argon2id in PHC strings, never
//! the password.

use argon2::password_hash::rand_core::OsRng;
use argon2::password_hash::{PasswordHash, PasswordHasher, PasswordVerifier, SaltString};
use argon2::Argon2;

use super::AuthError;

/// The file, in the data directory.
pub const FILE: &str = "users";
/// Longest user name, in bytes.
pub const MAX_NAME: usize = 128;
/// Shortest password.
pub const MIN_PASSWORD: usize = 8;

/// Hashes `password` with a fresh salt (slow by design).
pub fn hash_password(password: &str) -> Result<String, AuthError> {
    if password.chars().count() < MIN_PASSWORD {
        return Err(AuthError::Invalid(format!(
            "the password must have at least {MIN_PASSWORD} characters"
        )));
    }
    let salt = SaltString::generate(&mut OsRng);
    Argon2::default()
        .hash_password(password.as_bytes(), &salt)
        .map(|h| h.to_string())
        .map_err(|e| AuthError::Invalid(format!("cannot hash the password: {e}")))
}

/// Checks that `hash` is a PHC string (a change carrying anything else is
/// refused rather than stored to lock its user out).
pub fn check_hash(hash: &str) -> Result<(), AuthError> {
    PasswordHash::new(hash)
        .map(|_| ())
        .map_err(|e| AuthError::Invalid(format!("not a password hash: {e}")))
}

/// Checks a user name: 1 to [`MAX_NAME`] bytes of letters, digits, `.`,
/// `_`, `-` and `@`.
pub fn check_name(name: &str) -> Result<(), AuthError> {
    let ok = !name.is_empty()
        && name.len() <= MAX_NAME
        && name
            .chars()
            .all(|c| c.is_alphanumeric() || matches!(c, '.' | '_' | '-' | '@'));
    if ok {
        Ok(())
    } else {
        Err(AuthError::Invalid(format!(
            "invalid user name {name:?}: 1 to {MAX_NAME} letters, digits, '.', '_', '-' or '@'"
        )))
    }
}

/// True if `password` matches the stored PHC hash string `hash` (false
/// for a hash that does not parse: a damaged users file locks the user out,
/// it never lets anyone in).
pub fn verify_against(hash: &str, password: &str) -> bool {
    let Ok(parsed) = PasswordHash::new(hash) else {
        return false;
    };
    Argon2::default()
        .verify_password(password.as_bytes(), &parsed)
        .is_ok()
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn passwords_are_hashed_salted_and_checked() {
        let a = hash_password("correct horse").expect("hash");
        let b = hash_password("correct horse").expect("hash");
        assert_ne!(a, b, "no salt");
        assert!(!a.contains("correct horse"));
        assert!(verify_against(&a, "correct horse"));
        assert!(!verify_against(&a, "wrong horse!"));
        assert!(!verify_against("garbage", "correct horse"));
        assert!(hash_password("short").is_err());
        assert!(check_name("bad name!").is_err());
        assert!(check_name("broker:1").is_err());
        assert!(check_name("alice@example.com").is_ok());
    }
}
