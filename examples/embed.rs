//! Mounting stickless inside an application's own axum server: the application's routes and stickless's
//! (`/v1/...`) answer on one port, and one shutdown ends both.
//!
//! ```sh
//! cargo run --example embed -- 127.0.0.1:3000
//! curl -s localhost:3000/hello
//! curl -N 'localhost:3000/v1/sse?channels=demo:news'        # in one terminal
//! curl -s -XPOST localhost:3000/v1/publish -d '{"channel":"demo:news","data":"hi"}'   # in another
//! ```

use std::time::Duration;

use axum::routing::get;
use axum::Router;

#[tokio::main]
async fn main() -> anyhow::Result<()> {
    let addr = std::env::args().nth(1).unwrap_or_else(|| "127.0.0.1:3000".into());
    // Everything not set here keeps its default (one node, embedded store, no demo files).
    let settings = stickless::Settings { history_size: 500, ..stickless::Settings::default() };
    let (realtime, handle) = stickless::Builder::new().settings(settings).build().await?;

    let app = Router::new().route("/hello", get(|| async { "hello from the application\n" })).merge(realtime);

    let listener = tokio::net::TcpListener::bind(&addr).await?;
    println!("listening on http://{}", listener.local_addr()?);
    let stop = handle.clone();
    tokio::spawn(async move {
        let _ = tokio::signal::ctrl_c().await;
        stop.shutdown();
    });
    // Connect info gives stickless each client's address (for per-IP limits); without it, limits are per node.
    let app = app.into_make_service_with_connect_info::<std::net::SocketAddr>();
    axum::serve(listener, app).with_graceful_shutdown(handle.shutdown_requested()).await?;
    handle.finished(Duration::from_secs(5)).await;
    Ok(())
}
