//! `pg_proxy::cluster`: throwaway PostgreSQL clusters, against a real server.
#![allow(clippy::panic, clippy::indexing_slicing, clippy::unwrap_used, clippy::expect_used, reason = "test code")]

use pg_proxy::cluster::{Auth, Cluster, ClusterOptions};
use tokio_postgres::NoTls;

/// Connects with a key=value string and returns the client (the connection runs in the background).
async fn connect(conninfo: &str) -> Result<tokio_postgres::Client, tokio_postgres::Error> {
    let (client, connection) = tokio_postgres::connect(conninfo, NoTls).await?;
    tokio::spawn(async move {
        let _ = connection.await;
    });
    Ok(client)
}

fn role_conninfo(cluster: &Cluster, user: &str, password: &str, db: &str) -> String {
    format!("host={} port={} user={user} password='{password}' dbname={db}", cluster.host(), cluster.port())
}

async fn stored_password(cluster: &Cluster, role: &str) -> String {
    let admin = connect(&cluster.connection_string("postgres")).await.unwrap();
    let row = admin.query_one("SELECT rolpassword FROM pg_authid WHERE rolname = $1", &[&role]).await.unwrap();
    row.get(0)
}

#[tokio::test]
async fn scram_cluster_superuser_role_and_database() {
    let cluster = Cluster::start(&ClusterOptions::default()).unwrap();
    assert_eq!(cluster.host(), "127.0.0.1");
    assert_eq!(cluster.superuser(), "portcullis_admin");
    assert_eq!(cluster.password().len(), 24);
    assert!(cluster.data_dir().join("PG_VERSION").is_file());

    let admin = connect(&cluster.connection_string("postgres")).await.unwrap();
    let one: i32 = admin.query_one("SELECT 1", &[]).await.unwrap().get(0);
    assert_eq!(one, 1);
    assert_eq!(cluster.psql("postgres", "SELECT 1").unwrap(), "1");

    cluster.create_role("app_user", "s3cret pass'word", false).unwrap();
    cluster.create_database("app_db", "app_user").unwrap();
    let app = connect(&role_conninfo(&cluster, "app_user", "s3cret pass\\'word", "app_db")).await.unwrap();
    let row = app.query_one("SELECT current_user::text, current_database()::text", &[]).await.unwrap();
    assert_eq!((row.get::<_, String>(0), row.get::<_, String>(1)), ("app_user".to_owned(), "app_db".to_owned()));
    assert!(stored_password(&cluster, "app_user").await.starts_with("SCRAM-SHA-256$"));

    // A wrong password is refused, and psql reports SQL errors with the server's message.
    assert!(connect(&role_conninfo(&cluster, "app_user", "wrong", "app_db")).await.is_err());
    let err = cluster.psql("postgres", "SELECT * FROM no_such_table").unwrap_err().to_string();
    assert!(err.contains("no_such_table"), "{err}");

    drop((admin, app));
    let dir = cluster.dir().to_owned();
    assert!(dir.exists());
    drop(cluster);
    assert!(!dir.exists(), "{} still exists after drop", dir.display());
}

#[tokio::test]
async fn md5_cluster_accepts_login() {
    let options = ClusterOptions { auth: Auth::Md5, password: Some("admin pw".to_owned()), ..Default::default() };
    let cluster = Cluster::start(&options).unwrap();
    assert_eq!(cluster.password(), "admin pw");
    // The superuser's password was re-hashed as MD5, so the md5 method really is used.
    assert!(stored_password(&cluster, "portcullis_admin").await.starts_with("md5"));
    cluster.create_role("md5_user", "md5-pass", true).unwrap();
    assert!(stored_password(&cluster, "md5_user").await.starts_with("md5"));
    let client = connect(&role_conninfo(&cluster, "md5_user", "md5-pass", "postgres")).await.unwrap();
    let superuser: String = client.query_one("SHOW is_superuser", &[]).await.unwrap().get(0);
    assert_eq!(superuser, "on");
    assert!(connect(&role_conninfo(&cluster, "md5_user", "wrong", "postgres")).await.is_err());

    // An explicit stop reports success and removes the directory too.
    let dir = cluster.dir().to_owned();
    drop(client);
    cluster.stop().unwrap();
    assert!(!dir.exists());
}

#[tokio::test]
async fn trust_cluster_accepts_any_password() {
    let cluster = Cluster::start(&ClusterOptions { auth: Auth::Trust, ..Default::default() }).unwrap();
    cluster.create_role("trusted", "irrelevant", false).unwrap();
    let client = connect(&role_conninfo(&cluster, "trusted", "not-the-password", "postgres")).await.unwrap();
    let user: String = client.query_one("SELECT current_user::text", &[]).await.unwrap().get(0);
    assert_eq!(user, "trusted");
}
