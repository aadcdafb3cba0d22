//! TLS for both connections: the SQL one (tokio-postgres) and the replication stream
//! (pgwire-replication), with libpq's `sslmode` meanings.

use std::sync::Arc;

use outflow_core::Error;
use rustls::client::danger::{HandshakeSignatureValid, ServerCertVerified, ServerCertVerifier};
use rustls::client::WebPkiServerVerifier;
use rustls::crypto::CryptoProvider;
use rustls::pki_types::{CertificateDer, ServerName, UnixTime};
use rustls::{ClientConfig, DigitallySignedStruct, RootCertStore, SignatureScheme};

use crate::config::{ConnectParams, SslMode};

fn provider() -> Arc<CryptoProvider> {
    Arc::new(rustls::crypto::aws_lc_rs::default_provider())
}

/// pgwire-replication builds its TLS configuration with the process-wide crypto provider;
/// install ours unless the application installed one already.
pub(crate) fn install_default_provider() {
    let _ = rustls::crypto::aws_lc_rs::default_provider().install_default();
}

fn roots(params: &ConnectParams) -> Result<RootCertStore, Error> {
    let mut store = RootCertStore::empty();
    match &params.sslrootcert {
        Some(path) => {
            let pem = std::fs::read(path).map_err(|e| {
                Error::fatal(format!(
                    "cannot read sslrootcert {}: {e}; give a readable PEM file of CA \
                     certificates",
                    path.display()
                ))
            })?;
            let mut count = 0;
            for cert in rustls_pemfile::certs(&mut pem.as_slice()) {
                let cert = cert.map_err(|e| {
                    Error::fatal(format!(
                        "sslrootcert {} is not valid PEM: {e}",
                        path.display()
                    ))
                })?;
                store.add(cert).map_err(|e| {
                    Error::fatal(format!(
                        "sslrootcert {} holds an unusable certificate: {e}",
                        path.display()
                    ))
                })?;
                count += 1;
            }
            if count == 0 {
                return Err(Error::fatal(format!(
                    "sslrootcert {} holds no certificate",
                    path.display()
                )));
            }
        }
        None => store.extend(webpki_roots::TLS_SERVER_ROOTS.iter().cloned()),
    }
    Ok(store)
}

/// The rustls configuration for the SQL connection.
pub(crate) fn client_config(params: &ConnectParams) -> Result<ClientConfig, Error> {
    let builder = ClientConfig::builder_with_provider(provider())
        .with_safe_default_protocol_versions()
        .map_err(|e| Error::fatal(format!("cannot set up TLS: {e}")))?;
    let verifier: Arc<dyn ServerCertVerifier> = match params.sslmode {
        SslMode::Disable | SslMode::Prefer | SslMode::Require => {
            Arc::new(NoVerification(provider()))
        }
        SslMode::VerifyCa | SslMode::VerifyFull => {
            let inner =
                WebPkiServerVerifier::builder_with_provider(Arc::new(roots(params)?), provider())
                    .build()
                    .map_err(|e| Error::fatal(format!("cannot set up TLS verification: {e}")))?;
            if params.sslmode == SslMode::VerifyCa {
                Arc::new(CaOnly(inner))
            } else {
                inner
            }
        }
    };
    Ok(builder
        .dangerous()
        .with_custom_certificate_verifier(verifier)
        .with_no_client_auth())
}

/// The TLS settings of the replication stream.
pub(crate) fn replication_tls(params: &ConnectParams) -> pgwire_replication::TlsConfig {
    let mode = match params.sslmode {
        SslMode::Disable => pgwire_replication::SslMode::Disable,
        SslMode::Prefer => pgwire_replication::SslMode::Prefer,
        SslMode::Require => pgwire_replication::SslMode::Require,
        SslMode::VerifyCa => pgwire_replication::SslMode::VerifyCa,
        SslMode::VerifyFull => pgwire_replication::SslMode::VerifyFull,
    };
    pgwire_replication::TlsConfig {
        mode,
        ca_pem_path: params.sslrootcert.clone(),
        ..Default::default()
    }
}

/// `prefer` and `require`: encrypt, but trust any certificate (libpq's meaning). The
/// handshake signatures are still checked, so the session is bound to the key presented.
#[derive(Debug)]
struct NoVerification(Arc<CryptoProvider>);

impl ServerCertVerifier for NoVerification {
    fn verify_server_cert(
        &self,
        _end_entity: &CertificateDer<'_>,
        _intermediates: &[CertificateDer<'_>],
        _server_name: &ServerName<'_>,
        _ocsp: &[u8],
        _now: UnixTime,
    ) -> Result<ServerCertVerified, rustls::Error> {
        Ok(ServerCertVerified::assertion())
    }

    fn verify_tls12_signature(
        &self,
        message: &[u8],
        cert: &CertificateDer<'_>,
        dss: &DigitallySignedStruct,
    ) -> Result<HandshakeSignatureValid, rustls::Error> {
        rustls::crypto::verify_tls12_signature(
            message,
            cert,
            dss,
            &self.0.signature_verification_algorithms,
        )
    }

    fn verify_tls13_signature(
        &self,
        message: &[u8],
        cert: &CertificateDer<'_>,
        dss: &DigitallySignedStruct,
    ) -> Result<HandshakeSignatureValid, rustls::Error> {
        rustls::crypto::verify_tls13_signature(
            message,
            cert,
            dss,
            &self.0.signature_verification_algorithms,
        )
    }

    fn supported_verify_schemes(&self) -> Vec<SignatureScheme> {
        self.0.signature_verification_algorithms.supported_schemes()
    }
}

/// `verify-ca`: the chain must lead to a trusted root; the name may differ.
#[derive(Debug)]
struct CaOnly(Arc<WebPkiServerVerifier>);

impl ServerCertVerifier for CaOnly {
    fn verify_server_cert(
        &self,
        end_entity: &CertificateDer<'_>,
        intermediates: &[CertificateDer<'_>],
        server_name: &ServerName<'_>,
        ocsp: &[u8],
        now: UnixTime,
    ) -> Result<ServerCertVerified, rustls::Error> {
        match self
            .0
            .verify_server_cert(end_entity, intermediates, server_name, ocsp, now)
        {
            Err(rustls::Error::InvalidCertificate(
                rustls::CertificateError::NotValidForName
                | rustls::CertificateError::NotValidForNameContext { .. },
            )) => Ok(ServerCertVerified::assertion()),
            other => other,
        }
    }

    fn verify_tls12_signature(
        &self,
        message: &[u8],
        cert: &CertificateDer<'_>,
        dss: &DigitallySignedStruct,
    ) -> Result<HandshakeSignatureValid, rustls::Error> {
        self.0.verify_tls12_signature(message, cert, dss)
    }

    fn verify_tls13_signature(
        &self,
        message: &[u8],
        cert: &CertificateDer<'_>,
        dss: &DigitallySignedStruct,
    ) -> Result<HandshakeSignatureValid, rustls::Error> {
        self.0.verify_tls13_signature(message, cert, dss)
    }

    fn supported_verify_schemes(&self) -> Vec<SignatureScheme> {
        self.0.supported_verify_schemes()
    }
}
