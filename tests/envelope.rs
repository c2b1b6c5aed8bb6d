//! CloudEvents envelope and pseudonymous keys through the real broker.
#![allow(clippy::unwrap_used, clippy::expect_used)]

mod common;

use std::time::Duration;

use doudi::envelope::{Envelope, KeyDeriver};
use doudi::idnum::IdNumber;
use rdkafka::Message;
use rdkafka::consumer::Consumer;
use rdkafka::producer::FutureRecord;
use rdkafka::util::Timeout;

#[tokio::test]
async fn binary_mode_headers_and_keys_survive_the_broker() {
    let kafka = common::kafka();
    let topic = common::unique("test.envelope");
    doudi::kafka::ensure_topic(&kafka, &topic, 3, 1).await.unwrap();
    let producer = doudi::kafka::idempotent_producer(&kafka).unwrap();
    let keys = KeyDeriver::from_secret(b"test-secret-0123456789");
    let data = serde_json::json!({"id_number": "220102195003070015", "event": "death", "date": "2019-12-20"});
    let id = IdNumber::parse("220102195003070015").unwrap();
    let env = Envelope::new(
        "doudi://connector/vital-event",
        "dept.vital.event.v1",
        "https://schemas.doudi.jl.gov.cn/dept.vital.event.v1.json",
        "file-abc:row-1",
        &data,
        chrono::Utc::now(),
    );
    let key = keys.key(&id);
    let payload = serde_json::to_vec(&data).unwrap();
    // The same record sent twice (a replay) carries the same ce_id.
    for _ in 0..2 {
        let again = Envelope::new(&env.source, "dept.vital.event.v1", &env.dataschema, "file-abc:row-1", &data, chrono::Utc::now());
        producer
            .send(
                FutureRecord::to(&topic).key(&key).payload(&payload).headers(again.to_headers(&[("source_row", "1")])),
                Timeout::After(Duration::from_secs(30)),
            )
            .await
            .map_err(|(e, _)| e)
            .unwrap();
    }
    let consumer = doudi::kafka::committed_consumer(&kafka, &common::unique("test-group")).unwrap();
    consumer.subscribe(&[&topic]).unwrap();
    let mut ids = Vec::new();
    for _ in 0..2 {
        let m = tokio::time::timeout(Duration::from_secs(60), consumer.recv()).await.unwrap().unwrap();
        assert_eq!(m.key(), Some(key.as_bytes()));
        assert!(!String::from_utf8_lossy(m.key().unwrap()).contains("220102"));
        let headers = m.headers().expect("headers");
        let got = Envelope::from_headers(headers).unwrap();
        assert_eq!((got.source.as_str(), got.kind.as_str()), ("doudi://connector/vital-event", "cn.gov.jl.doudi.dept.vital.event.v1"));
        assert_eq!(got.dataschema, env.dataschema);
        let value: serde_json::Value = serde_json::from_slice(m.payload().unwrap()).unwrap();
        assert_eq!(value, data);
        ids.push(got.id);
    }
    assert_eq!(ids[0], ids[1]);
    assert_eq!(ids[0], env.id);
    doudi::kafka::delete_topics(&kafka, &[&topic]).await.unwrap();
}
