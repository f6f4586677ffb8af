//! Command-line interface: the only place that reads arguments and prints
//! for humans.

use std::process::ExitCode;
use std::time::{SystemTime, UNIX_EPOCH};

use anyhow::{Context, Result};
use clap::{Parser, Subcommand};

use crate::crypto::{
    ContentKind, DeviceIdentity, Envelope, MailboxKey, PrekeyMessage, PrekeyStore, SealCache,
    SealedContent, SenderKey, SenderKeyReceiver, Session, initiate, open, respond, safety_number,
    seal,
};

/// meshchat: peer-to-peer end-to-end encrypted chat.
#[derive(Debug, Parser)]
#[command(name = "meshchat", version, about)]
struct Cli {
    #[command(subcommand)]
    command: Command,
}

#[derive(Debug, Subcommand)]
enum Command {
    /// Walk through a conversation between two in-process devices and show
    /// what each party — and a relay in between — can see.
    Demo,
}

/// Entry point used by `main.rs`.
pub fn main() -> ExitCode {
    let _ = tracing_subscriber::fmt()
        .with_env_filter(tracing_subscriber::EnvFilter::from_env("MESHCHAT_LOG"))
        .with_writer(std::io::stderr)
        .try_init();
    let cli = Cli::parse();
    let result = match cli.command {
        Command::Demo => demo(),
    };
    match result {
        Ok(()) => ExitCode::SUCCESS,
        Err(e) => {
            eprintln!("meshchat: {e:#}");
            ExitCode::FAILURE
        }
    }
}

fn now() -> u64 {
    SystemTime::now()
        .duration_since(UNIX_EPOCH)
        .map_or(0, |d| d.as_secs())
}

fn short(bytes: &[u8]) -> String {
    bytes
        .iter()
        .take(6)
        .map(|b| format!("{b:02x}"))
        .collect::<String>()
        + "…"
}

fn demo() -> Result<()> {
    let mut rng = rand::rng();
    let t = now();
    println!("meshchat crypto walk-through (all in this process, nothing on the network)\n");

    let alice = DeviceIdentity::generate(&mut rng);
    let bob = DeviceIdentity::generate(&mut rng);
    println!("alice's device  {}", alice.peer_id()?);
    println!("bob's device    {}", bob.peer_id()?);
    println!(
        "safety number   {}\n",
        safety_number(alice.public(), bob.public())
    );

    // Bob publishes a bundle (normally to his relays) and goes offline.
    let bob_mailbox = MailboxKey::generate(&mut rng);
    let mut bob_prekeys = PrekeyStore::new(&bob, t, &mut rng);
    bob_prekeys.generate_one_time(&bob, 10, &mut rng);
    let bundle = bob_prekeys.bundle(&bob, bob_mailbox.id().0, &[], t, true)?;
    println!(
        "bob's prekey bundle: {} bytes, signed; mailbox {}",
        bundle.to_bytes().len(),
        short(&bob_mailbox.id().0)
    );

    // Alice starts a session from the bundle and seals her first message.
    let verified = bundle.verify().context("bundle signature")?;
    let (x3dh, initial, spk) = initiate(&alice, &verified, &mut rng)?;
    let mut alice_session = Session::initiator(&x3dh, spk, Some(initial), &mut rng)?;
    let text = "Hi Bob — this crossed a relay that cannot read it.";
    let ratchet = alice_session.encrypt(text.as_bytes())?;
    let body = PrekeyMessage::new(initial, ratchet.to_bytes()).to_bytes();
    let mut alice_cache = SealCache::default();
    let sealed = seal(
        &alice,
        &bob.public().dh,
        &SealedContent::new(ContentKind::Prekey, body),
        &mut alice_cache,
        &mut rng,
    )?;
    let mut envelope_id = [0u8; 16];
    rand::Rng::fill_bytes(&mut rng, &mut envelope_id);
    let envelope = Envelope::new(bob_mailbox.id().0, envelope_id, t + 14 * 86_400, sealed);
    let wire = envelope.to_bytes();

    println!("\nwhat a relay holding the envelope sees:");
    println!("  mailbox id  {}", short(&envelope.mailbox_id));
    println!("  envelope id {}", short(&envelope.envelope_id));
    println!("  expires at  {} (unix)", envelope.expires_at);
    println!(
        "  size        {} bytes (padded bucket; a 2-byte message looks the same)",
        wire.len()
    );
    let readable = wire.windows(6).any(|w| w == &text.as_bytes()[..6]);
    println!("  plaintext visible: {readable}; sender visible: no");

    // Bob comes back, opens it, answers.
    let received = Envelope::from_bytes(&wire)?;
    let mut bob_cache = SealCache::default();
    let opened = open(&bob, &received.sealed, &mut bob_cache)?;
    let pkm = PrekeyMessage::from_bytes(&opened.content.body)?;
    let (x3dh_b, spk_secret) = respond(&bob, &bob_prekeys, &opened.sender, &pkm.initial)?;
    let mut bob_session = Session::responder(&x3dh_b, &spk_secret, Some(pkm.initial.ephemeral));
    let plain = bob_session.decrypt(
        &crate::crypto::RatchetMessage::from_bytes(&pkm.message)?,
        &mut rng,
    )?;
    if let Some(id) = pkm.initial.one_time_prekey_id {
        bob_prekeys.take_one_time(id)?;
    }
    println!(
        "\nbob opens it: sender {} says {:?}",
        opened.sender.peer_id()?,
        String::from_utf8_lossy(&plain)
    );

    // A few messages out of order, and a replay.
    let reply = bob_session.encrypt(b"Got it. Ratchet turned.")?;
    println!(
        "alice reads: {:?}",
        String::from_utf8_lossy(&alice_session.decrypt(&reply, &mut rng)?)
    );
    let m1 = alice_session.encrypt(b"one")?;
    let m2 = alice_session.encrypt(b"two")?;
    println!(
        "bob reads out of order: {:?} then {:?}",
        String::from_utf8_lossy(&bob_session.decrypt(&m2, &mut rng)?),
        String::from_utf8_lossy(&bob_session.decrypt(&m1, &mut rng)?)
    );
    match bob_session.decrypt(&m1, &mut rng) {
        Ok(_) => println!("replay accepted (this would be a bug)"),
        Err(e) => println!("replayed message refused: {e}"),
    }

    // Groups: one encryption for everyone.
    let gid = [7u8; 32];
    let mut alice_group = SenderKey::new(gid, t, &mut rng);
    let mut bob_view = SenderKeyReceiver::from_distribution(&alice_group.distribution());
    let g = alice_group.encrypt(b"hello group")?;
    println!(
        "\ngroup message ({} bytes) read by bob: {:?}",
        g.to_bytes().len(),
        String::from_utf8_lossy(&bob_view.decrypt(&g)?)
    );
    let rotated = alice_group.rotate(t, &mut rng);
    let mut rotated = rotated;
    let after = rotated.encrypt(b"after a member left")?;
    match bob_view.decrypt(&after) {
        Ok(_) => println!("old key still reads new messages (this would be a bug)"),
        Err(e) => println!("after rotation, a member without the new key: {e}"),
    }
    Ok(())
}
