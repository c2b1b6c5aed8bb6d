//! A secured broker of the test's own (`scripts/kafka --secure`): SASL/SCRAM-SHA-512 over TLS on
//! its port, mutual TLS on port + 2, a CA made for it, the StandardAuthorizer with default deny.
//! Stopped and deleted on drop.

use doudi::config::KafkaSettings;

pub struct SecureKafka {
    pub port: u16,
    pub data: String,
}

impl SecureKafka {
    pub fn start() -> SecureKafka {
        let port = loop {
            let p = super::free_port();
            if p < 65000 && (1..=2).all(|i| std::net::TcpListener::bind(("127.0.0.1", p + i)).is_ok()) {
                break p;
            }
        };
        let kafka = SecureKafka { port, data: format!("/tmp/doudi-kafka-secure-{}", uuid::Uuid::new_v4().simple()) };
        kafka.script(&["start"]);
        kafka
    }

    /// Runs `scripts/kafka --secure ARGS` on this broker and returns its standard output.
    pub fn script(&self, args: &[&str]) -> String {
        let out = std::process::Command::new(concat!(env!("CARGO_MANIFEST_DIR"), "/scripts/kafka"))
            .arg("--secure")
            .args(args)
            .env("DOUDI_KAFKA_PORT", self.port.to_string())
            .env("DOUDI_KAFKA_DATA", &self.data)
            .output()
            .expect("scripts/kafka runs");
        assert!(out.status.success(), "scripts/kafka --secure {args:?}: {}", String::from_utf8_lossy(&out.stderr));
        String::from_utf8_lossy(&out.stdout).trim().to_string()
    }

    pub fn tls(&self) -> String {
        format!("{}/tls", self.data)
    }

    /// Client settings for `name` with mutual TLS (a certificate CN=name is made when missing).
    pub fn mtls(&self, name: &str) -> KafkaSettings {
        if !std::path::Path::new(&format!("{}/{name}.pem", self.tls())).exists() {
            self.script(&["cert", name]);
        }
        self.mtls_with(&format!("{}/{name}", self.tls()), &format!("{}/ca.pem", self.tls()))
    }

    /// Mutual TLS with the certificate `cert` (`cert.pem`, `cert.key`) trusting `ca`.
    pub fn mtls_with(&self, cert: &str, ca: &str) -> KafkaSettings {
        let mut settings = KafkaSettings { bootstrap_servers: format!("127.0.0.1:{}", self.port + 2), ..Default::default() };
        for (k, v) in [
            ("security.protocol", "SSL".to_string()),
            ("ssl.ca.location", ca.to_string()),
            ("ssl.certificate.location", format!("{cert}.pem")),
            ("ssl.key.location", format!("{cert}.key")),
        ] {
            settings.options.insert(k.into(), v);
        }
        settings
    }

    /// Client settings for `name` with SCRAM-SHA-512 over TLS (the user is made here).
    pub fn scram(&self, name: &str, password: &str) -> KafkaSettings {
        self.script(&["user", name, password]);
        let mut settings = KafkaSettings { bootstrap_servers: format!("127.0.0.1:{}", self.port), ..Default::default() };
        for (k, v) in [
            ("security.protocol", "SASL_SSL".to_string()),
            ("sasl.mechanisms", "SCRAM-SHA-512".to_string()),
            ("sasl.username", name.to_string()),
            ("sasl.password", password.to_string()),
            ("ssl.ca.location", format!("{}/ca.pem", self.tls())),
        ] {
            settings.options.insert(k.into(), v);
        }
        settings
    }
}

/// The environment that gives a doudi process `settings`.
pub fn env(settings: &KafkaSettings) -> Vec<(String, String)> {
    let mut vars = vec![("DOUDI_KAFKA_BOOTSTRAP_SERVERS".to_string(), settings.bootstrap_servers.clone())];
    for (k, v) in &settings.options {
        vars.push((format!("DOUDI_KAFKA_OPTIONS_{}", k.replace('.', "_").to_uppercase()), v.clone()));
    }
    vars
}

impl Drop for SecureKafka {
    fn drop(&mut self) {
        let _ = std::process::Command::new(concat!(env!("CARGO_MANIFEST_DIR"), "/scripts/kafka"))
            .args(["--secure", "stop"])
            .env("DOUDI_KAFKA_PORT", self.port.to_string())
            .env("DOUDI_KAFKA_DATA", &self.data)
            .output();
        let _ = std::fs::remove_dir_all(&self.data);
    }
}
