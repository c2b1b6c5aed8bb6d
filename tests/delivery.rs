//! Delivery to agencies, against the real broker and a fresh PostgreSQL database: the HTTP sink
//! against a test agency server that fails transiently, then permanently, then accepts; the daily
//! file read back under GBK and as XLSX; the table sink; acknowledgements by topic and callback; the
//! pending report; reconciliation; the delivery gauges.
#![allow(clippy::unwrap_used, clippy::expect_used)]

mod common;

use std::collections::{HashMap, VecDeque};
use std::sync::{Arc, Mutex};

use doudi::db::Database;
use rdkafka::producer::FutureRecord;
use serde_json::{Value, json};
use sqlx::Row;

/// An isolated set of entitlement topics and a fresh database.
struct Exchange {
    suffix: String,
    pg: common::FreshPostgres,
    db: Database,
    dir: tempfile::TempDir,
    producer: rdkafka::producer::FutureProducer,
}

impl Exchange {
    async fn new() -> Self {
        let suffix = format!(".{}", uuid::Uuid::new_v4().simple());
        for agency in doudi::topics::AGENCIES {
            let topic = format!("{}{suffix}", doudi::topics::agency_topic(agency));
            doudi::kafka::ensure_topic(&common::kafka(), &topic, 3, 1).await.unwrap();
            doudi::kafka::ensure_topic(&common::kafka(), &format!("dlq.{topic}"), 1, 1).await.unwrap();
            doudi::kafka::ensure_topic(&common::kafka(), &format!("{}{suffix}", doudi::topics::ack_topic(agency)), 1, 1).await.unwrap();
        }
        let pg = common::fresh_postgres().await;
        let db = Database::connect(&pg.settings).await.unwrap();
        let producer = doudi::kafka::idempotent_producer(&common::kafka()).unwrap();
        Exchange { suffix, pg, db, dir: tempfile::tempdir().unwrap(), producer }
    }

    fn topic(&self, agency: &str) -> String {
        format!("{}{}", doudi::topics::agency_topic(agency), self.suffix)
    }

    /// Publishes an entitlement event as the relay does and records its pending delivery.
    async fn publish(&self, agency: &str, person: &str, kind: &str, change: &str, extra: Value) -> String {
        let ce_id = uuid::Uuid::new_v4().to_string();
        let mut payload = json!({
            "event_id": ce_id, "change": change, "agency": agency, "kind": kind, "id_number": person, "name": "王某",
            "household_id": "JL-220102-2019-000123", "region": "220102", "effective_date": "2020-01-15", "rules": ["D1"],
        });
        for (k, v) in extra.as_object().unwrap() {
            payload[k] = v.clone();
        }
        let producer = &self.producer;
        let catalogue = doudi::topics::agency_topic(agency);
        let now = doudi::db::now_rfc3339();
        let headers = doudi::envelope::binary_mode_headers(
            &ce_id,
            "doudi://matcher",
            &doudi::envelope::event_type(&catalogue),
            &now,
            "https://schemas.doudi.jl.gov.cn/x.json",
            std::iter::empty(),
        );
        let body = payload.to_string();
        // One key for every event of a test: one partition, so the order is the publishing order.
        let topic = self.topic(agency);
        let record = FutureRecord::to(&topic).key("same-person-key").payload(&body).headers(headers);
        producer.send(record, std::time::Duration::from_secs(10)).await.unwrap();
        sqlx::query(
            "INSERT INTO deliveries (ce_id, agency, kind, change, household_id, id_number, amount, effective_date, created_at, created_on, state, updated_at) \
             VALUES ($1, $2, $3, $4, 'JL-220102-2019-000123', $5, $6, '2020-01-15', $7, $8, 'pending', $7)",
        )
        .bind(&ce_id)
        .bind(agency)
        .bind(kind)
        .bind(change)
        .bind(person)
        .bind(payload.get("yearly_amount").and_then(Value::as_str))
        .bind(&now)
        .bind(doudi::db::china_date(chrono::Utc::now()).to_string())
        .execute(self.db.pool())
        .await
        .unwrap();
        ce_id
    }

    /// Three medical premium-subsidy grants for three people, in this order on one partition.
    async fn three_premium_subsidies(&self) -> (String, String, String) {
        let fixed = json!({"yearly_amount": "150.00"});
        let grant = |person: &'static str| self.publish("medical", person, "premium_subsidy_fixed", "granted", fixed.clone());
        (grant("220102195003070015").await, grant("220102198506150029").await, grant("220102198302110113").await)
    }

    /// The config of a webhook delivery to medical insurance at `url`, with `more` of its sink's
    /// settings.
    fn medical_webhook(&self, url: &str, more: &str) -> std::path::PathBuf {
        let name = format!("t-medical-{}", &self.suffix[1..9]);
        self.config(
            "medical-out.toml",
            &format!("[delivery]\nname = \"{name}\"\nagency = \"medical\"\ndepartment = \"医保\"\n[sink]\nkind = \"http\"\nurl = \"{url}\"\n{more}"),
        )
    }

    fn doudi(&self, args: &[&str], env: &[(&str, &str)]) -> (i32, String, String) {
        let mut all = vec![("DOUDI_DATABASE_URL", self.pg.settings.url.as_str())];
        all.extend_from_slice(env);
        common::run_doudi_env(args, &all)
    }

    async fn states(&self) -> HashMap<String, (String, i64, Option<String>)> {
        sqlx::query("SELECT ce_id, state, attempts, last_error FROM deliveries")
            .fetch_all(self.db.pool())
            .await
            .unwrap()
            .iter()
            .map(|r| (r.get("ce_id"), (r.get("state"), r.get("attempts"), r.get("last_error"))))
            .collect()
    }

    fn config(&self, name: &str, text: &str) -> std::path::PathBuf {
        let path = self.dir.path().join(name);
        std::fs::write(&path, text).unwrap();
        path
    }
}

/// What the test agency saw: (Idempotency-Key, Authorization, body).
type Seen = Arc<Mutex<Vec<(String, String, Value)>>>;

/// A test agency: answers each event id with its scripted statuses in turn, then 200.
async fn agency_server(script: HashMap<String, VecDeque<(u16, &'static str)>>) -> (String, Seen) {
    let seen: Seen = Arc::default();
    let script = Arc::new(Mutex::new(script));
    let app = axum::Router::new().route(
        "/entitlements",
        axum::routing::post({
            let seen = seen.clone();
            move |headers: axum::http::HeaderMap, body: axum::body::Bytes| {
                let seen = seen.clone();
                let script = script.clone();
                async move {
                    let header = |k: &str| headers.get(k).and_then(|v| v.to_str().ok()).unwrap_or_default().to_string();
                    let key = header("idempotency-key");
                    seen.lock().unwrap().push((key.clone(), header("authorization"), serde_json::from_slice(&body).unwrap_or_default()));
                    let (status, body) = script.lock().unwrap().get_mut(&key).and_then(VecDeque::pop_front).unwrap_or((200, "{}"));
                    (axum::http::StatusCode::from_u16(status).unwrap(), body.to_string())
                }
            }
        }),
    );
    let listener = tokio::net::TcpListener::bind("127.0.0.1:0").await.unwrap();
    let addr = listener.local_addr().unwrap();
    tokio::spawn(async move { axum::serve(listener, app).await.unwrap() });
    (format!("http://{addr}/entitlements"), seen)
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn webhook_retries_dead_letters_rejections_and_acknowledgements_close_the_loop() {
    let x = Exchange::new().await;
    let (a, b, c) = x.three_premium_subsidies().await;
    let script = HashMap::from([
        (a.clone(), VecDeque::from([(503, "busy"), (503, "busy")])),
        (b.clone(), VecDeque::from([(422, r#"{"error": "person not insured here"}"#)])),
    ]);
    let (url, seen) = agency_server(script).await;
    let config = x.medical_webhook(&url, "token_env = \"T_MEDICAL_SINK_TOKEN\"\ninitial_backoff_ms = 50\nmax_backoff_secs = 1\n");
    let args = ["deliver", "--config", config.to_str().unwrap(), "--until-idle", "--topic-suffix", x.suffix.as_str()];
    let env = [("T_MEDICAL_SINK_TOKEN", "agency-token-0123456789")];
    let run = {
        let args: Vec<String> = args.iter().map(|s| s.to_string()).collect();
        let url = x.pg.settings.url.clone();
        tokio::task::spawn_blocking(move || {
            let args: Vec<&str> = args.iter().map(String::as_str).collect();
            common::run_doudi_env(&args, &[("DOUDI_DATABASE_URL", url.as_str()), env[0]])
        })
    };
    let (code, stdout, stderr) = run.await.unwrap();
    assert_eq!(code, 0, "{stderr}");
    let summary: Value = serde_json::from_str(stdout.trim()).unwrap();
    assert_eq!(
        (summary["read"].as_u64(), summary["delivered"].as_u64(), summary["dead_lettered"].as_u64(), summary["retries"].as_u64()),
        (Some(3), Some(2), Some(1), Some(2))
    );
    assert!(!stderr.contains("220102195003070015") && !stderr.contains("王某"), "no personal data in logs: {stderr}");

    // The agency saw a's three attempts under one Idempotency-Key, then b once, then c; in order.
    let seen = seen.lock().unwrap().clone();
    let keys: Vec<&str> = seen.iter().map(|s| s.0.as_str()).collect();
    assert_eq!(keys, vec![a.as_str(), a.as_str(), a.as_str(), b.as_str(), c.as_str()]);
    assert!(seen.iter().all(|s| s.1 == "Bearer agency-token-0123456789"));
    assert_eq!(seen[0].2["event_id"], a.as_str());

    let states = x.states().await;
    assert_eq!(states[&a].0, "delivered");
    assert_eq!(states[&a].1, 2, "two failed attempts recorded");
    assert_eq!(states[&b].0, "failed");
    assert!(states[&b].2.as_deref().unwrap().contains("HTTP 422"));
    assert_eq!(states[&c].0, "delivered");

    // Exactly the rejected event is dead-lettered, with the status and the agency's response.
    let reader = common::Reader::new(&[format!("dlq.{}", x.topic("medical")).as_str()]);
    let dead = reader.until_quiet(std::time::Duration::from_secs(5)).await;
    assert_eq!(dead.len(), 1);
    assert_eq!(dead[0].headers["error_code"], "rejected");
    assert_eq!(dead[0].headers["http_status"], "422");
    assert!(dead[0].headers["response"].contains("person not insured here"));
    assert_eq!(dead[0].headers["event_id"], b);
    assert_eq!(dead[0].payload["event_id"], b.as_str());

    // Running again delivers nothing more: offsets moved only past what was settled.
    let (code, stdout, _) = x.doudi(&args, &env);
    assert_eq!(code, 0);
    assert_eq!(serde_json::from_str::<Value>(stdout.trim()).unwrap()["read"], 0);

    // Acknowledgements: a by medical's ack topic; c by the HTTP callback. Another agency's
    // acknowledgement of c on its own topic, an acknowledgement on medical's topic that claims to
    // be education's, and a bad body change nothing.
    let producer = doudi::kafka::idempotent_producer(&common::kafka()).unwrap();
    let ack_topic = |agency: &str| format!("{}{}", doudi::topics::ack_topic(agency), x.suffix);
    for (agency, ack) in [
        ("medical", json!({"event_id": a, "agency": "medical", "status": "applied", "applied_at": "2020-01-16T09:30:00+08:00"})),
        ("education", json!({"event_id": c, "agency": "education", "status": "applied"})),
        ("medical", json!({"event_id": c, "agency": "education", "status": "applied"})),
        ("medical", json!({"event_id": c, "agency": "medical"})),
    ] {
        let body = ack.to_string();
        producer.send(FutureRecord::to(&ack_topic(agency)).key("k").payload(&body), std::time::Duration::from_secs(10)).await.unwrap();
    }
    let port = common::free_port();
    let listen = format!("127.0.0.1:{port}");
    let acks = std::process::Command::new(common::doudi_bin())
        .args(["acks", "--listen", &listen, "--token", "medical=T_ACK_TOKEN", "--until-idle", "8s", "--topic-suffix", &x.suffix])
        .args(["--group", &format!("t-acks-{}", &x.suffix[1..9])])
        .env("DOUDI_KAFKA_BOOTSTRAP_SERVERS", common::kafka().bootstrap_servers)
        .env("DOUDI_DATABASE_URL", &x.pg.settings.url)
        .env("DOUDI_LOG_LEVEL", "warn")
        .env("DOUDI_HTTP_PORT", "0")
        .env("T_ACK_TOKEN", "medical-ack-token-0123456789")
        .stdout(std::process::Stdio::piped())
        .spawn()
        .unwrap();
    doudi::deliver::sink::install_crypto_provider();
    let client = reqwest::Client::new();
    let callback = format!("http://{listen}/v1/acks");
    let post = |body: Value, token: Option<&'static str>| {
        let mut r = client.post(&callback).json(&body);
        if let Some(t) = token {
            r = r.bearer_auth(t);
        }
        r.send()
    };
    let mut answered = None;
    for _ in 0..100 {
        if let Ok(r) = post(json!({"event_id": c, "agency": "medical", "status": "applied"}), Some("medical-ack-token-0123456789")).await {
            answered = Some(r.status().as_u16());
            break;
        }
        tokio::time::sleep(std::time::Duration::from_millis(100)).await;
    }
    assert_eq!(answered, Some(200));
    let status = |r: reqwest::Response| r.status().as_u16();
    assert_eq!(status(post(json!({"event_id": c, "agency": "medical", "status": "applied"}), None).await.unwrap()), 401);
    assert_eq!(
        status(post(json!({"event_id": c, "agency": "medical", "status": "applied"}), Some("wrong-token-0123456789")).await.unwrap()),
        401
    );
    let forged =
        post(json!({"event_id": c, "agency": "housing", "status": "applied"}), Some("medical-ack-token-0123456789")).await.unwrap();
    assert_eq!(forged.status().as_u16(), 403, "medical's token cannot acknowledge for housing");
    let unknown = uuid::Uuid::new_v4().to_string();
    assert_eq!(
        status(
            post(json!({"event_id": unknown, "agency": "medical", "status": "applied"}), Some("medical-ack-token-0123456789"))
                .await
                .unwrap()
        ),
        404
    );
    let bad = post(json!({"event_id": c, "agency": "medical", "status": "done"}), Some("medical-ack-token-0123456789")).await.unwrap();
    assert_eq!(bad.status().as_u16(), 400);
    assert!(bad.text().await.unwrap().contains("/status"), "the error names the field");
    let exit = tokio::task::spawn_blocking(move || acks.wait_with_output()).await.unwrap().unwrap();
    assert!(exit.status.success());
    let states = x.states().await;
    assert_eq!((states[&a].0.as_str(), states[&b].0.as_str(), states[&c].0.as_str()), ("applied", "failed", "applied"));

    // The pending report lists the rejected event, masked; exit 1 because something is overdue.
    let (code, stdout, _) = x.doudi(&["deliveries", "pending", "--agency", "medical", "--json"], &[]);
    assert_eq!(code, 1);
    let lines: Vec<Value> = stdout.lines().map(|l| serde_json::from_str(l).unwrap()).collect();
    assert_eq!(lines.len(), 1);
    assert_eq!((lines[0]["event_id"].as_str(), lines[0]["state"].as_str()), (Some(b.as_str()), Some("failed")));
    assert_eq!(lines[0]["person"], "2201**********0029");
    assert!(!stdout.contains("220102198506150029"));
    let (code, _, _) = x.doudi(&["deliveries", "pending", "--agency", "medical", "--older-than", "1h"], &[]);
    assert_eq!(code, 0, "nothing is an hour old");

    // Reconciliation: 3 in the database and on the topic, 2 delivered and acknowledged.
    let today = doudi::db::china_date(chrono::Utc::now()).to_string();
    let (code, stdout, stderr) = x.doudi(&["reconcile", "--date", &today, "--json", "--topic-suffix", &x.suffix], &[]);
    assert_eq!(code, 1, "{stderr}");
    let lines: Value = serde_json::from_str(&stdout).unwrap();
    let line = &lines[0];
    assert_eq!(
        (line["agency"].as_str(), line["kind"].as_str(), line["change"].as_str()),
        (Some("medical"), Some("premium_subsidy_fixed"), Some("granted"))
    );
    let total = |k: &str| (line[k]["count"].as_u64().unwrap(), line[k]["amount"].as_str().unwrap().to_string());
    assert_eq!(total("database"), (3, "450.00".to_string()));
    assert_eq!(total("published"), (3, "450.00".to_string()));
    assert_eq!(total("delivered"), (2, "300.00".to_string()));
    assert_eq!(total("acknowledged"), (2, "300.00".to_string()));
    assert_eq!(line["agrees"], false);
}

fn sha256_hex(bytes: &[u8]) -> String {
    use sha2::Digest;
    hex::encode(sha2::Sha256::digest(bytes))
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn the_daily_file_is_read_back_under_gbk_and_as_xlsx() {
    let x = Exchange::new().await;
    let granted = x.publish("housing", "220102195003070015", "housing_assistance", "granted", json!({"category": "dibao"})).await;
    let changed = x.publish("housing", "220102198506150029", "housing_assistance", "changed", json!({"category": "low_income"})).await;
    let unencodable =
        x.publish("housing", "220102198302110113", "housing_assistance", "granted", json!({"category": "dibao", "name": "王𠀀"})).await;
    let ended = x.publish("housing", "22010220110601003X", "housing_assistance", "ended", json!({"category": "dibao"})).await;
    let out = x.dir.path().join("exports");
    let shipped = std::fs::read_to_string(concat!(env!("CARGO_MANIFEST_DIR"), "/connectors/housing-out.toml")).unwrap();
    let config = x.config(
        "housing-out.toml",
        &shipped
            .replace("directory = \"exports/housing\"", &format!("directory = \"{}\"", out.display()))
            .replace("name = \"housing-out\"", &format!("name = \"t-housing-{}\"", &x.suffix[1..9])),
    );
    let today = doudi::db::china_date(chrono::Utc::now()).to_string();
    let args = ["deliver", "--config", config.to_str().unwrap(), "--date", &today, "--topic-suffix", &x.suffix];
    let (code, stdout, stderr) = x.doudi(&args, &[]);
    assert_eq!(code, 0, "{stderr}");
    let summary: Value = serde_json::from_str(stdout.trim()).unwrap();
    assert_eq!((summary["rows"].as_u64(), summary["dead_lettered"].as_u64()), (Some(3), Some(1)));
    let file = std::path::PathBuf::from(summary["file"].as_str().unwrap());
    assert_eq!(file.file_name().unwrap().to_str().unwrap(), format!("住房保障-救助对象-{today}.csv"));
    let bytes = std::fs::read(&file).unwrap();
    assert!(std::str::from_utf8(&bytes).is_err(), "the file is GBK, not UTF-8");
    let (text, _, malformed) = encoding_rs::GBK.decode(&bytes);
    assert!(!malformed);
    let mut reader = csv::Reader::from_reader(text.as_bytes());
    let headers: Vec<String> = reader.headers().unwrap().iter().map(str::to_string).collect();
    assert_eq!(headers, vec!["事件编号", "变动类型", "身份证号", "姓名", "救助类别", "家庭编号", "行政区划", "生效日期"]);
    let rows: Vec<Vec<String>> = reader.records().map(|r| r.unwrap().iter().map(str::to_string).collect()).collect();
    let summary_rows: Vec<(String, String, String)> = rows.iter().map(|r| (r[0].clone(), r[1].clone(), r[4].clone())).collect();
    assert_eq!(
        summary_rows,
        vec![
            (granted.clone(), "新增".to_string(), "低保".to_string()),
            (changed.clone(), "变更".to_string(), "低收入".to_string()),
            (ended.clone(), "停止".to_string(), "低保".to_string()),
        ]
    );
    assert_eq!(rows[0][3], "王某");
    // The manifest agrees with the file.
    let manifest: Value = serde_json::from_str(&std::fs::read_to_string(summary["manifest"].as_str().unwrap()).unwrap()).unwrap();
    assert_eq!(manifest["rows"], 3);
    assert_eq!(manifest["sha256"], sha256_hex(&bytes));
    assert_eq!(manifest["encoding"], "gbk");
    assert_eq!(manifest["by_change"], json!({"changed": 1, "ended": 1, "granted": 1}));
    // No temporary file is left behind.
    let names: Vec<String> = std::fs::read_dir(&out).unwrap().map(|e| e.unwrap().file_name().to_string_lossy().into_owned()).collect();
    assert_eq!(names.len(), 2, "{names:?}");
    // Delivery states: three delivered by the file, the fourth failed and dead-lettered.
    let states = x.states().await;
    assert_eq!((states[&granted].0.as_str(), states[&unencodable].0.as_str()), ("delivered", "failed"));
    let dead = common::Reader::new(&[format!("dlq.{}", x.topic("housing")).as_str()]).until_quiet(std::time::Duration::from_secs(5)).await;
    assert_eq!(dead.len(), 1);
    assert_eq!((dead[0].headers["error_code"].as_str(), dead[0].headers["source_column"].as_str()), ("unencodable", "姓名"));

    // The same day again rewrites the same file, byte for byte.
    let (code, stdout, _) = x.doudi(&args, &[]);
    assert_eq!(code, 0);
    let again: Value = serde_json::from_str(stdout.trim()).unwrap();
    assert_eq!(again["sha256"], manifest["sha256"]);
    assert_eq!(std::fs::read(&file).unwrap(), bytes);

    // The union's XLSX.
    let e = x.publish("union", "220102195003070015", "hardship_classification", "granted", json!({"category": "tekun"})).await;
    let shipped = std::fs::read_to_string(concat!(env!("CARGO_MANIFEST_DIR"), "/connectors/union-out.toml")).unwrap();
    let config =
        x.config("union-out.toml", &shipped.replace("directory = \"exports/union\"", &format!("directory = \"{}\"", out.display())));
    let (code, stdout, stderr) =
        x.doudi(&["deliver", "--config", config.to_str().unwrap(), "--date", &today, "--topic-suffix", &x.suffix], &[]);
    assert_eq!(code, 0, "{stderr}");
    let path = serde_json::from_str::<Value>(stdout.trim()).unwrap()["file"].as_str().unwrap().to_string();
    use calamine::Reader as _;
    let mut book: calamine::Xlsx<_> = calamine::open_workbook(&path).unwrap();
    let range = book.worksheet_range("entitlements").unwrap();
    let cells: Vec<Vec<String>> = range.rows().map(|r| r.iter().map(|c| c.to_string()).collect()).collect();
    assert_eq!(cells.len(), 2);
    assert_eq!(cells[0][1], "变动类型");
    assert_eq!((cells[1][0].as_str(), cells[1][1].as_str(), cells[1][4].as_str()), (e.as_str(), "纳入", "特困"));
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn the_table_sink_keeps_the_latest_event_of_each_entitlement() {
    let x = Exchange::new().await;
    x.publish("education", "22010220110601003X", "student_aid", "granted", json!({"student_level": "primary"})).await;
    let latest = x.publish("education", "22010220110601003X", "student_aid", "changed", json!({"student_level": "junior_secondary"})).await;
    x.publish("education", "220802200503010731", "student_aid", "granted", json!({"student_level": "senior_secondary"})).await;
    let table = format!("t_edu_{}", &x.suffix[1..9]);
    let shipped = std::fs::read_to_string(concat!(env!("CARGO_MANIFEST_DIR"), "/connectors/education-out.toml")).unwrap();
    let config = x.config(
        "education-out.toml",
        &shipped
            .replace("table = \"education_student_aid\"", &format!("table = \"{table}\""))
            .replace("name = \"education-out\"", &format!("name = \"t-edu-{}\"", &x.suffix[1..9])),
    );
    let (code, stdout, stderr) =
        x.doudi(&["deliver", "--config", config.to_str().unwrap(), "--until-idle", "--topic-suffix", &x.suffix], &[]);
    assert_eq!(code, 0, "{stderr}");
    assert_eq!(serde_json::from_str::<Value>(stdout.trim()).unwrap()["delivered"], 3);
    let rows = sqlx::query(sqlx::AssertSqlSafe(format!(
        "SELECT id_number, change, student_level, doudi_event_id FROM {table} ORDER BY id_number"
    )))
    .fetch_all(x.db.pool())
    .await
    .unwrap();
    let rows: Vec<(String, String, String, String)> =
        rows.iter().map(|r| (r.get("id_number"), r.get("change"), r.get("student_level"), r.get("doudi_event_id"))).collect();
    assert_eq!(rows.len(), 2);
    assert_eq!(rows[0], ("22010220110601003X".to_string(), "changed".to_string(), "junior_secondary".to_string(), latest));
    assert_eq!(rows[1].2, "senior_secondary");
    assert!(x.states().await.values().all(|s| s.0 == "delivered"));
}

/// The value of one series in a Prometheus text exposition (`name{labels}`), if present.
fn series(text: &str, name_and_labels: &str) -> Option<f64> {
    text.lines().find_map(|line| line.strip_prefix(name_and_labels)?.strip_prefix(' ')?.trim().parse().ok())
}

/// The delivery gauges count and date the open deliveries of each agency, from the open rows
/// alone; applied deliveries are not read and have no gauge.
#[tokio::test]
async fn the_delivery_gauges_come_from_the_open_deliveries() {
    let pg = common::fresh_postgres().await;
    let db = Database::connect(&pg.settings).await.unwrap();
    let now = chrono::Utc::now();
    let minutes_ago = |m: i32| doudi::db::rfc3339(now - chrono::Duration::minutes(i64::from(m)));
    let rows = [
        ("medical", "pending", minutes_ago(120)),
        ("medical", "pending", minutes_ago(60)),
        ("medical", "delivered", minutes_ago(180)),
        ("medical", "applied", minutes_ago(600)),
        ("medical", "failed", minutes_ago(1200)),
        ("education", "delivered", minutes_ago(30)),
        ("education", "applied", minutes_ago(300)),
    ];
    for (i, (agency, state, at)) in rows.iter().enumerate() {
        sqlx::query(
            "INSERT INTO deliveries (ce_id, agency, kind, change, household_id, id_number, amount, effective_date, created_at, created_on, \
             state, updated_at) VALUES ($1, $2, 'k', 'granted', 'JL-220102-2019-000123', '220102201106010037', NULL, '2020-07-01', $3, \
             '2020-07-01', $4, $3)",
        )
        .bind(format!("ce-{i}"))
        .bind(agency)
        .bind(at)
        .bind(state)
        .execute(db.pool())
        .await
        .unwrap();
    }
    let recorder = metrics_exporter_prometheus::PrometheusBuilder::new().build_recorder();
    let handle = recorder.handle();
    {
        // This test's runtime has one thread: the refresh runs where the recorder is installed.
        let _local = metrics::set_default_local_recorder(&recorder);
        doudi::deliver::acks::refresh_gauges(&db).await.unwrap();
    }
    let text = handle.render();
    // The age in seconds, within a minute of the row's (the refresh ran after the rows were written).
    let near = |name: &str, minutes: i32| {
        let v = series(&text, name).unwrap_or_else(|| panic!("{name} missing from:\n{text}"));
        assert!((f64::from(minutes * 60)..f64::from(minutes * 60 + 60)).contains(&v), "{name} = {v}, expected {minutes} min");
    };
    near("doudi_delivery_oldest_pending_seconds{agency=\"medical\"}", 120);
    near("doudi_delivery_oldest_unapplied_seconds{agency=\"medical\"}", 180);
    near("doudi_delivery_oldest_unapplied_seconds{agency=\"education\"}", 30);
    assert_eq!(series(&text, "doudi_delivery_oldest_pending_seconds{agency=\"education\"}"), Some(0.0));
    assert_eq!(series(&text, "doudi_delivery_oldest_unapplied_seconds{agency=\"housing\"}"), Some(0.0));
    for (agency, state, n) in [
        ("medical", "pending", 2.0),
        ("medical", "delivered", 1.0),
        ("medical", "failed", 1.0),
        ("education", "delivered", 1.0),
        ("housing", "pending", 0.0),
    ] {
        assert_eq!(
            series(&text, &format!("doudi_deliveries{{agency=\"{agency}\",state=\"{state}\"}}")),
            Some(n),
            "{agency} {state}:\n{text}"
        );
    }
    assert!(!text.contains("state=\"applied\""), "applied deliveries have no gauge:\n{text}");
    db.close().await;
}

/// Settled events are marked and committed in groups: a run stopped while an event is being
/// retried has marked and committed everything before that event, and the next run starts exactly
/// at it.
#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn a_run_stopped_during_retries_leaves_everything_before_settled_and_the_rest_for_the_next() {
    let x = Exchange::new().await;
    let (a, b, c) = x.three_premium_subsidies().await;
    let (url, seen) = agency_server(HashMap::from([(c.clone(), VecDeque::from(vec![(503, "busy"); 1000]))])).await;
    let path = x.medical_webhook(&url, "");
    let config = doudi::deliver::config::DeliveryConfig::load(&path).unwrap();
    doudi::deliver::sink::install_crypto_provider();
    let sink = |url: &str| {
        doudi::deliver::sink::Sink::Http(doudi::deliver::sink::HttpSink::new(url, None, None, std::time::Duration::from_secs(5)).unwrap())
    };
    let options = doudi::deliver::DeliverOptions {
        topic: x.topic("medical"),
        group: format!("t-deliver-{}", &x.suffix[1..9]),
        until_idle: true,
        idle_after: std::time::Duration::from_millis(500),
        initial_backoff: std::time::Duration::from_millis(50),
        max_backoff: std::time::Duration::from_millis(200),
    };
    // Stopped once the agency has refused c three times.
    let refused = {
        let (seen, c) = (seen.clone(), c.clone());
        async move {
            while seen.lock().unwrap().iter().filter(|s| s.0 == c).count() < 3 {
                tokio::time::sleep(std::time::Duration::from_millis(20)).await;
            }
        }
    };
    let summary = tokio::time::timeout(
        std::time::Duration::from_secs(60),
        doudi::deliver::run(&x.db, &common::kafka(), &config, &sink(&url), &options, refused),
    )
    .await
    .expect("the run stops")
    .unwrap();
    assert_eq!((summary.read, summary.delivered), (3, 2));
    let states = x.states().await;
    assert_eq!(states[&a].0, "delivered");
    assert_eq!(states[&b].0, "delivered");
    assert_eq!(states[&c].0, "pending");
    assert!(states[&c].1 >= 2, "c's failed attempts are recorded");

    // The agency accepts now: the next run of the group reads c alone and delivers it.
    let (url, seen) = agency_server(HashMap::new()).await;
    let summary = doudi::deliver::run(&x.db, &common::kafka(), &config, &sink(&url), &options, std::future::pending()).await.unwrap();
    assert_eq!((summary.read, summary.delivered), (1, 1));
    assert_eq!(seen.lock().unwrap().iter().map(|s| s.0.clone()).collect::<Vec<_>>(), vec![c.clone()]);
    assert_eq!(x.states().await[&c].0, "delivered");
}

/// A full disk under the export folder: the day's export fails with the reason and exit code 3,
/// leaves no half-written file (nor temporary file) for an importer to pick up, and marks nothing
/// delivered. Once there is room again, the same command writes the whole day.
#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn a_full_export_disk_fails_the_day_cleanly_and_the_rerun_completes_it() {
    let x = Exchange::new().await;
    let granted = x.publish("housing", "220102195003070015", "housing_assistance", "granted", json!({"category": "dibao"})).await;
    let out = x.dir.path().join("exports");
    let disk = common::Tmpfs::mount(&out, "64k");
    let filler = disk.fill();
    let shipped = std::fs::read_to_string(concat!(env!("CARGO_MANIFEST_DIR"), "/connectors/housing-out.toml")).unwrap();
    let config = x.config(
        "housing-out.toml",
        &shipped
            .replace("directory = \"exports/housing\"", &format!("directory = \"{}\"", out.display()))
            .replace("name = \"housing-out\"", &format!("name = \"t-full-{}\"", &x.suffix[1..9])),
    );
    let today = doudi::db::china_date(chrono::Utc::now()).to_string();
    let args = ["deliver", "--config", config.to_str().unwrap(), "--date", &today, "--topic-suffix", &x.suffix];
    let (code, _, stderr) = x.doudi(&args, &[]);
    assert_eq!(code, 3, "a full disk is an infrastructure failure: {stderr}");
    assert!(stderr.contains("No space left on device"), "{stderr}");
    let names: Vec<String> = std::fs::read_dir(&out).unwrap().map(|e| e.unwrap().file_name().to_string_lossy().into_owned()).collect();
    assert_eq!(names, vec![".filler".to_string()], "nothing half-written is left: {names:?}");
    assert_ne!(x.states().await.get(&granted).map(|s| s.0.as_str()), Some("delivered"), "nothing is marked delivered");

    std::fs::remove_file(&filler).unwrap();
    let (code, stdout, stderr) = x.doudi(&args, &[]);
    assert_eq!(code, 0, "{stderr}");
    let summary: Value = serde_json::from_str(stdout.trim()).unwrap();
    assert_eq!(summary["rows"].as_u64(), Some(1));
    assert_eq!(x.states().await[&granted].0, "delivered");
    drop(disk);
}

/// `doudi deliver` into a table, killed three times while it works through 400 events: once
/// started again it ends with every event delivered and one row per entitlement.
#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn the_delivery_daemon_killed_again_and_again_delivers_everything() {
    const PEOPLE: usize = 400;
    let x = Exchange::new().await;
    for i in 0..PEOPLE {
        let birth = chrono::NaiveDate::from_ymd_opt(2008, 1, 1).unwrap() + chrono::Duration::days(i as i64);
        let id = doudi::idnum::complete(&format!("220102{}{:03}", birth.format("%Y%m%d"), i % 1000)).unwrap();
        x.publish("education", &id, "student_aid", "granted", json!({"student_level": "primary"})).await;
    }
    let table = format!("t_kill_{}", &x.suffix[1..9]);
    let shipped = std::fs::read_to_string(concat!(env!("CARGO_MANIFEST_DIR"), "/connectors/education-out.toml")).unwrap();
    let config = x.config(
        "education-out.toml",
        &shipped
            .replace("table = \"education_student_aid\"", &format!("table = \"{table}\""))
            .replace("name = \"education-out\"", &format!("name = \"t-kill-{}\"", &x.suffix[1..9])),
    );
    let spawn = |port: u16| {
        std::process::Command::new(common::doudi_bin())
            .args(["deliver", "--config", config.to_str().unwrap(), "--topic-suffix", &x.suffix])
            .env("DOUDI_KAFKA_BOOTSTRAP_SERVERS", common::kafka().bootstrap_servers)
            .env("DOUDI_KAFKA_OPTIONS_SESSION_TIMEOUT_MS", "6000")
            .env("DOUDI_DATABASE_URL", &x.pg.settings.url)
            .env("DOUDI_HTTP_PORT", port.to_string())
            .env("DOUDI_LOG_LEVEL", "warn")
            .env_remove("DOUDI_CONFIG")
            .stdout(std::process::Stdio::null())
            .stderr(std::process::Stdio::null())
            .spawn()
            .unwrap()
    };
    for delay_ms in [1500u64, 700, 1100] {
        let mut daemon = spawn(common::free_port());
        tokio::time::sleep(std::time::Duration::from_millis(delay_ms)).await;
        let _ = daemon.kill();
        let _ = daemon.wait();
    }
    let port = common::free_port();
    let daemon = spawn(port);
    let deadline = std::time::Instant::now() + std::time::Duration::from_secs(120);
    let ready = || async move {
        tokio::net::TcpStream::connect(("127.0.0.1", port)).await.is_ok()
            && common::http_get(&format!("127.0.0.1:{port}"), "/readyz").await.0 == 200
    };
    while x.states().await.values().any(|s| s.0 != "delivered") || !ready().await {
        assert!(std::time::Instant::now() < deadline, "not everything was delivered after the kills");
        tokio::time::sleep(std::time::Duration::from_millis(300)).await;
    }
    common::stop_by_sigterm(daemon, "the delivery daemon");
    let rows: i64 =
        sqlx::query(sqlx::AssertSqlSafe(format!("SELECT COUNT(*) AS n FROM {table}"))).fetch_one(x.db.pool()).await.unwrap().get("n");
    assert_eq!(rows, PEOPLE as i64, "one row per entitlement");
    assert_eq!(x.states().await.len(), PEOPLE);
}
