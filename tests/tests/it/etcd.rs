//! The fixture's etcd is real: put, get and watch through etcd-client.

use etcd_client::{EventType, GetOptions, WatchOptions};
use integration_tests::{etcd_client, unique_prefix};

#[tokio::test]
async fn put_get_and_watch_a_key_against_the_fixture_etcd() {
    let mut client = etcd_client().await;
    let prefix = unique_prefix("put_get_watch");
    let key = format!("{prefix}/k");

    let mut watch = client
        .watch(prefix.as_str(), Some(WatchOptions::new().with_prefix()))
        .await
        .expect("watch");
    client.put(key.as_str(), "v1", None).await.expect("put");

    let got = client
        .get(prefix.as_str(), Some(GetOptions::new().with_prefix()))
        .await
        .expect("get");
    assert_eq!(got.kvs().len(), 1);
    assert_eq!(got.kvs()[0].key(), key.as_bytes());
    assert_eq!(got.kvs()[0].value(), b"v1");

    // The first response only confirms the watch was created.
    let resp = loop {
        let resp = watch
            .message()
            .await
            .expect("watch stream")
            .expect("a response");
        if !resp.events().is_empty() {
            break resp;
        }
    };
    let event = &resp.events()[0];
    assert_eq!(event.event_type(), EventType::Put);
    let kv = event.kv().expect("kv");
    assert_eq!((kv.key(), kv.value()), (key.as_bytes(), b"v1".as_slice()));
}
