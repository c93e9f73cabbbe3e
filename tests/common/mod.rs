//! Test harness: the real S3 servers started by `tests/run` (SeaweedFS and moto on 127.0.0.1), buckets
//! seeded through the real SDK, the real `s3backup` binary run as a process, and a request-counting
//! proxy.
#![allow(dead_code)]

pub mod latency;

use std::collections::BTreeMap;
use std::io::{Read, Write};
use std::net::{TcpListener, TcpStream};
use std::path::{Path, PathBuf};
use std::process::{Command, Output};
use std::sync::atomic::{AtomicUsize, Ordering};
use std::sync::{Arc, Mutex, OnceLock};
use std::thread;

use aws_sdk_s3::Client;
use aws_sdk_s3::config::{BehaviorVersion, Credentials, Region};
use aws_sdk_s3::primitives::ByteStream;
use aws_sdk_s3::types::{ChecksumAlgorithm, CompletedMultipartUpload, CompletedPart};

pub const ACCESS_KEY: &str = "s3backup-test";
pub const SECRET_KEY: &str = "s3backup-test-secret";

#[derive(Clone, Copy, Debug, PartialEq, Eq)]
pub enum Kind {
    /// Fast; ETag = MD5; stores checksums; rejects `.`/`..` segments.
    Seaweed,
    /// Slow; stores odd keys (`../x`, `/abs`, `a//b`) exactly as S3 does.
    Moto,
}

pub fn endpoint(kind: Kind) -> String {
    let var = match kind {
        Kind::Seaweed => "S3BACKUP_TEST_SEAWEED",
        Kind::Moto => "S3BACKUP_TEST_MOTO",
    };
    std::env::var(var).unwrap_or_else(|_| {
        panic!("{var} is not set: run the tests with `tests/run`, which starts the S3 servers on 127.0.0.1")
    })
}

pub fn rt() -> &'static tokio::runtime::Runtime {
    static RT: OnceLock<tokio::runtime::Runtime> = OnceLock::new();
    RT.get_or_init(|| {
        tokio::runtime::Builder::new_multi_thread()
            .worker_threads(2)
            .enable_all()
            .build()
            .unwrap()
    })
}

pub fn client(endpoint: &str) -> Client {
    use aws_smithy_http_client::tls::{Provider, rustls_provider::CryptoMode};
    let http = aws_smithy_http_client::Builder::new()
        .tls_provider(Provider::Rustls(CryptoMode::Ring))
        .build_https();
    let conf = aws_sdk_s3::config::Builder::new()
        .behavior_version(BehaviorVersion::latest())
        .http_client(http)
        .endpoint_url(endpoint)
        .region(Region::new("us-east-1"))
        .credentials_provider(Credentials::new(ACCESS_KEY, SECRET_KEY, None, None, "test"))
        .force_path_style(true)
        .build();
    Client::from_conf(conf)
}

/// A fresh bucket on one server.
pub struct Bucket {
    pub kind: Kind,
    pub name: String,
    pub endpoint: String,
    pub client: Client,
}

static COUNTER: AtomicUsize = AtomicUsize::new(0);

impl Bucket {
    pub fn new(kind: Kind, label: &str) -> Bucket {
        let endpoint = endpoint(kind);
        let n = COUNTER.fetch_add(1, Ordering::SeqCst);
        let name = format!("t-{label}-{}-{n}", std::process::id())
            .to_lowercase()
            .replace('_', "-");
        let client = client(&endpoint);
        rt().block_on(client.create_bucket().bucket(&name).send())
            .unwrap_or_else(|e| {
                panic!(
                    "create bucket {name}: {}",
                    aws_sdk_s3::error::DisplayErrorContext(e)
                )
            });
        Bucket {
            kind,
            name,
            endpoint,
            client,
        }
    }

    /// A handle on a bucket that does not exist.
    pub fn missing(kind: Kind, label: &str) -> Bucket {
        let endpoint = endpoint(kind);
        let n = COUNTER.fetch_add(1, Ordering::SeqCst);
        let name = format!("t-{label}-missing-{}-{n}", std::process::id());
        let client = client(&endpoint);
        Bucket {
            kind,
            name,
            endpoint,
            client,
        }
    }

    pub fn put(&self, key: &str, body: &[u8]) {
        self.put_with(&self.client, key, body);
    }

    /// A single PUT without any flexible checksum, so the server has only the MD5 ETag to offer.
    pub fn put_md5_only(&self, key: &str, body: &[u8]) {
        use aws_sdk_s3::config::RequestChecksumCalculation;
        let conf = self
            .client
            .config()
            .to_builder()
            .request_checksum_calculation(RequestChecksumCalculation::WhenRequired)
            .build();
        self.put_with(&Client::from_conf(conf), key, body);
    }

    fn put_with(&self, client: &Client, key: &str, body: &[u8]) {
        rt().block_on(
            client
                .put_object()
                .bucket(&self.name)
                .key(key)
                .body(ByteStream::from(body.to_vec()))
                .send(),
        )
        .unwrap_or_else(|e| panic!("put {key:?}: {}", aws_sdk_s3::error::DisplayErrorContext(e)));
    }

    /// Many small objects, a few uploads in flight at once.
    pub fn put_many(&self, objects: &BTreeMap<String, Vec<u8>>) {
        rt().block_on(async {
            use futures::StreamExt;
            futures::stream::iter(objects.iter())
                .map(|(k, v)| {
                    self.client
                        .put_object()
                        .bucket(&self.name)
                        .key(k)
                        .body(ByteStream::from(v.clone()))
                        .send()
                })
                .buffer_unordered(16)
                .for_each(|r| async move {
                    r.expect("put");
                })
                .await;
        });
    }

    /// A multipart upload of `parts` (each but the last at least 5 MiB).
    pub fn put_multipart(&self, key: &str, parts: &[Vec<u8>], checksum: Option<ChecksumAlgorithm>) {
        rt().block_on(async {
            let up = self
                .client
                .create_multipart_upload()
                .bucket(&self.name)
                .key(key)
                .set_checksum_algorithm(checksum.clone())
                .send()
                .await
                .expect("create multipart");
            let id = up.upload_id().unwrap().to_owned();
            let mut done = Vec::new();
            for (i, p) in parts.iter().enumerate() {
                let n = i as i32 + 1;
                let r = self
                    .client
                    .upload_part()
                    .bucket(&self.name)
                    .key(key)
                    .upload_id(&id)
                    .part_number(n)
                    .set_checksum_algorithm(checksum.clone())
                    .body(ByteStream::from(p.clone()))
                    .send()
                    .await
                    .expect("upload part");
                done.push(
                    CompletedPart::builder()
                        .part_number(n)
                        .set_e_tag(r.e_tag().map(Into::into))
                        .set_checksum_crc32(r.checksum_crc32().map(Into::into))
                        .set_checksum_crc32_c(r.checksum_crc32_c().map(Into::into))
                        .set_checksum_crc64_nvme(r.checksum_crc64_nvme().map(Into::into))
                        .set_checksum_sha256(r.checksum_sha256().map(Into::into))
                        .build(),
                );
            }
            self.client
                .complete_multipart_upload()
                .bucket(&self.name)
                .key(key)
                .upload_id(&id)
                .multipart_upload(
                    CompletedMultipartUpload::builder()
                        .set_parts(Some(done))
                        .build(),
                )
                .send()
                .await
                .expect("complete multipart");
        });
    }

    pub fn etag(&self, key: &str) -> String {
        rt().block_on(self.client.head_object().bucket(&self.name).key(key).send())
            .expect("head")
            .e_tag()
            .unwrap_or_default()
            .to_owned()
    }
}

/// Deterministic pseudo-random bytes (xorshift), so failures reproduce.
pub fn bytes(seed: u64, len: usize) -> Vec<u8> {
    let mut x = seed.wrapping_mul(0x9E3779B97F4A7C15) | 1;
    let mut out = Vec::with_capacity(len + 8);
    while out.len() < len {
        x ^= x << 13;
        x ^= x >> 7;
        x ^= x << 17;
        out.extend_from_slice(&x.to_le_bytes());
    }
    out.truncate(len);
    out
}

/// A run of the real binary.
pub struct Run {
    pub output: Output,
}

impl Run {
    pub fn code(&self) -> i32 {
        self.output.status.code().unwrap_or(-1)
    }
    pub fn stderr(&self) -> String {
        String::from_utf8_lossy(&self.output.stderr).into_owned()
    }
    pub fn stdout(&self) -> String {
        String::from_utf8_lossy(&self.output.stdout).into_owned()
    }
    /// The single JSON object on stdout (fails the test if there is anything else).
    pub fn json(&self) -> serde_json::Value {
        let out = self.stdout();
        let mut it = serde_json::Deserializer::from_str(&out).into_iter::<serde_json::Value>();
        let v = it
            .next()
            .unwrap_or_else(|| panic!("no JSON on stdout; stderr:\n{}", self.stderr()))
            .unwrap_or_else(|e| panic!("bad JSON {e}: {out}"));
        assert!(
            it.next().is_none(),
            "more than one JSON value on stdout: {out}"
        );
        v
    }
    pub fn refused_keys(&self) -> Vec<String> {
        keys(&self.json()["refused"])
    }
    pub fn failed_keys(&self) -> Vec<String> {
        keys(&self.json()["failed"])
    }
}

fn keys(v: &serde_json::Value) -> Vec<String> {
    v.as_array()
        .unwrap()
        .iter()
        .map(|e| e["key"].as_str().unwrap().to_owned())
        .collect()
}

/// A destination and a state directory inside a scratch folder, with a canary sibling folder that must
/// stay empty (proof that nothing is written outside the destination).
pub struct Scratch {
    pub root: tempfile::TempDir,
    pub dest: PathBuf,
    pub state: PathBuf,
    pub home: PathBuf,
}

impl Scratch {
    pub fn new() -> Scratch {
        let root = tempfile::tempdir().unwrap();
        let dest = root.path().join("outer/dest");
        let state = root.path().join("state");
        let home = root.path().join("home");
        std::fs::create_dir_all(&home).unwrap();
        Scratch {
            root,
            dest,
            state,
            home,
        }
    }

    /// Everything under the scratch root except what lives below `dest` and `state`.
    pub fn outside_dest(&self) -> Vec<PathBuf> {
        walkdir::WalkDir::new(self.root.path())
            .into_iter()
            .map(|e| e.unwrap().into_path())
            .filter(|p| {
                !p.starts_with(&self.dest)
                    && !p.starts_with(&self.state)
                    && p != self.root.path()
                    && p != &self.root.path().join("outer")
                    && p != &self.home
            })
            .collect()
    }
}

/// `s3backup` against `bucket` into `scratch.dest` with `--json`, plus `extra` flags.
pub fn backup(bucket: &Bucket, scratch: &Scratch, extra: &[&str]) -> Run {
    backup_via(&bucket.endpoint, bucket, scratch, extra)
}

pub fn backup_via(endpoint: &str, bucket: &Bucket, scratch: &Scratch, extra: &[&str]) -> Run {
    let mut cmd = command(scratch);
    cmd.args([
        "--bucket",
        &bucket.name,
        "--endpoint-url",
        endpoint,
        "--json",
    ]);
    cmd.arg("--dest").arg(&scratch.dest);
    cmd.arg("--state-dir").arg(&scratch.state);
    cmd.args(extra);
    Run {
        output: cmd.output().expect("run s3backup"),
    }
}

/// The binary with a clean, hermetic AWS environment (no profile files, no IMDS).
pub fn command(scratch: &Scratch) -> Command {
    let mut cmd = Command::new(env!("CARGO_BIN_EXE_s3backup"));
    for (k, _) in std::env::vars() {
        if k.starts_with("AWS_") || k.starts_with("S3BACKUP_") || k == "XDG_STATE_HOME" {
            cmd.env_remove(k);
        }
    }
    cmd.env("HOME", &scratch.home)
        .env("AWS_ACCESS_KEY_ID", ACCESS_KEY)
        .env("AWS_SECRET_ACCESS_KEY", SECRET_KEY)
        .env("AWS_REGION", "us-east-1")
        .env("AWS_EC2_METADATA_DISABLED", "true")
        .env("AWS_CONFIG_FILE", scratch.home.join("no-such-config"))
        .env(
            "AWS_SHARED_CREDENTIALS_FILE",
            scratch.home.join("no-such-credentials"),
        )
        .env(
            "S3BACKUP_LOG",
            std::env::var("S3BACKUP_TEST_LOG").unwrap_or_else(|_| "info".into()),
        );
    cmd
}

/// `sh -c script` in a private mount namespace (as root; the test's name is printed as SKIPPED, with the
/// reason, where `unshare -m` is not allowed, as under the Nix builder, and `None` returned), with the
/// binary's hermetic environment plus `BIN`, `BUCKET`, `EP`, `DEST`, `STATE` and `extra`.
pub fn in_mount_namespace(
    test: &str,
    s: &Scratch,
    b: &Bucket,
    script: &str,
    extra: &[(&str, &Path)],
) -> Option<Run> {
    if !Command::new("unshare")
        .args(["-m", "true"])
        .status()
        .is_ok_and(|st| st.success())
    {
        // SAFETY: geteuid has no preconditions.
        if unsafe { libc::geteuid() } == 0 {
            panic!("running as root, yet `unshare -m` failed: is util-linux installed?");
        }
        // The Nix builder and a developer's account: a skip that says why, never a silent pass.
        eprintln!(
            "SKIPPED {test}: needs root for a private mount namespace (`unshare -m`); CI runs it as root"
        );
        return None;
    }
    let base = command(s);
    let mut cmd = Command::new("unshare");
    cmd.args(["-m", "--propagation", "private", "sh", "-c", script])
        .env_clear()
        .env("PATH", std::env::var("PATH").unwrap())
        .envs(
            base.get_envs()
                .filter_map(|(k, v)| v.map(|v| (k.to_owned(), v.to_owned()))),
        )
        .env("BIN", base.get_program())
        .env("BUCKET", &b.name)
        .env("EP", &b.endpoint)
        .env("DEST", &s.dest)
        .env("STATE", &s.state);
    for (k, v) in extra {
        cmd.env(k, v);
    }
    Some(Run {
        output: cmd.output().unwrap(),
    })
}

/// Relative path → contents of every regular file under `dir` (empty when `dir` does not exist yet);
/// fails on anything else but directories.
pub fn tree(dir: &Path) -> BTreeMap<String, Vec<u8>> {
    let mut out = BTreeMap::new();
    if !dir.exists() {
        return out;
    }
    for e in walkdir::WalkDir::new(dir).min_depth(1) {
        let e = e.unwrap();
        let rel = e
            .path()
            .strip_prefix(dir)
            .unwrap()
            .to_str()
            .unwrap()
            .to_owned();
        if e.file_type().is_file() {
            out.insert(rel, std::fs::read(e.path()).unwrap());
        } else {
            assert!(e.file_type().is_dir(), "unexpected entry {rel:?}");
        }
    }
    out
}

/// A request's header block (s3backup sends only GETs and HEADs, so that is all of it); `None` when
/// the client closed first.
pub fn read_head(client: &mut TcpStream) -> std::io::Result<Option<String>> {
    let mut head = Vec::new();
    let mut buf = [0u8; 8192];
    while find(&head, b"\r\n\r\n").is_none() {
        let n = client.read(&mut buf)?;
        if n == 0 {
            return Ok(None);
        }
        head.extend_from_slice(&buf[..n]);
    }
    Ok(Some(String::from_utf8_lossy(&head).into_owned()))
}

/// Answer with S3's XML error document, as the server would, and close.
pub fn write_s3_error(
    client: &mut TcpStream,
    status: &str,
    code: &str,
    message: &str,
) -> std::io::Result<()> {
    let body = format!(
        "<?xml version=\"1.0\" encoding=\"UTF-8\"?><Error><Code>{code}</Code><Message>{message}</Message></Error>"
    );
    write!(
        client,
        "HTTP/1.1 {status}\r\nContent-Type: application/xml\r\nContent-Length: {}\r\nConnection: close\r\n\r\n{body}",
        body.len()
    )
}

/// Send a request's head (`text`, up to its blank line) to `upstream`, asking it to close after
/// answering, so that the response can be copied until EOF.
pub fn forward_head(upstream: &str, text: &str) -> std::io::Result<TcpStream> {
    let mut server = TcpStream::connect(upstream)?;
    let mut rewritten = String::new();
    for (i, l) in text.split("\r\n").enumerate() {
        if l.is_empty() {
            break;
        }
        if i > 0 && l.to_ascii_lowercase().starts_with("connection:") {
            continue;
        }
        rewritten.push_str(l);
        rewritten.push_str("\r\n");
    }
    rewritten.push_str("Connection: close\r\n\r\n");
    server.write_all(rewritten.as_bytes())?;
    Ok(server)
}

/// What the proxy does to the next matching object GET.
#[derive(Clone, Copy, Debug, PartialEq, Eq)]
pub enum Fault {
    /// Flip one byte in the middle of the response body.
    FlipByte,
    /// Send half of the body, then close the connection.
    Truncate,
    /// Send half of the body, then reset the connection (RST, not FIN).
    Reset,
    /// Answer 503 SlowDown without asking the server.
    SlowDown,
    /// Answer 403 AccessDenied without asking the server.
    Forbidden,
}

/// Code the proxy runs before forwarding a matching request (e.g. overwrite the object meanwhile).
pub type Hook = Arc<dyn Fn() + Send + Sync>;

struct Armed {
    fault: Option<Fault>,
    remaining: usize,
    path_contains: String,
    hook: Option<(String, Hook)>,
}

/// An HTTP proxy in front of a server: records every request line and, when armed, damages responses
/// to object GETs. Each connection carries one request (it asks the server to close after answering),
/// so every response can be framed by its Content-Length.
pub struct Proxy {
    pub endpoint: String,
    requests: Arc<Mutex<Vec<String>>>,
    armed: Arc<Mutex<Armed>>,
}

impl Proxy {
    pub fn start(upstream: &str) -> Proxy {
        let upstream = upstream
            .trim_start_matches("http://")
            .trim_end_matches('/')
            .to_owned();
        let listener = TcpListener::bind("127.0.0.1:0").unwrap();
        let endpoint = format!("http://{}", listener.local_addr().unwrap());
        let requests = Arc::new(Mutex::new(Vec::new()));
        let armed = Arc::new(Mutex::new(Armed {
            fault: None,
            remaining: 0,
            path_contains: String::new(),
            hook: None,
        }));
        let (reqs, arm) = (requests.clone(), armed.clone());
        thread::spawn(move || {
            for client in listener.incoming() {
                let Ok(client) = client else { break };
                let (reqs, arm, upstream) = (reqs.clone(), arm.clone(), upstream.clone());
                thread::spawn(move || {
                    let _ = serve_one(client, &upstream, &reqs, &arm);
                });
            }
        });
        Proxy {
            endpoint,
            requests,
            armed,
        }
    }

    /// Damage the next `times` object GETs whose request line contains `path_contains`.
    pub fn arm(&self, fault: Fault, times: usize, path_contains: &str) {
        let mut a = self.armed.lock().unwrap();
        a.fault = Some(fault);
        a.remaining = times;
        a.path_contains = path_contains.to_owned();
    }

    /// Run `hook` once, before forwarding the first request whose line contains `path_contains`.
    pub fn hook_once(&self, path_contains: &str, hook: Hook) {
        self.armed.lock().unwrap().hook = Some((path_contains.to_owned(), hook));
    }

    pub fn disarm(&self) {
        self.armed.lock().unwrap().fault = None;
    }

    /// Request lines seen so far (kept).
    pub fn peek(&self) -> Vec<String> {
        self.requests.lock().unwrap().clone()
    }

    /// Request lines seen so far, then forget them.
    pub fn take(&self) -> Vec<String> {
        std::mem::take(&mut *self.requests.lock().unwrap())
    }
}

fn serve_one(
    mut client: TcpStream,
    upstream: &str,
    reqs: &Mutex<Vec<String>>,
    armed: &Mutex<Armed>,
) -> std::io::Result<()> {
    let Some(text) = read_head(&mut client)? else {
        return Ok(());
    };
    let line = text.lines().next().unwrap_or_default().to_owned();
    reqs.lock().unwrap().push(line.clone());
    let hook = {
        let mut a = armed.lock().unwrap();
        match &a.hook {
            Some((p, _)) if line.contains(p.as_str()) => a.hook.take().map(|(_, h)| h),
            _ => None,
        }
    };
    if let Some(h) = hook {
        h();
    }
    let fault = {
        let mut a = armed.lock().unwrap();
        let is_object_get = line.starts_with("GET ") && !line.contains("list-type=2");
        match a.fault {
            Some(f) if is_object_get && a.remaining > 0 && line.contains(&a.path_contains) => {
                a.remaining -= 1;
                Some(f)
            }
            _ => None,
        }
    };
    let canned = match fault {
        Some(Fault::SlowDown) => Some((
            "503 Slow Down",
            "SlowDown",
            "Please reduce your request rate.",
        )),
        Some(Fault::Forbidden) => Some(("403 Forbidden", "AccessDenied", "Access Denied")),
        _ => None,
    };
    if let Some((status, code, message)) = canned {
        return write_s3_error(&mut client, status, code, message);
    }
    let mut server = forward_head(upstream, &text)?;

    let mut resp = Vec::new();
    server.read_to_end(&mut resp)?;
    let Some(hend) = find(&resp, b"\r\n\r\n").map(|i| i + 4) else {
        return client.write_all(&resp);
    };
    let body_len = resp.len() - hend;
    match fault {
        Some(Fault::FlipByte) if body_len > 0 => {
            resp[hend + body_len / 2] ^= 0x55;
            client.write_all(&resp)
        }
        Some(Fault::Truncate) if body_len > 1 => {
            client.write_all(&resp[..hend + body_len / 2])?;
            client.shutdown(std::net::Shutdown::Both)
        }
        Some(Fault::Reset) if body_len > 1 => {
            client.write_all(&resp[..hend + body_len / 2])?;
            reset(&client);
            Ok(())
        }
        _ => client.write_all(&resp),
    }
}

/// Close with SO_LINGER 0, which makes the kernel send RST instead of FIN.
fn reset(stream: &TcpStream) {
    let _ = socket2::SockRef::from(stream).set_linger(Some(std::time::Duration::ZERO));
}

fn find(hay: &[u8], needle: &[u8]) -> Option<usize> {
    hay.windows(needle.len()).position(|w| w == needle)
}

/// Object GETs (not listings) among request lines.
pub fn object_gets(lines: &[String]) -> usize {
    lines
        .iter()
        .filter(|l| l.starts_with("GET ") && !l.contains("list-type=2"))
        .count()
}

/// Every key of `b` with its bytes, listed URL-encoded so control characters survive.
pub fn bucket_contents(b: &Bucket) -> BTreeMap<String, Vec<u8>> {
    let mut out = BTreeMap::new();
    let list = rt()
        .block_on(
            b.client
                .list_objects_v2()
                .bucket(&b.name)
                .encoding_type(aws_sdk_s3::types::EncodingType::Url)
                .send(),
        )
        .unwrap();
    for o in list.contents() {
        let raw = o.key().unwrap().replace('+', " ");
        let key = percent_decode(&raw);
        let body = rt()
            .block_on(b.client.get_object().bucket(&b.name).key(&key).send())
            .unwrap()
            .body;
        let data = rt().block_on(body.collect()).unwrap().into_bytes().to_vec();
        out.insert(key, data);
    }
    out
}

pub fn percent_decode(s: &str) -> String {
    let b = s.as_bytes();
    let mut out = Vec::new();
    let mut i = 0;
    while i < b.len() {
        if b[i] == b'%' && i + 2 < b.len() {
            out.push(u8::from_str_radix(&s[i + 1..i + 3], 16).unwrap());
            i += 3;
        } else {
            out.push(b[i]);
            i += 1;
        }
    }
    String::from_utf8(out).unwrap()
}

/// `s3backup <sub> --dest D --state-dir S --json <extra>`.
pub fn sub(s: &Scratch, name: &str, extra: &[&str]) -> Run {
    let mut cmd = command(s);
    cmd.arg(name)
        .arg("--dest")
        .arg(&s.dest)
        .arg("--state-dir")
        .arg(&s.state)
        .arg("--json")
        .args(extra);
    Run {
        output: cmd.output().expect("run s3backup"),
    }
}

pub fn restore_run(s: &Scratch, into: &Bucket, extra: &[&str]) -> Run {
    let mut cmd = command(s);
    cmd.arg("restore")
        .arg("--dest")
        .arg(&s.dest)
        .arg("--state-dir")
        .arg(&s.state);
    cmd.args([
        "--bucket",
        &into.name,
        "--endpoint-url",
        &into.endpoint,
        "--json",
    ]);
    cmd.args(extra);
    Run {
        output: cmd.output().expect("run s3backup restore"),
    }
}

/// The restore tests' hostile keys (spaces, URL and XML metacharacters, Unicode in two normal forms,
/// case twins, a 255-byte name, a folder marker and a key under it), each with its own bytes (a marker
/// none). `control`: the key with control characters too (which moto's ListObjectVersions cannot carry).
pub fn hostile_objects(control: bool) -> BTreeMap<String, Vec<u8>> {
    let long = "n".repeat(255);
    let ctrl = if control {
        "ctrl\u{1}\u{1f}\ttab.jpg"
    } else {
        "ctrl\ttab.jpg"
    };
    let keys = [
        "with space.jpg",
        "plus+and&eq=q?hash#pct%25'quote\"back\\slash.jpg",
        "ünïcödé/日本語/😀.png",
        ctrl,
        "Case.JPG",
        "case.jpg",
        "caf\u{e9}.jpg",
        "cafe\u{301}.jpg",
        &long,
        "folder/",
        "folder/inside.jpg",
    ];
    keys.iter()
        .enumerate()
        .map(|(i, k)| {
            let body = if k.ends_with('/') {
                vec![]
            } else {
                bytes(i as u64, 10 + i)
            };
            (k.to_string(), body)
        })
        .collect()
}
