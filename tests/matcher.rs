//! The matching service end to end on the real broker and PostgreSQL: the sample feeds go through
//! their connectors into an isolated set of topics, `doudi match --until-idle` applies them, and each
//! agency's topic is read back. Also: replay, and SIGKILL under load.
#![allow(clippy::unwrap_used, clippy::expect_used)]

mod common;

use std::collections::BTreeSet;
use std::path::{Path, PathBuf};
use std::time::Duration;

use doudi::config::Settings;
use doudi::connect::run::Connector;
use serde_json::{Value, json};
use sqlx::Row;

fn root() -> PathBuf {
    PathBuf::from(env!("CARGO_MANIFEST_DIR"))
}

fn settings() -> Settings {
    Settings { kafka: common::kafka(), ..Settings::default() }
}

/// An isolated exchange: every inbound and outbound topic with one suffix, and a fresh database.
struct Exchange {
    suffix: String,
    pg: common::FreshPostgres,
    reader: common::Reader,
}

impl Exchange {
    async fn new() -> Self {
        let suffix = uuid::Uuid::new_v4().simple().to_string();
        let names = common::synthetic::outbound_topics(&suffix).await;
        for feed in doudi::matcher::Feed::ALL {
            let name = format!("test.{}.{suffix}", feed.topic());
            doudi::kafka::ensure_topic(&common::kafka(), &name, 3, 1).await.unwrap();
        }
        let reader = common::Reader::new(&names.iter().map(String::as_str).collect::<Vec<_>>());
        Exchange { suffix, pg: common::fresh_postgres().await, reader }
    }

    async fn feed(&self, connector: &str, input: &Path) {
        let (config, registry) = common::isolated_in(connector, &self.suffix).await;
        let mut c = Connector::start(config, registry, &settings()).await.unwrap();
        let summary = c.process_file(input).await.unwrap();
        assert!(summary.produced > 0 || summary.already_processed, "{connector} produced nothing");
    }

    fn match_args(&self, group: &str) -> Vec<String> {
        ["match", "--until-idle", "--group", group, "--topic-prefix", "test.", "--topic-suffix", &format!(".{}", self.suffix), "--schemas"]
            .iter()
            .map(|s| s.to_string())
            .chain([root().join("schemas").display().to_string()])
            .collect()
    }

    /// `doudi` with `args` against this exchange's database: a short session timeout (a killed
    /// member leaves the group quickly), no ops port, output discarded.
    fn matcher_command(&self, args: &[String]) -> std::process::Command {
        let mut command = std::process::Command::new(common::doudi_bin());
        command
            .args(args)
            .env("DOUDI_KAFKA_BOOTSTRAP_SERVERS", common::kafka().bootstrap_servers)
            .env("DOUDI_LOG_LEVEL", "warn")
            .env("DOUDI_KAFKA_OPTIONS_SESSION_TIMEOUT_MS", "6000")
            .env("DOUDI_DATABASE_URL", &self.pg.settings.url)
            .env("DOUDI_HTTP_PORT", "0")
            .stdout(std::process::Stdio::null())
            .stderr(std::process::Stdio::null());
        command
    }

    fn env(&self) -> Vec<(&'static str, String)> {
        vec![("DOUDI_DATABASE_URL", self.pg.settings.url.clone())]
    }

    /// Runs `doudi match --until-idle` and returns its summary.
    fn run_matcher(&self, group: &str) -> Value {
        let args = self.match_args(group);
        let args: Vec<&str> = args.iter().map(String::as_str).collect();
        let env = self.env();
        let env: Vec<(&str, &str)> = env.iter().map(|(k, v)| (*k, v.as_str())).collect();
        let (code, stdout, stderr) = common::run_doudi_env(&args, &env);
        assert_eq!(code, 0, "doudi match failed: {stderr}");
        serde_json::from_str(stdout.trim()).unwrap_or_else(|e| panic!("summary is JSON ({e}): {stdout}"))
    }

    /// What arrived on the outbound topics since the last call, as sorted readable lines.
    async fn deltas(&self) -> (Vec<String>, Vec<common::Record>) {
        let records = self.reader.until_quiet(Duration::from_secs(4)).await;
        let mut lines: Vec<String> = records.iter().map(describe).collect();
        lines.sort();
        (lines, records)
    }
}

/// The dead letters the matcher set aside (`stage = match`) among what `dead` reads next.
async fn match_dead_letters(dead: &common::Reader) -> Vec<common::Record> {
    dead.until_quiet(Duration::from_secs(5)).await.into_iter().filter(|r| r.headers.get("stage").is_some_and(|s| s == "match")).collect()
}

/// `medical ended premium_subsidy_full 2201**********0015 JL-220102-2019-000123` and the like.
fn describe(r: &common::Record) -> String {
    let p = &r.payload;
    let person = p["id_number"].as_str().map(doudi::idnum::mask).unwrap_or_default();
    let household = p["household_id"].as_str().unwrap_or_default();
    if r.topic.contains("recipient.status") {
        format!(
            "status {household} {}→{} {}",
            p["previous_category"].as_str().unwrap_or_default(),
            p["category"].as_str().unwrap_or_default(),
            p["monthly_payment"].as_str().unwrap_or_default()
        )
    } else if r.topic.contains("review-task") {
        // A task's later events say what happened to it (the first one raises it).
        let state = p["state"].as_str().filter(|s| *s != "open").map(|s| format!(" {s}")).unwrap_or_default();
        format!("task {} {person} {household}{state}", p["kind"].as_str().unwrap_or_default())
    } else {
        let extra = ["category", "student_level", "yearly_amount"].iter().filter_map(|k| p[*k].as_str()).collect::<Vec<_>>().join(" ");
        format!(
            "{} {} {} {person} {household} {extra}",
            p["agency"].as_str().unwrap_or_default(),
            p["change"].as_str().unwrap_or_default(),
            p["kind"].as_str().unwrap_or_default()
        )
        .trim_end()
        .to_string()
    }
}

fn jsonl(dir: &Path, name: &str, lines: &[Value]) -> PathBuf {
    let path = dir.join(name);
    std::fs::write(&path, lines.iter().map(|l| format!("{l}\n")).collect::<String>()).unwrap();
    path
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn sample_feeds_reach_each_agency_and_later_events_change_them() {
    let x = Exchange::new().await;
    let samples = root().join("connectors/samples");
    for (connector, file) in [
        ("civil-household", "civil-household.jsonl"),
        ("edu-student", "edu-student.csv"),
        ("housing-difficulty", "housing-difficulty.xlsx"),
        ("union-roster", "union-roster-2019-12.csv"),
        ("medical-settlement", "medical-settlement.csv"),
        ("cdpf-disability", "cdpf-disability.csv"),
    ] {
        x.feed(connector, &samples.join(file)).await;
    }
    let summary = x.run_matcher("m1");
    assert_eq!(
        (summary["events"].as_u64(), summary["invalid"].as_u64(), summary["published"].as_u64()),
        (Some(28), Some(0), Some(46)),
        "{summary}"
    );
    let (lines, records) = x.deltas().await;
    assert_eq!(lines, STAGE_1.iter().map(|s| s.to_string()).collect::<Vec<_>>());
    check_envelopes(&records);
    // Every entitlement event has its delivery row, pending until an agency or a sink takes it.
    let entitlement_events = records.iter().filter(|r| r.topic.contains("exchange.entitlement.")).count();
    let db = doudi::db::Database::connect(&x.pg.settings).await.unwrap();
    let pending: i64 = sqlx::query_scalar(
        "SELECT COUNT(*) FROM deliveries d JOIN outbox o ON o.ce_id = d.ce_id \
         WHERE d.state = 'pending' AND NOT EXISTS (SELECT 1 FROM outbox_pending p WHERE p.id = o.id)",
    )
    .fetch_one(db.pool())
    .await
    .unwrap();
    assert_eq!(usize::try_from(pending).unwrap(), entitlement_events);

    // Employment: the head is employed at 1800 a month, the spouse became unemployed.
    x.feed("hrss-employment", &samples.join("hrss-employment.jsonl")).await;
    x.run_matcher("m1");
    assert_eq!(
        x.deltas().await.0,
        vec![
            "hrss ended employment_assistance 2201**********0029 JL-220102-2019-000124",
            "hrss granted employment_assistance 2201**********0113 JL-220102-2019-000124",
            "status JL-220102-2019-000124 dibao→dibao 304.50",
        ]
    );

    // A later employment event lifts the household above twice the standard: everything ends.
    let dir = tempfile::tempdir().unwrap();
    let employed = json!({"证件号码": "220102198302110113", "姓名": "张某", "事件类型": "就业登记", "发生日期": "2020-01-10", "单位名称": "长春某超市", "月工资": "2,500.00"});
    x.feed("hrss-employment", &jsonl(dir.path(), "employment-2020-01.jsonl", &[employed])).await;
    x.run_matcher("m1");
    assert_eq!(
        x.deltas().await.0,
        vec![
            "education ended student_aid 2201**********003X JL-220102-2019-000124 primary",
            "housing ended housing_assistance 2201**********0029 JL-220102-2019-000124 dibao",
            "hrss ended employment_assistance 2201**********0113 JL-220102-2019-000124",
            "medical ended medical_assistance_class2 2201**********0029 JL-220102-2019-000124",
            "medical ended medical_assistance_class2 2201**********003X JL-220102-2019-000124",
            "medical ended medical_assistance_class2 2201**********0113 JL-220102-2019-000124",
            "medical ended premium_subsidy_fixed 2201**********0029 JL-220102-2019-000124 150.00",
            "medical ended premium_subsidy_fixed 2201**********003X JL-220102-2019-000124 150.00",
            "medical ended premium_subsidy_fixed 2201**********0113 JL-220102-2019-000124 150.00",
            "status JL-220102-2019-000124 dibao→none 0.00",
        ]
    );

    // A death ends the person's entitlements; its revocation restores them.
    let death = json!({"id_number": "220102195003070015", "name": "王某", "event": "death", "date": "2019-12-20", "source": "殡葬"});
    x.feed("vital-event", &jsonl(dir.path(), "deaths.jsonl", &[death])).await;
    x.run_matcher("m1");
    assert_eq!(
        x.deltas().await.0,
        vec![
            "medical ended medical_assistance_class1 2201**********0015 JL-220102-2019-000123",
            "medical ended premium_subsidy_full 2201**********0015 JL-220102-2019-000123",
            "status JL-220102-2019-000123 tekun→none 0.00",
            "task deceased_member 2201**********0015 JL-220102-2019-000123",
        ]
    );
    let revoked =
        json!({"id_number": "220102195003070015", "name": "王某", "event": "death_revoked", "date": "2019-12-28", "source": "公安"});
    x.feed("vital-event", &jsonl(dir.path(), "revocations.jsonl", &[revoked])).await;
    x.run_matcher("m1");
    assert_eq!(
        x.deltas().await.0,
        vec![
            "medical granted medical_assistance_class1 2201**********0015 JL-220102-2019-000123",
            "medical granted premium_subsidy_full 2201**********0015 JL-220102-2019-000123",
            "status JL-220102-2019-000123 none→tekun 1084.00",
            "task deceased_member 2201**********0015 JL-220102-2019-000123 cancelled",
        ]
    );

    // Replay. The same group again: nothing to do.
    let again = x.run_matcher("m1");
    assert_eq!((again["events"].as_u64(), again["published"].as_u64()), (Some(0), Some(0)), "{again}");
    // A new group from the earliest offset, with the stored offsets gone too: every event is read
    // again and recognised by its ce_id; no new effect and no new outbound event.
    let db = doudi::db::Database::connect(&x.pg.settings).await.unwrap();
    let outbox_before: i64 = sqlx::query("SELECT COUNT(*) AS n FROM outbox").fetch_one(db.pool()).await.unwrap().get("n");
    sqlx::query("DELETE FROM consumer_offsets").execute(db.pool()).await.unwrap();
    let replay = x.run_matcher("m2");
    assert_eq!(replay["events"], replay["duplicates"], "{replay}");
    assert_eq!((replay["decisions"].as_u64(), replay["published"].as_u64()), (Some(0), Some(0)), "{replay}");
    assert_eq!(replay["events"].as_u64(), Some(28 + 6 + 1 + 1 + 1));
    let outbox_after: i64 = sqlx::query("SELECT COUNT(*) AS n FROM outbox").fetch_one(db.pool()).await.unwrap().get("n");
    assert_eq!(outbox_before, outbox_after);
    assert!(x.deltas().await.0.is_empty(), "a replay publishes nothing");

    // recipients show: masked by default, with the facts' sources.
    let env = x.env();
    let env: Vec<(&str, &str)> = env.iter().map(|(k, v)| (*k, v.as_str())).collect();
    let (code, out, _) = common::run_doudi_env(&["recipients", "show", "220102195003070015", "--json"], &env);
    assert_eq!(code, 0);
    assert!(!out.contains("220102195003070015") && !out.contains("王某"), "masked by default");
    let report: Value = serde_json::from_str(&out).unwrap();
    assert_eq!(report["decision"]["category"], "tekun");
    assert!(report["decision"]["explanation"].as_array().is_some_and(|e| !e.is_empty()));
    let sources: BTreeSet<&str> = report["facts"].as_array().unwrap().iter().filter_map(|f| f["source"]["file"].as_str()).collect();
    assert!(
        sources.contains("civil-household.jsonl") && sources.contains("deaths.jsonl") && sources.contains("revocations.jsonl"),
        "{sources:?}"
    );
    // Unmasked: refused without who and why, before anything is shown; with them, shown and
    // recorded in the audit log under the person's keyed hash.
    let (code, out, err) = common::run_doudi_env(&["recipients", "show", "220102195003070015", "--json", "--unmasked"], &env);
    assert_eq!((code, out.as_str()), (2, ""), "{err}");
    assert!(err.contains("--actor"), "{err}");
    let (code, out, err) =
        common::run_doudi_env(&["recipients", "show", "220102195003070015", "--json", "--unmasked", "--actor", "caseworker-17"], &env);
    assert_eq!((code, out.as_str()), (2, ""), "{err}");
    assert!(err.contains("--purpose"), "{err}");
    let (code, out, _) = common::run_doudi_env(
        &[
            "recipients",
            "show",
            "220102195003070015",
            "--json",
            "--unmasked",
            "--actor",
            "caseworker-17",
            "--purpose",
            "复核 periodic review",
        ],
        &env,
    );
    assert_eq!(code, 0);
    assert!(out.contains("220102195003070015"));
    let (code, out, _) = common::run_doudi_env(&["audit", "list", "--person", "220102195003070015", "--json"], &env);
    assert_eq!(code, 0);
    let entries: Vec<Value> = out.lines().map(|l| serde_json::from_str(l).unwrap()).collect();
    // The person's entries: the death's task cancelled by the revocation, then the caseworker's look.
    let actions: Vec<&str> = entries.iter().map(|e| e["action"].as_str().unwrap()).collect();
    assert_eq!(actions, ["task.cancel", "recipients show --unmasked"], "{out}");
    assert_eq!((entries[1]["actor"].as_str(), entries[1]["purpose"].as_str()), (Some("caseworker-17"), Some("复核 periodic review")));
    assert!(!out.contains("220102195003070015") && !out.contains("19500307"), "the log holds no ID number");
    let (code, _, _) = common::run_doudi_env(&["audit", "verify"], &env);
    assert_eq!(code, 0);
    let _ = db;
}

/// Every outbound record is a CloudEvent from the matcher whose id is the payload's id, keyed by the
/// HMAC of a person, never the ID number.
fn check_envelopes(records: &[common::Record]) {
    let mut ids = BTreeSet::new();
    for r in records {
        let id = r.payload.get("event_id").or_else(|| r.payload.get("task_id")).and_then(Value::as_str).unwrap();
        assert_eq!(r.headers.get("ce_id").map(String::as_str), Some(id));
        assert_eq!(r.headers.get("ce_source").map(String::as_str), Some("doudi://matcher"));
        let key = r.key.as_deref().unwrap();
        assert_eq!(key.len(), 64);
        assert!(key.chars().all(|c| c.is_ascii_hexdigit()));
        assert!(ids.insert(id.to_string()), "one distinct ce_id per change");
    }
}

const STAGE_1: [&str; 46] = [
    "education granted student_aid 2201**********003X JL-220102-2019-000124 primary",
    "education granted student_aid 2208**********0731 JL-220802-2019-000507 senior",
    "housing granted housing_assistance 2201**********0029 JL-220102-2019-000124 dibao",
    "housing granted housing_assistance 2208**********0114 JL-220802-2019-000507 dibao",
    "hrss granted employment_assistance 2201**********0029 JL-220102-2019-000124",
    "hrss granted employment_assistance 2201**********0215 JL-220104-2019-000201",
    "hrss granted employment_assistance 2201**********0226 JL-220104-2019-000201",
    "hrss granted employment_assistance 2202**********0315 JL-220202-2019-000310",
    "hrss granted employment_assistance 2202**********0424 JL-220202-2019-000310",
    "hrss granted employment_assistance 2208**********0114 JL-220802-2019-000507",
    "hrss granted employment_assistance 2208**********0625 JL-220802-2019-000507",
    "hrss granted zero_employment_family 2201**********0215 JL-220104-2019-000201",
    "hrss granted zero_employment_family 2202**********0315 JL-220202-2019-000310",
    "hrss granted zero_employment_family 2208**********0114 JL-220802-2019-000507",
    "medical granted medical_assistance_class1 2201**********0015 JL-220102-2019-000123",
    "medical granted medical_assistance_class1 2224**********0516 JL-222401-2019-000402",
    "medical granted medical_assistance_class2 2201**********0029 JL-220102-2019-000124",
    "medical granted medical_assistance_class2 2201**********003X JL-220102-2019-000124",
    "medical granted medical_assistance_class2 2201**********0113 JL-220102-2019-000124",
    "medical granted medical_assistance_class2 2202**********0315 JL-220202-2019-000310",
    "medical granted medical_assistance_class2 2202**********0424 JL-220202-2019-000310",
    "medical granted medical_assistance_class2 2208**********0114 JL-220802-2019-000507",
    "medical granted medical_assistance_class2 2208**********0625 JL-220802-2019-000507",
    "medical granted medical_assistance_class2 2208**********0731 JL-220802-2019-000507",
    "medical granted medical_assistance_class2 2224**********0536 JL-222401-2019-000402",
    "medical granted medical_assistance_class3 2201**********0215 JL-220104-2019-000201",
    "medical granted medical_assistance_class3 2201**********0226 JL-220104-2019-000201",
    "medical granted premium_subsidy_fixed 2201**********0029 JL-220102-2019-000124 150.00",
    "medical granted premium_subsidy_fixed 2201**********003X JL-220102-2019-000124 150.00",
    "medical granted premium_subsidy_fixed 2201**********0113 JL-220102-2019-000124 150.00",
    "medical granted premium_subsidy_fixed 2202**********0315 JL-220202-2019-000310 150.00",
    "medical granted premium_subsidy_fixed 2202**********0424 JL-220202-2019-000310 150.00",
    "medical granted premium_subsidy_fixed 2208**********0114 JL-220802-2019-000507 150.00",
    "medical granted premium_subsidy_fixed 2208**********0625 JL-220802-2019-000507 150.00",
    "medical granted premium_subsidy_fixed 2208**********0731 JL-220802-2019-000507 150.00",
    "medical granted premium_subsidy_fixed 2224**********0536 JL-222401-2019-000402 150.00",
    "medical granted premium_subsidy_full 2201**********0015 JL-220102-2019-000123",
    "medical granted premium_subsidy_full 2224**********0516 JL-222401-2019-000402",
    "status JL-220102-2019-000123 none→tekun 1084.00",
    "status JL-220102-2019-000124 none→dibao 904.50",
    "status JL-220104-2019-000201 none→low_income 0.00",
    "status JL-220202-2019-000310 none→dibao 660.00",
    "status JL-220802-2019-000507 none→dibao 1463.00",
    "status JL-222401-2019-000402 none→dibao 1488.00",
    "task cancel_dibao_refused_referrals 2208**********0114 JL-220802-2019-000507",
    "union granted hardship_classification 2208**********0114 JL-220802-2019-000507 dibao",
];

/// `doudi policy apply` on PostgreSQL with a broker: households decided under the standards before
/// 2020-07-01 are re-evaluated under policy/jilin.toml, and every delta it writes is published by
/// the command itself (beside the re-evaluation), each once, with nothing left queued. Then
/// `doudi review` a year on, the same way.
#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn policy_apply_publishes_every_delta_it_writes() {
    const HOUSEHOLDS: u32 = 300;
    let x = Exchange::new().await;
    // policy/jilin.toml without the prefectures' 2020-07-01 standards, as the version before it.
    let shipped = std::fs::read_to_string(root().join("policy/jilin.toml")).unwrap();
    let mut before = String::new();
    let mut block = String::new();
    let keep = |block: &str, before: &mut String| {
        let changed =
            block.starts_with("[[dibao_standard]]") && block.contains("from = \"2020-07-01\"") && !block.contains("region = \"220000\"");
        if !changed {
            before.push_str(block);
        }
    };
    for line in shipped.split_inclusive('\n') {
        if line.starts_with('[') {
            keep(&block, &mut before);
            block.clear();
        }
        block.push_str(line);
    }
    keep(&block, &mut before);
    let before = before.replace("version = \"2020-07-01.1\"", "version = \"2019-07-01.1\"");
    assert!(before.len() < shipped.len(), "the 2020-07-01 standards were taken out");
    let dir = tempfile::tempdir().unwrap();
    let before_path = dir.path().join("jilin-before-2020-07.toml");
    std::fs::write(&before_path, before).unwrap();

    common::synthetic::produce(&x.suffix, HOUSEHOLDS).await;
    let mut args = x.match_args("apply");
    args.extend(["--policy".to_string(), before_path.display().to_string()]);
    let args: Vec<&str> = args.iter().map(String::as_str).collect();
    let env = x.env();
    let env: Vec<(&str, &str)> = env.iter().map(|(k, v)| (*k, v.as_str())).collect();
    let (code, _, stderr) = common::run_doudi_env(&args, &env);
    assert_eq!(code, 0, "doudi match failed: {stderr}");
    x.deltas().await;

    let suffix = format!(".{}", x.suffix);
    let policy = root().join("policy/jilin.toml").display().to_string();
    let schemas = root().join("schemas").display().to_string();
    // A re-evaluating command (`policy apply`, `review`) on this exchange's topics.
    let reevaluating = |command: &[&str]| -> Vec<String> {
        let shared = ["--topic-prefix", "test.", "--topic-suffix", &suffix, "--schemas", &schemas, "--chunk-size", "50"];
        command.iter().chain(shared.iter()).map(|s| s.to_string()).collect()
    };
    let apply = reevaluating(&["policy", "apply", "--policy", &policy, "--actor", "policy-officer-3"]);
    let apply: Vec<&str> = apply.iter().map(String::as_str).collect();
    let (code, stdout, stderr) = common::run_doudi_env(&apply, &env);
    assert_eq!(code, 0, "doudi policy apply failed: {stderr}");
    let (_, audited, _) = common::run_doudi_env(&["audit", "list", "--actor", "policy-officer-3", "--json"], &env);
    let audited: Vec<Value> = audited.lines().map(|l| serde_json::from_str(l).unwrap()).collect();
    assert_eq!(audited.len(), 1, "the policy change is in the audit log");
    assert_eq!(audited[0]["action"], "policy apply");
    let summary: Value = serde_json::from_str(stdout.trim()).unwrap_or_else(|e| panic!("summary is JSON ({e}): {stdout}"));
    assert_eq!(summary["households"], HOUSEHOLDS, "{summary}");
    let outbox = summary["outbox"].as_u64().unwrap();
    assert!(outbox > 0, "the new standards change decisions: {summary}");
    assert_eq!(summary["published"].as_u64().unwrap(), outbox, "the command publishes what it wrote: {summary}");

    let db = doudi::db::Database::connect(&x.pg.settings).await.unwrap();
    assert_eq!(unsent(&db).await, 0, "nothing left queued");
    let (_, records) = x.deltas().await;
    let ce_ids: BTreeSet<&String> = records.iter().filter_map(|r| r.headers.get("ce_id")).collect();
    assert_eq!(records.len() as u64, outbox, "each delta arrives");
    assert_eq!(ce_ids.len(), records.len(), "each once");

    // Applied again: nothing to re-evaluate, nothing published.
    let (code, stdout, stderr) = common::run_doudi_env(&apply, &env);
    assert_eq!(code, 0, "{stderr}");
    let again: Value = serde_json::from_str(stdout.trim()).unwrap();
    assert_eq!(again["published"], 0, "{again}");

    // The daily calendar review (`doudi review`, the chart's CronJob) on the same database, a year
    // on: the households whose periodic review fell due get a task each, and the command publishes
    // what it wrote, each event once, with nothing left queued.
    let review = reevaluating(&["review", "--date", "2021-07-01"]);
    let review: Vec<&str> = review.iter().map(String::as_str).collect();
    let (code, stdout, stderr) = common::run_doudi_env(&review, &env);
    assert_eq!(code, 0, "doudi review failed: {stderr}");
    let reviewed: Value = serde_json::from_str(stdout.trim()).unwrap_or_else(|e| panic!("summary is JSON ({e}): {stdout}"));
    let written = reviewed["outbox"].as_u64().unwrap();
    assert!(reviewed["periodic_reviews"].as_u64().unwrap() > 0, "a year on, reviews are due: {reviewed}");
    assert!(written > 0, "{reviewed}");
    assert_eq!(reviewed["published"].as_u64().unwrap(), written, "the command publishes what it wrote: {reviewed}");
    assert_eq!(unsent(&db).await, 0, "nothing left queued after the review");
    let (lines, records) = x.deltas().await;
    let ce_ids: BTreeSet<&String> = records.iter().filter_map(|r| r.headers.get("ce_id")).collect();
    assert_eq!(records.len() as u64, written, "each event of the review arrives");
    assert_eq!(ce_ids.len(), records.len(), "each once");
    let tasks = lines.iter().filter(|l| l.starts_with("task periodic_review_due ")).count() as u64;
    assert_eq!(tasks, reviewed["periodic_reviews"].as_u64().unwrap(), "a review task per household due: {lines:?}");
    // The same day again: the tasks are open already, nothing new is published.
    let (code, stdout, stderr) = common::run_doudi_env(&review, &env);
    assert_eq!(code, 0, "{stderr}");
    let again: Value = serde_json::from_str(stdout.trim()).unwrap();
    assert_eq!(again["published"], 0, "{again}");
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn two_instances_share_the_partitions_and_apply_each_event_once() {
    const HOUSEHOLDS: u32 = 400;
    let x = Exchange::new().await;
    common::synthetic::produce(&x.suffix, HOUSEHOLDS).await;
    let mut args = x.match_args("pair");
    args.extend(["--batch-size".to_string(), "40".to_string()]);
    let spawn = || x.matcher_command(&args).stdout(std::process::Stdio::piped()).spawn().unwrap();
    // Two members of one group at once: the partitions are split, and whenever one leaves, the
    // other claims its partitions with a new epoch.
    let a = spawn();
    std::thread::sleep(Duration::from_millis(300));
    let b = spawn();
    let mut events = 0;
    for child in [a, b] {
        let out = child.wait_with_output().unwrap();
        assert!(out.status.success());
        let summary: Value = serde_json::from_slice(&out.stdout).unwrap();
        events += summary["events"].as_u64().unwrap();
    }
    let db = doudi::db::Database::connect(&x.pg.settings).await.unwrap();
    let processed: i64 = sqlx::query("SELECT COUNT(*) AS n FROM processed_events").fetch_one(db.pool()).await.unwrap().get("n");
    assert_eq!(processed, i64::from(HOUSEHOLDS) * 2, "every event applied exactly once between the two");
    assert!(events >= u64::from(HOUSEHOLDS) * 2);
    let epochs: i64 = sqlx::query("SELECT MAX(epoch) AS n FROM consumer_offsets").fetch_one(db.pool()).await.unwrap().get("n");
    assert!(epochs >= 1);
    let (decisions, entitlements, facts) = common::synthetic::final_state(&x.pg.settings.url).await;
    let (b_decisions, b_entitlements, b_facts) = common::synthetic::clean_reference(&x.suffix).await;
    assert_eq!(decisions, b_decisions);
    assert_eq!(entitlements, b_entitlements);
    assert_eq!(facts, b_facts);
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn sigkill_mid_batch_repeatedly_then_restart_equals_a_clean_run() {
    const HOUSEHOLDS: u32 = 600;
    let x = Exchange::new().await;
    common::synthetic::produce(&x.suffix, HOUSEHOLDS).await;
    let crashed = x.pg.settings.url.clone();
    let db = doudi::db::Database::connect(&x.pg.settings).await.unwrap();
    // A short session timeout, so that a killed member leaves the group quickly.
    let session = [("DOUDI_KAFKA_OPTIONS_SESSION_TIMEOUT_MS", "6000"), ("DOUDI_DATABASE_URL", crashed.as_str())];
    let mut kills = 0;
    let mut args = x.match_args("crash");
    args.retain(|a| a != "--until-idle");
    args.extend(["--batch-size".to_string(), "50".to_string()]);
    for round in 0..4u64 {
        let before: i64 = sqlx::query("SELECT COUNT(*) AS n FROM processed_events").fetch_one(db.pool()).await.unwrap().get("n");
        let mut child = x.matcher_command(&args).spawn().unwrap();
        // Wait until it is applying, then kill it at a moment that varies per round.
        let started = std::time::Instant::now();
        loop {
            let now: i64 = sqlx::query("SELECT COUNT(*) AS n FROM processed_events").fetch_one(db.pool()).await.unwrap().get("n");
            if now > before || started.elapsed() > Duration::from_secs(40) {
                break;
            }
            tokio::time::sleep(Duration::from_millis(50)).await;
        }
        tokio::time::sleep(Duration::from_millis(37 * round + 20)).await;
        child.kill().unwrap(); // SIGKILL
        child.wait().unwrap();
        kills += 1;
    }
    let applied_before_restart: i64 =
        sqlx::query("SELECT COUNT(*) AS n FROM processed_events").fetch_one(db.pool()).await.unwrap().get("n");
    assert!(applied_before_restart < i64::from(HOUSEHOLDS) * 2, "the kills came before the end ({applied_before_restart} applied)");
    // Restart and finish.
    let env: Vec<(&str, &str)> = session.to_vec();
    let args_idle = x.match_args("crash");
    let args_idle: Vec<&str> = args_idle.iter().map(String::as_str).collect();
    let (code, out, err) = common::run_doudi_env(&args_idle, &env);
    assert_eq!(code, 0, "{err}");
    let summary: Value = serde_json::from_str(out.trim()).unwrap();
    assert_eq!(summary["invalid"].as_u64(), Some(0));

    let (b_decisions, b_entitlements, b_facts) = common::synthetic::clean_reference(&x.suffix).await;
    let (a_decisions, a_entitlements, a_facts) = common::synthetic::final_state(&crashed).await;
    assert_eq!(a_decisions.len(), HOUSEHOLDS as usize);
    assert_eq!(a_decisions, b_decisions, "after {kills} kills the decisions equal a clean run");
    assert_eq!(a_entitlements, b_entitlements);
    assert_eq!(a_facts, b_facts);
    let processed: i64 = sqlx::query("SELECT COUNT(*) AS n FROM processed_events").fetch_one(db.pool()).await.unwrap().get("n");
    assert_eq!(processed, i64::from(HOUSEHOLDS) * 2, "every event applied exactly once");

    // Every outbox row reached its topic at least once, and nothing else did: exactly one distinct
    // ce_id per change, duplicates (a crash between publishing and marking) allowed.
    let outbox: BTreeSet<String> =
        sqlx::query("SELECT ce_id FROM outbox").fetch_all(db.pool()).await.unwrap().iter().map(|r| r.get::<String, _>("ce_id")).collect();
    let unsent: i64 = sqlx::query("SELECT COUNT(*) AS n FROM outbox_pending").fetch_one(db.pool()).await.unwrap().get("n");
    assert_eq!(unsent, 0);
    let published = x.reader.until_quiet(Duration::from_secs(5)).await;
    let distinct: BTreeSet<String> = published.iter().filter_map(|r| r.headers.get("ce_id").cloned()).collect();
    assert_eq!(distinct, outbox, "published ce_ids are exactly the committed outbox rows");
    assert!(published.len() >= outbox.len());
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn the_running_matcher_serves_its_metrics() {
    let x = Exchange::new().await;
    x.feed("civil-household", &root().join("connectors/samples/civil-household.jsonl")).await;
    let port = common::free_port();
    let mut args = x.match_args("metrics");
    args.retain(|a| a != "--until-idle");
    let mut daemon = x.matcher_command(&args).env("DOUDI_HTTP_PORT", port.to_string()).spawn().unwrap();
    let addr = format!("127.0.0.1:{port}");
    let mut metrics = String::new();
    for _ in 0..120 {
        tokio::time::sleep(Duration::from_millis(250)).await;
        if tokio::net::TcpStream::connect(&addr).await.is_err() {
            continue;
        }
        metrics = common::http_get(&addr, "/metrics").await.1;
        if metrics.contains("doudi_matcher_end_to_end_seconds")
            && metrics.contains("doudi_review_tasks_overdue{kind=\"cancel_dibao_refused_referrals\"} 1")
        {
            break;
        }
    }
    daemon.kill().unwrap();
    daemon.wait().unwrap();
    assert!(metrics.contains("doudi_matcher_events_total{outcome=\"applied\"} 6"), "{metrics}");
    // The caseworkers' queue: 000507's J1 task of 2019-12-05 is long past its deadline.
    assert!(metrics.contains("doudi_review_tasks_open{kind=\"cancel_dibao_refused_referrals\"} 1"), "{metrics}");
    assert!(metrics.contains("doudi_review_tasks_overdue{kind=\"cancel_dibao_refused_referrals\"} 1"), "{metrics}");
    assert!(metrics.contains("doudi_review_tasks_overdue{kind=\"identity_conflict\"} 0"), "{metrics}");
    assert!(metrics.contains("doudi_matcher_batch_seconds_count"), "{metrics}");
    assert!(metrics.contains("doudi_matcher_entitlement_changes_total{agency=\"medical\",change=\"granted\"}"), "{metrics}");
    assert!(metrics.contains("doudi_matcher_end_to_end_seconds_count{topic="), "{metrics}");
    assert!(!metrics.contains("220102"), "no ID numbers in metrics");
}

/// `n` outbox rows for `topic`, as the matcher writes them: keys cycle over 40 people, payloads
/// carry their sequence number. Returns the ce_ids in id order.
async fn outbox_rows(db: &doudi::db::Database, topic: &str, n: usize, payload_bytes: usize) -> Vec<String> {
    let mut ce_ids = Vec::with_capacity(n);
    for chunk in (0..n).collect::<Vec<_>>().chunks(2_000) {
        let rows: Vec<Value> = chunk
            .iter()
            .map(|i| {
                let ce_id = uuid::Uuid::new_v4().to_string();
                ce_ids.push(ce_id.clone());
                json!({"topic": topic, "message_key": format!("person-{}", i % 40), "ce_id": ce_id, "ce_type": "test.relay",
                       "dataschema": "urn:test", "payload": json!({"n": i, "pad": "x".repeat(payload_bytes)}).to_string(),
                       "source_time": "2026-01-01T00:00:00.000Z", "created_at": "2026-01-01T00:00:00.000Z"})
            })
            .collect();
        sqlx::query(
            "INSERT INTO outbox (topic, message_key, ce_id, ce_type, dataschema, payload, source_time, created_at) \
             SELECT topic, message_key, ce_id, ce_type, dataschema, payload, source_time, created_at \
             FROM json_populate_recordset(NULL::outbox, CAST($1 AS json))",
        )
        .bind(Value::Array(rows).to_string())
        .execute(db.pool())
        .await
        .unwrap();
    }
    ce_ids
}

/// A fresh database and a topic of its own for a relay test.
async fn relay_setup(name: &str, partitions: i32) -> (common::FreshPostgres, doudi::db::Database, String) {
    let pg = common::fresh_postgres().await;
    let db = doudi::db::Database::connect(&pg.settings).await.unwrap();
    let topic = common::unique(name);
    doudi::kafka::ensure_topic(&common::kafka(), &topic, partitions, 1).await.unwrap();
    (pg, db, topic)
}

async fn unsent(db: &doudi::db::Database) -> i64 {
    sqlx::query("SELECT COUNT(*) AS n FROM outbox_pending").fetch_one(db.pool()).await.unwrap().get("n")
}

/// The relay publishes in pipelined rounds of 5,000: more than two rounds of rows all arrive, each
/// once, in id order per key, and are all marked sent; a second run has nothing to do.
#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn relay_publishes_every_round_in_order_and_marks_it_sent() {
    let (_pg, db, topic) = relay_setup("test.relay", 3).await;
    let reader = common::Reader::new(&[topic.as_str()]);
    let ce_ids = outbox_rows(&db, &topic, 12_345, 20).await;
    let producer = doudi::kafka::idempotent_producer(&common::kafka()).unwrap();

    assert_eq!(doudi::matcher::relay(&db, &producer).await.unwrap(), 12_345);
    assert_eq!(unsent(&db).await, 0, "every acknowledged row is marked sent");
    assert_eq!(doudi::matcher::relay(&db, &producer).await.unwrap(), 0, "nothing left to publish");

    let records = reader.until_quiet(Duration::from_secs(5)).await;
    let published: Vec<String> = records.iter().filter_map(|r| r.headers.get("ce_id").cloned()).collect();
    assert_eq!(published.len(), ce_ids.len(), "each row once");
    assert_eq!(published.iter().collect::<BTreeSet<_>>(), ce_ids.iter().collect::<BTreeSet<_>>());
    let mut last: std::collections::HashMap<String, i64> = std::collections::HashMap::new();
    for r in &records {
        let n = r.payload["n"].as_i64().unwrap();
        let previous = last.insert(r.key.clone().unwrap(), n);
        assert!(previous.is_none_or(|p| p < n), "rows of one key arrive in id order");
    }
}

/// On SQLite (the demo's database, a pool of one connection) the relay gives its connection back
/// between rounds, so that marking a round sent does not wait for it: more than one round is
/// published and marked sent.
#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn relay_on_sqlite_publishes_more_than_a_round_with_one_connection() {
    let (settings, _dir) = common::sqlite();
    let db = doudi::db::Database::connect(&settings).await.unwrap();
    let topic = common::unique("test.relay.sqlite");
    doudi::kafka::ensure_topic(&common::kafka(), &topic, 1, 1).await.unwrap();
    let reader = common::Reader::new(&[topic.as_str()]);
    let rows: Vec<Value> = (0..6_000)
        .map(|i| json!({"topic": topic, "key": format!("person-{}", i % 40), "ce_id": uuid::Uuid::new_v4().to_string(), "payload": json!({"n": i}).to_string()}))
        .collect();
    sqlx::query(
        "INSERT INTO outbox (topic, message_key, ce_id, ce_type, dataschema, payload, source_time, created_at) \
         SELECT json_extract(value, '$.topic'), json_extract(value, '$.key'), json_extract(value, '$.ce_id'), 'test.relay', 'urn:test', \
         json_extract(value, '$.payload'), '2026-01-01T00:00:00.000Z', '2026-01-01T00:00:00.000Z' FROM json_each($1)",
    )
    .bind(Value::Array(rows).to_string())
    .execute(db.pool())
    .await
    .unwrap();
    let producer = doudi::kafka::idempotent_producer(&common::kafka()).unwrap();

    let published = tokio::time::timeout(Duration::from_secs(60), doudi::matcher::relay(&db, &producer)).await;
    assert_eq!(published.expect("the relay does not wait for its own connection").unwrap(), 6_000);
    assert_eq!(unsent(&db).await, 0, "every acknowledged row is marked sent");
    assert_eq!(reader.until_quiet(Duration::from_secs(5)).await.len(), 6_000, "each row once");
}

/// Beside a re-evaluation (`policy apply`, `review`), the relay publishes once a round is queued,
/// and after the work ends publishes what its last chunk wrote: every row once, in id order per
/// key, none left queued.
#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn relay_during_publishes_rounds_as_they_commit_and_the_rest_after() {
    let (_pg, db, topic) = relay_setup("test.relay-during", 3).await;
    let reader = common::Reader::new(&[topic.as_str()]);
    let producer = doudi::kafka::idempotent_producer(&common::kafka()).unwrap();
    let work = async {
        let mut ce_ids = Vec::new();
        for _ in 0..3 {
            // More than a round (5,000 rows), which is what starts a run while the work goes on.
            ce_ids.extend(outbox_rows(&db, &topic, 6_000, 20).await);
            // Published while the work goes on: the queue empties before the next chunk.
            let deadline = std::time::Instant::now() + Duration::from_secs(60);
            while unsent(&db).await > 0 {
                assert!(std::time::Instant::now() < deadline, "a committed chunk is published while the work goes on");
                tokio::time::sleep(Duration::from_millis(50)).await;
            }
        }
        // The last chunk, less than a round, commits as the work ends.
        ce_ids.extend(outbox_rows(&db, &topic, 2_500, 20).await);
        ce_ids
    };
    let (ce_ids, published) = doudi::matcher::relay_during(&db, &producer, work).await;
    assert_eq!(published.unwrap(), 20_500);
    assert_eq!(unsent(&db).await, 0, "nothing the work wrote is left queued");

    let records = reader.until_quiet(Duration::from_secs(5)).await;
    let position: std::collections::HashMap<&String, usize> = ce_ids.iter().enumerate().map(|(i, c)| (c, i)).collect();
    let mut last: std::collections::HashMap<String, usize> = std::collections::HashMap::new();
    for r in &records {
        let at = position[r.headers.get("ce_id").unwrap()];
        let previous = last.insert(r.key.clone().unwrap(), at);
        assert!(previous.is_none_or(|p| p < at), "rows of one key arrive in id order, each once");
    }
    assert_eq!(records.len(), ce_ids.len());
}

/// While another process holds the relay's lock, a relay publishes nothing and returns at once.
#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn relay_leaves_the_rows_to_the_process_holding_its_lock() {
    use sqlx::Connection;
    let (pg, db, topic) = relay_setup("test.relay-lock", 1).await;
    outbox_rows(&db, &topic, 10, 0).await;
    let producer = doudi::kafka::idempotent_producer(&common::kafka()).unwrap();

    let mut other = sqlx::PgConnection::connect(&pg.settings.url).await.unwrap();
    sqlx::query("SELECT pg_advisory_lock($1)").bind(doudi::matcher::worker::RELAY_LOCK).execute(&mut other).await.unwrap();
    assert_eq!(doudi::matcher::relay(&db, &producer).await.unwrap(), 0);
    assert_eq!(unsent(&db).await, 10);
    sqlx::query("SELECT pg_advisory_unlock($1)").bind(doudi::matcher::worker::RELAY_LOCK).execute(&mut other).await.unwrap();
    assert_eq!(doudi::matcher::relay(&db, &producer).await.unwrap(), 10);
    assert_eq!(unsent(&db).await, 0);
}

/// Records the broker refuses stop the run: nothing refused is marked sent, and once the broker
/// accepts again the next run publishes every row.
#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn relay_stops_at_refused_records_and_publishes_them_later() {
    use rdkafka::admin::{AdminOptions, AlterConfig, ResourceSpecifier};
    let set = |topic: String, value: &'static str| async move {
        let admin = doudi::kafka::admin(&common::kafka()).unwrap();
        let change = AlterConfig::new(ResourceSpecifier::Topic(&topic)).set("max.message.bytes", value);
        for result in admin.alter_configs([&change], &AdminOptions::new()).await.unwrap() {
            result.unwrap();
        }
    };
    let (_pg, db, topic) = relay_setup("test.relay-refused", 1).await;
    let reader = common::Reader::new(&[topic.as_str()]);
    outbox_rows(&db, &topic, 7_000, 400).await;
    set(topic.clone(), "200").await;
    let mut kafka = common::kafka();
    kafka.options.insert("message.timeout.ms".into(), "2000".into());
    let producer = doudi::kafka::idempotent_producer(&kafka).unwrap();

    let published = doudi::matcher::relay(&db, &producer).await.unwrap();
    assert_eq!(published, 0, "the broker refused every record");
    assert_eq!(unsent(&db).await, 7_000, "nothing refused is marked sent");

    set(topic.clone(), "1048588").await;
    let producer = doudi::kafka::idempotent_producer(&common::kafka()).unwrap();
    assert_eq!(doudi::matcher::relay(&db, &producer).await.unwrap(), 7_000);
    assert_eq!(unsent(&db).await, 0);
    let distinct: BTreeSet<String> =
        reader.until_quiet(Duration::from_secs(5)).await.iter().filter_map(|r| r.headers.get("ce_id").cloned()).collect();
    assert_eq!(distinct.len(), 7_000);
}

/// Pruning deletes the sent outbox rows written before the retention, oldest first and in more than
/// one statement, and nothing else: not unsent rows, not recent ones, and not old ones behind a
/// recent one (they wait for a later pass). Reconciling from the outbox counts the same rows published
/// before and after.
#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn pruning_the_outbox_keeps_unsent_and_recent_rows_and_the_reconciliation() {
    let pg = common::fresh_postgres().await;
    let db = doudi::db::Database::connect(&pg.settings).await.unwrap();
    let ce_ids = outbox_rows(&db, "test.prune", 10_009, 10).await;
    let first: i64 = sqlx::query("SELECT MIN(id) AS id FROM outbox").fetch_one(db.pool()).await.unwrap().get("id");
    let now = chrono::Utc::now();
    let old = doudi::db::rfc3339(now - chrono::Duration::days(40));
    let recent = doudi::db::rfc3339(now - chrono::Duration::days(1));
    // Every row was written 40 days ago but 10,006, written yesterday; all were sent but 10,003 and
    // 10,008. Each is an entitlement event of household JL-1, as the matcher writes them (the
    // reconciliation finds a delivery's outbox row by household and event id).
    sqlx::query("UPDATE outbox SET household_id = 'JL-1', created_at = CASE WHEN id = $1 THEN $2 ELSE $3 END")
        .bind(first + 10_006)
        .bind(&recent)
        .bind(&old)
        .execute(db.pool())
        .await
        .unwrap();
    sqlx::query("DELETE FROM outbox_pending WHERE id NOT IN ($1, $2)")
        .bind(first + 10_003)
        .bind(first + 10_008)
        .execute(db.pool())
        .await
        .unwrap();
    let day = chrono::NaiveDate::from_ymd_opt(2026, 1, 1).unwrap();
    let deliveries: Vec<Value> = ce_ids
        .iter()
        .map(|c| {
            json!({"ce_id": c, "agency": "medical", "kind": "premium_subsidy_fixed", "change": "granted", "household_id": "JL-1",
                   "id_number": "220102195003070015", "amount": "150.00", "effective_date": "2026-01-01", "created_at": &old,
                   "created_on": day.to_string(), "state": "applied", "attempts": 0, "updated_at": &old})
        })
        .collect();
    sqlx::query("INSERT INTO deliveries SELECT * FROM json_populate_recordset(NULL::deliveries, CAST($1 AS json))")
        .bind(Value::Array(deliveries).to_string())
        .execute(db.pool())
        .await
        .unwrap();
    let published = |lines: Vec<doudi::deliver::report::ControlTotals>| {
        assert_eq!(lines.len(), 1);
        (lines[0].database.count, lines[0].published.count, lines[0].published.amount.to_string())
    };
    let before = published(doudi::deliver::report::reconcile(&db, day, None).await.unwrap());
    assert_eq!(before, (10_009, 10_007, "1501050.00".to_string()));

    let pruned = doudi::matcher::prune_outbox(&db, Duration::from_secs(30 * 86_400)).await.unwrap();
    assert_eq!(pruned, 10_005, "rows 0..10,003, 10,004 and 10,005");
    let left: Vec<i64> = sqlx::query("SELECT id FROM outbox ORDER BY id")
        .fetch_all(db.pool())
        .await
        .unwrap()
        .iter()
        .map(|r| r.get::<i64, _>("id") - first)
        .collect();
    assert_eq!(left, vec![10_003, 10_006, 10_007, 10_008]);
    assert_eq!(doudi::matcher::prune_outbox(&db, Duration::from_secs(30 * 86_400)).await.unwrap(), 0);
    assert_eq!(published(doudi::deliver::report::reconcile(&db, day, None).await.unwrap()), before);
}

/// Regression: a message without a CloudEvents envelope or a JSON payload was skipped with a log
/// line only. It goes to the feed's dead-letter topic with its reason and offset, the rest of the
/// batch is applied, and the matcher's offsets pass it.
#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn unusable_inbound_messages_become_dead_letters_and_the_batch_goes_on() {
    use rdkafka::producer::FutureRecord;
    let x = Exchange::new().await;
    let topic = format!("test.{}.{}", doudi::matcher::Feed::Household.topic(), x.suffix);
    let dlq = doudi::topics::dead_letter_topic(&topic);
    doudi::kafka::ensure_topic(&common::kafka(), &dlq, 1, 1).await.unwrap();
    let dead = common::Reader::new(&[dlq.as_str()]);
    let producer = doudi::kafka::idempotent_producer(&common::kafka()).unwrap();
    let headers = doudi::envelope::Envelope::new("doudi://test", "t", "t", "1", &json!({}), chrono::Utc::now()).to_headers(&[]);
    for record in [
        FutureRecord::to(&topic).key("k1").payload("no envelope at all"),
        FutureRecord::to(&topic).key("k2").payload("{not json").headers(headers),
    ] {
        producer.send(record, Duration::from_secs(10)).await.map_err(|(e, _)| e).unwrap();
    }
    x.feed("civil-household", &root().join("connectors/samples/civil-household.jsonl")).await;
    let summary = x.run_matcher("unusable");
    assert_eq!(summary["unusable"].as_u64(), Some(2), "{summary}");
    assert!(summary["applied"].as_u64().unwrap_or(0) > 0, "the rest of the batch is applied: {summary}");
    // The feed's own dead letters (the connector's bad sample rows) are on the same topic.
    let letters = match_dead_letters(&dead).await;
    let mut reasons: Vec<&str> = letters.iter().map(|r| r.headers["reason"].as_str()).collect();
    reasons.sort_unstable();
    assert_eq!(reasons, ["the message has no CloudEvents headers", "the payload is not JSON"], "{letters:?}");
    assert!(letters.iter().all(|r| r.headers["error_code"] == "unusable" && r.headers.contains_key("source_offset")));
    // Run again: nothing is read twice, no dead letter is sent again.
    let again = x.run_matcher("unusable");
    assert_eq!(again["unusable"].as_u64(), Some(0), "{again}");
    assert!(dead.until_quiet(Duration::from_secs(3)).await.is_empty());
}

/// Regression: an event the database refuses (a NUL character in a name: PostgreSQL stores no
/// NUL in text) failed its whole batch, and the matcher retried that batch for ever while lag
/// grew. Now the batch is applied event by event within savepoints, the refused event goes to the
/// feed's dead-letter topic with the SQLSTATE (never the value), and everything else is applied.
#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn an_event_the_database_refuses_is_set_aside_and_the_batch_goes_on() {
    let x = Exchange::new().await;
    let topic = format!("test.{}.{}", doudi::matcher::Feed::Household.topic(), x.suffix);
    let dlq = doudi::topics::dead_letter_topic(&topic);
    doudi::kafka::ensure_topic(&common::kafka(), &dlq, 1, 1).await.unwrap();
    let dead = common::Reader::new(&[dlq.as_str()]);
    let sample = std::fs::read_to_string(root().join("connectors/samples/civil-household.jsonl")).unwrap();
    let poisoned = sample.replacen("\"name\": \"王某\"", "\"name\": \"王\\u0000某\"", 1);
    assert_ne!(poisoned, sample, "the sample's first member is named 王某");
    let dir = tempfile::tempdir().unwrap();
    let input = dir.path().join("civil-household.jsonl");
    std::fs::write(&input, poisoned).unwrap();
    x.feed("civil-household", &input).await;
    let summary = x.run_matcher("refused");
    assert_eq!(summary["unusable"].as_u64(), Some(1), "{summary}");
    assert!(summary["applied"].as_u64().unwrap_or(0) > 0, "the rest of the batch is applied: {summary}");
    let letters = match_dead_letters(&dead).await;
    assert_eq!(letters.len(), 1, "{letters:?}");
    let reason = &letters[0].headers["reason"];
    assert!(reason.contains("the database refused it (SQLSTATE 22"), "{reason}");
    assert!(!reason.contains("2201") && !reason.contains('王'), "no personal data in the reason: {reason}");
    // The other households of the file are in the database; the refused one is not.
    let pool = sqlx::PgPool::connect(&x.pg.settings.url).await.unwrap();
    let households: i64 = sqlx::query_scalar("SELECT COUNT(*) FROM households").fetch_one(&pool).await.unwrap();
    assert!(households > 0);
    let refused: i64 =
        sqlx::query_scalar("SELECT COUNT(*) FROM households WHERE household_id = 'JL-220102-2019-000123'").fetch_one(&pool).await.unwrap();
    assert_eq!(refused, 0, "the refused household left nothing behind (its savepoint was rolled back)");
    // Lag is back to 0: a second run reads nothing.
    let again = x.run_matcher("refused");
    assert_eq!((again["unusable"].as_u64(), again["events"].as_u64()), (Some(0), Some(0)), "{again}");
}

/// A fence forced while a matcher works: another connection claims every partition of the group
/// (the epochs bumped, as a new instance's claim does). The claim waits for the batch in flight
/// (its row locks), which commits whole; the matcher then stops applying those partitions
/// (`doudi_matcher_fenced_total`), and a second instance that joins the group applies the rest
/// from the offsets the database holds. Nothing is lost or applied twice.
#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn a_fence_forced_mid_work_stops_the_old_instance_and_the_new_one_resumes_from_the_stored_offsets() {
    const HOUSEHOLDS: u32 = 400;
    let x = Exchange::new().await;
    common::synthetic::produce(&x.suffix, HOUSEHOLDS).await;
    let mut args = x.match_args("fence");
    args.retain(|a| a != "--until-idle");
    args.extend(["--batch-size".to_string(), "20".to_string()]);
    let port = common::free_port();
    let first = x.matcher_command(&args).env("DOUDI_HTTP_PORT", port.to_string()).spawn().unwrap();
    let pool = sqlx::PgPool::connect(&x.pg.settings.url).await.unwrap();
    // Zero until the matcher has migrated the database.
    let processed = || async { sqlx::query_scalar::<_, i64>("SELECT COUNT(*) FROM processed_events").fetch_one(&pool).await.unwrap_or(0) };
    let deadline = std::time::Instant::now() + Duration::from_secs(60);
    while processed().await == 0 {
        assert!(std::time::Instant::now() < deadline, "the first matcher did not start applying");
        tokio::time::sleep(Duration::from_millis(50)).await;
    }
    let group = args[args.iter().position(|a| a == "--group").unwrap() + 1].clone();
    let bumped = sqlx::query("UPDATE consumer_offsets SET epoch = epoch + 1 WHERE consumer_group = $1")
        .bind(&group)
        .execute(&pool)
        .await
        .unwrap()
        .rows_affected();
    assert!(bumped >= 1, "the first matcher had claimed its partitions");
    let at_fence = processed().await;
    assert!(at_fence < i64::from(HOUSEHOLDS) * 2, "the fence came while work remained");
    let fenced = loop {
        let (_, metrics) = common::http_get(&format!("127.0.0.1:{port}"), "/metrics").await;
        let n: f64 = metrics
            .lines()
            .filter(|l| l.starts_with("doudi_matcher_fenced_total{"))
            .filter_map(|l| l.rsplit(' ').next()?.parse::<f64>().ok())
            .sum();
        if n >= 1.0 || std::time::Instant::now() > deadline + Duration::from_secs(30) {
            break n;
        }
        tokio::time::sleep(Duration::from_millis(200)).await;
    };
    assert!(fenced >= 1.0, "the first matcher noticed the fence");
    // The second instance joins; the group's partitions are split again and each owner applies
    // from the database's offsets.
    let second = x.matcher_command(&args).spawn().unwrap();
    let deadline = std::time::Instant::now() + Duration::from_secs(180);
    while processed().await < i64::from(HOUSEHOLDS) * 2 {
        assert!(std::time::Instant::now() < deadline, "the rest was not applied after the fence");
        tokio::time::sleep(Duration::from_millis(200)).await;
    }
    while sqlx::query_scalar::<_, i64>("SELECT COUNT(*) FROM outbox_pending").fetch_one(&pool).await.unwrap() > 0 {
        assert!(std::time::Instant::now() < deadline, "the rest was not published");
        tokio::time::sleep(Duration::from_millis(200)).await;
    }
    common::stop_by_sigterm(first, "the fenced matcher");
    common::stop_by_sigterm(second, "the second matcher");
    assert_eq!(processed().await, i64::from(HOUSEHOLDS) * 2, "every event applied exactly once");
    let (decisions, entitlements, facts) = common::synthetic::final_state(&x.pg.settings.url).await;
    let (b_decisions, b_entitlements, b_facts) = common::synthetic::clean_reference(&x.suffix).await;
    assert_eq!(decisions, b_decisions);
    assert_eq!(entitlements, b_entitlements);
    assert_eq!(facts, b_facts);
}

/// An outbound event its schema refuses: this test's copy of the schemas makes the status topic
/// refuse one household. That household's event goes to the feed's dead-letter topic with the
/// reason; the other households are applied and published, and lag returns to 0.
#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn an_event_whose_outbound_event_its_schema_refuses_is_set_aside() {
    let x = Exchange::new().await;
    let topic = format!("test.{}.{}", doudi::matcher::Feed::Household.topic(), x.suffix);
    let dlq = doudi::topics::dead_letter_topic(&topic);
    doudi::kafka::ensure_topic(&common::kafka(), &dlq, 1, 1).await.unwrap();
    let dead = common::Reader::new(&[dlq.as_str()]);
    let dir = tempfile::tempdir().unwrap();
    for entry in std::fs::read_dir(root().join("schemas")).unwrap().flatten() {
        if entry.file_type().unwrap().is_file() {
            std::fs::copy(entry.path(), dir.path().join(entry.file_name())).unwrap();
        }
    }
    let status = dir.path().join("exchange.recipient.status.v1.json");
    let mut schema: Value = serde_json::from_str(&std::fs::read_to_string(&status).unwrap()).unwrap();
    schema["properties"]["household_id"] = json!({"type": "string", "not": {"const": "JL-220102-2019-000123"}});
    std::fs::write(&status, schema.to_string()).unwrap();
    x.feed("civil-household", &root().join("connectors/samples/civil-household.jsonl")).await;
    let mut args = x.match_args("outbound");
    *args.last_mut().unwrap() = dir.path().display().to_string();
    let args: Vec<&str> = args.iter().map(String::as_str).collect();
    let env = x.env();
    let env: Vec<(&str, &str)> = env.iter().map(|(k, v)| (*k, v.as_str())).collect();
    let (code, stdout, stderr) = common::run_doudi_env(&args, &env);
    assert_eq!(code, 0, "{stderr}");
    let summary: Value = serde_json::from_str(stdout.trim()).unwrap();
    assert_eq!(summary["unusable"].as_u64(), Some(1), "{summary}");
    assert!(summary["applied"].as_u64().unwrap_or(0) > 0, "{summary}");
    let letters = match_dead_letters(&dead).await;
    assert_eq!(letters.len(), 1, "{letters:?}");
    let reason = &letters[0].headers["reason"];
    assert!(reason.contains("does not match its schema"), "{reason}");
    let pool = sqlx::PgPool::connect(&x.pg.settings.url).await.unwrap();
    let refused: i64 =
        sqlx::query_scalar("SELECT COUNT(*) FROM households WHERE household_id = 'JL-220102-2019-000123'").fetch_one(&pool).await.unwrap();
    let others: i64 = sqlx::query_scalar("SELECT COUNT(*) FROM households").fetch_one(&pool).await.unwrap();
    assert_eq!((refused, others > 0), (0, true));
}

/// A caseworker's action as civil affairs' case system publishes it: CloudEvents headers, keyed by
/// the task.
async fn publish_action(suffix: &str, action: &Value) {
    let topic = format!("test.dept.civil.review-resolution.v1.{suffix}");
    let envelope = doudi::envelope::Envelope::new(
        "jl-civil-case-system",
        "dept.civil.review-resolution.v1",
        "https://schemas.doudi.jl.gov.cn/dept.civil.review-resolution.v1.json",
        &uuid::Uuid::new_v4().to_string(),
        action,
        chrono::Utc::now(),
    );
    let producer = doudi::kafka::idempotent_producer(&common::kafka()).unwrap();
    let payload = action.to_string();
    let key = action["task_id"].as_str().unwrap_or("none").to_string();
    let record = rdkafka::producer::FutureRecord::to(&topic).key(&key).payload(&payload).headers(envelope.to_headers(&[]));
    producer.send(record, Duration::from_secs(30)).await.unwrap();
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn caseworkers_resolve_identity_conflicts_from_their_case_system_and_from_the_cli() {
    let x = Exchange::new().await;
    doudi::kafka::ensure_topic(&common::kafka(), &format!("dlq.test.dept.civil.review-resolution.v1.{}", x.suffix), 1, 1).await.unwrap();
    let samples = root().join("connectors/samples");
    x.feed("civil-household", &samples.join("civil-household.jsonl")).await;
    x.run_matcher("m1");
    x.deltas().await;
    // 人社 reports two people of 000124 under names the registry does not know: both held.
    let dir = tempfile::tempdir().unwrap();
    let wrong = jsonl(
        dir.path(),
        "hrss-2020-01.jsonl",
        &[
            json!({"证件号码": "220102198506150029", "姓名": "黎某", "事件类型": "就业登记", "发生日期": "2020-01-05", "单位名称": "某公司", "月工资": "1,800.00"}),
            json!({"证件号码": "220102198302110113", "姓名": "章某", "事件类型": "就业登记", "发生日期": "2020-01-06", "单位名称": "某公司", "月工资": "2,500.00"}),
        ],
    );
    x.feed("hrss-employment", &wrong).await;
    let summary = x.run_matcher("m1");
    assert_eq!(summary["held"].as_u64(), Some(2), "{summary}");
    let (lines, _) = x.deltas().await;
    assert_eq!(lines.iter().filter(|l| l.starts_with("task identity_conflict")).count(), 2, "{lines:?}");
    let env = x.env();
    let env: Vec<(&str, &str)> = env.iter().map(|(k, v)| (*k, v.as_str())).collect();
    let (_, listed, _) = common::run_doudi_env(&["tasks", "list", "--json", "--kind", "identity_conflict"], &env);
    let tasks: Vec<Value> = listed.lines().map(|l| serde_json::from_str(l).unwrap()).collect();
    let task_of = |masked: &str| tasks.iter().find(|t| t["person"] == masked).unwrap()["id"].as_str().unwrap().to_string();
    let (head, spouse) = (task_of("2201**********0029"), task_of("2201**********0113"));

    // Door 1, the case system's topic: an action without a reason is refused to the topic's dead
    // letters; "same person" for the head releases the employment, and the household moves.
    publish_action(&x.suffix, &json!({"task_id": head, "action": "resolve", "actor": "cs-caseworker-12", "outcome": "same_person"})).await;
    publish_action(
        &x.suffix,
        &json!({"task_id": head, "action": "resolve", "actor": "cs-caseworker-12", "outcome": "same_person", "reason": "同音字误写，系同一人。"}),
    )
    .await;
    let summary = x.run_matcher("m1");
    assert_eq!((summary["unusable"].as_u64(), summary["applied"].as_u64()), (Some(1), Some(1)), "{summary}");
    let (lines, records) = x.deltas().await;
    assert!(lines.iter().any(|l| l.starts_with("status JL-220102-2019-000124")), "the released fact re-assessed the household: {lines:?}");
    let resolved = records.iter().find(|r| r.topic.contains("review-task")).unwrap();
    assert_eq!((resolved.payload["state"].as_str(), resolved.payload["transition"]["via"].as_str()), (Some("resolved"), Some("topic")));
    let schemas = root().join("schemas").display().to_string();
    let refused_topic = format!("test.dept.civil.review-resolution.v1.{}", x.suffix);
    let (_, refused, stderr) = common::run_doudi_env(&["dlq", "list", "--topic", &refused_topic, "--json"], &env);
    assert!(
        refused.contains("unusable") && refused.contains(r#"\"reason\" is a required property"#),
        "the refused action is a dead letter naming the field: {refused} {stderr}"
    );

    // Door 2, the CLI: "different person" for the spouse goes back to 人社 as a dead letter.
    let suffix = format!(".{}", x.suffix);
    let (code, out, err) = common::run_doudi_env(
        &[
            "tasks",
            "resolve",
            &spouse,
            "--outcome",
            "different_person",
            "--reason",
            "身份证号属于另一人。",
            "--actor",
            "caseworker-07",
            "--topic-prefix",
            "test.",
            "--topic-suffix",
            &suffix,
            "--schemas",
            &schemas,
        ],
        &[env[0], ("DOUDI_KAFKA_BOOTSTRAP_SERVERS", &common::kafka().bootstrap_servers)],
    );
    assert_eq!(code, 0, "{err}");
    let done: Value = serde_json::from_str(out.trim()).unwrap();
    assert_eq!((done["state"].as_str(), done["outcome"].as_str()), (Some("resolved"), Some("different_person")));
    assert!(done["published"].as_u64().unwrap() >= 2, "the task event and the dead letter: {done}");
    let hrss_topic = format!("test.dept.hrss.employment.v1.{}", x.suffix);
    let (_, dead, _) = common::run_doudi_env(&["dlq", "list", "--topic", &hrss_topic, "--json"], &env);
    let dead: Vec<Value> = dead.lines().map(|l| serde_json::from_str(l).unwrap()).collect();
    let rejected = dead.iter().find(|d| d["error_code"] == "identity_rejected").unwrap_or_else(|| panic!("{dead:?}"));
    assert_eq!((rejected["stage"].as_str(), rejected["source"]["file"].as_str()), (Some("review"), Some("hrss-2020-01.jsonl")));
    assert!(rejected["reason"].as_str().unwrap().contains("2201**********0113"));
    assert!(!serde_json::to_string(&dead).unwrap().contains("220102198302110113"), "dead letters are listed masked");

    let (_, shown, _) = common::run_doudi_env(&["tasks", "show", &spouse, "--json"], &env);
    let shown: Value = serde_json::from_str(shown.trim()).unwrap();
    assert_eq!(shown["transitions"][0]["via"], "cli");
    assert_eq!(shown["transitions"][0]["actor"], "caseworker-07");
    let (_, audited, _) = common::run_doudi_env(&["audit", "list", "--json"], &env);
    let actions: Vec<(String, String)> = audited
        .lines()
        .map(|l| serde_json::from_str::<Value>(l).unwrap())
        .map(|e| (e["actor"].as_str().unwrap().to_string(), e["action"].as_str().unwrap().to_string()))
        .collect();
    assert!(actions.contains(&("cs-caseworker-12".into(), "task.resolve".into())), "{actions:?}");
    assert!(actions.contains(&("caseworker-07".into(), "task.resolve".into())), "{actions:?}");
}
