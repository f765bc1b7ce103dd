//! `users.*`: the caller's own user record.

use serde_json::{Value, json};
use tasklab_error::Error;

use crate::http::Call;

/// `users.get_current_user`: the authenticated user.
pub(crate) async fn get_current_user(call: Call) -> Result<Value, Error> {
    let id = &call.identity;
    Ok(json!({
        "user": {
            "id": id.user,
            "name": id.user_name,
            "given_name": id.user_name,
            "family_name": "",
            "company": { "id": id.company, "name": id.company_name },
            "role": id.role,
            "email": "",
        },
        "getting_started": {},
        "settings": {},
    }))
}
