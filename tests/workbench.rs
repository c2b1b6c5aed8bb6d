//! `doudi workbench` in a real browser: headless Chromium driven through WebDriver (Debian's
//! chromium-driver) signs in, opens the queue and an identity conflict, and resolves it; the test
//! then checks in the database that the held facts were applied, the deltas written for the
//! agencies and the action audited. Also over plain HTTP: a form without its CSRF token, a task of
//! another county, an auditor resolving, and no session at all are refused. Screenshots of the
//! queue and of the task page are kept (`WORKBENCH_SCREENSHOT_DIR`, else the target directory).
#![allow(clippy::unwrap_used, clippy::expect_used)]

mod common;

use std::process::{Child, Command, Stdio};
use std::time::Duration;

use common::matching::*;
use doudi::matcher::Feed;
use fantoccini::{ClientBuilder, Locator};
use serde_json::json;
use sqlx::Row;
use tokio::io::{AsyncReadExt, AsyncWriteExt};

const PASSWORD: &str = "a-long-test-password-1";

struct Killed(Child);

impl Drop for Killed {
    fn drop(&mut self) {
        let _ = self.0.kill();
        let _ = self.0.wait();
    }
}

/// One plain HTTP/1.1 request; the status and body.
async fn http(addr: &str, method: &str, path: &str, cookie: &str, form: &str) -> (u16, String) {
    let mut s = tokio::net::TcpStream::connect(addr).await.unwrap();
    let request = format!(
        "{method} {path} HTTP/1.1\r\nHost: {addr}\r\nCookie: {cookie}\r\nContent-Type: application/x-www-form-urlencoded\r\nContent-Length: {}\r\nConnection: close\r\n\r\n{form}",
        form.len()
    );
    s.write_all(request.as_bytes()).await.unwrap();
    let mut out = Vec::new();
    s.read_to_end(&mut out).await.unwrap();
    let text = String::from_utf8_lossy(&out).into_owned();
    let status = text.split(' ').nth(1).and_then(|c| c.parse().ok()).unwrap_or(0);
    (status, text)
}

async fn wait_for(addr: &str) {
    for _ in 0..100 {
        if tokio::net::TcpStream::connect(addr).await.is_ok() {
            return;
        }
        tokio::time::sleep(Duration::from_millis(100)).await;
    }
    panic!("{addr} never listened");
}

fn screenshot_dir() -> std::path::PathBuf {
    let dir = std::env::var("WORKBENCH_SCREENSHOT_DIR").map(std::path::PathBuf::from).unwrap_or_else(|_| {
        std::path::PathBuf::from(std::env::var("CARGO_TARGET_DIR").unwrap_or_else(|_| "target".into())).join("workbench-screenshots")
    });
    std::fs::create_dir_all(&dir).unwrap();
    dir
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn a_caseworker_signs_in_and_resolves_an_identity_conflict_in_chromium() {
    // A held identity conflict in 长春 南关 (220102), on the real PostgreSQL.
    let pg = common::fresh_postgres().await;
    let db = doudi::db::Database::connect(&pg.settings).await.unwrap();
    let ctx = context();
    let mut f = Feeder { offset: 0 };
    const HH: &str = "JL-220102-2019-000124";
    apply(&db, &ctx, &[f.event(Feed::Household, household(HH))]).await;
    let student = json!({"id_number": "22010220110601003X", "name": "刘某某", "student_level": "junior", "status": "enrolled", "changed_on": "2019-12-15"});
    assert_eq!(apply(&db, &ctx, &[f.event(Feed::Student, student)]).await.held, 1);
    let task: String =
        sqlx::query_scalar("SELECT task_id FROM review_tasks WHERE kind = 'identity_conflict'").fetch_one(db.pool()).await.unwrap();
    let mark = last_outbox_id(&db).await;

    let dir = tempfile::tempdir().unwrap();
    let hash = doudi::workbench::auth::hash_password(PASSWORD).unwrap();
    let accounts = dir.path().join("accounts.toml");
    std::fs::write(
        &accounts,
        format!(
            "[[account]]\nuser = \"caseworker-07\"\npassword = \"{hash}\"\nrole = \"caseworker\"\ncounties = [\"220102\"]\n\
             [[account]]\nuser = \"caseworker-jilin\"\npassword = \"{hash}\"\nrole = \"caseworker\"\ncounties = [\"220202\"]\n\
             [[account]]\nuser = \"auditor-01\"\npassword = \"{hash}\"\nrole = \"auditor\"\ncounties = [\"220000\"]\n"
        ),
    )
    .unwrap();
    let port = common::free_port();
    let addr = format!("127.0.0.1:{port}");
    let listen = addr.clone();
    let _workbench = Killed(
        Command::new(common::doudi_bin())
            .args(["workbench", "--accounts", accounts.to_str().unwrap(), "--listen", &listen])
            .env("DOUDI_DATABASE_URL", &pg.settings.url)
            .env("DOUDI_KAFKA_BOOTSTRAP_SERVERS", common::kafka().bootstrap_servers)
            .env("DOUDI_HTTP_PORT", "0")
            .env("DOUDI_KEYS_DEVELOPMENT", "true")
            .env("DOUDI_LOG_LEVEL", "warn")
            .stdout(Stdio::null())
            .spawn()
            .unwrap(),
    );
    let driver_port = common::free_port();
    let _driver = Killed(
        Command::new("chromedriver")
            .arg(format!("--port={driver_port}"))
            .stdout(Stdio::null())
            .stderr(Stdio::null())
            .spawn()
            .expect("chromedriver is installed by scripts/setup (Debian's chromium-driver)"),
    );
    wait_for(&addr).await;
    wait_for(&format!("127.0.0.1:{driver_port}")).await;

    let mut caps = serde_json::Map::new();
    caps.insert(
        "goog:chromeOptions".into(),
        json!({"binary": "/usr/bin/chromium", "args": ["--headless=new", "--no-sandbox", "--disable-gpu", "--window-size=1280,1500", "--lang=zh-CN"]}),
    );
    let connector = hyper_util::client::legacy::connect::HttpConnector::new();
    let browser = ClientBuilder::new(connector).capabilities(caps).connect(&format!("http://127.0.0.1:{driver_port}")).await.unwrap();
    let base = format!("http://{addr}");

    // Without a session every page leads to the sign-in page.
    browser.goto(&format!("{base}/tasks/{task}")).await.unwrap();
    assert!(browser.current_url().await.unwrap().as_str().ends_with("/login"));
    browser.find(Locator::Id("user")).await.unwrap().send_keys("caseworker-07").await.unwrap();
    browser.find(Locator::Id("password")).await.unwrap().send_keys(PASSWORD).await.unwrap();
    browser.find(Locator::Id("sign-in")).await.unwrap().click().await.unwrap();

    // The queue: the task, the person masked.
    let queue = browser.wait().for_element(Locator::Id("queue")).await.unwrap().text().await.unwrap();
    assert!(queue.contains("身份信息不一致") && queue.contains("2201**********003X"), "{queue}");
    assert!(queue.contains("（超期）"), "raised in 2019 with a week to resolve it: {queue}");
    assert!(!browser.source().await.unwrap().contains("22010220110601003X"), "no unmasked ID number on the page");
    let shots = screenshot_dir();
    std::fs::write(shots.join("workbench-queue.png"), browser.screenshot().await.unwrap()).unwrap();

    // The task page: what is held, the decision, the form.
    browser.find(Locator::LinkText(&task[..8])).await.unwrap().click().await.unwrap();
    let held = browser.wait().for_element(Locator::Id("held")).await.unwrap().text().await.unwrap();
    assert!(held.contains("dept.edu.student.v1") && held.contains("student_level"), "{held}");
    assert!(browser.find(Locator::Id("decision")).await.unwrap().text().await.unwrap().contains("低保"));
    std::fs::write(shots.join("workbench-task.png"), browser.screenshot().await.unwrap()).unwrap();
    browser.find(Locator::Id("reason")).await.unwrap().send_keys("经入户核实，教育部门登记姓名有误，系同一人。").await.unwrap();
    browser.find(Locator::Id("outcome-same_person")).await.unwrap().click().await.unwrap();
    browser.find(Locator::Id("submit-resolution")).await.unwrap().click().await.unwrap();
    let notice = browser.wait().for_element(Locator::Id("notice")).await.unwrap().text().await.unwrap();
    assert!(notice.contains("已办结"), "{notice}");
    assert!(browser.find(Locator::Id("task-state")).await.unwrap().text().await.unwrap().contains("已办结"));
    let history = browser.find(Locator::Id("history")).await.unwrap().text().await.unwrap();
    assert!(history.contains("caseworker-07") && history.contains("workbench"), "{history}");
    std::fs::write(shots.join("workbench-resolved.png"), browser.screenshot().await.unwrap()).unwrap();
    let cookie = browser.get_named_cookie("doudi_session").await.unwrap();
    let session = format!("doudi_session={}", cookie.value());
    browser.close().await.unwrap();

    // What the resolution did: the held fact applied, the agencies' deltas written, audited.
    let state: String =
        sqlx::query("SELECT state FROM facts WHERE field = 'student_level'").fetch_one(db.pool()).await.unwrap().get("state");
    assert_eq!(state, "current");
    let rows = outbox_since(&db, mark).await;
    assert_eq!(
        labels(&rows),
        sorted(vec![
            "exchange.entitlement.education.v1 changed student_aid 2201**********003X",
            "exchange.review-task.v1 identity_conflict 2201**********003X",
        ])
    );
    let event = &rows.iter().find(|r| r.0.contains("review")).unwrap().3;
    assert_eq!((event["transition"]["via"].as_str(), event["transition"]["actor"].as_str()), (Some("workbench"), Some("caseworker-07")));
    let audited: i64 = sqlx::query_scalar("SELECT COUNT(*) FROM audit_log WHERE actor = 'caseworker-07' AND action = 'task.resolve'")
        .fetch_one(db.pool())
        .await
        .unwrap();
    assert_eq!(audited, 1);

    // Refusals, over plain HTTP with the caseworker's session.
    let (status, _) = http(&addr, "POST", &format!("/tasks/{task}/resolve"), &session, "outcome=same_person&reason=x").await;
    assert_eq!(status, 422, "a form without its CSRF token is not even read");
    let (status, _) = http(&addr, "POST", &format!("/tasks/{task}/resolve"), &session, "csrf=forged&outcome=same_person&reason=x").await;
    assert_eq!(status, 403, "a forged CSRF token");
    let (status, _) = http(&addr, "GET", "/", "", "").await;
    assert_eq!(status, 303, "no session: to the sign-in page");
    let (status, page) = http(&addr, "GET", "/", &session, "").await;
    assert_eq!(status, 200);
    assert!(page.contains("content-security-policy") && page.contains("x-frame-options: DENY"), "{page}");

    // Another county's caseworker does not see the task; an auditor sees it and the audit log
    // but cannot resolve.
    let other = sign_in(&addr, "caseworker-jilin").await;
    let (status, _) = http(&addr, "GET", &format!("/tasks/{task}"), &other, "").await;
    assert_eq!(status, 404);
    let (_, queue) = http(&addr, "GET", "/?state=resolved", &other, "").await;
    assert!(!queue.contains(&task[..8]));
    let auditor = sign_in(&addr, "auditor-01").await;
    let (status, page) = http(&addr, "GET", &format!("/tasks/{task}"), &auditor, "").await;
    assert_eq!(status, 200);
    assert!(!page.contains("submit-resolution"), "no resolution form for an auditor");
    let (status, audit) = http(&addr, "GET", "/audit", &auditor, "").await;
    assert!(status == 200 && audit.contains("task.resolve"), "{audit}");
    let (status, _) = http(&addr, "GET", "/audit", &other, "").await;
    assert_eq!(status, 403, "caseworkers do not read the audit log");
    let (status, _) = http(&addr, "GET", "/login", "", "").await;
    assert_eq!(status, 200);
    let refused = sign_in_status(&addr, "caseworker-07", "wrong-password").await;
    assert_eq!(refused, 401);
}

/// Signs `user` in over plain HTTP; the session cookie.
async fn sign_in(addr: &str, user: &str) -> String {
    let (_, page) = http(addr, "GET", "/login", "", "").await;
    let token = cookie_in(&page, "doudi_login");
    let (status, answer) =
        http(addr, "POST", "/login", &format!("doudi_login={token}"), &format!("user={user}&password={PASSWORD}&token={token}")).await;
    assert_eq!(status, 303, "{answer}");
    format!("doudi_session={}", cookie_in(&answer, "doudi_session"))
}

async fn sign_in_status(addr: &str, user: &str, password: &str) -> u16 {
    let (_, page) = http(addr, "GET", "/login", "", "").await;
    let token = cookie_in(&page, "doudi_login");
    http(addr, "POST", "/login", &format!("doudi_login={token}"), &format!("user={user}&password={password}&token={token}")).await.0
}

fn cookie_in(response: &str, name: &str) -> String {
    let line = response.lines().find(|l| l.to_ascii_lowercase().starts_with("set-cookie:") && l.contains(&format!("{name}="))).unwrap();
    line.split(&format!("{name}=")).nth(1).unwrap().split(';').next().unwrap().to_string()
}
