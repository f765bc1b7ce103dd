//! `auth.*`: logging in and checking tokens.

use serde::Deserialize;
use serde_json::{Value, json};
use tasklab_error::Error;

use crate::http::Call;

#[derive(Debug, Default, Deserialize)]
#[serde(default)]
struct LoginArgs {
    expiration_sec: Option<i64>,
}

/// `auth.login`: a token for the caller (Basic credentials, or a valid token
/// to refresh), valid `expiration_sec` (at most the configured lifetime).
pub(crate) async fn login(call: Call) -> Result<Value, Error> {
    let args: LoginArgs = call.args()?;
    let token = call
        .gw
        .auth
        .issue(call.identity.clone(), args.expiration_sec);
    tracing::info!(user = %call.identity.user, "login");
    Ok(json!({ "token": token }))
}

#[derive(Debug, Default, Deserialize)]
#[serde(default)]
struct ValidateArgs {
    token: Option<String>,
}

/// `auth.validate_token`: whether a token is valid, and whose it is.
pub(crate) async fn validate_token(call: Call) -> Result<Value, Error> {
    let args: ValidateArgs = call.args()?;
    let token = crate::http::args::required(&args.token, "token")?;
    Ok(match call.gw.auth.check_token(token).await {
        Ok(claims) => json!({
            "valid": true,
            "msg": "",
            "user": claims.identity.user,
            "company": claims.identity.company,
        }),
        Err(e) => json!({ "valid": false, "msg": e.message(), "user": null, "company": null }),
    })
}
