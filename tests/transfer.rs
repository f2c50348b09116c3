//! The transfer plumbing against a real S3-compatible store: URLs the operator
//! signs work for a client that holds no credentials, listing and multipart
//! uploads, and wrong credentials refused in the store's words.

mod support;

use std::time::Duration;

use gpu_shopper::transfer::store::{Keys, Store, StoreError};
use support::s3::{ACCESS_KEY, ObjectStore, SECRET_KEY};

fn keys(secret: &str) -> Keys {
    Keys { access_key: ACCESS_KEY.into(), secret_key: secret.to_string().into(), session_token: None }
}

#[tokio::test]
async fn signed_urls_carry_the_bytes_without_the_credentials() {
    let store = ObjectStore::start(&["data"]).await;
    store.put("data", "sets/a.txt", b"alpha");
    store.put("data", "sets/b.txt", b"beta!");
    let bucket = Store::new(&store.endpoint, "data", "us-east-1", false, &keys(SECRET_KEY)).unwrap();
    let listed = bucket.list("sets/").await.unwrap();
    assert_eq!(
        listed.iter().map(|l| (l.key.as_str(), l.bytes)).collect::<Vec<_>>(),
        [("sets/a.txt", 5), ("sets/b.txt", 5)]
    );
    let http = reqwest::Client::new();
    let got = http.get(bucket.signed_get("sets/a.txt", Duration::from_secs(60))).send().await.unwrap();
    assert_eq!(got.bytes().await.unwrap().as_ref(), b"alpha");
    let put = http.put(bucket.signed_put("out/c.txt", Duration::from_secs(60))).body("gamma").send().await.unwrap();
    assert!(put.status().is_success(), "{}", put.status());
    assert_eq!(store.object("data", "out/c.txt").unwrap(), b"gamma");
    assert_eq!(bucket.head("out/c.txt").await.unwrap().unwrap().bytes, 5);
    assert_eq!(bucket.head("out/none").await.unwrap(), None);

    // Multipart: parts of at least 5 MiB but the last.
    let id = bucket.create_multipart("out/big.bin").await.unwrap();
    let parts = [vec![1u8; 5 * 1024 * 1024], vec![2u8; 1000]];
    let mut etags = Vec::new();
    for (n, part) in parts.iter().enumerate() {
        let url = bucket.signed_part("out/big.bin", n as u16 + 1, &id, Duration::from_secs(60));
        let answer = http.put(url).body(part.clone()).send().await.unwrap();
        assert!(answer.status().is_success(), "{}", answer.status());
        etags.push(answer.headers()["etag"].to_str().unwrap().trim_matches('"').to_string());
    }
    bucket.complete_multipart("out/big.bin", &id, &etags).await.unwrap();
    assert_eq!(bucket.head("out/big.bin").await.unwrap().unwrap().bytes, 5 * 1024 * 1024 + 1000);
}

#[tokio::test]
async fn wrong_credentials_are_refused_as_the_sources_fault() {
    let store = ObjectStore::start(&["data"]).await;
    let bucket = Store::new(&store.endpoint, "data", "us-east-1", false, &keys("not-the-secret")).unwrap();
    let error = bucket.list("").await.unwrap_err();
    assert!(matches!(error, StoreError::Denied { .. }), "{error}");
    assert!(error.is_source());
    let got = reqwest::get(bucket.signed_get("x", Duration::from_secs(60))).await.unwrap();
    assert_eq!(got.status(), 403);
}
