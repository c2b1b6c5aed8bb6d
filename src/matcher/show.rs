//! `doudi recipients show`: one person's household, current decision with its explanation,
//! entitlements, open review tasks and the facts behind them, with their sources.
//!
//! Guarantees: the report is masked by default: ID numbers as `2201**********0015`, names as their
//! first character, fact values left out (only field, date, state and source). With `unmasked`
//! the values are shown; the caller records that access in the audit log first (`crate::audit`).

use chrono::NaiveDate;
use serde_json::{Value, json};
use sqlx::Row;

use super::assemble::assemble;
use super::batch::household_state;
use super::{ApplyError, Conn};
use crate::db::Database;
use crate::idnum::{IdNumber, mask};
use crate::policy::Params;
use crate::tap::mask_name;

/// The report on the person with `id`, or `None` when doudi has never heard of them.
pub async fn report(db: &Database, params: &Params, id: &IdNumber, unmasked: bool) -> Result<Option<Value>, ApplyError> {
    let mut conn = db.pool().acquire().await?;
    let Some(person) =
        sqlx::query("SELECT name, birth_date, sex FROM persons WHERE id_number = $1").bind(id.as_str()).fetch_optional(&mut *conn).await?
    else {
        return Ok(None);
    };
    let show_id = |raw: &str| if unmasked { raw.to_string() } else { mask(raw) };
    let show_name = |n: Option<String>| n.map(|n| if unmasked { n } else { mask_name(&n) });
    let mut out = json!({
        "person": {
            "id_number": show_id(id.as_str()),
            "name": show_name(person.try_get("name")?),
            "birth_date": if unmasked { json!(person.try_get::<String, _>("birth_date")?) } else { Value::Null },
            "sex": person.try_get::<String, _>("sex")?,
        }
    });
    let membership = sqlx::query(
        "SELECT m.household_id, m.relation, m.valid_from, h.region, h.as_of, h.base, h.decision_version FROM household_members m \
         JOIN households h ON h.household_id = m.household_id WHERE m.id_number = $1 AND m.valid_to IS NULL",
    )
    .bind(id.as_str())
    .fetch_optional(&mut *conn)
    .await?;
    let mut fact_persons = vec![id.as_str().to_string()];
    if let Some(m) = membership {
        let household_id: String = m.try_get("household_id")?;
        let region: String = m.try_get("region")?;
        let as_of: String = m.try_get("as_of")?;
        let version: i64 = m.try_get("decision_version")?;
        let (members, facts) = household_state(&mut Conn::Any(&mut conn), &household_id).await?;
        let mut listed = Vec::new();
        for member in &members {
            let name: Option<String> = sqlx::query("SELECT name FROM persons WHERE id_number = $1")
                .bind(&member.id_number)
                .fetch_one(&mut *conn)
                .await?
                .try_get("name")?;
            listed.push(json!({
                "id_number": show_id(&member.id_number),
                "name": show_name(name),
                "relation": serde_json::from_str::<Value>(&member.record).ok().and_then(|r| r.get("relation").cloned()).unwrap_or(Value::Null),
            }));
            if member.id_number != id.as_str() {
                fact_persons.push(member.id_number.clone());
            }
        }
        out["household"] = json!({"household_id": household_id, "region": region, "registered_as_of": as_of, "relation": m.try_get::<String, _>("relation")?,
            "member_since": m.try_get::<String, _>("valid_from")?, "members": listed});
        if version > 0 {
            let d = sqlx::query("SELECT effective_date, category, basis, size, per_capita_income, monthly_payment, policy_version, rules, decided_at FROM decisions WHERE household_id = $1 AND version = $2")
                .bind(&household_id)
                .bind(version)
                .fetch_one(&mut *conn)
                .await?;
            let mut decision = json!({
                "version": version,
                "effective_date": d.try_get::<String, _>("effective_date")?,
                "category": d.try_get::<String, _>("category")?,
                "basis": d.try_get::<Option<String>, _>("basis")?,
                "size": d.try_get::<i64, _>("size")?,
                "monthly_payment": d.try_get::<String, _>("monthly_payment")?,
                "policy_version": d.try_get::<String, _>("policy_version")?,
                "rules": d.try_get::<String, _>("rules")?.split(' ').filter(|r| !r.is_empty()).collect::<Vec<_>>(),
                "decided_at": d.try_get::<String, _>("decided_at")?,
            });
            if unmasked {
                decision["per_capita_income"] = json!(d.try_get::<String, _>("per_capita_income")?);
            }
            // The explanation is recomputed from the same facts; the stored decision is the record.
            let base: String = m.try_get("base")?;
            let as_of = NaiveDate::parse_from_str(&as_of, "%Y-%m-%d").unwrap_or_default();
            let explained = assemble(&household_id, &region, as_of, &base, &members, &facts)
                .and_then(|a| a.household.validate(a.date, &params.policy.province).map(|c| (c, a.date)))
                .ok()
                .and_then(|(c, date)| crate::policy::assess_explained(params, &c, date).ok());
            if let Some(e) = explained {
                let lines: Vec<String> = e
                    .explanation
                    .iter()
                    .map(|l| {
                        if unmasked {
                            l.clone()
                        } else {
                            members.iter().fold(l.clone(), |acc, m| acc.replace(&m.id_number, &mask(&m.id_number)))
                        }
                    })
                    .collect();
                decision["explanation"] = json!(lines);
            }
            out["decision"] = decision;
        }
        let mut ents = Vec::new();
        for r in sqlx::query("SELECT agency, kind, id_number, attributes, granted_on, ended_on FROM entitlements WHERE household_id = $1 ORDER BY ended_on IS NOT NULL, agency, kind, id")
            .bind(&household_id)
            .fetch_all(&mut *conn)
            .await?
        {
            ents.push(json!({
                "agency": r.try_get::<String, _>("agency")?,
                "kind": r.try_get::<String, _>("kind")?,
                "person": show_id(&r.try_get::<String, _>("id_number")?),
                "attributes": serde_json::from_str::<Value>(&r.try_get::<String, _>("attributes")?).unwrap_or_default(),
                "granted_on": r.try_get::<String, _>("granted_on")?,
                "ended_on": r.try_get::<Option<String>, _>("ended_on")?,
            }));
        }
        out["entitlements"] = json!(ents);
        let mut tasks = Vec::new();
        for r in sqlx::query("SELECT kind, id_number, created_on, rule, state FROM review_tasks WHERE household_id = $1 OR id_number = $2 ORDER BY created_at")
            .bind(&household_id)
            .bind(id.as_str())
            .fetch_all(&mut *conn)
            .await?
        {
            tasks.push(json!({
                "kind": r.try_get::<String, _>("kind")?,
                "person": r.try_get::<Option<String>, _>("id_number")?.map(|p| show_id(&p)),
                "created_on": r.try_get::<String, _>("created_on")?,
                "rule": r.try_get::<Option<String>, _>("rule")?,
                "state": r.try_get::<String, _>("state")?,
            }));
        }
        out["review_tasks"] = json!(tasks);
        if let Some(p) = sqlx::query("SELECT problem FROM assessment_problems WHERE household_id = $1")
            .bind(&household_id)
            .fetch_optional(&mut *conn)
            .await?
        {
            out["assessment_problem"] = json!(p.try_get::<String, _>("problem")?);
        }
    }
    let mut facts = Vec::new();
    for person in &fact_persons {
        for r in sqlx::query(
            "SELECT id_number, source, field, value, effective_date, state, topic, kafka_partition, kafka_offset, ce_id, source_file, source_row FROM facts \
             WHERE id_number = $1 ORDER BY id",
        )
        .bind(person)
        .fetch_all(&mut *conn)
        .await?
        {
            let mut f = json!({
                "person": show_id(&r.try_get::<String, _>("id_number")?),
                "field": r.try_get::<String, _>("field")?.split(':').next().unwrap_or_default(),
                "effective_date": r.try_get::<Option<String>, _>("effective_date")?,
                "state": r.try_get::<String, _>("state")?,
                "source": {
                    "topic": r.try_get::<String, _>("topic")?,
                    "partition": r.try_get::<i64, _>("kafka_partition")?,
                    "offset": r.try_get::<i64, _>("kafka_offset")?,
                    "ce_id": r.try_get::<String, _>("ce_id")?,
                    "file": r.try_get::<Option<String>, _>("source_file")?,
                    "row": r.try_get::<Option<String>, _>("source_row")?,
                },
            });
            if unmasked {
                f["value"] = serde_json::from_str(&r.try_get::<String, _>("value")?).unwrap_or_default();
            }
            facts.push(f);
        }
    }
    out["facts"] = json!(facts);
    Ok(Some(out))
}

/// The report as text for a caseworker's terminal.
pub fn render_text(report: &Value) -> String {
    let s = |v: &Value| match v {
        Value::String(s) => s.clone(),
        Value::Null => "-".into(),
        other => other.to_string(),
    };
    let mut out = String::new();
    let p = &report["person"];
    out.push_str(&format!("人员 person   {}  {}  {}\n", s(&p["id_number"]), s(&p["name"]), s(&p["sex"])));
    let h = &report["household"];
    if h.is_null() {
        out.push_str("家庭 household  (not registered in any household yet: facts are kept and apply when civil affairs registers one)\n");
    } else {
        out.push_str(&format!(
            "家庭 household {}  region {}  registered as of {}  relation {}\n",
            s(&h["household_id"]),
            s(&h["region"]),
            s(&h["registered_as_of"]),
            s(&h["relation"])
        ));
        for m in h["members"].as_array().into_iter().flatten() {
            out.push_str(&format!("    {}  {}  {}\n", s(&m["id_number"]), s(&m["name"]), s(&m["relation"])));
        }
    }
    let d = &report["decision"];
    if !d.is_null() {
        out.push_str(&format!(
            "决定 decision v{} on {}: {} basis {} size {} monthly payment {} (policy {}, rules {})\n",
            s(&d["version"]),
            s(&d["effective_date"]),
            s(&d["category"]),
            s(&d["basis"]),
            s(&d["size"]),
            s(&d["monthly_payment"]),
            s(&d["policy_version"]),
            d["rules"].as_array().map(|r| r.iter().map(s).collect::<Vec<_>>().join(" ")).unwrap_or_default()
        ));
        for line in d["explanation"].as_array().into_iter().flatten() {
            out.push_str(&format!("    · {}\n", s(line)));
        }
    }
    if let Some(problem) = report.get("assessment_problem") {
        out.push_str(&format!("无法评估 cannot assess: {}\n", s(problem)));
    }
    let ents = report["entitlements"].as_array().cloned().unwrap_or_default();
    if !ents.is_empty() {
        out.push_str("待遇 entitlements\n");
        for e in &ents {
            let state =
                if e["ended_on"].is_null() { format!("since {}", s(&e["granted_on"])) } else { format!("ended {}", s(&e["ended_on"])) };
            out.push_str(&format!(
                "    {:<10} {:<28} {}  {}  {}\n",
                s(&e["agency"]),
                s(&e["kind"]),
                s(&e["person"]),
                state,
                e["attributes"]
            ));
        }
    }
    let tasks = report["review_tasks"].as_array().cloned().unwrap_or_default();
    if !tasks.is_empty() {
        out.push_str("复核任务 review tasks\n");
        for t in &tasks {
            out.push_str(&format!("    {:<32} {}  {}  {}\n", s(&t["kind"]), s(&t["person"]), s(&t["created_on"]), s(&t["state"])));
        }
    }
    out.push_str("事实 facts (source: topic/partition/offset, file, row)\n");
    for f in report["facts"].as_array().into_iter().flatten() {
        let src = &f["source"];
        out.push_str(&format!(
            "    {}  {:<26} {:<10} {:<10} {}/{}/{}  {} row {}{}\n",
            s(&f["person"]),
            s(&f["field"]),
            s(&f["effective_date"]),
            s(&f["state"]),
            s(&src["topic"]),
            s(&src["partition"]),
            s(&src["offset"]),
            s(&src["file"]),
            s(&src["row"]),
            f.get("value").map(|v| format!("  {v}")).unwrap_or_default(),
        ));
    }
    out
}
