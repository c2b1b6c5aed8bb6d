//! Least privilege on the broker: `doudi acl plan` and `doudi acl apply`.
//!
//! The plan is the topic catalogue turned into Kafka ACLs. Every topic names the principals that
//! write it and those that read it (`writers`, `readers.principals` in `schemas/topics.toml`); a
//! writer gets WRITE and DESCRIBE on it, a reader READ and DESCRIBE. What the catalogue cannot say
//! comes from the role a principal's name gives it (`docs/security.md`):
//!
//! | principal | besides its topics |
//! |---|---|
//! | `doudi-connect-<connector>` | its two transactional ids `doudi-connect-<connector>` and `….1`; DESCRIBE_CONFIGS on its topic (the record size limit); groups `doudi-reader-…` (reading its progress back) |
//! | `doudi-matcher` | groups `doudi-matcher…` |
//! | `doudi-deliver-<agency>` | groups `doudi-deliver-<agency>…` and `doudi-read-…` (a day's file) |
//! | `doudi-acks` | groups `doudi-acks…` |
//! | `agency-<agency>` | groups `agency-<agency>…` |
//! | `dept-<department>`, `doudi-ops`, `doudi-workbench` | groups `doudi-tap-…` (`doudi dlq list`, `doudi tap`, the workbench's dead letters) |
//! | `doudi-lag` | DESCRIBE on every topic and group; READ on `__consumer_offsets` and on the topics doudi's own groups consume (for the timestamps of unconsumed records); groups `doudi-lag-…`, `doudi-status-…` |
//!
//! Nothing else is allowed: the broker runs with `allow.everyone.if.no.acl.found=false`, so a
//! principal not in the plan can do nothing. The broker's super users (the brokers themselves and
//! the administrator that runs `acl apply` and `topics apply`) are not part of the plan.
//!
//! `apply` makes the broker's ACLs equal to the plan: it lists what is there, adds what is missing
//! and removes everything else (any host-bound or DENY rule too), and prints the difference. It
//! speaks the Kafka protocol's three ACL requests itself (the `kafka-protocol` crate for the
//! messages, rustls for mutual TLS as the super user): librdkafka has ACL calls, but rdkafka does
//! not expose them, and the broker's `kafka-acls` tool starts a JVM per change (90 for a plan).

use std::collections::{BTreeMap, BTreeSet};
use std::path::{Path, PathBuf};

use serde::{Deserialize, Serialize};

use crate::schema::Catalogue;
use crate::topics::{AGENCIES, Affixes};

#[derive(Debug, thiserror::Error)]
pub enum AclError {
    #[error("{0}")]
    Plan(String),
    #[error("cannot read the connector configs in {path}: {message}")]
    Connectors { path: String, message: String },
    #[error("the broker's ACLs: {0}")]
    Broker(String),
}

#[derive(Clone, Copy, Debug, PartialEq, Eq, PartialOrd, Ord, Hash, Serialize, Deserialize)]
#[serde(rename_all = "SCREAMING_SNAKE_CASE")]
pub enum Operation {
    Read,
    Write,
    Describe,
    DescribeConfigs,
    Create,
    Delete,
    Alter,
    AlterConfigs,
    IdempotentWrite,
    ClusterAction,
    All,
}

impl Operation {
    const ALL: [Operation; 11] = [
        Operation::Read,
        Operation::Write,
        Operation::Describe,
        Operation::DescribeConfigs,
        Operation::Create,
        Operation::Delete,
        Operation::Alter,
        Operation::AlterConfigs,
        Operation::IdempotentWrite,
        Operation::ClusterAction,
        Operation::All,
    ];

    /// The name the broker prints (`READ`, `DESCRIBE_CONFIGS`).
    pub fn as_str(self) -> &'static str {
        match self {
            Operation::Read => "READ",
            Operation::Write => "WRITE",
            Operation::Describe => "DESCRIBE",
            Operation::DescribeConfigs => "DESCRIBE_CONFIGS",
            Operation::Create => "CREATE",
            Operation::Delete => "DELETE",
            Operation::Alter => "ALTER",
            Operation::AlterConfigs => "ALTER_CONFIGS",
            Operation::IdempotentWrite => "IDEMPOTENT_WRITE",
            Operation::ClusterAction => "CLUSTER_ACTION",
            Operation::All => "ALL",
        }
    }

    /// The name `kafka-acls --operation` takes (`Read`, `DescribeConfigs`).
    fn tool_name(self) -> String {
        self.as_str().split('_').map(|w| w[..1].to_string() + &w[1..].to_lowercase()).collect()
    }
}

#[derive(Clone, Copy, Debug, PartialEq, Eq, PartialOrd, Ord, Hash, Serialize, Deserialize)]
#[serde(rename_all = "SCREAMING_SNAKE_CASE")]
pub enum ResourceType {
    Topic,
    Group,
    TransactionalId,
    Cluster,
}

impl ResourceType {
    pub fn as_str(self) -> &'static str {
        match self {
            ResourceType::Topic => "TOPIC",
            ResourceType::Group => "GROUP",
            ResourceType::TransactionalId => "TRANSACTIONAL_ID",
            ResourceType::Cluster => "CLUSTER",
        }
    }
}

#[derive(Clone, Copy, Debug, PartialEq, Eq, PartialOrd, Ord, Hash, Serialize, Deserialize)]
#[serde(rename_all = "SCREAMING_SNAKE_CASE")]
pub enum Pattern {
    Literal,
    Prefixed,
}

impl Pattern {
    pub fn as_str(self) -> &'static str {
        match self {
            Pattern::Literal => "LITERAL",
            Pattern::Prefixed => "PREFIXED",
        }
    }
}

/// One ALLOW rule for any host: what `doudi acl plan --json` prints, one object per rule.
#[derive(Clone, Debug, PartialEq, Eq, PartialOrd, Ord, Hash, Serialize, Deserialize)]
pub struct Entry {
    /// `User:<name>`.
    pub principal: String,
    pub operation: Operation,
    pub resource_type: ResourceType,
    pub resource: String,
    pub pattern: Pattern,
}

/// A rule as the broker holds it: an [`Entry`] with its host and permission. `apply` removes any
/// that is not an ALLOW for every host in the plan.
#[derive(Clone, Debug, PartialEq, Eq, PartialOrd, Ord, Hash)]
pub struct BrokerAcl {
    pub entry: Entry,
    pub host: String,
    pub allow: bool,
}

impl BrokerAcl {
    fn planned(&self) -> bool {
        self.allow && self.host == "*"
    }
}

/// The principal that publishes dead letters of `name`'s feed and reads them, and so on: whether a
/// name follows the convention of `docs/security.md`.
pub fn check_principal_name(name: &str) -> Result<(), String> {
    let body_ok = |s: &str| !s.is_empty() && s.chars().all(|c| c.is_ascii_lowercase() || c.is_ascii_digit() || c == '-');
    let ok = match name {
        "doudi-matcher" | "doudi-acks" | "doudi-lag" | "doudi-ops" | "doudi-workbench" | "doudi-connect-*" => true,
        _ => {
            if let Some(connector) = name.strip_prefix("doudi-connect-") {
                body_ok(connector)
            } else if let Some(agency) = name.strip_prefix("doudi-deliver-") {
                AGENCIES.contains(&agency)
            } else if let Some(agency) = name.strip_prefix("agency-") {
                AGENCIES.contains(&agency) || agency == "civil"
            } else if let Some(department) = name.strip_prefix("dept-") {
                body_ok(department)
            } else {
                false
            }
        }
    };
    if ok {
        Ok(())
    } else {
        Err(format!(
            "does not follow the naming convention (doudi-connect-<connector>, doudi-matcher, doudi-deliver-<agency>, doudi-acks, doudi-lag, doudi-ops, doudi-workbench, agency-<{}|civil>, dept-<department>)",
            AGENCIES.join("|")
        ))
    }
}

/// A connector as the plan needs it: its name and the catalogue topic it writes.
#[derive(Clone, Debug, PartialEq, Eq)]
pub struct Connector {
    pub name: String,
    pub topic: String,
}

/// The connectors configured in `dir`: every `*.toml` with a `[connector]` table (delivery configs
/// are skipped).
pub fn connectors_in(dir: &Path) -> Result<Vec<Connector>, AclError> {
    let fail = |message: String| AclError::Connectors { path: dir.display().to_string(), message };
    let mut connectors = Vec::new();
    let mut paths: Vec<PathBuf> = std::fs::read_dir(dir)
        .map_err(|e| fail(e.to_string()))?
        .filter_map(|e| e.ok().map(|e| e.path()))
        .filter(|p| p.extension().is_some_and(|x| x == "toml"))
        .collect();
    paths.sort();
    for path in paths {
        let text = std::fs::read_to_string(&path).map_err(|e| fail(format!("{}: {e}", path.display())))?;
        let value: toml::Table = text.parse().map_err(|e| fail(format!("{}: {e}", path.display())))?;
        let Some(connector) = value.get("connector").and_then(toml::Value::as_table) else { continue };
        let field = |f: &str| connector.get(f).and_then(toml::Value::as_str).map(str::to_string);
        match (field("name"), field("topic")) {
            (Some(name), Some(topic)) => connectors.push(Connector { name, topic }),
            _ => return Err(fail(format!("{}: [connector] needs name and topic", path.display()))),
        }
    }
    Ok(connectors)
}

/// Groups a principal may use besides its own name's prefix (see the module's table).
fn role_groups(principal: &str) -> Vec<&'static str> {
    match principal {
        p if p.starts_with("doudi-connect-") => vec!["doudi-reader-"],
        p if p.starts_with("doudi-deliver-") => vec!["doudi-read-"],
        p if p.starts_with("dept-") || p == "doudi-ops" || p == "doudi-workbench" => vec!["doudi-tap-"],
        "doudi-lag" => vec!["doudi-lag-", "doudi-status-"],
        _ => vec![],
    }
}

/// The plan: every rule every principal needs, sorted, without duplicates.
pub fn plan(catalogue: &Catalogue, connectors: &[Connector], affixes: &Affixes) -> Result<Vec<Entry>, AclError> {
    let mut entries = BTreeSet::new();
    let mut add = |principal: &str, operation: Operation, resource_type: ResourceType, resource: &str, pattern: Pattern| {
        entries.insert(Entry { principal: format!("User:{principal}"), operation, resource_type, resource: resource.to_string(), pattern });
    };
    let expand = |p: &str| -> Vec<String> {
        if p == "doudi-connect-*" { connectors.iter().map(|c| format!("doudi-connect-{}", c.name)).collect() } else { vec![p.to_string()] }
    };
    for c in connectors {
        let principal = format!("doudi-connect-{}", c.name);
        let Some(topic) = catalogue.topic(&c.topic) else {
            return Err(AclError::Plan(format!("connector `{}` writes `{}`, which the topic catalogue does not list", c.name, c.topic)));
        };
        if !topic.writers.contains(&principal) {
            return Err(AclError::Plan(format!(
                "connector `{}` writes `{}`, but the catalogue does not name `{principal}` among that topic's writers",
                c.name, c.topic
            )));
        }
    }
    for t in &catalogue.topics {
        if t.writers.is_empty() || t.readers.iter().any(|r| r.principals.is_empty()) {
            return Err(AclError::Plan(format!(
                "topic `{}` in the catalogue does not name the principals that write it (writers) and read it (readers.principals)",
                t.name
            )));
        }
    }
    let mut principals = BTreeSet::new();
    let mut consumed_by_doudi = BTreeSet::new();
    for t in &catalogue.topics {
        let name = affixes.name(&t.name);
        for w in t.writers.iter().flat_map(|w| expand(w)) {
            add(&w, Operation::Write, ResourceType::Topic, &name, Pattern::Literal);
            add(&w, Operation::Describe, ResourceType::Topic, &name, Pattern::Literal);
            principals.insert(w);
        }
        for r in t.readers.iter().flat_map(|r| &r.principals).flat_map(|r| expand(r)) {
            add(&r, Operation::Read, ResourceType::Topic, &name, Pattern::Literal);
            add(&r, Operation::Describe, ResourceType::Topic, &name, Pattern::Literal);
            if r == "doudi-matcher" || r == "doudi-acks" || r.starts_with("doudi-deliver-") {
                consumed_by_doudi.insert(name.clone());
            }
            principals.insert(r);
        }
    }
    for c in connectors {
        let principal = format!("doudi-connect-{}", c.name);
        for id in [principal.clone(), format!("{principal}.1")] {
            add(&principal, Operation::Write, ResourceType::TransactionalId, &id, Pattern::Literal);
            add(&principal, Operation::Describe, ResourceType::TransactionalId, &id, Pattern::Literal);
        }
        add(&principal, Operation::DescribeConfigs, ResourceType::Topic, &affixes.name(&c.topic), Pattern::Literal);
    }
    principals.insert("doudi-lag".to_string());
    add("doudi-lag", Operation::Describe, ResourceType::Topic, "*", Pattern::Literal);
    add("doudi-lag", Operation::Describe, ResourceType::Group, "*", Pattern::Literal);
    add("doudi-lag", Operation::Read, ResourceType::Topic, "__consumer_offsets", Pattern::Literal);
    for topic in &consumed_by_doudi {
        add("doudi-lag", Operation::Read, ResourceType::Topic, topic, Pattern::Literal);
    }
    for p in &principals {
        // Connectors read their progress back with a group of their own; the others consume.
        if !p.starts_with("doudi-connect-")
            && !p.starts_with("dept-")
            && !matches!(p.as_str(), "doudi-ops" | "doudi-lag" | "doudi-workbench")
        {
            add(p, Operation::Read, ResourceType::Group, p, Pattern::Prefixed);
        }
        for g in role_groups(p) {
            add(p, Operation::Read, ResourceType::Group, g, Pattern::Prefixed);
        }
    }
    Ok(entries.into_iter().collect())
}

/// The plan as `kafka-acls` commands, one per principal, pattern and set of operations.
pub fn script(entries: &[Entry]) -> String {
    let mut out = String::from(
        "# doudi acl plan: the ACLs of every doudi principal, as the broker's own kafka-acls commands.\n\
         # Run as a super user; BOOTSTRAP and ADMIN_CONFIG are yours to set. `doudi acl apply` does the\n\
         # same and also removes what is not here.\n",
    );
    for args in invocations(entries.iter()) {
        out.push_str("kafka-acls --bootstrap-server \"$BOOTSTRAP\" --command-config \"$ADMIN_CONFIG\" --add");
        for a in args {
            out.push(' ');
            out.push_str(&shell_quote(&a));
        }
        out.push('\n');
    }
    out
}

fn shell_quote(s: &str) -> String {
    if s.chars().all(|c| c.is_ascii_alphanumeric() || "-_.:/=@".contains(c)) {
        s.to_string()
    } else {
        format!("'{}'", s.replace('\'', "'\\''"))
    }
}

fn resource_flag(r: ResourceType) -> &'static str {
    match r {
        ResourceType::Topic => "--topic",
        ResourceType::Group => "--group",
        ResourceType::TransactionalId => "--transactional-id",
        ResourceType::Cluster => "--cluster",
    }
}

/// `kafka-acls` arguments (after `--add` or `--remove`) that together make exactly `entries`:
/// one invocation per principal, pattern and set of operations, naming every resource that has
/// that set (the tool applies every operation to every resource named).
fn invocations<'a>(entries: impl Iterator<Item = &'a Entry>) -> Vec<Vec<String>> {
    let mut by_resource: BTreeMap<(&str, Pattern, ResourceType, &str), BTreeSet<Operation>> = BTreeMap::new();
    for e in entries {
        by_resource.entry((&e.principal, e.pattern, e.resource_type, &e.resource)).or_default().insert(e.operation);
    }
    type Principal<'a> = (&'a str, Pattern, BTreeSet<Operation>);
    let mut by_operations: BTreeMap<Principal, Vec<(ResourceType, &str)>> = BTreeMap::new();
    for ((principal, pattern, rtype, resource), ops) in by_resource {
        by_operations.entry((principal, pattern, ops)).or_default().push((rtype, resource));
    }
    by_operations
        .into_iter()
        .map(|((principal, pattern, ops), resources)| {
            let mut args = vec!["--allow-principal".to_string(), principal.to_string()];
            for op in ops {
                args.extend(["--operation".to_string(), op.tool_name()]);
            }
            for (rtype, resource) in resources {
                args.push(resource_flag(rtype).to_string());
                if rtype != ResourceType::Cluster {
                    args.push(resource.to_string());
                }
            }
            args.extend(["--resource-pattern-type".to_string(), pattern.as_str().to_lowercase()]);
            args
        })
        .collect()
}

/// What `apply` changes.
#[derive(Debug, Default, Serialize)]
pub struct Difference {
    pub add: Vec<Entry>,
    /// Rules on the broker that the plan does not have (with their host and permission when they
    /// are not ALLOW for any host).
    pub remove: Vec<Entry>,
    #[serde(skip)]
    remove_acls: Vec<BrokerAcl>,
    pub unchanged: usize,
}

pub fn difference(plan: &[Entry], current: &[BrokerAcl]) -> Difference {
    let planned: BTreeSet<&Entry> = plan.iter().collect();
    let present: BTreeSet<&Entry> = current.iter().filter(|a| a.planned()).map(|a| &a.entry).collect();
    let remove_acls: Vec<BrokerAcl> = current.iter().filter(|a| !a.planned() || !planned.contains(&a.entry)).cloned().collect();
    Difference {
        add: plan.iter().filter(|e| !present.contains(e)).cloned().collect(),
        remove: remove_acls.iter().map(|a| a.entry.clone()).collect(),
        unchanged: plan.iter().filter(|e| present.contains(e)).count(),
        remove_acls,
    }
}

/// Mutual-TLS access to one broker as a super user, speaking the Kafka protocol's ACL requests
/// (DescribeAcls, CreateAcls and DeleteAcls, version 1) over rustls.
pub struct Admin {
    stream: tokio_rustls::client::TlsStream<tokio::net::TcpStream>,
    correlation: i32,
}

/// Where and as whom `apply` connects: the librdkafka options of the settings name the files
/// (`ssl.ca.location`, `ssl.certificate.location`, `ssl.key.location`).
pub struct AdminTls {
    pub bootstrap: String,
    pub ca: PathBuf,
    pub certificate: PathBuf,
    pub key: PathBuf,
}

impl AdminTls {
    /// From the Kafka settings: `security.protocol` must be SSL with a client certificate.
    pub fn from_settings(settings: &crate::config::KafkaSettings, bootstrap: Option<&str>) -> Result<Self, AclError> {
        let option = |name: &str| settings.options.get(name).map(PathBuf::from);
        let protocol = settings.options.get("security.protocol").map(|p| p.to_ascii_uppercase());
        match (protocol.as_deref(), option("ssl.ca.location"), option("ssl.certificate.location"), option("ssl.key.location")) {
            (Some("SSL"), Some(ca), Some(certificate), Some(key)) => Ok(AdminTls {
                bootstrap: bootstrap.map(str::to_string).unwrap_or_else(|| settings.bootstrap_servers.split(',').next().unwrap_or_default().trim().to_string()),
                ca,
                certificate,
                key,
            }),
            _ => Err(AclError::Plan(
                "acl apply logs in as the broker's super user with mutual TLS: set kafka.options security.protocol = \"SSL\", ssl.ca.location, ssl.certificate.location and ssl.key.location".into(),
            )),
        }
    }
}

fn broker_error(message: impl std::fmt::Display) -> AclError {
    AclError::Broker(message.to_string())
}

mod code {
    use super::{Operation, Pattern, ResourceType};

    pub const ANY: i8 = 1;
    pub const DENY: i8 = 2;
    pub const ALLOW: i8 = 3;

    pub fn resource(r: ResourceType) -> i8 {
        match r {
            ResourceType::Topic => 2,
            ResourceType::Group => 3,
            ResourceType::Cluster => 4,
            ResourceType::TransactionalId => 5,
        }
    }

    pub fn resource_of(c: i8) -> Option<ResourceType> {
        [ResourceType::Topic, ResourceType::Group, ResourceType::Cluster, ResourceType::TransactionalId]
            .into_iter()
            .find(|r| resource(*r) == c)
    }

    pub fn pattern(p: Pattern) -> i8 {
        match p {
            Pattern::Literal => 3,
            Pattern::Prefixed => 4,
        }
    }

    pub fn pattern_of(c: i8) -> Option<Pattern> {
        [Pattern::Literal, Pattern::Prefixed].into_iter().find(|p| pattern(*p) == c)
    }

    pub fn operation(o: Operation) -> i8 {
        match o {
            Operation::All => 2,
            Operation::Read => 3,
            Operation::Write => 4,
            Operation::Create => 5,
            Operation::Delete => 6,
            Operation::Alter => 7,
            Operation::Describe => 8,
            Operation::ClusterAction => 9,
            Operation::DescribeConfigs => 10,
            Operation::AlterConfigs => 11,
            Operation::IdempotentWrite => 12,
        }
    }

    pub fn operation_of(c: i8) -> Option<Operation> {
        Operation::ALL.into_iter().find(|o| operation(*o) == c)
    }
}

impl Admin {
    pub async fn connect(tls: &AdminTls) -> Result<Admin, AclError> {
        use rustls::pki_types::pem::PemObject;
        use rustls::pki_types::{CertificateDer, PrivateKeyDer, ServerName};
        let read = |what: &str, path: &Path| broker_error(format!("cannot read {what} {}", path.display()));
        let mut roots = rustls::RootCertStore::empty();
        for cert in CertificateDer::pem_file_iter(&tls.ca).map_err(|_| read("the CA", &tls.ca))? {
            roots.add(cert.map_err(|_| read("the CA", &tls.ca))?).map_err(|e| broker_error(format!("the CA {}: {e}", tls.ca.display())))?;
        }
        let chain: Vec<CertificateDer<'static>> = CertificateDer::pem_file_iter(&tls.certificate)
            .map_err(|_| read("the certificate", &tls.certificate))?
            .collect::<Result<_, _>>()
            .map_err(|_| read("the certificate", &tls.certificate))?;
        let key = PrivateKeyDer::from_pem_file(&tls.key).map_err(|_| read("the key", &tls.key))?;
        let config = rustls::ClientConfig::builder_with_provider(std::sync::Arc::new(rustls::crypto::ring::default_provider()))
            .with_safe_default_protocol_versions()
            .map_err(broker_error)?
            .with_root_certificates(roots)
            .with_client_auth_cert(chain, key)
            .map_err(broker_error)?;
        let host = tls.bootstrap.rsplit_once(':').map(|(h, _)| h).unwrap_or(&tls.bootstrap).trim_matches(['[', ']']);
        let name = ServerName::try_from(host.to_string()).map_err(|e| broker_error(format!("{host}: {e}")))?;
        let tcp = tokio::time::timeout(std::time::Duration::from_secs(30), tokio::net::TcpStream::connect(&tls.bootstrap))
            .await
            .map_err(|_| broker_error(format!("{}: no answer within 30 s", tls.bootstrap)))?
            .map_err(|e| broker_error(format!("{}: {e}", tls.bootstrap)))?;
        let stream = tokio_rustls::TlsConnector::from(std::sync::Arc::new(config))
            .connect(name, tcp)
            .await
            .map_err(|e| broker_error(format!("TLS with {}: {e}", tls.bootstrap)))?;
        Ok(Admin { stream, correlation: 0 })
    }

    async fn call<Q, R>(&mut self, key: kafka_protocol::messages::ApiKey, request: &Q) -> Result<R, AclError>
    where
        Q: kafka_protocol::protocol::Encodable + kafka_protocol::protocol::HeaderVersion,
        R: kafka_protocol::protocol::Decodable + kafka_protocol::protocol::HeaderVersion,
    {
        use kafka_protocol::messages::{RequestHeader, ResponseHeader};
        use kafka_protocol::protocol::{Decodable, Encodable, StrBytes};
        use tokio::io::{AsyncReadExt, AsyncWriteExt};
        const VERSION: i16 = 1;
        self.correlation += 1;
        let header = RequestHeader::default()
            .with_request_api_key(key as i16)
            .with_request_api_version(VERSION)
            .with_correlation_id(self.correlation)
            .with_client_id(Some(StrBytes::from_static_str("doudi-acl")));
        let mut body = bytes::BytesMut::new();
        header.encode(&mut body, Q::header_version(VERSION)).map_err(broker_error)?;
        request.encode(&mut body, VERSION).map_err(broker_error)?;
        let length = i32::try_from(body.len()).map_err(broker_error)?;
        self.stream.write_all(&length.to_be_bytes()).await.map_err(broker_error)?;
        self.stream.write_all(&body).await.map_err(broker_error)?;
        self.stream.flush().await.map_err(broker_error)?;
        let mut length = [0u8; 4];
        self.stream.read_exact(&mut length).await.map_err(|e| broker_error(format!("the broker closed the connection: {e}")))?;
        let length = usize::try_from(i32::from_be_bytes(length)).map_err(broker_error)?;
        if length > 64 << 20 {
            return Err(broker_error(format!("a response of {length} bytes is not believable")));
        }
        let mut response = vec![0u8; length];
        self.stream.read_exact(&mut response).await.map_err(broker_error)?;
        let mut response = bytes::Bytes::from(response);
        let header = ResponseHeader::decode(&mut response, R::header_version(VERSION)).map_err(broker_error)?;
        if header.correlation_id != self.correlation {
            return Err(broker_error("a response to another request came back"));
        }
        R::decode(&mut response, VERSION).map_err(broker_error)
    }

    /// Every ACL the broker holds.
    pub async fn list(&mut self) -> Result<Vec<BrokerAcl>, AclError> {
        use kafka_protocol::messages::{ApiKey, DescribeAclsRequest, DescribeAclsResponse};
        // The generated defaults of the string filters are "", not null (= any): set them.
        let request = DescribeAclsRequest::default()
            .with_resource_type_filter(code::ANY)
            .with_resource_name_filter(None)
            .with_principal_filter(None)
            .with_host_filter(None)
            .with_pattern_type_filter(code::ANY)
            .with_operation(code::ANY)
            .with_permission_type(code::ANY);
        let response: DescribeAclsResponse = self.call(ApiKey::DescribeAcls, &request).await?;
        if response.error_code != 0 {
            return Err(broker_error(format!(
                "describing ACLs: error {} {}",
                response.error_code,
                response.error_message.as_deref().unwrap_or_default()
            )));
        }
        let mut acls = Vec::new();
        for r in response.resources {
            let (Some(resource_type), Some(pattern)) = (code::resource_of(r.resource_type), code::pattern_of(r.pattern_type)) else {
                return Err(broker_error(format!(
                    "an ACL of an unknown resource or pattern type ({}, {})",
                    r.resource_type, r.pattern_type
                )));
            };
            for a in r.acls {
                let operation =
                    code::operation_of(a.operation).ok_or_else(|| broker_error(format!("an ACL of unknown operation {}", a.operation)))?;
                acls.push(BrokerAcl {
                    entry: Entry {
                        principal: a.principal.to_string(),
                        operation,
                        resource_type,
                        resource: r.resource_name.to_string(),
                        pattern,
                    },
                    host: a.host.to_string(),
                    allow: a.permission_type == code::ALLOW,
                });
            }
        }
        acls.sort();
        Ok(acls)
    }

    /// Adds what is missing, then removes what is not planned.
    pub async fn apply(&mut self, difference: &Difference) -> Result<(), AclError> {
        use kafka_protocol::messages::create_acls_request::AclCreation;
        use kafka_protocol::messages::delete_acls_request::DeleteAclsFilter;
        use kafka_protocol::messages::{ApiKey, CreateAclsRequest, CreateAclsResponse, DeleteAclsRequest, DeleteAclsResponse};
        use kafka_protocol::protocol::StrBytes;
        if !difference.add.is_empty() {
            let creations = difference
                .add
                .iter()
                .map(|e| {
                    AclCreation::default()
                        .with_resource_type(code::resource(e.resource_type))
                        .with_resource_name(StrBytes::from_string(e.resource.clone()))
                        .with_resource_pattern_type(code::pattern(e.pattern))
                        .with_principal(StrBytes::from_string(e.principal.clone()))
                        .with_host(StrBytes::from_static_str("*"))
                        .with_operation(code::operation(e.operation))
                        .with_permission_type(code::ALLOW)
                })
                .collect();
            let response: CreateAclsResponse =
                self.call(ApiKey::CreateAcls, &CreateAclsRequest::default().with_creations(creations)).await?;
            if let Some(failed) = response.results.iter().find(|r| r.error_code != 0) {
                return Err(broker_error(format!(
                    "creating ACLs: error {} {}",
                    failed.error_code,
                    failed.error_message.as_deref().unwrap_or_default()
                )));
            }
        }
        if !difference.remove_acls.is_empty() {
            let filters = difference
                .remove_acls
                .iter()
                .map(|a| {
                    DeleteAclsFilter::default()
                        .with_resource_type_filter(code::resource(a.entry.resource_type))
                        .with_resource_name_filter(Some(StrBytes::from_string(a.entry.resource.clone())))
                        .with_pattern_type_filter(code::pattern(a.entry.pattern))
                        .with_principal_filter(Some(StrBytes::from_string(a.entry.principal.clone())))
                        .with_host_filter(Some(StrBytes::from_string(a.host.clone())))
                        .with_operation(code::operation(a.entry.operation))
                        .with_permission_type(if a.allow { code::ALLOW } else { code::DENY })
                })
                .collect();
            let response: DeleteAclsResponse = self.call(ApiKey::DeleteAcls, &DeleteAclsRequest::default().with_filters(filters)).await?;
            if let Some(failed) = response.filter_results.iter().find(|r| r.error_code != 0) {
                return Err(broker_error(format!(
                    "deleting ACLs: error {} {}",
                    failed.error_code,
                    failed.error_message.as_deref().unwrap_or_default()
                )));
            }
        }
        Ok(())
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    fn catalogue() -> Catalogue {
        Catalogue::load(Path::new(concat!(env!("CARGO_MANIFEST_DIR"), "/schemas"))).expect("catalogue")
    }

    fn shipped() -> Vec<Entry> {
        let connectors = connectors_in(Path::new(concat!(env!("CARGO_MANIFEST_DIR"), "/connectors"))).expect("connectors");
        plan(&catalogue(), &connectors, &Affixes::default()).expect("plan")
    }

    fn allows(plan: &[Entry], principal: &str, op: Operation, rtype: ResourceType, resource: &str) -> bool {
        plan.iter().any(|e| {
            e.principal == format!("User:{principal}")
                && (e.operation == op)
                && e.resource_type == rtype
                && match e.pattern {
                    Pattern::Literal => e.resource == resource || e.resource == "*",
                    Pattern::Prefixed => resource.starts_with(&e.resource),
                }
        })
    }

    #[test]
    fn each_principal_gets_its_own_topics_only() {
        let p = shipped();
        use Operation::*;
        use ResourceType::*;
        assert!(allows(&p, "doudi-connect-civil-household", Write, Topic, "dept.civil.household.v1"));
        assert!(allows(&p, "doudi-connect-civil-household", Write, Topic, "dlq.dept.civil.household.v1"));
        assert!(!allows(&p, "doudi-connect-civil-household", Write, Topic, "dept.hrss.employment.v1"));
        assert!(!allows(&p, "doudi-connect-civil-household", Read, Topic, "dept.civil.household.v1"));
        assert!(allows(&p, "doudi-connect-civil-household", Write, TransactionalId, "doudi-connect-civil-household.1"));
        assert!(!allows(&p, "doudi-connect-civil-household", Write, TransactionalId, "doudi-connect-hrss-employment"));
        assert!(allows(&p, "agency-medical", Read, Topic, "exchange.entitlement.medical.v1"));
        assert!(!allows(&p, "agency-medical", Read, Topic, "exchange.entitlement.housing.v1"));
        assert!(allows(&p, "agency-medical", Write, Topic, "exchange.ack.medical.v1"));
        assert!(!allows(&p, "agency-medical", Write, Topic, "exchange.ack.housing.v1"));
        assert!(allows(&p, "agency-medical", Read, Group, "agency-medical-payments"));
        assert!(!allows(&p, "agency-medical", Read, Group, "agency-housing"));
        assert!(allows(&p, "doudi-matcher", Write, Topic, "dlq.dept.vital.event.v1"));
        assert!(allows(&p, "doudi-matcher", Write, Topic, "exchange.entitlement.union.v1"));
        assert!(!allows(&p, "doudi-matcher", Read, Topic, "exchange.entitlement.union.v1"));
        assert!(allows(&p, "doudi-acks", Read, Topic, "exchange.ack.hrss.v1"));
        assert!(allows(&p, "dept-civil", Read, Topic, "dlq.dept.civil.household.v1"));
        assert!(!allows(&p, "dept-civil", Read, Topic, "dlq.dept.hrss.employment.v1"));
        // Restricted topics: only the principals their catalogue entry names.
        for t in catalogue().topics.iter().filter(|t| t.restricted) {
            let named: BTreeSet<String> = t
                .readers
                .iter()
                .flat_map(|r| &r.principals)
                .flat_map(|r| if r == "doudi-connect-*" { vec![] } else { vec![format!("User:{r}")] })
                .collect();
            for e in p.iter().filter(|e| e.resource == t.name && e.operation == Read) {
                assert!(named.contains(&e.principal), "{} reads restricted {}", e.principal, t.name);
            }
        }
    }

    #[test]
    fn a_connector_the_catalogue_does_not_name_is_refused() {
        let rogue = [Connector { name: "rogue".into(), topic: "dept.civil.household.v1".into() }];
        let err = plan(&catalogue(), &rogue, &Affixes::default()).expect_err("refused").to_string();
        assert!(err.contains("doudi-connect-rogue"), "{err}");
    }

    #[test]
    fn the_difference_is_exact() {
        let entry = |principal: &str, resource: &str| Entry {
            principal: principal.into(),
            operation: Operation::Read,
            resource_type: ResourceType::Topic,
            resource: resource.into(),
            pattern: Pattern::Literal,
        };
        let current = vec![
            BrokerAcl { entry: entry("User:a", "t1"), host: "*".into(), allow: true },
            BrokerAcl { entry: entry("User:a", "t1"), host: "10.0.0.1".into(), allow: true },
            BrokerAcl { entry: entry("User:b", "t1"), host: "*".into(), allow: false },
            BrokerAcl { entry: entry("User:c", "t9"), host: "*".into(), allow: true },
        ];
        let d = difference(&[entry("User:a", "t1"), entry("User:a", "t2")], &current);
        assert_eq!(d.add, vec![entry("User:a", "t2")]);
        assert_eq!(d.unchanged, 1);
        assert_eq!(d.remove.len(), 3, "the host-bound, the DENY and the unplanned rule go");
        for o in Operation::ALL {
            assert_eq!(code::operation_of(code::operation(o)), Some(o));
        }
    }

    #[test]
    fn commands_cover_exactly_the_plan() {
        let p = shipped();
        let products: usize = invocations(p.iter())
            .iter()
            .map(|args| {
                let ops = args.iter().filter(|a| *a == "--operation").count();
                let resources =
                    args.iter().filter(|a| ["--topic", "--group", "--transactional-id", "--cluster"].contains(&a.as_str())).count();
                ops * resources
            })
            .sum();
        assert_eq!(products, p.len());
        assert_eq!(Operation::DescribeConfigs.tool_name(), "DescribeConfigs");
    }
}
