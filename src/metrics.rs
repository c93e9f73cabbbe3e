//! The run's metrics in CloudWatch (`--cloudwatch-namespace`): one PutMetricData at the end of every run
//! that got past argument parsing, so that an alarm can say when backups fail or stop.
//!
//! A failed publish is a warning and never changes the exit code: the alarm on missing data covers it.

use std::time::Duration;

use aws_sdk_cloudwatch::types::{Dimension, MetricDatum, StandardUnit};

use crate::config::Config;
use crate::errtext;
use crate::report::Report;

/// The whole publish, credentials included: a CloudWatch endpoint that accepts the connection and never
/// answers must not hold up the end of every run (nor a stopped run's exit).
const PUBLISH_TIMEOUT: Duration = Duration::from_secs(8);

/// What one run says to CloudWatch.
#[derive(Debug, Clone, Default, PartialEq)]
pub struct RunMetrics {
    pub succeeded: bool,
    pub downloaded: u64,
    pub bytes: u64,
    pub failed: u64,
    pub refused: u64,
    pub unverified: u64,
    pub archived: u64,
    pub duration: Duration,
}

impl RunMetrics {
    /// A run that ended with a report (exit 0 or 1).
    pub fn of(report: &Report, succeeded: bool) -> RunMetrics {
        RunMetrics {
            succeeded,
            downloaded: report.downloaded,
            bytes: report.bytes_downloaded,
            failed: report.failed.len() as u64,
            refused: report.refused.len() as u64,
            unverified: report.unverified,
            archived: report.archived.len() as u64,
            duration: Duration::from_secs_f64(report.elapsed_seconds.max(0.0)),
        }
    }

    /// The data of one PutMetricData, all under the dimension `Bucket=<bucket>`.
    pub fn data(&self, bucket: &str) -> Vec<MetricDatum> {
        let dim = Dimension::builder().name("Bucket").value(bucket).build();
        let count = StandardUnit::Count;
        [
            (
                "BackupSucceeded",
                u64::from(self.succeeded) as f64,
                count.clone(),
            ),
            ("ObjectsDownloaded", self.downloaded as f64, count.clone()),
            ("BytesDownloaded", self.bytes as f64, StandardUnit::Bytes),
            ("ObjectsFailed", self.failed as f64, count.clone()),
            ("ObjectsRefused", self.refused as f64, count.clone()),
            ("UnverifiedObjects", self.unverified as f64, count.clone()),
            ("ArchivedObjects", self.archived as f64, count),
            (
                "DurationSeconds",
                self.duration.as_secs_f64(),
                StandardUnit::Seconds,
            ),
        ]
        .into_iter()
        .map(|(name, value, unit)| {
            MetricDatum::builder()
                .metric_name(name)
                .value(value)
                .unit(unit)
                .dimensions(dim.clone())
                .build()
        })
        .collect()
    }
}

/// Publish `m` to `namespace`; on failure, log one warning line and carry on.
pub async fn publish(config: &Config, namespace: &str, m: &RunMetrics) {
    match tokio::time::timeout(PUBLISH_TIMEOUT, put(config, namespace, m)).await {
        Ok(Ok(())) => tracing::debug!(namespace, "metrics published"),
        Ok(Err(e)) => tracing::warn!("could not publish the run's metrics: {e}"),
        Err(_) => tracing::warn!(
            "could not publish the run's metrics: PutMetricData to {namespace} took over {}s",
            PUBLISH_TIMEOUT.as_secs()
        ),
    }
}

async fn put(config: &Config, namespace: &str, m: &RunMetrics) -> Result<(), String> {
    let sdk = crate::s3::sdk_config(config).await;
    let region = crate::s3::region_or_fallback(config, &sdk).map_err(|e| e.to_string())?;
    // Two attempts, each bounded: a dead endpoint is said as such well within PUBLISH_TIMEOUT.
    let cw = aws_sdk_cloudwatch::config::Builder::from(&sdk)
        .region(region.clone())
        .retry_config(
            aws_sdk_cloudwatch::config::retry::RetryConfig::standard().with_max_attempts(2),
        )
        .timeout_config(
            aws_sdk_cloudwatch::config::timeout::TimeoutConfig::builder()
                .connect_timeout(Duration::from_secs(2))
                .operation_attempt_timeout(Duration::from_secs(3))
                .build(),
        )
        .build();
    let endpoint = std::env::var("AWS_ENDPOINT_URL_CLOUDWATCH")
        .ok()
        .or_else(|| sdk.endpoint_url().map(str::to_owned))
        .unwrap_or_else(|| format!("CloudWatch in {region}"));
    aws_sdk_cloudwatch::Client::from_conf(cw)
        .put_metric_data()
        .namespace(namespace)
        .set_metric_data(Some(m.data(&config.bucket)))
        .send()
        .await
        .map(|_| ())
        .map_err(|e| {
            errtext::describe(&format!("PutMetricData to {namespace}"), &endpoint, &e).line
        })
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn every_metric_has_its_unit_and_the_bucket_dimension() {
        let m = RunMetrics {
            succeeded: true,
            downloaded: 2,
            bytes: 10,
            duration: Duration::from_millis(1500),
            ..RunMetrics::default()
        };
        let data = m.data("images");
        let names: Vec<_> = data.iter().map(|d| d.metric_name().unwrap()).collect();
        assert_eq!(
            names,
            [
                "BackupSucceeded",
                "ObjectsDownloaded",
                "BytesDownloaded",
                "ObjectsFailed",
                "ObjectsRefused",
                "UnverifiedObjects",
                "ArchivedObjects",
                "DurationSeconds"
            ]
        );
        assert_eq!(data[0].value(), Some(1.0));
        assert_eq!(data[2].unit(), Some(&StandardUnit::Bytes));
        assert_eq!(data[7].value(), Some(1.5));
        for d in &data {
            assert!(d.unit().is_some());
            assert_eq!(d.dimensions()[0].name(), Some("Bucket"));
            assert_eq!(d.dimensions()[0].value(), Some("images"));
        }
    }
}
