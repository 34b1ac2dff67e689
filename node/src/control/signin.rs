//! One-time sign-in codes: how `fogmesh dashboard --open` hands the page the token without
//! putting it on a command line.
//!
//! Opening a browser passes it the address as an argument, and a browser keeps its
//! arguments for its whole life, where every local user can read them (`/proc/*/cmdline`).
//! So `--open` asks the node for a code (`POST /v1/signin/codes`, a write: it needs the
//! token) and opens `/ui/#code=…` instead; the page trades the code for the token
//! (`POST /v1/signin {"code"}`, the one write that needs no token; the host and origin
//! checks still apply, so only the node's own page can make it). A code works once, for
//! [`CODE_TTL`]; at most [`MAX_CODES`] are outstanding (the oldest is dropped beyond).
//! Codes are 128 random bits: guessing one is hopeless.

use std::collections::VecDeque;
use std::sync::{Arc, Mutex};
use std::time::{Duration, Instant};

use axum::extract::State;
use axum::http::StatusCode;
use axum::routing::post;
use axum::{Json, Router};
use serde::{Deserialize, Serialize};

use super::access::ApiToken;
use super::{api_error, ApiError};

/// How long a code can be traded.
pub const CODE_TTL: Duration = Duration::from_secs(60);
/// Most codes outstanding.
pub const MAX_CODES: usize = 16;
/// The route that trades a code for the token (exempt from the token check).
pub const SIGNIN_PATH: &str = "/v1/signin";

/// The codes issued and not yet traded.
#[derive(Debug, Default)]
pub struct SignInCodes {
    codes: Mutex<VecDeque<(String, Instant)>>,
}

impl SignInCodes {
    /// A new code, good once for [`CODE_TTL`].
    pub fn issue(&self, now: Instant) -> String {
        let bytes: [u8; 16] = rand::random();
        let code = hex::encode(bytes);
        let mut codes = self.codes.lock().unwrap_or_else(|p| p.into_inner());
        codes.retain(|(_, at)| now.duration_since(*at) < CODE_TTL);
        if codes.len() == MAX_CODES {
            codes.pop_front();
        }
        codes.push_back((code.clone(), now));
        code
    }

    /// Whether `code` was issued, is fresh and unused; it is used up either way.
    pub fn redeem(&self, code: &str, now: Instant) -> bool {
        let mut codes = self.codes.lock().unwrap_or_else(|p| p.into_inner());
        codes.retain(|(_, at)| now.duration_since(*at) < CODE_TTL);
        match codes.iter().position(|(c, _)| c == code) {
            Some(i) => {
                codes.remove(i);
                true
            }
            None => false,
        }
    }
}

/// What the sign-in routes need.
#[derive(Debug, Clone)]
pub struct SignIn {
    pub token: ApiToken,
    pub codes: Arc<SignInCodes>,
}

#[derive(Debug, Clone, Serialize, Deserialize)]
pub struct IssuedCode {
    pub code: String,
    pub expires_in_s: u64,
}

#[derive(Debug, Clone, Serialize, Deserialize)]
pub struct RedeemRequest {
    pub code: String,
}

#[derive(Debug, Clone, Serialize, Deserialize)]
pub struct RedeemedToken {
    pub token: String,
}

/// `POST /v1/signin/codes` and `POST /v1/signin`, for a router of any state.
pub fn routes<S: Clone + Send + Sync + 'static>(signin: SignIn) -> Router<S> {
    Router::new()
        .route("/v1/signin/codes", post(issue))
        .route(SIGNIN_PATH, post(redeem))
        .with_state(signin)
}

async fn issue(State(signin): State<SignIn>) -> Json<IssuedCode> {
    Json(IssuedCode {
        code: signin.codes.issue(Instant::now()),
        expires_in_s: CODE_TTL.as_secs(),
    })
}

async fn redeem(
    State(signin): State<SignIn>,
    Json(request): Json<RedeemRequest>,
) -> Result<Json<RedeemedToken>, ApiError> {
    if signin.codes.redeem(request.code.trim(), Instant::now()) {
        Ok(Json(RedeemedToken {
            token: signin.token.as_str().to_owned(),
        }))
    } else {
        Err(api_error(
            StatusCode::UNAUTHORIZED,
            "unknown, used or expired sign-in code: run `fogmesh dashboard --open` again",
        ))
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn a_code_works_once_and_not_after_its_time() {
        let codes = SignInCodes::default();
        let t0 = Instant::now();
        let code = codes.issue(t0);
        assert!(!codes.redeem("not a code", t0));
        assert!(codes.redeem(&code, t0 + Duration::from_secs(1)));
        assert!(!codes.redeem(&code, t0 + Duration::from_secs(1)));
        let late = codes.issue(t0);
        assert!(!codes.redeem(&late, t0 + CODE_TTL));
    }

    #[test]
    fn outstanding_codes_are_bounded() {
        let codes = SignInCodes::default();
        let t0 = Instant::now();
        let first = codes.issue(t0);
        for _ in 0..MAX_CODES {
            codes.issue(t0);
        }
        assert!(!codes.redeem(&first, t0), "the oldest was dropped");
    }
}
