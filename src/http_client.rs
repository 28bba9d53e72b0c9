//! One HTTP/1.1 GET over a connection the caller opened (TCP or TLS), with a bound on the body:
//! the REST client of `doctor` and the owners' page (Mailman) and the key refresh (WKD, VKS).

use bytes::Bytes;
use http_body_util::{BodyExt, Empty, Limited};
use hyper::header::{HeaderName, HOST};
use hyper_util::rt::TokioIo;

/// Sends `GET path` with `Host: host` and `headers`; returns the status and the body, an error
/// if the body passes `limit` bytes. The connection is dropped afterwards (no keep-alive).
pub async fn get<T>(
    io: TokioIo<T>,
    host: &str,
    path: &str,
    headers: &[(HeaderName, &str)],
    limit: usize,
) -> Result<(u16, Bytes), String>
where
    T: tokio::io::AsyncRead + tokio::io::AsyncWrite + Unpin + Send + 'static,
{
    let (mut sender, connection) = hyper::client::conn::http1::handshake(io)
        .await
        .map_err(|e| e.to_string())?;
    let driver = tokio::spawn(connection);
    let mut request = hyper::Request::get(path).header(HOST, host);
    for (name, value) in headers {
        request = request.header(name, *value);
    }
    let request = request
        .body(Empty::<Bytes>::new())
        .map_err(|e| e.to_string())?;
    let response = sender
        .send_request(request)
        .await
        .map_err(|e| e.to_string())?;
    let status = response.status().as_u16();
    let body = Limited::new(response.into_body(), limit)
        .collect()
        .await
        .map_err(|e| e.to_string())?
        .to_bytes();
    driver.abort();
    Ok((status, body))
}
