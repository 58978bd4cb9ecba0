//! The shared key of a fleet section (`[l2]` heartbeats, `[sync]` messages): given inline
//! (`key`) or in a file (`key_file`, its first line), at least [`MIN_KEY_LEN`] bytes.
use std::path::PathBuf;

/// The shortest key accepted, in bytes.
pub const MIN_KEY_LEN: usize = 16;

/// Checks that exactly one of `key` and `key_file` of section `section` is set and that an
/// inline key is long enough; errors are (key, what is wrong and how to fix it).
pub fn validate(
    section: &str,
    key: &Option<String>,
    key_file: &Option<PathBuf>,
) -> Result<(), (String, String)> {
    let k = format!("{section}.key");
    match (key, key_file) {
        (Some(_), Some(_)) => Err((k, format!("and {section}.key_file are both set; keep one"))),
        (None, None) => Err((
            k,
            format!(
                "is missing; set {section}.key or {section}.key_file (the same key on every host)"
            ),
        )),
        (Some(v), None) if v.len() < MIN_KEY_LEN => Err((
            k,
            format!("is {} bytes; use at least {MIN_KEY_LEN}", v.len()),
        )),
        _ => Ok(()),
    }
}

/// The key's bytes: `key`, or the first line of `key_file` (checked for length).
///
/// # Errors
/// (key, what is wrong) when neither is set, the file cannot be read or its key is too short.
pub fn bytes(
    section: &str,
    key: &Option<String>,
    key_file: &Option<PathBuf>,
) -> Result<Vec<u8>, (String, String)> {
    if let Some(k) = key {
        return Ok(k.as_bytes().to_vec());
    }
    let Some(f) = key_file else {
        return Err((format!("{section}.key"), "is missing".into()));
    };
    let file_key = format!("{section}.key_file");
    let text = std::fs::read_to_string(f).map_err(|e| {
        (
            file_key.clone(),
            format!("cannot read {}: {e}", f.display()),
        )
    })?;
    let k = text.lines().next().unwrap_or("").trim().as_bytes().to_vec();
    if k.len() < MIN_KEY_LEN {
        return Err((
            file_key,
            format!(
                "{}: the key is {} bytes; use at least {MIN_KEY_LEN}",
                f.display(),
                k.len()
            ),
        ));
    }
    Ok(k)
}
