//! Secrets named in the config, one type for every source and sink: `<key>_env` (an
//! environment variable), `<key>_file` (a file, or a systemd credential), and the
//! value read from them, which no `Debug`, log line or error shows.
//!
//! A secret is read each time it is used, not once at start: a password fixed in its
//! file, or a credential rotated by rewriting it, is picked up by the next attempt
//! without a reload. A process's environment cannot change, so `*_env` secrets change
//! only with a restart.

use std::fmt;
use std::io::Read;
use std::path::{Path, PathBuf};

use serde::{Deserialize, Deserializer};

/// Most bytes a secret file may hold: a secret is a line, and a file named by mistake
/// (a log, a dump) must not be read whole into memory.
const MAX_SECRET_BYTES: u64 = 64 * 1024;

/// The prefix of a `<key>_file` value naming a systemd credential.
const CREDENTIAL_PREFIX: &str = "credential:";

/// A secret's value. `Debug` does not show it, so it cannot reach a log line by
/// accident; only [`Secret::expose`] gives it out, to the code that sends it.
#[derive(Clone, PartialEq, Eq)]
pub struct Secret(String);

impl Secret {
    /// Wraps a secret obtained at run time (a fetched token).
    pub fn new(value: String) -> Self {
        Secret(value)
    }

    /// The secret itself, for the one place that sends it.
    pub fn expose(&self) -> &str {
        &self.0
    }
}

impl fmt::Debug for Secret {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        f.write_str("Secret(***)")
    }
}

/// A `<key>_env` value: the name of an environment variable, checked while read.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct EnvVar(String);

impl EnvVar {
    /// Checks the name: not empty, no `=` and no NUL (which no variable name holds).
    pub fn new(text: &str) -> Result<Self, String> {
        if text.is_empty() || text.contains(['=', '\0']) {
            return Err("must name an environment variable".into());
        }
        Ok(EnvVar(text.to_string()))
    }

    /// The variable's name.
    pub fn name(&self) -> &str {
        &self.0
    }
}

impl<'de> Deserialize<'de> for EnvVar {
    fn deserialize<D: Deserializer<'de>>(deserializer: D) -> Result<Self, D::Error> {
        super::parse_text(deserializer, "the name of an environment variable", EnvVar::new)
    }
}

/// A `<key>_file` value: a file holding the secret, or `credential:NAME`, a systemd
/// credential (`LoadCredential=NAME:…` in the unit), read from
/// `$CREDENTIALS_DIRECTORY/NAME`.
#[derive(Debug, Clone, PartialEq, Eq)]
pub enum SecretFile {
    /// A path, relative to the working directory or absolute.
    Path(PathBuf),
    /// A credential name: no `/`, not `.` or `..`.
    Credential(String),
}

impl SecretFile {
    /// Parses a `<key>_file` value.
    pub fn parse(text: &str) -> Result<Self, String> {
        if let Some(name) = text.strip_prefix(CREDENTIAL_PREFIX) {
            if name.is_empty() || name == "." || name == ".." || name.contains(['/', '\0']) {
                return Err(format!(
                    "`{text}`: a credential name is not empty, holds no `/` and is not `.` or `..`"
                ));
            }
            return Ok(SecretFile::Credential(name.to_string()));
        }
        if text.is_empty() {
            return Err("must not be empty".into());
        }
        if text.contains('\0') {
            return Err("must not hold a NUL character".into());
        }
        Ok(SecretFile::Path(PathBuf::from(text)))
    }

    /// Where the file is now: a credential's path depends on `$CREDENTIALS_DIRECTORY`.
    fn locate(&self) -> Result<PathBuf, SecretReadError> {
        match self {
            SecretFile::Path(path) => Ok(path.clone()),
            SecretFile::Credential(name) => match std::env::var_os("CREDENTIALS_DIRECTORY") {
                Some(dir) if !dir.is_empty() => Ok(Path::new(&dir).join(name)),
                _ => Err(SecretReadError::NoCredentialsDirectory),
            },
        }
    }
}

impl fmt::Display for SecretFile {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        match self {
            SecretFile::Path(path) => write!(f, "{}", path.display()),
            SecretFile::Credential(name) => write!(f, "{CREDENTIAL_PREFIX}{name}"),
        }
    }
}

impl<'de> Deserialize<'de> for SecretFile {
    fn deserialize<D: Deserializer<'de>>(deserializer: D) -> Result<Self, D::Error> {
        super::parse_text(deserializer, "a file path or `credential:NAME`", SecretFile::parse)
    }
}

/// Where one configured secret is read from.
#[derive(Debug, Clone, PartialEq, Eq)]
enum Origin {
    Env(EnvVar),
    File(SecretFile),
}

/// One configured secret: its key (`password`, `secret`, `bearer_token`, for messages)
/// and where it is read from. Cloning it copies the reference, never a value.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct SecretRef {
    key: &'static str,
    origin: Origin,
}

impl SecretRef {
    /// The secret named by the pair `<key>_env` / `<key>_file`, if either is given (the
    /// file when both are: [`SecretRef::validate_pair`] reports that as an error).
    pub fn from_pair(key: &'static str, env: Option<&EnvVar>, file: Option<&SecretFile>) -> Option<Self> {
        let origin = match (env, file) {
            (_, Some(file)) => Origin::File(file.clone()),
            (Some(env), None) => Origin::Env(env.clone()),
            (None, None) => return None,
        };
        Some(SecretRef { key, origin })
    }

    /// The pair's own rule, as `(key, message)`: at most one of the two.
    pub fn validate_pair(
        key: &'static str,
        env: Option<&EnvVar>,
        file: Option<&SecretFile>,
    ) -> Vec<(String, String)> {
        if env.is_some() && file.is_some() {
            return vec![(format!("{key}_env"), format!("give `{key}_env` or `{key}_file`, not both"))];
        }
        Vec::new()
    }

    /// The key this secret was given under: `password_env`, `secret_file`, ….
    pub fn key(&self) -> String {
        match self.origin {
            Origin::Env(_) => format!("{}_env", self.key),
            Origin::File(_) => format!("{}_file", self.key),
        }
    }

    /// True when a new value is picked up without a restart (a file or credential).
    pub fn rotates(&self) -> bool {
        matches!(self.origin, Origin::File(_))
    }

    /// Reads the secret now. A file's trailing line break is not part of it; an empty
    /// value is an error. Errors name the key and the variable or file, never a value.
    pub fn read(&self) -> Result<Secret, SecretError> {
        let fail = |what: SecretReadError| SecretError { key: self.key(), place: self.place(), what };
        match &self.origin {
            Origin::Env(var) => match std::env::var(var.name()) {
                Ok(value) if !value.is_empty() => Ok(Secret(value)),
                Ok(_) => Err(fail(SecretReadError::Empty)),
                Err(std::env::VarError::NotPresent) => Err(fail(SecretReadError::Unset)),
                Err(std::env::VarError::NotUnicode(_)) => Err(fail(SecretReadError::NotText)),
            },
            Origin::File(file) => {
                let path = file.locate().map_err(fail)?;
                let value = read_limited(&path).map_err(fail)?;
                let value = value.trim_end_matches(['\n', '\r']);
                if value.is_empty() {
                    return Err(fail(SecretReadError::Empty));
                }
                Ok(Secret(value.to_string()))
            }
        }
    }

    /// The variable or file, for messages.
    fn place(&self) -> String {
        match &self.origin {
            Origin::Env(var) => format!("environment variable {}", var.name()),
            Origin::File(file @ SecretFile::Credential(name)) => match file.locate() {
                Ok(path) => format!("credential `{name}` (`{}`)", path.display()),
                Err(_) => format!("credential `{name}`"),
            },
            Origin::File(SecretFile::Path(path)) => format!("`{}`", path.display()),
        }
    }
}

/// Reads at most [`MAX_SECRET_BYTES`] of a file as text.
fn read_limited(path: &Path) -> Result<String, SecretReadError> {
    let file = std::fs::File::open(path).map_err(|e| SecretReadError::Io(e.kind()))?;
    let mut bytes = Vec::new();
    file.take(MAX_SECRET_BYTES + 1).read_to_end(&mut bytes).map_err(|e| SecretReadError::Io(e.kind()))?;
    if bytes.len() as u64 > MAX_SECRET_BYTES {
        return Err(SecretReadError::TooLarge);
    }
    String::from_utf8(bytes).map_err(|_| SecretReadError::NotText)
}

/// A secret that could not be read: which key, from where, and why. Never the value.
#[derive(Debug, Clone, PartialEq, Eq, thiserror::Error)]
#[error("{key}: {place} {what}")]
pub struct SecretError {
    /// `password_env`, `secret_file`, ….
    pub key: String,
    /// The variable or file, as messages show it.
    pub place: String,
    /// Why it could not be read.
    pub what: SecretReadError,
}

/// Why a secret could not be read.
#[derive(Debug, Clone, PartialEq, Eq, thiserror::Error)]
pub enum SecretReadError {
    /// The variable is not set.
    #[error("is not set")]
    Unset,
    /// The variable or file is empty (a line break alone counts as empty).
    #[error("is empty")]
    Empty,
    /// The value is not UTF-8 text.
    #[error("is not UTF-8 text")]
    NotText,
    /// The file is larger than any secret.
    #[error("is larger than 64 KiB, more than a secret holds")]
    TooLarge,
    /// The file cannot be read.
    #[error("cannot be read: {0}")]
    Io(std::io::ErrorKind),
    /// A credential was named, but systemd gave the process no credentials.
    #[error(
        "cannot be read: $CREDENTIALS_DIRECTORY is not set (systemd sets it for a unit with \
         LoadCredential= or SetCredential=)"
    )]
    NoCredentialsDirectory,
}

#[cfg(test)]
mod tests {
    use super::*;

    fn file(path: &Path) -> SecretFile {
        SecretFile::parse(path.to_str().unwrap()).unwrap()
    }

    #[test]
    fn files_are_read_at_every_use_and_never_shown() {
        let dir = tempfile::tempdir().unwrap();
        let path = dir.path().join("password");
        std::fs::write(&path, "first\n").unwrap();
        let secret = SecretRef::from_pair("password", None, Some(&file(&path))).unwrap();
        assert_eq!(secret.read().unwrap().expose(), "first");
        assert_eq!(format!("{:?}", secret.read().unwrap()), "Secret(***)");
        // Rotated in place: the next read has it.
        std::fs::write(&path, "second\r\n").unwrap();
        assert_eq!(secret.read().unwrap().expose(), "second");
        assert!(secret.rotates());
        assert_eq!(secret.key(), "password_file");

        std::fs::write(&path, "\n").unwrap();
        let error = secret.read().unwrap_err();
        assert_eq!(error.to_string(), format!("password_file: `{}` is empty", path.display()));
        std::fs::remove_file(&path).unwrap();
        let error = secret.read().unwrap_err();
        assert_eq!(error.what, SecretReadError::Io(std::io::ErrorKind::NotFound));
        std::fs::write(&path, vec![b'x'; 70_000]).unwrap();
        assert_eq!(secret.read().unwrap_err().what, SecretReadError::TooLarge);
    }

    #[test]
    fn environment_variables_name_themselves_in_errors() {
        let var = EnvVar::new("HIGHWATER_TEST_SURELY_UNSET_SECRET").unwrap();
        let secret = SecretRef::from_pair("token", Some(&var), None).unwrap();
        let error = secret.read().unwrap_err();
        assert_eq!(
            error.to_string(),
            "token_env: environment variable HIGHWATER_TEST_SURELY_UNSET_SECRET is not set"
        );
        assert!(!secret.rotates());
        assert!(EnvVar::new("").is_err());
        assert!(EnvVar::new("A=B").is_err());
    }

    #[test]
    fn credentials_come_from_the_credentials_directory() {
        assert_eq!(
            SecretFile::parse("credential:airflow-password").unwrap(),
            SecretFile::Credential("airflow-password".into())
        );
        for bad in ["credential:", "credential:a/b", "credential:..", ""] {
            assert!(SecretFile::parse(bad).is_err(), "{bad}");
        }
        assert_eq!(SecretFile::parse("/run/secret").unwrap(), SecretFile::Path("/run/secret".into()));
        // The directory is looked up at every read (the test cannot set the variable
        // without racing other tests, so only the unset case is checked here; the
        // integration tests read a credential for real).
        if std::env::var_os("CREDENTIALS_DIRECTORY").is_none() {
            let credential = SecretFile::Credential("x".into());
            let secret = SecretRef::from_pair("secret", None, Some(&credential)).unwrap();
            let error = secret.read().unwrap_err();
            assert_eq!(error.what, SecretReadError::NoCredentialsDirectory);
            assert!(error.to_string().starts_with("secret_file: credential `x` cannot be read"), "{error}");
        }
    }

    #[test]
    fn a_pair_gives_one_or_the_other() {
        let var = EnvVar::new("X").unwrap();
        let path = SecretFile::parse("x").unwrap();
        assert_eq!(SecretRef::validate_pair("password", Some(&var), Some(&path)).len(), 1);
        assert!(SecretRef::validate_pair("password", Some(&var), None).is_empty());
        assert!(SecretRef::from_pair("password", None, None).is_none());
    }
}
