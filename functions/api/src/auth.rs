//! The optional bearer token (`API_TOKEN`). In AWS the API Gateway authorizer is the front
//! door; this check protects the local listener and any deployment without one.

use std::sync::Arc;

use axum::extract::{Request, State};
use axum::http::header::AUTHORIZATION;
use axum::middleware::Next;
use axum::response::{IntoResponse, Response};
use sha2::{Digest, Sha256};

use crate::error::ApiError;

/// The expected token, kept as a SHA-256 digest: comparing fixed-size digests in constant
/// time leaks neither the token's content nor its length.
#[derive(Clone)]
pub struct BearerToken {
    digest: [u8; 32],
}

impl BearerToken {
    pub fn new(token: &str) -> Self {
        Self {
            digest: Sha256::digest(token.as_bytes()).into(),
        }
    }

    pub fn matches(&self, presented: &str) -> bool {
        let presented: [u8; 32] = Sha256::digest(presented.as_bytes()).into();
        // No early exit: every byte is compared whatever the first difference.
        let difference = presented
            .iter()
            .zip(self.digest.iter())
            .fold(0u8, |acc, (a, b)| acc | (a ^ b));
        difference == 0
    }
}

/// The credentials of an `Authorization: Bearer <token>` header (the scheme is
/// case-insensitive, RFC 9110 §11.1).
fn bearer_credentials(header: &str) -> Option<&str> {
    let (scheme, token) = header.trim().split_once(' ')?;
    let token = token.trim();
    (scheme.eq_ignore_ascii_case("bearer") && !token.is_empty()).then_some(token)
}

/// Middleware: lets the request through only with the right bearer token.
pub async fn require_bearer(
    State(expected): State<Arc<BearerToken>>,
    request: Request,
    next: Next,
) -> Response {
    let authorized = request
        .headers()
        .get(AUTHORIZATION)
        .and_then(|value| value.to_str().ok())
        .and_then(bearer_credentials)
        .is_some_and(|token| expected.matches(token));
    if authorized {
        next.run(request).await
    } else {
        ApiError::Unauthorized.into_response()
    }
}

/// Who is calling, for the records that keep it (the do-not-call list's history): the IAM
/// principal or the JWT subject API Gateway authenticated (`iam:<user ARN>`, `jwt:<sub>`),
/// else `api-token` when the bearer token was checked, else nobody known.
pub fn caller_identity(extensions: &axum::http::Extensions, token_checked: bool) -> Option<String> {
    use lambda_http::request::RequestContext;
    if let Some(RequestContext::ApiGatewayV2(context)) = extensions.get::<RequestContext>() {
        if let Some(authorizer) = &context.authorizer {
            if let Some(arn) = authorizer
                .iam
                .as_ref()
                .and_then(|iam| iam.user_arn.as_deref())
            {
                return Some(format!("iam:{arn}"));
            }
            if let Some(subject) = authorizer
                .jwt
                .as_ref()
                .and_then(|jwt| jwt.claims.get("sub"))
            {
                return Some(format!("jwt:{subject}"));
            }
        }
    }
    token_checked.then(|| "api-token".to_owned())
}

/// [`caller_identity`], cut to what the records keep (512 characters).
pub fn caller_identity_for_records(
    extensions: &axum::http::Extensions,
    token_checked: bool,
) -> Option<String> {
    caller_identity(extensions, token_checked).map(|who| who.chars().take(512).collect())
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn bearer_header_parsing() {
        assert_eq!(bearer_credentials("Bearer abc"), Some("abc"));
        assert_eq!(bearer_credentials("bearer  abc "), Some("abc"));
        assert_eq!(bearer_credentials("Basic abc"), None);
        assert_eq!(bearer_credentials("Bearer "), None);
        assert_eq!(bearer_credentials("Bearerabc"), None);
    }

    #[test]
    fn token_matches_only_itself() {
        let token = BearerToken::new("s3cret");
        assert!(token.matches("s3cret"));
        assert!(!token.matches("s3cre"));
        assert!(!token.matches("s3cret "));
        assert!(!token.matches(""));
    }
}
