//! Mutual TLS for the control connection: a cluster CA, the certificates it issues to the main and
//! to participants, the rustls configurations both sides use, and handshakes bounded by a deadline.
//!
//! The main proves itself with the name [`MAIN_SERVER_NAME`]; a participant proves its name with
//! [`participant_dns_name`]. Both sides trust only the cluster CA, speak only TLS 1.3 and only the
//! [`ALPN_CONTROL`] protocol.
//!
//! This module must never accept a peer without a certificate chaining to the cluster CA, never
//! fall back to a process-default crypto provider (it always uses rustls' `ring` provider), never
//! write a private key readable by anyone but its owner, and never overwrite a key or certificate
//! unless the caller asked for it.

use std::fs::{self, OpenOptions};
use std::io::{self, Write};
use std::net::IpAddr;
use std::os::unix::fs::{OpenOptionsExt, PermissionsExt};
use std::path::{Path, PathBuf};
use std::sync::Arc;
use std::time::{Duration, SystemTime, UNIX_EPOCH};

use rcgen::{
    BasicConstraints, CertificateParams, DistinguishedName, DnType, ExtendedKeyUsagePurpose, IsCa,
    KeyPair, KeyUsagePurpose, SanType, PKCS_ECDSA_P256_SHA256,
};
use rustls::client::Resumption;
use rustls::crypto::CryptoProvider;
use rustls::pki_types::pem::PemObject;
use rustls::pki_types::{CertificateDer, DnsName, PrivateKeyDer, ServerName};
use rustls::server::{NoServerSessionStorage, WebPkiClientVerifier};
use rustls::{CertificateError, ClientConfig, RootCertStore, ServerConfig};
use tokio::net::TcpStream;
use tracing::warn;

/// The DNS name in the main's certificate; participants verify the main against it whatever
/// address they dialled.
pub const MAIN_SERVER_NAME: &str = "main.baton.internal";

/// The domain under which each participant's certificate names it: `<name>.participant.baton.internal`.
pub const PARTICIPANT_DOMAIN: &str = "participant.baton.internal";

/// The one application protocol the control connection speaks; a peer that does not offer it is
/// refused, so a future incompatible protocol gets a new identifier instead of a silent mismatch.
pub const ALPN_CONTROL: &[u8] = b"baton-control/1";

/// File name of the CA certificate in the CA directory.
pub const CA_CERT_FILE: &str = "ca.pem";

/// File name of the CA private key in the CA directory.
pub const CA_KEY_FILE: &str = "ca.key";

/// Default lifetime of the cluster CA: ten years, because replacing it means reissuing every
/// certificate in the cluster.
pub const DEFAULT_CA_VALIDITY_DAYS: u32 = 3650;

/// Default lifetime of a main or participant certificate: one year, short enough that a leaked key
/// stops working on its own, long enough that reissuing is a yearly chore rather than a daily one.
pub const DEFAULT_VALIDITY_DAYS: u32 = 365;

/// Longest lifetime accepted for any certificate (100 years); beyond this a typo is more likely
/// than intent, and the end date must stay within what X.509 dates can express.
pub const MAX_VALIDITY_DAYS: u32 = 36_500;

/// How far in the past a new certificate's validity starts, so a peer whose clock runs up to this
/// much behind the issuing host still accepts it.
pub const CLOCK_SKEW_ALLOWANCE: Duration = Duration::from_secs(60 * 60);

/// Longest participant (or main) name: one DNS label.
pub const MAX_NAME_BYTES: usize = 63;

/// Longest CA common name (X.520 `ub-common-name`).
pub const MAX_COMMON_NAME_BYTES: usize = 64;

/// Mode of every private key file written here: owner read/write only.
const KEY_FILE_MODE: u32 = 0o600;

/// Mode of every certificate file written here: certificates are public.
const CERT_FILE_MODE: u32 = 0o644;

/// Permission bits that make a key file readable or writable by group or others.
const KEY_FILE_LOOSE_BITS: u32 = 0o077;

/// ASN.1 object identifier of the X.520 common name attribute (2.5.4.3), DER encoded.
const OID_COMMON_NAME: &[u8] = &[0x55, 0x04, 0x03];

/// Why a TLS operation failed. Every file error names the file.
#[derive(Debug, thiserror::Error)]
pub enum TlsError {
    #[error("reading {}: {source}", path.display())]
    Read {
        path: PathBuf,
        #[source]
        source: io::Error,
    },
    #[error("writing {}: {source}", path.display())]
    Write {
        path: PathBuf,
        #[source]
        source: io::Error,
    },
    #[error("{} already exists; refusing to overwrite it without force", path.display())]
    Exists { path: PathBuf },
    #[error("{}: malformed pem: {reason}", path.display())]
    BadPem { path: PathBuf, reason: String },
    #[error("{} holds no certificate", path.display())]
    NoCertificate { path: PathBuf },
    #[error("{}: unusable certificate: {reason}", path.display())]
    BadCertificate { path: PathBuf, reason: String },
    #[error("{}: unusable private key: {reason}", path.display())]
    BadKey { path: PathBuf, reason: String },
    #[error("invalid name {name:?}: {reason}")]
    BadName { name: String, reason: &'static str },
    #[error("invalid ca common name {name:?}: {reason}")]
    BadCommonName { name: String, reason: &'static str },
    #[error("validity of {days} days is outside 1..={max}")]
    BadValidity { days: u32, max: u32 },
    #[error("system clock reads before 1970")]
    Clock,
    #[error("generating the {what}: {source}")]
    Generate {
        what: &'static str,
        #[source]
        source: rcgen::Error,
    },
    #[error("building the tls configuration: {source}")]
    Config {
        #[source]
        source: rustls::Error,
    },
    #[error("building the client certificate verifier: {source}")]
    ClientVerifier {
        #[source]
        source: rustls::server::VerifierBuilderError,
    },
    #[error("tls handshake with {peer} failed: {reason}")]
    Handshake { peer: String, reason: String },
    #[error("tls handshake with {peer} failed: not complete within {deadline:?}")]
    HandshakeTimeout { peer: String, deadline: Duration },
    #[error("peer certificate does not prove participant {claimed:?}: {reason}")]
    Participant { claimed: String, reason: String },
}

/// A certificate and its key, as `init_ca` and `issue` write them.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct PemFiles {
    pub cert: PathBuf,
    pub key: PathBuf,
}

impl PemFiles {
    /// Writes `key` (mode 0600) and `cert` into `dir`, creating it.
    fn save(&self, dir: &Path, key: &KeyPair, cert: &rcgen::Certificate, force: bool) -> Result<(), TlsError> {
        fs::create_dir_all(dir).map_err(|source| TlsError::Write { path: dir.to_owned(), source })?;
        write_new(&self.key, key.serialize_pem().as_bytes(), KEY_FILE_MODE, force)?;
        write_new(&self.cert, cert.pem().as_bytes(), CERT_FILE_MODE, force)
    }
}

/// What a certificate is for.
#[derive(Debug, Clone, PartialEq, Eq)]
pub enum Role {
    /// The main server: named [`MAIN_SERVER_NAME`] and each of `ips`, usable only as a TLS server.
    Main { ips: Vec<IpAddr> },
    /// A participant: named [`participant_dns_name`], usable only as a TLS client.
    Participant,
}

/// The DNS name a participant's certificate carries.
pub fn participant_dns_name(name: &str) -> String {
    format!("{name}.{PARTICIPANT_DOMAIN}")
}

/// The name a participant checks the main's certificate against.
pub fn main_server_name() -> ServerName<'static> {
    // A constant that `tests::tls_main_server_name_is_a_dns_name` checks; it cannot fail at run time.
    ServerName::DnsName(
        DnsName::try_from(MAIN_SERVER_NAME).expect("MAIN_SERVER_NAME is a valid dns name"),
    )
}

/// Checks a participant (or main) name: 1..=63 bytes of `[a-z0-9-]`, not starting or ending with `-`,
/// so that it is one DNS label and a safe file name.
pub fn validate_name(name: &str) -> Result<(), TlsError> {
    let bad = |reason| {
        Err(TlsError::BadName {
            name: name.to_owned(),
            reason,
        })
    };
    if name.is_empty() {
        return bad("empty");
    }
    if name.len() > MAX_NAME_BYTES {
        return bad("longer than 63 bytes");
    }
    if !name
        .bytes()
        .all(|b| b.is_ascii_lowercase() || b.is_ascii_digit() || b == b'-')
    {
        return bad("only a-z, 0-9 and '-' are allowed");
    }
    if name.starts_with('-') || name.ends_with('-') {
        return bad("must not start or end with '-'");
    }
    Ok(())
}

/// `batonctl cluster init <dir>`: creates the cluster CA, writing `ca.pem` (certificate) and
/// `ca.key` (private key, mode 0600) in `dir`. Refuses to overwrite either file unless `force`.
pub fn init_ca(
    dir: &Path,
    common_name: &str,
    validity_days: u32,
    force: bool,
) -> Result<PemFiles, TlsError> {
    validate_common_name(common_name)?;
    let files = PemFiles {
        cert: dir.join(CA_CERT_FILE),
        key: dir.join(CA_KEY_FILE),
    };
    refuse_existing(&[&files.cert, &files.key], force)?;
    let key = generate_key("ca key")?;
    let mut params = ca_params(common_name);
    set_validity(&mut params, validity_days)?;
    let cert = params
        .self_signed(&key)
        .map_err(|source| TlsError::Generate {
            what: "ca certificate",
            source,
        })?;
    files.save(dir, &key, &cert, force)?;
    Ok(files)
}

/// `batonctl cluster issue <name>`: signs a certificate for `name` in `role` with the CA in
/// `ca_dir`, writing `<out_dir>/<name>.pem` and `<out_dir>/<name>.key` (mode 0600). Refuses to
/// overwrite either file unless `force`.
pub fn issue(
    ca_dir: &Path,
    name: &str,
    role: Role,
    validity_days: u32,
    out_dir: &Path,
    force: bool,
) -> Result<PemFiles, TlsError> {
    validate_name(name)?;
    let files = PemFiles {
        cert: out_dir.join(format!("{name}.pem")),
        key: out_dir.join(format!("{name}.key")),
    };
    refuse_existing(&[&files.cert, &files.key], force)?;
    let (ca_cert, ca_key) = load_ca(ca_dir)?;

    let mut params = CertificateParams::default();
    params.distinguished_name = DistinguishedName::new();
    params.distinguished_name.push(DnType::CommonName, name);
    params.is_ca = IsCa::ExplicitNoCa;
    params.use_authority_key_identifier_extension = true;
    params.key_usages = vec![KeyUsagePurpose::DigitalSignature];
    match role {
        Role::Main { ips } => {
            params.subject_alt_names.push(dns_san(MAIN_SERVER_NAME)?);
            params
                .subject_alt_names
                .extend(ips.into_iter().map(SanType::IpAddress));
            params.extended_key_usages = vec![ExtendedKeyUsagePurpose::ServerAuth];
        }
        Role::Participant => {
            params
                .subject_alt_names
                .push(dns_san(&participant_dns_name(name))?);
            params.extended_key_usages = vec![ExtendedKeyUsagePurpose::ClientAuth];
        }
    }
    set_validity(&mut params, validity_days)?;

    let key = generate_key("certificate key")?;
    let cert = params
        .signed_by(&key, &ca_cert, &ca_key)
        .map_err(|source| TlsError::Generate {
            what: "certificate",
            source,
        })?;
    files.save(out_dir, &key, &cert, force)?;
    Ok(files)
}

/// The main's server configuration: presents `cert`/`key`, requires a client certificate chaining
/// to the CA certificates in `ca`, TLS 1.3 only, no early data, no resumption, ALPN [`ALPN_CONTROL`].
pub fn server_config(ca: &Path, cert: &Path, key: &Path) -> Result<Arc<ServerConfig>, TlsError> {
    let provider = provider();
    let roots = Arc::new(load_roots(ca)?);
    let verifier = WebPkiClientVerifier::builder_with_provider(roots, provider.clone())
        .build()
        .map_err(|source| TlsError::ClientVerifier { source })?;
    let chain = load_certs(cert)?;
    let key = load_key(key)?;
    let mut config = ServerConfig::builder_with_provider(provider)
        .with_protocol_versions(&[&rustls::version::TLS13])
        .map_err(|source| TlsError::Config { source })?
        .with_client_cert_verifier(verifier)
        .with_single_cert(chain, key)
        .map_err(|source| TlsError::Config { source })?;
    config.alpn_protocols = vec![ALPN_CONTROL.to_vec()];
    config.max_early_data_size = 0;
    config.send_tls13_tickets = 0;
    config.session_storage = Arc::new(NoServerSessionStorage {});
    Ok(Arc::new(config))
}

/// A participant's client configuration: trusts only the CA certificates in `ca`, presents
/// `cert`/`key`, TLS 1.3 only, no early data, no resumption, ALPN [`ALPN_CONTROL`].
pub fn client_config(ca: &Path, cert: &Path, key: &Path) -> Result<Arc<ClientConfig>, TlsError> {
    let roots = load_roots(ca)?;
    let chain = load_certs(cert)?;
    let key = load_key(key)?;
    let mut config = ClientConfig::builder_with_provider(provider())
        .with_protocol_versions(&[&rustls::version::TLS13])
        .map_err(|source| TlsError::Config { source })?
        .with_root_certificates(roots)
        .with_client_auth_cert(chain, key)
        .map_err(|source| TlsError::Config { source })?;
    config.alpn_protocols = vec![ALPN_CONTROL.to_vec()];
    config.enable_early_data = false;
    config.resumption = Resumption::disabled();
    Ok(Arc::new(config))
}

/// After a handshake on the main: checks that the peer's certificate (already verified to chain to
/// the CA by the handshake) names the participant `claimed`.
pub fn verify_participant(
    peer_certs: &[CertificateDer<'_>],
    claimed: &str,
) -> Result<(), TlsError> {
    let refuse = |reason: String| TlsError::Participant {
        claimed: claimed.to_owned(),
        reason,
    };
    validate_name(claimed)?;
    let Some(end_entity) = peer_certs.first() else {
        return Err(refuse("peer sent no certificate".to_owned()));
    };
    let cert = webpki::EndEntityCert::try_from(end_entity)
        .map_err(|e| refuse(format!("certificate does not parse: {e}")))?;
    let dns = participant_dns_name(claimed);
    let name = ServerName::try_from(dns.as_str())
        .map_err(|e| refuse(format!("{dns} is not a dns name: {e}")))?;
    cert.verify_is_valid_for_subject_name(&name)
        .map_err(|e| refuse(format!("certificate is not issued to {dns} ({e})")))
}

/// Runs the main's side of a handshake on `tcp`, giving up after `deadline`. The returned stream
/// has a client certificate that chains to the CA and has agreed on [`ALPN_CONTROL`].
pub async fn accept(
    acceptor: &tokio_rustls::TlsAcceptor,
    tcp: TcpStream,
    deadline: Duration,
) -> Result<tokio_rustls::server::TlsStream<TcpStream>, TlsError> {
    let peer = peer_label(&tcp);
    let stream = match tokio::time::timeout(deadline, acceptor.accept(tcp)).await {
        Err(_) => return Err(TlsError::HandshakeTimeout { peer, deadline }),
        Ok(Err(e)) => {
            return Err(TlsError::Handshake {
                peer,
                reason: describe_handshake_error(&e),
            })
        }
        Ok(Ok(stream)) => stream,
    };
    let conn = stream.get_ref().1;
    if conn.alpn_protocol() != Some(ALPN_CONTROL) {
        return Err(TlsError::Handshake {
            peer,
            reason: "peer did not offer the baton-control/1 protocol".to_owned(),
        });
    }
    if conn.peer_certificates().is_none_or(|c| c.is_empty()) {
        return Err(TlsError::Handshake {
            peer,
            reason: "peer sent no certificate".to_owned(),
        });
    }
    Ok(stream)
}

/// Runs a participant's side of a handshake on `tcp` with the main, giving up after `deadline`.
///
/// In TLS 1.3 the client finishes before the server has judged the client's certificate, so a main
/// that refuses this participant's certificate shows up as an error on the first read, not here.
pub async fn connect(
    cfg: Arc<ClientConfig>,
    tcp: TcpStream,
    deadline: Duration,
) -> Result<tokio_rustls::client::TlsStream<TcpStream>, TlsError> {
    let peer = peer_label(&tcp);
    let connector = tokio_rustls::TlsConnector::from(cfg);
    let stream =
        match tokio::time::timeout(deadline, connector.connect(main_server_name(), tcp)).await {
            Err(_) => return Err(TlsError::HandshakeTimeout { peer, deadline }),
            Ok(Err(e)) => {
                return Err(TlsError::Handshake {
                    peer,
                    reason: describe_handshake_error(&e),
                })
            }
            Ok(Ok(stream)) => stream,
        };
    if stream.get_ref().1.alpn_protocol() != Some(ALPN_CONTROL) {
        return Err(TlsError::Handshake {
            peer,
            reason: "peer did not agree on the baton-control/1 protocol".to_owned(),
        });
    }
    Ok(stream)
}

/// The one crypto provider used here, chosen explicitly rather than taken from the process default.
fn provider() -> Arc<CryptoProvider> {
    Arc::new(rustls::crypto::ring::default_provider())
}

fn peer_label(tcp: &TcpStream) -> String {
    tcp.peer_addr()
        .map_or_else(|_| "unknown peer".to_owned(), |a| a.to_string())
}

/// Says why a handshake failed in terms of the cluster's trust rules.
fn describe_handshake_error(e: &io::Error) -> String {
    if e.kind() == io::ErrorKind::UnexpectedEof {
        return "peer closed the connection during the handshake".to_owned();
    }
    let Some(tls) = e
        .get_ref()
        .and_then(|inner| inner.downcast_ref::<rustls::Error>())
    else {
        return e.to_string();
    };
    match tls {
        rustls::Error::NoCertificatesPresented => "peer sent no certificate".to_owned(),
        rustls::Error::InvalidCertificate(cert) => describe_certificate_error(cert),
        rustls::Error::AlertReceived(alert) => {
            format!("peer refused the handshake (alert {alert:?})")
        }
        rustls::Error::NoApplicationProtocol => "peer does not speak baton-control/1".to_owned(),
        rustls::Error::PeerIncompatible(why) => {
            format!("peer does not speak tls 1.3 as required ({why:?})")
        }
        rustls::Error::InvalidMessage(why) => format!("not a tls 1.3 handshake ({why:?})"),
        rustls::Error::InappropriateMessage { .. }
        | rustls::Error::InappropriateHandshakeMessage { .. } => {
            format!("not a tls 1.3 handshake ({tls})")
        }
        rustls::Error::DecryptError => {
            "peer's records do not decrypt (replayed or corrupted handshake)".to_owned()
        }
        other => other.to_string(),
    }
}

fn describe_certificate_error(e: &CertificateError) -> String {
    match e {
        CertificateError::UnknownIssuer | CertificateError::BadSignature => {
            "certificate not signed by the cluster CA".to_owned()
        }
        CertificateError::Expired | CertificateError::ExpiredContext { .. } => {
            "certificate expired".to_owned()
        }
        CertificateError::NotValidYet | CertificateError::NotValidYetContext { .. } => {
            "certificate not valid yet".to_owned()
        }
        CertificateError::NotValidForName | CertificateError::NotValidForNameContext { .. } => {
            format!("certificate not issued to {MAIN_SERVER_NAME}")
        }
        CertificateError::InvalidPurpose | CertificateError::InvalidPurposeContext { .. } => {
            "certificate not issued for this role (extended key usage)".to_owned()
        }
        other => format!("certificate refused ({other:?})"),
    }
}

fn validate_common_name(name: &str) -> Result<(), TlsError> {
    let bad = |reason| {
        Err(TlsError::BadCommonName {
            name: name.to_owned(),
            reason,
        })
    };
    if name.is_empty() {
        return bad("empty");
    }
    if name.len() > MAX_COMMON_NAME_BYTES {
        return bad("longer than 64 bytes");
    }
    if name.chars().any(char::is_control) {
        return bad("contains control characters");
    }
    Ok(())
}

/// The parameters of the cluster CA. `issue` rebuilds them from the common name in `ca.pem`, so
/// everything that ends up in a leaf's issuer fields must come from here.
fn ca_params(common_name: &str) -> CertificateParams {
    let mut params = CertificateParams::default();
    params.distinguished_name = DistinguishedName::new();
    params
        .distinguished_name
        .push(DnType::CommonName, common_name);
    params.is_ca = IsCa::Ca(BasicConstraints::Constrained(0));
    params.key_usages = vec![
        KeyUsagePurpose::KeyCertSign,
        KeyUsagePurpose::CrlSign,
        KeyUsagePurpose::DigitalSignature,
    ];
    params
}

fn dns_san(name: &str) -> Result<SanType, TlsError> {
    rcgen::Ia5String::try_from(name)
        .map(SanType::DnsName)
        .map_err(|source| TlsError::Generate {
            what: "subject alternative name",
            source,
        })
}

fn generate_key(what: &'static str) -> Result<KeyPair, TlsError> {
    KeyPair::generate_for(&PKCS_ECDSA_P256_SHA256)
        .map_err(|source| TlsError::Generate { what, source })
}

/// Sets validity from now − [`CLOCK_SKEW_ALLOWANCE`] to now + `days`.
fn set_validity(params: &mut CertificateParams, days: u32) -> Result<(), TlsError> {
    if days == 0 || days > MAX_VALIDITY_DAYS {
        return Err(TlsError::BadValidity {
            days,
            max: MAX_VALIDITY_DAYS,
        });
    }
    let now = SystemTime::now()
        .duration_since(UNIX_EPOCH)
        .map_err(|_| TlsError::Clock)?;
    let start = now
        .checked_sub(CLOCK_SKEW_ALLOWANCE)
        .ok_or(TlsError::Clock)?;
    let end = now + Duration::from_secs(u64::from(days) * 24 * 60 * 60);
    let epoch = rcgen::date_time_ymd(1970, 1, 1);
    params.not_before = epoch + start;
    params.not_after = epoch + end;
    Ok(())
}

/// Fails with `Exists` naming the first of `paths` that exists, unless `force`.
fn refuse_existing(paths: &[&Path], force: bool) -> Result<(), TlsError> {
    if force {
        return Ok(());
    }
    for path in paths {
        match fs::symlink_metadata(path) {
            Ok(_) => {
                return Err(TlsError::Exists {
                    path: path.to_path_buf(),
                })
            }
            Err(e) if e.kind() == io::ErrorKind::NotFound => {}
            Err(source) => {
                return Err(TlsError::Read {
                    path: path.to_path_buf(),
                    source,
                })
            }
        }
    }
    Ok(())
}

/// Writes `contents` to a newly created `path` with `mode`. With `force` an existing file is
/// removed first, so the new file always gets `mode` however loose the old one was.
fn write_new(path: &Path, contents: &[u8], mode: u32, force: bool) -> Result<(), TlsError> {
    let write_err = |source| TlsError::Write {
        path: path.to_owned(),
        source,
    };
    if force {
        match fs::remove_file(path) {
            Ok(()) => {}
            Err(e) if e.kind() == io::ErrorKind::NotFound => {}
            Err(e) => return Err(write_err(e)),
        }
    }
    let mut file = OpenOptions::new()
        .write(true)
        .create_new(true)
        .mode(mode)
        .open(path)
        .map_err(|e| {
            if e.kind() == io::ErrorKind::AlreadyExists {
                TlsError::Exists {
                    path: path.to_owned(),
                }
            } else {
                write_err(e)
            }
        })?;
    file.write_all(contents).map_err(write_err)?;
    file.sync_all().map_err(write_err)
}

fn pem_error(path: &Path, e: rustls::pki_types::pem::Error) -> TlsError {
    match e {
        rustls::pki_types::pem::Error::Io(source) => TlsError::Read {
            path: path.to_owned(),
            source,
        },
        other => TlsError::BadPem {
            path: path.to_owned(),
            reason: other.to_string(),
        },
    }
}

/// Every certificate in the PEM file at `path`; at least one.
fn load_certs(path: &Path) -> Result<Vec<CertificateDer<'static>>, TlsError> {
    let certs = CertificateDer::pem_file_iter(path)
        .map_err(|e| pem_error(path, e))?
        .collect::<Result<Vec<_>, _>>()
        .map_err(|e| pem_error(path, e))?;
    if certs.is_empty() {
        return Err(TlsError::NoCertificate {
            path: path.to_owned(),
        });
    }
    Ok(certs)
}

/// The CA certificates in `path` as the only roots of trust.
fn load_roots(path: &Path) -> Result<RootCertStore, TlsError> {
    let mut roots = RootCertStore::empty();
    for cert in load_certs(path)? {
        roots.add(cert).map_err(|e| TlsError::BadCertificate {
            path: path.to_owned(),
            reason: format!("not a usable ca: {e}"),
        })?;
    }
    Ok(roots)
}

/// The private key in `path`, warning if the file is readable by group or others.
fn load_key(path: &Path) -> Result<PrivateKeyDer<'static>, TlsError> {
    warn_if_loose(path);
    PrivateKeyDer::from_pem_file(path).map_err(|e| match e {
        rustls::pki_types::pem::Error::Io(source) => TlsError::Read {
            path: path.to_owned(),
            source,
        },
        rustls::pki_types::pem::Error::NoItemsFound => TlsError::BadKey {
            path: path.to_owned(),
            reason: "no private key in the file".to_owned(),
        },
        other => TlsError::BadKey {
            path: path.to_owned(),
            reason: other.to_string(),
        },
    })
}

fn warn_if_loose(path: &Path) {
    if let Ok(meta) = fs::metadata(path) {
        let mode = meta.permissions().mode();
        if mode & KEY_FILE_LOOSE_BITS != 0 {
            warn!(
                path = %path.display(),
                mode = format_args!("{:o}", mode & 0o777),
                "private key file is accessible to group or others; chmod 600 it"
            );
        }
    }
}

/// Loads the CA for signing: its key, and a certificate rebuilt from the common name in `ca.pem`
/// (rcgen needs its own certificate value as issuer). The rebuilt subject and public key must
/// match `ca.pem` exactly, so issued certificates chain to the file everyone trusts.
fn load_ca(ca_dir: &Path) -> Result<(rcgen::Certificate, KeyPair), TlsError> {
    let cert_path = ca_dir.join(CA_CERT_FILE);
    let key_path = ca_dir.join(CA_KEY_FILE);
    let bad_cert = |reason: String| TlsError::BadCertificate {
        path: cert_path.clone(),
        reason,
    };

    let certs = load_certs(&cert_path)?;
    let [file_cert] = certs.as_slice() else {
        return Err(bad_cert(format!(
            "holds {} certificates, the ca file must hold exactly one",
            certs.len()
        )));
    };
    let file_anchor = webpki::anchor_from_trusted_cert(file_cert)
        .map_err(|e| bad_cert(format!("does not parse: {e}")))?;
    let common_name = common_name_of(file_anchor.subject.as_ref()).ok_or_else(|| {
        bad_cert(
            "subject is not a single common name, so it was not made by cluster init".to_owned(),
        )
    })?;

    let key_der = load_key(&key_path)?;
    let key = KeyPair::try_from(&key_der).map_err(|e| TlsError::BadKey {
        path: key_path.clone(),
        reason: e.to_string(),
    })?;

    let rebuilt = ca_params(&common_name)
        .self_signed(&key)
        .map_err(|source| TlsError::Generate {
            what: "ca certificate",
            source,
        })?;
    let rebuilt_anchor = webpki::anchor_from_trusted_cert(rebuilt.der())
        .map_err(|e| bad_cert(format!("rebuilt ca does not parse: {e}")))?;
    if rebuilt_anchor.subject_public_key_info.as_ref()
        != file_anchor.subject_public_key_info.as_ref()
    {
        return Err(TlsError::BadKey {
            path: key_path,
            reason: format!("not the key of the certificate in {}", cert_path.display()),
        });
    }
    if rebuilt_anchor.subject.as_ref() != file_anchor.subject.as_ref() {
        return Err(bad_cert(
            "subject is not encoded as cluster init writes it".to_owned(),
        ));
    }
    Ok((rebuilt, key))
}

/// The common name of a DER `Name` body holding exactly one attribute, a common name.
fn common_name_of(name: &[u8]) -> Option<String> {
    let (rdn, rest) = der_take(name, 0x31)?;
    if !rest.is_empty() {
        return None;
    }
    let (attr, rest) = der_take(rdn, 0x30)?;
    if !rest.is_empty() {
        return None;
    }
    let (oid, value) = der_take(attr, 0x06)?;
    if oid != OID_COMMON_NAME {
        return None;
    }
    // UTF8String, as rcgen writes it; PrintableString, as other tools might.
    let (text, rest) = der_take(value, 0x0c).or_else(|| der_take(value, 0x13))?;
    if !rest.is_empty() {
        return None;
    }
    String::from_utf8(text.to_vec()).ok()
}

/// Splits one DER element with `tag` off the front of `input`: (its contents, the rest).
/// Handles definite lengths up to two length bytes, which is all a name can need.
fn der_take(input: &[u8], tag: u8) -> Option<(&[u8], &[u8])> {
    let (&first, input) = input.split_first()?;
    if first != tag {
        return None;
    }
    let (&len0, input) = input.split_first()?;
    let (len, input) = match len0 {
        0..=0x7f => (usize::from(len0), input),
        0x81 => {
            let (&l, input) = input.split_first()?;
            (usize::from(l), input)
        }
        0x82 => {
            let (l, input) = input.split_first_chunk::<2>()?;
            (usize::from(u16::from_be_bytes(*l)), input)
        }
        _ => return None,
    };
    if input.len() < len {
        return None;
    }
    Some(input.split_at(len))
}

#[cfg(test)]
#[allow(clippy::unwrap_used, reason = "tests")]
mod tests {
    use std::net::{Ipv4Addr, SocketAddr};
    use std::sync::atomic::{AtomicUsize, Ordering};

    use tokio::io::{AsyncReadExt, AsyncWriteExt};
    use tokio::net::TcpListener;

    use super::*;

    /// Generous bound for loopback handshakes, so a slow CI host does not fail a good one.
    const DEADLINE: Duration = Duration::from_secs(10);

    /// The same CA name in every fixture, so "another CA" differs only in its key.
    const CA_NAME: &str = "Baton cluster CA";

    static NEXT_DIR: AtomicUsize = AtomicUsize::new(0);

    /// A CA with a main (127.0.0.1) and participant `p-fra` in a temporary directory, removed on drop.
    struct Cluster {
        dir: PathBuf,
        ca: PemFiles,
        main: PemFiles,
        fra: PemFiles,
    }

    impl Cluster {
        fn new(tag: &str) -> Self {
            let dir = std::env::temp_dir().join(format!(
                "baton-tls-{tag}-{}-{}",
                std::process::id(),
                NEXT_DIR.fetch_add(1, Ordering::Relaxed)
            ));
            let _ = fs::remove_dir_all(&dir);
            let ca = init_ca(&dir.join("ca"), CA_NAME, DEFAULT_CA_VALIDITY_DAYS, false).unwrap();
            let certs = dir.join("certs");
            let main = issue(
                &dir.join("ca"),
                "main",
                Role::Main {
                    ips: vec![IpAddr::V4(Ipv4Addr::LOCALHOST)],
                },
                DEFAULT_VALIDITY_DAYS,
                &certs,
                false,
            )
            .unwrap();
            let fra = issue(
                &dir.join("ca"),
                "p-fra",
                Role::Participant,
                DEFAULT_VALIDITY_DAYS,
                &certs,
                false,
            )
            .unwrap();
            Cluster { dir, ca, main, fra }
        }

        fn ca_dir(&self) -> PathBuf {
            self.dir.join("ca")
        }

        fn acceptor(&self) -> tokio_rustls::TlsAcceptor {
            tokio_rustls::TlsAcceptor::from(
                server_config(&self.ca.cert, &self.main.cert, &self.main.key).unwrap(),
            )
        }

        fn participant(&self) -> Arc<ClientConfig> {
            client_config(&self.ca.cert, &self.fra.cert, &self.fra.key).unwrap()
        }
    }

    impl Drop for Cluster {
        fn drop(&mut self) {
            let _ = fs::remove_dir_all(&self.dir);
        }
    }

    type ServerSide = Result<tokio_rustls::server::TlsStream<TcpStream>, TlsError>;
    type ClientSide = Result<tokio_rustls::client::TlsStream<TcpStream>, TlsError>;

    async fn listen() -> (TcpListener, SocketAddr) {
        let listener = TcpListener::bind((Ipv4Addr::LOCALHOST, 0)).await.unwrap();
        let addr = listener.local_addr().unwrap();
        (listener, addr)
    }

    /// Both sides of one handshake, run concurrently; the client dials `dial` (the listener or a proxy).
    async fn handshake(
        listener: &TcpListener,
        acceptor: &tokio_rustls::TlsAcceptor,
        dial: SocketAddr,
        client: Arc<ClientConfig>,
    ) -> (ServerSide, ClientSide) {
        tokio::join!(
            async {
                let (tcp, _) = listener.accept().await.unwrap();
                accept(acceptor, tcp, DEADLINE).await
            },
            async {
                let tcp = TcpStream::connect(dial).await.unwrap();
                connect(client, tcp, DEADLINE).await
            }
        )
    }

    fn handshake_reason(result: Result<impl std::fmt::Debug, TlsError>) -> String {
        match result {
            Err(TlsError::Handshake { reason, .. }) => reason,
            other => panic!("expected a handshake error, got {other:?}"),
        }
    }

    /// A client whose certificate the main refused learns it on its first read: it gets no data.
    async fn assert_client_refused(client: ClientSide) {
        let mut client = client.unwrap();
        let mut buf = [0u8; 1];
        let read = client.read(&mut buf).await;
        assert!(
            matches!(read, Err(_) | Ok(0)),
            "refused client read {read:?}"
        );
    }

    /// A rustls client that trusts the cluster CA but has no certificate of its own.
    fn anonymous_client(cluster: &Cluster) -> Arc<ClientConfig> {
        let mut roots = RootCertStore::empty();
        for cert in load_certs(&cluster.ca.cert).unwrap() {
            roots.add(cert).unwrap();
        }
        let mut config = ClientConfig::builder_with_provider(provider())
            .with_protocol_versions(&[&rustls::version::TLS13])
            .unwrap()
            .with_root_certificates(roots)
            .with_no_client_auth();
        config.alpn_protocols = vec![ALPN_CONTROL.to_vec()];
        Arc::new(config)
    }

    /// A TCP proxy to `target` for one connection; the task returns every byte the client sent.
    async fn recording_proxy(target: SocketAddr) -> (SocketAddr, tokio::task::JoinHandle<Vec<u8>>) {
        let (listener, addr) = listen().await;
        let task = tokio::spawn(async move {
            let (client, _) = listener.accept().await.unwrap();
            let server = TcpStream::connect(target).await.unwrap();
            let (mut client_rd, mut client_wr) = client.into_split();
            let (mut server_rd, mut server_wr) = server.into_split();
            let back = tokio::spawn(async move {
                let _ = tokio::io::copy(&mut server_rd, &mut client_wr).await;
            });
            let mut recorded = Vec::new();
            let mut buf = [0u8; 4096];
            loop {
                let n = client_rd.read(&mut buf).await.unwrap();
                if n == 0 {
                    break;
                }
                recorded.extend_from_slice(&buf[..n]);
                server_wr.write_all(&buf[..n]).await.unwrap();
            }
            back.abort();
            recorded
        });
        (addr, task)
    }

    #[tokio::test]
    async fn tls_good_handshake_round_trips_a_byte_and_proves_the_participant() {
        let cluster = Cluster::new("good");
        let (listener, addr) = listen().await;
        let (server, client) =
            handshake(&listener, &cluster.acceptor(), addr, cluster.participant()).await;
        let mut server = server.unwrap();
        let mut client = client.unwrap();

        assert_eq!(server.get_ref().1.alpn_protocol(), Some(ALPN_CONTROL));
        assert_eq!(client.get_ref().1.alpn_protocol(), Some(ALPN_CONTROL));
        assert_eq!(
            server.get_ref().1.protocol_version(),
            Some(rustls::ProtocolVersion::TLSv1_3)
        );
        let peer_certs = server.get_ref().1.peer_certificates().unwrap().to_vec();
        verify_participant(&peer_certs, "p-fra").unwrap();
        match verify_participant(&peer_certs, "p-iad") {
            Err(TlsError::Participant { claimed, reason }) => {
                assert_eq!(claimed, "p-iad");
                assert!(
                    reason.starts_with(
                        "certificate is not issued to p-iad.participant.baton.internal"
                    ),
                    "{reason}"
                );
            }
            other => panic!("p-fra's certificate proved p-iad: {other:?}"),
        }

        client.write_all(&[0x42]).await.unwrap();
        let mut byte = [0u8; 1];
        server.read_exact(&mut byte).await.unwrap();
        assert_eq!(byte, [0x42]);
        server.write_all(&[0x43]).await.unwrap();
        client.read_exact(&mut byte).await.unwrap();
        assert_eq!(byte, [0x43]);
    }

    #[tokio::test]
    async fn tls_main_refuses_a_participant_certificate_from_another_ca() {
        let cluster = Cluster::new("ours");
        let other = Cluster::new("other");
        let (listener, addr) = listen().await;
        let rogue = client_config(&cluster.ca.cert, &other.fra.cert, &other.fra.key).unwrap();
        let (server, client) = handshake(&listener, &cluster.acceptor(), addr, rogue).await;
        assert_eq!(
            handshake_reason(server),
            "certificate not signed by the cluster CA"
        );
        assert_client_refused(client).await;
    }

    #[tokio::test]
    async fn tls_main_refuses_a_client_without_a_certificate() {
        let cluster = Cluster::new("anon");
        let (listener, addr) = listen().await;
        let (server, client) = handshake(
            &listener,
            &cluster.acceptor(),
            addr,
            anonymous_client(&cluster),
        )
        .await;
        assert_eq!(handshake_reason(server), "peer sent no certificate");
        assert_client_refused(client).await;
    }

    #[tokio::test]
    async fn tls_main_refuses_the_main_certificate_as_a_client_certificate() {
        let cluster = Cluster::new("role");
        let (listener, addr) = listen().await;
        let as_client =
            client_config(&cluster.ca.cert, &cluster.main.cert, &cluster.main.key).unwrap();
        let (server, client) = handshake(&listener, &cluster.acceptor(), addr, as_client).await;
        assert_eq!(
            handshake_reason(server),
            "certificate not issued for this role (extended key usage)"
        );
        assert_client_refused(client).await;
    }

    #[tokio::test]
    async fn tls_main_refuses_a_plain_tcp_client() {
        let cluster = Cluster::new("plain");
        let (listener, addr) = listen().await;
        let (server, _client) = tokio::join!(
            async {
                let (tcp, _) = listener.accept().await.unwrap();
                accept(&cluster.acceptor(), tcp, DEADLINE).await
            },
            async {
                let mut tcp = TcpStream::connect(addr).await.unwrap();
                tcp.write_all(b"GET /metrics HTTP/1.1\r\nHost: main.baton.internal\r\n\r\n")
                    .await
                    .unwrap();
                tcp
            }
        );
        assert_eq!(
            handshake_reason(server),
            "not a tls 1.3 handshake (InvalidContentType)"
        );
    }

    /// The content type of each TLS record in `bytes`, which must be whole records.
    fn record_types(mut bytes: &[u8]) -> Vec<u8> {
        let mut types = Vec::new();
        while !bytes.is_empty() {
            let len = usize::from(u16::from_be_bytes([bytes[3], bytes[4]]));
            types.push(bytes[0]);
            bytes = &bytes[5 + len..];
        }
        types
    }

    #[tokio::test]
    async fn tls_main_refuses_a_replayed_client_handshake() {
        let cluster = Cluster::new("replay");
        let acceptor = cluster.acceptor();
        let (listener, addr) = listen().await;

        let (proxy, recording) = recording_proxy(addr).await;
        let (server, client) = handshake(&listener, &acceptor, proxy, cluster.participant()).await;
        let (mut server, mut client) = (server.unwrap(), client.unwrap());
        client.write_all(&[0x42]).await.unwrap();
        let mut byte = [0u8; 1];
        server.read_exact(&mut byte).await.unwrap();
        assert_eq!(byte, [0x42]);
        client.shutdown().await.unwrap();
        drop(client);
        let recorded = recording.await.unwrap();
        drop(server);
        // ClientHello, the compatibility ChangeCipherSpec, then encrypted records: the client's
        // certificate flight, the byte, close_notify.
        assert_eq!(record_types(&recorded), [0x16, 0x14, 0x17, 0x17, 0x17]);
        assert_eq!(
            recorded[5], 0x01,
            "first handshake message is not a ClientHello"
        );

        let (server, _replayer) = tokio::join!(
            async {
                let (tcp, _) = listener.accept().await.unwrap();
                accept(&acceptor, tcp, DEADLINE).await
            },
            async {
                let mut tcp = TcpStream::connect(addr).await.unwrap();
                tcp.write_all(&recorded).await.unwrap();
                tcp
            }
        );
        assert_eq!(
            handshake_reason(server),
            "peer's records do not decrypt (replayed or corrupted handshake)"
        );
    }

    #[tokio::test]
    async fn tls_participant_refuses_a_main_certificate_from_another_ca() {
        let cluster = Cluster::new("ours");
        let other = Cluster::new("other");
        let (listener, addr) = listen().await;
        let rogue_main = tokio_rustls::TlsAcceptor::from(
            server_config(&other.ca.cert, &other.main.cert, &other.main.key).unwrap(),
        );
        let (server, client) = handshake(&listener, &rogue_main, addr, cluster.participant()).await;
        assert_eq!(
            handshake_reason(client),
            "certificate not signed by the cluster CA"
        );
        assert!(server.is_err(), "the rogue main completed a handshake");
    }

    #[tokio::test]
    async fn tls_participant_refuses_a_certificate_not_issued_to_the_main() {
        let cluster = Cluster::new("posing");
        let (listener, addr) = listen().await;
        // A participant's certificate from the right CA, presented as the main's.
        let posing = tokio_rustls::TlsAcceptor::from(
            server_config(&cluster.ca.cert, &cluster.fra.cert, &cluster.fra.key).unwrap(),
        );
        let (server, client) = handshake(&listener, &posing, addr, cluster.participant()).await;
        assert_eq!(
            handshake_reason(client),
            "certificate not issued for this role (extended key usage)"
        );
        assert!(server.is_err(), "the posing main completed a handshake");
    }

    /// Paused time: the clock jumps ahead only while every task waits, so the handshake must end at
    /// exactly the deadline.
    #[tokio::test(start_paused = true)]
    async fn tls_handshake_deadline_bounds_a_silent_client() {
        let cluster = Cluster::new("silent");
        let acceptor = cluster.acceptor();
        let (listener, addr) = listen().await;
        let deadline = Duration::from_millis(200);
        let (server, _silent) = tokio::join!(
            async {
                let (tcp, _) = listener.accept().await.unwrap();
                let started = tokio::time::Instant::now();
                (accept(&acceptor, tcp, deadline).await, started.elapsed())
            },
            async { TcpStream::connect(addr).await.unwrap() }
        );
        match server {
            (Err(TlsError::HandshakeTimeout { deadline: d, .. }), elapsed) => {
                assert_eq!(d, deadline);
                assert_eq!(elapsed, deadline);
            }
            other => panic!("expected a handshake timeout, got {other:?}"),
        }
    }

    #[test]
    fn tls_init_ca_refuses_to_overwrite_unless_forced() {
        let cluster = Cluster::new("init");
        let before_key = fs::read(&cluster.ca.key).unwrap();
        let before_cert = fs::read(&cluster.ca.cert).unwrap();
        assert_eq!(
            fs::metadata(&cluster.ca.key).unwrap().permissions().mode() & 0o777,
            0o600
        );

        match init_ca(&cluster.ca_dir(), CA_NAME, DEFAULT_CA_VALIDITY_DAYS, false) {
            Err(TlsError::Exists { path }) => assert_eq!(path, cluster.ca.cert),
            other => panic!("init_ca overwrote an existing CA: {other:?}"),
        }
        // Only the key left behind is still refused, and the error names it.
        fs::remove_file(&cluster.ca.cert).unwrap();
        match init_ca(&cluster.ca_dir(), CA_NAME, DEFAULT_CA_VALIDITY_DAYS, false) {
            Err(TlsError::Exists { path }) => assert_eq!(path, cluster.ca.key),
            other => panic!("init_ca overwrote an existing CA key: {other:?}"),
        }
        assert_eq!(fs::read(&cluster.ca.key).unwrap(), before_key);
        assert!(
            !cluster.ca.cert.exists(),
            "a refused init_ca wrote a certificate"
        );

        fs::write(&cluster.ca.cert, &before_cert).unwrap();
        fs::set_permissions(&cluster.ca.key, fs::Permissions::from_mode(0o644)).unwrap();
        let files = init_ca(&cluster.ca_dir(), CA_NAME, DEFAULT_CA_VALIDITY_DAYS, true).unwrap();
        assert_eq!(files, cluster.ca);
        assert_ne!(fs::read(&cluster.ca.key).unwrap(), before_key);
        assert_ne!(fs::read(&cluster.ca.cert).unwrap(), before_cert);
        assert_eq!(
            fs::metadata(&cluster.ca.key).unwrap().permissions().mode() & 0o777,
            0o600
        );
    }

    #[test]
    fn tls_issue_rejects_bad_names() {
        let cluster = Cluster::new("names");
        let out = cluster.dir.join("bad");
        for name in ["P_1", "-a", "a-", "", "p.fra", "../x", &"a".repeat(64)] {
            match issue(
                &cluster.ca_dir(),
                name,
                Role::Participant,
                DEFAULT_VALIDITY_DAYS,
                &out,
                false,
            ) {
                Err(TlsError::BadName { name: got, .. }) => assert_eq!(got, name),
                other => panic!("issue accepted {name:?}: {other:?}"),
            }
        }
        assert!(
            !out.exists(),
            "a refused issue created its output directory"
        );

        let longest = "a".repeat(63);
        let files = issue(
            &cluster.ca_dir(),
            &longest,
            Role::Participant,
            DEFAULT_VALIDITY_DAYS,
            &out,
            false,
        )
        .unwrap();
        assert_eq!(files.cert, out.join(format!("{longest}.pem")));
        assert_eq!(
            fs::metadata(&files.key).unwrap().permissions().mode() & 0o777,
            0o600
        );
    }

    #[test]
    fn tls_issue_refuses_to_overwrite_and_checks_validity() {
        let cluster = Cluster::new("reissue");
        let out = cluster.dir.join("certs");
        match issue(
            &cluster.ca_dir(),
            "p-fra",
            Role::Participant,
            DEFAULT_VALIDITY_DAYS,
            &out,
            false,
        ) {
            Err(TlsError::Exists { path }) => assert_eq!(path, cluster.fra.cert),
            other => panic!("issue overwrote p-fra: {other:?}"),
        }
        for days in [0, MAX_VALIDITY_DAYS + 1] {
            match issue(
                &cluster.ca_dir(),
                "p-iad",
                Role::Participant,
                days,
                &out,
                false,
            ) {
                Err(TlsError::BadValidity { days: got, max }) => {
                    assert_eq!((got, max), (days, MAX_VALIDITY_DAYS))
                }
                other => panic!("issue accepted {days} days: {other:?}"),
            }
        }
        let before = fs::read(&cluster.fra.cert).unwrap();
        issue(
            &cluster.ca_dir(),
            "p-fra",
            Role::Participant,
            DEFAULT_VALIDITY_DAYS,
            &out,
            true,
        )
        .unwrap();
        assert_ne!(fs::read(&cluster.fra.cert).unwrap(), before);
    }

    #[test]
    fn tls_issue_refuses_a_ca_key_that_is_not_the_ca_certificates() {
        let cluster = Cluster::new("mixed");
        let other = Cluster::new("mixed-other");
        fs::copy(&other.ca.key, &cluster.ca.key).unwrap();
        let out = cluster.dir.join("mixed");
        match issue(
            &cluster.ca_dir(),
            "p-iad",
            Role::Participant,
            DEFAULT_VALIDITY_DAYS,
            &out,
            false,
        ) {
            Err(TlsError::BadKey { path, reason }) => {
                assert_eq!(path, cluster.ca.key);
                assert!(
                    reason.starts_with("not the key of the certificate in"),
                    "{reason}"
                );
            }
            other => panic!("issue signed with a key that is not the CA's: {other:?}"),
        }
    }

    #[test]
    fn tls_file_errors_name_the_file() {
        let cluster = Cluster::new("files");
        let missing = cluster.dir.join("nope.pem");
        match server_config(&missing, &cluster.main.cert, &cluster.main.key) {
            Err(TlsError::Read { path, source }) => {
                assert_eq!(path, missing);
                assert_eq!(source.kind(), io::ErrorKind::NotFound);
            }
            other => panic!("{other:?}"),
        }
        // A key file is not a certificate file.
        match client_config(&cluster.fra.key, &cluster.fra.cert, &cluster.fra.key) {
            Err(TlsError::NoCertificate { path }) => assert_eq!(path, cluster.fra.key),
            other => panic!("{other:?}"),
        }
        match client_config(&cluster.ca.cert, &cluster.fra.cert, &cluster.fra.cert) {
            Err(TlsError::BadKey { path, .. }) => assert_eq!(path, cluster.fra.cert),
            other => panic!("{other:?}"),
        }
    }

    #[test]
    fn tls_issued_certificates_carry_their_names() {
        let cluster = Cluster::new("sans");
        let main = load_certs(&cluster.main.cert).unwrap();
        let main = webpki::EndEntityCert::try_from(&main[0]).unwrap();
        main.verify_is_valid_for_subject_name(&main_server_name())
            .unwrap();
        main.verify_is_valid_for_subject_name(&ServerName::IpAddress(Ipv4Addr::LOCALHOST.into()))
            .unwrap();
        assert!(main
            .verify_is_valid_for_subject_name(
                &ServerName::try_from("p-fra.participant.baton.internal").unwrap()
            )
            .is_err());

        let fra = load_certs(&cluster.fra.cert).unwrap();
        let fra_ee = webpki::EndEntityCert::try_from(&fra[0]).unwrap();
        fra_ee
            .verify_is_valid_for_subject_name(
                &ServerName::try_from("p-fra.participant.baton.internal").unwrap(),
            )
            .unwrap();
        assert!(fra_ee
            .verify_is_valid_for_subject_name(&main_server_name())
            .is_err());
        assert!(verify_participant(&main_certs(&cluster), "main").is_err());
        assert_eq!(
            participant_dns_name("p-fra"),
            "p-fra.participant.baton.internal"
        );
    }

    fn main_certs(cluster: &Cluster) -> Vec<CertificateDer<'static>> {
        load_certs(&cluster.main.cert).unwrap()
    }

    #[test]
    fn tls_verify_participant_needs_a_certificate() {
        match verify_participant(&[], "p-fra") {
            Err(TlsError::Participant { claimed, reason }) => {
                assert_eq!(claimed, "p-fra");
                assert_eq!(reason, "peer sent no certificate");
            }
            other => panic!("{other:?}"),
        }
        assert!(matches!(
            verify_participant(&[], "P_1"),
            Err(TlsError::BadName { .. })
        ));
    }

    /// A `tracing` writer that keeps everything written to it.
    #[derive(Clone, Default)]
    struct Captured(Arc<std::sync::Mutex<Vec<u8>>>);

    impl Write for Captured {
        fn write(&mut self, buf: &[u8]) -> io::Result<usize> {
            self.0.lock().unwrap().extend_from_slice(buf);
            Ok(buf.len())
        }

        fn flush(&mut self) -> io::Result<()> {
            Ok(())
        }
    }

    #[test]
    fn tls_loose_key_file_is_loaded_with_a_warning() {
        let cluster = Cluster::new("loose");
        let captured = Captured::default();
        let subscriber = || {
            let writer = captured.clone();
            tracing_subscriber::fmt()
                .with_writer(move || writer.clone())
                .with_ansi(false)
                .finish()
        };

        tracing::subscriber::with_default(subscriber(), || {
            client_config(&cluster.ca.cert, &cluster.fra.cert, &cluster.fra.key).unwrap();
        });
        assert!(
            captured.0.lock().unwrap().is_empty(),
            "warned about a 0600 key"
        );

        fs::set_permissions(&cluster.fra.key, fs::Permissions::from_mode(0o640)).unwrap();
        tracing::subscriber::with_default(subscriber(), || {
            client_config(&cluster.ca.cert, &cluster.fra.cert, &cluster.fra.key).unwrap();
        });
        let log = String::from_utf8(captured.0.lock().unwrap().clone()).unwrap();
        assert!(log.contains("WARN"), "{log}");
        assert!(
            log.contains("private key file is accessible to group or others"),
            "{log}"
        );
        assert!(
            log.contains(&format!("path={}", cluster.fra.key.display())),
            "{log}"
        );
        assert!(log.contains("mode=640"), "{log}");
    }

    #[test]
    fn tls_main_server_name_is_a_dns_name() {
        assert_eq!(main_server_name().to_str(), MAIN_SERVER_NAME);
    }

    /// `SET { SEQUENCE { OID 2.5.4.3, UTF8String "ab" } }`, the body of a one-attribute name.
    static CN_AB: [u8; 13] = [
        0x31, 0x0b, 0x30, 0x09, 0x06, 0x03, 0x55, 0x04, 0x03, 0x0c, 0x02, b'a', b'b',
    ];

    #[test]
    fn tls_common_name_of_reads_exactly_one_common_name() {
        assert_eq!(common_name_of(&CN_AB).as_deref(), Some("ab"));
        let mut trailing = CN_AB.to_vec();
        trailing.push(0);
        assert_eq!(common_name_of(&trailing), None);
        let mut organisation = CN_AB;
        organisation[8] = 0x0a; // 2.5.4.10
        assert_eq!(common_name_of(&organisation), None);
        assert_eq!(common_name_of(&CN_AB[..12]), None);
    }
}
