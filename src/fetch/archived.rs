//! Archived objects (GET answered InvalidObjectState): with `--restore-archived`, one RestoreObject each,
//! never while a restore is under way.

use aws_sdk_s3::error::ProvideErrorMetadata;
use aws_sdk_s3::types::{GlacierJobParameters, RestoreRequest, Tier};

use super::{Fetcher, Unfetched, op};
use crate::errtext;
use crate::listing::ObjectInfo;

impl Fetcher {
    /// An archived object: with `--restore-archived`, ask for a restore unless one is under way (HEAD's
    /// `x-amz-restore` says `ongoing-request="true"`); never a second request while one runs.
    pub(super) async fn archived(&self, obj: &ObjectInfo) -> Unfetched {
        let Some(days) = self.restore_days else {
            return Unfetched::Archived {
                restore_requested: false,
            };
        };
        let restore_requested = match self.request_restore(obj, days).await {
            Ok(requested) => requested,
            Err(e) => {
                tracing::warn!("{e}");
                false
            }
        };
        Unfetched::Archived { restore_requested }
    }

    async fn request_restore(&self, obj: &ObjectInfo, days: u32) -> Result<bool, String> {
        let _permit = self.requests.acquire().await.expect("never closed");
        let head = self
            .client_with_retries
            .head_object()
            .bucket(&*self.bucket)
            .key(&obj.key)
            .set_version_id(obj.version_id.clone())
            .send()
            .await
            .map_err(|e| errtext::s3_line(&op("HEAD", &obj.key), &e))?;
        if head.restore().is_some_and(restore_in_progress) {
            tracing::debug!(key = %obj.key, "restore already in progress");
            return Ok(false);
        }
        let request = RestoreRequest::builder()
            .days(i32::try_from(days).unwrap_or(i32::MAX))
            .glacier_job_parameters(
                GlacierJobParameters::builder()
                    .tier(Tier::Bulk)
                    .build()
                    .map_err(|e| e.to_string())?,
            )
            .build();
        match self
            .client_with_retries
            .restore_object()
            .bucket(&*self.bucket)
            .key(&obj.key)
            .set_version_id(obj.version_id.clone())
            .restore_request(request)
            .send()
            .await
        {
            Ok(_) => {
                tracing::info!(key = %obj.key, days, "restore requested (Bulk tier)");
                Ok(true)
            }
            // A restore started since the HEAD (another client): nothing more to ask.
            Err(e) if e.code() == Some("RestoreAlreadyInProgress") => Ok(false),
            Err(e) => Err(errtext::s3_line(&op("RestoreObject", &obj.key), &e)),
        }
    }
}

/// HEAD's `x-amz-restore`: `ongoing-request="true"` while a restore runs; `ongoing-request="false",
/// expiry-date="…"` once the copy is readable.
pub(super) fn restore_in_progress(header: &str) -> bool {
    header
        .split(',')
        .filter_map(|kv| kv.split_once('='))
        .any(|(k, v)| k.trim() == "ongoing-request" && v.trim().trim_matches('"') == "true")
}
