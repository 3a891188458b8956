//! The generated CA (as the Go provider's: ECDSA P-256, organisation `siderolabs`, for
//! server and client authentication) and the serving certificates it issues for the
//! advertise address. Pure: every function takes the time it runs at.

use std::net::IpAddr;
use std::sync::Arc;
use std::time::{Duration, SystemTime};

use ironboot_proto::baremetal::TlsConfigSpec;
use rcgen::{
    BasicConstraints, CertificateParams, DistinguishedName, DnType, ExtendedKeyUsagePurpose, IsCa,
    Issuer, KeyPair, KeyUsagePurpose, PKCS_ECDSA_P256_SHA256, PublicKeyData, SanType, SerialNumber,
};
use tokio_rustls::rustls::crypto::CryptoProvider;
use tokio_rustls::rustls::pki_types::pem::PemObject;
use tokio_rustls::rustls::pki_types::{CertificateDer, PrivateKeyDer, PrivatePkcs8KeyDer};
use tokio_rustls::rustls::sign::CertifiedKey;

use super::TlsError;

/// Organisation of the CA and of the serving certificates (the Go provider's).
const ORGANIZATION: &str = "siderolabs";
/// Common name of the serving certificates (the Go provider's).
const SERVING_COMMON_NAME: &str = "omni-infra-provider-bare-metal";

/// A serving certificate is renewed when less than this fraction of its life is left.
const RENEW_DIVISOR: u32 = 10;

/// The CA: its certificate (PEM, as stored and as trusted by Talos) and its signing key.
pub struct Ca {
    cert_pem: String,
    key_pem: String,
    not_after: SystemTime,
    issuer: Issuer<'static, KeyPair>,
}

impl std::fmt::Debug for Ca {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        f.debug_struct("Ca")
            .field("not_after", &self.not_after)
            .finish_non_exhaustive()
    }
}

/// What was found in Omni's `TLSConfig`.
#[derive(Debug)]
pub(crate) enum StoredCa {
    /// Nothing stored: create one.
    Missing,
    /// A CA still valid at the time asked: use it.
    Valid(Box<Ca>),
    /// A CA past its end: replace it (as the Go provider does).
    Expired {
        /// When it ended.
        not_after: SystemTime,
    },
}

/// What to do with the stored `TLSConfig` at `now`. An undecodable one is an error: it
/// is not overwritten, since machines may trust it.
pub(crate) fn examine(
    stored: Option<&TlsConfigSpec>,
    now: SystemTime,
) -> Result<StoredCa, TlsError> {
    let Some(spec) = stored else {
        return Ok(StoredCa::Missing);
    };
    let ca = Ca::from_pem(&spec.ca_cert, &spec.ca_key).map_err(|why| TlsError::StoredCa { why })?;
    if ca.not_after > now {
        Ok(StoredCa::Valid(Box::new(ca)))
    } else {
        Ok(StoredCa::Expired {
            not_after: ca.not_after,
        })
    }
}

/// A random positive 128-bit serial number.
fn serial() -> SerialNumber {
    let mut bytes: [u8; 16] = rand::random();
    bytes[0] &= 0x7f;
    bytes[0] |= 0x01;
    SerialNumber::from_slice(&bytes)
}

fn organization() -> DistinguishedName {
    let mut dn = DistinguishedName::new();
    dn.push(DnType::OrganizationName, ORGANIZATION);
    dn
}

fn gen_err(what: &'static str) -> impl FnOnce(rcgen::Error) -> TlsError {
    move |e| TlsError::Generate {
        what,
        why: e.to_string(),
    }
}

/// The first certificate of a PEM text, DER.
pub(crate) fn first_cert(pem: &str) -> Result<CertificateDer<'static>, String> {
    CertificateDer::pem_slice_iter(pem.as_bytes())
        .next()
        .ok_or_else(|| "no PEM CERTIFICATE block".to_owned())?
        .map_err(|e| format!("unreadable PEM: {e}"))
}

/// `notBefore` and `notAfter` of a DER certificate.
pub(crate) fn validity(der: &[u8]) -> Result<(SystemTime, SystemTime), String> {
    let (_, cert) = x509_parser::parse_x509_certificate(der)
        .map_err(|e| format!("undecodable certificate: {e}"))?;
    let at = |t: i64| -> SystemTime {
        match u64::try_from(t) {
            Ok(secs) => SystemTime::UNIX_EPOCH + Duration::from_secs(secs),
            Err(_) => SystemTime::UNIX_EPOCH,
        }
    };
    let v = cert.validity();
    Ok((at(v.not_before.timestamp()), at(v.not_after.timestamp())))
}

impl Ca {
    /// A new CA valid from `now` for `ttl`.
    pub fn generate(now: SystemTime, ttl: Duration) -> Result<Self, TlsError> {
        let key = KeyPair::generate_for(&PKCS_ECDSA_P256_SHA256).map_err(gen_err("the CA key"))?;
        let mut params = CertificateParams::default();
        params.distinguished_name = organization();
        params.serial_number = Some(serial());
        params.not_before = now.into();
        params.not_after = (now + ttl).into();
        params.is_ca = IsCa::Ca(BasicConstraints::Unconstrained);
        params.key_usages = vec![
            KeyUsagePurpose::KeyCertSign,
            KeyUsagePurpose::DigitalSignature,
        ];
        params.extended_key_usages = vec![
            ExtendedKeyUsagePurpose::ServerAuth,
            ExtendedKeyUsagePurpose::ClientAuth,
        ];
        let cert = params
            .self_signed(&key)
            .map_err(gen_err("the CA certificate"))?;
        Self::from_pem(&cert.pem(), &key.serialize_pem()).map_err(|why| TlsError::Generate {
            what: "the CA certificate",
            why,
        })
    }

    /// A CA from its PEM certificate and key (PKCS#8 `PRIVATE KEY`, or the Go provider's
    /// SEC1 `EC PRIVATE KEY`). The key must be the certificate's.
    pub(crate) fn from_pem(cert_pem: &str, key_pem: &str) -> Result<Self, String> {
        let der = first_cert(cert_pem).map_err(|e| format!("ca_cert: {e}"))?;
        let (_, not_after) = validity(&der).map_err(|e| format!("ca_cert: {e}"))?;
        let key = KeyPair::from_pem(key_pem).map_err(|e| format!("ca_key: unreadable key: {e}"))?;
        let (_, parsed) = x509_parser::parse_x509_certificate(&der)
            .map_err(|e| format!("ca_cert: undecodable certificate: {e}"))?;
        if parsed.tbs_certificate.subject_pki.raw != key.subject_public_key_info().as_slice() {
            return Err("ca_key is not the key of ca_cert".to_owned());
        }
        if !parsed.is_ca() {
            return Err("ca_cert is not a CA certificate".to_owned());
        }
        let issuer = Issuer::from_ca_cert_der(&der, key)
            .map_err(|e| format!("ca_cert: not usable as an issuer: {e}"))?;
        Ok(Self {
            cert_pem: cert_pem.to_owned(),
            key_pem: key_pem.to_owned(),
            not_after,
            issuer,
        })
    }

    /// The certificate, PEM.
    pub fn cert_pem(&self) -> &str {
        &self.cert_pem
    }

    /// When the CA ends.
    pub(crate) fn not_after(&self) -> SystemTime {
        self.not_after
    }

    /// The spec stored in Omni's `TLSConfig`.
    pub(crate) fn to_spec(&self) -> TlsConfigSpec {
        TlsConfigSpec {
            ca_cert: self.cert_pem.clone(),
            ca_key: self.key_pem.clone(),
        }
    }

    /// A serving certificate for `ip`, valid from `now` for `ttl` (not past the CA's own
    /// end), with a new key.
    pub(crate) fn issue(
        &self,
        ip: IpAddr,
        now: SystemTime,
        ttl: Duration,
        provider: &CryptoProvider,
    ) -> Result<Issued, TlsError> {
        let key = KeyPair::generate_for(&PKCS_ECDSA_P256_SHA256)
            .map_err(gen_err("a serving certificate key"))?;
        let not_after = (now + ttl).min(self.not_after);
        let mut params = CertificateParams::default();
        let mut dn = organization();
        dn.push(DnType::CommonName, SERVING_COMMON_NAME);
        params.distinguished_name = dn;
        params.serial_number = Some(serial());
        params.not_before = now.into();
        params.not_after = not_after.into();
        params.subject_alt_names = vec![SanType::IpAddress(ip)];
        params.key_usages = vec![
            KeyUsagePurpose::DigitalSignature,
            KeyUsagePurpose::KeyEncipherment,
        ];
        params.extended_key_usages = vec![
            ExtendedKeyUsagePurpose::ServerAuth,
            ExtendedKeyUsagePurpose::ClientAuth,
        ];
        params.use_authority_key_identifier_extension = true;
        let cert = params
            .signed_by(&key, &self.issuer)
            .map_err(gen_err("a serving certificate"))?;
        let key_der = PrivateKeyDer::Pkcs8(PrivatePkcs8KeyDer::from(key.serialize_der()));
        let certified = CertifiedKey::from_der(vec![cert.der().clone()], key_der, provider)
            .map_err(|e| TlsError::Generate {
                what: "a serving certificate",
                why: e.to_string(),
            })?;
        Ok(Issued {
            key: Arc::new(certified),
            not_before: now,
            not_after,
        })
    }
}

/// A serving certificate and its key, as rustls serves them.
#[derive(Clone)]
pub(crate) struct Issued {
    /// Chain and key.
    pub(crate) key: Arc<CertifiedKey>,
    /// Start of validity.
    pub(crate) not_before: SystemTime,
    /// End of validity.
    pub(crate) not_after: SystemTime,
}

impl std::fmt::Debug for Issued {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        f.debug_struct("Issued")
            .field("not_before", &self.not_before)
            .field("not_after", &self.not_after)
            .finish_non_exhaustive()
    }
}

impl Issued {
    /// When it must be replaced: once less than a tenth of its life is left.
    pub(crate) fn renew_at(&self) -> SystemTime {
        let life = self
            .not_after
            .duration_since(self.not_before)
            .unwrap_or(Duration::ZERO);
        self.not_after - life / RENEW_DIVISOR
    }

    /// Whether it must be replaced at `now`.
    pub(crate) fn renewal_due(&self, now: SystemTime) -> bool {
        now >= self.renew_at()
    }
}
