//! What a user gets wrong: each a one-line error and a non-zero exit, with
//! nothing changed.

use crate::{Device, assert_refused, meshchat};

#[test]
fn mistakes_get_one_line_a_non_zero_exit_and_change_nothing() {
    let root = tempfile::tempdir().unwrap();
    let mut alice = Device::init(root.path(), "alice");
    let keystore = std::fs::read(alice.dir.join("keystore")).unwrap();

    // No daemon yet: the client commands say so (exit 3).
    assert_refused(&alice.run(&["status"]), 3, "no meshchat daemon is running");
    assert_refused(&alice.run(&["send", "bob", "hi"]), 3, "meshchat run");
    assert_refused(&alice.run(&["chat"]), 3, "no meshchat daemon is running");

    // Initialising twice.
    assert_refused(&alice.run(&["init"]), 1, "already initialised");
    assert_eq!(std::fs::read(alice.dir.join("keystore")).unwrap(), keystore);

    // A store left under another key (its keystore lost): `init` fails
    // and takes its new keystore back, so that it can be run again.
    let stray = Device::init(root.path(), "stray");
    std::fs::remove_file(stray.dir.join("keystore")).unwrap();
    assert_refused(&stray.run(&["init"]), 1, "creating the store");
    assert!(!stray.dir.join("keystore").exists());

    // A wrong passphrase.
    let out = alice
        .cmd()
        .env("MESHCHAT_PASSPHRASE", "not it")
        .args(["run", "--no-mdns", "--listen", "/ip4/127.0.0.1/tcp/0"])
        .output()
        .unwrap();
    assert_refused(&out, 1, "wrong passphrase");
    assert_eq!(std::fs::read(alice.dir.join("keystore")).unwrap(), keystore);

    // A directory never initialised.
    let out = meshchat()
        .env("MESHCHAT_DATA_DIR", root.path().join("nobody"))
        .env("MESHCHAT_PASSPHRASE", "x")
        .args(["run", "--no-mdns"])
        .output()
        .unwrap();
    assert_refused(&out, 1, "meshchat init");
    assert!(!root.path().join("nobody").exists());

    // Bad flags.
    assert_refused(
        &alice.run(&[
            "run",
            "--no-mdns",
            "--listen",
            "/ip4/127.0.0.1/tcp/0",
            "--relay",
            "/ip4/127.0.0.1/tcp/1",
        ]),
        2,
        "/p2p/<peer id>",
    );

    alice.start(&[]);

    // A second daemon on the same directory.
    let out = alice
        .cmd()
        .args(["run", "--no-mdns", "--listen", "/ip4/127.0.0.1/tcp/0"])
        .output()
        .unwrap();
    assert_refused(&out, 1, "another meshchat daemon is running");
    // The first one still serves.
    assert_eq!(alice.json(&["status"])["queued"], 0);

    // A mangled invite code: a character changed, a piece cut off, junk.
    let code = alice.invite();
    let mut flipped = code.clone().into_bytes();
    // In the signed bundle, which comes first (addresses are not signed).
    let at = "meshchat:".len() + 40;
    flipped[at] = if flipped[at] == b'A' { b'B' } else { b'A' };
    let flipped = String::from_utf8(flipped).unwrap();
    for bad in [
        flipped.as_str(),
        &code[..code.len() - 10],
        "meshchat:hello",
        "hello",
    ] {
        assert_refused(
            &alice.run(&["contacts", "add", "eve", bad]),
            1,
            "not a valid invite code",
        );
    }
    assert_eq!(alice.json(&["contacts", "list"]), serde_json::json!([]));

    // Unknown contacts.
    assert_refused(
        &alice.run(&["send", "bob", "hi"]),
        1,
        "no contact or group \"bob\"",
    );
    assert_refused(
        &alice.run(&["history", "bob"]),
        1,
        "no contact or group \"bob\"",
    );
    assert_refused(&alice.run(&["contacts", "verify", "bob"]), 1, "no contact");
    assert_eq!(alice.json(&["chats"]), serde_json::json!([]));

    // A name whose key changed: shown, refused until accepted.
    let mut bob = Device::init(root.path(), "bob");
    let mut carol = Device::init(root.path(), "carol");
    bob.start(&[]);
    carol.start(&[]);
    alice.json(&["contacts", "add", "bob", &bob.invite()]);
    let before = alice.json(&["contacts", "list"]);
    let carols = carol.invite();
    let out = alice.run(&["contacts", "add", "bob", &carols]);
    assert_refused(&out, 1, "bob has a new key: fingerprint");
    assert_eq!(alice.json(&["contacts", "list"]), before, "nothing changed");
    let accepted = alice.json(&["contacts", "add", "bob", &carols, "--accept-new-key"]);
    let after = alice.json(&["contacts", "list"]);
    assert_eq!(after.as_array().unwrap().len(), 1, "{after}");
    assert_eq!(after[0]["identity"], accepted["identity"]);
    assert_ne!(after[0]["identity"], before[0]["identity"]);
    bob.stop();
    carol.stop();

    // A message that does not get as far as asked in time: exit 4, not 1,
    // since it was written and stays queued.
    assert_refused(
        &alice.run(&[
            "send",
            "bob",
            "are you there",
            "--wait",
            "delivered",
            "--timeout",
            "1",
        ]),
        4,
        "not that far within 1 s",
    );
    assert_eq!(alice.json(&["status"])["queued"], 1);

    // Exports: never over an existing file.
    let taken = root.path().join("taken.json");
    std::fs::write(&taken, "mine").unwrap();
    let out = alice.run(&["export", "bob", "--output", taken.to_str().unwrap()]);
    assert_refused(&out, 1, "exists already");
    assert_eq!(std::fs::read_to_string(&taken).unwrap(), "mine");
    assert_refused(&alice.run(&["export", "--output", "x.json"]), 2, "--backup");

    // Bad values.
    assert_refused(
        &alice.run(&["send", "bob", "hi", "--wait", "soon"]),
        2,
        "--wait is sent, stored, delivered or read",
    );

    alice.stop();
    // The directory's lock went with the daemon: a new one starts.
    alice.start(&[]);
    alice.stop();
}
