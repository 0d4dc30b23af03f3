//! The `stickless` binary: reads the configuration, sets up logging and runs one node.

use stickless::Config;
use tracing_subscriber::EnvFilter;

#[tokio::main]
async fn main() -> anyhow::Result<()> {
    let config = Config::load();
    let filter = EnvFilter::try_from_env("STICKLESS_LOG").unwrap_or_else(|_| EnvFilter::new("info"));
    let logs = tracing_subscriber::fmt().with_env_filter(filter);
    if config.log_format == "json" {
        logs.json().init();
    } else {
        logs.init();
    }
    let listener = tokio::net::TcpListener::bind(config.listen).await?;
    stickless::run(config, listener).await
}
