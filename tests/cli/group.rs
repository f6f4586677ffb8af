//! Groups through the CLI: three daemons.

use crate::{Device, Proc};

fn events(d: &Device) -> Proc {
    Proc::events(d.cmd())
}

#[test]
fn a_group_is_created_used_and_changed_through_the_cli() {
    let root = tempfile::tempdir().unwrap();
    let mut alice = Device::init(root.path(), "alice");
    let mut bob = Device::init(root.path(), "bob");
    let mut carol = Device::init(root.path(), "carol");
    for d in [&mut alice, &mut bob, &mut carol] {
        d.start(&[]);
    }
    alice.json(&["contacts", "add", "bob", &bob.invite()]);
    alice.json(&["contacts", "add", "carol", &carol.invite()]);
    bob.json(&["contacts", "add", "alice", &alice.invite()]);
    carol.json(&["contacts", "add", "alice", &alice.invite()]);
    let (bob_events, carol_events) = (events(&bob), events(&carol));

    let created = alice.json(&["group", "create", "team", "bob", "carol", "--as", "alice"]);
    let id = created["id"].as_str().unwrap().to_owned();
    for e in [&bob_events, &carol_events] {
        e.wait_json("the new group", |e| {
            e["type"] == "group_changed" && e["group"] == id
        });
    }
    // Bob sees all three, alice as admin. (Each member's device learns the
    // others from the group and adds them as contacts.)
    let listed = bob.json(&["group", "list"]);
    let team = &listed[0];
    assert_eq!(team["name"], "team");
    assert_eq!(team["joined"], true);
    let members = team["members"].as_array().unwrap();
    assert_eq!(members.len(), 3);
    assert!(
        members
            .iter()
            .any(|m| m["name"] == "alice" && m["role"] == "admin")
    );

    // A message to the group, delivered once every member has it.
    let sent = alice.json(&["group", "send", "team", "hello team", "--wait", "delivered"]);
    assert_eq!(sent["state"], "delivered");
    for e in [&bob_events, &carol_events] {
        e.wait_json("the group message", |e| {
            e["type"] == "message"
                && e["message"]["text"] == "hello team"
                && e["group"] == id
                && e["group_name"] == "team"
        });
    }
    // The group is among the chats, with its size.
    let chats = carol.json(&["chats"]);
    let entry = chats
        .as_array()
        .unwrap()
        .iter()
        .find(|c| c["group"] == id)
        .expect("the group among carol's chats");
    assert_eq!(entry["members"], 3);
    assert_eq!(entry["unread"], 1);
    let page = carol.json(&["history", "team"]);
    assert_eq!(page["messages"][0]["text"], "hello team");
    assert_eq!(page["messages"][0]["from"], "alice");
    // It exports like a 1:1 conversation.
    let file = root.path().join("team.json");
    let v = carol.json(&["export", "team", "--output", file.to_str().unwrap()]);
    assert_eq!(v["written"], 1);
    let exported: serde_json::Value =
        serde_json::from_str(&std::fs::read_to_string(&file).unwrap()).unwrap();
    assert_eq!(exported["conversation"]["id"], id.as_str());
    assert!(exported.to_string().contains("hello team"), "{exported}");
    // Bob answers with plain `send`, which takes a group's name too.
    bob.json(&["send", "team", "hi all", "--wait", "delivered"]);
    carol_events.wait_json("bob's answer", |e| {
        e["type"] == "message" && e["message"]["text"] == "hi all"
    });
    // A group message is answered "sent": `--wait sent` is met at once.
    let sent = bob.json(&["send", "team", "and again", "--wait", "sent"]);
    assert_eq!(sent["state"], "sent");

    // Alice makes the group temporary; a member sees it in the group.
    alice.json(&["temporary", "team", "3600"]);
    // (Events of earlier changes may still be unread: the wait checks the
    // state at each.)
    bob_events.wait_json("the retention", |e| {
        e["type"] == "group_changed"
            && e["group"] == id
            && bob.json(&["group", "list"])[0]["retention"] == 3600
    });
    let out = alice.run(&["temporary", "team", "0"]);
    assert_eq!(out.status.code(), Some(2));
    assert!(crate::stderr(&out).contains("seconds from 1 to"));

    // A member cannot rename it; made an admin, bob can, and every
    // member sees the new name. Then bob is a member again.
    let out = carol.run(&["group", "rename", "team", "crew"]);
    crate::assert_refused(&out, 1, "only an admin");
    let made = alice.json(&["group", "role", "team", "bob", "admin"]);
    assert_eq!(made["role"], "admin");
    let role_of = |d: &Device, who: &str| {
        d.json(&["group", "list"])[0]["members"]
            .as_array()
            .unwrap()
            .iter()
            .find(|m| m["name"] == who)
            .map(|m| m["role"].clone())
    };
    let changed = |e: &serde_json::Value| e["type"] == "group_changed" && e["group"] == id;
    bob_events.wait_json("bob's new role", |e| {
        changed(e) && role_of(&bob, "bob") == Some("admin".into())
    });
    let renamed = bob.json(&["group", "rename", "team", "crew"]);
    assert_eq!(renamed["name"], "crew");
    carol_events.wait_json("the new name", |e| {
        changed(e) && carol.json(&["group", "list"])[0]["name"] == "crew"
    });
    let out = alice.run(&["group", "role", "crew", "nobody", "admin"]);
    crate::assert_refused(&out, 1, "no member");
    alice.json(&["group", "role", "crew", "bob", "member"]);
    bob_events.wait_json("bob a member again", |e| {
        changed(e) && role_of(&bob, "bob") == Some("member".into())
    });

    // Carol is removed: her device knows it is out.
    alice.json(&["group", "remove", "crew", "carol"]);
    carol_events.wait_json("the removal", |e| {
        changed(e) && carol.json(&["group", "list"])[0]["joined"] == false
    });
    let listed = alice.json(&["group", "list"]);
    assert_eq!(listed[0]["members"].as_array().unwrap().len(), 2);
    // Not a group admin: bob cannot remove anyone.
    let out = bob.run(&["group", "remove", "crew", "alice"]);
    crate::assert_refused(&out, 1, "only an admin");
}
