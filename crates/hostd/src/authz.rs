//! Who may call what. TLS proves a client certificate was signed by the Manager's CA;
//! the role the CA wrote into it (see `halyard_pki::Role`) says who it speaks for:
//!
//! | caller                                   | may call                               |
//! |------------------------------------------|----------------------------------------|
//! | the Manager (`urn:halyard:role:manager`) | every verb, every event                |
//! | another host (`urn:halyard:role:host`)   | [`HOST_TO_HOST_VERBS`]: live migration's |
//! |                                          | (VM.destroy only of the VM it migrates here) |
//! | a certificate without a role             | nothing                                |
//! | anyone, while the agent waits for enrollment (no client certificate) | [`ENROLLMENT_VERBS`], with the one-time token |
//!
//! A refusal is a VDSM error ([`NOT_AUTHORIZED`]) naming the verb and the caller, a
//! rate-limited warning in the log and a `|host|access_denied|` event to the Manager.

use halyard_pki::Role;
use halyard_proto::jsonrpc::RpcError;
use halyard_proto::vdsm::ErrorCode;

/// The error a refused call gets.
pub const NOT_AUTHORIZED: ErrorCode = ErrorCode {
    code: 1401,
    message: "Not authorized",
};

/// The event the agent sends to the Manager when it refuses a call.
pub const ACCESS_DENIED_EVENT: &str = "|host|access_denied|";

/// Verbs a host may call on another host: what a migration source calls on the
/// destination (VDSM's SourceThread). `VM.destroy` is further limited, in the
/// dispatcher, to the VM that host is migrating here.
pub const HOST_TO_HOST_VERBS: &[&str] = &["Host.ping2", "VM.migrationCreate", "VM.destroy"];

/// Verbs of an agent waiting for enrollment (each checks the one-time token).
pub const ENROLLMENT_VERBS: &[&str] = &[
    "Host.ping2",
    "Host.getCertificateRequest",
    "Host.setCertificate",
];

/// The other end of a connection.
#[derive(Debug, Clone, PartialEq, Eq)]
pub enum Caller {
    /// A verified certificate; `role` is what the CA wrote into it.
    Certificate {
        role: Option<Role>,
        /// The certificate's subject (for messages and events).
        subject: String,
    },
    /// No client certificate (enrollment mode only: otherwise TLS requires one).
    Anonymous,
}

impl Caller {
    /// From the peer's certificate chain as rustls verified it.
    pub fn from_peer(certs: Option<&[rustls::pki_types::CertificateDer<'_>]>) -> Caller {
        match certs.and_then(|c| c.first()) {
            None => Caller::Anonymous,
            Some(der) => Caller::Certificate {
                role: halyard_pki::role_of(der),
                subject: subject_of(der),
            },
        }
    }

    pub fn is_manager(&self) -> bool {
        matches!(
            self,
            Caller::Certificate {
                role: Some(Role::Manager),
                ..
            }
        )
    }

    /// How messages name the caller.
    pub fn describe(&self) -> String {
        match self {
            Caller::Anonymous => "a client without a certificate".into(),
            Caller::Certificate { role, subject } => match role {
                Some(r) => format!("{subject} (role {})", r.as_str()),
                None => format!("{subject} (no role)"),
            },
        }
    }
}

fn subject_of(der: &[u8]) -> String {
    match x509_parser::parse_x509_certificate(der) {
        Ok((_, c)) => c
            .subject()
            .to_string()
            .chars()
            .filter(|c| !c.is_control())
            .take(200)
            .collect(),
        Err(_) => "<unparsable certificate>".into(),
    }
}

/// Whether `caller` may call `method`; `enrolling` when the agent waits for its first
/// certificate.
pub fn check(caller: &Caller, method: &str, enrolling: bool) -> Result<(), RpcError> {
    let allowed = match caller {
        Caller::Anonymous => enrolling && ENROLLMENT_VERBS.contains(&method),
        Caller::Certificate { role, .. } => match role {
            Some(Role::Manager) => true,
            Some(Role::Host) => HOST_TO_HOST_VERBS.contains(&method),
            None => false,
        },
    };
    if allowed {
        return Ok(());
    }
    let why = match caller {
        Caller::Anonymous if !enrolling => "the agent is enrolled: a client certificate is needed",
        Caller::Anonymous => "this host is not enrolled yet",
        Caller::Certificate {
            role: Some(Role::Host),
            ..
        } => "another host may not call it",
        Caller::Certificate { role: None, .. } => {
            "the certificate carries no Halyard role (only the Manager's may command a host)"
        }
        Caller::Certificate {
            role: Some(Role::Manager),
            ..
        } => "refused",
    };
    Err(NOT_AUTHORIZED.rpc(Some(&format!(
        "{} may not call {method}: {why}",
        caller.describe()
    ))))
}

/// Whether `caller` may receive the agent's events (VM statuses, jobs, storage).
pub fn may_see_events(caller: &Caller) -> bool {
    caller.is_manager()
}

#[cfg(test)]
mod tests {
    use super::*;

    fn cert(role: Option<Role>) -> Caller {
        Caller::Certificate {
            role,
            subject: "CN=x".into(),
        }
    }

    #[test]
    fn only_the_manager_commands_a_host() {
        for verb in [
            "VM.create",
            "Host.getVMList",
            "Host.setCertificate",
            "VM.migrate",
        ] {
            assert!(check(&cert(Some(Role::Manager)), verb, false).is_ok());
            let e = check(&cert(Some(Role::Host)), verb, false).expect_err(verb);
            assert_eq!(e.code, 1401);
            assert!(e.message.contains(verb), "{}", e.message);
            assert!(check(&cert(None), verb, false).is_err());
            assert!(check(&Caller::Anonymous, verb, false).is_err());
        }
        assert!(check(&Caller::Anonymous, "Host.getCertificateRequest", true).is_ok());
        assert!(check(&Caller::Anonymous, "VM.create", true).is_err());
        assert!(check(&Caller::Anonymous, "Host.ping2", false).is_err());
        for verb in HOST_TO_HOST_VERBS {
            assert!(check(&cert(Some(Role::Host)), verb, false).is_ok());
            assert!(check(&cert(None), verb, false).is_err());
        }
        assert!(may_see_events(&cert(Some(Role::Manager))));
        assert!(!may_see_events(&cert(Some(Role::Host))));
        assert!(!may_see_events(&cert(None)));
    }
}
