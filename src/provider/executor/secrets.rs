//! The executor's [`SecretSource`]: BMC passwords from the operating system's random
//! source.

use rand::Rng;
use rand::distributions::Alphanumeric;
use rand::rngs::OsRng;

use crate::provider::lifecycle::{Secret, SecretSource};

/// Upstream's password length (IPMI 2.0 allows 20; upstream chose 16 for old BMCs).
pub(crate) const PASSWORD_LEN: usize = 16;

/// Draws passwords of [`PASSWORD_LEN`] characters from `[A-Za-z0-9]` with the OS random
/// source (getrandom), as upstream does with Go's crypto/rand.
#[derive(Debug, Default, Clone, Copy)]
pub(crate) struct OsSecrets;

impl SecretSource for OsSecrets {
    fn bmc_password(&mut self) -> Secret {
        let value: String = OsRng
            .sample_iter(&Alphanumeric)
            .take(PASSWORD_LEN)
            .map(char::from)
            .collect();
        Secret::new(value)
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn sixteen_alphanumerics_and_fresh_each_time() {
        let mut s = OsSecrets;
        let a = s.bmc_password();
        let b = s.bmc_password();
        for p in [&a, &b] {
            assert_eq!(p.expose().len(), PASSWORD_LEN);
            assert!(p.expose().chars().all(|c| c.is_ascii_alphanumeric()));
        }
        // 62^16 possibilities: equal draws mean a broken source.
        assert_ne!(a.expose(), b.expose());
        assert!(!format!("{a:?}").contains(a.expose()));
    }
}
