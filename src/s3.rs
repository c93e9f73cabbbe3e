//! Building the S3 client: the standard aws-config chain, a rustls (ring) HTTPS client, and the flags
//! that override the chain.

use std::time::Duration;

use aws_config::environment::region::EnvironmentVariableRegionProvider;
use aws_config::meta::region::RegionProviderChain;
use aws_config::profile::ProfileFileRegionProvider;
use aws_config::retry::RetryConfig;
use aws_config::timeout::TimeoutConfig;
use aws_config::{BehaviorVersion, SdkConfig};
use aws_sdk_s3::config::{Region, ResponseChecksumValidation};
use aws_smithy_http_client::tls::{self, rustls_provider::CryptoMode};

use crate::config::Config;
use crate::errtext;

/// Region used with a custom endpoint when the chain has none: local S3 servers ignore it, but SigV4
/// needs one.
const FALLBACK_REGION: &str = "us-east-1";

#[derive(Debug, thiserror::Error)]
#[error("no AWS region configured: pass --region, set AWS_REGION, or set region in ~/.aws/config")]
pub struct NoRegion;

/// The shared aws-config chain (credentials, region, retries, timeouts, the rustls client) that the S3
/// and CloudWatch clients are built from. `--endpoint-url` is S3's alone, so it is not set here; the
/// SDK's own `AWS_ENDPOINT_URL` / `AWS_ENDPOINT_URL_<SERVICE>` variables still apply per service.
pub async fn sdk_config(config: &Config) -> SdkConfig {
    // rustls with ring: no aws-lc C build, which keeps the static musl build simple.
    let http = aws_smithy_http_client::Builder::new()
        .tls_provider(tls::Provider::Rustls(CryptoMode::Ring))
        .build_https();
    let mut loader = aws_config::defaults(BehaviorVersion::latest())
        .http_client(http)
        .retry_config(
            // Standard mode: exponential backoff with jitter, throttling (503 SlowDown) included.
            RetryConfig::standard().with_max_attempts(5),
        )
        .timeout_config(
            TimeoutConfig::builder()
                .connect_timeout(Duration::from_secs(10))
                .read_timeout(Duration::from_secs(60))
                .build(),
        );
    if let Some(r) = &config.region {
        loader = loader.region(Region::new(r.clone()));
    } else if custom_endpoint(config) {
        // A local S3 server (MinIO, SeaweedFS) ignores the region; IMDS would not answer off EC2, and
        // asking it costs seconds and logs warnings. Environment and profile still count.
        loader = loader.region(
            RegionProviderChain::first_try(EnvironmentVariableRegionProvider::new())
                .or_else(ProfileFileRegionProvider::new())
                .or_else(Region::new(FALLBACK_REGION)),
        );
    }
    loader.load().await
}

/// The region to sign with when the chain found none: only acceptable with a custom endpoint.
pub fn region_or_fallback(config: &Config, sdk: &SdkConfig) -> Result<Region, NoRegion> {
    match sdk.region() {
        Some(r) => Ok(r.clone()),
        None if custom_endpoint(config) => Ok(Region::new(FALLBACK_REGION)),
        None => Err(NoRegion),
    }
}

pub fn client(config: &Config, sdk: &SdkConfig) -> Result<aws_sdk_s3::Client, NoRegion> {
    let mut s3 = aws_sdk_s3::config::Builder::from(sdk)
        .force_path_style(config.force_path_style)
        // We verify bodies ourselves (see verify.rs); the SDK must not hash them a second time.
        .response_checksum_validation(ResponseChecksumValidation::WhenRequired)
        .region(region_or_fallback(config, sdk)?);
    if let Some(e) = &config.endpoint_url {
        s3 = s3.endpoint_url(e);
    }
    let s3 = s3.build();
    let endpoint = config.endpoint_url.as_deref().or(sdk.endpoint_url());
    errtext::set_s3_endpoint(match (endpoint, s3.region()) {
        (Some(url), _) => url.to_owned(),
        (None, Some(r)) => format!("S3 in {r}"),
        (None, None) => "S3".to_owned(),
    });
    Ok(aws_sdk_s3::Client::from_conf(s3))
}

/// An endpoint other than AWS's: the flag, or the SDK's standard environment variables.
fn custom_endpoint(config: &Config) -> bool {
    config.endpoint_url.is_some()
        || ["AWS_ENDPOINT_URL_S3", "AWS_ENDPOINT_URL"]
            .iter()
            .any(|v| std::env::var_os(v).is_some_and(|s| !s.is_empty()))
}
