//! Authentication: access/secret key credentials (stored hashed) and, with
//! the ClearML layer, the tokens issued for them.

mod credentials;

pub use credentials::{Credential, CredentialStore, GeneratedCredential};
