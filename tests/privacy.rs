//! No personal data where it does not belong: the main flows run at `debug` log level on the real
//! broker and PostgreSQL (two connectors with bad rows, the matcher, `dlq list`, `tap`, a masked
//! `recipients show`, `lag`), and every output is scanned for the test's ID numbers (also inside
//! longer runs of digits, such as a 20-digit disability certificate number), names and incomes:
//! stdout, stderr, dead-letter headers and the job records.
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
    let (head_name, wrong_name, holder_name, wage) = ("欧阳锦绣", "司马青山", "诸葛明月", "4321.97");
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

    // Dead-letter headers and the job records.
    let reader = common::Reader::new(&[civil_dlq.as_str(), cdpf_dlq.as_str()]);
    for r in reader.until_quiet(std::time::Duration::from_secs(4)).await {
        outputs.push((format!("headers of {}", r.topic), format!("{:?}", r.headers)));
    }
    let db = doudi::db::Database::connect(&pg.settings).await.unwrap();
    let jobs: Vec<String> = sqlx::query_scalar("SELECT component || ' ' || name || ' ' || summary FROM job_runs")
        .fetch_all(db.pool())
        .await
        .unwrap_or_default();
    outputs.push(("job_runs".into(), jobs.join("\n")));

    let digits = |s: &str| s.chars().filter(char::is_ascii_digit).collect::<String>();
    for (what, text) in &outputs {
        for secret in [&head, &wrong, &holder] {
            let core = &secret[..17];
            assert!(!digits(text).contains(core), "{what} holds an ID number's digits:\n{text}");
        }
        for name in [head_name, wrong_name, holder_name] {
            assert!(!text.contains(name), "{what} holds the name {name}:\n{text}");
        }
        assert!(!text.contains(wage) && !text.contains("4,321.97"), "{what} holds the wage:\n{text}");
    }
}
