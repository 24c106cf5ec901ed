//! SigV4 for the deployed API: what API Gateway's IAM authorization checks. The signature
//! itself is aws-sigv4's (the SDKs' own implementation); this module picks its settings for
//! `execute-api`, finds the region, and caches the credentials of the standard chain.

use std::time::{Duration, SystemTime};

use aws_credential_types::provider::{ProvideCredentials, SharedCredentialsProvider};
use aws_credential_types::Credentials;
use aws_sigv4::http_request::{sign, SignableBody, SignableRequest, SigningSettings};
use aws_sigv4::sign::v4;
use aws_smithy_runtime_api::client::identity::Identity;
use bytes::Bytes;
use tokio::sync::Mutex;

/// The service name API Gateway's execute-api endpoints are signed for.
pub const SERVICE: &str = "execute-api";

/// Credentials are fetched again this long before they expire.
const REFRESH_BEFORE_EXPIRY: Duration = Duration::from_secs(5 * 60);

#[derive(Debug, thiserror::Error)]
pub enum SignError {
    #[error("no AWS credentials: {0}")]
    Credentials(String),
    #[error("header {0} is not visible ASCII and cannot be signed")]
    Header(String),
    #[error("signing failed: {0}")]
    Signing(String),
}

/// The region of an `execute-api` host (`<id>.execute-api.<region>.amazonaws.com[.cn]`), if
/// it is one.
pub fn region_from_host(host: &str) -> Option<String> {
    let labels: Vec<&str> = host.split('.').collect();
    let at = labels.iter().position(|label| *label == SERVICE)?;
    let region = labels.get(at + 1)?;
    let rest = &labels[at + 2..];
    let known_suffix = rest == ["amazonaws", "com"] || rest == ["amazonaws", "com", "cn"];
    (at > 0 && known_suffix && !region.is_empty()).then(|| (*region).to_owned())
}

/// Signs requests for one region with credentials from a provider (the standard chain in
/// `ebra console`, fixed ones in tests), kept until shortly before they expire.
pub struct Signer {
    region: String,
    provider: SharedCredentialsProvider,
    cached: Mutex<Option<Credentials>>,
}

impl Signer {
    pub fn new(region: impl Into<String>, provider: SharedCredentialsProvider) -> Self {
        Self {
            region: region.into(),
            provider,
            cached: Mutex::new(None),
        }
    }

    pub fn region(&self) -> &str {
        &self.region
    }

    /// The current credentials, fetched from the provider when none are cached or they
    /// expire soon.
    pub async fn credentials(&self) -> Result<Credentials, SignError> {
        let mut cached = self.cached.lock().await;
        if let Some(credentials) = cached.as_ref() {
            let fresh = credentials
                .expiry()
                .is_none_or(|expiry| expiry > SystemTime::now() + REFRESH_BEFORE_EXPIRY);
            if fresh {
                return Ok(credentials.clone());
            }
        }
        let credentials = self
            .provider
            .provide_credentials()
            .await
            .map_err(|error| SignError::Credentials(error_chain(&error)))?;
        *cached = Some(credentials.clone());
        Ok(credentials)
    }

    /// Signs `request` now with the current credentials.
    pub async fn sign(&self, request: &mut http::Request<Bytes>) -> Result<(), SignError> {
        let credentials = self.credentials().await?;
        sign_request(request, &credentials, &self.region, SystemTime::now())
    }
}

/// Adds SigV4's headers (`authorization`, `x-amz-date`, and `x-amz-security-token` for
/// temporary credentials) to `request`, signing its method, URI, headers and body for
/// `execute-api` in `region` at `time`.
pub fn sign_request(
    request: &mut http::Request<Bytes>,
    credentials: &Credentials,
    region: &str,
    time: SystemTime,
) -> Result<(), SignError> {
    sign_for(request, credentials, region, SERVICE, time)
}

/// [`sign_request`] for any service name (the published test vectors use `service`).
pub fn sign_for(
    request: &mut http::Request<Bytes>,
    credentials: &Credentials,
    region: &str,
    service: &str,
    time: SystemTime,
) -> Result<(), SignError> {
    let identity: Identity = credentials.clone().into();
    let params = v4::SigningParams::builder()
        .identity(&identity)
        .region(region)
        .name(service)
        .time(time)
        .settings(SigningSettings::default())
        .build()
        .map_err(|error| SignError::Signing(error.to_string()))?
        .into();
    let headers = request
        .headers()
        .iter()
        .map(|(name, value)| {
            value
                .to_str()
                .map(|value| (name.as_str(), value))
                .map_err(|_| SignError::Header(name.to_string()))
        })
        .collect::<Result<Vec<_>, _>>()?;
    let uri = request.uri().to_string();
    let signable = SignableRequest::new(
        request.method().as_str(),
        uri,
        headers.into_iter(),
        SignableBody::Bytes(request.body()),
    )
    .map_err(|error| SignError::Signing(error.to_string()))?;
    let (instructions, _signature) = sign(signable, &params)
        .map_err(|error| SignError::Signing(error.to_string()))?
        .into_parts();
    instructions.apply_to_request_http1x(request);
    Ok(())
}

/// An error and its causes on one line.
pub fn error_chain(error: &dyn std::error::Error) -> String {
    let mut text = error.to_string();
    let mut source = error.source();
    while let Some(cause) = source {
        text.push_str(": ");
        text.push_str(&cause.to_string());
        source = cause.source();
    }
    text
}

#[cfg(test)]
mod tests {
    //! The AWS SigV4 test suite's vectors (`aws-sig-v4-test-suite`, as shipped in aws-sigv4's
    //! own repository): credentials AKIDEXAMPLE, 2015-08-30T12:36:00Z, us-east-1, service
    //! `service`. A vector's Authorization is reproduced only if the request's method, URI,
    //! headers and body all reach the signer as this module hands them over.

    use super::*;

    const ACCESS_KEY: &str = "AKIDEXAMPLE";
    const SECRET_KEY: &str = "wJalrXUtnFEMI/K7MDENG+bPxRfiCYEXAMPLEKEY";

    fn at_vector_time() -> SystemTime {
        // 2015-08-30T12:36:00Z
        SystemTime::UNIX_EPOCH + Duration::from_secs(1_440_938_160)
    }

    fn signed(
        method: &str,
        uri: &str,
        headers: &[(&str, &str)],
        body: &'static [u8],
        credentials: &Credentials,
    ) -> http::Request<Bytes> {
        let mut builder = http::Request::builder().method(method).uri(uri);
        for (name, value) in headers {
            builder = builder.header(*name, *value);
        }
        let mut request = builder.body(Bytes::from_static(body)).unwrap();
        sign_for(
            &mut request,
            credentials,
            "us-east-1",
            "service",
            at_vector_time(),
        )
        .unwrap();
        request
    }

    fn header<'a>(request: &'a http::Request<Bytes>, name: &str) -> &'a str {
        request.headers()[name].to_str().unwrap()
    }

    fn example() -> Credentials {
        Credentials::new(ACCESS_KEY, SECRET_KEY, None, None, "test-vectors")
    }

    #[test]
    fn get_vanilla() {
        let request = signed(
            "GET",
            "https://example.amazonaws.com/",
            &[],
            b"",
            &example(),
        );
        assert_eq!(header(&request, "x-amz-date"), "20150830T123600Z");
        assert_eq!(
            header(&request, "authorization"),
            "AWS4-HMAC-SHA256 Credential=AKIDEXAMPLE/20150830/us-east-1/service/aws4_request, \
             SignedHeaders=host;x-amz-date, \
             Signature=5fa00fa31553b73ebf1942676e86291e8372ff2a2260956d9b8aae1d763fbf31"
        );
    }

    #[test]
    fn get_vanilla_query() {
        let request = signed(
            "GET",
            "https://example.amazonaws.com/?Param2=value2&Param1=value1",
            &[],
            b"",
            &example(),
        );
        assert_eq!(
            header(&request, "authorization"),
            "AWS4-HMAC-SHA256 Credential=AKIDEXAMPLE/20150830/us-east-1/service/aws4_request, \
             SignedHeaders=host;x-amz-date, \
             Signature=b97d918cfa904a5beff61c982a1b6f458b799221646efd99d3219ec94cdf2500"
        );
    }

    #[test]
    fn post_vanilla_query() {
        let request = signed(
            "POST",
            "https://example.amazonaws.com/?Param1=value1",
            &[],
            b"",
            &example(),
        );
        assert_eq!(
            header(&request, "authorization"),
            "AWS4-HMAC-SHA256 Credential=AKIDEXAMPLE/20150830/us-east-1/service/aws4_request, \
             SignedHeaders=host;x-amz-date, \
             Signature=28038455d6de14eafc1f9222cf5aa6f1a96197d7deb8263271d420d138af7f11"
        );
    }

    #[test]
    fn post_header_key_sort() {
        // A header the proxy forwards (content-type, idempotency-key) is signed like this one.
        let request = signed(
            "POST",
            "https://example.amazonaws.com/",
            &[("My-Header1", "value1")],
            b"",
            &example(),
        );
        assert_eq!(
            header(&request, "authorization"),
            "AWS4-HMAC-SHA256 Credential=AKIDEXAMPLE/20150830/us-east-1/service/aws4_request, \
             SignedHeaders=host;my-header1;x-amz-date, \
             Signature=c5410059b04c1ee005303aed430f6e6645f61f4dc9e1461ec8f8916fdf18852c"
        );
    }

    #[test]
    fn get_vanilla_with_session_token() {
        let credentials = Credentials::new(
            ACCESS_KEY,
            SECRET_KEY,
            Some("6e86291e8372ff2a2260956d9b8aae1d763fbf315fa00fa31553b73ebf194267".to_owned()),
            None,
            "test-vectors",
        );
        let request = signed(
            "GET",
            "https://example.amazonaws.com/",
            &[],
            b"",
            &credentials,
        );
        assert_eq!(
            header(&request, "x-amz-security-token"),
            "6e86291e8372ff2a2260956d9b8aae1d763fbf315fa00fa31553b73ebf194267"
        );
        assert_eq!(
            header(&request, "authorization"),
            "AWS4-HMAC-SHA256 Credential=AKIDEXAMPLE/20150830/us-east-1/service/aws4_request, \
             SignedHeaders=host;x-amz-date;x-amz-security-token, \
             Signature=07ec1639c89043aa0e3e2de82b96708f198cceab042d4a97044c66dd9f74e7f8"
        );
    }

    #[test]
    fn regions_from_execute_api_hosts() {
        assert_eq!(
            region_from_host("abc123.execute-api.eu-west-1.amazonaws.com").as_deref(),
            Some("eu-west-1")
        );
        assert_eq!(
            region_from_host("abc123.execute-api.cn-north-1.amazonaws.com.cn").as_deref(),
            Some("cn-north-1")
        );
        assert_eq!(region_from_host("api.example.com"), None);
        assert_eq!(
            region_from_host("execute-api.eu-west-1.amazonaws.com"),
            None
        );
        assert_eq!(
            region_from_host("abc.execute-api.eu-west-1.example.com"),
            None
        );
        assert_eq!(region_from_host("127.0.0.1"), None);
    }
}
