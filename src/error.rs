//! What kind of failure an error is, so that the binary chooses the exit code in one place.
//!
//! Every library error says its [`Class`]: a problem found in the data (exit 1), bad usage or
//! configuration (exit 2), or an infrastructure failure (exit 3): a database, broker, file system
//! or network that failed, which a daemon waits out instead of exiting. A [`Failure`] is what a
//! command ends with: its class and a message fit for an operator, never personal data.

use std::fmt;

/// The kind of a failure.
#[derive(Clone, Copy, Debug, PartialEq, Eq)]
pub enum Class {
    /// The command ran and found a problem in the data (invalid rows, a failed check).
    Data,
    /// Bad usage or configuration: nothing will change until an operator changes it.
    Usage,
    /// A server, the network or the file system failed; trying again later may succeed.
    Infrastructure,
}

impl Class {
    /// The process's exit code for a failure of this class.
    pub fn exit_code(self) -> u8 {
        match self {
            Class::Data => 1,
            Class::Usage => 2,
            Class::Infrastructure => 3,
        }
    }
}

/// An error that knows its class.
pub trait Classify {
    fn class(&self) -> Class;
}

/// How a command failed: its class and its message.
#[derive(Debug)]
pub struct Failure {
    pub class: Class,
    pub message: String,
}

impl Failure {
    pub fn data(message: impl fmt::Display) -> Self {
        Failure { class: Class::Data, message: message.to_string() }
    }

    pub fn usage(message: impl fmt::Display) -> Self {
        Failure { class: Class::Usage, message: message.to_string() }
    }

    pub fn infrastructure(message: impl fmt::Display) -> Self {
        Failure { class: Class::Infrastructure, message: message.to_string() }
    }

    /// The same failure with `what` (a flag, a file, a step) before its message.
    pub fn context(self, what: impl fmt::Display) -> Self {
        Failure { class: self.class, message: format!("{what}: {}", self.message) }
    }
}

impl fmt::Display for Failure {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        f.write_str(&self.message)
    }
}

impl<E: Classify + fmt::Display> From<E> for Failure {
    fn from(e: E) -> Self {
        Failure { class: e.class(), message: e.to_string() }
    }
}

/// Adds a context to the failure of a result, as [`Failure::context`].
pub trait Context<T> {
    fn context(self, what: impl fmt::Display) -> Result<T, Failure>;
}

impl<T, E: Into<Failure>> Context<T> for Result<T, E> {
    fn context(self, what: impl fmt::Display) -> Result<T, Failure> {
        self.map_err(|e| e.into().context(what))
    }
}

macro_rules! class {
    ($class:ident: $($t:ty),+ $(,)?) => {
        $(impl Classify for $t {
            fn class(&self) -> Class {
                Class::$class
            }
        })+
    };
}

class!(Infrastructure: std::io::Error, sqlx::Error, rdkafka::error::KafkaError, crate::db::DbError, crate::kafka::KafkaError,
    tokio::task::JoinError);
class!(Usage: crate::config::ConfigError, crate::connect::config::ConfigError, crate::deliver::config::DeliveryConfigError,
    crate::schema::catalogue::CatalogueError, crate::schema::registry::SchemaError, crate::policy::params::ParamsError);
class!(Data: crate::policy::AssessInputError, crate::idnum::IdError, crate::envelope::EnvelopeError);

impl Classify for crate::connect::run::ConnectError {
    fn class(&self) -> Class {
        use crate::connect::run::ConnectError as E;
        match self {
            E::Config(_) | E::Schema(_) => Class::Usage,
            E::Source(_) | E::Mapping(_) | E::Conflict(_) => Class::Data,
            E::Kafka(_) | E::Transaction(_) | E::Io { .. } => Class::Infrastructure,
        }
    }
}

impl Classify for crate::deliver::DeliverError {
    fn class(&self) -> Class {
        use crate::deliver::DeliverError as E;
        match self {
            E::Config(_) => Class::Usage,
            E::Db(_) | E::Kafka(_) | E::Producer(_) | E::Sink(_) | E::Io(_) => Class::Infrastructure,
        }
    }
}

impl Classify for crate::matcher::ApplyError {
    fn class(&self) -> Class {
        use crate::matcher::ApplyError as E;
        match self {
            E::Db(_) => Class::Infrastructure,
            E::InvalidOutbound { .. } => Class::Data,
        }
    }
}

impl Classify for crate::matcher::policy_change::PolicyChangeError {
    fn class(&self) -> Class {
        use crate::matcher::policy_change::PolicyChangeError as E;
        match self {
            E::Apply(e) => e.class(),
            E::VersionReused(_) => Class::Usage,
            E::Unreadable { .. } => Class::Data,
            E::Db(_) | E::Task(_) => Class::Infrastructure,
        }
    }
}

impl Classify for crate::matcher::worker::MatchError {
    fn class(&self) -> Class {
        use crate::matcher::worker::MatchError as E;
        match self {
            E::Apply(e) => e.class(),
            E::Policy(e) => e.class(),
            E::Db(_) | E::Kafka(_) | E::Producer(_) | E::NoAssignment(_) | E::Task(_) => Class::Infrastructure,
        }
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn each_class_has_its_own_exit_code() {
        assert_eq!([Class::Data, Class::Usage, Class::Infrastructure].map(Class::exit_code), [1, 2, 3]);
    }

    #[test]
    fn a_misconfigured_connector_is_a_usage_error_and_a_broker_failure_is_not() {
        use crate::connect::run::ConnectError;
        assert_eq!(Failure::from(ConnectError::Config("transport.token_env: not set".into())).class, Class::Usage);
        assert_eq!(Failure::from(ConnectError::Transaction("broker gone".into())).class, Class::Infrastructure);
    }

    #[test]
    fn context_keeps_the_class() {
        let failed: Result<(), std::io::Error> = Err(std::io::Error::other("disk full"));
        let f = failed.context("writing the export").err().map(|f| (f.class, f.message));
        assert_eq!(f, Some((Class::Infrastructure, "writing the export: disk full".to_string())));
    }
}
