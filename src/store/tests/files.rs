//! Whole-file writes: keystores, exports, backups, the API token.

use std::io::Write;
use std::os::unix::fs::PermissionsExt;

use crate::store::{write_private, write_private_new};

fn names(dir: &std::path::Path) -> Vec<String> {
    let mut v: Vec<String> = std::fs::read_dir(dir)
        .unwrap()
        .map(|e| e.unwrap().file_name().into_string().unwrap())
        .collect();
    v.sort();
    v
}

#[test]
fn a_file_is_written_owner_only_and_replaced_whole() {
    let dir = tempfile::tempdir().unwrap();
    let path = dir.path().join("token");
    write_private(&path, |w| w.write_all(b"first")).unwrap();
    write_private(&path, |w| w.write_all(b"second")).unwrap();
    assert_eq!(std::fs::read(&path).unwrap(), b"second");
    let mode = std::fs::metadata(&path).unwrap().permissions().mode();
    assert_eq!(mode & 0o777, 0o600);
    assert_eq!(names(dir.path()), ["token"]);
}

#[test]
fn a_new_file_never_replaces_one_there_and_a_failure_leaves_nothing() {
    let dir = tempfile::tempdir().unwrap();
    let path = dir.path().join("export.json");
    std::fs::write(&path, b"mine").unwrap();
    let e = write_private_new(&path, |w| w.write_all(b"theirs")).unwrap_err();
    assert_eq!(e.kind(), std::io::ErrorKind::AlreadyExists);
    assert_eq!(std::fs::read(&path).unwrap(), b"mine");
    // A file that appears while the contents are written is kept too.
    let late = dir.path().join("late.json");
    let e = write_private_new(&late, |w| {
        std::fs::write(&late, b"raced")?;
        w.write_all(b"ours")
    })
    .unwrap_err();
    assert_eq!(e.kind(), std::io::ErrorKind::AlreadyExists);
    assert_eq!(std::fs::read(&late).unwrap(), b"raced");
    // A failing writer: no file, no temporary file left behind.
    let failed = dir.path().join("failed.json");
    write_private_new(&failed, |_| {
        Err::<(), _>(std::io::Error::other("disk full"))
    })
    .unwrap_err();
    assert_eq!(names(dir.path()), ["export.json", "late.json"]);
}

#[test]
fn nothing_placed_beside_the_target_is_written_through() {
    // Another user's world-writable file, and a symbolic link, under the
    // names a fixed temporary name would have had.
    let dir = tempfile::tempdir().unwrap();
    let path = dir.path().join("chat.json");
    let trap = dir.path().join("chat.json.part");
    std::fs::write(&trap, b"").unwrap();
    std::fs::set_permissions(&trap, std::fs::Permissions::from_mode(0o666)).unwrap();
    let victim = dir.path().join("victim");
    std::fs::write(&victim, b"keep").unwrap();
    std::os::unix::fs::symlink(&victim, dir.path().join(".chat.json.part")).unwrap();

    write_private_new(&path, |w| w.write_all(b"secret history")).unwrap();
    assert_eq!(std::fs::read(&path).unwrap(), b"secret history");
    assert_eq!(std::fs::read(&trap).unwrap(), b"");
    assert_eq!(std::fs::read(&victim).unwrap(), b"keep");
}
