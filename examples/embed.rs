//! Mounting stickless inside an application's own axum server: the application's routes and stickless's
//! (`/v1/...`) answer on one port, and one shutdown ends both.
//!
//! ```sh
//! cargo run --example embed -- 127.0.0.1:3000
//! curl -s localhost:3000/hello
//! curl -N 'localhost:3000/v1/sse?channels=demo:news'        # in one terminal
//! curl -s -XPOST localhost:3000/v1/publish -d '{"channel":"demo:news","data":"hi"}'   # in another
//! ```

use axum::routing::get;
use axum::Router;

#[tokio::main]
async fn main() -> anyhow::Result<()> {
    let addr = std::env::args().nth(1).unwrap_or_else(|| "127.0.0.1:3000".into());
    // Everything not set here keeps its default (one node, embedded store, no demo files).
    // (A one-second drain window: Ctrl-C on this example returns at once; a fleet wants the default 10 s.)
    let settings = stickless::Settings {
        history_size: 500,
        drain_window: std::time::Duration::from_secs(1),
        ..stickless::Settings::default()
    };
    let (realtime, handle) = stickless::Builder::new().settings(settings).build().await?;

    let app = Router::new().route("/hello", get(|| async { "hello from the application\n" })).merge(realtime);

    let listener = tokio::net::TcpListener::bind(&addr).await?;
    println!("listening on http://{}", listener.local_addr()?);
    // Ctrl-C drains: clients are told when to come back, in-flight requests finish, then serve() returns.
    let drain = handle.clone();
    tokio::spawn(async move {
        let _ = tokio::signal::ctrl_c().await;
        drain.drain();
    });
    // Served as the `stickless` binary serves: connection caps, header/body/write deadlines, drain. (Plain
    // `axum::serve` works too - with `into_make_service_with_connect_info` for per-IP limits - but has none of
    // the caps or deadlines.)
    handle.serve(listener, app).await?;
    Ok(())
}
