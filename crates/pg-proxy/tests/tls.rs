//! Transport and login: client TLS (SSLRequest and direct TLS with ALPN),
//! GSSENCRequest refused politely, tokens refused over plain TCP from
//! non-loopback clients; the upstream side: libpq's six TLS modes, MD5 and
//! trust; and `check` reading every TLS file the configuration names.
#![allow(clippy::panic, clippy::indexing_slicing, clippy::unwrap_used, clippy::expect_used, reason = "test code")]

use std::path::PathBuf;
use std::sync::Arc;
use std::time::Duration;

use pg_proxy::cluster::{Auth, ClusterOptions};
use portcullis_testkit::scratch::ScratchDir;
use portcullis_testkit::stack::Stack;
use portcullis_testkit::wire::{startup, Raw, ServerError};
use portcullis_testkit::{repo, text};
use rustls::pki_types::{CertificateDer, ServerName};
use tokio::io::{AsyncRead, AsyncReadExt, AsyncWrite, AsyncWriteExt};

/// A self-signed certificate for 127.0.0.1 and localhost, written to a
/// fresh directory: (the directory, cert path, key path, DER).
fn certificate(tag: &str) -> (ScratchDir, PathBuf, PathBuf, Vec<u8>) {
    let dir = ScratchDir::new(&format!("tls-{tag}"));
    let cert = rcgen::generate_simple_self_signed(vec!["localhost".to_string(), "127.0.0.1".to_string()]).unwrap();
    let (cert_path, key_path) = (dir.join("server.crt"), dir.join("server.key"));
    std::fs::write(&cert_path, cert.cert.pem()).unwrap();
    std::fs::write(&key_path, cert.key_pair.serialize_pem()).unwrap();
    (dir, cert_path, key_path, cert.cert.der().to_vec())
}

fn policy() -> String {
    std::fs::read_to_string(repo("examples/policy.toml")).unwrap()
}

/// Logs in over `stream` and runs `sql`; returns the first column of the
/// last row, or the first error.
async fn login_and_query<S: AsyncRead + AsyncWrite + Unpin>(
    stream: &mut S,
    token: &str,
    sql: &str,
) -> Result<Option<String>, ServerError> {
    let mut raw = Raw::new(stream, "login and query");
    raw.login(&[("user", "t"), ("database", "app")], token).await?;
    let reply = raw.query(sql).await;
    match reply.errors.first() {
        Some(e) => Err(e.clone()),
        None => Ok(reply.first_values().pop().flatten()),
    }
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn client_tls_both_ways_and_plain_tcp_rules() {
    let (_dir, cert, key, der) = certificate("client");
    let extra = format!("[tls]\ncert = {:?}\nkey = {:?}", cert.display().to_string(), key.display().to_string());
    let stack = Stack::with(&policy(), &extra);
    let token = stack.token("alice", &["developers"], None);

    // psql with SSLRequest (sslmode=require).
    let out = std::process::Command::new(stack.cluster.bin_dir().join("psql"))
        .args(["-X", "-At", "-d"])
        .arg(format!("host=127.0.0.1 port={} user=alice dbname=app sslmode=require", stack.addr.port()))
        .args(["-c", "SELECT count(*) FROM customers"])
        .env("PGPASSWORD", &token)
        .output()
        .unwrap();
    assert!(out.status.success(), "{}", text(&out.stderr));
    assert_eq!(text(&out.stdout), "3\n");

    // Direct TLS (PostgreSQL 17's sslnegotiation=direct): ALPN "postgresql".
    let mut roots = rustls::RootCertStore::empty();
    roots.add(CertificateDer::from(der)).unwrap();
    let provider = Arc::new(rustls::crypto::ring::default_provider());
    let mut config = rustls::ClientConfig::builder_with_provider(Arc::clone(&provider))
        .with_safe_default_protocol_versions()
        .unwrap()
        .with_root_certificates(roots.clone())
        .with_no_client_auth();
    config.alpn_protocols = vec![b"postgresql".to_vec()];
    let tcp = tokio::net::TcpStream::connect(stack.addr).await.unwrap();
    let mut tls = tokio_rustls::TlsConnector::from(Arc::new(config))
        .connect(ServerName::try_from("localhost").unwrap(), tcp)
        .await
        .unwrap();
    assert_eq!(
        login_and_query(&mut tls, &token, "SELECT ssn FROM customers WHERE id = 1").await,
        Ok(Some("****6789".into()))
    );

    // Direct TLS without the ALPN: closed, as PostgreSQL does.
    let config = rustls::ClientConfig::builder_with_provider(provider)
        .with_safe_default_protocol_versions()
        .unwrap()
        .with_root_certificates(roots)
        .with_no_client_auth();
    let tcp = tokio::net::TcpStream::connect(stack.addr).await.unwrap();
    if let Ok(mut tls) = tokio_rustls::TlsConnector::from(Arc::new(config))
        .connect(ServerName::try_from("localhost").unwrap(), tcp)
        .await
    {
        let _ = tls.write_all(&startup(&[("user", b"t")])).await;
        let mut b = [0u8; 64];
        let n = tokio::time::timeout(Duration::from_secs(10), tls.read(&mut b)).await.unwrap().unwrap_or(0);
        assert_eq!(n, 0, "no ALPN: the gateway must close");
    }

    // GSSENCRequest: answered 'N', and the login goes on in the clear (loopback).
    let mut tcp = tokio::net::TcpStream::connect(stack.addr).await.unwrap();
    tcp.write_all(&[0, 0, 0, 8, 0x04, 0xd2, 0x16, 0x30]).await.unwrap();
    let mut answer = [0u8; 1];
    tcp.read_exact(&mut answer).await.unwrap();
    assert_eq!(&answer, b"N");
    assert_eq!(login_and_query(&mut tcp, &token, "SELECT 41 + 1").await, Ok(Some("42".into())));

    // Plain TCP from a non-loopback address: refused before the token is sent.
    let ip = String::from_utf8(std::process::Command::new("hostname").arg("-I").output().unwrap().stdout).unwrap();
    let ip = ip.split_whitespace().find(|a| a.parse::<std::net::Ipv4Addr>().is_ok_and(|a| !a.is_loopback()));
    let ip = ip.unwrap_or_else(|| panic!("this test needs a non-loopback IPv4 address on the machine"));
    let outside = stack.listen_also(ip);
    let mut tcp = tokio::net::TcpStream::connect(outside).await.unwrap();
    let err = login_and_query(&mut tcp, &token, "SELECT 1").await.unwrap_err();
    assert_eq!(err.code, "28000", "{err:?}");
    assert!(err.message.contains("only over TLS"), "{err:?}");
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn upstream_md5_and_trust() {
    for auth in [Auth::Md5, Auth::Trust] {
        let options = ClusterOptions { auth, ..ClusterOptions::default() };
        let stack = Stack::with_cluster(&policy(), "", &options, "tls = \"prefer\"");
        let client = stack.connect(&["developers"]).await;
        let row = client.query_one("SELECT count(*) FROM orders", &[]).await.unwrap();
        assert_eq!(row.get::<_, i64>(0), 5000, "{auth:?}");
    }
}

/// A CA, and a server certificate it signs for `names`.
fn signed(names: &[&str]) -> (rcgen::Certificate, String, String) {
    let ca_key = rcgen::KeyPair::generate().unwrap();
    let mut ca_params = rcgen::CertificateParams::new(Vec::<String>::new()).unwrap();
    ca_params.is_ca = rcgen::IsCa::Ca(rcgen::BasicConstraints::Unconstrained);
    let ca = ca_params.self_signed(&ca_key).unwrap();
    let server_key = rcgen::KeyPair::generate().unwrap();
    let params = rcgen::CertificateParams::new(names.iter().map(|n| n.to_string()).collect::<Vec<_>>()).unwrap();
    let server = params.signed_by(&server_key, &ca, &ca_key).unwrap();
    (ca, server.pem(), server_key.serialize_pem())
}

/// Gives the stack's PostgreSQL this certificate and key, with `ssl = on`,
/// and reloads it.
async fn serve_certificate(stack: &Stack, cert: &str, key: &str) {
    use std::os::unix::fs::MetadataExt;
    let data = stack.cluster.data_dir().to_path_buf();
    let owner = std::fs::metadata(&data).unwrap();
    for (name, body) in [("server.crt", cert), ("server.key", key)] {
        let path = data.join(name);
        std::fs::write(&path, body).unwrap();
        std::os::unix::fs::chown(&path, Some(owner.uid()), Some(owner.gid())).unwrap();
        let mut perms = std::fs::metadata(&path).unwrap().permissions();
        std::os::unix::fs::PermissionsExt::set_mode(&mut perms, 0o600);
        std::fs::set_permissions(&path, perms).unwrap();
    }
    stack.cluster.psql("postgres", "ALTER SYSTEM SET ssl = on").unwrap();
    stack.cluster.psql("postgres", "SELECT pg_reload_conf()").unwrap();
    tokio::time::sleep(Duration::from_millis(500)).await;
}

/// The stack's configuration with these `[upstream]` TLS lines.
fn config_with(stack: &Stack, tls_lines: &str) -> Result<pg_proxy::config::Config, String> {
    let config_path = stack.path("gateway-upstream-tls.toml");
    let base = std::fs::read_to_string(stack.path("gateway.toml")).unwrap().replace("tls = \"prefer\"", tls_lines);
    std::fs::write(&config_path, base).unwrap();
    pg_proxy::config::Config::load(&config_path).map_err(|e| e.to_string())
}

const SSL_IN_USE: &str = "SELECT ssl::text FROM pg_stat_ssl WHERE pid = pg_backend_pid()";

/// Whether the gateway's connection to PostgreSQL with these TLS lines is
/// encrypted, as the server sees it (`pg_stat_ssl`), or why it failed.
async fn upstream_ssl(stack: &Stack, tls_lines: &str) -> Result<String, String> {
    use pg_proxy::upstream;
    let config = config_with(stack, tls_lines)?;
    let max = config.limits.max_message_bytes;
    let target = upstream::Target::new(&config.upstream, max)?;
    let mut conn = upstream::connect(&target, "app", &[]).await.map_err(|e| e.to_string())?;
    let rows = conn.simple_query(SSL_IN_USE, max).await.map_err(|e| e.to_string())?;
    Ok(rows[0][0].clone().unwrap())
}

/// The same through a gateway and a client: the client's view.
async fn through_gateway(stack: &Stack, tls_lines: &str) -> Result<Option<String>, ServerError> {
    let addr =
        stack.another_gateway("gateway-upstream-tls.toml", |config| config.replace("tls = \"prefer\"", tls_lines));
    let token = stack.token("alice", &["developers"], None);
    let mut tcp = tokio::net::TcpStream::connect(addr).await.unwrap();
    login_and_query(&mut tcp, &token, SSL_IN_USE).await
}

/// libpq's six modes against a server whose certificate is signed by a
/// known CA but issued for another name, one signed by a CA the gateway
/// does not know, and one issued for the address the gateway dials.
#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn upstream_tls_modes_verify_as_libpq() {
    let stack = Stack::with_cluster(&policy(), "", &ClusterOptions::default(), "tls = \"prefer\"");
    let dir = stack.path("upstream-ca");
    std::fs::create_dir_all(&dir).unwrap();
    let (ca, cert, key) = signed(&["db.internal"]);
    let ca_file = dir.join("ca.pem");
    std::fs::write(&ca_file, ca.pem()).unwrap();
    let with_ca = |mode: &str| format!("tls = {mode:?}\nca_file = {:?}", ca_file.display().to_string());

    // Before the server has TLS: `prefer` and `allow` fall back to plain
    // TCP, `require` refuses.
    assert_eq!(upstream_ssl(&stack, "tls = \"prefer\"").await, Ok("false".into()));
    assert_eq!(upstream_ssl(&stack, "tls = \"allow\"").await, Ok("false".into()));
    let no_tls = upstream_ssl(&stack, "tls = \"require\"").await.unwrap_err();
    assert!(no_tls.contains("does not offer TLS"), "{no_tls}");

    // A certificate from the CA, for the name db.internal (the gateway dials 127.0.0.1).
    serve_certificate(&stack, &cert, &key).await;
    assert_eq!(upstream_ssl(&stack, "tls = \"disable\"").await, Ok("false".into()));
    assert_eq!(upstream_ssl(&stack, "tls = \"allow\"").await, Ok("false".into()), "allow: plain first");
    assert_eq!(upstream_ssl(&stack, "tls = \"prefer\"").await, Ok("true".into()));
    assert_eq!(upstream_ssl(&stack, "tls = \"require\"").await, Ok("true".into()), "require: not verified");
    assert_eq!(upstream_ssl(&stack, &with_ca("require")).await, Ok("true".into()), "require + CA: the chain only");
    assert_eq!(upstream_ssl(&stack, &with_ca("verify-ca")).await, Ok("true".into()), "verify-ca: the chain only");
    let wrong_name = upstream_ssl(&stack, &with_ca("verify-full")).await.unwrap_err();
    assert!(wrong_name.contains("NotValidForName") || wrong_name.contains("not valid for name"), "{wrong_name}");
    // The client is told no more than that the database is not available.
    let refused = through_gateway(&stack, &with_ca("verify-full")).await.unwrap_err();
    assert_eq!(refused.code, "08006", "{refused:?}");
    assert_eq!(through_gateway(&stack, &with_ca("verify-ca")).await, Ok(Some("true".into())));
    // The platform's CAs did not sign it either.
    let system = upstream_ssl(&stack, "tls = \"verify-full\"\nca_file = \"system\"").await.unwrap_err();
    assert!(system.contains("UnknownIssuer") || system.contains("no CA certificate"), "{system}");

    // A CA that did not sign the server's certificate: no connection in
    // any mode that reads ca_file.
    let stranger = rcgen::generate_simple_self_signed(vec!["stranger".to_string()]).unwrap();
    std::fs::write(&ca_file, stranger.cert.pem()).unwrap();
    for mode in ["require", "verify-ca", "verify-full"] {
        let e = upstream_ssl(&stack, &with_ca(mode)).await.unwrap_err();
        assert!(e.contains("invalid peer certificate"), "{mode}: {e}");
    }

    // A certificate for the address the gateway dials: verify-full connects.
    let (ca, cert, key) = signed(&["127.0.0.1", "localhost"]);
    std::fs::write(&ca_file, ca.pem()).unwrap();
    serve_certificate(&stack, &cert, &key).await;
    assert_eq!(upstream_ssl(&stack, &with_ca("verify-full")).await, Ok("true".into()));
    assert_eq!(through_gateway(&stack, &with_ca("verify-full")).await, Ok(Some("true".into())));

    // A server that takes logins over TLS only: `allow` retries with TLS,
    // `disable` is refused.
    let hba = stack.cluster.data_dir().join("pg_hba.conf");
    let rules = std::fs::read_to_string(&hba).unwrap();
    std::fs::write(&hba, rules.replace("\nhost ", "\nhostssl ")).unwrap();
    stack.cluster.psql("postgres", "SELECT pg_reload_conf()").unwrap();
    tokio::time::sleep(Duration::from_millis(500)).await;
    assert_eq!(upstream_ssl(&stack, "tls = \"allow\"").await, Ok("true".into()), "allow: TLS after a refusal");
    let plain = upstream_ssl(&stack, "tls = \"disable\"").await.unwrap_err();
    assert!(plain.contains("no pg_hba.conf entry"), "{plain}");
    std::fs::write(&hba, rules).unwrap();
    stack.cluster.psql("postgres", "SELECT pg_reload_conf()").unwrap();
}

/// `pg-proxy check` loads every certificate and key the configuration
/// names, says which key points to a bad file, and warns when the upstream
/// server is not verified.
#[test]
fn check_reads_every_tls_file_and_warns_when_upstream_is_unverified() {
    let stack = Stack::start();
    let (_dir, cert, key, _) = certificate("check");
    let (ca, _, _) = signed(&["db.internal"]);
    let dir = stack.path("check-tls");
    std::fs::create_dir_all(&dir).unwrap();
    let (ca_file, empty, not_pem) = (dir.join("ca.pem"), dir.join("empty.pem"), dir.join("notes.txt"));
    std::fs::write(&ca_file, ca.pem()).unwrap();
    std::fs::write(&empty, "").unwrap();
    std::fs::write(&not_pem, "this is not a certificate\n").unwrap();
    let shown = |p: &std::path::Path| p.display().to_string();

    let check = |client_tls: Option<(&std::path::Path, &std::path::Path)>, upstream: &str| {
        let mut config =
            std::fs::read_to_string(stack.path("gateway.toml")).unwrap().replace("tls = \"disable\"", upstream);
        if let Some((c, k)) = client_tls {
            config.push_str(&format!("\n[tls]\ncert = {:?}\nkey = {:?}\n", shown(c), shown(k)));
        }
        let path = stack.path("gateway-check.toml");
        std::fs::write(&path, config).unwrap();
        let out = portcullis_testkit::bin!().arg("check").arg(&path).output().unwrap();
        (out.status.code(), text(&out.stdout), text(&out.stderr))
    };

    let (code, out, err) =
        check(Some((&cert, &key)), &format!("tls = \"verify-full\"\nca_file = {:?}", shown(&ca_file)));
    assert_eq!(code, Some(0), "{err}");
    assert!(out.contains(": ok") && out.contains("tls verify-full") && err.is_empty(), "{out}{err}");

    let (code, out, err) = check(None, "tls = \"prefer\"");
    assert_eq!(code, Some(0), "{err}");
    assert!(out.contains(": ok"), "{out}");
    assert!(err.contains("warning: [upstream] tls = \"prefer\": the server's certificate is not verified"), "{err}");

    for bad in [&empty, &not_pem] {
        let (code, _, err) = check(None, &format!("tls = \"verify-ca\"\nca_file = {:?}", shown(bad)));
        assert_eq!(code, Some(1), "{err}");
        assert!(err.contains(&format!("[upstream] ca_file {}: no certificate in the file", shown(bad))), "{err}");
    }
    let missing = dir.join("missing.pem");
    let (code, _, err) = check(None, &format!("tls = \"verify-full\"\nca_file = {:?}", shown(&missing)));
    assert_eq!(code, Some(1));
    assert!(err.contains("[upstream] ca_file") && err.contains("missing.pem"), "{err}");
    let (code, _, err) = check(None, "tls = \"verify-full\"");
    assert_eq!(code, Some(1));
    assert!(err.contains("tls = \"verify-full\" needs ca_file"), "{err}");

    let (code, _, err) = check(Some((&not_pem, &key)), "tls = \"disable\"");
    assert_eq!(code, Some(1));
    assert!(err.contains("[tls] cert") && err.contains("no certificate in the file"), "{err}");
    let (code, _, err) = check(Some((&cert, &ca_file)), "tls = \"disable\"");
    assert_eq!(code, Some(1));
    assert!(err.contains("[tls] key"), "{err}");
}

/// A small HTTP server for a key set: each request is answered, after the
/// delay set then, with the key set it holds then, or, while it holds
/// none, accepted and never answered (an identity provider that hangs).
struct KeySetServer {
    url: String,
    served: Arc<std::sync::Mutex<(Option<String>, Duration)>>,
    fetches: Arc<std::sync::atomic::AtomicUsize>,
}

impl KeySetServer {
    async fn start(json: String) -> KeySetServer {
        use std::sync::atomic::Ordering;
        let listener = tokio::net::TcpListener::bind("127.0.0.1:0").await.unwrap();
        let url = format!("http://{}/jwks.json", listener.local_addr().unwrap());
        let served = Arc::new(std::sync::Mutex::new((Some(json), Duration::ZERO)));
        let server = KeySetServer { url, served, fetches: Arc::default() };
        let (served, fetches) = (Arc::clone(&server.served), Arc::clone(&server.fetches));
        tokio::spawn(async move {
            loop {
                let (mut sock, _) = listener.accept().await.unwrap();
                let mut request = vec![0u8; 4096];
                let _ = sock.read(&mut request).await;
                fetches.fetch_add(1, Ordering::SeqCst);
                let (json, delay) = served.lock().unwrap().clone();
                tokio::spawn(async move {
                    let Some(json) = json else {
                        // Held open, unanswered, until the test ends.
                        std::future::pending::<()>().await;
                        drop(sock);
                        return;
                    };
                    tokio::time::sleep(delay).await;
                    let response = format!(
                        "HTTP/1.1 200 OK\r\nContent-Type: application/json\r\nContent-Length: {}\r\nConnection: close\r\n\r\n{json}",
                        json.len()
                    );
                    let _ = sock.write_all(response.as_bytes()).await;
                });
            }
        });
        server
    }

    /// What later requests get: a key set, or (`None`) no answer.
    fn serve(&self, json: Option<String>) {
        self.serve_after(json, Duration::ZERO);
    }

    /// What later requests get, `delay` after they arrive.
    fn serve_after(&self, json: Option<String>, delay: Duration) {
        *self.served.lock().unwrap() = (json, delay);
    }

    fn fetches(&self) -> usize {
        self.fetches.load(std::sync::atomic::Ordering::SeqCst)
    }
}

/// A new signing key in the stack's directory `name` (`pg-proxy token
/// keygen`); the directory.
fn keygen(stack: &Stack, name: &str) -> PathBuf {
    let dir = stack.path(name);
    let out = portcullis_testkit::bin!().args(["token", "keygen", "--out"]).arg(&dir).output().unwrap();
    assert!(out.status.success());
    dir
}

/// A token for alice (developers) signed with the key in `key_dir`.
fn mint(key_dir: &std::path::Path) -> String {
    let out = portcullis_testkit::bin!()
        .args(["token", "mint", "--key"])
        .arg(key_dir.join("signing-key.pem"))
        .args(["--sub", "alice", "--groups", "developers"])
        .output()
        .unwrap();
    String::from_utf8(out.stdout).unwrap().trim().to_string()
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn key_sets_from_a_url_follow_rotation_with_a_rate_limit() {
    let stack = Stack::start();
    let (rotated, stranger) = (keygen(&stack, "rotated"), keygen(&stack, "stranger"));
    let server = KeySetServer::start(std::fs::read_to_string(stack.path("keys/jwks.json")).unwrap()).await;
    let addr = stack.another_gateway("gateway-url.toml", |config| {
        let url = &server.url;
        config.replace("jwks_file = \"keys/jwks.json\"", &format!("jwks_url = {url:?}\njwks_min_refresh = \"1s\""))
    });
    assert_eq!(server.fetches(), 1, "loaded once at start");
    let login = |token: String| async move {
        let mut tcp = tokio::net::TcpStream::connect(addr).await.unwrap();
        login_and_query(&mut tcp, &token, "SELECT 1").await
    };
    assert_eq!(login(mint(&stack.path("keys"))).await, Ok(Some("1".into())));

    // The provider rotates its keys: tokens from the new key, twenty at
    // once, load the set again, once, and all log in with it.
    server.serve(Some(std::fs::read_to_string(rotated.join("jwks.json")).unwrap()));
    let rotated_token = mint(&rotated);
    tokio::time::sleep(Duration::from_millis(1100)).await;
    let burst: Vec<_> = (0..20).map(|_| tokio::spawn(login(rotated_token.clone()))).collect();
    for login in burst {
        assert_eq!(login.await.unwrap(), Ok(Some("1".into())));
    }
    assert_eq!(server.fetches(), 2);

    // Tokens naming unknown keys, twenty at once: at most one more fetch
    // (none within a second of the last; one if the burst outlasts that).
    let stranger_token = mint(&stranger);
    let burst: Vec<_> = (0..20).map(|_| tokio::spawn(login(stranger_token.clone()))).collect();
    for login in burst {
        assert_eq!(login.await.unwrap().unwrap_err().code, "28P01");
    }
    assert!(server.fetches() <= 3, "{} fetches", server.fetches());
    // The old key is gone with the rotation.
    assert_eq!(login(mint(&stack.path("keys"))).await.unwrap_err().code, "28P01");
}

/// An identity provider that answers late, or not at all, while a token
/// waits for its key set: the client is told within the login timeout
/// (FATAL 08006 naming it), not closed without a word once the time is
/// up; a late answer is kept for the next login rather than fetched again;
/// and tokens whose keys the gateway holds log in meanwhile.
#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn an_identity_provider_that_hangs_is_reported_to_the_client() {
    let stack = Stack::start();
    let (original, stranger) = (stack.path("keys"), keygen(&stack, "stranger"));
    let server = KeySetServer::start(std::fs::read_to_string(original.join("jwks.json")).unwrap()).await;
    let addr = stack.another_gateway("gateway-hanging-idp.toml", |config| {
        let url = &server.url;
        let config = config
            .replace("jwks_file = \"keys/jwks.json\"", &format!("jwks_url = {url:?}\njwks_min_refresh = \"100ms\""));
        format!("{config}\n[limits]\nlogin_timeout = \"1s\"\n")
    });
    assert_eq!(server.fetches(), 1, "loaded once at start");
    let login = |token: String| async move {
        let mut tcp = tokio::net::TcpStream::connect(addr).await.unwrap();
        tokio::time::timeout(Duration::from_secs(30), login_and_query(&mut tcp, &token, "SELECT 1"))
            .await
            .expect("the login hangs")
    };
    let timed_out = |e: ServerError| {
        assert_eq!(e.code, "08006", "{e:?}");
        assert_eq!(e.message, "the identity provider's keys could not be loaded within the login timeout (1s)");
    };

    // The provider rotates to the stranger's key and answers two seconds
    // late: the login that sent the gateway to it is told at its deadline,
    // and the answer, when it comes, is kept.
    server.serve_after(Some(std::fs::read_to_string(stranger.join("jwks.json")).unwrap()), Duration::from_secs(2));
    tokio::time::sleep(Duration::from_millis(200)).await;
    let stranger_token = mint(&stranger);
    timed_out(login(stranger_token.clone()).await.expect_err("a token whose key set comes too late"));
    assert_eq!(server.fetches(), 2, "the unknown key sent the gateway to the provider");
    tokio::time::sleep(Duration::from_secs(2)).await;
    assert_eq!(login(stranger_token.clone()).await, Ok(Some("1".into())));
    assert_eq!(server.fetches(), 2, "the late answer was kept, not fetched again");

    // Then it stops answering: a token from the key it dropped waits for
    // a fetch that never ends, and is told; the stranger's still log in.
    server.serve(None);
    tokio::time::sleep(Duration::from_millis(200)).await;
    timed_out(login(mint(&original)).await.expect_err("a token whose key set cannot be loaded"));
    assert_eq!(server.fetches(), 3);
    assert_eq!(login(stranger_token).await, Ok(Some("1".into())));
}

/// A TLS client (SSLRequest, then the handshake) trusting `der`.
async fn tls_connect(addr: std::net::SocketAddr, der: &[u8]) -> tokio_rustls::client::TlsStream<tokio::net::TcpStream> {
    let mut tcp = tokio::net::TcpStream::connect(addr).await.unwrap();
    tcp.write_all(&[0, 0, 0, 8, 0x04, 0xd2, 0x16, 0x2f]).await.unwrap();
    let mut answer = [0u8; 1];
    tcp.read_exact(&mut answer).await.unwrap();
    assert_eq!(&answer, b"S");
    let mut roots = rustls::RootCertStore::empty();
    roots.add(CertificateDer::from(der.to_vec())).unwrap();
    let config = rustls::ClientConfig::builder_with_provider(Arc::new(rustls::crypto::ring::default_provider()))
        .with_safe_default_protocol_versions()
        .unwrap()
        .with_root_certificates(roots)
        .with_no_client_auth();
    tokio_rustls::TlsConnector::from(Arc::new(config))
        .connect(ServerName::try_from("localhost").unwrap(), tcp)
        .await
        .unwrap()
}

/// Everything the server sends until it closes. An error when it closed the
/// TCP connection without TLS's close_notify (rustls: "peer closed
/// connection without sending TLS close_notify").
async fn read_until_closed<S: AsyncRead + Unpin>(stream: &mut S) -> std::io::Result<Vec<u8>> {
    let mut all = Vec::new();
    tokio::time::timeout(Duration::from_secs(10), stream.read_to_end(&mut all)).await.unwrap()?;
    Ok(all)
}

/// A login that ends over TLS ends as PostgreSQL ends it: close_notify,
/// then the TCP close. libpq's cancel over TLS (psycopg's `cancel_safe`)
/// reports an error when the connection just drops.
#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn logins_ending_over_tls_send_close_notify() {
    let (_dir, cert, key, der) = certificate("close-notify");
    let extra = format!("[tls]\ncert = {:?}\nkey = {:?}", cert.display().to_string(), key.display().to_string());
    let stack = Stack::with(&policy(), &extra);

    // A cancel request inside TLS (an unknown key: ignored, no answer).
    let mut tls = tls_connect(stack.addr, &der).await;
    let mut cancel = vec![0, 0, 0, 16, 0x04, 0xd2, 0x16, 0x2e];
    cancel.extend_from_slice(&7i32.to_be_bytes());
    cancel.extend_from_slice(&[1, 2, 3, 4]);
    tls.write_all(&cancel).await.unwrap();
    let answer = read_until_closed(&mut tls).await.expect("a cancel request is closed with close_notify");
    assert!(answer.is_empty(), "{answer:?}");

    // A refused startup message: the FATAL error, then close_notify.
    let mut tls = tls_connect(stack.addr, &der).await;
    let mut raw = Raw::new(&mut tls, "a refused startup message");
    raw.send(&startup(&[("user", b"t"), ("options", b"-c search_path=evil")])).await;
    let frame = raw.frame().await;
    assert_eq!(frame.kind, b'E');
    let e = ServerError::from_frame(&frame);
    assert_eq!(e.code, "42704", "{e:?}");
    read_until_closed(&mut tls).await.expect("a refusal is closed with close_notify");

    // A wrong token: 28P01, then close_notify.
    let mut tls = tls_connect(stack.addr, &der).await;
    let err = login_and_query(&mut tls, "not a token", "SELECT 1").await.unwrap_err();
    assert_eq!(err.code, "28P01", "{err:?}");
    read_until_closed(&mut tls).await.expect("a failed login is closed with close_notify");

    // A client that leaves after the handshake.
    let mut tls = tls_connect(stack.addr, &der).await;
    tls.shutdown().await.unwrap();
    read_until_closed(&mut tls).await.expect("a client's close is answered with close_notify");
}
