//! The HTTP server of `--metrics-addr`: `/metrics` (the OpenMetrics exposition), `/livez`,
//! `/readyz` and `/dns` (the names `domainNames` rules learned, by address), HTTP/1 with hyper on a thread of its own, so that the daemon's watchers and the
//! enforcer never wait for a scrape.

use std::convert::Infallible;
use std::net::SocketAddr;
use std::time::Duration;

use anyhow::Context;
use http_body_util::Full;
use hyper::body::Bytes;
use hyper::{Request, Response, StatusCode};

use super::metrics::Metrics;

/// The default `--metrics-addr`.
pub const DEFAULT_ADDR: &str = "0.0.0.0:9964";

/// `--metrics-addr`: `None` when disabled (`""` or `off`). An IPv6 address may also come
/// without brackets (`fd00::1:9964`, the port after the last colon): the manifests build the
/// flag from the downward API's `status.hostIP` as `$(HOST_IP):9964`, which cannot add
/// brackets only on an IPv6 node.
pub fn parse_addr(text: &str) -> anyhow::Result<Option<SocketAddr>> {
    let text = text.trim();
    if text.is_empty() || text.eq_ignore_ascii_case("off") {
        return Ok(None);
    }
    let unbracketed = || {
        let (ip, port) = text.rsplit_once(':')?;
        Some(SocketAddr::new(
            ip.parse::<std::net::Ipv6Addr>().ok()?.into(),
            port.parse().ok()?,
        ))
    };
    match text.parse() {
        Ok(addr) => Ok(Some(addr)),
        Err(e) => unbracketed()
            .map(Some)
            .ok_or(e)
            .with_context(|| format!("--metrics-addr {text:?} is not an address:port")),
    }
}

const OPENMETRICS: &str = "application/openmetrics-text; version=1.0.0; charset=utf-8";

fn respond(metrics: &Metrics, path: &str) -> Response<Full<Bytes>> {
    let (status, content_type, body) = match path {
        "/metrics" => (StatusCode::OK, OPENMETRICS, metrics.encode()),
        // The names `domainNames` rules learned, by address (`nftpol explain --dns-from`).
        "/dns" => (StatusCode::OK, "application/json", metrics.dns_names()),
        "/livez" | "/readyz" => {
            let check = if path == "/livez" {
                metrics.livez()
            } else {
                metrics.readyz()
            };
            match check {
                Ok(()) => (StatusCode::OK, "text/plain", "ok\n".to_string()),
                Err(reason) => (
                    StatusCode::SERVICE_UNAVAILABLE,
                    "text/plain",
                    format!("{reason}\n"),
                ),
            }
        }
        _ => (
            StatusCode::NOT_FOUND,
            "text/plain",
            "not found: try /metrics, /livez, /readyz or /dns\n".to_string(),
        ),
    };
    let mut response = Response::new(Full::new(Bytes::from(body)));
    *response.status_mut() = status;
    if let Ok(v) = hyper::header::HeaderValue::from_str(content_type) {
        response
            .headers_mut()
            .insert(hyper::header::CONTENT_TYPE, v);
    }
    response
}

/// Binds `addr` now (so that a taken port fails the command at start) and serves `/metrics`,
/// `/livez` and `/readyz` from a thread with its own single-threaded runtime: the daemon's
/// watchers and the enforcer never wait for a scrape. Returns the bound address (port 0
/// picks one).
pub fn serve(addr: SocketAddr, metrics: Metrics) -> anyhow::Result<SocketAddr> {
    let listener = std::net::TcpListener::bind(addr)
        .with_context(|| format!("listening on {addr} for metrics"))?;
    listener
        .set_nonblocking(true)
        .context("setting the metrics socket non-blocking")?;
    let bound = listener.local_addr().context("metrics socket address")?;
    let runtime = tokio::runtime::Builder::new_current_thread()
        .enable_io()
        .enable_time()
        .build()
        .context("starting the metrics runtime")?;
    std::thread::Builder::new()
        .name("metrics".into())
        .spawn(move || runtime.block_on(accept_loop(listener, metrics)))
        .context("starting the metrics thread")?;
    tracing::info!(addr = %bound, "serving /metrics, /livez and /readyz");
    Ok(bound)
}

async fn accept_loop(listener: std::net::TcpListener, metrics: Metrics) {
    let listener = match tokio::net::TcpListener::from_std(listener) {
        Ok(l) => l,
        Err(e) => {
            tracing::error!("metrics listener: {e}");
            return;
        }
    };
    loop {
        let stream = match listener.accept().await {
            Ok((s, _)) => s,
            Err(e) => {
                // Out of file descriptors and the like: wait instead of spinning.
                tracing::warn!("metrics accept: {e}");
                tokio::time::sleep(Duration::from_millis(100)).await;
                continue;
            }
        };
        let metrics = metrics.clone();
        tokio::task::spawn(async move {
            let service = hyper::service::service_fn(move |req: Request<hyper::body::Incoming>| {
                let response = respond(&metrics, req.uri().path());
                async move { Ok::<_, Infallible>(response) }
            });
            let io = hyper_util::rt::TokioIo::new(stream);
            if let Err(e) = hyper::server::conn::http1::Builder::new()
                .serve_connection(io, service)
                .await
            {
                tracing::debug!("metrics connection: {e}");
            }
        });
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn metrics_addr_parses() {
        assert_eq!(parse_addr("").ok(), Some(None));
        assert_eq!(parse_addr("off").ok(), Some(None));
        assert_eq!(
            parse_addr(DEFAULT_ADDR).ok().flatten(),
            DEFAULT_ADDR.parse().ok()
        );
        assert!(parse_addr("nonsense").is_err());
        assert_eq!(
            parse_addr("fd00::1:9964").ok().flatten(),
            "[fd00::1]:9964".parse().ok()
        );
        assert_eq!(
            parse_addr("10.0.0.1:9964").ok().flatten(),
            "10.0.0.1:9964".parse().ok()
        );
        assert!(parse_addr("fd00::1").is_err());
        assert!(parse_addr("10.0.0.1").is_err());
    }

    #[test]
    fn server_answers_probes_and_metrics() {
        let m = Metrics::new();
        m.heartbeat();
        let addr = serve("127.0.0.1:0".parse().unwrap(), m.clone()).unwrap();
        let get = |path: &str| {
            use std::io::{Read, Write};
            let mut s = std::net::TcpStream::connect(addr).unwrap();
            write!(
                s,
                "GET {path} HTTP/1.1\r\nHost: x\r\nConnection: close\r\n\r\n"
            )
            .unwrap();
            let mut out = String::new();
            s.read_to_string(&mut out).unwrap();
            out
        };
        assert!(get("/livez").starts_with("HTTP/1.1 200"));
        let ready = get("/readyz");
        assert!(ready.starts_with("HTTP/1.1 503"), "{ready}");
        assert!(ready.contains("first full sync"));
        let metrics = get("/metrics");
        assert!(metrics.contains("nftpol_nft_transactions 0"), "{metrics}");
        assert!(metrics.contains("application/openmetrics-text"));
        assert!(get("/nope").starts_with("HTTP/1.1 404"));
    }
}
