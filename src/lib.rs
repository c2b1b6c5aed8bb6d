//! doudi (兜底): the inter-agency data exchange of a provincial social-assistance system, built for
//! Jilin's 吉民发〔2019〕38号. See `docs/architecture.md` for how the parts fit together.

pub mod acl;
pub mod audit;
pub mod config;
pub mod connect;
pub mod dates;
pub mod db;
pub mod deliver;
pub mod division;
pub mod doctor;
pub mod envelope;
pub mod error;
pub mod http;
pub mod idnum;
pub mod kafka;
pub mod lag;
pub mod lifecycle;
pub mod matcher;
pub mod money;
pub mod policy;
pub mod schema;
pub mod status;
pub mod tap;
pub mod telemetry;
pub mod topics;
pub mod workbench;
