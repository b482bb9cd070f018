//! The watched endpoints file.

use std::time::Duration;

use lb_discovery_static::{EndpointsFile, Error, Location};
use lb_test_support::TempDir;

use crate::support::{assert_quiet, endpoints, expect_err, ids, next_reset, overwrite, replace, Warnings};

/// How long a change may take to arrive: debounce plus slack for a loaded machine.
const WITHIN: Duration = Duration::from_secs(3);
/// How long to watch for an update that must not come: several debounces and polls.
const QUIET: Duration = Duration::from_millis(600);

fn watcher(path: &std::path::Path) -> EndpointsFile {
    EndpointsFile::new(path)
        .debounce(Duration::from_millis(50))
        .poll_interval(Duration::from_millis(150))
}

#[tokio::test]
async fn the_file_at_start_gives_a_reset() {
    let dir = TempDir::new("static-start");
    let path = dir.join("endpoints.toml");
    overwrite(
        &path,
        r#"endpoints = [
            { addr = "127.0.0.1:9001", weight = 3, id = "a", metadata = { zone = "a" } },
            { addr = "[::1]:9002" },
        ]"#,
    );
    let mut updates = watcher(&path).watch().unwrap();
    let set = next_reset(&mut updates, WITHIN).await;
    assert_eq!(ids(&set), ["a", "[::1]:9002"]);
    assert_eq!(set[0].addr(), "127.0.0.1:9001".parse().unwrap());
    assert_eq!(set[0].weight(), 3);
    assert_eq!(set[0].metadata().get("zone").map(String::as_str), Some("a"));
    assert_eq!(set[1].weight(), 1);
    assert_quiet(&mut updates, QUIET).await;
}

#[tokio::test]
async fn edits_by_rename_and_in_place_yield_resets() {
    let dir = TempDir::new("static-edits");
    let path = dir.join("endpoints.toml");
    overwrite(&path, &endpoints(&["127.0.0.1:9001"]));
    let mut updates = watcher(&path).watch().unwrap();
    assert_eq!(ids(&next_reset(&mut updates, WITHIN).await), ["127.0.0.1:9001"]);

    replace(&path, &endpoints(&["127.0.0.1:9001", "127.0.0.1:9002"]));
    let set = next_reset(&mut updates, WITHIN).await;
    assert_eq!(ids(&set), ["127.0.0.1:9001", "127.0.0.1:9002"], "after a rename");

    overwrite(&path, &endpoints(&["127.0.0.1:9003"]));
    let set = next_reset(&mut updates, WITHIN).await;
    assert_eq!(ids(&set), ["127.0.0.1:9003"], "after an in-place write");

    // An intentional empty list is a good edit.
    replace(&path, "endpoints = []\n");
    assert!(next_reset(&mut updates, WITHIN).await.is_empty());
}

#[tokio::test]
async fn a_bad_edit_keeps_the_last_set_until_a_good_one() {
    let dir = TempDir::new("static-bad");
    let path = dir.join("endpoints.toml");
    overwrite(&path, &endpoints(&["127.0.0.1:9001"]));
    let mut updates = watcher(&path).watch().unwrap();
    assert_eq!(ids(&next_reset(&mut updates, WITHIN).await), ["127.0.0.1:9001"]);

    for bad in [
        "endpoints = [ { addr = \"127.0.0.1:9002\" \n", // broken TOML
        "endpoints = [ { addr = \"127.0.0.1:9002\", wieght = 2 } ]\n", // unknown key
        "endpoints = [ { addr = \"not an address\" } ]\n", // bad address
        "",                                             // truncated
    ] {
        overwrite(&path, bad);
        assert_quiet(&mut updates, QUIET).await;
    }
    // Removing the file is no reason to empty the set either.
    std::fs::remove_file(&path).unwrap();
    assert_quiet(&mut updates, QUIET).await;

    replace(&path, &endpoints(&["127.0.0.1:9002"]));
    assert_eq!(ids(&next_reset(&mut updates, WITHIN).await), ["127.0.0.1:9002"]);
}

#[tokio::test]
async fn a_bad_edit_is_logged_with_file_line_and_column() {
    // The stream is polled on this thread (a current-thread runtime), so its events are too.
    let warnings = Warnings::capture();
    let dir = TempDir::new("static-log");
    let path = dir.join("endpoints.toml");
    overwrite(&path, &endpoints(&["127.0.0.1:9001"]));
    let mut updates = watcher(&path).watch().unwrap();
    next_reset(&mut updates, WITHIN).await;
    assert!(warnings.take().is_empty());

    // Atomically, so that no half-written state can add a warning of its own.
    replace(
        &path,
        "endpoints = [\n  { addr = \"127.0.0.1:9001\" },\n  { addr = \"127.0.0.1:9002\", wieght = 2 },\n]\n",
    );
    let deadline = tokio::time::Instant::now() + WITHIN;
    let mut logged = Vec::new();
    while logged.is_empty() && tokio::time::Instant::now() < deadline {
        assert_quiet(&mut updates, Duration::from_millis(50)).await;
        logged = warnings.take();
    }
    // Several polls later, the same bad file has not been reported again.
    assert_quiet(&mut updates, QUIET).await;
    logged.extend(warnings.take());
    assert_eq!(
        logged.len(),
        1,
        "one warning per bad edit, however often it is polled: {logged:?}"
    );
    let file = format!("file={}", path.display());
    assert!(logged[0].contains(&file), "{logged:?}");
    assert!(logged[0].contains("line=3 column=30"), "{logged:?}");
    assert!(logged[0].contains("wieght"), "{logged:?}");
}

#[tokio::test]
async fn file_events_alone_see_changes() {
    let dir = TempDir::new("static-events");
    let path = dir.join("endpoints.toml");
    overwrite(&path, &endpoints(&["127.0.0.1:9001"]));
    // No poll within the test: only the file watcher can see the edits.
    let mut updates = watcher(&path).poll_interval(Duration::from_secs(3600)).watch().unwrap();
    next_reset(&mut updates, WITHIN).await;
    overwrite(&path, &endpoints(&["127.0.0.1:9002"]));
    assert_eq!(ids(&next_reset(&mut updates, WITHIN).await), ["127.0.0.1:9002"]);
    replace(&path, &endpoints(&["127.0.0.1:9003"]));
    assert_eq!(ids(&next_reset(&mut updates, WITHIN).await), ["127.0.0.1:9003"]);
}

#[tokio::test]
async fn unchanged_writes_emit_nothing() {
    let dir = TempDir::new("static-same");
    let path = dir.join("endpoints.toml");
    let text = endpoints(&["127.0.0.1:9001", "127.0.0.1:9002"]);
    overwrite(&path, &text);
    let mut updates = watcher(&path).watch().unwrap();
    next_reset(&mut updates, WITHIN).await;

    overwrite(&path, &text);
    replace(&path, &text);
    // Same set, different text: reordered and reformatted.
    replace(
        &path,
        "# reordered\n[[endpoints]]\naddr = \"127.0.0.1:9002\"\n\n[[endpoints]]\naddr = \"127.0.0.1:9001\"\nweight = 1\n",
    );
    assert_quiet(&mut updates, QUIET).await;

    // Another file in the same directory changing is no change either.
    overwrite(&dir.join("other.toml"), "x = 1");
    assert_quiet(&mut updates, QUIET).await;
}

#[tokio::test]
async fn polling_alone_sees_changes() {
    let dir = TempDir::new("static-poll");
    let path = dir.join("endpoints.toml");
    overwrite(&path, &endpoints(&["127.0.0.1:9001"]));
    let mut updates = watcher(&path).fs_events(false).watch().unwrap();
    next_reset(&mut updates, WITHIN).await;
    overwrite(&path, &endpoints(&["127.0.0.1:9002"]));
    assert_eq!(ids(&next_reset(&mut updates, WITHIN).await), ["127.0.0.1:9002"]);
    replace(&path, &endpoints(&["127.0.0.1:9003"]));
    assert_eq!(ids(&next_reset(&mut updates, WITHIN).await), ["127.0.0.1:9003"]);
}

#[tokio::test]
async fn a_bad_file_at_start_is_an_error_with_its_location() {
    let dir = TempDir::new("static-start-bad");
    let path = dir.join("endpoints.toml");
    let err = expect_err(EndpointsFile::new(&path).watch());
    assert!(matches!(err, Error::Io { .. }), "{err}");
    assert_eq!(err.path(), Some(path.as_path()));

    overwrite(
        &path,
        "endpoints = [\n  { addr = \"127.0.0.1:9001\" },\n  { addr = \"127.0.0.1:9002\", port = 1 },\n]\n",
    );
    let err = expect_err(EndpointsFile::new(&path).watch());
    assert!(matches!(err, Error::Parse { .. }), "{err}");
    assert_eq!(err.location().map(|l: Location| l.line), Some(3), "{err}");
    assert!(err.to_string().starts_with(&format!("{}:3:", path.display())), "{err}");
    assert!(err.to_string().contains("port"), "{err}");
}

#[tokio::test]
async fn names_in_the_file_are_resolved() {
    let dir = TempDir::new("static-names");
    let path = dir.join("endpoints.toml");
    overwrite(
        &path,
        "endpoints = [ { addr = \"localhost:9001\", weight = 2 }, { addr = \"127.0.0.1:9002\" } ]\n",
    );
    let mut updates = watcher(&path).watch().unwrap();
    let set = next_reset(&mut updates, WITHIN).await;
    let (named, literal) = set.split_at(set.len() - 1);
    assert!(
        named
            .iter()
            .any(|ep| ep.id().as_str() == "localhost:9001/127.0.0.1:9001"),
        "{set:?}"
    );
    assert!(named.iter().all(|ep| ep.weight() == 2 && ep.addr().ip().is_loopback()));
    assert_eq!(ids(literal), ["127.0.0.1:9002"]);
}
