//! Fuzz target: the API's parsing of request bodies into Tandem's own types
//! (`tandem_objects::parse_yaml`, `parse_yaml_stream` and `parse_json`, what every create,
//! update and patch goes through) never panics on any text, and an object that parses
//! serializes to JSON that parses back to the same JSON (normalisation is stable), as the store
//! keeps and serves it.

#![no_main]

use libfuzzer_sys::fuzz_target;
use tandem_objects::{parse_json, parse_yaml, parse_yaml_stream};

fuzz_target!(|data: &[u8]| {
    let Ok(text) = std::str::from_utf8(data) else {
        return;
    };
    let _ = parse_yaml_stream(text);
    for parsed in [parse_yaml(text), parse_json(text)] {
        let Ok(object) = parsed else {
            continue;
        };
        let json = object.to_json();
        let again = parse_json(&json)
            .unwrap_or_else(|error| panic!("{json}\ndoes not parse back: {error}"));
        assert_eq!(again.to_json(), json, "normalisation is not stable");
        // YAML too: what `get -o yaml` prints, `apply -f` reads.
        let yaml = object.to_yaml();
        let from_yaml = parse_yaml(&yaml)
            .unwrap_or_else(|error| panic!("{yaml}\ndoes not parse back: {error}"));
        assert_eq!(from_yaml.to_json(), json, "YAML round trip changed the object");
    }
});
