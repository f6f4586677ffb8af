//! Interop with an independent implementation: transcripts made by the
//! Python packages `X3DH` and `DoubleRatchet` (tests/fixtures/interop, with
//! the script that regenerates them). We re-derive the X3DH secrets, decrypt
//! every message (in order and out of order), and — replaying the ratchet
//! keys the Python side generated — produce byte-identical ciphertexts.

use std::collections::{HashMap, VecDeque};
use std::convert::Infallible;

use serde_json::Value;
use x25519_dalek::{PublicKey, StaticSecret};

use super::*;
use crate::crypto::x3dh::{derive_initiator, derive_responder};

const X3DH: &str = include_str!("../../../tests/fixtures/interop/x3dh.json");
const DR: &str = include_str!("../../../tests/fixtures/interop/double_ratchet.json");

fn s(v: &Value) -> &str {
    v.as_str().expect("string field")
}

fn b32(v: &Value) -> [u8; 32] {
    hex32(s(v))
}

/// An RNG that hands out recorded 32-byte private keys in order.
struct ReplayRng(VecDeque<[u8; 32]>);

impl rand_core::TryRng for ReplayRng {
    type Error = Infallible;
    fn try_next_u32(&mut self) -> Result<u32, Infallible> {
        panic!("replay rng: only 32-byte draws expected")
    }
    fn try_next_u64(&mut self) -> Result<u64, Infallible> {
        panic!("replay rng: only 32-byte draws expected")
    }
    fn try_fill_bytes(&mut self, dst: &mut [u8]) -> Result<(), Infallible> {
        assert_eq!(dst.len(), 32, "replay rng: only 32-byte draws expected");
        dst.copy_from_slice(&self.0.pop_front().expect("ran out of recorded keys"));
        Ok(())
    }
}
impl rand_core::TryCryptoRng for ReplayRng {}

fn replay(keys: &Value) -> ReplayRng {
    ReplayRng(
        keys.as_array()
            .unwrap()
            .iter()
            .map(|k| b32(&k["priv"]))
            .collect(),
    )
}

#[test]
fn x3dh_shared_secrets_match_python_x3dh() {
    let doc: Value = serde_json::from_str(X3DH).unwrap();
    let cases = doc["cases"].as_array().unwrap();
    assert_eq!(cases.len(), 2);
    for case in cases {
        let (a, b) = (&case["alice"], &case["bob"]);
        let ik_a = StaticSecret::from(b32(&a["identity_priv"]));
        let ek_a = StaticSecret::from(b32(&a["ephemeral_priv"]));
        let ik_b = StaticSecret::from(b32(&b["identity_priv"]));
        let spk_b = StaticSecret::from(b32(&b["signed_prekey_priv"]));
        let opk_b = b["one_time_prekey_priv"]
            .as_str()
            .map(|h| StaticSecret::from(hex32(h)));
        for (secret, public) in [
            (&ik_a, &a["identity_pub"]),
            (&ek_a, &a["ephemeral_pub"]),
            (&ik_b, &b["identity_pub"]),
            (&spk_b, &b["signed_prekey_pub"]),
        ] {
            assert_eq!(PublicKey::from(secret).to_bytes(), b32(public));
        }
        let opk_pub = opk_b.as_ref().map(PublicKey::from);
        let ours_a = derive_initiator(
            &ik_a,
            &ek_a,
            &PublicKey::from(&ik_b),
            &PublicKey::from(&spk_b),
            opk_pub.as_ref(),
        )
        .unwrap();
        let ours_b = derive_responder(
            &ik_b,
            &spk_b,
            opk_b.as_ref(),
            &PublicKey::from(&ik_a),
            &PublicKey::from(&ek_a),
        )
        .unwrap();
        let want = b32(&case["shared_secret"]);
        assert_eq!(*ours_a.shared_secret.expose(), want, "{}", s(&case["name"]));
        assert_eq!(*ours_b.shared_secret.expose(), want, "{}", s(&case["name"]));
        assert_eq!(
            ours_a.associated_data.to_vec(),
            hex(s(&case["associated_data"]))
        );
        assert_eq!(
            ours_b.associated_data.to_vec(),
            hex(s(&case["associated_data"]))
        );
    }
    // Both kinds of agreement are covered.
    assert!(
        cases
            .iter()
            .any(|c| c["bob"]["one_time_prekey_priv"].is_null())
    );
    assert!(
        cases
            .iter()
            .any(|c| !c["bob"]["one_time_prekey_priv"].is_null())
    );
}

struct Transcript {
    doc: Value,
    by_label: HashMap<String, Value>,
}

impl Transcript {
    fn load() -> Self {
        let doc: Value = serde_json::from_str(DR).unwrap();
        let by_label = doc["messages"]
            .as_array()
            .unwrap()
            .iter()
            .map(|m| (s(&m["label"]).to_owned(), m.clone()))
            .collect();
        Self { doc, by_label }
    }

    fn x3dh(&self) -> X3dhOutput {
        X3dhOutput {
            shared_secret: Secret32::new(b32(&self.doc["shared_secret"])),
            associated_data: hex(s(&self.doc["associated_data"])).try_into().unwrap(),
        }
    }

    fn alice(&self) -> (Session, ReplayRng) {
        let mut rng = replay(&self.doc["alice"]["ratchet_keys"]);
        let spk = b32(&self.doc["alice"]["initial_remote_ratchet_pub"]);
        let session = Session::initiator(&self.x3dh(), spk, None, &mut rng).unwrap();
        (session, rng)
    }

    fn bob(&self) -> (Session, ReplayRng) {
        let spk = Secret32::new(b32(&self.doc["bob"]["initial_ratchet_priv"]));
        (
            Session::responder(&self.x3dh(), &spk, None),
            replay(&self.doc["bob"]["ratchet_keys"]),
        )
    }

    fn message(&self, label: &str) -> (RatchetMessage, Vec<u8>) {
        let m = &self.by_label[label];
        let mut bytes = hex(s(&m["header_bytes"]));
        bytes.extend(hex(s(&m["ciphertext"])));
        let msg = RatchetMessage::from_bytes(&bytes).unwrap();
        assert_eq!(msg.header.dh, b32(&m["header"]["ratchet_pub"]));
        assert_eq!(
            u64::from(msg.header.pn),
            m["header"]["pn"].as_u64().unwrap()
        );
        assert_eq!(u64::from(msg.header.n), m["header"]["n"].as_u64().unwrap());
        (msg, hex(s(&m["plaintext"])))
    }
}

#[test]
fn double_ratchet_transcript_replays_byte_for_byte() {
    let t = Transcript::load();
    let (mut alice, mut alice_rng) = t.alice();
    let (mut bob, mut bob_rng) = t.bob();
    let ops = t.doc["operations"].as_array().unwrap();
    assert_eq!(ops.len(), 20);
    for op in ops {
        let label = s(&op["message"]);
        let (msg, plaintext) = t.message(label);
        let (session, rng) = match s(&op["party"]) {
            "alice" => (&mut alice, &mut alice_rng),
            _ => (&mut bob, &mut bob_rng),
        };
        match s(&op["op"]) {
            "encrypt" => {
                let ours = session.encrypt(&plaintext).unwrap();
                assert_eq!(
                    ours, msg,
                    "{label}: our ciphertext differs from python-doubleratchet's"
                );
            }
            _ => assert_eq!(session.decrypt(&msg, rng).unwrap(), plaintext, "{label}"),
        }
    }
    assert!(
        alice_rng.0.is_empty() && bob_rng.0.is_empty(),
        "every recorded key used"
    );
}

#[test]
fn double_ratchet_python_messages_decrypt_out_of_order() {
    let t = Transcript::load();
    let check = &t.doc["python_replay_check"];
    let (mut bob, mut bob_rng) = t.bob();
    for label in check["bob_receive_order"].as_array().unwrap() {
        let (msg, plaintext) = t.message(s(label));
        assert_eq!(
            bob.decrypt(&msg, &mut bob_rng).unwrap(),
            plaintext,
            "{label}"
        );
    }
    // Re-delivering any of them is refused.
    for label in ["A1", "A3", "A5", "A7"] {
        assert!(
            bob.decrypt(&t.message(label).0, &mut rng(0)).is_err(),
            "{label} replayed"
        );
    }
    // Alice: deliver B2 before B1; B3 after.
    let (mut alice, mut alice_rng) = t.alice();
    for label in ["A1", "A2", "A3"] {
        assert_eq!(
            alice.encrypt(&t.message(label).1).unwrap(),
            t.message(label).0
        );
    }
    for label in check["alice_receive_order"].as_array().unwrap() {
        let (msg, plaintext) = t.message(s(label));
        assert_eq!(
            alice.decrypt(&msg, &mut alice_rng).unwrap(),
            plaintext,
            "{label}"
        );
        if s(label) == "B1" {
            // Before B3 can open, Alice must have sent A4..A6 on the chain
            // Bob answered; the ratchet state already allows it.
            for l in ["A4", "A5", "A6"] {
                assert_eq!(
                    alice.encrypt(&t.message(l).1).unwrap(),
                    t.message(l).0,
                    "{l}"
                );
            }
        }
    }
}
