//! One HTTP/1.1 connection, driven by hand (hyper's client `conn` API, no pool): an SSE stream, a long-poll loop
//! or a publisher slot each own exactly one keep-alive connection, so the connections a workload holds are the
//! ones it says it holds.

use bytes::Bytes;
use http_body_util::{BodyExt, Full};
use hyper::body::Incoming;
use hyper::client::conn::http1::{self, SendRequest};
use hyper::{Method, Request, Response};
use hyper_util::rt::TokioIo;
use tokio::net::TcpStream;

pub type Error = Box<dyn std::error::Error + Send + Sync>;
pub type Result<T> = std::result::Result<T, Error>;

/// `http://host:port` (any path is ignored) -> `host:port`.
pub fn authority(base: &str) -> String {
    let rest = base.strip_prefix("http://").or_else(|| base.strip_prefix("ws://")).unwrap_or(base);
    rest.split('/').next().unwrap_or(rest).to_owned()
}

pub struct Conn {
    sender: SendRequest<Full<Bytes>>,
    host: String,
}

impl Conn {
    pub async fn open(host: &str) -> Result<Conn> {
        let stream = TcpStream::connect(host).await?;
        stream.set_nodelay(true)?;
        let (sender, conn) = http1::handshake(TokioIo::new(stream)).await?;
        tokio::spawn(async move {
            let _ = conn.await;
        });
        Ok(Conn { sender, host: host.to_owned() })
    }

    /// Sends one request; the response body is left to the caller (a stream, or `read_body`).
    pub async fn send(
        &mut self,
        method: Method,
        path: &str,
        auth: Option<&str>,
        body: Bytes,
    ) -> Result<Response<Incoming>> {
        self.sender.ready().await?;
        let mut req = Request::builder().method(method).uri(path).header(hyper::header::HOST, &self.host);
        if let Some(token) = auth {
            req = req.header(hyper::header::AUTHORIZATION, format!("Bearer {token}"));
        }
        if !body.is_empty() {
            req = req.header(hyper::header::CONTENT_TYPE, "application/json");
        }
        Ok(self.sender.send_request(req.body(Full::new(body))?).await?)
    }

    /// Sends a request and reads its whole answer.
    pub async fn call(&mut self, method: Method, path: &str, auth: Option<&str>, body: Bytes) -> Result<(u16, Bytes)> {
        let res = self.send(method, path, auth, body).await?;
        let status = res.status().as_u16();
        Ok((status, res.into_body().collect().await?.to_bytes()))
    }
}
