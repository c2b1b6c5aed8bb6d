//! A PostgreSQL server of the test's own (its own port and data folder, started and stopped by
//! `scripts/postgres`), so that stopping it never touches the server the other tests use. It serves
//! TLS too, with a CA made for it. The guard stops it and removes its folders even when the test
//! fails.

use std::process::Command;

pub struct OwnPostgres {
    pub port: u16,
    pub data: String,
    /// The plain URL (`sslmode` unset).
    pub url: String,
    listen: String,
}

impl OwnPostgres {
    pub fn start() -> Self {
        Self::start_listening("127.0.0.1")
    }

    /// Listening on `listen` (comma-separated addresses).
    pub fn start_listening(listen: &str) -> Self {
        let port = super::free_port();
        let data = format!("/tmp/doudi-pg-own-{}", uuid::Uuid::new_v4().simple());
        let mut server = OwnPostgres { port, data, url: String::new(), listen: listen.into() };
        server.url = server.script(&["start"]).trim().to_string();
        assert!(server.url.starts_with("postgres://"), "scripts/postgres start printed its URL: {}", server.url);
        server
    }

    pub fn script(&self, args: &[&str]) -> String {
        let out = Command::new(concat!(env!("CARGO_MANIFEST_DIR"), "/scripts/postgres"))
            .args(args)
            .env("DOUDI_PG_PORT", self.port.to_string())
            .env("DOUDI_PG_DATA", &self.data)
            .env("DOUDI_PG_LISTEN", &self.listen)
            .output()
            .expect("scripts/postgres runs");
        assert!(out.status.success(), "scripts/postgres {args:?}: {}", String::from_utf8_lossy(&out.stderr));
        String::from_utf8_lossy(&out.stdout).into_owned()
    }

    pub fn stop(&self) {
        self.script(&["stop"]);
    }

    pub fn restart(&self) {
        self.script(&["start"]);
    }

    /// The folder of the server's certificate and its CA (`ca.pem`, `server.pem`).
    pub fn tls(&self) -> String {
        format!("{}.tls", self.data)
    }

    /// The URL that verifies the server: `sslmode=verify-full` with its CA.
    pub fn verify_full_url(&self) -> String {
        self.script(&["url", "--verify-full"]).trim().to_string()
    }
}

impl Drop for OwnPostgres {
    fn drop(&mut self) {
        let _ = Command::new(concat!(env!("CARGO_MANIFEST_DIR"), "/scripts/postgres"))
            .arg("stop")
            .env("DOUDI_PG_PORT", self.port.to_string())
            .env("DOUDI_PG_DATA", &self.data)
            .output();
        let _ = std::fs::remove_dir_all(&self.data);
        let _ = std::fs::remove_dir_all(self.tls());
        let _ = std::fs::remove_file(format!("{}.initdb.log", self.data));
    }
}
