//! Two daemons and a relay, driven only through the CLI.

use std::os::unix::fs::PermissionsExt;

use crate::{Device, Proc, assert_refused, start_relay};

#[test]
fn two_daemons_chat_through_the_cli_and_mail_waits_at_the_relay_while_one_is_stopped() {
    let root = tempfile::tempdir().unwrap();
    let (_relay, relay) = start_relay(root.path());
    let mut alice = Device::init(root.path(), "alice");
    let mut bob = Device::init(root.path(), "bob");
    alice.start(std::slice::from_ref(&relay));
    bob.start(std::slice::from_ref(&relay));

    // Invite codes exchanged out of band; each side names the other.
    let added = alice.json(&["contacts", "add", "bob", &bob.invite()]);
    assert_eq!(added["name"], "bob");
    assert_eq!(added["verified"], false);
    let added = bob.json(&["contacts", "add", "alice", &alice.invite()]);
    let safety = added["safety_number"].as_str().unwrap().to_owned();
    let listed = alice.json(&["contacts", "list"]);
    assert_eq!(listed.as_array().unwrap().len(), 1);
    assert_eq!(
        listed[0]["safety_number"],
        safety.as_str(),
        "the same on both sides"
    );
    alice.json(&["contacts", "verify", "bob"]);
    assert_eq!(alice.json(&["contacts", "list"])[0]["verified"], true);

    // A message, and the state the sender sees.
    let sent = alice.json(&["send", "bob", "hello bob", "--wait", "delivered"]);
    assert_eq!(sent["state"], "delivered");
    let page = bob.json(&["history", "alice"]);
    let msgs = page["messages"].as_array().unwrap();
    assert_eq!(msgs.len(), 1);
    assert_eq!(msgs[0]["text"], "hello bob");
    assert_eq!(msgs[0]["direction"], "in");
    assert_eq!(msgs[0]["from"], "alice");
    assert_eq!(msgs[0]["id"], sent["id"]);
    let page = alice.json(&["history", "bob"]);
    assert_eq!(page["messages"][0]["state"], "delivered");
    assert_eq!(page["messages"][0]["direction"], "out");

    // And back, then read: alice's copy turns "read".
    let reply = bob.json(&["send", "alice", "hi alice", "--wait", "delivered"]);
    let unread = alice.json(&["chats"]);
    assert_eq!(unread[0]["with"], "bob");
    assert_eq!(unread[0]["unread"], 1);
    let bob_events = Proc::events(bob.cmd());
    alice.json(&["read", "bob"]);
    bob_events.wait_json("bob's copy turning read", |e| {
        e["type"] == "receipt" && e["id"] == reply["id"] && e["state"] == "read"
    });
    drop(bob_events);

    // Bob's daemon stops; alice's next message waits at bob's relay.
    bob.stop();
    let held = alice.json(&["send", "bob", "are you there?", "--wait", "stored"]);
    assert_eq!(held["state"], "stored_at_relay");
    let status = alice.json(&["status"]);
    assert_eq!(
        status["relays"][0]["peer_id"],
        relay.rsplit('/').next().unwrap()
    );
    assert_eq!(status["relays"][0]["connected"], true, "{status}");
    assert_eq!(status["queued"], 1, "held at the relay, still owed to bob");
    let events = Proc::events(alice.cmd());
    bob.start(std::slice::from_ref(&relay));
    events.wait_json("the held message delivered", |e| {
        e["type"] == "receipt" && e["id"] == held["id"] && e["state"] == "delivered"
    });
    let page = bob.json(&["history", "alice", "--limit", "10"]);
    let texts: Vec<&str> = page["messages"]
        .as_array()
        .unwrap()
        .iter()
        .map(|m| m["text"].as_str().unwrap())
        .collect();
    assert_eq!(
        texts,
        ["are you there?", "hi alice", "hello bob"],
        "newest first, once each"
    );
    assert_eq!(
        alice.json(&["history", "bob", "--limit", "1"])["messages"][0]["state"],
        "delivered"
    );

    // Paging: one at a time, with the cursor, back to the beginning.
    let first = bob.json(&["history", "alice", "--limit", "2"]);
    let cursor = first["next"].as_str().unwrap();
    let older = bob.json(&["history", "alice", "--limit", "2", "--before", cursor]);
    assert_eq!(older["messages"][0]["text"], "hello bob");
    assert!(older["next"].is_null());

    // Export: the conversation decrypted, owner-only; a backup encrypted.
    let file = root.path().join("with-alice.json");
    let v = bob.json(&["export", "alice", "--output", file.to_str().unwrap()]);
    assert_eq!(v["written"], 3);
    let mode = std::fs::metadata(&file).unwrap().permissions().mode();
    assert_eq!(mode & 0o777, 0o600, "{mode:o}");
    let exported: serde_json::Value =
        serde_json::from_slice(&std::fs::read(&file).unwrap()).unwrap();
    assert!(
        exported.to_string().contains("are you there?"),
        "{exported}"
    );
    let backup = root.path().join("bob.backup");
    bob.json(&["export", "--backup", "--output", backup.to_str().unwrap()]);
    let bytes = std::fs::read(&backup).unwrap();
    assert!(bytes.starts_with(b"MESHCHAT-BACKUP\0"));
    assert!(
        !bytes
            .windows(b"are you there?".len())
            .any(|w| w == b"are you there?"),
        "a backup holds no plaintext"
    );

    alice.stop();
    bob.stop();
}

/// A file through the CLI: `send --file`, the recipient's `media_ready`
/// event, the history's line for it, and `save`, which writes the same
/// bytes to a new owner-only file and refuses one that exists.
#[test]
fn a_file_is_sent_and_saved_through_the_cli() {
    let root = tempfile::tempdir().unwrap();
    let (alice, bob) = crate::two_contacts(root.path());
    let bob_events = Proc::events(bob.cmd());

    let data: Vec<u8> = (0..150_000u32).map(|i| (i * 31 % 251) as u8).collect();
    let original = root.path().join("scan.png");
    std::fs::write(&original, &data).unwrap();
    let sent = alice.json(&[
        "send",
        "bob",
        "--file",
        original.to_str().unwrap(),
        "--mime",
        "image/png",
        "--wait",
        "delivered",
    ]);
    let id = sent["id"].as_str().unwrap().to_owned();
    bob_events.wait_json("the file's pieces", |e| {
        e["type"] == "media_ready" && e["id"] == id.as_str() && e["with"] == "alice"
    });
    let page = bob.json(&["history", "alice"]);
    let m = &page["messages"][0];
    assert_eq!(m["media"]["name"], "scan.png");
    assert_eq!(m["media"]["mime"], "image/png");
    assert_eq!(m["media"]["size"], 150_000);
    assert_eq!(m["text"], "[file] scan.png (150000 bytes)");

    let saved = root.path().join("saved.png");
    let v = bob.json(&["save", "alice", &id, "--output", saved.to_str().unwrap()]);
    assert_eq!(v["written"], 150_000);
    assert_eq!(std::fs::read(&saved).unwrap(), data);
    let mode = std::fs::metadata(&saved).unwrap().permissions().mode();
    assert_eq!(mode & 0o077, 0, "owner-only");
    // Not over a file that exists; not a message that is not there.
    let again = bob.run(&["save", "alice", &id, "--output", saved.to_str().unwrap()]);
    assert_ne!(again.status.code(), Some(0));
    assert!(
        crate::stderr(&again).contains("exists"),
        "{}",
        crate::stderr(&again)
    );
    // Named with its sender: alice's; not a message of bob's.
    let alice_key = alice.json(&["devices", "list"])["account"]
        .as_str()
        .unwrap()
        .to_owned();
    let by_sender = bob.json(&[
        "save",
        "alice",
        &id,
        "--from",
        &alice_key,
        "--output",
        root.path().join("by-sender.png").to_str().unwrap(),
    ]);
    assert_eq!(by_sender["written"], 150_000);
    let bob_key = bob.json(&["devices", "list"])["account"]
        .as_str()
        .unwrap()
        .to_owned();
    let not_his = bob.run(&[
        "save",
        "alice",
        &id,
        "--from",
        &bob_key,
        "--output",
        root.path().join("not-his.png").to_str().unwrap(),
    ]);
    assert_ne!(not_his.status.code(), Some(0));
    let none = bob.run(&[
        "save",
        "alice",
        &"00".repeat(16),
        "--output",
        root.path().join("none").to_str().unwrap(),
    ]);
    assert_ne!(none.status.code(), Some(0));
    // A path that is not a file is refused before anything is sent.
    let dir = alice.run(&["send", "bob", "--file", root.path().to_str().unwrap()]);
    assert_ne!(dir.status.code(), Some(0));
    assert!(
        crate::stderr(&dir).contains("not a regular file"),
        "{}",
        crate::stderr(&dir)
    );
    assert_eq!(
        alice.json(&["history", "bob"])["messages"]
            .as_array()
            .unwrap()
            .len(),
        1
    );
}

/// `meshchat delete` takes one message, and `meshchat clear` a whole
/// conversation's messages and files, on this device only (clear after a
/// confirmation); the conversation goes on.
#[test]
fn clearing_a_chat_deletes_its_messages_and_files_here_only() {
    let root = tempfile::tempdir().unwrap();
    let (alice, bob) = crate::two_contacts(root.path());
    let bob_events = Proc::events(bob.cmd());
    let ids: Vec<String> = ["first", "second", "third"]
        .iter()
        .map(|text| {
            let v = alice.json(&["send", "bob", text, "--wait", "delivered"]);
            v["id"].as_str().unwrap().to_owned()
        })
        .collect();
    let note = root.path().join("note.txt");
    std::fs::write(&note, b"private").unwrap();
    let sent = alice.json(&[
        "send",
        "bob",
        "--file",
        note.to_str().unwrap(),
        "--wait",
        "delivered",
    ]);
    let id = sent["id"].as_str().unwrap().to_owned();
    bob_events.wait_json("the file", |e| {
        e["type"] == "media_ready" && e["id"] == id.as_str()
    });
    let count = |who: &crate::Device, with: &str| {
        who.json(&["history", with])["messages"]
            .as_array()
            .unwrap()
            .len()
    };
    assert_eq!(count(&bob, "alice"), 4);
    // One message goes; the others stay; it cannot go twice.
    assert_eq!(bob.json(&["delete", "alice", &ids[1]])["deleted"], true);
    let texts = |who: &crate::Device, with: &str| -> Vec<String> {
        who.json(&["history", with])["messages"]
            .as_array()
            .unwrap()
            .iter()
            .map(|m| m["text"].as_str().unwrap().to_owned())
            .collect()
    };
    assert_eq!(
        texts(&bob, "alice"),
        ["[file] note.txt (7 bytes)", "third", "first"]
    );
    assert_ne!(
        bob.run(&["delete", "alice", &ids[1]]).status.code(),
        Some(0)
    );

    // Not on a terminal, only with --yes.
    let unconfirmed = bob.run(&["clear", "alice"]);
    assert_eq!(unconfirmed.status.code(), Some(2));
    assert!(
        crate::stderr(&unconfirmed).contains("--yes"),
        "{}",
        crate::stderr(&unconfirmed)
    );
    assert_eq!(count(&bob, "alice"), 3);

    assert_eq!(bob.json(&["clear", "alice", "--yes"])["cleared"], 3);
    assert_eq!(count(&bob, "alice"), 0);
    let chats = bob.json(&["chats"]);
    let row = &chats.as_array().unwrap()[0];
    assert_eq!(row["unread"], 0);
    assert!(row["last"].is_null(), "{row}");
    let gone = bob.run(&[
        "save",
        "alice",
        &id,
        "--output",
        root.path().join("gone").to_str().unwrap(),
    ]);
    assert_ne!(gone.status.code(), Some(0));
    // Alice's device keeps its copy; the chat goes on.
    assert_eq!(count(&alice, "bob"), 4);
    alice.json(&["send", "bob", "after", "--wait", "delivered"]);
    assert_eq!(texts(&bob, "alice"), ["after"]);
}

/// Alice adds Bob's invite and writes; Bob has not added hers. He sees
/// her request in his events and in `contacts requests`, accepts it by
/// her key, and her message arrives; the request is gone. Accepting it
/// again, or declining a device that sent none, is refused.
#[test]
fn a_contact_request_is_listed_and_accepted_through_the_cli() {
    let root = tempfile::tempdir().unwrap();
    let mut alice = Device::init(root.path(), "alice");
    let mut bob = Device::init(root.path(), "bob");
    alice.start(&[]);
    bob.start(&[]);
    let bob_events = Proc::events(bob.cmd());
    alice.json(&["contacts", "add", "bob", &bob.invite()]);
    alice.json(&["send", "bob", "hello from alice"]);

    let request = bob_events.wait_json("a contact request", |e| e["type"] == "contact_request");
    let key = request["identity"].as_str().unwrap().to_owned();
    let listed = bob.json(&["contacts", "requests"]);
    let listed = listed.as_array().unwrap();
    assert_eq!(listed.len(), 1);
    assert_eq!(listed[0]["identity"], key.as_str());
    assert_eq!(listed[0]["fingerprint"], request["fingerprint"]);
    let plain = bob.run(&["contacts", "requests"]);
    assert!(crate::stderr(&plain).is_empty());
    assert!(String::from_utf8_lossy(&plain.stdout).contains(&key));
    assert!(
        bob.json(&["contacts", "list"])
            .as_array()
            .unwrap()
            .is_empty()
    );

    let added = bob.json(&["contacts", "accept", &key, "alice"]);
    assert_eq!(added["name"], "alice");
    bob_events.wait_json("her message", |e| {
        e["type"] == "message" && e["message"]["text"] == "hello from alice"
    });
    assert!(
        bob.json(&["contacts", "requests"])
            .as_array()
            .unwrap()
            .is_empty()
    );
    assert_refused(
        &bob.run(&["contacts", "accept", &key, "alice again"]),
        1,
        "no contact request",
    );
    assert_refused(
        &bob.run(&["contacts", "decline", &"ab".repeat(32)]),
        1,
        "no contact request",
    );
    assert_refused(
        &bob.run(&["contacts", "accept", "not-a-key", "x"]),
        1,
        "64 hex digits",
    );
    let texts: Vec<String> = bob.json(&["history", "alice"])["messages"]
        .as_array()
        .unwrap()
        .iter()
        .map(|m| m["text"].as_str().unwrap().to_owned())
        .collect();
    assert_eq!(texts, ["hello from alice"]);
}

/// A device named through the CLI: its own list shows the name, and a
/// contact is told (an event) and lists it with the contact.
#[test]
fn a_device_named_through_the_cli_is_named_at_its_contacts() {
    let root = tempfile::tempdir().unwrap();
    let (alice, bob) = crate::two_contacts(root.path());
    let bob_events = Proc::events(bob.cmd());

    let own = alice.json(&["devices", "list"]);
    assert_eq!(own["serial"], 1);
    assert_eq!(own["devices"][0]["name"], "");
    let account = own["account"].as_str().unwrap().to_owned();
    assert_eq!(own["devices"][0]["identity"], account.as_str());
    let named = alice.json(&["devices", "name", "laptop"]);
    assert_eq!(
        (named["serial"].clone(), named["devices"][0]["name"].clone()),
        (2.into(), "laptop".into())
    );
    let plain = alice.run(&["devices", "list"]);
    assert!(
        String::from_utf8_lossy(&plain.stdout)
            .contains(&format!("* laptop               {account}"))
    );
    assert_refused(
        &alice.run(&["devices", "name", &"x".repeat(65)]),
        1,
        "at most 64 bytes",
    );

    let changed = bob_events.wait_json("alice's new list", |e| e["type"] == "devices_changed");
    assert_eq!(changed["with"], "alice");
    assert_eq!(changed["renamed"][0], account.as_str());
    assert_eq!(changed["devices"]["devices"][0]["name"], "laptop");
    let listed = bob.json(&["contacts", "list"]);
    assert_eq!(listed[0]["devices"]["serial"], 2);
    assert_eq!(listed[0]["devices"]["devices"][0]["name"], "laptop");
    let plain = bob.run(&["contacts", "list"]);
    assert!(String::from_utf8_lossy(&plain.stdout).contains("laptop"));
}

/// A second device joins an account through the CLI: the account's device
/// prints a link code, the new device joins with it and waits until it is
/// added; both list the same two devices, the contact is told of the new
/// one, and the code does not serve a second device. Then the account's
/// device removes it by name: the contact hears, and so does the removed
/// device, an account of its own again.
#[test]
fn a_new_device_joins_an_account_with_a_link_code_through_the_cli() {
    let root = tempfile::tempdir().unwrap();
    let (alice, bob) = crate::two_contacts(root.path());
    let bob_events = Proc::events(bob.cmd());
    let alice_events = Proc::events(alice.cmd());
    let account = alice.json(&["devices", "list"])["account"]
        .as_str()
        .unwrap()
        .to_owned();

    let link = alice.json(&["devices", "link"]);
    let code = link["code"].as_str().unwrap().to_owned();
    assert!(code.starts_with("meshchat-link:"), "{code}");
    assert_eq!(link["expires_in"], 600);
    let mut laptop = Device::init(root.path(), "laptop");
    laptop.start(&[]);
    // The code through stdin, out of the process list.
    let mut join = laptop.cmd();
    join.args([
        "devices",
        "join",
        "-",
        "--name",
        "laptop",
        "--timeout",
        "30",
        "--json",
    ])
    .stdin(std::process::Stdio::piped())
    .stdout(std::process::Stdio::piped())
    .stderr(std::process::Stdio::piped());
    let mut child = join.spawn().unwrap();
    {
        use std::io::Write as _;
        let mut stdin = child.stdin.take().unwrap();
        stdin.write_all(code.as_bytes()).unwrap();
    }
    let out = child.wait_with_output().unwrap();
    assert_eq!(out.status.code(), Some(0), "{}", crate::stderr(&out));
    let joined: serde_json::Value = serde_json::from_slice(&out.stdout).unwrap();
    assert_eq!(joined["account"], account.as_str());
    assert_eq!(joined["serial"], 2);
    assert_eq!(joined["devices"][1]["name"], "laptop");
    let laptop_key = joined["devices"][1]["identity"]
        .as_str()
        .unwrap()
        .to_owned();
    assert_ne!(laptop_key, account);
    let linked = alice_events.wait_json("the new device", |e| e["type"] == "device_linked");
    assert_eq!(
        (linked["identity"].as_str(), linked["name"].as_str()),
        (Some(laptop_key.as_str()), Some("laptop"))
    );
    assert_eq!(alice.json(&["devices", "list"]), joined);
    let changed = bob_events.wait_json("alice's new list", |e| {
        e["type"] == "devices_changed" && e["added"][0] == laptop_key.as_str()
    });
    assert_eq!(changed["with"], "alice");
    assert_eq!(changed["devices"]["serial"], 2);
    // Only the account's first device signs its list.
    assert_refused(
        &laptop.run(&["devices", "name", "tablet"]),
        1,
        "only the account's first device",
    );

    // The code is used: a second new device is refused and stays alone.
    let mut tablet = Device::init(root.path(), "tablet");
    tablet.start(&[]);
    let mut join = tablet.cmd();
    join.args(["devices", "join", &code, "--name", "tablet"]);
    let asking = Proc::spawn(join);
    alice
        .daemon
        .as_ref()
        .unwrap()
        .wait_stderr("the second request refused", |l| {
            l.contains("a link request refused") && l.contains("no link code is waiting")
        });
    drop(asking);
    assert_eq!(alice.json(&["devices", "list"])["serial"], 2);
    let own = tablet.json(&["devices", "list"]);
    assert_ne!(own["account"], account.as_str());
    assert_eq!(own["serial"], 1);

    // Alice removes the laptop by its name: Bob gets the list without
    // it, and the laptop is told and is an account of its own again.
    let laptop_events = Proc::events(laptop.cmd());
    bob_events.wait_json("the laptop as a contact", |e| {
        e["type"] == "contact_device" && e["identity"] == laptop_key.as_str()
    });
    // What the laptop writes to Bob, Alice's first device files as hers.
    laptop.json(&["send", "bob", "from the laptop"]);
    let copy = alice_events.wait_json("the laptop's copy", |e| {
        e["type"] == "message" && e["message"]["text"] == "from the laptop"
    });
    assert_eq!(copy["message"]["direction"], "out");
    let page = alice.json(&["history", "bob"]);
    assert!(
        page["messages"]
            .as_array()
            .unwrap()
            .iter()
            .any(|m| m["text"] == "from the laptop" && m["direction"] == "out")
    );
    assert_refused(&alice.run(&["devices", "remove", "phone"]), 1, "no device");
    assert_refused(
        &laptop.run(&["devices", "remove", "laptop"]),
        1,
        "only the account's first device",
    );
    let after = alice.json(&["devices", "remove", "laptop"]);
    assert_eq!(after["serial"], 3);
    assert_eq!(after["devices"].as_array().map(Vec::len), Some(1));
    bob_events.wait_json("alice's list without the laptop", |e| {
        e["type"] == "devices_changed" && e["removed"][0] == laptop_key.as_str()
    });
    let gone = bob_events.wait_json("the laptop no longer a contact", |e| {
        e["type"] == "contact_device_removed"
    });
    assert_eq!(
        (gone["identity"].as_str(), gone["account"].as_str()),
        (Some(laptop_key.as_str()), Some(account.as_str()))
    );
    let contacts = bob.json(&["contacts", "list"]);
    assert!(
        contacts
            .as_array()
            .unwrap()
            .iter()
            .all(|c| c["identity"] != laptop_key.as_str())
    );
    let left = laptop_events.wait_json("told", |e| e["type"] == "account_left");
    assert_eq!(left["account"], account.as_str());
    assert_eq!(
        laptop.json(&["devices", "list"])["account"],
        laptop_key.as_str()
    );
}
