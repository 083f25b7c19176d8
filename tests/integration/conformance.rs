//! The behaviour every source kind must show, run by each kind against its real server
//! (in the spirit of object_store's shared integration suite): a new item is announced
//! once; items that tie on the source's order are each announced once, also when a
//! batch ends inside the tie; a restart repeats nothing and misses nothing; a repeat
//! carries the id the item had; an idle poll writes nothing to the store.
//!
//! A source's test module implements [`SourceFixture`] and calls [`run`]; its own tests
//! then cover only what is specific to that source.

use std::collections::BTreeMap;

use serde_json::Value;

use crate::util::{Daemon, Project, StoreProbe, WAIT};

/// The watcher the suite runs: `conformance/suite`.
const WATCHER: &str = "conformance/suite";

/// One source kind set up against its server, empty, for one run of the suite.
pub trait SourceFixture {
    /// The `type:` of the source, which events carry as `source`.
    fn kind(&self) -> &'static str;
    /// The keys of the watcher's `source:` block after `type:`, each line indented by
    /// two spaces and ending in a newline.
    fn source_keys(&self) -> String;
    /// Environment the daemon needs (credentials).
    fn env(&self) -> Vec<(&'static str, String)> {
        Vec::new()
    }
    /// Adds one item per name. The items of one call share what the source orders by
    /// (a modification time, a `LastModified`, a transaction, a cursor value): a tie.
    /// Names sort in the order they are added, for sources that list in key order.
    fn add(&self, names: &[&str]);
    /// The name (as given to [`SourceFixture::add`]) of the item an event announces.
    fn name_of(&self, event: &Value) -> String;
    /// Checks what is specific to the kind in an event's `item`.
    fn check_item(&self, event: &Value);
}

/// Runs the suite against `fixture`.
pub fn run(fixture: &dyn SourceFixture) {
    let project = Project::default_config();
    project.watcher(
        "suite",
        &format!(
            // batch_size 2 with a tie of 3: a batch ends inside the tie.
            "namespace: conformance\nname: suite\npoll_interval: 100ms\nbatch_size: 2\n\
             retry: {{initial: 100ms, max: 1s}}\nsource:\n  type: {}\n{}sink: {{type: stdout}}\n",
            fixture.kind(),
            fixture.source_keys()
        ),
    );
    let env = fixture.env();
    let env: Vec<(&str, &str)> = env.iter().map(|(k, v)| (*k, v.as_str())).collect();
    let start = || project.start_with(&env, &[]);
    let mut ids: BTreeMap<String, String> = BTreeMap::new();
    let announced = |events: Vec<Value>, ids: &mut BTreeMap<String, String>| -> Vec<String> {
        let mut names = Vec::new();
        for event in events {
            check_event(fixture, &event);
            let name = fixture.name_of(&event);
            let id = event["id"].as_str().expect("id").to_string();
            assert!(!ids.values().any(|seen| *seen == id), "id {id} of {name} was used before: {ids:?}");
            assert!(ids.insert(name.clone(), id).is_none(), "{name} announced twice");
            names.push(name);
        }
        names.sort();
        names
    };

    // Empty: polls find nothing and write nothing.
    let mut daemon = start();
    daemon.wait_polls(WATCHER, 1);
    let store = project.store();
    assert_quiet(&mut daemon, &store);

    // A new item: one event.
    fixture.add(&["1-one"]);
    assert_eq!(announced(daemon.events(1, WAIT), &mut ids), ["1-one"]);
    assert_quiet(&mut daemon, &store);

    // A tie that a batch ends inside: each item once.
    fixture.add(&["2-tie-a", "2-tie-b", "2-tie-c"]);
    assert_eq!(announced(daemon.events(3, WAIT), &mut ids), ["2-tie-a", "2-tie-b", "2-tie-c"]);
    assert_quiet(&mut daemon, &store);

    // A restart repeats nothing; a new item is announced alone.
    stop(daemon);
    let mut daemon = start();
    daemon.assert_idle(&[WATCHER], 2);
    fixture.add(&["3-after-restart"]);
    assert_eq!(announced(daemon.events(1, WAIT), &mut ids), ["3-after-restart"]);
    assert_quiet(&mut daemon, &store);
    stop(daemon);

    // What lands while the daemon is down is announced when it is back.
    fixture.add(&["4-while-down"]);
    let mut daemon = start();
    assert_eq!(announced(daemon.events(1, WAIT), &mut ids), ["4-while-down"]);
    assert_quiet(&mut daemon, &store);
    stop(daemon);

    // A repeat carries the id the item had: with the watermark reset, every item is
    // announced again, each with its first id.
    let out = project.run(&["state", "reset", WATCHER]);
    assert_eq!(out.code, Some(0), "{out:?}");
    let mut daemon = start();
    let again = daemon.events(ids.len(), WAIT);
    let mut repeated = BTreeMap::new();
    for event in &again {
        check_event(fixture, event);
        let name = fixture.name_of(event);
        let id = event["id"].as_str().expect("id").to_string();
        assert!(repeated.insert(name.clone(), id).is_none(), "{name} announced twice after the reset");
    }
    assert_eq!(repeated, ids, "after a reset, every item is announced again with the id it had");
    daemon.assert_idle(&[WATCHER], 2);
    stop(daemon);
}

/// What every event carries, whatever the source.
fn check_event(fixture: &dyn SourceFixture, event: &Value) {
    assert_eq!(event["namespace"], "conformance", "{event}");
    assert_eq!(event["watcher"], "suite", "{event}");
    assert_eq!(event["source"], fixture.kind(), "{event}");
    assert_eq!(event["type"], "created", "{event}");
    assert!(event["id"].as_str().is_some_and(|id| !id.is_empty()), "{event}");
    assert!(event["emitted_at"].is_string(), "{event}");
    fixture.check_item(event);
}

/// The watcher polls and finds nothing, and the store is not written to meanwhile.
fn assert_quiet(daemon: &mut Daemon, store: &StoreProbe) {
    // A commit under way when called has finished once one more poll returned.
    daemon.wait_polls(WATCHER, 1);
    let (version, rows) = (store.data_version(), store.dump());
    daemon.assert_idle(&[WATCHER], 3);
    assert_eq!(
        store.data_version(),
        version,
        "idle polls wrote to the store; before:\n{rows}\nafter:\n{}",
        store.dump()
    );
}

fn stop(daemon: Daemon) {
    let (code, logs) = daemon.stop();
    assert_eq!(code, Some(0), "logs:\n{}", logs.join("\n"));
}
