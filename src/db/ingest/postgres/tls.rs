//! TLS for the writers' tokio-postgres connections, set up as sqlx sets up the gateway's other
//! connections (`sqlx-core`'s rustls handshake), so that one `DATABASE_URL` means the same to
//! both: ring, webpki's root certificates plus `sslrootcert`, a client certificate from
//! `sslcert` and `sslkey`; `verify-full` checks the chain and the host name, `verify-ca` the
//! chain only, and `prefer` and `require` accept any certificate (sqlx does not read
//! `sslrootcert` for them either). The rustls configuration is [`crate::tls`]'s.

use std::{
    future::Future,
    io,
    pin::Pin,
    sync::Arc,
    task::{Context, Poll},
};

use rustls::{ClientConfig, pki_types::ServerName};
use tokio::io::{AsyncRead, AsyncWrite, ReadBuf};
use tokio_postgres::tls::{ChannelBinding, MakeTlsConnect, TlsConnect, TlsStream};

pub use crate::tls::{Pem, TlsSettings, Verify};

/// A rustls client configuration for `settings`, shared by every connection it makes.
#[derive(Clone)]
pub struct RustlsConnect {
    config: Arc<ClientConfig>,
}

impl RustlsConnect {
    pub fn new(settings: &TlsSettings) -> Result<Self, String> {
        Ok(Self {
            config: Arc::new(crate::tls::client_config(settings)?),
        })
    }
}

impl<S> MakeTlsConnect<S> for RustlsConnect
where
    S: AsyncRead + AsyncWrite + Unpin + Send + 'static,
{
    type Stream = RustlsStream<S>;
    type TlsConnect = RustlsHandshake;
    type Error = io::Error;

    /// Called for every connection, TLS or not: a Unix socket's `host` is empty, and a name
    /// that cannot be a server's fails only a handshake that is attempted.
    fn make_tls_connect(&mut self, host: &str) -> io::Result<RustlsHandshake> {
        Ok(RustlsHandshake {
            config: self.config.clone(),
            server: ServerName::try_from(host).map(|name| name.to_owned()),
        })
    }
}

/// One connection's handshake, for the host it connects to.
pub struct RustlsHandshake {
    config: Arc<ClientConfig>,
    server: Result<ServerName<'static>, rustls::pki_types::InvalidDnsNameError>,
}

type Handshake<S> = Pin<Box<dyn Future<Output = io::Result<RustlsStream<S>>> + Send>>;

impl<S> TlsConnect<S> for RustlsHandshake
where
    S: AsyncRead + AsyncWrite + Unpin + Send + 'static,
{
    type Stream = RustlsStream<S>;
    type Error = io::Error;
    type Future = Handshake<S>;

    fn connect(self, stream: S) -> Handshake<S> {
        let connector = tokio_rustls::TlsConnector::from(self.config);
        Box::pin(async move {
            let server = self
                .server
                .map_err(|e| io::Error::new(io::ErrorKind::InvalidInput, e))?;
            let stream = connector.connect(server, stream).await?;
            Ok(RustlsStream(stream))
        })
    }
}

/// An established TLS stream. No channel binding: sqlx's SCRAM does not bind either.
pub struct RustlsStream<S>(tokio_rustls::client::TlsStream<S>);

impl<S: AsyncRead + AsyncWrite + Unpin> TlsStream for RustlsStream<S> {
    fn channel_binding(&self) -> ChannelBinding {
        ChannelBinding::none()
    }
}

impl<S: AsyncRead + AsyncWrite + Unpin> AsyncRead for RustlsStream<S> {
    fn poll_read(
        mut self: Pin<&mut Self>,
        cx: &mut Context<'_>,
        buf: &mut ReadBuf<'_>,
    ) -> Poll<io::Result<()>> {
        Pin::new(&mut self.0).poll_read(cx, buf)
    }
}

impl<S: AsyncRead + AsyncWrite + Unpin> AsyncWrite for RustlsStream<S> {
    fn poll_write(
        mut self: Pin<&mut Self>,
        cx: &mut Context<'_>,
        buf: &[u8],
    ) -> Poll<io::Result<usize>> {
        Pin::new(&mut self.0).poll_write(cx, buf)
    }

    fn poll_flush(mut self: Pin<&mut Self>, cx: &mut Context<'_>) -> Poll<io::Result<()>> {
        Pin::new(&mut self.0).poll_flush(cx)
    }

    fn poll_shutdown(mut self: Pin<&mut Self>, cx: &mut Context<'_>) -> Poll<io::Result<()>> {
        Pin::new(&mut self.0).poll_shutdown(cx)
    }
}
