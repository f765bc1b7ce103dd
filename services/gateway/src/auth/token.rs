//! Signed tokens: compact JWTs (RFC 7519) signed with HMAC-SHA256.
//!
//! ClearML clients decode the token without checking its signature and read
//! their API version from it (`api_version`, `server_version`,
//! `feature_set`, `exp`), so the claims follow ClearML's server. The
//! signature is what *this* server checks on every call.

use base64::Engine as _;
use base64::engine::general_purpose::URL_SAFE_NO_PAD;
use hmac::{Hmac, Mac};
use serde::{Deserialize, Serialize};
use sha2::Sha256;
use tasklab_error::{Error, ErrorCode};

type HmacSha256 = Hmac<Sha256>;

/// Who a token speaks for (ClearML's `identity` claim).
#[derive(Debug, Clone, PartialEq, Eq, Serialize, Deserialize)]
pub struct Identity {
    /// User id: the access key the token was issued for.
    pub user: String,
    /// Company id.
    pub company: String,
    /// Role (`user`).
    pub role: String,
    /// Display name of the user.
    pub user_name: String,
    /// Display name of the company.
    pub company_name: String,
}

impl Identity {
    /// The identity of a credential's access key.
    pub fn for_access_key(access_key: &str) -> Identity {
        Identity {
            user: access_key.to_owned(),
            company: COMPANY_ID.to_owned(),
            role: "user".to_owned(),
            user_name: access_key.to_owned(),
            company_name: COMPANY_NAME.to_owned(),
        }
    }
}

/// The single company every tasklab user belongs to.
pub const COMPANY_ID: &str = "tasklab";
/// Its display name.
pub const COMPANY_NAME: &str = "tasklab";

/// The API version advertised to ClearML clients.
pub const API_VERSION: &str = "2.31";
/// The ClearML server version advertised to clients (the SDK gates features
/// on it).
pub const SERVER_VERSION: &str = "2.0.0";

/// The claims of a token.
#[derive(Debug, Clone, PartialEq, Serialize, Deserialize)]
pub struct Claims {
    /// The user and company.
    pub identity: Identity,
    /// Expiry, seconds since the Unix epoch.
    pub exp: i64,
    /// Issue time, seconds since the Unix epoch.
    pub iat: i64,
    /// Deployment environment (`tasklab`; ClearML's SDK treats anything but
    /// `prod` alike).
    pub env: String,
    /// Maximum API version of this server.
    pub api_version: String,
    /// Server version the SDK compares against.
    pub server_version: String,
    /// Build of the server.
    pub server_build: String,
    /// `basic`: no enterprise features (vaults, ...).
    pub feature_set: String,
}

impl Claims {
    /// Claims for `identity`, valid from `now` for `ttl_secs`.
    pub fn new(identity: Identity, now: i64, ttl_secs: i64) -> Claims {
        Claims {
            identity,
            exp: now.saturating_add(ttl_secs),
            iat: now,
            env: "tasklab".to_owned(),
            api_version: API_VERSION.to_owned(),
            server_version: SERVER_VERSION.to_owned(),
            server_build: env!("CARGO_PKG_VERSION").to_owned(),
            feature_set: "basic".to_owned(),
        }
    }
}

/// Signs and verifies tokens with one secret.
#[derive(Clone)]
pub struct TokenSigner {
    key: Vec<u8>,
}

impl std::fmt::Debug for TokenSigner {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        f.debug_struct("TokenSigner").finish_non_exhaustive()
    }
}

const HEADER: &str = r#"{"alg":"HS256","typ":"JWT"}"#;

fn invalid(message: &str) -> Error {
    Error::new(ErrorCode::InvalidToken, message.to_owned())
}

impl TokenSigner {
    /// A signer with the given secret.
    pub fn new(secret: &[u8]) -> TokenSigner {
        TokenSigner {
            key: secret.to_vec(),
        }
    }

    fn mac(&self) -> HmacSha256 {
        // HMAC accepts keys of any length.
        HmacSha256::new_from_slice(&self.key).unwrap_or_else(|_| unreachable!())
    }

    /// Encodes and signs `claims`.
    pub fn sign(&self, claims: &Claims) -> String {
        let payload = serde_json::to_vec(claims).unwrap_or_default();
        let signing_input = format!(
            "{}.{}",
            URL_SAFE_NO_PAD.encode(HEADER),
            URL_SAFE_NO_PAD.encode(payload)
        );
        let mut mac = self.mac();
        mac.update(signing_input.as_bytes());
        let signature = URL_SAFE_NO_PAD.encode(mac.finalize().into_bytes());
        format!("{signing_input}.{signature}")
    }

    /// Checks the signature and expiry of `token` at time `now` and returns
    /// its claims. Every failure is `invalid_token` (401/30), so ClearML
    /// clients log in again.
    pub fn verify(&self, token: &str, now: i64) -> Result<Claims, Error> {
        let mut parts = token.trim().splitn(3, '.');
        let (Some(header), Some(payload), Some(signature)) =
            (parts.next(), parts.next(), parts.next())
        else {
            return Err(invalid("malformed token"));
        };
        let signature = URL_SAFE_NO_PAD
            .decode(signature)
            .map_err(|_| invalid("malformed token signature"))?;
        let mut mac = self.mac();
        mac.update(header.as_bytes());
        mac.update(b".");
        mac.update(payload.as_bytes());
        mac.verify_slice(&signature)
            .map_err(|_| invalid("invalid token signature"))?;
        let header: serde_json::Value = URL_SAFE_NO_PAD
            .decode(header)
            .ok()
            .and_then(|bytes| serde_json::from_slice(&bytes).ok())
            .ok_or_else(|| invalid("malformed token header"))?;
        if header.get("alg").and_then(|v| v.as_str()) != Some("HS256") {
            return Err(invalid("unsupported token algorithm"));
        }
        let claims: Claims = URL_SAFE_NO_PAD
            .decode(payload)
            .ok()
            .and_then(|bytes| serde_json::from_slice(&bytes).ok())
            .ok_or_else(|| invalid("malformed token claims"))?;
        if claims.exp <= now {
            return Err(invalid("token expired"));
        }
        Ok(claims)
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    fn claims(now: i64, ttl: i64) -> Claims {
        Claims::new(Identity::for_access_key("AK"), now, ttl)
    }

    #[test]
    fn signed_token_verifies_and_carries_clearml_claims() {
        let signer = TokenSigner::new(b"secret");
        let token = signer.sign(&claims(1000, 60));
        let back = signer.verify(&token, 1010).unwrap();
        assert_eq!(back.identity.user, "AK");
        assert_eq!(back.api_version, "2.31");
        assert_eq!(back.feature_set, "basic");
        assert_eq!(back.exp, 1060);
        // A JWT: three base64url parts, header says HS256.
        let header = token.split('.').next().unwrap();
        let header = URL_SAFE_NO_PAD.decode(header).unwrap();
        assert_eq!(header, HEADER.as_bytes());
    }

    #[test]
    fn expired_forged_and_garbled_tokens_are_invalid() {
        let signer = TokenSigner::new(b"secret");
        let token = signer.sign(&claims(1000, 60));
        let code = |r: Result<Claims, Error>| r.unwrap_err().code();
        assert_eq!(code(signer.verify(&token, 1060)), ErrorCode::InvalidToken);
        let other = TokenSigner::new(b"other");
        assert_eq!(code(other.verify(&token, 1010)), ErrorCode::InvalidToken);
        // Tampered claims with the old signature.
        let mut parts: Vec<&str> = token.split('.').collect();
        let forged = URL_SAFE_NO_PAD.encode(
            serde_json::to_vec(&Claims::new(Identity::for_access_key("ROOT"), 1000, 60)).unwrap(),
        );
        parts[1] = &forged;
        assert_eq!(
            code(signer.verify(&parts.join("."), 1010)),
            ErrorCode::InvalidToken
        );
        for garbage in ["", "a.b", "a.b.c", "..", "x.y.!!!"] {
            assert_eq!(code(signer.verify(garbage, 1010)), ErrorCode::InvalidToken);
        }
    }
}
