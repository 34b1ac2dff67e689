//! What the test-vector tests share: the vectors file in `docs/test-vectors/`, checked against
//! what the test's generator produces (or rewritten by it, with `FOGMESH_WRITE_VECTORS=1`), and
//! a minimal CBOR writer, independent of the node's codec, so encodings can be built byte by
//! byte (canonical ones to compare with, and invalid ones to refuse).

use std::path::PathBuf;

use serde::de::DeserializeOwned;
use serde::Serialize;

/// Set, the vector tests rewrite their files instead of checking them.
pub const WRITE_ENV: &str = "FOGMESH_WRITE_VECTORS";

/// `docs/test-vectors/{name}`.
pub fn path(name: &str) -> PathBuf {
    PathBuf::from(env!("CARGO_MANIFEST_DIR"))
        .join("../docs/test-vectors")
        .join(name)
}

/// The file's text as the generator makes it.
pub fn render<T: Serialize>(vectors: &T) -> String {
    serde_json::to_string_pretty(vectors).unwrap() + "\n"
}

/// The command that rewrites a test's vectors (`test`: the test target's name).
pub fn command(test: &str) -> String {
    format!("{WRITE_ENV}=1 cargo test -p fogmesh --test {test} --locked")
}

/// Fails unless `docs/test-vectors/{name}` is exactly `generated`; rewrites it instead when
/// [`WRITE_ENV`] is set. `test` names the test target, for the message.
pub fn check_or_write(name: &str, generated: &str, test: &str) {
    let path = path(name);
    if std::env::var_os(WRITE_ENV).is_some() {
        std::fs::create_dir_all(path.parent().unwrap()).unwrap();
        std::fs::write(&path, generated).unwrap();
        return;
    }
    let on_disk = std::fs::read_to_string(&path).unwrap_or_default();
    assert!(
        on_disk == generated,
        "{} is out of date; regenerate with `{}` and review the diff",
        path.display(),
        command(test)
    );
}

/// The vectors to replay: the file, or (while regenerating, when the file may be mid-write
/// by the other test) what the generator makes.
pub fn read<T: DeserializeOwned>(name: &str, generate: impl FnOnce() -> String) -> T {
    let text = if std::env::var_os(WRITE_ENV).is_some() {
        generate()
    } else {
        std::fs::read_to_string(path(name)).unwrap()
    };
    serde_json::from_str(&text).unwrap()
}

pub fn unhex(s: &str) -> Vec<u8> {
    hex::decode(s).unwrap()
}

/// A CBOR head: major type and argument, in its shortest form.
pub fn head(major: u8, arg: u64) -> Vec<u8> {
    let m = major << 5;
    match arg {
        0..=23 => vec![m | arg as u8],
        24..=0xff => vec![m | 24, arg as u8],
        0x100..=0xffff => [vec![m | 25], (arg as u16).to_be_bytes().to_vec()].concat(),
        0x1_0000..=0xffff_ffff => [vec![m | 26], (arg as u32).to_be_bytes().to_vec()].concat(),
        _ => [vec![m | 27], arg.to_be_bytes().to_vec()].concat(),
    }
}

pub fn cbor_uint(n: u64) -> Vec<u8> {
    head(0, n)
}

pub fn cbor_text(s: &str) -> Vec<u8> {
    [head(3, s.len() as u64), s.as_bytes().to_vec()].concat()
}

pub fn cbor_bytes(b: &[u8]) -> Vec<u8> {
    [head(2, b.len() as u64), b.to_vec()].concat()
}

pub fn cbor_array(items: &[Vec<u8>]) -> Vec<u8> {
    let mut out = head(4, items.len() as u64);
    for item in items {
        out.extend(item);
    }
    out
}

/// A map of text keys to encoded values, in the order given.
pub fn cbor_map<K: AsRef<str>>(entries: &[(K, Vec<u8>)]) -> Vec<u8> {
    let mut out = head(5, entries.len() as u64);
    for (k, v) in entries {
        out.extend(cbor_text(k.as_ref()));
        out.extend(v);
    }
    out
}
