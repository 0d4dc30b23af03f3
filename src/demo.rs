//! The demo ticker: publishes `{seq, price}` to `demo:ticker` so the page at `/` has a live stream to show.

use std::time::Duration;

use serde_json::value::RawValue;

use crate::gateway::Gateway;
use crate::store::Store;

pub const TICKER_CHANNEL: &str = "demo:ticker";

pub fn spawn_ticker<S: Store>(gateway: Gateway<S>, every: Duration, shutdown: tokio_util::sync::CancellationToken) {
    tokio::spawn(async move {
        let mut ticks = tokio::time::interval(every);
        let mut price = 100.0_f64;
        for seq in 1u64.. {
            tokio::select! {
                _ = ticks.tick() => {}
                _ = shutdown.cancelled() => break,
            }
            // A deterministic wobble: no randomness needed to look alive.
            price = (price + ((seq as f64) * 0.7).sin() * 0.8).max(1.0);
            let data = format!(r#"{{"seq":{seq},"price":{price:.2}}}"#);
            let Ok(data) = RawValue::from_string(data) else {
                continue;
            };
            if let Err(err) = gateway.publish(TICKER_CHANNEL, &data, None).await {
                tracing::warn!(%err, "demo ticker could not publish");
            }
        }
    });
}
