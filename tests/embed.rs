//! `examples/embed.rs` runs: the application's own route and stickless's routes on one axum server, and a
//! message published through it reaches an SSE client.

mod common;

use std::process::{Command, Stdio};
use std::time::{Duration, Instant};

use serde_json::json;

#[tokio::test]
async fn embed_example_serves_the_app_route_and_delivers_over_sse() {
    let port = common::free_port();
    let url = format!("http://127.0.0.1:{port}");
    let mut example = common::Process::spawn(
        Command::new(common::example("embed")).arg(format!("127.0.0.1:{port}")).stdout(Stdio::null()),
    );
    let deadline = Instant::now() + Duration::from_secs(20);
    let hello = loop {
        if let Ok(r) = common::http().get(format!("{url}/hello")).send().await {
            break r.text().await.unwrap();
        }
        assert!(Instant::now() < deadline, "the example did not come up");
        tokio::time::sleep(Duration::from_millis(50)).await;
    };
    assert_eq!(hello, "hello from the application\n");

    let mut sse = common::Sse::connect(&url, "channels=demo:news", None).await;
    let stored = common::publish_ok(&url, "demo:news", json!({"text": "from the app's server"})).await;
    let message = sse.next().await.expect("a message");
    assert_eq!(message["type"], "message");
    assert_eq!(message["offset"], stored["offset"]);
    assert_eq!(message["data"]["text"], "from the app's server");

    let missing = common::http().get(format!("{url}/index.html")).send().await.unwrap();
    assert_eq!(missing.status(), 404, "Settings::default() serves no files: the application serves its own");
    example.signal("INT");
    assert!(example.exited_within(Duration::from_secs(10)), "Ctrl-C shuts the example down cleanly");
}
