//! doudi's process configuration: one TOML file, every field overridable by an environment variable.
//!
//! Guarantees: an unknown field, a value of the wrong type or an invalid value stops start-up with an
//! error that names the field (`kafka.bootstrap_servers`) or the variable (`DOUDI_KAFKA_BOOTSTRAP_SERVERS`).
//! Defaults live in one place, the `Default` impls below. Secrets are never printed: `Settings` has a
//! redacting `Debug` for the database URL and the Kafka options that carry credentials.
//!
//! Environment variables are named after the field path: `DOUDI_<SECTION>_<FIELD>` in upper case, e.g.
//! `DOUDI_DATABASE_URL`, `DOUDI_KAFKA_BOOTSTRAP_SERVERS`, `DOUDI_HTTP_PORT`. A librdkafka option is set by
//! `DOUDI_KAFKA_OPTIONS_<NAME>` with the dots of its name written as underscores, e.g.
//! `DOUDI_KAFKA_OPTIONS_SASL_PASSWORD` for `sasl.password`. `DOUDI_CONFIG` names the file itself.

use std::collections::BTreeMap;
use std::fmt;
use std::path::{Path, PathBuf};

use serde::{Deserialize, Serialize};

/// The environment variable that names the configuration file.
pub const CONFIG_ENV: &str = "DOUDI_CONFIG";
const ENV_PREFIX: &str = "DOUDI_";
const KAFKA_OPTIONS_PREFIX: &str = "DOUDI_KAFKA_OPTIONS_";
/// Variables with the doudi prefix that are not configuration fields.
const NON_FIELD_VARS: &[&str] = &[
    CONFIG_ENV,
    "DOUDI_CACHE",
    "DOUDI_KAFKA_DATA",
    "DOUDI_KAFKA_PORT",
    "DOUDI_PG_DATA",
    "DOUDI_PG_PORT",
    "DOUDI_TEST_DATABASE_URL",
    "DOUDI_BENCH_ROWS",
    // `doudi workbench --accounts` (a command-line option that may come from the environment).
    "DOUDI_WORKBENCH_ACCOUNTS",
];

/// Why the configuration was refused. Each variant names the field or variable at fault.
#[derive(Debug, thiserror::Error)]
pub enum ConfigError {
    #[error("cannot read configuration file {path}: {source}")]
    Read { path: PathBuf, source: std::io::Error },
    #[error("configuration file {path} is not valid TOML: {message}")]
    Syntax { path: PathBuf, message: String },
    #[error("configuration field `{field}` is invalid: {message}")]
    Field { field: String, message: String },
    #[error("environment variable {var} is not a doudi configuration field (known: {known})")]
    UnknownVariable { var: String, known: String },
    #[error("environment variable {var} (field `{field}`) is invalid: {message}")]
    Variable { var: String, field: String, message: String },
}

/// The whole process configuration.
#[derive(Clone, Default, Deserialize, Serialize)]
#[serde(deny_unknown_fields, default)]
pub struct Settings {
    /// How to reach Kafka.
    pub kafka: KafkaSettings,
    /// The shared recipient database.
    pub database: DatabaseSettings,
    /// Logging.
    pub log: LogSettings,
    /// The HTTP endpoint for `/healthz`, `/readyz` and `/metrics`.
    pub http: HttpSettings,
    /// Keys for pseudonymous message keys and the audit log.
    pub keys: KeySettings,
    /// Who the audit log names as the actor of this process's audited actions.
    pub audit: AuditSettings,
}

/// The audit log's actor, as the deployment binds it to its identity system (a CLI's `--actor`
/// overrides it).
#[derive(Clone, Default, Deserialize, Serialize)]
#[serde(deny_unknown_fields, default)]
pub struct AuditSettings {
    /// The authenticated identity of whoever runs this process (`DOUDI_AUDIT_ACTOR`). Empty: every
    /// audited action must then be given `--actor`.
    pub actor: String,
}

/// How to reach Kafka.
#[derive(Clone, Deserialize, Serialize)]
#[serde(deny_unknown_fields, default)]
pub struct KafkaSettings {
    /// Comma-separated `host:port` list of brokers to bootstrap from.
    pub bootstrap_servers: String,
    /// Client id reported to the brokers, so operators can tell doudi's connections apart.
    pub client_id: String,
    /// Any further librdkafka option, passed through as is: TLS (`security.protocol = "SSL"`,
    /// `ssl.ca.location`, ...) and SASL (`sasl.mechanism`, `sasl.username`, `sasl.password`).
    pub options: BTreeMap<String, String>,
}

impl Default for KafkaSettings {
    fn default() -> Self {
        Self { bootstrap_servers: "127.0.0.1:9092".into(), client_id: "doudi".into(), options: BTreeMap::new() }
    }
}

/// The shared recipient database.
#[derive(Clone, Deserialize, Serialize)]
#[serde(deny_unknown_fields, default)]
pub struct DatabaseSettings {
    /// `sqlite://path/to/file.db` (the embedded default, created if missing) or
    /// `postgres://user:password@host:port/db` (production and tests; `?sslmode=verify-full&sslrootcert=CA.pem` for TLS that checks the server).
    pub url: String,
    /// Largest number of pooled connections.
    pub max_connections: u32,
    /// How long to wait for a connection before giving up, in seconds.
    pub connect_timeout_secs: u64,
}

impl Default for DatabaseSettings {
    fn default() -> Self {
        Self { url: "sqlite://doudi.db".into(), max_connections: 8, connect_timeout_secs: 10 }
    }
}

/// Log output.
#[derive(Clone, Deserialize, Serialize)]
#[serde(deny_unknown_fields, default)]
pub struct LogSettings {
    /// `human` (readable lines on a terminal) or `json` (one object per line, for collectors).
    pub format: LogFormat,
    /// A `tracing` filter such as `info` or `doudi=debug,rdkafka=warn`.
    pub level: String,
}

impl Default for LogSettings {
    fn default() -> Self {
        Self { format: LogFormat::Human, level: "info".into() }
    }
}

/// Log line format.
#[derive(Clone, Copy, Debug, PartialEq, Eq, Deserialize, Serialize)]
#[serde(rename_all = "lowercase")]
pub enum LogFormat {
    Human,
    Json,
}

/// The HTTP endpoint for health, readiness and metrics.
#[derive(Clone, Deserialize, Serialize)]
#[serde(deny_unknown_fields, default)]
pub struct HttpSettings {
    /// Address to listen on.
    pub bind: String,
    /// Port for `/healthz`, `/readyz` and `/metrics`; 0 disables the endpoint.
    pub port: u16,
    /// A PEM certificate chain: with `tls_key`, the data endpoints (HTTP push, the acknowledgement
    /// callback) serve HTTPS with it. The ops endpoint stays plain HTTP for the kubelet's probes and
    /// Prometheus; it serves no personal data.
    pub tls_cert: String,
    /// The PEM private key of `tls_cert` (a Secret's file; never logged).
    pub tls_key: String,
}

impl Default for HttpSettings {
    fn default() -> Self {
        Self { bind: "127.0.0.1".into(), port: 9464, tls_cert: String::new(), tls_key: String::new() }
    }
}

impl HttpSettings {
    /// The data endpoints' TLS configuration, when `tls_cert` and `tls_key` are set.
    pub fn data_tls(&self) -> Result<Option<std::sync::Arc<rustls::ServerConfig>>, ConfigError> {
        match (self.tls_cert.is_empty(), self.tls_key.is_empty()) {
            (true, true) => Ok(None),
            (false, false) => crate::http::server_tls(Path::new(&self.tls_cert), Path::new(&self.tls_key))
                .map(Some)
                .map_err(|(field, message)| ConfigError::Field { field: field.into(), message }),
            (true, false) => Err(ConfigError::Field { field: "http.tls_cert".into(), message: "is required with http.tls_key".into() }),
            (false, true) => Err(ConfigError::Field { field: "http.tls_key".into(), message: "is required with http.tls_cert".into() }),
        }
    }
}

/// Secret used to derive pseudonymous message keys from ID numbers.
#[derive(Clone, Deserialize, Serialize)]
#[serde(deny_unknown_fields, default)]
pub struct KeySettings {
    /// HMAC-SHA-256 secret for message keys. The default is a development value, refused unless
    /// `development` is true.
    pub hmac_secret: String,
    /// Says this is a development deployment (a laptop, the demo, the tests), where the built-in
    /// development keys are allowed. Off by default: a deployment that forgets its secrets stops at
    /// start-up rather than pseudonymising the province's ID numbers with a key printed in the code.
    pub development: bool,
    /// The key of the audit log's MACs (HMAC-SHA-256). Keep it out of the database (a Secret): whoever
    /// can write the audit table must not be able to seal a forged entry. The default is a
    /// development value, refused unless `development` is true.
    pub audit_key: String,
}

/// The built-in development audit key. Refused unless `keys.development` is true.
pub const DEVELOPMENT_AUDIT_KEY: &str = "doudi-development-audit-key-not-for-production";

/// The built-in development secret. Refused unless `keys.development` is true.
pub const DEVELOPMENT_HMAC_SECRET: &str = "doudi-development-secret-not-for-production";

impl Default for KeySettings {
    fn default() -> Self {
        Self { hmac_secret: DEVELOPMENT_HMAC_SECRET.into(), development: false, audit_key: DEVELOPMENT_AUDIT_KEY.into() }
    }
}

impl fmt::Debug for Settings {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        let options: BTreeMap<&str, &str> =
            self.kafka.options.iter().map(|(k, v)| (k.as_str(), if is_secret_option(k) { "<redacted>" } else { v.as_str() })).collect();
        f.debug_struct("Settings")
            .field("kafka.bootstrap_servers", &self.kafka.bootstrap_servers)
            .field("kafka.options", &options)
            .field("database.url", &redact_url(&self.database.url))
            .field("log.format", &self.log.format)
            .field("http.port", &self.http.port)
            .field("keys.development", &self.keys.development)
            .finish()
    }
}

fn is_secret_option(name: &str) -> bool {
    name.contains("password") || name.contains("secret") || name.ends_with(".key.pem") || name.contains("token")
}

/// The URL with any password replaced, fit for logs and error messages.
pub fn redact_url(url: &str) -> String {
    match (url.find("://"), url.rfind('@')) {
        (Some(scheme_end), Some(at)) if at > scheme_end => {
            let userinfo = &url[scheme_end + 3..at];
            let user = userinfo.split(':').next().unwrap_or("");
            format!("{}://{}:<redacted>@{}", &url[..scheme_end], user, &url[at + 1..])
        }
        _ => url.to_string(),
    }
}

impl Settings {
    /// Loads the file (if any), applies environment overrides, and checks every field.
    pub fn load(path: Option<&Path>) -> Result<Self, ConfigError> {
        Self::load_with_env(path, std::env::vars())
    }

    /// As [`Settings::load`], with the environment given explicitly (for tests).
    pub fn load_with_env(path: Option<&Path>, env: impl IntoIterator<Item = (String, String)>) -> Result<Self, ConfigError> {
        let mut tree = match path {
            Some(path) => {
                let text = std::fs::read_to_string(path).map_err(|source| ConfigError::Read { path: path.into(), source })?;
                let value: toml::Table = text
                    .parse()
                    .map_err(|e: toml::de::Error| ConfigError::Syntax { path: path.into(), message: e.message().to_string() })?;
                value
            }
            None => toml::Table::new(),
        };
        apply_env(&mut tree, env)?;
        let settings: Settings = serde_path_to_error::deserialize(toml::Value::Table(tree)).map_err(|e| {
            let field = e.path().to_string();
            ConfigError::Field { field, message: e.into_inner().message().to_string() }
        })?;
        settings.check()?;
        Ok(settings)
    }

    /// Cross-field checks that serde cannot express.
    pub fn check(&self) -> Result<(), ConfigError> {
        let field = |field: &str, message: String| Err(ConfigError::Field { field: field.into(), message });
        if self.kafka.bootstrap_servers.trim().is_empty() {
            return field("kafka.bootstrap_servers", "must list at least one host:port".into());
        }
        for server in self.kafka.bootstrap_servers.split(',') {
            let server = server.trim();
            let ok = server.rsplit_once(':').is_some_and(|(host, port)| !host.is_empty() && port.parse::<u16>().is_ok());
            if !ok {
                return field("kafka.bootstrap_servers", format!("`{server}` is not host:port"));
            }
        }
        for name in self.kafka.options.keys() {
            if name.is_empty() || !name.chars().all(|c| c.is_ascii_lowercase() || c.is_ascii_digit() || c == '.' || c == '_') {
                return field(&format!("kafka.options.{name}"), "is not a librdkafka option name".into());
            }
            if matches!(name.as_str(), "bootstrap.servers" | "client.id") {
                return field(&format!("kafka.options.{name}"), "is set by kafka.bootstrap_servers / kafka.client_id; set it there".into());
            }
        }
        let url = &self.database.url;
        if !(url.starts_with("sqlite:") || url.starts_with("postgres://") || url.starts_with("postgresql://")) {
            return field("database.url", format!("`{}` must start with sqlite: or postgres://", redact_url(url)));
        }
        let (minimum, why) = match crate::db::Backend::of_url(url) {
            crate::db::Backend::Sqlite => (1, ""),
            crate::db::Backend::Postgres => (2, " on PostgreSQL (the outbox relay holds its lock on a connection of its own)"),
        };
        if self.database.max_connections < minimum {
            return field("database.max_connections", format!("must be at least {minimum}{why}"));
        }
        if self.http.bind.parse::<std::net::IpAddr>().is_err() {
            return field("http.bind", format!("`{}` is not an IP address", self.http.bind));
        }
        self.http.data_tls()?;
        if tracing_subscriber::EnvFilter::try_new(&self.log.level).is_err() {
            return field("log.level", format!("`{}` is not a tracing filter", self.log.level));
        }
        if self.keys.hmac_secret.len() < 16 {
            return field("keys.hmac_secret", "must be at least 16 bytes".into());
        }
        const SET_YOUR_OWN: &str = "is the built-in development value; set a secret of your own (at least 16 bytes, from a Secret), \
                                    or keys.development = true (DOUDI_KEYS_DEVELOPMENT=true) on a development machine";
        if !self.keys.development && self.keys.hmac_secret == DEVELOPMENT_HMAC_SECRET {
            return field("keys.hmac_secret", SET_YOUR_OWN.into());
        }
        if self.keys.audit_key.len() < 16 {
            return field("keys.audit_key", "must be at least 16 bytes".into());
        }
        if !self.keys.development && self.keys.audit_key == DEVELOPMENT_AUDIT_KEY {
            return field("keys.audit_key", SET_YOUR_OWN.into());
        }
        Ok(())
    }
}

/// Writes every `DOUDI_*` variable into the TOML tree at the field it names.
fn apply_env(tree: &mut toml::Table, env: impl IntoIterator<Item = (String, String)>) -> Result<(), ConfigError> {
    let defaults = toml::Table::try_from(Settings::default()).unwrap_or_default();
    let mut leaves = Vec::new();
    collect_leaves(&defaults, &mut Vec::new(), &mut leaves);
    let mut vars: Vec<(String, String)> = env.into_iter().filter(|(k, _)| k.starts_with(ENV_PREFIX)).collect();
    vars.sort();
    for (var, raw) in vars {
        if NON_FIELD_VARS.contains(&var.as_str()) {
            continue;
        }
        if let Some(option) = var.strip_prefix(KAFKA_OPTIONS_PREFIX) {
            let name = option.to_ascii_lowercase().replace('_', ".");
            let kafka = tree.entry("kafka").or_insert_with(|| toml::Value::Table(toml::Table::new()));
            let Some(kafka) = kafka.as_table_mut() else {
                return Err(ConfigError::Field { field: "kafka".into(), message: "must be a table".into() });
            };
            let options = kafka.entry("options").or_insert_with(|| toml::Value::Table(toml::Table::new()));
            if let Some(options) = options.as_table_mut() {
                options.insert(name, toml::Value::String(raw));
            }
            continue;
        }
        let Some((path, default)) = leaves.iter().find(|(path, _)| env_name(path) == var) else {
            let known = leaves.iter().map(|(p, _)| env_name(p)).collect::<Vec<_>>().join(", ");
            return Err(ConfigError::UnknownVariable { var, known });
        };
        let field = path.join(".");
        let value = match default {
            toml::Value::Integer(_) => raw.trim().parse::<i64>().map(toml::Value::Integer).map_err(|_| ConfigError::Variable {
                var: var.clone(),
                field: field.clone(),
                message: "expected a whole number".into(),
            })?,
            toml::Value::Boolean(_) => match raw.trim() {
                "true" | "1" | "yes" => toml::Value::Boolean(true),
                "false" | "0" | "no" => toml::Value::Boolean(false),
                _ => return Err(ConfigError::Variable { var, field, message: "expected true or false".into() }),
            },
            _ => toml::Value::String(raw),
        };
        insert_at(tree, path, value);
    }
    Ok(())
}

fn env_name(path: &[String]) -> String {
    format!("{ENV_PREFIX}{}", path.join("_").to_ascii_uppercase())
}

fn collect_leaves(table: &toml::Table, prefix: &mut Vec<String>, out: &mut Vec<(Vec<String>, toml::Value)>) {
    for (key, value) in table {
        prefix.push(key.clone());
        match value {
            toml::Value::Table(inner) if key != "options" => collect_leaves(inner, prefix, out),
            toml::Value::Table(_) => {}
            other => out.push((prefix.clone(), other.clone())),
        }
        prefix.pop();
    }
}

fn insert_at(tree: &mut toml::Table, path: &[String], value: toml::Value) {
    let Some((last, parents)) = path.split_last() else { return };
    let mut table = tree;
    for key in parents {
        let entry = table.entry(key.clone()).or_insert_with(|| toml::Value::Table(toml::Table::new()));
        if !entry.is_table() {
            *entry = toml::Value::Table(toml::Table::new());
        }
        let Some(next) = entry.as_table_mut() else { return };
        table = next;
    }
    table.insert(last.clone(), value);
}

#[cfg(test)]
mod tests {
    use super::*;

    /// Loads `text` on a development machine (the built-in keys allowed), with `env`.
    fn load(text: &str, env: &[(&str, &str)]) -> Result<Settings, ConfigError> {
        load_strict(text, &[&[("DOUDI_KEYS_DEVELOPMENT", "true")], env].concat())
    }

    fn load_strict(text: &str, env: &[(&str, &str)]) -> Result<Settings, ConfigError> {
        let dir = tempfile::tempdir().expect("tempdir");
        let path = dir.path().join("doudi.toml");
        std::fs::write(&path, text).expect("write");
        Settings::load_with_env(Some(&path), env.iter().map(|(k, v)| (k.to_string(), v.to_string())))
    }

    #[test]
    fn development_keys_are_refused_unless_the_settings_say_development() {
        let err = load_strict("", &[]).expect_err("refused").to_string();
        assert!(err.contains("keys.hmac_secret") && err.contains("development"), "{err}");
        let own = "[keys]\nhmac_secret = \"a-production-secret-0123456789\"\n";
        let err = load_strict(own, &[]).expect_err("refused").to_string();
        assert!(err.contains("keys.audit_key"), "{err}");
        let both = format!("{own}audit_key = \"an-audit-key-0123456789\"\n");
        assert!(!load_strict(&both, &[]).expect("own keys").keys.development);
        assert!(load_strict("[keys]\ndevelopment = true\n", &[]).expect("development").keys.development);
        assert!(load_strict("", &[("DOUDI_KEYS_DEVELOPMENT", "true")]).is_ok());
        // The secret never appears in the Debug form.
        let settings = load_strict(&both, &[]).expect("own keys");
        assert!(!format!("{settings:?}").contains("0123456789"));
    }

    #[test]
    fn defaults_are_valid() {
        let s = load("", &[]).expect("defaults");
        assert_eq!(s.kafka.bootstrap_servers, "127.0.0.1:9092");
        assert!(s.database.url.starts_with("sqlite:"));
        assert_eq!(s.log.format, LogFormat::Human);
    }

    #[test]
    fn unknown_field_is_named() {
        let err = load("[kafka]\nbootstrap = \"x:1\"\n", &[]).expect_err("refused").to_string();
        assert!(err.contains("kafka") && err.contains("bootstrap"), "{err}");
    }

    #[test]
    fn wrong_type_is_named() {
        let err = load("[http]\nport = \"eighty\"\n", &[]).expect_err("refused").to_string();
        assert!(err.contains("http.port"), "{err}");
    }

    #[test]
    fn bad_enum_is_named() {
        let err = load("[log]\nformat = \"xml\"\n", &[]).expect_err("refused").to_string();
        assert!(err.contains("log.format"), "{err}");
    }

    #[test]
    fn env_overrides_file() {
        let s = load(
            "[kafka]\nbootstrap_servers = \"a:1\"\n",
            &[
                ("DOUDI_KAFKA_BOOTSTRAP_SERVERS", "b:2,c:3"),
                ("DOUDI_DATABASE_URL", "postgres://u:p@h:5432/d"),
                ("DOUDI_HTTP_PORT", "8080"),
                ("DOUDI_LOG_FORMAT", "json"),
                ("DOUDI_KAFKA_OPTIONS_SASL_PASSWORD", "pw"),
            ],
        )
        .expect("loads");
        assert_eq!(s.kafka.bootstrap_servers, "b:2,c:3");
        assert_eq!(s.database.url, "postgres://u:p@h:5432/d");
        assert_eq!(s.http.port, 8080);
        assert_eq!(s.log.format, LogFormat::Json);
        assert_eq!(s.kafka.options.get("sasl.password").map(String::as_str), Some("pw"));
        let debug = format!("{s:?}");
        assert!(!debug.contains("pw\""), "password must be redacted: {debug}");
        assert!(!debug.contains(":p@"), "database password must be redacted: {debug}");
    }

    #[test]
    fn bad_env_is_named() {
        let err = load("", &[("DOUDI_HTTP_PORT", "x")]).expect_err("refused").to_string();
        assert!(err.contains("DOUDI_HTTP_PORT") && err.contains("http.port"), "{err}");
        let err = load("", &[("DOUDI_KAFKA_BOOTSTRAP", "x:1")]).expect_err("refused").to_string();
        assert!(err.contains("DOUDI_KAFKA_BOOTSTRAP"), "{err}");
    }

    #[test]
    fn cross_field_checks_name_the_field() {
        for (text, field) in [
            ("[kafka]\nbootstrap_servers = \"nohostport\"\n", "kafka.bootstrap_servers"),
            ("[database]\nurl = \"mysql://x\"\n", "database.url"),
            ("[http]\nbind = \"everywhere\"\n", "http.bind"),
            ("[kafka.options]\n\"bootstrap.servers\" = \"x:1\"\n", "kafka.options.bootstrap.servers"),
            ("[database]\nurl = \"postgres://h/d\"\nmax_connections = 1\n", "database.max_connections"),
        ] {
            let err = load(text, &[]).expect_err("refused").to_string();
            assert!(err.contains(field), "{field}: {err}");
        }
    }

    #[test]
    fn redacts_url_passwords() {
        assert_eq!(redact_url("postgres://doudi:secret@h:5432/d"), "postgres://doudi:<redacted>@h:5432/d");
        assert_eq!(redact_url("sqlite://doudi.db"), "sqlite://doudi.db");
    }
}
