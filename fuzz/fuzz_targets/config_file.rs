//! The configuration file: loads, or says why.
#![no_main]

use libfuzzer_sys::fuzz_target;

fuzz_target!(|text: &str| {
    let path = std::env::temp_dir().join(format!("stickless-fuzz-{}.toml", std::process::id()));
    if std::fs::write(&path, text).is_ok() {
        if let Ok(config) = stickless::Config::try_load_from(["stickless", "--config", path.to_str().unwrap()]) {
            let _ = config.settings();
        }
    }
});
