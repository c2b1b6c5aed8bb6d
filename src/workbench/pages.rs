//! The workbench's pages: HTML written here, every value escaped ([`esc`]), people masked by the
//! data they are given. Chinese for caseworkers; codes (kinds, states) shown beside their labels.

use std::fmt::Write as _;

use super::auth::Session;
use super::{DecisionLine, QueueFilter};
use crate::matcher::tasks::{TaskDetail, TaskLine};

/// Text made safe inside HTML elements and attribute values.
pub fn esc(text: &str) -> String {
    let mut out = String::with_capacity(text.len());
    for c in text.chars() {
        match c {
            '&' => out.push_str("&amp;"),
            '<' => out.push_str("&lt;"),
            '>' => out.push_str("&gt;"),
            '"' => out.push_str("&quot;"),
            '\'' => out.push_str("&#39;"),
            _ => out.push(c),
        }
    }
    out
}

pub fn kind_label(kind: &str) -> &'static str {
    match kind {
        "identity_conflict" => "身份信息不一致",
        "cancel_dibao_refused_referrals" => "拒绝职业介绍（J1）",
        "deceased_member" => "家庭成员死亡",
        "periodic_review_due" => "定期复核",
        "held_roster_removals" => "困难职工名单删除待确认",
        _ => "其他",
    }
}

pub fn state_label(state: &str) -> &'static str {
    match state {
        "open" => "待处理",
        "in_progress" => "处理中",
        "resolved" => "已办结",
        "cancelled" => "已取消",
        _ => "未知",
    }
}

pub fn outcome_label(outcome: &str) -> &'static str {
    match outcome {
        "same_person" => "核实为同一人（采用暂缓的数据）",
        "different_person" => "不是同一人（退回报送部门）",
        "confirmed" => "拒绝属实（依第8条取消低保）",
        "not_confirmed" => "有正当理由（拒绝不计）",
        "reviewed" => "已复核",
        _ => "其他",
    }
}

fn category_label(category: &str) -> &'static str {
    match category {
        "dibao" => "低保",
        "low_income" => "低收入",
        "tekun" => "特困",
        "none" => "不符合",
        _ => "其他",
    }
}

const STYLE: &str = "body{font-family:'WenQuanYi Micro Hei','Noto Sans CJK SC',sans-serif;margin:0;color:#1d2733;background:#f4f6f8}\
header{background:#8b1a1a;color:#fff;padding:10px 24px;display:flex;align-items:center;gap:24px}\
header h1{font-size:18px;margin:0}header nav a{color:#fff;margin-right:16px;text-decoration:none}\
header form{margin-left:auto}main{padding:16px 24px}table{border-collapse:collapse;background:#fff;width:100%}\
th,td{border:1px solid #d5dbe1;padding:6px 8px;text-align:left;font-size:14px;vertical-align:top}th{background:#e9edf1}\
.overdue{color:#b00020;font-weight:bold}.notice{padding:8px 12px;margin-bottom:12px;border-radius:4px}\
.ok{background:#e3f4e6;border:1px solid #7bb784}.err{background:#fbe6e6;border:1px solid #d08383}\
section{background:#fff;border:1px solid #d5dbe1;padding:12px 16px;margin-bottom:16px}\
label{display:block;margin:6px 0}textarea{width:100%;min-height:70px}pre{white-space:pre-wrap;font-size:13px}\
.filters{display:flex;gap:12px;align-items:end;margin-bottom:12px}.muted{color:#5b6875;font-size:13px}";

fn page(title: &str, session: Option<&Session>, body: &str) -> String {
    let mut nav = String::new();
    if let Some(s) = session {
        let _ = write!(
            nav,
            "<nav><a href=\"/\">任务队列</a><a href=\"/recipients\">救助对象查询</a><a href=\"/dead-letters\">退回记录</a>\
             <a href=\"/deliveries\">部门交付</a>{}</nav>\
             <span>{}（{}，{}）</span>\
             <form method=\"post\" action=\"/logout\"><input type=\"hidden\" name=\"csrf\" value=\"{}\"><button>退出</button></form>",
            if s.role == super::auth::Role::Caseworker { "" } else { "<a href=\"/audit\">审计日志</a>" },
            esc(&s.user),
            s.role.label(),
            esc(&s.counties.join("、")),
            esc(&s.csrf)
        );
    }
    format!(
        "<!DOCTYPE html><html lang=\"zh-CN\"><head><meta charset=\"utf-8\"><title>{} · 兜底 救助协同工作台</title><style>{STYLE}</style></head>\
         <body><header><h1>兜底 · 救助协同工作台</h1>{nav}</header><main>{body}</main></body></html>",
        esc(title)
    )
}

pub fn message(title: &str, text: &str) -> String {
    page(title, None, &format!("<section><h2>{}</h2><p>{}</p><p><a href=\"/\">返回</a></p></section>", esc(title), esc(text)))
}

pub fn login(token: &str, error: Option<&str>) -> String {
    let error = error.map(|e| format!("<div class=\"notice err\">{}</div>", esc(e))).unwrap_or_default();
    page(
        "登录",
        None,
        &format!(
            "<section style=\"max-width:360px\"><h2>登录</h2>{error}<form method=\"post\" action=\"/login\">\
             <input type=\"hidden\" name=\"token\" value=\"{}\">\
             <label>用户名 <input name=\"user\" id=\"user\" autocomplete=\"username\" required></label>\
             <label>密码 <input name=\"password\" id=\"password\" type=\"password\" autocomplete=\"current-password\" required></label>\
             <button id=\"sign-in\">登录</button></form></section>",
            esc(token)
        ),
    )
}

fn option(value: &str, label: &str, selected: &str) -> String {
    format!("<option value=\"{}\"{}>{}</option>", esc(value), if value == selected { " selected" } else { "" }, esc(label))
}

pub fn queue(s: &Session, f: &QueueFilter, tasks: &[TaskLine], today: chrono::NaiveDate) -> String {
    let mut body = String::from("<h2>复核任务队列</h2><form class=\"filters\" method=\"get\" action=\"/\">");
    let _ = write!(body, "<label>类型<br><select name=\"kind\">{}", option("", "全部", &f.kind));
    for k in crate::matcher::tasks::KINDS {
        body.push_str(&option(k, kind_label(k), &f.kind));
    }
    let state = if f.state.is_empty() { "active" } else { f.state.as_str() };
    let _ = write!(body, "</select></label><label>状态<br><select name=\"state\">{}", option("active", "未办结", state));
    for st in crate::matcher::casework::STATES {
        body.push_str(&option(st, state_label(st), state));
    }
    let _ = write!(
        body,
        "</select></label><label>区划<br><input name=\"county\" size=\"8\" value=\"{}\"></label>\
         <label>至少（天）<br><input name=\"min_age\" size=\"4\" value=\"{}\"></label><button>筛选</button></form>",
        esc(&f.county),
        esc(&f.min_age)
    );
    let _ = write!(
        body,
        "<p class=\"muted\">{} 条，最早的在前；只显示您负责区域（{}）的任务。</p>\
         <table id=\"queue\"><tr><th>任务</th><th>类型</th><th>状态</th><th>家庭</th><th>人员</th><th>区划</th><th>发起日期</th><th>已过天数</th><th>办理期限</th></tr>",
        tasks.len(),
        esc(&s.counties.join("、"))
    );
    for t in tasks {
        let _ = write!(
            body,
            "<tr><td><a href=\"/tasks/{id}\">{short}</a></td><td>{kind}</td><td>{state}</td><td>{hh}</td><td>{person}</td><td>{region}</td><td>{created}</td><td>{age}</td><td class=\"{due_class}\">{due}</td></tr>",
            id = esc(&t.id),
            short = esc(t.id.get(..8).unwrap_or(&t.id)),
            kind = kind_label(&t.kind),
            state = state_label(&t.state),
            hh = esc(t.household_id.as_deref().unwrap_or("-")),
            person = esc(t.person.as_deref().unwrap_or("-")),
            region = esc(&t.region),
            created = esc(&t.created_on),
            age = t.age_days,
            due_class = if t.overdue { "overdue" } else { "" },
            due = esc(&format!("{}{}", t.due_on.as_deref().unwrap_or("-"), if t.overdue { "（超期）" } else { "" })),
        );
    }
    body.push_str("</table>");
    let _ = today;
    page("任务队列", Some(s), &body)
}

pub fn task(s: &Session, t: &TaskDetail, decision: Option<&DecisionLine>, notice: Option<&(bool, String)>) -> String {
    let mut body = String::new();
    if let Some((ok, text)) = notice {
        let _ = write!(body, "<div class=\"notice {}\" id=\"notice\">{}</div>", if *ok { "ok" } else { "err" }, esc(text));
    }
    let _ = write!(
        body,
        "<h2>{kind} <span class=\"muted\">{code}</span></h2><section><table>\
         <tr><th>任务编号</th><td id=\"task-id\">{id}</td></tr><tr><th>状态</th><td id=\"task-state\">{state}{assignee}</td></tr>\
         <tr><th>家庭</th><td>{hh}</td></tr><tr><th>人员</th><td>{person}</td></tr><tr><th>区划</th><td>{region}</td></tr>\
         <tr><th>发起日期</th><td>{created}（{age} 天前）</td></tr><tr><th>办理期限</th><td class=\"{due_class}\">{due}{overdue}</td></tr>\
         <tr><th>需核查</th><td>{detail}</td></tr>{outcome}</table></section>",
        kind = kind_label(&t.line.kind),
        code = esc(&t.line.kind),
        id = esc(&t.line.id),
        state = state_label(&t.line.state),
        assignee = t.assignee.as_deref().map(|a| format!("，经办人 {}", esc(a))).unwrap_or_default(),
        hh = esc(t.line.household_id.as_deref().unwrap_or("-")),
        person = esc(t.line.person.as_deref().unwrap_or("-")),
        region = esc(&t.line.region),
        created = esc(&t.line.created_on),
        age = t.line.age_days,
        due_class = if t.overdue { "overdue" } else { "" },
        due = esc(t.due_on.as_deref().unwrap_or("-")),
        overdue = if t.overdue { "（已超期）" } else { "" },
        detail = esc(&t.detail),
        outcome = t
            .outcome
            .as_deref()
            .map(|o| format!(
                "<tr><th>办理结果</th><td>{}，{} 于 {}</td></tr>",
                outcome_label(o),
                esc(t.resolved_by.as_deref().unwrap_or("")),
                esc(t.resolved_at.as_deref().unwrap_or(""))
            ))
            .unwrap_or_default(),
    );
    if !t.held_facts.is_empty() {
        body.push_str("<section><h3>暂缓应用的数据（来源）</h3><table id=\"held\"><tr><th>来源</th><th>事项</th><th>生效日期</th><th>文件</th><th>行</th></tr>");
        for f in &t.held_facts {
            let _ = write!(
                body,
                "<tr><td>{}</td><td>{}</td><td>{}</td><td>{}</td><td>{}</td></tr>",
                esc(&f.source),
                esc(&f.field),
                esc(f.effective_date.as_deref().unwrap_or("-")),
                esc(f.source_file.as_deref().unwrap_or("-")),
                esc(f.source_row.as_deref().unwrap_or("-"))
            );
        }
        body.push_str("</table><p class=\"muted\">数值不在此显示；核实后选择“同一人”即按原顺序应用。</p></section>");
    }
    if let Some(d) = decision {
        let _ = write!(
            body,
            "<section><h3>家庭当前认定</h3><table id=\"decision\"><tr><th>类别</th><td>{}（{}）</td></tr><tr><th>月救助金</th><td>{} 元</td></tr>\
             <tr><th>生效日期</th><td>{}</td></tr><tr><th>规则</th><td>{}</td></tr><tr><th>政策版本</th><td>{}，第 {} 次认定</td></tr></table></section>",
            category_label(&d.category),
            esc(&d.category),
            esc(&d.monthly_payment),
            esc(&d.effective_date),
            esc(&d.rules),
            esc(&d.policy_version),
            d.version
        );
    }
    body.push_str(
        "<section><h3>办理记录</h3><table id=\"history\"><tr><th>时间</th><th>变化</th><th>办理人</th><th>渠道</th><th>说明</th></tr>",
    );
    for h in &t.transitions {
        let _ = write!(
            body,
            "<tr><td>{}</td><td>{} → {}</td><td>{}</td><td>{}</td><td>{}{}</td></tr>",
            esc(&h.at),
            state_label(&h.from),
            state_label(&h.to),
            esc(&h.actor),
            esc(&h.via),
            h.outcome.as_deref().map(|o| format!("{}：", outcome_label(o))).unwrap_or_default(),
            esc(h.reason.as_deref().or(h.assignee.as_deref()).unwrap_or(""))
        );
    }
    body.push_str("</table></section>");
    let active = matches!(t.line.state.as_str(), "open" | "in_progress");
    if active && s.role.may_resolve() && !t.outcomes.is_empty() {
        let _ = write!(
            body,
            "<section><h3>办结</h3><form method=\"post\" action=\"/tasks/{}/resolve\" id=\"resolve\"><input type=\"hidden\" name=\"csrf\" value=\"{}\">",
            esc(&t.line.id),
            esc(&s.csrf)
        );
        for (i, o) in t.outcomes.iter().enumerate() {
            let _ = write!(
                body,
                "<label><input type=\"radio\" name=\"outcome\" id=\"outcome-{o}\" value=\"{o}\"{}> {}</label>",
                if i == 0 { " required" } else { "" },
                outcome_label(o),
                o = esc(o)
            );
        }
        body.push_str(
            "<label>核查情况（必填，将记入任务记录）<textarea name=\"reason\" id=\"reason\" required maxlength=\"1000\"></textarea></label>\
             <label>认定日期（可空，默认今天）<input name=\"decided_on\" type=\"date\"></label><button id=\"submit-resolution\">提交办结</button></form></section>",
        );
    }
    if active && s.role.may_assign() {
        let _ = write!(
            body,
            "<section><h3>分派</h3><form method=\"post\" action=\"/tasks/{}/assign\"><input type=\"hidden\" name=\"csrf\" value=\"{}\">\
             <label>经办人 <input name=\"assignee\" required maxlength=\"100\"></label><button>分派</button></form></section>",
            esc(&t.line.id),
            esc(&s.csrf)
        );
    }
    page("复核任务", Some(s), &body)
}

pub fn recipient(s: &Session, masked: &str, _text: Option<&str>, error: Option<&str>) -> String {
    let mut body = String::from("<h2>救助对象查询</h2>");
    if let Some(e) = error {
        let _ = write!(body, "<div class=\"notice err\">{}{}</div>", esc(masked), esc(e));
    }
    body.push_str(
        "<section><form method=\"get\" action=\"/recipients\"><label>身份证号 <input name=\"id\" size=\"20\" required></label>\
         <button>查询（脱敏）</button></form></section>",
    );
    page("救助对象查询", Some(s), &body)
}

pub fn recipient_shown(s: &Session, shown_id: &str, id: &str, text: &str, unmasked: bool) -> String {
    let mut body = format!("<h2>救助对象 {}</h2>", esc(shown_id));
    if unmasked {
        body.push_str("<div class=\"notice ok\">未脱敏查看已记入审计日志。</div>");
    }
    let _ = write!(body, "<section><pre id=\"report\">{}</pre></section>", esc(text));
    if !unmasked && s.role.may_resolve() {
        let _ = write!(
            body,
            "<section><h3>查看未脱敏信息</h3><form method=\"post\" action=\"/recipients\"><input type=\"hidden\" name=\"csrf\" value=\"{}\">\
             <input type=\"hidden\" name=\"id\" value=\"{}\"><label>用途（必填，记入审计日志）<input name=\"purpose\" required size=\"40\"></label>\
             <button>查看</button></form></section>",
            esc(&s.csrf),
            esc(id)
        );
    }
    page("救助对象", Some(s), &body)
}

pub fn dead_letters(s: &Session, topics: &[String], topic: &str, rows: &[serde_json::Value]) -> String {
    let mut body = String::from(
        "<h2>退回记录（死信，已脱敏）</h2><form class=\"filters\" method=\"get\" action=\"/dead-letters\"><label>数据项<br><select name=\"topic\">",
    );
    body.push_str(&option("", "请选择", topic));
    for t in topics {
        body.push_str(&option(t, t, topic));
    }
    body.push_str("</select></label><button>查看</button></form>");
    if !topic.is_empty() {
        let _ = write!(
            body,
            "<p class=\"muted\">{} 条。部门联系人据此更正后重新报送。</p><table id=\"dead-letters\"><tr><th>文件</th><th>行</th><th>错误</th><th>原因</th></tr>",
            rows.len()
        );
        for r in rows {
            let _ = write!(
                body,
                "<tr><td>{}</td><td>{}</td><td>{}</td><td>{}</td></tr>",
                esc(r["source"]["file"].as_str().unwrap_or("")),
                esc(&r["source"]["row"].as_u64().map(|n| n.to_string()).unwrap_or_default()),
                esc(r["error_code"].as_str().unwrap_or("")),
                esc(r["reason"].as_str().unwrap_or(""))
            );
        }
        body.push_str("</table>");
    }
    page("退回记录", Some(s), &body)
}

pub fn deliveries(s: &Session, rows: &[(String, String, i64, i64)]) -> String {
    let mut body = String::from(
        "<h2>各部门交付状态</h2><p class=\"muted\">待发送 pending、已送达 delivered、已应用 applied、失败 failed；超期：写入一天后仍未应用。</p>\
         <table id=\"deliveries\"><tr><th>部门</th><th>状态</th><th>条数</th><th>其中超期</th></tr>",
    );
    for (agency, state, n, overdue) in rows {
        let _ = write!(
            body,
            "<tr><td>{}</td><td>{}</td><td>{n}</td><td class=\"{}\">{overdue}</td></tr>",
            esc(agency),
            esc(state),
            if *overdue > 0 { "overdue" } else { "" }
        );
    }
    body.push_str("</table>");
    page("部门交付", Some(s), &body)
}

pub fn audit(s: &Session, entries: &[&crate::audit::Entry]) -> String {
    let mut body = String::from(
        "<h2>审计日志（最近 300 条）</h2><p class=\"muted\">人员以密钥散列表示；完整性用 doudi audit verify 校验。</p>\
         <table id=\"audit\"><tr><th>序号</th><th>时间</th><th>操作人</th><th>操作</th><th>用途</th></tr>",
    );
    for e in entries {
        let _ = write!(
            body,
            "<tr><td>{}</td><td>{}</td><td>{}</td><td>{}</td><td>{}</td></tr>",
            e.seq,
            esc(&e.at),
            esc(&e.actor),
            esc(&e.action),
            esc(&e.purpose)
        );
    }
    body.push_str("</table>");
    page("审计日志", Some(s), &body)
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn text_is_escaped_for_elements_and_attributes() {
        assert_eq!(esc(r#"<a href="x">'&'</a>"#), "&lt;a href=&quot;x&quot;&gt;&#39;&amp;&#39;&lt;/a&gt;");
        assert_eq!(esc("张某"), "张某");
    }
}
