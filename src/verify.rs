//! What a downloaded body must hash to, and the hashing itself.
//!
//! Preference: a full-object checksum S3 stored (CRC64NVME, CRC32C, CRC32, SHA1, SHA256, fastest first),
//! else the ETag when it is a plain MD5 of the body (single-part upload, not SSE-KMS or SSE-C), else
//! nothing (the byte count is still checked, and the object is counted as unverified).

use aws_smithy_checksums::ChecksumAlgorithm;
use aws_smithy_checksums::http::HttpChecksum;
use base64::Engine;
use base64::engine::general_purpose::STANDARD as B64;
use md5::{Digest, Md5};

/// The checksum headers of a GET/HEAD response, as S3 sends them (base64, maybe `-N` composite).
#[derive(Debug, Default, Clone)]
pub struct ResponseChecksums {
    pub crc64nvme: Option<String>,
    pub crc32c: Option<String>,
    pub crc32: Option<String>,
    pub sha1: Option<String>,
    pub sha256: Option<String>,
    /// `FULL_OBJECT` or `COMPOSITE`, when the server says.
    pub checksum_type: Option<String>,
    pub etag: Option<String>,
    /// `aws:kms`, `aws:kms:dsse`, `AES256`, when the server says.
    pub sse: Option<String>,
    pub sse_customer: bool,
}

#[derive(Debug, Clone, PartialEq, Eq)]
pub enum Expected {
    Checksum { algo: &'static str, digest: Vec<u8> },
    Md5(Vec<u8>),
    None,
}

impl Expected {
    pub fn from_response(r: &ResponseChecksums) -> Expected {
        let composite = r
            .checksum_type
            .as_deref()
            .is_some_and(|t| t.eq_ignore_ascii_case("COMPOSITE"));
        if !composite {
            let candidates = [
                ("crc64nvme", &r.crc64nvme),
                ("crc32c", &r.crc32c),
                ("crc32", &r.crc32),
                ("sha1", &r.sha1),
                ("sha256", &r.sha256),
            ];
            for (algo, value) in candidates {
                let Some(v) = value.as_deref() else { continue };
                // A `-N` suffix marks a checksum of part checksums, not of the body.
                if v.contains('-') {
                    continue;
                }
                if let Ok(digest) = B64.decode(v) {
                    return Expected::Checksum { algo, digest };
                }
            }
        }
        let kms = r.sse.as_deref().is_some_and(|s| s.starts_with("aws:kms"));
        if !kms
            && !r.sse_customer
            && let Some(md5) = r.etag.as_deref().and_then(plain_md5_etag)
        {
            return Expected::Md5(md5);
        }
        Expected::None
    }

    pub fn describe(&self) -> &'static str {
        match self {
            Expected::Checksum { algo, .. } => algo,
            Expected::Md5(_) => "md5 (etag)",
            Expected::None => "none",
        }
    }

    pub fn hasher(&self) -> Hasher {
        match self {
            Expected::Checksum { algo, .. } => Hasher::Smithy(
                algo.parse::<ChecksumAlgorithm>()
                    .expect("known algorithm names")
                    .into_impl(),
            ),
            Expected::Md5(_) => Hasher::Md5(Md5::new()),
            Expected::None => Hasher::None,
        }
    }

    /// `Ok` when the digest matches (or nothing was expected).
    pub fn check(&self, got: Option<Vec<u8>>) -> Result<(), Mismatch> {
        let want = match self {
            Expected::Checksum { digest, .. } | Expected::Md5(digest) => digest,
            Expected::None => return Ok(()),
        };
        match got {
            Some(g) if &g == want => Ok(()),
            got => Err(Mismatch {
                algo: self.describe(),
                expected: hex(want),
                got: got.as_deref().map(hex).unwrap_or_default(),
            }),
        }
    }
}

#[derive(Debug, Clone, thiserror::Error)]
#[error("{algo} mismatch: expected {expected}, got {got}")]
pub struct Mismatch {
    pub algo: &'static str,
    pub expected: String,
    pub got: String,
}

#[allow(clippy::large_enum_variant)] // one per request in flight; boxing buys nothing
pub enum Hasher {
    Smithy(Box<dyn HttpChecksum>),
    Md5(Md5),
    None,
}

impl Hasher {
    pub fn update(&mut self, bytes: &[u8]) {
        match self {
            Hasher::Smithy(h) => h.update(bytes),
            Hasher::Md5(h) => h.update(bytes),
            Hasher::None => {}
        }
    }

    pub fn finish(self) -> Option<Vec<u8>> {
        match self {
            Hasher::Smithy(h) => Some(h.finalize().to_vec()),
            Hasher::Md5(h) => Some(h.finalize().to_vec()),
            Hasher::None => None,
        }
    }
}

/// `"<32 hex>"` → the 16 bytes; multipart (`-N`) and anything else → `None`.
fn plain_md5_etag(etag: &str) -> Option<Vec<u8>> {
    let hexs = etag.trim_matches('"');
    if hexs.len() != 32 {
        return None;
    }
    (0..16)
        .map(|i| u8::from_str_radix(&hexs[2 * i..2 * i + 2], 16).ok())
        .collect()
}

fn hex(b: &[u8]) -> String {
    b.iter().map(|x| format!("{x:02x}")).collect()
}

#[cfg(test)]
mod tests {
    use super::*;

    fn digest_of(e: &Expected, body: &[u8]) -> Option<Vec<u8>> {
        let mut h = e.hasher();
        h.update(body);
        h.finish()
    }

    #[test]
    fn prefers_full_object_checksum_and_verifies_it() {
        // CRC32 of "hello" is 0x3610a686.
        let r = ResponseChecksums {
            crc32: Some(B64.encode(0x3610a686u32.to_be_bytes())),
            sha256: Some("ignored".into()),
            etag: Some("\"5d41402abc4b2a76b9719d911017c592\"".into()),
            ..Default::default()
        };
        let e = Expected::from_response(&r);
        assert_eq!(e.describe(), "crc32");
        assert!(e.check(digest_of(&e, b"hello")).is_ok());
        let err = e.check(digest_of(&e, b"hellO")).unwrap_err();
        assert_eq!(err.algo, "crc32");
    }

    #[test]
    fn composite_checksums_fall_back_to_etag_or_nothing() {
        let r = ResponseChecksums {
            crc32: Some("AAAAAA==-3".into()),
            etag: Some("\"5d41402abc4b2a76b9719d911017c592\"".into()),
            ..Default::default()
        };
        let e = Expected::from_response(&r);
        assert_eq!(e.describe(), "md5 (etag)");
        assert!(e.check(digest_of(&e, b"hello")).is_ok());
        assert!(e.check(digest_of(&e, b"hell")).is_err());

        let r = ResponseChecksums {
            crc32: Some("AAAAAA==".into()),
            checksum_type: Some("COMPOSITE".into()),
            etag: Some("\"0123456789abcdef0123456789abcdef-2\"".into()),
            ..Default::default()
        };
        assert_eq!(Expected::from_response(&r), Expected::None);
    }

    #[test]
    fn kms_and_sse_c_etags_are_not_md5s() {
        let etag = Some("\"5d41402abc4b2a76b9719d911017c592\"".to_string());
        let kms = ResponseChecksums {
            etag: etag.clone(),
            sse: Some("aws:kms".into()),
            ..Default::default()
        };
        assert_eq!(Expected::from_response(&kms), Expected::None);
        let ssec = ResponseChecksums {
            etag: etag.clone(),
            sse_customer: true,
            ..Default::default()
        };
        assert_eq!(Expected::from_response(&ssec), Expected::None);
        let sse_s3 = ResponseChecksums {
            etag,
            sse: Some("AES256".into()),
            ..Default::default()
        };
        assert_eq!(Expected::from_response(&sse_s3).describe(), "md5 (etag)");
    }

    #[test]
    fn every_algorithm_name_parses() {
        for algo in ["crc64nvme", "crc32c", "crc32", "sha1", "sha256"] {
            let e = Expected::Checksum {
                algo,
                digest: vec![],
            };
            assert!(digest_of(&e, b"x").is_some());
        }
    }
}
