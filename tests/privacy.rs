//! No personal data where it does not belong: the main flows run at `debug` log level on the real
//! broker and PostgreSQL (two connectors with bad rows, the matcher, delivery to an agency that
//! refuses, `dlq list`, `tap`, a masked `recipients show`, `deliveries pending`, `lag`; HTTP push,
//! a drop folder and the acks callback as daemons, `lag serve`), and every output is scanned for
//! the test's ID numbers (also inside longer runs of digits, such as a 20-digit disability
//! certificate number), names and incomes: stdout, stderr, log files, dead-letter headers, job
//! records, reason files, `/metrics` and HTTP replies.
#![allow(clippy::unwrap_used, clippy::expect_used)]

mod common;

use std::path::Path;

/// An ID number with a valid check character (GB 11643).
fn id(first17: &str) -> String {
    const WEIGHTS: [u32; 17] = [7, 9, 10, 5, 8, 4, 2, 1, 6, 3, 7, 9, 10, 5, 8, 4, 2];
    let sum: u32 = first17.chars().zip(WEIGHTS).map(|(c, w)| c.to_digit(10).unwrap() * w).sum();
    let check = "10X98765432".chars().nth((sum % 11) as usize).unwrap();
    format!("{first17}{check}")
}

/// No output holds the ID numbers' first 17 digits (also inside a longer run of digits, or split
/// by other characters), a name or the wage.
fn assert_no_personal_data(outputs: &[(String, String)], ids: &[&str], names: &[&str], wage: &str) {
    let digits = |s: &str| s.chars().filter(char::is_ascii_digit).collect::<String>();
    for (what, text) in outputs {
        for id in ids {
            assert!(!digits(text).contains(&id[..17]), "{what} holds an ID number's digits:\n{text}");
        }
        for name in names {
            assert!(!text.contains(name), "{what} holds the name {name}:\n{text}");
        }
        assert!(!text.contains(wage), "{what} holds the wage:\n{text}");
    }
}

/// The catalogue of `schemas/` with `topic`'s entry copied under `test.<topic>.<suffix>`.
fn isolated_schemas(dir: &Path, topics: &[&str], suffix: &str) {
    let root = Path::new(env!("CARGO_MANIFEST_DIR")).join("schemas");
    std::fs::create_dir_all(dir).unwrap();
    for entry in std::fs::read_dir(&root).unwrap() {
        let path = entry.unwrap().path();
        if path.is_file() {
            std::fs::copy(&path, dir.join(path.file_name().unwrap())).unwrap();
        }
    }
    let text = std::fs::read_to_string(root.join("topics.toml")).unwrap();
    let mut extra = String::new();
    for topic in topics {
        let block = text.split("[[topic]]").find(|b| b.contains(&format!("name = \"{topic}\""))).unwrap();
        extra.push_str("\n[[topic]]");
        extra.push_str(&block.replace(&format!("name = \"{topic}\""), &format!("name = \"test.{topic}.{suffix}\"")));
    }
    std::fs::write(dir.join("topics.toml"), format!("{text}\n{extra}")).unwrap();
}

fn isolated_connector(dir: &Path, feed: &str, topic: &str, suffix: &str) -> String {
    let root = Path::new(env!("CARGO_MANIFEST_DIR")).join("connectors");
    let text = std::fs::read_to_string(root.join(format!("{feed}.toml"))).unwrap();
    let text = text
        .replace(&format!("name = \"{feed}\""), &format!("name = \"t{}-{feed}\"", &suffix[..12]))
        .replace(&format!("topic = \"{topic}\""), &format!("topic = \"test.{topic}.{suffix}\""));
    let path = dir.join(format!("{feed}.toml"));
    std::fs::write(&path, text).unwrap();
    path.display().to_string()
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn no_id_number_name_or_income_leaves_through_logs_outputs_or_headers() {
    let suffix = uuid::Uuid::new_v4().simple().to_string();
    let dir = tempfile::tempdir().unwrap();
    let schemas = dir.path().join("schemas");
    let (civil, cdpf) = ("dept.civil.household.v1", "dept.cdpf.disability.v1");
    isolated_schemas(&schemas, &[civil, cdpf], &suffix);
    for feed in doudi::matcher::Feed::ALL {
        let name = format!("test.{}.{suffix}", feed.topic());
        doudi::kafka::ensure_topic(&common::kafka(), &name, 1, 1).await.unwrap();
        doudi::kafka::ensure_topic(&common::kafka(), &format!("dlq.{name}"), 1, 1).await.unwrap();
    }
    let _ = common::synthetic::outbound_topics(&suffix).await;

    // The people of this test: a head with a distinctive wage; a row whose ID number has a wrong
    // check character; a disability certificate number that holds an ID number, on a bad row.
    let head = id("22010219770412123");
    let mut wrong = id("22010219880816246");
    let last = if wrong.ends_with('0') { '1' } else { '0' };
    wrong.pop();
    wrong.push(last);
    let holder = id("22010219650101357");
    // The wage keeps the head's household under the standard, so that entitlements reach the
    // agencies and the delivery below has something to deliver.
    let (head_name, wrong_name, holder_name, wage) = ("欧阳锦绣", "司马青山", "诸葛明月", "123.97");
    let sample = std::fs::read_to_string(Path::new(env!("CARGO_MANIFEST_DIR")).join("connectors/samples/civil-household.jsonl")).unwrap();
    let template = sample.lines().next().unwrap();
    let household = |id_number: &str, name: &str, household_id: &str| {
        template
            .replace("220102195003070015", id_number)
            .replace("王某", name)
            .replace("\"wages\": \"0\"", &format!("\"wages\": \"{wage}\""))
            .replace("JL-220102-2019-000123", household_id)
    };
    let civil_input = dir.path().join("households.jsonl");
    std::fs::write(
        &civil_input,
        format!("{}\n{}\n", household(&head, head_name, "JL-220102-2019-990001"), household(&wrong, wrong_name, "JL-220102-2019-990002")),
    )
    .unwrap();
    let cdpf_input = dir.path().join("certificates.csv");
    std::fs::write(&cdpf_input, format!("残疾人证号,姓名,发证日期,状态\n{holder}42,{holder_name},2015-13-45,有效\n")).unwrap();

    let pg = common::fresh_postgres().await;
    let env = [("DOUDI_DATABASE_URL", pg.settings.url.as_str()), ("DOUDI_LOG_LEVEL", "debug"), ("DOUDI_HTTP_PORT", "0")];
    let schemas_arg = schemas.display().to_string();
    let affix = format!(".{suffix}");
    let group = format!("privacy-{}", &suffix[..12]);
    let civil_config = isolated_connector(dir.path(), "civil-household", civil, &suffix);
    let cdpf_config = isolated_connector(dir.path(), "cdpf-disability", cdpf, &suffix);
    let civil_dlq = format!("dlq.test.{civil}.{suffix}");
    let cdpf_dlq = format!("dlq.test.{cdpf}.{suffix}");
    let status = format!("test.exchange.recipient.status.v1.{suffix}");
    let medical = format!("test.exchange.entitlement.medical.v1.{suffix}");
    let civil_input_arg = civil_input.display().to_string();
    let cdpf_input_arg = cdpf_input.display().to_string();
    let runs: Vec<Vec<&str>> = vec![
        vec!["connect", "--config", &civil_config, "--schemas", &schemas_arg, "--input", &civil_input_arg, "--once"],
        vec!["connect", "--config", &cdpf_config, "--schemas", &schemas_arg, "--input", &cdpf_input_arg, "--once"],
        vec!["match", "--until-idle", "--group", &group, "--topic-prefix", "test.", "--topic-suffix", &affix],
        vec!["dlq", "list", "--topic", &civil_dlq],
        vec!["dlq", "list", "--topic", &civil_dlq, "--json"],
        vec!["dlq", "list", "--topic", &cdpf_dlq, "--json"],
        vec!["tap", "--topic", &cdpf_dlq],
        vec!["tap", "--topic", &status],
        vec!["tap", "--topic", &medical],
        vec!["recipients", "show", &head],
        vec!["recipients", "show", &head, "--json"],
        vec!["lag", "--group", &group, "--json"],
    ];
    let mut outputs = Vec::new();
    for args in &runs {
        let (code, stdout, stderr) = common::run_doudi_env(args, &env);
        assert!(code == 0 || code == 1, "{args:?} exited {code}: {stderr}");
        outputs.push((format!("{args:?}"), format!("{stdout}\n{stderr}")));
    }
    // The flows did run: dead letters on both feeds, the head decided.
    assert!(outputs[5].1.contains("\"error_code\""), "the certificate row is a dead letter: {}", outputs[5].1);
    assert!(outputs[4].1.contains("\"error_code\""), "the wrong check character is a dead letter: {}", outputs[4].1);
    assert!(outputs[9].1.contains("JL-220102-2019-990001"), "the head was matched: {}", outputs[9].1);
    // ... and the people are there, masked: the scan below looks at outputs that name them.
    for i in [4, 5, 9] {
        assert!(outputs[i].1.contains("2201**"), "{} shows the person masked: {}", outputs[i].0, outputs[i].1);
    }

    // Delivery to an agency that refuses the person and, as agencies do, repeats who it was in its
    // reply; then the delivery's dead letters and the pending report.
    let agency = axum::Router::new().route(
        "/entitlements",
        axum::routing::post({
            let reply = format!("{{\"error\": \"参保人{head_name}（{head}）不在本统筹区\", \"person\": \"{head}\"}}");
            move || async move { (axum::http::StatusCode::UNPROCESSABLE_ENTITY, reply) }
        }),
    );
    let listener = tokio::net::TcpListener::bind("127.0.0.1:0").await.unwrap();
    let agency_url = format!("http://{}/entitlements", listener.local_addr().unwrap());
    tokio::spawn(async move { axum::serve(listener, agency).await.unwrap() });
    let delivery_config = dir.path().join("medical-out.toml");
    std::fs::write(
        &delivery_config,
        format!(
            "[delivery]\nname = \"t-medical-{}\"\nagency = \"medical\"\ndepartment = \"医保\"\n[sink]\nkind = \"http\"\nurl = \"{agency_url}\"\ntoken_env = \"PRIVACY_SINK_TOKEN\"\n",
            &suffix[..8]
        ),
    )
    .unwrap();
    let delivery_dlq = format!("dlq.{medical}");
    doudi::kafka::ensure_topic(&common::kafka(), &delivery_dlq, 1, 1).await.unwrap();
    let config_arg = delivery_config.display().to_string();
    let sink_env = [env[0], env[1], env[2], ("PRIVACY_SINK_TOKEN", "privacy-sink-token-0123456789")];
    let deliver = ["deliver", "--config", &config_arg, "--until-idle", "--topic-prefix", "test.", "--topic-suffix", &affix];
    let (code, stdout, stderr) = common::run_doudi_env(&deliver, &sink_env);
    assert_eq!(code, 0, "{stderr}");
    let summary: serde_json::Value = serde_json::from_str(stdout.trim()).unwrap();
    assert!(summary["dead_lettered"].as_u64() >= Some(1), "the agency refused the head's entitlement: {summary}");
    outputs.push(("deliver".into(), format!("{stdout}\n{stderr}")));
    for args in [vec!["dlq", "list", "--topic", &delivery_dlq, "--json"], vec!["deliveries", "pending", "--agency", "medical", "--json"]] {
        let (code, stdout, stderr) = common::run_doudi_env(&args, &env);
        assert!(code == 0 || code == 1, "{args:?} exited {code}: {stderr}");
        outputs.push((format!("{args:?}"), format!("{stdout}\n{stderr}")));
    }
    assert!(outputs.last().unwrap().1.contains("2201**"), "the pending report names the person, masked");

    // Dead-letter headers and the job records.
    let reader = common::Reader::new(&[civil_dlq.as_str(), cdpf_dlq.as_str(), delivery_dlq.as_str()]);
    for r in reader.until_quiet(std::time::Duration::from_secs(4)).await {
        outputs.push((format!("headers of {}", r.topic), format!("{:?}", r.headers)));
    }
    let db = doudi::db::Database::connect(&pg.settings).await.unwrap();
    let jobs: Vec<String> = sqlx::query_scalar("SELECT component || ' ' || name || ' ' || summary FROM job_runs")
        .fetch_all(db.pool())
        .await
        .unwrap_or_default();
    outputs.push(("job_runs".into(), jobs.join("\n")));

    assert_no_personal_data(&outputs, &[&head, &wrong, &holder], &[head_name, wrong_name, holder_name], wage);
}

/// A daemon of `doudi` at `debug`, its log going to `log` (a log file, scanned like the rest).
fn daemon(args: &[&str], env: &[(&str, &str)], log: &Path) -> std::process::Child {
    let mut command = std::process::Command::new(common::doudi_bin());
    command
        .args(args)
        .env("DOUDI_KAFKA_BOOTSTRAP_SERVERS", common::kafka().bootstrap_servers)
        .env("DOUDI_LOG_LEVEL", "debug")
        .env_remove("DOUDI_CONFIG")
        .stdout(std::fs::File::create(log.with_extension("stdout")).unwrap())
        .stderr(std::fs::File::create(log).unwrap());
    for (k, v) in env {
        command.env(k, v);
    }
    command.spawn().unwrap()
}

/// `/metrics` of the ops endpoint at `port`, once it answers.
async fn metrics_of(port: u16) -> String {
    for _ in 0..150 {
        if tokio::net::TcpStream::connect(("127.0.0.1", port)).await.is_ok() {
            let (status, body) = common::http_get(&format!("127.0.0.1:{port}"), "/metrics").await;
            assert_eq!(status, 200);
            return body;
        }
        tokio::time::sleep(std::time::Duration::from_millis(100)).await;
    }
    panic!("nothing answers on {port}");
}

/// One HTTP request: the reply's status and body.
async fn request(port: u16, method: &str, path: &str, headers: &str, body: &str) -> (u16, String) {
    use tokio::io::{AsyncReadExt, AsyncWriteExt};
    for _ in 0..150 {
        if let Ok(mut stream) = tokio::net::TcpStream::connect(("127.0.0.1", port)).await {
            let head = format!(
                "{method} {path} HTTP/1.1\r\nHost: localhost\r\n{headers}Content-Length: {}\r\nConnection: close\r\n\r\n",
                body.len()
            );
            stream.write_all(head.as_bytes()).await.unwrap();
            stream.write_all(body.as_bytes()).await.unwrap();
            let mut reply = String::new();
            stream.read_to_string(&mut reply).await.unwrap();
            let status = reply.split_whitespace().nth(1).and_then(|s| s.parse().ok()).unwrap_or(0);
            return (status, reply);
        }
        tokio::time::sleep(std::time::Duration::from_millis(100)).await;
    }
    panic!("nothing answers on {port}");
}

/// The daemons' side: HTTP push and the acknowledgement callback answer bad requests that carry ID
/// numbers and names; a drop folder fails a file whose header holds them; then every reply, every
/// `/metrics` (push, drop folder, acks, `lag serve`), every log file and every reason file is
/// scanned like the outputs above.
#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn no_id_number_name_or_income_leaves_through_daemons_replies_metrics_or_reason_files() {
    let suffix = uuid::Uuid::new_v4().simple().to_string();
    let dir = tempfile::tempdir().unwrap();
    let schemas = dir.path().join("schemas");
    let (hrss, cdpf) = ("dept.hrss.employment.v1", "dept.cdpf.disability.v1");
    isolated_schemas(&schemas, &[hrss, cdpf], &suffix);
    for topic in [hrss, cdpf] {
        let name = format!("test.{topic}.{suffix}");
        doudi::kafka::ensure_topic(&common::kafka(), &name, 1, 1).await.unwrap();
        doudi::kafka::ensure_topic(&common::kafka(), &format!("dlq.{name}"), 1, 1).await.unwrap();
    }
    for agency in doudi::topics::AGENCIES {
        let name = format!("{}.{suffix}", doudi::topics::ack_topic(agency));
        doudi::kafka::ensure_topic(&common::kafka(), &name, 1, 1).await.unwrap();
    }
    let good = id("22010219790303111");
    let mut wrong = id("22010219900909222");
    let last = if wrong.ends_with('0') { '1' } else { '0' };
    wrong.pop();
    wrong.push(last);
    let holder = id("22010219660606333");
    let (good_name, wrong_name, holder_name, wage) = ("上官飞燕", "东方既白", "慕容秋水", "5678.43");
    let pg = common::fresh_postgres().await;
    let schemas_arg = schemas.display().to_string();
    let mut outputs: Vec<(String, String)> = Vec::new();
    let logs = dir.path().join("logs");
    std::fs::create_dir_all(&logs).unwrap();

    // HTTP push, with a good row, a row with a wrong check character and a line that is not JSON.
    let push_port = common::free_port();
    let push_ops = common::free_port();
    let push_config = isolated_connector(dir.path(), "hrss-employment", hrss, &suffix);
    let text = std::fs::read_to_string(&push_config).unwrap().replace("port = 8081", &format!("port = {push_port}"));
    std::fs::write(&push_config, text.replace("token_env = \"HRSS_PUSH_TOKEN\"", "token_env = \"PRIVACY_PUSH_TOKEN\"")).unwrap();
    let (db_url, ops) = (pg.settings.url.as_str(), push_ops.to_string());
    let token = "privacy-push-token-0123456789";
    let push = daemon(
        &["connect", "--config", &push_config, "--schemas", &schemas_arg],
        &[("DOUDI_DATABASE_URL", db_url), ("DOUDI_HTTP_PORT", &ops), ("PRIVACY_PUSH_TOKEN", token)],
        &logs.join("push.log"),
    );
    let row = |id_number: &str, name: &str| {
        format!(
            "{{\"证件号码\": \"{id_number}\", \"姓名\": \"{name}\", \"事件类型\": \"就业登记\", \"发生日期\": \"2019-12-01\", \"单位名称\": \"某公司\", \"月工资\": \"{wage}\"}}"
        )
    };
    let body = format!("{}\n{}\n{{\"证件号码\": \"{holder}\", \"姓名\": \"{holder_name}\n", row(&good, good_name), row(&wrong, wrong_name));
    let auth = format!("Authorization: Bearer {token}\r\nContent-Type: application/x-ndjson\r\n");
    for (what, headers, body) in [
        ("push", format!("{auth}Idempotency-Key: p-1\r\n"), body.clone()),
        ("push again, another body", format!("{auth}Idempotency-Key: p-1\r\n"), row(&holder, holder_name)),
        ("push without a key", auth.clone(), body.clone()),
        ("push with a wrong token", format!("Authorization: Bearer {good}\r\nIdempotency-Key: p-2\r\n"), body.clone()),
        ("push of JSON that is not an object", format!("{auth}Idempotency-Key: p-3\r\n"), format!("[\"{good}\", \"{good_name}\"]\n")),
    ] {
        let (status, reply) = request(push_port, "POST", "/v1/records", &headers, &body).await;
        assert!(status > 0, "{what} answered");
        outputs.push((format!("{what} ({status})"), reply));
    }
    assert!(outputs[0].0.contains("(200)") && outputs[0].1.contains("\"dead_lettered\":2"), "the bad rows were refused: {}", outputs[0].1);
    outputs.push(("push /metrics".into(), metrics_of(push_ops).await));

    // A drop folder: a file whose header line is a data row with an unclosed quote, and a good file
    // with a bad row.
    let drop = dir.path().join("drop");
    std::fs::create_dir_all(&drop).unwrap();
    let drop_config = isolated_connector(dir.path(), "cdpf-disability", cdpf, &suffix);
    let text = std::fs::read_to_string(&drop_config).unwrap().replace(
        "path = \"/var/lib/doudi/drop/cdpf-disability\"",
        &format!("path = \"{}\"\npoll_secs = 1\nstable_secs = 1", drop.display()),
    );
    std::fs::write(&drop_config, text).unwrap();
    std::fs::write(
        drop.join("broken.csv"),
        format!("\"{holder}42,{holder_name},2015-01-01,有效\n{wrong}42,{wrong_name},2015-01-01,有效\n"),
    )
    .unwrap();
    std::fs::write(drop.join("rows.csv"), format!("残疾人证号,姓名,发证日期,状态\n{wrong}42,{wrong_name},2015-13-45,有效\n")).unwrap();
    let folder_ops = common::free_port();
    let ops = folder_ops.to_string();
    let folder = daemon(
        &["connect", "--config", &drop_config, "--schemas", &schemas_arg],
        &[("DOUDI_DATABASE_URL", db_url), ("DOUDI_HTTP_PORT", &ops)],
        &logs.join("folder.log"),
    );
    let deadline = std::time::Instant::now() + std::time::Duration::from_secs(60);
    while !(drop.join("failed/broken.csv").exists() && drop.join("done/rows.csv").exists()) {
        assert!(
            std::time::Instant::now() < deadline,
            "the drop folder processed both files: {:?}",
            std::fs::read_dir(&drop).unwrap().collect::<Vec<_>>()
        );
        tokio::time::sleep(std::time::Duration::from_millis(200)).await;
    }
    outputs.push(("drop folder /metrics".into(), metrics_of(folder_ops).await));
    let mut reasons = 0;
    for sub in ["failed", "done"] {
        for entry in std::fs::read_dir(drop.join(sub)).unwrap() {
            let path = entry.unwrap().path();
            if path.to_string_lossy().ends_with(".reason.txt") {
                reasons += 1;
                outputs.push((path.display().to_string(), std::fs::read_to_string(&path).unwrap()));
            }
        }
    }
    assert!(reasons >= 1, "a reason file was written beside the failed file");

    // The acknowledgement callback, with payloads that carry an ID number and a name.
    let (acks_port, acks_ops) = (common::free_port(), common::free_port());
    let (listen, ops) = (format!("127.0.0.1:{acks_port}"), acks_ops.to_string());
    let affix = format!(".{suffix}");
    let group = format!("privacy-acks-{}", &suffix[..12]);
    let acks = daemon(
        &["acks", "--listen", &listen, "--token", "medical=PRIVACY_ACK_TOKEN", "--topic-suffix", &affix, "--group", &group],
        &[("DOUDI_DATABASE_URL", db_url), ("DOUDI_HTTP_PORT", &ops), ("PRIVACY_ACK_TOKEN", "privacy-ack-token-0123456789")],
        &logs.join("acks.log"),
    );
    let ack_auth = "Authorization: Bearer privacy-ack-token-0123456789\r\nContent-Type: application/json\r\n";
    for (what, headers, body) in [
        (
            "ack with an ID number for an event id",
            ack_auth,
            format!("{{\"event_id\": \"{good}\", \"agency\": \"medical\", \"status\": \"applied\"}}"),
        ),
        (
            "ack with a name for a status",
            ack_auth,
            format!("{{\"event_id\": \"{}\", \"agency\": \"medical\", \"status\": \"{good_name}\"}}", uuid::Uuid::new_v4()),
        ),
        (
            "ack with an unknown field",
            ack_auth,
            format!(
                "{{\"event_id\": \"{}\", \"agency\": \"medical\", \"status\": \"applied\", \"{good}\": \"{good_name}\"}}",
                uuid::Uuid::new_v4()
            ),
        ),
        ("ack that is not JSON", ack_auth, format!("{good} {good_name} {wage}")),
        (
            "ack with a token that is an ID number",
            "Authorization: Bearer 220102197903031110\r\nContent-Type: application/json\r\n",
            "{}".into(),
        ),
    ] {
        let (status, reply) = request(acks_port, "POST", "/v1/acks", headers, &body).await;
        assert!((400..500).contains(&status), "{what}: {status} {reply}");
        outputs.push((format!("{what} ({status})"), reply));
    }
    outputs.push(("acks /metrics".into(), metrics_of(acks_ops).await));

    // lag serve's metrics, with the groups above among those it watches.
    let lag_port = common::free_port();
    let lag_listen = format!("127.0.0.1:{lag_port}");
    let lag = daemon(&["lag", "serve", "--listen", &lag_listen, "--interval", "1s"], &[("DOUDI_HTTP_PORT", "0")], &logs.join("lag.log"));
    tokio::time::sleep(std::time::Duration::from_secs(3)).await;
    outputs.push(("lag serve /metrics".into(), metrics_of(lag_port).await));

    for (child, what) in [(push, "push"), (folder, "drop folder"), (acks, "acks"), (lag, "lag serve")] {
        common::stop_by_sigterm(child, what);
    }
    for entry in std::fs::read_dir(&logs).unwrap() {
        let path = entry.unwrap().path();
        outputs.push((path.display().to_string(), std::fs::read_to_string(&path).unwrap()));
    }
    assert!(outputs.iter().any(|(w, t)| w.ends_with("push.log") && t.contains("DEBUG")), "the daemons logged at debug");

    assert_no_personal_data(&outputs, &[&good, &wrong, &holder], &[good_name, wrong_name, holder_name], wage);
}
